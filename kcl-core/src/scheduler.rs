//! The `Scheduler`: one per worker process. It keeps shard leases through a
//! [`LeaseCoordinator`], synchronises shards and leases, and runs one [`ShardConsumer`] task
//! per held lease.
//!
//! Shutdown is explicit. A graceful shutdown stops taking leases, asks every consumer to stop
//! (processors get `shutdown_requested` and may checkpoint), waits for them up to
//! `graceful_shutdown_timeout`, then releases every lease so that other workers take them at
//! once rather than after the failover time. Dropping or [`SchedulerHandle::kill`]ing a
//! running scheduler aborts everything without releasing: as if the process died.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_lease::{CoordinatorConfig, LeaseCoordinator, LeaseStore};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, info_span, warn, Instrument};

use crate::backend::StreamBackend;
use crate::config::{InitialPosition, RetrievalMode, SchedulerConfig};
use crate::error::{KclError, Result};
use crate::metrics::{new_shard_health, SharedShardHealth, WorkerHealth};
use crate::processor::ProcessorFactory;
use crate::shard::fan_out::ConsumerRegistry;
use crate::shard::{ShardConsumer, ShardContext};
use crate::shard_sync::sync_shards;

/// Builds a [`Scheduler`]. Every setting has a default (see [`SchedulerConfig`]); a backend, a
/// lease store and a processor factory are required.
#[must_use]
pub struct SchedulerBuilder {
    config: SchedulerConfig,
    backend: Option<Arc<dyn StreamBackend>>,
    store: Option<Arc<dyn LeaseStore>>,
    factory: Option<Arc<dyn ProcessorFactory>>,
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

    /// The lease store (the bundled in-memory one, or DynamoDB).
    pub fn lease_store(mut self, store: impl LeaseStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Makes one processor per shard: any `Fn(&str) -> impl RecordProcessor`.
    pub fn processor_factory(mut self, factory: impl ProcessorFactory) -> Self {
        self.factory = Some(Arc::new(factory));
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
    setter!(
        /// How often held leases are renewed.
        renew_interval: Duration
    );
    setter!(
        /// How often the lease table is scanned to take and balance leases.
        take_interval: Duration
    );
    setter!(
        /// At most this many leases for this worker.
        max_leases_per_worker: usize
    );
    setter!(
        /// At most this many leases stolen per round.
        max_leases_to_steal: usize
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

    /// Checks the settings and builds the scheduler.
    pub fn build(self) -> Result<Scheduler> {
        self.config.validate().map_err(KclError::Config)?;
        let missing = |what: &str| KclError::Config(format!("a {what} is required"));
        Ok(Scheduler {
            config: Arc::new(self.config),
            backend: self.backend.ok_or_else(|| missing("stream backend"))?,
            store: self.store.ok_or_else(|| missing("lease store"))?,
            factory: self.factory.ok_or_else(|| missing("processor factory"))?,
            health: HealthRegistry::default(),
        })
    }
}

/// The status of every running shard consumer, for [`SchedulerHandle::health`].
type HealthRegistry = Arc<std::sync::Mutex<BTreeMap<String, SharedShardHealth>>>;

/// A worker: consumes its share of a stream's shards. See the module docs.
pub struct Scheduler {
    config: Arc<SchedulerConfig>,
    backend: Arc<dyn StreamBackend>,
    store: Arc<dyn LeaseStore>,
    factory: Arc<dyn ProcessorFactory>,
    health: HealthRegistry,
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
        }
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
        let task = tokio::spawn(self.run_with(coordinator.clone(), acquired, async move {
            let _ = rx.await;
        }));
        SchedulerHandle {
            worker_id,
            shutdown: Some(tx),
            task,
            coordinator,
            health,
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
        let c = &self.config;
        let config = CoordinatorConfig {
            worker_id: c.worker_id.clone(),
            failover_time: c.failover_time,
            renew_interval: c.renew_interval,
            take_interval: c.take_interval,
            max_leases_per_worker: c.max_leases_per_worker,
            max_leases_to_steal: c.max_leases_to_steal,
        };
        LeaseCoordinator::new(self.store.clone(), config)
    }

    async fn run_with(
        self,
        coordinator: Arc<LeaseCoordinator>,
        mut acquired: tokio::sync::mpsc::Receiver<Arc<kcl_lease::HeldLease>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let span = info_span!("worker", worker_id = %self.config.worker_id);
        async move {
            info!(stream = %self.config.stream_name, application = %self.config.application_name, "worker starting");
            // Background tasks: aborted when this future is dropped (the worker is killed).
            let mut background = JoinSet::new();
            tokio::pin!(shutdown);
            let shard_ended = Arc::new(Notify::new());
            background.spawn(
                shard_sync_loop(
                    self.backend.clone(),
                    self.store.clone(),
                    self.config.clone(),
                    shard_ended.clone(),
                    coordinator.clone(),
                )
                .in_current_span(),
            );
            let (stop_coordinator, stop_rx) = watch::channel(false);

            // Enhanced fan-out: the consumer is registered (and active) before leases are taken,
            // so that a configuration that cannot work fails here rather than in every shard.
            let consumers = match self.config.fan_out_consumer_name() {
                None => None,
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
            let mut shards: JoinSet<()> = JoinSet::new();
            let mut keys: HashMap<tokio::task::Id, String> = HashMap::new();
            background.spawn(coordinator.clone().run(stop_rx).in_current_span());
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    Some(lease) = acquired.recv() => {
                        let key = lease.key().to_owned();
                        let ctx = ShardContext {
                            backend: self.backend.clone(),
                            store: self.store.clone(),
                            config: self.config.clone(),
                            shutdown: shutdown_rx.clone(),
                            shard_ended: shard_ended.clone(),
                            consumers: consumers.clone(),
                        };
                        let health = new_shard_health(&key);
                        lock(&self.health).insert(key.clone(), health.clone());
                        let consumer = ShardConsumer::new(lease, self.factory.create(&key), ctx, health);
                        let span = info_span!("shard", shard_id = %key);
                        let handle = shards.spawn(async move { consumer.run().await; }.instrument(span));
                        keys.insert(handle.id(), key);
                    }
                    Some(done) = shards.join_next_with_id() => {
                        finish(&coordinator, &mut keys, &self.health, done).await;
                    }
                }
            }

            info!("worker shutting down gracefully");
            coordinator.stop_taking();
            let _ = stop_shards.send(true);
            let drain = async {
                while let Some(done) = shards.join_next_with_id().await {
                    finish(&coordinator, &mut keys, &self.health, done).await;
                }
            };
            if tokio::time::timeout(self.config.graceful_shutdown_timeout, drain).await.is_err() {
                warn!("processors did not finish within the graceful shutdown timeout; aborting them");
                shards.abort_all();
                while let Some(done) = shards.join_next_with_id().await {
                    finish(&coordinator, &mut keys, &self.health, done).await;
                }
            }
            acquired.close();
            while let Ok(lease) = acquired.try_recv() {
                coordinator.release(lease.key()).await;
            }
            for lease in coordinator.held() {
                coordinator.release(lease.key()).await;
            }
            let _ = stop_coordinator.send(true);
            background.shutdown().await;
            info!("worker stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// A shard consumer finished: release or forget its lease.
/// Registers the fan-out consumer on `stream` and waits until it is active, retrying what can be
/// retried.
async fn register(backend: &dyn StreamBackend, registry: &ConsumerRegistry, stream: &str) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match registry.arn(backend, stream).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "registering the fan-out consumer failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn finish(
    coordinator: &LeaseCoordinator,
    keys: &mut HashMap<tokio::task::Id, String>,
    health: &HealthRegistry,
    done: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let id = match &done {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    };
    let Some(key) = keys.remove(&id) else { return };
    lock(health).remove(&key);
    if let Err(e) = &done {
        if e.is_panic() {
            error!(shard_id = %key, "shard consumer panicked; releasing its lease");
        }
    }
    coordinator.release(&key).await;
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn shard_sync_loop(
    backend: Arc<dyn StreamBackend>,
    store: Arc<dyn LeaseStore>,
    config: Arc<SchedulerConfig>,
    shard_ended: Arc<Notify>,
    coordinator: Arc<LeaseCoordinator>,
) {
    let mut first = true;
    loop {
        match sync_shards(&*backend, &*store, &config.stream_name, config.initial_position).await {
            Ok(created) if created > 0 || first => coordinator.wake(),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "shard sync failed"),
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(config.shard_sync_interval) => {}
            () = shard_ended.notified() => coordinator.wake(),
        }
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
        let shards = lock(&self.health).values().map(|h| lock(h).clone()).collect();
        WorkerHealth {
            worker_id: self.worker_id.clone(),
            running: !self.task.is_finished(),
            leases_held: self.coordinator.held().len(),
            shards,
        }
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
