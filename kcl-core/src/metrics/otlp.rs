//! The runtime's metrics over OpenTelemetry's OTLP/HTTP (feature `otlp`), under the names and
//! attributes the Java KCL 3.5 gives them when its metrics backend is OpenTelemetry
//! (`MetricsBackend.OTEL`): instrument names `aws.kinesis.client.*` (e.g.
//! `aws.kinesis.client.records_processed`, `aws.kinesis.client.consumer.lag.duration`), the
//! attributes `aws.kinesis.operation`, `aws.kinesis.shard.id`, `aws.kinesis.stream_name` and
//! `aws.kinesis.consumer.name`, UCUM units, the meter (instrumentation scope)
//! `software.amazon.kinesis`, and the resource's `service.name` = the application name. The
//! dashboards of a Java KCL application that exports to an OpenTelemetry collector (or to
//! CloudWatch's OTLP endpoint through one) keep working after the move.
//!
//! The names and attributes follow the Java KCL's sources (3.5.0, `MetricsBackend.OTEL`):
//! `OtelMetricNameTransformer` (the name rules below) and `OtelMetricsScope` (the attributes,
//! which metrics are gauges, the units), under
//! `amazon-kinesis-client/src/main/java/software/amazon/kinesis/metrics/`.
//!
//! [`OtlpRecorder`] is a [`metrics::Recorder`]: install it as the global recorder ([`install`],
//! or [`metrics::set_global_recorder`] with [`OtlpRecorder::new`]). As the CloudWatch publisher
//! (`metrics::cloudwatch`), with which it shares the name table and the aggregation, the
//! recorder only updates in-memory aggregates; an exporter task closes a window every
//! [`OtlpConfig::export_interval`], turns each series into a data point, queues the points (at
//! most [`OtlpConfig::max_queue_size`]; the overflow is dropped, counted by
//! [`OtlpHandle::dropped_points`] and logged at warn) and posts them to the collector
//! (`POST <endpoint>/v1/metrics`, `application/x-protobuf`) in requests of at most
//! [`OtlpConfig::max_points_per_request`] points, retrying throttled or unavailable answers
//! (429, 502, 503, 504, connection errors) with backoff. Recording never waits for the network.
//! [`OtlpHandle::flush`] exports the current window now; [`OtlpHandle::shutdown`] exports the
//! last one and stops the task: call it after the scheduler's graceful shutdown.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl_core::metrics::otlp::{self, OtlpConfig};
//!
//! // OTEL_EXPORTER_OTLP_ENDPOINT etc. from the environment, else http://localhost:4318.
//! let config = OtlpConfig::new("my-application").from_env();
//! let metrics = otlp::install(config)?;
//! // ... run the scheduler; after its graceful shutdown:
//! metrics.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Why our own exporter
//! The OpenTelemetry SDK crates (`opentelemetry`, `opentelemetry_sdk`, `opentelemetry-otlp`)
//! would aggregate a second time what the runtime already records through the [`metrics`]
//! facade (and this module already aggregates per window for CloudWatch), their periodic reader
//! runs on its own thread unless an experimental async-runtime feature is on, their HTTP
//! transports are reqwest (a second HTTP stack, and its own TLS set-up) or a plain hyper client,
//! and (OTLP/HTTP with their hyper client, 0.31) they add 19 crates to kcl-core's default tree
//! (the five `opentelemetry*`, tonic, tonic-prost, tokio-stream, rand and its helpers,
//! pin-project, futures-executor, ...). What OTLP/HTTP needs here is small: the protobuf messages (declared with `prost`, which
//! kcl-core already uses: [`proto`]) and one `POST` per export (hyper's HTTP/1.1 client, already
//! in the dependency tree for the status page and the AWS SDK). So this feature adds no crate
//! to kcl-core's tree beyond hyper and its helpers.
//!
//! `http://` endpoints with the `otlp` feature: the usual set-up is a collector or agent next to
//! the worker (the OpenTelemetry Collector, the ADOT collector, the CloudWatch agent), which
//! forwards over TLS. `https://` endpoints with the `otlp-https` feature: rustls with aws-lc-rs
//! and the system's root certificates (plus [`OtlpConfig::certificate`]), the TLS stack the AWS
//! SDK's default HTTPS client already brings, so not a second one; without it an `https://`
//! endpoint is refused by [`OtlpRecorder::new`]. Authentication is by headers
//! ([`OtlpConfig::header`], `OTEL_EXPORTER_OTLP_HEADERS`); AWS SigV4 signing (CloudWatch's own
//! OTLP endpoint) is not done here: send through a collector with the `sigv4auth` extension.
//!
//! # Metrics
//! The name published is the Java KCL's CloudWatch name (see `metrics::cloudwatch`) transformed
//! as the Java KCL 3.5 does: a rename for a few names (`MillisBehindLatest` →
//! `consumer.lag.duration`, `DataBytesProcessed` → `records.size`, `NumWorkers` → `workers`), else
//! `:` → `.`, a trailing `.Time` → `.duration`, a trailing `.Count` dropped, and each
//! dot-separated part from PascalCase/camelCase to snake_case (`RecordProcessor.processRecords`
//! → `record_processor.process_records`); then the prefix `aws.kinesis.client.`. The instrument
//! is Java's choice: a gauge for `CurrentLeases`, `TotalLeases`, `NumWorkers`; a counter (a
//! monotonic sum) for the other `Count` metrics; a histogram for the rest (milliseconds,
//! bytes). Two refinements where Java has no such metric: a metric of ours registered as a
//! gauge with unit Count is a gauge (`LeaseStore.ReadUnits`, a running total), and your own
//! metrics (unit None) keep the kind they are registered with. Histograms carry count, sum, min
//! and max in a single bucket (no bucket bounds), as the CloudWatch statistic sets.
//!
//! | our name | OTel name (`aws.kinesis.client.` +) | instrument | unit | level | attributes (by default) |
//! |---|---|---|---|---|---|
//! | `RecordsProcessed` | `records_processed` | counter | `1` | SUMMARY | operation `ProcessTask`, shard.id |
//! | `BytesProcessed` | `records.size` | histogram | `By` | SUMMARY | operation, shard.id |
//! | `MillisBehindLatest` | `consumer.lag.duration` | histogram | `ms` | SUMMARY | operation, shard.id |
//! | `ProcessTask.Time` (seconds) | `record_processor.process_records.duration` | histogram | `ms` | SUMMARY | operation, shard.id |
//! | `ProcessorErrors` | `processor_errors` | counter | `1` | SUMMARY | operation, shard.id |
//! | `RecordsFailedProcessing` | `records_failed_processing` | counter | `1` | SUMMARY | operation, shard.id |
//! | `SkippedRecords` | `skipped_records` | counter | `1` | DETAILED | operation, shard.id |
//! | `GetRecords.Throttled` | `get_records.throttled` | counter | `1` | DETAILED | operation, shard.id |
//! | `ExpiredIterator` | `expired_iterator` | counter | `1` | DETAILED | operation, shard.id |
//! | `KplMisplacedRecords` | `kpl_misplaced_records` | counter | `1` | DETAILED | operation, shard.id |
//! | `KplDeaggregationFailures` | `kpl_deaggregation_failures` | counter | `1` | DETAILED | operation |
//! | `CurrentLeases` | `current_leases` | gauge | `1` | SUMMARY | operation `RenewAllLeases` |
//! | `LostLeases` | `lost_leases` | counter | `1` | SUMMARY | operation `RenewAllLeases` |
//! | `RenewLease.Failures` | `renew_lease.failures` | counter | `1` | DETAILED | operation `RenewAllLeases` |
//! | `TakenLeases` | `taken_leases` | counter | `1` | SUMMARY | operation `TakeLeases` |
//! | `LeasesStolen` | `leases_stolen` | counter | `1` | SUMMARY | operation `TakeLeases` |
//! | `TotalLeases` | `total_leases` | gauge | `1` | DETAILED | operation `TakeLeases` |
//! | `LiveWorkers` | `workers` (Java's `NumWorkers`) | gauge | `1` | SUMMARY | operation `TakeLeases` |
//! | `LeaseTable.Scans` | `lease_table.scans` | counter | `1` | DETAILED | operation `TakeLeases` |
//! | `LeaseStore.Calls`, `.Errors`, `.RowsRead`, `.WriteUnits` | `lease_store.calls`, ... | counter | `1` | DETAILED | operation `LeaseStore.<op>` |
//! | `LeaseStore.ReadUnits` | `lease_store.read_units` | gauge | `1` | DETAILED | operation `LeaseStore.<op>` |
//! | any other name (your own metrics) | transformed the same way | as registered | `1` | DETAILED | operation from its `operation` label, or `Application` |
//!
//! # Attributes, levels, temporality
//! The CloudWatch dimensions, renamed as in Java: `Operation` → `aws.kinesis.operation`,
//! `ShardId` → `aws.kinesis.shard.id`, `StreamId` → `aws.kinesis.stream_name` (a multi-stream
//! application's `account:stream:creationEpoch`, as Java's), `WorkerIdentifier` →
//! `aws.kinesis.consumer.name`. As in Java, the enabled dimensions and the level apply as for
//! CloudWatch ([`OtlpConfig::enabled_dimensions`], default `Operation` and `ShardId`;
//! [`OtlpConfig::level`], default DETAILED). Counters and histograms are cumulative by default
//! (the OpenTelemetry SDKs' default, which Prometheus-style backends need; a series' start time
//! is when it was first exported) or delta ([`Temporality::Delta`]); gauges are the last value
//! of the window. Series of shards that left the worker stop being exported; their cumulative
//! state is forgotten after [`crate::metrics::SHARD_SERIES_IDLE_TIMEOUT`] without values.
//!
//! # Configuration
//! [`OtlpConfig::new`] takes the application name (`service.name`) and the defaults: endpoint
//! `http://localhost:4318`, an export every 60 s (the OpenTelemetry SDKs' default
//! `OTEL_METRIC_EXPORT_INTERVAL`, which is what the Java KCL's OTel backend exports with unless
//! the application configures its SDK otherwise; the CloudWatch publisher's 10 s window would
//! send six times as many requests for the same dashboards), a 10 s timeout per request.
//! [`OtlpConfig::from_env`] reads the standard variables: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`
//! (used as it is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/metrics` appended),
//! `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_METRICS_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_SERVICE_NAME` (overrides the application name), `OTEL_METRIC_EXPORT_INTERVAL` and
//! `OTEL_EXPORTER_OTLP_TIMEOUT` / `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` (milliseconds),
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` / `OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE` (a PEM file of
//! trusted certificates), and `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (`cumulative`
//! or `delta`). Only OTLP/HTTP with protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, port
//! 4318); not gRPC (port 4317).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::java::{
    call_exporter, run_exporter, Aggregator, Described, FacadeKind, Window, WindowCommand, WindowExporter,
};
pub use super::java::{MetricUnit, MetricsLevel, OPERATION, SHARD_ID, STREAM_ID, WORKER_IDENTIFIER};

pub mod proto;
mod transport;

use transport::HttpSink;

/// The prefix of every instrument name, as the Java KCL's.
pub const NAME_PREFIX: &str = "aws.kinesis.client.";
/// The instrumentation scope (meter) name: the Java KCL's.
pub const SCOPE_NAME: &str = "software.amazon.kinesis";
/// The attribute of the `Operation` dimension.
pub const ATTRIBUTE_OPERATION: &str = "aws.kinesis.operation";
/// The attribute of the `ShardId` dimension.
pub const ATTRIBUTE_SHARD_ID: &str = "aws.kinesis.shard.id";
/// The attribute of the `StreamId` dimension.
pub const ATTRIBUTE_STREAM_NAME: &str = "aws.kinesis.stream_name";
/// The attribute of the `WorkerIdentifier` dimension.
pub const ATTRIBUTE_CONSUMER_NAME: &str = "aws.kinesis.consumer.name";
/// The endpoint when none is configured (an OpenTelemetry collector on this host).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
/// The path of the metrics service, appended to a base endpoint.
pub const METRICS_PATH: &str = "/v1/metrics";

/// The Java KCL's names that are gauges (`OtelMetricsScope`), by their CloudWatch name.
const JAVA_GAUGES: &[&str] = &[
    "CurrentLeases",
    "TotalLeases",
    "NumWorkers",
    "ExpiredLeases",
    "VeryOldLeases",
    "ActiveStreams.Count",
    "StreamsPendingDeletion.Count",
    "QueueSize",
    "NumStreamsToSync",
    "NumWorkersWithInvalidEntry",
    "NumWorkersWithFailingWorkerMetric",
    "GsiReadyStatus",
    "WorkerMetricsReadyStatus",
    "CurrentState:3xWorker",
    "CurrentState:2xCompatibleWorker",
];

/// The Java KCL's renames (`OtelMetricNameTransformer`).
const JAVA_RENAMES: &[(&str, &str)] = &[
    ("MillisBehindLatest", "consumer.lag.duration"),
    ("DataBytesProcessed", "records.size"),
    ("ActiveStreams.Count", "streams.active"),
    ("StreamsPendingDeletion.Count", "streams.pending_deletion"),
    ("NonExistingStreamDelete.Count", "streams.deleted_nonexistent"),
    ("DeletedStreams.Count", "streams.deleted"),
    ("NumStreamsToSync", "streams.pending_sync"),
    ("QueueSize", "stream_id_cache.queue.size"),
    ("NumWorkers", "workers"),
    ("NumWorkersWithInvalidEntry", "workers.invalid_entry"),
    (
        "NumWorkersWithFailingWorkerMetric",
        "workers.failing_worker_metric",
    ),
];

/// The kind of OpenTelemetry instrument a metric is exported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Instrument {
    /// A monotonic sum.
    Counter,
    /// The last value.
    Gauge,
    /// Count, sum, min and max of the values.
    Histogram,
}

/// Counters' and histograms' aggregation temporality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Temporality {
    /// Totals since the series was first exported (the default).
    #[default]
    Cumulative,
    /// The values of each export interval only.
    Delta,
}

/// How one of our metrics (or any other, from its name, labels and facade kind) is exported:
/// see the module docs' table.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OtelMapping {
    /// The instrument name (`aws.kinesis.client.` + the transformed Java name).
    pub name: String,
    /// The instrument.
    pub instrument: Instrument,
    /// The UCUM unit (`1`, `ms`, `By`, `s`).
    pub unit: &'static str,
    /// The `aws.kinesis.operation` attribute.
    pub operation: String,
    /// The lowest level at which it is exported.
    pub level: MetricsLevel,
}

/// How a metric of the runtime is exported: `registered_as` is how it was registered through
/// the facade (counter, gauge or histogram), which decides only where Java has no such metric.
pub fn otel_mapping(name: &str, labels: &[(&str, &str)], registered_as: Instrument) -> OtelMapping {
    let java = super::java::mapping(name, labels);
    OtelMapping {
        name: otel_name(&java.name),
        instrument: instrument(&java.name, java.unit, registered_as),
        unit: ucum_unit(java.unit),
        operation: java.operation,
        level: java.level,
    }
}

fn instrument(java_name: &str, unit: MetricUnit, registered_as: Instrument) -> Instrument {
    if JAVA_GAUGES.contains(&java_name) {
        return Instrument::Gauge;
    }
    match (unit, registered_as) {
        (MetricUnit::Count, Instrument::Gauge) => Instrument::Gauge,
        (MetricUnit::Count, _) => Instrument::Counter,
        (MetricUnit::None, kind) => kind,
        _ => Instrument::Histogram,
    }
}

/// A CloudWatch unit as UCUM, as the Java KCL maps them (`Count` and `None` are `1`).
pub fn ucum_unit(unit: MetricUnit) -> &'static str {
    match unit {
        MetricUnit::Count | MetricUnit::None => "1",
        MetricUnit::Bytes => "By",
        MetricUnit::Milliseconds => "ms",
        MetricUnit::Seconds => "s",
    }
}

/// The attribute of a Java dimension (others keep their name, as in Java).
pub fn attribute_of_dimension(dimension: &str) -> &str {
    match dimension {
        OPERATION => ATTRIBUTE_OPERATION,
        SHARD_ID => ATTRIBUTE_SHARD_ID,
        STREAM_ID => ATTRIBUTE_STREAM_NAME,
        WORKER_IDENTIFIER => ATTRIBUTE_CONSUMER_NAME,
        other => other,
    }
}

/// A Java KCL (CloudWatch) metric name as the Java KCL 3.5 names its OpenTelemetry instrument:
/// see the module docs (e.g. `RecordsProcessed` → `aws.kinesis.client.records_processed`).
pub fn otel_name(java_name: &str) -> String {
    let body = match JAVA_RENAMES.iter().find(|(from, _)| *from == java_name) {
        Some((_, to)) => (*to).to_owned(),
        None => {
            let mut name = java_name.replace(':', ".");
            if let Some(stem) = name.strip_suffix(".Time") {
                name = format!("{stem}.duration");
            }
            if let Some(stem) = name.strip_suffix(".Count") {
                name = stem.to_owned();
            }
            name.split('.')
                .map(snake_case)
                .collect::<Vec<_>>()
                .join(".")
                .to_lowercase()
        }
    };
    sanitize(format!("{NAME_PREFIX}{body}"))
}

/// `_` at a lower-case (or digit) to upper-case step, and before the last capital of a run of
/// capitals followed by a lower-case letter (`GSIReady` → `GSI_Ready`).
fn snake_case(part: &str) -> String {
    let chars: Vec<char> = part.chars().collect();
    let mut out = String::with_capacity(part.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_uppercase() {
            let previous = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if previous.is_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.push(c);
    }
    out
}

/// An instrument name as OpenTelemetry allows it: `[A-Za-z][A-Za-z0-9_.\-/]*`, at most 255
/// characters (other characters become `_`).
fn sanitize(name: String) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'm');
    }
    out.truncate(255);
    out
}

/// Errors of the OTLP exporter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// [`install`]: another global `metrics` recorder was installed first.
    #[error("a global metrics recorder is already installed")]
    RecorderAlreadySet,
    /// The exporter task is started on the current Tokio runtime, and there is none.
    #[error("no Tokio runtime: the OTLP exporter must be started from within one")]
    NoRuntime,
    /// The endpoint is not an `http://host[:port][/path]` URL (or `https://` with the
    /// `otlp-https` feature), or its TLS set-up failed.
    #[error("OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The exporter task has stopped ([`OtlpHandle::shutdown`] was called).
    #[error("the OTLP metrics exporter has stopped")]
    Stopped,
    /// Some data points could not be exported (the requests failed, or were throttled after
    /// every retry); they were dropped.
    #[error("{points} OTLP data points could not be exported: {message}")]
    Export {
        /// How many points were dropped.
        points: usize,
        /// The last error.
        message: String,
    },
}

/// The exporter's configuration: endpoint, resource, level, attributes, intervals.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// The full URL requests are posted to (default `http://localhost:4318/v1/metrics`).
    pub endpoint: String,
    /// Extra request headers (e.g. an API key for a vendor's collector).
    pub headers: Vec<(String, String)>,
    /// The resource's `service.name`: the application name.
    pub service_name: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Which metrics are exported (default [`MetricsLevel::Detailed`]).
    pub level: MetricsLevel,
    /// The Java dimensions exported as attributes; `Operation` is always added (default:
    /// `Operation`, `ShardId`, as Java's).
    pub enabled_dimensions: BTreeSet<String>,
    /// How often a window is closed and exported (default 60 s).
    pub export_interval: Duration,
    /// Counters' and histograms' temporality (default cumulative).
    pub temporality: Temporality,
    /// The most data points waiting to be sent; the overflow is dropped (default 10,000).
    pub max_queue_size: usize,
    /// The most data points per request (default 1,000).
    pub max_points_per_request: usize,
    /// How many times a throttled (or otherwise transient) request is retried (default 3).
    pub max_retries: usize,
    /// How long one request may take (default 10 s).
    pub timeout: Duration,
    /// A PEM file of certificates trusted besides the system's roots, for an `https://`
    /// endpoint (feature `otlp-https`; `OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub certificate: Option<std::path::PathBuf>,
}

impl OtlpConfig {
    /// The defaults (see the module docs), without reading the environment.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            endpoint: format!("{DEFAULT_ENDPOINT}{METRICS_PATH}"),
            headers: Vec::new(),
            service_name: service_name.into(),
            resource_attributes: Vec::new(),
            level: MetricsLevel::Detailed,
            enabled_dimensions: [OPERATION, SHARD_ID].into_iter().map(String::from).collect(),
            export_interval: Duration::from_secs(60),
            temporality: Temporality::Cumulative,
            max_queue_size: 10_000,
            max_points_per_request: 1_000,
            max_retries: 3,
            timeout: Duration::from_secs(10),
            certificate: None,
        }
    }

    /// Applies the standard `OTEL_*` variables of the environment (see the module docs); those
    /// unset or unreadable leave the setting as it is (an unreadable one is logged at warn).
    pub fn from_env(self) -> Self {
        self.with_env(|name| std::env::var(name).ok())
    }

    fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(endpoint) = var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            self.endpoint = endpoint.trim().to_owned();
        } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self = self.endpoint(base.trim());
        }
        for name in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"] {
            if let Some(headers) = var(name) {
                self.headers.extend(parse_pairs(&headers));
            }
        }
        if let Some(attributes) = var("OTEL_RESOURCE_ATTRIBUTES") {
            for (key, value) in parse_pairs(&attributes) {
                if key == "service.name" {
                    self.service_name = value;
                } else {
                    self.resource_attributes.push((key, value));
                }
            }
        }
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            self.service_name = name.trim().to_owned();
        }
        let millis = |name: &str| {
            let value = var(name)?;
            match value.trim().parse::<u64>() {
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    tracing::warn!(variable = name, %value, "not a number of milliseconds; ignored");
                    None
                }
            }
        };
        if let Some(interval) = millis("OTEL_METRIC_EXPORT_INTERVAL") {
            self = self.export_interval(interval);
        }
        if let Some(timeout) =
            millis("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT").or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
        {
            self = self.timeout(timeout);
        }
        if let Some(path) =
            var("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE").or_else(|| var("OTEL_EXPORTER_OTLP_CERTIFICATE"))
        {
            self.certificate = Some(path.trim().into());
        }
        if let Some(preference) = var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
            match preference.trim().to_ascii_lowercase().as_str() {
                "cumulative" => self.temporality = Temporality::Cumulative,
                "delta" => self.temporality = Temporality::Delta,
                _ => tracing::warn!(%preference, "unknown OTLP temporality preference; ignored"),
            }
        }
        self
    }

    /// Sets the endpoint from a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (`http://collector:4318`): `/v1/metrics` is appended, unless the URL already ends with it.
    pub fn endpoint(mut self, base: &str) -> Self {
        let base = base.trim();
        self.endpoint = if base.trim_end_matches('/').ends_with(METRICS_PATH) {
            base.to_owned()
        } else {
            format!("{}{METRICS_PATH}", base.trim_end_matches('/'))
        };
        self
    }

    /// Sets [`Self::level`].
    pub fn level(mut self, level: MetricsLevel) -> Self {
        self.level = level;
        self
    }

    /// Sets [`Self::enabled_dimensions`] (Java names; `Operation` is added), e.g.
    /// `[SHARD_ID, WORKER_IDENTIFIER]`.
    pub fn enabled_dimensions<I, S>(mut self, dimensions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.enabled_dimensions = dimensions.into_iter().map(Into::into).collect();
        self.enabled_dimensions.insert(OPERATION.to_owned());
        self
    }

    /// Sets [`Self::export_interval`] (at least 1 ms).
    pub fn export_interval(mut self, interval: Duration) -> Self {
        self.export_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`Self::temporality`].
    pub fn temporality(mut self, temporality: Temporality) -> Self {
        self.temporality = temporality;
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a resource attribute.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource_attributes.push((key.into(), value.into()));
        self
    }

    /// Sets [`Self::max_queue_size`] (at least 1).
    pub fn max_queue_size(mut self, points: usize) -> Self {
        self.max_queue_size = points.max(1);
        self
    }

    /// Sets [`Self::max_points_per_request`] (at least 1).
    pub fn max_points_per_request(mut self, points: usize) -> Self {
        self.max_points_per_request = points.max(1);
        self
    }

    /// Sets [`Self::max_retries`].
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets [`Self::certificate`].
    pub fn certificate(mut self, pem_file: impl Into<std::path::PathBuf>) -> Self {
        self.certificate = Some(pem_file.into());
        self
    }

    /// Sets [`Self::timeout`] (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

/// `key=value,key2=value2` (the `OTEL_*_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` form;
/// `%XX` escapes are decoded).
fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = percent_decode(key.trim());
            (!key.is_empty()).then(|| (key, percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Aggregation
// ---------------------------------------------------------------------------------------------

/// What a series is exported as: instrument name, kind, unit and attributes (sorted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PointKey {
    name: String,
    instrument: Instrument,
    unit: &'static str,
    attributes: Vec<(String, String)>,
}

type Registry = Aggregator<PointKey>;

fn point_key(described: Described) -> PointKey {
    let registered_as = match described.kind {
        FacadeKind::Counter => Instrument::Counter,
        FacadeKind::Gauge => Instrument::Gauge,
        FacadeKind::Histogram => Instrument::Histogram,
    };
    let java = &described.mapping;
    let mut attributes: Vec<(String, String)> = described
        .dimensions
        .into_iter()
        .map(|(dimension, value)| (attribute_of_dimension(&dimension).to_owned(), value))
        .collect();
    attributes.sort();
    PointKey {
        name: otel_name(&java.name),
        instrument: instrument(&java.name, java.unit, registered_as),
        unit: ucum_unit(java.unit),
        attributes,
    }
}

/// One data point ready to be sent.
#[derive(Clone, Debug)]
struct Point {
    key: PointKey,
    values: Window,
    start_nanos: u64,
    time_nanos: u64,
}

/// The running totals of a series under cumulative temporality.
#[derive(Debug)]
struct Cumulative {
    start_nanos: u64,
    values: Window,
    last_values_nanos: u64,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The [`metrics::Recorder`] that exports over OTLP; see the module docs.
#[derive(Debug)]
pub struct OtlpRecorder {
    registry: Arc<Registry>,
}

impl OtlpRecorder {
    /// The recorder and the handle of its exporter task, started on the current Tokio runtime.
    /// Install the recorder with [`metrics::set_global_recorder`] (or use [`install`]).
    pub fn new(config: OtlpConfig) -> Result<(Self, OtlpHandle), OtlpError> {
        let sink = Arc::new(HttpSink::new(&config)?);
        Self::with_sink(config, sink)
    }

    fn with_sink(config: OtlpConfig, sink: Arc<dyn PostMetrics>) -> Result<(Self, OtlpHandle), OtlpError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
        let registry = Arc::new(Registry::with_keys(
            config.level,
            &config.enabled_dimensions,
            point_key,
        ));
        let counters = Arc::new(ExporterCounters::default());
        let (commands, receiver) = mpsc::channel(16);
        let mut resource = vec![proto::KeyValue::string("service.name", &config.service_name)];
        resource.extend(
            config
                .resource_attributes
                .iter()
                .filter(|(k, _)| k != "service.name")
                .map(|(k, v)| proto::KeyValue::string(k, v)),
        );
        resource.push(proto::KeyValue::string("telemetry.sdk.language", "rust"));
        resource.push(proto::KeyValue::string("telemetry.sdk.name", "kcl-core"));
        resource.push(proto::KeyValue::string(
            "telemetry.sdk.version",
            env!("CARGO_PKG_VERSION"),
        ));
        let exporter = Exporter {
            registry: registry.clone(),
            sink,
            counters: counters.clone(),
            queue: VecDeque::new(),
            resource,
            export_interval: config.export_interval,
            temporality: config.temporality,
            max_queue_size: config.max_queue_size,
            max_points_per_request: config.max_points_per_request,
            max_retries: config.max_retries,
            cumulative: HashMap::new(),
            window_start_nanos: unix_nanos(SystemTime::now()),
            dropped_in_window: 0,
        };
        let every = exporter.export_interval;
        runtime.spawn(run_exporter(exporter, every, receiver));
        Ok((Self { registry }, OtlpHandle { commands, counters }))
    }
}

super::java::aggregating_recorder!(OtlpRecorder);

/// Starts the exporter on the current Tokio runtime and installs its recorder as the global
/// `metrics` recorder.
pub fn install(config: OtlpConfig) -> Result<OtlpHandle, OtlpError> {
    let (recorder, handle) = OtlpRecorder::new(config)?;
    metrics::set_global_recorder(recorder).map_err(|_| OtlpError::RecorderAlreadySet)?;
    Ok(handle)
}

// ---------------------------------------------------------------------------------------------
// Exporting
// ---------------------------------------------------------------------------------------------

/// Counters of the exporter, read through the handle.
#[derive(Debug, Default)]
struct ExporterCounters {
    requests: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// What a failed request was.
#[derive(Debug)]
struct PostError {
    retryable: bool,
    message: String,
}

type PostFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PostError>> + Send + 'a>>;

/// One `POST /v1/metrics` (over HTTP, or a test's).
trait PostMetrics: Send + Sync + 'static {
    fn post(&self, request: proto::ExportMetricsServiceRequest) -> PostFuture<'_>;
}

type Command = WindowCommand<OtlpError>;

struct Exporter {
    registry: Arc<Registry>,
    sink: Arc<dyn PostMetrics>,
    counters: Arc<ExporterCounters>,
    queue: VecDeque<Point>,
    resource: Vec<proto::KeyValue>,
    export_interval: Duration,
    temporality: Temporality,
    max_queue_size: usize,
    max_points_per_request: usize,
    max_retries: usize,
    cumulative: HashMap<PointKey, Cumulative>,
    window_start_nanos: u64,
    dropped_in_window: u64,
}

impl WindowExporter for Exporter {
    type Error = OtlpError;

    async fn export_window(&mut self) -> Result<(), OtlpError> {
        self.export_window().await
    }

    fn recorder_alive(&self) -> bool {
        Arc::strong_count(&self.registry) > 1
    }
}

impl Exporter {
    /// Closes the window, queues its points and sends everything queued.
    async fn export_window(&mut self) -> Result<(), OtlpError> {
        let now = unix_nanos(SystemTime::now());
        let points = self.close_window(now);
        self.enqueue(points);
        if self.dropped_in_window > 0 {
            tracing::warn!(
                dropped = self.dropped_in_window,
                max_queue_size = self.max_queue_size,
                "OTLP metrics queue full: data points dropped this window"
            );
            self.dropped_in_window = 0;
        }
        self.send_queued().await
    }

    /// The points of the window that ends at `now`: deltas, or running totals.
    fn close_window(&mut self, now: u64) -> Vec<Point> {
        let window = self.registry.take_window();
        let start = std::mem::replace(&mut self.window_start_nanos, now);
        let mut points = Vec::with_capacity(window.len());
        for (key, values) in window {
            let point = match (key.instrument, self.temporality) {
                (Instrument::Gauge, _) | (_, Temporality::Delta) => Point {
                    key,
                    values,
                    start_nanos: start,
                    time_nanos: now,
                },
                (_, Temporality::Cumulative) => {
                    let totals = self
                        .cumulative
                        .entry(key.clone())
                        .and_modify(|c| {
                            c.values.merge(&values);
                            c.last_values_nanos = now;
                        })
                        .or_insert(Cumulative {
                            start_nanos: start,
                            values,
                            last_values_nanos: now,
                        });
                    Point {
                        values: totals.values,
                        start_nanos: totals.start_nanos,
                        time_nanos: now,
                        key,
                    }
                }
            };
            points.push(point);
        }
        let idle = u64::try_from(crate::metrics::SHARD_SERIES_IDLE_TIMEOUT.as_nanos())
            .unwrap_or(u64::MAX)
            .max(2 * u64::try_from(self.export_interval.as_nanos()).unwrap_or(u64::MAX));
        self.cumulative
            .retain(|_, c| now.saturating_sub(c.last_values_nanos) <= idle);
        points
    }

    fn enqueue(&mut self, points: Vec<Point>) {
        for point in points {
            if self.queue.len() >= self.max_queue_size {
                self.dropped_in_window += 1;
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.queue.push_back(point);
            }
        }
    }

    async fn send_queued(&mut self) -> Result<(), OtlpError> {
        let mut failure: Option<(usize, String)> = None;
        while !self.queue.is_empty() {
            let take = self.queue.len().min(self.max_points_per_request);
            let batch: Vec<Point> = self.queue.drain(..take).collect();
            let request = encode(&self.resource, &batch, self.temporality);
            if let Err(message) = self.post_with_retries(request).await {
                self.counters
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let dropped = failure.as_ref().map_or(0, |f| f.0) + batch.len();
                tracing::warn!(points = batch.len(), error = %message, "could not export metrics over OTLP");
                failure = Some((dropped, message));
            } else {
                self.counters
                    .exported
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
        match failure {
            None => Ok(()),
            Some((points, message)) => Err(OtlpError::Export { points, message }),
        }
    }

    async fn post_with_retries(&self, request: proto::ExportMetricsServiceRequest) -> Result<(), String> {
        use backon::BackoffBuilder;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.max_retries)
            .with_jitter()
            .with_jitter_seed(crate::jitter::next_seed())
            .build();
        loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            match self.sink.post(request.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(error = %e.message, ?delay, "OTLP export throttled or failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(e.message),
                },
                Err(e) => return Err(e.message),
            }
        }
    }
}

/// One request: the resource, the scope, and one metric per instrument name with its points.
fn encode(
    resource: &[proto::KeyValue],
    points: &[Point],
    temporality: Temporality,
) -> proto::ExportMetricsServiceRequest {
    use proto::MetricData;
    let temporality = match temporality {
        Temporality::Cumulative => proto::AGGREGATION_TEMPORALITY_CUMULATIVE,
        Temporality::Delta => proto::AGGREGATION_TEMPORALITY_DELTA,
    };
    let mut metrics: Vec<proto::Metric> = Vec::new();
    for point in points {
        let attributes: Vec<proto::KeyValue> = point
            .key
            .attributes
            .iter()
            .map(|(k, v)| proto::KeyValue::string(k, v))
            .collect();
        // Points come sorted by key, so those of one instrument are adjacent.
        let same_metric = metrics
            .last()
            .is_some_and(|m| m.name == point.key.name && m.unit == point.key.unit);
        if !same_metric {
            metrics.push(proto::Metric {
                name: point.key.name.clone(),
                description: String::new(),
                unit: point.key.unit.to_owned(),
                data: Some(match point.key.instrument {
                    Instrument::Counter => MetricData::Sum(proto::Sum {
                        data_points: Vec::new(),
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    }),
                    Instrument::Gauge => MetricData::Gauge(proto::Gauge {
                        data_points: Vec::new(),
                    }),
                    Instrument::Histogram => MetricData::Histogram(proto::Histogram {
                        data_points: Vec::new(),
                        aggregation_temporality: temporality,
                    }),
                }),
            });
        }
        let Some(metric) = metrics.last_mut() else {
            continue;
        };
        let stats = point.values.stats;
        let number = |value: f64, attributes: Vec<proto::KeyValue>| proto::NumberDataPoint {
            attributes,
            start_time_unix_nano: point.start_nanos,
            time_unix_nano: point.time_nanos,
            as_double: Some(value),
            flags: 0,
        };
        match &mut metric.data {
            Some(MetricData::Sum(sum)) => sum.data_points.push(number(stats.sum, attributes)),
            Some(MetricData::Gauge(gauge)) => gauge.data_points.push(number(point.values.last, attributes)),
            Some(MetricData::Histogram(histogram)) => {
                // A count is a whole number of samples.
                let count = stats.sample_count as u64;
                histogram.data_points.push(proto::HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: point.start_nanos,
                    time_unix_nano: point.time_nanos,
                    count,
                    sum: Some(stats.sum),
                    bucket_counts: vec![count],
                    explicit_bounds: Vec::new(),
                    flags: 0,
                    min: Some(stats.minimum),
                    max: Some(stats.maximum),
                })
            }
            None => {}
        }
    }
    proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(proto::Resource {
                attributes: resource.to_vec(),
                dropped_attributes_count: 0,
            }),
            scope_metrics: vec![proto::ScopeMetrics {
                scope: Some(proto::InstrumentationScope {
                    name: SCOPE_NAME.to_owned(),
                    version: String::new(),
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The handle of an [`OtlpRecorder`]'s exporter task: flush, shut down, counters.
#[derive(Clone, Debug)]
pub struct OtlpHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<ExporterCounters>,
}

impl OtlpHandle {
    async fn call(
        &self,
        command: fn(oneshot::Sender<Result<(), OtlpError>>) -> Command,
    ) -> Result<(), OtlpError> {
        call_exporter(&self.commands, command, || OtlpError::Stopped).await
    }

    /// Closes the current window and exports it with everything queued; returns once the
    /// requests are done.
    pub async fn flush(&self) -> Result<(), OtlpError> {
        self.call(Command::Flush).await
    }

    /// Exports the last window (as [`Self::flush`]) and stops the exporter task. The recorder
    /// records nothing that is exported after this.
    pub async fn shutdown(&self) -> Result<(), OtlpError> {
        self.call(Command::Shutdown).await
    }

    /// Data points dropped because the queue was full.
    pub fn dropped_points(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Data points exported.
    pub fn exported_points(&self) -> u64 {
        self.counters.exported.load(Ordering::Relaxed)
    }

    /// Data points dropped because their request failed (after its retries).
    pub fn failed_points(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Requests made, retries included.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
