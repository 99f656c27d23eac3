//! `kcl-admin`: inspect and operate a KCL application's lease table (the DynamoDB table named
//! after the application): list its leases and workers, rewind or reset checkpoints, delete the
//! application. Works on tables written by this library and by the Java KCL (same schema).
//!
//! Exit codes: 0 ok, 1 error (AWS, table missing, ...), 2 usage (bad flags, bad position),
//! 3 refused because the leases are held by live workers (use `--force`), 4 conflict (a lease
//! changed between the read and the conditional write; nothing was overwritten).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kcl_core::aws::{load_sdk_config, AwsOptions};
use kcl_lease::{DynamoDbLeaseStore, ExtendedSequenceNumber, Lease, LeaseError, LeaseStore};
use serde_json::json;

/// Inspect and operate a KCL application's lease table.
///
/// Exit codes: 0 ok; 1 error (AWS call failed, unknown application); 2 usage (bad flags or
/// position); 3 refused: leases held by live workers (stop them, or `--force`); 4 conflict: a
/// lease changed between the read and the write (nothing overwritten; run again).
///
/// Lag is not shown by this version ("-"); throughput is the `throughputKBps` the workers
/// publish on their rows ("-" when absent).
#[derive(Parser, Debug)]
#[command(name = "kcl-admin", version)]
struct Args {
    /// The application name: the lease table's name.
    #[arg(long)]
    application_name: String,
    /// AWS region (default: the SDK's chain).
    #[arg(long)]
    region: Option<String>,
    /// Endpoint URL for DynamoDB (LocalStack, emulators); AWS_ENDPOINT_URL also works.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One line per lease: shard, owner, counter, checkpoint, parents/children, throughput,
    /// and whether its counter moved while observed (`--observe-ms`).
    Leases {
        /// Read the table twice this far apart to see which leases are renewed (0: once).
        #[arg(long, default_value_t = 0)]
        observe_ms: u64,
    },
    /// Leases and published throughput per worker.
    Workers,
    /// Set the checkpoint of every lease (or of `--shard`) to a position. Refused while a lease
    /// has an owner whose counter moves during `--observe-ms`, unless `--force`.
    Reset {
        /// trim-horizon, latest or sequence:<number>.
        #[arg(long)]
        to: String,
        /// Only the lease whose key or shard id is this.
        #[arg(long)]
        shard: Option<String>,
        /// Reset even if workers are live (they lose the leases at their next renewal).
        #[arg(long)]
        force: bool,
        /// How long to watch the counters for live workers.
        #[arg(long, default_value_t = 3000)]
        observe_ms: u64,
    },
    /// Delete the lease table and the heartbeat table.
    DeleteApplication,
}

/// Why the command failed, mapped to the documented exit codes.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Live(String),
    #[error("{0}")]
    Conflict(String),
}

fn parse_to(s: &str) -> Result<ExtendedSequenceNumber, AdminError> {
    let c = match s {
        "trim-horizon" => ExtendedSequenceNumber::TRIM_HORIZON.to_string(),
        "latest" => ExtendedSequenceNumber::LATEST.to_string(),
        other => match other.strip_prefix("sequence:") {
            Some(n) => n.to_string(),
            None if other.starts_with("at-timestamp") => {
                return Err(AdminError::Usage(
                    "--to at-timestamp is not supported by this version: a lease row cannot carry the timestamp; use trim-horizon, latest or sequence:<n>".into(),
                ))
            }
            None => {
                return Err(AdminError::Usage(format!(
                    "--to {other:?}: expected trim-horizon, latest or sequence:<number>"
                )))
            }
        },
    };
    ExtendedSequenceNumber::from_parts(&c, 0).map_err(|e| AdminError::Usage(format!("--to {s:?}: {e}")))
}

fn shard_of(l: &Lease) -> &str {
    l.shard_id.as_deref().unwrap_or(&l.lease_key)
}

fn join(s: &std::collections::BTreeSet<String>) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

fn kbps(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// Keys of leases that have an owner and whose counter changed between the two reads.
fn live_keys(before: &[Lease], after: &[Lease]) -> Vec<String> {
    let old: BTreeMap<&str, u64> = before.iter().map(|l| (l.lease_key.as_str(), l.lease_counter)).collect();
    after
        .iter()
        .filter(|l| l.lease_owner.is_some() && old.get(l.lease_key.as_str()).is_some_and(|c| *c != l.lease_counter))
        .map(|l| l.lease_key.clone())
        .collect()
}

async fn read_twice(store: &DynamoDbLeaseStore, observe_ms: u64) -> Result<(Vec<Lease>, Vec<String>)> {
    let first = store.list().await.context("reading the lease table")?;
    if observe_ms == 0 {
        return Ok((first, Vec::new()));
    }
    tokio::time::sleep(Duration::from_millis(observe_ms)).await;
    let second = store.list().await.context("reading the lease table")?;
    let live = live_keys(&first, &second);
    Ok((second, live))
}

async fn run(args: Args) -> Result<()> {
    let options = AwsOptions {
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        ..Default::default()
    };
    let config = load_sdk_config(&options).await;
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&config), &args.application_name);
    if !store.table_exists().await.context("DescribeTable on the lease table")? {
        anyhow::bail!(
            "no application {:?}: its lease table does not exist (check --application-name, --region, --endpoint-url)",
            args.application_name
        );
    }
    match args.command {
        Command::Leases { observe_ms } => {
            let (leases, live) = read_twice(&store, observe_ms).await?;
            if args.json {
                let rows: Vec<_> = leases
                    .iter()
                    .map(|l| {
                        json!({"lease_key": l.lease_key, "shard": shard_of(l), "owner": l.lease_owner,
                           "counter": l.lease_counter, "checkpoint": l.checkpoint.to_string(),
                           "parents": l.parent_shard_ids, "children": l.child_shard_ids,
                           "throughput_kbps": l.throughput_kbps, "lag": null,
                           "renewed_while_observed": if observe_ms == 0 { None } else { Some(live.contains(&l.lease_key)) }})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<28} {:<24} {:>8} {:<28} {:<12} {:<12} {:>8} {:>4} RENEWED", "SHARD", "OWNER", "COUNTER", "CHECKPOINT", "PARENTS", "CHILDREN", "KB/S", "LAG");
                for l in &leases {
                    let renewed = if observe_ms == 0 { "-" } else if live.contains(&l.lease_key) { "yes" } else { "no" };
                    println!(
                        "{:<28} {:<24} {:>8} {:<28} {:<12} {:<12} {:>8} {:>4} {}",
                        shard_of(l), l.lease_owner.as_deref().unwrap_or("-"), l.lease_counter,
                        l.checkpoint.to_string(), join(&l.parent_shard_ids), join(&l.child_shard_ids),
                        kbps(l.throughput_kbps), "-", renewed
                    );
                }
            }
        }
        Command::Workers => {
            let leases = store.list().await.context("reading the lease table")?;
            let mut per: BTreeMap<String, (Vec<String>, f64)> = BTreeMap::new();
            for l in &leases {
                let owner = l.lease_owner.clone().unwrap_or_else(|| "(unowned)".into());
                let e = per.entry(owner).or_default();
                e.0.push(shard_of(l).to_string());
                e.1 += l.throughput_kbps.unwrap_or(0.0);
            }
            if args.json {
                let rows: Vec<_> = per.iter().map(|(w, (s, t))| json!({"worker": w, "leases": s, "throughput_kbps": t})).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<32} {:>6} {:>10} SHARDS", "WORKER", "LEASES", "KB/S");
                for (w, (s, t)) in &per {
                    println!("{:<32} {:>6} {:>10.1} {}", w, s.len(), t, s.join(","));
                }
            }
        }
        Command::Reset { to, shard, force, observe_ms } => {
            let target = parse_to(&to)?;
            let (leases, live) = read_twice(&store, observe_ms).await?;
            let chosen: Vec<&Lease> = leases
                .iter()
                .filter(|l| shard.as_deref().is_none_or(|s| l.lease_key == s || shard_of(l) == s))
                .collect();
            if chosen.is_empty() {
                return Err(AdminError::Usage(format!("no lease matches --shard {:?}", shard.unwrap_or_default())).into());
            }
            let live_chosen: Vec<&String> = live.iter().filter(|k| chosen.iter().any(|l| &l.lease_key == *k)).collect();
            if !live_chosen.is_empty() && !force {
                return Err(AdminError::Live(format!(
                    "refused: {} lease(s) are being renewed by live workers ({}); stop the workers, or pass --force",
                    live_chosen.len(),
                    live_chosen.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
            let mut changed = Vec::new();
            for l in chosen {
                match store.reset_checkpoint(l, &target).await {
                    Ok(_) => changed.push((l.lease_key.clone(), l.checkpoint.to_string())),
                    Err(LeaseError::Conflict { key, .. }) => {
                        return Err(AdminError::Conflict(format!(
                            "conflict: lease {key} changed since it was read (not overwritten); {} lease(s) already reset; run again",
                            changed.len()
                        ))
                        .into())
                    }
                    Err(e) => return Err(e).context(format!("resetting {}", l.lease_key)),
                }
            }
            if args.json {
                let rows: Vec<_> = changed.iter().map(|(k, old)| json!({"lease_key": k, "from": old, "to": target.to_string()})).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for (k, old) in &changed {
                    println!("{k}: {old} -> {target}");
                }
            }
        }
        Command::DeleteApplication => {
            let (lease, heartbeat) = store.delete_tables().await.context("deleting the tables")?;
            if args.json {
                println!("{}", json!({"lease_table_deleted": lease, "heartbeat_table_deleted": heartbeat}));
            } else {
                println!("lease table {}: {}", store.table_name(), if lease { "deleted" } else { "absent" });
                println!("heartbeat table {}: {}", store.heartbeat_table_name(), if heartbeat { "deleted" } else { "absent" });
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kcl-admin: {e:#}");
            match e.downcast_ref::<AdminError>() {
                Some(AdminError::Usage(_)) => ExitCode::from(2),
                Some(AdminError::Live(_)) => ExitCode::from(3),
                Some(AdminError::Conflict(_)) => ExitCode::from(4),
                None => ExitCode::from(1),
            }
        }
    }
}
