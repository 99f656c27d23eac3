//! Scheduler settings: one plain struct with documented defaults and `#[must_use]` setters.

use std::time::{Duration, SystemTime};

use kcl_lease::LeaseSettings;

pub use crate::aggregation::MisplacedKplRecords;
pub use crate::processor::ProcessorFailurePolicy;
use crate::stream_arn::StreamArn;
use crate::streams::FormerStreamsCleanup;

/// Where a new application starts reading a shard that has no checkpoint yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitialPosition {
    /// Only records put after the worker first reads the shard (the Java KCL's default).
    Latest,
    /// The oldest record still in the stream; closed ancestor shards are read first.
    TrimHorizon,
    /// The first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

/// How shard readers get records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetrievalMode {
    /// `GetRecords` polling (the default): shares the shard's 5 reads/s and 2 MiB/s with every
    /// other polling application.
    #[default]
    Polling,
    /// Enhanced fan-out: a consumer registered on the stream, records pushed through
    /// `SubscribeToShard` with their own 2 MiB/s per shard and lower latency.
    FanOut(FanOutConfig),
}

/// Settings of enhanced fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FanOutConfig {
    /// The consumer's name on the stream; `None` uses the application name (as the Java KCL
    /// does), so every worker of the application shares it.
    pub consumer_name: Option<String>,
    /// A subscription is renewed after this long, before the service ends it at 5 minutes
    /// (default 4 minutes 50 seconds): the reader resumes from the last continuation sequence
    /// number with no gap.
    pub subscription_renewal: Duration,
    /// Idle time after which a subscription that delivered no event at all (not even the empty
    /// ones Kinesis sends every few seconds) is considered broken and renewed (default 60 s).
    pub idle_timeout: Duration,
    /// While a subscription delivers only empty events, check this often with one `GetRecords`
    /// call whether the shard is closed and read to its end (default 10 s). Kinesis announces
    /// the end itself; emulators such as kinesis-mock (LocalStack's Kinesis) never do, and
    /// without the check the children of a resharded shard would wait forever.
    pub end_probe_interval: Duration,
    /// Resource tags set on the consumer when this application registers it (none by default;
    /// with tags the credentials need `kinesis:TagResource` too). A consumer registered
    /// already keeps its tags.
    pub tags: crate::backend::ConsumerTags,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        Self {
            consumer_name: None,
            subscription_renewal: Duration::from_secs(290),
            idle_timeout: Duration::from_secs(60),
            end_probe_interval: Duration::from_secs(10),
            tags: crate::backend::ConsumerTags::new(),
        }
    }
}

impl FanOutConfig {
    /// Fan-out with a named consumer and the other settings at their defaults.
    pub fn named(consumer_name: impl Into<String>) -> Self {
        Self {
            consumer_name: Some(consumer_name.into()),
            ..Self::default()
        }
    }

    /// Sets when a subscription is renewed (builder style).
    #[must_use]
    pub fn subscription_renewal(mut self, after: Duration) -> Self {
        self.subscription_renewal = after;
        self
    }

    /// Sets after how long a silent subscription is renewed (builder style).
    #[must_use]
    pub fn idle_timeout(mut self, after: Duration) -> Self {
        self.idle_timeout = after;
        self
    }

    /// Adds a resource tag to set on the consumer when it is registered (builder style).
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Sets how often an idle subscription checks for the shard's end (builder style).
    #[must_use]
    pub fn end_probe_interval(mut self, every: Duration) -> Self {
        self.end_probe_interval = every;
        self
    }
}

/// The settings of a [`crate::Scheduler`]. Build it through [`crate::Scheduler::builder`].
///
/// | setting | default | why |
/// |---|---|---|
/// | `leases` | [`LeaseSettings::default`] | failover time (10 s, the Java KCL's), renew, take and watch intervals, renewal mode, lease caps, steals per round, balancing: see [`LeaseSettings`] (one place for them) |
/// | `initial_position` | `Latest` | the Java KCL's |
/// | `max_records` | 10,000 | the Java KCL's (and the `GetRecords` maximum) |
/// | `polling_interval` | 1 s | the Java KCL's idle time between reads; used after an empty read only |
/// | `min_read_interval` | 200 ms | keeps one reader under Kinesis's 5 reads/s per shard |
/// | `max_prefetch_batches` | 3 | bounded read-ahead per shard; the reader waits when it is full |
/// | `max_prefetch_bytes` | 8 MiB | the read-ahead's bytes per shard (after KPL unpacking, the batch being processed included): 4 s of a shard's 2 MiB/s read limit, so 1,000 shards on a worker hold at most 8 GiB even with slow processors |
/// | `shard_sync_interval` | 60 s | the Java KCL's; shard ends also trigger a sync at once |
/// | `parent_poll_interval` | 500 ms | how often a child checks whether its parents finished |
/// | `graceful_shutdown_timeout` | 30 s | how long processors get to checkpoint at shutdown |
/// | `delete_finished_leases` | `true` | the Java KCL's lease clean-up: a `SHARD_END` lease goes once its children are under way, checked at each shard sync |
/// | `former_streams_cleanup` | after 1 hour | multi-stream: leases of a removed stream are deleted this long after it disappeared |
/// | `misplaced_kpl_records` | `Deliver` | KPL user records hashing outside their shard are delivered and counted; `DropAggregate` is the Java KCL's drop (loses data of `aws-kinesis-agg` producers) |
/// | `processor_failure` | `RetryForever` | a failing (or panicking) `process_records` gets the same batch again with backoff; `SkipAfter` hands it to a hook after N attempts, skips and checkpoints past it |
/// | `retrieval` | `Polling` | the Java KCL 2.x default; 3.x defaults to fan-out, which costs extra on AWS |
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// The application name; also the name of the lease table.
    pub application_name: String,
    /// The stream to consume.
    pub stream_name: String,
    /// The stream's ARN when it is named by one (see [`crate::SchedulerBuilder::stream_arn`]).
    pub stream_arn: Option<StreamArn>,
    /// This worker's id, unique among the application's workers.
    pub worker_id: String,
    /// Where a shard without checkpoint starts.
    pub initial_position: InitialPosition,
    /// How leases expire, are renewed, taken and balanced (see [`LeaseSettings`]).
    pub leases: LeaseSettings,
    /// Records per `GetRecords` call.
    pub max_records: usize,
    /// Wait this long after a read that returned nothing.
    pub polling_interval: Duration,
    /// Never read a shard more often than this.
    pub min_read_interval: Duration,
    /// Batches read ahead of the processor, per shard.
    pub max_prefetch_batches: usize,
    /// Bytes read ahead of the processor, per shard (payloads and partition keys, counted
    /// after KPL unpacking): the reader waits when they are reached.
    pub max_prefetch_bytes: usize,
    /// How often the shard list is synchronised with the lease table.
    pub shard_sync_interval: Duration,
    /// How often a child shard checks whether its parents have finished.
    pub parent_poll_interval: Duration,
    /// How long processors get in `shutdown_requested` at a graceful shutdown.
    pub graceful_shutdown_timeout: Duration,
    /// Polling or enhanced fan-out.
    pub retrieval: RetrievalMode,
    /// Multi-stream mode: what happens to the leases of streams no longer tracked.
    pub former_streams_cleanup: FormerStreamsCleanup,
    /// Delete finished (`SHARD_END`) leases once every child shard's processing has started.
    pub delete_finished_leases: bool,
    /// KPL aggregates with user records that hash outside the shard they were read from:
    /// delivered (default) or dropped whole as the Java KCL does (see [`MisplacedKplRecords`]).
    pub misplaced_kpl_records: MisplacedKplRecords,
    /// A batch `process_records` keeps failing on: retried forever (default) or skipped after
    /// some attempts (see [`ProcessorFailurePolicy`]).
    pub processor_failure: ProcessorFailurePolicy,
}

impl SchedulerConfig {
    /// The defaults (see the table above) for one application, stream and worker.
    pub fn new(
        application_name: impl Into<String>,
        stream_name: impl Into<String>,
        worker_id: impl Into<String>,
    ) -> Self {
        Self {
            application_name: application_name.into(),
            stream_name: stream_name.into(),
            stream_arn: None,
            worker_id: worker_id.into(),
            initial_position: InitialPosition::Latest,
            leases: LeaseSettings::default(),
            max_records: 10_000,
            polling_interval: Duration::from_secs(1),
            min_read_interval: Duration::from_millis(200),
            max_prefetch_batches: 3,
            max_prefetch_bytes: 8 * 1024 * 1024,
            shard_sync_interval: Duration::from_secs(60),
            parent_poll_interval: Duration::from_millis(500),
            graceful_shutdown_timeout: Duration::from_secs(30),
            retrieval: RetrievalMode::Polling,
            former_streams_cleanup: FormerStreamsCleanup::default(),
            delete_finished_leases: true,
            misplaced_kpl_records: MisplacedKplRecords::Deliver,
            processor_failure: ProcessorFailurePolicy::RetryForever,
        }
    }

    /// The fan-out consumer name, if fan-out is on: the configured one or the application name.
    pub fn fan_out_consumer_name(&self) -> Option<&str> {
        match &self.retrieval {
            RetrievalMode::Polling => None,
            RetrievalMode::FanOut(f) => Some(f.consumer_name.as_deref().unwrap_or(&self.application_name)),
        }
    }

    /// Sets the failover time, the renew and take intervals to a third of it and the watch
    /// interval to a twentieth.
    #[must_use]
    pub fn failover_time(mut self, failover_time: Duration) -> Self {
        self.leases = self.leases.failover_time(failover_time);
        self
    }

    /// Checks the settings for values that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        self.leases.validate()?;
        let positive = [
            ("shard_sync_interval", self.shard_sync_interval),
            ("parent_poll_interval", self.parent_poll_interval),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be greater than zero"));
        }
        if self.application_name.is_empty() || self.worker_id.is_empty() {
            return Err("application name and worker id must not be empty".into());
        }
        if !(1..=10_000).contains(&self.max_records) {
            return Err("max_records must be between 1 and 10000".into());
        }
        if let RetrievalMode::FanOut(f) = &self.retrieval {
            if f.subscription_renewal.is_zero() || f.idle_timeout.is_zero() || f.end_probe_interval.is_zero()
            {
                return Err(
                    "fan-out subscription_renewal, idle_timeout and end_probe_interval must be greater than zero"
                        .into(),
                );
            }
            if f.consumer_name.as_deref() == Some("") {
                return Err("the fan-out consumer name must not be empty".into());
            }
        }
        if self.max_prefetch_batches == 0
            || self.max_prefetch_bytes == 0
            || self.leases.max_leases_per_worker == 0
        {
            return Err(
                "max_prefetch_batches, max_prefetch_bytes and max_leases_per_worker must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}
