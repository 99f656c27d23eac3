//! A lease this worker holds ([`HeldLease`]): the row as last written, its status, and its
//! validity; and the worker's own validity ([`Liveness`]) as its heartbeats establish it.
//!
//! A held lease may be processed while it is *valid*: held, and
//! - per-lease renewal: renewed recently enough ([`owner_validity`], 98 % of `failover_time`,
//!   after the *start* of its last successful renewal), and
//! - whenever heartbeats are on: the worker's heartbeat is valid (98 % of `failover_time` after
//!   the start of its last successful heartbeat, and every heartbeat completed before the
//!   previous validity ran out), the host was not suspended since, and the validity is the one
//!   the lease was taken in (a *generation*: a lapse ends every lease taken before it). Another
//!   worker only declares this one dead `failover_time` after it *saw* the last heartbeat,
//!   by a read issued after that, which is later.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::coordinator::metric_names::{LOST_LEASES, RENEW_FAILURES};
use crate::error::{LeaseError, Result};
use crate::heartbeat::LeaseRenewal;
use crate::journal::{Journal, JournalEvent};
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;
use crate::stream::StreamIdentifier;
use crate::suspend::SuspendDetector;

/// This worker's own validity, from its heartbeats.
#[derive(Debug)]
pub struct Liveness {
    state: Mutex<Heartbeating>,
    renewal: LeaseRenewal,
    /// A suspended host: the monotonic clock behind every validity stood still.
    suspend: SuspendDetector,
    /// A heartbeat marked `lapsed` may have landed, and none without the mark has succeeded
    /// since: the others may be taking this worker's leases as a dead worker's, so it takes
    /// nothing.
    announced_lapsed: AtomicBool,
    /// Counts the ends of this worker's validity (lapses, suspends, a foreign process on its
    /// id). A lease taken in one generation is never processed in a later one: a take still in
    /// flight when the validity ran out must not come back to life with the next heartbeat
    /// (the others may have judged this worker dead in between and taken the lease).
    generation: AtomicU64,
    /// The heartbeat table answered a call of this process (see [`Liveness::table_answered`]).
    table_answered: AtomicBool,
    /// The process's clock: every validity is measured with it.
    clock: Clock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Heartbeating {
    /// No heartbeat attempted yet (a coordinator driven by hand, as in tests): leases are
    /// renewed one by one and judged by that alone.
    NotStarted,
    /// The coordinator runs but no heartbeat has succeeded yet: nothing may be processed or
    /// taken until one does (or the store turns out to have no heartbeats at all). A process
    /// whose first heartbeats fail (a throttle, a lost reply, a row of another process with
    /// the same id) must not take its id's leases as if it were valid.
    Starting,
    /// The store has no heartbeats: as `NotStarted`.
    Unsupported,
    /// Heartbeats work; the worker is valid until then.
    Valid(Instant),
    /// The last valid heartbeat is older than the failover time: nothing this worker held may
    /// be processed, and nothing is taken until a new heartbeat succeeds.
    Lapsed,
    /// Another process writes the heartbeat row of this worker id: this one holds, takes and
    /// processes nothing until that row stands still for the failover time.
    IdInUse,
}

/// How long after the start of its last successful renewal or heartbeat a worker may go on
/// processing: the failover time less a margin of 2 % (at least 1 ms) for clocks whose rates
/// differ (NTP slews a clock by at most 0.05 %) and for the time between a validity check and
/// the first record of a batch. Another worker waits the whole failover time by its own clock.
pub fn owner_validity(failover_time: Duration) -> Duration {
    failover_time.saturating_sub((failover_time / 50).max(Duration::from_millis(1)))
}

/// What a successful heartbeat did to the worker's validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeatOutcome {
    /// Validity extended (or established).
    Valid,
    /// The heartbeat completed after the validity had run out: every held lease must be given
    /// up; the next heartbeat starts a fresh validity.
    Lapsed,
}

impl Liveness {
    /// A worker that renews its leases as `renewal` says once heartbeats work.
    pub fn new(renewal: LeaseRenewal) -> Self {
        Self::with_suspend_detector(renewal, SuspendDetector::new())
    }

    /// As [`Liveness::new`], watching for a suspended host with `suspend`.
    pub fn with_suspend_detector(renewal: LeaseRenewal, suspend: SuspendDetector) -> Self {
        Self {
            state: Mutex::new(Heartbeating::NotStarted),
            renewal,
            suspend,
            announced_lapsed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            table_answered: AtomicBool::new(false),
            clock: Clock::default(),
        }
    }

    /// As it is, measuring time with `clock` (the simulator: a process's own clock).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The process's clock (Tokio's, but in the simulator).
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Records that the heartbeat table answered a call of this process with anything but
    /// "unusable" (a success, a conflict, a throttle, a timeout whose write may have landed):
    /// the table is in use, so rows of this worker id may be in it and the others may judge
    /// this worker by them. From now on the table's being unusable is a failed heartbeat, never
    /// a switch to coordinating without heartbeats (see [`Liveness::set_unsupported`]).
    pub fn table_answered(&self) {
        self.table_answered.store(true, Ordering::SeqCst);
    }

    /// Whether heartbeats are in use, or the heartbeat table answered this process before
    /// (see [`Liveness::table_answered`]).
    pub fn table_in_use(&self) -> bool {
        self.heartbeats_active() || self.table_answered.load(Ordering::SeqCst)
    }

    /// Marks the start of a coordinator's run: invalid until a heartbeat succeeds.
    pub fn set_starting(&self) {
        let mut state = lock(&self.state);
        if *state == Heartbeating::NotStarted {
            *state = Heartbeating::Starting;
        }
    }

    /// The current generation (see the field's docs).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether the validity has run out (the next heartbeat is written marked `lapsed`).
    pub fn is_lapsed(&self) -> bool {
        self.state() == Heartbeating::Lapsed
    }

    /// Records that a heartbeat marked `lapsed` (or not) is being written, or that one not
    /// marked succeeded (see [`Liveness::may_take`]).
    pub fn announce_lapsed(&self, lapsed: bool) {
        self.announced_lapsed.store(lapsed, Ordering::SeqCst);
    }

    /// Whether this worker may take leases: valid, and no heartbeat marked `lapsed` may stand
    /// as its latest in the table.
    pub fn may_take(&self, now: Instant) -> bool {
        self.is_valid(now) && !self.announced_lapsed.load(Ordering::SeqCst)
    }

    /// If the host was suspended since the validity began (see [`crate::suspend`]): the time
    /// it slept. The validity is then over (lapsed), and a fresh one starts with the next
    /// heartbeat.
    ///
    /// Every generation ends, whatever the state: a worker without heartbeats measures each
    /// lease's validity from the start of its take or renewal, and a take still in flight while
    /// the host slept started before the sleep (found by the simulator: seed 32792 at 8
    /// workers, 32 shards, per-lease renewal, a worker without heartbeats whose take's answer
    /// came after its host was suspended, processed the lease by its take's validity after
    /// another worker had taken it).
    pub fn check_suspend(&self) -> Option<Duration> {
        let missed = self.suspend.suspended()?;
        self.suspend.rebase();
        let mut state = lock(&self.state);
        if let Heartbeating::Valid(_) = *state {
            *state = Heartbeating::Lapsed;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        Some(missed)
    }

    fn state(&self) -> Heartbeating {
        *lock(&self.state)
    }

    /// Whether the worker may process leases at `now` (as far as its heartbeats go).
    pub fn is_valid(&self, now: Instant) -> bool {
        if self.suspend.suspended().is_some() {
            return false;
        }
        match self.state() {
            Heartbeating::NotStarted | Heartbeating::Unsupported => true,
            Heartbeating::Valid(until) => now < until,
            Heartbeating::Starting | Heartbeating::Lapsed | Heartbeating::IdInUse => false,
        }
    }

    /// Whether another process writes this worker id's heartbeat row (see
    /// [`Liveness::set_id_in_use`]).
    pub fn id_in_use(&self) -> bool {
        self.state() == Heartbeating::IdInUse
    }

    /// Records that another process writes this worker id's heartbeat row: nothing may be
    /// processed or taken until a heartbeat of this process succeeds again.
    pub fn set_id_in_use(&self) {
        *lock(&self.state) = Heartbeating::IdInUse;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether heartbeats are in use (written successfully at least once, and not found
    /// unsupported since).
    pub fn heartbeats_active(&self) -> bool {
        matches!(self.state(), Heartbeating::Valid(_) | Heartbeating::Lapsed)
    }

    /// Whether the store was found to have no heartbeats.
    pub fn unsupported(&self) -> bool {
        self.state() == Heartbeating::Unsupported
    }

    /// How leases are renewed now: as configured while heartbeats work, else one by one.
    pub fn renewal(&self) -> LeaseRenewal {
        if self.heartbeats_active() {
            self.renewal
        } else {
            LeaseRenewal::PerLease
        }
    }

    /// A heartbeat that started at `start` and completed at `end` succeeded.
    pub fn beat(&self, start: Instant, end: Instant, failover_time: Duration) -> BeatOutcome {
        let mut state = lock(&self.state);
        match *state {
            Heartbeating::Valid(until) if end >= until => {
                *state = Heartbeating::Lapsed;
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.generation.fetch_add(1, Ordering::SeqCst);
                BeatOutcome::Lapsed
            }
            Heartbeating::Valid(until) => {
                *state = Heartbeating::Valid(until.max(start + owner_validity(failover_time)));
                BeatOutcome::Valid
            }
            _ => {
                *state = Heartbeating::Valid(start + owner_validity(failover_time));
                BeatOutcome::Valid
            }
        }
    }

    /// Marks the validity run out if it has by `now`; returns whether it did just now.
    /// A suspended host lapses too, in any state (see [`Liveness::check_suspend`]).
    pub fn check_lapse(&self, now: Instant) -> bool {
        if let Some(missed) = self.check_suspend() {
            warn!(
                ?missed,
                "the host was suspended: the monotonic clock stood still while it slept"
            );
            return true;
        }
        let mut state = lock(&self.state);
        match *state {
            Heartbeating::Valid(until) if now >= until => {
                *state = Heartbeating::Lapsed;
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.generation.fetch_add(1, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Records that the store has no heartbeats, unless heartbeats have worked before or the
    /// heartbeat table answered before ([`Liveness::table_answered`]): a worker
    /// that the others judge by its heartbeat must never go on without one (they would take
    /// its leases as a dead worker's while it processes them), so for it the failure is just a
    /// failed heartbeat (it lapses, and gives up everything). Returns whether the worker now
    /// coordinates without heartbeats.
    pub fn set_unsupported(&self) -> bool {
        if self.table_answered.load(Ordering::SeqCst) {
            return false;
        }
        let mut state = lock(&self.state);
        match *state {
            Heartbeating::NotStarted | Heartbeating::Starting | Heartbeating::Unsupported => {
                *state = Heartbeating::Unsupported;
                true
            }
            _ => false,
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
    pub(crate) key: String,
    /// The shard, and the stream of a multi-stream lease (fixed for the lease's lifetime).
    shard_id: String,
    stream: Option<StreamIdentifier>,
    worker_id: String,
    failover_time: Duration,
    store: Arc<dyn LeaseStore>,
    pub(crate) row: tokio::sync::Mutex<Lease>,
    valid_until: Mutex<Instant>,
    /// When the oldest renewal whose outcome is unknown (it failed without a conflict) started:
    /// if the row later shows it was applied, the lease was renewed no earlier than this.
    unconfirmed_since: Mutex<Option<Instant>>,
    status: watch::Sender<LeaseStatus>,
    /// Set when this worker let the lease go on purpose (so that it is not counted as lost).
    pub(crate) released: AtomicBool,
    lost_counted: AtomicBool,
    /// The worker's own validity.
    liveness: Arc<Liveness>,
    /// A renewal of this lease is in flight (at most one at a time).
    pub(crate) renewing: AtomicBool,
    /// How long one renewal call may take.
    call_timeout: Duration,
    /// The shard's throughput as its consumer last measured it (KB/s), written to the row's
    /// `throughputKBps` with the next renewal or checkpoint.
    throughput_kbps: Mutex<Option<f64>>,
    /// The worker's journal of moves and errors.
    journal: Arc<Journal>,
    /// The worker's liveness generation when the take of this lease began.
    generation: u64,
    /// Whether a graceful steal of this lease may be completed without the previous owner
    /// (given its id) once the failover time has passed; always when `None`.
    handoff_check: Option<HandoffCheck>,
    /// The thief of a graceful steal of this lease, as this worker learnt of it: its last
    /// checkpoints are written only while the thief still owns the lease.
    handoff_to: Mutex<Option<String>>,
    /// The counter of the row the thief stole from this holding (`handoffFromCounter`), once
    /// a hand-off is requested: the hand-off checkpoint is conditional on it.
    handoff_from: Mutex<Option<u64>>,
}

/// What the heartbeats prove about a stolen lease's previous owner (its worker id): dead (the
/// hand-off may be completed at once), live and renewing through its heartbeat (it stops only
/// when it has seen the steal, which it then completes itself), or anything else (it stops by
/// the failover time: its renewals conflict).
pub(crate) type HandoffCheck = Arc<dyn Fn(&str) -> crate::heartbeat::WorkerStatus + Send + Sync>;

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
    // Called from one place (the coordinator's `new_held`), with the worker's shared parts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        row: Lease,
        worker_id: &str,
        failover_time: Duration,
        store: Arc<dyn LeaseStore>,
        at: Instant,
        liveness: Arc<Liveness>,
        call_timeout: Duration,
        journal: Arc<Journal>,
    ) -> Self {
        Self {
            key: row.lease_key.clone(),
            shard_id: row.shard_id().to_owned(),
            stream: row.stream(),
            worker_id: worker_id.to_owned(),
            failover_time,
            store,
            row: tokio::sync::Mutex::new(row),
            valid_until: Mutex::new(at + owner_validity(failover_time)),
            unconfirmed_since: Mutex::new(None),
            status: watch::channel(LeaseStatus::Held).0,
            released: AtomicBool::new(false),
            lost_counted: AtomicBool::new(false),
            liveness,
            renewing: AtomicBool::new(false),
            call_timeout,
            throughput_kbps: Mutex::new(None),
            journal,
            handoff_check: None,
            generation: 0,
            handoff_to: Mutex::new(None),
            handoff_from: Mutex::new(None),
        }
    }

    /// The row a checkpoint is conditional on: the one this worker knows, or during a hand-off
    /// the hand-off as this worker learnt of it (its thief as owner, this worker as
    /// `checkpointOwner`: see [`LeaseStore::update_checkpoint`]).
    fn as_written(&self, row: &Lease) -> Lease {
        match (self.status(), lock(&self.handoff_to).clone()) {
            (LeaseStatus::HandoffRequested, Some(thief)) => Lease {
                lease_owner: Some(thief),
                checkpoint_owner: Some(self.worker_id.clone()),
                lease_counter: lock(&self.handoff_from).unwrap_or(row.lease_counter),
                ..row.clone()
            },
            _ => row.clone(),
        }
    }

    /// The hand-off this holding learnt of, as the row showed it: its thief as owner, this
    /// worker as `checkpointOwner` and the counter it was stolen from. Completing it is
    /// conditional on all three ([`LeaseStore::complete_handoff`]).
    pub(crate) fn handoff(&self) -> Option<Lease> {
        let thief = lock(&self.handoff_to).clone()?;
        Some(Lease {
            lease_owner: Some(thief),
            checkpoint_owner: Some(self.worker_id.clone()),
            handoff_from_counter: *lock(&self.handoff_from),
            ..Lease::new(self.key.clone(), ExtendedSequenceNumber::TrimHorizon)
        })
    }

    /// The counters the row may have now if nobody else wrote it since this worker last did:
    /// the one it knows, and the next one if a write of its own may have been applied unseen.
    /// `None` while a write is in flight.
    pub(crate) fn own_counters(&self) -> Option<(u64, u64)> {
        let row = self.row.try_lock().ok()?;
        let unconfirmed = lock(&self.unconfirmed_since).is_some();
        Some((row.lease_counter, row.lease_counter + u64::from(unconfirmed)))
    }

    /// [`HeldLease::own_counters`] once the writes in flight are done: for a lease whose task
    /// let it go, so that a renewal that was waiting for the row (it writes nothing now, see
    /// [`HeldLease::renew`]) does not leave the row unrecorded.
    pub(crate) async fn settled_own_counters(&self) -> (u64, u64) {
        let row = self.row.lock().await;
        let unconfirmed = lock(&self.unconfirmed_since).is_some();
        (row.lease_counter, row.lease_counter + u64::from(unconfirmed))
    }

    /// Sets the liveness generation in which the take of this lease began.
    pub(crate) fn in_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// Sets the check of [`HeldLease::wait_for_handoff`] (see [`HandoffCheck`]).
    pub(crate) fn with_handoff_check(mut self, check: HandoffCheck) -> Self {
        self.handoff_check = Some(check);
        self
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

    /// Records the shard's measured throughput in KB/s (1 KB = 1024 bytes, the Java KCL 3.x's
    /// unit). It is published on the row's `throughputKBps` by the next write this worker makes
    /// to the row anyway (a renewal, or a checkpoint), so publishing costs no extra write.
    pub fn set_throughput_kbps(&self, kbps: f64) {
        if kbps.is_finite() && kbps >= 0.0 {
            *lock(&self.throughput_kbps) = Some(kbps);
        }
    }

    /// The throughput last recorded with [`HeldLease::set_throughput_kbps`].
    pub fn throughput_kbps(&self) -> Option<f64> {
        *lock(&self.throughput_kbps)
    }

    /// Puts the measured throughput on `row` before a write, so that the write publishes it.
    fn attach_throughput(&self, row: &mut Lease) {
        if let Some(kbps) = self.throughput_kbps() {
            row.throughput_kbps = Some(kbps);
        }
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
        let now = self.liveness.clock().now();
        self.status() == LeaseStatus::Held
            && self.liveness.is_valid(now)
            && self.liveness.generation() == self.generation
            && (self.liveness.renewal() == LeaseRenewal::Worker || now < *lock(&self.valid_until))
    }

    /// The row as this worker last wrote or read it.
    pub async fn lease(&self) -> Lease {
        self.row.lock().await.clone()
    }

    /// Marks the lease lost (for example when the shard task learns it from a failed write).
    pub fn mark_lost(&self) {
        self.set_status(LeaseStatus::Lost);
    }

    pub(crate) fn set_status(&self, status: LeaseStatus) {
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
                self.journal.record(Some(&self.key), JournalEvent::Lost);
            }
        }
    }

    /// Records the hand-off `row` shows, as this holding's: its thief and the counter it stole
    /// from (the hand-off checkpoint is conditional on both; see [`HeldLease::as_written`]).
    fn note_handoff(&self, row: &Lease) {
        *lock(&self.handoff_to) = row.lease_owner.clone();
        *lock(&self.handoff_from) = row.handoff_from_counter;
    }

    /// Classifies a failed conditional write from the row the store returned. `mine` is the
    /// counter of the row this holding last wrote: a hand-off names it only if it was stolen
    /// from that row (`handoffFromCounter`; see [`Lease::handoff_from_counter`]), or from the
    /// next one when a write of this holding may have been applied unseen. One that names this
    /// worker id but another holding (an earlier or later process with the same id) is a lost
    /// lease here, never a hand-off to write as `checkpointOwner` or complete (found by the
    /// simulator: seed 13304 at 8 workers, 32 shards, per-lease renewal).
    pub(crate) fn on_conflict(&self, actual: Option<&Lease>, mine: u64) {
        let unconfirmed = lock(&self.unconfirmed_since).is_some();
        let ours = |c: u64| c == mine || (unconfirmed && c == mine + 1);
        match actual {
            Some(row)
                if row.checkpoint_owner.as_deref() == Some(&self.worker_id)
                    && !row.is_owned_by(&self.worker_id)
                    && row.handoff_from_counter.is_none_or(ours) =>
            {
                info!(lease = %self.key, new_owner = ?row.lease_owner, "graceful hand-off requested");
                self.note_handoff(row);
                if self.status() == LeaseStatus::Held {
                    self.journal
                        .record(Some(&self.key), JournalEvent::HandoffRequested);
                }
                self.set_status(LeaseStatus::HandoffRequested);
            }
            _ => {
                info!(lease = %self.key, "lease lost");
                self.set_status(LeaseStatus::Lost);
            }
        }
    }

    /// Renews the lease once (per-lease renewal only; with worker renewal the heartbeat keeps
    /// it). Only a [`LeaseStatus::Held`] lease is renewed. The call may take at most the renew
    /// interval: a slow or hung call never holds up other leases, and the next renewal tries
    /// again.
    pub async fn renew(&self) {
        if self.status() != LeaseStatus::Held || self.liveness.renewal() == LeaseRenewal::Worker {
            return;
        }
        let mut row = self.row.lock().await;
        // Again with the row in hand: this renewal may have waited for another write (a slow
        // checkpoint) while the lease was given up and its task let it go. Renewing it then
        // would restart the other workers' failover clock on a lease nobody processes, with a
        // counter this worker did not record as its own (found by the simulator: seed 277 at
        // 8 workers, 32 shards, per-lease renewal, left a shard unprocessed after the faults).
        if self.status() != LeaseStatus::Held {
            return;
        }
        self.attach_throughput(&mut row);
        // Without heartbeats the row says so: a heartbeat row under this worker id (another
        // process's, a former one's) must not make the others judge the lease by it.
        row.owner_without_heartbeat = self.liveness.unsupported().then(|| self.worker_id.clone());
        let started = self.liveness.clock().now();
        let result = match self
            .liveness
            .clock()
            .timeout(self.call_timeout, self.store.renew(&row))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(LeaseError::backend(format!(
                "renewal did not complete within {:?}",
                self.call_timeout
            ))),
        };
        match result {
            Ok(new) => {
                *row = new;
                *lock(&self.valid_until) = started + owner_validity(self.failover_time);
                *lock(&self.unconfirmed_since) = None;
            }
            // An earlier write that timed out (or whose answer was lost) may have been applied
            // after all: the row is still ours, with a newer counter. Adopt it and renew it next
            // time. If an unconfirmed renewal explains it, the lease was renewed no earlier than
            // that renewal started: valid until then plus the failover time (never later than
            // the truth, so safe); otherwise the validity is left as it was.
            Err(LeaseError::Conflict { actual, .. }) => {
                match self.adopt_after_conflict(&mut row, actual).await {
                    Ok(()) => {
                        if let Some(since) = lock(&self.unconfirmed_since).take() {
                            let mut until = lock(&self.valid_until);
                            *until = (*until).max(since + owner_validity(self.failover_time));
                        }
                    }
                    Err(actual) => self.on_conflict(actual.as_deref(), row.lease_counter),
                }
            }
            Err(LeaseError::NotFound(_)) => self.set_status(LeaseStatus::Lost),
            Err(e) => {
                self.note_unconfirmed(&e, started);
                let deadline = *lock(&self.valid_until);
                warn!(lease = %self.key, error = %e, "renewal failed");
                self.journal
                    .error(Some(&self.key), format_args!("renewal failed: {e}"));
                metrics::counter!(RENEW_FAILURES, "worker_id" => self.worker_id.clone()).increment(1);
                if self.liveness.clock().now() >= deadline {
                    info!(lease = %self.key, "lease not renewed within the failover time: giving it up");
                    self.set_status(LeaseStatus::Lost);
                }
            }
        }
    }

    /// A second write after a conflict was explained: its failure is noted as the first one's
    /// would be ([`HeldLease::failed_write`]).
    async fn rewrite(&self, write: impl std::future::Future<Output = Result<Lease>>) -> Result<Lease> {
        let started = self.liveness.clock().now();
        write.await.map_err(|e| self.failed_write(e, started))
    }

    /// What a write that started at `started` and failed with `e` (not a conflict) means: the
    /// row is gone (deleted by the clean-up of a former stream, or by hand: nothing may be
    /// processed under it), or the write may have been applied ([`HeldLease::note_unconfirmed`]).
    fn failed_write(&self, e: LeaseError, started: Instant) -> LeaseError {
        match &e {
            LeaseError::NotFound(_) => self.set_status(LeaseStatus::Lost),
            other => self.note_unconfirmed(other, started),
        }
        e
    }

    /// A write that started at `started` failed with `e`: if it may have been applied (not a
    /// throttle, not a conflict), remember it, so that the row it would have written can be
    /// recognised as this worker's own ([`HeldLease::adopt_after_conflict`]).
    fn note_unconfirmed(&self, e: &LeaseError, started: Instant) {
        if matches!(e, LeaseError::Backend(_)) {
            lock(&self.unconfirmed_since).get_or_insert(started);
        }
    }

    /// After a failed conditional write: the row as it is now (as the store returned it with
    /// the conflict, else read again). If it is `row` moved on by a write of this worker that
    /// reported failure but was applied (still ours, no hand-off, a newer counter), nothing was
    /// lost: `row` becomes it (`Ok`). Otherwise `Err` with the row as it is now, if known.
    async fn adopt_after_conflict(
        &self,
        row: &mut Lease,
        actual: Option<Box<Lease>>,
    ) -> std::result::Result<(), Option<Box<Lease>>> {
        let current = match actual {
            Some(current) => Some(*current),
            None => match self.store.get(&self.key).await {
                Ok(current) => current,
                Err(e) => {
                    warn!(lease = %self.key, error = %e, "re-reading the lease after a conflict failed");
                    None
                }
            },
        };
        match current {
            // Exactly one write further, and a write of this worker's whose outcome is unknown
            // to explain it: any other change is another process's (even one with the same
            // worker id), and the lease is lost.
            Some(current)
                if self.status() == LeaseStatus::Held
                    && lock(&self.unconfirmed_since).is_some()
                    && current.is_owned_by(&self.worker_id)
                    && current.checkpoint_owner.is_none()
                    && current.lease_counter == row.lease_counter + 1 =>
            {
                info!(lease = %self.key, counter = current.lease_counter, "an earlier write was applied after all; going on");
                *row = current;
                Ok(())
            }
            current => Err(current.map(Box::new)),
        }
    }

    /// Learns of a change of owner from a (possibly stale) scan of the table: if `scanned` is
    /// newer than the row this worker last wrote and names another owner, the lease is lost or
    /// a hand-off was requested. With worker renewal there are no renewals to learn it from.
    ///
    /// Returns whether the check was made: not while a write of this worker to the row is in
    /// flight (its outcome decides what the scanned row means); the caller checks again later.
    pub(crate) fn reconcile(&self, scanned: &Lease) -> bool {
        if self.status() == LeaseStatus::Lost || scanned.is_owned_by(&self.worker_id) {
            return true;
        }
        let Ok(row) = self.row.try_lock() else {
            return false;
        };
        if scanned.lease_counter > row.lease_counter {
            let mine = row.lease_counter;
            drop(row);
            self.on_conflict(Some(scanned), mine);
        }
        true
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
        self.attach_throughput(&mut row);
        let started = self.liveness.clock().now();
        let result = self
            .store
            .update_checkpoint(&self.as_written(&row), &self.worker_id, checkpoint)
            .await;
        match result {
            Ok(new) => {
                // The write can succeed as `checkpointOwner` of a hand-off this worker has not
                // noticed yet (another worker stole the lease since the last renewal). Then the
                // row belongs to the new owner: never adopt it (renewing it would renew the
                // thief's lease), keep only the checkpoint and start handing over.
                if self.status() == LeaseStatus::Held && new.is_owned_by(&self.worker_id) {
                    *row = new.clone();
                    // Conditional on the row this worker knew: no earlier write of its own was
                    // applied in between.
                    *lock(&self.unconfirmed_since) = None;
                } else {
                    row.checkpoint = new.checkpoint.clone();
                    if !new.is_owned_by(&self.worker_id) {
                        info!(lease = %self.key, new_owner = ?new.lease_owner, "graceful hand-off requested");
                        self.note_handoff(&new);
                        self.set_status(LeaseStatus::HandoffRequested);
                    }
                }
                Ok(new)
            }
            Err(LeaseError::Conflict { key, actual }) => {
                let adopted = self.adopt_after_conflict(&mut row, actual).await;
                if adopted.is_ok() {
                    *lock(&self.unconfirmed_since) = None;
                }
                let actual = match adopted {
                    Ok(()) if *checkpoint < row.checkpoint => {
                        // An earlier, higher checkpoint of this worker reported failure but was
                        // applied: it stays (the processor had got that far); writing this
                        // lower one on top would move the checkpoint backwards.
                        info!(lease = %self.key, kept = %row.checkpoint, requested = %checkpoint,
                            "a higher checkpoint was applied after all; not moving it back");
                        return Ok(row.clone());
                    }
                    Ok(()) => {
                        // An earlier write reported failure but was applied: write again on top.
                        let new = self
                            .rewrite(self.store.update_checkpoint(&row, &self.worker_id, checkpoint))
                            .await?;
                        *row = new.clone();
                        return Ok(new);
                    }
                    Err(actual) => actual,
                };
                let handoff = self.status() == LeaseStatus::HandoffRequested;
                self.on_conflict(actual.as_deref(), row.lease_counter);
                if let Some(ended) = actual.as_deref().filter(|current| {
                    self.status() == LeaseStatus::HandoffRequested
                        && current.checkpoint.is_shard_end()
                        && !checkpoint.is_shard_end()
                }) {
                    // The shard's end is checkpointed already, by an earlier write of this
                    // worker whose reply was lost: while `checkpointOwner` names this worker,
                    // nobody else writes a checkpoint. Every record was processed, so the
                    // hand-off may complete on it; the store refuses a lower checkpoint on top
                    // (simulator seed 6221, worker renewal, 8 x 32).
                    info!(lease = %self.key, requested = %checkpoint,
                        "the shard's end was checkpointed after all; keeping SHARD_END");
                    row.checkpoint = ended.checkpoint.clone();
                    return Ok(ended.clone());
                }
                if !handoff && self.status() == LeaseStatus::HandoffRequested {
                    // Stolen gracefully in between: we may still checkpoint as checkpoint owner
                    // (while the thief still owns the lease).
                    let new = self
                        .rewrite(self.store.update_checkpoint(
                            &self.as_written(&row),
                            &self.worker_id,
                            checkpoint,
                        ))
                        .await?;
                    row.checkpoint = new.checkpoint.clone();
                    return Ok(new);
                }
                if handoff {
                    self.set_status(LeaseStatus::Lost);
                }
                Err(LeaseError::Conflict { key, actual })
            }
            Err(e) => Err(self.failed_write(e, started)),
        }
    }

    /// Records the children of the ended shard (while held).
    pub async fn mark_children(&self, children: &BTreeSet<String>) -> Result<Lease> {
        let mut row = self.row.lock().await;
        if self.status() != LeaseStatus::Held {
            return Err(self.lost_error());
        }
        let started = self.liveness.clock().now();
        match self.store.mark_children(&row, children).await {
            Ok(new) => {
                *row = new.clone();
                Ok(new)
            }
            Err(LeaseError::Conflict { key, actual }) => {
                let actual = match self.adopt_after_conflict(&mut row, actual).await {
                    Ok(()) => {
                        let new = self.rewrite(self.store.mark_children(&row, children)).await?;
                        *row = new.clone();
                        return Ok(new);
                    }
                    Err(actual) => actual,
                };
                self.on_conflict(actual.as_deref(), row.lease_counter);
                Err(LeaseError::Conflict { key, actual })
            }
            Err(e) => Err(self.failed_write(e, started)),
        }
    }

    /// When this worker stole the lease with a hand-off: waits until the previous owner has
    /// checkpointed and cleared `checkpointOwner`, or until the failover time has passed (the
    /// previous owner may be dead), then returns the fresh row. Returns at once otherwise.
    ///
    /// A previous owner that renews per lease has stopped by then (its next renewal conflicts,
    /// and its validity ended before). One that renews through its heartbeat learns of the
    /// steal only from a scan or a checkpoint: while it is live (as the heartbeats prove), the
    /// hand-off is never completed without it.
    pub async fn wait_for_handoff(&self, poll: Duration) -> Result<Lease> {
        let deadline = self.liveness.clock().now() + self.failover_time;
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
                    self.liveness.clock().sleep(poll).await;
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
            // A previous owner without heartbeats is judged by nothing but the failover time.
            let previous_status = if fresh.owner_without_heartbeat.as_deref() == Some(previous.as_str()) {
                Some(crate::heartbeat::WorkerStatus::Unknown)
            } else {
                self.handoff_check.as_ref().map(|check| check(&previous))
            };
            let dead = matches!(previous_status, Some(crate::heartbeat::WorkerStatus::Dead(_)));
            let may_complete = !matches!(
                previous_status,
                Some(crate::heartbeat::WorkerStatus::Live(LeaseRenewal::Worker))
            );
            if dead {
                info!(lease = %self.key, %previous, "the previous owner is dead: completing the hand-off");
                match self.store.complete_handoff(&fresh).await {
                    Ok(_) | Err(LeaseError::Conflict { .. }) => row.checkpoint_owner = Some(previous),
                    Err(e) => warn!(lease = %self.key, error = %e, "clearing checkpointOwner failed"),
                }
            } else if self.liveness.clock().now() >= deadline && !may_complete {
                debug!(lease = %self.key, %previous, "the previous owner is live: waiting for it to let go");
            } else if self.liveness.clock().now() >= deadline {
                warn!(lease = %self.key, %previous, "previous owner did not finish the hand-off in time");
                match self.store.complete_handoff(&fresh).await {
                    Ok(_) | Err(LeaseError::Conflict { .. }) => row.checkpoint_owner = Some(previous),
                    Err(e) => warn!(lease = %self.key, error = %e, "clearing checkpointOwner failed"),
                }
                // Re-read on the next turn of the loop.
            }
            drop(row);
            self.liveness.clock().sleep(poll).await;
        }
    }

    fn lost_error(&self) -> LeaseError {
        LeaseError::Conflict {
            key: self.key.clone(),
            actual: None,
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
