//! The `Scheduler`: one per worker process. It keeps shard leases through a
//! [`LeaseCoordinator`], synchronises shards and leases, and runs one `ShardConsumer` task
//! per held lease.
//!
//! Shutdown is explicit. A graceful shutdown stops taking leases, asks every consumer to stop
//! (processors get `shutdown_requested` and may checkpoint), waits for them up to
//! `graceful_shutdown_timeout`, then releases every lease so that other workers take them at
//! once rather than after the failover time. Dropping or [`SchedulerHandle::kill`]ing a
//! running scheduler aborts everything without releasing: as if the process died.
//!
//! # Layout
//! - `mod.rs` (this file): [`Scheduler`], its run loop (take leases, start and finish shard
//!   tasks, multi-stream changes, shutdown) and the shard tasks' bookkeeping.
//! - `builder`: [`SchedulerBuilder`].
//! - `sync`: the shard sync loop (leases of new shards, finished leases deleted).
//! - `handle`: [`SchedulerHandle`] (status, health, `stopped`, `shutdown`, `kill`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_lease::{CoordinatorConfig, LeaseCoordinator, LeaseRenewal, LeaseStore, MeteredLeaseStore};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, error_span, info, warn, Instrument};

use crate::backend::{BackendError, StreamBackend};
use crate::config::{InitialPosition, RetrievalMode, SchedulerConfig};
use crate::error::{KclError, Result};
use crate::fatal::{FatalError, FatalGuardStore, FatalSignal};
use crate::metrics::{new_shard_health, SharedShardHealth, WorkerHealth};
use crate::processor::{ProcessorFactory, ShardInfo};
use crate::shard::fan_out::ConsumerRegistry;
use crate::shard::{ShardConsumer, ShardContext};
use crate::shard_sync::{delete_finished_leases, sync_stream_drain, Drain};
use crate::status::{StatusSource, WorkerStatus};
use crate::stream_arn::StreamArn;
use crate::streams::{FormerStreamsCleanup, StreamConfig, StreamTracker};
use kcl_lease::{LeaseError, StreamIdentifier};

mod builder;
mod handle;
mod sync;

pub use builder::SchedulerBuilder;
use handle::RunningFlag;
pub use handle::SchedulerHandle;
use sync::{ShardSync, SyncedStreams};

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
        let (still, running) = watch::channel(true);
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
        // At error level, as the worker span: see there.
        let span = error_span!("shard", shard_id = %key);
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
        // A context span: at error level so that it is on whenever any event is. At info level
        // a `warn` filter (the tools' default) turned it off, and warnings named no worker.
        let span = error_span!("worker", worker_id = %self.config.worker_id);
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
            let tags = match &self.config.retrieval {
                crate::config::RetrievalMode::FanOut(f) => f.tags.clone(),
                _ => Default::default(),
            };
            let consumers = match self.config.fan_out_consumer_name() {
                None => None,
                // Several streams: each stream's consumer is registered by its first reader.
                Some(name) if self.tracker.is_some() => Some(Arc::new(ConsumerRegistry::new(name, tags))),
                Some(name) => {
                    let registry = Arc::new(ConsumerRegistry::new(name, tags));
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
