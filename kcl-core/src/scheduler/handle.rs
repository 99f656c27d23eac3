//! [`SchedulerHandle`]: a worker started with [`Scheduler::spawn`], seen and stopped from
//! outside (status, health, an awaitable stop, graceful shutdown, kill).

use super::*;

/// Clears the worker's running flag when dropped.
pub(super) struct RunningFlag(pub(super) watch::Sender<bool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// Controls a worker started with [`Scheduler::spawn`].
#[must_use = "dropping the handle leaves the worker running; call shutdown() or kill()"]
pub struct SchedulerHandle {
    pub(super) worker_id: String,
    pub(super) shutdown: Option<oneshot::Sender<()>>,
    pub(super) task: JoinHandle<Result<()>>,
    pub(super) coordinator: Arc<LeaseCoordinator>,
    pub(super) health: HealthRegistry,
    pub(super) meter: MeteredLeaseStore<Arc<dyn LeaseStore>>,
    pub(super) fatal: FatalSignal,
    /// True until the worker's task ends.
    pub(super) running: watch::Receiver<bool>,
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
                    running: *running.borrow(),
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

    /// Resolves once the worker has stopped: after a graceful shutdown, a fatal error (see
    /// [`Self::fatal_errors`]), or a panic. Does not stop it; any number of tasks may wait.
    ///
    /// ```
    /// # use kcl_core::SchedulerHandle;
    /// # async fn example(worker: SchedulerHandle) {
    /// tokio::select! {
    ///     () = worker.stopped() => eprintln!("the worker stopped: {:?}", worker.fatal_errors()),
    ///     () = kcl_core::shutdown_signal() => { let _ = worker.shutdown().await; }
    /// }
    /// # }
    /// ```
    pub async fn stopped(&self) {
        let mut running = self.running.clone();
        // An error: the flag is gone with the worker's task, which has stopped then.
        let _ = running.wait_for(|running| !*running).await;
    }

    /// Whether the worker is still running (false once [`Self::stopped`] resolves).
    pub fn is_running(&self) -> bool {
        *self.running.borrow() && !self.task.is_finished()
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
