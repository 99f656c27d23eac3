//! A closed shard trimmed by retention before it was read to its end (its lease still open):
//! `ShardNotFound` on its iterator (polling) or subscription (fan-out). The runtime treats it as
//! ended, as the Java KCL does: the parent is checkpointed at `SHARD_END` and its children are
//! processed. Runs in paused Tokio time (the local backend's retention is on Tokio's clock).

use std::collections::BTreeMap;
use std::time::Duration;

use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
use kcl_core::backend::local::BackendOp;
use kcl_core::{FanOutConfig, InMemoryLeaseStore, LocalBackend, RetrievalMode};
use kcl_lease::{ExtendedSequenceNumber, Lease, LeaseStore};
use kcl_tests::*;

const PARENT: &str = "shardId-000000000000";
const RETENTION: Duration = Duration::from_secs(3600);

/// A one-shard stream whose shard was split, with a lease on the parent left at
/// `TRIM_HORIZON` by an earlier worker, and the parent then trimmed away by retention.
async fn trimmed_parent() -> (LocalBackend, InMemoryLeaseStore) {
    init_tracing();
    let backend = LocalBackend::builder().retention(RETENTION).build();
    backend.create_stream(STREAM, 1).expect("create stream");
    produce(&backend, 3, 2, &mut BTreeMap::new()).await;
    let store = InMemoryLeaseStore::new();
    assert!(store
        .create_if_absent(&Lease::new(PARENT, ExtendedSequenceNumber::TrimHorizon))
        .await
        .unwrap());
    backend.split_shard(STREAM, PARENT, 1 << 127).expect("split");
    tokio::time::advance(RETENTION + Duration::from_secs(1)).await;
    let shards = backend.shards(STREAM).expect("list");
    assert!(
        shards.iter().all(|s| s.shard_id != PARENT),
        "the parent is trimmed: {shards:?}"
    );
    assert_eq!(shards.len(), 2, "two children");
    (backend, store)
}

async fn children_are_processed(retrieval: RetrievalMode) {
    let (backend, store) = trimmed_parent().await;
    let mut produced = BTreeMap::new();
    produce(&backend, 6, 3, &mut produced).await;
    let log = Log::default();
    let worker = fast("w", backend.clone(), store.clone(), &log, Duration::from_secs(10))
        .retrieval(retrieval)
        .build()
        .expect("valid config")
        .spawn();
    wait_until(Duration::from_secs(600), "the children's records", || {
        log.wait_count() == 18
    })
    .await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    let parent = store.get(PARENT).await.unwrap().expect("parent lease");
    assert!(
        parent.checkpoint.is_shard_end(),
        "parent at {}",
        parent.checkpoint
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_trimmed_parent_shard_is_ended_and_its_children_processed_when_polling() {
    children_are_processed(RetrievalMode::Polling).await;
}

#[tokio::test(start_paused = true)]
async fn a_trimmed_parent_shard_is_ended_and_its_children_processed_with_fan_out() {
    children_are_processed(RetrievalMode::FanOut(FanOutConfig::default())).await;
}

#[tokio::test(start_paused = true)]
async fn a_shard_of_a_deleted_stream_is_not_taken_for_ended() {
    let (backend, store) = trimmed_parent().await;
    backend.delete_stream(STREAM).expect("delete");
    let log = Log::default();
    let worker = fast("w", backend.clone(), store.clone(), &log, Duration::from_secs(10))
        .build()
        .expect("valid config")
        .spawn();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let parent = store.get(PARENT).await.unwrap().expect("parent lease");
    assert_eq!(parent.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    worker.shutdown().await.ok();
}

#[tokio::test(start_paused = true)]
async fn a_shard_not_found_for_a_shard_the_stream_still_lists_is_not_an_end() {
    init_tracing();
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, 1).expect("create stream");
    let mut produced = BTreeMap::new();
    produce(&backend, 4, 3, &mut produced).await;
    let faulty = std::sync::Arc::new(FailureBackend::new(
        backend.clone(),
        FaultPlan::new(7).rule(BackendOp::GetShardIterator, Trigger::Nth(1), Fault::ShardNotFound),
    ));
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let worker = fast("w", faulty.clone(), store.clone(), &log, Duration::from_secs(10))
        .build()
        .expect("valid config")
        .spawn();
    wait_until(Duration::from_secs(600), "every record", || {
        log.wait_count() == 12
    })
    .await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    let lease = store.get(PARENT).await.unwrap().expect("lease");
    assert!(!lease.checkpoint.is_shard_end(), "an open shard is not ended");
    assert_eq!(faulty.injected(BackendOp::GetShardIterator), 1);
    worker.shutdown().await.unwrap();
}
