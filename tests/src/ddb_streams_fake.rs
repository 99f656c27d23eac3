//! A fake DynamoDB Streams endpoint (and DynamoDB's `DescribeTable`) over a table of the bundled
//! local backend, in the services' JSON protocol on plain HTTP/1.1: so that the AWS SDK path of
//! `DynamoDbStreamsBackend` (and `kcl-tail --dynamodb-table` with `--endpoint-url`) is tested
//! without AWS and without an emulator, with faults the emulators do not have (trimmed reads, a
//! stream disabled while it is read).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use kcl_core::{LocalBackend, StreamBackend};

/// Faults the fake service injects, and what it saw.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer one `GetRecords`, on a shard that returned records before, with
    /// `TrimmedDataAccessException`.
    pub trim_records: bool,
    /// How many `GetRecords` were answered so.
    pub records_trimmed: usize,
    /// Armed by the above: answer the next `GetShardIterator` at a sequence number with
    /// `TrimmedDataAccessException`.
    pub trim_iterator: bool,
    /// How many `GetShardIterator` were answered so.
    pub iterators_trimmed: usize,
    /// Shards that returned records.
    pub served: BTreeSet<String>,
    /// `DescribeStream` pages served.
    pub describe_pages: usize,
}

/// DynamoDB Streams (and DynamoDB's `DescribeTable`) over the local backend's table, in the
/// services' awsJson 1.0 protocol on plain HTTP/1.1: enough for `DynamoDbStreamsBackend`, so that
/// the real SDK path (requests, paging, errors, the records' JSON) is exercised without AWS.
/// `DescribeStream` pages two shards at a time (`StreamStatus` `DISABLED` once the table's
/// stream is disabled, [`LocalBackend::disable_stream`]). `DescribeTable` knows the local
/// tables, and a table `plain` without a stream. Iterators are handed out as `SHARD|LOCAL`.
pub struct FakeService {
    backend: LocalBackend,
    stream: String,
    /// The faults to inject, and what was served.
    pub faults: Mutex<Faults>,
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
    /// Answers one call (`X-Amz-Target`, JSON body): the status and the JSON reply.
    pub async fn handle(&self, target: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        use kcl_core::IteratorPosition as P;
        use serde_json::json;
        let text = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
        match target {
            "DynamoDB_20120810.DescribeTable" => match text("TableName").as_str() {
                table if self.backend.table_stream_arn(table).is_ok() => (
                    200,
                    json!({"Table": {"TableName": table, "TableStatus": "ACTIVE",
                        "LatestStreamArn": self.backend.table_stream_arn(table).unwrap_or_default(),
                        "StreamSpecification": {
                            "StreamEnabled": self.backend.table_stream_enabled(table).unwrap_or(false),
                            "StreamViewType": "NEW_AND_OLD_IMAGES"}}}),
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
                // A disabled stream of the local table is DISABLED.
                let status = match self.backend.check_stream_ended(&arn).await {
                    Ok(()) => "ENABLED",
                    Err(_) => "DISABLED",
                };
                let mut description = serde_json::Map::new();
                description.insert("StreamArn".into(), arn.into());
                description.insert("StreamStatus".into(), status.into());
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
    pub async fn start(self: Arc<Self>) -> String {
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

/// A fake service over the local table's stream, serving on a loopback port, and SDK
/// configuration for it (static test credentials, the SDK's retries off as `load_sdk_config`
/// sets them). The configuration's endpoint URL is the service's.
pub async fn fake_service(backend: &LocalBackend, stream: &str) -> (Arc<FakeService>, aws_config::SdkConfig) {
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
