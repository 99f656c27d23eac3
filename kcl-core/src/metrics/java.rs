//! What the CloudWatch publisher (`metrics::cloudwatch`) and the OTLP exporter
//! (`metrics::otlp`) share: the table of the runtime's metric names beside the Java KCL's
//! (name, `Operation`, unit, level: [`mapping`]), the Java dimensions a series' labels give,
//! the metrics levels, and the per-window aggregation of the values recorded through the
//! [`metrics`] facade into statistic sets. Each exporter turns a closed window into its own
//! wire form (`PutMetricData` datums, OTLP data points).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{CounterFn, GaugeFn, HistogramFn, Key};

/// The `Operation` dimension.
pub const OPERATION: &str = "Operation";
/// The `ShardId` dimension.
pub const SHARD_ID: &str = "ShardId";
/// The `WorkerIdentifier` dimension.
pub const WORKER_IDENTIFIER: &str = "WorkerIdentifier";
/// The `StreamId` dimension (multi-stream applications).
pub const STREAM_ID: &str = "StreamId";

/// Which metrics are published, as the Java KCL's `MetricsLevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MetricsLevel {
    /// Nothing.
    None,
    /// The SUMMARY metrics of the tables in the exporters' module docs.
    Summary,
    /// All of them (the default, as in Java).
    #[default]
    Detailed,
}

/// A CloudWatch unit, as `PutMetricData` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MetricUnit {
    /// `Count`.
    Count,
    /// `Bytes`.
    Bytes,
    /// `Milliseconds`.
    Milliseconds,
    /// `Seconds`.
    Seconds,
    /// `None`.
    None,
}

impl MetricUnit {
    /// The unit's name in CloudWatch.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricUnit::Count => "Count",
            MetricUnit::Bytes => "Bytes",
            MetricUnit::Milliseconds => "Milliseconds",
            MetricUnit::Seconds => "Seconds",
            MetricUnit::None => "None",
        }
    }
}

/// How one of our metric names is published: see the table in the exporters' module docs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MetricMapping {
    /// The name published (the Java KCL's where it has one).
    pub name: String,
    /// The `Operation` dimension.
    pub operation: String,
    /// The unit.
    pub unit: MetricUnit,
    /// The lowest level at which it is published.
    pub level: MetricsLevel,
    /// Each value is multiplied by this (seconds to milliseconds for `ProcessTask.Time`).
    pub scale: f64,
}

/// How a metric of the runtime (or any other, from its name and labels) is published.
pub fn mapping(name: &str, labels: &[(&str, &str)]) -> MetricMapping {
    use crate::metrics as m;
    let (java, operation, unit, level, scale): (&str, &str, MetricUnit, MetricsLevel, f64) = match name {
        m::RECORDS_PROCESSED => (name, "ProcessTask", MetricUnit::Count, MetricsLevel::Summary, 1.0),
        m::BYTES_PROCESSED => (
            "DataBytesProcessed",
            "ProcessTask",
            MetricUnit::Bytes,
            MetricsLevel::Summary,
            1.0,
        ),
        m::MILLIS_BEHIND_LATEST => (
            name,
            "ProcessTask",
            MetricUnit::Milliseconds,
            MetricsLevel::Summary,
            1.0,
        ),
        m::PROCESS_TIME => (
            "RecordProcessor.processRecords.Time",
            "ProcessTask",
            MetricUnit::Milliseconds,
            MetricsLevel::Summary,
            1000.0,
        ),
        m::PROCESSOR_ERRORS | m::RECORDS_FAILED_PROCESSING => {
            (name, "ProcessTask", MetricUnit::Count, MetricsLevel::Summary, 1.0)
        }
        m::SKIPPED_RECORDS
        | m::GET_RECORDS_THROTTLED
        | m::EXPIRED_ITERATOR
        | m::KPL_MISPLACED_RECORDS
        | crate::aggregation::DEAGGREGATION_FAILURES => (
            name,
            "ProcessTask",
            MetricUnit::Count,
            MetricsLevel::Detailed,
            1.0,
        ),
        m::CURRENT_LEASES | m::LOST_LEASES => (
            name,
            "RenewAllLeases",
            MetricUnit::Count,
            MetricsLevel::Summary,
            1.0,
        ),
        m::RENEW_FAILURES => (
            name,
            "RenewAllLeases",
            MetricUnit::Count,
            MetricsLevel::Detailed,
            1.0,
        ),
        m::TAKEN_LEASES | m::LEASES_STOLEN => {
            (name, "TakeLeases", MetricUnit::Count, MetricsLevel::Summary, 1.0)
        }
        m::LIVE_WORKERS => (
            "NumWorkers",
            "TakeLeases",
            MetricUnit::Count,
            MetricsLevel::Summary,
            1.0,
        ),
        m::TOTAL_LEASES | m::LEASE_TABLE_SCANS => {
            (name, "TakeLeases", MetricUnit::Count, MetricsLevel::Detailed, 1.0)
        }
        _ if name.starts_with("LeaseStore.") => {
            let op = label(labels, "op").unwrap_or("Unknown");
            return MetricMapping {
                name: name.to_owned(),
                operation: format!("LeaseStore.{op}"),
                unit: MetricUnit::Count,
                level: MetricsLevel::Detailed,
                scale: 1.0,
            };
        }
        _ => {
            let op = label(labels, "operation").unwrap_or("Application");
            return MetricMapping {
                name: name.to_owned(),
                operation: op.to_owned(),
                unit: MetricUnit::None,
                level: MetricsLevel::Detailed,
                scale: 1.0,
            };
        }
    };
    MetricMapping {
        name: java.to_owned(),
        operation: operation.to_owned(),
        unit,
        level,
        scale,
    }
}

fn label<'a>(labels: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// The published dimension of a label, if it has one.
fn dimension_of_label(label: &str) -> Option<&'static str> {
    match label {
        "shard_id" => Some(SHARD_ID),
        "worker_id" => Some(WORKER_IDENTIFIER),
        "stream" | "stream_id" => Some(STREAM_ID),
        _ => None,
    }
}

/// One window's statistic set of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatisticSet {
    /// How many values were recorded.
    pub sample_count: f64,
    /// Their sum.
    pub sum: f64,
    /// The smallest.
    pub minimum: f64,
    /// The largest.
    pub maximum: f64,
}

impl StatisticSet {
    pub(crate) fn of(value: f64) -> Self {
        Self {
            sample_count: 1.0,
            sum: value,
            minimum: value,
            maximum: value,
        }
    }

    pub(crate) fn merge(&mut self, other: &StatisticSet) {
        self.sample_count += other.sample_count;
        self.sum += other.sum;
        self.minimum = self.minimum.min(other.minimum);
        self.maximum = self.maximum.max(other.maximum);
    }
}

/// The dimensions (Java names, sorted, only the enabled ones) of a series of `operation` with
/// these labels: `Operation`, and `shard_id` → `ShardId`, `worker_id` → `WorkerIdentifier`,
/// `stream` → `StreamId`. A multi-stream application's shards are labelled with their lease keys
/// (`account:stream:creationEpoch:shardId`): `StreamId` and `ShardId`, as in Java.
pub(crate) fn dimensions(
    operation: &str,
    labels: &[(&str, &str)],
    enabled: &BTreeSet<String>,
) -> Vec<(String, String)> {
    let mut dimensions = vec![(OPERATION.to_owned(), operation.to_owned())];
    for (label, value) in labels {
        if *label == "shard_id" {
            if let Some((stream, shard)) = kcl_lease::StreamIdentifier::split_lease_key(value) {
                dimensions.push((SHARD_ID.to_owned(), shard.to_owned()));
                dimensions.push((STREAM_ID.to_owned(), stream.to_string()));
                continue;
            }
        }
        if let Some(dimension) = dimension_of_label(label) {
            dimensions.push((dimension.to_owned(), (*value).to_owned()));
        }
    }
    dimensions.retain(|(name, _)| enabled.contains(name));
    dimensions.sort();
    dimensions.dedup_by(|a, b| a.0 == b.0);
    dimensions
}

/// How a series was registered through the facade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FacadeKind {
    Counter,
    Gauge,
    Histogram,
}

/// What the aggregator knows of a new series, for the exporter to make its key of.
#[derive(Debug)]
pub(crate) struct Described {
    /// The Java name, `Operation`, unit, level and scale.
    pub mapping: MetricMapping,
    /// The enabled dimensions, as [`dimensions`] gives them.
    pub dimensions: Vec<(String, String)>,
    /// How the series was registered.
    #[cfg_attr(not(feature = "otlp"), allow(dead_code))]
    pub kind: FacadeKind,
}

/// One window's values of a series: their statistic set, and the last one (a gauge's value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Window {
    pub stats: StatisticSet,
    pub last: f64,
}

impl Window {
    fn of(value: f64) -> Self {
        Self {
            stats: StatisticSet::of(value),
            last: value,
        }
    }

    /// Adds a later window (or a series merged into this one: its last value wins).
    pub(crate) fn merge(&mut self, later: &Window) {
        self.stats.merge(&later.stats);
        self.last = later.last;
    }
}

/// One registered series: the values recorded since the last window closed.
#[derive(Debug)]
pub(crate) struct Series<K> {
    pub key: K,
    scale: f64,
    window: Mutex<Option<Window>>,
    /// A gauge's current value (f64 bits), for `increment`/`decrement`.
    gauge: AtomicU64,
}

impl<K> Series<K> {
    fn observe(&self, value: f64) {
        let value = value * self.scale;
        if !value.is_finite() {
            return; // CloudWatch rejects NaN and infinities; OTLP sums would be poisoned.
        }
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match window.as_mut() {
            Some(w) => w.merge(&Window::of(value)),
            None => *window = Some(Window::of(value)),
        }
    }

    fn take(&self) -> Option<Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn add_to_gauge(&self, delta: f64) {
        let mut current = self.gauge.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + delta).to_bits();
            match self
                .gauge
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.observe(f64::from_bits(next));
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl<K: Send + Sync> CounterFn for Series<K> {
    fn increment(&self, value: u64) {
        self.observe(value as f64);
    }

    fn absolute(&self, value: u64) {
        self.observe(value as f64);
    }
}

impl<K: Send + Sync> GaugeFn for Series<K> {
    fn increment(&self, value: f64) {
        self.add_to_gauge(value);
    }

    fn decrement(&self, value: f64) {
        self.add_to_gauge(-value);
    }

    fn set(&self, value: f64) {
        self.gauge.store(value.to_bits(), Ordering::Relaxed);
        self.observe(value);
    }
}

impl<K: Send + Sync> HistogramFn for Series<K> {
    fn record(&self, value: f64) {
        self.observe(value);
    }
}

/// The series by facade key, and the configuration (level, enabled dimensions, the exporter's
/// key) that maps keys to what is published. Recording only touches a series' own mutex; the
/// registry's lock is taken when a series is registered (once per key) and when a window
/// closes.
#[derive(Debug)]
pub(crate) struct Aggregator<K> {
    level: MetricsLevel,
    enabled_dimensions: BTreeSet<String>,
    pub(crate) series: Mutex<HashMap<Key, Arc<Series<K>>>>,
    key_of: fn(Described) -> K,
}

impl<K: Clone + Ord> Aggregator<K> {
    /// `Operation` is added to the enabled dimensions.
    pub(crate) fn with_keys(
        level: MetricsLevel,
        enabled_dimensions: &BTreeSet<String>,
        key_of: fn(Described) -> K,
    ) -> Self {
        let mut enabled_dimensions = enabled_dimensions.clone();
        enabled_dimensions.insert(OPERATION.to_owned());
        Self {
            level,
            enabled_dimensions,
            series: Mutex::new(HashMap::new()),
            key_of,
        }
    }

    /// The series of a key registered as a counter; `None` when its metric is not published
    /// at this level.
    #[cfg(all(test, feature = "cloudwatch"))]
    pub(crate) fn register(&self, key: &Key) -> Option<Arc<Series<K>>> {
        self.register_kind(key, FacadeKind::Counter)
    }

    /// The series of a key registered as `kind`; `None` when its metric is not published at
    /// this level.
    pub(crate) fn register_kind(&self, key: &Key, kind: FacadeKind) -> Option<Arc<Series<K>>> {
        if self.level == MetricsLevel::None {
            return None;
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = series.get(key) {
            return Some(s.clone());
        }
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let mapping = mapping(key.name(), &labels);
        if mapping.level > self.level {
            return None;
        }
        let dimensions = dimensions(&mapping.operation, &labels, &self.enabled_dimensions);
        let scale = mapping.scale;
        let s = Arc::new(Series {
            key: (self.key_of)(Described {
                mapping,
                dimensions,
                kind,
            }),
            scale,
            window: Mutex::new(None),
            gauge: AtomicU64::new(0f64.to_bits()),
        });
        series.insert(key.clone(), s.clone());
        Some(s)
    }

    /// Closes the window: the values of every series that had some, merged by the exporter's
    /// key, in a stable order. Series that nobody holds any more and that had no values are
    /// forgotten.
    pub(crate) fn take_window(&self) -> BTreeMap<K, Window> {
        let mut merged: BTreeMap<K, Window> = BTreeMap::new();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|_, s| {
            let Some(window) = s.take() else {
                return Arc::strong_count(s) > 1;
            };
            merged
                .entry(s.key.clone())
                .and_modify(|m| m.merge(&window))
                .or_insert(window);
            true
        });
        merged
    }
}

/// Implements [`metrics::Recorder`] for an exporter's recorder whose `registry` field is an
/// [`Aggregator`]: every series is registered there (a no-op handle for a metric the level
/// leaves out), and descriptions are not used. One implementation for the CloudWatch and the
/// OTLP recorders.
macro_rules! aggregating_recorder {
    ($recorder:ty) => {
        impl metrics::Recorder for $recorder {
            fn describe_counter(
                &self,
                _: metrics::KeyName,
                _: Option<metrics::Unit>,
                _: metrics::SharedString,
            ) {
            }
            fn describe_gauge(
                &self,
                _: metrics::KeyName,
                _: Option<metrics::Unit>,
                _: metrics::SharedString,
            ) {
            }
            fn describe_histogram(
                &self,
                _: metrics::KeyName,
                _: Option<metrics::Unit>,
                _: metrics::SharedString,
            ) {
            }

            fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
                self.registry
                    .register_kind(key, $crate::metrics::java::FacadeKind::Counter)
                    .map_or_else(metrics::Counter::noop, metrics::Counter::from_arc)
            }

            fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
                self.registry
                    .register_kind(key, $crate::metrics::java::FacadeKind::Gauge)
                    .map_or_else(metrics::Gauge::noop, metrics::Gauge::from_arc)
            }

            fn register_histogram(
                &self,
                key: &metrics::Key,
                _: &metrics::Metadata<'_>,
            ) -> metrics::Histogram {
                self.registry
                    .register_kind(key, $crate::metrics::java::FacadeKind::Histogram)
                    .map_or_else(metrics::Histogram::noop, metrics::Histogram::from_arc)
            }
        }
    };
}
pub(crate) use aggregating_recorder;

/// A request from an exporter's handle to its task: export the window now, or export it and
/// stop. The answer is the export's result.
pub(crate) enum WindowCommand<E> {
    Flush(tokio::sync::oneshot::Sender<Result<(), E>>),
    Shutdown(tokio::sync::oneshot::Sender<Result<(), E>>),
}

impl<E> std::fmt::Debug for WindowCommand<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowCommand::Flush(_) => "Flush",
            WindowCommand::Shutdown(_) => "Shutdown",
        })
    }
}

/// Sends `command` to an exporter task and waits for its answer; `stopped()` when the task is
/// gone.
pub(crate) async fn call_exporter<E>(
    commands: &tokio::sync::mpsc::Sender<WindowCommand<E>>,
    command: fn(tokio::sync::oneshot::Sender<Result<(), E>>) -> WindowCommand<E>,
    stopped: fn() -> E,
) -> Result<(), E> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    commands.send(command(reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// An exporter task's work: close the current window and send what is queued.
pub(crate) trait WindowExporter: Send {
    /// What a failed export says.
    type Error: Send;
    /// Closes the window, queues its values and sends everything queued.
    fn export_window(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
    /// Whether the recorder still lives (it holds the aggregator with this task).
    fn recorder_alive(&self) -> bool;
}

/// Runs an exporter task: a window every `every`, and whenever a handle asks; stops on
/// `Shutdown` (after the last window), or once neither the recorder nor a handle is left.
pub(crate) async fn run_exporter<X: WindowExporter>(
    mut exporter: X,
    every: std::time::Duration,
    mut commands: tokio::sync::mpsc::Receiver<WindowCommand<X::Error>>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    let mut handles_open = true;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let _ = exporter.export_window().await;
                // Neither the recorder nor a handle left: nothing more can come.
                if !handles_open && !exporter.recorder_alive() {
                    return;
                }
            }
            command = commands.recv(), if handles_open => match command {
                Some(WindowCommand::Flush(reply)) => {
                    let _ = reply.send(exporter.export_window().await);
                }
                Some(WindowCommand::Shutdown(reply)) => {
                    let _ = reply.send(exporter.export_window().await);
                    return;
                }
                // Every handle dropped: keep exporting for the recorder, while it lives.
                None => handles_open = false,
            },
        }
    }
}
