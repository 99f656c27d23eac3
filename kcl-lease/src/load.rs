//! Load-aware balancing: evening the sum of `throughputKBps` per worker, not only the count.
//!
//! A pure function of a snapshot of the table and the time ([`plan_load_steal`]), used by
//! [`crate::balance::plan_takes`] when [`BalanceMode::Load`] is on. One round moves at most one
//! lease, and only when all of these hold (the damping that keeps leases from ping-ponging):
//! - this worker is the least loaded of the live workers (ties: the smallest id), so one
//!   worker acts at a time;
//! - the most loaded worker is above the fleet's mean by more than `threshold` (hysteresis:
//!   a fleet within the threshold is left alone);
//! - moving the chosen lease narrows the gap between the two by at least
//!   `threshold × mean / 2` (a move that only swaps who is the hot one is never made);
//! - the lease has not changed owner for `min_move_interval` by this worker's clock, and is
//!   not in a hand-off already.
//!
//! The move itself is the graceful steal that exists (`checkpointOwner` hand-off). A lease
//! whose row has no `throughputKBps` yet counts as 0 KB/s.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::Lease;

/// How a worker balances leases: the one place for the setting
/// ([`crate::LeaseSettings::balance`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum BalanceMode {
    /// Even the number of leases per worker (the Java KCL 2.x's rule; the default: it needs no
    /// measurements and agrees with every other KCL worker on the same table).
    #[default]
    Count,
    /// Even the sum of the leases' `throughputKBps` per worker (as the Java KCL 3.x does).
    Load(LoadBalancing),
}

/// The knobs of [`BalanceMode::Load`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LoadBalancing {
    /// Act only when the most loaded worker is above the mean by more than this fraction of
    /// it (default 0.2: 20 %).
    pub threshold: f64,
    /// A lease that changed owner less than this long ago (by this worker's clock) is not moved
    /// again (default `4 × failover_time`).
    pub min_move_interval: Duration,
    /// How often each worker scans the lease table to look at the loads (default
    /// `2 × failover_time`); the count-based mode needs no such scans.
    pub rebalance_interval: Duration,
}

impl LoadBalancing {
    /// The defaults for a failover time.
    pub fn new(failover_time: Duration) -> Self {
        Self {
            threshold: 0.2,
            min_move_interval: failover_time * 4,
            rebalance_interval: failover_time * 2,
        }
    }
}

/// The load of one lease: its `throughputKBps`, 0 when unknown or not a sane number.
pub fn lease_load(lease: &Lease) -> f64 {
    lease
        .throughput_kbps
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(0.0)
}

/// The lease this worker should steal to even the load, if any (see the module docs).
///
/// `owned` maps every live worker (this one included) to the active leases it holds;
/// `last_moved` tells when this worker saw a lease change owner (or first saw it).
pub fn plan_load_steal<'a>(
    owned: &BTreeMap<&str, Vec<&'a Lease>>,
    me: &str,
    settings: &LoadBalancing,
    last_moved: impl Fn(&str) -> Option<Instant>,
    now: Instant,
) -> Option<&'a Lease> {
    if owned.len() < 2 {
        return None;
    }
    let loads: Vec<(&str, f64)> = owned
        .iter()
        .map(|(w, ls)| (*w, ls.iter().map(|l| lease_load(l)).sum()))
        .collect();
    let total: f64 = loads.iter().map(|(_, l)| l).sum();
    if total <= 0.0 {
        return None;
    }
    let mean = total / loads.len() as f64;
    // BTreeMap order: ties are broken by the smallest id, the same on every worker.
    let (least, min) = loads
        .iter()
        .copied()
        .fold(None::<(&str, f64)>, |best, (w, l)| match best {
            Some((_, b)) if b <= l => best,
            _ => Some((w, l)),
        })?;
    if least != me {
        return None;
    }
    let (victim, max) = loads
        .iter()
        .copied()
        .fold(None::<(&str, f64)>, |best, (w, l)| match best {
            Some((_, b)) if b >= l => best,
            _ => Some((w, l)),
        })?;
    if victim == me || max <= mean * (1.0 + settings.threshold) {
        return None;
    }
    let gap = max - min;
    let min_gain = settings.threshold * mean / 2.0;
    owned
        .get(victim)?
        .iter()
        .copied()
        .filter(|l| l.checkpoint_owner.is_none() && lease_load(l) > 0.0)
        .filter(|l| {
            last_moved(&l.lease_key).is_none_or(|at| now.duration_since(at) >= settings.min_move_interval)
        })
        .map(|l| (l, (gap - 2.0 * lease_load(l)).abs()))
        .filter(|(_, after)| gap - after >= min_gain)
        .min_by(|a, b| {
            a.1.total_cmp(&b.1)
                .then_with(|| a.0.lease_key.cmp(&b.0.lease_key))
        })
        .map(|(l, _)| l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::ExtendedSequenceNumber;

    fn lease(key: &str, owner: &str, kbps: f64) -> Lease {
        let mut l = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        l.lease_owner = Some(owner.into());
        l.throughput_kbps = Some(kbps);
        l
    }

    fn settings() -> LoadBalancing {
        LoadBalancing {
            threshold: 0.2,
            min_move_interval: Duration::from_secs(40),
            rebalance_interval: Duration::from_secs(20),
        }
    }

    fn owned<'a>(leases: &'a [Lease], workers: &[&'a str]) -> BTreeMap<&'a str, Vec<&'a Lease>> {
        let mut m: BTreeMap<&str, Vec<&Lease>> = workers.iter().map(|w| (*w, Vec::new())).collect();
        for l in leases {
            if let Some(o) = l.lease_owner.as_deref() {
                m.entry(o).or_default().push(l);
            }
        }
        m
    }

    /// 16 shards, 2 hot ones carrying half the bytes, both on one worker, 4 workers each
    /// starting with 4 leases: every worker runs rounds in virtual time against one table.
    /// The loads end within 20 % of the mean, with few moves, and nothing moves afterwards.
    #[test]
    fn a_skewed_fleet_converges_without_ping_pong() {
        let workers = ["w0", "w1", "w2", "w3"];
        let cold = 50.0 / 14.0;
        let mut leases: Vec<Lease> = (0..16)
            .map(|i| {
                let kbps = if i < 2 { 25.0 } else { cold };
                lease(&format!("shard-{i:02}"), workers[i / 4], kbps)
            })
            .collect();
        let t0 = Instant::now();
        let mut moved_at: BTreeMap<String, Instant> =
            leases.iter().map(|l| (l.lease_key.clone(), t0)).collect();
        let mut moves: BTreeMap<String, u32> = BTreeMap::new();
        let mut now = t0;
        for _round in 0..200 {
            now += Duration::from_secs(5);
            for w in workers {
                let steal = {
                    let o = owned(&leases, &workers);
                    plan_load_steal(&o, w, &settings(), |k| moved_at.get(k).copied(), now)
                        .map(|l| l.lease_key.clone())
                };
                if let Some(key) = steal {
                    let row = leases.iter_mut().find(|l| l.lease_key == key).unwrap();
                    row.lease_owner = Some(w.to_owned());
                    moved_at.insert(key.clone(), now);
                    *moves.entry(key).or_default() += 1;
                }
            }
        }
        let o = owned(&leases, &workers);
        let loads: Vec<f64> = o
            .values()
            .map(|ls| ls.iter().map(|l| lease_load(l)).sum())
            .collect();
        let mean = loads.iter().sum::<f64>() / 4.0;
        for l in &loads {
            assert!((l - mean).abs() <= mean * 0.2 + 1e-9, "{loads:?}");
        }
        let total: u32 = moves.values().sum();
        assert!(total <= 8, "{moves:?}");
        assert!(moves.values().all(|m| *m == 1), "a lease moved twice: {moves:?}");
    }

    #[test]
    fn a_fleet_within_the_threshold_is_left_alone_and_only_the_least_loaded_acts() {
        let now = Instant::now();
        let leases = [
            lease("a1", "a", 11.0),
            lease("b1", "b", 10.0),
            lease("c1", "c", 9.0),
        ];
        let o = owned(&leases, &["a", "b", "c"]);
        for me in ["a", "b", "c"] {
            assert!(plan_load_steal(&o, me, &settings(), |_| None, now).is_none());
        }
        let hot = [
            lease("a1", "a", 30.0),
            lease("a2", "a", 10.0),
            lease("b1", "b", 5.0),
            lease("c1", "c", 6.0),
        ];
        let o = owned(&hot, &["a", "b", "c"]);
        assert!(plan_load_steal(&o, "c", &settings(), |_| None, now).is_none());
        // b takes a2, not a1: moving a1 (30) would just make b the hot one.
        let got = plan_load_steal(&o, "b", &settings(), |_| None, now).map(|l| l.lease_key.as_str());
        assert_eq!(got, Some("a2"));
        // A lease that moved recently stays put: the other one is taken if that still helps.
        let recent = |k: &str| (k == "a2").then_some(now);
        let got = plan_load_steal(&o, "b", &settings(), recent, now).map(|l| l.lease_key.as_str());
        assert_eq!(got, Some("a1"));
        let both = |_: &str| Some(now);
        assert!(plan_load_steal(&o, "b", &settings(), both, now).is_none());
    }

    #[test]
    fn one_indivisible_hot_shard_is_not_bounced_between_workers() {
        let now = Instant::now();
        let leases = [lease("hot", "a", 100.0), lease("c1", "b", 1.0)];
        let o = owned(&leases, &["a", "b"]);
        assert!(plan_load_steal(&o, "b", &settings(), |_| None, now).is_none());
    }
}
