//! The lease coordinator: the async driver of [`crate::machine`], the pure state machine that
//! decides (when to read which heartbeat row, when to scan, what a take round does).
//!
//! One per worker. It keeps the worker alive in the eyes of the others, renews what must be
//! renewed, and makes the calls a [`TakeRound`] plans (takes and steals as
//! [`crate::balance::plan_takes`] says). Acquired leases are published
//! on a bounded channel (the scheduler starts a shard task for each); a change of a held
//! lease's status (lost, or a graceful hand-off requested by another worker) is published on
//! the lease's own `watch` channel.
//!
//! # Design: coordination that costs O(shards + workers), not O(shards × workers)
//!
//! Every worker writes a small *heartbeat* row of its own every `renew_interval / 2`. The
//! fleet watches itself **divided**: the live workers form a ring (ordered by a hash of their
//! ids) and each reads one row per round, its successor's, every `watch_interval` (and at the
//! moment that row would have stood still for `failover_time`), so the fleet reads `W` rows
//! per round, not `W²`. A worker that changes the lease table *nudges* every other row
//! ([`LeaseStore::nudge_heartbeat`]); whoever watches a nudged row looks. Each heartbeat
//! carries a digest of the fleet its writer knows, so that a view gone stale (a lost nudge) is
//! noticed by its watcher and healed. Stores that cannot read one row or nudge get every row
//! read every round. The lease table itself is read (one scan) only when the watch shows a
//! reason to:
//! - the watched worker left (its row is gone) or died (its row stood still for
//!   `failover_time`): the watcher marks a dead worker's row `lapsed`, takes all its leases at
//!   once (a worker gives up every lease when it cannot heartbeat: see [`crate::held`]), and
//!   nudges the others, who even the fleet out by steals;
//! - a nudge (someone created, released or stole leases, took a dead worker's, joined or
//!   left), or the watched worker's *epoch* (its own announcements);
//! - this worker acted in its last round (took or stole), so it looks again after
//!   `take_interval` until it has nothing left to do;
//! - the table holds leases of workers without heartbeat rows (Java workers, older versions
//!   of this crate): those leases are judged by their counters, as before, with a scan every
//!   `take_interval`, so mixed fleets keep their fail-over times;
//! - a slow safety scan, every `live workers × 4 × failover_time` per worker (so about one per
//!   `4 × failover_time` for the whole fleet), which also finds leases whose owner is alive
//!   but stopped renewing them.
//!
//! Every take round reads every heartbeat row (strongly consistent) and reads them all again
//! one failover time later: a worker that died with its watcher is found then.
//!
//! Only one worker, the *leader* (the smallest live worker id), runs the periodic shard sync.
//! Stores without heartbeats ([`LeaseError::Unsupported`]) get the old behaviour: every worker
//! scans every `take_interval`.
//!
//! Safety does not depend on any of this being timely: every take is a conditional write on
//! the owner and counter just read. Expiry of a live-looking lease needs its counter unchanged
//! for `failover_time` by the observer's clock; a dead worker is one whose heartbeat counter was
//! unchanged for `failover_time` as a strongly consistent read proves, one that succeeded, was
//! made *after* the lease scan the take is planned from, and is judged as of the time it was
//! issued ([`WorkerTracker`]). That worker's validity ended before (its heartbeat would
//! otherwise have moved), and it takes nothing until a new heartbeat succeeds. A round whose
//! heartbeat read fails takes nothing. A graceful steal from a live worker that renews through
//! its heartbeat is completed by that worker, never by the thief alone
//! ([`HeldLease::wait_for_handoff`]). Heartbeat writes are conditional on the process's
//! incarnation, so that two processes with one worker id never both hold its leases. The
//! assumptions and how each is enforced: `docs/coordination.md`.
//!
//! Renewals never wait on each other: each lease is renewed by its own task, at most one in
//! flight per lease, each call bounded by `renew_interval / 2`, and at most
//! `max_concurrent_calls` calls at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

use crate::balance::ExpiryTracker;
use crate::error::{LeaseError, Result};
use crate::heartbeat::{HeartbeatCondition, LeaseRenewal, WorkerHeartbeat, WorkerStatus, WorkerTracker};
use crate::held::lock;
pub use crate::held::{BeatOutcome, HeldLease, LeaseStatus, Liveness};
use crate::journal::{Journal, JournalEvent};
use crate::lease::Lease;
use crate::load::BalanceMode;
use crate::machine::{
    beat_condition, dead_unmarked, Action, CallOutcome, IdWatch, RoundInput, Schedule, TakeRound, WatchRead,
    TAKE_CONCURRENCY,
};
use crate::store::LeaseStore;

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
    /// Gauge: live workers, as this worker sees the heartbeats.
    pub const LIVE_WORKERS: &str = "LiveWorkers";
    /// Counter: scans of the lease table.
    pub const LEASE_TABLE_SCANS: &str = "LeaseTable.Scans";
}

use metric_names::*;

/// The lease settings of a worker: how leases expire, are renewed, taken and balanced. The one
/// place where they and their defaults are defined (`SchedulerConfig::leases` holds one).
///
/// | Setting | Default | Meaning |
/// |---|---|---|
/// | `failover_time` | 10 s | a lease (or heartbeat) standing still this long is expired |
/// | `renew_interval` | `failover_time / 3` | how often held leases are renewed |
/// | `take_interval` | `failover_time / 3` | the shortest time between two scans while there is work |
/// | `watch_interval` | `failover_time / 16`, at least 50 ms | how often the watched heartbeat row is read (up to twice as long in fleets of over 16 workers) |
/// | `renewal` | [`LeaseRenewal::PerLease`] | leases renewed one by one, or through the worker's heartbeat |
/// | `max_leases_per_worker` | unlimited | never hold more |
/// | `max_leases_to_steal` | 4 | steals per take round (the Java KCL's default is 1; more converges faster) |
/// | `max_concurrent_calls` | 64 | renewal calls in flight at once |
/// | `balance` | [`BalanceMode::Count`] | even the count, or the load (`throughputKBps`) |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaseSettings {
    /// A lease whose counter stands still this long is expired; a worker whose heartbeat
    /// stands still this long is dead.
    pub failover_time: Duration,
    /// How often held leases are renewed (per-lease renewal; normally `failover_time / 3`).
    /// The heartbeat is written twice as often; one call may take half of it.
    pub renew_interval: Duration,
    /// The shortest time between two scans of the lease table while there is work to do.
    pub take_interval: Duration,
    /// How often the watched heartbeat row is read (default `failover_time / 16`, at least
    /// 50 ms; up to twice that in fleets of over 16 workers): how fast a graceful hand-off or a
    /// change announced by another worker is seen.
    pub watch_interval: Duration,
    /// How this worker keeps its leases alive (default [`LeaseRenewal::PerLease`]).
    pub renewal: LeaseRenewal,
    /// Never hold more leases than this.
    pub max_leases_per_worker: usize,
    /// Steal at most this many leases per round.
    pub max_leases_to_steal: usize,
    /// At most this many renewal calls in flight at once.
    pub max_concurrent_calls: usize,
    /// Even the count of leases per worker (default) or their load (`throughputKBps`).
    pub balance: BalanceMode,
}

impl LeaseSettings {
    /// The defaults (see the table) for a failover time: renew and take every third of it,
    /// watch the heartbeats every twentieth.
    pub fn new(failover_time: Duration) -> Self {
        Self {
            failover_time,
            renew_interval: failover_time / 3,
            take_interval: failover_time / 3,
            watch_interval: default_watch_interval(failover_time),
            renewal: LeaseRenewal::PerLease,
            max_leases_per_worker: usize::MAX,
            max_leases_to_steal: 4,
            max_concurrent_calls: 64,
            balance: BalanceMode::Count,
        }
    }

    /// Sets the failover time and the intervals derived from it (renew, take, watch).
    #[must_use]
    pub fn failover_time(mut self, failover_time: Duration) -> Self {
        self.failover_time = failover_time;
        self.renew_interval = failover_time / 3;
        self.take_interval = failover_time / 3;
        self.watch_interval = default_watch_interval(failover_time);
        self
    }

    /// Why these settings cannot work, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("failover_time", self.failover_time),
            ("renew_interval", self.renew_interval),
            ("take_interval", self.take_interval),
            ("watch_interval", self.watch_interval),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be greater than zero"));
        }
        if self.renew_interval >= self.failover_time {
            return Err("renew_interval must be shorter than failover_time".into());
        }
        if self.max_leases_per_worker == 0 || self.max_concurrent_calls == 0 {
            return Err("max_leases_per_worker and max_concurrent_calls must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for LeaseSettings {
    /// [`LeaseSettings::new`] with a 10 s failover time.
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

/// Settings of a [`LeaseCoordinator`]: a worker id and its [`LeaseSettings`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoordinatorConfig {
    /// This worker's id, written as `leaseOwner`.
    pub worker_id: String,
    /// How leases expire, are renewed, taken and balanced.
    pub leases: LeaseSettings,
}

impl CoordinatorConfig {
    /// The default [`LeaseSettings`] for `failover_time`.
    pub fn new(worker_id: impl Into<String>, failover_time: Duration) -> Self {
        Self::with_settings(worker_id, LeaseSettings::new(failover_time))
    }

    /// A worker id with these settings.
    pub fn with_settings(worker_id: impl Into<String>, leases: LeaseSettings) -> Self {
        Self {
            worker_id: worker_id.into(),
            leases,
        }
    }
}

/// `failover_time / 16`, at least 50 ms: with the divided watch, a worker dead alone is found
/// within the failover time and one watch interval (see the module docs).
pub fn default_watch_interval(failover_time: Duration) -> Duration {
    (failover_time / 16).max(Duration::from_millis(50))
}

/// How many times a leaving worker tries to nudge the others' rows.
const LEAVE_NUDGE_ATTEMPTS: u32 = 4;

/// Heartbeat rows that have not moved for this many failover times are deleted by the leader.
const STALE_HEARTBEAT_FAILOVERS: u32 = 6;

/// The fleet as this worker sees it (for health checks).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetView {
    /// Whether workers coordinate through heartbeats (else through the lease table alone).
    pub heartbeats: bool,
    /// How this worker renews its leases right now.
    pub renewal: LeaseRenewal,
    /// Live workers, this one included.
    pub live_workers: usize,
    /// Whether this worker is the leader (runs the periodic shard sync).
    pub leader: bool,
    /// Scans of the lease table by this worker so far.
    pub lease_table_scans: u64,
}

/// Renews, takes and steals the leases of one worker. See the module docs.
pub struct LeaseCoordinator {
    store: Arc<dyn LeaseStore>,
    config: CoordinatorConfig,
    /// The leases this worker holds. A std mutex: only short map operations under it.
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    tracker: Mutex<ExpiryTracker>,
    workers: Arc<Mutex<WorkerTracker>>,
    liveness: Arc<Liveness>,
    /// Acquired leases, to the scheduler. Bounded: a slow scheduler slows down taking.
    acquired: mpsc::Sender<Arc<HeldLease>>,
    taking: AtomicBool,
    wake_taker: Notify,
    /// Which leases this worker may take (all when `None`).
    filter: Mutex<Option<LeaseFilter>>,
    /// When to read what and when to scan (the pure decisions: [`crate::machine`]).
    schedule: Mutex<Schedule>,
    /// Changes announced to the other workers.
    epoch: AtomicU64,
    beats: AtomicU64,
    beat_now: Notify,
    beating: AtomicBool,
    /// Set once this worker removed its heartbeat row for good.
    left: AtomicBool,
    /// Whether this worker, coordinating without heartbeats, said once that it leaves the
    /// leases renewed through heartbeats alone.
    said_blind: AtomicBool,
    /// Held across a heartbeat's check of `left` and its write, and by [`Self::leave`]: a
    /// heartbeat already under way when the worker leaves (one an `announce` asked for) lands
    /// before the row is deleted, never after (it would bring the row back, and the others
    /// would count this worker as live until its heartbeat expired).
    beat_lock: tokio::sync::Mutex<()>,
    /// Turns true after the first heartbeat and the first read of the others'.
    ready: watch::Sender<bool>,
    limiter: Arc<Semaphore>,
    /// Recent moves and errors (for status pages).
    journal: Arc<Journal>,
    /// This process's incarnation, drawn at random: written in the heartbeat row, whose writes
    /// are conditional on it, so that a second process with the same worker id is detected.
    incarnation: u64,
    /// While another process writes this worker id's heartbeat row: that row as first seen.
    foreign: Mutex<IdWatch>,
    /// Set when this process took its id's heartbeat row over from a process proven gone:
    /// rows naming the id are then this worker's own, taken back at once (see
    /// [`BalanceConfig::adopt_own_rows`]).
    adopt_own_rows: AtomicBool,
    /// Leases this process held and lost whose rows may still name it unchanged (see
    /// [`BalanceConfig::own_rows`]).
    own_rows: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Leases given up (lost) whose shard task has not released them yet: their keys are not
    /// taken again until it has, so that one key never has two shard tasks in this worker.
    retiring: Mutex<HashMap<String, Weak<HeldLease>>>,
    /// Whether the store reads single heartbeat rows and nudges them: the divided watch (one
    /// row per round) instead of reading every row every round.
    divided: AtomicBool,
    /// An announcement whose nudges of the other workers' rows are still to be sent.
    nudge_pending: AtomicBool,
}

/// A random incarnation for this process (OS-seeded hasher keys, the time and the process id).
fn new_incarnation() -> u64 {
    use std::hash::BuildHasher;
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

/// A renewal or heartbeat task that panicked takes the coordinator down with it (and the
/// scheduler stops the worker with an error): a renewal that silently stopped would leave a
/// lease held and processed but never renewed.
fn resume_panic(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Decides whether a lease may be taken by this worker.
pub type LeaseFilter = Arc<dyn Fn(&Lease) -> bool + Send + Sync>;

/// A conditional take (or steal) of `lease` as scanned. No retry on the row as it is now, even
/// if its owner looked dead: the owner may have come back (a new validity) and taken the lease
/// again after the judgement (found by the simulator); the next round plans from a new scan.
/// A take whose answer was lost (a timeout, a dropped connection) may have been applied: if
/// the row is now this worker's with the counter the take wrote, it is held, not left to
/// expire. Only a row that named another owner (or none) proves it: a row that named this
/// worker may have its counter moved by an earlier write of its own whose answer was lost as
/// well (found by the simulator).
///
/// A worker that renews through its heartbeat (`by_heartbeat`) says so in the row
/// ([`LeaseStore::take_heartbeat_renewed`]): the lease's counter will stand still.
async fn take_or_find_applied(
    store: &dyn LeaseStore,
    lease: &Lease,
    me: &str,
    steal: bool,
    by_heartbeat: bool,
) -> Result<Lease> {
    let result = if by_heartbeat {
        store.take_heartbeat_renewed(lease, me, steal).await
    } else {
        store.take(lease, me, steal).await
    };
    if matches!(result, Err(LeaseError::Backend(_))) && !lease.is_owned_by(me) {
        if let Ok(Some(row)) = store.get(&lease.lease_key).await {
            if row.is_owned_by(me) && row.lease_counter == lease.lease_counter + 1 {
                info!(lease = %row.lease_key, "a take reported failure but was applied; holding the lease");
                return Ok(row);
            }
        }
    }
    result
}

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
        let liveness = Liveness::new(config.leases.renewal);
        Self::with_liveness(store, config, liveness)
    }

    /// [`LeaseCoordinator::new`] with a given [`Liveness`] (tests: a fake suspend detector).
    pub(crate) fn with_liveness(
        store: Arc<dyn LeaseStore>,
        config: CoordinatorConfig,
        liveness: Liveness,
    ) -> (Arc<Self>, mpsc::Receiver<Arc<HeldLease>>) {
        let (tx, rx) = mpsc::channel(256);
        let schedule = Schedule::new(config.worker_id.clone(), config.leases.clone());
        let this = Self {
            store,
            liveness: Arc::new(liveness),
            limiter: Arc::new(Semaphore::new(config.leases.max_concurrent_calls.max(1))),
            config,
            held: Mutex::new(BTreeMap::new()),
            tracker: Mutex::new(ExpiryTracker::new()),
            workers: Arc::new(Mutex::new(WorkerTracker::new())),
            acquired: tx,
            taking: AtomicBool::new(true),
            wake_taker: Notify::new(),
            filter: Mutex::new(None),
            schedule: Mutex::new(schedule),
            epoch: AtomicU64::new(0),
            beats: AtomicU64::new(0),
            beat_now: Notify::new(),
            beating: AtomicBool::new(false),
            left: AtomicBool::new(false),
            said_blind: AtomicBool::new(false),
            beat_lock: tokio::sync::Mutex::new(()),
            ready: watch::channel(false).0,
            journal: Arc::new(Journal::default()),
            incarnation: new_incarnation(),
            foreign: Mutex::new(IdWatch::new()),
            adopt_own_rows: AtomicBool::new(false),
            own_rows: Mutex::new(BTreeMap::new()),
            retiring: Mutex::new(HashMap::new()),
            divided: AtomicBool::new(true),
            nudge_pending: AtomicBool::new(false),
        };
        (Arc::new(this), rx)
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// This worker's recent lease moves and errors.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
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

    /// Runs a take round soon instead of waiting for a reason (for example after a shard
    /// ended and children became available).
    pub fn wake(&self) {
        lock(&self.schedule).force();
        self.wake_taker.notify_one();
    }

    /// Tells the other workers that this one changed the lease table (created, released or
    /// stole leases), so that they read it again: bumps the epoch in the heartbeat row, writes
    /// a heartbeat now, and nudges every other worker's row (see the module docs).
    pub fn announce(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.nudge_pending.store(true, Ordering::SeqCst);
        self.beat_now.notify_one();
    }

    /// Whether this worker watches the fleet divided (one row per round; see the module docs).
    fn divided(&self) -> bool {
        self.divided.load(Ordering::SeqCst) && self.liveness.heartbeats_active()
    }

    /// Nudges the row of every other worker known, so that whoever watches it looks at the
    /// lease table. Nudges that failed are sent again with the next heartbeat.
    async fn nudge_all(&self) {
        if !self.nudge_pending.swap(false, Ordering::SeqCst) || !self.liveness.heartbeats_active() {
            return;
        }
        let me = self.config.worker_id.as_str();
        let targets: Vec<String> = {
            let workers = lock(&self.workers);
            if workers.judged_at().is_none() {
                // The fleet is not known yet: after the first read.
                self.nudge_pending.store(true, Ordering::SeqCst);
                return;
            }
            let mut targets: Vec<String> = workers.known().filter(|w| *w != me).map(str::to_owned).collect();
            // In id order, not `HashMap` order: the calls are spawned in this order, and a
            // simulated run must replay exactly.
            targets.sort_unstable();
            targets
        };
        // Every nudge is a write of its own: a bounded number in flight.
        let mut calls = JoinSet::new();
        let mut outcomes = Vec::new();
        for target in targets {
            while calls.len() >= TAKE_CONCURRENCY {
                if let Some(Ok(outcome)) = calls.join_next().await {
                    outcomes.push(outcome);
                }
            }
            let (store, timeout, clock) = (self.store.clone(), self.call_timeout(), self.clock().clone());
            calls.spawn(
                async move {
                    match clock.timeout(timeout, store.nudge_heartbeat(&target)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(LeaseError::Unsupported(_))) => Err(true),
                        Ok(Err(e)) => {
                            debug!(worker = %target, error = %e, "nudging a worker's heartbeat row failed");
                            Err(false)
                        }
                        Err(_) => Err(false),
                    }
                }
                .in_current_span(),
            );
        }
        while let Some(done) = calls.join_next().await {
            if let Ok(outcome) = done {
                outcomes.push(outcome);
            }
        }
        if outcomes.contains(&Err(true)) {
            // The store cannot nudge: every worker reads every row every round instead.
            if self.divided.swap(false, Ordering::SeqCst) {
                debug!("the lease store has no heartbeat nudges: watching every heartbeat row");
            }
            return;
        }
        let failed = outcomes.iter().any(Result::is_err);
        if failed {
            self.nudge_pending.store(true, Ordering::SeqCst);
        }
    }

    /// Whether this worker is the leader: the smallest id among the live workers. Without
    /// heartbeats every worker is.
    pub fn is_leader(&self) -> bool {
        if self.liveness.id_in_use() {
            return false;
        }
        if !self.liveness.heartbeats_active() {
            return true;
        }
        let now = self.clock().now();
        let workers = lock(&self.workers);
        let me = self.config.worker_id.as_str();
        workers
            .live(self.config.leases.failover_time, now)
            .first()
            .is_none_or(|first| *first >= me)
    }

    /// Waits until this worker has written its first heartbeat and read the others' (so that
    /// [`LeaseCoordinator::is_leader`] means something), or at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let mut ready = self.ready.subscribe();
        let _ = self.clock().timeout(limit, ready.wait_for(|r| *r)).await;
    }

    /// The fleet as this worker sees it.
    pub fn fleet(&self) -> FleetView {
        let now = self.clock().now();
        let live = {
            let workers = lock(&self.workers);
            let live = workers.live(self.config.leases.failover_time, now);
            live.len() + usize::from(!live.contains(&self.config.worker_id.as_str()))
        };
        FleetView {
            heartbeats: self.liveness.heartbeats_active(),
            renewal: self.liveness.renewal(),
            live_workers: live,
            leader: self.is_leader(),
            lease_table_scans: lock(&self.schedule).scans(),
        }
    }

    /// The process's clock (Tokio's, but in the simulator): every validity, expiry and death
    /// is judged in its time, and the timers run on it.
    fn clock(&self) -> &crate::clock::Clock {
        self.liveness.clock()
    }

    /// How long one renewal or heartbeat call may take: half the renew interval, so that a
    /// hung call is abandoned before the next one is due.
    fn call_timeout(&self) -> Duration {
        self.config.leases.renew_interval / 2
    }

    /// How often the heartbeat is written: twice per renew interval (a failed or slow
    /// heartbeat is retried well before the worker's validity runs out).
    fn heartbeat_interval(&self) -> Duration {
        self.config.leases.renew_interval / 2
    }

    fn new_held(&self, row: Lease, started: Instant, generation: u64) -> Arc<HeldLease> {
        let (workers, failover) = (self.workers.clone(), self.config.leases.failover_time);
        let check: crate::held::HandoffCheck =
            Arc::new(move |previous: &str| lock(&workers).judged_status(previous, failover));
        Arc::new(
            HeldLease::new(
                row,
                &self.config.worker_id,
                self.config.leases.failover_time,
                self.store.clone(),
                started,
                self.liveness.clone(),
                self.call_timeout(),
                self.journal.clone(),
            )
            .with_handoff_check(check)
            .in_generation(generation),
        )
    }

    /// Renews every held lease once, concurrently (bounded), and waits for all of them; then
    /// forgets the lost ones. The run loop does not wait: see [`LeaseCoordinator::run`].
    pub async fn renew_all(&self) {
        let mut tasks = JoinSet::new();
        self.spawn_renewals(&mut tasks);
        while tasks.join_next().await.is_some() {}
        self.forget_lost();
    }

    fn forget_lost(&self) {
        let mut lost = Vec::new();
        lock(&self.held).retain(|_, l| {
            let keep = l.status() == LeaseStatus::Held || l.status() == LeaseStatus::HandoffRequested;
            if !keep && !l.released.load(Ordering::SeqCst) {
                lost.push((l.key.clone(), Arc::downgrade(l)));
                if l.status() == LeaseStatus::Lost {
                    if let Some(counters) = l.own_counters() {
                        lock(&self.own_rows).insert(l.key.clone(), counters);
                    }
                }
            }
            keep
        });
        if !lost.is_empty() {
            lock(&self.retiring).extend(lost);
        }
        metrics::gauge!(CURRENT_LEASES, "worker_id" => self.config.worker_id.clone())
            .set(lock(&self.held).len() as f64);
    }

    /// Starts one renewal per held lease that has none in flight.
    fn spawn_renewals(&self, tasks: &mut JoinSet<()>) {
        if self.liveness.renewal() == LeaseRenewal::Worker {
            return;
        }
        for lease in self.held() {
            if lease.status() != LeaseStatus::Held || lease.renewing.swap(true, Ordering::SeqCst) {
                continue;
            }
            let limiter = self.limiter.clone();
            tasks.spawn(
                async move {
                    // The semaphore is never closed; without a permit the renewal still goes ahead.
                    let _permit = limiter.acquire().await.ok();
                    lease.renew().await;
                    lease.renewing.store(false, Ordering::SeqCst);
                }
                .in_current_span(),
            );
        }
    }

    /// Writes one heartbeat and updates this worker's validity.
    ///
    /// The write is conditional on this process's incarnation: if another process writes this
    /// worker id's row (two processes started with one id), this one gives up everything and
    /// processes nothing until that row stands still for the failover time (the other process
    /// is gone), then takes the row over.
    pub async fn heartbeat(&self) {
        let _writing = self.beat_lock.lock().await;
        if self.left.load(Ordering::SeqCst) || self.liveness.unsupported() {
            return;
        }
        self.check_lapse(); // a suspend ends the validity before this beat starts a new one
        let condition = if self.liveness.id_in_use() {
            match self.watch_foreign_row().await {
                Some(condition) => condition,
                None => return,
            }
        } else {
            HeartbeatCondition::Incarnation(self.incarnation)
        };
        let counter = self.beats.fetch_add(1, Ordering::SeqCst) + 1;
        let condition = beat_condition(condition, counter);
        let lapsed = self.liveness.is_lapsed();
        if lapsed {
            self.liveness.announce_lapsed(true);
        }
        let row = WorkerHeartbeat {
            worker_id: self.config.worker_id.clone(),
            counter,
            renewal: self.config.leases.renewal,
            leases: lock(&self.held).len() as u64,
            epoch: self.epoch.load(Ordering::SeqCst),
            incarnation: Some(self.incarnation),
            lapsed,
            nudges: 0, // the row's are kept by the store
            view: self.view_digest(),
            watched: self.watched_row(),
        };
        let start = self.clock().now();
        let result = self
            .clock()
            .timeout(self.call_timeout(), self.store.put_heartbeat(&row, condition))
            .await;
        if !matches!(result, Ok(Err(LeaseError::Unsupported(_)))) {
            // Even a write whose outcome is unknown may have landed: the others may judge this
            // worker by that row from now on.
            self.liveness.table_answered();
        }
        match result {
            Ok(Err(LeaseError::Conflict { .. })) => self.on_heartbeat_conflict().await,
            Ok(Ok(())) if self.liveness.check_suspend().is_some() => {
                // Suspended during the call: its start says nothing about the time now.
                self.give_up_all("the host was suspended (the monotonic clock stood still)");
            }
            Ok(Ok(())) => {
                if !lapsed {
                    self.liveness.announce_lapsed(false);
                }
                if let HeartbeatCondition::Counter(_) = condition {
                    self.adopt_own_rows.store(true, Ordering::SeqCst);
                    info!(worker_id = %self.config.worker_id, "took over the worker id: the process that used it stopped beating");
                }
                lock(&self.foreign).forget();
                if self
                    .liveness
                    .beat(start, self.clock().now(), self.config.leases.failover_time)
                    == BeatOutcome::Lapsed
                {
                    self.give_up_all("the heartbeat completed after the worker's validity ran out");
                }
            }
            Ok(Err(LeaseError::Unsupported(what))) if self.liveness.table_in_use() => {
                // The heartbeat table worked before (or answered: a row of this worker id may
                // be in it): the others judge this worker by it. A failed heartbeat, not a
                // switch to coordinating without heartbeats.
                warn!(%what, "the heartbeat table became unusable: heartbeat failed");
            }
            Ok(Err(LeaseError::Unsupported(what))) => {
                if self.config.leases.renewal == LeaseRenewal::Worker {
                    // Judging the others' leases by their counters (which stand still under
                    // worker renewal) would take every lease of a live fleet: take nothing.
                    // (The scheduler stops such a worker with a fatal error.)
                    error!(%what, "worker renewal needs the worker heartbeat table: this worker takes no lease");
                    self.stop_taking();
                } else {
                    info!(%what, "no worker heartbeats: coordinating through the lease table alone");
                }
                self.liveness.set_unsupported();
            }
            Ok(Err(e)) => warn!(error = %e, "heartbeat failed"),
            Err(_) => warn!(timeout = ?self.call_timeout(), "heartbeat timed out"),
        }
        self.check_lapse();
        // The announcement is in the row now (or the beat failed; the change announced is in
        // the lease table either way): tell the watchers, without holding up the next beat.
        drop(_writing);
        if self.divided() {
            self.nudge_all().await;
        }
    }

    /// A heartbeat write was refused: the row is another process's, unless a heartbeat of
    /// this process with a higher counter is there already (then nothing is wrong).
    async fn on_heartbeat_conflict(&self) {
        if let Ok(rows) = self.store.list_heartbeats(true).await {
            let me = &self.config.worker_id;
            if rows
                .iter()
                .any(|r| &r.worker_id == me && r.incarnation == Some(self.incarnation))
            {
                debug!("a newer heartbeat of this process is in the table already");
                return;
            }
        }
        self.id_in_use_by_another();
    }

    /// Another process wrote this worker id's heartbeat row: give up everything, say so once,
    /// and watch that row (every heartbeat) until it stands still.
    fn id_in_use_by_another(&self) {
        let first = !self.liveness.id_in_use();
        self.liveness.set_id_in_use();
        lock(&self.foreign).forget();
        self.give_up_all("another process writes this worker id's heartbeat row");
        if first {
            let id = &self.config.worker_id;
            warn!(worker_id = %id, "worker id {id:?} is in use by another live process: this one processes nothing under it until that process has stopped beating for the failover time");
            self.journal.error(
                None,
                format_args!("worker id {id:?} is in use by another live process"),
            );
        }
    }

    /// While another process writes this worker id's row: reads it (strongly consistent) and
    /// says how this process may write its heartbeat now ([`IdWatch::observe`]); `None`: not
    /// yet.
    async fn watch_foreign_row(&self) -> Option<HeartbeatCondition> {
        let issued = self.clock().now();
        let rows = match self.store.list_heartbeats(true).await {
            Ok(rows) => {
                self.liveness.table_answered();
                rows
            }
            Err(e) => {
                debug!(error = %e, "reading the heartbeats failed");
                return None;
            }
        };
        let row = rows.iter().find(|r| r.worker_id == self.config.worker_id);
        let condition = lock(&self.foreign).observe(
            row,
            self.incarnation,
            issued,
            self.clock().now(),
            self.config.leases.failover_time,
        );
        if let (Some(HeartbeatCondition::Counter(counter)), Some(_)) = (condition, row) {
            // Count on from the other process's counter: observers see the row move.
            self.beats.fetch_max(counter, Ordering::SeqCst);
        }
        condition
    }

    fn check_lapse(&self) {
        if self.liveness.check_lapse(self.clock().now()) {
            self.give_up_all("no heartbeat succeeded within the failover time");
        }
    }

    /// Gives up every held lease at once (the worker's validity ran out) and rescans soon.
    fn give_up_all(&self, why: &str) {
        let held = self.held();
        if !held.is_empty() {
            warn!(leases = held.len(), why, "giving up every lease");
        }
        for lease in held {
            lease.mark_lost();
        }
        self.forget_lost();
        lock(&self.schedule).force();
    }

    /// Removes this worker's heartbeat row for good (the last step of a graceful shutdown,
    /// after its leases were released), so that the others see it leave at once.
    pub async fn leave(&self) {
        let _writing = self.beat_lock.lock().await;
        self.left.store(true, Ordering::SeqCst);
        if !self.liveness.heartbeats_active() {
            return;
        }
        if self.liveness.id_in_use() {
            return; // the row is another process's
        }
        let mine = HeartbeatCondition::Incarnation(self.incarnation);
        match self.store.delete_heartbeat(&self.config.worker_id, mine).await {
            Ok(()) => debug!("heartbeat row removed"),
            Err(e) => {
                warn!(error = %e, "removing the heartbeat row failed; it will look dead after the failover time")
            }
        }
        // Every other worker looks now: the leases this worker released are taken at once.
        // After the row is gone: a worker that looked while it was there counted this one in
        // the even share, stayed at its share and left the released leases, and in the divided
        // watch only this worker's watcher sees the row go (found by the simulator: seed 6483
        // at 8 workers, 32 shards, worker renewal: two released leases untaken for 20 s).
        // (A few tries: there is no next heartbeat to send failed nudges again with.)
        if self.divided() {
            self.nudge_pending.store(true, Ordering::SeqCst);
            for attempt in 0..LEAVE_NUDGE_ATTEMPTS {
                if attempt > 0 {
                    self.clock().sleep(self.config.leases.watch_interval).await;
                }
                self.nudge_all().await;
                if !self.nudge_pending.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }

    /// Reads the heartbeat table into the worker tracker. Watch rounds read eventually
    /// consistent (a stale row only delays a conclusion); the read a take round plans from is
    /// strongly consistent (see the module docs).
    ///
    /// Returns whether the read succeeded. Only a successful strongly consistent read can prove
    /// a worker dead, and only as of the time it was issued (see [`WorkerTracker`]).
    async fn read_heartbeats(&self, consistent: bool) -> bool {
        if !self.liveness.heartbeats_active() {
            return false;
        }
        let issued = self.clock().now();
        match self.store.list_heartbeats(consistent).await {
            Ok(rows) => {
                self.liveness.table_answered();
                let now = self.clock().now();
                let mut workers = lock(&self.workers);
                if consistent {
                    workers.observe_consistent(&rows, issued, now);
                } else {
                    workers.observe(&rows, now);
                }
                metrics::gauge!(LIVE_WORKERS, "worker_id" => self.config.worker_id.clone())
                    .set(workers.live(self.config.leases.failover_time, now).len() as f64);
                true
            }
            Err(LeaseError::Unsupported(what)) => {
                if !self.liveness.set_unsupported() {
                    debug!(%what, "reading heartbeats failed: the heartbeat table became unusable");
                }
                false
            }
            Err(e) => {
                debug!(error = %e, "reading heartbeats failed");
                false
            }
        }
    }

    /// The divided watch's read: the row of the next live worker around the ring (eventually
    /// consistent). Returns whether the read succeeded.
    async fn read_watched(&self) -> bool {
        let me = &self.config.worker_id;
        let target = lock(&self.workers).successor(me, self.config.leases.failover_time, self.clock().now());
        lock(&self.schedule).watch(&target);
        let issued = self.clock().now();
        match self.store.get_heartbeat(&target, false).await {
            Ok(row) => {
                let now = self.clock().now();
                {
                    let mut workers = lock(&self.workers);
                    workers.observe_one(&target, row.as_ref(), issued, now);
                    if target != *me
                        && matches!(
                            workers.status(&target, self.config.leases.failover_time, now),
                            WorkerStatus::Dead(_)
                        )
                    {
                        lock(&self.schedule).watched_died(&target);
                    }
                    metrics::gauge!(LIVE_WORKERS, "worker_id" => self.config.worker_id.clone())
                        .set(workers.live(self.config.leases.failover_time, now).len() as f64);
                }
                if let Some(row) = row.filter(|r| r.view != 0 && !r.lapsed && r.worker_id != *me) {
                    self.compare_views(&row).await;
                }
                true
            }
            Err(LeaseError::Unsupported(what)) if self.liveness.table_in_use() => {
                // A table in use that is unusable for now (access denied for a while): a
                // failed read. The watch stays divided: this worker's successor around the ring
                // is watched by nobody else (found by the simulator: seed 43106 at 8 workers,
                // 32 shards, with the coordinator alone: a worker that left the divided watch
                // for good after a short outage left its successor's death unnoticed, and its
                // leases to safety scans, for 18 s).
                debug!(worker = %target, %what, "reading a heartbeat row failed: the heartbeat table is unusable");
                false
            }
            Err(LeaseError::Unsupported(_)) => {
                self.divided.store(false, Ordering::SeqCst);
                self.read_heartbeats(false).await
            }
            Err(e) => {
                debug!(worker = %target, error = %e, "reading a heartbeat row failed");
                false
            }
        }
    }

    /// Marks the row of a worker judged dead (by a strongly consistent read issued after its
    /// counter had stood still for the failover time) as lapsed, if it is still as judged: the
    /// others, who did not watch it, see it dead at their next read instead of after watching
    /// it for the failover time themselves. The worker, if it runs at all, has lost its
    /// validity already: its next heartbeats are marked lapsed by itself until one succeeds.
    ///
    /// Returns whether the row is marked (or gone, or changed: nothing left to mark).
    async fn mark_lapsed(&self, worker: &str) -> bool {
        let Some(row) = lock(&self.workers).row(worker) else {
            return true;
        };
        if row.lapsed {
            return true;
        }
        let condition = HeartbeatCondition::Unchanged {
            incarnation: row.incarnation,
            counter: row.counter,
        };
        let marked = WorkerHeartbeat { lapsed: true, ..row };
        match self
            .clock()
            .timeout(self.call_timeout(), self.store.put_heartbeat(&marked, condition))
            .await
        {
            Ok(Ok(())) => {
                info!(%worker, "marked the heartbeat row of a dead worker lapsed");
                true
            }
            Ok(Err(e)) if e.is_conflict() => true,
            Ok(Err(e)) => {
                debug!(%worker, error = %e, "marking a dead worker's heartbeat row failed");
                false
            }
            Err(_) => {
                debug!(%worker, "marking a dead worker's heartbeat row timed out");
                false
            }
        }
    }

    /// The workers that look dead by the reads made and whose rows are not marked lapsed.
    fn dead_unmarked(&self) -> BTreeSet<String> {
        let workers = lock(&self.workers);
        dead_unmarked(
            &workers,
            &self.config.worker_id,
            self.config.leases.failover_time,
            self.clock().now(),
        )
    }

    /// The row this worker watches as it last read it (published in its heartbeat: evidence
    /// for the others, see [`WorkerHeartbeat::watched`]).
    fn watched_row(&self) -> Option<crate::heartbeat::WatchedRow> {
        if !self.divided() {
            return None;
        }
        let target = lock(&self.schedule).watching()?.to_owned();
        if target == self.config.worker_id {
            return None;
        }
        let row = lock(&self.workers).row(&target)?;
        Some(crate::heartbeat::WatchedRow {
            worker_id: target,
            counter: row.counter,
            incarnation: row.incarnation,
        })
    }

    /// This worker's digest of the fleet (0 before it read the whole table once).
    fn view_digest(&self) -> u64 {
        let workers = lock(&self.workers);
        if workers.judged_at().is_none() {
            return 0;
        }
        workers.view_digest(&self.config.worker_id)
    }

    /// The divided watch heals views gone stale (a nudge lost, a join or leave not yet seen):
    /// when the watched worker's view of the fleet differs from this one's, this worker reads
    /// the whole table (once per pair of views). If that changes what it knows, it looks at
    /// the lease table; if the watched worker's view is still different, that worker is the
    /// stale one: the row it watches is nudged, so that it reads everything too.
    async fn compare_views(&self, watched: &WorkerHeartbeat) {
        let mine = self.view_digest();
        if !lock(&self.schedule).views_differ(mine, watched.view) {
            return;
        }
        if !self.read_heartbeats(false).await {
            lock(&self.schedule).views_unresolved(); // try again next round
            return;
        }
        let now_mine = self.view_digest();
        if now_mine != mine {
            debug!(worker = %watched.worker_id, "the fleet changed unannounced: looking at the lease table");
            lock(&self.schedule).force();
        }
        if now_mine != watched.view {
            let its_watched = lock(&self.workers).successor(
                &watched.worker_id,
                self.config.leases.failover_time,
                self.clock().now(),
            );
            debug!(worker = %watched.worker_id, nudged = %its_watched, "a watched worker's view of the fleet is stale: nudging the row it watches");
            if let Err(e) = self.store.nudge_heartbeat(&its_watched).await {
                debug!(worker = %its_watched, error = %e, "nudging a worker's heartbeat row failed");
            }
        }
    }

    /// Live workers as known now.
    fn live_count(&self) -> usize {
        lock(&self.workers)
            .live(self.config.leases.failover_time, self.clock().now())
            .len()
    }

    /// One watch round: reads the heartbeats (the watched row, or every row before the fleet
    /// is known or without nudges, or as a take round's follow-up: see
    /// [`Schedule::watch_read`]), and scans the lease table (and takes) if
    /// [`Schedule::scan_due`] says so. Returns whether it scanned.
    ///
    /// A take round's read of every row is followed by another one a failover time later: a
    /// worker that died unwatched (its watcher died with it) shows then as dead, and its
    /// leases move (a chain of workers dead together is found within about twice the failover
    /// time; one dead alone, within the failover time and a watch interval).
    pub async fn watch_round(&self) -> bool {
        let known = lock(&self.workers).judged_at().is_some();
        let read = lock(&self.schedule).watch_read(self.clock().now(), self.divided(), known);
        match read {
            WatchRead::Watched => {
                self.read_watched().await;
            }
            WatchRead::FollowUp => {
                let before = self.dead_unmarked();
                if self.read_heartbeats(false).await
                    && lock(&self.schedule).followed_up(&before, &self.dead_unmarked())
                {
                    debug!("a worker died unwatched: looking at the lease table");
                }
            }
            WatchRead::All => {
                self.read_heartbeats(false).await;
            }
        }
        let due = {
            let workers = lock(&self.workers);
            lock(&self.schedule).scan_due(
                self.clock().now(),
                &workers,
                self.liveness.heartbeats_active(),
                self.divided(),
            )
        };
        if let Some(reason) = due {
            debug!(?reason, "looking at the lease table");
            if let Err(e) = self.take_round().await {
                warn!(error = %e, "lease take round failed");
                self.journal
                    .error(None, format_args!("lease take round failed: {e}"));
            }
        }
        if self.is_leader() {
            self.clean_up_heartbeats().await;
        }
        due.is_some()
    }

    /// The leader deletes heartbeat rows that have stood still for a long time.
    async fn clean_up_heartbeats(&self) {
        let age = self.config.leases.failover_time * STALE_HEARTBEAT_FAILOVERS;
        let stale = lock(&self.workers).stale(age, self.clock().now());
        for (worker, counter) in stale {
            if worker == self.config.worker_id {
                continue;
            }
            match self
                .store
                .delete_heartbeat(&worker, HeartbeatCondition::Counter(counter))
                .await
            {
                Ok(()) => info!(%worker, "deleted the heartbeat row of a worker gone for long"),
                Err(e) => debug!(%worker, error = %e, "deleting a stale heartbeat row failed"),
            }
        }
    }

    /// One take round: scans the table, takes and steals. Returns how many leases were
    /// acquired.
    ///
    /// An executor: what to take, steal, mark or announce is planned by [`TakeRound`] from the
    /// scan and the heartbeats read after it; this makes the calls and feeds their results
    /// back.
    pub async fn take_round(&self) -> Result<usize> {
        if !self.liveness.may_take(self.clock().now()) {
            // Lapsed: nothing is taken until a heartbeat (not marked lapsed) succeeds again.
            return Ok(0);
        }
        let me = self.config.worker_id.as_str();
        let failover = self.config.leases.failover_time;
        // What the fleet looked like before the scan: the fingerprint this round answers. A
        // change announced while the scan runs (a steal, new leases) differs from it, so the
        // next watch round scans again instead of taking the change as seen.
        let seen_before = lock(&self.workers).fingerprint(me, failover, self.clock().now());
        let consistent = lock(&self.schedule).begin_round(&seen_before);
        let scanned = if consistent {
            self.store.list().await
        } else {
            self.store.list_eventually_consistent().await
        };
        let mut leases = match scanned {
            Ok(leases) => leases,
            Err(e) => {
                lock(&self.schedule).scan_failed();
                return Err(e);
            }
        };
        metrics::counter!(LEASE_TABLE_SCANS, "worker_id" => self.config.worker_id.clone()).increment(1);
        // The heartbeats are read after the lease scan, strongly consistent: a worker judged
        // dead from this read (as of the time it was issued) had stopped processing before it
        // (see the module docs). Without that read nothing can be judged: no takes this round.
        let heartbeats = self.liveness.heartbeats_active();
        let read = heartbeats && self.read_heartbeats(true).await;
        if read {
            lock(&self.schedule).read_every_row(self.clock().now());
        }
        if heartbeats && !read {
            warn!("reading the heartbeats failed: no leases taken this round");
            lock(&self.schedule).heartbeats_unread(self.clock().now());
            return Ok(0);
        }
        if consistent {
            let held_live: Vec<String> = lock(&self.held)
                .iter()
                .filter(|(_, lease)| lease.status() == LeaseStatus::Held)
                .map(|(key, _)| key.clone())
                .collect();
            for key in TakeRound::rows_gone(&leases, held_live.iter().map(String::as_str)) {
                if let Some(lease) = lock(&self.held).get(&key) {
                    info!(lease = %key, "the lease's row is gone");
                    lease.mark_lost();
                }
            }
        }
        let filter = lock(&self.filter).clone();
        if let Some(filter) = filter {
            leases.retain(|l| filter(l));
        }
        let now = self.clock().now();
        // What the scan says about leases held here (with worker renewal the only way to learn
        // of a steal before the next checkpoint). A lease whose row is being written cannot be
        // checked now: look again at the next watch round.
        let unchecked = {
            let held = lock(&self.held);
            leases
                .iter()
                .filter_map(|lease| held.get(&lease.lease_key).map(|h| h.reconcile(lease)))
                .filter(|checked| !checked)
                .count()
        };
        self.forget_lost();
        if !heartbeats
            && !self.said_blind.load(Ordering::SeqCst)
            && leases
                .iter()
                .any(|l| l.lease_owner.is_some() && l.owner_renews_by_heartbeat == l.lease_owner)
        {
            self.said_blind.store(true, Ordering::SeqCst);
            warn!(
                "the lease table holds leases renewed through the worker heartbeat table (worker \
                 renewal), which this worker cannot use: it leaves them to the workers that can, \
                 and never takes them for a counter that stands still"
            );
        }
        let input = RoundInput {
            leases,
            seen_before,
            heartbeats,
            divided: self.divided(),
            held: self.held_keys(),
            unchecked,
            adopt_own_rows: self.adopt_own_rows.load(Ordering::SeqCst),
            own_rows: lock(&self.own_rows).clone(),
            taking: self.taking.load(Ordering::SeqCst),
        };
        let mut round = {
            let workers = lock(&self.workers);
            let mut tracker = lock(&self.tracker);
            let mut schedule = lock(&self.schedule);
            TakeRound::plan(input, &mut schedule, &mut tracker, &workers, now)
        };
        // Rows that no longer name this worker are no longer its own to take back.
        lock(&self.own_rows).retain(|key, _| round.own_rows.contains_key(key));
        metrics::gauge!(TOTAL_LEASES, "worker_id" => self.config.worker_id.clone()).set(round.active as f64);
        debug!(
            leases = round.scanned,
            live = ?round.live,
            target = round.target,
            "take round planned"
        );
        let mut acquired = 0;
        loop {
            let mut batch = Vec::new();
            while let Some(action) = round.poll_action() {
                match action {
                    Action::CompleteHandoff { lease } => {
                        let key = &lease.lease_key;
                        let outcome = match self.store.complete_handoff(&lease).await {
                            Ok(_) => {
                                debug!(lease = %key, "completed the hand-off of a lease no longer processed here");
                                CallOutcome::Done
                            }
                            Err(e) if e.is_conflict() => CallOutcome::Conflict,
                            Err(e) => {
                                debug!(lease = %key, error = %e, "completing a hand-off failed");
                                CallOutcome::Failed
                            }
                        };
                        round.handle_handoff(outcome);
                    }
                    Action::MarkLapsed { worker } => {
                        let marked = self.mark_lapsed(&worker).await;
                        round.handle_mark(&worker, marked);
                    }
                    Action::Announce => self.announce(),
                    Action::Take { lease, steal } => batch.push((*lease, steal)),
                }
            }
            if batch.is_empty() {
                break; // every call answered, none left (a round never waits on itself)
            }
            // The validity these takes are made in: should it end before they complete, what
            // they took is never processed (see `Liveness::generation`).
            let generation = self.liveness.generation();
            if !self.liveness.may_take(self.clock().now()) {
                // Lapsed while taking: what was planned no longer holds.
                round.abandon_takes();
                for (_, steal) in batch {
                    round.handle_take(steal, CallOutcome::Failed);
                }
                break;
            }
            // Conditional takes are independent: issued concurrently, a bounded number at a
            // time, so that taking many leases from a remote table does not stall renewals.
            let mut calls = JoinSet::new();
            let by_heartbeat = self.liveness.renewal() == LeaseRenewal::Worker;
            for (lease, steal) in batch {
                let (store, me) = (self.store.clone(), self.config.worker_id.clone());
                let clock = self.clock().clone();
                calls.spawn(
                    async move {
                        let started = clock.now();
                        let result =
                            take_or_find_applied(store.as_ref(), &lease, &me, steal, by_heartbeat).await;
                        (lease, steal, started, generation, result)
                    }
                    .in_current_span(),
                );
            }
            while let Some(joined) = calls.join_next().await {
                let Ok((lease, steal, started, generation, result)) = joined else {
                    continue;
                };
                match result {
                    Ok(row) => {
                        round.handle_take(steal, CallOutcome::Done);
                        if !self.hold_taken(&lease, row, steal, started, generation).await {
                            return Ok(acquired);
                        }
                        acquired += 1;
                    }
                    Err(LeaseError::Conflict { .. }) => {
                        debug!(lease = %lease.lease_key, "another worker took it first");
                        round.handle_take(steal, CallOutcome::Conflict);
                    }
                    Err(e) => {
                        warn!(lease = %lease.lease_key, error = %e, "taking lease failed");
                        self.journal.error(
                            Some(&lease.lease_key),
                            format_args!("taking the lease failed: {e}"),
                        );
                        round.handle_take(steal, CallOutcome::Failed);
                    }
                }
            }
        }
        metrics::gauge!(CURRENT_LEASES, "worker_id" => self.config.worker_id.clone())
            .set(lock(&self.held).len() as f64);
        let held_now = self.held_keys();
        if round.finish(&held_now, &mut lock(&self.schedule)) {
            // The victims learn of it from their next scan (worker renewal) or renewal; after
            // a watched worker's death (its row marked, its leases taken here), the others
            // look to even the fleet out (their share grew).
            self.announce();
        }
        Ok(acquired)
    }

    /// A take or steal succeeded: the lease is held, and published to the scheduler. Returns
    /// false when the scheduler is gone.
    async fn hold_taken(
        &self,
        planned: &Lease,
        row: Lease,
        steal: bool,
        started: Instant,
        generation: u64,
    ) -> bool {
        debug!(lease = %row.lease_key, previous = ?planned.lease_owner, steal, "took lease");
        let worker = self.config.worker_id.clone();
        metrics::counter!(TAKEN_LEASES, "worker_id" => worker.clone()).increment(1);
        if steal {
            info!(lease = %row.lease_key, from = ?planned.lease_owner, "stole lease for balance");
            metrics::counter!(LEASES_STOLEN, "worker_id" => worker).increment(1);
        }
        self.journal.record(
            Some(&row.lease_key),
            JournalEvent::Taken {
                previous_owner: planned.lease_owner.clone(),
                stolen: steal,
            },
        );
        lock(&self.own_rows).remove(&row.lease_key);
        let held = self.new_held(row, started, generation);
        if self.liveness.unsupported() {
            // Without heartbeats: the row must say so (a renewal writes it) before the lease
            // is processed, or a heartbeat row under this worker id (another process's, a
            // former one's) could make the others take it as a dead worker's meanwhile. A take
            // planned from a scan made before this renewal fails on its counter.
            // Only a renewal that succeeded wrote the mark (a throttled or timed-out one did not,
            // and the take removed it): unrenewed, the lease is not processed.
            let taken = held.lease().await.lease_counter;
            held.renew().await;
            let renewed = held.lease().await.lease_counter != taken;
            if held.status() != LeaseStatus::Held || !renewed {
                debug!(lease = %held.key, "the first renewal of a lease taken without heartbeats failed: not processing it");
                held.mark_lost();
                return true;
            }
        }
        if let Some(old) = lock(&self.held).insert(held.key.clone(), held.clone()) {
            // Never planned (held keys are not taken); if it happens, the old one must not go
            // on as if it were held.
            old.mark_lost();
        }
        self.acquired.send(held).await.is_ok()
    }

    /// The keys this worker must not take now: the leases it holds, and those given up whose
    /// shard task has not released them yet.
    fn held_keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = lock(&self.held).keys().cloned().collect();
        lock(&self.retiring).retain(|key, lease| match lease.upgrade() {
            Some(lease) if !lease.released.load(Ordering::SeqCst) => {
                keys.insert(key.clone());
                true
            }
            _ => false,
        });
        keys
    }

    /// Lets go of a lease whose shard task has finished: a held lease is released (evicted)
    /// so that another worker can take it at once, unless its hand-off to this worker is not
    /// done (then it is left as it is); a hand-off is completed; a lost lease is just
    /// forgotten. Only this very lease is let go: if its key was taken again since (a
    /// newer [`HeldLease`] of the same key), that one is not touched.
    pub async fn release(&self, lease: &Arc<HeldLease>) {
        let key = lease.key();
        lease.released.store(true, Ordering::SeqCst);
        let was_retiring = {
            let mut retiring = lock(&self.retiring);
            let this = retiring
                .get(key)
                .is_some_and(|w| w.as_ptr() == Arc::as_ptr(lease));
            if this {
                retiring.remove(key);
            }
            this
        };
        if was_retiring {
            // Given up (lost) and now let go by its task: the key may be taken again; if the
            // row still names this worker, nobody else will take it before this one looks.
            // Its counters once the writes in flight are done: read while a renewal waits for
            // the row, they are unknown, and the row is left to expire (seed 277).
            let counters = lease.settled_own_counters().await;
            lock(&self.own_rows).insert(key.to_owned(), counters);
            self.wake();
            return;
        }
        let lease = {
            let mut held = lock(&self.held);
            match held.get(key) {
                Some(current) if Arc::ptr_eq(current, lease) => held.remove(key),
                _ => None,
            }
        };
        let Some(lease) = lease else {
            return;
        };
        match lease.status() {
            LeaseStatus::Held => {
                let row = lease.row.lock().await;
                // Stolen, and its previous owner has not handed it over yet: it may still
                // process the lease. An evict clears `checkpointOwner`, and the next taker would
                // start at once, beside it (found by the simulator: seed 7043 at 8 workers, 32
                // shards, worker renewal, a thief shutting down while its victim was stuck in a
                // slow checkpoint). So it waits (a while) for the previous owner to hand it
                // over, then releases it: leaving it as it is would strand it for the failover
                // time (a worker stopped a few seconds after stealing for balance: 13 s of a
                // 10 s failover before its leases were held elsewhere, on the emulators).
                let mut row = row;
                if let Some(previous) = row
                    .checkpoint_owner
                    .clone()
                    .filter(|p| *p != self.config.worker_id)
                {
                    drop(row);
                    match self.await_handoff_to_release(key, &previous).await {
                        Some(handed_over) => {
                            row = lease.row.lock().await;
                            *row = handed_over;
                        }
                        None => {
                            info!(lease = %key, %previous, "not released: its hand-off is not done yet");
                            lease.set_status(LeaseStatus::Lost);
                            return;
                        }
                    }
                }
                match self.store.evict(&row).await {
                    Ok(_) => {
                        debug!(lease = %key, "released lease");
                        self.journal.record(Some(key), JournalEvent::Released);
                        self.announce();
                    }
                    Err(e) => {
                        warn!(lease = %key, error = %e, "releasing lease failed; it will expire");
                        self.journal
                            .error(Some(key), format_args!("releasing the lease failed: {e}"));
                    }
                }
                drop(row);
                lease.set_status(LeaseStatus::Lost);
            }
            LeaseStatus::HandoffRequested => {
                let completed = match lease.handoff() {
                    Some(handoff) => self.store.complete_handoff(&handoff).await,
                    None => Err(LeaseError::Conflict {
                        key: key.to_owned(),
                        actual: None,
                    }),
                };
                match completed {
                    Ok(_) => {
                        debug!(lease = %key, "hand-off complete");
                        self.journal.record(Some(key), JournalEvent::HandedOff);
                    }
                    Err(e) if e.is_conflict() => {
                        // The row no longer shows this hand-off: another worker completed it,
                        // or the lease moved on. Routine while the fleet rebalances (it was a
                        // warning: bursts of 20-40 on the emulators' coordination runs).
                        debug!(lease = %key, error = %e, "hand-off already completed or moved on");
                    }
                    Err(e) => {
                        warn!(lease = %key, error = %e, "completing hand-off failed; trying again at the next take round");
                        self.journal
                            .error(Some(key), format_args!("completing the hand-off failed: {e}"));
                    }
                }
                // Look at the table in every case: a thief without heartbeats cannot announce
                // its steal, and its leases are watched (by their counters) from now; a
                // hand-off that failed is completed by the next round (orphaned hand-offs),
                // which its thief waits for (with worker renewal, as long as this worker lives).
                self.wake();
                lease.set_status(LeaseStatus::Lost);
            }
            // Lost here (not renewed in time, a failed write): the row may still name this
            // worker, and then nobody else takes it before this worker looks again (F7 of the
            // coordination review): look now, not at the next safety scan.
            LeaseStatus::Lost => {
                // As for a retiring lease above: once the writes in flight are done.
                let counters = lease.settled_own_counters().await;
                lock(&self.own_rows).insert(key.to_owned(), counters);
                self.wake();
            }
        }
    }

    /// A lease stolen from `previous` is released: waits up to half the failover time for
    /// `previous` to hand it over (its last checkpoint, then `checkpointOwner` cleared), and
    /// returns the row as it then is, still this worker's. `None`: not handed over in that
    /// time, or no longer this worker's. The previous owner learns of the steal at its next
    /// renewal (per-lease renewal) or from the steal's announcement (worker renewal), well
    /// within that time when nothing fails.
    async fn await_handoff_to_release(&self, key: &str, previous: &str) -> Option<Lease> {
        let failover = self.config.leases.failover_time;
        let poll = (failover / 32).clamp(Duration::from_millis(20), Duration::from_millis(200));
        let deadline = self.clock().now() + failover / 2;
        loop {
            match self.store.get(key).await {
                Ok(Some(row)) if !row.is_owned_by(&self.config.worker_id) => return None,
                Ok(Some(row)) if row.checkpoint_owner.is_none() => {
                    debug!(lease = %key, %previous, "handed over: releasing it");
                    return Some(row);
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => debug!(lease = %key, error = %e, "reading a lease in hand-off failed"),
            }
            if self.clock().now() + poll >= deadline {
                return None;
            }
            self.clock().sleep(poll).await;
        }
    }

    /// Drives heartbeats, renewals, watch rounds and take rounds until `stop` turns true.
    ///
    /// Two loops run side by side in this one task, so that a long take round never delays a
    /// renewal: the keep-alive loop (heartbeats and renewals, each call in a task of its own)
    /// and the watch loop (heartbeat reads, scans, takes). Dropping the future (the worker is
    /// killed) drops every call in flight.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        // A heartbeat first: the others see this worker, and what it takes is backed. Until
        // one succeeds, nothing is taken.
        self.liveness.set_starting();
        // The fleet learns of this worker from the nudges sent once it knows the fleet.
        self.nudge_pending.store(true, Ordering::SeqCst);
        self.heartbeat().await;
        let keepalive = {
            let this = self.clone();
            let mut stop = stop.clone();
            async move {
                let mut renew = this.clock().interval(this.config.leases.renew_interval);
                let mut beat = this.clock().interval(this.heartbeat_interval());
                let mut tasks: JoinSet<()> = JoinSet::new();
                loop {
                    while let Some(done) = tasks.try_join_next() {
                        resume_panic(done);
                    }
                    // Biased: the branches are polled in this order, so that a run in paused
                    // time (the fleet simulator) replays exactly from its seed.
                    let renew_now = tokio::select! {
                        biased;
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                        _ = renew.tick() => true,
                        _ = beat.tick() => false,
                        () = this.beat_now.notified() => false,
                        Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                            resume_panic(done);
                            continue;
                        }
                    };
                    if renew_now {
                        this.check_lapse();
                        this.forget_lost();
                        this.spawn_renewals(&mut tasks);
                    } else if !this.beating.swap(true, Ordering::SeqCst) {
                        let beat = this.clone();
                        tasks.spawn(
                            async move {
                                beat.heartbeat().await;
                                beat.beating.store(false, Ordering::SeqCst);
                            }
                            .in_current_span(),
                        );
                    }
                }
                tasks.shutdown().await;
            }
        };
        let watcher = {
            let this = self.clone();
            let mut stop = stop;
            async move {
                loop {
                    // The next of the schedule's timers: the watch tick, the moment a watched
                    // live worker would turn dead (so that its leases move without waiting for
                    // the next tick), or the follow-up read.
                    let (at, timer) = {
                        let workers = lock(&this.workers);
                        lock(&this.schedule).poll_timeout(&workers, this.divided(), this.clock().now())
                    };
                    let fired = tokio::select! {
                        biased;
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                        () = this.clock().sleep_until(at) => Some(timer),
                        () = this.wake_taker.notified() => None,
                    };
                    if let Some(timer) = fired {
                        let live = this.live_count();
                        lock(&this.schedule).handle_timeout(timer, this.clock().now(), live, this.divided());
                    }
                    this.watch_round().await;
                    this.ready.send_replace(true);
                }
            }
        };
        tokio::join!(keepalive, watcher);
    }
}

#[cfg(test)]
#[path = "coordinator/review_tests.rs"]
mod review_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InMemoryLeaseStore;
    use crate::sequence::ExtendedSequenceNumber;

    /// A table of `n` unowned leases, `shard-0` ...
    pub(super) fn store_with(n: usize) -> Arc<InMemoryLeaseStore> {
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
        cfg.leases.max_leases_to_steal = 2;
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
        // b first sees the lease 100 ms after a's renewal. a stops renewing (say, partitioned
        // from the store): its own view expires first, with a margin (2 % of the failover
        // time) for clock rates.
        b.take_round().await.unwrap();
        tokio::time::advance(Duration::from_millis(2800)).await;
        assert!(lease.is_valid());
        b.take_round().await.unwrap();
        assert!(b.held().is_empty(), "b must not take before the failover time");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!lease.is_valid(), "a's lease is no longer valid for processing");
        b.take_round().await.unwrap();
        assert!(b.held().is_empty(), "not yet expired by b's clock");
        tokio::time::advance(Duration::from_millis(150)).await;
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

    /// A rolling deploy on a table with a dead worker's heartbeat row: the new worker cannot
    /// tell that row from a worker that just started, but must not leave the leases the old
    /// worker hands over unowned until that row looks dead (found in the kclpy hand-off test:
    /// the hand-off took the failover time).
    #[tokio::test(start_paused = true)]
    async fn a_newcomer_takes_released_leases_at_once_despite_a_dead_workers_row() {
        let store = store_with(4);
        let (dead, _dead_rx) = coordinator(&store, "a-dead");
        for _ in 0..5 {
            dead.heartbeat().await; // it ran for a while, and then never again
        }
        let (old, _old_rx) = coordinator(&store, "b-old");
        old.heartbeat().await;
        old.take_round().await.unwrap();
        assert_eq!(old.held().len(), 4, "a row that never moved is not counted");
        tokio::time::advance(Duration::from_millis(500)).await;
        let (new, _new_rx) = coordinator(&store, "c-new");
        new.heartbeat().await;
        new.read_heartbeats(true).await;
        // The old worker shuts down gracefully: releases everything, removes its row.
        for lease in old.held() {
            old.release(&lease).await;
        }
        old.leave().await;
        tokio::time::advance(Duration::from_millis(500)).await;
        new.take_round().await.unwrap();
        assert_eq!(
            new.held().len(),
            4,
            "all released leases taken well before the failover time"
        );

        // A worker that does beat while watched counts even with no lease.
        let (joiner, _joiner_rx) = coordinator(&store, "d-join");
        joiner.heartbeat().await;
        new.read_heartbeats(true).await;
        tokio::time::advance(Duration::from_millis(500)).await;
        joiner.heartbeat().await;
        new.renew_all().await;
        new.take_round().await.unwrap();
        let live = lock(&new.workers)
            .live(Duration::from_secs(3), Instant::now())
            .len();
        assert_eq!(live, 3, "a-dead (not yet dead by this clock), c-new, d-join");
        // d-join takes its share (2 of 4): a-dead does not count, c-new hands two over.
        joiner.take_round().await.unwrap();
        assert_eq!(joiner.held().len(), 2);
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
        a.release(&victim).await;
        let mine = b.held().pop().unwrap();
        let row = mine.wait_for_handoff(Duration::from_millis(100)).await.unwrap();
        assert_eq!(row.checkpoint, cp);
        assert!(mine.is_valid());
        // a releases the other one: b takes it on its next round without waiting for expiry.
        let other = a.held().pop().unwrap();
        a.release(&other).await;
        b.take_round().await.unwrap();
        assert_eq!(b.held().len(), 2);
        // Each worker's journal tells the story, newest first.
        let names = |c: &LeaseCoordinator| -> Vec<(String, &'static str)> {
            c.journal()
                .moves()
                .iter()
                .map(|e| (e.lease.clone().unwrap_or_default(), e.event.name()))
                .collect()
        };
        let (other_key, stolen_key) = (other.key().to_owned(), stolen[0].clone());
        assert_eq!(
            names(&a)[..3],
            [
                (other_key.clone(), "released"),
                (stolen_key.clone(), "handed-off"),
                (stolen_key.clone(), "handoff-requested"),
            ]
        );
        assert_eq!(names(&b), [(other_key, "taken"), (stolen_key.clone(), "stolen")]);
        assert!(matches!(
            &b.journal().moves()[1].event,
            JournalEvent::Taken { previous_owner: Some(o), stolen: true } if o == "a"
        ));
        assert!(a.journal().errors().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn measured_throughput_rides_on_renewals_and_checkpoints() {
        let store = store_with(1);
        let (a, mut a_rx) = coordinator(&store, "a");
        a.take_round().await.unwrap();
        let held = a_rx.recv().await.unwrap();
        let row = |s: &Arc<InMemoryLeaseStore>| {
            let s = s.clone();
            async move { s.get("shard-0").await.unwrap().unwrap() }
        };
        held.renew().await;
        assert_eq!(row(&store).await.throughput_kbps, None, "nothing measured yet");
        held.set_throughput_kbps(12.5);
        let before = row(&store).await.lease_counter;
        held.renew().await;
        let after = row(&store).await;
        assert_eq!(after.throughput_kbps, Some(12.5));
        assert_eq!(after.lease_counter, before + 1, "one write: the renewal itself");
        held.set_throughput_kbps(3.25);
        let cp = ExtendedSequenceNumber::from_parts("9", 0).unwrap();
        held.checkpoint(&cp).await.unwrap();
        assert_eq!(row(&store).await.throughput_kbps, Some(3.25));
    }

    /// A store whose chosen writes are applied but report failure (a lost answer).
    fn lossy(
        store: &Arc<InMemoryLeaseStore>,
        plan: crate::LeaseFaultPlan,
    ) -> Arc<crate::FailureLeaseStore<Arc<InMemoryLeaseStore>>> {
        Arc::new(crate::FailureLeaseStore::new(store.clone(), plan))
    }

    fn lossy_coordinator(
        store: &Arc<crate::FailureLeaseStore<Arc<InMemoryLeaseStore>>>,
        me: &str,
    ) -> (Arc<LeaseCoordinator>, mpsc::Receiver<Arc<HeldLease>>) {
        LeaseCoordinator::new(store.clone(), CoordinatorConfig::new(me, Duration::from_secs(3)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_take_that_reports_failure_but_was_applied_is_held() {
        use crate::{LeaseFault, LeaseFaultPlan, LeaseOp, LeaseTrigger};
        let memory = store_with(1);
        let store = lossy(
            &memory,
            LeaseFaultPlan::new(0).rule(LeaseOp::Take, LeaseTrigger::Nth(1), LeaseFault::ApplyThenFail),
        );
        let (a, mut a_rx) = lossy_coordinator(&store, "a");
        assert_eq!(a.take_round().await.unwrap(), 1, "the applied take counts");
        let held = a_rx.recv().await.unwrap();
        assert_eq!(held.status(), LeaseStatus::Held);
        assert_eq!(store.injected(LeaseOp::Take), 1);
        held.renew().await;
        assert_eq!(held.status(), LeaseStatus::Held);
        assert_eq!(memory.get("shard-0").await.unwrap().unwrap().lease_counter, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_and_checkpoints_that_report_failure_but_were_applied_lose_nothing() {
        use crate::{LeaseFault, LeaseFaultPlan, LeaseOp, LeaseTrigger};
        let memory = store_with(1);
        let store = lossy(&memory, LeaseFaultPlan::none());
        let (a, mut a_rx) = lossy_coordinator(&store, "a");
        a.take_round().await.unwrap();
        let held = a_rx.recv().await.unwrap();
        // A renewal applied but reported failed, then a conflict the store reports without the
        // row (as some emulators do): the row is read again and found ours.
        store.set_plan(
            LeaseFaultPlan::new(0)
                .rule(LeaseOp::Renew, LeaseTrigger::Nth(1), LeaseFault::ApplyThenFail)
                .rule(LeaseOp::Renew, LeaseTrigger::Nth(2), LeaseFault::Conflict),
        );
        held.renew().await;
        held.renew().await;
        assert_eq!(held.status(), LeaseStatus::Held, "not taken for a lost lease");
        held.renew().await;
        assert_eq!(held.status(), LeaseStatus::Held);
        assert_eq!(held.lease().await, memory.get("shard-0").await.unwrap().unwrap());
        // A checkpoint applied but reported failed: the retry finds the row moved by its own
        // write and checkpoints again on top.
        store.set_plan(LeaseFaultPlan::new(0).rule(
            LeaseOp::Checkpoint,
            LeaseTrigger::Nth(1),
            LeaseFault::ApplyThenFail,
        ));
        let cp = ExtendedSequenceNumber::from_parts("7", 0).unwrap();
        assert!(held.checkpoint(&cp).await.is_err(), "the first answer was lost");
        let row = held.checkpoint(&cp).await.expect("the retry succeeds");
        assert_eq!(row.checkpoint, cp);
        assert_eq!(held.status(), LeaseStatus::Held);
        held.renew().await;
        assert_eq!(held.status(), LeaseStatus::Held);
        // A real loss is still a loss.
        let row = memory.get("shard-0").await.unwrap().unwrap();
        memory.take(&row, "b", false).await.unwrap();
        store.set_plan(LeaseFaultPlan::new(0).rule(
            LeaseOp::Renew,
            LeaseTrigger::Always,
            LeaseFault::Conflict,
        ));
        held.renew().await;
        assert_eq!(held.status(), LeaseStatus::Lost);
    }
}
