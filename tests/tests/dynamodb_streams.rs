//! DynamoDB Streams on the bundled local backend, end to end: a table's changes replicated into
//! a second in-memory table by a processor that parses `ChangeRecord`s, through the unchanged
//! scheduler, with a shard rotation in the middle (parents finished before children) and one of
//! two workers killed mid-run. Every change must arrive in order per key, none lost, and the
//! replica must equal the table at the end. The replica, its processor and the writer are
//! `kcl_examples::replicate`, the pieces of the `kcl-replicate` demo.

use std::collections::BTreeSet;

use std::time::Duration;

use kcl_core::dynamodb_streams::{AttributeValue, ChangeRecord, EventName, Item, StreamViewType};
use kcl_core::lease::LeaseStore;
use kcl_core::{InMemoryLeaseStore, LocalBackend, SchedulerHandle, StreamBackend};
use kcl_examples::replicate::{
    check_order, compare, key_schema, start_worker, table_items, version, Replica, WorkerTimings, Writer,
};
use kcl_tests::ddb_streams_fake::fake_service;
use kcl_tests::{init_tracing, wait_until};

const LIMIT: Duration = Duration::from_secs(60);
const TABLE: &str = kcl_examples::replicate::TABLE;
const KEYS: u64 = 12;

/// A worker replicating into `replica` (the shared processor of `kcl-replicate`: applies each
/// change unless the replica holds a newer one, and pauses 40 ms between applying a batch and
/// checkpointing it, so that a kill lands in the middle of a batch).
fn worker(
    name: &str,
    stream: &str,
    backend: &(impl StreamBackend + Clone),
    store: &InMemoryLeaseStore,
    replica: &Replica,
) -> SchedulerHandle {
    start_worker(name, stream, backend, store, replica, WorkerTimings::default()).expect("valid config")
}

/// Every change delivered in order per key (the first delivery of each sequence number, in
/// delivery order, is exactly what was written: replays only repeat earlier ones), by both
/// workers, and the replica equal to the table.
fn check_replicated(replica: &Replica, writer: &Writer, backend: &LocalBackend) {
    assert_eq!(check_order(replica, writer), Vec::<String>::new());
    assert_eq!(writer.writes, 360);
    assert_eq!(writer.expected.len() as u64, KEYS);
    for event in [EventName::Insert, EventName::Modify, EventName::Remove] {
        assert!(writer.expected.values().flatten().any(|(e, _)| *e == event));
    }
    let workers: BTreeSet<String> = replica
        .lock()
        .deliveries
        .iter()
        .map(|d| d.worker.clone())
        .collect();
    assert_eq!(workers.len(), 2, "both workers delivered changes");
    // The replica equals the table.
    let table = table_items(backend, TABLE).unwrap();
    assert!(!table.is_empty());
    let comparison = compare(replica, &table);
    assert!(comparison.equal(), "{comparison:?}");
    assert_eq!(replica.lock().items, table);
}

#[tokio::test(start_paused = true)]
async fn a_table_is_replicated_through_a_rotation_and_a_killed_worker() {
    init_tracing();
    let backend = LocalBackend::new();
    let stream = backend
        .create_table(TABLE, key_schema(), StreamViewType::NewAndOldImages, 3)
        .unwrap();
    let store = InMemoryLeaseStore::new();
    let replica = Replica::default();
    let mut writer = Writer::new(&backend, TABLE, KEYS);

    let a = worker("a", &stream, &backend, &store, &replica);
    let b = worker("b", &stream, &backend, &store, &replica);
    wait_until(LIMIT, "the shards are shared", || {
        !a.held_leases().is_empty() && !b.held_leases().is_empty()
    })
    .await;

    writer.write(120).unwrap();
    // Rotation before the first wave is read: every shard closes with its changes unread and a
    // child opens for each; the next changes go to the children, which must wait until their
    // parents are finished for the order per key to hold.
    let rotated = backend.rotate_shards(&stream).unwrap();
    assert_eq!(rotated.len(), 3);
    writer.write(120).unwrap();
    // b dies mid-run (about half of the changes so far delivered): whatever it had not
    // checkpointed is delivered
    // again by a, after the fail-over time.
    wait_until(LIMIT, "part of the second wave is delivered", || {
        replica.unique_deliveries() >= 130
    })
    .await;
    b.kill().await;
    writer.write(120).unwrap();
    wait_until(LIMIT, "every change is delivered", || {
        replica.unique_deliveries() == writer.writes
    })
    .await;
    wait_until(LIMIT, "a holds the three children", || a.held_leases().len() == 3).await;
    a.shutdown().await.unwrap();
    let replays = replica.deliveries() - writer.writes;
    tracing::info!(replays, "delivered again after the kill");
    assert!(
        replays > 0,
        "the kill landed between batches: nothing to deliver again"
    );

    check_replicated(&replica, &writer, &backend);

    // The parents were finished (SHARD_END) and the children are under way; the stream has six
    // shards.
    let shards = backend.shards(&stream).unwrap();
    assert_eq!(shards.len(), 6);
    for lease in store.list().await.unwrap() {
        let parent = rotated.iter().any(|(p, _)| *p == lease.lease_key);
        assert!(!parent || lease.checkpoint.is_shard_end(), "{lease:?}");
    }
}

/// A worker's end, once it stopped by itself: the typed error of a disabled stream.
async fn stopped_on_disabled_stream(worker: SchedulerHandle) -> kcl_core::StreamDisabled {
    tokio::time::timeout(LIMIT, worker.stopped())
        .await
        .expect("the worker stops by itself");
    match worker.shutdown().await {
        Err(kcl_core::KclError::Fatal(kcl_core::FatalError::StreamDisabled(d))) => d,
        other => panic!("expected the disabled stream's error, got {other:?}"),
    }
}

/// A stream disabled on its table while the application runs, with changes unread (some in the
/// parents of a rotation): both workers read every shard to its end (nothing lost: the replica
/// equals the table), then stop with a typed error naming the stream's ARN, not a retry loop
/// and not an idle worker. Once the table has a new stream, a worker on the old one names it.
#[tokio::test(start_paused = true)]
async fn a_disabled_stream_is_read_to_its_end_then_stops_the_workers_with_its_arn() {
    use kcl_core::StreamEnd;

    init_tracing();
    let backend = LocalBackend::new();
    let stream = backend
        .create_table(TABLE, key_schema(), StreamViewType::NewAndOldImages, 2)
        .unwrap();
    let store = InMemoryLeaseStore::new();
    let replica = Replica::default();
    let mut writer = Writer::new(&backend, TABLE, KEYS);
    let a = worker("a", &stream, &backend, &store, &replica);
    let b = worker("b", &stream, &backend, &store, &replica);
    wait_until(LIMIT, "the shards are shared", || {
        !a.held_leases().is_empty() && !b.held_leases().is_empty()
    })
    .await;
    writer.write(120).unwrap();
    backend.rotate_shards(&stream).unwrap();
    writer.write(120).unwrap();
    wait_until(LIMIT, "part of the changes are delivered", || {
        replica.unique_deliveries() >= 60
    })
    .await;
    assert!(
        replica.unique_deliveries() < writer.writes,
        "changes unread at the disabling"
    );
    assert_eq!(backend.disable_stream(TABLE).unwrap(), stream);
    assert!(!backend.table_stream_enabled(TABLE).unwrap());
    assert!(backend.shards(&stream).unwrap().iter().all(|s| !s.is_open()));

    for worker in [a, b] {
        let id = worker.worker_id().to_owned();
        let end = stopped_on_disabled_stream(worker).await;
        assert_eq!(end.stream, stream, "{id}");
        assert_eq!(end.end, StreamEnd::Disabled);
        assert_eq!(end.latest_stream_arn, None);
        let message = end.to_string();
        assert!(
            message.contains(&stream) && message.contains("DISABLED"),
            "{message}"
        );
    }
    assert_eq!(
        replica.unique_deliveries(),
        writer.writes,
        "every change was read"
    );
    assert_eq!(check_order(&replica, &writer), Vec::<String>::new());
    let comparison = compare(&replica, &table_items(&backend, TABLE).unwrap());
    assert!(comparison.equal(), "{comparison:?}");
    assert!(store.list().await.unwrap().iter().all(|l| l.is_finished()));

    // A write to the table now goes to no stream; a new stream is a new ARN, which the error
    // of a worker started on the old one names.
    let before = backend.record_count(&stream).unwrap();
    writer.write(5).unwrap();
    assert_eq!(backend.record_count(&stream).unwrap(), before);
    let newer = backend
        .enable_stream(TABLE, StreamViewType::NewAndOldImages, 1)
        .unwrap();
    assert_ne!(newer, stream);
    assert_eq!(backend.table_stream_arn(TABLE).unwrap(), newer);
    let late = worker("c", &stream, &backend, &store, &Replica::default());
    let end = stopped_on_disabled_stream(late).await;
    assert_eq!(
        (end.stream.as_str(), end.end),
        (stream.as_str(), StreamEnd::Disabled)
    );
    assert_eq!(end.latest_stream_arn.as_deref(), Some(newer.as_str()));
    assert!(end.to_string().contains(&newer), "{end}");
}

/// Every iterator type, the clamped limit, an expired iterator and the records' shape through
/// the SDK path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterators_limits_and_expiry_through_the_sdk() {
    use kcl_core::{BackendError, DynamoDbStreamsBackend, IteratorPosition as P};

    let backend = LocalBackend::builder()
        .iterator_ttl(Duration::from_millis(300))
        .build();
    let stream = backend
        .create_table(
            TABLE,
            kcl_core::backend::local::KeySchema::hash("pk"),
            StreamViewType::NewImage,
            1,
        )
        .unwrap();
    let (_service, sdk) = fake_service(&backend, &stream).await;
    let (ddb, _) = DynamoDbStreamsBackend::for_stream_arn(&sdk, &stream).unwrap();
    let put = |i: u64| {
        let item: Item = [
            ("pk".to_owned(), AttributeValue::s(format!("k{i}"))),
            ("v".to_owned(), AttributeValue::n(i)),
        ]
        .into();
        backend.put_item(TABLE, item).unwrap();
    };
    for i in 0..3 {
        put(i);
    }
    let shard = ddb.list_shards(&stream).await.unwrap()[0].shard_id.clone();
    let read = |position: P| {
        let (ddb, stream, shard) = (ddb.clone(), stream.clone(), shard.clone());
        async move {
            let it = ddb.get_shard_iterator(&stream, &shard, &position).await?;
            // More than the service's 1,000: clamped (the fake refuses larger limits).
            let out = ddb.get_records(&stream, &it, 5000).await?;
            let versions: Vec<u64> = out
                .records
                .iter()
                .map(|r| version(&ChangeRecord::from_record(r).unwrap().new_image.unwrap()).unwrap())
                .collect();
            Ok::<_, BackendError>((versions, out))
        }
    };
    let (all, out) = read(P::TrimHorizon).await.unwrap();
    assert_eq!(all, [0, 1, 2]);
    let second = out.records[1].sequence_number.clone();
    assert_eq!(&*out.records[1].partition_key, r#"{"pk":{"S":"k1"}}"#);
    assert!(out.next_iterator.is_some() && out.child_shards.is_empty());
    assert_eq!(read(P::AtSequenceNumber(second.clone())).await.unwrap().0, [1, 2]);
    assert_eq!(read(P::AfterSequenceNumber(second)).await.unwrap().0, [2]);
    let latest = ddb.get_shard_iterator(&stream, &shard, &P::Latest).await.unwrap();
    put(3);
    let out = ddb.get_records(&stream, &latest, 10).await.unwrap();
    assert_eq!(out.records.len(), 1);
    assert!(matches!(
        read(P::AtTimestamp(std::time::SystemTime::now())).await,
        Err(BackendError::Unsupported(_))
    ));
    // An iterator older than its time to live.
    let it = ddb
        .get_shard_iterator(&stream, &shard, &P::TrimHorizon)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        ddb.get_records(&stream, &it, 10).await,
        Err(BackendError::ExpiredIterator)
    ));
    assert!(matches!(
        ddb.get_shard_iterator(&stream, "shardId-00000000000000000000-00000000", &P::TrimHorizon)
            .await,
        Err(BackendError::ShardNotFound(_))
    ));
    // A closed shard read to its end: no next iterator.
    backend.rotate_shards(&stream).unwrap();
    let it = ddb
        .get_shard_iterator(&stream, &shard, &P::TrimHorizon)
        .await
        .unwrap();
    let out = ddb.get_records(&stream, &it, 1000).await.unwrap();
    assert_eq!(out.records.len(), 4);
    assert!(out.next_iterator.is_none());
}

/// The same replication through `DynamoDbStreamsBackend` (the AWS SDK path: `DescribeTable`,
/// paged `DescribeStream`, `GetShardIterator`, `GetRecords`, the service's JSON and errors)
/// against a fake DynamoDB Streams endpoint over the local table, with one trimmed read: the
/// reader takes a new iterator, which is trimmed too and falls back to the shard's trim horizon.
/// Real time, not paused (real sockets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_backend_replicates_a_table_through_the_service_protocol() {
    use kcl_core::backend::dynamodb_streams::DynamoDbSourceError;
    use kcl_core::DynamoDbStreamsBackend;

    init_tracing();
    let backend = LocalBackend::new();
    let stream = backend
        .create_table(TABLE, key_schema(), StreamViewType::NewAndOldImages, 3)
        .unwrap();
    let (service, sdk) = fake_service(&backend, &stream).await;

    // Naming the source: a table without a stream, a missing table and a bad ARN are typed
    // errors at once; the table's latest stream is found.
    assert!(matches!(
        DynamoDbStreamsBackend::for_table(&sdk, "plain").await,
        Err(DynamoDbSourceError::NoStream(t)) if t == "plain"
    ));
    assert!(matches!(
        DynamoDbStreamsBackend::for_table(&sdk, "missing").await,
        Err(DynamoDbSourceError::TableNotFound(t)) if t == "missing"
    ));
    assert!(matches!(
        DynamoDbStreamsBackend::for_stream_arn(&sdk, "orders"),
        Err(DynamoDbSourceError::Arn(_))
    ));
    let (sdk_backend, arn) = DynamoDbStreamsBackend::for_table(&sdk, TABLE).await.unwrap();
    assert_eq!(arn.to_string(), stream);
    assert_eq!(arn.table, TABLE);

    let store = InMemoryLeaseStore::new();
    let replica = Replica::default();
    let mut writer = Writer::new(&backend, TABLE, KEYS);
    writer.write(120).unwrap();
    let rotated = backend.rotate_shards(&stream).unwrap();
    writer.write(120).unwrap();
    // Lineage through paged DescribeStream: six shards, three pages of two (DynamoDB shards
    // have no hash key range: the whole range each).
    let lineage = |shards: Vec<kcl_core::record::Shard>| -> Vec<_> {
        shards
            .into_iter()
            .map(|s| {
                (
                    s.shard_id,
                    s.parent_shard_id,
                    s.starting_sequence_number,
                    s.ending_sequence_number,
                )
            })
            .collect()
    };
    let listed = sdk_backend.list_shards(&stream).await.unwrap();
    assert!(listed
        .iter()
        .all(|s| s.hash_key_range == kcl_core::record::HashKeyRange::FULL));
    assert_eq!(lineage(listed), lineage(backend.shards(&stream).unwrap()));
    assert_eq!(service.faults.lock().unwrap().describe_pages, 3);
    let missing = sdk_backend
        .list_shards("arn:aws:dynamodb:local:000000000000:table/orders/stream/nope")
        .await
        .unwrap_err();
    assert!(missing.is_fatal(), "{missing}");
    // A stream that is gone names the table's latest stream (DescribeTable).
    match &missing {
        kcl_core::BackendError::StreamDisabled(d) => {
            assert_eq!(d.end, kcl_core::StreamEnd::Deleted);
            assert_eq!(d.latest_stream_arn.as_deref(), Some(stream.as_str()));
        }
        other => panic!("{other:?}"),
    }
    sdk_backend.check_stream_ended(&stream).await.unwrap();

    service.faults.lock().unwrap().trim_records = true;
    let a = worker("a", &stream, &sdk_backend, &store, &replica);
    let b = worker("b", &stream, &sdk_backend, &store, &replica);
    wait_until(LIMIT, "part of the changes are delivered", || {
        replica.unique_deliveries() >= 130
    })
    .await;
    b.kill().await;
    writer.write(120).unwrap();
    wait_until(LIMIT, "every change is delivered", || {
        replica.unique_deliveries() == writer.writes
    })
    .await;
    wait_until(LIMIT, "a holds the three children", || a.held_leases().len() == 3).await;
    a.shutdown().await.unwrap();

    check_replicated(&replica, &writer, &backend);
    {
        let faults = service.faults.lock().unwrap();
        assert_eq!((faults.records_trimmed, faults.iterators_trimmed), (1, 1));
        assert_eq!(sdk_backend.trimmed_count(), 1);
        for (parent, _) in &rotated {
            assert!(faults.served.contains(parent), "{parent} was read");
        }
    }

    // Disabled, then a new stream enabled: DescribeStream's DISABLED, with the newer stream
    // from DescribeTable.
    backend.disable_stream(TABLE).unwrap();
    match sdk_backend.check_stream_ended(&stream).await {
        Err(kcl_core::BackendError::StreamDisabled(d)) => {
            assert_eq!(
                (d.stream.as_str(), d.end),
                (stream.as_str(), kcl_core::StreamEnd::Disabled)
            );
            assert_eq!(d.latest_stream_arn, None, "no newer stream yet");
        }
        other => panic!("{other:?}"),
    }
    let newer = backend
        .enable_stream(TABLE, StreamViewType::NewAndOldImages, 1)
        .unwrap();
    match sdk_backend.check_stream_ended(&stream).await {
        Err(kcl_core::BackendError::StreamDisabled(d)) => {
            assert_eq!(d.latest_stream_arn.as_deref(), Some(newer.as_str()));
        }
        other => panic!("{other:?}"),
    }
    sdk_backend.check_stream_ended(&newer).await.unwrap();
}
