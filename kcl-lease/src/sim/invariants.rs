//! The simulator's event log and its invariant checker ([`Monitor`]), checked as events are
//! recorded, not at the end: the first violation stops the run and keeps the events that led
//! to it.
//!
//! - **Overlap**: batches of one shard by two different consumers never overlap in simulated
//!   time, except a batch that was already in flight when its worker lost the lease in the
//!   table (a take, steal, eviction or completed hand-off that removed it as owner or
//!   `checkpointOwner`, or a new take of it, as the store recorded it). Checked when a batch
//!   ends, against every batch of another consumer that started while it ran. Consumers of
//!   two processes (even with one worker id) violate [`Invariant::Overlap`]; two consumers in
//!   one process violate [`Invariant::DoubleConsumer`], and so does a shard task started in a
//!   process for a key whose previous task there has not let go of it yet (one shard task per
//!   key per worker: [`Monitor::task_start`], checked as it starts).
//!   A forced admin reset ([`Monitor::forced_reset`]) exempts the consumers its owner had
//!   started on the lease until they end: the window `kcl-admin reset --force` leaves to the
//!   operator (F8 of docs/coordination.md), until the owner learns of the reset.
//! - **Checkpoint regression**: the checkpoint of a lease never moves backwards except through
//!   an admin reset, checked in the store's state after every applied write.
//! - **Delivery**: a consumer never starts past the records delivered so far (none skipped);
//!   after an admin reset, a consumer resumes from the reset checkpoint (a reset still waiting
//!   for one is reported by [`Monitor::pending_resets`]); an ended shard is checkpointed
//!   `SHARD_END` only once every record up to its end was delivered, and never delivers past
//!   it.
//! - **Parents first**: no batch of a child shard starts before every parent's lease is
//!   checkpointed `SHARD_END` in the table.
//! - **Liveness** is judged by the fleet driver (after the faults stop) and reported here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::held::lock;
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;

/// How many events before a violation are kept in it.
const CONTEXT_EVENTS: usize = 30;

/// What an event of the log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EventKind {
    /// A take of a free, expired or own lease was applied (`leaseOwner` set).
    Take,
    /// A steal (a take with hand-off) was applied.
    Steal,
    /// A lease was released (evicted) in the table.
    Evict,
    /// A hand-off was completed (`checkpointOwner` cleared).
    HandoffDone,
    /// A checkpoint write was applied.
    Checkpoint,
    /// A fault injected into a heartbeat call (put, read, delete).
    HeartbeatFault,
    /// A fault injected into a lease-table call (throttled, reply lost, read failed).
    StoreFault,
    /// A consumer started on a lease (after its hand-off, if any).
    ConsumerStart,
    /// A consumer stopped (and released the lease).
    ConsumerEnd,
    /// A batch started.
    BatchStart,
    /// A batch ended.
    BatchEnd,
    /// A scenario event: crash, restart, pause, resume, duplicate, shutdown, phase change.
    Scenario,
    /// A store call began or returned (only when calls are traced).
    Call,
    /// An admin reset (`kcl-admin reset`) was applied: checkpoint set back, owner cleared.
    Reset,
    /// A reshard: a shard ended at a position, or a child lease was created.
    Reshard,
}

impl EventKind {
    /// Whether the event is one of the lease events shown before a violation (everything but
    /// batches and traced calls).
    pub fn is_lease_event(&self) -> bool {
        !matches!(
            self,
            EventKind::BatchStart | EventKind::BatchEnd | EventKind::Call
        )
    }

    fn name(&self) -> &'static str {
        match self {
            EventKind::Take => "take",
            EventKind::Steal => "steal",
            EventKind::Evict => "evict",
            EventKind::HandoffDone => "handoff-done",
            EventKind::Checkpoint => "checkpoint",
            EventKind::HeartbeatFault => "heartbeat-fault",
            EventKind::StoreFault => "store-fault",
            EventKind::ConsumerStart => "consumer-start",
            EventKind::ConsumerEnd => "consumer-end",
            EventKind::BatchStart => "batch-start",
            EventKind::BatchEnd => "batch-end",
            EventKind::Scenario => "scenario",
            EventKind::Call => "call",
            EventKind::Reset => "reset",
            EventKind::Reshard => "reshard",
        }
    }
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// The process (worker id, with a suffix for restarts and duplicates) it is about.
    pub who: String,
    /// What happened.
    pub kind: EventKind,
    /// The lease key (empty when not about one lease).
    pub key: String,
    /// Free text (counters, checkpoints, previous owners).
    pub detail: String,
}

/// The log with the events of each instant sorted: two runs that differ only in the order of
/// simultaneous events (see the module docs of [`crate::sim`] on `tokio::select!`) give the
/// same canonical log.
pub fn canonical(events: &[Event]) -> Vec<Event> {
    let mut events = events.to_vec();
    events.sort();
    events
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>9.3}s {:<8} {:<14} {:<10} {}",
            self.at.as_secs_f64(),
            self.who,
            self.kind.name(),
            self.key,
            self.detail
        )
    }
}

/// Which invariant a run violated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Invariant {
    /// Two processes (workers) processed one shard at the same time.
    Overlap,
    /// Two consumers of one process processed one shard at the same time (a second
    /// `HeldLease` for a key whose first consumer still runs: the review's F6 family).
    DoubleConsumer,
    /// A checkpoint moved backwards in the table (other than through an admin reset).
    CheckpointRegressed,
    /// Records skipped: a consumer started past the records delivered so far, a shard was
    /// checkpointed `SHARD_END` before its last record was delivered (or delivered past its
    /// end), or no consumer resumed from an admin reset's checkpoint.
    Delivery,
    /// A batch of a child shard started before every parent's lease was checkpointed
    /// `SHARD_END`.
    ParentNotFinished,
    /// After the faults stopped, a shard was not held and processed again in time, or the
    /// leases were not spread evenly.
    Liveness,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::Overlap => "overlap",
            Invariant::DoubleConsumer => "double-consumer",
            Invariant::CheckpointRegressed => "checkpoint-regressed",
            Invariant::Delivery => "delivery",
            Invariant::ParentNotFinished => "parent-not-finished",
            Invariant::Liveness => "liveness",
        })
    }
}

/// A violated invariant: the seed that replays it, what was violated, and the lease events
/// that led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The seed of the run.
    pub seed: u64,
    /// A short description of the configuration (renewal mode, fault classes).
    pub config: Box<str>,
    /// The invariant.
    pub invariant: Invariant,
    /// When it was detected (simulated time since the start of the run).
    pub at: Duration,
    /// What exactly.
    pub message: String,
    /// The last lease events before the violation, one line each, oldest first.
    pub events: Vec<String>,
    /// The last lease events about the lease concerned (for an overlap or a regressed
    /// checkpoint), however old: the take that started it may be long before.
    pub lease_events: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} ({}): {} violated at {:.3}s: {}",
            self.seed,
            self.config,
            self.invariant,
            self.at.as_secs_f64(),
            self.message
        )?;
        writeln!(f, "last {} lease events:", self.events.len())?;
        for line in &self.events {
            writeln!(f, "  {line}")?;
        }
        if !self.lease_events.is_empty() {
            writeln!(f, "last {} events of the lease:", self.lease_events.len())?;
            for line in &self.lease_events {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// One batch of records processed by one consumer.
#[derive(Clone, Debug)]
struct Batch {
    id: u64,
    consumer: String,
    process: String,
    worker: String,
    start: Duration,
    end: Option<Duration>,
}

/// When a lease's row started to name this owner and checkpoint owner.
type Named = (Duration, Option<String>, Option<String>);

/// A moment the table stopped naming `worker` as owner or `checkpointOwner` of a lease (or
/// named it again through a new take: a new holder).
#[derive(Clone, Debug)]
struct Move {
    at: Duration,
    worker: String,
}

#[derive(Debug, Default)]
struct State {
    events: Vec<Event>,
    /// Per lease key: the batches that may still overlap a batch in flight.
    batches: BTreeMap<String, Vec<Batch>>,
    moves: BTreeMap<String, Vec<Move>>,
    /// Per lease key: (when, owner, checkpoint owner) after each write that changed them.
    owners: BTreeMap<String, Vec<Named>>,
    next_batch: u64,
    batch_count: u64,
    /// Per lease key, per process: when its last batch started.
    last_start: BTreeMap<String, BTreeMap<String, Duration>>,
    /// Per (process, lease key): the shard task that has the key and has not let it go yet.
    tasks: BTreeMap<(String, String), String>,
    /// Per lease key: the highest record position delivered (the end of a batch).
    delivered: BTreeMap<String, u64>,
    /// Per lease key: the checkpoint in the table after its last applied write.
    table_checkpoints: BTreeMap<String, ExtendedSequenceNumber>,
    /// Per lease key of an ended shard: its last record.
    shard_ends: BTreeMap<String, u64>,
    /// Per lease key of a child shard: its parents' lease keys.
    parents: BTreeMap<String, Vec<String>>,
    /// Per lease key: when its checkpoint became `SHARD_END`.
    finished: BTreeMap<String, Duration>,
    /// Per lease key: an admin reset (when, the position it set) no consumer resumed from yet.
    resets: BTreeMap<String, (Duration, u64)>,
    /// Per lease key: its consumers so far (name, worker id).
    consumers: BTreeMap<String, Vec<(String, String)>>,
    /// The consumers a forced reset took their lease from, and when each last started a batch.
    forced: BTreeMap<String, Option<Duration>>,
    /// Per lease key: the owners a forced reset removed, and when.
    forced_owners: BTreeMap<String, Vec<(String, Duration)>>,
    violation: Option<Violation>,
}

/// The event log and invariant checker of one run, shared by the store, the fleet and the
/// consumers.
#[derive(Debug)]
pub struct Monitor {
    origin: Instant,
    seed: u64,
    config: String,
    state: Mutex<State>,
}

/// Identifies a batch in flight (from [`Monitor::batch_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchId(u64);

impl Monitor {
    /// A monitor for the run of `seed` (described by `config`), whose time starts now.
    pub fn new(seed: u64, config: impl Into<String>) -> Self {
        Self {
            origin: Instant::now(),
            seed,
            config: config.into(),
            state: Mutex::new(State::default()),
        }
    }

    /// Simulated time since the start of the run.
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(self.origin)
    }

    /// Records an event.
    pub fn record(&self, who: &str, kind: EventKind, key: &str, detail: impl Into<String>) {
        let event = Event {
            at: self.elapsed(),
            who: who.to_owned(),
            kind,
            key: key.to_owned(),
            detail: detail.into(),
        };
        lock(&self.state).events.push(event);
    }

    /// The whole event log so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.state).events.clone()
    }

    /// Batches started so far.
    pub fn batches(&self) -> u64 {
        lock(&self.state).batch_count
    }

    /// When each process last started a batch of `key`.
    pub fn last_batch_starts(&self, key: &str) -> BTreeMap<String, Duration> {
        lock(&self.state).last_start.get(key).cloned().unwrap_or_default()
    }

    /// The first violation, if any.
    pub fn violation(&self) -> Option<Violation> {
        lock(&self.state).violation.clone()
    }

    /// Records a violation (only the first one is kept).
    pub fn fail(&self, invariant: Invariant, message: impl Into<String>) {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        Self::fail_locked(
            &mut state,
            self.seed,
            &self.config,
            at,
            invariant,
            message.into(),
            None,
        );
    }

    fn fail_locked(
        state: &mut State,
        seed: u64,
        config: &str,
        at: Duration,
        invariant: Invariant,
        message: String,
        key: Option<&str>,
    ) {
        if state.violation.is_some() {
            return;
        }
        let mut lease_events: Vec<String> = match key {
            Some(key) => state
                .events
                .iter()
                .rev()
                .filter(|e| e.kind.is_lease_event() && e.key == key)
                .take(CONTEXT_EVENTS / 2)
                .map(ToString::to_string)
                .collect(),
            None => Vec::new(),
        };
        lease_events.reverse();
        let mut events: Vec<String> = state
            .events
            .iter()
            .rev()
            .filter(|e| e.kind.is_lease_event())
            .take(CONTEXT_EVENTS)
            .map(ToString::to_string)
            .collect();
        events.reverse();
        state.violation = Some(Violation {
            seed,
            config: config.into(),
            invariant,
            at,
            message,
            events,
            lease_events,
        });
    }

    /// The store applied a write by `who` that turned `before` into `after` (`op` names the
    /// write). Records the moves of the lease and checks the checkpoint.
    pub fn after_write(&self, who: &str, op: &str, before: Option<&Lease>, after: Option<&Lease>) {
        let Some(key) = before.or(after).map(|l| l.lease_key.clone()) else {
            return;
        };
        let at = self.elapsed();
        let mut state = lock(&self.state);
        // Who lost a right to process the lease (owner or checkpoint owner) with this write,
        // or was replaced as its holder (a take, even by the same worker id, makes a new
        // holder: a consumer of the previous one may still be in flight).
        let rights = |l: Option<&Lease>| -> Vec<String> {
            l.into_iter()
                .flat_map(|l| [l.lease_owner.clone(), l.checkpoint_owner.clone()])
                .flatten()
                .collect()
        };
        let (was, now) = (rights(before), rights(after));
        let take = matches!(op, "take" | "steal");
        let lost: Vec<String> = was.iter().filter(|w| take || !now.contains(w)).cloned().collect();
        for worker in lost {
            state
                .moves
                .entry(key.clone())
                .or_default()
                .push(Move { at, worker });
        }
        let who_now = |l: Option<&Lease>| {
            (
                l.and_then(|l| l.lease_owner.clone()),
                l.and_then(|l| l.checkpoint_owner.clone()),
            )
        };
        if who_now(before) != who_now(after) {
            let (owner, co) = who_now(after);
            state.owners.entry(key.clone()).or_default().push((at, owner, co));
        }
        if let Some(a) = after {
            state.table_checkpoints.insert(key.clone(), a.checkpoint.clone());
            if op == "reset" {
                state.resets.insert(key.clone(), (at, position(&a.checkpoint)));
            }
            let was_finished = before.is_some_and(Lease::is_finished);
            if a.is_finished() && !was_finished {
                state.finished.insert(key.clone(), at);
                let end = state.shard_ends.get(&key).copied();
                let delivered = state.delivered.get(&key).copied().unwrap_or(0);
                let problem = match end {
                    None => Some(format!(
                        "{key} was checkpointed SHARD_END ({op} by {who}), but its shard never ended"
                    )),
                    Some(end) if delivered < end => Some(format!(
                        "{key} was checkpointed SHARD_END ({op} by {who}) with records up to {end} \
                         not all delivered (delivered up to {delivered})"
                    )),
                    Some(_) => None,
                };
                if let Some(message) = problem {
                    Self::fail_locked(
                        &mut state,
                        self.seed,
                        &self.config,
                        at,
                        Invariant::Delivery,
                        message,
                        Some(&key),
                    );
                }
            }
        }
        if let (Some(b), Some(a)) = (before, after) {
            // An operator's reset moves the checkpoint backwards on purpose.
            if a.checkpoint < b.checkpoint && op != "reset" {
                let message = format!(
                    "the checkpoint of {key} moved backwards from {} to {} ({op} by {who})",
                    b.checkpoint.checkpoint_str(),
                    a.checkpoint.checkpoint_str()
                );
                state.events.push(Event {
                    at,
                    who: who.to_owned(),
                    kind: EventKind::Checkpoint,
                    key: key.clone(),
                    detail: format!("REGRESSED {}", a.checkpoint.checkpoint_str()),
                });
                Self::fail_locked(
                    &mut state,
                    self.seed,
                    &self.config,
                    at,
                    Invariant::CheckpointRegressed,
                    message,
                    Some(&key),
                );
            }
        }
    }

    /// Batch number `n` of consumer `consumer` (a name unique in the run) of `key` starts in
    /// process `process` (worker id `worker`).
    pub fn batch_start(&self, consumer: &str, n: u64, process: &str, worker: &str, key: &str) -> BatchId {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        state.next_batch += 1;
        state.batch_count += 1;
        state
            .last_start
            .entry(key.to_owned())
            .or_default()
            .insert(process.to_owned(), at);
        let id = BatchId(state.next_batch);
        state.events.push(Event {
            at,
            who: process.to_owned(),
            kind: EventKind::BatchStart,
            key: key.to_owned(),
            detail: format!("{consumer} batch {n}"),
        });
        if let Some(last) = state.forced.get_mut(consumer) {
            *last = Some(at);
        }
        let unfinished: Vec<String> = state
            .parents
            .get(key)
            .into_iter()
            .flatten()
            .filter(|p| {
                !state
                    .table_checkpoints
                    .get(*p)
                    .is_some_and(ExtendedSequenceNumber::is_shard_end)
            })
            .cloned()
            .collect();
        if !unfinished.is_empty() {
            let message = format!(
                "{key}: batch {n} of {consumer} started before its parents {unfinished:?} were \
                 checkpointed SHARD_END"
            );
            Self::fail_locked(
                &mut state,
                self.seed,
                &self.config,
                at,
                Invariant::ParentNotFinished,
                message,
                Some(key),
            );
        }
        state.batches.entry(key.to_owned()).or_default().push(Batch {
            id: id.0,
            consumer: consumer.to_owned(),
            process: process.to_owned(),
            worker: worker.to_owned(),
            start: at,
            end: None,
        });
        id
    }

    /// A shard task `task` of `process` starts for `key`: violates
    /// [`Invariant::DoubleConsumer`] if a previous task of that process still has the key
    /// (started, and not let go of it by [`Monitor::task_end`]).
    pub fn task_start(&self, process: &str, key: &str, task: &str) {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        let slot = (process.to_owned(), key.to_owned());
        if let Some(previous) = state.tasks.get(&slot).cloned() {
            let message = format!(
                "{key}: shard task {task} of {process} started while {previous} still had the key \
                 (two shard tasks of one key in one worker)"
            );
            Self::fail_locked(
                &mut state,
                self.seed,
                &self.config,
                at,
                Invariant::DoubleConsumer,
                message,
                Some(key),
            );
        }
        state.tasks.insert(slot, task.to_owned());
    }

    /// Shard task `task` of `process` lets go of `key` (it releases the lease, or is gone).
    pub fn task_end(&self, process: &str, key: &str, task: &str) {
        let mut state = lock(&self.state);
        let slot = (process.to_owned(), key.to_owned());
        if state.tasks.get(&slot).is_some_and(|t| t == task) {
            state.tasks.remove(&slot);
        }
    }

    /// The batch `id` of `key` ended (completed, or its process crashed).
    pub fn batch_end(&self, key: &str, id: BatchId) {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        let Some(batches) = state.batches.get_mut(key) else {
            return;
        };
        let Some(index) = batches.iter().position(|b| b.id == id.0 && b.end.is_none()) else {
            return;
        };
        batches[index].end = Some(at);
        let ended = batches[index].clone();
        let ended_detail = ended.consumer.clone();
        let process = ended.process.clone();
        state.events.push(Event {
            at,
            who: process,
            kind: EventKind::BatchEnd,
            key: key.to_owned(),
            detail: ended_detail,
        });
        self.check_overlaps(&mut state, key, &ended, at);
        // Forget batches that can no longer overlap anything: ended before the oldest batch
        // still in flight started (or, with none in flight, all of them).
        if let Some(batches) = state.batches.get_mut(key) {
            let oldest = batches.iter().filter(|b| b.end.is_none()).map(|b| b.start).min();
            batches.retain(|b| match (b.end, oldest) {
                (None, _) => true,
                (Some(end), Some(oldest)) => end > oldest,
                (Some(_), None) => false,
            });
        }
    }

    /// Ends every batch in flight of `process` (it crashed: its work stops at once).
    pub fn end_batches_of(&self, process: &str) {
        let open: Vec<(String, BatchId)> = {
            let state = lock(&self.state);
            state
                .batches
                .iter()
                .flat_map(|(key, bs)| {
                    bs.iter()
                        .filter(|b| b.end.is_none() && b.process == process)
                        .map(|b| (key.clone(), BatchId(b.id)))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (key, id) in open {
            self.batch_end(&key, id);
        }
    }

    /// Checks the batch that just ended against the batches of other consumers of the same
    /// lease that started while it ran.
    fn check_overlaps(&self, state: &mut State, key: &str, ended: &Batch, at: Duration) {
        let Some(batches) = state.batches.get(key) else {
            return;
        };
        let end = ended.end.unwrap_or(at);
        let offender = batches.iter().find(|other| {
            other.consumer != ended.consumer
                // The owner of a forced reset may go on until it learns of it: the operator's
                // decision (F8).
                && !state.forced.contains_key(&ended.consumer)
                && !state.forced.contains_key(&other.consumer)
                && other.start >= ended.start
                && other.start < end
                && other.end != Some(other.start)
                && !Self::in_flight_at_move(state, key, &ended.worker, ended.start, other.start)
                // Started at the same instant: either may be the one in flight at the move.
                && !(other.start == ended.start
                    && Self::in_flight_at_move(state, key, &other.worker, other.start, ended.start))
        });
        if let Some(other) = offender.cloned() {
            let named = |t: Duration| -> String {
                let row = state
                    .owners
                    .get(key)
                    .and_then(|o| o.iter().rev().find(|(at, _, _)| *at <= t));
                match row {
                    Some((_, owner, co)) => format!(
                        "owner {}, checkpointOwner {}",
                        owner.as_deref().unwrap_or("-"),
                        co.as_deref().unwrap_or("-")
                    ),
                    None => "never owned".to_owned(),
                }
            };
            let message = format!(
                "{key}: a batch of {} ({:.3}s..{:.3}s; the table said {} at its start) overlaps a \
                 batch of {} started at {:.3}s (the table said {}), and {} had not lost the \
                 lease in the table in between",
                ended.process,
                ended.start.as_secs_f64(),
                end.as_secs_f64(),
                named(ended.start),
                other.process,
                other.start.as_secs_f64(),
                named(other.start),
                ended.worker
            );
            let invariant = if other.process == ended.process {
                Invariant::DoubleConsumer
            } else {
                Invariant::Overlap
            };
            Self::fail_locked(state, self.seed, &self.config, at, invariant, message, Some(key));
        }
    }

    /// A forced admin reset of `key` was written while `owners` (owner and `checkpointOwner`)
    /// held it: their consumers of the key (those started so far) are not checked for overlaps
    /// any more. `kcl-admin reset --force` leaves to the operator the time until an owner
    /// learns of the reset (F8 of docs/coordination.md); a consumer that never learns is
    /// found by [`Monitor::forced_consumers_since`].
    pub fn forced_reset(&self, key: &str, owners: &[String]) {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        let removed = state.forced_owners.entry(key.to_owned()).or_default();
        for owner in owners {
            removed.push((owner.clone(), at));
        }
        let exempt: Vec<String> = state
            .consumers
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(_, worker)| owners.contains(worker))
            .map(|(consumer, _)| consumer.clone())
            .collect();
        for consumer in exempt {
            state.forced.entry(consumer).or_default();
        }
    }

    /// The consumers exempted by a forced reset that started a batch at `since` or later.
    pub fn forced_consumers_since(&self, since: Duration) -> Vec<String> {
        lock(&self.state)
            .forced
            .iter()
            .filter(|(_, last)| last.is_some_and(|at| at >= since))
            .map(|(consumer, _)| consumer.clone())
            .collect()
    }

    /// The shard of `key` ended: `last` is its last record (no record after it is delivered;
    /// its lease is finished once checkpointed `SHARD_END`).
    pub fn shard_ended(&self, key: &str, last: u64) {
        lock(&self.state).shard_ends.insert(key.to_owned(), last);
    }

    /// The last record of the shard of `key`, if it ended.
    pub fn shard_end(&self, key: &str) -> Option<u64> {
        lock(&self.state).shard_ends.get(key).copied()
    }

    /// A child lease `key` was created with `parents` (lease keys): no batch of it may start
    /// before each of them is checkpointed `SHARD_END` in the table.
    pub fn child_created(&self, key: &str, parents: &[String]) {
        lock(&self.state).parents.insert(key.to_owned(), parents.to_vec());
    }

    /// The parents of a child lease (empty for other leases).
    pub fn parents_of(&self, key: &str) -> Vec<String> {
        lock(&self.state).parents.get(key).cloned().unwrap_or_default()
    }

    /// When the checkpoint of `key` became `SHARD_END`, if it did.
    pub fn finished_at(&self, key: &str) -> Option<Duration> {
        lock(&self.state).finished.get(key).copied()
    }

    /// The highest record of `key` delivered so far (0: none).
    pub fn delivered_to(&self, key: &str) -> u64 {
        lock(&self.state).delivered.get(key).copied().unwrap_or(0)
    }

    /// Consumer `consumer` of `key` (in worker `worker`) was created: it has the lease, and
    /// starts once its hand-off is done.
    ///
    /// A consumer of an owner a forced reset removed, created before that owner took the lease
    /// again in the table, holds the lease from before the reset (a take whose confirmation
    /// was answered late): exempt as the owner's other consumers ([`Monitor::forced_reset`]).
    pub fn consumer_created(&self, key: &str, consumer: &str, worker: &str) {
        let mut state = lock(&self.state);
        state
            .consumers
            .entry(key.to_owned())
            .or_default()
            .push((consumer.to_owned(), worker.to_owned()));
        let named_since = |t: Duration| {
            state.owners.get(key).is_some_and(|rows| {
                rows.iter().any(|(at, owner, co)| {
                    *at >= t && (owner.as_deref() == Some(worker) || co.as_deref() == Some(worker))
                })
            })
        };
        let unaware = state
            .forced_owners
            .get(key)
            .is_some_and(|removed| removed.iter().any(|(w, t)| w == worker && !named_since(*t)));
        if unaware {
            state.forced.entry(consumer.to_owned()).or_default();
        }
    }

    /// Consumer `consumer` of `key` starts at `position` (its checkpoint): violates
    /// [`Invariant::Delivery`] if records before it were never delivered. A start at or before
    /// an admin reset's position is the re-delivery the reset asked for.
    pub fn consumer_started(&self, key: &str, consumer: &str, position: u64) {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        let delivered = state.delivered.get(key).copied().unwrap_or(0);
        if position > delivered {
            let message = format!(
                "{key}: consumer {consumer} started at {position}, past the records delivered so \
                 far (up to {delivered})"
            );
            Self::fail_locked(
                &mut state,
                self.seed,
                &self.config,
                at,
                Invariant::Delivery,
                message,
                Some(key),
            );
        }
        if state.resets.get(key).is_some_and(|(_, reset)| position <= *reset) {
            state.resets.remove(key);
        }
    }

    /// A batch of `consumer` delivered the records of `key` after `from` up to `to`: violates
    /// [`Invariant::Delivery`] if it skipped records (started past those delivered so far)
    /// or went past the shard's end.
    pub fn delivered(&self, key: &str, consumer: &str, from: u64, to: u64) {
        let at = self.elapsed();
        let mut state = lock(&self.state);
        let delivered = state.delivered.get(key).copied().unwrap_or(0);
        let end = state.shard_ends.get(key).copied();
        let problem = if from > delivered {
            Some(format!(
                "{key}: a batch of {consumer} delivered {from}..{to}, past the records delivered so \
                 far (up to {delivered})"
            ))
        } else if end.is_some_and(|end| to > end) {
            Some(format!(
                "{key}: a batch of {consumer} delivered up to {to}, past the shard's end {end:?}"
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            Self::fail_locked(
                &mut state,
                self.seed,
                &self.config,
                at,
                Invariant::Delivery,
                message,
                Some(key),
            );
        }
        let max = delivered.max(to);
        state.delivered.insert(key.to_owned(), max);
    }

    /// The admin resets no consumer has resumed from yet: (lease key, when, position).
    pub fn pending_resets(&self) -> Vec<(String, Duration, u64)> {
        lock(&self.state)
            .resets
            .iter()
            .map(|(key, (at, position))| (key.clone(), *at, *position))
            .collect()
    }

    /// Whether `worker` lost `key` in the table at a time in `[from, to]`.
    fn in_flight_at_move(state: &State, key: &str, worker: &str, from: Duration, to: Duration) -> bool {
        state.moves.get(key).is_some_and(|moves| {
            moves
                .iter()
                .any(|m| m.worker == worker && m.at >= from && m.at <= to)
        })
    }
}

/// The record position of a checkpoint (0 for `TRIM_HORIZON` and the other sentinels but
/// `SHARD_END`, which is past every record).
fn position(checkpoint: &ExtendedSequenceNumber) -> u64 {
    if checkpoint.is_shard_end() {
        return u64::MAX;
    }
    checkpoint
        .sequence()
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::ExtendedSequenceNumber;

    fn row(owner: Option<&str>, co: Option<&str>, cp: u64) -> Lease {
        let mut l = Lease::new(
            "s",
            ExtendedSequenceNumber::from_parts(&cp.to_string(), 0).unwrap(),
        );
        l.lease_owner = owner.map(str::to_owned);
        l.checkpoint_owner = co.map(str::to_owned);
        l
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_allows_a_batch_in_flight_at_a_move_and_flags_others() {
        let m = Monitor::new(1, "test");
        m.record("a", EventKind::Take, "s", "from -");
        let a = m.batch_start("a1", 1, "a", "a", "s");
        tokio::time::advance(Duration::from_millis(10)).await;
        m.after_write(
            "b",
            "take",
            Some(&row(Some("a"), None, 1)),
            Some(&row(Some("b"), None, 1)),
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = m.batch_start("b1", 1, "b", "b", "s");
        tokio::time::advance(Duration::from_millis(10)).await;
        m.batch_end("s", a);
        assert!(
            m.violation().is_none(),
            "a's batch was in flight when it lost the lease"
        );
        // a starts again while b processes: not allowed.
        let a2 = m.batch_start("a2", 1, "a", "a", "s");
        tokio::time::advance(Duration::from_millis(10)).await;
        m.batch_end("s", b);
        m.batch_end("s", a2);
        let v = m.violation().expect("overlap");
        assert_eq!(v.invariant, Invariant::Overlap);
        assert!(!v.events.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_batches_started_at_the_instant_of_a_move_are_judged_both_ways() {
        let m = Monitor::new(1, "test");
        // a starts, b takes and starts, all at one instant; a's batch ends after b's.
        let a = m.batch_start("a1", 1, "a", "a", "s");
        m.after_write(
            "b",
            "take",
            Some(&row(Some("a"), None, 1)),
            Some(&row(Some("b"), None, 1)),
        );
        let b = m.batch_start("b1", 1, "b", "b", "s");
        tokio::time::advance(Duration::from_millis(10)).await;
        m.batch_end("s", b);
        tokio::time::advance(Duration::from_millis(10)).await;
        m.batch_end("s", a);
        assert!(m.violation().is_none(), "{:?}", m.violation());
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_flags_a_checkpoint_that_moves_backwards() {
        let m = Monitor::new(1, "test");
        m.after_write(
            "a",
            "checkpoint",
            Some(&row(Some("a"), None, 5)),
            Some(&row(Some("a"), None, 6)),
        );
        assert!(m.violation().is_none());
        m.after_write(
            "a",
            "checkpoint",
            Some(&row(Some("a"), None, 6)),
            Some(&row(Some("a"), None, 4)),
        );
        assert_eq!(m.violation().unwrap().invariant, Invariant::CheckpointRegressed);
    }

    fn with_checkpoint(mut l: Lease, checkpoint: ExtendedSequenceNumber) -> Lease {
        l.checkpoint = checkpoint;
        l
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_allows_a_reset_backwards_and_wants_a_consumer_to_resume_from_it() {
        let m = Monitor::new(1, "test");
        m.consumer_created("s", "a/s/1", "a");
        m.consumer_started("s", "a/s/1", 0);
        m.delivered("s", "a/s/1", 0, 600);
        m.after_write(
            "admin",
            "reset",
            Some(&row(Some("a"), None, 500)),
            Some(&row(None, None, 100)),
        );
        assert!(
            m.violation().is_none(),
            "a reset may move the checkpoint back: {:?}",
            m.violation()
        );
        assert_eq!(m.pending_resets().len(), 1);
        // A consumer that starts past the reset's position does not resume from it.
        m.consumer_started("s", "b/s/1", 500);
        assert_eq!(m.pending_resets().len(), 1);
        m.consumer_started("s", "c/s/1", 100);
        assert!(m.pending_resets().is_empty());
        assert!(m.violation().is_none());
        // A consumer that starts past every record delivered skipped some.
        m.consumer_started("s", "d/s/1", 700);
        assert_eq!(m.violation().unwrap().invariant, Invariant::Delivery);
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_flags_a_child_batch_before_its_parent_is_finished() {
        let m = Monitor::new(1, "test");
        m.shard_ended("p", 50);
        m.child_created("c", &["p".to_owned()]);
        m.delivered("p", "a/p/1", 0, 50);
        let b = m.batch_start("a/c/1", 1, "a", "a", "c");
        m.batch_end("c", b);
        assert_eq!(m.violation().unwrap().invariant, Invariant::ParentNotFinished);

        let m = Monitor::new(1, "test");
        m.shard_ended("p", 50);
        m.child_created("c", &["p".to_owned()]);
        m.delivered("p", "a/p/1", 0, 50);
        let mut before = row(Some("a"), None, 50);
        before.lease_key = "p".to_owned();
        let after = with_checkpoint(before.clone(), ExtendedSequenceNumber::ShardEnd);
        m.after_write("a", "checkpoint", Some(&before), Some(&after));
        let b = m.batch_start("a/c/1", 1, "a", "a", "c");
        m.batch_end("c", b);
        assert!(m.violation().is_none(), "{:?}", m.violation());
        assert!(m.finished_at("p").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_flags_shard_end_before_the_last_record_and_records_past_the_end() {
        let m = Monitor::new(1, "test");
        m.shard_ended("p", 50);
        m.delivered("p", "a/p/1", 0, 40);
        let mut before = row(Some("a"), None, 40);
        before.lease_key = "p".to_owned();
        let after = with_checkpoint(before.clone(), ExtendedSequenceNumber::ShardEnd);
        m.after_write("a", "checkpoint", Some(&before), Some(&after));
        assert_eq!(m.violation().unwrap().invariant, Invariant::Delivery);

        let m = Monitor::new(1, "test");
        m.shard_ended("p", 50);
        m.delivered("p", "a/p/1", 0, 60);
        assert_eq!(m.violation().unwrap().invariant, Invariant::Delivery);
    }

    #[tokio::test(start_paused = true)]
    async fn sim_monitor_exempts_the_owner_of_a_forced_reset_until_it_learns() {
        let m = Monitor::new(1, "test");
        m.consumer_created("s", "a/s/1", "a");
        m.consumer_started("s", "a/s/1", 0);
        m.after_write(
            "admin",
            "reset",
            Some(&row(Some("a"), None, 5)),
            Some(&row(None, None, 0)),
        );
        m.forced_reset("s", &["a".to_owned()]);
        // a has not learnt yet and starts a batch; b takes the reset row and starts too.
        tokio::time::advance(Duration::from_millis(10)).await;
        let a = m.batch_start("a/s/1", 1, "a", "a", "s");
        m.after_write(
            "b",
            "take",
            Some(&row(None, None, 0)),
            Some(&row(Some("b"), None, 0)),
        );
        let b = m.batch_start("b/s/1", 1, "b", "b", "s");
        tokio::time::advance(Duration::from_millis(10)).await;
        m.batch_end("s", a);
        m.batch_end("s", b);
        assert!(m.violation().is_none(), "{:?}", m.violation());
        // A consumer a learns of late (a take confirmed by a read served before the reset) is
        // exempt too; one of a new take of a is not (not listed below).
        m.consumer_created("s", "a/s/2", "a");
        m.after_write(
            "b",
            "evict",
            Some(&row(Some("b"), None, 0)),
            Some(&row(None, None, 0)),
        );
        m.after_write(
            "a",
            "take",
            Some(&row(None, None, 0)),
            Some(&row(Some("a"), None, 0)),
        );
        m.consumer_created("s", "a/s/3", "a");
        let a2 = m.batch_start("a/s/2", 1, "a", "a", "s");
        let a3 = m.batch_start("a/s/3", 1, "a", "a", "s");
        tokio::time::advance(Duration::from_millis(10)).await;
        m.batch_end("s", a2);
        m.batch_end("s", a3);
        assert!(m.violation().is_none(), "{:?}", m.violation());
        // Still processing once the faults stopped: it never learnt.
        assert_eq!(
            m.forced_consumers_since(Duration::ZERO),
            vec!["a/s/1".to_owned(), "a/s/2".to_owned()]
        );
        assert!(m.forced_consumers_since(Duration::from_secs(1)).is_empty());
    }
}
