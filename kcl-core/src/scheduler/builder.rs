//! [`SchedulerBuilder`]: the settings and parts of a worker, checked by [`SchedulerBuilder::build`].

use super::*;

/// Builds a [`Scheduler`]. Every setting has a default (see [`SchedulerConfig`]); a backend, a
/// lease store and a processor are required: [`SchedulerBuilder::aws`] (feature `aws`) gives the
/// first two, [`SchedulerBuilder::handler`] or [`SchedulerBuilder::processor_factory`] the third.
/// [`SchedulerBuilder::build`] says which is missing.
#[must_use]
pub struct SchedulerBuilder {
    pub(super) config: SchedulerConfig,
    pub(super) backend: Option<Arc<dyn StreamBackend>>,
    pub(super) store: Option<Arc<dyn LeaseStore>>,
    pub(super) factory: Option<Arc<dyn ProcessorFactory>>,
    pub(super) tracker: Option<Arc<dyn StreamTracker>>,
    /// Whether a DynamoDB lease table is created when missing (default `true`).
    pub(super) create_lease_table: bool,
    /// The lease store when it is a DynamoDB table, to create it at start.
    #[cfg(feature = "dynamodb")]
    pub(super) lease_table: Option<kcl_lease::DynamoDbLeaseStore>,
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
