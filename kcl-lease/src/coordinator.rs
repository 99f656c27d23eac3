//! The lease coordinator: the async driver around [`crate::balance`].
//!
//! One per worker. It renews the leases the worker holds every `renew_interval`, and every
//! `take_interval` scans the table, updates its [`ExpiryTracker`] and takes or steals what
//! [`plan_takes`] says. Acquired leases are published on a bounded channel (the scheduler
//! starts a shard task for each); a change of a held lease's status (lost, or a graceful
//! hand-off requested by another worker) is published on the lease's own `watch` channel.
//!
//! A worker stops processing a lease before anyone else may take it: a held lease is valid
//! until `failover_time` after the *start* of its last successful renewal, while other
//! workers only consider it expired `failover_time` after they *saw* that renewal, which is
//! later.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::balance::{plan_takes, BalanceConfig, ExpiryTracker};
use crate::error::{LeaseError, Result};
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;
use crate::stream::StreamIdentifier;

/// Names of the metrics the coordinator emits through the `metrics` facade (label
/// `worker_id`), following the Java KCL's CloudWatch metric names.
pub mod metric_names {
    /// Gauge: leases this worker holds.
    pub const CURRENT_LEASES: &str = "CurrentLeases";
    /// Gauge: active (not finished) leases in the table at the last scan.
    pub const TOTAL_LEASES: &str = "TotalLeases";
    /// Counter: leases taken (free, expired or stolen).
    pub const TAKEN_LEASES: &str = "TakenLeases";
    /// Counter: leases stolen from another worker for balance.
    pub const LEASES_STOLEN: &str = "LeasesStolen";
    /// Counter: leases lost (taken by another worker, or not renewed in time).
    pub const LOST_LEASES: &str = "LostLeases";
    /// Counter: renewals that failed for another reason than a lost lease.
    pub const RENEW_FAILURES: &str = "RenewLease.Failures";
}

use metric_names::*;

/// Settings of a [`LeaseCoordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// This worker's id, written as `leaseOwner`.
    pub worker_id: String,
    /// A lease whose counter stands still this long is expired.
    pub failover_time: Duration,
    /// How often held leases are renewed (normally `failover_time / 3`).
    pub renew_interval: Duration,
    /// How often the table is scanned to take and steal leases.
    pub take_interval: Duration,
    /// Never hold more leases than this.
    pub max_leases_per_worker: usize,
    /// Steal at most this many leases per round.
    pub max_leases_to_steal: usize,
}

impl CoordinatorConfig {
    /// Settings derived from a failover time: renew and take every third of it.
    pub fn new(worker_id: impl Into<String>, failover_time: Duration) -> Self {
        Self {
            worker_id: worker_id.into(),
            failover_time,
            renew_interval: failover_time / 3,
            take_interval: failover_time / 3,
            max_leases_per_worker: usize::MAX,
            max_leases_to_steal: 1,
        }
    }
}

/// The state of a lease this worker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Held and renewed: process it.
    Held,
    /// Another worker took it with a graceful hand-off: stop reading, let the processor
    /// checkpoint, then let go.
    HandoffRequested,
    /// Lost (taken after expiry, or not renewed in time): stop at once, do not checkpoint.
    Lost,
}

/// A lease this worker holds: the row as last written, its validity and its status.
///
/// All of this worker's writes to the row (renewals, checkpoints) go through it and are
/// serialised by `row`, a Tokio mutex held across the conditional write on purpose: each write
/// is conditional on the counter the previous one produced.
pub struct HeldLease {
    key: String,
    /// The shard, and the stream of a multi-stream lease (fixed for the lease's lifetime).
    shard_id: String,
    stream: Option<StreamIdentifier>,
    worker_id: String,
    failover_time: Duration,
    store: Arc<dyn LeaseStore>,
    row: tokio::sync::Mutex<Lease>,
    valid_until: Mutex<Instant>,
    status: watch::Sender<LeaseStatus>,
    /// Set when this worker let the lease go on purpose (so that it is not counted as lost).
    released: AtomicBool,
    lost_counted: AtomicBool,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("key", &self.key)
            .field("worker_id", &self.worker_id)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl HeldLease {
    fn new(
        row: Lease,
        worker_id: &str,
        failover_time: Duration,
        store: Arc<dyn LeaseStore>,
        at: Instant,
    ) -> Self {
        Self {
            key: row.lease_key.clone(),
            shard_id: row.shard_id().to_owned(),
            stream: row.stream(),
            worker_id: worker_id.to_owned(),
            failover_time,
            store,
            row: tokio::sync::Mutex::new(row),
            valid_until: Mutex::new(at + failover_time),
            status: watch::channel(LeaseStatus::Held).0,
            released: AtomicBool::new(false),
            lost_counted: AtomicBool::new(false),
        }
    }

    /// The lease key (the shard id, or `account:stream:creationEpoch:shardId`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The shard's id.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The stream of a multi-stream lease; `None` in single-stream mode.
    pub fn stream(&self) -> Option<&StreamIdentifier> {
        self.stream.as_ref()
    }

    /// The lease key of a related shard (a parent or a child) of the same stream.
    pub fn sibling_key(&self, shard_id: &str) -> String {
        match &self.stream {
            Some(stream) => stream.lease_key(shard_id),
            None => shard_id.to_owned(),
        }
    }

    /// The worker holding it.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The current status.
    pub fn status(&self) -> LeaseStatus {
        *self.status.borrow()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.subscribe()
    }

    /// Whether records may be processed now: held, and renewed recently enough that no other
    /// worker can have taken it.
    pub fn is_valid(&self) -> bool {
        self.status() == LeaseStatus::Held && Instant::now() < *lock(&self.valid_until)
    }

    /// The row as this worker last wrote or read it.
    pub async fn lease(&self) -> Lease {
        self.row.lock().await.clone()
    }

    /// Marks the lease lost (for example when the shard task learns it from a failed write).
    pub fn mark_lost(&self) {
        self.set_status(LeaseStatus::Lost);
    }

    fn set_status(&self, status: LeaseStatus) {
        self.status.send_if_modified(|s| {
            // Lost is final; a hand-off can only become lost.
            let allowed = match (*s, status) {
                (LeaseStatus::Lost, _) => false,
                (a, b) => a != b,
            };
            if allowed {
                *s = status;
            }
            allowed
        });
        if status == LeaseStatus::Lost
            && self.status() == LeaseStatus::Lost
            && !self.released.load(Ordering::Relaxed)
        {
            // Counted once: a released lease is marked lost too, but it was let go, not lost.
            if !self.lost_counted.swap(true, Ordering::Relaxed) {
                metrics::counter!(LOST_LEASES, "worker_id" => self.worker_id.clone()).increment(1);
            }
        }
    }

    /// Classifies a failed conditional write from the row the store returned.
    fn on_conflict(&self, actual: Option<&Lease>) {
        match actual {
            Some(row)
                if row.checkpoint_owner.as_deref() == Some(&self.worker_id)
                    && !row.is_owned_by(&self.worker_id) =>
            {
                info!(lease = %self.key, new_owner = ?row.lease_owner, "graceful hand-off requested");
                self.set_status(LeaseStatus::HandoffRequested);
            }
            _ => {
                info!(lease = %self.key, "lease lost");
                self.set_status(LeaseStatus::Lost);
            }
        }
    }

    /// Renews the lease once. Only a [`LeaseStatus::Held`] lease is renewed.
    pub async fn renew(&self) {
        if self.status() != LeaseStatus::Held {
            return;
        }
        let mut row = self.row.lock().await;
        let started = Instant::now();
        match self.store.renew(&row).await {
            Ok(new) => {
                *row = new;
                *lock(&self.valid_until) = started + self.failover_time;
            }
            Err(LeaseError::Conflict { actual, .. }) => self.on_conflict(actual.as_deref()),
            Err(LeaseError::NotFound(_)) => self.set_status(LeaseStatus::Lost),
            Err(e) => {
                let deadline = *lock(&self.valid_until);
                warn!(lease = %self.key, error = %e, "renewal failed");
                metrics::counter!(RENEW_FAILURES, "worker_id" => self.worker_id.clone()).increment(1);
                if Instant::now() >= deadline {
                    info!(lease = %self.key, "lease not renewed within the failover time: giving it up");
                    self.set_status(LeaseStatus::Lost);
                }
            }
        }
    }

    /// Writes a checkpoint: as owner while held, or as `checkpointOwner` during a hand-off.
    /// Fails with a conflict if the lease is lost (and marks it so).
    pub async fn checkpoint(&self, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        let mut row = self.row.lock().await;
        match self.status() {
            LeaseStatus::Lost => return Err(self.lost_error()),
            LeaseStatus::Held if !self.is_valid() => {
                self.set_status(LeaseStatus::Lost);
                return Err(self.lost_error());
            }
            _ => {}
        }
        let result = self
            .store
            .update_checkpoint(&row, &self.worker_id, checkpoint)
            .await;
        match result {
            Ok(new) => {
                // The write can succeed as `checkpointOwner` of a hand-off this worker has not
                // noticed yet (another worker stole the lease since the last renewal). Then the
                // row belongs to the new owner: never adopt it (renewing it would renew the
                // thief's lease), keep only the checkpoint and start handing over.
                if self.status() == LeaseStatus::Held && new.is_owned_by(&self.worker_id) {
                    *row = new.clone();
                } else {
                    row.checkpoint = new.checkpoint.clone();
                    if !new.is_owned_by(&self.worker_id) {
                        info!(lease = %self.key, new_owner = ?new.lease_owner, "graceful hand-off requested");
                        self.set_status(LeaseStatus::HandoffRequested);
                    }
                }
                Ok(new)
            }
            Err(LeaseError::Conflict { key, actual }) => {
                let handoff = self.status() == LeaseStatus::HandoffRequested;
                self.on_conflict(actual.as_deref());
                if !handoff && self.status() == LeaseStatus::HandoffRequested {
                    // Stolen gracefully in between: we may still checkpoint as checkpoint owner.
                    let new = self
                        .store
                        .update_checkpoint(&row, &self.worker_id, checkpoint)
                        .await?;
                    row.checkpoint = new.checkpoint.clone();
                    return Ok(new);
                }
                if handoff {
                    self.set_status(LeaseStatus::Lost);
                }
                Err(LeaseError::Conflict { key, actual })
            }
            Err(e) => Err(e),
        }
    }

    /// Records the children of the ended shard (while held).
    pub async fn mark_children(&self, children: &BTreeSet<String>) -> Result<Lease> {
        let mut row = self.row.lock().await;
        if self.status() != LeaseStatus::Held {
            return Err(self.lost_error());
        }
        match self.store.mark_children(&row, children).await {
            Ok(new) => {
                *row = new.clone();
                Ok(new)
            }
            Err(LeaseError::Conflict { key, actual }) => {
                self.on_conflict(actual.as_deref());
                Err(LeaseError::Conflict { key, actual })
            }
            Err(e) => Err(e),
        }
    }

    /// When this worker stole the lease with a hand-off: waits until the previous owner has
    /// checkpointed and cleared `checkpointOwner`, or until the failover time has passed (the
    /// previous owner may be dead), then returns the fresh row. Returns at once otherwise.
    pub async fn wait_for_handoff(&self, poll: Duration) -> Result<Lease> {
        let deadline = Instant::now() + self.failover_time;
        loop {
            if self.status() != LeaseStatus::Held {
                return Err(self.lost_error());
            }
            let previous = self.row.lock().await.checkpoint_owner.clone();
            let Some(previous) = previous else {
                return Ok(self.lease().await);
            };
            let fresh = match self.store.get(&self.key).await {
                Ok(Some(fresh)) => fresh,
                Ok(None) => {
                    self.set_status(LeaseStatus::Lost);
                    return Err(self.lost_error());
                }
                Err(e) => {
                    warn!(lease = %self.key, error = %e, "reading lease during hand-off failed");
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            let mut row = self.row.lock().await;
            if !fresh.is_owned_by(&self.worker_id) {
                self.set_status(LeaseStatus::Lost);
                return Err(self.lost_error());
            }
            if fresh.checkpoint_owner.is_none() {
                row.checkpoint = fresh.checkpoint.clone();
                row.checkpoint_owner = None;
                row.owner_switches_since_checkpoint = fresh.owner_switches_since_checkpoint;
                return Ok(row.clone());
            }
            if Instant::now() >= deadline {
                warn!(lease = %self.key, %previous, "previous owner did not finish the hand-off in time");
                match self.store.complete_handoff(&self.key, &previous).await {
                    Ok(_) | Err(LeaseError::Conflict { .. }) => row.checkpoint_owner = Some(previous),
                    Err(e) => warn!(lease = %self.key, error = %e, "clearing checkpointOwner failed"),
                }
                // Re-read on the next turn of the loop.
            }
            drop(row);
            tokio::time::sleep(poll).await;
        }
    }

    fn lost_error(&self) -> LeaseError {
        LeaseError::Conflict {
            key: self.key.clone(),
            actual: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// At most this many conditional takes are in flight at once in a take round.
const TAKE_CONCURRENCY: usize = 32;

/// Renews, takes and steals the leases of one worker. See the module docs.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: CoordinatorConfig,
    /// The leases this worker holds. A std mutex: only short map operations under it.
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    tracker: Mutex<ExpiryTracker>,
    /// Acquired leases, to the scheduler. Bounded: a slow scheduler slows down taking.
    acquired: mpsc::Sender<Arc<HeldLease>>,
    taking: AtomicBool,
    wake_taker: Notify,
    /// Which leases this worker may take (all when `None`).
    filter: Mutex<Option<LeaseFilter>>,
}

/// Decides whether a lease may be taken by this worker.
pub type LeaseFilter = Arc<dyn Fn(&Lease) -> bool + Send + Sync>;

impl std::fmt::Debug for LeaseCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseCoordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LeaseCoordinator {
    /// A coordinator, and the receiving end of its acquired-lease channel.
    pub fn new(
        store: Arc<dyn LeaseStore>,
        config: CoordinatorConfig,
    ) -> (Arc<Self>, mpsc::Receiver<Arc<HeldLease>>) {
        let (tx, rx) = mpsc::channel(256);
        let this = Self {
            store,
            config,
            held: Mutex::new(BTreeMap::new()),
            tracker: Mutex::new(ExpiryTracker::new()),
            acquired: tx,
            taking: AtomicBool::new(true),
            wake_taker: Notify::new(),
            filter: Mutex::new(None),
        };
        (Arc::new(this), rx)
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The leases held right now.
    pub fn held(&self) -> Vec<Arc<HeldLease>> {
        lock(&self.held).values().cloned().collect()
    }

    /// Restricts taking and stealing to the leases `filter` accepts (a multi-stream worker takes
    /// only the leases of the streams it tracks). Leases already held are not affected.
    pub fn set_filter(&self, filter: impl Fn(&Lease) -> bool + Send + Sync + 'static) {
        *lock(&self.filter) = Some(Arc::new(filter));
    }

    /// Stops taking and stealing (at shutdown); renewals go on.
    pub fn stop_taking(&self) {
        self.taking.store(false, Ordering::SeqCst);
    }

    /// Runs a take round soon instead of waiting for the interval (for example after a shard
    /// ended and children became available).
    pub fn wake(&self) {
        self.wake_taker.notify_one();
    }

    /// Renews every held lease once, concurrently, and forgets the lost ones.
    pub async fn renew_all(&self) {
        let mut tasks = JoinSet::new();
        for lease in self.held() {
            tasks.spawn(async move { lease.renew().await });
        }
        while tasks.join_next().await.is_some() {}
        lock(&self.held)
            .retain(|_, l| l.status() == LeaseStatus::Held || l.status() == LeaseStatus::HandoffRequested);
    }

    /// One take round: scans the table, takes and steals. Returns how many leases were
    /// acquired.
    pub async fn take_round(&self) -> Result<usize> {
        let mut leases = self.store.list().await?;
        let filter = lock(&self.filter).clone();
        if let Some(filter) = filter {
            leases.retain(|l| filter(l));
        }
        let now = Instant::now();
        let active = leases.iter().filter(|l| !l.is_finished()).count();
        metrics::gauge!(TOTAL_LEASES, "worker_id" => self.config.worker_id.clone()).set(active as f64);
        let plan = {
            let mut tracker = lock(&self.tracker);
            tracker.observe(&leases, now);
            let held: BTreeSet<String> = lock(&self.held).keys().cloned().collect();
            let balance = BalanceConfig {
                worker_id: self.config.worker_id.clone(),
                failover_time: self.config.failover_time,
                max_leases_per_worker: self.config.max_leases_per_worker,
                max_leases_to_steal: self.config.max_leases_to_steal,
            };
            plan_takes(&leases, &tracker, &held, &balance, now)
        };
        if !self.taking.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let mut acquired = 0;
        let takes: Vec<(Lease, bool)> = plan
            .take
            .into_iter()
            .map(|l| (l, false))
            .chain(plan.steal.into_iter().map(|l| (l, true)))
            .collect();
        // Conditional takes are independent: issue them concurrently, a bounded number at a
        // time, so that taking many leases from a remote table does not stall renewals.
        for chunk in takes.chunks(TAKE_CONCURRENCY) {
            let mut calls = JoinSet::new();
            for (lease, steal) in chunk.iter().cloned() {
                let (store, me) = (self.store.clone(), self.config.worker_id.clone());
                calls.spawn(async move {
                    let started = Instant::now();
                    let result = store.take(&lease, &me, steal).await;
                    (lease, steal, started, result)
                });
            }
            while let Some(joined) = calls.join_next().await {
                let Ok((lease, steal, started, result)) = joined else {
                    continue;
                };
                match result {
                    Ok(row) => {
                        debug!(lease = %row.lease_key, previous = ?lease.lease_owner, steal, "took lease");
                        let worker = self.config.worker_id.clone();
                        metrics::counter!(TAKEN_LEASES, "worker_id" => worker.clone()).increment(1);
                        if steal {
                            info!(lease = %row.lease_key, from = ?lease.lease_owner, "stole lease for balance");
                            metrics::counter!(LEASES_STOLEN, "worker_id" => worker).increment(1);
                        }
                        let held = Arc::new(HeldLease::new(
                            row,
                            &self.config.worker_id,
                            self.config.failover_time,
                            self.store.clone(),
                            started,
                        ));
                        lock(&self.held).insert(held.key.clone(), held.clone());
                        if self.acquired.send(held).await.is_err() {
                            return Ok(acquired);
                        }
                        acquired += 1;
                    }
                    Err(LeaseError::Conflict { .. }) => {
                        debug!(lease = %lease.lease_key, "another worker took it first")
                    }
                    Err(e) => warn!(lease = %lease.lease_key, error = %e, "taking lease failed"),
                }
            }
        }
        Ok(acquired)
    }

    /// Lets go of a lease whose shard task has finished: a held lease is released (evicted)
    /// so that another worker can take it at once; a hand-off is completed; a lost lease is
    /// just forgotten.
    pub async fn release(&self, key: &str) {
        let Some(lease) = lock(&self.held).remove(key) else {
            return;
        };
        lease.released.store(true, Ordering::Relaxed);
        match lease.status() {
            LeaseStatus::Held => {
                let row = lease.row.lock().await;
                match self.store.evict(&row).await {
                    Ok(_) => debug!(lease = %key, "released lease"),
                    Err(e) => warn!(lease = %key, error = %e, "releasing lease failed; it will expire"),
                }
                drop(row);
                lease.set_status(LeaseStatus::Lost);
            }
            LeaseStatus::HandoffRequested => {
                match self.store.complete_handoff(key, &self.config.worker_id).await {
                    Ok(_) => debug!(lease = %key, "hand-off complete"),
                    Err(e) => warn!(lease = %key, error = %e, "completing hand-off failed"),
                }
                lease.set_status(LeaseStatus::Lost);
            }
            LeaseStatus::Lost => {}
        }
    }

    /// Drives renewals and take rounds until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut renew = tokio::time::interval(self.config.renew_interval);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut take = tokio::time::interval(self.config.take_interval);
        take.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                _ = renew.tick() => self.renew_all().await,
                _ = take.tick() => self.take_logged().await,
                _ = self.wake_taker.notified() => self.take_logged().await,
            }
        }
    }

    async fn take_logged(&self) {
        if let Err(e) = self.take_round().await {
            warn!(error = %e, "lease take round failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InMemoryLeaseStore;

    fn store_with(n: usize) -> Arc<InMemoryLeaseStore> {
        let store = InMemoryLeaseStore::new();
        for i in 0..n {
            store.put_raw(Lease::new(
                format!("shard-{i}"),
                ExtendedSequenceNumber::TrimHorizon,
            ));
        }
        Arc::new(store)
    }

    fn coordinator(
        store: &Arc<InMemoryLeaseStore>,
        me: &str,
    ) -> (Arc<LeaseCoordinator>, mpsc::Receiver<Arc<HeldLease>>) {
        let mut cfg = CoordinatorConfig::new(me, Duration::from_secs(3));
        cfg.max_leases_to_steal = 2;
        LeaseCoordinator::new(store.clone(), cfg)
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_cannot_renew_stops_before_others_can_take() {
        let store = store_with(1);
        let (a, mut a_rx) = coordinator(&store, "a");
        let (b, _b_rx) = coordinator(&store, "b");
        assert_eq!(a.take_round().await.unwrap(), 1);
        let lease = a_rx.recv().await.unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        b.take_round().await.unwrap(); // b first sees the lease 100 ms after a's renewal
                                       // a stops renewing (say, partitioned from the store). Its own view expires first.
        tokio::time::advance(Duration::from_millis(2850)).await;
        assert!(lease.is_valid());
        b.take_round().await.unwrap();
        assert!(b.held().is_empty(), "b must not take before the failover time");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!lease.is_valid(), "a's lease is no longer valid for processing");
        b.take_round().await.unwrap();
        assert!(b.held().is_empty(), "not yet expired by b's clock");
        tokio::time::advance(Duration::from_millis(100)).await;
        b.take_round().await.unwrap();
        assert_eq!(b.held().len(), 1);
        // a learns it lost the lease on its next renewal.
        a.renew_all().await;
        assert_eq!(lease.status(), LeaseStatus::Lost);
        assert!(a.held().is_empty());
        assert!(lease
            .checkpoint(&ExtendedSequenceNumber::TrimHorizon)
            .await
            .is_err());
    }

    /// Found by the chaos test: the old owner checkpointed (allowed as `checkpointOwner`) before
    /// its next renewal, adopted the thief's row, and went on renewing and processing it.
    #[tokio::test(start_paused = true)]
    async fn a_checkpoint_after_an_unnoticed_steal_starts_the_handoff_instead_of_adopting_the_row() {
        let store = store_with(1);
        let (a, mut a_rx) = coordinator(&store, "a");
        a.take_round().await.unwrap();
        let held = a_rx.recv().await.unwrap();
        let row = store.get("shard-0").await.unwrap().unwrap();
        let stolen = store.take(&row, "b", true).await.unwrap();
        let cp = ExtendedSequenceNumber::from_parts("5", 0).unwrap();
        held.checkpoint(&cp).await.unwrap();
        assert_eq!(held.status(), LeaseStatus::HandoffRequested);
        assert!(!held.is_valid(), "the old owner must stop processing");
        a.renew_all().await;
        let now = store.get("shard-0").await.unwrap().unwrap();
        assert_eq!(
            now.lease_counter, stolen.lease_counter,
            "the old owner did not renew the thief's lease"
        );
        assert!(now.is_owned_by("b"));
        assert_eq!(now.checkpoint, cp);
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_a_lease_and_release_hands_it_over_at_once() {
        let store = store_with(2);
        let (a, _a_rx) = coordinator(&store, "a");
        let (b, _b_rx) = coordinator(&store, "b");
        a.take_round().await.unwrap();
        assert_eq!(a.held().len(), 2);
        for _ in 0..10 {
            b.take_round().await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
            a.renew_all().await;
            b.renew_all().await;
        }
        // b is below its share but a is not above it by more than one: b steals one, with hand-off.
        let stolen: Vec<_> = b.held().iter().map(|l| l.key().to_owned()).collect();
        assert_eq!(stolen.len(), 1);
        a.renew_all().await;
        let victim = a.held().into_iter().find(|l| l.key() == stolen[0]).unwrap();
        assert_eq!(victim.status(), LeaseStatus::HandoffRequested);
        let cp = ExtendedSequenceNumber::from_parts("77", 0).unwrap();
        victim.checkpoint(&cp).await.unwrap();
        a.release(&stolen[0]).await;
        let mine = b.held().pop().unwrap();
        let row = mine.wait_for_handoff(Duration::from_millis(100)).await.unwrap();
        assert_eq!(row.checkpoint, cp);
        assert!(mine.is_valid());
        // a releases the other one: b takes it on its next round without waiting for expiry.
        let other = a.held().pop().unwrap();
        a.release(other.key()).await;
        b.take_round().await.unwrap();
        assert_eq!(b.held().len(), 2);
    }
}
