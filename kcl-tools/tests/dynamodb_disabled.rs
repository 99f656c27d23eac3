//! `kcl-tail --dynamodb-table` on a stream that is disabled while it runs: it prints every change
//! still in the stream (the closed shards read to their end), then exits with status 1 and one
//! line naming the stream's ARN, instead of retrying or idling. In the fast tier: the stream is
//! a local table's, served in the DynamoDB Streams protocol by kcl-tests' fake endpoint (moto
//! 5.2.5 cannot disable a stream: its `DescribeStream` fails once the table's stream is off, and
//! its shard never closes).

use std::process::Stdio;
use std::time::Duration;

use kcl_core::backend::local::KeySchema;
use kcl_core::dynamodb_streams::{AttributeValue, StreamViewType};
use kcl_core::LocalBackend;
use kcl_tests::ddb_streams_fake::fake_service;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_prints_a_disabled_streams_changes_then_exits_with_one_line_naming_it() {
    let backend = LocalBackend::new();
    let stream = backend
        .create_table(
            "orders",
            KeySchema::hash("pk"),
            StreamViewType::NewAndOldImages,
            2,
        )
        .unwrap();
    let put = |i: u64| {
        let item = [
            ("pk".to_owned(), AttributeValue::s(format!("order-{}", i % 7))),
            ("n".to_owned(), AttributeValue::n(i)),
        ];
        backend.put_item("orders", item.into()).unwrap();
    };
    for i in 0..30 {
        put(i);
    }
    let (_service, sdk) = fake_service(&backend, &stream).await;
    let endpoint = sdk.endpoint_url().expect("the fake's endpoint").to_owned();
    let mut tail = Command::new(TAIL)
        .args(["--dynamodb-table", "orders", "--endpoint-url", &endpoint])
        .args([
            "--region",
            "us-east-1",
            "--no-checkpoint",
            "--initial-position",
            "trim-horizon",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("KCL_LOG_FORMAT")
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kcl-tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    for _ in 0..30 {
        tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("a change within the limit")
            .expect("read stdout")
            .expect("kcl-tail printed it");
    }
    // Changes made just before the stream is disabled are still read (their shards close with
    // them unread); changes after it go to no stream.
    for i in 30..40 {
        put(i);
    }
    backend.disable_stream("orders").unwrap();
    for i in 40..45 {
        put(i);
    }
    let mut rest = Vec::new();
    while let Some(line) = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("kcl-tail ends its output")
        .expect("read stdout")
    {
        rest.push(line);
    }
    let status = tokio::time::timeout(LIMIT, tail.wait())
        .await
        .expect("kcl-tail exits by itself")
        .expect("wait");
    assert_eq!(rest.len(), 10, "the changes made before the disabling: {rest:?}");
    for line in &rest {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["stream_arn"], stream.as_str());
    }
    let mut stderr = String::new();
    tail.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    let message = stderr.trim_end();
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("error: "), "{message}");
    assert!(
        message.contains(&format!("the DynamoDB stream {stream} is disabled")),
        "{message}"
    );
    assert!(message.contains("no newer stream is enabled"), "{message}");
}
