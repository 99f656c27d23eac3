//! `kcl-bench --backend emulators coordination`: real `kcl-tail` processes against the
//! emulators (kinesis-local and dynalite), measured through their own Prometheus endpoints
//! (the lease-store cost meter's `LeaseStore.*` metrics and `CurrentLeases`).
//!
//! For 4 and 8 workers on a 200-shard stream (per-lease renewal) and for 4 workers with
//! worker renewal: lease-table rows read and writes per shard and minute in steady state (an
//! idle stream, so no checkpoints), the time until a `kill -9`ed worker's shards are held
//! elsewhere, the time until a worker stopped with SIGTERM has handed its shards over; then
//! how long 1 → 4 workers on 16 shards takes to be even.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kcl_lease::LeaseRenewal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::bench::{aws, create_stream, f, json, s, unique};

/// One `kcl-tail` worker and its metrics port.
struct Tail {
    child: Child,
    port: u16,
}

/// The metric lines of one worker: name and labels to value.
async fn scrape(port: u16) -> Result<BTreeMap<String, f64>> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((key, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(key.to_owned(), v);
            }
        }
    }
    Ok(out)
}

fn sum(metrics: &BTreeMap<String, f64>, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(name) && k[name.len()..].starts_with('{') && keep(k))
        .map(|(_, v)| v)
        .sum()
}

fn op_is(key: &str, ops: &[&str]) -> bool {
    ops.iter().any(|op| key.contains(&format!("op=\"{op}\"")))
}

const READS: [&str; 4] = ["list", "get", "list_heartbeats", "get_heartbeat"];
const HEARTBEATS: [&str; 5] = [
    "list_heartbeats",
    "put_heartbeat",
    "delete_heartbeat",
    "get_heartbeat",
    "nudge_heartbeat",
];
/// The reads of the heartbeat table.
const HEARTBEAT_READS: [&str; 2] = ["list_heartbeats", "get_heartbeat"];

/// The kinds of cost the steady state is measured in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Cost {
    LeaseRows,
    LeaseWrites,
    HeartbeatRows,
    ReadUnits,
}

fn cost_of(key: &str) -> Option<Cost> {
    let named = |name: &str| key.starts_with(name) && key[name.len()..].starts_with('{');
    if named("LeaseStore_RowsRead") {
        Some(if op_is(key, &HEARTBEAT_READS) {
            Cost::HeartbeatRows
        } else {
            Cost::LeaseRows
        })
    } else if named("LeaseStore_Calls") && !op_is(key, &READS) && !op_is(key, &HEARTBEATS) {
        Some(Cost::LeaseWrites)
    } else if named("LeaseStore_ReadUnits") {
        Some(Cost::ReadUnits)
    } else {
        None
    }
}

/// Counts what the fleet's cost series grew by over a window, scraped every few seconds: the
/// exporter drops a series that stayed idle for a minute (`idle_timeout`), so a difference of
/// two sums would lose (or, for a series gone, subtract) what it had counted.
#[derive(Default)]
struct CostMeter {
    last: BTreeMap<(usize, String), f64>,
    grown: BTreeMap<Cost, f64>,
    started: bool,
}

impl CostMeter {
    async fn scrape(&mut self, tails: &[Tail]) -> Result<()> {
        for (i, t) in tails.iter().enumerate() {
            for (key, value) in scrape(t.port).await? {
                let Some(cost) = cost_of(&key) else { continue };
                let previous = self.last.insert((i, key), value);
                let grown = match previous {
                    Some(p) if value >= p => value - p,
                    Some(_) => value,              // dropped and counting again from 0
                    None if self.started => value, // new since the window began
                    None => 0.0,
                };
                *self.grown.entry(cost).or_default() += grown;
            }
        }
        self.started = true;
        Ok(())
    }

    /// Scrapes every 5 s for `window`.
    async fn measure(tails: &[Tail], window: Duration) -> Result<Self> {
        let mut meter = CostMeter::default();
        meter.scrape(tails).await?;
        let end = Instant::now() + window;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(5).min(end - Instant::now())).await;
            meter.scrape(tails).await?;
        }
        Ok(meter)
    }

    fn get(&self, cost: Cost) -> f64 {
        self.grown.get(&cost).copied().unwrap_or(0.0)
    }
}

async fn leases(tails: &[Tail]) -> Vec<f64> {
    let mut out = Vec::new();
    for t in tails {
        let held = match scrape(t.port).await {
            Ok(m) => sum(&m, "CurrentLeases", |_| true),
            Err(_) => -1.0,
        };
        out.push(held);
    }
    out
}

fn even(held: &[f64], shards: usize) -> bool {
    let n = held.len();
    held.iter().sum::<f64>() as usize == shards
        && held
            .iter()
            .all(|h| *h as usize == shards / n || *h as usize == shards.div_ceil(n))
}

async fn until_even(tails: &[Tail], shards: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if even(&leases(tails).await, shards) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("not even within {limit:?}: {:?}", leases(tails).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_held(tails: &[Tail], shards: usize, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if leases(tails).await.iter().sum::<f64>() as usize == shards {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("shards not all held within {limit:?}: {:?}", leases(tails).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(stream: &str, app: &str, worker: usize, port: u16, mode: LeaseRenewal) -> Result<Tail> {
    // kcl-tail is kcl-tools' binary: built into the same directory as kcl-bench by a workspace
    // build, but not by `cargo run -p kcl-examples`.
    let exe = std::env::current_exe()?.with_file_name("kcl-tail");
    if !exe.is_file() {
        bail!(
            "{} is missing: build kcl-tail beside kcl-bench first (cargo build --release -p kcl-tools --bin kcl-tail)",
            exe.display()
        );
    }
    let child = Command::new(&exe)
        .args(["--stream", stream, "--application-name", app])
        .args(["--worker-id", &format!("w{worker}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args([
            "--lease-renewal",
            mode.as_str(),
            "--initial-position",
            "trim-horizon",
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(Tail { child, port })
}

async fn wait_up(tail: &Tail) {
    for _ in 0..300 {
        if scrape(tail.port).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One fleet: steady-state cost, kill -9 fail-over, graceful hand-off.
async fn fleet(workers: usize, mode: LeaseRenewal, window: Duration, port: &mut u16) -> Result<String> {
    let (_, kinesis) = aws().await?;
    let shards = 200;
    let stream = unique("coord");
    create_stream(&kinesis, &stream, shards as i32).await?;
    let app = unique("coord-app");
    let mut tails = Vec::new();
    for i in 0..workers {
        *port += 1;
        tails.push(spawn(&stream, &app, i, *port, mode)?);
    }
    for t in &tails {
        wait_up(t).await;
    }
    let to_even = until_even(&tails, shards, Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cost = CostMeter::measure(&tails, window).await?;
    let per_shard_minute = |v: f64| v / shards as f64 / (window.as_secs_f64() / 60.0);
    // kill -9 one worker.
    let mut victim = tails.remove(0);
    let killed = Instant::now();
    victim.child.start_kill()?;
    let _ = victim.child.wait().await;
    until_held(&tails, shards, Duration::from_secs(120)).await?;
    let failover = killed.elapsed();
    until_even(&tails, shards, Duration::from_secs(120)).await?;
    // SIGTERM another.
    let mut leaving = tails.remove(0);
    let pid = leaving.child.id().context("no pid")?;
    let stopped = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    until_held(&tails, shards, Duration::from_secs(120)).await?;
    let handoff = stopped.elapsed();
    let _ = leaving.child.wait().await;
    for mut t in tails {
        let _ = t.child.start_kill();
        let _ = t.child.wait().await;
    }
    // kinesis-local keeps every stream in memory: leave it as light as it was.
    let _ = kinesis.delete_stream().stream_name(&stream).send().await;
    Ok(json(&[
        ("scenario", s("coordination")),
        ("backend", s("emulators")),
        ("lease_renewal", s(mode.as_str())),
        ("shards", shards.to_string()),
        ("workers", workers.to_string()),
        ("failover_ms", "10000".into()),
        ("seconds_to_even_from_cold_start", f(to_even.as_secs_f64())),
        ("steady_window_seconds", f(window.as_secs_f64())),
        (
            "lease_rows_read_per_shard_minute",
            f(per_shard_minute(cost.get(Cost::LeaseRows))),
        ),
        (
            "lease_writes_per_shard_minute",
            f(per_shard_minute(cost.get(Cost::LeaseWrites))),
        ),
        (
            "heartbeat_rows_read_per_shard_minute",
            f(per_shard_minute(cost.get(Cost::HeartbeatRows))),
        ),
        (
            "coordination_rows_read_per_shard_minute",
            f(per_shard_minute(
                cost.get(Cost::LeaseRows) + cost.get(Cost::HeartbeatRows),
            )),
        ),
        (
            "read_units_per_shard_minute",
            f(per_shard_minute(cost.get(Cost::ReadUnits))),
        ),
        (
            "kill_9_seconds_until_shards_held_elsewhere",
            f(failover.as_secs_f64()),
        ),
        (
            "sigterm_seconds_until_shards_held_elsewhere",
            f(handoff.as_secs_f64()),
        ),
    ]))
}

/// 1 → 4 workers on 16 shards.
async fn join(port: &mut u16) -> Result<String> {
    let (_, kinesis) = aws().await?;
    let stream = unique("coord-join");
    create_stream(&kinesis, &stream, 16).await?;
    let app = unique("coord-join-app");
    *port += 1;
    let mut tails = vec![spawn(&stream, &app, 0, *port, LeaseRenewal::PerLease)?];
    wait_up(&tails[0]).await;
    until_held(&tails, 16, Duration::from_secs(60)).await?;
    let start = Instant::now();
    for i in 1..4 {
        *port += 1;
        tails.push(spawn(&stream, &app, i, *port, LeaseRenewal::PerLease)?);
    }
    for t in &tails {
        wait_up(t).await;
    }
    until_even(&tails, 16, Duration::from_secs(120)).await?;
    let took = start.elapsed();
    for mut t in tails {
        let _ = t.child.start_kill();
        let _ = t.child.wait().await;
    }
    let _ = kinesis.delete_stream().stream_name(&stream).send().await;
    Ok(json(&[
        ("scenario", s("coordination-join")),
        ("backend", s("emulators")),
        ("shards", "16".into()),
        ("seconds_from_3_joining_to_4_each", f(took.as_secs_f64())),
    ]))
}

/// Runs every fleet of the scenario; one JSON line each.
pub async fn run(window: Duration) -> Result<Vec<String>> {
    let mut port = 19_400;
    let mut out = Vec::new();
    for (workers, mode) in [
        (4, LeaseRenewal::PerLease),
        (8, LeaseRenewal::PerLease),
        (4, LeaseRenewal::Worker),
    ] {
        let line = fleet(workers, mode, window, &mut port).await?;
        eprintln!("{line}");
        out.push(line);
    }
    out.push(join(&mut port).await?);
    Ok(out)
}
