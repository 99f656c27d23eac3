//! `kcl-admin` against the emulators, run as a user runs it: a lease table with rows exactly as
//! the Java KCL 3.x writes them, listed as they are; `reset` on a stopped `kcl-tail`
//! application, after which `kcl-tail` re-reads from the chosen position; `reset` refused while
//! a worker renews and forced with `--force`; a conditional conflict reported, not
//! overwritten; `delete-application` (tables and fan-out consumer); bad input and unknown
//! applications with their exit codes.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kcl_lease::{DynamoDbLeaseStore, ExtendedSequenceNumber, Lease, LeaseStore, SequenceNumber};
use kcl_tests::aws::{create_stream, put, sdk, unique};
use kcl_tests::process::{read_lines, sigterm};
use kcl_tools::admin::{self, ObserveOptions, ResetTarget};
use serde_json::Value;
use tokio::process::{Child, Command};

const ADMIN: &str = env!("CARGO_BIN_EXE_kcl-admin");
const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");

struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.out, self.err))
    }
}

async fn admin(region: &str, app: &str, args: &[&str]) -> Run {
    let out = Command::new(ADMIN)
        .args(["--application-name", app, "--region", region])
        .args(args)
        .output()
        .await
        .expect("run kcl-admin");
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}
fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.to_owned())
}
fn ss(v: &[&str]) -> AttributeValue {
    AttributeValue::Ss(v.iter().map(|x| (*x).to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_workers_show_java_kcl_rows_as_they_are_and_bad_input_has_exit_codes() {
    let (sdk, endpoints) = sdk().await;
    let region = endpoints.region.as_str();
    let app = unique("admin-java");
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    // The table as the Java KCL 3.x needs it (with its owner index); rows as it writes them.
    DynamoDbLeaseStore::new(dynamodb.clone(), &app)
        .ensure_table()
        .await
        .expect("create the lease table");
    let seq = "49590338271490256608559692538361571095921575989136588898";
    let rows: Vec<HashMap<String, AttributeValue>> = vec![
        HashMap::from([
            ("leaseKey".into(), s("shardId-000000000000")),
            ("leaseOwner".into(), s("java-worker-1")),
            ("leaseCounter".into(), n("42")),
            ("checkpoint".into(), s(seq)),
            ("checkpointSubSequenceNumber".into(), n("3")),
            ("ownerSwitchesSinceCheckpoint".into(), n("0")),
            ("startingHashKey".into(), s("0")),
            (
                "endingHashKey".into(),
                s("170141183460469231731687303715884105727"),
            ),
            ("throughputKBps".into(), n("12.5")),
        ]),
        HashMap::from([
            ("leaseKey".into(), s("shardId-000000000001")),
            ("leaseCounter".into(), n("7")),
            ("checkpoint".into(), s("SHARD_END")),
            ("checkpointSubSequenceNumber".into(), n("0")),
            ("ownerSwitchesSinceCheckpoint".into(), n("1")),
            (
                "startingHashKey".into(),
                s("170141183460469231731687303715884105728"),
            ),
            (
                "endingHashKey".into(),
                s("340282366920938463463374607431768211455"),
            ),
            ("childShardIds".into(), ss(&["shardId-000000000002"])),
        ]),
        HashMap::from([
            ("leaseKey".into(), s("shardId-000000000002")),
            ("leaseOwner".into(), s("java-worker-2")),
            ("leaseCounter".into(), n("3")),
            ("checkpoint".into(), s("TRIM_HORIZON")),
            ("checkpointSubSequenceNumber".into(), n("0")),
            ("ownerSwitchesSinceCheckpoint".into(), n("0")),
            (
                "startingHashKey".into(),
                s("170141183460469231731687303715884105728"),
            ),
            (
                "endingHashKey".into(),
                s("340282366920938463463374607431768211455"),
            ),
            ("parentShardId".into(), ss(&["shardId-000000000001"])),
        ]),
    ];
    for row in rows {
        dynamodb
            .put_item()
            .table_name(&app)
            .set_item(Some(row))
            .send()
            .await
            .expect("PutItem");
    }

    let run = admin(
        region,
        &app,
        &["--json", "--no-lag", "--watch-ms", "300", "leases"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let v = run.json();
    let leases = v["leases"].as_array().expect("leases");
    let keys: Vec<&str> = leases.iter().filter_map(|l| l["lease_key"].as_str()).collect();
    assert_eq!(
        keys,
        [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002"
        ]
    );
    let (a, b, c) = (&leases[0], &leases[1], &leases[2]);
    assert_eq!(a["owner"], "java-worker-1");
    assert_eq!(a["counter"], 42);
    assert_eq!(a["checkpoint"], seq);
    assert_eq!(a["checkpoint_sub_sequence"], 3);
    assert_eq!(a["throughput_kbps"], 12.5);
    assert_eq!(a["renewal"], "not_renewed", "nothing renews these rows");
    assert_eq!(a["live"], false);
    assert!(b["owner"].is_null());
    assert_eq!(b["checkpoint"], "SHARD_END");
    assert_eq!(b["children"], serde_json::json!(["shardId-000000000002"]));
    assert_eq!(b["renewal"], "unowned");
    assert_eq!(c["parents"], serde_json::json!(["shardId-000000000001"]));
    assert_eq!(c["checkpoint"], "TRIM_HORIZON");

    // The table for a person.
    let run = admin(region, &app, &["--no-lag", "--watch-ms", "0", "leases"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let first = run.out.lines().nth(1).expect("a row");
    for cell in [
        "shardId-000000000000",
        "java-worker-1",
        "42",
        &format!("{seq}.3"),
        "12.5",
    ] {
        assert!(first.contains(cell), "{cell} in {first:?}\n{}", run.out);
    }

    let run = admin(region, &app, &["--json", "--watch-ms", "300", "workers"]).await;
    assert_eq!(run.code, 0, "{}", run.err);
    let workers = run.json();
    let w1 = workers
        .as_array()
        .and_then(|w| w.iter().find(|w| w["worker_id"] == "java-worker-1"))
        .expect("java-worker-1");
    assert_eq!(w1["leases"], 1);
    assert_eq!(w1["throughput_kbps"], 12.5);
    assert_eq!(w1["live"], false);

    // Bad input and an unknown application: clear messages, documented exit codes.
    let run = admin(region, &app, &["reset", "--to", "at-timestamp", "yesterday"]).await;
    assert_eq!(run.code, 2, "{}", run.err);
    assert!(run.err.contains("bad timestamp \"yesterday\""), "{}", run.err);
    let run = admin(region, &app, &["reset", "--to", "somewhere"]).await;
    assert_eq!(run.code, 2, "{}", run.err);
    assert!(run.err.contains("expected trim-horizon, latest"), "{}", run.err);
    let run = admin(
        region,
        &app,
        &["reset", "--to", "latest", "--shard", "shardId-000000000009"],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.err);
    assert!(run.err.contains("no lease for shard"), "{}", run.err);
    let missing = unique("admin-missing");
    let run = admin(region, &missing, &["--json", "leases"]).await;
    assert_eq!(run.code, 5, "{}", run.err);
    assert_eq!(run.json()["error"], "unknown_application");
    assert!(
        run.err.contains(&format!("unknown application \"{missing}\"")),
        "{}",
        run.err
    );
    let run = Command::new(ADMIN)
        .args(["leases", "--watch-ms", "x"])
        .output()
        .await
        .expect("run");
    assert_eq!(run.status.code(), Some(2), "a usage error");
}

fn spawn_tail(args: &[&str]) -> Child {
    Command::new(TAIL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcl-tail")
}

/// The `sequence_number` of each line of `kcl-tail`, reading `n` lines (and no more).
async fn read_sequences(child: &mut Child, n: usize) -> Vec<String> {
    read_lines(child, n, Duration::from_secs(2))
        .await
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            v["sequence_number"].as_str().expect("sequence_number").to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_a_stopped_application_makes_kcl_tail_reread_from_the_chosen_position() {
    let (sdk, endpoints) = sdk().await;
    let region = endpoints.region.as_str();
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (stream, app) = (unique("admin-tail"), unique("admin-tail-app"));
    create_stream(&kinesis, &stream, 1).await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        seqs.push(put(&kinesis, &stream, &format!("k{i}"), &format!("r{i}")).await.1);
    }
    let tail_args = [
        "--stream",
        &stream,
        "--application-name",
        &app,
        "--initial-position",
        "trim-horizon",
        "--failover-ms",
        "3000",
        "--region",
        region,
    ];
    let mut tail = spawn_tail(&tail_args);
    assert_eq!(read_sequences(&mut tail, 6).await, seqs);
    sigterm(&mut tail).await;

    // Stopped and caught up; two more records: a lag of 2.
    for i in 6..8 {
        seqs.push(put(&kinesis, &stream, &format!("k{i}"), &format!("r{i}")).await.1);
    }
    let run = admin(
        region,
        &app,
        &["--json", "--stream", &stream, "--watch-ms", "500", "leases"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let lease = run.json()["leases"][0].clone();
    assert_eq!(lease["checkpoint"], seqs[5].as_str());
    assert_eq!(lease["lag"]["records"], 2, "{lease}");
    assert!(lease["lag"]["millis"].is_u64(), "{lease}");
    assert_eq!(lease["live"], false);

    // Back to just after record 2: kcl-tail re-reads 3..8.
    let run = admin(
        region,
        &app,
        &[
            "reset",
            "--to",
            "sequence",
            &seqs[2],
            "--shard",
            "shardId-000000000000",
            "--watch-ms",
            "1000",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    assert!(
        run.out.contains(&seqs[5]) && run.out.contains(&seqs[2]),
        "prints what it changed: {}",
        run.out
    );
    let mut tail = spawn_tail(&tail_args);
    assert_eq!(read_sequences(&mut tail, 5).await, seqs[3..]);
    sigterm(&mut tail).await;

    // The whole application back to the trim horizon: everything again.
    let run = admin(
        region,
        &app,
        &["--json", "reset", "--to", "trim-horizon", "--watch-ms", "1000"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let report = run.json();
    assert_eq!(
        report["changed"][0]["checkpoint_after"], "TRIM_HORIZON",
        "{report}"
    );
    assert_eq!(report["conflicts"], serde_json::json!([]));
    let mut tail = spawn_tail(&tail_args);
    assert_eq!(read_sequences(&mut tail, 8).await, seqs);
    sigterm(&mut tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_refused_while_live_forced_with_force_and_conflicts_are_not_overwritten() {
    let (sdk, endpoints) = sdk().await;
    let region = endpoints.region.as_str();
    let app = unique("admin-live");
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), &app);
    store.ensure_table().await.expect("table");
    let cp = ExtendedSequenceNumber::at(SequenceNumber::new("1000").expect("seq"), 0);
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        assert!(store
            .create_if_absent(&Lease::new(shard, cp.clone()))
            .await
            .expect("create"));
    }
    let held = store
        .take(
            &store
                .get("shardId-000000000000")
                .await
                .expect("get")
                .expect("row"),
            "live-worker",
            false,
        )
        .await
        .expect("take");
    // A worker renewing every 300 ms until it loses the lease.
    let renewer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut held = held;
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                match store.renew(&held).await {
                    Ok(l) => held = l,
                    Err(e) => return e.is_conflict(),
                }
            }
        })
    };

    let run = admin(
        region,
        &app,
        &["--json", "reset", "--to", "latest", "--watch-ms", "1000"],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.err);
    assert!(
        run.err.contains("shardId-000000000000 by live-worker") && run.err.contains("--force"),
        "{}",
        run.err
    );
    assert_eq!(run.json()["error"], "live");
    // Nothing was written: the unowned lease too keeps its checkpoint.
    for l in store.list().await.expect("list") {
        assert_eq!(l.checkpoint, cp, "{l:?}");
    }
    // With --watch-ms 0 nothing is known: an owned lease counts as live.
    let run = admin(region, &app, &["reset", "--to", "latest", "--watch-ms", "0"]).await;
    assert_eq!(run.code, 3, "{}", run.err);

    // --force: the write races the renewer; a lost race is a reported conflict (exit 4), never
    // an overwrite, and a second try wins.
    let mut forced = None;
    for _ in 0..5 {
        let run = admin(
            region,
            &app,
            &["reset", "--to", "latest", "--watch-ms", "1000", "--force"],
        )
        .await;
        assert!(run.code == 0 || run.code == 4, "{} {}", run.code, run.err);
        if run.code == 0 {
            forced = Some(run);
            break;
        }
        assert!(
            run.out.contains("conflict:") && run.out.contains("not overwritten"),
            "{}",
            run.out
        );
    }
    let forced = forced.expect("--force succeeds within 5 tries");
    assert!(
        forced.out.contains("live-worker"),
        "prints the owner it removed: {}",
        forced.out
    );
    let lost = tokio::time::timeout(Duration::from_secs(10), renewer)
        .await
        .expect("the worker loses the lease")
        .expect("join");
    assert!(lost, "the worker's next renewal is a conflict");
    for l in store.list().await.expect("list") {
        assert_eq!(l.checkpoint, ExtendedSequenceNumber::Latest, "{l:?}");
        assert!(l.lease_owner.is_none());
    }

    // A row that changes between the read and the write: reported, not overwritten.
    let backend = kcl_core::KinesisBackend::from_conf(&sdk);
    let options = ObserveOptions {
        watch: Duration::ZERO,
        stream: None,
        lag: false,
    };
    let observed = admin::observe(&app, &store, &backend, &options)
        .await
        .expect("observe");
    let row = store
        .get("shardId-000000000001")
        .await
        .expect("get")
        .expect("row");
    store
        .take(&row, "sneaky-worker", false)
        .await
        .expect("take behind kcl-admin's back");
    let rows = admin::select(&observed, Some("shardId-000000000001")).expect("select");
    let report = admin::reset(&store, &rows, &ResetTarget::TrimHorizon)
        .await
        .expect("reset");
    assert!(report.changed.is_empty());
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].owner_now.as_deref(), Some("sneaky-worker"));
    let now = store
        .get("shardId-000000000001")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(now.checkpoint, ExtendedSequenceNumber::Latest, "not overwritten");
    assert!(now.is_owned_by("sneaky-worker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_application_deletes_the_tables_and_the_fan_out_consumer() {
    let (sdk, endpoints) = sdk().await;
    let region = endpoints.region.as_str();
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let (stream, app) = (unique("admin-del"), unique("admin-del-app"));
    create_stream(&kinesis, &stream, 1).await;
    let store = DynamoDbLeaseStore::new(dynamodb.clone(), &app);
    store.ensure_table().await.expect("table");
    let cp = ExtendedSequenceNumber::TrimHorizon;
    assert!(store
        .create_if_absent(&Lease::new("shardId-000000000000", cp))
        .await
        .expect("create"));
    let arn = kcl_tests::aws::stream_arn(&kinesis, &stream).await;
    kinesis
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name(&app)
        .send()
        .await
        .expect("RegisterStreamConsumer");

    let run = admin(
        region,
        &app,
        &[
            "--json",
            "--stream",
            &stream,
            "--watch-ms",
            "300",
            "delete-application",
            "--delete-consumer",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.err);
    let deleted: BTreeSet<String> = run.json()["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    assert!(
        deleted.contains(&format!("lease table {app}: deleted")),
        "{deleted:?}"
    );
    assert!(deleted.iter().any(|d| d.contains("deregistered")), "{deleted:?}");
    // DynamoDB deletes in the background: the table goes away soon after.
    let mut gone = false;
    for _ in 0..50 {
        if !store.table_exists().await.expect("describe") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the lease table is deleted");
    let consumers = kinesis
        .list_stream_consumers()
        .stream_arn(&arn)
        .send()
        .await
        .expect("ListStreamConsumers");
    let active: Vec<String> = consumers
        .consumers()
        .iter()
        .filter(|c| c.consumer_status().as_str() != "DELETING")
        .map(|c| c.consumer_name().to_owned())
        .collect();
    assert!(active.is_empty(), "consumer deregistered: {active:?}");
    let run = admin(region, &app, &["leases"]).await;
    assert_eq!(run.code, 5, "{}", run.err);
}
