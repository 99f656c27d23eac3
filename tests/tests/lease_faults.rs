//! Lease-store faults that reach the gaps, in paused Tokio time: one worker alone cut off from
//! the lease store while the others are not, delayed store calls, and writes that are applied
//! but report failure (a lost answer). Nothing is lost, per-key order holds, and no shard is
//! processed by two workers at once: once another worker processed a shard, the cut-off worker
//! never processes it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kcl_core::{InMemoryLeaseStore, LocalBackend, SchedulerHandle};
use kcl_lease::{FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseOp, LeaseStore, LeaseTrigger};
use kcl_tests::*;

const FAILOVER: Duration = Duration::from_secs(3);
const LIMIT: Duration = Duration::from_secs(600);

type Wrapped = Arc<FailureLeaseStore<InMemoryLeaseStore>>;

fn wrapped(memory: &InMemoryLeaseStore) -> Wrapped {
    Arc::new(FailureLeaseStore::new(memory.clone(), LeaseFaultPlan::none()))
}

fn worker(id: &str, local: &LocalBackend, store: &Wrapped, log: &Log) -> SchedulerHandle {
    fast(id, local.clone(), store.clone(), log, FAILOVER)
        .build()
        .unwrap()
        .spawn()
}

/// Per shard, the workers that processed it in the order they did; asserts no worker came back
/// to a shard after another one had processed it (no two owners at once, no stale owner).
fn assert_no_stale_owner(log: &Log) -> BTreeMap<String, Vec<String>> {
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in log.seen() {
        let owners = order.entry(s.shard.clone()).or_default();
        if owners.last() != Some(&s.worker) {
            assert!(
                !owners.contains(&s.worker),
                "shard {} went back to {} after {:?}: two owners at once",
                s.shard,
                s.worker,
                owners
            );
            owners.push(s.worker.clone());
        }
    }
    order
}

#[tokio::test(start_paused = true)]
async fn a_worker_cut_off_from_the_lease_store_alone_stops_and_the_others_take_over() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 4).unwrap();
    let memory = InMemoryLeaseStore::new();
    let (sa, sb) = (wrapped(&memory), wrapped(&memory));
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 32, 2, &mut produced).await;
    let a = worker("a", &local, &sa, &log);
    let b = worker("b", &local, &sb, &log);
    wait_until(LIMIT, "balanced 2/2", || {
        a.held_leases().len() == 2 && b.held_leases().len() == 2
    })
    .await;
    wait_until(LIMIT, "first wave processed", || log.wait_count() == 64).await;
    let a_shards: BTreeSet<String> = a.held_leases().into_iter().collect();

    // Only a loses the lease store (a network partition between a and DynamoDB).
    let mut plan = LeaseFaultPlan::new(1);
    for op in LeaseOp::ALL {
        plan = plan.rule(op, LeaseTrigger::Always, LeaseFault::Error);
    }
    sa.set_plan(plan);
    let cut = tokio::time::Instant::now();
    produce(&local, 32, 2, &mut produced).await;
    wait_until(LIMIT, "b holds every shard", || b.held_leases().len() == 4).await;
    let took_over = cut.elapsed();
    wait_until(LIMIT, "second wave processed", || log.wait_count() == 128).await;
    assert!(
        a.held_leases().is_empty(),
        "a gave its leases up: {:?}",
        a.held_leases()
    );
    assert!(a.is_running(), "a transient partition is not fatal");
    assert!(took_over <= FAILOVER * 3, "b took over after {took_over:?}");
    log.assert_complete_and_ordered(&produced);
    let order = assert_no_stale_owner(&log);
    for shard in &a_shards {
        assert_eq!(
            order.get(shard).and_then(|o| o.last()).map(String::as_str),
            Some("b"),
            "{shard}: {order:?}"
        );
    }

    // The partition heals: a comes back and the shards are shared again.
    sa.set_plan(LeaseFaultPlan::none());
    wait_until(LIMIT, "a rejoins", || !a.held_leases().is_empty()).await;
    produce(&local, 32, 2, &mut produced).await;
    wait_until(LIMIT, "third wave processed", || log.wait_count() == 192).await;
    log.assert_complete_and_ordered(&produced);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delayed_store_calls_and_writes_whose_answers_are_lost_lose_nothing() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 4).unwrap();
    let memory = InMemoryLeaseStore::new();
    let stores = [wrapped(&memory), wrapped(&memory)];
    for (i, store) in stores.iter().enumerate() {
        store.set_plan(
            LeaseFaultPlan::new(40 + i as u64)
                // Slow calls: a fifth of the failover time, often.
                .rule(
                    LeaseOp::Renew,
                    LeaseTrigger::Probability(0.3),
                    LeaseFault::Delay(FAILOVER / 8),
                )
                .rule(
                    LeaseOp::Checkpoint,
                    LeaseTrigger::Probability(0.2),
                    LeaseFault::Delay(FAILOVER / 6),
                )
                .rule(
                    LeaseOp::List,
                    LeaseTrigger::Probability(0.3),
                    LeaseFault::Delay(FAILOVER / 4),
                )
                .rule(
                    LeaseOp::PutHeartbeat,
                    LeaseTrigger::Probability(0.2),
                    LeaseFault::Delay(FAILOVER / 8),
                )
                // Applied, but the answer is lost.
                .rule(
                    LeaseOp::Renew,
                    LeaseTrigger::Probability(0.1),
                    LeaseFault::ApplyThenFail,
                )
                .rule(
                    LeaseOp::Checkpoint,
                    LeaseTrigger::Probability(0.15),
                    LeaseFault::ApplyThenFail,
                )
                .rule(
                    LeaseOp::Take,
                    LeaseTrigger::Probability(0.3),
                    LeaseFault::ApplyThenFail,
                ),
        );
    }
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 8, 10, &mut produced).await;
    let a = worker("a", &local, &stores[0], &log);
    let b = worker("b", &local, &stores[1], &log);
    for _ in 0..5 {
        produce(&local, 8, 10, &mut produced).await;
        tokio::time::sleep(FAILOVER).await;
    }
    wait_until(LIMIT, "everything processed", || log.wait_count() == 480).await;
    log.assert_complete_and_ordered(&produced);
    assert_no_stale_owner(&log);
    let lossy: u64 = stores
        .iter()
        .map(|s| s.injected(LeaseOp::Checkpoint) + s.injected(LeaseOp::Renew) + s.injected(LeaseOp::Take))
        .sum();
    assert!(lossy > 10, "faults were injected ({lossy})");
    // The leases stayed where they were: a lost answer is not taken for a lost lease.
    let moves: usize = assert_no_stale_owner(&log).values().map(|o| o.len() - 1).sum();
    assert!(moves <= 2, "{moves} lease moves under lost answers");
    assert_eq!(
        log.lease_lost_calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no processor was told its lease was lost"
    );
    let rows = memory.list().await.unwrap();
    assert!(
        rows.iter().all(|l| l.lease_owner.is_some()),
        "every lease held: {rows:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
