//! `kcl-bench fleet`: a fleet of workers in one process, each a real `Scheduler` with its shard
//! consumers, on one in-memory lease table whose every call is delayed by a simulated round
//! trip and counted by the cost meter ([`kcl_lease::MeteredLeaseStore`]).
//!
//! For each renewal mode it measures: the time from a cold start (every worker started at
//! once on a table with no leases) to an even spread; the steady-state lease-table cost per
//! shard and hour (rows read, read and write units as DynamoDB would bill them); CPU and memory
//! per worker; the time until the shards of `kill` workers killed at once are held elsewhere;
//! and the same for `kill` workers stopped gracefully. Beside it, the cost of the same fleet
//! under two modelled schedules, stated in the output: the Java KCL 3.x's and this project's
//! before worker heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use async_trait::async_trait;
use kcl_core::{
    InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler, SchedulerHandle, ShutdownRequestedInput,
};
use kcl_lease::metered::lease_size;
use kcl_lease::{
    CostSnapshot, FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseOp, LeaseRenewal, LeaseStore,
    LeaseTrigger, MeteredLeaseStore,
};
use tokio::time::Instant;

use crate::bench::{current_rss_mb, f, json, rusage, s};

/// The fleet's size and settings.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// Shards of the stream (one lease each).
    pub shards: usize,
    /// Workers in the fleet.
    pub workers: usize,
    /// Workers killed, and then workers stopped gracefully.
    pub kill: usize,
    /// Simulated round trip of every lease-store call.
    pub latency: Duration,
    /// The failover time (the other intervals follow from it, as by default).
    pub failover: Duration,
    /// How long the steady state is measured.
    pub window: Duration,
    /// The renewal modes to run.
    pub modes: Vec<LeaseRenewal>,
}

/// A processor that checkpoints at shutdown (the stream stays empty: this measures
/// coordination, with every shard consumer polling its shard).
struct Idle;

#[async_trait]
impl RecordProcessor for Idle {
    async fn process_records(&mut self, _input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

type Store = MeteredLeaseStore<Arc<FailureLeaseStore<InMemoryLeaseStore>>>;

fn owners(memory: &InMemoryLeaseStore) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for lease in memory.snapshot() {
        if let Some(owner) = lease.lease_owner {
            *counts.entry(owner).or_insert(0) += 1;
        }
    }
    counts
}

fn is_even(counts: &BTreeMap<String, usize>, live: &BTreeSet<String>, shards: usize) -> bool {
    let n = live.len().max(1);
    let total: usize = counts
        .iter()
        .filter(|(w, _)| live.contains(*w))
        .map(|(_, c)| c)
        .sum();
    total == shards
        && live.iter().all(|w| {
            counts
                .get(w)
                .is_some_and(|c| *c == shards / n || *c == shards.div_ceil(n))
        })
}

async fn wait(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Result<Duration> {
    crate::bench::wait_for(limit, Duration::from_millis(100), what, cond).await
}

/// Per shard and hour, from a cost measured over `window`.
fn per_shard_hour(v: f64, shards: usize, window: Duration) -> f64 {
    v / shards as f64 * 3600.0 / window.as_secs_f64()
}

/// The safety rounds' share of the steady state's cost. Each worker runs one every
/// `live × 4 × failover_time` (jittered, `machine::SAFETY_FAILOVERS`): about one round per
/// `4 × failover_time` for the whole fleet, but the first comes that long after a worker
/// starts, over an hour into a 100-worker fleet's life, so a window of seconds seldom sees one.
/// So one round's calls (an eventually consistent lease-table scan, the strongly consistent
/// heartbeat read after it, and the follow-up read of every heartbeat row a failover time
/// later) are made on the same table through a meter of their own, and billed at the
/// schedule's rate, less the lease-table scans the window saw itself.
struct SafetyShare {
    round_read_units: f64,
    rounds_per_hour: f64,
    read_units_per_shard_hour: f64,
    rows_per_shard_hour: f64,
}

async fn safety_rounds(
    memory: &InMemoryLeaseStore,
    settings: &FleetSettings,
    shards: usize,
    window_cost: &CostSnapshot,
    window: Duration,
) -> Result<SafetyShare> {
    let meter = MeteredLeaseStore::new(memory.clone());
    meter.list_eventually_consistent().await?;
    for _ in 0..2 {
        meter.list_heartbeats(true).await?;
    }
    let round = meter.snapshot();
    let rounds_per_hour =
        3600.0 / (f64::from(kcl_lease::machine::SAFETY_FAILOVERS) * settings.failover.as_secs_f64());
    let seen_per_hour =
        window_cost.ops.get("list").map_or(0, |c| c.calls) as f64 * 3600.0 / window.as_secs_f64();
    let unseen = (rounds_per_hour - seen_per_hour).max(0.0);
    let rows = (round.lease_rows_read() + round.heartbeat_rows_read()) as f64;
    Ok(SafetyShare {
        round_read_units: round.read_units(),
        rounds_per_hour,
        read_units_per_shard_hour: round.read_units() * unseen / shards as f64,
        rows_per_shard_hour: rows * unseen / shards as f64,
    })
}

/// Runs the fleet once per renewal mode; one JSON line per mode, then the modelled schedules.
pub async fn run(settings: &FleetSettings) -> Result<Vec<String>> {
    if settings.kill * 2 >= settings.workers {
        bail!("fleet: --fleet-kill must be less than half of --fleet-workers");
    }
    let mut lines = Vec::new();
    let mut row_size = 0.0;
    for mode in &settings.modes {
        let (line, size) = run_mode(settings, *mode).await?;
        row_size = size;
        lines.push(line);
    }
    lines.extend(models(settings, row_size));
    Ok(lines)
}

async fn run_mode(settings: &FleetSettings, mode: LeaseRenewal) -> Result<(String, f64)> {
    let n = settings.shards;
    let backend = LocalBackend::new();
    let stream = format!("fleet-{}", mode.as_str());
    backend.create_stream(&stream, n)?;
    let memory = InMemoryLeaseStore::new();
    let mut plan = LeaseFaultPlan::new(0);
    for op in LeaseOp::ALL {
        plan = plan.rule(op, LeaseTrigger::Always, LeaseFault::Delay(settings.latency));
    }
    let meter: Store = MeteredLeaseStore::new(Arc::new(FailureLeaseStore::new(memory.clone(), plan)));
    let rss_before = current_rss_mb();
    let (cpu_start, _) = rusage();
    let start = Instant::now();
    let mut handles: Vec<SchedulerHandle> = Vec::new();
    for i in 0..settings.workers {
        let scheduler = Scheduler::builder("fleet", stream.clone())
            .worker_id(format!("worker-{i:04}"))
            .backend(backend.clone())
            .lease_store(meter.clone())
            .initial_position(InitialPosition::TrimHorizon)
            .failover_time(settings.failover)
            .lease_renewal(mode)
            // Every shard consumer still polls its (empty) shard, but every 10 s rather than
            // every second: the read path is measured elsewhere, and a hundred workers share
            // this machine's two cores here instead of having a machine each.
            .polling_interval(Duration::from_secs(10))
            .processor_factory(|_: &str| Idle)
            .build()?;
        handles.push(scheduler.spawn());
    }
    let all: BTreeSet<String> = handles.iter().map(|h| h.worker_id().to_owned()).collect();
    let limit = settings.failover * 30 + Duration::from_secs(120);
    wait(limit, "an even spread", || is_even(&owners(&memory), &all, n)).await?;
    let cold_start = start.elapsed();
    let cold_cost = meter.snapshot();

    // Steady state: let hand-offs and announcements settle, then measure.
    tokio::time::sleep(settings.failover * 2).await;
    let before = meter.snapshot();
    let (cpu0, _) = rusage();
    tokio::time::sleep(settings.window).await;
    let (cpu1, peak) = rusage();
    let cost: CostSnapshot = meter.snapshot().since(&before);
    let rss = current_rss_mb();
    let safety = safety_rounds(&memory, settings, n, &cost, settings.window).await?;
    let sizes: Vec<usize> = memory.snapshot().iter().map(lease_size).collect();
    let row_size = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;

    // Kill `kill` workers at once: as if their processes died.
    let killed: Vec<SchedulerHandle> = handles.drain(..settings.kill).collect();
    let theirs: BTreeSet<String> = killed.iter().flat_map(|h| h.held_leases()).collect();
    let killed_at = Instant::now();
    for h in killed {
        h.kill().await;
    }
    let held_elsewhere = |handles: &[SchedulerHandle], keys: &BTreeSet<String>| {
        let held: BTreeSet<String> = handles.iter().flat_map(|h| h.held_leases()).collect();
        keys.iter().all(|k| held.contains(k))
    };
    wait(limit, "the killed workers' shards held elsewhere", || {
        held_elsewhere(&handles, &theirs)
    })
    .await?;
    let failover = killed_at.elapsed();
    let live: BTreeSet<String> = handles.iter().map(|h| h.worker_id().to_owned()).collect();
    wait(limit, "even again after the kill", || {
        is_even(&owners(&memory), &live, n)
    })
    .await?;

    // Stop `kill` workers gracefully, all at once.
    let stopping: Vec<SchedulerHandle> = handles.drain(..settings.kill).collect();
    let theirs: BTreeSet<String> = stopping.iter().flat_map(|h| h.held_leases()).collect();
    let stopped_at = Instant::now();
    let mut shutdowns = tokio::task::JoinSet::new();
    for h in stopping {
        shutdowns.spawn(h.shutdown());
    }
    wait(limit, "the stopped workers' shards held elsewhere", || {
        held_elsewhere(&handles, &theirs)
    })
    .await?;
    let handoff = stopped_at.elapsed();
    while let Some(done) = shutdowns.join_next().await {
        if let Ok(Err(e)) = done {
            bail!("fleet: a graceful shutdown failed: {e}");
        }
    }
    let (cpu_end, _) = rusage();
    for h in handles {
        h.kill().await;
    }
    let w = settings.workers as f64;
    let window = settings.window;
    let line = json(&[
        ("scenario", s("fleet")),
        ("lease_renewal", s(mode.as_str())),
        ("shards", n.to_string()),
        ("workers", settings.workers.to_string()),
        ("store_latency_ms", f(settings.latency.as_secs_f64() * 1000.0)),
        ("failover_ms", settings.failover.as_millis().to_string()),
        ("polling_interval_ms", "10000".into()),
        ("seconds_to_even_from_cold_start", f(cold_start.as_secs_f64())),
        ("cold_start_write_units", cold_cost.write_units().to_string()),
        ("cold_start_read_units", f(cold_cost.read_units())),
        ("killed_workers", settings.kill.to_string()),
        (
            "seconds_until_killed_workers_shards_held_elsewhere",
            f(failover.as_secs_f64()),
        ),
        ("stopped_workers", settings.kill.to_string()),
        (
            "seconds_until_stopped_workers_shards_held_elsewhere",
            f(handoff.as_secs_f64()),
        ),
        ("steady_window_seconds", f(window.as_secs_f64())),
        (
            "lease_rows_read_per_shard_minute",
            f(per_shard_hour(cost.lease_rows_read() as f64, n, window) / 60.0),
        ),
        (
            "lease_writes_per_shard_minute",
            f(per_shard_hour(cost.lease_writes() as f64, n, window) / 60.0),
        ),
        (
            "read_units_per_shard_hour",
            f(per_shard_hour(cost.read_units(), n, window)),
        ),
        ("safety_round_read_units", f(safety.round_read_units)),
        ("safety_rounds_per_fleet_hour", f(safety.rounds_per_hour)),
        (
            "read_units_per_shard_hour_with_safety_rounds",
            f(per_shard_hour(cost.read_units(), n, window) + safety.read_units_per_shard_hour),
        ),
        (
            "write_units_per_shard_hour",
            f(per_shard_hour(cost.write_units() as f64, n, window)),
        ),
        (
            "heartbeat_rows_read_per_shard_hour",
            f(per_shard_hour(cost.heartbeat_rows_read() as f64, n, window)),
        ),
        (
            "coordination_rows_read_per_shard_minute",
            f(per_shard_hour(
                (cost.lease_rows_read() + cost.heartbeat_rows_read()) as f64,
                n,
                window,
            ) / 60.0),
        ),
        (
            "coordination_rows_read_per_shard_minute_with_safety_rounds",
            f((per_shard_hour(
                (cost.lease_rows_read() + cost.heartbeat_rows_read()) as f64,
                n,
                window,
            ) + safety.rows_per_shard_hour)
                / 60.0),
        ),
        (
            "lease_table_scans_per_minute",
            f(cost.ops.get("list").map_or(0, |c| c.calls) as f64 * 60.0 / window.as_secs_f64()),
        ),
        (
            "cpu_percent_of_a_core_per_worker_steady",
            f((cpu1 - cpu0) / window.as_secs_f64() / w * 100.0),
        ),
        ("cpu_seconds_whole_run", f(cpu_end - cpu_start)),
        ("rss_mb_per_worker", f((rss - rss_before).max(0.0) / w)),
        ("peak_rss_mb", f(peak)),
        ("mean_lease_row_bytes", f(row_size)),
    ]);
    Ok((line, row_size))
}

/// The cost of the same fleet under modelled schedules (no measurement: arithmetic, stated).
fn models(settings: &FleetSettings, row_bytes: f64) -> Vec<String> {
    let n = settings.shards as f64;
    let w = settings.workers as f64;
    let fo = settings.failover.as_secs_f64();
    let per_hour = |interval_s: f64| 3600.0 / interval_s;
    let scan_units = |rows: f64, consistent: bool| {
        let units = (rows * row_bytes / 4096.0).ceil().max(1.0);
        if consistent {
            units
        } else {
            units / 2.0
        }
    };
    // Renewals: every lease, every failover / 3, one write unit each (rows are under 1 KB).
    let renew_wu = per_hour(fo / 3.0);
    // Java KCL 3.x: the leader scans the lease table every leaseAssignmentIntervalMillis
    // (default 2 x failover); every worker queries the lease-owner index for its own leases
    // every half of that (less 25 ms); every worker writes its WorkerMetricStats row every 30 s
    // and the leader reads them all at each assignment run. Index items: leaseKey and leaseOwner
    // plus 100 bytes of index overhead, eventually consistent.
    let java_scan_ru = per_hour(2.0 * fo) * scan_units(n, true);
    let index_item = 20.0 + 2.0 * 24.0 + 100.0;
    let java_query_ru = w * per_hour(fo - 0.025) * ((n / w * index_item / 4096.0).ceil().max(1.0) / 2.0);
    let java_metrics_wu = w * per_hour(30.0);
    let java_metrics_ru = per_hour(2.0 * fo) * ((w * 200.0 / 4096.0).ceil().max(1.0));
    let java = json(&[
        ("scenario", s("fleet-model")),
        ("model", s("java-kcl-3.x")),
        (
            "schedule",
            s("per-lease renewal every failover/3; leader scans the lease table (strongly consistent) every 2 x failover; every worker queries LeaseOwnerToLeaseKeyIndex every failover; WorkerMetricStats written by every worker every 30 s, read by the leader every 2 x failover"),
        ),
        ("shards", settings.shards.to_string()),
        ("workers", settings.workers.to_string()),
        ("failover_ms", settings.failover.as_millis().to_string()),
        (
            "lease_rows_read_per_shard_minute",
            f(per_hour(2.0 * fo) / 60.0),
        ),
        (
            "read_units_per_shard_hour",
            f((java_scan_ru + java_query_ru + java_metrics_ru) / n),
        ),
        ("write_units_per_shard_hour", f(renew_wu + java_metrics_wu / n)),
    ]);
    // This project before heartbeats: every worker scanned the table (strongly consistent)
    // every failover / 3 and for its shard sync every 60 s; per-lease renewal.
    let before_scans_per_hour = w * (per_hour(fo / 3.0) + per_hour(60.0));
    let before = json(&[
        ("scenario", s("fleet-model")),
        ("model", s("kcl-rust-before-heartbeats")),
        (
            "schedule",
            s("per-lease renewal every failover/3; every worker scans the lease table (strongly consistent) every failover/3 and every 60 s for shard sync"),
        ),
        ("shards", settings.shards.to_string()),
        ("workers", settings.workers.to_string()),
        ("failover_ms", settings.failover.as_millis().to_string()),
        (
            "lease_rows_read_per_shard_minute",
            f(before_scans_per_hour / 60.0),
        ),
        (
            "read_units_per_shard_hour",
            f(before_scans_per_hour * scan_units(n, true) / n),
        ),
        ("write_units_per_shard_hour", f(renew_wu)),
    ]);
    vec![java, before]
}
