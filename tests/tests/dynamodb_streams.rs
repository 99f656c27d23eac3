//! DynamoDB Streams on the bundled local backend, end to end: a table's changes replicated into
//! a second in-memory table by a processor that parses `ChangeRecord`s, through the unchanged
//! scheduler, with a shard rotation in the middle (parents finished before children) and one of
//! two workers killed mid-run. Every change must arrive in order per key, none lost, and the
//! replica must equal the table at the end. The replica, its processor and the writer are
//! `kcl_examples::replicate`, the pieces of the `kcl-replicate` demo.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_core::dynamodb_streams::{AttributeValue, ChangeRecord, EventName, Item, StreamViewType};
use kcl_core::lease::LeaseStore;
use kcl_core::{InMemoryLeaseStore, LocalBackend, SchedulerHandle, StreamBackend};
use kcl_examples::replicate::{
    check_order, compare, key_schema, start_worker, table_items, version, Replica, WorkerTimings, Writer,
};
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

/// Faults the fake service injects, and what it saw.
#[derive(Default)]
struct Faults {
    /// Answer one `GetRecords`, on a shard that returned records before, with
    /// `TrimmedDataAccessException`.
    trim_records: bool,
    records_trimmed: usize,
    /// Armed by the above: answer the next `GetShardIterator` at a sequence number with
    /// `TrimmedDataAccessException`.
    trim_iterator: bool,
    iterators_trimmed: usize,
    /// Shards that returned records.
    served: BTreeSet<String>,
    describe_pages: usize,
}

/// DynamoDB Streams (and DynamoDB's `DescribeTable`) over the local backend's table, in the
/// services' awsJson 1.0 protocol on plain HTTP/1.1: enough for `DynamoDbStreamsBackend`, so that
/// the real SDK path (requests, paging, errors, the records' JSON) is exercised without AWS.
/// `DescribeStream` pages two shards at a time. Iterators are handed out as `SHARD|LOCAL`.
struct FakeService {
    backend: LocalBackend,
    stream: String,
    faults: Mutex<Faults>,
}

fn service_error(code: &str, message: &str) -> (u16, serde_json::Value) {
    (
        400,
        serde_json::json!({"__type": format!("com.amazonaws.dynamodb.v20120810#{code}"), "message": message}),
    )
}

fn backend_error(e: kcl_core::BackendError) -> (u16, serde_json::Value) {
    use kcl_core::BackendError as E;
    let code = match &e {
        E::ExpiredIterator => "ExpiredIteratorException",
        E::StreamNotFound(_) | E::ShardNotFound(_) => "ResourceNotFoundException",
        E::Throttled(_) => "LimitExceededException",
        E::InvalidArgument(_) => "ValidationException",
        _ => "InternalServerError",
    };
    service_error(code, &e.to_string())
}

impl FakeService {
    async fn handle(&self, target: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        use kcl_core::IteratorPosition as P;
        use serde_json::json;
        let text = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
        match target {
            "DynamoDB_20120810.DescribeTable" => match text("TableName").as_str() {
                TABLE => (
                    200,
                    json!({"Table": {"TableName": TABLE, "TableStatus": "ACTIVE",
                        "LatestStreamArn": self.stream,
                        "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"}}}),
                ),
                "plain" => (
                    200,
                    json!({"Table": {"TableName": "plain", "TableStatus": "ACTIVE"}}),
                ),
                other => service_error(
                    "ResourceNotFoundException",
                    &format!("Requested resource not found: Table: {other} not found"),
                ),
            },
            "DynamoDBStreams_20120810.DescribeStream" => {
                let arn = text("StreamArn");
                let shards = match self.backend.shards(&arn) {
                    Ok(shards) => shards,
                    Err(e) => return backend_error(e),
                };
                let after = body["ExclusiveStartShardId"].as_str();
                let rest: Vec<_> = shards
                    .iter()
                    .filter(|s| after.is_none_or(|a| s.shard_id.as_str() > a))
                    .collect();
                let page: Vec<serde_json::Value> = rest
                    .iter()
                    .take(2)
                    .map(|s| {
                        let mut range = serde_json::Map::new();
                        range.insert(
                            "StartingSequenceNumber".into(),
                            s.starting_sequence_number.as_str().into(),
                        );
                        if let Some(end) = &s.ending_sequence_number {
                            range.insert("EndingSequenceNumber".into(), end.as_str().into());
                        }
                        let mut shard = serde_json::Map::new();
                        shard.insert("ShardId".into(), s.shard_id.clone().into());
                        if let Some(parent) = &s.parent_shard_id {
                            shard.insert("ParentShardId".into(), parent.clone().into());
                        }
                        shard.insert("SequenceNumberRange".into(), range.into());
                        shard.into()
                    })
                    .collect();
                let mut description = serde_json::Map::new();
                description.insert("StreamArn".into(), arn.into());
                description.insert("StreamStatus".into(), "ENABLED".into());
                description.insert("StreamViewType".into(), "NEW_AND_OLD_IMAGES".into());
                description.insert("Shards".into(), page.into());
                if rest.len() > 2 {
                    description.insert("LastEvaluatedShardId".into(), rest[1].shard_id.clone().into());
                }
                self.faults.lock().unwrap().describe_pages += 1;
                (200, json!({ "StreamDescription": description }))
            }
            "DynamoDBStreams_20120810.GetShardIterator" => {
                let shard = text("ShardId");
                let sequence = body["SequenceNumber"].as_str().map(|s| {
                    assert!(s.len() >= 21, "sequence number {s} shorter than 21 digits");
                    kcl_core::record::SequenceNumber::new(s).unwrap()
                });
                let position = match (text("ShardIteratorType").as_str(), sequence) {
                    ("TRIM_HORIZON", None) => P::TrimHorizon,
                    ("LATEST", None) => P::Latest,
                    ("AT_SEQUENCE_NUMBER", Some(s)) => P::AtSequenceNumber(s),
                    ("AFTER_SEQUENCE_NUMBER", Some(s)) => P::AfterSequenceNumber(s),
                    (kind, _) => {
                        return service_error("ValidationException", &format!("bad iterator type {kind}"))
                    }
                };
                {
                    let mut faults = self.faults.lock().unwrap();
                    if faults.trim_iterator
                        && matches!(position, P::AfterSequenceNumber(_) | P::AtSequenceNumber(_))
                    {
                        faults.trim_iterator = false;
                        faults.iterators_trimmed += 1;
                        return service_error(
                            "TrimmedDataAccessException",
                            "the sequence number was trimmed",
                        );
                    }
                }
                match self
                    .backend
                    .get_shard_iterator(&text("StreamArn"), &shard, &position)
                    .await
                {
                    Ok(it) => (200, json!({ "ShardIterator": format!("{shard}|{it}") })),
                    Err(e) => backend_error(e),
                }
            }
            "DynamoDBStreams_20120810.GetRecords" => {
                let wrapped = text("ShardIterator");
                let Some((shard, iterator)) = wrapped.split_once('|') else {
                    return service_error("ValidationException", "malformed shard iterator");
                };
                let limit = body["Limit"].as_u64().unwrap_or(1000);
                if !(1..=1000).contains(&limit) {
                    return service_error("ValidationException", "Limit must be in 1..=1000");
                }
                {
                    let mut faults = self.faults.lock().unwrap();
                    if faults.trim_records && faults.served.contains(shard) {
                        faults.trim_records = false;
                        faults.records_trimmed += 1;
                        faults.trim_iterator = true;
                        return service_error(
                            "TrimmedDataAccessException",
                            "the iterator's records were trimmed",
                        );
                    }
                }
                match self
                    .backend
                    .get_records(&self.stream, iterator, limit as usize)
                    .await
                {
                    Ok(out) => {
                        if !out.records.is_empty() {
                            self.faults.lock().unwrap().served.insert(shard.to_owned());
                        }
                        let records: Vec<serde_json::Value> = out
                            .records
                            .iter()
                            .map(|r| serde_json::from_slice(&r.data).unwrap())
                            .collect();
                        let mut reply = serde_json::Map::new();
                        reply.insert("Records".into(), records.into());
                        if let Some(next) = out.next_iterator {
                            reply.insert("NextShardIterator".into(), format!("{shard}|{next}").into());
                        }
                        (200, reply.into())
                    }
                    Err(e) => backend_error(e),
                }
            }
            other => service_error("UnknownOperationException", other),
        }
    }

    /// Serves one connection: HTTP/1.1 requests with a `Content-Length` body, kept alive.
    async fn connection(self: Arc<Self>, socket: tokio::net::TcpStream) -> std::io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let mut reader = BufReader::new(socket);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let (mut target, mut length) = (String::new(), 0usize);
            loop {
                line.clear();
                reader.read_line(&mut line).await?;
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "x-amz-target" => value.trim().clone_into(&mut target),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await?;
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let (status, reply) = self.handle(&target, json).await;
            let reply = reply.to_string();
            let head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n",
                if status == 200 { "OK" } else { "Bad Request" },
                reply.len()
            );
            let socket = reader.get_mut();
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(reply.as_bytes()).await?;
        }
    }

    /// Starts serving on a loopback port; returns the endpoint URL.
    async fn start(self: Arc<Self>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(self.clone().connection(socket));
            }
        });
        url
    }
}

/// A fake service over the local table's stream, and SDK configuration for it (static test
/// credentials, the SDK's retries off as `load_sdk_config` sets them).
async fn fake_service(backend: &LocalBackend, stream: &str) -> (Arc<FakeService>, aws_config::SdkConfig) {
    let service = Arc::new(FakeService {
        backend: backend.clone(),
        stream: stream.to_owned(),
        faults: Mutex::default(),
    });
    let endpoint = service.clone().start().await;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    (service, sdk)
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
    let faults = service.faults.lock().unwrap();
    assert_eq!((faults.records_trimmed, faults.iterators_trimmed), (1, 1));
    assert_eq!(sdk_backend.trimmed_count(), 1);
    for (parent, _) in &rotated {
        assert!(faults.served.contains(parent), "{parent} was read");
    }
}
