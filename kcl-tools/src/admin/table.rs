//! Plain-text tables for `kcl-admin`: columns padded to their widest cell, `-` for unknown.

use super::{Lag, LeaseRow, Observation, Renewal, ResetReport, WorkerRow};

/// Renders rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn set(s: &std::collections::BTreeSet<String>) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

fn lag_records(lag: Option<&Lag>) -> String {
    match lag {
        None => "-".to_owned(),
        Some(Lag {
            records: Some(n),
            at_least,
            ..
        }) => format!("{}{n}", if *at_least { ">=" } else { "" }),
        Some(_) => "?".to_owned(),
    }
}

fn renewal(r: Renewal, watch_ms: u64) -> String {
    match r {
        Renewal::Unowned => "-".to_owned(),
        Renewal::Renewed(n) => format!("+{n} in {watch_ms}ms"),
        Renewal::NotRenewed => format!("none in {watch_ms}ms"),
        Renewal::NotWatched => "not watched".to_owned(),
    }
}

/// `kcl-admin leases`: one line per lease, then notes on lags that are unknown.
pub fn leases(o: &Observation) -> String {
    let header = [
        "SHARD",
        "OWNER",
        "COUNTER",
        "CHECKPOINT",
        "LAG_RECORDS",
        "LAG_MS",
        "PARENTS",
        "CHILDREN",
        "KBPS",
        "RENEWAL",
        "LIVE",
    ];
    let rows: Vec<Vec<String>> = o.leases.iter().map(|l| lease_cells(l, o.watch_ms)).collect();
    let mut out = render(&header, &rows);
    for l in &o.leases {
        if let Some(Lag { note: Some(note), .. }) = &l.lag {
            out.push_str(&format!("note: {}: lag {note}\n", l.shard_id));
        }
    }
    out
}

fn lease_cells(l: &LeaseRow, watch_ms: u64) -> Vec<String> {
    let checkpoint = if l.checkpoint_sub_sequence > 0 {
        format!("{}.{}", l.checkpoint, l.checkpoint_sub_sequence)
    } else {
        l.checkpoint.clone()
    };
    vec![
        l.shard_id.clone(),
        dash(l.owner.as_deref()),
        l.counter.to_string(),
        checkpoint,
        lag_records(l.lag.as_ref()),
        dash(l.lag.as_ref().and_then(|g| g.millis)),
        set(&l.parents),
        set(&l.children),
        dash(l.throughput_kbps.map(|t| format!("{t:.1}"))),
        renewal(l.renewal, watch_ms),
        if l.live { "yes" } else { "no" }.to_owned(),
    ]
}

/// `kcl-admin workers`.
pub fn workers(rows: &[WorkerRow]) -> String {
    let header = [
        "WORKER",
        "LEASES",
        "RENEWED",
        "KBPS",
        "HEARTBEAT",
        "LIVE",
        "SHARDS",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                w.leases.to_string(),
                w.renewed.to_string(),
                dash(w.throughput_kbps.map(|t| format!("{t:.1}"))),
                match &w.heartbeat {
                    None => "-".to_owned(),
                    Some(h) => format!(
                        "#{} {}{}",
                        h.counter,
                        h.renewal,
                        match h.moved {
                            Some(true) => " (moving)",
                            Some(false) => " (still)",
                            None => "",
                        }
                    ),
                },
                if w.live { "yes" } else { "no" }.to_owned(),
                if w.shards.is_empty() {
                    "-".to_owned()
                } else {
                    w.shards.join(",")
                },
            ]
        })
        .collect();
    render(&header, &cells)
}

/// `kcl-admin reset`: what changed, then the conflicts.
pub fn reset(report: &ResetReport) -> String {
    let header = [
        "SHARD",
        "OWNER_BEFORE",
        "CHECKPOINT_BEFORE",
        "CHECKPOINT_AFTER",
        "COUNTER",
    ];
    let rows: Vec<Vec<String>> = report
        .changed
        .iter()
        .map(|c| {
            vec![
                c.shard_id.clone(),
                dash(c.owner_before.as_deref()),
                c.checkpoint_before.clone(),
                c.checkpoint_after.clone(),
                format!("{} -> {}", c.counter_before, c.counter_after),
            ]
        })
        .collect();
    let mut out = render(&header, &rows);
    for c in &report.conflicts {
        out.push_str(&format!(
            "conflict: {} changed since it was read (counter {} read, now {}, owner now {}): not overwritten; run reset again\n",
            c.shard_id,
            c.counter_read,
            dash(c.counter_now),
            dash(c.owner_now.as_deref()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let out = render(
            &["A", "LONG"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]],
        );
        assert_eq!(out, "A    LONG\nxyz  1\nq    22\n");
    }
}
