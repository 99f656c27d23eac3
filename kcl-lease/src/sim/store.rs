//! [`SimLeaseStore`]: the lease table and the heartbeat table with DynamoDB's semantics, shared
//! by the simulated workers, each through its own handle so that faults can be per worker.
//!
//! - Conditional writes are linearizable: the state lives in an [`InMemoryLeaseStore`], and a
//!   write, the snapshot taken after it and the invariant checks run without yielding (one
//!   current-thread runtime), so they are one atomic step.
//! - Strongly consistent reads (`list`, `get`, `list_heartbeats(true)`) see the current state.
//!   Eventually consistent reads (`list_eventually_consistent`, `list_heartbeats(false)`)
//!   return the state as it was a random lag ago (up to `max_staleness`), from a bounded
//!   history of snapshots taken after every write.
//! - Faults are drawn per call from a generator keyed by the run's seed, the handle, the
//!   operation, the lease key, the call's instant and its rank among such calls of that
//!   instant: the same seed gives the same faults whatever order unrelated calls of the same
//!   instant ran in, and an extra call at one instant changes no later draw.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::invariants::{EventKind, Monitor};
use super::rng::SimRng;
use super::FaultClass;
use crate::error::{LeaseError, Result};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::held::lock;
use crate::lease::Lease;
use crate::memory::{InMemoryLeaseStore, LeaseOp};
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;

/// How many snapshots are kept at most, whatever their age.
const MAX_SNAPSHOTS: usize = 4096;

/// The faults one handle (one simulated process) suffers now. Probabilities are per call.
/// The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerFaults {
    /// Probability of a delay before the call reaches the table.
    pub delay_before: f64,
    /// Probability of a delay after the call was applied (the reply is slow: a read returns
    /// rows older than the time it returns).
    pub delay_after: f64,
    /// The longest of these delays (each is uniform in 1 ms..=this).
    pub max_delay: Duration,
    /// Probability that the reply of a call is very late: delayed after the call was applied
    /// by `slow_reply_delay` up to four times that (a stalled connection, a starved client). A
    /// strongly consistent read then returns the state of the time it was served, long after.
    pub slow_reply: f64,
    /// The shortest of these late replies (each is uniform in this..=four times this).
    pub slow_reply_delay: Duration,
    /// Probability that a call is throttled: an error, nothing applied.
    pub throttle: f64,
    /// Probability that a write is applied but its reply is lost (a backend error).
    pub reply_lost: f64,
    /// Every read of the lease table (`list`, `list_eventually_consistent`, `get`) fails
    /// while writes work.
    pub lease_reads_fail: bool,
    /// Every read of the heartbeat table (`list_heartbeats`) fails while writes work (the
    /// review's F2: a heartbeat table short of read capacity).
    pub heartbeat_reads_fail: bool,
    /// The heartbeat table is unusable for this handle: every heartbeat call answers
    /// [`LeaseError::Unsupported`], as the DynamoDB store maps AccessDenied and
    /// ResourceNotFound on that table.
    pub heartbeats_unusable: bool,
    /// A suspended process: every call is delayed by this much before it reaches the table.
    pub suspended: Option<Duration>,
}

/// One snapshot of both tables, taken after a write.
#[derive(Clone, Debug)]
struct Snapshot {
    at: Instant,
    leases: Arc<Vec<Lease>>,
    heartbeats: Arc<Vec<WorkerHeartbeat>>,
}

#[derive(Debug, Default)]
struct StoreState {
    history: VecDeque<Snapshot>,
    handles: BTreeMap<String, WorkerFaults>,
    /// Per call identity (handle, operation, key and variant): the instant of its last call
    /// (microseconds into the run) and how many such calls that instant saw.
    calls: HashMap<(String, LeaseOp, String), (u64, u64)>,
    injected: BTreeMap<FaultClass, u64>,
    stale_reads: u64,
    /// The latest time an injected delay ends.
    delays_until: Option<Instant>,
    /// Handles that a heartbeat call answered with [`LeaseError::Unsupported`] (the table
    /// missing or denied).
    heartbeats_refused: BTreeSet<String>,
}

#[derive(Debug)]
struct Shared {
    seed: u64,
    max_staleness: Duration,
    inner: InMemoryLeaseStore,
    monitor: Arc<Monitor>,
    state: Mutex<StoreState>,
    /// Log every call (begin and outcome) as [`EventKind::Call`] events.
    trace: AtomicBool,
}

/// The shared lease and heartbeat tables of a simulated fleet. See the module docs.
#[derive(Clone, Debug)]
pub struct SimLeaseStore {
    shared: Arc<Shared>,
}

impl SimLeaseStore {
    /// Empty tables. Faults and eventually consistent lags are drawn from `seed`; eventually
    /// consistent reads lag by up to `max_staleness`; every applied write is reported to
    /// `monitor`.
    pub fn new(seed: u64, max_staleness: Duration, monitor: Arc<Monitor>) -> Self {
        let this = Self {
            shared: Arc::new(Shared {
                seed,
                max_staleness,
                inner: InMemoryLeaseStore::new(),
                monitor,
                state: Mutex::new(StoreState::default()),
                trace: AtomicBool::new(false),
            }),
        };
        this.snapshot();
        this
    }

    /// A handle for one process (`name`, unique per process: a worker id, or a worker id with
    /// a suffix for a restart or a duplicate). Its calls suffer the faults set for `name`.
    pub fn for_worker(&self, name: &str) -> Arc<dyn LeaseStore> {
        lock(&self.shared.state)
            .handles
            .entry(name.to_owned())
            .or_default();
        Arc::new(SimStoreHandle {
            shared: self.shared.clone(),
            name: name.to_owned(),
        })
    }

    /// Logs every call from now on (its beginning with the faults drawn, and its outcome) as
    /// [`EventKind::Call`] events: for debugging one seed.
    pub fn set_trace(&self, trace: bool) {
        self.shared.trace.store(trace, Ordering::Relaxed);
    }

    /// Sets the faults of handle `name` from now on.
    pub fn set_faults(&self, name: &str, faults: WorkerFaults) {
        lock(&self.shared.state).handles.insert(name.to_owned(), faults);
    }

    /// The faults of handle `name` now.
    pub fn faults(&self, name: &str) -> WorkerFaults {
        lock(&self.shared.state)
            .handles
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Stops every fault of every handle (the quiet phase). Eventually consistent reads keep
    /// lagging: that is DynamoDB's normal behaviour, not a fault.
    pub fn clear_faults(&self) {
        for faults in lock(&self.shared.state).handles.values_mut() {
            *faults = WorkerFaults::default();
        }
    }

    /// Creates a lease (set-up), outside any fault.
    pub fn create(&self, lease: Lease) {
        self.shared.inner.put_raw(lease);
        self.snapshot();
    }

    /// The table as it is now.
    pub fn leases(&self) -> Vec<Lease> {
        self.shared.inner.snapshot()
    }

    /// The heartbeat rows as they are now.
    pub fn heartbeats(&self) -> Vec<WorkerHeartbeat> {
        self.shared.inner.heartbeats()
    }

    /// Faults injected so far, per class (classes never injected are absent).
    pub fn injected(&self) -> BTreeMap<FaultClass, u64> {
        lock(&self.shared.state).injected.clone()
    }

    /// Eventually consistent reads that returned a state older than the current one.
    pub fn stale_reads(&self) -> u64 {
        lock(&self.shared.state).stale_reads
    }

    /// When the last injected delay (of a call already made) ends, if any is still running.
    pub fn delays_until(&self) -> Option<Instant> {
        lock(&self.shared.state)
            .delays_until
            .filter(|at| *at > Instant::now())
    }

    /// Every applied write that moved a lease (take, steal, evict, completed hand-off), with
    /// its simulated time, oldest first.
    pub fn owner_changes(&self) -> Vec<super::Event> {
        self.shared
            .monitor
            .events()
            .into_iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::Take | EventKind::Steal | EventKind::Evict | EventKind::HandoffDone
                )
            })
            .collect()
    }

    /// The monitor the store reports to.
    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.shared.monitor
    }

    /// Counts one injected fault of `class` (also used by the fleet for scenario events).
    /// Whether a heartbeat call of the handle `name` was answered that the heartbeat table
    /// is unusable (missing or denied).
    pub fn heartbeats_refused(&self, name: &str) -> bool {
        lock(&self.shared.state).heartbeats_refused.contains(name)
    }

    /// Counts an injected fault or scenario event of `class`.
    pub fn count(&self, class: FaultClass) {
        *lock(&self.shared.state).injected.entry(class).or_default() += 1;
    }

    fn snapshot(&self) {
        self.shared.snapshot();
    }
}

/// Which table a write may have changed: a snapshot copies only that one and shares the other
/// with the snapshot before (every write snapshots, so the other is as it was then).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Changed {
    Leases,
    Heartbeats,
    Both,
}

impl Shared {
    fn snapshot(&self) {
        self.snapshot_of(Changed::Both);
    }

    fn snapshot_of(&self, changed: Changed) {
        let now = Instant::now();
        let previous = lock(&self.state).history.back().cloned();
        let (leases, heartbeats) = match (previous, changed) {
            (Some(p), Changed::Heartbeats) => (p.leases, Arc::new(self.inner.heartbeats())),
            (Some(p), Changed::Leases) => (Arc::new(self.inner.snapshot()), p.heartbeats),
            _ => (Arc::new(self.inner.snapshot()), Arc::new(self.inner.heartbeats())),
        };
        let snap = Snapshot {
            at: now,
            leases,
            heartbeats,
        };
        let mut state = lock(&self.state);
        state.history.push_back(snap);
        // Keep every snapshot a read may still pick: the newest one older than the largest
        // lag, and everything after it.
        let horizon = now.checked_sub(self.max_staleness);
        while state.history.len() > 1 {
            let second = state.history.get(1).map(|s| s.at);
            let old_enough = match (second, horizon) {
                (Some(at), Some(h)) => at <= h,
                _ => false,
            };
            if old_enough || state.history.len() > MAX_SNAPSHOTS {
                state.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn count(&self, state: &mut StoreState, class: FaultClass) {
        *state.injected.entry(class).or_default() += 1;
    }
}

/// What went wrong with a call, decided before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Throttled,
    ReadFailed,
    Unsupported,
}

/// The faults decided for one call.
#[derive(Debug, Default)]
struct CallPlan {
    before: Duration,
    after: Duration,
    failure: Option<Failure>,
    reply_lost: bool,
    /// The lag of an eventually consistent read.
    lag: Duration,
    /// The lease key, when calls are traced.
    traced: Option<String>,
}

/// One process's handle on the shared tables.
#[derive(Debug)]
struct SimStoreHandle {
    shared: Arc<Shared>,
    name: String,
}

fn is_heartbeat(op: LeaseOp) -> bool {
    matches!(
        op,
        LeaseOp::PutHeartbeat
            | LeaseOp::ListHeartbeats
            | LeaseOp::DeleteHeartbeat
            | LeaseOp::GetHeartbeat
            | LeaseOp::NudgeHeartbeat
    )
}

impl SimStoreHandle {
    /// Decides the faults of one call, counts them and logs the ones that matter.
    fn plan(&self, op: LeaseOp, key: &str, variant: &str) -> CallPlan {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        // A call is named by its identity, its instant and its rank among such calls of that
        // instant: a run that makes one more call at some instant (the coordinator's
        // `select!` picked another ready branch first) draws the same faults for every later
        // call.
        let now = u64::try_from(shared.monitor.elapsed().as_micros()).unwrap_or(u64::MAX);
        let n = {
            let calls = state
                .calls
                .entry((self.name.clone(), op, format!("{key}/{variant}")))
                .or_default();
            *calls = if calls.0 == now {
                (now, calls.1 + 1)
            } else {
                (now, 1)
            };
            calls.1
        };
        let faults = state.handles.get(&self.name).cloned().unwrap_or_default();
        let op_index = LeaseOp::ALL.iter().position(|o| *o == op).unwrap_or(0) as u64;
        let mut rng = SimRng::for_call(shared.seed, &[op_index, now, n], &[&self.name, key, variant]);
        let mut plan = CallPlan {
            lag: Duration::from_millis(rng.range(0, shared.max_staleness.as_millis() as u64)),
            ..CallPlan::default()
        };
        let mut notes: Vec<String> = Vec::new();
        if let Some(pause) = faults.suspended {
            // Counted once per pause by the fleet, not per call.
            plan.before += pause;
            notes.push(format!("suspended: delayed {pause:?}"));
        }
        if faults.heartbeats_unusable && is_heartbeat(op) {
            plan.failure = Some(Failure::Unsupported);
            shared.count(&mut state, FaultClass::HeartbeatUnusable);
            state.heartbeats_refused.insert(self.name.clone());
            notes.push("heartbeat table unusable".into());
        } else if op.is_read()
            && ((faults.heartbeat_reads_fail && is_heartbeat(op))
                || (faults.lease_reads_fail && !is_heartbeat(op)))
        {
            plan.failure = Some(Failure::ReadFailed);
            shared.count(&mut state, FaultClass::ReadOutage);
            notes.push("read failed (reads out, writes work)".into());
        } else if rng.chance(faults.throttle) {
            plan.failure = Some(Failure::Throttled);
            shared.count(&mut state, FaultClass::Throttled);
            notes.push("throttled".into());
        } else if !op.is_read() && rng.chance(faults.reply_lost) {
            plan.reply_lost = true;
            shared.count(&mut state, FaultClass::ReplyLost);
            notes.push("applied, reply lost".into());
        }
        let max = faults.max_delay.as_millis() as u64;
        let mut delayed = false;
        if rng.chance(faults.delay_before) && max > 0 {
            let d = Duration::from_millis(rng.range(1, max));
            plan.before += d;
            shared.count(&mut state, FaultClass::DelayBefore);
            delayed = true;
            notes.push(format!("delayed {d:?} before"));
        }
        if plan.failure.is_none() && rng.chance(faults.delay_after) && max > 0 {
            let d = Duration::from_millis(rng.range(1, max));
            plan.after += d;
            shared.count(&mut state, FaultClass::DelayAfter);
            delayed = true;
            notes.push(format!("delayed {d:?} after"));
        }
        // Drawn after every other draw of the call: the draws above are the same whether
        // this class is enabled or not, so a seed keeps its other faults.
        let slow_min = faults.slow_reply_delay.as_millis() as u64;
        let mut slow = false;
        if plan.failure.is_none() && slow_min > 0 && rng.chance(faults.slow_reply) {
            let d = Duration::from_millis(rng.range(slow_min, 4 * slow_min));
            plan.after += d;
            shared.count(&mut state, FaultClass::SlowReply);
            slow = true;
            notes.push(format!("reply delayed {d:?} (slow reply)"));
        }
        let ends = Instant::now() + plan.before + plan.after;
        if !plan.before.is_zero() || !plan.after.is_zero() {
            state.delays_until = Some(state.delays_until.map_or(ends, |u| u.max(ends)));
        }
        drop(state);
        if shared.trace.load(Ordering::Relaxed) {
            plan.traced = Some(key.to_owned());
            shared.monitor.record(
                &self.name,
                EventKind::Call,
                key,
                format!("{} {variant} begins {}", op.name(), notes.join(", ")),
            );
        }
        // Heartbeat faults are all logged; lease-table delays are not (too many, and they show
        // in what follows), except slow replies (rare, and what follows them is their doing).
        let logged = is_heartbeat(op)
            || plan.failure.is_some()
            || plan.reply_lost
            || slow
            || faults.suspended.is_some();
        if !notes.is_empty() && (logged || !delayed) {
            let kind = if is_heartbeat(op) {
                EventKind::HeartbeatFault
            } else {
                EventKind::StoreFault
            };
            // The variant tells a consistent read from an eventually consistent one.
            let variant = if variant.is_empty() {
                String::new()
            } else {
                format!(" {variant}")
            };
            shared.monitor.record(
                &self.name,
                kind,
                key,
                format!("{}{variant}: {}", op.name(), notes.join(", ")),
            );
        }
        plan
    }

    /// Plans the call, waits its delay before, and fails it if planned so.
    async fn begin(&self, op: LeaseOp, key: &str, variant: &str) -> Result<CallPlan> {
        let plan = self.plan(op, key, variant);
        if !plan.before.is_zero() {
            tokio::time::sleep(plan.before).await;
        }
        match plan.failure {
            None => Ok(plan),
            Some(Failure::Throttled) => Err(LeaseError::Throttled(format!("sim: {} throttled", op.name()))),
            Some(Failure::ReadFailed) => Err(LeaseError::Throttled(format!(
                "sim: {} failed (read capacity exhausted)",
                op.name()
            ))),
            Some(Failure::Unsupported) => Err(LeaseError::Unsupported(
                "sim: heartbeat table: AccessDeniedException".into(),
            )),
        }
    }

    /// Waits the delay after, and loses the reply if planned so.
    async fn end<T>(&self, op: LeaseOp, plan: CallPlan, result: Result<T>) -> Result<T> {
        if !plan.after.is_zero() {
            tokio::time::sleep(plan.after).await;
        }
        let result = if plan.reply_lost {
            Err(LeaseError::backend(format!(
                "sim: {} applied, but the reply was lost",
                op.name()
            )))
        } else {
            result
        };
        if let Some(key) = &plan.traced {
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("error: {e}"),
            };
            self.shared.monitor.record(
                &self.name,
                EventKind::Call,
                key,
                format!("{} returns {outcome}", op.name()),
            );
        }
        result
    }

    /// Runs one write on the shared state and reports it: snapshot, moves, checkpoints. The
    /// write never yields (the in-memory store does not), so this is one atomic step.
    async fn write<F>(&self, op: &str, key: &str, write: F) -> Result<Lease>
    where
        F: std::future::Future<Output = Result<Lease>>,
    {
        let before = self.shared.inner.get(key).await.ok().flatten();
        let result = write.await;
        if let Ok(after) = &result {
            self.shared.snapshot_of(Changed::Leases);
            self.shared
                .monitor
                .after_write(&self.name, op, before.as_ref(), Some(after));
            self.log_write(op, key, before.as_ref(), after);
        }
        result
    }

    fn log_write(&self, op: &str, key: &str, before: Option<&Lease>, after: &Lease) {
        let owner = |l: Option<&Lease>| {
            l.and_then(|l| l.lease_owner.clone())
                .unwrap_or_else(|| "-".into())
        };
        let (kind, detail) = match op {
            "take" => (
                EventKind::Take,
                format!("from {} counter {}", owner(before), after.lease_counter),
            ),
            "steal" => (
                EventKind::Steal,
                format!("from {} counter {}", owner(before), after.lease_counter),
            ),
            "evict" => (
                EventKind::Evict,
                format!("released by {} counter {}", owner(before), after.lease_counter),
            ),
            "complete_handoff" => (
                EventKind::HandoffDone,
                format!(
                    "checkpointOwner {} cleared, owner {}",
                    before
                        .and_then(|l| l.checkpoint_owner.clone())
                        .unwrap_or_else(|| "-".into()),
                    owner(Some(after))
                ),
            ),
            "checkpoint" => (
                EventKind::Checkpoint,
                format!(
                    "{} (owner {}, checkpointOwner {})",
                    after.checkpoint.checkpoint_str(),
                    owner(Some(after)),
                    before
                        .and_then(|l| l.checkpoint_owner.clone())
                        .unwrap_or_else(|| "-".into())
                ),
            ),
            "reset" => (
                EventKind::Reset,
                format!(
                    "checkpoint {} -> {} (owner {} removed) counter {}",
                    before.map_or_else(|| "-".into(), |l| l.checkpoint.checkpoint_str().to_string()),
                    after.checkpoint.checkpoint_str(),
                    owner(before),
                    after.lease_counter
                ),
            ),
            _ => return,
        };
        self.shared.monitor.record(&self.name, kind, key, detail);
    }

    /// The newest snapshot at least `lag` old (the oldest kept if none is), and whether it
    /// is older than the current state.
    fn snapshot_before(&self, lag: Duration) -> (Snapshot, bool) {
        let mut state = lock(&self.shared.state);
        let now = Instant::now();
        let target = now.checked_sub(lag);
        let newest = state.history.len().saturating_sub(1);
        let index = match target {
            Some(t) => state.history.iter().rposition(|s| s.at <= t).unwrap_or(0),
            None => 0,
        };
        let stale = index < newest;
        if stale {
            state.stale_reads += 1;
        }
        let snap = match state.history.get(index) {
            Some(s) => s.clone(),
            None => Snapshot {
                at: now,
                leases: Arc::new(self.shared.inner.snapshot()),
                heartbeats: Arc::new(self.shared.inner.heartbeats()),
            },
        };
        (snap, stale)
    }
}

impl SimStoreHandle {
    /// A take or steal through the simulated table: [`LeaseStore::take`], or
    /// [`LeaseStore::take_heartbeat_renewed`] when `by_heartbeat`.
    async fn take_with(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
        by_heartbeat: bool,
    ) -> Result<Lease> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::Take, key, "").await?;
        let steal = handoff && expected.lease_owner.as_deref().is_some_and(|o| o != new_owner);
        let op = if steal { "steal" } else { "take" };
        let inner = &self.shared.inner;
        let result = if by_heartbeat {
            self.write(
                op,
                key,
                inner.take_heartbeat_renewed(expected, new_owner, handoff),
            )
            .await
        } else {
            self.write(op, key, inner.take(expected, new_owner, handoff))
                .await
        };
        self.end(LeaseOp::Take, plan, result).await
    }
}

#[async_trait]
impl LeaseStore for SimStoreHandle {
    async fn list(&self) -> Result<Vec<Lease>> {
        let plan = self.begin(LeaseOp::List, "", "consistent").await?;
        let result = self.shared.inner.list().await;
        self.end(LeaseOp::List, plan, result).await
    }

    async fn list_eventually_consistent(&self) -> Result<Vec<Lease>> {
        let plan = self.begin(LeaseOp::List, "", "eventual").await?;
        let (snap, _) = self.snapshot_before(plan.lag);
        let rows = snap.leases.as_ref().clone();
        self.end(LeaseOp::List, plan, Ok(rows)).await
    }

    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        let plan = self
            .begin(LeaseOp::PutHeartbeat, &heartbeat.worker_id, "")
            .await?;
        let result = self.shared.inner.put_heartbeat(heartbeat, condition).await;
        self.shared.snapshot_of(Changed::Heartbeats);
        self.end(LeaseOp::PutHeartbeat, plan, result).await
    }

    async fn list_heartbeats(&self, consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        let variant = if consistent { "consistent" } else { "eventual" };
        let plan = self.begin(LeaseOp::ListHeartbeats, "", variant).await?;
        let rows = if consistent {
            self.shared.inner.heartbeats()
        } else {
            self.snapshot_before(plan.lag).0.heartbeats.as_ref().clone()
        };
        self.end(LeaseOp::ListHeartbeats, plan, Ok(rows)).await
    }

    async fn get_heartbeat(&self, worker_id: &str, consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        let variant = if consistent { "consistent" } else { "eventual" };
        let plan = self.begin(LeaseOp::GetHeartbeat, worker_id, variant).await?;
        let rows = if consistent {
            self.shared.inner.heartbeats()
        } else {
            self.snapshot_before(plan.lag).0.heartbeats.as_ref().clone()
        };
        let row = rows.into_iter().find(|r| r.worker_id == worker_id);
        self.end(LeaseOp::GetHeartbeat, plan, Ok(row)).await
    }

    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        let plan = self.begin(LeaseOp::NudgeHeartbeat, worker_id, "").await?;
        let result = self.shared.inner.nudge_heartbeat(worker_id).await;
        self.shared.snapshot_of(Changed::Heartbeats);
        self.end(LeaseOp::NudgeHeartbeat, plan, result).await
    }

    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        let plan = self.begin(LeaseOp::DeleteHeartbeat, worker_id, "").await?;
        let result = self.shared.inner.delete_heartbeat(worker_id, condition).await;
        if result.is_ok() {
            self.shared.snapshot_of(Changed::Heartbeats);
            self.shared.monitor.record(
                &self.name,
                EventKind::Scenario,
                "",
                // Incarnations are random per process: named by kind, so that a seed's log
                // replays exactly.
                format!(
                    "heartbeat row of {worker_id} deleted ({})",
                    match condition {
                        HeartbeatCondition::Counter(c) => format!("counter {c}"),
                        HeartbeatCondition::Any => "unconditionally".to_owned(),
                        _ => "by its own process".to_owned(),
                    }
                ),
            );
        }
        self.end(LeaseOp::DeleteHeartbeat, plan, result).await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>> {
        let plan = self.begin(LeaseOp::Get, key, "").await?;
        let result = self.shared.inner.get(key).await;
        self.end(LeaseOp::Get, plan, result).await
    }

    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        let plan = self.begin(LeaseOp::Create, &lease.lease_key, "").await?;
        let result = self.shared.inner.create_if_absent(lease).await;
        if matches!(result, Ok(true)) {
            self.shared.snapshot_of(Changed::Leases);
        }
        self.end(LeaseOp::Create, plan, result).await
    }

    async fn renew(&self, expected: &Lease) -> Result<Lease> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::Renew, key, "").await?;
        let result = self.write("renew", key, self.shared.inner.renew(expected)).await;
        self.end(LeaseOp::Renew, plan, result).await
    }

    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease> {
        self.take_with(expected, new_owner, handoff, false).await
    }

    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> Result<Lease> {
        self.take_with(expected, new_owner, handoff, true).await
    }

    async fn evict(&self, expected: &Lease) -> Result<Lease> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::Evict, key, "").await?;
        let result = self.write("evict", key, self.shared.inner.evict(expected)).await;
        self.end(LeaseOp::Evict, plan, result).await
    }

    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::Checkpoint, key, "").await?;
        let result = self
            .write(
                "checkpoint",
                key,
                self.shared.inner.update_checkpoint(expected, worker, checkpoint),
            )
            .await;
        self.end(LeaseOp::Checkpoint, plan, result).await
    }

    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease> {
        let key = &handoff.lease_key;
        let plan = self.begin(LeaseOp::CompleteHandoff, key, "").await?;
        let result = self
            .write(
                "complete_handoff",
                key,
                self.shared.inner.complete_handoff(handoff),
            )
            .await;
        self.end(LeaseOp::CompleteHandoff, plan, result).await
    }

    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::MarkChildren, key, "").await?;
        let result = self
            .write(
                "mark_children",
                key,
                self.shared.inner.mark_children(expected, children),
            )
            .await;
        self.end(LeaseOp::MarkChildren, plan, result).await
    }

    async fn delete(&self, expected: &Lease) -> Result<()> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::Delete, key, "").await?;
        let before = self.shared.inner.get(key).await.ok().flatten();
        let result = self.shared.inner.delete(expected).await;
        if result.is_ok() {
            self.shared.snapshot_of(Changed::Leases);
            self.shared
                .monitor
                .after_write(&self.name, "delete", before.as_ref(), None);
        }
        self.end(LeaseOp::Delete, plan, result).await
    }

    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        let key = &expected.lease_key;
        let plan = self.begin(LeaseOp::Checkpoint, key, "reset").await?;
        // An operator's rewind moves the checkpoint backwards on purpose: the monitor allows
        // it (op "reset"), records the owner's loss, and the position consumers resume from.
        let result = self
            .write(
                "reset",
                key,
                self.shared.inner.reset_checkpoint(expected, checkpoint),
            )
            .await;
        self.end(LeaseOp::Checkpoint, plan, result).await
    }
}
