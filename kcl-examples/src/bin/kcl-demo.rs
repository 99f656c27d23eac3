//! `kcl-demo`: the whole runtime on the bundled local backend, no AWS, no Docker.
//!
//! It creates a local stream, produces records at a steady rate, runs several workers in this
//! process, kills one abruptly part way, splits a shard and merges two, then checks that every
//! record was processed at least once and, per partition key, first processed in order. It
//! prints progress every second and a summary at the end, and exits non-zero if anything was
//! lost or out of order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use kcl_core::{
    InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler, SchedulerHandle, ShutdownRequestedInput,
};
use tokio::time::Instant;

const STREAM: &str = "kcl-demo";

/// Runs producers and several KCL workers on a local stream and checks the delivery guarantees.
#[derive(Parser, Debug)]
#[command(name = "kcl-demo", version)]
struct Args {
    /// Shards of the stream.
    #[arg(long, default_value_t = 8)]
    shards: usize,
    /// Workers in this process.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Records put per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of producing.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Distinct partition keys.
    #[arg(long, default_value_t = 200)]
    keys: u64,
    /// Lease failover time in milliseconds.
    #[arg(long, default_value_t = 3000)]
    failover_ms: u64,
    /// Do not kill a worker.
    #[arg(long)]
    no_kill: bool,
    /// Do not split and merge shards.
    #[arg(long)]
    no_reshard: bool,
    #[command(flatten)]
    log: kcl_examples::logging::LogArgs,
}

/// What the processors saw, shared by all workers.
#[derive(Default)]
struct Observed {
    /// Per key: indexes in first-processed order.
    first: HashMap<u64, Vec<u64>>,
    /// Every (key, index) processed, with how often.
    times: HashMap<(u64, u64), u32>,
    /// Put-to-process latencies, microseconds.
    latencies: Vec<u64>,
    /// Per shard, the workers that processed it, in order of change.
    shard_workers: BTreeMap<String, Vec<String>>,
    processed: u64,
}

struct DemoProcessor {
    worker: String,
    shard: String,
    observed: Arc<Mutex<Observed>>,
    epoch: Instant,
}

fn parse(data: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split(':');
    let key = parts.next()?.strip_prefix("key-")?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let put_micros = parts.next()?.parse().ok()?;
    Some((key, index, put_micros))
}

#[async_trait]
impl RecordProcessor for DemoProcessor {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let now = self.epoch.elapsed().as_micros() as u64;
        {
            let mut o = self.observed.lock().map_err(|_| "poisoned")?;
            let workers = o.shard_workers.entry(self.shard.clone()).or_default();
            if workers.last() != Some(&self.worker) {
                workers.push(self.worker.clone());
            }
            for record in input.records {
                let (key, index, put) = parse(&record.data).ok_or("malformed demo record")?;
                let seen = o.times.entry((key, index)).or_default();
                *seen += 1;
                if *seen == 1 {
                    o.first.entry(key).or_default().push(index);
                    o.latencies.push(now.saturating_sub(put));
                }
                o.processed += 1;
            }
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn start_worker(
    i: usize,
    args: &Args,
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    observed: &Arc<Mutex<Observed>>,
    epoch: Instant,
) -> Result<SchedulerHandle> {
    let worker = format!("worker-{i}");
    let (w, o) = (worker.clone(), observed.clone());
    Ok(Scheduler::builder("kcl-demo-app", STREAM)
        .worker_id(worker)
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_millis(args.failover_ms))
        .polling_interval(Duration::from_millis(100))
        .min_read_interval(Duration::from_millis(20))
        .parent_poll_interval(Duration::from_millis(100))
        .shard_sync_interval(Duration::from_secs(2))
        .processor_factory(move |shard: &str| DemoProcessor {
            worker: w.clone(),
            shard: shard.to_owned(),
            observed: o.clone(),
            epoch,
        })
        .build()?
        .spawn())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kcl_examples::exit_status(run()).await
}

async fn run() -> Result<()> {
    let args = Args::parse();
    kcl_examples::logging::init("kcl-demo", "warn", &args.log);
    let mut demo = set_up(args)?;
    let producer = spawn_producer(&demo);
    let mut events = Events::new(&demo.args);
    let end = drive(&mut demo, &mut events, producer).await?;
    let elapsed = demo.epoch.elapsed();
    shut_down(&mut demo.workers).await?;
    let produced = match end {
        End::Interrupted => return report_interruption(&demo.observed),
        End::Produced(produced) => produced,
    };
    let o = demo.observed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let verdict = verify(&produced, &o);
    print_summary(&verdict, &o, elapsed, &events.failover);
    if verdict.lost > 0 || verdict.out_of_order > 0 || verdict.produced_total == 0 {
        bail!(
            "FAILED: {} records lost, {} out of order",
            verdict.lost,
            verdict.out_of_order
        );
    }
    println!("OK: every record processed at least once, in order per partition key");
    Ok(())
}

/// Everything the steps of the demo share: the settings, the stream, the lease table, what the
/// processors saw, and the workers (`None` once killed or shut down).
struct Demo {
    args: Args,
    epoch: Instant,
    backend: LocalBackend,
    store: InMemoryLeaseStore,
    observed: Arc<Mutex<Observed>>,
    workers: Vec<Option<SchedulerHandle>>,
}

/// What the producer put: per key, how many records (indexes `0..n`).
type Produced = HashMap<u64, u64>;

/// A failover in progress: when the worker was killed, the shards it held, and how long they
/// took to be processing elsewhere, once they are.
type Failover = Option<(Instant, BTreeSet<String>, Option<Duration>)>;

/// How the main loop ended.
enum End {
    /// Ctrl-C or SIGTERM: no verification.
    Interrupted,
    /// Every record was processed, or the deadline passed: what was produced.
    Produced(Produced),
}

/// Validates the settings, creates the stream, prints the header and starts the workers.
fn set_up(args: Args) -> Result<Demo> {
    if args.shards == 0 || args.workers == 0 || args.rate == 0 || args.keys == 0 {
        bail!("--shards, --workers, --rate and --keys must be at least 1");
    }
    let epoch = Instant::now();
    let backend = LocalBackend::new();
    backend
        .create_stream(STREAM, args.shards)
        .context("creating the local stream")?;
    let store = InMemoryLeaseStore::new();
    let observed = Arc::new(Mutex::new(Observed::default()));
    println!(
        "kcl-demo: {} shards, {} workers, {} records/s for {} s, failover {} ms (local backend)",
        args.shards, args.workers, args.rate, args.duration, args.failover_ms
    );
    let workers: Vec<Option<SchedulerHandle>> = (0..args.workers)
        .map(|i| start_worker(i, &args, &backend, &store, &observed, epoch).map(Some))
        .collect::<Result<_>>()?;
    Ok(Demo {
        args,
        epoch,
        backend,
        store,
        observed,
        workers,
    })
}

/// The producer: `rate * duration` records at a steady rate, in 10 ms ticks, on pseudo-random
/// keys; each record is `key-<key>:<index>:<put time in µs>`.
fn spawn_producer(demo: &Demo) -> tokio::task::JoinHandle<Result<Produced>> {
    let total = demo.args.rate * demo.args.duration;
    let backend = demo.backend.clone();
    let keys = demo.args.keys;
    let rate = demo.args.rate;
    let epoch = demo.epoch;
    tokio::spawn(async move {
        let mut next_index: HashMap<u64, u64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut put = 0u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while put < total {
            tick.tick().await;
            let due = (rate * epoch.elapsed().as_millis() as u64 / 1000).min(total);
            while put < due {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = state % keys;
                let index = next_index.entry(key).or_default();
                let data = format!("key-{key}:{index}:{}", epoch.elapsed().as_micros());
                backend
                    .put_record(STREAM, &format!("key-{key}"), Bytes::from(data), None)
                    .await?;
                *index += 1;
                put += 1;
            }
        }
        anyhow::Ok(next_index)
    })
}

/// The scripted events (kill a worker at 30 % of the producing time, split a shard at 50 %,
/// merge two at 70 %), whether each happened (or is switched off), and the failover they
/// started.
struct Events {
    kill_at: Duration,
    split_at: Duration,
    merge_at: Duration,
    killed: bool,
    split: bool,
    merged: bool,
    failover: Failover,
}

impl Events {
    fn new(args: &Args) -> Self {
        Self {
            kill_at: Duration::from_secs(args.duration) * 3 / 10,
            split_at: Duration::from_secs(args.duration) / 2,
            merge_at: Duration::from_secs(args.duration) * 7 / 10,
            killed: args.no_kill || args.workers < 2,
            split: args.no_reshard,
            merged: args.no_reshard,
            failover: None,
        }
    }
}

/// The main loop, every 50 ms: the due events, the failover check, progress every second;
/// until every record was processed, the deadline (40 s after producing ends) or a signal.
async fn drive(
    demo: &mut Demo,
    events: &mut Events,
    producer: tokio::task::JoinHandle<Result<Produced>>,
) -> Result<End> {
    let total = demo.args.rate * demo.args.duration;
    let mut last_report = Instant::now();
    let signal = kcl_core::shutdown_signal();
    tokio::pin!(signal);
    let deadline = Duration::from_secs(demo.args.duration) + Duration::from_secs(40);
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = &mut signal => {
                println!("interrupted: stopping the producer and shutting the workers down gracefully");
                producer.abort();
                return Ok(End::Interrupted);
            }
        }
        let t = demo.epoch.elapsed();
        if !events.killed && t >= events.kill_at {
            events.killed = true;
            if let Some(failover) = kill_a_worker(&mut demo.workers, t).await {
                events.failover = Some(failover);
            }
        }
        if !events.split && t >= events.split_at {
            events.split = true;
            split_a_shard(&demo.backend, t)?;
        }
        if !events.merged && t >= events.merge_at {
            events.merged = true;
            merge_two_shards(&demo.backend, t)?;
        }
        check_failover(&mut events.failover, &demo.workers, &demo.store, t);
        let processed_unique = demo.observed.lock().map(|o| o.times.len() as u64).unwrap_or(0);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            print_progress(&demo.workers, processed_unique, t);
        }
        if producer.is_finished() && processed_unique >= total {
            return Ok(End::Produced(producer.await??));
        }
        if t > deadline {
            println!(
                "gave up waiting for the remaining records after {:.0} s",
                t.as_secs_f64()
            );
            return Ok(End::Produced(if producer.is_finished() {
                producer.await??
            } else {
                HashMap::new()
            }));
        }
    }
}

/// Kills the first worker abruptly; returns the failover to watch (from now, its shards).
async fn kill_a_worker(workers: &mut [Option<SchedulerHandle>], t: Duration) -> Failover {
    let victim = workers[0].take()?;
    let shards: BTreeSet<String> = victim.held_leases().into_iter().collect();
    println!(
        "[{:>5.1}s] killing {} abruptly (it held {} leases)",
        t.as_secs_f64(),
        victim.worker_id(),
        shards.len()
    );
    victim.kill().await;
    Some((Instant::now(), shards, None))
}

/// Splits the first open shard in the middle of its hash key range.
fn split_a_shard(backend: &LocalBackend, t: Duration) -> Result<()> {
    let open: Vec<_> = backend
        .shards(STREAM)?
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    if let Some(s) = open.first() {
        let r = s.hash_key_range;
        let (a, b) = backend.split_shard(STREAM, &s.shard_id, r.start + (r.end - r.start) / 2 + 1)?;
        println!(
            "[{:>5.1}s] split {} into {a} and {b}",
            t.as_secs_f64(),
            s.shard_id
        );
    }
    Ok(())
}

/// Merges the first two open shards (by hash key) whose ranges touch.
fn merge_two_shards(backend: &LocalBackend, t: Duration) -> Result<()> {
    let mut open: Vec<_> = backend
        .shards(STREAM)?
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    open.sort_by_key(|s| s.hash_key_range.start);
    if let Some(pair) = open
        .windows(2)
        .find(|w| w[0].hash_key_range.end.checked_add(1) == Some(w[1].hash_key_range.start))
    {
        let child = backend.merge_shards(STREAM, &pair[0].shard_id, &pair[1].shard_id)?;
        println!(
            "[{:>5.1}s] merged {} and {} into {child}",
            t.as_secs_f64(),
            pair[0].shard_id,
            pair[1].shard_id
        );
    }
    Ok(())
}

/// Records the failover time once every shard of the killed worker is processing elsewhere.
fn check_failover(
    failover: &mut Failover,
    workers: &[Option<SchedulerHandle>],
    store: &InMemoryLeaseStore,
    t: Duration,
) {
    if let Some((at, shards, done @ None)) = failover {
        let elsewhere: BTreeSet<String> = workers.iter().flatten().flat_map(|w| w.held_leases()).collect();
        let rows = store.snapshot();
        if shards.iter().all(|s| {
            // Processing elsewhere, or finished (a finished lease may be deleted already).
            elsewhere.contains(s)
                || rows
                    .iter()
                    .find(|l| &l.lease_key == s)
                    .is_none_or(|l| l.is_finished())
        }) {
            *done = Some(at.elapsed());
            println!(
                "[{:>5.1}s] the killed worker's shards are processing elsewhere after {:.2} s",
                t.as_secs_f64(),
                at.elapsed().as_secs_f64()
            );
        }
    }
}

/// One progress line: distinct records processed, leases per live worker.
fn print_progress(workers: &[Option<SchedulerHandle>], processed_unique: u64, t: Duration) {
    let held: Vec<String> = workers
        .iter()
        .flatten()
        .map(|w| format!("{}:{}", w.worker_id(), w.held_leases().len()))
        .collect();
    println!(
        "[{:>5.1}s] processed {processed_unique} distinct records; leases {}",
        t.as_secs_f64(),
        held.join(" ")
    );
}

/// Shuts the remaining workers down gracefully.
async fn shut_down(workers: &mut [Option<SchedulerHandle>]) -> Result<()> {
    for w in workers.iter_mut().filter_map(Option::take) {
        w.shutdown().await?;
    }
    Ok(())
}

/// After a signal: how far processing got, without verifying.
fn report_interruption(observed: &Mutex<Observed>) -> Result<()> {
    let o = observed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "processed {} distinct records before the interruption; no verification",
        o.times.len()
    );
    Ok(())
}

/// The delivery guarantees checked against what was produced.
struct Verdict {
    produced_total: u64,
    /// Records never processed.
    lost: u64,
    /// Per key, first-processed indexes that came before a smaller one.
    out_of_order: u64,
    /// Processings beyond the first.
    duplicates: u64,
    /// Changes of the worker processing a shard.
    moves: usize,
}

fn verify(produced: &Produced, o: &Observed) -> Verdict {
    let mut lost = 0u64;
    let mut out_of_order = 0u64;
    for (key, n) in produced {
        let got = o.first.get(key).map(Vec::as_slice).unwrap_or(&[]);
        lost += n.saturating_sub(got.len() as u64);
        out_of_order += got.windows(2).filter(|w| w[0] > w[1]).count() as u64;
    }
    Verdict {
        produced_total: produced.values().sum(),
        lost,
        out_of_order,
        duplicates: o.times.values().map(|c| u64::from(c - 1)).sum(),
        moves: o.shard_workers.values().map(|w| w.len().saturating_sub(1)).sum(),
    }
}

/// The summary the README shows.
fn print_summary(v: &Verdict, o: &Observed, elapsed: Duration, failover: &Failover) {
    let mut lat = o.latencies.clone();
    lat.sort_unstable();
    println!("\nsummary");
    println!("  records produced       {}", v.produced_total);
    println!(
        "  records processed      {} ({} distinct)",
        o.processed,
        o.times.len()
    );
    println!("  lost                   {}", v.lost);
    println!("  out of order (per key) {}", v.out_of_order);
    println!("  duplicates             {}", v.duplicates);
    println!(
        "  throughput             {:.0} records/s",
        o.times.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  put-to-process latency p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("  lease moves            {}", v.moves);
    match failover {
        Some((_, _, Some(d))) => println!("  failover time          {:.2} s", d.as_secs_f64()),
        Some(_) => println!("  failover time          not completed"),
        None => println!("  failover time          (no worker killed)"),
    }
}
