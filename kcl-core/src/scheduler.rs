//! The `Scheduler`: one per worker process. It keeps shard leases through a
//! [`LeaseCoordinator`], synchronises shards and leases, and runs one `ShardConsumer` task
//! per held lease.
//!
//! Shutdown is explicit. A graceful shutdown stops taking leases, asks every consumer to stop
//! (processors get `shutdown_requested` and may checkpoint), waits for them up to
//! `graceful_shutdown_timeout`, then releases every lease so that other workers take them at
//! once rather than after the failover time. Dropping or [`SchedulerHandle::kill`]ing a
//! running scheduler aborts everything without releasing: as if the process died.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_lease::{CoordinatorConfig, LeaseCoordinator, LeaseRenewal, LeaseStore, MeteredLeaseStore};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, info_span, warn, Instrument};

use crate::backend::{BackendError, StreamBackend};
use crate::config::{InitialPosition, RetrievalMode, SchedulerConfig};
use crate::error::{KclError, Result};
use crate::fatal::{FatalError, FatalGuardStore, FatalSignal};
use crate::metrics::{new_shard_health, SharedShardHealth, WorkerHealth};
use crate::processor::{ProcessorFactory, ShardInfo};
use crate::shard::fan_out::ConsumerRegistry;
use crate::shard::{ShardConsumer, ShardContext};
use crate::shard_sync::{delete_finished_leases, sync_stream};
use crate::status::{StatusSource, WorkerStatus};
use crate::stream_arn::StreamArn;
use crate::streams::{FormerStreamsCleanup, StreamConfig, StreamTracker};
use kcl_lease::{LeaseError, StreamIdentifier};

/// Builds a [`Scheduler`]. Every setting has a default (see [`SchedulerConfig`]); a backend, a
/// lease store and a processor are required: [`SchedulerBuilder::aws`] (feature `aws`) gives the
/// first two, [`SchedulerBuilder::handler`] or [`SchedulerBuilder::processor_factory`] the third.
/// [`SchedulerBuilder::build`] says which is missing.
#[must_use]
pub struct SchedulerBuilder {
    config: SchedulerConfig,
    backend: Option<Arc<dyn StreamBackend>>,
    store: Option<Arc<dyn LeaseStore>>,
    factory: Option<Arc<dyn ProcessorFactory>>,
    tracker: Option<Arc<dyn StreamTracker>>,
    /// Whether a DynamoDB lease table is created when missing (default `true`).
    create_lease_table: bool,
    /// The lease store when it is a DynamoDB table, to create it at start.
    #[cfg(feature = "dynamodb")]
    lease_table: Option<kcl_lease::DynamoDbLeaseStore>,
}

/// A setter of one of the [`LeaseSettings`](kcl_lease::LeaseSettings).
macro_rules! lease_setter {
    ($(#[$doc:meta])* $name:ident => $field:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.leases.$field = value;
            self
        }
    };
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl SchedulerBuilder {
    /// The stream backend (the bundled local one, or Kinesis).
    pub fn backend(mut self, backend: impl StreamBackend) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// The lease store (the bundled in-memory one, or DynamoDB). A `DynamoDbLeaseStore`'s
    /// table is created when the worker starts if it is missing, as the Java KCL does (see
    /// [`SchedulerBuilder::create_lease_table`]).
    pub fn lease_store(mut self, store: impl LeaseStore) -> Self {
        #[cfg(feature = "dynamodb")]
        {
            self.lease_table = (&store as &dyn std::any::Any)
                .downcast_ref::<kcl_lease::DynamoDbLeaseStore>()
                .cloned();
        }
        self.store = Some(Arc::new(store));
        self
    }

    /// Whether the worker creates its DynamoDB lease table (and the worker heartbeat table
    /// beside it) when it starts and they are missing (default `true`, as the Java KCL): an
    /// on-demand table, waited for until it is active, with
    /// [`DynamoDbLeaseStore::ensure_table`](kcl_lease::DynamoDbLeaseStore::ensure_table). With
    /// `false` a missing table stops the worker with an error, for accounts where tables are
    /// created by infrastructure code only. Other lease stores have no table to create.
    pub fn create_lease_table(mut self, create: bool) -> Self {
        self.create_lease_table = create;
        self
    }

    /// Makes one processor per shard: any `Fn(&str) -> impl RecordProcessor`. Replaces a
    /// [`SchedulerBuilder::handler`].
    pub fn processor_factory(mut self, factory: impl ProcessorFactory) -> Self {
        self.factory = Some(Arc::new(factory));
        self
    }

    /// Handles every shard's batches with one [`BatchHandler`](crate::BatchHandler), e.g. a
    /// closure `|batch: Batch| async move { ..; Ok(()) }`: `Ok` checkpoints the batch, an error
    /// goes to the [`ProcessorFailurePolicy`](crate::ProcessorFailurePolicy) (by default the
    /// batch is delivered again). The form for processing without state per shard; see
    /// [`crate::handler`]. Replaces a [`SchedulerBuilder::processor_factory`].
    pub fn handler(self, handler: impl crate::handler::BatchHandler) -> Self {
        self.processor_factory(crate::handler::HandlerFactory(Arc::new(handler)))
    }

    /// The application name (the lease table's name).
    #[cfg(feature = "aws")]
    pub(crate) fn application_name(&self) -> &str {
        &self.config.application_name
    }

    /// Multi-stream mode: consume the streams `tracker` lists (asked at every shard sync), with
    /// the Java KCL's multi-stream lease keys (`account:stream:creationEpoch:shardId`). The
    /// single stream name is then not used.
    pub fn stream_tracker(mut self, tracker: impl StreamTracker) -> Self {
        self.tracker = Some(Arc::new(tracker));
        self
    }

    /// Names the (single) stream by its ARN: every call on it carries the ARN (a stream of
    /// another account, shared through a resource policy, or read with a role of that account
    /// through a [`crate::backend::routing::RoutingBackend`]). Sets the stream name to the ARN's.
    pub fn stream_arn(mut self, arn: StreamArn) -> Self {
        self.config.stream_name.clone_from(&arn.stream_name);
        self.config.stream_arn = Some(arn);
        self
    }

    /// Replaces all settings at once.
    pub fn config(mut self, config: SchedulerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the failover time, and renewals and take rounds to a third of it.
    pub fn failover_time(mut self, failover_time: Duration) -> Self {
        self.config = self.config.failover_time(failover_time);
        self
    }

    setter!(
        /// This worker's id (default: host name, process id and start time).
        worker_id: String
    );
    setter!(
        /// Where shards without a checkpoint start (default `Latest`).
        initial_position: InitialPosition
    );
    lease_setter!(
        /// How often held leases are renewed.
        renew_interval => renew_interval: Duration
    );
    lease_setter!(
        /// The shortest time between two lease-table scans while there is work to do.
        take_interval => take_interval: Duration
    );
    lease_setter!(
        /// How often the watched heartbeat row is read (default `failover_time / 16`).
        watch_interval => watch_interval: Duration
    );
    lease_setter!(
        /// How leases are kept alive: [`LeaseRenewal::PerLease`] (default, what Java workers
        /// and mixed fleets need) or [`LeaseRenewal::Worker`] (one heartbeat row per worker; no
        /// Java worker may share the table).
        lease_renewal => renewal: LeaseRenewal
    );
    lease_setter!(
        /// At most this many leases for this worker.
        max_leases_per_worker => max_leases_per_worker: usize
    );
    lease_setter!(
        /// At most this many leases stolen per round.
        max_leases_to_steal => max_leases_to_steal: usize
    );
    lease_setter!(
        /// Even the lease count per worker (default) or the measured load.
        balance => balance: kcl_lease::BalanceMode
    );
    setter!(
        /// Records per read (1 to 10,000).
        max_records: usize
    );
    setter!(
        /// Wait after a read that returned nothing.
        polling_interval: Duration
    );
    setter!(
        /// Minimum time between two reads of a shard.
        min_read_interval: Duration
    );
    setter!(
        /// Batches read ahead per shard.
        max_prefetch_batches: usize
    );
    setter!(
        /// How often shards and leases are synchronised.
        shard_sync_interval: Duration
    );
    setter!(
        /// How often a child checks its parents.
        parent_poll_interval: Duration
    );
    setter!(
        /// How long processors get to checkpoint at shutdown.
        graceful_shutdown_timeout: Duration
    );
    setter!(
        /// Polling (default) or enhanced fan-out.
        retrieval: RetrievalMode
    );
    setter!(
        /// Delete finished (`SHARD_END`) leases once their children are under way (default
        /// `true`, as the Java KCL's lease clean-up).
        delete_finished_leases: bool
    );
    setter!(
        /// Multi-stream: what happens to the leases of streams no longer tracked (default:
        /// deleted an hour after the stream disappeared).
        former_streams_cleanup: FormerStreamsCleanup
    );
    setter!(
        /// Bytes read ahead of the processor per shard, after KPL unpacking (default 8 MiB).
        max_prefetch_bytes: usize
    );
    setter!(
        /// KPL aggregates reaching outside their shard: delivered (default) or dropped whole.
        misplaced_kpl_records: crate::config::MisplacedKplRecords
    );
    setter!(
        /// A batch the processor keeps failing on: retried forever (default), or skipped after
        /// some attempts (with a hook, e.g. for a dead-letter destination).
        processor_failure: crate::processor::ProcessorFailurePolicy
    );

    /// Checks the settings and builds the scheduler.
    pub fn build(self) -> Result<Scheduler> {
        self.config.validate().map_err(KclError::Config)?;
        if self.tracker.is_none() && self.config.stream_name.is_empty() {
            return Err(KclError::Config(
                "a stream name (or, for several streams, a stream tracker) is required".into(),
            ));
        }
        let missing = |what: &str, how: &str| KclError::Config(format!("{what} is required: {how}"));
        let aws = if cfg!(feature = "aws") {
            ".aws().await? (AWS), or "
        } else {
            ""
        };
        let store = self.store.ok_or_else(|| {
            missing(
                "a lease store",
                &format!("call {aws}.lease_store(..) (e.g. InMemoryLeaseStore::new() on one machine)"),
            )
        })?;
        let meter = MeteredLeaseStore::new(store).with_worker_id(self.config.worker_id.clone());
        let fatal = FatalSignal::default();
        let backend = self.backend.ok_or_else(|| {
            missing(
                "a stream backend",
                &format!("call {aws}.backend(..) (e.g. LocalBackend::new() for the bundled local streams)"),
            )
        })?;
        if let Some(arn) = &self.config.stream_arn {
            if arn.stream_name != self.config.stream_name {
                return Err(KclError::Config(format!(
                    "the stream name {:?} is not the one of the stream ARN {arn}",
                    self.config.stream_name
                )));
            }
            backend.name_by_arn(arn);
        }
        let worker_renewal = self.config.leases.renewal == kcl_lease::LeaseRenewal::Worker;
        Ok(Scheduler {
            config: Arc::new(self.config),
            backend,
            store: Arc::new(
                FatalGuardStore::new(Arc::new(meter.clone()), fatal.clone())
                    .heartbeats_required(worker_renewal),
            ),
            meter,
            fatal,
            factory: self.factory.ok_or_else(|| {
                missing(
                    "a record processor",
                    "call .handler(|batch: Batch| async move { .. }) or .processor_factory(..)",
                )
            })?,
            tracker: self.tracker,
            health: HealthRegistry::default(),
            #[cfg(feature = "dynamodb")]
            lease_table: self.lease_table.filter(|_| self.create_lease_table),
        })
    }
}

/// The status of every running shard consumer, for [`SchedulerHandle::health`].
type HealthRegistry = Arc<std::sync::Mutex<BTreeMap<String, SharedShardHealth>>>;

/// A worker: consumes its share of a stream's shards. See the module docs.
///
/// Built with [`Scheduler::builder`] (one stream) or [`Scheduler::multi_stream_builder`];
/// [`Scheduler::spawn`] runs it in the background and returns a [`SchedulerHandle`] (status,
/// health, graceful shutdown), [`Scheduler::run`] runs it until a shutdown future resolves.
///
/// ```
/// use std::time::Duration;
/// use kcl_core::{
///     InMemoryLeaseStore, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
///     Scheduler, StreamConfig,
/// };
/// # struct Print;
/// # #[async_trait::async_trait]
/// # impl RecordProcessor for Print {
/// #     async fn process_records(&mut self, _: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> { Ok(()) }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = LocalBackend::new();
/// stream.create_stream("orders", 1)?;
/// stream.create_stream("payments", 1)?;
/// // Two streams, one lease table (the Java KCL's multi-stream lease keys).
/// let streams = vec![StreamConfig::named("orders"), StreamConfig::named("payments")];
/// let scheduler = Scheduler::multi_stream_builder("my-app", streams)
///     .backend(stream)
///     .lease_store(InMemoryLeaseStore::new())
///     .failover_time(Duration::from_secs(5))
///     .processor_factory(|_shard_id: &str| Print)
///     .build()?;
/// assert_eq!(scheduler.config().leases.failover_time, Duration::from_secs(5));
/// // Runs until the future resolves (in a binary: SIGTERM), then shuts down gracefully.
/// scheduler.run(tokio::time::sleep(Duration::from_millis(300))).await?;
/// # Ok(())
/// # }
/// ```
pub struct Scheduler {
    config: Arc<SchedulerConfig>,
    backend: Arc<dyn StreamBackend>,
    /// The lease store, metered, with its fatal errors recorded in `fatal`.
    store: Arc<dyn LeaseStore>,
    meter: MeteredLeaseStore<Arc<dyn LeaseStore>>,
    /// Errors that stop the worker or one stream.
    fatal: FatalSignal,
    factory: Arc<dyn ProcessorFactory>,
    tracker: Option<Arc<dyn StreamTracker>>,
    health: HealthRegistry,
    /// The DynamoDB lease table to create at start if it is missing.
    #[cfg(feature = "dynamodb")]
    lease_table: Option<kcl_lease::DynamoDbLeaseStore>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A default worker id: host name, process id and start time.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:x}", std::process::id())
}

impl Scheduler {
    /// A builder for one application (the lease table's name) and stream.
    pub fn builder(application_name: impl Into<String>, stream_name: impl Into<String>) -> SchedulerBuilder {
        SchedulerBuilder {
            config: SchedulerConfig::new(application_name, stream_name, default_worker_id()),
            backend: None,
            store: None,
            factory: None,
            tracker: None,
            create_lease_table: true,
            #[cfg(feature = "dynamodb")]
            lease_table: None,
        }
    }

    /// A builder for a multi-stream application: the streams come from `tracker` (a fixed
    /// `Vec<StreamConfig>`, a [`crate::StreamList`] changed at run time, or your own).
    pub fn multi_stream_builder(
        application_name: impl Into<String>,
        tracker: impl StreamTracker,
    ) -> SchedulerBuilder {
        Self::builder(application_name, "").stream_tracker(tracker)
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Starts the worker on the current Tokio runtime and returns a handle to stop it.
    pub fn spawn(self) -> SchedulerHandle {
        let (tx, rx) = oneshot::channel::<()>();
        let worker_id = self.config.worker_id.clone();
        let (coordinator, acquired) = self.coordinator();
        let health = self.health.clone();
        let meter = self.meter.clone();
        let fatal = self.fatal.clone();
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still = running.clone();
        let run = self.run_with(coordinator.clone(), acquired, async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(async move {
            // Cleared even if the run panics (the guard is dropped while unwinding).
            let _running = RunningFlag(still);
            run.await
        });
        SchedulerHandle {
            worker_id,
            shutdown: Some(tx),
            task,
            coordinator,
            health,
            meter,
            fatal,
            running,
        }
    }

    /// Runs the worker until `shutdown` resolves, then shuts down gracefully.
    ///
    /// In a binary, pass a future that resolves on SIGTERM or SIGINT.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (coordinator, acquired) = self.coordinator();
        self.run_with(coordinator, acquired, shutdown).await
    }

    fn coordinator(
        &self,
    ) -> (
        Arc<LeaseCoordinator>,
        tokio::sync::mpsc::Receiver<Arc<kcl_lease::HeldLease>>,
    ) {
        let config =
            CoordinatorConfig::with_settings(self.config.worker_id.clone(), self.config.leases.clone());
        LeaseCoordinator::new(self.store.clone(), config)
    }

    /// The shard sync of this worker (not started), and in multi-stream mode the set of
    /// tracked stream identifiers it maintains, which also filters the leases the coordinator
    /// takes.
    fn shard_sync(
        &self,
        coordinator: &Arc<LeaseCoordinator>,
        shard_ended: &Arc<Notify>,
        removed: tokio::sync::mpsc::Sender<BTreeSet<String>>,
    ) -> (ShardSync, Option<Arc<std::sync::RwLock<BTreeSet<String>>>>) {
        let (streams, tracked_streams) = match &self.tracker {
            None => (SyncedStreams::Single, None),
            Some(tracker) => {
                let tracked = Arc::new(std::sync::RwLock::new(BTreeSet::new()));
                let filter = tracked.clone();
                coordinator.set_filter(move |lease| {
                    lease.stream().is_some_and(|s| {
                        filter
                            .read()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .contains(&s.to_string())
                    })
                });
                let streams = SyncedStreams::Tracked {
                    tracker: tracker.clone(),
                    tracked: tracked.clone(),
                    removed,
                };
                (streams, Some(tracked))
            }
        };
        let sync = ShardSync {
            backend: self.backend.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            shard_ended: shard_ended.clone(),
            coordinator: coordinator.clone(),
            fatal: self.fatal.clone(),
            streams,
        };
        (sync, tracked_streams)
    }

    /// Starts the shard task of a lease just acquired.
    fn start_shard(&self, shards: &mut ShardTasks, lease: Arc<kcl_lease::HeldLease>, ctx: ShardContext) {
        let key = lease.key().to_owned();
        let health = new_shard_health(&key);
        lock(&self.health).insert(key.clone(), health.clone());
        let info = match lease.stream() {
            Some(stream) => ShardInfo::of_stream(stream.clone(), lease.shard_id()),
            None => ShardInfo::new(self.config.stream_name.clone(), lease.shard_id()),
        };
        let consumer = ShardConsumer::new(lease.clone(), self.factory.create(&info), ctx, health);
        let span = info_span!("shard", shard_id = %key);
        let handle = shards.tasks.spawn(
            async move {
                consumer.run().await;
            }
            .instrument(span),
        );
        shards.keys.insert(handle.id(), lease);
    }

    /// The graceful shutdown's middle: waits for the shard tasks (up to
    /// `graceful_shutdown_timeout`, then aborts them), releasing each lease as its shard
    /// finishes, then releases whatever is still held.
    async fn drain_and_release(
        &self,
        coordinator: &Arc<LeaseCoordinator>,
        mut shards: ShardTasks,
        mut acquired: tokio::sync::mpsc::Receiver<Arc<kcl_lease::HeldLease>>,
    ) {
        // Leases are released as their shards finish, several at once, so that the last
        // one goes soon after the last processor is done.
        let drain = async {
            let mut releasing = futures_util::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    Some(done) = shards.tasks.join_next_with_id() => {
                        if let Some(lease) = forget(&mut shards.keys, &self.health, done) {
                            let c = coordinator.clone();
                            releasing.push(async move { c.release(&lease).await });
                        }
                    }
                    Some(()) = releasing.next(), if !releasing.is_empty() => {}
                    else => break,
                }
            }
        };
        if tokio::time::timeout(self.config.graceful_shutdown_timeout, drain)
            .await
            .is_err()
        {
            warn!("processors did not finish within the graceful shutdown timeout; aborting them");
            shards.tasks.abort_all();
            while let Some(done) = shards.tasks.join_next_with_id().await {
                finish(coordinator, &mut shards.keys, &self.health, done).await;
            }
        }
        acquired.close();
        let mut rest: Vec<Arc<kcl_lease::HeldLease>> = Vec::new();
        while let Ok(lease) = acquired.try_recv() {
            rest.push(lease);
        }
        rest.extend(coordinator.held());
        futures_util::stream::iter(rest)
            .for_each_concurrent(RELEASE_CONCURRENCY, |lease| {
                let c = coordinator.clone();
                async move { c.release(&lease).await }
            })
            .await;
    }

    async fn run_with(
        self,
        coordinator: Arc<LeaseCoordinator>,
        mut acquired: tokio::sync::mpsc::Receiver<Arc<kcl_lease::HeldLease>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let span = info_span!("worker", worker_id = %self.config.worker_id);
        async move {
            info!(stream = %self.config.stream_name, multi_stream = self.tracker.is_some(), application = %self.config.application_name, "worker starting");
            tokio::pin!(shutdown);
            #[cfg(feature = "dynamodb")]
            if let Some(table) = &self.lease_table {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    created = table.ensure_table() => {
                        if created? {
                            info!(table = table.table_name(), "created the lease table");
                        }
                    }
                }
            }
            // Background tasks: aborted when this future is dropped (the worker is killed).
            let mut background = JoinSet::new();
            let shard_ended = Arc::new(Notify::new());
            // Multi-stream: streams that stop being tracked, from the sync loop to this one.
            let (removed_tx, mut removed_rx) = tokio::sync::mpsc::channel::<BTreeSet<String>>(16);
            // Which background task is which, for the error if one ends.
            let mut task_names: HashMap<tokio::task::Id, &'static str> = HashMap::new();
            let mut fatal_rx = self.fatal.subscribe();
            // Multi-stream: the identifiers of the streams tracked now.
            let (sync, tracked_streams) = self.shard_sync(&coordinator, &shard_ended, removed_tx);
            let sync = background.spawn(sync.run().in_current_span());
            task_names.insert(sync.id(), "shard sync");
            let (stop_coordinator, stop_rx) = watch::channel(false);

            // Enhanced fan-out: the consumer is registered (and active) before leases are taken,
            // so that a configuration that cannot work fails here rather than in every shard.
            let consumers = match self.config.fan_out_consumer_name() {
                None => None,
                // Several streams: each stream's consumer is registered by its first reader.
                Some(name) if self.tracker.is_some() => Some(Arc::new(ConsumerRegistry::new(name))),
                Some(name) => {
                    let registry = Arc::new(ConsumerRegistry::new(name));
                    tokio::select! {
                        () = &mut shutdown => {
                            background.shutdown().await;
                            return Ok(());
                        }
                        r = register(&*self.backend, &registry, &self.config.stream_name) => r?,
                    }
                    Some(registry)
                }
            };

            let (stop_shards, shutdown_rx) = watch::channel(false);
            let mut shards = ShardTasks::default();
            let lease_task = background.spawn(coordinator.clone().run(stop_rx).in_current_span());
            task_names.insert(lease_task.id(), "lease coordinator");
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    Some(done) = background.join_next_with_id() => {
                        let (id, how) = match done {
                            Ok((id, ())) => (id, "ended".to_owned()),
                            Err(e) => (e.id(), describe_join_error(e)),
                        };
                        let task = task_names.get(&id).copied().unwrap_or("background task");
                        self.fatal.stop_worker(FatalError::Task { task, how });
                        break;
                    }
                    Ok(()) = fatal_rx.changed() => {
                        if self.fatal.worker_error().is_some() {
                            break;
                        }
                        // Multi-stream: streams that failed stop here; their leases are released
                        // and no longer taken.
                        let failed = self.fatal.failed_streams();
                        if let Some(tracked) = &tracked_streams {
                            tracked
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .retain(|s| !failed.contains(s));
                        }
                        shards.stop_streams(&failed, "stream stopped by a fatal error: stopping the shard and releasing its lease");
                    }
                    Some(lease) = acquired.recv() => {
                        let ctx = ShardContext {
                            backend: self.backend.clone(),
                            store: self.store.clone(),
                            config: self.config.clone(),
                            shutdown: shutdown_rx.clone(),
                            shard_ended: shard_ended.clone(),
                            consumers: consumers.clone(),
                            release: shards.release_signal(lease.key()),
                            fatal: self.fatal.clone(),
                        };
                        self.start_shard(&mut shards, lease, ctx);
                    }
                    Some(done) = shards.tasks.join_next_with_id() => {
                        if let Some(lease) = finish(&coordinator, &mut shards.keys, &self.health, done).await {
                            shards.stops.remove(lease.key());
                        }
                    }
                    Some(removed) = removed_rx.recv() => {
                        shards.stop_streams(&removed, "stream no longer tracked: stopping the shard and releasing its lease");
                    }
                }
            }

            info!("worker shutting down gracefully");
            coordinator.stop_taking();
            let _ = stop_shards.send(true);
            self.drain_and_release(&coordinator, shards, acquired).await;
            // Last: the heartbeat row goes, so that the others see this worker leave at once.
            coordinator.leave().await;
            let _ = stop_coordinator.send(true);
            background.shutdown().await;
            match self.fatal.worker_error() {
                Some(cause) => {
                    error!(error = %cause, "worker stopped by a fatal error");
                    Err(KclError::Fatal(cause))
                }
                None => {
                    info!("worker stopped");
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Asks the shards of `streams` (stream identifiers) to stop and release their leases.
fn stop_shards_of(stops: &HashMap<String, watch::Sender<bool>>, streams: &BTreeSet<String>, why: &str) {
    for (key, stop) in stops {
        let gone = StreamIdentifier::split_lease_key(key)
            .is_some_and(|(stream, _)| streams.contains(&stream.to_string()));
        if gone && !*stop.borrow() {
            info!(shard_id = %key, "{why}");
            let _ = stop.send(true);
        }
    }
}

/// `panicked: <message>` (or `was cancelled`) for a background task's join error.
fn describe_join_error(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "was cancelled".to_owned();
    }
    let message = crate::shard::failed_batch::panic_message(&*e.into_panic());
    format!("panicked: {message}")
}

/// Registers the fan-out consumer on `stream` and waits until it is active, retrying what can be
/// retried.
async fn register(backend: &dyn StreamBackend, registry: &ConsumerRegistry, stream: &str) -> Result<()> {
    let mut delays = crate::backoff::Backoff::new(crate::backoff::Policy::Consumer);
    loop {
        match registry.arn(backend, stream).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "registering the fan-out consumer failed; retrying");
                tokio::time::sleep(delays.next_delay()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Releases the lease of a finished shard task; returns it.
async fn finish(
    coordinator: &LeaseCoordinator,
    keys: &mut HashMap<tokio::task::Id, Arc<kcl_lease::HeldLease>>,
    health: &HealthRegistry,
    done: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) -> Option<Arc<kcl_lease::HeldLease>> {
    let panicked = done.as_ref().err().is_some_and(|e| e.is_panic());
    let lease = forget(keys, health, done)?;
    if panicked {
        coordinator
            .journal()
            .error(Some(lease.key()), "the shard consumer panicked");
    }
    coordinator.release(&lease).await;
    Some(lease)
}

/// The bookkeeping of a finished shard task (its key, its health entry); returns its key.
fn forget(
    keys: &mut HashMap<tokio::task::Id, Arc<kcl_lease::HeldLease>>,
    health: &HealthRegistry,
    done: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) -> Option<Arc<kcl_lease::HeldLease>> {
    let id = match &done {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    };
    let lease = keys.remove(&id)?;
    let key = lease.key();
    lock(health).remove(key);
    if let Err(e) = &done {
        if e.is_panic() {
            error!(shard_id = %key, "shard consumer panicked; releasing its lease");
        }
    }
    Some(lease)
}

/// At most this many leases are released at once at shutdown.
const RELEASE_CONCURRENCY: usize = 32;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The worker's shard tasks, one per held lease.
#[derive(Default)]
struct ShardTasks {
    tasks: JoinSet<()>,
    /// The lease of each task.
    keys: HashMap<tokio::task::Id, Arc<kcl_lease::HeldLease>>,
    /// Per lease: the signal that stops its shard and releases the lease (multi-stream removal,
    /// a stream's fatal error).
    stops: HashMap<String, watch::Sender<bool>>,
}

impl ShardTasks {
    /// The stop signal of a shard about to start.
    fn release_signal(&mut self, key: &str) -> watch::Receiver<bool> {
        let (stop, release) = watch::channel(false);
        self.stops.insert(key.to_owned(), stop);
        release
    }

    /// Asks the shards of `streams` (stream identifiers) to stop and release their leases.
    fn stop_streams(&self, streams: &BTreeSet<String>, why: &str) {
        stop_shards_of(&self.stops, streams, why);
    }
}

/// Which streams the shard sync keeps leases for.
enum SyncedStreams {
    /// The configured stream (`SchedulerConfig::stream_name`); its lease keys are shard ids.
    Single,
    /// The streams a tracker lists, with multi-stream lease keys. The loop also tells the
    /// scheduler which streams disappeared, and deletes the leases of former streams after the
    /// clean-up delay.
    Tracked {
        tracker: Arc<dyn StreamTracker>,
        /// The identifiers of the streams tracked now (the coordinator's take filter reads it).
        tracked: Arc<std::sync::RwLock<BTreeSet<String>>>,
        removed: tokio::sync::mpsc::Sender<BTreeSet<String>>,
    },
}

/// One stream to synchronise this round.
struct SyncTarget {
    name: String,
    /// Multi-stream: its identity (lease keys and fatal errors are per identifier).
    id: Option<StreamIdentifier>,
    initial: InitialPosition,
    /// Whether its identifier was given (not looked up, so never looked up again).
    given_id: bool,
}

/// The shard sync, for one stream or many: creates the leases of new shards (parents before
/// children) on the leader every `shard_sync_interval` and on any worker whose shard ended,
/// and deletes finished leases.
struct ShardSync {
    backend: Arc<dyn StreamBackend>,
    store: Arc<dyn LeaseStore>,
    config: Arc<SchedulerConfig>,
    shard_ended: Arc<Notify>,
    coordinator: Arc<LeaseCoordinator>,
    /// A stream that failed for good is no longer synchronised (nor, in multi-stream mode,
    /// tracked).
    fatal: FatalSignal,
    streams: SyncedStreams,
}

impl ShardSync {
    async fn run(self) {
        // Multi-stream: stream name to identifier, looked up once per stream.
        let mut identifiers: HashMap<String, StreamIdentifier> = HashMap::new();
        // Multi-stream: former streams (with leases in the table) and when this worker first
        // saw them missing.
        let mut missing_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut first = true;
        let mut ended = false;
        loop {
            let Some((targets, now_tracked)) = self.targets(&mut identifiers).await else {
                return;
            };
            if first {
                // The leader is known once the heartbeats were read once.
                self.coordinator
                    .wait_ready(self.config.leases.failover_time)
                    .await;
            }
            // Syncs after a shard of this worker ended run here; the periodic one (the first
            // one included) only on the leader (one worker of the fleet), so that the fleet
            // lists the table and creates leases once per interval, not once per worker.
            let due = ended || self.coordinator.is_leader();
            let listed = if due {
                Some(self.store.list_eventually_consistent().await)
            } else {
                None
            };
            match listed {
                None => {}
                Some(Ok(leases)) => {
                    let mut created = 0;
                    for target in &targets {
                        match self.sync_one(target, &leases, &mut identifiers).await {
                            Some(n) => created += n,
                            None => return,
                        }
                    }
                    if created > 0 {
                        // The others read the table on the announcement; this worker now.
                        self.coordinator.announce();
                        self.coordinator.wake();
                    }
                    if self.config.delete_finished_leases {
                        delete_finished_leases(&*self.store, &leases).await;
                    }
                    if let Some(tracked) = &now_tracked {
                        self.clean_up(&leases, tracked, &mut missing_since).await;
                    }
                }
                Some(Err(e)) => warn!(error = %e, "listing leases for shard sync failed"),
            }
            first = false;
            ended = tokio::select! {
                () = tokio::time::sleep(self.config.shard_sync_interval) => false,
                () = self.shard_ended.notified() => {
                    self.coordinator.wake();
                    true
                }
            };
        }
    }

    /// The streams to synchronise this round (and, multi-stream, the identifiers tracked
    /// now, after telling the scheduler which ones disappeared); `None` when the scheduler is
    /// gone.
    async fn targets(
        &self,
        identifiers: &mut HashMap<String, StreamIdentifier>,
    ) -> Option<(Vec<SyncTarget>, Option<BTreeSet<String>>)> {
        let SyncedStreams::Tracked { tracked, removed, .. } = &self.streams else {
            let single = SyncTarget {
                name: self.config.stream_name.clone(),
                id: None,
                initial: self.config.initial_position,
                given_id: false,
            };
            return Some((vec![single], None));
        };
        let failed = self.fatal.failed_streams();
        let mut streams = self.resolve(identifiers).await;
        streams.retain(|(_, id)| !failed.contains(&id.to_string()));
        let now_tracked: BTreeSet<String> = streams.iter().map(|(_, id)| id.to_string()).collect();
        let before = std::mem::replace(
            &mut *tracked.write().unwrap_or_else(std::sync::PoisonError::into_inner),
            now_tracked.clone(),
        );
        let gone: BTreeSet<String> = before.difference(&now_tracked).cloned().collect();
        if !gone.is_empty() {
            info!(removed = ?gone, "streams no longer tracked");
            removed.send(gone).await.ok()?;
        }
        let targets = streams
            .into_iter()
            .map(|(stream, id)| SyncTarget {
                initial: stream.initial_position.unwrap_or(self.config.initial_position),
                given_id: stream.identifier.is_some(),
                name: stream.name,
                id: Some(id),
            })
            .collect();
        Some((targets, Some(now_tracked)))
    }

    /// Creates the leases of one stream's new shards; returns how many, or `None` when the
    /// (single) stream failed for good and the sync stops.
    async fn sync_one(
        &self,
        target: &SyncTarget,
        leases: &[kcl_lease::Lease],
        identifiers: &mut HashMap<String, StreamIdentifier>,
    ) -> Option<usize> {
        let result = sync_stream(
            &*self.backend,
            &*self.store,
            leases,
            &target.name,
            target.id.as_ref(),
            target.initial,
        )
        .await;
        let e = match result {
            Ok(n) => return Some(n),
            Err(e) => e,
        };
        match (&target.id, e) {
            (None, KclError::Backend(e)) if self.fatal.check_stream(&target.name, false, &e) => return None,
            (Some(id), KclError::Backend(e @ BackendError::StreamNotFound(_))) => {
                // This incarnation of the stream is gone for good; a recreated stream gets a
                // new identifier: look it up again.
                self.fatal.check_stream(&id.to_string(), true, &e);
                if !target.given_id {
                    identifiers.remove(&target.name);
                }
            }
            (Some(id), KclError::Backend(e)) if self.fatal.check_stream(&id.to_string(), true, &e) => {}
            (_, e) => {
                warn!(stream = %target.name, error = %e, "shard sync failed");
                self.coordinator
                    .journal()
                    .error(None, format_args!("shard sync of {} failed: {e}", target.name));
            }
        }
        Some(0)
    }

    /// The tracked streams with their identifiers. A stream whose identifier cannot be looked
    /// up now keeps the one it had, so that a transient failure does not look like a removal.
    async fn resolve(
        &self,
        identifiers: &mut HashMap<String, StreamIdentifier>,
    ) -> Vec<(StreamConfig, StreamIdentifier)> {
        let mut out = Vec::new();
        let SyncedStreams::Tracked { tracker, .. } = &self.streams else {
            return Vec::new();
        };
        for stream in tracker.streams().await {
            if let Some(arn) = &stream.arn {
                self.backend.name_by_arn(arn);
            }
            let id = match stream
                .identifier
                .clone()
                .or_else(|| identifiers.get(&stream.name).cloned())
            {
                Some(id) => id,
                None => match self.backend.stream_identifier(&stream.name).await {
                    Ok(id) => {
                        // A stream named by ARN belongs to the ARN's account, whatever the
                        // backend answers (the local backend has one account).
                        let id = match &stream.arn {
                            Some(arn) => arn.identifier(id.creation_epoch),
                            None => id,
                        };
                        info!(stream = %stream.name, identifier = %id, "tracking stream");
                        identifiers.insert(stream.name.clone(), id.clone());
                        id
                    }
                    Err(e) => {
                        warn!(stream = %stream.name, error = %e, "describing a tracked stream failed; retrying at the next sync");
                        continue;
                    }
                },
            };
            out.push((stream, id));
        }
        out
    }

    /// Deletes the leases of streams that have been missing for the clean-up delay.
    async fn clean_up(
        &self,
        leases: &[kcl_lease::Lease],
        tracked: &BTreeSet<String>,
        missing_since: &mut HashMap<String, tokio::time::Instant>,
    ) {
        let FormerStreamsCleanup::After(delay) = self.config.former_streams_cleanup else {
            return;
        };
        let now = tokio::time::Instant::now();
        let former: BTreeSet<String> = leases
            .iter()
            .filter_map(|l| l.stream().map(|s| s.to_string()))
            .filter(|s| !tracked.contains(s))
            .collect();
        missing_since.retain(|s, _| former.contains(s));
        for stream in &former {
            missing_since.entry(stream.clone()).or_insert(now);
        }
        let mut deleted = 0;
        for lease in leases {
            let Some(stream) = lease.stream().map(|s| s.to_string()) else {
                continue;
            };
            if missing_since
                .get(&stream)
                .is_none_or(|t| now.duration_since(*t) < delay)
            {
                continue;
            }
            match self.store.delete(lease).await {
                Ok(()) => deleted += 1,
                // Still renewed by a worker that is stopping it: next round.
                Err(LeaseError::Conflict { .. } | LeaseError::NotFound(_)) => {}
                Err(e) => {
                    warn!(lease = %lease.lease_key, error = %e, "deleting the lease of a former stream failed")
                }
            }
        }
        if deleted > 0 {
            info!(deleted, "deleted the leases of streams no longer tracked");
        }
    }
}

/// Clears the worker's running flag when dropped.
struct RunningFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Controls a worker started with [`Scheduler::spawn`].
#[must_use = "dropping the handle leaves the worker running; call shutdown() or kill()"]
pub struct SchedulerHandle {
    worker_id: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    coordinator: Arc<LeaseCoordinator>,
    health: HealthRegistry,
    meter: MeteredLeaseStore<Arc<dyn LeaseStore>>,
    fatal: FatalSignal,
    /// True until the worker's task ends.
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl SchedulerHandle {
    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The shard ids whose leases this worker holds right now.
    pub fn held_leases(&self) -> Vec<String> {
        self.coordinator
            .held()
            .iter()
            .map(|l| l.key().to_owned())
            .collect()
    }

    /// A health summary: leases held and, per running shard consumer, its state, lag and
    /// checkpoint. Cheap; meant for health checks and dashboards.
    pub fn health(&self) -> WorkerHealth {
        self.status_source().health()
    }

    /// A cloneable reader of this worker's live status (leases, lag, throughput, recent lease
    /// moves and errors), for a status page or a health endpoint of the user's own binary.
    pub fn status_source(&self) -> StatusSource {
        let (coordinator, health, meter) =
            (self.coordinator.clone(), self.health.clone(), self.meter.clone());
        let worker_id = self.worker_id.clone();
        let running = self.running.clone();
        let fatal_text = self.fatal.clone();
        StatusSource::new(
            move || {
                let shards = lock(&health).values().map(|h| lock(h).clone()).collect();
                WorkerHealth {
                    worker_id: worker_id.clone(),
                    running: running.load(std::sync::atomic::Ordering::SeqCst),
                    leases_held: coordinator.held().len(),
                    shards,
                    fleet: coordinator.fleet(),
                    lease_store: meter.snapshot(),
                }
            },
            self.coordinator.journal().clone(),
            move || fatal_text.errors().iter().map(ToString::to_string).collect(),
        )
    }

    /// This worker's status now (see [`crate::status`]).
    pub fn status(&self) -> WorkerStatus {
        self.status_source().snapshot()
    }

    /// Serves this worker's status page (`/`, refreshing itself) and `/status.json` on `addr`
    /// until the returned server is shut down or dropped.
    #[cfg(feature = "status-page")]
    pub async fn serve_status(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<crate::status::StatusServer> {
        crate::status::serve(self.status_source(), addr).await
    }

    /// The errors that stopped the worker or some of its streams (see [`crate::fatal`]):
    /// empty while everything runs.
    pub fn fatal_errors(&self) -> Vec<FatalError> {
        self.fatal.errors()
    }

    /// Whether the worker is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Shuts down gracefully and waits until every lease is released.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(KclError::Config(format!("worker task failed: {e}"))),
        }
    }

    /// Stops the worker abruptly, as if the process died: nothing is checkpointed or
    /// released; other workers take its leases after the failover time.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
