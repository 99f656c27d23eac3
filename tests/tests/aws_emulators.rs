//! End-to-end tests through the real AWS SDK path, against third-party emulators on loopback
//! (kinesis-local for Kinesis, dynalite for DynamoDB), started by the project's own script.
//! Without the emulators these tests fail; they never skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
use kcl_core::backend::local::BackendOp;
use kcl_core::{ExtendedSequenceNumber, KinesisBackend, SchedulerHandle, StreamBackend};
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::aws::{
    backends, create_stream, edge_requests, kinesis_requests_on, produce_aws, sdk, unique, wait_active,
};
use kcl_tests::*;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(90);

fn worker(
    app: &str,
    stream: &str,
    id: &str,
    backend: impl StreamBackend,
    store: impl LeaseStore,
    log: &Log,
    failover: Duration,
) -> SchedulerHandle {
    fast_for(app, stream, id, backend, store, log, failover)
        .polling_interval(Duration::from_millis(100))
        .min_read_interval(Duration::from_millis(50))
        .build()
        .expect("config")
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_balance_and_a_killed_workers_shards_resume_from_checkpoints() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("balance"), unique("balance-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 4).await;
    let (backend, store) = backends(&sdk, &app).await;
    let log = Log::default();
    let failover = Duration::from_secs(2);
    let a = worker(&app, &stream, "a", backend.clone(), store.clone(), &log, failover);
    let b = worker(&app, &stream, "b", backend.clone(), store.clone(), &log, failover);
    wait_until(LIMIT, "2/2 over two workers", || {
        a.held_leases().len() == 2 && b.held_leases().len() == 2
    })
    .await;
    let owners: BTreeMap<Option<String>, usize> =
        store
            .list()
            .await
            .unwrap()
            .into_iter()
            .fold(BTreeMap::new(), |mut m, l| {
                *m.entry(l.lease_owner).or_default() += 1;
                m
            });
    assert_eq!(owners.values().copied().collect::<Vec<_>>(), [2, 2], "{owners:?}");

    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 8, 4, &mut produced).await;
    wait_until(LIMIT, "first wave processed", || log.wait_count() == 32).await;
    let b_shards: BTreeSet<String> = b.held_leases().into_iter().collect();
    b.kill().await;
    let killed = Instant::now();
    let mut checkpoints = BTreeMap::new();
    for l in store.list().await.unwrap() {
        if b_shards.contains(&l.lease_key) {
            checkpoints.insert(l.lease_key.clone(), l.checkpoint.clone());
        }
    }
    let before = log.seen().len();
    produce_aws(&kinesis, &stream, 8, 4, &mut produced).await;
    wait_until(LIMIT, "a takes over b's shards", || a.held_leases().len() == 4).await;
    // Not before b's validity ran out: failover after its last heartbeat, which was at most a
    // sixth of the failover time before the kill.
    assert!(killed.elapsed() >= failover - failover / 6);
    wait_until(LIMIT, "second wave processed", || log.wait_count() == 64).await;
    log.assert_complete_and_ordered(&produced);
    for s in &log.seen()[before..] {
        if let Some(cp) = checkpoints.get(&s.shard) {
            let seq = ExtendedSequenceNumber::from_parts(&s.sequence, 0).unwrap();
            assert!(
                seq > *cp,
                "{} replayed {} at/before its checkpoint {cp}",
                s.shard,
                s.sequence
            );
        }
    }
    a.shutdown().await.unwrap();
    let rows = store.list().await.unwrap();
    assert!(
        rows.iter().all(|l| l.lease_owner.is_none()),
        "graceful shutdown releases every lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_through_the_emulator_are_followed_parents_first() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("reshard"), unique("reshard-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 2).await;
    let (backend, store) = backends(&sdk, &app).await;
    let log = Log::default();
    let a = worker(
        &app,
        &stream,
        "a",
        backend.clone(),
        store.clone(),
        &log,
        Duration::from_secs(3),
    );
    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 10, 2, &mut produced).await;

    let shards = backend.list_shards(&stream).await.unwrap();
    let s0 = shards[0].clone();
    let middle = s0.hash_key_range.start + (s0.hash_key_range.end - s0.hash_key_range.start) / 2 + 1;
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&s0.shard_id)
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .expect("SplitShard");
    wait_active(&kinesis, &stream).await;
    produce_aws(&kinesis, &stream, 10, 2, &mut produced).await;
    let open: Vec<_> = backend
        .list_shards(&stream)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    let upper = open
        .iter()
        .find(|s| s.parent_shard_id.as_deref() == Some(&s0.shard_id) && s.hash_key_range.start == middle)
        .expect("upper child")
        .clone();
    let s1 = shards[1].clone();
    kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&upper.shard_id)
        .adjacent_shard_to_merge(&s1.shard_id)
        .send()
        .await
        .expect("MergeShards");
    wait_active(&kinesis, &stream).await;
    produce_aws(&kinesis, &stream, 10, 2, &mut produced).await;
    wait_until(LIMIT, "all processed", || log.wait_count() == 60).await;
    log.assert_complete_and_ordered(&produced);

    let all = backend.list_shards(&stream).await.unwrap();
    let seen = log.seen();
    for child in &all {
        for parent in child.parents() {
            let last_parent = seen.iter().rposition(|s| s.shard == parent);
            let first_child = seen.iter().position(|s| s.shard == child.shard_id);
            if let (Some(p), Some(c)) = (last_parent, first_child) {
                assert!(
                    p < c,
                    "child {} started before parent {parent} ended",
                    child.shard_id
                );
            }
        }
    }
    a.shutdown().await.unwrap();
    let rows: HashMap<String, _> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.lease_key.clone(), l))
        .collect();
    // Each parent reached SHARD_END; it may already have been deleted since (its children
    // started), as finished leases are cleaned up.
    for parent in [&s0.shard_id, &upper.shard_id, &s1.shard_id] {
        if let Some(row) = rows.get(parent.as_str()) {
            assert!(
                row.checkpoint.is_shard_end(),
                "{parent} not at SHARD_END: {row:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_kcl_lease_table_is_picked_up_and_continued_from_its_checkpoints() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("java"), unique("java-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 2).await;
    let mut produced = BTreeMap::new();
    let first = produce_aws(&kinesis, &stream, 6, 4, &mut produced).await;
    // The table as a Java KCL 2.x/3.x worker leaves it: owned by a dead worker, checkpointed
    // at the 2nd record of each shard, with attributes this library does not use.
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = DynamoDbLeaseStore::new(dynamo.clone(), &app);
    store.ensure_table().await.unwrap();
    let shards = KinesisBackend::from_conf(&sdk)
        .list_shards(&stream)
        .await
        .unwrap();
    let mut checkpoint_of = BTreeMap::new();
    for s in &shards {
        let on_shard: Vec<_> = first.iter().filter(|r| r.0 == s.shard_id).collect();
        let cp = &on_shard[1].1;
        checkpoint_of.insert(s.shard_id.clone(), cp.clone());
        let s_ = |v: &str| AttributeValue::S(v.to_owned());
        let n = |v: &str| AttributeValue::N(v.to_owned());
        dynamo
            .put_item()
            .table_name(&app)
            .item("leaseKey", s_(&s.shard_id))
            .item("leaseOwner", s_("java-worker-1"))
            .item("leaseCounter", n("17"))
            .item("checkpoint", s_(cp))
            .item("checkpointSubSequenceNumber", n("0"))
            .item("ownerSwitchesSinceCheckpoint", n("0"))
            .item("startingHashKey", s_(&s.hash_key_range.start.to_string()))
            .item("endingHashKey", s_(&s.hash_key_range.end.to_string()))
            .item("throughputKBps", n("1.5"))
            .item("isMarkedForLeaseSteal", AttributeValue::Bool(false))
            .send()
            .await
            .expect("PutItem");
    }
    let log = Log::default();
    let (backend, store) = backends(&sdk, &app).await;
    let started = Instant::now();
    let a = worker(
        &app,
        &stream,
        "rust-1",
        backend,
        store.clone(),
        &log,
        Duration::from_secs(2),
    );
    let expected: BTreeSet<(String, u64)> = first
        .iter()
        .filter(|(shard, seq, _, _)| {
            ExtendedSequenceNumber::from_parts(seq, 0).unwrap()
                > ExtendedSequenceNumber::from_parts(&checkpoint_of[shard], 0).unwrap()
        })
        .map(|(_, _, k, i)| (k.clone(), *i))
        .collect();
    wait_until(LIMIT, "records after the Java checkpoints processed", || {
        log.wait_count() == expected.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: BTreeSet<(String, u64)> = log.seen().into_iter().map(|s| (s.key, s.index)).collect();
    assert_eq!(got, expected, "exactly the records after the Java checkpoints");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the dead Java worker's leases expire first"
    );
    a.shutdown().await.unwrap();
    for s in &shards {
        let row = dynamo
            .get_item()
            .table_name(&app)
            .key("leaseKey", AttributeValue::S(s.shard_id.clone()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        let item = row.item().expect("row");
        assert_eq!(
            item.get("isMarkedForLeaseSteal"),
            Some(&AttributeValue::Bool(false)),
            "attributes this library does not know are kept"
        );
        // throughputKBps is ours to write now (the load we measured, in the Java unit).
        let kbps = item
            .get("throughputKBps")
            .and_then(|v| v.as_n().ok())
            .expect("throughputKBps");
        assert!(kbps.parse::<f64>().is_ok_and(|v| v >= 0.0), "{kbps}");
        let counter: u64 = item["leaseCounter"].as_n().unwrap().parse().unwrap();
        assert!(counter > 17, "the counter moved on from the Java value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_through_the_sdk_path_slow_down_but_lose_nothing() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("throttle"), unique("throttle-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 2).await;
    let (backend, store) = backends(&sdk, &app).await;
    let backend = Arc::new(FailureBackend::new(
        backend,
        FaultPlan::new(3)
            .rule(BackendOp::GetRecords, Trigger::Probability(0.4), Fault::Throttle)
            .rule(BackendOp::GetRecords, Trigger::EveryNth(5), Fault::ExpireIterator),
    ));
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 6, 5, &mut produced).await;
    let a = worker(
        &app,
        &stream,
        "a",
        backend.clone(),
        store.clone(),
        &log,
        Duration::from_secs(3),
    );
    let b = worker(
        &app,
        &stream,
        "b",
        backend.clone(),
        store.clone(),
        &log,
        Duration::from_secs(3),
    );
    wait_until(LIMIT, "all processed", || log.wait_count() == 30).await;
    log.assert_complete_and_ordered(&produced);
    assert!(backend.injected(BackendOp::GetRecords) > 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_named_by_arn_is_read_by_arn_through_injected_faults() {
    init_tracing();
    let (sdk, endpoints) = sdk().await;
    let edge = endpoints.edge.clone().expect("the edge proxy's URL");
    let (stream, app) = (unique("by-arn"), unique("by-arn-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 2).await;
    let arn: kcl_core::stream_arn::StreamArn = kcl_tests::aws::stream_arn(&kinesis, &stream)
        .await
        .parse()
        .expect("a stream ARN");
    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 4, 5, &mut produced).await;

    // Through the edge proxy, which records how each call named its stream.
    let through_edge = aws_sdk_kinesis::config::Builder::from(&sdk)
        .endpoint_url(&edge)
        .build();
    let backend = Arc::new(FailureBackend::new(
        KinesisBackend::new(aws_sdk_kinesis::Client::from_conf(through_edge)),
        FaultPlan::new(11)
            .rule(BackendOp::ListShards, Trigger::Nth(1), Fault::Error)
            .rule(BackendOp::GetShardIterator, Trigger::Nth(1), Fault::Throttle)
            .rule(BackendOp::GetRecords, Trigger::Probability(0.3), Fault::Throttle)
            .rule(BackendOp::GetRecords, Trigger::EveryNth(4), Fault::ExpireIterator),
    ));
    let log = Log::default();
    let handle = fast_for(
        &app,
        &stream,
        "a",
        backend.clone(),
        kcl_lease::InMemoryLeaseStore::new(),
        &log,
        Duration::from_secs(3),
    )
    .stream_arn(arn.clone())
    .build()
    .expect("valid config")
    .spawn();
    wait_until(LIMIT, "all processed", || log.wait_count() == 20).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    for op in [
        BackendOp::ListShards,
        BackendOp::GetShardIterator,
        BackendOp::GetRecords,
    ] {
        assert!(backend.injected(op) > 0, "no fault injected into {op:?}");
    }
    handle.shutdown().await.expect("clean shutdown");

    let requests = edge_requests(&edge).await;
    let on_stream = kinesis_requests_on(&requests, &stream);
    let actions: BTreeSet<&str> = on_stream.iter().filter_map(|r| r["action"].as_str()).collect();
    for action in ["ListShards", "GetShardIterator", "GetRecords"] {
        assert!(actions.contains(action), "no {action} by ARN seen: {actions:?}");
    }
    for r in &on_stream {
        assert_eq!(r["streamArn"].as_str(), Some(arn.to_string().as_str()), "{r}");
        assert!(r["streamName"].is_null(), "a call named the stream by name: {r}");
    }
}
