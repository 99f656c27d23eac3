//! A worker's live status: what it holds, how far behind each shard is, its recent lease moves
//! and errors, for a person looking at one worker without CloudWatch.
//!
//! [`SchedulerHandle::status_source`](crate::SchedulerHandle::status_source) gives a cheap,
//! cloneable [`StatusSource`]; [`StatusSource::snapshot`] reads a [`WorkerStatus`], which renders
//! itself as a small self-refreshing HTML page ([`WorkerStatus::to_html`], no JavaScript) or as
//! JSON ([`WorkerStatus::to_json`]). With the `status-page` feature, `status::serve` serves both over
//! HTTP (`/` and `/status.json`) with hyper.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kcl_lease::{Journal, JournalEntry, JournalEvent};

use crate::metrics::{ShardHealth, WorkerHealth};
use crate::shard::state::ShardState;

#[cfg(feature = "status-page")]
mod server;
#[cfg(feature = "status-page")]
pub use server::{serve, StatusServer};

/// Reads a worker's status; cloned freely (for example into an HTTP handler).
#[derive(Clone)]
pub struct StatusSource {
    health: Arc<dyn Fn() -> WorkerHealth + Send + Sync>,
    journal: Arc<Journal>,
    fatal: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl std::fmt::Debug for StatusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSource").finish_non_exhaustive()
    }
}

impl StatusSource {
    pub(crate) fn new(
        health: impl Fn() -> WorkerHealth + Send + Sync + 'static,
        journal: Arc<Journal>,
        fatal: impl Fn() -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            health: Arc::new(health),
            journal,
            fatal: Arc::new(fatal),
        }
    }

    /// The worker's health now (see [`WorkerHealth`]).
    pub fn health(&self) -> WorkerHealth {
        (self.health)()
    }

    /// The worker's status now.
    pub fn snapshot(&self) -> WorkerStatus {
        let mut health = self.health();
        health.shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        WorkerStatus {
            health,
            moves: self.journal.moves(),
            errors: self.journal.errors(),
            fatal: (self.fatal)(),
            at: SystemTime::now(),
        }
    }
}

/// A worker's status at one moment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Leases, shard consumers (state, lag, throughput, checkpoint), fleet and store costs.
    pub health: WorkerHealth,
    /// Recent lease moves, newest first.
    pub moves: Vec<JournalEntry>,
    /// Recent errors the worker went on after, newest first.
    pub errors: Vec<JournalEntry>,
    /// The errors that stopped the worker or one of its streams (empty while all runs).
    pub fatal: Vec<String>,
    /// When the snapshot was taken.
    pub at: SystemTime,
}

/// How a shard state is shown.
pub fn state_name(state: ShardState) -> &'static str {
    match state {
        ShardState::WaitingOnParents => "waiting-on-parents",
        ShardState::Initializing => "initializing",
        ShardState::Processing => "processing",
        ShardState::ShardEnding => "shard-ending",
        ShardState::ShuttingDown(_) => "shutting-down",
        ShardState::Complete => "complete",
    }
}

/// Milliseconds since the Unix epoch.
fn epoch_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds.
fn rfc3339(t: SystemTime) -> String {
    let ms = epoch_ms(t);
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Escapes text for HTML.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a JSON string.
fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_f64(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".into(),
    }
}

fn json_opt_str(v: Option<&str>) -> String {
    v.map_or_else(|| "null".into(), json)
}

fn event_detail(event: &JournalEvent) -> String {
    match event {
        JournalEvent::Taken {
            previous_owner: Some(o),
            ..
        } => format!("from {o}"),
        JournalEvent::Error { message } => message.clone(),
        _ => String::new(),
    }
}

fn shard_json(s: &ShardHealth) -> String {
    format!(
        "{{\"shard_id\":{},\"state\":{},\"millis_behind_latest\":{},\"records_processed\":{},\"checkpoint\":{},\"throughput_kbps\":{},\"records_per_sec\":{}}}",
        json(&s.shard_id),
        json(state_name(s.state)),
        s.millis_behind_latest,
        s.records_processed,
        json_opt_str(s.checkpoint.as_ref().map(ToString::to_string).as_deref()),
        json_opt_f64(s.throughput_kbps),
        json_opt_f64(s.records_per_sec),
    )
}

fn entry_json(e: &JournalEntry) -> String {
    format!(
        "{{\"at\":{},\"lease\":{},\"event\":{},\"detail\":{}}}",
        json(&rfc3339(e.at)),
        json_opt_str(e.lease.as_deref()),
        json(e.event.name()),
        json(&event_detail(&e.event)),
    )
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// How often the HTML page reloads itself, in seconds.
const REFRESH_SECONDS: u32 = 2;

impl WorkerStatus {
    /// The status as one JSON object (`worker_id`, `running`, `leases_held`, `fleet`, `shards`,
    /// `moves`, `errors`, `fatal`, `at`).
    pub fn to_json(&self) -> String {
        let h = &self.health;
        format!(
            "{{\"worker_id\":{},\"running\":{},\"at\":{},\"leases_held\":{},\"fleet\":{{\"live_workers\":{},\"leader\":{},\"heartbeats\":{},\"lease_table_scans\":{}}},\"shards\":[{}],\"moves\":[{}],\"errors\":[{}],\"fatal\":[{}]}}",
            json(&h.worker_id),
            h.running,
            json(&rfc3339(self.at)),
            h.leases_held,
            h.fleet.live_workers,
            h.fleet.leader,
            h.fleet.heartbeats,
            h.fleet.lease_table_scans,
            join(h.shards.iter().map(shard_json)),
            join(self.moves.iter().map(entry_json)),
            join(self.errors.iter().map(entry_json)),
            join(self.fatal.iter().map(|f| json(f))),
        )
    }

    /// The status as a small HTML page that reloads itself every 2 s (no JavaScript).
    pub fn to_html(&self) -> String {
        let h = &self.health;
        let mut p = String::with_capacity(4096);
        let _ = write!(
            p,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
             <title>KCL worker {id}</title><style>\
             body{{font-family:sans-serif;margin:1.5em;color:#222}}\
             table{{border-collapse:collapse;margin-bottom:1.5em}}\
             th,td{{border:1px solid #bbb;padding:4px 10px;text-align:left;font-size:15px}}\
             th{{background:#eee}} td.num{{text-align:right;font-family:monospace}}\
             .processing{{background:#c8f0c8}} .waiting-on-parents,.initializing{{background:#fff2b3}}\
             .shard-ending,.shutting-down,.complete{{background:#dde4ff}}\
             .error,.fatal{{background:#ffd0d0}}\
             </style></head><body>\
             <h1>Worker {id}</h1><p id=\"summary\">{state} &middot; {held} leases held &middot; \
             {live} live workers{leader} &middot; {scans} lease-table scans &middot; at {at}</p>",
            id = html(&h.worker_id),
            state = if h.running { "running" } else { "stopped" },
            held = h.leases_held,
            live = h.fleet.live_workers,
            leader = if h.fleet.leader { " (leader)" } else { "" },
            scans = h.fleet.lease_table_scans,
            at = rfc3339(self.at),
        );
        for f in &self.fatal {
            let _ = write!(p, "<p class=\"fatal\">Stopped: {}</p>", html(f));
        }
        p.push_str(
            "<h2>Leases</h2><table id=\"leases\"><tr><th>Shard</th><th>State</th>\
             <th>Lag (ms)</th><th>KB/s</th><th>Records/s</th><th>Records</th><th>Checkpoint</th></tr>",
        );
        for s in &h.shards {
            let state = state_name(s.state);
            let _ = write!(
                p,
                "<tr><td>{}</td><td class=\"{state}\">{state}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                html(&s.shard_id),
                s.millis_behind_latest,
                s.throughput_kbps
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                s.records_per_sec
                    .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
                s.records_processed,
                s.checkpoint
                    .as_ref()
                    .map_or_else(|| "-".into(), |c| html(&c.to_string())),
            );
        }
        p.push_str("</table>");
        for (title, id, entries) in [
            ("Recent lease moves", "moves", &self.moves),
            ("Recent errors", "errors", &self.errors),
        ] {
            let _ = write!(
                p,
                "<h2>{title}</h2><table id=\"{id}\"><tr><th>Time</th><th>Lease</th><th>Event</th><th>Detail</th></tr>"
            );
            for e in entries {
                let name = e.event.name();
                let _ = write!(
                    p,
                    "<tr><td>{}</td><td>{}</td><td class=\"{name}\">{name}</td><td>{}</td></tr>",
                    rfc3339(e.at),
                    html(e.lease.as_deref().unwrap_or("-")),
                    html(&event_detail(&e.event)),
                );
            }
            p.push_str("</table>");
        }
        p.push_str("<p><a href=\"/status.json\">status.json</a></p></body></html>");
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_764_751_234_567);
        assert_eq!(rfc3339(t), "2025-12-03T08:40:34.567Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn text_is_escaped_in_html_and_json() {
        assert_eq!(
            html("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(json("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
