//! Enhanced fan-out through the AWS SDK: against kinesis-local (which serves `SubscribeToShard`
//! on its plain HTTP port), and against a small server in this test for what the emulator does
//! not do: the service's initial-response event, a subscription replaced by another one (an
//! exception event mid-stream), the end of a closed shard with its children, and throttling.
//! And a multi-stream application on the emulators, whose lease rows have the Java KCL's
//! multi-stream shape.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use kcl_core::backend::IteratorPosition;
use kcl_core::{BackendError, ConsumerStatus, FanOutConfig, KinesisBackend, RetrievalMode, StreamBackend};
use kcl_lease::LeaseStore;
use kcl_tests::aws::{backends, create_stream, produce_aws, put, sdk, unique};
use kcl_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(90);

/// One fan-out worker of `app` on the emulators, with the tests' fast settings.
fn fan_out_worker(
    app: &str,
    stream: &str,
    backend: &KinesisBackend,
    store: &kcl_lease::DynamoDbLeaseStore,
    log: &Log,
    config: FanOutConfig,
) -> kcl_core::SchedulerHandle {
    fast_for(
        app,
        stream,
        "a",
        backend.clone(),
        store.clone(),
        log,
        Duration::from_secs(3),
    )
    .retrieval(RetrievalMode::FanOut(config))
    .build()
    .expect("config")
    .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_worker_reads_kinesis_local_through_the_sdk() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("fanout"), unique("fanout-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 2).await;
    let (backend, store) = backends(&sdk, &app).await;
    let mut produced: BTreeMap<String, u64> = BTreeMap::new();
    produce_aws(&kinesis, &stream, 6, 5, &mut produced).await;
    let log = Log::default();
    let worker = fan_out_worker(&app, &stream, &backend, &store, &log, FanOutConfig::default());
    wait_until(LIMIT, "first wave pushed", || log.wait_count() == 30).await;
    produce_aws(&kinesis, &stream, 6, 5, &mut produced).await;
    wait_until(LIMIT, "second wave pushed", || log.wait_count() == 60).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);

    // The consumer is registered under the application name; registering again is idempotent.
    let consumer = backend.describe_consumer(&stream, &app).await.expect("consumer");
    assert_eq!(consumer.status, ConsumerStatus::Active);
    assert_eq!(
        backend
            .register_consumer(&stream, &app, &Default::default())
            .await
            .expect("again"),
        consumer
    );
    // The emulator allows one subscription per consumer and shard: the worker holds them all.
    let shard = store.list().await.unwrap()[0].lease_key.clone();
    let second = backend
        .subscribe_to_shard(&stream, &consumer.arn, &shard, &IteratorPosition::Latest)
        .await;
    let refused = match second {
        Err(e) => Some(e),
        Ok(mut s) => s.next_event().await.err(),
    };
    assert!(
        matches!(refused, Some(BackendError::ResourceInUse(_))),
        "a second subscription is refused: {refused:?}"
    );
    worker.shutdown().await.unwrap();
    let checkpoints: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.checkpoint)
        .collect();
    assert!(
        checkpoints.iter().all(|c| c.sequence().is_some()),
        "{checkpoints:?}"
    );
}

/// One event-stream message.
fn message(kind: &str, type_header: (&str, &str), payload: serde_json::Value) -> Vec<u8> {
    let msg = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(kind.to_owned().into()),
        ))
        .add_header(Header::new(
            type_header.0.to_owned(),
            HeaderValue::String(type_header.1.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&msg, &mut out).expect("encode");
    out
}

fn event(payload: serde_json::Value) -> Vec<u8> {
    message("event", (":event-type", "SubscribeToShardEvent"), payload)
}

fn initial_response() -> Vec<u8> {
    message(
        "event",
        (":event-type", "initial-response"),
        serde_json::json!({}),
    )
}

fn record(seq: &str, data: &str) -> serde_json::Value {
    use base64_engine::encode;
    serde_json::json!({
        "SequenceNumber": seq,
        "ApproximateArrivalTimestamp": 1.7e9,
        "Data": encode(data.as_bytes()),
        "PartitionKey": "k",
    })
}

/// Standard base64, enough for test payloads.
mod base64_engine {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// What the fake service answers to each request, in order.
enum Reply {
    /// 200 with these event-stream messages, then the end of the stream.
    Events(Vec<Vec<u8>>),
    /// An error status with a JSON error body.
    Error(u16, &'static str),
}

/// Serves `replies` (one per connection, HTTP/1.1) and returns the endpoint URL.
async fn fake_kinesis(replies: Vec<Reply>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        for reply in replies {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            // Read the request head and its body (the SDK sends Content-Length).
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head_end, length) = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (end + 4, length);
                }
            };
            while buf.len() < head_end + length {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            match reply {
                Reply::Events(messages) => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n\
                                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                    let _ = conn.write_all(head.as_bytes()).await;
                    for m in messages {
                        let _ = conn.write_all(format!("{:x}\r\n", m.len()).as_bytes()).await;
                        let _ = conn.write_all(&m).await;
                        let _ = conn.write_all(b"\r\n").await;
                        let _ = conn.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = conn.write_all(b"0\r\n\r\n").await;
                }
                Reply::Error(status, body) => {
                    let head = format!(
                        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                }
            }
            let _ = conn.shutdown().await;
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_path_handles_what_the_emulator_does_not_send() {
    init_tracing();
    let seq = |n: u32| format!("4960{n:052}");
    let replies = vec![
        // 1: the initial response, two records, then the subscription is taken over.
        Reply::Events(vec![
            initial_response(),
            event(serde_json::json!({
                "Records": [record(&seq(1), "one"), record(&seq(2), "two")],
                "ContinuationSequenceNumber": seq(2),
                "MillisBehindLatest": 7,
            })),
            message(
                "exception",
                (":exception-type", "ResourceInUseException"),
                serde_json::json!({"message": "Another subscription replaced this one"}),
            ),
        ]),
        // 2: the end of a closed shard: no continuation, the children instead.
        Reply::Events(vec![
            initial_response(),
            event(serde_json::json!({
                "Records": [record(&seq(3), "three")],
                "ContinuationSequenceNumber": seq(3),
                "MillisBehindLatest": 0,
            })),
            event(serde_json::json!({
                "Records": [],
                "MillisBehindLatest": 0,
                "ChildShards": [{
                    "ShardId": "shardId-000000000002",
                    "ParentShards": ["shardId-000000000000"],
                    "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "170141183460469231731687303715884105727"},
                }],
            })),
        ]),
        // 3: more than one subscription call per second.
        Reply::Error(
            400,
            r#"{"__type":"LimitExceededException","message":"Rate exceeded for consumer"}"#,
        ),
        // 4: a consumer that does not exist (any more).
        Reply::Error(
            400,
            r#"{"__type":"ResourceNotFoundException","message":"Consumer not found"}"#,
        ),
    ];
    let url = fake_kinesis(replies).await;
    let (sdk, _) = sdk().await;
    let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
        .endpoint_url(url)
        .build();
    let backend = KinesisBackend::new(aws_sdk_kinesis::Client::from_conf(conf));
    let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/app:1";
    let shard = "shardId-000000000000";

    let mut sub = backend
        .subscribe_to_shard("s", arn, shard, &IteratorPosition::TrimHorizon)
        .await
        .expect("subscribed past the initial response");
    let first = sub.next_event().await.expect("event").expect("not ended");
    let data: Vec<_> = first.records.iter().map(|r| r.data.clone()).collect();
    assert_eq!(data, [&b"one"[..], &b"two"[..]]);
    assert_eq!(
        first.continuation_sequence_number.as_ref().map(|s| s.as_str()),
        Some(seq(2).as_str())
    );
    assert_eq!(first.millis_behind_latest, 7);
    let replaced = sub.next_event().await;
    assert!(
        matches!(replaced, Err(BackendError::ResourceInUse(_))),
        "{replaced:?}"
    );

    let position = IteratorPosition::AfterSequenceNumber(kcl_core::SequenceNumber::new(&seq(2)).unwrap());
    let mut sub = backend
        .subscribe_to_shard("s", arn, shard, &position)
        .await
        .expect("subscribed");
    let next = sub.next_event().await.expect("event").expect("not ended");
    assert_eq!(next.records.len(), 1);
    let end = sub.next_event().await.expect("event").expect("the end event");
    assert_eq!(end.continuation_sequence_number, None, "the end of the shard");
    assert_eq!(end.child_shards.len(), 1);
    assert_eq!(end.child_shards[0].shard_id, "shardId-000000000002");
    assert!(sub.next_event().await.expect("clean end").is_none());

    let throttled = backend.subscribe_to_shard("s", arn, shard, &position).await.err();
    assert!(
        matches!(throttled, Some(BackendError::Throttled(_))),
        "{throttled:?}"
    );
    assert_eq!(backend.throttle_count(), 1);
    let gone = backend.subscribe_to_shard("s", arn, shard, &position).await.err();
    assert!(
        matches!(gone, Some(BackendError::ConsumerNotFound(_))),
        "{gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_rows_in_dynamodb_have_the_java_shape() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (one, two, app) = (unique("multi-a"), unique("multi-b"), unique("multi-app"));
    create_stream(&kinesis, &one, 1).await;
    create_stream(&kinesis, &two, 2).await;
    let (backend, store) = backends(&sdk, &app).await;
    let mut produced: BTreeMap<String, u64> = BTreeMap::new();
    for (stream, prefix) in [(&one, "a"), (&two, "b")] {
        for n in 0..4u64 {
            for k in 0..3 {
                let key = format!("{prefix}-{k}");
                put(&kinesis, stream, &key, &format!("{key}:{n}")).await;
                *produced.entry(key).or_default() += 1;
            }
        }
    }
    let log = Log::default();
    let streams = vec![
        kcl_core::StreamConfig::named(one.clone()),
        kcl_core::StreamConfig::named(two.clone()),
    ];
    let worker = fast_for(
        &app,
        "",
        "a",
        backend.clone(),
        store.clone(),
        &log,
        Duration::from_secs(3),
    )
    .stream_tracker(streams)
    .build()
    .expect("config")
    .spawn();
    wait_until(LIMIT, "both streams processed", || log.wait_count() == 24).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    worker.shutdown().await.unwrap();

    // The rows, read raw: Java's multi-stream key and attributes, with the emulator's account
    // and the stream's creation time.
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let rows = dynamodb
        .scan()
        .table_name(&app)
        .consistent_read(true)
        .send()
        .await
        .expect("scan")
        .items
        .unwrap_or_default();
    assert_eq!(rows.len(), 3);
    let created = kinesis
        .describe_stream_summary()
        .stream_name(&two)
        .send()
        .await
        .expect("describe")
        .stream_description_summary()
        .expect("summary")
        .stream_creation_timestamp()
        .secs();
    for row in rows {
        let text = |name: &str| {
            row.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        let key = text("leaseKey");
        let (stream, shard) = kcl_core::StreamIdentifier::split_lease_key(&key).expect("multi-stream key");
        assert_eq!(text("streamName"), stream.to_string());
        assert_eq!(text("shardId"), shard);
        assert!(stream.account_id.len() == 12, "{key}");
        if stream.stream_name == two {
            assert_eq!(stream.creation_epoch, created as u64, "{key}");
        }
        assert!(
            text("checkpoint").chars().all(|c| c.is_ascii_digit()),
            "checkpointed: {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_finds_the_end_of_a_split_shard_that_kinesis_local_never_announces() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("fanout-split"), unique("fanout-split-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 1).await;
    let (backend, store) = backends(&sdk, &app).await;
    let mut produced: BTreeMap<String, u64> = BTreeMap::new();
    produce_aws(&kinesis, &stream, 6, 1, &mut produced).await;
    let log = Log::default();
    let config = FanOutConfig::default().end_probe_interval(Duration::from_secs(1));
    let worker = fan_out_worker(&app, &stream, &backend, &store, &log, config);
    wait_until(LIMIT, "first wave", || log.wait_count() == 6).await;
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("SplitShard");
    kcl_tests::aws::wait_active(&kinesis, &stream).await;
    produce_aws(&kinesis, &stream, 6, 1, &mut produced).await;
    wait_until(LIMIT, "the children's records, after the parent's end", || {
        log.wait_count() == 12
    })
    .await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    let seen = log.seen();
    let last_parent = seen.iter().rposition(|s| s.shard == "shardId-000000000000");
    let first_child = seen.iter().position(|s| s.shard != "shardId-000000000000");
    assert!(last_parent < first_child, "parent before children");
    worker.shutdown().await.unwrap();
}
