//! Lease expiry and balancing as pure functions of a snapshot of the table and the time.
//!
//! Expiry is judged the way the Java KCL judges it: each worker remembers, by its own monotonic
//! clock, when it last saw each lease's counter change. A lease whose counter has not changed
//! for `failover_time` by that clock is expired. Wall-clock timestamps written by other machines
//! are never compared, so clock skew between workers cannot expire a live lease. Where the
//! owners have heartbeat rows, their status (as [`crate::WorkerTracker`] observed it) comes
//! first: every lease of a dead worker is expired, and the leases of a live worker that renews
//! through its heartbeat never are.
//!
//! Balancing follows the Java KCL's lease taker, made to converge faster: a worker computes its
//! target (the even share, `ceil(active leases / live workers)`, capped by
//! `max_leases_per_worker`), takes free and expired leases first, and only when those do not
//! reach the target steals from the most loaded worker, at most `max_leases_to_steal` per round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use crate::heartbeat::{LeaseRenewal, WorkerStatus};
use crate::lease::Lease;
use crate::load::{plan_load_steal, BalanceMode};

/// What one worker remembers of each lease it has seen: the counter and when (by its own
/// clock) that counter was first seen.
#[derive(Debug, Default, Clone)]
pub struct ExpiryTracker {
    seen: HashMap<String, (u64, Instant)>,
    /// Per lease, its owner as last seen and when (by this worker's clock) that owner was
    /// first seen: when the lease last moved (damping of load-aware moves).
    owners_seen: HashMap<String, (Option<String>, Instant)>,
    /// What the heartbeats say about the owners (empty without heartbeats).
    owners: HashMap<String, WorkerStatus>,
    /// This worker coordinates without heartbeats (it cannot read the heartbeat table).
    blind: bool,
}

impl ExpiryTracker {
    /// An empty tracker: every lease seen from now on starts its expiry clock when first seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a fresh scan of the table taken at `now`. Leases no longer in the table are
    /// forgotten.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let mut next = HashMap::with_capacity(leases.len());
        for lease in leases {
            let entry = match self.seen.get(&lease.lease_key) {
                Some(&(counter, at)) if counter == lease.lease_counter => (counter, at),
                _ => (lease.lease_counter, now),
            };
            next.insert(lease.lease_key.clone(), entry);
        }
        self.seen = next;
        let mut owners = HashMap::with_capacity(leases.len());
        for lease in leases {
            let entry = match self.owners_seen.remove(&lease.lease_key) {
                Some((owner, at)) if owner == lease.lease_owner => (owner, at),
                _ => (lease.lease_owner.clone(), now),
            };
            owners.insert(lease.lease_key.clone(), entry);
        }
        self.owners_seen = owners;
    }

    /// When this worker first saw `key` with its current owner (when it last moved, or was
    /// first seen); `None` for a lease never observed.
    pub fn last_moved(&self, key: &str) -> Option<Instant> {
        self.owners_seen.get(key).map(|(_, at)| *at)
    }

    /// Sets what the heartbeats say about the workers (see [`crate::WorkerTracker`]).
    pub fn set_owners(&mut self, owners: HashMap<String, WorkerStatus>) {
        self.owners = owners;
    }

    /// Whether this worker coordinates without heartbeats: it cannot judge a lease whose owner
    /// renews it through its heartbeat ([`ExpiryTracker::cannot_judge`]).
    pub fn set_blind(&mut self, blind: bool) {
        self.blind = blind;
    }

    /// Whether this worker cannot judge `lease`: it reads no heartbeats, and the lease's owner
    /// renews it through its heartbeat alone ([`Lease::owner_renews_by_heartbeat`]), so its
    /// counter stands still while that owner lives. Such a lease is never expired for this
    /// worker, nor stolen by it (it could not tell when the owner let go).
    pub fn cannot_judge(&self, lease: &Lease) -> bool {
        self.blind && lease.lease_owner.is_some() && lease.owner_renews_by_heartbeat == lease.lease_owner
    }

    /// What the heartbeats say about `owner`.
    pub fn owner_status(&self, owner: &str) -> WorkerStatus {
        self.owners.get(owner).copied().unwrap_or(WorkerStatus::Unknown)
    }

    /// What the heartbeats say about `worker` as the owner (or previous owner) of `lease`:
    /// nothing ([`WorkerStatus::Unknown`]) when the lease says that worker renews it through the
    /// lease table alone ([`Lease::owner_without_heartbeat`]): a heartbeat row under that id is
    /// another process's, or a former one's, and proves nothing about the lease.
    pub fn status_for(&self, lease: &Lease, worker: &str) -> WorkerStatus {
        if lease.owner_without_heartbeat.as_deref() == Some(worker) {
            WorkerStatus::Unknown
        } else {
            self.owner_status(worker)
        }
    }

    /// The workers whose heartbeats are live.
    pub fn live_workers(&self) -> impl Iterator<Item = &str> {
        self.owners
            .iter()
            .filter(|(_, s)| matches!(s, WorkerStatus::Live(_)))
            .map(|(w, _)| w.as_str())
    }

    /// Whether `lease` is expired at `now`: it has no owner; or its owner's heartbeat is dead;
    /// or its owner renews leases one by one (or has no heartbeat row) and the lease's counter
    /// has not changed (as this observer saw it) for longer than `failover_time`. A lease never
    /// observed is not expired (its clock has not started). A lease of a live worker that
    /// renews through its heartbeat is never expired, nor one this worker cannot judge
    /// ([`ExpiryTracker::cannot_judge`]).
    ///
    /// A lease in the middle of a graceful hand-off (`checkpointOwner` names its previous owner)
    /// may still be processed by that previous owner until it notices the steal: its owner's
    /// death alone does not free it. It is expired when the previous owner is dead too, or by
    /// its counter (a previous owner that renews per lease stopped by then: its renewals
    /// conflict since the steal); never while the previous owner is a live worker that renews
    /// through its heartbeat.
    pub fn is_expired(&self, lease: &Lease, failover_time: Duration, now: Instant) -> bool {
        let Some(owner) = lease.lease_owner.as_deref() else {
            return true;
        };
        if self.cannot_judge(lease) {
            return false;
        }
        let previous = lease
            .checkpoint_owner
            .as_deref()
            .filter(|p| *p != owner)
            .map(|p| self.status_for(lease, p));
        match (self.status_for(lease, owner), previous) {
            (_, Some(WorkerStatus::Live(LeaseRenewal::Worker))) => return false,
            (WorkerStatus::Dead(_), None | Some(WorkerStatus::Dead(_))) => return true,
            (WorkerStatus::Live(LeaseRenewal::Worker), _) => return false,
            _ => {}
        }
        self.counter_expired(lease, failover_time, now)
    }

    /// Whether `lease`'s counter has stood still for longer than `failover_time` as this
    /// observer saw it (whoever owns it).
    pub fn counter_expired(&self, lease: &Lease, failover_time: Duration, now: Instant) -> bool {
        match self.seen.get(&lease.lease_key) {
            Some(&(counter, at)) if counter == lease.lease_counter => now.duration_since(at) > failover_time,
            _ => false,
        }
    }

    /// Whether the previous owner of a lease in the middle of a hand-off (`checkpointOwner`) has
    /// stopped processing it: proven dead, or (unless it renews through its heartbeat and is
    /// live) the lease's counter stood still for the failover time.
    pub fn previous_owner_gone(&self, lease: &Lease, failover_time: Duration, now: Instant) -> bool {
        let Some(previous) = lease.checkpoint_owner.as_deref() else {
            return true;
        };
        match self.status_for(lease, previous) {
            WorkerStatus::Dead(_) => true,
            WorkerStatus::Live(LeaseRenewal::Worker) => false,
            _ => self.counter_expired(lease, failover_time, now),
        }
    }
}

/// The knobs of balancing.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// This worker's id.
    pub worker_id: String,
    /// How long a lease's counter may stand still before it is expired.
    pub failover_time: Duration,
    /// Never hold more leases than this.
    pub max_leases_per_worker: usize,
    /// Steal at most this many leases per round.
    pub max_leases_to_steal: usize,
    /// Even the count, or the load (see [`crate::load`]).
    pub mode: BalanceMode,
    /// Whether rows that name this worker id but that it does not hold are its own from an
    /// earlier life, proven gone (this process took the id's heartbeat row over from a process
    /// that stood still): taken back at once. Otherwise (the row was new, or there are no
    /// heartbeats) another process with the same id may be renewing them: they are taken only
    /// when their counters stood still for the failover time.
    pub adopt_own_rows: bool,
    /// Rows naming this worker that this process held and let go of (a lapse, a failed
    /// renewal), with the counters they may have now if nobody else wrote them since (the
    /// counter this process last knew, and the next one if a write of its own may have been
    /// applied unseen): taken back at once when they still have one of them.
    pub own_rows: BTreeMap<String, (u64, u64)>,
    /// Dead workers whose leases this worker takes all of (within `max_leases_per_worker`),
    /// beyond its even share: it watched them and is the first to know (the divided watch of
    /// [`crate::coordinator`]). The others even the fleet out by steals afterwards.
    pub take_all_of: BTreeSet<String>,
}

/// What to do this round.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TakePlan {
    /// Leases to take outright: unowned, expired, or owned by this worker id in a previous life.
    pub take: Vec<Lease>,
    /// Leases to steal from a live worker, with a graceful hand-off.
    pub steal: Vec<Lease>,
    /// The even share this worker aims for.
    pub target: usize,
    /// The most leases another live worker holds, as scanned (0 if none).
    pub most_loaded: usize,
    /// More free or expired leases, in this worker's order of preference, to try when a take
    /// of `take` loses the race to another worker.
    pub spare: Vec<Lease>,
}

/// Decides which leases to take and steal, from a snapshot of the table.
///
/// `held` are the keys this worker holds and renews right now, and those it gave up whose shard
/// task still runs: none of them is taken. Leases checkpointed at
/// `SHARD_END` are finished: they are neither counted nor taken.
pub fn plan_takes(
    leases: &[Lease],
    tracker: &ExpiryTracker,
    held: &BTreeSet<String>,
    config: &BalanceConfig,
    now: Instant,
) -> TakePlan {
    let me = config.worker_id.as_str();
    let active: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();

    // Live leases per worker (including this one, even with nothing yet).
    let mut load: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    load.insert(me, Vec::new());
    // Live workers count even while they hold nothing (they just joined).
    for worker in tracker.live_workers() {
        load.entry(worker).or_default();
    }
    let mut available: Vec<&Lease> = Vec::new();
    let mut mine_unheld: Vec<&Lease> = Vec::new();
    for lease in &active {
        match lease.lease_owner.as_deref() {
            // Held here, or given up here with its shard task still running, while the row
            // names another owner: never taken again until that task has let it go (one key
            // never has two tasks in one worker).
            // (Not counted for the owner the scan names either: that may be a stale row of a
            // lease this worker has just taken, and must never be a steal candidate.)
            Some(owner) if owner != me && held.contains(&lease.lease_key) => {}
            None if held.contains(&lease.lease_key) => {}
            Some(owner) if owner == me => {
                load.entry(me).or_default().push(lease);
                let ours = config
                    .own_rows
                    .get(&lease.lease_key)
                    .is_some_and(|(lo, hi)| (*lo..=*hi).contains(&lease.lease_counter));
                // A hand-off to this worker still in progress (it lost the lease while waiting):
                // the previous owner may still process it; a take would clear
                // `checkpointOwner` and start at once (found by the simulator).
                let handoff_pending = lease.checkpoint_owner.as_deref().is_some_and(|p| {
                    p != me && !tracker.previous_owner_gone(lease, config.failover_time, now)
                });
                if !held.contains(&lease.lease_key)
                    && !handoff_pending
                    && (config.adopt_own_rows
                        || ours
                        || tracker.counter_expired(lease, config.failover_time, now))
                {
                    mine_unheld.push(lease);
                }
            }
            // A dead owner's lease that is not free yet (a hand-off to it still in progress):
            // not takeable, and the dead owner does not count as a worker in the even share
            // (found by the simulator: the others stopped at a share that left its other
            // leases untaken).
            Some(owner)
                if matches!(tracker.status_for(lease, owner), WorkerStatus::Dead(_))
                    && !tracker.is_expired(lease, config.failover_time, now) => {}
            Some(owner) if !tracker.is_expired(lease, config.failover_time, now) => {
                load.entry(owner).or_default().push(lease);
            }
            _ => available.push(lease),
        }
    }

    let workers = load.len();
    let target = active.len().div_ceil(workers).min(config.max_leases_per_worker);
    let my_count = load.get(me).map_or(0, Vec::len);
    let most_loaded = load
        .iter()
        .filter(|(w, _)| **w != me)
        .map(|(_, ls)| ls.len())
        .max()
        .unwrap_or(0);
    let mut plan = TakePlan {
        target,
        most_loaded,
        ..TakePlan::default()
    };

    // Rows that name this worker but that it does not hold (it restarted with the same id):
    // they are ours, take them back at once, within the cap.
    let room = config.max_leases_per_worker.saturating_sub(held.len());
    plan.take
        .extend(mine_unheld.iter().take(room).map(|l| (*l).clone()));

    let mut need = target.saturating_sub(my_count);
    if !config.take_all_of.is_empty() {
        let room = config
            .max_leases_per_worker
            .saturating_sub(held.len() + plan.take.len());
        let (mut theirs, rest): (Vec<&Lease>, Vec<&Lease>) = available.into_iter().partition(|l| {
            l.lease_owner
                .as_deref()
                .is_some_and(|o| config.take_all_of.contains(o))
        });
        theirs.sort_by_key(|l| spread(me, &l.lease_key));
        let n = theirs.len().min(room);
        need = need.saturating_sub(n);
        plan.take.extend(theirs.drain(..n).map(|l| (*l).clone()));
        available = rest;
        available.extend(theirs);
    }
    let load_mode = match &config.mode {
        BalanceMode::Load(settings) => Some(settings),
        BalanceMode::Count => None,
    };
    if need == 0 && load_mode.is_none() {
        return plan;
    }
    // Spread the workers' choices so that they do not race for the same leases: each lease
    // has one preferred taker among the workers this one knows (its key's hash modulo their
    // number, over their sorted ids: the same choice on every worker that sees the same
    // fleet); a worker takes its preferred leases first, then the others in an order of its
    // own. Linear in the leases, whatever the fleet's size.
    let workers: Vec<&str> = load.keys().copied().collect();
    let my_index = workers.iter().position(|w| *w == me).unwrap_or(0) as u64;
    let n = workers.len().max(1) as u64;
    available.sort_by_cached_key(|l| {
        let preferred = spread("", &l.lease_key) % n == my_index;
        (!preferred, spread(me, &l.lease_key))
    });
    let taking = need.min(available.len());
    plan.take.extend(available[..taking].iter().map(|l| (*l).clone()));
    plan.spare
        .extend(available[taking..].iter().take(taking).map(|l| (*l).clone()));
    need -= taking;
    if let Some(settings) = load_mode {
        // Free and expired leases are taken up to the even count as in the count mode; the
        // steals even the load instead of the count (see `crate::load`).
        if available.is_empty() && held.len() < config.max_leases_per_worker {
            if let Some(lease) = plan_load_steal(&load, me, settings, |k| tracker.last_moved(k), now)
                .filter(|l| !tracker.cannot_judge(l))
            {
                plan.steal.push(lease.clone());
            }
        }
        return plan;
    }
    if need == 0 || !available.is_empty() {
        return plan;
    }

    // Nothing free: steal from the most loaded worker, if it has more than its share (or
    // exactly its share while this worker is short by more than one).
    let victim = load
        .iter()
        .filter(|(w, _)| **w != me)
        .max_by_key(|(w, ls)| (ls.len(), std::cmp::Reverse(**w)));
    if let Some((_, victim_leases)) = victim {
        let surplus = if victim_leases.len() > target {
            victim_leases.len() - target
        } else if victim_leases.len() == target && need > 1 {
            1
        } else {
            0
        };
        let mut candidates: Vec<&&Lease> = victim_leases
            .iter()
            .filter(|l| l.checkpoint_owner.is_none() && !tracker.cannot_judge(l))
            .collect();
        // Leases that moved within the failover time last: a lease just taken (a dead worker's,
        // all taken by the worker that watched it) is not passed on again at once. When every
        // candidate moved that recently (a fleet settling after several deaths), the one that
        // moved longest ago goes first: a lease is not handed on from thief to thief while
        // others stay put (found by the simulator: seed 5842, worker renewal, 8 x 32, moved
        // one lease 4 times after the faults stopped).
        candidates.sort_by_key(|l| {
            let recent = tracker
                .last_moved(&l.lease_key)
                .filter(|at| now.saturating_duration_since(*at) < config.failover_time);
            (recent.is_some(), recent, spread(me, &l.lease_key))
        });
        let n = need.min(surplus).min(config.max_leases_to_steal);
        plan.steal
            .extend(candidates.into_iter().take(n).map(|l| (*l).clone()));
    }
    plan
}

fn spread(worker: &str, key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (worker, key).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::ExtendedSequenceNumber;

    const FAILOVER: Duration = Duration::from_secs(10);

    fn config(me: &str) -> BalanceConfig {
        BalanceConfig {
            worker_id: me.into(),
            failover_time: FAILOVER,
            max_leases_per_worker: 100,
            max_leases_to_steal: 3,
            mode: BalanceMode::Count,
            adopt_own_rows: true,
            own_rows: BTreeMap::new(),
            take_all_of: BTreeSet::new(),
        }
    }

    fn table(owners: &[Option<&str>]) -> Vec<Lease> {
        owners
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut l = Lease::new(format!("shard-{i:03}"), ExtendedSequenceNumber::TrimHorizon);
                l.lease_owner = o.map(str::to_owned);
                l.lease_counter = 1;
                l
            })
            .collect()
    }

    #[test]
    fn expiry_uses_the_observers_clock_since_the_counter_last_changed() {
        let t0 = Instant::now();
        let mut leases = table(&[Some("a")]);
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, t0);
        assert!(!tracker.is_expired(&leases[0], FAILOVER, t0 + Duration::from_secs(9)));
        // The owner renews: the clock restarts from when the change was seen.
        leases[0].lease_counter += 1;
        tracker.observe(&leases, t0 + Duration::from_secs(9));
        assert!(!tracker.is_expired(&leases[0], FAILOVER, t0 + Duration::from_secs(18)));
        tracker.observe(&leases, t0 + Duration::from_secs(18));
        assert!(tracker.is_expired(&leases[0], FAILOVER, t0 + Duration::from_secs(20)));
        // A lease never observed is not expired, however old.
        let fresh = ExpiryTracker::new();
        assert!(!fresh.is_expired(&leases[0], FAILOVER, t0 + Duration::from_secs(1000)));
    }

    /// A heartbeat row proves nothing about a lease whose owner renews it without heartbeats
    /// (found by the simulator, seed 15383: such a process's id had a row written by a
    /// duplicate, which stood still, and its leases were taken as a dead worker's while it
    /// renewed them). A flag naming someone else (left by a former owner) changes nothing.
    #[test]
    fn a_lease_renewed_without_heartbeats_is_judged_by_its_counter_alone() {
        let t0 = Instant::now();
        let mut leases = table(&[Some("a"), Some("a")]);
        leases[0].owner_without_heartbeat = Some("a".into());
        leases[1].owner_without_heartbeat = Some("former".into());
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, t0);
        tracker.set_owners(HashMap::from([(
            "a".to_owned(),
            WorkerStatus::Dead(LeaseRenewal::PerLease),
        )]));
        let soon = t0 + Duration::from_secs(1);
        assert!(
            !tracker.is_expired(&leases[0], FAILOVER, soon),
            "the row of `a` is not this lease's"
        );
        assert!(
            tracker.is_expired(&leases[1], FAILOVER, soon),
            "judged by the heartbeat"
        );
        let plan = plan_takes(&leases, &tracker, &BTreeSet::new(), &config("b"), soon);
        let taken: Vec<&str> = plan.take.iter().map(|l| l.lease_key.as_str()).collect();
        assert_eq!(taken, ["shard-001"]);
        // Its counter standing still for the failover time expires it, as for a Java worker.
        let later = t0 + FAILOVER + Duration::from_secs(1);
        assert!(tracker.is_expired(&leases[0], FAILOVER, later));
        // During a hand-off the flag is about the previous owner.
        let mut handing = leases[0].clone();
        handing.lease_owner = Some("b".into());
        handing.checkpoint_owner = Some("a".into());
        assert!(!tracker.previous_owner_gone(&handing, FAILOVER, soon));
        assert!(tracker.previous_owner_gone(&handing, FAILOVER, later));
    }

    #[test]
    fn unowned_leases_are_taken_at_once_up_to_the_even_share() {
        let now = Instant::now();
        let leases = table(&[None, None, None, None, Some("b"), Some("b")]);
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, now);
        let plan = plan_takes(&leases, &tracker, &BTreeSet::new(), &config("a"), now);
        assert_eq!(plan.target, 3);
        assert_eq!(plan.take.len(), 3);
        assert!(plan.take.iter().all(|l| l.lease_owner.is_none()));
        assert!(plan.steal.is_empty());
    }

    #[test]
    fn expired_leases_are_taken_before_anything_is_stolen() {
        let t0 = Instant::now();
        let leases = table(&[Some("dead"), Some("dead"), Some("b"), Some("b")]);
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, t0);
        let early = plan_takes(
            &leases,
            &tracker,
            &BTreeSet::new(),
            &config("a"),
            t0 + FAILOVER / 2,
        );
        // Three live workers as far as "a" can tell: target ceil(4/3) = 2; "dead" holds 2 = target
        // and "a" needs 2 > 1, so at most one steal, and nothing is taken outright.
        assert!(early.take.is_empty());
        assert!(early.steal.len() <= 1);
        let late = plan_takes(
            &leases,
            &tracker,
            &BTreeSet::new(),
            &config("a"),
            t0 + FAILOVER * 2,
        );
        // Every lease expired: the live worker set is {a}, target 4, take all four, steal none.
        assert_eq!(late.take.len(), 4);
        assert!(late.steal.is_empty());
    }

    #[test]
    fn steals_from_the_most_loaded_worker_a_bounded_number_per_round() {
        let now = Instant::now();
        let mut owners = vec![Some("b"); 12];
        owners.extend([Some("c"); 4]);
        let leases = table(&owners);
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, now);
        let plan = plan_takes(&leases, &tracker, &BTreeSet::new(), &config("a"), now);
        assert_eq!(plan.target, 6);
        assert!(plan.take.is_empty());
        assert_eq!(plan.steal.len(), 3, "bounded by max_leases_to_steal");
        assert!(plan.steal.iter().all(|l| l.is_owned_by("b")));
    }

    /// When every lease of the most loaded worker moved within the failover time, the ones it
    /// has held longest are stolen first: a lease is not passed from thief to thief while the
    /// others stay put (simulator seed 5842).
    #[test]
    fn among_leases_that_all_moved_lately_the_longest_held_are_stolen_first() {
        let now = Instant::now();
        let mut owners = vec![Some("a"); 4];
        owners.extend([Some("z"); 10]);
        owners.extend([Some("c"); 4]);
        let mut leases = table(&owners);
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, now - Duration::from_secs(3));
        // Two of z's leases went to b first, the other eight a second later.
        for (i, l) in leases.iter_mut().enumerate().skip(4).take(10) {
            if i < 6 {
                l.lease_owner = Some("b".into());
                l.lease_counter += 1;
            }
        }
        tracker.observe(&leases, now - Duration::from_secs(2));
        for l in leases.iter_mut().skip(6).take(8) {
            l.lease_owner = Some("b".into());
            l.lease_counter += 1;
        }
        tracker.observe(&leases, now - Duration::from_secs(1));
        let plan = plan_takes(&leases, &tracker, &BTreeSet::new(), &config("a"), now);
        assert_eq!(plan.target, 6);
        let mut stolen: Vec<&str> = plan.steal.iter().map(|l| l.lease_key.as_str()).collect();
        stolen.sort_unstable();
        assert_eq!(stolen, ["shard-004", "shard-005"]);
    }

    #[test]
    fn never_exceeds_max_leases_per_worker() {
        let now = Instant::now();
        let leases = table(&[None; 10]);
        let tracker = ExpiryTracker::new();
        let mut cfg = config("a");
        cfg.max_leases_per_worker = 4;
        let plan = plan_takes(&leases, &tracker, &BTreeSet::new(), &cfg, now);
        assert_eq!(plan.take.len(), 4);
    }

    #[test]
    fn finished_leases_are_neither_counted_nor_taken() {
        let now = Instant::now();
        let mut leases = table(&[None, None, Some("b")]);
        leases[0].checkpoint = ExtendedSequenceNumber::ShardEnd;
        let plan = plan_takes(
            &leases,
            &ExpiryTracker::new(),
            &BTreeSet::new(),
            &config("a"),
            now,
        );
        assert_eq!(plan.target, 1);
        assert_eq!(
            plan.take.iter().map(|l| l.lease_key.as_str()).collect::<Vec<_>>(),
            ["shard-001"]
        );
    }

    #[test]
    fn a_restarted_worker_takes_back_its_own_rows_at_once() {
        let now = Instant::now();
        let leases = table(&[Some("a"), Some("a"), Some("b")]);
        let plan = plan_takes(
            &leases,
            &ExpiryTracker::new(),
            &BTreeSet::new(),
            &config("a"),
            now,
        );
        assert_eq!(plan.take.len(), 2);
        assert!(plan.steal.is_empty());
    }

    #[test]
    fn balanced_tables_stay_put() {
        let now = Instant::now();
        let leases = table(&[Some("a"), Some("a"), Some("b"), Some("b"), Some("c")]);
        let held: BTreeSet<String> = ["shard-000".to_owned(), "shard-001".to_owned()].into();
        let mut tracker = ExpiryTracker::new();
        tracker.observe(&leases, now);
        for me in ["a", "b", "c"] {
            let held = if me == "a" { held.clone() } else { BTreeSet::new() };
            let mut plan = plan_takes(&leases, &tracker, &held, &config(me), now);
            plan.take.retain(|l| !l.is_owned_by(me));
            assert!(plan.take.is_empty() && plan.steal.is_empty(), "{me}: {plan:?}");
        }
    }

    /// Simulates several workers running rounds against one table, in virtual time, and checks
    /// that they converge to an even share without sleeping.
    #[test]
    fn workers_joining_converge_to_an_even_share_in_a_few_rounds() {
        let now = Instant::now();
        let mut leases = table(&[Some("w0"); 64]);
        let workers = ["w0", "w1", "w2", "w3"];
        let mut trackers: Vec<ExpiryTracker> = workers.iter().map(|_| ExpiryTracker::new()).collect();
        let mut cfgs: Vec<BalanceConfig> = workers.iter().map(|w| config(w)).collect();
        for c in &mut cfgs {
            c.max_leases_to_steal = 8;
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 20, "did not converge: {leases:?}");
            for (i, w) in workers.iter().enumerate() {
                trackers[i].observe(&leases, now);
                let held: BTreeSet<String> = leases
                    .iter()
                    .filter(|l| l.is_owned_by(w))
                    .map(|l| l.lease_key.clone())
                    .collect();
                let plan = plan_takes(&leases, &trackers[i], &held, &cfgs[i], now);
                for l in plan.take.iter().chain(&plan.steal) {
                    let row = leases.iter_mut().find(|r| r.lease_key == l.lease_key).unwrap();
                    if row.lease_counter == l.lease_counter {
                        row.lease_owner = Some((*w).to_owned());
                        row.lease_counter += 1;
                    }
                }
            }
            let counts: Vec<usize> = workers
                .iter()
                .map(|w| leases.iter().filter(|l| l.is_owned_by(w)).count())
                .collect();
            if counts.iter().all(|c| *c == 16) {
                break;
            }
        }
        assert!(rounds <= 4, "took {rounds} rounds");
    }
}
