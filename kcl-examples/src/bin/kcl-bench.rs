//! `kcl-bench`: measures what users choose a KCL for, on real work, and prints one JSON object
//! per scenario with its figures and the exact settings.
//!
//! Scenarios (all by default): `throughput`, `latency`, `failover`, `handoff`, `rebalance`,
//! `scale`, `skewed` (2 hot shards, count-based against load-aware balancing; run by name only),
//! `fleet` (many workers in one process with the lease-store cost meter; see
//! `kcl_examples::fleet`). `--backend emulators` runs `throughput` and `latency` against the Kinesis and
//! DynamoDB emulators (started by `localstack/start-emulators.sh`), with a plain `GetRecords`
//! loop and the `kcl-tail` binary beside the runtime for comparison.
//!
//! Figures are wall-clock on a shared machine: compare ratios and medians across runs, not
//! single numbers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use kcl_core::{
    FanOutConfig, InMemoryLeaseStore, InitialPosition, IteratorPosition, KinesisBackend, LocalBackend,
    ProcessRecordsInput, ProcessorError, RecordProcessor, RetrievalMode, Scheduler, SchedulerBuilder,
    SchedulerHandle, ShutdownRequestedInput, StreamBackend,
};
use kcl_examples::bench::{aws, create_stream, current_rss_mb, f, json, rusage, s, unique};
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

const ALL: [&str; 10] = [
    "throughput",
    "latency",
    "failover",
    "handoff",
    "rebalance",
    "scale",
    "fleet",
    "coordination",
    "skewed",
    "simulate",
];

/// Benchmarks of the KCL runtime; prints one JSON object per scenario.
#[derive(Parser, Debug)]
#[command(name = "kcl-bench", version)]
struct Args {
    /// Scenarios to run (default: all that the backend supports).
    scenarios: Vec<String>,
    /// `local` (the bundled backend) or `emulators` (kinesis-local and dynalite).
    #[arg(long, default_value = "local")]
    backend: String,
    /// Records pre-loaded for `throughput` (default 1,000,000 local, 20,000 on the emulators).
    #[arg(long)]
    records: Option<u64>,
    /// Failover time for `failover`, `handoff` and `rebalance`, in milliseconds (3 s is the
    /// setting the Java KCL was measured with on this machine).
    #[arg(long, default_value_t = 3000)]
    failover_ms: u64,
    /// Leases held by the worker in `scale`.
    #[arg(long, default_value_t = 2000)]
    scale_leases: usize,
    /// `fleet`: shards (the large run: 10000).
    #[arg(long, default_value_t = 1000)]
    fleet_shards: usize,
    /// `fleet`: workers in the one process (the large run: 100).
    #[arg(long, default_value_t = 20)]
    fleet_workers: usize,
    /// `fleet`: workers killed, then workers stopped gracefully (default: a tenth).
    #[arg(long)]
    fleet_kill: Option<usize>,
    /// `fleet`: simulated round trip of every lease-store call, in milliseconds.
    #[arg(long, default_value_t = 5)]
    fleet_latency_ms: u64,
    /// `fleet`: failover time in milliseconds (the runtime's default).
    #[arg(long, default_value_t = 10_000)]
    fleet_failover_ms: u64,
    /// `fleet`: seconds of steady state measured.
    #[arg(long, default_value_t = 20)]
    fleet_window_s: u64,
    /// `skewed`: the fraction of the bytes the 2 hot shards carry (see `kcl_examples::skewed`).
    #[arg(long, default_value_t = 0.5)]
    skew_hot_share: f64,
    /// `skewed`: seconds each balancing mode runs.
    #[arg(long, default_value_t = 60)]
    skew_window_s: u64,
    /// `fleet`: renewal modes to run: per-lease, worker, or both.
    #[arg(long, default_value = "both")]
    fleet_renewal: String,
    /// `simulate`: simulated fleets per renewal mode (seeds `--sim-first-seed ..`).
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// `simulate`: the first seed.
    #[arg(long, default_value_t = 0)]
    sim_first_seed: u64,
    /// `simulate`: replay this one seed and print its lease events.
    #[arg(long)]
    sim_seed: Option<u64>,
    /// `simulate`: workers started in each simulated fleet.
    #[arg(long, default_value_t = 8)]
    sim_workers: usize,
    /// `simulate`: shards (leases) in each simulated fleet.
    #[arg(long, default_value_t = 32)]
    sim_shards: usize,
    /// `simulate`: renewal modes: per-lease, worker, or both.
    #[arg(long, default_value = "both")]
    sim_renewal: String,
    /// `simulate`: threads running seeds (default: the available cores).
    #[arg(long)]
    sim_threads: Option<usize>,
    #[command(flatten)]
    log: kcl_examples::logging::LogArgs,
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// What the processors observed, shared by all workers of a scenario.
#[derive(Default)]
struct Observed {
    processed: AtomicU64,
    /// Put-to-process latencies in microseconds (first 8 bytes of a payload: put time).
    latencies: Mutex<Vec<u64>>,
    /// How often each record id (bytes 8..16 of a payload) was processed, when tracked.
    times: Mutex<HashMap<u64, u32>>,
    /// When each shard last processed a record, and by which worker.
    last: Mutex<HashMap<String, (Instant, String)>>,
}

#[derive(Clone, Copy)]
enum Track {
    Count,
    Latency,
    Everything,
}

struct BenchProcessor {
    observed: Arc<Observed>,
    track: Track,
    epoch: Instant,
    shard: String,
    worker: String,
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

#[async_trait]
impl RecordProcessor for BenchProcessor {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let n = input.records.len() as u64;
        match self.track {
            Track::Count => {}
            Track::Latency | Track::Everything => {
                let now = self.epoch.elapsed().as_micros() as u64;
                let mut lat = self.observed.latencies.lock().map_err(|_| "poisoned")?;
                for r in input.records {
                    lat.push(now.saturating_sub(u64_at(&r.data, 0).unwrap_or(now)));
                }
            }
        }
        if let Track::Everything = self.track {
            let mut times = self.observed.times.lock().map_err(|_| "poisoned")?;
            for r in input.records {
                *times
                    .entry(u64_at(&r.data, 8).ok_or("short payload")?)
                    .or_default() += 1;
            }
            drop(times);
            let mut last = self.observed.last.lock().map_err(|_| "poisoned")?;
            last.insert(self.shard.clone(), (Instant::now(), self.worker.clone()));
        }
        self.observed.processed.fetch_add(n, Ordering::Relaxed);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

/// A payload of `size` bytes: put time (µs since `epoch`), record id, padding.
fn payload(epoch: Instant, id: u64, size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size.max(16));
    v.extend_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v.resize(size.max(16), b'x');
    Bytes::from(v)
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn wait_for(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Result<Duration> {
    kcl_examples::bench::wait_for(limit, Duration::from_millis(10), what, cond).await
}

// ---------------------------------------------------------------------------------------------
// Workers

struct Setup {
    app: String,
    stream: String,
    observed: Arc<Observed>,
    track: Track,
    epoch: Instant,
}

impl Setup {
    fn new(stream: &str, track: Track) -> Self {
        Self {
            app: format!("bench-{stream}"),
            stream: stream.to_owned(),
            observed: Arc::new(Observed::default()),
            track,
            epoch: Instant::now(),
        }
    }

    fn builder(&self, worker: &str) -> SchedulerBuilder {
        let (o, track, epoch, w) = (self.observed.clone(), self.track, self.epoch, worker.to_owned());
        Scheduler::builder(self.app.clone(), self.stream.clone())
            .worker_id(worker.to_owned())
            .initial_position(InitialPosition::TrimHorizon)
            .processor_factory(move |shard: &str| BenchProcessor {
                observed: o.clone(),
                track,
                epoch,
                shard: shard.to_owned(),
                worker: w.clone(),
            })
    }
}

fn settings(b: &kcl_core::SchedulerConfig) -> String {
    json(&[
        ("failover_ms", b.leases.failover_time.as_millis().to_string()),
        (
            "renew_interval_ms",
            b.leases.renew_interval.as_millis().to_string(),
        ),
        ("take_interval_ms", b.leases.take_interval.as_millis().to_string()),
        ("polling_interval_ms", b.polling_interval.as_millis().to_string()),
        (
            "min_read_interval_ms",
            b.min_read_interval.as_millis().to_string(),
        ),
        ("max_records", b.max_records.to_string()),
        ("max_prefetch_batches", b.max_prefetch_batches.to_string()),
        ("max_leases_to_steal", b.leases.max_leases_to_steal.to_string()),
        (
            "retrieval",
            s(match b.retrieval {
                RetrievalMode::Polling => "polling",
                RetrievalMode::FanOut(_) => "fan-out",
                _ => "other",
            }),
        ),
    ])
}

/// Puts `n` records of `size` bytes with random keys, 500 per call. Returns the last sequence
/// number per shard.
async fn preload(
    backend: &LocalBackend,
    stream: &str,
    n: u64,
    size: usize,
    epoch: Instant,
) -> Result<BTreeMap<String, String>> {
    let mut last = BTreeMap::new();
    let mut id = 0u64;
    while id < n {
        let batch: Vec<(String, Bytes)> = (id..(id + 500).min(n))
            .map(|i| {
                (
                    format!("k{}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 100_003),
                    payload(epoch, i, size),
                )
            })
            .collect();
        id += batch.len() as u64;
        for r in backend.put_records(stream, batch).await? {
            last.insert(r.shard_id, r.sequence_number.to_string());
        }
    }
    Ok(last)
}

/// Whether every shard in `last` is checkpointed at (or past) its last record.
fn all_checkpointed(store: &InMemoryLeaseStore, last: &BTreeMap<String, String>) -> bool {
    let rows = store.snapshot();
    last.iter().all(|(shard, seq)| {
        rows.iter().any(|l| {
            &l.lease_key == shard
                && (l.checkpoint.is_shard_end() || l.checkpoint.sequence().is_some_and(|c| c.as_str() == seq))
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Local scenarios

async fn throughput_local(args: &Args) -> Result<String> {
    let n = args.records.unwrap_or(1_000_000);
    let (shards, size) = (16, 100);
    let setup = Setup::new("throughput", Track::Count);
    let backend = LocalBackend::new();
    backend.create_stream(&setup.stream, shards)?;
    let store = InMemoryLeaseStore::new();
    let loaded = Instant::now();
    let last = preload(&backend, &setup.stream, n, size, setup.epoch).await?;
    let preload_s = loaded.elapsed().as_secs_f64();
    let scheduler = setup
        .builder("w0")
        .backend(backend)
        .lease_store(store.clone())
        .build()?;
    let config = settings(scheduler.config());
    let (cpu0, _) = rusage();
    let start = Instant::now();
    let worker = scheduler.spawn();
    let o = setup.observed.clone();
    wait_for(Duration::from_secs(300), "all records processed", || {
        o.processed.load(Ordering::Relaxed) >= n
    })
    .await?;
    wait_for(Duration::from_secs(60), "all checkpointed", || {
        all_checkpointed(&store, &last)
    })
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let (cpu1, peak) = rusage();
    worker.shutdown().await?;
    Ok(json(&[
        ("scenario", s("throughput")),
        ("backend", s("local")),
        ("records", n.to_string()),
        ("record_bytes", size.to_string()),
        ("shards", shards.to_string()),
        ("workers", "1".into()),
        ("preload_seconds", f(preload_s)),
        ("seconds", f(secs)),
        ("records_per_sec", f(n as f64 / secs)),
        ("mb_per_sec", f(n as f64 * size as f64 / secs / 1e6)),
        ("cpu_seconds", f(cpu1 - cpu0)),
        ("cpu_us_per_record", f((cpu1 - cpu0) * 1e6 / n as f64)),
        ("peak_rss_mb", f(peak)),
        ("settings", config),
    ]))
}

/// Puts records at `rate` per second for `secs` seconds with `put`, then waits for them all.
async fn steady<F, Fut>(setup: &Setup, rate: u64, secs: u64, mut put: F) -> Result<u64>
where
    F: FnMut(String, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let total = rate * secs;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = (rate * start.elapsed().as_millis() as u64 / 1000).min(total);
        while sent < due {
            put(format!("k{}", sent % 997), payload(setup.epoch, sent, 100)).await?;
            sent += 1;
        }
    }
    Ok(total)
}

fn latency_json(
    backend: &str,
    profile: &str,
    rate: u64,
    shards: usize,
    o: &Observed,
    config: String,
) -> String {
    let mut lat = o.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    json(&[
        ("scenario", s("latency")),
        ("backend", s(backend)),
        ("profile", s(profile)),
        ("rate_per_sec", rate.to_string()),
        ("shards", shards.to_string()),
        ("records", lat.len().to_string()),
        ("p50_ms", f(percentile_ms(&lat, 0.5))),
        ("p99_ms", f(percentile_ms(&lat, 0.99))),
        ("max_ms", f(lat.last().copied().unwrap_or(0) as f64 / 1000.0)),
        ("settings", config),
    ])
}

/// The profiles compared by `latency`: polling with the defaults, polling at the fastest rate
/// that stays within Kinesis's 5 reads/s per shard, and enhanced fan-out (records pushed).
fn profiles() -> [(&'static str, Duration, Duration, RetrievalMode); 3] {
    let (polling, min_read) = (Duration::from_secs(1), Duration::from_millis(200));
    [
        ("default", polling, min_read, RetrievalMode::Polling),
        (
            "fastest-sane",
            Duration::from_millis(200),
            Duration::from_millis(200),
            RetrievalMode::Polling,
        ),
        (
            "fan-out",
            polling,
            min_read,
            RetrievalMode::FanOut(FanOutConfig::default()),
        ),
    ]
}

async fn latency_local() -> Result<Vec<String>> {
    let (rate, secs, shards) = (2000, 10, 8);
    let mut out = Vec::new();
    for (profile, polling, min_read, retrieval) in profiles() {
        let setup = Setup::new(&format!("latency-{profile}"), Track::Latency);
        let backend = LocalBackend::new();
        backend.create_stream(&setup.stream, shards)?;
        let scheduler = setup
            .builder("w0")
            .backend(backend.clone())
            .lease_store(InMemoryLeaseStore::new())
            .polling_interval(polling)
            .min_read_interval(min_read)
            .retrieval(retrieval.clone())
            .build()?;
        let config = settings(scheduler.config());
        let worker = scheduler.spawn();
        wait_for(Duration::from_secs(30), "leases taken", || {
            worker.held_leases().len() == shards
        })
        .await?;
        let stream = setup.stream.clone();
        let total = steady(&setup, rate, secs, |k, d| {
            let (b, s) = (backend.clone(), stream.clone());
            async move {
                b.put_record(&s, &k, d, None).await?;
                Ok(())
            }
        })
        .await?;
        let o = setup.observed.clone();
        wait_for(Duration::from_secs(60), "all processed", || {
            o.processed.load(Ordering::Relaxed) >= total
        })
        .await?;
        worker.shutdown().await?;
        out.push(latency_json(
            "local",
            profile,
            rate,
            shards,
            &setup.observed,
            config,
        ));
    }
    Ok(out)
}

/// `failover` (abrupt kill) and `handoff` (graceful shutdown): 4 workers on 32 shards under a
/// steady load; one leaves; how long until its shards process again elsewhere, and duplicates.
async fn move_leases(args: &Args, graceful: bool) -> Result<String> {
    let name = if graceful { "handoff" } else { "failover" };
    let (shards, workers, rate) = (32, 4, 1000u64);
    let setup = Setup::new(name, Track::Everything);
    let backend = LocalBackend::new();
    backend.create_stream(&setup.stream, shards)?;
    let store = InMemoryLeaseStore::new();
    let failover = Duration::from_millis(args.failover_ms);
    let mut handles: Vec<Option<SchedulerHandle>> = Vec::new();
    let mut config = String::new();
    for i in 0..workers {
        let scheduler = setup
            .builder(&format!("w{i}"))
            .backend(backend.clone())
            .lease_store(store.clone())
            .failover_time(failover)
            .build()?;
        config = settings(scheduler.config());
        handles.push(Some(scheduler.spawn()));
    }
    wait_for(Duration::from_secs(60), "even balance", || {
        handles
            .iter()
            .flatten()
            .all(|h| h.held_leases().len() == shards / workers)
    })
    .await?;
    // Steady load in the background.
    let stop = Arc::new(AtomicU64::new(0));
    let producer = {
        let (b, st, stop, epoch) = (backend.clone(), setup.stream.clone(), stop.clone(), setup.epoch);
        tokio::spawn(async move {
            let mut id = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while stop.load(Ordering::Relaxed) == 0 {
                tick.tick().await;
                for _ in 0..rate / 100 {
                    b.put_record(&st, &format!("k{}", id % 997), payload(epoch, id, 100), None)
                        .await?;
                    id += 1;
                }
            }
            anyhow::Ok(id)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leaving = handles[0].take().context("worker 0")?;
    let moved: BTreeSet<String> = leaving.held_leases().into_iter().collect();
    let left_at = Instant::now();
    if graceful {
        leaving.shutdown().await?;
    } else {
        leaving.kill().await;
    }
    let o = setup.observed.clone();
    let elapsed = wait_for(
        Duration::from_secs(120),
        "moved shards processing elsewhere",
        || {
            let last = o.last.lock().map(|l| l.clone()).unwrap_or_default();
            moved
                .iter()
                .all(|s| last.get(s).is_some_and(|(t, w)| *t > left_at && w != "w0"))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(1, Ordering::Relaxed);
    let total = producer.await??;
    wait_for(Duration::from_secs(60), "all processed", || {
        o.times.lock().map(|t| t.len() as u64).unwrap_or(0) >= total
    })
    .await?;
    for h in handles.into_iter().flatten() {
        h.shutdown().await?;
    }
    let times = o.times.lock().map(|t| t.clone()).unwrap_or_default();
    let duplicates: u64 = times.values().map(|c| u64::from(c.saturating_sub(1))).sum();
    let lost = total.saturating_sub(times.len() as u64);
    Ok(json(&[
        ("scenario", s(name)),
        ("backend", s("local")),
        ("shards", shards.to_string()),
        ("workers", workers.to_string()),
        ("rate_per_sec", rate.to_string()),
        ("moved_shards", moved.len().to_string()),
        ("seconds_until_processing_elsewhere", f(elapsed.as_secs_f64())),
        ("records", total.to_string()),
        ("duplicates", duplicates.to_string()),
        ("lost", lost.to_string()),
        ("settings", config),
    ]))
}

async fn rebalance(args: &Args) -> Result<String> {
    let (shards, joining) = (64, 3);
    let setup = Setup::new("rebalance", Track::Everything);
    let backend = LocalBackend::new();
    backend.create_stream(&setup.stream, shards)?;
    let store = InMemoryLeaseStore::new();
    let failover = Duration::from_millis(args.failover_ms);
    let make = |i: usize| -> Result<Scheduler> {
        Ok(setup
            .builder(&format!("w{i}"))
            .backend(backend.clone())
            .lease_store(store.clone())
            .failover_time(failover)
            .build()?)
    };
    let first = make(0)?;
    let config = settings(first.config());
    let mut handles = vec![first.spawn()];
    wait_for(Duration::from_secs(60), "one worker holds all", || {
        handles[0].held_leases().len() == shards
    })
    .await?;
    let produced = preload(&backend, &setup.stream, 20_000, 100, setup.epoch).await?;
    for i in 1..=joining {
        handles.push(make(i)?.spawn());
    }
    let share = shards / (joining + 1);
    let elapsed = wait_for(Duration::from_secs(300), "even share", || {
        handles.iter().all(|h| h.held_leases().len() == share)
    })
    .await?;
    let o = setup.observed.clone();
    wait_for(Duration::from_secs(60), "all processed", || {
        o.times.lock().map(|t| t.len()).unwrap_or(0) >= 20_000
    })
    .await?;
    let moves = store.snapshot().iter().filter(|l| !l.is_owned_by("w0")).count();
    for h in handles {
        h.shutdown().await?;
    }
    let times = o.times.lock().map(|t| t.clone()).unwrap_or_default();
    let duplicates: u64 = times.values().map(|c| u64::from(c.saturating_sub(1))).sum();
    drop(produced);
    Ok(json(&[
        ("scenario", s("rebalance")),
        ("backend", s("local")),
        ("shards", shards.to_string()),
        ("workers_joining", joining.to_string()),
        ("seconds_until_even", f(elapsed.as_secs_f64())),
        ("leases_moved", moves.to_string()),
        ("duplicates", duplicates.to_string()),
        ("settings", config),
    ]))
}

async fn scale(args: &Args) -> Result<String> {
    let leases = args.scale_leases;
    let setup = Setup::new("scale", Track::Count);
    let backend = LocalBackend::new();
    backend.create_stream(&setup.stream, leases)?;
    let store = InMemoryLeaseStore::new();
    let scheduler = setup
        .builder("w0")
        .backend(backend)
        .lease_store(store.clone())
        .build()?;
    let config = settings(scheduler.config());
    let rss_before = current_rss_mb();
    let worker = scheduler.spawn();
    let took = wait_for(Duration::from_secs(120), "all leases held", || {
        worker.held_leases().len() == leases
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(20);
    let (cpu0, _) = rusage();
    let writes0 = store.write_count();
    tokio::time::sleep(window).await;
    let (cpu1, peak) = rusage();
    let writes = store.write_count() - writes0;
    let rss = current_rss_mb();
    worker.shutdown().await?;
    Ok(json(&[
        ("scenario", s("scale")),
        ("backend", s("local")),
        ("leases", leases.to_string()),
        ("seconds_to_take_all", f(took.as_secs_f64())),
        ("rss_mb", f(rss)),
        ("rss_mb_before_worker", f(rss_before)),
        ("peak_rss_mb", f(peak)),
        (
            "idle_cpu_seconds_per_second",
            f((cpu1 - cpu0) / window.as_secs_f64()),
        ),
        (
            "lease_writes_per_minute",
            f(writes as f64 * 60.0 / window.as_secs_f64()),
        ),
        ("settings", config),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Emulator scenarios

async fn put_many(kinesis: &aws_sdk_kinesis::Client, stream: &str, n: u64, epoch: Instant) -> Result<()> {
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let mut id = 0;
    while id < n {
        let entries = (id..(id + 500).min(n))
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{i}"))
                    .data(aws_sdk_kinesis::primitives::Blob::new(
                        payload(epoch, i, 100).to_vec(),
                    ))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        id += entries.len() as u64;
        let out = kinesis
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            bail!("PutRecords rejected records");
        }
    }
    Ok(())
}

/// Reads every shard with a plain `GetRecords` loop (all shards concurrently) until `n` records.
async fn plain_loop(backend: &KinesisBackend, stream: &str, n: u64) -> Result<f64> {
    let start = Instant::now();
    let shards = backend.list_shards(stream).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let count = Arc::new(AtomicU64::new(0));
    for shard in shards {
        let (b, st, c) = (backend.clone(), stream.to_owned(), count.clone());
        tasks.spawn(async move {
            let mut it = b
                .get_shard_iterator(&st, &shard.shard_id, &IteratorPosition::TrimHorizon)
                .await?;
            loop {
                let out = b.get_records(&st, &it, 10_000).await?;
                c.fetch_add(out.records.len() as u64, Ordering::Relaxed);
                if out.records.is_empty() && out.millis_behind_latest == 0 {
                    return anyhow::Ok(());
                }
                match out.next_iterator {
                    Some(next) => it = next,
                    None => return Ok(()),
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let got = count.load(Ordering::Relaxed);
    if got < n {
        bail!("plain loop read {got} of {n} records");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the `kcl-tail` binary next to this one until it printed `n` lines.
async fn kcl_tail(stream: &str, n: u64) -> Result<(f64, f64)> {
    let exe = std::env::current_exe()?.with_file_name("kcl-tail");
    let start = Instant::now();
    let mut child = tokio::process::Command::new(&exe)
        .args([
            "--stream",
            stream,
            "--application-name",
            &unique("bench-tail"),
            "--initial-position",
            "trim-horizon",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut first = None;
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
            Ok(Ok(Some(_))) => {
                got += 1;
                first.get_or_insert(start.elapsed().as_secs_f64());
            }
            _ => bail!("kcl-tail printed {got} of {n} lines"),
        }
    }
    let total = start.elapsed().as_secs_f64();
    child.start_kill()?;
    Ok((first.unwrap_or(total), total))
}

async fn throughput_emulators(args: &Args) -> Result<String> {
    let n = args.records.unwrap_or(20_000);
    let shards = 4;
    let (sdk, kinesis) = aws().await?;
    let setup = Setup::new(&unique("throughput"), Track::Count);
    create_stream(&kinesis, &setup.stream, shards).await?;
    put_many(&kinesis, &setup.stream, n, setup.epoch).await?;
    let backend = KinesisBackend::from_conf(&sdk);
    let plain = plain_loop(&backend, &setup.stream, n).await?;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), setup.app.clone());
    let start = Instant::now();
    store.ensure_table().await?;
    let scheduler = setup
        .builder("w0")
        .backend(backend)
        .lease_store(store.clone())
        .build()?;
    let config = settings(scheduler.config());
    let worker = scheduler.spawn();
    let o = setup.observed.clone();
    wait_for(Duration::from_secs(300), "all processed", || {
        o.processed.load(Ordering::Relaxed) >= n
    })
    .await?;
    let runtime = start.elapsed().as_secs_f64();
    worker.shutdown().await?;
    let (tail_first, tail_total) = kcl_tail(&setup.stream, n).await?;
    let _ = store.list().await?;
    Ok(json(&[
        ("scenario", s("throughput")),
        ("backend", s("emulators")),
        ("records", n.to_string()),
        ("record_bytes", "100".into()),
        ("shards", shards.to_string()),
        ("plain_getrecords_loop_records_per_sec", f(n as f64 / plain)),
        ("runtime_records_per_sec", f(n as f64 / runtime)),
        ("kcl_tail_records_per_sec", f(n as f64 / tail_total)),
        ("kcl_tail_seconds_to_first_record", f(tail_first)),
        ("runtime_vs_plain_ratio", f(plain / runtime)),
        ("settings", config),
    ]))
}

async fn latency_emulators() -> Result<Vec<String>> {
    let (rate, secs, shards) = (200, 10, 4);
    let (sdk, kinesis) = aws().await?;
    let mut out = Vec::new();
    for (profile, polling, min_read, retrieval) in profiles() {
        let setup = Setup::new(&unique(&format!("latency-{profile}")), Track::Latency);
        create_stream(&kinesis, &setup.stream, shards as i32).await?;
        let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), setup.app.clone());
        store.ensure_table().await?;
        let scheduler = setup
            .builder("w0")
            .backend(KinesisBackend::from_conf(&sdk))
            .lease_store(store)
            .polling_interval(polling)
            .min_read_interval(min_read)
            .retrieval(retrieval.clone())
            .initial_position(InitialPosition::TrimHorizon)
            .build()?;
        let config = settings(scheduler.config());
        let worker = scheduler.spawn();
        wait_for(Duration::from_secs(60), "leases taken", || {
            worker.held_leases().len() == shards
        })
        .await?;
        let stream = setup.stream.clone();
        let total = steady(&setup, rate, secs, |k, d| {
            let (kin, st) = (kinesis.clone(), stream.clone());
            async move {
                kin.put_record()
                    .stream_name(st)
                    .partition_key(k)
                    .data(aws_sdk_kinesis::primitives::Blob::new(d.to_vec()))
                    .send()
                    .await?;
                Ok(())
            }
        })
        .await?;
        let o = setup.observed.clone();
        wait_for(Duration::from_secs(60), "all processed", || {
            o.processed.load(Ordering::Relaxed) >= total
        })
        .await?;
        worker.shutdown().await?;
        out.push(latency_json(
            "emulators",
            profile,
            rate,
            shards,
            &setup.observed,
            config,
        ));
    }
    Ok(out)
}

fn renewal_modes(arg: &str, flag: &str) -> Result<Vec<kcl_lease::LeaseRenewal>> {
    Ok(match arg {
        "both" => vec![kcl_lease::LeaseRenewal::PerLease, kcl_lease::LeaseRenewal::Worker],
        one => vec![one
            .parse()
            .map_err(|e: kcl_lease::heartbeat::ParseLeaseRenewalError| {
                anyhow::anyhow!("{flag}: {e} (or both)")
            })?],
    })
}

fn simulate_settings(args: &Args) -> Result<kcl_examples::simulate::SimulateSettings> {
    if args.sim_workers == 0 || args.sim_shards == 0 {
        bail!("simulate needs at least 1 worker and 1 shard");
    }
    Ok(kcl_examples::simulate::SimulateSettings {
        seeds: args.seeds,
        first_seed: args.sim_first_seed,
        workers: args.sim_workers,
        shards: args.sim_shards,
        modes: renewal_modes(&args.sim_renewal, "--sim-renewal")?,
        threads: args
            .sim_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        stop_at_first: false,
    })
}

async fn simulate(args: &Args) -> Result<Vec<String>> {
    let settings = simulate_settings(args)?;
    let seed = args.sim_seed;
    tokio::task::spawn_blocking(move || match seed {
        Some(seed) => kcl_examples::simulate::replay(seed, &settings),
        None => kcl_examples::simulate::run(&settings),
    })
    .await?
}

fn fleet_settings(args: &Args) -> Result<kcl_examples::fleet::FleetSettings> {
    let modes = match args.fleet_renewal.as_str() {
        "both" => vec![kcl_lease::LeaseRenewal::PerLease, kcl_lease::LeaseRenewal::Worker],
        one => vec![one
            .parse()
            .map_err(|e: kcl_lease::heartbeat::ParseLeaseRenewalError| {
                anyhow::anyhow!("--fleet-renewal: {e} (or both)")
            })?],
    };
    if args.fleet_shards == 0 || args.fleet_workers < 2 {
        bail!("fleet needs at least 1 shard and 2 workers");
    }
    Ok(kcl_examples::fleet::FleetSettings {
        shards: args.fleet_shards,
        workers: args.fleet_workers,
        kill: args.fleet_kill.unwrap_or((args.fleet_workers / 10).max(1)),
        latency: Duration::from_millis(args.fleet_latency_ms),
        failover: Duration::from_millis(args.fleet_failover_ms),
        window: Duration::from_secs(args.fleet_window_s),
        modes,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kcl_examples::exit_status(run()).await
}

async fn run() -> Result<()> {
    let args = Args::parse();
    kcl_examples::logging::init("kcl-bench", "error", &args.log);
    let emulators = match args.backend.as_str() {
        "local" => false,
        "emulators" => true,
        other => bail!("--backend must be local or emulators, not {other:?}"),
    };
    let scenarios: Vec<String> = if args.scenarios.is_empty() {
        let default: &[&str] = if emulators {
            &["throughput", "latency"]
        } else {
            &ALL[..7]
        };
        default.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenarios.clone()
    };
    for name in &scenarios {
        if !ALL.contains(&name.as_str()) {
            bail!("unknown scenario {name:?}; scenarios: {}", ALL.join(", "));
        }
        if emulators && !matches!(name.as_str(), "throughput" | "latency" | "coordination") {
            bail!("--backend emulators runs throughput, latency and coordination only");
        }
        if emulators && name == "skewed" {
            bail!("skewed runs on the local backend");
        }
        if !emulators && name == "coordination" {
            bail!("coordination runs on the emulators: add --backend emulators");
        }
    }
    for name in &scenarios {
        kcl_examples::logging::notice(&format!("kcl-bench: running {name} on {}", args.backend));
        let lines = match (name.as_str(), emulators) {
            ("throughput", false) => vec![throughput_local(&args).await?],
            ("throughput", true) => vec![throughput_emulators(&args).await?],
            ("latency", false) => latency_local().await?,
            ("latency", true) => latency_emulators().await?,
            ("failover", _) => vec![move_leases(&args, false).await?],
            ("handoff", _) => vec![move_leases(&args, true).await?],
            ("rebalance", _) => vec![rebalance(&args).await?],
            ("scale", _) => vec![scale(&args).await?],
            ("fleet", _) => kcl_examples::fleet::run(&fleet_settings(&args)?).await?,
            ("coordination", _) => {
                kcl_examples::coordination::run(Duration::from_secs(args.fleet_window_s.max(60) * 2)).await?
            }
            ("skewed", _) => vec![
                kcl_examples::skewed::run(&kcl_examples::skewed::SkewSettings {
                    hot_share: args.skew_hot_share,
                    total_kbps: 800.0,
                    failover: Duration::from_millis(args.failover_ms),
                    window: Duration::from_secs(args.skew_window_s),
                })
                .await?,
            ],
            ("simulate", _) => simulate(&args).await?,
            _ => unreachable!("checked above"),
        };
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}
