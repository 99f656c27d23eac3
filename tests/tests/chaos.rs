//! A seeded chaos test: three workers on a 4-shard local stream while records flow, with faults
//! injected into the stream backend and the lease store, workers killed abruptly and shut down
//! gracefully (and restarted under their old id or a new one), a split, a merge and slow
//! processors; polling and enhanced fan-out workers side by side, with subscriptions throttled,
//! replaced and ended early. Nothing may be lost, every key's records must be first processed in order, and
//! every duplicate must be explained by an abrupt kill or a lease loss.
//!
//! The same chaos runs again on the fleet simulator's lease table ([`kcl_lease::sim`]: DynamoDB's
//! semantics, with eventually consistent scans up to 500 ms old, slow replies, writes applied
//! whose reply was lost and throttles, per process), in both renewal modes: real schedulers, shard
//! consumers and processors, with the simulator's monitor checking at every batch that no
//! two workers process a shard at once and that no checkpoint moves back.
//!
//! Replay a run with `KCL_CHAOS_SEED=<seed> cargo test -p kcl-tests --test chaos -- --nocapture`.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
use kcl_core::backend::local::BackendOp;
use kcl_core::{
    FanOutConfig, InMemoryLeaseStore, InitializeInput, LeaseLostInput, LocalBackend, ProcessRecordsInput,
    ProcessorError, RecordProcessor, RetrievalMode, SchedulerHandle, ShardEndedInput, ShutdownRequestedInput,
};
use kcl_lease::sim::{Monitor, SimLeaseStore, WorkerFaults};
use kcl_lease::{
    ExtendedSequenceNumber, FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseOp, LeaseRenewal, LeaseStore,
    LeaseTrigger,
};
use kcl_tests::*;
use tokio::time::{sleep, timeout, Instant};

const DEFAULT_SEED: u64 = 20_240_601;
const SHARDS: usize = 4;
const KEYS: usize = 40;
const WORKERS: usize = 3;
/// 40 records every 130 ms: about 300 records per second.
const PRODUCE_EVERY: Duration = Duration::from_millis(130);
const PRODUCE_FOR: Duration = Duration::from_secs(16);
const FAILOVER: Duration = Duration::from_millis(1200);
const DRAIN_LIMIT: Duration = Duration::from_secs(40);
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Every random choice of the test comes from this seeded generator (the fault engine's).
struct Rng(kcl_lease::fault::SplitMix64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    fn index(&mut self, len: usize) -> usize {
        self.range(0, len as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// How a processing session (one processor instance) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `shard_ended` checkpointed `SHARD_END`.
    ShardEnded,
    /// `shutdown_requested`, and whether its final checkpoint succeeded.
    Graceful { checkpointed: bool },
    /// `lease_lost`.
    LeaseLost,
}

/// One processor instance, from `initialize` on.
#[derive(Debug)]
struct Session {
    incarnation: usize,
    worker: String,
    shard: String,
    init: ExtendedSequenceNumber,
    init_tick: u64,
    /// (position, key, index), in processing order.
    records: Vec<(ExtendedSequenceNumber, String, u64)>,
    end: Option<(End, u64)>,
    checkpoint_failures: usize,
    /// The session reached the shard's end: its last checkpoint (in `shard_ended`, or in
    /// `shutdown_requested` once every record was delivered) is `SHARD_END`.
    at_shard_end: bool,
}

impl Session {
    /// Where the next owner should start if this session handed over cleanly.
    fn last_position(&self) -> &ExtendedSequenceNumber {
        self.records.last().map_or(&self.init, |r| &r.0)
    }
}

/// What every processor of every worker saw. `tick` orders events across sessions.
#[derive(Default)]
struct State {
    tick: u64,
    sessions: Vec<Session>,
    /// Per record (key, index): who processed it, in processing order.
    occurrences: HashMap<(String, u64), Vec<Occurrence>>,
    processed: u64,
    anomalies: Vec<String>,
}

impl State {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

/// One processing of a record.
#[derive(Clone, Copy, Debug)]
struct Occurrence {
    session: usize,
    /// When the runtime handed the batch to the processor (before its delay).
    batch_tick: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wraps the shared [`Recorder`] (which feeds the [`Log`] and checkpoints after every batch, at
/// shard end and at shutdown) and records sessions. A failed checkpoint after a batch is
/// counted, not returned: redelivering the batch in the same session would be a duplicate of the
/// processor's own making; the next checkpoint covers it.
struct ChaosProcessor {
    inner: Recorder,
    incarnation: usize,
    delay_ms: Arc<AtomicU64>,
    state: Shared,
    session: Option<usize>,
    /// On the simulated table: its monitor and this process's name (a batch is in flight from
    /// the call to its return, its checkpoint included).
    monitor: Option<(Arc<Monitor>, String)>,
    batches: u64,
}

impl ChaosProcessor {
    fn end(&self, end: End) {
        let mut st = lock(&self.state);
        let tick = st.next_tick();
        match self.session {
            Some(id) => {
                if let Some(prev) = st.sessions[id].end {
                    let msg = format!("session {id} ended twice: {prev:?} then {end:?}");
                    st.anomalies.push(msg);
                }
                st.sessions[id].end = Some((end, tick));
            }
            None => {
                let msg = format!("{end:?} on {} without initialize", self.inner.shard);
                st.anomalies.push(msg);
            }
        }
    }
}

#[async_trait]
impl RecordProcessor for ChaosProcessor {
    async fn initialize(&mut self, input: InitializeInput) -> Result<(), ProcessorError> {
        let mut st = lock(&self.state);
        let tick = st.next_tick();
        if let Some(id) = self.session {
            let msg = format!("session {id} initialized twice");
            st.anomalies.push(msg);
        }
        if input.shard_id != self.inner.shard {
            let msg = format!(
                "processor for {} initialized for {}",
                self.inner.shard, input.shard_id
            );
            st.anomalies.push(msg);
        }
        self.session = Some(st.sessions.len());
        st.sessions.push(Session {
            incarnation: self.incarnation,
            worker: self.inner.worker.clone(),
            shard: input.shard_id,
            init: input.checkpoint,
            init_tick: tick,
            records: Vec::new(),
            end: None,
            checkpoint_failures: 0,
            at_shard_end: false,
        });
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        self.batches += 1;
        let batch = self.monitor.as_ref().map(|(monitor, process)| {
            let consumer = format!("{process}/{}/{:?}", self.inner.shard, self.session);
            let id = monitor.batch_start(
                &consumer,
                self.batches,
                process,
                &self.inner.worker,
                &self.inner.shard,
            );
            (monitor.clone(), id)
        });
        let result = self.process(input).await;
        if let Some((monitor, id)) = batch {
            monitor.batch_end(&self.inner.shard, id);
        }
        result
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        self.inner.shard_ended(input).await?;
        self.end(End::ShardEnded);
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        let checkpointer = input.checkpointer;
        let result = self.inner.shutdown_requested(input).await;
        if let Some(id) = self.session {
            lock(&self.state).sessions[id].at_shard_end = checkpointer.current().is_shard_end();
        }
        self.end(End::Graceful {
            checkpointed: result.is_ok(),
        });
        result
    }

    async fn lease_lost(&mut self, input: LeaseLostInput) {
        self.inner.lease_lost(input).await;
        self.end(End::LeaseLost);
    }
}

impl ChaosProcessor {
    /// One batch: recorded, then handed to the [`Recorder`] (which checkpoints).
    async fn process(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let batch_tick = lock(&self.state).next_tick();
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            sleep(Duration::from_millis(delay)).await;
        }
        let Some(id) = self.session else {
            lock(&self.state)
                .anomalies
                .push(format!("records on {} before initialize", self.inner.shard));
            return Err("not initialized".into());
        };
        {
            let mut st = lock(&self.state);
            st.next_tick();
            for r in input.records {
                let text = std::str::from_utf8(&r.data)?;
                let (key, index) = text.split_once(':').ok_or("bad payload")?;
                let index: u64 = index.parse()?;
                let position =
                    ExtendedSequenceNumber::from_parts(r.sequence_number.as_str(), r.sub_sequence_number)?;
                st.sessions[id].records.push((position, key.to_owned(), index));
                st.occurrences
                    .entry((key.to_owned(), index))
                    .or_default()
                    .push(Occurrence {
                        session: id,
                        batch_tick,
                    });
                st.processed += 1;
            }
        }
        // No await between the lines above and the Recorder's log (its delay is zero).
        if self.inner.process_records(input).await.is_err() {
            lock(&self.state).sessions[id].checkpoint_failures += 1;
        }
        Ok(())
    }
}

fn backend_plan(seed: u64) -> FaultPlan {
    FaultPlan::new(seed)
        .rule(BackendOp::GetRecords, Trigger::Probability(0.15), Fault::Throttle)
        .rule(
            BackendOp::GetRecords,
            Trigger::Probability(0.03),
            Fault::ExpireIterator,
        )
        .rule(
            BackendOp::GetShardIterator,
            Trigger::Probability(0.1),
            Fault::Error,
        )
        .rule(BackendOp::ListShards, Trigger::Probability(0.2), Fault::Error)
        .rule(
            BackendOp::SubscribeToShard,
            Trigger::Probability(0.1),
            Fault::Throttle,
        )
        .rule(
            BackendOp::SubscriptionEvent,
            Trigger::Probability(0.03),
            Fault::ResourceInUse,
        )
        .rule(
            BackendOp::SubscriptionEvent,
            Trigger::Probability(0.03),
            Fault::EndSubscription,
        )
}

fn lease_plan(rng: &mut Rng) -> LeaseFaultPlan {
    let mut plan = LeaseFaultPlan::new(rng.next_u64())
        .rule(
            LeaseOp::Renew,
            LeaseTrigger::Probability(0.05),
            LeaseFault::Throttle,
        )
        .rule(LeaseOp::Renew, LeaseTrigger::Probability(0.02), LeaseFault::Error)
        .rule(
            LeaseOp::Take,
            LeaseTrigger::Probability(0.05),
            LeaseFault::Throttle,
        )
        .rule(LeaseOp::Take, LeaseTrigger::Probability(0.02), LeaseFault::Error)
        .rule(
            LeaseOp::List,
            LeaseTrigger::Probability(0.05),
            LeaseFault::Throttle,
        )
        .rule(LeaseOp::List, LeaseTrigger::Probability(0.02), LeaseFault::Error)
        .rule(
            LeaseOp::Checkpoint,
            LeaseTrigger::Probability(0.04),
            LeaseFault::Throttle,
        )
        .rule(
            LeaseOp::Checkpoint,
            LeaseTrigger::Probability(0.01),
            LeaseFault::Error,
        );
    // A few conflicts, as if another worker had written the row.
    for _ in 0..3 {
        let n = rng.range(30, 600);
        plan = plan.rule(LeaseOp::Checkpoint, LeaseTrigger::Nth(n), LeaseFault::Conflict);
    }
    for _ in 0..2 {
        let n = rng.range(3, 40);
        plan = plan.rule(LeaseOp::Take, LeaseTrigger::Nth(n), LeaseFault::Conflict);
    }
    plan
}

/// The lease table of a run: the in-memory store behind a fault plan, or the fleet simulator's
/// table (DynamoDB's semantics), with a handle and faults of its own per process.
enum Table {
    Memory(Arc<FailureLeaseStore<InMemoryLeaseStore>>),
    Sim {
        store: SimLeaseStore,
        monitor: Arc<Monitor>,
        /// The faults a process started from now on suffers (none once the chaos is over).
        faults: Mutex<WorkerFaults>,
    },
}

impl Table {
    /// The simulated table of `seed`'s run: eventually consistent reads up to 500 ms old, and
    /// per process delays before and after calls, late replies, throttles and writes applied
    /// with their reply lost.
    fn simulated(seed: u64, renewal: LeaseRenewal) -> Self {
        let monitor = Arc::new(Monitor::new(seed, format!("chaos renewal={renewal}")));
        let store = SimLeaseStore::new(seed, Duration::from_millis(500), monitor.clone());
        let faults = WorkerFaults {
            delay_before: 0.05,
            delay_after: 0.05,
            max_delay: Duration::from_millis(300),
            slow_reply: 0.003,
            slow_reply_delay: FAILOVER / 2,
            throttle: 0.03,
            reply_lost: 0.02,
            ..WorkerFaults::default()
        };
        Table::Sim {
            store,
            monitor,
            faults: Mutex::new(faults),
        }
    }

    /// The store process `process` uses.
    fn handle(&self, process: &str) -> Arc<dyn LeaseStore> {
        match self {
            Table::Memory(store) => store.clone(),
            Table::Sim { store, faults, .. } => {
                let faults = faults.lock().unwrap_or_else(|p| p.into_inner()).clone();
                store.set_faults(process, faults);
                store.for_worker(process)
            }
        }
    }

    fn monitor(&self) -> Option<&Arc<Monitor>> {
        match self {
            Table::Memory(_) => None,
            Table::Sim { monitor, .. } => Some(monitor),
        }
    }

    /// No more faults, for every process.
    fn faults_off(&self) {
        match self {
            Table::Memory(store) => store.set_plan(LeaseFaultPlan::none()),
            Table::Sim { store, faults, .. } => {
                *faults.lock().unwrap_or_else(|p| p.into_inner()) = WorkerFaults::default();
                store.clear_faults();
            }
        }
    }

    /// Faults injected so far.
    fn injected(&self) -> u64 {
        match self {
            Table::Memory(store) => LeaseOp::ALL.into_iter().map(|op| store.injected(op)).sum(),
            Table::Sim { store, .. } => store.injected().values().sum::<u64>() + store.stale_reads(),
        }
    }

    /// Panics with the simulator's violation, if its monitor found one.
    fn check(&self, seed: u64) {
        if let Some(v) = self.monitor().and_then(|m| m.violation()) {
            panic!("seed {seed}: {v}");
        }
    }
}

/// One run of a worker.
struct Incarnation {
    worker: String,
    killed: bool,
}

/// The workers: a slot per worker (w0..w2), each alive or waiting to be restarted.
struct Cluster {
    seed: u64,
    backend: Arc<FailureBackend<LocalBackend>>,
    table: Table,
    renewal: LeaseRenewal,
    log: Log,
    state: Shared,
    slots: Vec<Option<(SchedulerHandle, usize, Arc<AtomicU64>)>>,
    incarnations: Vec<Incarnation>,
    restarts: u64,
    /// Restarts alternate between the old id and a new one, from a random phase.
    restart_phase: u64,
    kills: u64,
    graceful_stops: u64,
    /// On the simulated table: a second process under a live worker's id, running until the
    /// next round (it must process nothing while the first one beats).
    duplicate: Option<(SchedulerHandle, usize)>,
    duplicates: u64,
    /// On the simulated table: a process whose reads fail (its writes work) until the next
    /// round, and how many such outages there were.
    outage: Option<String>,
    outages: u64,
}

impl Cluster {
    fn start(&mut self, slot: usize, worker: String, delay_ms: u64, fan_out: bool) {
        let incarnation = self.incarnations.len();
        self.incarnations.push(Incarnation {
            worker: worker.clone(),
            killed: false,
        });
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let (log, state, d, w) = (
            self.log.clone(),
            self.state.clone(),
            delay.clone(),
            worker.clone(),
        );
        let process = process_name(&worker, incarnation);
        let monitor = self.table.monitor().map(|m| (m.clone(), process.clone()));
        let handle = fast(
            &worker,
            self.backend.clone(),
            self.table.handle(&process),
            &self.log,
            FAILOVER,
        )
        .lease_renewal(self.renewal)
        .graceful_shutdown_timeout(Duration::from_secs(10))
        .retrieval(if fan_out {
            // Short renewals, so that subscriptions are renewed many times in the run.
            RetrievalMode::FanOut(FanOutConfig::default().subscription_renewal(Duration::from_millis(1500)))
        } else {
            RetrievalMode::Polling
        })
        .processor_factory(move |shard: &str| ChaosProcessor {
            inner: Recorder {
                worker: w.clone(),
                shard: shard.to_owned(),
                log: log.clone(),
                delay: Duration::ZERO,
            },
            incarnation,
            delay_ms: d.clone(),
            state: state.clone(),
            session: None,
            monitor: monitor.clone(),
            batches: 0,
        })
        .build()
        .expect("valid config")
        .spawn();
        let mode = if fan_out { "fan-out" } else { "polling" };
        println!(
            "[seed {}] start {worker} (slot {slot}, delay {delay_ms} ms, {mode})",
            self.seed
        );
        self.slots[slot] = Some((handle, incarnation, delay));
    }

    fn live(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|s| self.slots[*s].is_some())
            .collect()
    }

    async fn kill(&mut self, slot: usize) {
        let (handle, inc, _) = self.slots[slot].take().expect("live slot");
        handle.kill().await;
        if let Some(monitor) = self.table.monitor() {
            // Its batches in flight stop with it.
            monitor.end_batches_of(&process_name(&self.incarnations[inc].worker, inc));
        }
        self.incarnations[inc].killed = true;
        self.kills += 1;
        println!("[seed {}] killed {}", self.seed, self.incarnations[inc].worker);
    }

    async fn stop(&mut self, slot: usize) {
        let (handle, inc, _) = self.slots[slot].take().expect("live slot");
        let worker = self.incarnations[inc].worker.clone();
        let result = timeout(STOP_LIMIT, handle.shutdown()).await;
        let seed = self.seed;
        let result = result.unwrap_or_else(|_| panic!("seed {seed}: graceful shutdown of {worker} hung"));
        result.unwrap_or_else(|e| panic!("seed {seed}: graceful shutdown of {worker} failed: {e}"));
        self.graceful_stops += 1;
        println!("[seed {seed}] stopped {worker} gracefully");
    }

    /// Makes the reads of the process in `slot` fail while its writes work: its heartbeat
    /// reads (F2 of the coordination review), or every read of the lease table.
    fn read_outage(&mut self, slot: usize, heartbeats: bool) {
        let Table::Sim { store, .. } = &self.table else {
            return;
        };
        let (_, inc, _) = self.slots[slot].as_ref().expect("live slot");
        let process = process_name(&self.incarnations[*inc].worker, *inc);
        let mut faults = store.faults(&process);
        if heartbeats {
            faults.heartbeat_reads_fail = true;
        } else {
            faults.lease_reads_fail = true;
        }
        store.set_faults(&process, faults);
        let what = if heartbeats { "heartbeat" } else { "lease table" };
        println!("[seed {}] {process}'s {what} reads fail", self.seed);
        self.outage = Some(process);
        self.outages += 1;
    }

    /// Starts a second process with the worker id of the one in `slot` (two containers given
    /// one host name, F5 of the coordination review).
    fn start_duplicate(&mut self, slot: usize) {
        let (_, inc, _) = self.slots[slot].as_ref().expect("live slot");
        let worker = self.incarnations[*inc].worker.clone();
        let incarnation = self.incarnations.len();
        self.slots.push(None);
        self.start(WORKERS, worker.clone(), 0, false);
        if let Some(started) = self.slots.pop().flatten() {
            self.duplicate = Some((started.0, incarnation));
        }
        self.duplicates += 1;
        println!("[seed {}] a second process under {worker}", self.seed);
    }

    /// Ends the read outage and stops the duplicate process of the last round, if any.
    async fn end_outage_and_duplicate(&mut self) {
        if let (Some(process), Table::Sim { store, .. }) = (self.outage.take(), &self.table) {
            let mut faults = store.faults(&process);
            faults.heartbeat_reads_fail = false;
            faults.lease_reads_fail = false;
            store.set_faults(&process, faults);
        }
        if let Some((handle, inc)) = self.duplicate.take() {
            let seed = self.seed;
            let worker = self.incarnations[inc].worker.clone();
            let result = timeout(STOP_LIMIT, handle.shutdown()).await;
            let result = result.unwrap_or_else(|_| panic!("seed {seed}: the duplicate {worker} hung"));
            result.unwrap_or_else(|e| panic!("seed {seed}: stopping the duplicate {worker} failed: {e}"));
        }
    }

    fn restart(&mut self, slot: usize, rng: &mut Rng) {
        self.restarts += 1;
        let worker = if (self.restarts + self.restart_phase).is_multiple_of(2) {
            format!("w{slot}")
        } else {
            format!("w{slot}-{}", self.restarts)
        };
        let delay = slow_delay(rng);
        self.start(slot, worker, delay, rng.chance(0.5));
    }
}

/// The name of a process (an incarnation of a worker) on the simulated table.
fn process_name(worker: &str, incarnation: usize) -> String {
    format!("{worker}#{incarnation}")
}

/// A processor delay: none for about half of the workers, 20–100 ms per batch for the others.
fn slow_delay(rng: &mut Rng) -> u64 {
    if rng.chance(0.5) {
        0
    } else {
        rng.range(20, 101)
    }
}

fn backend_faults(b: &FailureBackend<LocalBackend>) -> u64 {
    BackendOp::ALL.into_iter().map(|op| b.injected(op)).sum()
}

/// The seed: `KCL_CHAOS_SEED`, else the default.
fn chaos_seed() -> u64 {
    match std::env::var("KCL_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("KCL_CHAOS_SEED={s:?} is not a u64: {e}")),
        Err(_) => DEFAULT_SEED,
    }
}

/// A single-threaded runtime in paused time whose own random choices (the branch order of
/// `tokio::select!`) come from the seed too: with every timer virtual and every choice seeded,
/// a seed replays the same run.
fn seeded_runtime(seed: u64) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    #[cfg(not(tokio_unstable))]
    let _ = seed;
    builder.build().expect("a Tokio runtime")
}

/// One chaos run at a time in this test binary: the runtime's jitter seed is global.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn chaos_loses_nothing_keeps_key_order_and_explains_every_duplicate() {
    let _one = one_at_a_time();
    let seed = chaos_seed();
    kcl_core::jitter::set_seed(seed);
    let first = seeded_runtime(seed).block_on(chaos(seed, None));
    // The same seed replays the same run: every kill, fault, hand-off and duplicate again.
    kcl_core::jitter::set_seed(seed);
    let again = seeded_runtime(seed).block_on(chaos(seed, None));
    assert_eq!(first, again, "seed {seed} did not replay the same run");
}

/// The same chaos on the fleet simulator's table, in both renewal modes: real schedulers on a
/// table with DynamoDB's semantics and faults, the simulator's monitor checking every batch.
/// A seed replays there too.
#[test]
fn chaos_on_a_simulated_dynamodb_table_in_both_renewal_modes() {
    let _one = one_at_a_time();
    let seed = chaos_seed();
    for renewal in [LeaseRenewal::PerLease, LeaseRenewal::Worker] {
        kcl_core::jitter::set_seed(seed);
        let first = seeded_runtime(seed).block_on(chaos(seed, Some(renewal)));
        kcl_core::jitter::set_seed(seed);
        let again = seeded_runtime(seed).block_on(chaos(seed, Some(renewal)));
        assert_eq!(
            first, again,
            "seed {seed} ({renewal}) did not replay the same run"
        );
    }
}

/// Many seeds on the simulated table, both modes, each run once: `KCL_CHAOS_SEED` (the first
/// seed) and `KCL_CHAOS_SEEDS` (how many; 50 by default). Prints every failing seed and fails
/// if any did: `cargo test -p kcl-tests --test chaos chaos_sweep -- --ignored --nocapture`.
#[test]
#[ignore = "a sweep of many seeds: minutes"]
fn chaos_sweep_on_the_simulated_table() {
    let _one = one_at_a_time();
    let first = chaos_seed();
    let seeds: u64 = std::env::var("KCL_CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut failed = Vec::new();
    for seed in first..first + seeds {
        for renewal in [LeaseRenewal::PerLease, LeaseRenewal::Worker] {
            kcl_core::jitter::set_seed(seed);
            let run = std::panic::catch_unwind(|| seeded_runtime(seed).block_on(chaos(seed, Some(renewal))));
            if run.is_err() {
                println!("FAILED: seed {seed} ({renewal})");
                failed.push((seed, renewal));
            }
        }
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

/// One chaos run, on the in-memory table (`None`) or on the simulated one with a renewal mode;
/// returns its summary (every figure of it depends on the whole run).
async fn chaos(seed: u64, simulated: Option<LeaseRenewal>) -> String {
    init_tracing();
    println!("chaos seed = {seed}, simulated table: {simulated:?}");
    let began = Instant::now();
    let mut rng = Rng(kcl_lease::fault::SplitMix64(seed));
    let (local, mut cluster) = set_up(seed, &mut rng, simulated);
    let producer = spawn_producer(&local);
    let chaos_stops = run_chaos(&mut cluster, &local, &mut rng, began).await;
    let (produced, drained_in) = drain(&mut cluster, producer, &mut rng).await;

    cluster.table.check(seed);
    let dups_in_log = check_log(&cluster, &produced);
    let state = cluster.state.clone();
    let st = lock(&state);
    check_every_record_once(&st, &produced, seed);
    check_positions_grow(&st, seed);
    check_unexplained_ends(&st, &cluster, seed);
    let duplicates = explain_duplicates(&st, seed);
    let graceful_handoffs = check_graceful_handoffs(&st, seed);
    assert_eq!(
        dups_in_log as u64, duplicates.total,
        "seed {seed}: the Log and the sessions disagree on duplicates"
    );
    let summary = summarize(&Run {
        seed,
        st: &st,
        cluster: &cluster,
        total: produced.values().sum(),
        duplicates,
        graceful_handoffs,
        chaos_stops,
        drained_in,
        began,
    });
    println!("{summary}");
    summary
}

/// The stream, the faulty backend and lease store, and the three workers started (w0 polls, w1
/// fans out, w2 either; about half of them with slow processors).
fn set_up(seed: u64, rng: &mut Rng, simulated: Option<LeaseRenewal>) -> (LocalBackend, Cluster) {
    let local = LocalBackend::new();
    local
        .create_stream(STREAM, SHARDS)
        .unwrap_or_else(|e| panic!("seed {seed}: create stream: {e}"));
    let backend = Arc::new(FailureBackend::new(local.clone(), backend_plan(rng.next_u64())));
    let plan = lease_plan(rng);
    let (table, renewal) = match simulated {
        None => (
            Table::Memory(Arc::new(FailureLeaseStore::new(InMemoryLeaseStore::new(), plan))),
            LeaseRenewal::PerLease,
        ),
        Some(renewal) => (Table::simulated(seed, renewal), renewal),
    };
    let state: Shared = Arc::default();
    let mut cluster = Cluster {
        seed,
        backend,
        table,
        renewal,
        log: Log::default(),
        state,
        slots: (0..WORKERS).map(|_| None).collect(),
        incarnations: Vec::new(),
        restarts: 0,
        restart_phase: rng.range(0, 2),
        kills: 0,
        graceful_stops: 0,
        duplicate: None,
        duplicates: 0,
        outage: None,
        outages: 0,
    };
    for slot in 0..WORKERS {
        let delay = slow_delay(rng);
        // Polling and fan-out workers side by side: w0 polls, w1 fans out, w2 either.
        let fan_out = match slot {
            0 => false,
            1 => true,
            _ => rng.chance(0.5),
        };
        cluster.start(slot, format!("w{slot}"), delay, fan_out);
    }
    (local, cluster)
}

/// The producer: 40 keys, payload "key:index", about 300 records per second, for
/// `PRODUCE_FOR`; returns how many records of each key it put.
fn spawn_producer(local: &LocalBackend) -> tokio::task::JoinHandle<BTreeMap<String, u64>> {
    let local = local.clone();
    tokio::spawn(async move {
        let mut produced = BTreeMap::new();
        let end = Instant::now() + PRODUCE_FOR;
        while Instant::now() < end {
            produce(&local, KEYS, 1, &mut produced).await;
            sleep(PRODUCE_EVERY).await;
        }
        produced
    })
}

/// The chaos loop, every 1–2 s until shortly before producing ends: stopped workers restarted,
/// one split and one merge at random times, and a disruption per round (a kill, a graceful stop
/// or a change of processor speed). Returns the number of graceful stops it made.
async fn run_chaos(cluster: &mut Cluster, local: &LocalBackend, rng: &mut Rng, began: Instant) -> u64 {
    let seed = cluster.seed;
    let chaos_end = began + PRODUCE_FOR - Duration::from_millis(1500);
    let split_at = began + rng.millis(2_000, 7_000);
    let merge_at = began + rng.millis(7_000, 12_000);
    let (mut split, mut merged) = (None, None);
    let first_disruption = rng.range(0, 2); // kill first, or graceful stop first
    let mut round = 0u64;
    while Instant::now() < chaos_end {
        sleep(rng.millis(1_000, 2_000)).await;
        // Stopped workers come back a round later, under their old id or a new one.
        restart_stopped(cluster, rng);
        if split.is_none() && Instant::now() >= split_at {
            split = Some(split_a_shard(local, rng, seed, cluster.table.monitor()));
        }
        if merged.is_none() && Instant::now() >= merge_at {
            merged = Some(merge_two_shards(local, rng, seed, cluster.table.monitor()));
        }
        let action = match round {
            0 | 1 => (round + first_disruption) % 2,
            // On the simulated table, also read outages and duplicate processes.
            _ if cluster.table.monitor().is_some() => rng.range(0, 7),
            _ => rng.range(0, 5),
        };
        round += 1;
        disrupt(cluster, action, rng).await;
    }
    assert!(
        split.is_some() && merged.is_some(),
        "seed {seed}: the split and the merge did not both happen"
    );
    assert!(
        cluster.kills >= 1 && cluster.graceful_stops >= 1,
        "seed {seed}: chaos did not both kill and stop a worker"
    );
    cluster.graceful_stops
}

/// Restarts every worker that is not running.
fn restart_stopped(cluster: &mut Cluster, rng: &mut Rng) {
    for slot in 0..WORKERS {
        if cluster.slots[slot].is_none() {
            cluster.restart(slot, rng);
        }
    }
}

/// Splits a random open shard in the middle of its range; returns its id.
fn split_a_shard(local: &LocalBackend, rng: &mut Rng, seed: u64, monitor: Option<&Arc<Monitor>>) -> String {
    let open: Vec<_> = local
        .shards(STREAM)
        .unwrap_or_else(|e| panic!("seed {seed}: list shards: {e}"))
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    let shard = &open[rng.index(open.len())];
    let r = shard.hash_key_range;
    let middle = r.start + (r.end - r.start) / 2 + 1;
    let children = local
        .split_shard(STREAM, &shard.shard_id, middle)
        .unwrap_or_else(|e| panic!("seed {seed}: split of {} failed: {e}", shard.shard_id));
    println!("[seed {seed}] split {} into {children:?}", shard.shard_id);
    resharded(
        monitor,
        std::slice::from_ref(&shard.shard_id),
        &[children.0.clone(), children.1.clone()],
    );
    shard.shard_id.clone()
}

/// Merges a random pair of adjacent open shards; returns the child's id.
fn merge_two_shards(
    local: &LocalBackend,
    rng: &mut Rng,
    seed: u64,
    monitor: Option<&Arc<Monitor>>,
) -> String {
    let mut open: Vec<_> = local
        .shards(STREAM)
        .unwrap_or_else(|e| panic!("seed {seed}: list shards: {e}"))
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    open.sort_by_key(|s| s.hash_key_range.start);
    let pairs: Vec<_> = open
        .windows(2)
        .filter(|w| w[0].hash_key_range.end + 1 == w[1].hash_key_range.start)
        .map(|w| (w[0].shard_id.clone(), w[1].shard_id.clone()))
        .collect();
    let (a, b) = &pairs[rng.index(pairs.len())];
    let child = local
        .merge_shards(STREAM, a, b)
        .unwrap_or_else(|e| panic!("seed {seed}: merge of {a} and {b} failed: {e}"));
    println!("[seed {seed}] merged {a} and {b} into {child}");
    resharded(monitor, &[a.clone(), b.clone()], std::slice::from_ref(&child));
    child
}

/// Tells the simulator's monitor of a reshard: the parents ended (their lease may now be
/// checkpointed `SHARD_END`; the monitor counts no records here, the processors' log does), and
/// no batch of a child may start before every parent's lease is at `SHARD_END`.
fn resharded(monitor: Option<&Arc<Monitor>>, parents: &[String], children: &[String]) {
    let Some(monitor) = monitor else { return };
    for parent in parents {
        monitor.shard_ended(parent, 0);
    }
    for child in children {
        monitor.child_created(child, parents);
    }
}

/// One round's disruption: 0 or 2 kills a random live worker, 1 or 3 stops one gracefully
/// (never the last one alive); otherwise, or with one worker left, a random live worker's
/// processors switch between fast and slow.
async fn disrupt(cluster: &mut Cluster, action: u64, rng: &mut Rng) {
    let seed = cluster.seed;
    cluster.end_outage_and_duplicate().await;
    let live = cluster.live();
    match action {
        5 => {
            let slot = live[rng.index(live.len())];
            cluster.read_outage(slot, rng.chance(0.5));
        }
        6 => {
            let slot = live[rng.index(live.len())];
            cluster.start_duplicate(slot);
        }
        // At least one worker stays alive: never stop the last one.
        0 | 2 if live.len() >= 2 => cluster.kill(live[rng.index(live.len())]).await,
        1 | 3 if live.len() >= 2 => cluster.stop(live[rng.index(live.len())]).await,
        _ => {
            let slot = live[rng.index(live.len())];
            let (_, inc, delay) = cluster.slots[slot].as_ref().expect("live");
            let ms = if delay.load(Ordering::Relaxed) == 0 {
                rng.range(20, 101)
            } else {
                0
            };
            delay.store(ms, Ordering::Relaxed);
            println!(
                "[seed {seed}] processors of {} now take {ms} ms per batch",
                cluster.incarnations[*inc].worker
            );
        }
    }
}

/// Stops the chaos: waits for the producer, turns the faults off, brings every worker back,
/// waits for the tail to be processed and stops every worker gracefully. Returns what was
/// produced and how long the drain took.
async fn drain(
    cluster: &mut Cluster,
    producer: tokio::task::JoinHandle<BTreeMap<String, u64>>,
    rng: &mut Rng,
) -> (BTreeMap<String, u64>, Duration) {
    let seed = cluster.seed;
    let produced = producer
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: producer failed: {e}"));
    let total: u64 = produced.values().sum();
    cluster.end_outage_and_duplicate().await;
    cluster.backend.set_plan(FaultPlan::none());
    cluster.table.faults_off();
    restart_stopped(cluster, rng);
    let drain_from = Instant::now();
    let what = format!("seed {seed}: all {total} produced records processed");
    let state = cluster.state.clone();
    wait_until(DRAIN_LIMIT, &what, || distinct(&lock(&state)) >= total).await;
    let drained_in = drain_from.elapsed();
    for slot in 0..WORKERS {
        cluster.stop(slot).await;
    }
    (produced, drained_in)
}

/// How many distinct records were processed.
fn distinct(st: &State) -> u64 {
    st.occurrences.len() as u64
}

/// 1 and 2: nothing lost, each key's records first processed in order (the [`Log`]'s check,
/// its panic message prefixed with the seed). Returns the duplicates the log counted.
fn check_log(cluster: &Cluster, produced: &BTreeMap<String, u64>) -> usize {
    let seed = cluster.seed;
    let log = cluster.log.clone();
    std::panic::catch_unwind(AssertUnwindSafe(|| log.assert_complete_and_ordered(produced))).unwrap_or_else(
        |e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("seed {seed}: {msg}")
        },
    )
}

/// No processor call-sequence anomaly, nothing processed that was not produced, and every
/// produced record processed.
fn check_every_record_once(st: &State, produced: &BTreeMap<String, u64>, seed: u64) {
    assert!(
        st.anomalies.is_empty(),
        "seed {seed}: processor call sequence anomalies: {:?}",
        st.anomalies
    );
    for ((key, index), _) in st.occurrences.iter() {
        assert!(
            produced.get(key).is_some_and(|n| index < n),
            "seed {seed}: processed {key}:{index}, which was never produced"
        );
    }
    let total: u64 = produced.values().sum();
    assert_eq!(distinct(st), total, "seed {seed}: records processed vs produced");
}

/// 3a: no session processes a record at or before the checkpoint it started from, and within
/// a session the positions only grow.
fn check_positions_grow(st: &State, seed: u64) {
    for (id, s) in st.sessions.iter().enumerate() {
        let mut previous = &s.init;
        for (position, key, index) in &s.records {
            assert!(
                position > previous,
                "seed {seed}: session {id} ({} on {}, from {}) processed {key}:{index} at {position}, \
                 not after {previous}",
                s.worker,
                s.shard,
                s.init
            );
            previous = position;
        }
    }
}

/// Whether session `id` ended without a clean hand-off: its lease lost, its final checkpoint
/// failed, or no callback at all.
fn ended_uncleanly(st: &State, id: usize) -> bool {
    let s = &st.sessions[id];
    match s.end {
        Some((End::LeaseLost, _)) | Some((End::Graceful { checkpointed: false }, _)) => true,
        Some(_) => false,
        None => true,
    }
}

/// A session that ended without a callback must belong to a killed worker.
fn check_unexplained_ends(st: &State, cluster: &Cluster, seed: u64) {
    for (id, s) in st.sessions.iter().enumerate() {
        if s.end.is_none() {
            assert!(
                cluster.incarnations[s.incarnation].killed,
                "seed {seed}: session {id} ({} on {}) never got shard_ended, shutdown_requested or \
                 lease_lost, yet its worker was not killed",
                s.worker, s.shard
            );
        }
    }
}

/// The duplicates, by the explanation each has.
struct Duplicates {
    total: u64,
    reprocessed: u64,
    in_flight: u64,
}

/// 3b: every duplicate is explained by a session that was killed or lost its lease, and that
/// was handed the batch with the record before the other session started (a worker must not
/// be given a batch once another worker may own the shard):
/// - re-processing: an earlier processing of the record was in such a session, and the
///   duplicate's session started after that batch began (it resumed from an older
///   checkpoint), or
/// - an in-flight batch: the duplicate is in such a session, in a batch handed to it before
///   the session that processed the record earlier had started (the new owner started while
///   the old one was busy with a batch it got while it still held the lease).
fn explain_duplicates(st: &State, seed: u64) -> Duplicates {
    let mut duplicates = 0u64;
    let mut reprocessed = 0u64;
    let mut in_flight = 0u64;
    for ((key, index), occurrences) in &st.occurrences {
        let describe = || -> Vec<String> {
            occurrences
                .iter()
                .map(|o| {
                    let x = &st.sessions[o.session];
                    format!(
                        "session {} ({}, {} from {}, started at tick {}, ended {:?}): batch at tick {}",
                        o.session, x.worker, x.shard, x.init, x.init_tick, x.end, o.batch_tick
                    )
                })
                .collect()
        };
        for k in 1..occurrences.len() {
            duplicates += 1;
            let again = occurrences[k];
            let earlier = &occurrences[..k];
            let s = &st.sessions[again.session];
            assert!(
                earlier.iter().all(|o| o.session != again.session),
                "seed {seed}: {key}:{index} processed twice in one session: {:#?}",
                describe()
            );
            assert!(
                earlier.iter().all(|o| st.sessions[o.session].shard == s.shard),
                "seed {seed}: {key}:{index} processed on two shards: {:#?}",
                describe()
            );
            if earlier
                .iter()
                .any(|o| ended_uncleanly(st, o.session) && o.batch_tick < s.init_tick)
            {
                reprocessed += 1;
            } else if ended_uncleanly(st, again.session)
                && earlier
                    .iter()
                    .any(|o| again.batch_tick < st.sessions[o.session].init_tick)
            {
                in_flight += 1;
            } else {
                panic!(
                    "seed {seed}: {key}:{index} processed again without a kill or lease loss to \
                     explain it: {:#?}",
                    describe()
                );
            }
        }
    }
    Duplicates {
        total: duplicates,
        reprocessed,
        in_flight,
    }
}

/// Graceful hand-offs are exact: after a session that checkpointed in shutdown_requested, the
/// next session on the shard starts right after the last record it processed. Returns how many
/// such hand-offs there were.
fn check_graceful_handoffs(st: &State, seed: u64) -> u64 {
    let mut by_shard: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (id, s) in st.sessions.iter().enumerate() {
        by_shard.entry(&s.shard).or_default().push(id);
    }
    let mut graceful_handoffs = 0u64;
    for ids in by_shard.values() {
        for (i, &id) in ids.iter().enumerate() {
            let s = &st.sessions[id];
            let Some((End::Graceful { checkpointed: true }, end_tick)) = s.end else {
                continue;
            };
            // The next session on the shard, if it started after this one ended and none other
            // started in between.
            let Some(&next) = ids.get(i + 1) else { continue };
            let n = &st.sessions[next];
            if n.init_tick < end_tick {
                continue;
            }
            graceful_handoffs += 1;
            // Or at SHARD_END: the stopped session had every record of its ended shard
            // delivered, and its last checkpoint wrote SHARD_END (found on the simulated
            // table: seed 66, per-lease renewal).
            if s.at_shard_end && n.init.is_shard_end() {
                continue;
            }
            assert_eq!(
                &n.init,
                s.last_position(),
                "seed {seed}: session {next} ({} on {}) did not start right after the last record \
                 of the gracefully stopped session {id} ({})",
                n.worker,
                n.shard,
                s.worker
            );
        }
    }
    graceful_handoffs
}

/// The figures of a finished run that go into its summary.
struct Run<'a> {
    seed: u64,
    st: &'a State,
    cluster: &'a Cluster,
    total: u64,
    duplicates: Duplicates,
    graceful_handoffs: u64,
    chaos_stops: u64,
    drained_in: Duration,
    began: Instant,
}

/// The run's summary line.
fn summarize(run: &Run<'_>) -> String {
    let Run {
        seed,
        st,
        cluster,
        total,
        graceful_handoffs,
        chaos_stops,
        drained_in,
        began,
        ..
    } = run;
    let Duplicates {
        total: duplicates,
        reprocessed,
        in_flight,
    } = &run.duplicates;
    let backend = &cluster.backend;
    let checkpoint_failures: usize = st.sessions.iter().map(|s| s.checkpoint_failures).sum();
    let lost = st
        .sessions
        .iter()
        .filter(|s| s.end.is_some_and(|(e, _)| e == End::LeaseLost))
        .count();
    let failed_final = st
        .sessions
        .iter()
        .filter(|s| {
            s.end
                .is_some_and(|(e, _)| e == End::Graceful { checkpointed: false })
        })
        .count();
    let reused = cluster
        .incarnations
        .iter()
        .skip(WORKERS)
        .filter(|i| i.worker.len() == 2)
        .count();
    format!(
        "chaos seed = {seed}: produced {total}, processed {}, duplicates {duplicates} \
         ({reprocessed} re-processed after a kill or lease loss, {in_flight} in a losing \
         session's in-flight batch), sessions {} ({lost} lease lost, {failed_final} final \
         checkpoint failed, {graceful_handoffs} exact graceful hand-offs), kills {}, graceful \
         stops {chaos_stops} (+{WORKERS} at the end), restarts {} ({reused} under the old id), \
         faults injected {} (backend {}, lease store {}), failed batch checkpoints \
         {checkpoint_failures}, read outages {}, duplicate processes {}, drained in \
         {drained_in:?}, total {:?}",
        st.processed,
        st.sessions.len(),
        cluster.kills,
        cluster.restarts,
        backend_faults(backend) + cluster.table.injected(),
        backend_faults(backend),
        cluster.table.injected(),
        cluster.outages,
        cluster.duplicates,
        began.elapsed()
    )
}
