//! The runtime's metrics in Amazon CloudWatch, as the Java KCL publishes them (feature
//! `cloudwatch`): same namespace (the application name), metric names, units, `Operation`,
//! `ShardId`, `WorkerIdentifier` and `StreamId` dimensions, metrics levels and buffering, so that
//! the dashboards and alarms of a Java KCL application keep working after the move.
//!
//! [`CloudWatchRecorder`] is a [`metrics::Recorder`]: install it as the global recorder
//! ([`install`], or [`metrics::set_global_recorder`] with [`CloudWatchRecorder::new`]). The
//! recorder only updates in-memory aggregates (one statistic set per series: `SampleCount`,
//! `Sum`, `Minimum`, `Maximum`); a publisher task closes a window every
//! [`CloudWatchConfig::buffer_time`] (Java's `metricsBufferTimeMillis`, 10 s), merges the series
//! that the enabled dimensions make equal, queues the datums (at most
//! [`CloudWatchConfig::max_queue_size`], Java's `metricsMaxQueueSize`, 10,000; the overflow is
//! dropped, counted by [`CloudWatchHandle::dropped_datums`] and logged at warn once per window)
//! and sends them with `PutMetricData` in calls of up to 1,000 datums and under 1 MB (CloudWatch's
//! limits per request), retrying throttled calls with backoff. [`CloudWatchHandle::flush`] publishes
//! the current window now; [`CloudWatchHandle::shutdown`] publishes the last one and stops the
//! task: call it after the scheduler's graceful shutdown.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl_core::metrics::cloudwatch::{self, CloudWatchConfig, MetricsLevel};
//!
//! let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let config = CloudWatchConfig::new("my-application", aws_sdk_cloudwatch::Client::new(&sdk))
//!     .level(MetricsLevel::Detailed);
//! let metrics = cloudwatch::install(config)?;
//! // ... run the scheduler; after its graceful shutdown:
//! metrics.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//! Our name (the [`metrics`](crate::metrics) facade's), the name published (the Java KCL's where
//! it has one), the `Operation` dimension, the unit, the level, and the other dimensions (from the
//! labels: `shard_id` → `ShardId`, `worker_id` → `WorkerIdentifier`, `stream` → `StreamId`; a
//! multi-stream application's `shard_id`, a lease key `account:stream:creationEpoch:shardId`,
//! gives `StreamId` = `account:stream:creationEpoch` and `ShardId`, as the Java KCL's).
//! Every `process_records` batch, lease round or lease-store call is one sample, as in Java:
//! `Sum` is the total over the window and `SampleCount` the number of batches or rounds.
//!
//! | our name | published as | Operation | unit | level | dimensions | Java KCL (2.x/3.x) |
//! |---|---|---|---|---|---|---|
//! | `RecordsProcessed` | `RecordsProcessed` | `ProcessTask` | Count | SUMMARY | ShardId, WorkerIdentifier | same |
//! | `BytesProcessed` | `DataBytesProcessed` | `ProcessTask` | Bytes | SUMMARY | ShardId, WorkerIdentifier | same |
//! | `MillisBehindLatest` | `MillisBehindLatest` | `ProcessTask` | Milliseconds | SUMMARY | ShardId, WorkerIdentifier | same |
//! | `ProcessTask.Time` (seconds) | `RecordProcessor.processRecords.Time` | `ProcessTask` | Milliseconds | SUMMARY | ShardId, WorkerIdentifier | same |
//! | `ProcessorErrors` | `ProcessorErrors` | `ProcessTask` | Count | SUMMARY | ShardId, WorkerIdentifier | Java: `Success` = 0 |
//! | `RecordsFailedProcessing` | `RecordsFailedProcessing` | `ProcessTask` | Count | SUMMARY | ShardId, WorkerIdentifier | Java 3.5.4: same (Java skips the batch; here it is delivered again unless skipped by policy) |
//! | `SkippedRecords` | `SkippedRecords` | `ProcessTask` | Count | DETAILED | ShardId, WorkerIdentifier | none |
//! | `GetRecords.Throttled` | `GetRecords.Throttled` | `ProcessTask` | Count | DETAILED | ShardId, WorkerIdentifier | none (logged) |
//! | `ExpiredIterator` | `ExpiredIterator` | `ProcessTask` | Count | DETAILED | ShardId, WorkerIdentifier | none |
//! | `KplMisplacedRecords` | `KplMisplacedRecords` | `ProcessTask` | Count | DETAILED | ShardId, WorkerIdentifier | none |
//! | `KplDeaggregationFailures` | `KplDeaggregationFailures` | `ProcessTask` | Count | DETAILED | none | none |
//! | `CurrentLeases` | `CurrentLeases` | `RenewAllLeases` | Count | SUMMARY | WorkerIdentifier | same |
//! | `LostLeases` | `LostLeases` | `RenewAllLeases` | Count | SUMMARY | WorkerIdentifier | same |
//! | `RenewLease.Failures` | `RenewLease.Failures` | `RenewAllLeases` | Count | DETAILED | WorkerIdentifier | Java: `RenewLease.Success` = 0 |
//! | `TakenLeases` | `TakenLeases` | `TakeLeases` | Count | SUMMARY | WorkerIdentifier | same |
//! | `LeasesStolen` | `LeasesStolen` | `TakeLeases` | Count | SUMMARY | WorkerIdentifier | none |
//! | `TotalLeases` | `TotalLeases` | `TakeLeases` | Count | DETAILED | WorkerIdentifier | same |
//! | `LiveWorkers` | `NumWorkers` | `TakeLeases` | Count | SUMMARY | WorkerIdentifier | same |
//! | `LeaseTable.Scans` | `LeaseTable.Scans` | `TakeLeases` | Count | DETAILED | WorkerIdentifier | Java: `ListLeases.Success` |
//! | `LeaseStore.Calls`, `.Errors`, `.RowsRead`, `.ReadUnits`, `.WriteUnits` | the same | `LeaseStore.<op>` | Count | DETAILED | WorkerIdentifier | none |
//! | any other name (your own metrics) | the same | its `operation` label, or `Application` | None | DETAILED | as labelled | |
//!
//! # Levels and dimensions
//! As Java's `MetricsLevel` and `metricsEnabledDimensions`: at [`MetricsLevel::None`] nothing is
//! published; at [`MetricsLevel::Summary`] the DETAILED metrics above are not (the per-shard
//! SUMMARY ones are, with their `ShardId`, as in Java); at [`MetricsLevel::Detailed`] (the default)
//! all are. A dimension is published only when enabled: `Operation` always (Java's
//! `METRICS_ALWAYS_ENABLED_DIMENSIONS`), and by default `ShardId` (Java's
//! `DEFAULT_METRICS_ENABLED_DIMENSIONS`: `WorkerIdentifier` is off by default, as in Java; enable
//! it, and `StreamId` for multi-stream applications, with
//! [`CloudWatchConfig::enabled_dimensions`]). Series that differ only in a disabled dimension
//! are merged into one statistic set (e.g. the workers' `TakenLeases` without
//! `WorkerIdentifier`).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::java::{call_exporter, run_exporter, Aggregator, Described, WindowCommand, WindowExporter};
pub use super::java::{mapping, MetricMapping, MetricUnit, MetricsLevel, StatisticSet};
pub use super::java::{OPERATION, SHARD_ID, STREAM_ID, WORKER_IDENTIFIER};

/// The most datums one `PutMetricData` call carries (CloudWatch's limit per request).
pub const MAX_DATUMS_PER_CALL: usize = 1_000;
/// The largest `PutMetricData` request body, in bytes, that a call is kept under (CloudWatch's
/// limit is 1 MB; the estimate of a datum's size is an upper bound).
pub const MAX_REQUEST_BYTES: usize = 1_000_000;

/// Errors of the CloudWatch publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudWatchError {
    /// [`install`]: another global `metrics` recorder was installed first.
    #[error("a global metrics recorder is already installed")]
    RecorderAlreadySet,
    /// The publisher task is started on the current Tokio runtime, and there is none.
    #[error("no Tokio runtime: the CloudWatch publisher must be started from within one")]
    NoRuntime,
    /// The publisher task has stopped ([`CloudWatchHandle::shutdown`] was called).
    #[error("the CloudWatch metrics publisher has stopped")]
    Stopped,
    /// Some datums could not be published (the calls failed, or were throttled after every
    /// retry); they were dropped.
    #[error("{datums} datums could not be published to CloudWatch: {message}")]
    Publish {
        /// How many datums were dropped.
        datums: usize,
        /// The last error.
        message: String,
    },
}

/// The publisher's configuration: namespace, level, dimensions, buffering, and the client.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CloudWatchConfig {
    /// The namespace: the application name, as in Java.
    pub namespace: String,
    /// Which metrics are published (default [`MetricsLevel::Detailed`]).
    pub level: MetricsLevel,
    /// The dimensions published; `Operation` is always added (default: `Operation`, `ShardId`).
    pub enabled_dimensions: BTreeSet<String>,
    /// How long values are aggregated before they are published (default 10 s).
    pub buffer_time: Duration,
    /// The most datums waiting to be sent; the overflow is dropped (default 10,000).
    pub max_queue_size: usize,
    /// The most datums per `PutMetricData` call (default and maximum 1,000).
    pub max_datums_per_call: usize,
    /// How many times a throttled (or otherwise transient) call is retried (default 3).
    pub max_retries: usize,
    client: aws_sdk_cloudwatch::Client,
}

impl CloudWatchConfig {
    /// The defaults (Java's): level DETAILED, dimensions `Operation` and `ShardId`, a 10 s buffer,
    /// a queue of 10,000 datums, calls of up to 1,000 datums.
    pub fn new(namespace: impl Into<String>, client: aws_sdk_cloudwatch::Client) -> Self {
        Self {
            namespace: namespace.into(),
            level: MetricsLevel::Detailed,
            enabled_dimensions: [OPERATION, SHARD_ID].into_iter().map(String::from).collect(),
            buffer_time: Duration::from_secs(10),
            max_queue_size: 10_000,
            max_datums_per_call: MAX_DATUMS_PER_CALL,
            max_retries: 3,
            client,
        }
    }

    /// Sets [`Self::level`].
    pub fn level(mut self, level: MetricsLevel) -> Self {
        self.level = level;
        self
    }

    /// Sets [`Self::enabled_dimensions`] (`Operation` is added); e.g.
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

    /// Sets [`Self::buffer_time`] (at least 1 ms).
    pub fn buffer_time(mut self, buffer_time: Duration) -> Self {
        self.buffer_time = buffer_time.max(Duration::from_millis(1));
        self
    }

    /// Sets [`Self::max_queue_size`] (at least 1).
    pub fn max_queue_size(mut self, datums: usize) -> Self {
        self.max_queue_size = datums.max(1);
        self
    }

    /// Sets [`Self::max_datums_per_call`] (1 to 1,000).
    pub fn max_datums_per_call(mut self, datums: usize) -> Self {
        self.max_datums_per_call = datums.clamp(1, MAX_DATUMS_PER_CALL);
        self
    }

    /// Sets [`Self::max_retries`].
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregation
// ---------------------------------------------------------------------------------------------

/// One datum of a `PutMetricData` call: a metric, its dimensions (sorted by name), its unit
/// and one window's statistic set.
#[derive(Clone, Debug, PartialEq)]
pub struct Datum {
    /// The metric name.
    pub name: String,
    /// `(name, value)`, sorted by name.
    pub dimensions: Vec<(String, String)>,
    /// The unit.
    pub unit: MetricUnit,
    /// The window's values.
    pub statistics: StatisticSet,
    /// The end of the window.
    pub timestamp: SystemTime,
}

impl Datum {
    /// An upper bound of the datum's size in a request body (the query protocol's form, the
    /// most verbose of CloudWatch's protocols).
    pub fn estimated_size(&self) -> usize {
        // `MetricData.member.NNNN.` prefixes, field names, four statistic values, a timestamp.
        let fixed = 400;
        let dimensions: usize = self
            .dimensions
            .iter()
            .map(|(n, v)| 100 + n.len() + 3 * v.len())
            .sum();
        fixed + 3 * self.name.len() + dimensions
    }
}

/// Splits datums into `PutMetricData` calls: at most `max_datums` each, and under `max_bytes`
/// by [`Datum::estimated_size`].
pub fn batches(datums: Vec<Datum>, max_datums: usize, max_bytes: usize) -> Vec<Vec<Datum>> {
    let max_datums = max_datums.max(1);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for datum in datums {
        let size = datum.estimated_size();
        if !current.is_empty() && (current.len() >= max_datums || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(datum);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a series publishes as: its datum's name, dimensions (already filtered) and unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct DatumKey {
    name: String,
    dimensions: Vec<(String, String)>,
    unit: MetricUnit,
}

/// The series by facade key, aggregated into statistic sets per window.
type Registry = Aggregator<DatumKey>;

impl Aggregator<DatumKey> {
    fn new(level: MetricsLevel, enabled_dimensions: &BTreeSet<String>) -> Self {
        Self::with_keys(level, enabled_dimensions, |d: Described| DatumKey {
            name: d.mapping.name,
            dimensions: d.dimensions,
            unit: d.mapping.unit,
        })
    }

    /// Closes the window: the datums of every series with values, merged by datum key, in a
    /// stable order. Series that nobody holds any more and that had no values are forgotten.
    fn close_window(&self, timestamp: SystemTime) -> Vec<Datum> {
        self.take_window()
            .into_iter()
            .map(|(key, window)| Datum {
                name: key.name,
                dimensions: key.dimensions,
                unit: key.unit,
                statistics: window.stats,
                timestamp,
            })
            .collect()
    }
}

/// The [`metrics::Recorder`] that publishes to CloudWatch; see the module docs.
#[derive(Debug)]
pub struct CloudWatchRecorder {
    registry: Arc<Registry>,
}

impl CloudWatchRecorder {
    /// The recorder and the handle of its publisher task, started on the current Tokio runtime.
    /// Install the recorder with [`metrics::set_global_recorder`] (or use [`install`]).
    pub fn new(config: CloudWatchConfig) -> Result<(Self, CloudWatchHandle), CloudWatchError> {
        let sink = Arc::new(SdkSink {
            client: config.client.clone(),
        });
        Self::with_sink(config, sink)
    }

    fn with_sink(
        config: CloudWatchConfig,
        sink: Arc<dyn PutMetrics>,
    ) -> Result<(Self, CloudWatchHandle), CloudWatchError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CloudWatchError::NoRuntime)?;
        let registry = Arc::new(Registry::new(config.level, &config.enabled_dimensions));
        let counters = Arc::new(PublisherCounters::default());
        let (commands, receiver) = mpsc::channel(16);
        let every = config.buffer_time;
        let publisher = Publisher {
            registry: registry.clone(),
            sink,
            counters: counters.clone(),
            queue: VecDeque::new(),
            namespace: config.namespace,
            max_queue_size: config.max_queue_size,
            max_datums_per_call: config.max_datums_per_call,
            max_retries: config.max_retries,
            dropped_in_window: 0,
        };
        runtime.spawn(run_exporter(publisher, every, receiver));
        Ok((Self { registry }, CloudWatchHandle { commands, counters }))
    }
}

super::java::aggregating_recorder!(CloudWatchRecorder);

/// Starts the publisher on the current Tokio runtime and installs its recorder as the global
/// `metrics` recorder.
pub fn install(config: CloudWatchConfig) -> Result<CloudWatchHandle, CloudWatchError> {
    let (recorder, handle) = CloudWatchRecorder::new(config)?;
    metrics::set_global_recorder(recorder).map_err(|_| CloudWatchError::RecorderAlreadySet)?;
    Ok(handle)
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// Counters of the publisher, read through the handle.
#[derive(Debug, Default)]
struct PublisherCounters {
    put_calls: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// What a failed `PutMetricData` call was.
#[derive(Debug)]
struct PutError {
    retryable: bool,
    message: String,
}

type PutFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PutError>> + Send + 'a>>;

/// One `PutMetricData` call (the SDK's, or a test's).
trait PutMetrics: Send + Sync + 'static {
    fn put<'a>(&'a self, namespace: &'a str, batch: &'a [Datum]) -> PutFuture<'a>;
}

struct SdkSink {
    client: aws_sdk_cloudwatch::Client,
}

impl PutMetrics for SdkSink {
    fn put<'a>(&'a self, namespace: &'a str, batch: &'a [Datum]) -> PutFuture<'a> {
        use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
        use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet as Set};
        Box::pin(async move {
            let data: Vec<MetricDatum> = batch
                .iter()
                .map(|d| {
                    MetricDatum::builder()
                        .metric_name(&d.name)
                        .set_dimensions(Some(
                            d.dimensions
                                .iter()
                                .map(|(n, v)| Dimension::builder().name(n).value(v).build())
                                .collect(),
                        ))
                        .unit(StandardUnit::from(d.unit.as_str()))
                        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(d.timestamp))
                        .statistic_values(
                            Set::builder()
                                .sample_count(d.statistics.sample_count)
                                .sum(d.statistics.sum)
                                .minimum(d.statistics.minimum)
                                .maximum(d.statistics.maximum)
                                .build(),
                        )
                        .build()
                })
                .collect();
            match self
                .client
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(data))
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    let retryable = match e.code() {
                        Some(code) => {
                            code.contains("Throttl")
                                || code == "RequestLimitExceeded"
                                || code == "InternalServiceFault"
                                || code == "ServiceUnavailable"
                        }
                        // Timeouts, connection errors: no service error code.
                        None => true,
                    };
                    Err(PutError {
                        retryable,
                        message: crate::error::ErrorChain(&e).to_string(),
                    })
                }
            }
        })
    }
}

type Command = WindowCommand<CloudWatchError>;

struct Publisher {
    registry: Arc<Registry>,
    sink: Arc<dyn PutMetrics>,
    counters: Arc<PublisherCounters>,
    queue: VecDeque<Datum>,
    namespace: String,
    max_queue_size: usize,
    max_datums_per_call: usize,
    max_retries: usize,
    dropped_in_window: u64,
}

impl WindowExporter for Publisher {
    type Error = CloudWatchError;

    async fn export_window(&mut self) -> Result<(), CloudWatchError> {
        self.publish_window().await
    }

    fn recorder_alive(&self) -> bool {
        Arc::strong_count(&self.registry) > 1
    }
}

impl Publisher {
    /// Closes the window, queues its datums and sends everything queued.
    async fn publish_window(&mut self) -> Result<(), CloudWatchError> {
        let datums = self.registry.close_window(SystemTime::now());
        self.enqueue(datums);
        if self.dropped_in_window > 0 {
            tracing::warn!(
                dropped = self.dropped_in_window,
                max_queue_size = self.max_queue_size,
                "CloudWatch metrics queue full: datums dropped this window"
            );
            self.dropped_in_window = 0;
        }
        self.send_queued().await
    }

    fn enqueue(&mut self, datums: Vec<Datum>) {
        for datum in datums {
            if self.queue.len() >= self.max_queue_size {
                self.dropped_in_window += 1;
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.queue.push_back(datum);
            }
        }
    }

    async fn send_queued(&mut self) -> Result<(), CloudWatchError> {
        let queued: Vec<Datum> = self.queue.drain(..).collect();
        let mut failure: Option<(usize, String)> = None;
        for batch in batches(queued, self.max_datums_per_call, MAX_REQUEST_BYTES) {
            if let Err(message) = self.put_with_retries(&batch).await {
                self.counters
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let dropped = failure.as_ref().map_or(0, |f| f.0) + batch.len();
                tracing::warn!(datums = batch.len(), error = %message, "could not publish metrics to CloudWatch");
                failure = Some((dropped, message));
            }
        }
        match failure {
            None => Ok(()),
            Some((datums, message)) => Err(CloudWatchError::Publish { datums, message }),
        }
    }

    async fn put_with_retries(&self, batch: &[Datum]) -> Result<(), String> {
        use backon::BackoffBuilder;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.max_retries)
            .with_jitter()
            .with_jitter_seed(crate::jitter::next_seed())
            .build();
        loop {
            self.counters.put_calls.fetch_add(1, Ordering::Relaxed);
            match self.sink.put(&self.namespace, batch).await {
                Ok(()) => {
                    self.counters
                        .published
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.retryable => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(error = %e.message, ?delay, "PutMetricData throttled or failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(e.message),
                },
                Err(e) => return Err(e.message),
            }
        }
    }
}

/// The handle of a [`CloudWatchRecorder`]'s publisher task: flush, shut down, counters.
#[derive(Clone, Debug)]
pub struct CloudWatchHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<PublisherCounters>,
}

impl CloudWatchHandle {
    async fn call(
        &self,
        command: fn(oneshot::Sender<Result<(), CloudWatchError>>) -> Command,
    ) -> Result<(), CloudWatchError> {
        call_exporter(&self.commands, command, || CloudWatchError::Stopped).await
    }

    /// Closes the current window and publishes it with everything queued; returns once the
    /// calls are done.
    pub async fn flush(&self) -> Result<(), CloudWatchError> {
        self.call(Command::Flush).await
    }

    /// Publishes the last window (as [`Self::flush`]) and stops the publisher task. The
    /// recorder records nothing that is published after this.
    pub async fn shutdown(&self) -> Result<(), CloudWatchError> {
        self.call(Command::Shutdown).await
    }

    /// Datums dropped because the queue was full.
    pub fn dropped_datums(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Datums published.
    pub fn published_datums(&self) -> u64 {
        self.counters.published.load(Ordering::Relaxed)
    }

    /// Datums dropped because their call failed (after its retries).
    pub fn failed_datums(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// `PutMetricData` calls made, retries included.
    pub fn put_calls(&self) -> u64 {
        self.counters.put_calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
