//! Worker heartbeats: one small row per worker, and what one worker concludes from watching them.
//!
//! Every worker writes its own heartbeat row every renew interval (a counter that moves, the
//! renewal mode, how many leases it holds, and an *epoch* it bumps whenever it changed the lease
//! table in a way the others should look at: leases created, released, stolen). Every worker
//! reads the (small) heartbeat table often. That is what makes coordination cost O(shards): the
//! lease table itself is read only when a heartbeat says something changed (a worker joined,
//! left, died, or announced a change), plus a slow safety scan shared by the fleet. See
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
    /// Whether this observer has seen the counter move (the worker beat while observed).
    moved: bool,
}

/// The heartbeats as one worker has observed them. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct WorkerTracker {
    seen: HashMap<String, Seen>,
}

/// A summary of the fleet for deciding whether the lease table must be read again: which
/// workers are live, and the epochs they announced. Two equal fingerprints mean nothing
/// happened that would change a take plan.
pub type FleetFingerprint = BTreeMap<String, (bool, u64)>;

impl WorkerTracker {
    /// Nothing observed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a fresh read of the heartbeat table taken at `now`. Rows no longer there are
    /// forgotten (their workers become [`WorkerStatus::Unknown`]).
    pub fn observe(&mut self, rows: &[WorkerHeartbeat], now: Instant) {
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let (since, moved) = match self.seen.get(&row.worker_id) {
                Some(s) if s.counter == row.counter => (s.since, s.moved),
                Some(_) => (now, true),
                None => (now, false),
            };
            next.insert(
                row.worker_id.clone(),
                Seen {
                    counter: row.counter,
                    since,
                    renewal: row.renewal,
                    epoch: row.epoch,
                    moved,
                },
            );
        }
        self.seen = next;
    }

    /// The status of `worker` at `now`.
    pub fn status(&self, worker: &str, failover_time: Duration, now: Instant) -> WorkerStatus {
        match self.seen.get(worker) {
            None => WorkerStatus::Unknown,
            Some(s) if now.duration_since(s.since) > failover_time => WorkerStatus::Dead(s.renewal),
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

    /// When the next live worker turns dead if its heartbeat does not move (just after
    /// `failover_time` since its counter was first seen), if any is live at `now`.
    pub fn next_expiry(&self, failover_time: Duration, now: Instant) -> Option<Instant> {
        self.seen
            .values()
            .map(|s| s.since + failover_time + Duration::from_millis(1))
            .filter(|at| *at > now)
            .min()
    }

    /// Workers whose rows have not moved for `age` (candidates for clean-up), with the counter
    /// seen (the clean-up's condition).
    pub fn stale(&self, age: Duration, now: Instant) -> Vec<(String, u64)> {
        self.seen
            .iter()
            .filter(|(_, s)| now.duration_since(s.since) > age)
            .map(|(w, s)| (w.clone(), s.counter))
            .collect()
    }

    /// The fingerprint of the fleet at `now`, leaving out `me`.
    pub fn fingerprint(&self, me: &str, failover_time: Duration, now: Instant) -> FleetFingerprint {
        self.seen
            .iter()
            .filter(|(w, _)| w.as_str() != me)
            .map(|(w, s)| {
                let live = matches!(self.status(w, failover_time, now), WorkerStatus::Live(_));
                (w.clone(), (live, s.epoch))
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
        // A death (time passing without movement) is.
        let dead = t0 + Duration::from_secs(14);
        assert_ne!(t.fingerprint("me", F, dead), f2);
        // A leave (row gone) is.
        t.observe(&[hb("me", 5, 5), hb("a", 5, 1)], t0 + Duration::from_secs(4));
        assert_ne!(t.fingerprint("me", F, t0 + Duration::from_secs(4)), f2);
    }

    #[test]
    fn renewal_modes_parse() {
        assert_eq!("per-lease".parse::<LeaseRenewal>(), Ok(LeaseRenewal::PerLease));
        assert_eq!("worker".parse::<LeaseRenewal>(), Ok(LeaseRenewal::Worker));
        assert!("both".parse::<LeaseRenewal>().is_err());
        assert_eq!(LeaseRenewal::Worker.to_string(), "worker");
    }
}
