//! Helpers for the tests against the emulators through the real SDK path: clients, streams,
//! producing records, and workers with the Kinesis backend and the DynamoDB lease store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use kcl_core::aws::{load_sdk_config, AwsOptions};
use kcl_core::KinesisBackend;
use kcl_lease::DynamoDbLeaseStore;

use crate::emulators::{ensure_started, Endpoints};

/// SDK configuration for the emulators (endpoints and dummy credentials come from the
/// environment that [`ensure_started`] set).
pub async fn sdk() -> (aws_config::SdkConfig, &'static Endpoints) {
    let endpoints = ensure_started();
    let options = AwsOptions {
        region: Some(endpoints.region.clone()),
        ..AwsOptions::default()
    };
    (load_sdk_config(&options).await, endpoints)
}

/// A name no other test (or earlier run against the same emulators) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        nanos % 0xffff_ffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Waits until the stream is ACTIVE.
pub async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .ok()
            .and_then(|o| o.stream_description_summary().map(|s| s.stream_status().clone()));
        if status == Some(StreamStatus::Active) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {stream} did not become ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a stream and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, stream: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
    wait_active(client, stream).await;
}

/// Puts one record; returns (shard id, sequence number).
pub async fn put(client: &aws_sdk_kinesis::Client, stream: &str, key: &str, data: &str) -> (String, String) {
    let out = client
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(Blob::new(data.as_bytes()))
        .send()
        .await
        .expect("PutRecord");
    (out.shard_id().to_owned(), out.sequence_number().to_owned())
}

/// The Kinesis backend and a DynamoDB lease store (table created) for an application.
pub async fn backends(
    sdk: &aws_config::SdkConfig,
    application: &str,
) -> (KinesisBackend, DynamoDbLeaseStore) {
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(sdk), application);
    store.ensure_table().await.expect("lease table");
    (KinesisBackend::from_conf(sdk), store)
}

/// Puts `per_key` records for each of `keys` keys `key-<k>` with payload `key:index`, counting in
/// `produced`; returns (shard, sequence number, key, index) of each record.
pub async fn produce_aws(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    keys: usize,
    per_key: u64,
    produced: &mut BTreeMap<String, u64>,
) -> Vec<(String, String, String, u64)> {
    let mut out = Vec::new();
    for _ in 0..per_key {
        for k in 0..keys {
            let key = format!("key-{k}");
            let n = produced.entry(key.clone()).or_default();
            let (shard, seq) = put(client, stream, &key, &format!("{key}:{n}")).await;
            out.push((shard, seq, key.clone(), *n));
            *n += 1;
        }
    }
    out
}

/// What the edge proxy saw (`GET /_kcl/requests` of `localstack/edge-proxy.cjs`): one JSON
/// object per request (`service`, `action`, `accessKeyId`, for Kinesis `streamName` and
/// `streamArn`, for STS `roleArn`, `sessionName`, `externalId`), oldest first.
pub async fn edge_requests(edge_url: &str) -> Vec<serde_json::Value> {
    let addr = edge_url.trim_start_matches("http://").trim_end_matches('/');
    let (status, body) = crate::process::http_get(addr, "/_kcl/requests").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    serde_json::from_str(&body).expect("a JSON array")
}

/// The ARN of `stream` (`DescribeStreamSummary`).
pub async fn stream_arn(client: &aws_sdk_kinesis::Client, stream: &str) -> String {
    client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .expect("DescribeStreamSummary")
        .stream_description_summary
        .expect("summary")
        .stream_arn
}

/// The edge's Kinesis requests about `stream` (by name or by an ARN ending in `/stream`).
pub fn kinesis_requests_on<'a>(
    requests: &'a [serde_json::Value],
    stream: &str,
) -> Vec<&'a serde_json::Value> {
    let suffix = format!("/{stream}");
    requests
        .iter()
        .filter(|r| r["service"] == "kinesis")
        .filter(|r| {
            r["streamName"].as_str() == Some(stream)
                || r["streamArn"].as_str().is_some_and(|a| a.ends_with(&suffix))
        })
        .collect()
}
