//! `kcl-replicate` end to end, small: the binary as a user runs it (two workers, a shard
//! rotation, a killed worker), which must exit 0 with the replica equal to the table; and the
//! library's `run` with two rotations and no kill, checked figure by figure against what the
//! run itself reports.

use std::process::Command;
use std::time::Duration;

use kcl_examples::replicate::{self, Config, WorkerTimings};

/// A figure of the summary: the first number after `label`.
fn figure(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"));
    line[line.find(label).unwrap_or(0) + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

#[test]
fn the_demo_replicates_through_a_rotation_and_a_killed_worker() {
    let out = Command::new(env!("CARGO_BIN_EXE_kcl-replicate"))
        .env_remove("KCL_LOG_FORMAT")
        .args([
            "--changes",
            "600",
            "--keys",
            "40",
            "--rate",
            "1500",
            "--shards",
            "3",
        ])
        .args(["--failover-ms", "800", "--max-records", "25", "--deadline", "60"])
        .output()
        .expect("kcl-replicate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK: the replica equals the table"), "{stdout}");
    assert_eq!(figure(&stdout, "changes written"), 600, "{stdout}");
    let delivered = figure(&stdout, "changes delivered");
    assert!(delivered >= 600, "{stdout}");
    assert_eq!(
        figure(&stdout, "replayed (duplicates)"),
        delivered - 600,
        "{stdout}"
    );
    assert_eq!(figure(&stdout, "shard rotations"), 1, "{stdout}");
    assert!(stdout.contains("killing worker-b"), "{stdout}");
    assert!(stdout.contains("took worker-b's shards over"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotations_without_a_kill_keep_the_replica_equal() {
    let config = Config {
        changes: 400,
        keys: 30,
        rate: 2000,
        shards: 2,
        rotations: 2,
        kill: false,
        timings: WorkerTimings {
            failover: Duration::from_millis(800),
            checkpoint_delay: Duration::ZERO,
            ..WorkerTimings::default()
        },
        deadline: Duration::from_secs(60),
        verbose: false,
    };
    let report = replicate::run(&config).await.expect("the demo runs");
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.written, 400);
    assert_eq!(report.unique, report.written);
    assert_eq!(report.rotations, 2);
    // Each rotation closes every open shard and opens a child for each.
    assert_eq!(report.rotated_shards, 2 * config.shards);
    assert_eq!(report.shards, 3 * config.shards);
    assert_eq!(report.killed_leases, 0);
    assert!(report.failover.is_none());
    assert!(report.comparison.table_items > 0);
    assert_eq!(report.comparison.replica_items, report.comparison.table_items);
    // Without a kill nothing is delivered twice (graceful hand-offs checkpoint first).
    assert_eq!(report.replayed, 0, "{report:#?}");
    assert_eq!(report.applied, report.written);
}
