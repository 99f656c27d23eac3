//! `kcl-tail`: a ready consumer. It reads a Kinesis stream as a KCL application (leases in a
//! DynamoDB table named after the application, checkpoints, fail-over, balancing across every
//! `kcl-tail` with the same application name) and writes one JSON line per record to stdout:
//!
//! ```text
//! {"stream":"orders","shard_id":"shardId-000000000000","sequence_number":"4959...","sub_sequence_number":0,
//!  "partition_key":"k","data":"aGVsbG8=","approximate_arrival_timestamp":"2026-11-25T06:40:00.123Z"}
//! ```
//!
//! `--stream` may be given several times: the application then consumes every stream with one
//! lease table, in multi-stream mode (lease keys `account:stream:creationEpoch:shardId`, as the
//! Java KCL's). `--fan-out` reads with enhanced fan-out (a consumer named after the application,
//! or `--consumer-name`, is registered on each stream) instead of polling.
//!
//! `--dynamodb-table TABLE` (the table's latest stream) or `--dynamodb-stream-arn ARN` reads a
//! DynamoDB table's change stream instead, with the same leases, checkpoints, `-n`,
//! `--no-checkpoint` and fail-over, one JSON line per change (keys and images in DynamoDB JSON,
//! absent images left out, `user_identity` for deletions by Time to Live):
//!
//! ```text
//! {"event_name":"MODIFY","keys":{"pk":{"S":"a"}},"new_image":{"pk":{"S":"a"},"n":{"N":"2"}},
//!  "old_image":{"pk":{"S":"a"},"n":{"N":"1"}},"sequence_number":"4900...17",
//!  "approximate_creation_time":"2026-12-06T13:44:14Z","shard_id":"shardId-...","stream_arn":"arn:aws:dynamodb:..."}
//! ```
//!
//! A DynamoDB stream disabled while kcl-tail reads it is read to its end (every change made
//! before the disabling is printed); then kcl-tail exits with status 1 and one line naming the
//! stream's ARN and the table's newer stream, if any (`FatalError::StreamDisabled`).
//!
//! Each batch is written and flushed before it is checkpointed, so a restart continues after
//! the last line written (at-least-once). SIGTERM or SIGINT shut it down gracefully: the leases
//! are checkpointed and released for the other workers.
//!
//! `--local` runs on the bundled in-process backend instead of AWS: the lines of stdin are put
//! into a local stream (partition key: the line number), printed as they are consumed, and the
//! program ends when stdin is closed and every line was printed.
//!
//! As users of kcat expect:
//!
//! - `-n N` / `--max-records N` stops after N records: exactly N lines (a batch with more is
//!   printed only as far as needed), then a graceful shutdown that checkpoints only what was
//!   printed (each shard at its last printed record), so a restart continues with record N+1;
//!   the exit status is 0. With `--local` too.
//! - `--raw` prints only each record's data, the bytes as they are, then `\n` (no JSON).
//! - `--from-timestamp T` (RFC 3339) is `--initial-position at-timestamp:T` (not both).
//! - `--no-checkpoint` reads without a lease table: one worker holds every shard of the streams
//!   in memory (an in-process lease store, the real Kinesis backend), reads each from the
//!   initial position, the children of a resharded shard after their parents, and never creates
//!   or writes a DynamoDB table nor checkpoints. Several `--no-checkpoint` tails therefore each
//!   read everything (no sharing), and a restart starts again from the initial position.
//! - `--profile NAME` takes credentials and region from that AWS profile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use clap::{CommandFactory, Parser};
use kcl_core::aws::{assume_role, load_sdk_config, AssumeRole, AwsOptions};
use kcl_core::dynamodb_streams::{item_to_dynamodb_json, ChangeRecord, DynamoDbStreamArn, UserIdentity};
use kcl_core::stream_arn::StreamArn;
use kcl_core::{
    DynamoDbStreamsBackend, FanOutConfig, InMemoryLeaseStore, InitialPosition, InitializeInput,
    KinesisBackend, LocalBackend, ProcessRecordsInput, ProcessorError, Record, RecordProcessor,
    RetrievalMode, RoutingBackend, Scheduler, SchedulerBuilder, ShardEndedInput, ShutdownRequestedInput,
    StreamConfig,
};
use kcl_lease::{DynamoDbLeaseStore, LeaseRenewal};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, Notify};
use tracing::{error, info};

/// Consume a Kinesis stream (or a DynamoDB table's change stream) as a KCL application and print
/// every record as a JSON line.
#[derive(Parser, Debug)]
#[command(name = "kcl-tail", version)]
struct Args {
    /// The stream to read. Repeat it to read several streams as one multi-stream application.
    #[arg(long = "stream", required_unless_present_any = ["stream_arns", "dynamodb_table", "dynamodb_stream_arn"])]
    streams: Vec<String>,
    /// A stream to read, named by its ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME): every
    /// Kinesis call on it carries the ARN, and its multi-stream lease key the ARN's account.
    /// Repeatable, and may be mixed with --stream. The region defaults to the ARN's.
    #[arg(long = "stream-arn", value_parser = parse_stream_arn)]
    stream_arns: Vec<StreamArn>,
    /// Read the change stream of this DynamoDB table (its latest stream, DescribeTable's
    /// LatestStreamArn) instead of a Kinesis stream: one JSON line per change (event_name, keys,
    /// new_image, old_image in DynamoDB JSON, sequence_number, approximate_creation_time,
    /// shard_id, stream_arn). A table without a stream is an error. Not with --stream.
    #[arg(long, value_name = "TABLE")]
    dynamodb_table: Option<String>,
    /// Read this DynamoDB stream, named by its ARN
    /// (arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL), as --dynamodb-table does.
    /// The region defaults to the ARN's.
    #[arg(long, value_name = "ARN", value_parser = parse_dynamodb_stream_arn)]
    dynamodb_stream_arn: Option<DynamoDbStreamArn>,
    /// Read the streams with the credentials of this IAM role (assumed through STS), e.g. a
    /// role of the account that owns a --stream-arn stream. The lease table stays in the
    /// account of the default credentials.
    #[arg(long)]
    role_arn: Option<String>,
    /// Read one stream with the credentials of its own IAM role: STREAM=ROLE_ARN, where STREAM
    /// is a --stream name or a --stream-arn ARN. Repeatable (one role per stream, e.g. streams
    /// of several accounts in one application); the other streams use --role-arn or the
    /// default credentials.
    #[arg(long = "stream-role", value_parser = parse_stream_role)]
    stream_roles: Vec<(String, String)>,
    /// The external id the roles' trust policies ask for (with --role-arn or --stream-role).
    #[arg(long)]
    external_id: Option<String>,
    /// The application name: the lease table's name. Workers with the same name share the
    /// streams' shards. Default: `kcl-tail-<stream>` (the stream names joined by `-`), or
    /// `kcl-tail-<table>` for a DynamoDB table's stream.
    #[arg(long)]
    application_name: Option<String>,
    /// Read with enhanced fan-out (SubscribeToShard, a registered consumer per stream) instead
    /// of polling GetRecords.
    #[arg(long)]
    fan_out: bool,
    /// The fan-out consumer's name (with --fan-out). Default: the application name.
    #[arg(long, requires = "fan_out")]
    consumer_name: Option<String>,
    /// A resource tag KEY=VALUE set on the fan-out consumer when kcl-tail registers it
    /// (repeatable; with --fan-out; the credentials then need kinesis:TagResource too).
    #[arg(long = "consumer-tag", value_name = "KEY=VALUE", value_parser = parse_tag, requires = "fan_out")]
    consumer_tags: Vec<(String, String)>,
    /// AWS region (default: the SDK's chain: AWS_REGION, profile, IMDS).
    #[arg(long)]
    region: Option<String>,
    /// Endpoint URL for both Kinesis and DynamoDB (LocalStack, emulators). The
    /// AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_KINESIS and AWS_ENDPOINT_URL_DYNAMODB variables also work.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Where a new application starts: trim-horizon, latest, or at-timestamp:<RFC3339>.
    #[arg(long, default_value = "latest", value_parser = parse_position)]
    initial_position: InitialPosition,
    /// Start at this time (RFC 3339, e.g. 2026-11-25T06:40:00Z): the same as
    /// `--initial-position at-timestamp:<T>`.
    #[arg(long, value_name = "T", value_parser = parse_timestamp, conflicts_with = "initial_position")]
    from_timestamp: Option<InitialPosition>,
    /// Stop after printing N records (exactly N lines, even if a batch has more), checkpointing
    /// only what was printed: a restart continues with record N+1. Exits 0.
    #[arg(short = 'n', long = "max-records", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_records: Option<u64>,
    /// Print only each record's data, as it is, followed by a newline (no JSON).
    #[arg(long)]
    raw: bool,
    /// Read-only, with no lease table: read every shard of the streams (and the children of
    /// resharded shards after their parents) from the initial position, never creating or
    /// writing a DynamoDB table, never checkpointing. Each such kcl-tail reads everything.
    #[arg(long)]
    no_checkpoint: bool,
    /// The AWS profile (of ~/.aws/config and ~/.aws/credentials) for credentials and region.
    #[arg(long)]
    profile: Option<String>,
    /// This worker's id (default: host name, pid and start time).
    #[arg(long)]
    worker_id: Option<String>,
    /// Lease failover time in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    failover_ms: u64,
    /// How leases are kept alive: per-lease (every lease renewed, as the Java KCL does; needed
    /// when Java workers share the lease table) or worker (one heartbeat row per worker; far
    /// fewer writes; never with Java workers on the same table).
    #[arg(long, default_value = "per-lease", value_parser = parse_renewal)]
    lease_renewal: LeaseRenewal,
    /// Use the bundled in-process backend: stdin lines become records of a local stream.
    #[arg(long)]
    local: bool,
    /// Shards of the local stream (with --local).
    #[arg(long, default_value_t = 4)]
    local_shards: usize,
    /// The largest record of the local stream, in KiB (with --local): 1024 (1 MiB, Kinesis'
    /// default) to 10240 (10 MiB, its most, `UpdateMaxRecordSize`). A longer stdin line is
    /// refused with an error naming it.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1024..=10240))]
    local_max_record_kib: u32,
    /// Serve Prometheus metrics (RecordsProcessed, MillisBehindLatest, lease counts, ...) on
    /// this address, e.g. 127.0.0.1:9464, at `/metrics` (with `--metrics prometheus`).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Where the metrics go: prometheus (served on --metrics-addr, when given), cloudwatch (the
    /// Java KCL's metric names and dimensions; namespace = the application name; the SDK's
    /// region and credentials; AWS_ENDPOINT_URL_CLOUDWATCH for an emulator), otlp (OTLP/HTTP to
    /// an OpenTelemetry collector under the Java KCL 3.5's OpenTelemetry names,
    /// aws.kinesis.client.*; service.name = the application name; see --otlp-endpoint), or none.
    #[arg(long, value_enum, default_value = "prometheus")]
    metrics: kcl_tools::metrics::MetricsSink,
    /// CloudWatch and OTLP: NONE, SUMMARY or DETAILED (the Java KCL's metricsLevel).
    #[arg(long, default_value = "DETAILED", value_parser = kcl_tools::metrics::parse_level)]
    metrics_level: kcl_core::metrics::cloudwatch::MetricsLevel,
    /// CloudWatch and OTLP: the dimensions published besides Operation, comma-separated (the
    /// Java KCL's metricsEnabledDimensions: ShardId, WorkerIdentifier, StreamId; for OTLP the
    /// attributes aws.kinesis.shard.id, aws.kinesis.consumer.name, aws.kinesis.stream_name).
    /// Default: ShardId.
    #[arg(long, value_delimiter = ',')]
    metrics_dimensions: Option<Vec<String>>,
    /// CloudWatch and OTLP: how long values are aggregated before they are sent, in
    /// milliseconds. Default: 10000 for CloudWatch (the Java KCL's metricsBufferTimeMillis);
    /// for OTLP OTEL_METRIC_EXPORT_INTERVAL, else 60000 (the OpenTelemetry SDKs' default).
    #[arg(long)]
    metrics_buffer_ms: Option<u64>,
    /// OTLP: the collector's base URL, e.g. http://127.0.0.1:4318 (/v1/metrics is appended;
    /// http or https, with the system's root certificates and OTEL_EXPORTER_OTLP_CERTIFICATE;
    /// headers from OTEL_EXPORTER_OTLP_HEADERS). Default: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Serve this worker's live status page (leases, lag, throughput, recent lease moves and
    /// errors; refreshes itself) on this address, e.g. 127.0.0.1:8080, at `/`, and the same as
    /// JSON at `/status.json`. Port 0 picks a free port; the address is logged on stderr.
    #[arg(long)]
    status_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    log: kcl_tools::logging::LogArgs,
}

fn parse_dynamodb_stream_arn(s: &str) -> Result<DynamoDbStreamArn, String> {
    s.parse()
        .map_err(|e: kcl_core::dynamodb_streams::DynamoDbStreamArnError| e.to_string())
}

fn parse_stream_arn(s: &str) -> Result<StreamArn, String> {
    s.parse()
        .map_err(|e: kcl_core::stream_arn::StreamArnError| e.to_string())
}

/// `STREAM=ROLE_ARN`, STREAM a name or a stream ARN (whose stream name is kept).
fn parse_stream_role(s: &str) -> Result<(String, String), String> {
    let (stream, role) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected STREAM=ROLE_ARN"))?;
    let stream = if stream.starts_with("arn:") {
        parse_stream_arn(stream)?.stream_name
    } else {
        stream.to_owned()
    };
    if stream.is_empty() || !role.starts_with("arn:") {
        return Err(format!(
            "{s:?}: expected STREAM=ROLE_ARN (a stream name or ARN, then an IAM role ARN)"
        ));
    }
    Ok((stream, role.to_owned()))
}

fn parse_renewal(s: &str) -> Result<LeaseRenewal, String> {
    s.parse()
        .map_err(|e: kcl_lease::heartbeat::ParseLeaseRenewalError| e.to_string())
}

fn parse_timestamp(s: &str) -> Result<InitialPosition, String> {
    parse_position(&format!("at-timestamp:{s}"))
}

fn parse_position(s: &str) -> Result<InitialPosition, String> {
    match s {
        "trim-horizon" | "TRIM_HORIZON" => Ok(InitialPosition::TrimHorizon),
        "latest" | "LATEST" => Ok(InitialPosition::Latest),
        other => {
            let ts = other.strip_prefix("at-timestamp:").ok_or_else(|| {
                format!("{other:?}: expected trim-horizon, latest or at-timestamp:<RFC3339>")
            })?;
            let dt = DateTime::from_str(ts, Format::DateTimeWithOffset)
                .or_else(|_| DateTime::from_str(ts, Format::DateTime))
                .map_err(|e| format!("{ts:?} is not an RFC 3339 timestamp: {e}"))?;
            let t = std::time::SystemTime::try_from(dt).map_err(|e| format!("{ts:?}: {e}"))?;
            Ok(InitialPosition::AtTimestamp(t))
        }
    }
}

/// One record as kcl-tail prints it: the fields in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    stream: &'a str,
    shard_id: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: u64,
    partition_key: &'a str,
    /// Base64.
    data: String,
    /// RFC 3339, UTC, to the millisecond: `2026-11-25T06:40:00.123Z`.
    approximate_arrival_timestamp: String,
}

/// `2026-11-25T06:40:00.123Z`: RFC 3339, UTC, always three digits of milliseconds (Kinesis
/// arrival times have millisecond precision; a finer time is truncated).
fn millisecond_timestamp(t: std::time::SystemTime) -> String {
    let since_epoch = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    match DateTime::from_secs(seconds).fmt(Format::DateTime) {
        // Whole seconds format as `...:SSZ`.
        Ok(whole) => format!(
            "{}.{:03}Z",
            whole.trim_end_matches('Z'),
            since_epoch.subsec_millis()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// One change of a DynamoDB table's stream as kcl-tail prints it: the fields in this order;
/// keys and images in DynamoDB JSON (`{"pk":{"S":"a"}}`), absent images left out.
#[derive(Serialize)]
struct ChangeLine<'a> {
    event_name: &'a str,
    keys: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_image: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_image: Option<serde_json::Value>,
    sequence_number: &'a str,
    /// RFC 3339, UTC, whole seconds (the service rounds the creation time down to the second).
    approximate_creation_time: String,
    shard_id: &'a str,
    stream_arn: &'a str,
    /// Deletions by Time to Live: `{"principal_id":"dynamodb.amazonaws.com","type":"Service"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_identity: Option<IdentityLine<'a>>,
}

#[derive(Serialize)]
struct IdentityLine<'a> {
    principal_id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl<'a> ChangeLine<'a> {
    fn new(change: &'a ChangeRecord, shard_id: &'a str, stream_arn: &'a str) -> Self {
        Self {
            event_name: change.event_name.as_str(),
            keys: item_to_dynamodb_json(&change.keys),
            new_image: change.new_image.as_ref().map(item_to_dynamodb_json),
            old_image: change.old_image.as_ref().map(item_to_dynamodb_json),
            sequence_number: change.sequence_number.as_str(),
            approximate_creation_time: second_timestamp(change.approximate_creation_time),
            shard_id,
            stream_arn,
            user_identity: change.user_identity.as_ref().map(
                |UserIdentity {
                     principal_id, kind, ..
                 }| IdentityLine { principal_id, kind },
            ),
        }
    }
}

/// `2026-12-06T13:44:14Z`: RFC 3339, UTC, whole seconds.
fn second_timestamp(t: std::time::SystemTime) -> String {
    let since_epoch = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    DateTime::from_secs(seconds)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// How records are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineFormat {
    /// A Kinesis record's JSON line ([`JsonLine`]).
    Kinesis,
    /// A DynamoDB change's JSON line ([`ChangeLine`]).
    Change,
    /// `--raw`: the record's data as they are (for a DynamoDB change, its wire-format JSON).
    Raw,
}

/// Appends one record to `out`: its JSON line, or with `raw` its data as they are; then `\n`.
fn render(
    out: &mut Vec<u8>,
    format: LineFormat,
    stream: &str,
    shard_id: &str,
    r: &Record,
) -> Result<(), ProcessorError> {
    if format == LineFormat::Raw {
        out.extend_from_slice(&r.data);
    } else if format == LineFormat::Change {
        let change = ChangeRecord::from_record(r).map_err(|e| {
            format!(
                "the change at sequence number {}: {e}",
                r.sequence_number.as_str()
            )
        })?;
        serde_json::to_writer(&mut *out, &ChangeLine::new(&change, shard_id, stream))?;
    } else {
        let line = JsonLine {
            stream,
            shard_id,
            sequence_number: r.sequence_number.as_str(),
            sub_sequence_number: r.sub_sequence_number,
            partition_key: &r.partition_key,
            data: aws_smithy_types::base64::encode(&r.data),
            approximate_arrival_timestamp: millisecond_timestamp(r.approximate_arrival_timestamp),
        };
        serde_json::to_writer(&mut *out, &line)?;
    }
    out.push(b'\n');
    Ok(())
}

/// Shared by every shard's printer.
struct Output {
    stdout: Mutex<tokio::io::Stdout>,
    /// Records written (and flushed) to stdout. Updated under the `stdout` lock.
    printed: AtomicU64,
    /// `-n`: print at most this many records.
    limit: Option<u64>,
    /// Notified once `limit` records were printed: the program stops.
    done: Notify,
    /// Notified when stdout is gone (a closed pipe): the program stops.
    broken: Notify,
}

struct Printer {
    stream: String,
    shard_id: String,
    out: Arc<Output>,
    /// JSON lines of Kinesis records or of DynamoDB changes, or `--raw`.
    format: LineFormat,
    /// Checkpoint what was printed (not with `--no-checkpoint`).
    checkpoint: bool,
    /// The last record of this shard written to stdout: the furthest a checkpoint may go.
    last_printed: Option<(String, u64)>,
    /// Records delivered but not printed (the `-n` limit was reached): the shard's end must
    /// not be checkpointed, a restart reads them.
    skipped: bool,
}

impl Printer {
    async fn checkpoint_printed(&self, checkpointer: &kcl_core::Checkpointer) -> Result<(), ProcessorError> {
        if let (true, Some((sequence, sub))) = (self.checkpoint, &self.last_printed) {
            checkpointer.checkpoint_at(sequence, *sub).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl RecordProcessor for Printer {
    async fn initialize(&mut self, input: InitializeInput) -> Result<(), ProcessorError> {
        self.stream = input.stream_name;
        self.shard_id = input.shard_id;
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let printed = {
            // The lock orders the shards' batches and the count of what was printed.
            let mut stdout = self.out.stdout.lock().await;
            let before = self.out.printed.load(Ordering::SeqCst);
            let take = match self.out.limit {
                Some(limit) => input.records.len().min(limit.saturating_sub(before) as usize),
                None => input.records.len(),
            };
            let records = &input.records[..take];
            if take < input.records.len() {
                self.skipped = true;
            }
            if !records.is_empty() {
                let mut buf = Vec::with_capacity(records.len() * 160);
                for r in records {
                    render(&mut buf, self.format, &self.stream, &self.shard_id, r)?;
                }
                let written = async {
                    stdout.write_all(&buf).await?;
                    stdout.flush().await
                }
                .await;
                if let Err(e) = written {
                    self.out.broken.notify_one();
                    return Err(Box::new(e));
                }
                let now = before + take as u64;
                self.out.printed.store(now, Ordering::SeqCst);
                if self.out.limit == Some(now) {
                    self.out.done.notify_one();
                }
            }
            records
        };
        if let Some(last) = printed.last() {
            self.last_printed = Some((last.sequence_number.as_str().to_owned(), last.sub_sequence_number));
            self.checkpoint_printed(input.checkpointer).await?;
        }
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        // SHARD_END lets the children start (in the in-process lease store too, with
        // --no-checkpoint); never written when records of the shard went unprinted.
        if !self.skipped {
            input.checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        self.checkpoint_printed(input.checkpointer).await
    }
}

/// The scheduler for `streams` (the Kinesis streams of the flags, or a DynamoDB stream's ARN).
fn configure(args: &Args, streams: &[String], application: &str, out: &Arc<Output>) -> SchedulerBuilder {
    let o = out.clone();
    let format = match (args.raw, args.dynamodb_source().is_some()) {
        (true, _) => LineFormat::Raw,
        (false, true) => LineFormat::Change,
        (false, false) => LineFormat::Kinesis,
    };
    let checkpoint = !args.no_checkpoint;
    let arn_of = |name: &str| args.stream_arns.iter().find(|a| a.stream_name == name).cloned();
    let mut builder = match streams {
        [one] => {
            let builder = Scheduler::builder(application.to_owned(), one.clone());
            match arn_of(one) {
                Some(arn) => builder.stream_arn(arn),
                None => builder,
            }
        }
        several => Scheduler::multi_stream_builder(
            application.to_owned(),
            several
                .iter()
                .map(|name| match arn_of(name) {
                    Some(arn) => StreamConfig::from_arn(arn),
                    None => StreamConfig::named(name),
                })
                .collect::<Vec<_>>(),
        ),
    };
    builder = builder
        .initial_position(args.initial_position)
        .failover_time(Duration::from_millis(args.failover_ms))
        .lease_renewal(args.lease_renewal)
        .processor_factory(move |shard: &str| Printer {
            stream: String::new(),
            shard_id: shard.to_owned(),
            out: o.clone(),
            format,
            checkpoint,
            last_printed: None,
            skipped: false,
        });
    if args.fan_out {
        let mut fan_out = match &args.consumer_name {
            Some(name) => FanOutConfig::named(name.clone()),
            None => FanOutConfig::default(),
        };
        for (key, value) in &args.consumer_tags {
            fan_out = fan_out.tag(key.clone(), value.clone());
        }
        builder = builder.retrieval(RetrievalMode::FanOut(fan_out));
    }
    if let Some(id) = &args.worker_id {
        builder = builder.worker_id(id.clone());
    }
    builder
}

/// The SDK settings of the flags (a stream named by ARN says its region).
fn aws_options(args: &Args) -> AwsOptions {
    AwsOptions {
        region: args
            .region
            .clone()
            .or_else(|| args.stream_arns.first().map(|a| a.region.clone()))
            .or_else(|| args.dynamodb_stream_arn.as_ref().map(|a| a.region.clone())),
        endpoint_url: args.endpoint_url.clone(),
        profile: args.profile.clone(),
    }
}

async fn run_aws(args: &Args, application: &str, out: Arc<Output>) -> Result<()> {
    let sdk = load_sdk_config(&aws_options(args)).await;
    if sdk.region().is_none() {
        bail!("no AWS region: pass --region, --profile or set AWS_REGION");
    }
    match args.dynamodb_source() {
        Some(source) => {
            // A table without a stream is DynamoDbSourceError::NoStream: an error at once.
            let (backend, arn) = dynamodb_backend(args, &sdk, source).await?;
            info!(stream_arn = %arn, "reading a DynamoDB table's change stream");
            run_scheduler(args, application, out, &sdk, backend, &[arn.to_string()]).await
        }
        None => {
            let backend = kinesis_backends(args, &sdk).await;
            run_scheduler(args, application, out, &sdk, backend, &args.streams).await
        }
    }
}

/// Runs the application on `backend` (Kinesis, or a DynamoDB stream named by its ARN) until a
/// signal, `-n`, a closed stdout or a fatal error.
async fn run_scheduler(
    args: &Args,
    application: &str,
    out: Arc<Output>,
    sdk: &aws_config::SdkConfig,
    backend: impl kcl_core::StreamBackend,
    stream_names: &[String],
) -> Result<()> {
    // Fail fast on a missing stream or missing permissions, before the lease table is created.
    let streams: Vec<&str> = stream_names.iter().map(String::as_str).collect();
    let builder = if args.no_checkpoint {
        // No lease table: this worker alone holds every shard's lease, in memory.
        for stream in &streams {
            kcl_core::StreamBackend::list_shards(&backend, stream)
                .await
                .with_context(|| format!("reading the shards of stream {stream}"))?;
        }
        configure(args, stream_names, application, &out)
            .backend(backend)
            .lease_store(InMemoryLeaseStore::new())
    } else {
        let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(sdk), application);
        kcl_tools::prepare_aws(&backend, &store, &streams, application).await?;
        configure(args, stream_names, application, &out)
            .backend(backend)
            .lease_store(store)
    };
    let scheduler = builder.build()?;
    info!(worker_id = %scheduler.config().worker_id, "kcl-tail starting");
    let handle = scheduler.spawn();
    let _status = serve_status(args, &handle).await?;
    let signal = kcl_core::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = out.done.notified() => break,
            () = out.broken.notified() => {
                error!("stdout is closed; stopping");
                break;
            }
            // The worker stops by itself only on a fatal error, which shutdown() returns.
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if !handle.is_running() {
                    break;
                }
            }
        }
    }
    handle.shutdown().await?;
    Ok(())
}

/// The role `arn` as kcl-tail assumes it (with --external-id).
fn role_of(args: &Args, arn: &str) -> AssumeRole {
    let role = AssumeRole::new(arn).session_name("kcl-tail");
    match &args.external_id {
        Some(id) => role.external_id(id.clone()),
        None => role,
    }
}

/// The SDK configuration the streams are read with: --role-arn's credentials, else the default.
async fn reading_conf(args: &Args, sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    match &args.role_arn {
        None => sdk.clone(),
        Some(arn) => assume_role(sdk, &role_of(args, arn)).await,
    }
}

/// The DynamoDB Streams backend and the stream's ARN: the table's latest stream
/// (`DescribeTable`), or the ARN given.
async fn dynamodb_backend(
    args: &Args,
    sdk: &aws_config::SdkConfig,
    source: DynamoDbSource<'_>,
) -> Result<(DynamoDbStreamsBackend, DynamoDbStreamArn)> {
    let conf = reading_conf(args, sdk).await;
    Ok(match source {
        DynamoDbSource::Table(table) => DynamoDbStreamsBackend::for_table(&conf, table).await?,
        DynamoDbSource::Arn(arn) => (DynamoDbStreamsBackend::from_conf(&conf), arn.clone()),
    })
}

/// The Kinesis backend: the default credentials (or --role-arn's) for every stream, except the
/// streams given a --stream-role, which are read with their role's (one SDK client per role).
async fn kinesis_backends(args: &Args, sdk: &aws_config::SdkConfig) -> RoutingBackend {
    let role = |arn: &str| role_of(args, arn);
    let default_conf = reading_conf(args, sdk).await;
    let mut backend = RoutingBackend::new(KinesisBackend::from_conf(&default_conf));
    let mut by_role: std::collections::HashMap<&str, KinesisBackend> = std::collections::HashMap::new();
    for (stream, arn) in &args.stream_roles {
        if !by_role.contains_key(arn.as_str()) {
            let conf = assume_role(sdk, &role(arn)).await;
            by_role.insert(arn, KinesisBackend::from_conf(&conf));
        }
        if let Some(b) = by_role.get(arn.as_str()) {
            backend = backend.route(stream.clone(), b.clone());
        }
    }
    // The scheduler names these streams by ARN too; naming them here covers the checks below.
    for arn in &args.stream_arns {
        kcl_core::StreamBackend::name_by_arn(&backend, arn);
    }
    backend
}

/// Starts the status page if `--status-addr` asks for it.
async fn serve_status(
    args: &Args,
    handle: &kcl_core::SchedulerHandle,
) -> Result<Option<kcl_core::status::StatusServer>> {
    let Some(addr) = args.status_addr else {
        return Ok(None);
    };
    let server = handle
        .serve_status(addr)
        .await
        .with_context(|| format!("serving the status page on {addr}"))?;
    kcl_tools::logging::notice(&format!(
        "kcl-tail: status page on http://{}/",
        server.local_addr()
    ));
    Ok(Some(server))
}

async fn run_local(args: &Args, application: &str, out: Arc<Output>) -> Result<()> {
    let backend = LocalBackend::new();
    for stream in &args.streams {
        backend
            .create_stream(stream, args.local_shards)
            .with_context(|| format!("creating the local stream {stream}"))?;
        backend
            .update_max_record_size(stream, args.local_max_record_kib)
            .with_context(|| format!("setting the record size of the local stream {stream}"))?;
    }
    let max_record = args.local_max_record_kib as usize * 1024;
    let handle = configure(args, &args.streams, application, &out)
        .initial_position(InitialPosition::TrimHorizon)
        .backend(backend.clone())
        .lease_store(InMemoryLeaseStore::new())
        .polling_interval(Duration::from_millis(100))
        .build()?
        .spawn();
    let _status = serve_status(args, &handle).await?;
    let mut lines = kcl_tools::lines::stdin_lines(max_record, 2);
    let mut put = 0u64;
    let signal = kcl_core::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    let line = line.with_context(|| format!("reading line {} of stdin", put + 1))?;
                    // Lines go round the streams.
                    let stream = &args.streams[put as usize % args.streams.len()];
                    backend.put_record(stream, &put.to_string(), line.into(), None).await?;
                    put += 1;
                }
                None => break,
            },
            () = &mut signal => return Ok(handle.shutdown().await?),
            () = out.done.notified() => return Ok(handle.shutdown().await?),
            () = out.broken.notified() => return Ok(handle.shutdown().await?),
        }
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if out.printed.load(Ordering::SeqCst) >= put {
                    break;
                }
            }
            () = &mut signal => break,
            () = out.done.notified() => break,
            () = out.broken.notified() => break,
        }
    }
    handle.shutdown().await?;
    Ok(())
}

/// Where the changes of a DynamoDB table come from (`--dynamodb-table`, `--dynamodb-stream-arn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DynamoDbSource<'a> {
    /// The table's latest stream.
    Table(&'a str),
    /// The stream with this ARN.
    Arn(&'a DynamoDbStreamArn),
}

impl Args {
    /// The DynamoDB stream to read, if the flags name one (else Kinesis streams).
    fn dynamodb_source(&self) -> Option<DynamoDbSource<'_>> {
        match (&self.dynamodb_table, &self.dynamodb_stream_arn) {
            (Some(table), _) => Some(DynamoDbSource::Table(table)),
            (None, Some(arn)) => Some(DynamoDbSource::Arn(arn)),
            (None, None) => None,
        }
    }

    /// The table whose changes are read (`--dynamodb-table`, or the table of the ARN).
    fn dynamodb_table_name(&self) -> Option<&str> {
        match self.dynamodb_source()? {
            DynamoDbSource::Table(table) => Some(table),
            DynamoDbSource::Arn(arn) => Some(&arn.table),
        }
    }
}

/// Flags that contradict a DynamoDB source (exactly one source; what DynamoDB Streams does not
/// have), as the one-line error to print; `None` when they agree.
fn dynamodb_conflict(args: &Args) -> Option<String> {
    let source = args.dynamodb_source()?;
    let flag = match source {
        DynamoDbSource::Table(_) => "--dynamodb-table",
        DynamoDbSource::Arn(_) => "--dynamodb-stream-arn",
    };
    let timestamp =
        matches!(args.initial_position, InitialPosition::AtTimestamp(_)) || args.from_timestamp.is_some();
    if args.dynamodb_table.is_some() && args.dynamodb_stream_arn.is_some() {
        Some("--dynamodb-table and --dynamodb-stream-arn both name the stream to read: give one".to_owned())
    } else if !args.streams.is_empty() || !args.stream_arns.is_empty() {
        Some(format!(
            "{flag} reads a DynamoDB table's change stream and --stream/--stream-arn a Kinesis stream: \
             one kcl-tail reads one source; give one of them"
        ))
    } else if args.local {
        Some(format!(
            "--local reads stdin into a local Kinesis stream: not with {flag}"
        ))
    } else if args.fan_out {
        Some(format!(
            "DynamoDB Streams has no enhanced fan-out: --fan-out is not for {flag}"
        ))
    } else if !args.stream_roles.is_empty() {
        Some(format!(
            "--stream-role names a Kinesis stream's role: with {flag}, use --role-arn"
        ))
    } else if timestamp {
        Some(format!(
            "DynamoDB Streams has no AT_TIMESTAMP iterator: with {flag}, --initial-position is trim-horizon or latest"
        ))
    } else {
        match (&args.region, &args.dynamodb_stream_arn) {
            (Some(region), Some(arn)) if *region != arn.region => Some(format!(
                "--dynamodb-stream-arn {arn} names region {} but --region is {region}: make the two agree",
                arn.region
            )),
            _ => None,
        }
    }
}

/// A `--stream-arn` of another region than `--region` (or, without it, than the first
/// `--stream-arn`, whose region is used): the calls would go to the wrong region's endpoint
/// and fail with an error that does not say which setting is wrong.
fn arn_region_conflict(region: Option<&str>, arns: &[StreamArn]) -> Option<String> {
    let (used, from) = match (region, arns.first()) {
        (Some(region), _) => (region, "--region is".to_owned()),
        (None, Some(first)) => (first.region.as_str(), format!("--stream-arn {first} names")),
        (None, None) => return None,
    };
    let other = arns.iter().find(|arn| arn.region != used)?;
    Some(format!(
        "--stream-arn {other} names region {} but {from} {used}: one kcl-tail reads the streams \
         of one region; make the two agree",
        other.region
    ))
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(kcl_tools::exit_status(run()));
    // Without waiting for the blocking read of stdin (--local): with -n the program ends while
    // stdin is still open. Everything printed was flushed already.
    runtime.shutdown_background();
    code
}

async fn run() -> Result<()> {
    let mut args = Args::parse();
    kcl_tools::logging::init("kcl-tail", "warn", &args.log);
    if let Some(conflict) = dynamodb_conflict(&args) {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, conflict)
            .exit();
    }
    // Streams named by ARN are read under their names (the backend makes the calls by ARN).
    for arn in &args.stream_arns {
        if !args.streams.contains(&arn.stream_name) {
            args.streams.push(arn.stream_name.clone());
        }
    }
    for (stream, _) in &args.stream_roles {
        if !args.streams.contains(stream) {
            Args::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--stream-role {stream}=...: {stream} is not one of the --stream/--stream-arn streams"),
                )
                .exit();
        }
    }
    if let Some(conflict) = arn_region_conflict(args.region.as_deref(), &args.stream_arns) {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, conflict)
            .exit();
    }
    if args.external_id.is_some() && args.role_arn.is_none() && args.stream_roles.is_empty() {
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--external-id needs --role-arn or --stream-role",
            )
            .exit();
    }
    if args.metrics_addr.is_some() && args.metrics != kcl_tools::metrics::MetricsSink::Prometheus {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--metrics-addr serves Prometheus metrics: it needs --metrics prometheus",
            )
            .exit();
    }
    if args.otlp_endpoint.is_some() && args.metrics != kcl_tools::metrics::MetricsSink::Otlp {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--otlp-endpoint is where OTLP metrics go: it needs --metrics otlp",
            )
            .exit();
    }
    if let Some(addr) = args.metrics_addr {
        kcl_tools::prometheus_builder(kcl_core::metrics::SHARD_SERIES_IDLE_TIMEOUT)
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let application = args.application_name.clone().unwrap_or_else(|| {
        // A DynamoDB table name: at most 255 characters.
        let mut name = match args.dynamodb_table_name() {
            Some(table) => format!("kcl-tail-{table}"),
            None => format!("kcl-tail-{}", args.streams.join("-")),
        };
        name.truncate(255);
        name
    });
    let cloudwatch = if args.metrics == kcl_tools::metrics::MetricsSink::Cloudwatch {
        let mut options = aws_options(&args);
        // An emulator of CloudWatch alone (moto) beside --endpoint-url's.
        if let Some(url) = std::env::var("AWS_ENDPOINT_URL_CLOUDWATCH")
            .ok()
            .filter(|u| !u.is_empty())
        {
            options.endpoint_url = Some(url);
        }
        let sdk = load_sdk_config(&options).await;
        if sdk.region().is_none() {
            bail!("CloudWatch metrics need an AWS region: pass --region, --profile or set AWS_REGION");
        }
        let settings = kcl_tools::metrics::CloudWatchSettings {
            level: args.metrics_level,
            dimensions: args.metrics_dimensions.clone(),
            buffer_time: Duration::from_millis(args.metrics_buffer_ms.unwrap_or(10_000).max(1)),
            ..Default::default()
        };
        kcl_tools::metrics::install_cloudwatch(&sdk, &application, &settings)?
    } else {
        None
    };
    let otlp = if args.metrics == kcl_tools::metrics::MetricsSink::Otlp {
        let settings = kcl_tools::metrics::OtlpSettings {
            endpoint: args.otlp_endpoint.clone(),
            level: args.metrics_level,
            dimensions: args.metrics_dimensions.clone(),
            interval: args.metrics_buffer_ms.map(|ms| Duration::from_millis(ms.max(1))),
        };
        kcl_tools::metrics::install_otlp(&application, &settings)?
    } else {
        None
    };
    if let Some(position) = args.from_timestamp {
        args.initial_position = position;
    }
    let out = Arc::new(Output {
        stdout: Mutex::new(tokio::io::stdout()),
        printed: AtomicU64::new(0),
        limit: args.max_records,
        done: Notify::new(),
        broken: Notify::new(),
    });
    let result = if args.local {
        run_local(&args, &application, out).await
    } else {
        run_aws(&args, &application, out).await
    };
    // After the hand-over: the last window of metrics.
    kcl_tools::metrics::finish_cloudwatch(cloudwatch).await;
    kcl_tools::metrics::finish_otlp(otlp).await;
    result
}

/// Parses `--consumer-tag KEY=VALUE`: a tag key of 1 to 128 characters, a value of up to 256
/// (Kinesis' limits).
fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if key.is_empty() || key.chars().count() > 128 {
        return Err(format!("{s:?}: a tag key has 1 to 128 characters"));
    }
    if value.chars().count() > 256 {
        return Err(format!("{s:?}: a tag value has at most 256 characters"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(region: &str, name: &str) -> StreamArn {
        format!("arn:aws:kinesis:{region}:111122223333:stream/{name}")
            .parse()
            .expect("ARN")
    }

    #[test]
    fn a_stream_arn_of_another_region_conflicts() {
        let (east, west) = (arn("us-east-5", "a"), arn("us-west-2", "b"));
        assert_eq!(arn_region_conflict(None, &[]), None);
        assert_eq!(arn_region_conflict(Some("us-east-1"), &[]), None);
        assert_eq!(
            arn_region_conflict(Some("us-east-5"), std::slice::from_ref(&east)),
            None
        );
        assert_eq!(arn_region_conflict(None, std::slice::from_ref(&east)), None);
        assert_eq!(
            arn_region_conflict(Some("us-east-1"), std::slice::from_ref(&east)).as_deref(),
            Some(
                "--stream-arn arn:aws:kinesis:us-east-5:111122223333:stream/a names region us-east-5 \
                 but --region is us-east-1: one kcl-tail reads the streams of one region; make the two agree"
            )
        );
        let two = arn_region_conflict(None, &[east, west]).expect("a conflict");
        assert!(
            two.starts_with("--stream-arn arn:aws:kinesis:us-west-2:111122223333:stream/b names region us-west-2 but --stream-arn arn:aws:kinesis:us-east-5:111122223333:stream/a names us-east-5"),
            "{two}"
        );
    }

    const DDB_ARN: &str =
        "arn:aws:dynamodb:eu-west-1:111122223333:table/orders/stream/2026-12-06T13:44:14.123";

    fn conflict(flags: &[&str]) -> Option<String> {
        let args = Args::try_parse_from(std::iter::once("kcl-tail").chain(flags.iter().copied()))
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        dynamodb_conflict(&args)
    }

    #[test]
    fn a_dynamodb_source_is_the_only_source() {
        assert_eq!(conflict(&["--dynamodb-table", "orders"]), None);
        assert_eq!(conflict(&["--dynamodb-stream-arn", DDB_ARN]), None);
        assert_eq!(conflict(&["--stream", "s"]), None);
        assert_eq!(
            conflict(&[
                "--dynamodb-table",
                "orders",
                "--initial-position",
                "trim-horizon",
                "--no-checkpoint",
                "-n",
                "3"
            ]),
            None
        );
        assert_eq!(
            conflict(&["--dynamodb-stream-arn", DDB_ARN, "--region", "eu-west-1"]),
            None
        );
        let both = conflict(&["--dynamodb-table", "orders", "--stream", "s"]).expect("a conflict");
        assert_eq!(
            both,
            "--dynamodb-table reads a DynamoDB table's change stream and --stream/--stream-arn a Kinesis \
             stream: one kcl-tail reads one source; give one of them"
        );
        assert!(!both.contains('\n'));
        let kinesis_arn = "arn:aws:kinesis:eu-west-1:111122223333:stream/s";
        assert!(
            conflict(&["--dynamodb-stream-arn", DDB_ARN, "--stream-arn", kinesis_arn])
                .expect("a conflict")
                .starts_with("--dynamodb-stream-arn reads a DynamoDB table's change stream")
        );
        assert_eq!(
            conflict(&["--dynamodb-table", "orders", "--dynamodb-stream-arn", DDB_ARN]).as_deref(),
            Some("--dynamodb-table and --dynamodb-stream-arn both name the stream to read: give one")
        );
        for flags in [
            &["--dynamodb-table", "orders", "--local"][..],
            &["--dynamodb-table", "orders", "--fan-out"],
            &[
                "--dynamodb-table",
                "orders",
                "--stream-role",
                "orders=arn:aws:iam::111122223333:role/r",
            ],
            &[
                "--dynamodb-table",
                "orders",
                "--from-timestamp",
                "2026-12-06T00:00:00Z",
            ],
            &[
                "--dynamodb-table",
                "orders",
                "--initial-position",
                "at-timestamp:2026-12-06T00:00:00Z",
            ],
        ] {
            assert!(conflict(flags).is_some(), "{flags:?}");
        }
        assert_eq!(
            conflict(&["--dynamodb-stream-arn", DDB_ARN, "--region", "us-east-1"]).as_deref(),
            Some(
                "--dynamodb-stream-arn arn:aws:dynamodb:eu-west-1:111122223333:table/orders/stream/2026-12-06T13:44:14.123 \
                 names region eu-west-1 but --region is us-east-1: make the two agree"
            )
        );
        // No source at all is clap's own error; a bad ARN too.
        assert!(Args::try_parse_from(["kcl-tail"]).is_err());
        assert!(Args::try_parse_from(["kcl-tail", "--dynamodb-stream-arn", "arn:aws:kinesis:x"]).is_err());
    }

    #[test]
    fn the_source_names_the_application_and_the_region() {
        let args = Args::try_parse_from(["kcl-tail", "--dynamodb-stream-arn", DDB_ARN]).unwrap();
        assert_eq!(args.dynamodb_table_name(), Some("orders"));
        assert_eq!(aws_options(&args).region.as_deref(), Some("eu-west-1"));
        let args = Args::try_parse_from(["kcl-tail", "--dynamodb-table", "carts"]).unwrap();
        assert_eq!(args.dynamodb_source(), Some(DynamoDbSource::Table("carts")));
        assert_eq!(args.dynamodb_table_name(), Some("carts"));
    }

    fn change(json: &str) -> Record {
        let change = ChangeRecord::from_json_slice(json.as_bytes()).expect("a change");
        kcl_core::backend::dynamodb_streams::change_to_record(&change)
    }

    fn line(format: LineFormat, r: &Record) -> String {
        let mut out = Vec::new();
        render(
            &mut out,
            format,
            DDB_ARN,
            "shardId-00000001765028654000-0a1b2c3d",
            r,
        )
        .expect("render");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn a_change_prints_as_one_json_line() {
        let modify = change(
            r#"{"eventID":"e1","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb",
                "awsRegion":"eu-west-1","dynamodb":{"ApproximateCreationDateTime":1765028654,
                "Keys":{"pk":{"S":"order-1"}},
                "NewImage":{"pk":{"S":"order-1"},"qty":{"N":"2"}},
                "OldImage":{"pk":{"S":"order-1"},"qty":{"N":"1"}},
                "SequenceNumber":"4900000000000000000000000000000000000017","SizeBytes":59,
                "StreamViewType":"NEW_AND_OLD_IMAGES"}}"#,
        );
        assert_eq!(
            line(LineFormat::Change, &modify),
            format!(
                "{{\"event_name\":\"MODIFY\",\"keys\":{{\"pk\":{{\"S\":\"order-1\"}}}},\
                 \"new_image\":{{\"pk\":{{\"S\":\"order-1\"}},\"qty\":{{\"N\":\"2\"}}}},\
                 \"old_image\":{{\"pk\":{{\"S\":\"order-1\"}},\"qty\":{{\"N\":\"1\"}}}},\
                 \"sequence_number\":\"4900000000000000000000000000000000000017\",\
                 \"approximate_creation_time\":\"2025-12-06T13:44:14Z\",\
                 \"shard_id\":\"shardId-00000001765028654000-0a1b2c3d\",\"stream_arn\":\"{DDB_ARN}\"}}\n"
            )
        );
        // --raw: the wire format as it is.
        assert_eq!(
            line(LineFormat::Raw, &modify),
            format!("{}\n", String::from_utf8_lossy(&modify.data))
        );
        // A TTL deletion: no new image, the user identity.
        let ttl = change(
            r#"{"eventID":"e2","eventName":"REMOVE","eventVersion":"1.1","eventSource":"aws:dynamodb",
                "awsRegion":"eu-west-1","dynamodb":{"ApproximateCreationDateTime":1765028655,
                "Keys":{"pk":{"S":"order-2"}},"OldImage":{"pk":{"S":"order-2"}},
                "SequenceNumber":"4900000000000000000000000000000000000018","SizeBytes":20,
                "StreamViewType":"NEW_AND_OLD_IMAGES"},
                "userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}}"#,
        );
        let printed = line(LineFormat::Change, &ttl);
        assert!(printed.ends_with('\n') && printed.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(v["event_name"], "REMOVE");
        assert!(v.get("new_image").is_none());
        assert_eq!(v["old_image"]["pk"]["S"], "order-2");
        assert_eq!(
            v["user_identity"],
            serde_json::json!({"principal_id": "dynamodb.amazonaws.com", "type": "Service"})
        );
        // Not a change: an error naming the record, not a panic.
        let mut bad = modify.clone();
        bad.data = bytes::Bytes::from_static(b"{}");
        let mut out = Vec::new();
        let err = render(&mut out, LineFormat::Change, DDB_ARN, "s", &bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("4900000000000000000000000000000000000017"),
            "{err}"
        );
    }

    #[test]
    fn consumer_tags_parse_as_key_value() {
        assert_eq!(
            parse_tag("team=payments").unwrap(),
            ("team".to_owned(), "payments".to_owned())
        );
        assert_eq!(parse_tag("empty=").unwrap(), ("empty".to_owned(), String::new()));
        assert_eq!(parse_tag("a=b=c").unwrap(), ("a".to_owned(), "b=c".to_owned()));
        assert!(parse_tag("novalue").is_err());
        assert!(parse_tag("=v").is_err());
        assert!(parse_tag(&format!("{}=v", "k".repeat(129))).is_err());
    }
}
