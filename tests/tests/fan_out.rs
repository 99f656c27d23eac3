//! Enhanced fan-out on the bundled local backend: records are pushed through subscriptions that
//! are renewed, ended, replaced and throttled, and nothing is lost, reordered or read twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
use kcl_core::backend::local::BackendOp;
use kcl_core::backend::{GetRecordsOutput, IteratorPosition};
use kcl_core::{
    BackendError, FanOutConfig, InMemoryLeaseStore, KclError, LocalBackend, RetrievalMode, Shard,
    StreamBackend,
};
use kcl_lease::LeaseStore;
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

fn fan_out(renewal: Duration) -> RetrievalMode {
    RetrievalMode::FanOut(FanOutConfig::default().subscription_renewal(renewal))
}

#[tokio::test(start_paused = true)]
async fn records_are_pushed_across_renewals_reshards_and_lease_moves() {
    init_tracing();
    // Subscriptions end after 700 ms and are renewed by the reader after 400 ms: both paths
    // are taken many times during the test.
    let local = LocalBackend::builder()
        .consumer_activation(Duration::from_millis(300))
        .subscription_duration(Duration::from_millis(700))
        .build();
    local.create_stream(STREAM, 4).unwrap();
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 16, 10, &mut produced).await;
    let worker = |id: &str| {
        fast(id, local.clone(), store.clone(), &log, Duration::from_secs(2))
            .retrieval(fan_out(Duration::from_millis(400)))
            .build()
            .unwrap()
            .spawn()
    };
    let a = worker("a");
    wait_until(LIMIT, "first records", || log.wait_count() >= 160).await;
    let b = worker("b");
    // Produce over a few seconds, so that subscriptions are renewed while records flow.
    for _ in 0..10 {
        produce(&local, 16, 1, &mut produced).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lo, _) = local
        .split_shard(STREAM, "shardId-000000000000", 1 << 125)
        .unwrap();
    local
        .merge_shards(STREAM, "shardId-000000000002", "shardId-000000000003")
        .unwrap();
    produce(&local, 16, 10, &mut produced).await;
    wait_until(LIMIT, "all processed", || log.wait_count() == 480).await;
    let dups = log.assert_complete_and_ordered(&produced);
    assert_eq!(dups, 0, "graceful balancing and renewals read nothing twice");
    assert_eq!(
        local.op_count(BackendOp::GetRecords),
        0,
        "no polling in fan-out mode"
    );
    assert!(
        local.op_count(BackendOp::SubscribeToShard) > 10,
        "subscriptions were renewed: {}",
        local.op_count(BackendOp::SubscribeToShard)
    );
    let lease = store.get(&lo).await.unwrap().expect("child lease");
    assert!(lease.checkpoint.sequence().is_some(), "child shard consumed");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn replaced_ended_and_throttled_subscriptions_lose_nothing() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 3).unwrap();
    let backend = Arc::new(FailureBackend::new(
        local.clone(),
        FaultPlan::new(5)
            .rule(BackendOp::RegisterConsumer, Trigger::Nth(1), Fault::Error)
            .rule(BackendOp::SubscribeToShard, Trigger::EveryNth(3), Fault::Throttle)
            .rule(
                BackendOp::SubscribeToShard,
                Trigger::EveryNth(5),
                Fault::ResourceInUse,
            )
            .rule(
                BackendOp::SubscriptionEvent,
                Trigger::Probability(0.15),
                Fault::ResourceInUse,
            )
            .rule(
                BackendOp::SubscriptionEvent,
                Trigger::EveryNth(4),
                Fault::EndSubscription,
            )
            .rule(BackendOp::SubscriptionEvent, Trigger::EveryNth(9), Fault::Error),
    ));
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let mut produced = BTreeMap::new();
    let a = fast("a", backend.clone(), store.clone(), &log, Duration::from_secs(3))
        .retrieval(fan_out(Duration::from_secs(290)))
        .build()
        .unwrap()
        .spawn();
    for _ in 0..6 {
        produce(&local, 12, 5, &mut produced).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(LIMIT, "all processed despite faults", || log.wait_count() == 360).await;
    assert_eq!(
        log.assert_complete_and_ordered(&produced),
        0,
        "resumed after the continuation every time"
    );
    for op in [
        BackendOp::RegisterConsumer,
        BackendOp::SubscribeToShard,
        BackendOp::SubscriptionEvent,
    ] {
        assert!(backend.injected(op) > 0, "faults injected into {op:?}");
    }
    a.shutdown().await.unwrap();
}

/// A backend that only polls: it keeps the trait's default fan-out methods.
struct PollingOnly(LocalBackend);

#[async_trait]
impl StreamBackend for PollingOnly {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.0.list_shards(stream).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        self.0.get_shard_iterator(stream, shard_id, position).await
    }
    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.0.get_records(stream, iterator, limit).await
    }
}

#[tokio::test]
async fn fan_out_on_a_backend_without_it_fails_at_start() {
    let local = LocalBackend::new();
    local.create_stream(STREAM, 1).unwrap();
    let log = Log::default();
    let scheduler = fast(
        "a",
        PollingOnly(local),
        InMemoryLeaseStore::new(),
        &log,
        Duration::from_secs(3),
    )
    .retrieval(RetrievalMode::FanOut(FanOutConfig::named("my-consumer")))
    .build()
    .unwrap();
    let result = tokio::time::timeout(LIMIT, scheduler.run(std::future::pending())).await;
    assert!(
        matches!(result, Ok(Err(KclError::Backend(BackendError::Unsupported(_))))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_missing_stream_fails_at_start_in_fan_out_mode() {
    let log = Log::default();
    let scheduler = fast(
        "a",
        LocalBackend::new(),
        InMemoryLeaseStore::new(),
        &log,
        Duration::from_secs(3),
    )
    .retrieval(RetrievalMode::FanOut(FanOutConfig::default()))
    .build()
    .unwrap();
    let result = tokio::time::timeout(LIMIT, scheduler.run(std::future::pending())).await;
    assert!(
        matches!(
            result,
            Ok(Err(KclError::Backend(BackendError::StreamNotFound(_))))
        ),
        "{result:?}"
    );
}

/// A stream at its limit of registered consumers: the worker stops at once with a typed error
/// that says so (not a retry loop); the application's own consumer, registered already, is
/// used whatever the count.
#[tokio::test]
async fn a_stream_at_its_consumer_limit_fails_at_start_unless_ours_is_registered() {
    let local = LocalBackend::builder().max_consumers(3).build();
    local.create_stream(STREAM, 1).unwrap();
    for name in ["other-1", "other-2", "other-3"] {
        local
            .register_consumer(STREAM, name, &Default::default())
            .await
            .unwrap();
    }
    let log = Log::default();
    let run = |name: &str| {
        fast(
            "a",
            local.clone(),
            InMemoryLeaseStore::new(),
            &log,
            Duration::from_secs(3),
        )
        .retrieval(RetrievalMode::FanOut(FanOutConfig::named(name)))
        .build()
        .unwrap()
    };
    let result = tokio::time::timeout(LIMIT, run("mine").run(std::future::pending())).await;
    match result {
        Ok(Err(KclError::Backend(e @ BackendError::ConsumerLimit(_)))) => {
            let message = e.to_string();
            assert!(message.contains("3 registered consumers"), "{message}");
            assert!(
                message.contains("deregister one, or read by polling"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A consumer registered already counts as ours.
    let scheduler = run("other-2").spawn();
    produce(&local, 1, 1, &mut BTreeMap::new()).await;
    wait_until(LIMIT, "the record", || log.wait_count() == 1).await;
    scheduler.shutdown().await.unwrap();
}

/// A stream that is `UPDATING` (a record-size or warm-throughput change) is read as usual; the
/// consumer it refuses to register meanwhile is registered once the update is done, and the
/// tags of the application's consumer are set at registration.
#[tokio::test(start_paused = true)]
async fn an_updating_stream_is_read_and_the_consumer_registered_after_the_update() {
    let local = LocalBackend::builder()
        .update_duration(Duration::from_secs(20))
        .build();
    local.create_stream(STREAM, 2).unwrap();
    local.update_max_record_size(STREAM, 10240).unwrap();
    assert_eq!(local.stream_status(STREAM).unwrap(), "UPDATING");
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 8, 5, &mut produced).await;
    // Polling reads an UPDATING stream as usual.
    let polling = fast("p", local.clone(), store.clone(), &log, Duration::from_secs(3))
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "polled while UPDATING", || log.wait_count() == 40).await;
    assert_eq!(local.stream_status(STREAM).unwrap(), "UPDATING");
    polling.shutdown().await.unwrap();
    // Fan-out: registration is refused while UPDATING, then succeeds.
    let fan_out_log = Log::default();
    let fan_out = fast(
        "f",
        local.clone(),
        InMemoryLeaseStore::new(),
        &fan_out_log,
        Duration::from_secs(3),
    )
    .retrieval(RetrievalMode::FanOut(
        FanOutConfig::named("tagged")
            .tag("team", "payments")
            .tag("env", "test"),
    ))
    .build()
    .unwrap()
    .spawn();
    wait_until(LIMIT, "read by fan-out after the update", || {
        fan_out_log.wait_count() == 40
    })
    .await;
    assert_eq!(local.stream_status(STREAM).unwrap(), "ACTIVE");
    let tags = local.consumer_tags(STREAM, "tagged").unwrap();
    assert_eq!(tags.get("team").map(String::as_str), Some("payments"));
    assert_eq!(tags.get("env").map(String::as_str), Some("test"));
    fan_out.shutdown().await.unwrap();
}
