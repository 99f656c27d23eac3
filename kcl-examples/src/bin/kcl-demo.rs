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
    kcl_examples::init_tracing("warn");
    let args = Args::parse();
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
    let mut workers: Vec<Option<SchedulerHandle>> = (0..args.workers)
        .map(|i| start_worker(i, &args, &backend, &store, &observed, epoch).map(Some))
        .collect::<Result<_>>()?;

    // The producer: a steady rate, in 10 ms ticks.
    let total = args.rate * args.duration;
    let producer = {
        let backend = backend.clone();
        let keys = args.keys;
        let rate = args.rate;
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
    };

    let kill_at = Duration::from_secs(args.duration) * 3 / 10;
    let split_at = Duration::from_secs(args.duration) / 2;
    let merge_at = Duration::from_secs(args.duration) * 7 / 10;
    let (mut killed, mut split, mut merged) =
        (args.no_kill || args.workers < 2, args.no_reshard, args.no_reshard);
    let mut failover: Option<(Instant, BTreeSet<String>, Option<Duration>)> = None;
    let mut last_report = Instant::now();
    let signal = kcl_examples::shutdown_signal();
    tokio::pin!(signal);
    let mut interrupted = false;
    let deadline = Duration::from_secs(args.duration) + Duration::from_secs(40);
    let produced = loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = &mut signal => {
                println!("interrupted: stopping the producer and shutting the workers down gracefully");
                interrupted = true;
                producer.abort();
                break HashMap::new();
            }
        }
        let t = epoch.elapsed();
        if !killed && t >= kill_at {
            killed = true;
            if let Some(victim) = workers[0].take() {
                let shards: BTreeSet<String> = victim.held_leases().into_iter().collect();
                println!(
                    "[{:>5.1}s] killing {} abruptly (it held {} leases)",
                    t.as_secs_f64(),
                    victim.worker_id(),
                    shards.len()
                );
                victim.kill().await;
                failover = Some((Instant::now(), shards, None));
            }
        }
        if !split && t >= split_at {
            split = true;
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
        }
        if !merged && t >= merge_at {
            merged = true;
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
        }
        if let Some((at, shards, done @ None)) = &mut failover {
            let elsewhere: BTreeSet<String> =
                workers.iter().flatten().flat_map(|w| w.held_leases()).collect();
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
        let processed_unique = observed.lock().map(|o| o.times.len() as u64).unwrap_or(0);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
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
        if producer.is_finished() && processed_unique >= total {
            break producer.await??;
        }
        if t > deadline {
            println!(
                "gave up waiting for the remaining records after {:.0} s",
                t.as_secs_f64()
            );
            break if producer.is_finished() {
                producer.await??
            } else {
                HashMap::new()
            };
        }
    };
    let elapsed = epoch.elapsed();
    for w in workers.iter_mut().filter_map(Option::take) {
        w.shutdown().await?;
    }

    if interrupted {
        let o = observed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        println!(
            "processed {} distinct records before the interruption; no verification",
            o.times.len()
        );
        return Ok(());
    }
    let o = observed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut lost = 0u64;
    let mut out_of_order = 0u64;
    for (key, n) in &produced {
        let got = o.first.get(key).map(Vec::as_slice).unwrap_or(&[]);
        lost += n.saturating_sub(got.len() as u64);
        out_of_order += got.windows(2).filter(|w| w[0] > w[1]).count() as u64;
    }
    let produced_total: u64 = produced.values().sum();
    let duplicates: u64 = o.times.values().map(|c| u64::from(c - 1)).sum();
    let moves: usize = o.shard_workers.values().map(|w| w.len().saturating_sub(1)).sum();
    let mut lat = o.latencies.clone();
    lat.sort_unstable();
    println!("\nsummary");
    println!("  records produced       {produced_total}");
    println!(
        "  records processed      {} ({} distinct)",
        o.processed,
        o.times.len()
    );
    println!("  lost                   {lost}");
    println!("  out of order (per key) {out_of_order}");
    println!("  duplicates             {duplicates}");
    println!(
        "  throughput             {:.0} records/s",
        o.times.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  put-to-process latency p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("  lease moves            {moves}");
    match failover {
        Some((_, _, Some(d))) => println!("  failover time          {:.2} s", d.as_secs_f64()),
        Some(_) => println!("  failover time          not completed"),
        None => println!("  failover time          (no worker killed)"),
    }
    if lost > 0 || out_of_order > 0 || produced_total == 0 {
        bail!("FAILED: {lost} records lost, {out_of_order} out of order");
    }
    println!("OK: every record processed at least once, in order per partition key");
    Ok(())
}
