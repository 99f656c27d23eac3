//! End-to-end tests of the runtime on the bundled local backend: balance, fail-over, graceful
//! hand-off, resharding, checkpoint rules, processor retries and throttling.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::{
    CheckpointError, InMemoryLeaseStore, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler, ShardEndedInput,
};
use kcl_lease::{ExtendedSequenceNumber, LeaseStore};
use kcl_tests::*;
use tokio::time::{timeout, Instant};

const LIMIT: Duration = Duration::from_secs(30);

async fn setup(shards: usize) -> (LocalBackend, InMemoryLeaseStore, Log) {
    init_tracing();
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, shards).expect("create stream");
    (backend, InMemoryLeaseStore::new(), Log::default())
}

#[tokio::test(start_paused = true)]
async fn leases_balance_evenly_over_two_then_three_workers() {
    let (backend, store, log) = setup(6).await;
    let failover = Duration::from_millis(900);
    let a = start("a", &backend, &store, &log, failover);
    wait_until(LIMIT, "a holds all 6", || a.held_leases().len() == 6).await;
    let b = start("b", &backend, &store, &log, failover);
    wait_until(LIMIT, "3/3 over two workers", || {
        a.held_leases().len() == 3 && b.held_leases().len() == 3
    })
    .await;
    let c = start("c", &backend, &store, &log, failover);
    wait_until(LIMIT, "2/2/2 over three workers", || {
        [&a, &b, &c].iter().all(|w| w.held_leases().len() == 2)
    })
    .await;
    let table = owners(&store).await;
    assert_eq!(
        table.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{table:?}"
    );
    // Records flow to every worker.
    let mut produced = BTreeMap::new();
    produce(&backend, 24, 5, &mut produced).await;
    wait_until(LIMIT, "all records processed", || log.wait_count() == 120).await;
    assert_eq!(
        log.assert_complete_and_ordered(&produced),
        0,
        "no duplicates without failures"
    );
    let workers: BTreeSet<String> = log.seen().into_iter().map(|s| s.worker).collect();
    assert_eq!(workers.len(), 3);
    for w in [a, b, c] {
        w.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashed_workers_shards_resume_from_their_checkpoints_after_the_failover_time() {
    let (backend, store, log) = setup(4).await;
    let failover = Duration::from_millis(1200);
    let a = start("a", &backend, &store, &log, failover);
    let b = start("b", &backend, &store, &log, failover);
    wait_until(LIMIT, "2/2", || {
        a.held_leases().len() == 2 && b.held_leases().len() == 2
    })
    .await;
    let mut produced = BTreeMap::new();
    produce(&backend, 16, 10, &mut produced).await;
    wait_until(LIMIT, "first wave processed", || log.wait_count() == 160).await;

    let b_shards: BTreeSet<String> = b.held_leases().into_iter().collect();
    b.kill().await;
    let killed_at = Instant::now();
    // The checkpoints the dead worker left behind.
    let mut checkpoints = BTreeMap::new();
    for l in store.list().await.unwrap() {
        if b_shards.contains(&l.lease_key) {
            assert_eq!(
                l.lease_owner.as_deref(),
                Some("b"),
                "a crashed worker releases nothing"
            );
            checkpoints.insert(l.lease_key.clone(), l.checkpoint.clone());
        }
    }
    let before_kill = log.seen().len();
    produce(&backend, 16, 10, &mut produced).await;
    wait_until(LIMIT, "a takes over", || a.held_leases().len() == 4).await;
    let took = killed_at.elapsed();
    // The dead worker's validity ran out `failover` after the start of its last heartbeat,
    // which was at most a sixth of it (half the renew interval) before the kill.
    assert!(
        took >= failover - failover / 6,
        "taken after {took:?}, before the failover time"
    );
    assert!(took < failover * 4, "take-over took {took:?}");
    wait_until(LIMIT, "second wave processed", || log.wait_count() == 320).await;
    log.assert_complete_and_ordered(&produced);
    // a resumed each of b's shards after b's checkpoint: nothing at or before it came again.
    for s in &log.seen()[before_kill..] {
        if let Some(cp) = checkpoints.get(&s.shard) {
            let seq = ExtendedSequenceNumber::from_parts(&s.sequence, 0).unwrap();
            assert!(
                seq > *cp,
                "{} re-processed {} at/before checkpoint {cp}",
                s.shard,
                s.sequence
            );
            assert_eq!(s.worker, "a");
        }
    }
    a.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_hands_over_at_once_with_no_record_processed_twice() {
    let (backend, store, log) = setup(4).await;
    let failover = Duration::from_secs(6);
    let a = start("a", &backend, &store, &log, failover);
    let b = start("b", &backend, &store, &log, failover);
    wait_until(LIMIT, "2/2", || {
        a.held_leases().len() == 2 && b.held_leases().len() == 2
    })
    .await;
    let mut produced = BTreeMap::new();
    produce(&backend, 16, 10, &mut produced).await;
    wait_until(LIMIT, "first wave processed", || log.wait_count() == 160).await;
    // Keep records flowing while b leaves.
    let producer = {
        let backend = backend.clone();
        let mut produced = produced.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                produce(&backend, 16, 1, &mut produced).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            produced
        })
    };
    let stopping = Instant::now();
    b.shutdown().await.expect("graceful shutdown");
    wait_until(LIMIT, "a holds all 4", || a.held_leases().len() == 4).await;
    let handover = stopping.elapsed();
    assert!(
        handover < failover,
        "hand-over took {handover:?}, not faster than the failover time"
    );
    let produced = producer.await.unwrap();
    let total: u64 = produced.values().sum();
    wait_until(LIMIT, "everything processed", || log.wait_count() as u64 == total).await;
    assert_eq!(
        log.assert_complete_and_ordered(&produced),
        0,
        "graceful hand-over must not duplicate"
    );
    assert!(log.shutdown_calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    a.shutdown().await.unwrap();
    // After the last worker leaves, every lease is released.
    assert!(owners(&store).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_keep_parents_before_children() {
    let (backend, store, log) = setup(2).await;
    let failover = Duration::from_secs(2);
    // Finished leases are kept here, to check their lineage attributes.
    let worker = |id: &str| {
        fast(id, backend.clone(), store.clone(), &log, failover)
            .delete_finished_leases(false)
            .build()
            .unwrap()
            .spawn()
    };
    let a = worker("a");
    let b = worker("b");
    let mut produced = BTreeMap::new();
    produce(&backend, 20, 5, &mut produced).await;
    // Split shard 0 in the middle of its range, then merge its upper half with shard 1.
    let shard0 = backend.shards(STREAM).unwrap()[0].clone();
    let middle = shard0.hash_key_range.start + (shard0.hash_key_range.end - shard0.hash_key_range.start) / 2;
    let (low, high) = backend
        .split_shard(STREAM, &shard0.shard_id, middle + 1)
        .expect("split");
    produce(&backend, 20, 5, &mut produced).await;
    let merged = backend
        .merge_shards(STREAM, &high, "shardId-000000000001")
        .expect("merge");
    produce(&backend, 20, 5, &mut produced).await;
    wait_until(LIMIT, "all processed", || log.wait_count() == 300).await;
    log.assert_complete_and_ordered(&produced);

    // Every record of a parent was processed before any record of its children.
    let seen = log.seen();
    let last = |shard: &str| seen.iter().rposition(|s| s.shard == shard);
    let first = |shard: &str| seen.iter().position(|s| s.shard == shard);
    for (parent, child) in [
        (shard0.shard_id.as_str(), low.as_str()),
        (shard0.shard_id.as_str(), high.as_str()),
        (high.as_str(), merged.as_str()),
        ("shardId-000000000001", merged.as_str()),
    ] {
        if let (Some(p), Some(c)) = (last(parent), first(child)) {
            assert!(p < c, "child {child} started before parent {parent} ended");
        }
    }
    wait_until(LIMIT, "parents checkpointed at SHARD_END", || {
        futures_lite_block(&store, &[&shard0.shard_id, &high, "shardId-000000000001"])
    })
    .await;
    let parent = store.get(&shard0.shard_id).await.unwrap().unwrap();
    assert_eq!(
        parent.child_shard_ids,
        BTreeSet::from([low.clone(), high.clone()])
    );
    let child = store.get(&merged).await.unwrap().unwrap();
    assert_eq!(
        child.parent_shard_ids,
        BTreeSet::from([high.clone(), "shardId-000000000001".to_owned()])
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Whether every listed lease is at SHARD_END (read without awaiting, for `wait_until`).
fn futures_lite_block(store: &InMemoryLeaseStore, keys: &[&str]) -> bool {
    let rows = store.snapshot();
    keys.iter().all(|k| {
        rows.iter()
            .any(|l| l.lease_key == *k && l.checkpoint.is_shard_end())
    })
}

/// A processor that checks the checkpoint rules on its first batch and reports what happened.
struct Validator {
    results: Arc<Mutex<Vec<String>>>,
    steal: Option<InMemoryLeaseStore>,
}

fn describe(r: Result<(), CheckpointError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(CheckpointError::BeyondDelivered { .. }) => "beyond".into(),
        Err(CheckpointError::BehindCheckpoint { .. }) => "behind".into(),
        Err(CheckpointError::InvalidSequenceNumber(_)) => "invalid".into(),
        Err(CheckpointError::LeaseLost { .. }) => "lost".into(),
        Err(e) => format!("other: {e}"),
    }
}

#[async_trait]
impl RecordProcessor for Validator {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let cp = input.checkpointer;
        let mut out = Vec::new();
        if let Some(store) = self.steal.take() {
            // Another worker takes the lease behind our back (as after an expiry).
            let row = store.get(cp.shard_id()).await?.ok_or("no lease")?;
            store.take(&row, "intruder", false).await?;
            out.push(describe(cp.checkpoint().await));
            out.push(describe(cp.checkpoint().await));
        } else {
            let records = input.records;
            assert!(records.len() >= 3, "test needs 3 records in the first batch");
            let beyond = format!("{}1", records[records.len() - 1].sequence_number);
            out.push(describe(cp.checkpoint_at(&beyond, 0).await));
            out.push(describe(cp.checkpoint_at("not-a-number", 0).await));
            out.push(describe(
                cp.checkpoint_at(records[1].sequence_number.as_str(), 0).await,
            ));
            out.push(describe(
                cp.checkpoint_at(records[0].sequence_number.as_str(), 0).await,
            ));
            out.push(describe(
                cp.checkpoint_at(records[1].sequence_number.as_str(), 0).await,
            ));
            out.push(describe(cp.checkpoint().await));
            assert_eq!(
                cp.current(),
                records[records.len() - 1].extended_sequence_number()
            );
        }
        self.results.lock().unwrap().extend(out);
        Err("stop here".into())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

async fn run_validator(steal: bool) -> (Vec<String>, InMemoryLeaseStore) {
    let (backend, store, _log) = setup(1).await;
    let mut produced = BTreeMap::new();
    produce(&backend, 1, 5, &mut produced).await;
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = results.clone();
    let thief = steal.then(|| store.clone());
    let worker = Scheduler::builder(APP, STREAM)
        .worker_id("v".into())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(kcl_core::InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(30))
        .processor_factory(move |_: &str| Validator {
            results: r.clone(),
            steal: thief.clone(),
        })
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "validator ran", || !results.lock().unwrap().is_empty()).await;
    timeout(LIMIT, worker.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    let out = results.lock().unwrap().clone();
    (out, store)
}

#[tokio::test(start_paused = true)]
async fn checkpoints_are_validated() {
    let (results, _) = run_validator(false).await;
    assert_eq!(results, ["beyond", "invalid", "ok", "behind", "ok", "ok"]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_makes_checkpointing_fail() {
    let (results, store) = run_validator(true).await;
    assert_eq!(results, ["lost", "lost"]);
    let row = store.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(
        row.lease_owner.as_deref(),
        Some("intruder"),
        "the loser did not release the thief's lease"
    );
    assert_eq!(
        row.checkpoint,
        ExtendedSequenceNumber::TrimHorizon,
        "no checkpoint was written"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_processor_is_retried_not_skipped() {
    let (backend, store, log) = setup(2).await;
    log.failures_to_inject
        .store(5, std::sync::atomic::Ordering::SeqCst);
    let mut produced = BTreeMap::new();
    produce(&backend, 8, 10, &mut produced).await;
    let a = start("a", &backend, &store, &log, Duration::from_secs(3));
    wait_until(LIMIT, "all processed", || log.wait_count() == 80).await;
    assert_eq!(log.failed_calls.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    a.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn at_timestamp_starts_new_leases_at_the_first_record_at_or_after_the_time() {
    let (backend, store, log) = setup(2).await;
    let mut produced = BTreeMap::new();
    produce(&backend, 4, 5, &mut produced).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let from = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let before = produced.clone();
    produce(&backend, 4, 5, &mut produced).await;
    let worker = fast("a", backend.clone(), store.clone(), &log, Duration::from_secs(3))
        .initial_position(kcl_core::InitialPosition::AtTimestamp(from))
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "the records after the timestamp", || {
        log.wait_count() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (first, dups) = log.summary();
    assert_eq!(dups, 0);
    for (key, indexes) in first {
        let skipped = before[&key];
        assert_eq!(
            indexes,
            (skipped..skipped + 5).collect::<Vec<_>>(),
            "{key}: only records at/after the time"
        );
    }
    let rows = store.list().await.unwrap();
    assert!(
        rows.iter().all(|l| l.checkpoint.sequence().is_some()),
        "checkpointed past AT_TIMESTAMP"
    );
    worker.shutdown().await.unwrap();
}

/// A processor that implements only `process_records`: everything else is the trait's default.
struct Minimal(Log);

#[async_trait]
impl RecordProcessor for Minimal {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let mut seen = Vec::new();
        for r in input.records {
            let text = std::str::from_utf8(&r.data)?;
            let (key, index) = text.split_once(':').ok_or("bad payload")?;
            seen.push((key.to_owned(), index.parse::<u64>()?));
        }
        self.0.push_all(seen);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_shard_ended_checkpoints_shard_end_so_children_start() {
    let (backend, store, log) = setup(1).await;
    let l = log.clone();
    let worker = Scheduler::builder(APP, STREAM)
        .worker_id("m".into())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(kcl_core::InitialPosition::TrimHorizon)
        .polling_interval(Duration::from_millis(50))
        .parent_poll_interval(Duration::from_millis(50))
        .processor_factory(move |_: &str| Minimal(l.clone()))
        .delete_finished_leases(false)
        .build()
        .unwrap()
        .spawn();
    let mut produced = BTreeMap::new();
    produce(&backend, 6, 3, &mut produced).await;
    let (low, high) = backend
        .split_shard(STREAM, "shardId-000000000000", 1 << 127)
        .unwrap();
    produce(&backend, 6, 3, &mut produced).await;
    wait_until(LIMIT, "parent and children processed", || log.wait_count() == 36).await;
    log.assert_complete_and_ordered(&produced);
    let parent = store.get("shardId-000000000000").await.unwrap().unwrap();
    assert!(parent.checkpoint.is_shard_end());
    assert_eq!(parent.child_shard_ids, BTreeSet::from([low, high]));
    worker.shutdown().await.unwrap();
}

/// Checkpoints inside a KPL aggregate on its first batch, then stops taking records.
struct CheckpointInside {
    seen: Arc<Mutex<Vec<(String, u64)>>>,
    at: usize,
}

#[async_trait]
impl RecordProcessor for CheckpointInside {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let r = &input.records[self.at];
        input
            .checkpointer
            .checkpoint_at(r.sequence_number.as_str(), r.sub_sequence_number)
            .await?;
        let mut seen = self.seen.lock().unwrap();
        if seen.is_empty() {
            seen.extend(
                input
                    .records
                    .iter()
                    .map(|r| (r.sequence_number.to_string(), r.sub_sequence_number)),
            );
        }
        Err("stop after checkpointing".into())
    }
}

#[tokio::test(start_paused = true)]
async fn kpl_aggregates_are_delivered_as_user_records_and_resume_inside_an_aggregate() {
    let (backend, store, log) = setup(1).await;
    // Three aggregates of five user records each, payload "key:index".
    let mut produced: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..3 {
        let payloads: Vec<(String, String)> = (0..5)
            .map(|k| {
                let key = format!("key-{k}");
                let n = produced.entry(key.clone()).or_default();
                let p = (key.clone(), format!("{key}:{n}"));
                *n += 1;
                p
            })
            .collect();
        let parts: Vec<(&str, Option<&str>, &[u8])> = payloads
            .iter()
            .map(|(k, d)| (k.as_str(), None, d.as_bytes()))
            .collect();
        let data = kcl_core::aggregation::aggregate(&parts);
        backend.put_record(STREAM, "agg", data, None).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let first = Scheduler::builder(APP, STREAM)
        .worker_id("first".into())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(kcl_core::InitialPosition::TrimHorizon)
        .processor_factory(move |_: &str| CheckpointInside {
            seen: s.clone(),
            at: 7,
        })
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "first batch seen", || !seen.lock().unwrap().is_empty()).await;
    first.shutdown().await.unwrap();
    let delivered = seen.lock().unwrap().clone();
    assert_eq!(delivered.len(), 15, "three aggregates of five");
    assert_eq!(
        delivered.iter().map(|(_, sub)| *sub).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4].repeat(3)
    );
    let row = store.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(
        row.checkpoint.sub_sequence(),
        2,
        "checkpointed inside the second aggregate"
    );

    // The next owner resumes at sub-record 3 of the second aggregate.
    let second = start("second", &backend, &store, &log, Duration::from_secs(3));
    wait_until(LIMIT, "the rest processed", || log.wait_count() == 7).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<(String, u64)> = log.seen().into_iter().map(|s| (s.key, s.index)).collect();
    let expected: Vec<(String, u64)> = [(3, 1), (4, 1), (0, 2), (1, 2), (2, 2), (3, 2), (4, 2)]
        .iter()
        .map(|(k, i)| (format!("key-{k}"), *i))
        .collect();
    assert_eq!(got, expected);
    second.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn finished_leases_are_deleted_once_their_children_started_and_never_come_back() {
    let (backend, store, log) = setup(2).await;
    let a = start("a", &backend, &store, &log, Duration::from_secs(2));
    let mut produced = BTreeMap::new();
    produce(&backend, 10, 3, &mut produced).await;
    let (low, high) = backend
        .split_shard(STREAM, "shardId-000000000000", 1 << 126)
        .unwrap();
    produce(&backend, 10, 3, &mut produced).await;
    let merged = backend.merge_shards(STREAM, &low, &high).unwrap();
    produce(&backend, 10, 3, &mut produced).await;
    wait_until(LIMIT, "all processed", || log.wait_count() == 90).await;
    // The split's parent and the merge's parents go once their children are under way.
    let gone = ["shardId-000000000000".to_owned(), low.clone(), high.clone()];
    wait_until(LIMIT, "finished leases deleted", || {
        let keys: BTreeSet<String> = store.snapshot().into_iter().map(|l| l.lease_key).collect();
        gone.iter().all(|k| !keys.contains(k))
    })
    .await;
    // Several shard syncs later (every 500 ms here) they have not been recreated, and nothing
    // was read twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let keys: BTreeSet<String> = store.snapshot().into_iter().map(|l| l.lease_key).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["shardId-000000000001".to_owned(), merged.clone()]),
        "only the open shards' leases remain"
    );
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_with_user_records_of_both_shards_are_delivered_whole() {
    let (backend, store, log) = setup(2).await;
    let lower_half = |key: &str| kcl_core::backend::local::partition_key_hash(key) <= u128::MAX / 2;
    let keys: Vec<String> = (0..10).map(|k| format!("key-{k}")).collect();
    assert!(
        keys.iter().any(|k| lower_half(k)) && keys.iter().any(|k| !lower_half(k)),
        "the user records hash to both shards"
    );
    // Ten aggregates of the ten keys, all put on the shard of the outer key "agg".
    let mut produced: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0..10u64 {
        let payloads: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), format!("{k}:{n}"))).collect();
        let parts: Vec<(&str, Option<&str>, &[u8])> = payloads
            .iter()
            .map(|(k, d)| (k.as_str(), None, d.as_bytes()))
            .collect();
        backend
            .put_record(STREAM, "agg", kcl_core::aggregation::aggregate(&parts), None)
            .await
            .unwrap();
        for k in &keys {
            produced.insert(k.clone(), n + 1);
        }
    }
    let a = start("a", &backend, &store, &log, Duration::from_secs(3));
    wait_until(LIMIT, "every user record delivered", || log.wait_count() == 100).await;
    assert_eq!(log.assert_complete_and_ordered(&produced), 0);
    a.shutdown().await.unwrap();
}
