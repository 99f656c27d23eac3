//! The fleet driver: one seed, one run. Starts real [`LeaseCoordinator`]s on a
//! [`SimLeaseStore`], a simulated shard consumer per acquired lease, injects the scenario's
//! faults and events, then checks liveness in a quiet phase. Runs in its own current-thread
//! runtime with paused time, so that it is deterministic, fast, and usable from a binary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use super::invariants::{canonical, Event, EventKind, Invariant, Monitor, Violation};
use super::rng::SimRng;
use super::store::{SimLeaseStore, WorkerFaults};
use super::{FaultClass, RunSummary, SimConfig};
use crate::clock::{Clock, ProcessClock};
use crate::coordinator::{CoordinatorConfig, HeldLease, LeaseCoordinator, LeaseStatus};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::held::{lock, Liveness};
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;
use crate::suspend::SuspendDetector;

/// The faulty phase starts this long after the beginning (the fleet has started).
const FAULTS_FROM: Duration = Duration::from_secs(2);
/// How often the driver looks at the clock, the violations and its queue.
const TICK: Duration = Duration::from_millis(50);
/// How long the driver waits for a graceful shutdown's consumers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often a consumer polls for its hand-off (the real consumer: at most 200 ms).
const HANDOFF_POLL: Duration = Duration::from_millis(100);
/// The highest per-call probability of a slow reply (see [`FaultClass::SlowReply`]): rare, as
/// each one stalls its caller for up to twice the failover time, yet often enough that some of
/// the cargo-test fleets have a take round whose consistent heartbeat read is answered past the
/// failover time (the review's F4: 4 of its 260 worker-renewal seeds with that fix undone).
const SLOW_REPLY_MAX: f64 = 0.05;

/// The largest chance of a batch being slow in the faulty phase ([`FaultClass::SlowBatch`]).
const SLOW_BATCH_MAX: f64 = 0.05;

thread_local! {
    /// Tests: the processes' suspend detectors see nothing (as on a host without
    /// `CLOCK_BOOTTIME`), to show what a suspend does without them. Read as a process starts,
    /// on the thread that runs the seed.
    pub(crate) static BLIND_SUSPEND_DETECTOR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
/// How often a child shard's consumer reads its parents' leases until they are finished (the
/// real shard consumer: `parent_poll_interval`).
const PARENT_POLL: Duration = Duration::from_millis(200);
/// A child shard whose last parent finished less than this long before the liveness check
/// need not have been processed yet.
const PARENT_SLACK: Duration = Duration::from_secs(1);
/// The worker id of the simulated `kcl-admin` (as `kcl_tools::admin::ANNOUNCER`).
const ADMIN: &str = "kcl-admin";

/// Runs one seed and returns its summary, or the first invariant it violated.
///
/// Builds its own current-thread runtime with paused time: call it from a plain thread (a
/// test, or a binary's `main`), not from inside a runtime. An invalid configuration is
/// clamped (see [`SimConfig::validate`]).
///
/// # Panics
/// If the runtime cannot be built, or if called from inside a Tokio runtime.
pub fn run_seed(seed: u64, config: &SimConfig) -> Result<RunSummary, Violation> {
    run_seed_logged(seed, config).0
}

/// [`run_seed`], and the whole event log of the run (to compare replays, or to print).
///
/// # Panics
/// As [`run_seed`].
pub fn run_seed_logged(seed: u64, config: &SimConfig) -> (Result<RunSummary, Violation>, Vec<Event>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime with time can be built");
    let mut config = config.clone();
    config.workers = config.workers.max(1);
    config.failover_time = config.failover_time.max(Duration::from_millis(300));
    runtime.block_on(async move {
        let mut fleet = Fleet::new(seed, config);
        let result = fleet.run().await;
        let events = fleet.monitor.events();
        fleet.abort_all();
        (result, events)
    })
}

/// What the seed decides for the whole run.
#[derive(Debug, Clone)]
struct Params {
    staleness: Duration,
    batch: (u64, u64),
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    /// The per-call faults of a faulty process.
    call_faults: WorkerFaults,
    /// The chance of a batch being slow ([`FaultClass::SlowBatch`]) in the faulty phase.
    slow_batch: f64,
    /// The share of processes with per-call faults.
    faulty_share: f64,
}

impl Params {
    fn draw(seed: u64, rng: &mut SimRng, config: &SimConfig) -> Self {
        // Everything is drawn whatever the classes enabled, so that a seed gives the same
        // fleet (start times, batches, checkpoints) with any set of classes.
        let p = |rng: &mut SimRng, class: FaultClass, max: f64| {
            let p = rng.unit() * max;
            if config.has(class) {
                p
            } else {
                0.0
            }
        };
        let staleness = Duration::from_millis(rng.range(0, 500));
        let staleness = if config.has(FaultClass::StaleRead) {
            staleness
        } else {
            Duration::ZERO
        };
        let min = rng.range(50, 200);
        let batch = (min, rng.range(min, 300));
        let call_faults = WorkerFaults {
            delay_before: p(rng, FaultClass::DelayBefore, 0.2),
            delay_after: p(rng, FaultClass::DelayAfter, 0.2),
            max_delay: Duration::from_millis(rng.range(100, 2000)),
            throttle: p(rng, FaultClass::Throttled, 0.15),
            reply_lost: p(rng, FaultClass::ReplyLost, 0.1),
            // A stream of its own: the fleet's other draws are those of the seed before this
            // class existed (the seeds named in docs/coordination.md still show what they did).
            slow_reply: p(
                &mut SimRng::for_call(seed, &[], &["slow-reply"]),
                FaultClass::SlowReply,
                SLOW_REPLY_MAX,
            ),
            slow_reply_delay: config.failover_time / 2,
            ..WorkerFaults::default()
        };
        // A stream of its own, as for slow replies.
        let slow_batch = p(
            &mut SimRng::for_call(seed, &[], &["slow-batch"]),
            FaultClass::SlowBatch,
            SLOW_BATCH_MAX,
        );
        Self {
            staleness,
            batch,
            slow_batch,
            checkpoint_every: rng.range(1, 20),
            checkpoint_interval: Duration::from_millis(rng.range(500, 10_000)),
            call_faults,
            faulty_share: 0.3 + 0.7 * rng.unit(),
        }
    }
}

/// The parts of a process its consumers share.
#[derive(Debug)]
struct ProcessCtx {
    name: String,
    worker_id: String,
    seed: u64,
    monitor: Arc<Monitor>,
    params: Arc<Params>,
    /// Consumers started so far, per lease key (names consumers independently of the order
    /// of simultaneous acquisitions).
    consumers_started: Mutex<BTreeMap<String, u64>>,
    resume_at: Mutex<Option<Instant>>,
    shutting_down: AtomicBool,
    dead: AtomicBool,
    active: AtomicUsize,
    consumers: Mutex<Vec<AbortHandle>>,
    /// Batches may be slow until then (the end of the faulty phase): [`FaultClass::SlowBatch`].
    slow_until: Instant,
    /// Whether the process has per-call faults: its batches are slow four times as often as
    /// the fleet's (its validity runs out now and then: a lease given up in the middle of a
    /// slow batch, its key taken again by the same worker, is the review's F6).
    faulty: AtomicBool,
    /// The failover time (a slow batch takes from half of it up to twice it).
    failover_time: Duration,
    /// Counts the slow batches.
    store: SimLeaseStore,
    /// The process's own clock (its rate, its suspends and pauses), which its coordinator and
    /// held leases measure time with.
    clock: Arc<ProcessClock>,
}

impl ProcessCtx {
    fn paused_until(&self) -> Option<Instant> {
        (*lock(&self.resume_at)).filter(|at| *at > Instant::now())
    }

    fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn record(&self, kind: EventKind, key: &str, detail: impl Into<String>) {
        if !self.dead() {
            self.monitor.record(&self.name, kind, key, detail);
        }
    }
}

/// Counts a consumer as active while it lives (aborted or not).
struct Active(Arc<ProcessCtx>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn position_of(checkpoint: &ExtendedSequenceNumber) -> u64 {
    checkpoint
        .sequence()
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or(0)
}

fn sequence(position: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::from_parts(&position.to_string(), 0)
        .unwrap_or(ExtendedSequenceNumber::TrimHorizon)
}

/// A shard task's hold on its key, for the one-task-per-key invariant: from its start until it
/// calls `release` (or is dropped: the process crashed).
struct Task<'a> {
    ctx: &'a ProcessCtx,
    key: String,
    id: String,
}

impl<'a> Task<'a> {
    fn start(ctx: &'a ProcessCtx, key: &str, id: &str) -> Self {
        ctx.monitor.task_start(&ctx.name, key, id);
        Self {
            ctx,
            key: key.to_owned(),
            id: id.to_owned(),
        }
    }

    fn end(&self) {
        self.ctx.monitor.task_end(&self.ctx.name, &self.key, &self.id);
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// A simulated shard consumer, as users write one on top of [`HeldLease`].
async fn consume(ctx: Arc<ProcessCtx>, coordinator: Arc<LeaseCoordinator>, held: Arc<HeldLease>) {
    ctx.active.fetch_add(1, Ordering::SeqCst);
    let _active = Active(ctx.clone());
    let key = held.key().to_owned();
    let n = {
        let mut started = lock(&ctx.consumers_started);
        let n = started.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let id = format!("{}/{key}/{n}", ctx.name);
    let task = Task::start(&ctx, &key, &id);
    ctx.monitor.consumer_created(&key, &id, &ctx.worker_id);
    let mut rng = SimRng::for_call(ctx.seed, &[n], &[&ctx.name, &key]);
    let mut slow = SimRng::for_call(ctx.seed, &[n], &[&ctx.name, &key, "slow-batch"]);
    // A stolen lease: the previous owner checkpoints first.
    let row = match held.wait_for_handoff(HANDOFF_POLL).await {
        Ok(row) => row,
        Err(e) => {
            ctx.record(
                EventKind::ConsumerEnd,
                &key,
                format!("lost while waiting for the hand-off: {e}"),
            );
            task.end();
            coordinator.release(&held).await;
            return;
        }
    };
    if row.is_finished() {
        // Finished while this worker waited for it (the previous owner's last checkpoint).
        ctx.record(
            EventKind::ConsumerEnd,
            &key,
            format!("consumer {id}: already finished"),
        );
        task.end();
        coordinator.release(&held).await;
        return;
    }
    let mut position = position_of(&row.checkpoint);
    ctx.record(
        EventKind::ConsumerStart,
        &key,
        format!("consumer {id} at {position}"),
    );
    if !ctx.dead() {
        ctx.monitor.consumer_started(&key, &id, position);
    }
    // A child shard waits for its parents' SHARD_END, as the real shard consumer does.
    let mut parents_done = row.parent_shard_ids.is_empty();
    let parents: Vec<String> = row.parent_shard_ids.iter().map(|p| row.sibling_key(p)).collect();
    let reads = ctx.store.for_worker(&ctx.name);
    let (every, interval) = (ctx.params.checkpoint_every, ctx.params.checkpoint_interval);
    let mut batches = 0u64;
    let mut last_checkpoint = Instant::now();
    loop {
        if ctx.dead() {
            return;
        }
        if let Some(until) = ctx.paused_until() {
            // In ticks: the quiet phase may resume a paused process early.
            tokio::time::sleep_until(until.min(Instant::now() + TICK)).await;
            continue;
        }
        let why = if ctx.shutting_down.load(Ordering::SeqCst) {
            if held.status() == LeaseStatus::Held && held.is_valid() {
                let _ = held.checkpoint(&sequence(position)).await;
            }
            "shutdown"
        } else {
            match held.status() {
                LeaseStatus::HandoffRequested => {
                    let done = held.checkpoint(&sequence(position)).await.is_ok();
                    if done {
                        "hand-off requested (checkpointed)"
                    } else {
                        "hand-off requested (checkpoint failed)"
                    }
                }
                LeaseStatus::Lost => "lost",
                LeaseStatus::Held if !held.is_valid() => {
                    held.mark_lost();
                    "not valid"
                }
                LeaseStatus::Held => "",
            }
        };
        if !why.is_empty() {
            ctx.record(
                EventKind::ConsumerEnd,
                &key,
                format!("consumer {id} at {position}: {why}"),
            );
            task.end();
            coordinator.release(&held).await;
            return;
        }
        if ctx.dead() {
            return;
        }
        if !parents_done {
            if parents_finished(reads.as_ref(), &parents).await {
                parents_done = true;
                ctx.record(
                    EventKind::Reshard,
                    &key,
                    format!("consumer {id}: parents finished"),
                );
                // The read took a while: the lease's status is looked at again first.
                continue;
            } else {
                tokio::time::sleep(PARENT_POLL).await;
                continue;
            }
        }
        if ctx.monitor.shard_end(&key).is_some_and(|end| position >= end) {
            // Processed to the end: SHARD_END, then let go (the lease is finished).
            if held.checkpoint(&ExtendedSequenceNumber::ShardEnd).await.is_ok() {
                ctx.record(
                    EventKind::ConsumerEnd,
                    &key,
                    format!("consumer {id} at {position}: shard end"),
                );
                task.end();
                coordinator.release(&held).await;
                // As kcl-core's scheduler: a shard ended, a take round now (its share changed).
                coordinator.wake();
                return;
            }
            // Lost, or a failed call: the status says which at the next round.
            tokio::time::sleep(HANDOFF_POLL).await;
            continue;
        }
        let batch = ctx
            .monitor
            .batch_start(&id, batches + 1, &ctx.name, &ctx.worker_id, &key);
        let (lo, hi) = ctx.params.batch;
        let mut took = Duration::from_millis(rng.range(lo, hi));
        // Drawn from a stream of its own: the other draws of a seed do not depend on it.
        let chance = if ctx.faulty.load(Ordering::SeqCst) {
            (ctx.params.slow_batch * 4.0).min(1.0)
        } else {
            ctx.params.slow_batch
        };
        if slow.chance(chance) {
            let now = Instant::now();
            let f = ctx.failover_time.as_millis() as u64;
            let slow_for = Duration::from_millis(slow.range(f / 2, f * 2));
            if now < ctx.slow_until {
                took = took.max(slow_for.min(ctx.slow_until - now));
                ctx.store.count(FaultClass::SlowBatch);
            }
        }
        tokio::time::sleep(took).await;
        while let Some(until) = ctx.paused_until() {
            // In ticks: the quiet phase may resume a paused process early.
            tokio::time::sleep_until(until.min(Instant::now() + TICK)).await;
        }
        if ctx.dead() {
            return;
        }
        ctx.monitor.batch_end(&key, batch);
        let from = position;
        position += rng.range(1, 100);
        if let Some(end) = ctx.monitor.shard_end(&key) {
            position = position.min(end.max(from));
        }
        ctx.monitor.delivered(&key, &id, from, position);
        batches += 1;
        if batches.is_multiple_of(every.max(1)) || last_checkpoint.elapsed() >= interval {
            let _ = held.checkpoint(&sequence(position)).await;
            last_checkpoint = Instant::now();
        }
    }
}

/// Whether every parent lease is finished (checkpointed `SHARD_END`) or gone, as the real shard
/// consumer reads them (a failed read: not yet).
async fn parents_finished(store: &dyn LeaseStore, parents: &[String]) -> bool {
    for parent in parents {
        match store.get(parent).await {
            Ok(None) => {}
            Ok(Some(lease)) if lease.is_finished() => {}
            Ok(Some(_)) | Err(_) => return false,
        }
    }
    true
}

/// `kcl-admin reset` of one lease, as `kcl_tools::admin` does it: reads the table (without
/// `--force`, twice, a failover time apart: a lease whose counter or owner's heartbeat moved
/// is held live, and left alone), rewrites the checkpoint to an earlier position or
/// `TRIM_HORIZON` conditionally on the row read (clearing the owner), and with `--force`
/// announces itself: a lapsed heartbeat row of `kcl-admin`, a nudge of every worker's row.
///
/// The watch is a failover time, not kcl-admin's default: a shorter one can take an owner
/// whose renewals failed for a while for a stopped one, which then still processes (its
/// validity runs for a failover time from its last renewal); that is the operator's call.
async fn admin_reset(store: SimLeaseStore, pick: u64, forced: bool, back: u64, failover: Duration) {
    let monitor = store.monitor().clone();
    let admin = store.for_worker(ADMIN);
    let (Ok(mut first), Ok(first_hb)) = (admin.list().await, admin.list_heartbeats(true).await) else {
        return;
    };
    first.retain(|l| !l.is_finished());
    first.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
    let Some(chosen) = first.get((pick % first.len().max(1) as u64) as usize) else {
        return;
    };
    let key = chosen.lease_key.clone();
    let (row, live) = if forced {
        (chosen.clone(), false)
    } else {
        tokio::time::sleep(failover).await;
        let (Ok(rows), Ok(hbs)) = (admin.list().await, admin.list_heartbeats(true).await) else {
            return;
        };
        let Some(row) = rows.into_iter().find(|l| l.lease_key == key) else {
            return;
        };
        let renewed = row.lease_counter > chosen.lease_counter;
        let beating = row.lease_owner.as_deref().is_some_and(|owner| {
            hbs.iter().any(|h| {
                h.worker_id == owner
                    && !first_hb
                        .iter()
                        .any(|b| b.worker_id == owner && b.counter == h.counter)
            })
        });
        let live = row.lease_owner.is_some() && (renewed || beating);
        (row, live)
    };
    let how = if forced { "reset --force" } else { "reset" };
    if live || row.is_finished() {
        monitor.record(
            ADMIN,
            EventKind::Scenario,
            &key,
            format!("kcl-admin {how} refused: held live by {:?}", row.lease_owner),
        );
        return;
    }
    let at = position_of(&row.checkpoint);
    let to = back % (at + 1);
    let checkpoint = if to == 0 {
        ExtendedSequenceNumber::TrimHorizon
    } else {
        sequence(to)
    };
    monitor.record(
        ADMIN,
        EventKind::Scenario,
        &key,
        format!("kcl-admin {how} to {}", checkpoint.checkpoint_str()),
    );
    if let Err(e) = admin.reset_checkpoint(&row, &checkpoint).await {
        monitor.record(
            ADMIN,
            EventKind::Scenario,
            &key,
            format!("kcl-admin {how} not applied: {e}"),
        );
        return;
    }
    store.count(FaultClass::AdminReset);
    let owners: Vec<String> = [row.lease_owner.clone(), row.checkpoint_owner.clone()]
        .into_iter()
        .flatten()
        .collect();
    if !forced || owners.is_empty() {
        return;
    }
    monitor.forced_reset(&key, &owners);
    let now = u64::try_from(monitor.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
    let announcement = WorkerHeartbeat {
        worker_id: ADMIN.to_owned(),
        counter: now,
        renewal: crate::heartbeat::LeaseRenewal::PerLease,
        leases: 0,
        epoch: now,
        incarnation: None,
        lapsed: true,
        nudges: 0,
        view: 0,
        watched: None,
    };
    let announced = admin.put_heartbeat(&announcement, HeartbeatCondition::Any).await;
    if let Ok(rows) = admin.list_heartbeats(true).await {
        for row in rows.iter().filter(|r| r.worker_id != ADMIN) {
            let _ = admin.nudge_heartbeat(&row.worker_id).await;
        }
    }
    monitor.record(
        ADMIN,
        EventKind::Scenario,
        &key,
        format!(
            "kcl-admin announced the reset: {}",
            if announced.is_ok() { "ok" } else { "failed" }
        ),
    );
}

/// Receives the leases a coordinator acquires and starts a consumer for each.
async fn acquire(
    ctx: Arc<ProcessCtx>,
    coordinator: Arc<LeaseCoordinator>,
    mut acquired: mpsc::Receiver<Arc<HeldLease>>,
) {
    let mut consumers = JoinSet::new();
    while let Some(held) = acquired.recv().await {
        while consumers.try_join_next().is_some() {}
        if ctx.dead() {
            return;
        }
        let handle = consumers.spawn(consume(ctx.clone(), coordinator.clone(), held));
        let mut handles = lock(&ctx.consumers);
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }
    while consumers.join_next().await.is_some() {}
}

/// One simulated process: a coordinator and its consumers.
struct Process {
    ctx: Arc<ProcessCtx>,
    coordinator: Arc<LeaseCoordinator>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    running: bool,
    /// Removed from the fleet at the quiet phase (a duplicate).
    duplicate: bool,
    faults: WorkerFaults,
}

impl Process {
    /// Dead at once: its consumers and its coordinator's tasks are aborted.
    fn stop(&mut self) {
        self.ctx.dead.store(true, Ordering::SeqCst);
        for handle in lock(&self.ctx.consumers).drain(..) {
            handle.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
        self.running = false;
    }
}

/// A scenario action, due at a simulated time.
#[derive(Clone, Debug)]
enum Action {
    Crash {
        pick: u64,
        restart: Option<(Duration, bool)>,
    },
    Start {
        worker_id: String,
        name: String,
        heartbeats_unusable: bool,
    },
    Pause {
        pick: u64,
        length: Duration,
    },
    Resume {
        name: String,
    },
    Suspend {
        pick: u64,
        length: Duration,
    },
    Duplicate {
        pick: u64,
    },
    Shutdown {
        pick: u64,
    },
    ReadOutage {
        pick: u64,
        length: Duration,
        tables: Tables,
    },
    HeartbeatsUnusable {
        pick: u64,
        length: Duration,
    },
    HeartbeatJoiner,
    Restore {
        name: String,
        what: Restore,
    },
    /// `kcl-admin reset` of one lease ([`FaultClass::AdminReset`]).
    AdminReset {
        pick: u64,
        forced: bool,
        /// Draws the position reset to (at most the checkpoint read).
        back: u64,
    },
    /// A split or a merge ([`FaultClass::Reshard`]).
    Reshard {
        pick: u64,
        merge: bool,
        /// Records after those delivered so far up to the end.
        extra: u64,
    },
}

/// Which tables a read outage hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tables {
    Heartbeats,
    Leases,
    Both,
}

/// What a restore action ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restore {
    Reads,
    Heartbeats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faulty,
    Draining,
    /// Since when, and until when every shard must have been processed again.
    Quiet(Instant, Instant),
    /// Since when, and until when the fleet must have settled (even spread, few moves).
    Settling(Instant, Instant),
}

/// A lease may move this many times in the quiet phase (a fail-over, then balancing).
const QUIET_MOVES: usize = 3;

struct Fleet {
    seed: u64,
    config: SimConfig,
    params: Arc<Params>,
    rng: SimRng,
    store: SimLeaseStore,
    monitor: Arc<Monitor>,
    processes: Vec<Process>,
    next_worker: usize,
    queue: BTreeMap<(Duration, u64), Action>,
    queued: u64,
    origin: Instant,
    /// The number of the next child shard (`shard-NNN`).
    next_shard: usize,
}

impl Fleet {
    fn new(seed: u64, config: SimConfig) -> Self {
        let mut rng = SimRng::new(seed);
        let params = Params::draw(seed, &mut rng, &config);
        let monitor = Arc::new(Monitor::new(seed, config.describe()));
        let store = SimLeaseStore::new(seed, params.staleness, monitor.clone());
        store.set_trace(config.trace_calls);
        for i in 0..config.shards {
            store.create(Lease::new(
                format!("shard-{i:03}"),
                ExtendedSequenceNumber::TrimHorizon,
            ));
        }
        Self {
            seed,
            params: Arc::new(params),
            rng,
            store,
            monitor,
            processes: Vec::new(),
            next_worker: config.workers + 1,
            queue: BTreeMap::new(),
            queued: 0,
            origin: Instant::now(),
            next_shard: config.shards,
            config,
        }
    }

    fn now(&self) -> Duration {
        Instant::now().duration_since(self.origin)
    }

    fn schedule(&mut self, at: Duration, action: Action) {
        self.queued += 1;
        self.queue.insert((at, self.queued), action);
    }

    fn new_worker_id(&mut self) -> String {
        let id = format!("w{}", self.next_worker);
        self.next_worker += 1;
        id
    }

    /// The scenario: per-call faults for some processes, and timed events.
    fn plan_scenario(&mut self) {
        let faulty_end = FAULTS_FROM + self.config.faulty_phase;
        let span = self.config.faulty_phase.as_millis() as u64;
        let kinds: Vec<FaultClass> = [
            FaultClass::Crash,
            FaultClass::Pause,
            FaultClass::DuplicateId,
            FaultClass::Shutdown,
            FaultClass::ReadOutage,
            FaultClass::HeartbeatUnusable,
        ]
        .into_iter()
        .filter(|c| self.config.has(*c))
        .collect();
        // A stream of its own: the fleet's draws stay the same whatever the scenario.
        let mut rng = SimRng::for_call(self.seed, &[], &["scenario"]);
        if kinds.is_empty() || span == 0 {
            return;
        }
        let events = rng.range(1, 5);
        let failover = self.config.failover_time;
        for _ in 0..events {
            let at = FAULTS_FROM + Duration::from_millis(rng.below(span));
            let pick = rng.next_u64();
            let Some(kind) = rng.pick(&kinds).copied() else {
                continue;
            };
            let action = match kind {
                FaultClass::Crash => {
                    let restart = match rng.below(3) {
                        0 => None,
                        n => Some((Duration::from_millis(rng.range(200, 5000)), n == 1)),
                    };
                    Action::Crash { pick, restart }
                }
                FaultClass::Pause => Action::Pause {
                    pick,
                    length: failover + Duration::from_millis(rng.range(200, 3000)),
                },
                FaultClass::DuplicateId => Action::Duplicate { pick },
                FaultClass::Shutdown => Action::Shutdown { pick },
                FaultClass::ReadOutage => Action::ReadOutage {
                    pick,
                    length: Duration::from_millis(rng.range(1000, 20_000)),
                    tables: match rng.below(3) {
                        0 => Tables::Heartbeats,
                        1 => Tables::Leases,
                        _ => Tables::Both,
                    },
                },
                _ => {
                    if rng.chance(0.5) {
                        Action::HeartbeatJoiner
                    } else {
                        Action::HeartbeatsUnusable {
                            pick,
                            length: Duration::from_millis(rng.range(1000, 20_000)),
                        }
                    }
                }
            };
            let at = at.min(faulty_end);
            self.schedule(at, action);
        }
    }

    /// Suspends of a process's host ([`FaultClass::Suspend`]): none to two, from a stream of
    /// their own (the fleet's and the scenario's draws stay as they were).
    fn plan_suspends(&mut self) {
        let span = self.config.faulty_phase.as_millis() as u64;
        if !self.config.has(FaultClass::Suspend) || span == 0 {
            return;
        }
        let mut rng = SimRng::for_call(self.seed, &[], &["suspend"]);
        let failover = self.config.failover_time.as_millis() as u64;
        for _ in 0..rng.below(3) {
            let at = FAULTS_FROM + Duration::from_millis(rng.below(span));
            let pick = rng.next_u64();
            let length = Duration::from_millis(rng.range(100, failover * 2));
            self.schedule(at, Action::Suspend { pick, length });
        }
    }

    /// The operator's resets and the stream's reshards ([`FaultClass::AdminReset`],
    /// [`FaultClass::Reshard`]), each from a stream of its own: the other scenario events of a
    /// seed stay what they were. Done two failover times before the quiet phase (a non-forced
    /// reset watches for a failover time first).
    fn plan_operator_events(&mut self) {
        let failover = self.config.failover_time;
        let span = self.config.faulty_phase.saturating_sub(failover * 2).as_millis() as u64;
        if span == 0 {
            return;
        }
        if self.config.has(FaultClass::AdminReset) {
            let mut rng = SimRng::for_call(self.seed, &[], &["admin-reset"]);
            for _ in 0..rng.range(1, 3) {
                let at = FAULTS_FROM + Duration::from_millis(rng.below(span));
                let action = Action::AdminReset {
                    pick: rng.next_u64(),
                    forced: rng.chance(0.5),
                    back: rng.next_u64(),
                };
                self.schedule(at, action);
            }
        }
        if self.config.has(FaultClass::Reshard) {
            let mut rng = SimRng::for_call(self.seed, &[], &["reshard"]);
            for _ in 0..rng.range(0, 3) {
                let at = FAULTS_FROM + Duration::from_millis(rng.below(span));
                let action = Action::Reshard {
                    pick: rng.next_u64(),
                    merge: rng.chance(0.4),
                    extra: rng.range(0, 1500),
                };
                self.schedule(at, action);
            }
        }
    }

    /// A split (one shard ends, two children) or a merge (two shards end, one child): the
    /// shards' ends are set past the records delivered so far, and the child leases created
    /// with their parents, as the shard sync does.
    fn reshard(&mut self, pick: u64, merge: bool, extra: u64) {
        let mut open: Vec<Lease> = self
            .store
            .leases()
            .into_iter()
            .filter(|l| !l.is_finished() && self.monitor.shard_end(&l.lease_key).is_none())
            .collect();
        open.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
        let (parents, children) = if merge { (2, 1) } else { (1, 2) };
        if open.len() < parents {
            return;
        }
        let first = (pick % open.len() as u64) as usize;
        let mut keys = Vec::new();
        let mut ends = Vec::new();
        for k in 0..parents {
            let parent = &open[(first + k) % open.len()];
            let end = self
                .monitor
                .delivered_to(&parent.lease_key)
                .max(position_of(&parent.checkpoint))
                + extra;
            self.monitor.shard_ended(&parent.lease_key, end);
            keys.push(parent.lease_key.clone());
            ends.push(format!("{} ends at {end}", parent.lease_key));
        }
        let mut created = Vec::new();
        for _ in 0..children {
            let child = format!("shard-{:03}", self.next_shard);
            self.next_shard += 1;
            self.monitor.child_created(&child, &keys);
            self.store.create(
                Lease::new(child.clone(), ExtendedSequenceNumber::TrimHorizon)
                    .with_parents(keys.iter().cloned()),
            );
            created.push(child);
        }
        // The shard sync of one running process created them: it announces the change (the
        // others read the table) and looks at the table at once, as kcl-core's does. kcl-core
        // syncs on the leader only ([`LeaseCoordinator::is_leader`]): never on a second process
        // under a live worker's id, whose announcements nobody sees (seed 11454, worker
        // renewal, 8 x 32, left a merge's child to the safety scans).
        let leaders: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|i| self.processes[*i].coordinator.is_leader())
            .collect();
        let creator = match leaders.len() {
            0 => self.pick(pick, 1),
            n => Some(leaders[(pick % n as u64) as usize]),
        };
        if let Some(i) = creator {
            let coordinator = &self.processes[i].coordinator;
            coordinator.announce();
            coordinator.wake();
        }
        self.store.count(FaultClass::Reshard);
        self.monitor.record(
            "fleet",
            EventKind::Reshard,
            "",
            format!(
                "{}: {}; child leases {} created",
                if merge { "merge" } else { "split" },
                ends.join(", "),
                created.join(", ")
            ),
        );
    }

    /// Starts a process.
    fn start(&mut self, worker_id: &str, name: &str, duplicate: bool, mut faults: WorkerFaults) {
        let handle = self.store.for_worker(name);
        let now = self.now();
        let mut faulty = false;
        if now >= FAULTS_FROM
            && now < FAULTS_FROM + self.config.faulty_phase
            && self.rng.chance(self.params.faulty_share)
        {
            faulty = true;
            let hb = faults.heartbeats_unusable;
            faults = WorkerFaults {
                heartbeats_unusable: hb,
                ..self.params.call_faults.clone()
            };
        }
        self.store.set_faults(name, faults.clone());
        let mut config = CoordinatorConfig::new(worker_id, self.config.failover_time);
        config.leases.renewal = self.config.renewal;
        // The process's own clock: a rate drawn by the seed for this process (a stream keyed
        // by its name), suspended by `Action::Suspend`. The suspend detector reads this clock's
        // boot-minus-monotonic gap, never the host's (a thread preempted between the real
        // detector's two reads looks suspended: seed 1001 at 8 workers, 32 shards, worker
        // renewal, violated once in a sweep on a loaded host and never in replays).
        let drift = f64::from(self.config.clock_drift_ppm) / 1e6;
        let unit = SimRng::for_call(self.seed, &[], &["clock", name]).unit();
        let clock = Arc::new(ProcessClock::new(1.0 + drift * (2.0 * unit - 1.0)));
        let gap = {
            let clock = clock.clone();
            let blind = BLIND_SUSPEND_DETECTOR.with(std::cell::Cell::get);
            Arc::new(move || (!blind).then(|| clock.suspended_gap()))
        };
        let liveness =
            Liveness::with_suspend_detector(config.leases.renewal, SuspendDetector::with_shared_source(gap))
                .with_clock(Clock::process(clock.clone()));
        let (coordinator, acquired) = LeaseCoordinator::with_liveness(handle, config, liveness);
        let ctx = Arc::new(ProcessCtx {
            name: name.to_owned(),
            worker_id: worker_id.to_owned(),
            seed: self.seed,
            monitor: self.monitor.clone(),
            params: self.params.clone(),
            consumers_started: Mutex::new(BTreeMap::new()),
            resume_at: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            consumers: Mutex::new(Vec::new()),
            slow_until: self.origin + FAULTS_FROM + self.config.faulty_phase,
            faulty: AtomicBool::new(faulty),
            failover_time: self.config.failover_time,
            store: self.store.clone(),
            clock: clock.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let run = tokio::spawn(coordinator.clone().run(stop_rx));
        let acquirer = tokio::spawn(acquire(ctx.clone(), coordinator.clone(), acquired));
        self.monitor.record(
            name,
            EventKind::Scenario,
            "",
            format!(
                "start worker {worker_id}{}{}{}",
                if duplicate { " (duplicate id)" } else { "" },
                if drift > 0.0 {
                    format!(" (clock rate {:.4})", clock.rate())
                } else {
                    String::new()
                },
                if faults.heartbeats_unusable {
                    " (heartbeat table unusable)"
                } else {
                    ""
                }
            ),
        );
        self.processes.push(Process {
            ctx,
            coordinator,
            stop,
            tasks: vec![run, acquirer],
            running: true,
            duplicate,
            faults,
        });
    }

    fn running(&self) -> Vec<usize> {
        (0..self.processes.len())
            .filter(|i| self.processes[*i].running)
            .collect()
    }

    /// A running process chosen by `pick`, if at least `min` run.
    fn pick(&self, pick: u64, min: usize) -> Option<usize> {
        let running = self.running();
        if running.len() < min {
            return None;
        }
        running.get((pick % running.len() as u64) as usize).copied()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.processes
            .iter()
            .position(|p| p.running && p.ctx.name == name)
    }

    fn update_faults(&mut self, index: usize, f: impl FnOnce(&mut WorkerFaults)) {
        let process = &mut self.processes[index];
        f(&mut process.faults);
        self.store.set_faults(&process.ctx.name, process.faults.clone());
    }

    /// Kills a process at once: its batches in flight end now, its tasks are aborted.
    fn crash(&mut self, index: usize, why: &str) {
        let process = &mut self.processes[index];
        if !process.running {
            return;
        }
        self.monitor
            .record(&process.ctx.name, EventKind::Scenario, "", why.to_owned());
        self.monitor.end_batches_of(&process.ctx.name);
        process.stop();
    }

    /// A graceful shutdown: stop taking, let the consumers checkpoint and release, release
    /// what is left, leave, stop.
    async fn shutdown(&mut self, index: usize) {
        let (ctx, coordinator) = {
            let p = &self.processes[index];
            (p.ctx.clone(), p.coordinator.clone())
        };
        self.monitor
            .record(&ctx.name, EventKind::Scenario, "", "graceful shutdown begins");
        coordinator.stop_taking();
        ctx.shutting_down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while ctx.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
        }
        for lease in coordinator.held() {
            coordinator.release(&lease).await;
        }
        coordinator.leave().await;
        self.processes[index].stop.send_replace(true);
        self.crash(index, "graceful shutdown done (left)");
    }

    async fn execute(&mut self, action: Action) {
        let now = self.now();
        match action {
            Action::Crash { pick, restart } => {
                let Some(i) = self.pick(pick, 2) else { return };
                let (worker_id, name) = {
                    let p = &self.processes[i];
                    (p.ctx.worker_id.clone(), p.ctx.name.clone())
                };
                self.crash(i, "crash");
                self.store.count(FaultClass::Crash);
                if let Some((after, same_id)) = restart {
                    let (worker_id, name) = if same_id {
                        let incarnation = self
                            .processes
                            .iter()
                            .filter(|p| p.ctx.worker_id == worker_id)
                            .count();
                        let base = name.split('.').next().unwrap_or(&name).to_owned();
                        (worker_id, format!("{base}.{}", incarnation + 1))
                    } else {
                        let id = self.new_worker_id();
                        (id.clone(), id)
                    };
                    self.schedule(
                        now + after,
                        Action::Start {
                            worker_id,
                            name,
                            heartbeats_unusable: false,
                        },
                    );
                }
            }
            Action::Start {
                worker_id,
                name,
                heartbeats_unusable,
            } => {
                let faults = WorkerFaults {
                    heartbeats_unusable,
                    ..WorkerFaults::default()
                };
                self.start(&worker_id, &name, false, faults);
            }
            Action::Pause { pick, length } => {
                let Some(i) = self.pick(pick, 1) else { return };
                let name = self.processes[i].ctx.name.clone();
                self.store.count(FaultClass::Pause);
                self.monitor
                    .record(&name, EventKind::Scenario, "", format!("pause for {length:?}"));
                *lock(&self.processes[i].ctx.resume_at) = Some(Instant::now() + length);
                self.update_faults(i, |f| f.suspended = Some(length));
                self.processes[i].ctx.clock.pause(length);
                self.schedule(now + length, Action::Resume { name });
            }
            Action::Suspend { pick, length } => {
                let Some(i) = self.pick(pick, 1) else { return };
                if self.processes[i].ctx.paused_until().is_some() {
                    return; // paused or suspended already
                }
                let name = self.processes[i].ctx.name.clone();
                self.store.count(FaultClass::Suspend);
                self.monitor.record(
                    &name,
                    EventKind::Scenario,
                    "",
                    format!("host suspended for {length:?} (the monotonic clock stops)"),
                );
                *lock(&self.processes[i].ctx.resume_at) = Some(Instant::now() + length);
                self.update_faults(i, |f| f.suspended = Some(length));
                self.processes[i].ctx.clock.suspend(length);
                self.schedule(now + length, Action::Resume { name });
            }
            Action::Resume { name } => {
                if let Some(i) = self.index_of(&name) {
                    if self.processes[i].ctx.paused_until().is_some() {
                        return; // a later pause is still on
                    }
                    self.monitor.record(&name, EventKind::Scenario, "", "resume");
                    self.update_faults(i, |f| f.suspended = None);
                    self.processes[i].ctx.clock.resume();
                }
            }
            Action::Duplicate { pick } => {
                // Unique worker ids are enforced through the heartbeat row's incarnation: a
                // process that cannot use the heartbeat table cannot be told apart from a second
                // process with its id (docs/coordination.md states this assumption), so it is
                // never the one duplicated.
                let candidates: Vec<usize> = self
                    .running()
                    .into_iter()
                    .filter(|i| !self.processes[*i].faults.heartbeats_unusable)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let i = candidates[(pick % candidates.len() as u64) as usize];
                let worker_id = self.processes[i].ctx.worker_id.clone();
                let name = format!("{worker_id}+dup{}", self.queued);
                self.store.count(FaultClass::DuplicateId);
                self.start(&worker_id, &name, true, WorkerFaults::default());
            }
            Action::Shutdown { pick } => {
                let Some(i) = self.pick(pick, 2) else { return };
                self.store.count(FaultClass::Shutdown);
                self.shutdown(i).await;
            }
            Action::ReadOutage { pick, length, tables } => {
                let Some(i) = self.pick(pick, 1) else { return };
                let name = self.processes[i].ctx.name.clone();
                self.monitor.record(
                    &name,
                    EventKind::Scenario,
                    "",
                    format!("reads of {tables:?} fail for {length:?} (writes work)"),
                );
                self.update_faults(i, |f| {
                    f.heartbeat_reads_fail |= tables != Tables::Leases;
                    f.lease_reads_fail |= tables != Tables::Heartbeats;
                });
                self.schedule(
                    now + length,
                    Action::Restore {
                        name,
                        what: Restore::Reads,
                    },
                );
            }
            Action::HeartbeatsUnusable { pick, length } => {
                // Never a process whose worker id another running process shares: one that has
                // not beaten yet would coordinate without heartbeats, and then nothing tells it
                // apart from the other process (the assumption `Action::Duplicate` keeps too;
                // found with seed 6198 at 8 workers, 32 shards, worker renewal: a duplicate,
                // heartbeat-less from its start, completed the hand-off of a lease the other
                // process still processed, as an orphaned one of its own).
                let running = self.running();
                let candidates: Vec<usize> = running
                    .iter()
                    .copied()
                    .filter(|i| {
                        let id = &self.processes[*i].ctx.worker_id;
                        running
                            .iter()
                            .filter(|j| &self.processes[**j].ctx.worker_id == id)
                            .count()
                            == 1
                    })
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let i = candidates[(pick % candidates.len() as u64) as usize];
                let name = self.processes[i].ctx.name.clone();
                self.monitor.record(
                    &name,
                    EventKind::Scenario,
                    "",
                    format!("heartbeat table unusable for {length:?}"),
                );
                self.update_faults(i, |f| f.heartbeats_unusable = true);
                self.schedule(
                    now + length,
                    Action::Restore {
                        name,
                        what: Restore::Heartbeats,
                    },
                );
            }
            Action::HeartbeatJoiner if self.config.renewal == crate::heartbeat::LeaseRenewal::Worker => {
                // The scheduler stops a worker-renewal worker without a usable heartbeat table
                // with a fatal error (and its coordinator takes nothing): it never joins.
                self.monitor.record(
                    "fleet",
                    EventKind::Scenario,
                    "",
                    "a worker without a usable heartbeat table stops at once (worker renewal needs it)",
                );
            }
            Action::HeartbeatJoiner => {
                let id = self.new_worker_id();
                let faults = WorkerFaults {
                    heartbeats_unusable: true,
                    ..WorkerFaults::default()
                };
                self.start(&id, &id, false, faults);
            }
            Action::AdminReset { pick, forced, back } => {
                // A process of its own: a reset without --force watches for a while first.
                let failover = self.config.failover_time;
                tokio::spawn(admin_reset(self.store.clone(), pick, forced, back, failover));
            }
            Action::Reshard { pick, merge, extra } => self.reshard(pick, merge, extra),
            Action::Restore { name, what } => {
                if let Some(i) = self.index_of(&name) {
                    self.monitor
                        .record(&name, EventKind::Scenario, "", format!("{what:?} restored"));
                    self.update_faults(i, |f| match what {
                        Restore::Reads => {
                            f.lease_reads_fail = false;
                            f.heartbeat_reads_fail = false;
                        }
                        Restore::Heartbeats => f.heartbeats_unusable = false,
                    });
                }
            }
        }
    }

    /// The faults stop: clear them, resume paused processes, stop duplicates, start the
    /// restarts still pending.
    async fn enter_quiet(&mut self) {
        self.monitor
            .record("fleet", EventKind::Scenario, "", "faults stop (quiet phase)");
        self.store.clear_faults();
        for i in 0..self.processes.len() {
            self.processes[i].faults = WorkerFaults::default();
            *lock(&self.processes[i].ctx.resume_at) = None;
            self.processes[i].ctx.clock.resume();
            if self.processes[i].running && self.processes[i].duplicate {
                self.crash(i, "duplicate stopped for the quiet phase");
            }
        }
        let pending = std::mem::take(&mut self.queue);
        for action in pending.into_values() {
            if let Action::Start { worker_id, name, .. } = action {
                self.start(&worker_id, &name, false, WorkerFaults::default());
            }
        }
    }

    /// The worker ids of the running processes.
    fn running_ids(&self) -> BTreeSet<&str> {
        self.processes
            .iter()
            .filter(|p| p.running)
            .map(|p| p.ctx.worker_id.as_str())
            .collect()
    }

    /// Once settled: the spread even, and no lease moved more than [`QUIET_MOVES`] times
    /// since `since`.
    fn check_settled(&self, since: Duration) {
        let mut counts: BTreeMap<&str, usize> = self.running_ids().into_iter().map(|w| (w, 0)).collect();
        for lease in self.store.leases() {
            if lease.is_finished() {
                continue; // not counted by the balance either
            }
            if let Some(c) = lease.lease_owner.as_deref().and_then(|o| counts.get_mut(o)) {
                *c += 1;
            }
        }
        let mut problems = Vec::new();
        let max = counts.values().copied().max().unwrap_or(0);
        let min = counts.values().copied().min().unwrap_or(0);
        if max > min + 1 {
            problems.push(format!("uneven spread: {counts:?}"));
        }
        let mut moves: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.monitor.events() {
            if e.at >= since && matches!(e.kind, EventKind::Take | EventKind::Steal) {
                *moves.entry(e.key.clone()).or_default() += 1;
            }
        }
        for (key, n) in moves {
            if n > QUIET_MOVES {
                problems.push(format!("{key} moved {n} times after the faults stopped"));
            }
        }
        if !problems.is_empty() {
            self.monitor.fail(Invariant::Liveness, problems.join("; "));
        }
    }

    /// Every shard held by a running process and processed since `since`.
    fn check_liveness(&self, since: Duration) {
        let running = self.running_ids();
        let names: BTreeSet<&str> = self
            .processes
            .iter()
            .filter(|p| p.running)
            .map(|p| p.ctx.name.as_str())
            .collect();
        let leases = self.store.leases();
        let mut problems = Vec::new();
        let now = self.now();
        for lease in &leases {
            if lease.is_finished() {
                continue; // processed to its end: never taken again
            }
            let owner = lease.lease_owner.as_deref();
            if !owner.is_some_and(|o| running.contains(o)) {
                problems.push(format!(
                    "{} is held by {owner:?}, not a running worker",
                    lease.lease_key
                ));
            }
            let processed = self
                .monitor
                .last_batch_starts(&lease.lease_key)
                .iter()
                .any(|(process, at)| names.contains(process.as_str()) && *at >= since);
            // A child waits for its parents: excused while one is not finished (it is checked
            // itself), or finished only just now.
            let waiting = self
                .monitor
                .parents_of(&lease.lease_key)
                .iter()
                .any(|p| self.monitor.finished_at(p).is_none_or(|t| t + PARENT_SLACK > now));
            if !processed && !waiting {
                problems.push(format!(
                    "{} not processed since {:.3}s (owner {:?}, checkpointOwner {:?})",
                    lease.lease_key,
                    since.as_secs_f64(),
                    lease.lease_owner,
                    lease.checkpoint_owner
                ));
            }
        }
        if !problems.is_empty() {
            self.monitor.fail(Invariant::Liveness, problems.join("; "));
        }
        let unresumed: Vec<String> = self
            .monitor
            .pending_resets()
            .into_iter()
            .map(|(key, at, position)| {
                format!(
                    "{key} reset to {position} at {:.3}s: no consumer resumed from it",
                    at.as_secs_f64()
                )
            })
            .collect();
        if !unresumed.is_empty() {
            self.monitor.fail(Invariant::Delivery, unresumed.join("; "));
        }
        let unaware = self.monitor.forced_consumers_since(since);
        if !unaware.is_empty() {
            self.monitor.fail(
                Invariant::Liveness,
                format!("consumers of an owner of a forced reset still processing after the faults stopped (it never learnt of the reset): {unaware:?}"),
            );
        }
    }

    async fn run(&mut self) -> Result<RunSummary, Violation> {
        // The workers start within the first second.
        for i in 1..=self.config.workers {
            let at = Duration::from_millis(self.rng.below(1000));
            let id = format!("w{i}");
            self.schedule(
                at,
                Action::Start {
                    worker_id: id.clone(),
                    name: id,
                    heartbeats_unusable: false,
                },
            );
        }
        self.plan_scenario();
        self.plan_suspends();
        self.plan_operator_events();
        let quiet_from = FAULTS_FROM + self.config.faulty_phase;
        let mut phase = Phase::Faulty;
        let mut faults_on = false;
        loop {
            if let Some(v) = self.monitor.violation() {
                return Err(v);
            }
            let now = self.now();
            if !faults_on && phase == Phase::Faulty && now >= FAULTS_FROM {
                faults_on = true;
                let share = self.params.faulty_share;
                for i in self.running() {
                    if self.rng.chance(share) {
                        self.processes[i].ctx.faulty.store(true, Ordering::SeqCst);
                        let template = self.params.call_faults.clone();
                        self.update_faults(i, |f| {
                            *f = WorkerFaults {
                                heartbeats_unusable: f.heartbeats_unusable,
                                ..template
                            }
                        });
                    }
                }
            }
            // What the scheduler does (kcl-core's fatal guard): a worker-renewal worker whose
            // heartbeat table is missing or denied stops with a fatal error. Found by the
            // simulator (seed 56914 at 8 workers, 32 shards): modelled as a coordinator that
            // went on taking nothing, a live worker id left with no lease. Its supervisor
            // (systemd's `Restart=on-failure`, a container's restart policy) starts it again
            // under the same id two seconds later, with the table usable (the operator
            // mended the policy): otherwise a fleet whose every process met the fault ended
            // with no worker at all.
            if self.config.renewal == crate::heartbeat::LeaseRenewal::Worker {
                for i in self.running() {
                    if self.store.heartbeats_refused(&self.processes[i].ctx.name) {
                        self.crash(
                            i,
                            "fatal: worker renewal needs the worker heartbeat table (the scheduler stops)",
                        );
                        let worker_id = self.processes[i].ctx.worker_id.clone();
                        let incarnation = self
                            .processes
                            .iter()
                            .filter(|p| p.ctx.worker_id == worker_id)
                            .count();
                        let name = self.processes[i].ctx.name.clone();
                        let base = name.split('.').next().unwrap_or(&name).to_owned();
                        self.schedule(
                            now + Duration::from_secs(2),
                            Action::Start {
                                worker_id,
                                name: format!("{base}.{}", incarnation + 1),
                                heartbeats_unusable: false,
                            },
                        );
                    }
                }
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let action = entry.remove();
                self.execute(action).await;
            }
            match phase {
                Phase::Faulty if now >= quiet_from => {
                    self.enter_quiet().await;
                    phase = Phase::Draining;
                }
                Phase::Draining if self.store.delays_until().is_none() => {
                    let deadline = Instant::now() + self.config.failover_time + Duration::from_secs(2);
                    phase = Phase::Quiet(Instant::now(), deadline);
                }
                Phase::Quiet(from, deadline) if Instant::now() >= deadline => {
                    self.check_liveness(from.duration_since(self.origin));
                    // A process restarted under its old id waits the failover time before it
                    // takes over the id; then balancing steals, a few per round.
                    let settle = from + self.config.failover_time * 3 + Duration::from_secs(4);
                    phase = Phase::Settling(from, settle);
                }
                Phase::Settling(from, deadline) if Instant::now() >= deadline => {
                    self.check_settled(from.duration_since(self.origin));
                    break;
                }
                _ => {}
            }
            tokio::time::sleep(TICK).await;
        }
        // Batches still in flight end with the run (and are checked).
        for i in 0..self.processes.len() {
            if self.processes[i].running {
                self.monitor.end_batches_of(&self.processes[i].ctx.name.clone());
            }
        }
        if let Some(v) = self.monitor.violation() {
            return Err(v);
        }
        Ok(self.summary())
    }

    fn summary(&self) -> RunSummary {
        let events = canonical(&self.monitor.events());
        let count = |k: EventKind| events.iter().filter(|e| e.kind == k).count() as u64;
        let mut digest = SimRng::for_call(self.seed, &[events.len() as u64], &[]).next_u64();
        for e in &events {
            digest = SimRng::for_call(digest, &[], &[&e.to_string()]).next_u64();
        }
        let mut faults = self.store.injected();
        let stale_reads = self.store.stale_reads();
        if stale_reads > 0 {
            faults.insert(FaultClass::StaleRead, stale_reads);
        }
        RunSummary {
            seed: self.seed,
            processes: self.processes.len(),
            batches: self.monitor.batches(),
            takes: count(EventKind::Take) + count(EventKind::Steal),
            steals: count(EventKind::Steal),
            checkpoints: count(EventKind::Checkpoint),
            faults,
            stale_reads,
            events: events.len(),
            digest,
            simulated: self.now(),
        }
    }

    fn abort_all(&mut self) {
        for p in &mut self.processes {
            p.stop();
        }
    }
}
