//! Lease coordination at fleet scale, in simulated time (no sleeps): what the fleet reads and
//! writes in steady state, how fast a dead or departed worker's leases move, and what a slow
//! store does to a worker. Every worker is a real `LeaseCoordinator::run` loop on one shared
//! in-memory table; the cost figures come from the cost meter (`MeteredLeaseStore`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_lease::{
    CoordinatorConfig, CostSnapshot, ExtendedSequenceNumber, FailureLeaseStore, HeldLease,
    InMemoryLeaseStore, Lease, LeaseCoordinator, LeaseFault, LeaseFaultPlan, LeaseOp, LeaseRenewal,
    LeaseStatus, LeaseStore, LeaseTrigger, MeteredLeaseStore,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const FAILOVER: Duration = Duration::from_secs(10);

fn table(shards: usize) -> InMemoryLeaseStore {
    let store = InMemoryLeaseStore::new();
    for i in 0..shards {
        store.put_raw(Lease::new(
            format!("shardId-{i:06}"),
            ExtendedSequenceNumber::TrimHorizon,
        ));
    }
    store
}

/// One worker: its coordinator loop, and a task that does with what it acquires what the
/// scheduler does: wait for a graceful hand-off to finish, then "process" (`active`) until
/// the lease is lost or another worker asks for it, then release it.
struct Worker {
    coordinator: Arc<LeaseCoordinator>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    acceptor: JoinHandle<()>,
    active: Arc<Mutex<BTreeSet<String>>>,
}

impl Worker {
    fn start(store: Arc<dyn LeaseStore>, id: &str, renewal: LeaseRenewal) -> Self {
        let mut config = CoordinatorConfig::new(id, FAILOVER);
        config.leases.renewal = renewal;
        config.leases.max_leases_to_steal = 4;
        let (coordinator, mut acquired): (_, mpsc::Receiver<Arc<HeldLease>>) =
            LeaseCoordinator::new(store, config);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(coordinator.clone().run(rx));
        let active = Arc::new(Mutex::new(BTreeSet::new()));
        let (c, a) = (coordinator.clone(), active.clone());
        let acceptor = tokio::spawn(async move {
            let mut shards = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    Some(lease) = acquired.recv() => {
                        let (c, a) = (c.clone(), a.clone());
                        shards.spawn(async move {
                            let mut status = lease.subscribe();
                            if lease.wait_for_handoff(Duration::from_millis(100)).await.is_ok() {
                                a.lock().unwrap().insert(lease.key().to_owned());
                                let _ = status.wait_for(|s| *s != LeaseStatus::Held).await;
                                a.lock().unwrap().remove(lease.key());
                            }
                            c.release(&lease).await;
                        });
                    }
                    Some(_) = shards.join_next(), if !shards.is_empty() => {}
                    else => break,
                }
            }
        });
        Self {
            coordinator,
            stop,
            task,
            acceptor,
            active,
        }
    }

    /// The leases this worker processes now: acquired, hand-off finished, held and valid.
    fn processing(&self) -> BTreeSet<String> {
        let held: BTreeSet<String> = self
            .coordinator
            .held()
            .iter()
            .filter(|l| l.is_valid())
            .map(|l| l.key().to_owned())
            .collect();
        let active = self.active.lock().unwrap();
        held.intersection(&active).cloned().collect()
    }

    fn held(&self) -> BTreeSet<String> {
        self.coordinator
            .held()
            .iter()
            .map(|l| l.key().to_owned())
            .collect()
    }

    /// As if the process died: nothing released, the heartbeat row stays.
    fn kill(self) {
        self.task.abort();
        self.acceptor.abort();
    }

    /// A graceful shutdown: release every lease, remove the heartbeat row.
    async fn shutdown(self) {
        self.coordinator.stop_taking();
        for lease in self.coordinator.held() {
            self.coordinator.release(&lease).await;
        }
        self.coordinator.leave().await;
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.acceptor.abort();
    }
}

fn owners(store: &InMemoryLeaseStore) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for lease in store.snapshot() {
        if let Some(owner) = lease.lease_owner {
            *counts.entry(owner).or_insert(0) += 1;
        }
    }
    counts
}

/// Advances simulated time in small steps until `cond` holds; returns the time it took.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn even(counts: &BTreeMap<String, usize>, workers: usize, shards: usize) -> bool {
    counts.len() == workers
        && counts
            .values()
            .all(|c| *c == shards / workers || *c == shards.div_ceil(workers))
}

struct Fleet {
    memory: InMemoryLeaseStore,
    meter: MeteredLeaseStore<InMemoryLeaseStore>,
    workers: Vec<Worker>,
}

async fn fleet(shards: usize, n: usize, renewal: LeaseRenewal) -> Fleet {
    let memory = table(shards);
    let meter = MeteredLeaseStore::new(memory.clone());
    let store: Arc<dyn LeaseStore> = Arc::new(meter.clone());
    let workers: Vec<Worker> = (0..n)
        .map(|i| Worker::start(store.clone(), &format!("worker-{i:03}"), renewal))
        .collect();
    let cold = until(Duration::from_secs(120), "an even spread", || {
        even(&owners(&memory), n, shards)
    })
    .await;
    println!("{n} workers on {shards} shards: even {cold:?} after a cold start (simulated time)");
    Fleet {
        memory,
        meter,
        workers,
    }
}

/// Steady-state cost per shard and minute over `minutes` of simulated time.
async fn steady_cost(f: &Fleet, shards: usize, minutes: u32) -> (f64, f64, CostSnapshot) {
    // Let the spread settle (hand-offs finishing, announcements read).
    tokio::time::sleep(FAILOVER * 3).await;
    let before = f.meter.snapshot();
    tokio::time::sleep(Duration::from_secs(60 * u64::from(minutes))).await;
    let cost = f.meter.snapshot().since(&before);
    let per = |v: u64| v as f64 / shards as f64 / f64::from(minutes);
    (per(cost.lease_rows_read()), per(cost.lease_writes()), cost)
}

#[tokio::test(start_paused = true)]
async fn steady_state_reads_do_not_grow_with_the_number_of_workers() {
    let shards = 200;
    let mut rows = Vec::new();
    for workers in [4, 8] {
        let f = fleet(shards, workers, LeaseRenewal::PerLease).await;
        let (read, written, cost) = steady_cost(&f, shards, 5).await;
        println!("{workers} workers: {read:.2} lease rows read and {written:.2} lease writes per shard-minute; {cost:?}");
        assert!(
            read <= 6.0,
            "{workers} workers read {read:.2} lease rows per shard-minute"
        );
        // Per-lease renewal: every lease renewed every failover / 3.
        assert!(
            (17.0..=19.0).contains(&written),
            "{written:.2} writes per shard-minute"
        );
        rows.push(read);
        for w in f.workers {
            w.kill();
        }
    }
    assert!(
        rows[1] <= rows[0] * 1.5 + 0.5,
        "8 workers read {} vs 4 workers {}",
        rows[1],
        rows[0]
    );
}

#[tokio::test(start_paused = true)]
async fn worker_renewal_writes_one_row_per_worker_not_per_lease() {
    let shards = 200;
    let f = fleet(shards, 4, LeaseRenewal::Worker).await;
    let counters: Vec<u64> = f.memory.snapshot().iter().map(|l| l.lease_counter).collect();
    let (read, written, cost) = steady_cost(&f, shards, 5).await;
    println!("worker renewal: {read:.2} rows read, {written:.2} lease writes per shard-minute; {cost:?}");
    assert!(written <= 2.0, "{written:.2} lease writes per shard-minute");
    assert_eq!(
        cost.ops.get("renew").map_or(0, |c| c.calls),
        0,
        "no lease is renewed"
    );
    let after: Vec<u64> = f.memory.snapshot().iter().map(|l| l.lease_counter).collect();
    assert_eq!(
        counters, after,
        "lease counters stand still while nothing changes hands"
    );
    // Every worker is still valid and processes its share.
    for w in &f.workers {
        assert_eq!(w.processing(), w.held(), "{:?}", w.coordinator);
        assert_eq!(w.processing().len(), shards / 4);
    }
    assert!(even(&owners(&f.memory), 4, shards));
}

#[tokio::test(start_paused = true)]
async fn a_killed_workers_leases_move_within_the_failover_time_and_a_stopped_ones_at_once() {
    for renewal in [LeaseRenewal::PerLease, LeaseRenewal::Worker] {
        let shards = 64;
        let mut f = fleet(shards, 4, renewal).await;
        tokio::time::sleep(FAILOVER).await;
        let victim = f.workers.remove(0);
        let theirs = victim.held();
        let survivors_hold = |f: &Fleet| {
            let held: BTreeSet<String> = f.workers.iter().flat_map(|w| w.held()).collect();
            theirs.iter().all(|k| held.contains(k))
        };
        victim.kill();
        let failover = until(FAILOVER * 3, "the killed worker's leases taken", || {
            survivors_hold(&f)
        })
        .await;
        println!("{renewal}: kill -9 fail-over {failover:?}");
        assert!(
            failover <= FAILOVER + Duration::from_millis(1500),
            "{renewal}: fail-over took {failover:?}"
        );

        let leaving = f.workers.remove(0);
        let theirs = leaving.held();
        assert!(!theirs.is_empty());
        let start = Instant::now();
        leaving.shutdown().await;
        until(FAILOVER, "the stopped worker's leases taken", || {
            let held: BTreeSet<String> = f.workers.iter().flat_map(|w| w.held()).collect();
            theirs.iter().all(|k| held.contains(k))
        })
        .await;
        let handoff = start.elapsed();
        println!("{renewal}: graceful hand-off {handoff:?}");
        assert!(
            handoff <= Duration::from_millis(1500),
            "{renewal}: hand-off took {handoff:?}"
        );
        until(Duration::from_secs(60), "even again", || {
            even(&owners(&f.memory), 2, shards)
        })
        .await;
        for w in f.workers {
            w.kill();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn one_to_four_workers_on_16_shards_even_within_15_seconds() {
    let memory = table(16);
    let store: Arc<dyn LeaseStore> = Arc::new(memory.clone());
    let first = Worker::start(store.clone(), "w0", LeaseRenewal::PerLease);
    until(Duration::from_secs(10), "one worker holds all", || {
        first.held().len() == 16
    })
    .await;
    tokio::time::sleep(FAILOVER).await;
    let start = Instant::now();
    let others: Vec<Worker> = (1..4)
        .map(|i| Worker::start(store.clone(), &format!("w{i}"), LeaseRenewal::PerLease))
        .collect();
    until(Duration::from_secs(15), "4 each", || {
        even(&owners(&memory), 4, 16)
    })
    .await;
    println!("1 -> 4 workers even after {:?}", start.elapsed());
    first.kill();
    for w in others {
        w.kill();
    }
}

/// The case: one worker's store calls are slow (some renewals and heartbeats take as
/// long as the failover time, as an SDK call that hits its attempt timeout would). Its other
/// leases stay valid, it loses nothing, and no lease is ever valid on two workers at once.
#[tokio::test(start_paused = true)]
async fn a_slow_store_call_does_not_invalidate_the_other_leases_of_a_worker() {
    for renewal in [LeaseRenewal::PerLease, LeaseRenewal::Worker] {
        let memory = table(16);
        let slow = Arc::new(FailureLeaseStore::new(
            memory.clone(),
            LeaseFaultPlan::new(3)
                .rule(
                    LeaseOp::Renew,
                    LeaseTrigger::EveryNth(5),
                    LeaseFault::Delay(FAILOVER),
                )
                .rule(
                    LeaseOp::PutHeartbeat,
                    LeaseTrigger::EveryNth(3),
                    LeaseFault::Delay(FAILOVER),
                ),
        ));
        let fine: Arc<dyn LeaseStore> = Arc::new(memory.clone());
        let a = Worker::start(slow.clone(), "a", renewal);
        until(Duration::from_secs(10), "a holds all", || a.held().len() == 16).await;
        let b = Worker::start(fine, "b", renewal);
        until(Duration::from_secs(60), "8 each", || {
            even(&owners(&memory), 2, 16)
        })
        .await;
        until(Duration::from_secs(60), "hand-offs finished", || {
            a.processing().len() == 8 && b.processing().len() == 8
        })
        .await;
        let a_keys = a.processing();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let (a_now, b_now) = (a.processing(), b.processing());
            assert!(
                a_now.is_disjoint(&b_now),
                "{renewal}: a lease processed on two workers"
            );
            assert_eq!(a_now, a_keys, "{renewal}: a's leases all stay valid");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(slow.injected(LeaseOp::PutHeartbeat) > 0);
        if renewal == LeaseRenewal::PerLease {
            assert!(slow.injected(LeaseOp::Renew) > 0, "slow renewals were injected");
        }
        a.kill();
        b.kill();
    }
}

/// Workers coordinate through the lease table alone when the store has no heartbeats (a
/// custom store): they scan every take interval, as before, and fail-over still works. A
/// worker configured for worker renewal does not fall back: it takes nothing (F3 of the
/// coordination review; the scheduler stops it with a fatal error).
#[tokio::test(start_paused = true)]
async fn a_store_without_heartbeats_falls_back_to_scanning() {
    let memory = table(16);
    let store: Arc<dyn LeaseStore> = Arc::new(NoHeartbeats(memory.clone()));
    let a = Worker::start(store.clone(), "a", LeaseRenewal::PerLease);
    let b = Worker::start(store.clone(), "b", LeaseRenewal::PerLease);
    let c = Worker::start(store.clone(), "c", LeaseRenewal::Worker);
    until(Duration::from_secs(60), "8 each", || {
        even(&owners(&memory), 2, 16)
    })
    .await;
    assert!(!a.coordinator.fleet().heartbeats);
    assert_eq!(a.coordinator.fleet().renewal, LeaseRenewal::PerLease);
    tokio::time::sleep(FAILOVER * 2).await;
    assert!(
        c.held().is_empty(),
        "worker renewal without heartbeats takes nothing"
    );
    assert_eq!(owners(&memory).len(), 2);
    let theirs = a.held();
    a.kill();
    let took = until(FAILOVER * 3, "a's leases taken", || theirs.is_subset(&b.held())).await;
    assert!(
        took <= FAILOVER + FAILOVER / 3 + Duration::from_secs(1),
        "{took:?}"
    );
    b.kill();
    c.kill();
}

/// A store that does not implement the heartbeat methods (the trait's defaults).
struct NoHeartbeats(InMemoryLeaseStore);

#[async_trait::async_trait]
impl LeaseStore for NoHeartbeats {
    async fn list(&self) -> kcl_lease::Result<Vec<Lease>> {
        self.0.list().await
    }
    async fn get(&self, key: &str) -> kcl_lease::Result<Option<Lease>> {
        self.0.get(key).await
    }
    async fn create_if_absent(&self, lease: &Lease) -> kcl_lease::Result<bool> {
        self.0.create_if_absent(lease).await
    }
    async fn renew(&self, expected: &Lease) -> kcl_lease::Result<Lease> {
        self.0.renew(expected).await
    }
    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> kcl_lease::Result<Lease> {
        self.0.take(expected, new_owner, handoff).await
    }
    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> kcl_lease::Result<Lease> {
        self.0.take_heartbeat_renewed(expected, new_owner, handoff).await
    }
    async fn evict(&self, expected: &Lease) -> kcl_lease::Result<Lease> {
        self.0.evict(expected).await
    }
    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> kcl_lease::Result<Lease> {
        self.0.update_checkpoint(expected, worker, checkpoint).await
    }
    async fn complete_handoff(&self, handoff: &Lease) -> kcl_lease::Result<Lease> {
        self.0.complete_handoff(handoff).await
    }
    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> kcl_lease::Result<Lease> {
        self.0.mark_children(expected, children).await
    }
    async fn delete(&self, expected: &Lease) -> kcl_lease::Result<()> {
        self.0.delete(expected).await
    }
}

/// A hundred workers started at once on a table of unowned leases spread evenly in a few
/// rounds, and stay so.
#[tokio::test(start_paused = true)]
async fn a_hundred_workers_from_a_cold_start_spread_evenly() {
    let shards = 1000;
    let f = fleet(shards, 100, LeaseRenewal::PerLease).await;
    let took = Instant::now();
    tokio::time::sleep(FAILOVER * 3).await;
    assert!(even(&owners(&f.memory), 100, shards), "{:?}", owners(&f.memory));
    println!("100 workers even; checked for {:?}", took.elapsed());
    for w in f.workers {
        w.kill();
    }
}
