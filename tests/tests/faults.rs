//! Faults injected into the stream backend and the lease store slow the runtime down but lose
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
use kcl_core::backend::local::BackendOp;
use kcl_core::{InMemoryLeaseStore, LocalBackend};
use kcl_lease::{FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseOp, LeaseTrigger};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn injected_throttling_and_store_errors_slow_down_but_lose_nothing() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 4).unwrap();
    let backend = FailureBackend::new(
        local.clone(),
        FaultPlan::new(7)
            .rule(BackendOp::GetRecords, Trigger::Probability(0.3), Fault::Throttle)
            .rule(BackendOp::GetShardIterator, Trigger::EveryNth(3), Fault::Throttle)
            .rule(BackendOp::GetRecords, Trigger::EveryNth(7), Fault::ExpireIterator)
            .rule(BackendOp::ListShards, Trigger::Nth(1), Fault::Error),
    );
    let memory = InMemoryLeaseStore::new();
    let store = FailureLeaseStore::new(
        memory.clone(),
        LeaseFaultPlan::new(11)
            .rule(
                LeaseOp::Checkpoint,
                LeaseTrigger::Probability(0.2),
                LeaseFault::Throttle,
            )
            .rule(LeaseOp::Renew, LeaseTrigger::EveryNth(5), LeaseFault::Throttle)
            .rule(LeaseOp::List, LeaseTrigger::EveryNth(4), LeaseFault::Error),
    );
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 16, 20, &mut produced).await;
    let backend = std::sync::Arc::new(backend);
    let store = std::sync::Arc::new(store);
    let a = fast("a", backend.clone(), store.clone(), &log, Duration::from_secs(2))
        .build()
        .unwrap()
        .spawn();
    let b = fast("b", backend.clone(), store.clone(), &log, Duration::from_secs(2))
        .build()
        .unwrap()
        .spawn();
    produce(&local, 16, 20, &mut produced).await;
    wait_until(LIMIT, "all processed despite faults", || log.wait_count() == 640).await;
    log.assert_complete_and_ordered(&produced);
    assert!(
        backend.injected(BackendOp::GetRecords) > 0,
        "faults were injected"
    );
    assert!(
        store.injected(LeaseOp::Checkpoint) > 0,
        "store faults were injected"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn expired_iterators_resume_after_the_last_record_read() {
    init_tracing();
    // Iterators live 50 ms; the processor takes 80 ms per batch, so the read-ahead's iterators
    // expire while it waits for room.
    let local = LocalBackend::builder()
        .iterator_ttl(Duration::from_millis(50))
        .build();
    local.create_stream(STREAM, 2).unwrap();
    let mut produced = BTreeMap::new();
    produce(&local, 8, 30, &mut produced).await;
    let log = Log::default();
    let w = log.clone();
    let a = fast(
        "a",
        local.clone(),
        InMemoryLeaseStore::new(),
        &log,
        Duration::from_secs(3),
    )
    .max_records(10)
    .max_prefetch_batches(1)
    .processor_factory(move |shard: &str| Recorder {
        worker: "a".into(),
        shard: shard.to_owned(),
        log: w.clone(),
        delay: Duration::from_millis(80),
    })
    .build()
    .unwrap()
    .spawn();
    wait_until(LIMIT, "all processed", || log.wait_count() == 240).await;
    assert_eq!(
        log.assert_complete_and_ordered(&produced),
        0,
        "no record read twice after expiry"
    );
    assert!(
        local.op_count(BackendOp::GetShardIterator) > 2,
        "iterators were renewed"
    );
    a.shutdown().await.unwrap();
}
