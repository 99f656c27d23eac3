//! Worker heartbeats: one small row per worker, and what one worker concludes from watching them.
//!
//! Every worker writes its own heartbeat row every renew interval (a counter that moves, the
//! renewal mode, how many leases it holds, and an *epoch* it bumps whenever it changed the lease
//! table in a way the others should look at: leases created, released, stolen). Each worker
//! reads one other worker's row often (the divided watch), and the whole table now and then.
//! That is what makes coordination cost O(shards + workers): the lease table itself is read
//! only when a heartbeat row says something changed (a worker joined, left, died, announced
//! a change or nudged), plus a slow safety scan shared by the fleet. See
//! [`crate::coordinator`] for the whole design and its safety argument.
//!
//! [`WorkerTracker`] is pure: the rows and the time are arguments. A worker is *dead* when its
//! heartbeat counter has not moved for the failover time by the observer's own monotonic clock
//! (the same rule as lease expiry; wall clocks are never compared).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// How a worker keeps its leases alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseRenewal {
    /// Every lease's counter is incremented every renew interval (the Java KCL's way, and the
    /// default): Java workers and older versions of this crate judge such leases correctly.
    #[default]
    PerLease,
    /// Only the worker's heartbeat row is renewed; its leases are valid while the heartbeat
    /// is. Lease counters still move on every change of owner and every checkpoint. For fleets
    /// with no Java workers only: a Java worker would see the counters stand still and take
    /// every lease after its failover time.
    Worker,
}

impl LeaseRenewal {
    /// The name used on command lines and in the heartbeat row: `per-lease` or `worker`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseRenewal::PerLease => "per-lease",
            LeaseRenewal::Worker => "worker",
        }
    }
}

impl fmt::Display for LeaseRenewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A renewal mode name that is neither `per-lease` nor `worker`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lease renewal mode {0:?}: expected per-lease or worker")]
pub struct ParseLeaseRenewalError(pub String);

impl FromStr for LeaseRenewal {
    type Err = ParseLeaseRenewalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "per-lease" | "PER_LEASE" | "perlease" => Ok(LeaseRenewal::PerLease),
            "worker" | "WORKER" => Ok(LeaseRenewal::Worker),
            other => Err(ParseLeaseRenewalError(other.to_owned())),
        }
    }
}

/// One worker's heartbeat row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerHeartbeat {
    /// `workerId`: the worker (the `leaseOwner` it writes).
    pub worker_id: String,
    /// `heartbeatCounter`: incremented by every heartbeat.
    pub counter: u64,
    /// `leaseRenewal`: how this worker renews its leases.
    pub renewal: LeaseRenewal,
    /// `leaseCount`: leases held at the time of the heartbeat (informational).
    pub leases: u64,
    /// `epoch`: bumped whenever this worker changed the lease table in a way the other workers
    /// should look at (created, released or stole leases).
    pub epoch: u64,
    /// `incarnation`: a random number drawn by each process at start, so that two processes
    /// started with the same worker id are told apart (`None` in rows of older versions).
    pub incarnation: Option<u64>,
    /// `lapsed` (present only when true): the worker wrote this heartbeat while its validity
    /// had run out. It holds nothing it may process, and takes nothing until a heartbeat
    /// without this mark has succeeded: observers treat it as dead (its leases may be taken,
    /// it does not count in the even share) even though its heartbeats still land.
    pub lapsed: bool,
    /// `nudges`: incremented by *other* workers when they changed the lease table
    /// ([`crate::LeaseStore::nudge_heartbeat`]), so that the worker watching this row looks at
    /// the table (the divided watch: see [`crate::coordinator`]). A worker's own heartbeat
    /// write keeps the row's value: what a writer puts here is ignored.
    pub nudges: u64,
    /// `fleetView`: a digest of the fleet as the worker saw it at the heartbeat (its
    /// [`WorkerTracker::view_digest`]; 0 in rows of older versions). A watcher whose own view
    /// differs reads the whole table: views that went stale (a nudge lost) heal this way.
    pub view: u64,
    /// `watchedWorker`, `watchedCounter`, `watchedIncarnation`: the row this worker watches (the
    /// divided watch) as it last read it before this heartbeat. Evidence for every reader: that
    /// row's heartbeat with this counter was written before this one, so if it still has it,
    /// it has stood still at least since this row was first seen (a chain of workers that died
    /// together is judged at once, not one failover time after another).
    pub watched: Option<WatchedRow>,
}

/// A row as its watcher last read it (see [`WorkerHeartbeat::watched`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedRow {
    /// The watched worker.
    pub worker_id: String,
    /// Its heartbeat counter as read.
    pub counter: u64,
    /// Its incarnation as read.
    pub incarnation: Option<u64>,
}

/// The condition of a conditional write or delete of a heartbeat row. Every condition but
/// [`HeartbeatCondition::Unchanged`] also holds when the row does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeartbeatCondition {
    /// No condition.
    Any,
    /// The row was written by this incarnation (the process's own row).
    Incarnation(u64),
    /// The row was written by this incarnation with a lower counter: the write of a newer
    /// heartbeat of the process's own (a late, older one is refused).
    Newer {
        /// The process's incarnation.
        incarnation: u64,
        /// The counter of the heartbeat being written.
        counter: u64,
    },
    /// The row's counter is this one (a row that stood still: its process is gone).
    Counter(u64),
    /// The row exists with this counter and incarnation: another worker marks a row it judged
    /// dead as lapsed (the one condition that does not hold on a missing row).
    Unchanged {
        /// The row's incarnation as judged.
        incarnation: Option<u64>,
        /// The row's counter as judged.
        counter: u64,
    },
}

impl HeartbeatCondition {
    /// Whether `row` (the row as it is now, if any) satisfies the condition.
    pub fn holds(&self, row: Option<&WorkerHeartbeat>) -> bool {
        match (self, row) {
            (HeartbeatCondition::Unchanged { incarnation, counter }, row) => {
                row.is_some_and(|row| row.incarnation == *incarnation && row.counter == *counter)
            }
            (_, None) | (HeartbeatCondition::Any, _) => true,
            (HeartbeatCondition::Incarnation(i), Some(row)) => row.incarnation == Some(*i),
            (HeartbeatCondition::Newer { incarnation, counter }, Some(row)) => {
                row.incarnation == Some(*incarnation) && row.counter < *counter
            }
            (HeartbeatCondition::Counter(c), Some(row)) => row.counter == *c,
        }
    }
}

/// What an observer knows about a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerStatus {
    /// The heartbeat moved within the failover time (or was first seen less than that ago).
    Live(LeaseRenewal),
    /// The heartbeat row exists but has not moved for the failover time: the worker no longer
    /// processes any lease (it gives all of them up when it cannot heartbeat).
    Dead(LeaseRenewal),
    /// No heartbeat row: a Java worker, an older version of this crate, or a worker that left.
    /// Its leases are judged by their own counters.
    Unknown,
}

#[derive(Clone, Debug)]
struct Seen {
    counter: u64,
    since: Instant,
    renewal: LeaseRenewal,
    epoch: u64,
    /// The process that wrote the row (a row rewritten by another process has moved).
    incarnation: Option<u64>,
    /// The worker wrote its last heartbeat while lapsed.
    lapsed: bool,
    /// Whether this observer has seen the counter move (the worker beat while observed).
    moved: bool,
    /// Nudges of the row (see [`WorkerHeartbeat::nudges`]).
    nudges: u64,
    /// Leases the worker held at the heartbeat.
    leases: u64,
    /// The worker's view of the fleet (see [`WorkerHeartbeat::view`]).
    view: u64,
    /// What the worker said of the row it watches (see [`WorkerHeartbeat::watched`]).
    watched: Option<WatchedRow>,
    /// `since`, or earlier when another row's `watched` proves this counter older (see
    /// [`WorkerTracker::relax`]).
    eff_since: Instant,
    /// When the latest read that showed this counter was issued: the evidence of how long it
    /// has stood still (`checked - since`).
    checked: Instant,
}

/// The heartbeats as one worker has observed them. See the module docs.
///
/// Two times matter. A counter is *first seen* when the read that returned it completed (the
/// beat that wrote it started earlier, so the owner's validity from it ends no later than
/// `first seen + failover_time`). A worker is *dead* only as judged by a strongly consistent
/// read that **succeeded** and was **issued** more than `failover_time` after its counter was
/// first seen ([`WorkerTracker::judged_statuses`]): any later beat of that worker is applied after the
/// read, so after its validity ran out, and it gives up everything instead of extending it.
/// Failed reads prove nothing: a worker that cannot read the heartbeats never sees another die.
///
/// Every status is a conclusion from reads, never from the clock alone: a row this observer
/// has not read for a while (the divided watch reads one row per round) keeps the status its
/// last read showed. A worker looks dead when a read issued more than `failover_time` after
/// its counter was first seen still showed that counter (eventually consistent reads are
/// enough to look; judging, for a take, needs the consistent read above).
#[derive(Clone, Debug, Default)]
pub struct WorkerTracker {
    seen: HashMap<String, Seen>,
    /// When the last successful strongly consistent read was issued.
    judged_at: Option<Instant>,
}

/// FNV-1a of `s`, mixed (murmur3's finalizer, so that ids differing in their last character
/// land far apart): the same in every process (std's hasher is seeded per process).
fn fnv(s: &str) -> u64 {
    let mut h = fnv_extend(0, s);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// FNV-1a over `h`'s bytes, then `s` and a separator.
fn fnv_extend(h: u64, s: &str) -> u64 {
    let mut h = h ^ 0xcbf2_9ce4_8422_2325;
    for b in s.bytes().chain(std::iter::once(0)) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A summary of the fleet for deciding whether the lease table must be read again: which
/// workers are live, the epochs they announced, and the nudges their rows received. Two equal
/// fingerprints mean nothing happened that would change a take plan.
pub type FleetFingerprint = BTreeMap<String, (bool, u64, u64)>;

impl WorkerTracker {
    /// Nothing observed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a strongly consistent read of the heartbeat table issued at `issued` that
    /// returned at `now`: besides what [`WorkerTracker::observe_read`] does, deaths may be judged
    /// against `issued` from now on.
    pub fn observe_consistent(&mut self, rows: &[WorkerHeartbeat], issued: Instant, now: Instant) {
        self.observe_read(rows, issued, now);
        self.judged_at = Some(self.judged_at.map_or(issued, |at| at.max(issued)));
    }

    /// When the last successful strongly consistent read was issued: the latest time at which
    /// a death can be judged ([`WorkerTracker::judged_statuses`]).
    pub fn judged_at(&self) -> Option<Instant> {
        self.judged_at
    }

    /// The status of every worker as the last successful strongly consistent read proves it
    /// (see the type's docs); empty when no such read succeeded yet.
    pub fn judged_statuses(&self, failover_time: Duration) -> HashMap<String, WorkerStatus> {
        match self.judged_at {
            Some(at) => self.statuses(failover_time, at),
            None => HashMap::new(),
        }
    }

    /// The status of `worker` as the last successful strongly consistent read proves it: a
    /// worker seen but never judged is live.
    pub fn judged_status(&self, worker: &str, failover_time: Duration) -> WorkerStatus {
        match (self.judged_at, self.seen.get(worker)) {
            (_, None) => WorkerStatus::Unknown,
            (Some(at), Some(_)) => self.status(worker, failover_time, at),
            (None, Some(s)) => WorkerStatus::Live(s.renewal),
        }
    }

    /// Records a read of the whole heartbeat table that was issued and returned at `now` (see
    /// [`WorkerTracker::observe_read`]).
    pub fn observe(&mut self, rows: &[WorkerHeartbeat], now: Instant) {
        self.observe_read(rows, now, now);
    }

    /// Records a read of the whole heartbeat table (eventually consistent or not) issued at
    /// `issued` that returned at `now`. Rows no longer there are forgotten (their workers
    /// become [`WorkerStatus::Unknown`]); a row older than the one seen of the same process (a
    /// lower counter) changes nothing.
    pub fn observe_read(&mut self, rows: &[WorkerHeartbeat], issued: Instant, now: Instant) {
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            next.insert(row.worker_id.clone(), self.seen_now(row, issued, now));
        }
        self.seen = next;
        self.relax();
    }

    /// Moves each row's `eff_since` back to what the watchers' rows prove: a row that says it
    /// watched `w` at counter `c` was written after that beat of `w`, so if `w` still has `c`,
    /// its beat was issued before that row was first seen (before that row's own `eff_since`,
    /// along a chain). Repeated until nothing moves (at most once per row).
    fn relax(&mut self) {
        for s in self.seen.values_mut() {
            s.eff_since = s.since;
        }
        for _ in 0..self.seen.len() {
            let claims: Vec<(WatchedRow, Instant)> = self
                .seen
                .values()
                .filter_map(|s| s.watched.clone().map(|w| (w, s.eff_since)))
                .collect();
            let mut moved = false;
            for (watched, at) in claims {
                if let Some(s) = self.seen.get_mut(&watched.worker_id) {
                    if s.counter == watched.counter
                        && s.incarnation == watched.incarnation
                        && at < s.eff_since
                    {
                        s.eff_since = at;
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Records a read of one worker's row (`None`: there is none) issued at `issued` that
    /// returned at `now`; what is known of the other rows stays as it was.
    pub fn observe_one(
        &mut self,
        worker: &str,
        row: Option<&WorkerHeartbeat>,
        issued: Instant,
        now: Instant,
    ) {
        match row {
            Some(row) => {
                let seen = self.seen_now(row, issued, now);
                self.seen.insert(row.worker_id.clone(), seen);
            }
            None => {
                self.seen.remove(worker);
            }
        }
        self.relax();
    }

    fn seen_now(&self, row: &WorkerHeartbeat, issued: Instant, now: Instant) -> Seen {
        if let Some(s) = self.seen.get(&row.worker_id) {
            // One process's counter only grows (its heartbeats are conditional on it): a lower
            // one is an older state, as a lagging eventually consistent read returns it. Going
            // back to it would undo what a newer read showed: a `lapsed` mark the worker has
            // cleared since made it dead again, and a thief completed a hand-off from it while
            // it processed the lease (found by the simulator: seed 431 at 8 workers, 32
            // shards, worker renewal).
            if s.incarnation == row.incarnation && s.counter > row.counter {
                return s.clone();
            }
        }
        let (since, moved, checked) = match self.seen.get(&row.worker_id) {
            Some(s) if s.counter == row.counter && s.incarnation == row.incarnation => {
                (s.since, s.moved, s.checked.max(issued))
            }
            Some(_) => (now, true, issued),
            None => (now, false, issued),
        };
        Seen {
            counter: row.counter,
            since,
            renewal: row.renewal,
            epoch: row.epoch,
            incarnation: row.incarnation,
            lapsed: row.lapsed,
            moved,
            nudges: row.nudges,
            leases: row.leases,
            view: row.view,
            watched: row.watched.clone(),
            eff_since: since,
            checked,
        }
    }

    /// The status of `worker` at `now`, as the reads made until then show it (see the type's
    /// docs: a counter that stood still is evidence only up to the latest read that showed it).
    pub fn status(&self, worker: &str, failover_time: Duration, now: Instant) -> WorkerStatus {
        match self.seen.get(worker) {
            None => WorkerStatus::Unknown,
            Some(s)
                if s.lapsed || s.checked.min(now).saturating_duration_since(s.eff_since) > failover_time =>
            {
                WorkerStatus::Dead(s.renewal)
            }
            Some(s) => WorkerStatus::Live(s.renewal),
        }
    }

    /// The counter of `worker`'s row as last read (how many times it has beaten since it started).
    pub fn beats(&self, worker: &str) -> Option<u64> {
        self.seen.get(worker).map(|s| s.counter)
    }

    /// Whether `worker`'s heartbeat has been seen to move since this observer first read it.
    /// A row that has not moved yet may be a worker that just started or one that died before
    /// this observer started (its clock cannot tell them apart until the failover time passed).
    pub fn seen_beating(&self, worker: &str) -> bool {
        self.seen.get(worker).is_some_and(|s| s.moved)
    }

    /// The status of every worker with a heartbeat row.
    pub fn statuses(&self, failover_time: Duration, now: Instant) -> HashMap<String, WorkerStatus> {
        self.seen
            .keys()
            .map(|w| (w.clone(), self.status(w, failover_time, now)))
            .collect()
    }

    /// The live workers, sorted.
    pub fn live(&self, failover_time: Duration, now: Instant) -> Vec<&str> {
        let mut live: Vec<&str> = self
            .seen
            .keys()
            .filter(|w| matches!(self.status(w, failover_time, now), WorkerStatus::Live(_)))
            .map(String::as_str)
            .collect();
        live.sort_unstable();
        live
    }

    /// When a read would first show one of `workers` dead if its heartbeat does not move
    /// (just after `failover_time` since its counter was first seen), if that is after `now`.
    pub fn next_expiry<'a>(
        &self,
        workers: impl IntoIterator<Item = &'a str>,
        failover_time: Duration,
        now: Instant,
    ) -> Option<Instant> {
        workers
            .into_iter()
            .filter_map(|w| self.seen.get(w))
            .filter(|s| !s.lapsed)
            .map(|s| s.eff_since + failover_time + Duration::from_millis(1))
            .filter(|at| *at > now)
            .min()
    }

    /// `worker`'s row as last read.
    pub fn row(&self, worker: &str) -> Option<WorkerHeartbeat> {
        self.seen.get(worker).map(|s| WorkerHeartbeat {
            worker_id: worker.to_owned(),
            counter: s.counter,
            renewal: s.renewal,
            leases: s.leases,
            epoch: s.epoch,
            incarnation: s.incarnation,
            lapsed: s.lapsed,
            nudges: s.nudges,
            view: s.view,
            watched: s.watched.clone(),
        })
    }

    /// A digest of the fleet as this observer knows it: the ids of the rows it knows that are
    /// not marked lapsed, `me` included (never 0). Two workers that know the same fleet have
    /// the same digest.
    pub fn view_digest(&self, me: &str) -> u64 {
        let mut ids: Vec<&str> = self
            .seen
            .iter()
            .filter(|(_, s)| !s.lapsed)
            .map(|(w, _)| w.as_str())
            .chain(std::iter::once(me))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.iter().fold(0, |h, id| fnv_extend(h, id)).max(1)
    }

    /// Every worker with a heartbeat row, as last read.
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.seen.keys().map(String::as_str)
    }

    /// The worker whose row `me` watches in the divided watch: the next live worker after
    /// `me` around the ring (`me` itself when it is the only one). Every live worker is so
    /// watched by one other, when all see the same fleet.
    ///
    /// The ring is ordered by a hash of the ids, not by the ids: workers that fail together
    /// tend to have similar names (one host, one rack, one zone, one deployment's numbering),
    /// and a worker whose watcher died with it is found later (see [`crate::coordinator`]).
    pub fn successor(&self, me: &str, failover_time: Duration, now: Instant) -> String {
        let mut ring: Vec<(u64, &str)> = self
            .live(failover_time, now)
            .into_iter()
            .chain(std::iter::once(me))
            .map(|w| (fnv(w), w))
            .collect();
        ring.sort_unstable();
        ring.dedup();
        let at = ring.iter().position(|(_, w)| *w == me).unwrap_or(0);
        ring[(at + 1) % ring.len()].1.to_owned()
    }

    /// Workers whose rows have not moved for `age` as the reads show (candidates for
    /// clean-up), with the counter seen (the clean-up's condition).
    pub fn stale(&self, age: Duration, now: Instant) -> Vec<(String, u64)> {
        let mut stale: Vec<(String, u64)> = self
            .seen
            .iter()
            .filter(|(_, s)| s.checked.min(now).saturating_duration_since(s.since) > age)
            .map(|(w, s)| (w.clone(), s.counter))
            .collect();
        // In id order: a simulated run replays exactly (found by the simulator's replays).
        stale.sort_unstable();
        stale
    }

    /// The fingerprint of the fleet at `now`. `me`'s own entry leaves out its epoch (its own
    /// announcements are no reason to look) but keeps the nudges others gave its row.
    pub fn fingerprint(&self, me: &str, failover_time: Duration, now: Instant) -> FleetFingerprint {
        self.seen
            .iter()
            .map(|(w, s)| {
                if w == me {
                    return (w.clone(), (true, 0, s.nudges));
                }
                let live = matches!(self.status(w, failover_time, now), WorkerStatus::Live(_));
                (w.clone(), (live, s.epoch, s.nudges))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_secs(10);

    fn hb(worker: &str, counter: u64, epoch: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: worker.into(),
            counter,
            renewal: LeaseRenewal::PerLease,
            leases: 3,
            epoch,
            incarnation: Some(1),
            lapsed: false,
            nudges: 0,
            view: 0,
            watched: None,
        }
    }

    #[test]
    fn a_worker_is_dead_when_its_counter_stands_still_for_the_failover_time() {
        let t0 = Instant::now();
        let mut t = WorkerTracker::new();
        t.observe(&[hb("a", 1, 0), hb("b", 1, 0)], t0);
        assert_eq!(
            t.status("a", F, t0 + F),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        t.observe(&[hb("a", 2, 0), hb("b", 1, 0)], t0 + Duration::from_secs(5));
        let later = t0 + F + Duration::from_secs(1);
        // The clock alone proves nothing: only a read made after the failover time does.
        assert_eq!(
            t.status("b", F, later),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        t.observe(&[hb("a", 2, 0), hb("b", 1, 0)], later);
        assert_eq!(
            t.status("a", F, later),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        assert_eq!(
            t.status("b", F, later),
            WorkerStatus::Dead(LeaseRenewal::PerLease)
        );
        assert_eq!(t.status("c", F, later), WorkerStatus::Unknown);
        assert_eq!(t.live(F, later), ["a"]);
        assert_eq!(t.stale(F, later), [("b".to_owned(), 1)]);
    }

    #[test]
    fn the_fingerprint_changes_on_join_leave_death_and_announcements_only() {
        let t0 = Instant::now();
        let mut t = WorkerTracker::new();
        t.observe(&[hb("me", 1, 0), hb("a", 1, 0)], t0);
        let f0 = t.fingerprint("me", F, t0);
        // Heartbeats moving and my own epoch are not changes.
        t.observe(&[hb("me", 2, 5), hb("a", 2, 0)], t0 + Duration::from_secs(1));
        assert_eq!(t.fingerprint("me", F, t0 + Duration::from_secs(1)), f0);
        // An announcement is.
        t.observe(&[hb("me", 3, 5), hb("a", 3, 1)], t0 + Duration::from_secs(2));
        let f1 = t.fingerprint("me", F, t0 + Duration::from_secs(2));
        assert_ne!(f1, f0);
        // A join is.
        t.observe(
            &[hb("me", 4, 5), hb("a", 4, 1), hb("b", 1, 0)],
            t0 + Duration::from_secs(3),
        );
        let f2 = t.fingerprint("me", F, t0 + Duration::from_secs(3));
        assert_ne!(f2, f1);
        // A death (a read after the failover time shows no movement) is; time alone is not.
        let dead = t0 + Duration::from_secs(14);
        assert_eq!(t.fingerprint("me", F, dead), f2);
        let mut read = t.clone();
        read.observe(&[hb("me", 4, 5), hb("a", 4, 1), hb("b", 1, 0)], dead);
        assert_ne!(read.fingerprint("me", F, dead), f2);
        // A nudge of a row is.
        let mut nudged = t.clone();
        let mut row = hb("a", 4, 1);
        row.nudges = 1;
        nudged.observe_one(
            "a",
            Some(&row),
            t0 + Duration::from_secs(3),
            t0 + Duration::from_secs(3),
        );
        assert_ne!(nudged.fingerprint("me", F, t0 + Duration::from_secs(3)), f2);
        // A leave (row gone) is.
        t.observe(&[hb("me", 5, 5), hb("a", 5, 1)], t0 + Duration::from_secs(4));
        assert_ne!(t.fingerprint("me", F, t0 + Duration::from_secs(4)), f2);
    }

    /// F2 and F4 of the coordination review: a death is judged only from a consistent read
    /// that succeeded, against the time it was issued (not the time it returned, nor the time
    /// a failed read was attempted).
    #[test]
    fn deaths_are_judged_from_successful_consistent_reads_at_their_issue_time() {
        let t0 = Instant::now();
        let mut t = WorkerTracker::new();
        t.observe_consistent(&[hb("a", 1, 0)], t0, t0);
        // Every later read fails: nothing is proven, however much time passes.
        let late = t0 + F * 3;
        assert_eq!(
            t.judged_statuses(F)["a"],
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        assert_eq!(
            t.status("a", F, late),
            WorkerStatus::Live(LeaseRenewal::PerLease),
            "the clock alone proves nothing"
        );
        // A read issued before the failover time passed that returns after it proves nothing.
        let issued = t0 + F - Duration::from_millis(100);
        t.observe_consistent(&[hb("a", 1, 0)], issued, t0 + F + Duration::from_millis(500));
        assert_eq!(
            t.judged_statuses(F)["a"],
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        // One issued after it does.
        let issued = t0 + F + Duration::from_millis(1);
        t.observe_consistent(&[hb("a", 1, 0)], issued, issued);
        assert_eq!(
            t.judged_statuses(F)["a"],
            WorkerStatus::Dead(LeaseRenewal::PerLease)
        );
    }

    /// A lagging eventually consistent read returns a process's older row: what a newer read
    /// showed stands (found by the simulator, seed 431: the older row was marked `lapsed`).
    #[test]
    fn an_older_row_of_the_same_process_changes_nothing() {
        let t0 = Instant::now();
        let mut t = WorkerTracker::new();
        let lapsed = WorkerHeartbeat {
            lapsed: true,
            ..hb("a", 52, 0)
        };
        t.observe_consistent(std::slice::from_ref(&lapsed), t0, t0);
        assert!(matches!(t.judged_status("a", F), WorkerStatus::Dead(_)));
        // It beat again (not lapsed): live.
        let back = t0 + Duration::from_millis(500);
        t.observe_consistent(&[hb("a", 53, 0)], back, back);
        assert_eq!(
            t.judged_status("a", F),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        // A lagging read returns the lapsed row again: still live, first seen at `back`.
        t.observe(&[lapsed], back + Duration::from_millis(100));
        assert_eq!(
            t.judged_status("a", F),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        assert_eq!(t.beats("a"), Some(53));
        assert_eq!(
            t.next_expiry(["a"], F, back),
            Some(back + F + Duration::from_millis(1))
        );
        // Another process's row (a new incarnation) is never older: taken as it is.
        let other = WorkerHeartbeat {
            incarnation: Some(2),
            ..hb("a", 1, 0)
        };
        t.observe(&[other], back + Duration::from_millis(200));
        assert_eq!(t.beats("a"), Some(1));
    }

    #[test]
    fn the_divided_watch_follows_the_ring_of_live_workers() {
        let t0 = Instant::now();
        let mut t = WorkerTracker::new();
        assert_eq!(t.successor("b", F, t0), "b", "alone: its own row");
        t.observe(&[hb("a", 1, 0), hb("b", 1, 0), hb("c", 1, 0)], t0);
        // A ring: each watches one other, and each is watched by one other.
        let watched: Vec<String> = ["a", "b", "c"].iter().map(|w| t.successor(w, F, t0)).collect();
        let mut sorted = watched.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c"]);
        assert!(["a", "b", "c"].iter().zip(&watched).all(|(w, s)| w != s));
        // A row read again after the failover time without movement is dead: skipped (its
        // watcher watches the worker it watched).
        let later = t0 + F + Duration::from_secs(1);
        let mut b = hb("b", 1, 0);
        t.observe_one("b", Some(&b), later, later);
        let b_watcher = ["a", "c"]
            .into_iter()
            .find(|w| t.successor(w, F, t0) == "b")
            .unwrap();
        let b_watched = t.successor("b", F, t0);
        assert_eq!(t.successor(b_watcher, F, later), b_watched);
        assert_eq!(t.next_expiry(["b"], F, later), None);
        assert_eq!(
            t.next_expiry(["c"], F, t0),
            Some(t0 + F + Duration::from_millis(1))
        );
        // A read of one row leaves the others as they were; a missing row is forgotten.
        b.counter = 2;
        t.observe_one("b", Some(&b), later, later);
        assert_eq!(
            t.status("b", F, later),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
        t.observe_one("c", None, later, later);
        assert_eq!(t.status("c", F, later), WorkerStatus::Unknown);
        assert_eq!(
            t.status("a", F, later),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
    }

    /// Workers that died together, each the watcher of the next: the watchers' rows prove how
    /// long the others stood still, so all are judged dead by one read after the failover time.
    #[test]
    fn a_chain_of_dead_workers_is_judged_at_once_from_the_watchers_rows() {
        let t0 = Instant::now();
        let watching = |row: WorkerHeartbeat, w: &str, c: u64| WorkerHeartbeat {
            watched: Some(WatchedRow {
                worker_id: w.into(),
                counter: c,
                incarnation: Some(1),
            }),
            ..row
        };
        let rows = |c3: u64| {
            vec![
                watching(hb("d1", 5, 0), "d2", 7),
                watching(hb("d2", 7, 0), "d3", 9),
                hb("d3", c3, 0),
            ]
        };
        let mut t = WorkerTracker::new();
        // d1 watched for long (first seen at t0); d2 and d3 seen first only now.
        t.observe_one("d1", Some(&rows(9)[0]), t0, t0);
        let now = t0 + F + Duration::from_millis(10);
        t.observe_consistent(&rows(9), now, now);
        for w in ["d1", "d2", "d3"] {
            assert!(matches!(t.judged_status(w, F), WorkerStatus::Dead(_)), "{w}");
        }
        // d3 beat after d2 read it: nothing proves it dead.
        let mut t = WorkerTracker::new();
        t.observe_one("d1", Some(&rows(10)[0]), t0, t0);
        t.observe_consistent(&rows(10), now, now);
        assert!(matches!(t.judged_status("d2", F), WorkerStatus::Dead(_)));
        assert_eq!(
            t.judged_status("d3", F),
            WorkerStatus::Live(LeaseRenewal::PerLease)
        );
    }

    #[test]
    fn views_agree_when_the_known_fleet_does() {
        let t0 = Instant::now();
        let (mut a, mut b) = (WorkerTracker::new(), WorkerTracker::new());
        a.observe(&[hb("a", 1, 0), hb("b", 1, 0)], t0);
        b.observe(&[hb("b", 4, 0), hb("a", 9, 3)], t0);
        assert_eq!(
            a.view_digest("a"),
            b.view_digest("b"),
            "counters and epochs do not matter"
        );
        b.observe(&[hb("b", 4, 0), hb("a", 9, 3), hb("c", 1, 0)], t0);
        assert_ne!(a.view_digest("a"), b.view_digest("b"), "a join does");
        let mut lapsed = hb("c", 1, 0);
        lapsed.lapsed = true;
        b.observe(&[hb("b", 4, 0), hb("a", 9, 3), lapsed], t0);
        assert_eq!(
            a.view_digest("a"),
            b.view_digest("b"),
            "a row marked lapsed is no member"
        );
    }

    #[test]
    fn conditions_hold_on_absent_rows_and_on_their_own_match() {
        let row = hb("a", 7, 0);
        assert!(HeartbeatCondition::Incarnation(1).holds(Some(&row)));
        assert!(!HeartbeatCondition::Incarnation(2).holds(Some(&row)));
        assert!(HeartbeatCondition::Counter(7).holds(Some(&row)));
        assert!(!HeartbeatCondition::Counter(6).holds(Some(&row)));
        assert!(HeartbeatCondition::Incarnation(2).holds(None));
        let newer = |counter| HeartbeatCondition::Newer {
            incarnation: 1,
            counter,
        };
        assert!(newer(8).holds(Some(&row)));
        assert!(!newer(7).holds(Some(&row)), "a late, older heartbeat is refused");
        assert!(!HeartbeatCondition::Newer {
            incarnation: 2,
            counter: 9
        }
        .holds(Some(&row)));
        assert!(HeartbeatCondition::Any.holds(Some(&row)));
        let unchanged = |incarnation, counter| HeartbeatCondition::Unchanged { incarnation, counter };
        assert!(unchanged(Some(1), 7).holds(Some(&row)));
        assert!(!unchanged(Some(1), 8).holds(Some(&row)));
        assert!(!unchanged(None, 7).holds(Some(&row)));
        assert!(
            !unchanged(Some(1), 7).holds(None),
            "a missing row is never marked"
        );
    }

    #[test]
    fn renewal_modes_parse() {
        assert_eq!("per-lease".parse::<LeaseRenewal>(), Ok(LeaseRenewal::PerLease));
        assert_eq!("worker".parse::<LeaseRenewal>(), Ok(LeaseRenewal::Worker));
        assert!("both".parse::<LeaseRenewal>().is_err());
        assert_eq!(LeaseRenewal::Worker.to_string(), "worker");
    }
}
