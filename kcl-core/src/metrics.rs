//! Metrics and health: the names of the metrics the runtime emits through the [`metrics`]
//! facade (install any recorder: Prometheus, StatsD, CloudWatch EMF, ...), and the per-shard
//! status behind [`crate::SchedulerHandle::health`].
//!
//! Names and meanings follow the Java KCL's CloudWatch metrics. Every metric carries a
//! `worker_id` label; shard-level ones also `shard_id`.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `MillisBehindLatest` | gauge | how far the last delivered record is behind the tip of its shard |
//! | `RecordsProcessed` | counter | records delivered to `process_records` (successfully) |
//! | `BytesProcessed` | counter | payload bytes of those records |
//! | `ProcessTask.Time` | histogram | seconds one `process_records` call took |
//! | `ProcessorErrors` | counter | errors returned (or panics raised) by the processor |
//! | `SkippedRecords` | counter | records of batches skipped after repeated processor failures (`ProcessorFailurePolicy::SkipAfter`) |
//! | `GetRecords.Throttled` | counter | reads throttled by the backend |
//! | `ExpiredIterator` | counter | shard iterators that expired and were renewed |
//! | `KplMisplacedRecords` | counter | KPL user records that hash outside the shard their aggregate was read from (delivered, or dropped with their aggregate under `MisplacedKplRecords::DropAggregate`) |
//! | `KplDeaggregationFailures` | counter | records with the KPL magic bytes that could not be unpacked (delivered as they are; no labels) |
//! | `CurrentLeases` | gauge | leases this worker holds (kcl-lease) |
//! | `TotalLeases` | gauge | active leases in the table at the last scan (kcl-lease) |
//! | `TakenLeases` | counter | leases taken (free, expired, or stolen) (kcl-lease) |
//! | `LeasesStolen` | counter | leases stolen from another worker for balance (kcl-lease) |
//! | `LostLeases` | counter | leases lost to another worker or to failed renewals (kcl-lease) |
//! | `RenewLease.Failures` | counter | renewals that failed for another reason than a lost lease (kcl-lease) |
//! | `LiveWorkers` | gauge | live workers as this one sees the heartbeats (kcl-lease) |
//! | `LeaseTable.Scans` | counter | scans of the lease table by the coordinator (kcl-lease) |
//! | `LeaseStore.Calls`, `LeaseStore.Errors`, `LeaseStore.RowsRead`, `LeaseStore.WriteUnits` | counters | lease-store calls per `op`, rows read, DynamoDB write units billed (kcl-lease's cost meter) |
//! | `LeaseStore.ReadUnits` | gauge | DynamoDB read units billed so far, per `op` |
//!
//! With the `cloudwatch` feature, `metrics::cloudwatch` publishes them to Amazon CloudWatch under the
//! Java KCL's names, dimensions and levels (its module docs have the table beside the Java KCL's).

use std::sync::{Arc, Mutex};

#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;

use crate::record::ExtendedSequenceNumber;
use crate::shard::state::ShardState;

/// See the module docs.
pub const MILLIS_BEHIND_LATEST: &str = "MillisBehindLatest";
/// See the module docs.
pub const RECORDS_PROCESSED: &str = "RecordsProcessed";
/// See the module docs.
pub const BYTES_PROCESSED: &str = "BytesProcessed";
/// See the module docs.
pub const PROCESS_TIME: &str = "ProcessTask.Time";
/// See the module docs.
pub const PROCESSOR_ERRORS: &str = "ProcessorErrors";
/// See the module docs.
pub const GET_RECORDS_THROTTLED: &str = "GetRecords.Throttled";
/// See the module docs.
pub const EXPIRED_ITERATOR: &str = "ExpiredIterator";

/// The `metrics` facade cannot delete a series, so per-shard series end through the exporter:
/// a shard consumer touches its series every 10 s while it holds the shard, and an exporter
/// that drops series idle for this long (the Prometheus exporter's
/// `PrometheusBuilder::idle_timeout`, as `kcl-tail` sets it) drops those of the shards that left
/// the worker (taken by another worker, ended, or their stream removed).
pub const SHARD_SERIES_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// See the module docs.
pub const SKIPPED_RECORDS: &str = "SkippedRecords";
/// See the module docs.
pub const KPL_MISPLACED_RECORDS: &str = "KplMisplacedRecords";
pub use kcl_lease::coordinator::metric_names::*;

/// One shard's state as the health summary shows it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ShardHealth {
    /// The shard.
    pub shard_id: String,
    /// Where its consumer is in its life cycle.
    pub state: ShardState,
    /// Lag of the last delivered batch, in milliseconds.
    pub millis_behind_latest: u64,
    /// Records delivered since this worker took the lease.
    pub records_processed: u64,
    /// The checkpoint as last written or read.
    pub checkpoint: Option<ExtendedSequenceNumber>,
    /// The shard's recent throughput in KB/s (smoothed), as published on the lease row's
    /// `throughputKBps`; `None` until measured.
    pub throughput_kbps: Option<f64>,
    /// The shard's recent rate in records per second (smoothed like `throughput_kbps`);
    /// `None` until measured.
    pub records_per_sec: Option<f64>,
}

/// A worker's health: what it holds and how far behind each shard is.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct WorkerHealth {
    /// The worker.
    pub worker_id: String,
    /// Whether the worker's task is still running.
    pub running: bool,
    /// Leases held.
    pub leases_held: usize,
    /// One entry per shard consumer running on this worker.
    pub shards: Vec<ShardHealth>,
    /// The fleet as this worker sees it: heartbeats, live workers, leadership.
    pub fleet: kcl_lease::FleetView,
    /// What this worker's lease-store calls cost so far (calls, rows read, DynamoDB read and
    /// write units per operation).
    pub lease_store: kcl_lease::CostSnapshot,
}

impl WorkerHealth {
    /// The largest lag over the worker's shards.
    pub fn max_millis_behind_latest(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.millis_behind_latest)
            .max()
            .unwrap_or(0)
    }
}

/// The status a shard consumer publishes; read by the health summary. Updated once per batch.
pub(crate) type SharedShardHealth = Arc<Mutex<ShardHealth>>;

pub(crate) fn new_shard_health(shard_id: &str) -> SharedShardHealth {
    Arc::new(Mutex::new(ShardHealth {
        shard_id: shard_id.to_owned(),
        state: ShardState::WaitingOnParents,
        millis_behind_latest: 0,
        records_processed: 0,
        checkpoint: None,
        throughput_kbps: None,
        records_per_sec: None,
    }))
}
