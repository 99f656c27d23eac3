//! Multi-stream applications on the bundled local backend: one lease table for several
//! streams, with the Java KCL's multi-stream lease keys; streams added and removed at run time;
//! the leases of removed streams cleaned up; a Java-style multi-stream table resumed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::local::LOCAL_ACCOUNT;
use kcl_core::{
    ExtendedSequenceNumber, FormerStreamsCleanup, InMemoryLeaseStore, InitialPosition, LocalBackend,
    Scheduler, SchedulerBuilder, StreamBackend, StreamConfig, StreamIdentifier, StreamList, StreamTracker,
};
use kcl_lease::{Lease, LeaseStore};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Puts `per_key` records for each of `keys` keys named `<prefix>-<k>` into `stream`.
async fn produce_to(
    backend: &LocalBackend,
    stream: &str,
    prefix: &str,
    keys: usize,
    per_key: u64,
    produced: &mut BTreeMap<String, u64>,
) {
    for _ in 0..per_key {
        for k in 0..keys {
            let key = format!("{prefix}-{k}");
            let n = produced.entry(key.clone()).or_default();
            let data = Bytes::from(format!("{key}:{n}"));
            backend.put_record(stream, &key, data, None).await.expect("put");
            *n += 1;
        }
    }
}

fn worker(
    id: &str,
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    log: &Log,
    tracker: impl StreamTracker,
) -> SchedulerBuilder {
    // `fast` sets everything but the streams; the tracker replaces the single stream.
    fast(id, backend.clone(), store.clone(), log, Duration::from_secs(2)).stream_tracker(tracker)
}

#[tokio::test(start_paused = true)]
async fn one_table_for_several_streams_with_java_keys() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream("orders", 2).unwrap();
    local.create_stream("payments", 3).unwrap();
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let streams = vec![StreamConfig::named("orders"), StreamConfig::named("payments")];
    let mut produced = BTreeMap::new();
    produce_to(&local, "orders", "o", 8, 5, &mut produced).await;
    produce_to(&local, "payments", "p", 8, 5, &mut produced).await;
    // Finished leases are kept here, to check the parent's row.
    let a = worker("a", &local, &store, &log, streams.clone())
        .delete_finished_leases(false)
        .build()
        .unwrap()
        .spawn();
    let b = worker("b", &local, &store, &log, streams)
        .delete_finished_leases(false)
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "both streams processed", || log.wait_count() == 80).await;
    // A reshard in one stream: the children get multi-stream keys too.
    let (lo, hi) = local
        .split_shard("payments", "shardId-000000000000", 1 << 126)
        .unwrap();
    produce_to(&local, "payments", "p", 8, 5, &mut produced).await;
    produce_to(&local, "orders", "o", 8, 5, &mut produced).await;
    wait_until(LIMIT, "second wave processed", || log.wait_count() == 160).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);

    let orders = local.stream_identifier("orders").await.unwrap();
    let payments = local.stream_identifier("payments").await.unwrap();
    assert_eq!(orders.account_id, LOCAL_ACCOUNT);
    let leases = store.list().await.unwrap();
    assert_eq!(leases.len(), 2 + 3 + 2, "{leases:?}");
    for lease in &leases {
        let (stream, shard) = StreamIdentifier::split_lease_key(&lease.lease_key).expect("multi-stream key");
        assert!(stream == orders || stream == payments, "{}", lease.lease_key);
        assert_eq!(
            lease.stream_identifier.as_deref(),
            Some(stream.to_string().as_str())
        );
        assert_eq!(lease.shard_id.as_deref(), Some(shard));
    }
    for child in [&lo, &hi] {
        let lease = store
            .get(&payments.lease_key(child))
            .await
            .unwrap()
            .expect("child lease");
        assert_eq!(
            lease.parent_shard_ids.iter().collect::<Vec<_>>(),
            ["shardId-000000000000"],
            "parents stay plain shard ids, as in the Java KCL"
        );
    }
    let parent = store
        .get(&payments.lease_key("shardId-000000000000"))
        .await
        .unwrap()
        .expect("parent lease");
    assert!(parent.is_finished());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn streams_added_and_removed_at_run_time() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream("first", 2).unwrap();
    local.create_stream("second", 2).unwrap();
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let list = StreamList::new([StreamConfig::named("first")]);
    let a = worker("a", &local, &store, &log, list.clone())
        .shard_sync_interval(Duration::from_millis(200))
        .former_streams_cleanup(FormerStreamsCleanup::After(Duration::from_secs(1)))
        .build()
        .unwrap()
        .spawn();
    let mut produced = BTreeMap::new();
    produce_to(&local, "first", "f", 6, 4, &mut produced).await;
    produce_to(&local, "second", "s", 6, 4, &mut produced).await;
    wait_until(LIMIT, "first stream processed", || log.wait_count() == 24).await;
    assert!(
        log.seen().iter().all(|s| s.key.starts_with("f-")),
        "an untracked stream is not read"
    );

    // Added: read from its initial position (TRIM_HORIZON here).
    list.add(StreamConfig::named("second").initial_position(InitialPosition::TrimHorizon));
    wait_until(LIMIT, "second stream processed", || log.wait_count() == 48).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);

    // Removed: its shards stop gracefully, its leases are released, then deleted.
    let first = local.stream_identifier("first").await.unwrap();
    let shutdowns = log.shutdown_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(list.remove("first"));
    wait_until(LIMIT, "first stream's shards stopped", || {
        a.held_leases().iter().all(|k| !k.starts_with(&first.to_string()))
    })
    .await;
    assert!(log.shutdown_calls.load(std::sync::atomic::Ordering::SeqCst) >= shutdowns + 2);
    let before = log.seen().len();
    produce_to(&local, "first", "f", 6, 2, &mut produced).await;
    wait_until(LIMIT, "former stream's leases deleted", || {
        store
            .snapshot()
            .iter()
            .all(|l| l.stream().as_ref() != Some(&first))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        log.seen()[before..].iter().all(|s| !s.key.starts_with("f-")),
        "a removed stream is no longer read"
    );
    assert_eq!(a.held_leases().len(), 2, "the second stream's shards remain");
    a.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_java_multi_stream_table_is_resumed_after_its_checkpoints() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream("legacy", 1).unwrap();
    let mut produced = BTreeMap::new();
    produce_to(&local, "legacy", "l", 1, 10, &mut produced).await;
    let id = local.stream_identifier("legacy").await.unwrap();
    // The row a Java multi-stream worker leaves: checkpoint after the 4th record; only the key
    // names the stream (older Java versions wrote no streamName/shardId attributes).
    let shard = "shardId-000000000000";
    let it = local
        .get_shard_iterator("legacy", shard, &kcl_core::IteratorPosition::TrimHorizon)
        .await
        .unwrap();
    let records = local.get_records("legacy", &it, 100).await.unwrap().records;
    let mut row = Lease::new(
        id.lease_key(shard),
        ExtendedSequenceNumber::at(records[3].sequence_number.clone(), 0),
    );
    row.lease_owner = Some("java-worker".into());
    row.lease_counter = 42;
    let store = InMemoryLeaseStore::new();
    store.put_raw(row);
    let log = Log::default();
    let a = Scheduler::multi_stream_builder(APP, vec![StreamConfig::identified(id.clone())]);
    let a = a
        .worker_id("rust".to_owned())
        .backend(local.clone())
        .lease_store(store.clone())
        .failover_time(Duration::from_secs(1))
        .processor_factory({
            let log = log.clone();
            move |shard: &str| Recorder {
                worker: "rust".into(),
                shard: shard.to_owned(),
                log: log.clone(),
                delay: Duration::ZERO,
            }
        })
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "the rest processed", || log.wait_count() == 6).await;
    let indexes: Vec<u64> = log.seen().iter().map(|s| s.index).collect();
    assert_eq!(
        indexes,
        (4..10).collect::<Vec<_>>(),
        "exactly the records after the checkpoint"
    );
    let lease = store.get(&id.lease_key(shard)).await.unwrap().unwrap();
    assert_eq!(lease.lease_owner.as_deref(), Some("rust"));
    a.shutdown().await.unwrap();
}

/// One multi-stream worker whose streams live behind different backends (as streams of other
/// accounts read with their own credentials do): each stream's calls go to its route, faults
/// injected into one route slow that stream only, and the stream named by ARN gets lease keys
/// with the ARN's account.
#[tokio::test(start_paused = true)]
async fn streams_behind_different_backends_in_one_worker() {
    use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
    use kcl_core::backend::BackendOp;
    use kcl_core::RoutingBackend;
    use std::sync::Arc;
    init_tracing();
    let own = LocalBackend::new();
    let partner = LocalBackend::new();
    own.create_stream("orders", 2).unwrap();
    partner.create_stream("payments", 2).unwrap();
    let partner_faults = Arc::new(FailureBackend::new(
        partner.clone(),
        FaultPlan::new(5)
            .rule(BackendOp::GetRecords, Trigger::Probability(0.3), Fault::Throttle)
            .rule(BackendOp::GetRecords, Trigger::EveryNth(7), Fault::ExpireIterator)
            .rule(BackendOp::GetShardIterator, Trigger::Nth(1), Fault::Throttle),
    ));
    let routed = RoutingBackend::without_default()
        .route("orders", own.clone())
        .route("payments", partner_faults.clone());
    let arn: kcl_core::stream_arn::StreamArn = "arn:aws:kinesis:us-east-1:111122223333:stream/payments"
        .parse()
        .unwrap();
    let streams = vec![StreamConfig::named("orders"), StreamConfig::from_arn(arn)];
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce_to(&own, "orders", "o", 6, 5, &mut produced).await;
    produce_to(&partner, "payments", "p", 6, 5, &mut produced).await;
    // The factory is told each shard's id, stream and lease key.
    let made = Arc::new(std::sync::Mutex::new(Vec::<kcl_core::ShardInfo>::new()));
    let (made_by, recorder_log) = (made.clone(), log.clone());
    let a = fast("a", routed, store.clone(), &log, Duration::from_secs(2))
        .stream_tracker(streams)
        .processor_factory(kcl_core::WithShardInfo(move |shard: &kcl_core::ShardInfo| {
            made_by.lock().unwrap().push(shard.clone());
            Recorder {
                worker: "a".into(),
                shard: shard.lease_key.clone(),
                log: recorder_log.clone(),
                delay: Duration::ZERO,
            }
        }))
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "both streams processed", || log.wait_count() == 60).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    assert!(partner_faults.injected(BackendOp::GetRecords) > 0);
    // Both backends were read (a call routed to the wrong one would find no such stream).
    assert!(own.op_count(BackendOp::GetRecords) > 0);
    assert!(partner.op_count(BackendOp::GetRecords) > 0);
    let keys: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lease_key)
        .collect();
    let payments: Vec<&String> = keys.iter().filter(|k| k.contains(":payments:")).collect();
    assert_eq!(payments.len(), 2, "{keys:?}");
    assert!(
        payments.iter().all(|k| k.starts_with("111122223333:payments:")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .filter(|k| k.contains(":orders:"))
            .all(|k| k.starts_with(&format!("{LOCAL_ACCOUNT}:orders:"))),
        "{keys:?}"
    );
    let made = made.lock().unwrap().clone();
    assert_eq!(made.len(), 4, "{made:?}");
    for info in &made {
        assert!(info.shard_id.starts_with("shardId-"), "{info:?}");
        assert_eq!(
            info.lease_key,
            info.stream.as_ref().unwrap().lease_key(&info.shard_id)
        );
        let account = if info.stream_name == "payments" {
            "111122223333"
        } else {
            LOCAL_ACCOUNT
        };
        assert_eq!(info.stream.as_ref().unwrap().account_id, account, "{info:?}");
    }
    a.shutdown().await.unwrap();
}
