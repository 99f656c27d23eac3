//! `kcl-replicate`: a DynamoDB table replicated into a second, in-memory table through its change
//! stream (DynamoDB Streams, `NEW_AND_OLD_IMAGES`), on the bundled local backend: no AWS.
//!
//! A writer makes puts, updates and deletes over overlapping keys; two workers of one
//! application apply each change to the replica (idempotent by the items' version attribute, so
//! at-least-once replays are harmless); the stream's shards are rotated in the middle, and one
//! worker is killed without a graceful shutdown, the other taking its shards over after the
//! failover time. At the end the replica must equal the table, every change delivered in order
//! per key: the figures are printed, and the exit status is 1 if not. The pieces are
//! `kcl_examples::replicate`, shared with the tests.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use kcl_examples::replicate::{self, Config, WorkerTimings};

/// Replicates a local DynamoDB table through its change stream with two workers, a shard
/// rotation and a killed worker, and checks that the replica equals the table.
#[derive(Parser, Debug)]
#[command(name = "kcl-replicate", version)]
struct Args {
    /// Changes to write (puts, updates and deletes).
    #[arg(long, default_value_t = 4000)]
    changes: u64,
    /// Distinct items the changes go to (fewer: more changes per item).
    #[arg(long, default_value_t = 200)]
    keys: u64,
    /// Changes written per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Shards of the table's stream.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Shard rotations (every open shard closed, a child opened for each), spread over the
    /// writing.
    #[arg(long, default_value_t = 1)]
    rotations: usize,
    /// Do not kill a worker.
    #[arg(long)]
    no_kill: bool,
    /// Lease failover time in milliseconds.
    #[arg(long, default_value_t = 1500)]
    failover_ms: u64,
    /// The processor's pause between applying a batch and checkpointing it, in milliseconds
    /// (slow work: the kill lands between the two, so the batch is delivered again).
    #[arg(long, default_value_t = 20)]
    checkpoint_delay_ms: u64,
    /// The most changes in one batch.
    #[arg(long, default_value_t = 100)]
    max_records: usize,
    /// Seconds to wait for the replica once the writing is done.
    #[arg(long, default_value_t = 30)]
    deadline: u64,
    #[command(flatten)]
    log: kcl_examples::logging::LogArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kcl_examples::exit_status(run()).await
}

async fn run() -> Result<()> {
    let args = Args::parse();
    kcl_examples::logging::init("kcl-replicate", "warn", &args.log);
    let config = Config {
        changes: args.changes,
        keys: args.keys,
        rate: args.rate,
        shards: args.shards,
        rotations: args.rotations,
        kill: !args.no_kill,
        timings: WorkerTimings {
            failover: Duration::from_millis(args.failover_ms),
            polling: Duration::from_millis(50),
            shard_sync: Duration::from_millis(500),
            checkpoint_delay: Duration::from_millis(args.checkpoint_delay_ms),
            max_records: args.max_records,
        },
        deadline: Duration::from_secs(args.deadline),
        verbose: true,
    };
    println!(
        "kcl-replicate: table {} ({} shards, NEW_AND_OLD_IMAGES) replicated by 2 workers; {} changes over {} items at {}/s, {} rotation(s), {} (local backend)",
        replicate::TABLE,
        args.shards,
        args.changes,
        args.keys,
        args.rate,
        args.rotations,
        if args.no_kill { "no kill".to_owned() } else { format!("one worker killed, failover {} ms", args.failover_ms) },
    );
    let report = replicate::run(&config).await?;
    print_report(&report);
    if !report.ok() {
        for problem in report.order_problems.iter().take(10) {
            println!("  out of order: {problem}");
        }
        let c = &report.comparison;
        bail!(
            "FAILED: the replica differs from the table ({} missing, {} extra, {} different), {} of {} changes delivered, {} keys out of order",
            c.missing.len(),
            c.extra.len(),
            c.different.len(),
            report.unique,
            report.written,
            report.order_problems.len()
        );
    }
    println!("OK: the replica equals the table; every change delivered, in order per key");
    Ok(())
}

fn print_report(r: &replicate::Report) {
    println!("\nsummary");
    println!("  changes written        {}", r.written);
    println!(
        "  changes delivered      {} ({} distinct; per worker {})",
        r.delivered,
        r.unique,
        r.per_worker
            .iter()
            .map(|(w, n)| format!("{w}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  applied to the replica {}", r.applied);
    println!(
        "  replayed (duplicates)  {} ({} deliveries skipped as not newer than the replica)",
        r.replayed, r.skipped
    );
    println!(
        "  shard rotations        {} ({} shards closed; {} shards at the end)",
        r.rotations, r.rotated_shards, r.shards
    );
    match (r.killed_leases, r.failover) {
        (0, _) => println!("  failover               (no worker killed)"),
        (n, Some(d)) => println!(
            "  failover               {:.2} s after the kill, for its {n} leases (lease failover time {:.2} s)",
            d.as_secs_f64(),
            r.failover_time.as_secs_f64()
        ),
        (n, None) => println!("  failover               not completed ({n} leases)"),
    }
    println!("  wall time              {:.2} s", r.wall.as_secs_f64());
    println!(
        "  table items            {} (replica {}; {} missing, {} extra, {} different)",
        r.comparison.table_items,
        r.comparison.replica_items,
        r.comparison.missing.len(),
        r.comparison.extra.len(),
        r.comparison.different.len()
    );
}
