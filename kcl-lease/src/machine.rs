//! The lease coordinator's decisions as a pure state machine: no I/O, time passed in.
//!
//! [`crate::coordinator::LeaseCoordinator`] is the thin async driver around this module, as
//! quinn sits on quinn-proto: it makes the calls to the lease and heartbeat tables, feeds what
//! they returned in here, and does what this module says, when it says. Everything that decides
//! is here, in two parts:
//! - [`Schedule`]: which heartbeat rows a watch round reads ([`Schedule::watch_read`],
//!   [`Schedule::watch_targets`]), when the lease table is looked at and why
//!   ([`Schedule::scan_due`]), and when the driver wakes up next: [`Schedule::poll_timeout`]
//!   gives the earliest of its named [`Timer`]s.
//! - [`TakeRound`]: one take round, planned from one scan of the lease table and the strongly
//!   consistent read of the heartbeats made after it ([`TakeRound::plan`]). The driver asks
//!   [`TakeRound::poll_action`] for the next call ([`Action`]: complete a hand-off, mark a dead
//!   worker's row lapsed, announce, take or steal a lease), feeds each result back
//!   (`handle_*`: a take lost to another worker brings a spare lease in), and ends the round
//!   with [`TakeRound::finish`], which says what it leaves for the next.
//!
//! - [`IdWatch`] and [`beat_condition`]: the condition of each heartbeat write, and when a
//!   process whose worker id is in use by another may take the id over.
//!
//! One definition of a live worker ([`WorkerTracker`]: evidence from successful reads, judged
//! as of the time each read was issued) and of an expired lease ([`ExpiryTracker`]); nothing
//! here judges otherwise. The unit tests at the end drive both parts with made-up times.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use crate::balance::{plan_takes, BalanceConfig, ExpiryTracker};
use crate::coordinator::LeaseSettings;
use crate::heartbeat::{FleetFingerprint, HeartbeatCondition, WorkerHeartbeat, WorkerStatus, WorkerTracker};
use crate::lease::Lease;
use crate::load::BalanceMode;

/// At most this many conditional takes are in flight at once in a take round.
pub const TAKE_CONCURRENCY: usize = 32;

/// Fleets of more live workers than this watch more slowly (see [`Schedule::watch_period`]).
pub const WATCH_STRETCH_FROM: usize = 16;

/// Each worker scans the lease table for safety every `live workers × SAFETY_FAILOVERS ×
/// failover_time` (see [`Schedule::safety_interval`]): one scan per `SAFETY_FAILOVERS ×
/// failover_time` for the whole fleet.
pub const SAFETY_FAILOVERS: u32 = 4;

/// A heartbeat row with at most this many beats belongs to a worker that just started (see
/// [`TakeRound::plan`]'s even share).
pub const FRESH_BEATS: u64 = 2;

/// The driver's named timers: what [`Schedule::poll_timeout`] says it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The next watch round (every [`Schedule::watch_period`]).
    Watch,
    /// The moment a watched row, standing still, would make its worker dead.
    WatchedExpiry,
    /// One failover time after a take round's read of every row: every row is read again, so
    /// that a worker that died unwatched (its watcher died with it) is found.
    FollowUp,
}

/// Why the lease table is looked at now ([`Schedule::scan_due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanReason {
    /// Never scanned yet.
    First,
    /// Asked for: a wake, a lapse, a failed round, a lost race, an unfinished dead worker.
    Forced,
    /// No heartbeats: every `take_interval`, as the Java KCL does.
    NoHeartbeats,
    /// A join, leave, death or announcement in the heartbeats since the last scan.
    FleetChanged,
    /// The last round acted, or saw leases judged by their counters: `take_interval` later.
    TakeAgain,
    /// Load-aware balancing: the loads change unannounced.
    Rebalance,
    /// The slow safety scan (`live workers × 4 × failover_time`, jittered).
    Safety,
}

/// Which heartbeat rows a watch round reads ([`Schedule::watch_read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchRead {
    /// The watched row only (the divided watch).
    Watched,
    /// Every row, as the follow-up of a take round: if a worker shows dead that was not, the
    /// lease table is looked at.
    FollowUp,
    /// Every row (the fleet is not known yet, or the store cannot read single rows).
    All,
}

/// When to read what, and when to look at the lease table. See the module docs.
#[derive(Debug)]
pub struct Schedule {
    worker_id: String,
    settings: LeaseSettings,
    /// When the lease table was last scanned.
    last: Option<Instant>,
    /// The fleet that scan answered (see [`WorkerTracker::fingerprint`]).
    fingerprint: FleetFingerprint,
    /// The last round took or stole something: look again after `take_interval`.
    acted: bool,
    /// The last scan saw live-looking leases judged by their counters, or left this worker
    /// short of its share by more than one: look again after `take_interval`.
    unknown_owners: bool,
    /// A scan was asked for.
    forced: bool,
    /// Leases free to take that this worker saw and left to others, as last announced.
    free_announced: BTreeSet<String>,
    /// This worker's count and even share when it last announced that it holds more than its
    /// share (`None` while it does not).
    surplus_announced: Option<(usize, usize)>,
    scans: u64,
    /// When the follow-up read of every row is due.
    follow_up: Option<Instant>,
    /// When the next watch round is due.
    next_watch: Option<Instant>,
    /// The worker whose row the last divided watch round read.
    watching: Option<String>,
    /// Workers whose rows this worker watched when they turned dead (or judged dead, unmarked,
    /// still owning leases): the next take round takes all their leases.
    watched_dead: BTreeSet<String>,
    /// The last (own, watched) pair of differing fleet views acted on.
    view_mismatch: Option<(u64, u64)>,
}

impl Schedule {
    /// The schedule of worker `worker_id` with `settings`: a scan is due at once.
    pub fn new(worker_id: impl Into<String>, settings: LeaseSettings) -> Self {
        Self {
            worker_id: worker_id.into(),
            settings,
            last: None,
            fingerprint: FleetFingerprint::default(),
            acted: false,
            unknown_owners: false,
            forced: false,
            free_announced: BTreeSet::new(),
            surplus_announced: None,
            scans: 0,
            follow_up: None,
            next_watch: None,
            watching: None,
            watched_dead: BTreeSet::new(),
            view_mismatch: None,
        }
    }

    /// Asks for a scan at the next watch round.
    pub fn force(&mut self) {
        self.forced = true;
    }

    /// Scans of the lease table so far.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// The fleet the last scan answered (tests: make the next round's scan consistent).
    #[cfg(test)]
    pub(crate) fn fingerprint_mut(&mut self) -> &mut FleetFingerprint {
        &mut self.fingerprint
    }

    /// The worker whose row the divided watch read last.
    pub fn watching(&self) -> Option<&str> {
        self.watching.as_deref()
    }

    /// The time between two watch rounds: `watch_interval`, stretched in fleets of more than
    /// [`WATCH_STRETCH_FROM`] live workers in proportion to their number, up to twice as long,
    /// so that the reads of a large fleet stay within the Java KCL's per shard. Reading every
    /// row (no divided watch): `watch_interval`.
    pub fn watch_period(&self, live: usize, divided: bool) -> Duration {
        let base = self.settings.watch_interval;
        if !divided {
            return base;
        }
        let stretch = (live as f64 / WATCH_STRETCH_FROM as f64).clamp(1.0, 2.0);
        base.mul_f64(stretch)
    }

    /// The rows whose expiry the driver wakes up for: the watched one (divided watch), else
    /// every known one.
    pub fn watch_targets(&self, workers: &WorkerTracker, divided: bool, now: Instant) -> Vec<String> {
        if divided {
            vec![workers.successor(&self.worker_id, self.settings.failover_time, now)]
        } else {
            workers.known().map(str::to_owned).collect()
        }
    }

    /// What this watch round reads: the watched row, or every row (the follow-up of a take
    /// round when it is due, or the fleet not known yet, or no divided watch). Consumes a due
    /// follow-up.
    pub fn watch_read(&mut self, now: Instant, divided: bool, known: bool) -> WatchRead {
        let follow_up = match self.follow_up {
            Some(at) if at <= now => self.follow_up.take().is_some(),
            _ => false,
        };
        match (divided, known, follow_up) {
            (true, true, false) => WatchRead::Watched,
            (true, _, true) => WatchRead::FollowUp,
            _ => WatchRead::All,
        }
    }

    /// The divided watch is about to read `worker`'s row.
    pub fn watch(&mut self, worker: &str) {
        self.watching = Some(worker.to_owned());
    }

    /// The watched row showed its worker dead: the next take round takes all its leases.
    pub fn watched_died(&mut self, worker: &str) {
        self.watched_dead.insert(worker.to_owned());
    }

    /// The follow-up of a [`WatchRead::FollowUp`]: workers dead and unmarked before and after
    /// the read. A new one died unwatched: the lease table is looked at.
    pub fn followed_up(&mut self, before: &BTreeSet<String>, after: &BTreeSet<String>) -> bool {
        let new = !after.is_subset(before);
        if new {
            self.forced = true;
        }
        new
    }

    /// A watched worker's view of the fleet (`theirs`) differs from this worker's (`mine`):
    /// whether to act on it (once per pair of views: one full read each).
    pub fn views_differ(&mut self, mine: u64, theirs: u64) -> bool {
        if mine == 0 || mine == theirs || self.view_mismatch == Some((mine, theirs)) {
            return false;
        }
        self.view_mismatch = Some((mine, theirs));
        true
    }

    /// The full read a view mismatch asked for failed: act on the same mismatch again.
    pub fn views_unresolved(&mut self) {
        self.view_mismatch = None;
    }

    /// When the driver must wake up next, and for which timer: the next watch round, the
    /// moment a watched row would make its worker dead, or the follow-up read. (A wake from
    /// [`crate::coordinator::LeaseCoordinator::wake`] comes besides.)
    pub fn poll_timeout(&mut self, workers: &WorkerTracker, divided: bool, now: Instant) -> (Instant, Timer) {
        let watch = *self.next_watch.get_or_insert(now);
        let mut next = (watch, Timer::Watch);
        let targets = self.watch_targets(workers, divided, now);
        if let Some(at) = workers.next_expiry(
            targets.iter().map(String::as_str),
            self.settings.failover_time,
            now,
        ) {
            if at < next.0 {
                next = (at, Timer::WatchedExpiry);
            }
        }
        if let Some(at) = self.follow_up {
            if at < next.0 {
                next = (at, Timer::FollowUp);
            }
        }
        next
    }

    /// `timer` fired at `now`: a watch round follows. The next watch round is one
    /// [`Self::watch_period`] after a [`Timer::Watch`].
    pub fn handle_timeout(&mut self, timer: Timer, now: Instant, live: usize, divided: bool) {
        if timer == Timer::Watch {
            self.next_watch = Some(now + self.watch_period(live, divided));
        }
    }

    /// Whether the lease table is to be looked at now, and why. `heartbeats`: whether the
    /// worker coordinates through heartbeats; `divided`: whether it watches one row per round.
    pub fn scan_due(
        &self,
        now: Instant,
        workers: &WorkerTracker,
        heartbeats: bool,
        divided: bool,
    ) -> Option<ScanReason> {
        let failover = self.settings.failover_time;
        let Some(last) = self.last else {
            return Some(ScanReason::First);
        };
        let since = now.saturating_duration_since(last);
        if self.forced {
            return Some(ScanReason::Forced);
        }
        if !heartbeats {
            return (since >= self.settings.take_interval).then_some(ScanReason::NoHeartbeats);
        }
        let live = workers.live(failover, now).len().max(1);
        let fingerprint = workers.fingerprint(&self.worker_id, failover, now);
        let watched = if divided { self.watching.as_deref() } else { None };
        let changed = match watched {
            // The divided watch sees the watched row (and through its nudges, every change
            // announced anywhere); the rest of the fingerprint is as old as the last full read.
            Some(w) => [w, self.worker_id.as_str()]
                .iter()
                .any(|k| fingerprint.get(*k) != self.fingerprint.get(*k)),
            None => fingerprint != self.fingerprint,
        };
        if changed {
            return Some(ScanReason::FleetChanged);
        }
        if (self.acted || self.unknown_owners) && since >= self.settings.take_interval {
            return Some(ScanReason::TakeAgain);
        }
        if let BalanceMode::Load(load) = &self.settings.balance {
            if since >= load.rebalance_interval {
                return Some(ScanReason::Rebalance);
            }
        }
        (since >= self.safety_interval(live)).then_some(ScanReason::Safety)
    }

    /// The time between two safety scans of this worker: `live ×` [`SAFETY_FAILOVERS`] `×
    /// failover_time`, jittered by ±25 % (by worker id and scan count) so that the fleet's
    /// scans spread out.
    pub fn safety_interval(&self, live: usize) -> Duration {
        let base = self.settings.failover_time * SAFETY_FAILOVERS * u32::try_from(live).unwrap_or(u32::MAX);
        let mut h = DefaultHasher::new();
        (&self.worker_id, self.scans).hash(&mut h);
        let jitter = 0.75 + (h.finish() % 1000) as f64 / 2000.0;
        base.mul_f64(jitter).max(self.settings.take_interval)
    }

    /// A take round starts; `seen_before` is the fleet as known before its scan (the
    /// fingerprint this round answers). Returns whether the scan must be strongly consistent:
    /// a round caused by a change in the fleet (a join, a leave, a death, an announced steal or
    /// release), since an eventually consistent scan may not show the change yet; a round
    /// asked for ([`Self::force`]: this worker changed the table itself, a hand-off
    /// completed, a take lost a race, its validity ran out: a scan of the state before the
    /// change would answer nothing; found by the simulator, seed 16 at 4 workers, 16 shards,
    /// worker renewal: a hand-off completed for a thief that had left, and the wake's
    /// eventually consistent scan still showed it in progress); and a round that takes a
    /// watched dead worker's leases. A wake or a lapse from now on asks for another round.
    pub fn begin_round(&mut self, seen_before: &FleetFingerprint) -> bool {
        let forced = std::mem::take(&mut self.forced);
        forced || self.fingerprint != *seen_before || !self.watched_dead.is_empty()
    }

    /// The round's scan failed: whatever asked for it still stands.
    pub fn scan_failed(&mut self) {
        self.forced = true;
    }

    /// The round read every heartbeat row (strongly consistent) at `now`: the follow-up read
    /// is due one failover time later, unless one is due already.
    pub fn read_every_row(&mut self, now: Instant) {
        self.follow_up
            .get_or_insert(now + self.settings.failover_time + Duration::from_millis(1));
    }

    /// The round could not read the heartbeats: nothing is taken, and the table is looked at
    /// again after `take_interval`.
    pub fn heartbeats_unread(&mut self, now: Instant) {
        self.last = Some(now);
        self.acted = true;
        self.scans += 1;
    }
}

/// While another process writes this worker id's heartbeat row (two processes started with one
/// id): when this process may write its heartbeat again, and on what condition
/// ([`IdWatch::observe`]).
#[derive(Debug, Default)]
pub struct IdWatch {
    /// The other process's row as first seen unchanged, and when.
    seen: Option<(u64, Option<u64>, Instant)>,
}

impl IdWatch {
    /// Nothing watched yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A strongly consistent read issued at `issued` (answered at `now`) showed `row` for this
    /// worker id; `mine` is this process's incarnation. Says how this process may write its
    /// heartbeat now: as itself when the row is gone or its own; over the other process's row,
    /// conditional on its counter, once that row stood still for `failover_time` by a read
    /// issued after that time (the other process's validity ran out before, and its later
    /// heartbeats fail their condition); `None`: not yet.
    pub fn observe(
        &mut self,
        row: Option<&WorkerHeartbeat>,
        mine: u64,
        issued: Instant,
        now: Instant,
        failover_time: Duration,
    ) -> Option<HeartbeatCondition> {
        let own = HeartbeatCondition::Incarnation(mine);
        let Some(row) = row else {
            return Some(own);
        };
        if row.incarnation == Some(mine) {
            return Some(own);
        }
        match self.seen {
            Some((counter, incarnation, since))
                if counter == row.counter && incarnation == row.incarnation =>
            {
                (issued.saturating_duration_since(since) > failover_time)
                    .then_some(HeartbeatCondition::Counter(row.counter))
            }
            _ => {
                self.seen = Some((row.counter, row.incarnation, now));
                None
            }
        }
    }

    /// The other process is no longer watched (this one wrote its row, or starts over).
    pub fn forget(&mut self) {
        self.seen = None;
    }
}

/// The condition of this process's next heartbeat write, numbered `counter`: on its own row,
/// only newer beats (a late, older one never lands on top); else as [`IdWatch::observe`] said.
pub fn beat_condition(base: HeartbeatCondition, counter: u64) -> HeartbeatCondition {
    match base {
        HeartbeatCondition::Incarnation(incarnation) => HeartbeatCondition::Newer { incarnation, counter },
        other => other,
    }
}

/// What a take round was planned from (besides the trackers it reads and updates).
#[derive(Debug, Clone)]
pub struct RoundInput {
    /// The scan of the lease table, with the leases this worker may not take (a multi-stream
    /// filter) left out.
    pub leases: Vec<Lease>,
    /// The fleet as known before the scan ([`Schedule::begin_round`]).
    pub seen_before: FleetFingerprint,
    /// Whether the worker coordinates through heartbeats (their read after the scan succeeded).
    pub heartbeats: bool,
    /// Whether it watches the fleet divided.
    pub divided: bool,
    /// The keys held, and those given up whose shard task still runs: never taken.
    pub held: BTreeSet<String>,
    /// Held leases the scan could not be checked against (a write under way): look again.
    pub unchecked: usize,
    /// Rows naming this worker id are its own, taken back at once ([`BalanceConfig`]).
    pub adopt_own_rows: bool,
    /// Leases this process held and lost whose rows may still name it unchanged.
    pub own_rows: BTreeMap<String, (u64, u64)>,
    /// Whether the worker takes leases at all (not while it shuts down).
    pub taking: bool,
}

/// One call (or local step) a take round asks the driver for ([`TakeRound::poll_action`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Complete the hand-off of a lease stolen from this worker that it no longer processes
    /// (lost here before the thief came): the thief starts now. Result:
    /// [`TakeRound::handle_handoff`].
    CompleteHandoff {
        /// The lease, as the scan showed the hand-off (completing it is conditional on that
        /// hand-off: [`crate::LeaseStore::complete_handoff`]).
        lease: Box<Lease>,
    },
    /// Mark a dead worker's heartbeat row lapsed (if still as judged). Result:
    /// [`TakeRound::handle_mark`].
    MarkLapsed {
        /// The dead worker.
        worker: String,
    },
    /// Announce (bump the epoch, write a heartbeat, nudge the others): free leases were left
    /// to others. No result.
    Announce,
    /// Take (`steal`: with a graceful hand-off) the lease as scanned, conditional on its owner
    /// and counter. Result: [`TakeRound::handle_take`].
    Take {
        /// The lease as scanned.
        lease: Box<Lease>,
        /// A steal from a live worker (else a take of a free or expired lease).
        steal: bool,
    },
}

/// How a completion of a hand-off ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// Applied.
    Done,
    /// The row was not as expected (another worker was first, or nothing to do).
    Conflict,
    /// Failed for another reason (throttled, timed out, ...).
    Failed,
}

/// One take round. See the module docs.
#[derive(Debug)]
pub struct TakeRound {
    /// Hand-offs, marks and the announcement, done in order before any take.
    before: VecDeque<Action>,
    /// Calls of `before` handed out and not answered yet.
    before_pending: usize,
    /// Takes and steals not handed out yet, in order.
    takes: VecDeque<(Lease, bool)>,
    /// Takes handed out and not answered yet.
    in_flight: usize,
    /// Takes of the current batch still to hand out.
    batch_left: usize,
    spare: VecDeque<Lease>,
    take_all_of: BTreeSet<String>,
    unmarked: BTreeSet<String>,
    /// Per dead worker of `take_all_of`, its active leases in the scan.
    dead_leases: BTreeMap<String, Vec<String>>,
    stole: bool,
    force: bool,
    taking: bool,
    /// The even share this worker aims for.
    pub target: usize,
    /// Live workers as planned.
    pub live: Vec<String>,
    /// Leases in the scan (after the filter).
    pub scanned: usize,
    /// Active (not finished) leases in the scan.
    pub active: usize,
    /// The rows of [`RoundInput::own_rows`] that still name this worker.
    pub own_rows: BTreeMap<String, (u64, u64)>,
}

impl TakeRound {
    /// Held leases that a strongly consistent scan shows without rows (deleted by a former
    /// stream's clean-up, or by hand): lost (F8 of the coordination review). `held` are the
    /// keys held and renewed.
    pub fn rows_gone<'a>(leases: &[Lease], held: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let present: HashSet<&str> = leases.iter().map(|l| l.lease_key.as_str()).collect();
        held.into_iter()
            .filter(|k| !present.contains(k))
            .map(str::to_owned)
            .collect()
    }

    /// Plans a take round at `now` from `input`, judging the workers by `workers` (the
    /// strongly consistent read made after the scan) and the leases by `expiry` (updated with
    /// the scan). Updates `schedule` with what the round saw; `own_rows` keeps only the rows
    /// that still name this worker.
    pub fn plan(
        input: RoundInput,
        schedule: &mut Schedule,
        expiry: &mut ExpiryTracker,
        workers: &WorkerTracker,
        now: Instant,
    ) -> Self {
        let settings = &schedule.settings;
        let me = schedule.worker_id.as_str();
        let failover = settings.failover_time;
        let leases = &input.leases;
        let mut before = VecDeque::new();
        // Steals of leases this worker no longer processes: nothing to hand over.
        for lease in leases {
            if lease.checkpoint_owner.as_deref() == Some(me)
                && !lease.is_owned_by(me)
                && !input.held.contains(&lease.lease_key)
            {
                before.push_back(Action::CompleteHandoff {
                    lease: Box::new(lease.clone()),
                });
            }
        }
        // Rows that no longer name this worker are no longer its own to take back.
        let mut own_rows = input.own_rows;
        own_rows.retain(|key, _| leases.iter().any(|l| &l.lease_key == key && l.is_owned_by(me)));
        let statuses = if input.heartbeats {
            workers.judged_statuses(failover)
        } else {
            HashMap::new()
        };
        let owns_active = |w: &str| {
            leases
                .iter()
                .any(|l| !l.is_finished() && l.lease_owner.as_deref() == Some(w))
        };
        // The divided watch: a dead worker whose row this worker watched is known dead here
        // first (the others learn of it from the nudges this round sends): all its leases are
        // taken here at once, and the fleet evens out by steals afterwards. So is any dead
        // worker this round judged whose row is not marked yet and that still owns leases:
        // its watcher may be dead too, or may not have looked yet; whoever knows first acts
        // (the takes are conditional: one of them wins each lease). A worker the consistent
        // read shows live again is no longer one of them.
        let take_all_of: BTreeSet<String> = if input.divided {
            let watched_dead = &mut schedule.watched_dead;
            watched_dead.retain(|w| matches!(statuses.get(w), Some(WorkerStatus::Dead(_))));
            for (w, status) in &statuses {
                if w != me
                    && matches!(status, WorkerStatus::Dead(_))
                    && workers.row(w).is_some_and(|row| !row.lapsed)
                    && owns_active(w)
                {
                    watched_dead.insert(w.clone());
                }
            }
            watched_dead.clone()
        } else {
            BTreeSet::new()
        };
        for dead in &take_all_of {
            if workers.row(dead).is_some_and(|row| !row.lapsed) {
                before.push_back(Action::MarkLapsed { worker: dead.clone() });
            }
        }
        let unknown_owners = input.heartbeats
            && leases.iter().any(|l| {
                !l.is_finished()
                    && l.lease_owner
                        .as_deref()
                        .is_some_and(|o| o != me && !statuses.contains_key(o))
            });
        // The even share counts the workers that are live, but not, among those that own no
        // lease, the ones whose row has not moved while this worker watched although it has
        // beaten many times before: a newcomer cannot tell a worker that runs from one that
        // died before it started (a row that stands still) until the failover time has
        // passed, and counting the dead one would leave released leases unowned that long
        // (as in a rolling deploy). A worker that just started (a cold start of the fleet:
        // every row is new) has beaten once or twice and counts; any other counts from its
        // next heartbeat on.
        let owning: HashSet<&str> = leases
            .iter()
            .filter(|l| !l.is_finished())
            .filter_map(|l| l.lease_owner.as_deref())
            .collect();
        let planning: HashMap<String, WorkerStatus> = statuses
            .into_iter()
            .map(|(w, s)| match s {
                WorkerStatus::Live(_)
                    if w != me
                        && !owning.contains(w.as_str())
                        && !workers.seen_beating(&w)
                        && workers.beats(&w).is_some_and(|b| b > FRESH_BEATS) =>
                {
                    (w, WorkerStatus::Unknown)
                }
                s => (w, s),
            })
            .collect();
        expiry.observe(leases, now);
        expiry.set_owners(planning);
        expiry.set_blind(!input.heartbeats);
        let balance = BalanceConfig {
            worker_id: me.to_owned(),
            failover_time: failover,
            max_leases_per_worker: settings.max_leases_per_worker,
            max_leases_to_steal: settings.max_leases_to_steal,
            mode: settings.balance,
            adopt_own_rows: input.adopt_own_rows,
            own_rows: own_rows.clone(),
            take_all_of: take_all_of.clone(),
        };
        let plan = plan_takes(leases, expiry, &input.held, &balance, now);
        // Other workers' leases that may be taken now: free to take as unowned ones are.
        let expired: HashSet<&str> = leases
            .iter()
            .filter(|l| l.lease_owner.as_deref().is_some_and(|o| o != me))
            .filter(|l| expiry.is_expired(l, failover, now))
            .map(|l| l.lease_key.as_str())
            .collect();
        let planned = |key: &str| plan.take.iter().any(|t| t.lease_key == key);
        // Rows naming this worker that it does not hold and may not take back at once are
        // judged by their counters: look again after take_interval, as for unknown owners.
        let own_pending = leases.iter().any(|l| {
            !l.is_finished()
                && l.is_owned_by(me)
                && !input.held.contains(&l.lease_key)
                && !planned(&l.lease_key)
        });
        // Unowned leases left to others (this worker has its share): tell them, once per set,
        // so that a worker below its share looks now rather than at its next safety scan.
        // Expired ones too: a dead worker's lease is freed without any heartbeat saying so
        // when the hand-off to it completes after its death (found by the simulator: seed 2406
        // at 8 workers, 32 shards, worker renewal, left it to a safety scan).
        let free: BTreeSet<String> = leases
            .iter()
            .filter(|l| {
                !l.is_finished() && (l.lease_owner.is_none() || expired.contains(l.lease_key.as_str()))
            })
            .filter(|l| !planned(&l.lease_key))
            .map(|l| l.lease_key.clone())
            .collect();
        // Held leases beyond the even share (taken when the fleet was smaller, or all of a
        // watched dead worker's): tell the others, once per count and share, so that a worker
        // below its share looks now and steals the surplus. A worker one short of its share
        // does not look again by itself (an even fleet has such workers), so without this the
        // spread stayed uneven until a safety scan (found by the simulator: seed 55644 at 8
        // workers, 32 shards, worker renewal: 5 and 3 for 40 s).
        let mine = leases
            .iter()
            .filter(|l| !l.is_finished() && l.is_owned_by(me) && input.held.contains(&l.lease_key))
            .count();
        // (Load-aware balancing evens the load, not the count: counts above the share are
        // its steady state there.)
        let count_mode = matches!(settings.balance, BalanceMode::Count);
        let surplus = (input.heartbeats && count_mode && mine > plan.target).then_some((mine, plan.target));
        let announce_surplus = surplus.is_some() && surplus != schedule.surplus_announced;
        schedule.surplus_announced = surplus;
        if !free.is_subset(&schedule.free_announced) || announce_surplus {
            before.push_back(Action::Announce);
        }
        let dead_leases = take_all_of
            .iter()
            .map(|dead| {
                let keys = leases
                    .iter()
                    .filter(|l| !l.is_finished() && l.lease_owner.as_deref() == Some(dead.as_str()))
                    .map(|l| l.lease_key.clone())
                    .collect();
                (dead.clone(), keys)
            })
            .collect();
        let active = leases.iter().filter(|l| !l.is_finished()).count();
        schedule.free_announced = free;
        schedule.last = Some(now);
        schedule.fingerprint = input.seen_before;
        schedule.acted = !plan.take.is_empty() || !plan.steal.is_empty();
        // Short of the even share by more than one after this round's takes (the others at
        // their share, or leases in flux when the scan was made): look again after
        // `take_interval` rather than at the next safety scan, as nothing else makes this
        // worker look (takes of free leases are not announced). An even fleet has every
        // worker at its share or one below: no extra scans then (found by the simulator: seed
        // 97 at 4 workers, 16 shards, with slow batches, left a worker at 4 of 6 for 13 s).
        // Short by one while another worker holds more than its share: the same (a steal is
        // due, but its candidates were in a hand-off).
        let after = mine + plan.take.len() + plan.steal.len();
        let short =
            after + 1 < plan.target || (count_mode && after < plan.target && plan.most_loaded > plan.target);
        schedule.unknown_owners = unknown_owners || own_pending || short;
        schedule.forced |= input.unchecked > 0;
        schedule.scans += 1;
        let takes = if input.taking {
            plan.take
                .into_iter()
                .map(|l| (l, false))
                .chain(plan.steal.into_iter().map(|l| (l, true)))
                .collect()
        } else {
            VecDeque::new()
        };
        Self {
            before,
            before_pending: 0,
            takes,
            in_flight: 0,
            batch_left: 0,
            spare: plan.spare.into(),
            take_all_of,
            unmarked: BTreeSet::new(),
            dead_leases,
            stole: false,
            force: false,
            taking: input.taking,
            target: plan.target,
            live: expiry.live_workers().map(str::to_owned).collect(),
            scanned: leases.len(),
            active,
            own_rows,
        }
    }

    /// The next call to make, or `None` while the calls handed out are unanswered (a batch of
    /// takes in flight, or a call that must be answered before the takes start) or when the
    /// round is done ([`Self::is_done`]). Hand-offs, marks and the announcement come first, one
    /// at a time; then takes and steals, in batches of up to [`TAKE_CONCURRENCY`] made at
    /// once (the next batch once every take of the last one is answered).
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.before_pending > 0 {
            return None;
        }
        if let Some(action) = self.before.pop_front() {
            if action != Action::Announce {
                self.before_pending += 1;
            }
            return Some(action);
        }
        if self.batch_left == 0 {
            if self.in_flight > 0 || self.takes.is_empty() {
                return None;
            }
            // A new batch once every take of the last one is answered (takes lost to others
            // have brought their spares in by then).
            self.batch_left = self.takes.len().min(TAKE_CONCURRENCY);
        }
        let (lease, steal) = self.takes.pop_front()?;
        self.batch_left -= 1;
        self.in_flight += 1;
        Some(Action::Take {
            lease: Box::new(lease),
            steal,
        })
    }

    /// Whether nothing is left to do: no call unanswered and none to hand out.
    pub fn is_done(&self) -> bool {
        self.before_pending == 0 && self.in_flight == 0 && self.before.is_empty() && self.takes.is_empty()
    }

    /// Whether takes are still to be made (the driver checks its validity before each batch).
    pub fn takes_pending(&self) -> bool {
        !self.takes.is_empty()
    }

    /// The driver gives the round up (its validity ended, or the worker shuts down): no more
    /// takes.
    pub fn abandon_takes(&mut self) {
        self.takes.clear();
        self.batch_left = 0;
    }

    /// The answer to an [`Action::CompleteHandoff`]. A failure asks for another round, and so
    /// does a conflict (the row changed since the scan: it may be free now).
    pub fn handle_handoff(&mut self, outcome: CallOutcome) {
        self.before_pending = self.before_pending.saturating_sub(1);
        match outcome {
            // The next round tries again.
            CallOutcome::Failed | CallOutcome::Conflict => self.force = true,
            // The lease is its thief's now, which this round's scan does not show: if the
            // thief died meanwhile, the lease is a dead worker's that nobody else looks for
            // (found by the simulator: seed 20728 at 8 workers, 32 shards, worker renewal: a
            // completion retried after a throttle landed for a thief that had crashed, and
            // the lease was left untaken for 10 s). Another round, as after a release.
            CallOutcome::Done => self.force = true,
        }
    }

    /// The answer to an [`Action::MarkLapsed`]: whether the row is marked (or changed, or gone:
    /// nothing left to mark).
    pub fn handle_mark(&mut self, worker: &str, marked: bool) {
        self.before_pending = self.before_pending.saturating_sub(1);
        if !marked {
            self.unmarked.insert(worker.to_owned());
        }
    }

    /// The answer to an [`Action::Take`]. A take lost to another worker is replaced by a spare
    /// lease (no new scan); a lost steal, or no spare left, asks for another round.
    pub fn handle_take(&mut self, steal: bool, outcome: CallOutcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            CallOutcome::Done => self.stole |= steal,
            CallOutcome::Conflict => match self.spare.pop_front() {
                Some(next) if !steal => self.takes.push_back((next, false)),
                _ => self.force = true,
            },
            CallOutcome::Failed => {}
        }
    }

    /// Ends the round; `held` are the keys this worker holds (or still retires) now. Done with
    /// a watched dead worker once its row is marked and none of its leases is left (a take
    /// lost to a race, a stale row): else another round is asked for. Returns whether to
    /// announce: after a steal (the victim learns of it) or a dead worker's leases taken (the
    /// others even the fleet out: their share grew).
    pub fn finish(self, held: &BTreeSet<String>, schedule: &mut Schedule) -> bool {
        schedule.forced |= self.force;
        if !self.taking {
            return false;
        }
        for dead in &self.take_all_of {
            let left = self
                .dead_leases
                .get(dead)
                .is_some_and(|keys| keys.iter().any(|k| !held.contains(k)));
            if left || self.unmarked.contains(dead) {
                schedule.forced = true;
            } else {
                schedule.watched_dead.remove(dead);
            }
        }
        self.stole || !self.take_all_of.is_empty()
    }
}

/// The workers that look dead by the reads made and whose rows are not marked lapsed.
pub fn dead_unmarked(
    workers: &WorkerTracker,
    me: &str,
    failover_time: Duration,
    now: Instant,
) -> BTreeSet<String> {
    workers
        .known()
        .filter(|w| *w != me)
        .filter(|w| matches!(workers.status(w, failover_time, now), WorkerStatus::Dead(_)))
        .filter(|w| workers.row(w).is_some_and(|r| !r.lapsed))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::{LeaseRenewal, WorkerHeartbeat};
    use crate::sequence::ExtendedSequenceNumber;

    const F: Duration = Duration::from_secs(10);

    fn settings() -> LeaseSettings {
        LeaseSettings::new(F)
    }

    fn hb(worker: &str, counter: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: worker.into(),
            counter,
            renewal: LeaseRenewal::PerLease,
            leases: 0,
            epoch: 0,
            incarnation: Some(1),
            lapsed: false,
            nudges: 0,
            view: 0,
            watched: None,
        }
    }

    fn lease(key: &str, owner: Option<&str>, counter: u64) -> Lease {
        let mut lease = Lease::new(
            key,
            ExtendedSequenceNumber::from_parts("TRIM_HORIZON", 0).unwrap(),
        );
        lease.lease_owner = owner.map(str::to_owned);
        lease.lease_counter = counter;
        lease
    }

    fn input(leases: Vec<Lease>, workers: &WorkerTracker, now: Instant) -> RoundInput {
        RoundInput {
            leases,
            seen_before: workers.fingerprint("me", F, now),
            heartbeats: true,
            divided: true,
            held: BTreeSet::new(),
            unchecked: 0,
            adopt_own_rows: false,
            own_rows: BTreeMap::new(),
            taking: true,
        }
    }

    /// Every action the round asks for until it waits for answers.
    fn drain(round: &mut TakeRound) -> Vec<Action> {
        std::iter::from_fn(|| round.poll_action()).collect()
    }

    #[test]
    fn the_timers_say_what_wakes_the_driver_next() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1)], t0, t0);
        // The first watch round is due at once; the next one a watch period later.
        assert_eq!(schedule.poll_timeout(&workers, true, t0), (t0, Timer::Watch));
        schedule.handle_timeout(Timer::Watch, t0, 2, true);
        let period = schedule.watch_period(2, true);
        assert_eq!(period, settings().watch_interval);
        // The watched row ("a" stands still since t0) would turn dead at t0 + F: later than the
        // tick, so the tick comes first.
        assert_eq!(
            schedule.poll_timeout(&workers, true, t0),
            (t0 + period, Timer::Watch)
        );
        // Close to the expiry, the expiry comes first.
        let late = t0 + F - period / 2;
        schedule.handle_timeout(Timer::Watch, late, 2, true);
        let (at, timer) = schedule.poll_timeout(&workers, true, late);
        assert_eq!(timer, Timer::WatchedExpiry);
        assert!(at <= late + period && at > t0 + F, "{at:?}");
        // A take round's read of every row brings the follow-up one failover time later.
        let mut schedule = Schedule::new("me", settings());
        schedule.handle_timeout(Timer::Watch, t0, 2, true);
        schedule.read_every_row(t0 - F);
        let (_, timer) = schedule.poll_timeout(&workers, true, t0);
        assert_eq!(timer, Timer::FollowUp);
        // Large fleets watch more slowly, up to twice the interval.
        assert_eq!(schedule.watch_period(64, true), settings().watch_interval * 2);
        assert_eq!(schedule.watch_period(64, false), settings().watch_interval);
    }

    #[test]
    fn a_watch_round_reads_one_row_once_the_fleet_is_known_and_every_row_as_a_follow_up() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        assert_eq!(schedule.watch_read(t0, true, false), WatchRead::All);
        assert_eq!(schedule.watch_read(t0, true, true), WatchRead::Watched);
        assert_eq!(schedule.watch_read(t0, false, true), WatchRead::All);
        schedule.read_every_row(t0);
        assert_eq!(schedule.watch_read(t0 + F / 2, true, true), WatchRead::Watched);
        assert_eq!(schedule.watch_read(t0 + F * 2, true, true), WatchRead::FollowUp);
        // Once.
        assert_eq!(schedule.watch_read(t0 + F * 2, true, true), WatchRead::Watched);
        // A worker that died unwatched shows in the follow-up: the table is looked at.
        let before: BTreeSet<String> = ["a".to_owned()].into();
        let after: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        assert!(!schedule.followed_up(&before, &before));
        assert!(schedule.followed_up(&before, &after));
        assert_eq!(
            schedule.scan_due(t0, &WorkerTracker::new(), true, true),
            Some(ScanReason::First)
        );
    }

    #[test]
    fn scans_are_due_for_a_reason_only() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1)], t0, t0);
        assert_eq!(
            schedule.scan_due(t0, &workers, true, true),
            Some(ScanReason::First)
        );
        let mut expiry = ExpiryTracker::new();
        // Two live workers, two leases, one each: nothing to do.
        let leases = vec![lease("s-0", Some("me"), 1), lease("s-1", Some("a"), 1)];
        let mut inp = input(leases.clone(), &workers, t0);
        inp.held = ["s-0".to_owned()].into();
        assert!(
            schedule.begin_round(&inp.seen_before),
            "the first round answers a fleet never seen: a consistent scan"
        );
        let mut round = TakeRound::plan(inp, &mut schedule, &mut expiry, &workers, t0);
        assert_eq!(drain(&mut round), []);
        assert!(!round.finish(&["s-0".to_owned()].into(), &mut schedule));
        assert_eq!(schedule.scans(), 1);
        assert_eq!(schedule.scan_due(t0 + F / 2, &workers, true, true), None);
        // A wake.
        schedule.force();
        assert_eq!(
            schedule.scan_due(t0, &workers, true, true),
            Some(ScanReason::Forced)
        );
        schedule.begin_round(&workers.fingerprint("me", F, t0));
        assert_eq!(schedule.scan_due(t0, &workers, true, true), None);
        // An announcement by the watched worker.
        schedule.watch("a");
        let mut announced = hb("a", 2);
        announced.epoch = 1;
        workers.observe_one("a", Some(&announced), t0, t0);
        assert_eq!(
            schedule.scan_due(t0, &workers, true, true),
            Some(ScanReason::FleetChanged)
        );
        // Without heartbeats: every take interval.
        assert_eq!(schedule.scan_due(t0, &workers, false, false), None);
        assert_eq!(
            schedule.scan_due(t0 + settings().take_interval, &workers, false, false),
            Some(ScanReason::NoHeartbeats)
        );
        // The safety scan, within ±25 % of live × 4 × F.
        let mut quiet = Schedule::new("me", settings());
        quiet.last = Some(t0);
        let none = WorkerTracker::new();
        let safety = quiet.safety_interval(1);
        assert!(safety >= F * 4 * 3 / 4 && safety <= F * 4 * 5 / 4, "{safety:?}");
        assert_eq!(
            quiet.scan_due(t0 + safety - Duration::from_millis(1), &none, true, true),
            None
        );
        assert_eq!(
            quiet.scan_due(t0 + safety, &none, true, true),
            Some(ScanReason::Safety)
        );
    }

    #[test]
    fn takes_go_out_in_bounded_batches_and_a_lost_race_brings_a_spare_in() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1)], t0, t0);
        let leases: Vec<Lease> = (0..TAKE_CONCURRENCY + 8)
            .map(|i| lease(&format!("s-{i:03}"), None, 0))
            .collect();
        let inp = input(leases, &workers, t0);
        let mut round = TakeRound::plan(inp, &mut schedule, &mut ExpiryTracker::new(), &workers, t0);
        let first = drain(&mut round);
        assert_eq!(first.len(), TAKE_CONCURRENCY, "one batch at a time");
        assert_eq!(drain(&mut round), [], "the next batch waits for every answer");
        for (i, _) in first.iter().enumerate() {
            let outcome = if i == 0 {
                CallOutcome::Conflict
            } else {
                CallOutcome::Done
            };
            round.handle_take(false, outcome);
        }
        let second = drain(&mut round);
        assert_eq!(
            second.len(),
            8,
            "the rest (there is no spare: every free lease was planned)"
        );
        for _ in &second {
            round.handle_take(false, CallOutcome::Done);
        }
        assert!(round.is_done());
        assert!(
            !round.finish(&BTreeSet::new(), &mut schedule),
            "no steal, no dead worker: nothing to announce"
        );
        assert_eq!(
            schedule.scan_due(t0, &workers, true, true),
            Some(ScanReason::Forced),
            "a take lost without a spare asks for another round"
        );
    }

    #[test]
    fn a_dead_watched_workers_row_is_marked_and_all_its_leases_taken_then_announced() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        let mut expiry = ExpiryTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1), hb("b", 1)], t0, t0);
        let leases: Vec<Lease> = (0..6)
            .map(|i| lease(&format!("s-{i}"), Some(["me", "a", "b"][i % 3]), 1))
            .collect();
        let later = t0 + F + Duration::from_secs(1);
        workers.observe_consistent(&[hb("me", 5), hb("a", 5), hb("b", 1)], later, later);
        schedule.watched_died("b");
        let mut inp = input(leases, &workers, later);
        inp.held = ["s-0".to_owned(), "s-3".to_owned()].into();
        assert!(
            schedule.begin_round(&inp.seen_before),
            "a dead watched worker: a consistent scan"
        );
        let mut round = TakeRound::plan(inp, &mut schedule, &mut expiry, &workers, later);
        // The mark first, alone: the takes wait for its answer.
        assert_eq!(
            round.poll_action(),
            Some(Action::MarkLapsed { worker: "b".into() })
        );
        assert_eq!(round.poll_action(), None);
        round.handle_mark("b", false);
        let takes = drain(&mut round);
        let keys: Vec<&str> = takes
            .iter()
            .map(|a| match a {
                Action::Take { lease, steal: false } => lease.lease_key.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            ["s-2", "s-5"],
            "every lease of the dead worker, beyond the even share"
        );
        round.handle_take(false, CallOutcome::Done);
        round.handle_take(false, CallOutcome::Done);
        let held: BTreeSet<String> = ["s-0", "s-3", "s-2", "s-5"].map(str::to_owned).into();
        assert!(
            round.finish(&held, &mut schedule),
            "the others are told: their share grew"
        );
        // The row is not marked yet: the next round tries again, with a consistent scan.
        assert_eq!(
            schedule.scan_due(later, &workers, true, true),
            Some(ScanReason::Forced)
        );
        assert!(schedule.begin_round(&workers.fingerprint("me", F, later)));
    }

    /// Seed 55644 (8 workers, 32 shards, worker renewal): a worker that took more than its
    /// share while the fleet was smaller kept 5 while another had 3, for 40 s. It says so.
    #[test]
    fn a_worker_above_its_share_announces_it_once_per_count() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1)], t0, t0);
        let round_with = |mine: &[&str], schedule: &mut Schedule| {
            let leases: Vec<Lease> = (0..4)
                .map(|i| {
                    let key = format!("s-{i}");
                    let owner = if mine.contains(&key.as_str()) { "me" } else { "a" };
                    lease(&key, Some(owner), 1)
                })
                .collect();
            let mut inp = input(leases, &workers, t0);
            inp.held = mine.iter().map(|k| (*k).to_owned()).collect();
            schedule.begin_round(&inp.seen_before);
            let mut round = TakeRound::plan(inp, schedule, &mut ExpiryTracker::new(), &workers, t0);
            drain(&mut round)
        };
        // Three of four with two workers: one above the share of two.
        assert_eq!(
            round_with(&["s-0", "s-1", "s-2"], &mut schedule),
            [Action::Announce]
        );
        assert_eq!(round_with(&["s-0", "s-1", "s-2"], &mut schedule), [], "said once");
        assert_eq!(round_with(&["s-0", "s-1"], &mut schedule), [], "at its share");
        assert_eq!(
            round_with(&["s-0", "s-1", "s-2"], &mut schedule),
            [Action::Announce],
            "above it again"
        );
    }

    /// A worker one short of its share does not look again by itself (an even fleet has such
    /// workers), unless another worker holds more than its share and no steal was possible
    /// this round (its leases were in a hand-off).
    #[test]
    fn a_worker_one_short_looks_again_while_another_is_above_its_share() {
        let t0 = Instant::now();
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1), hb("b", 1)], t0, t0);
        for (a_leases, again) in [(3, true), (2, false)] {
            let mut schedule = Schedule::new("me", settings());
            let mut leases = vec![lease("m-0", Some("me"), 1)];
            for i in 0..a_leases {
                // In a hand-off to "a" from "b": no steal candidate.
                let mut l = lease(&format!("a-{i}"), Some("a"), 1);
                l.checkpoint_owner = Some("b".into());
                leases.push(l);
            }
            for i in 0..2 {
                leases.push(lease(&format!("b-{i}"), Some("b"), 1));
            }
            let mut inp = input(leases, &workers, t0);
            inp.held = ["m-0".to_owned()].into();
            schedule.begin_round(&inp.seen_before);
            let mut round = TakeRound::plan(inp, &mut schedule, &mut ExpiryTracker::new(), &workers, t0);
            assert_eq!(drain(&mut round), [], "nothing to take or steal");
            round.finish(&["m-0".to_owned()].into(), &mut schedule);
            let later = t0 + settings().take_interval;
            assert_eq!(
                schedule.scan_due(later, &workers, true, false) == Some(ScanReason::TakeAgain),
                again,
                "a holds {a_leases}, b 2, this worker 1: a share of 2"
            );
        }
    }

    /// Seed 20728: a hand-off completed in a take round gives the lease to its thief, which
    /// the round's scan does not show (the thief may have died): another round looks.
    #[test]
    fn a_hand_off_completed_in_a_round_asks_for_another_round() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1)], t0, t0);
        let mut stolen = lease("s-0", Some("a"), 2);
        stolen.checkpoint_owner = Some("me".into());
        let leases = vec![stolen.clone(), lease("s-1", Some("me"), 1)];
        let mut inp = input(leases, &workers, t0);
        inp.held = ["s-1".to_owned()].into();
        schedule.begin_round(&inp.seen_before);
        let mut round = TakeRound::plan(inp, &mut schedule, &mut ExpiryTracker::new(), &workers, t0);
        assert_eq!(
            round.poll_action(),
            Some(Action::CompleteHandoff {
                lease: Box::new(stolen)
            })
        );
        round.handle_handoff(CallOutcome::Done);
        assert_eq!(drain(&mut round), []);
        round.finish(&["s-1".to_owned()].into(), &mut schedule);
        assert_eq!(
            schedule.scan_due(t0, &workers, true, true),
            Some(ScanReason::Forced)
        );
    }

    #[test]
    fn a_steal_of_a_lease_no_longer_processed_here_is_completed_and_free_leases_are_announced_once() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new("me", settings());
        let mut workers = WorkerTracker::new();
        workers.observe_consistent(&[hb("me", 1), hb("a", 1)], t0, t0);
        let mut stolen = lease("s-0", Some("a"), 2);
        stolen.checkpoint_owner = Some("me".into());
        let leases = vec![
            stolen.clone(),
            lease("s-1", Some("me"), 1),
            lease("s-2", Some("a"), 1),
            lease("s-3", None, 0),
            lease("s-4", None, 0),
            lease("s-5", None, 0),
        ];
        let mut inp = input(leases.clone(), &workers, t0);
        inp.held = ["s-1".to_owned()].into();
        inp.taking = true;
        let mut round = TakeRound::plan(
            inp.clone(),
            &mut schedule,
            &mut ExpiryTracker::new(),
            &workers,
            t0,
        );
        assert_eq!(
            round.poll_action(),
            Some(Action::CompleteHandoff {
                lease: Box::new(stolen)
            })
        );
        round.handle_handoff(CallOutcome::Failed);
        // Six leases, two workers: a share of three; one held, two to take, one left to "a"
        // (announced, so that it looks now).
        let rest = drain(&mut round);
        assert_eq!(rest.first(), Some(&Action::Announce));
        assert_eq!(rest.len(), 3, "{rest:?}");
        round.handle_take(false, CallOutcome::Done);
        round.handle_take(false, CallOutcome::Done);
        round.finish(&BTreeSet::new(), &mut schedule);
        assert_eq!(
            schedule.scan_due(t0, &workers, true, true),
            Some(ScanReason::Forced),
            "the failed hand-off"
        );
        // The same free set again: not announced again.
        schedule.begin_round(&inp.seen_before);
        let mut round = TakeRound::plan(inp, &mut schedule, &mut ExpiryTracker::new(), &workers, t0);
        let again = drain(&mut round);
        assert!(!again.contains(&Action::Announce), "{again:?}");
    }

    #[test]
    fn a_process_whose_id_is_in_use_takes_it_over_only_after_the_other_stood_still() {
        let t0 = Instant::now();
        let mut watch = IdWatch::new();
        let other = WorkerHeartbeat {
            incarnation: Some(7),
            ..hb("me", 40)
        };
        // The other process's row, first seen: not yet.
        assert_eq!(watch.observe(Some(&other), 1, t0, t0, F), None);
        // Still the same row, but not for the failover time by a read issued after it.
        assert_eq!(watch.observe(Some(&other), 1, t0 + F, t0 + F * 2, F), None);
        // Issued after the failover time: over its counter.
        let later = t0 + F + Duration::from_millis(1);
        assert_eq!(
            watch.observe(Some(&other), 1, later, later, F),
            Some(HeartbeatCondition::Counter(40))
        );
        // It moved: watched from the start again.
        let moved = WorkerHeartbeat {
            incarnation: Some(7),
            ..hb("me", 41)
        };
        assert_eq!(watch.observe(Some(&moved), 1, later, later, F), None);
        // Gone, or this process's own: as itself, and only newer beats.
        assert_eq!(
            watch.observe(None, 1, later, later, F),
            Some(HeartbeatCondition::Incarnation(1))
        );
        assert_eq!(
            beat_condition(HeartbeatCondition::Incarnation(1), 9),
            HeartbeatCondition::Newer {
                incarnation: 1,
                counter: 9
            }
        );
        assert_eq!(
            beat_condition(HeartbeatCondition::Counter(40), 41),
            HeartbeatCondition::Counter(40)
        );
    }
}
