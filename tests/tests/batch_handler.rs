//! The batch-handler form (`SchedulerBuilder::handler`) end to end on the local backend: every
//! record seen, in order per shard; `Ok` checkpoints the batch, an error delivers it again; a
//! restarted worker resumes after the checkpoints. And the builder's errors for missing parts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_core::prelude::*;
use kcl_lease::{ExtendedSequenceNumber, LeaseStore};
use kcl_tests::{init_tracing, produce, wait_until, APP, STREAM};

const LIMIT: Duration = Duration::from_secs(60);

/// One delivery of a record to the handler.
#[derive(Clone, Debug)]
struct Delivery {
    shard: String,
    key: String,
    index: u64,
    sequence: String,
    attempt: u32,
    accepted: bool,
}

/// Everything a handler was given, in order.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<Vec<Delivery>>>);

impl Deliveries {
    fn all(&self) -> Vec<Delivery> {
        self.0.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Delivery> {
        self.all().into_iter().filter(|d| d.accepted).collect()
    }
}

/// A worker whose handler logs every delivery and, if `fail_first`, refuses the first delivery
/// of every batch (which must then come again, with `attempt` 2).
fn worker(
    id: &str,
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    log: &Deliveries,
    fail_first: bool,
) -> SchedulerHandle {
    let log = log.clone();
    Scheduler::builder(APP, STREAM)
        .worker_id(id.to_owned())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .polling_interval(Duration::from_millis(50))
        .min_read_interval(Duration::from_millis(10))
        .max_records(3)
        .handler(move |batch: Batch| {
            let log = log.clone();
            async move {
                let refuse = fail_first && batch.attempt() == 1;
                let mut seen = log.0.lock().unwrap();
                for record in &batch {
                    let text = std::str::from_utf8(&record.data)?;
                    let (key, index) = text.split_once(':').ok_or("bad payload")?;
                    seen.push(Delivery {
                        shard: batch.shard_id().to_owned(),
                        key: key.to_owned(),
                        index: index.parse()?,
                        sequence: record.sequence_number.to_string(),
                        attempt: batch.attempt(),
                        accepted: !refuse,
                    });
                }
                if refuse {
                    return Err("refused the first delivery".into());
                }
                Ok(())
            }
        })
        .build()
        .expect("a complete builder")
        .spawn()
}

/// The checkpoint of every shard's lease.
async fn checkpoints(store: &InMemoryLeaseStore) -> BTreeMap<String, ExtendedSequenceNumber> {
    let leases = store.list().await.expect("list");
    leases.into_iter().map(|l| (l.lease_key, l.checkpoint)).collect()
}

/// The last accepted record of each shard, as a checkpoint.
fn last_accepted(log: &Deliveries) -> BTreeMap<String, ExtendedSequenceNumber> {
    let mut last = BTreeMap::new();
    for d in log.accepted() {
        last.insert(
            d.shard,
            ExtendedSequenceNumber::from_parts(&d.sequence, 0).expect("a sequence number"),
        );
    }
    last
}

/// Asserts that the accepted deliveries are, per shard, in strictly increasing sequence order,
/// and per key exactly `from..to` in order (nothing lost, nothing twice).
fn assert_in_order(log: &Deliveries, keys: &BTreeMap<String, u64>, from: u64) {
    let mut by_shard: BTreeMap<String, Vec<kcl_core::SequenceNumber>> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for d in log.accepted() {
        by_shard
            .entry(d.shard.clone())
            .or_default()
            .push(kcl_core::SequenceNumber::new(&d.sequence).expect("a sequence number"));
        by_key.entry(d.key.clone()).or_default().push(d.index);
    }
    for (shard, sequences) in &by_shard {
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "shard {shard}: not in order, or a record twice: {sequences:?}"
        );
    }
    for (key, to) in keys {
        let expected: Vec<u64> = (from..*to).collect();
        assert_eq!(by_key.get(key), Some(&expected), "key {key}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_handler_sees_every_record_in_order_and_a_restart_resumes_after_its_checkpoints() {
    init_tracing();
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, 2).expect("create stream");
    let store = InMemoryLeaseStore::new();
    let mut produced = BTreeMap::new();
    produce(&backend, 4, 6, &mut produced).await;

    // First run: every batch is refused once, then accepted.
    let first = Deliveries::default();
    let a = worker("a", &backend, &store, &first, true);
    wait_until(LIMIT, "24 records accepted", || first.accepted().len() == 24).await;
    assert_in_order(&first, &produced, 0);
    let refused: Vec<Delivery> = first.all().into_iter().filter(|d| !d.accepted).collect();
    assert_eq!(refused.len(), 24, "each record was refused once");
    assert!(
        first.accepted().iter().all(|d| d.attempt == 2),
        "accepted at the second delivery"
    );
    // Ok checkpointed each shard at its last accepted record.
    let expected = last_accepted(&first);
    assert_eq!(expected.len(), 2, "both shards delivered");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while checkpoints(&store).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoints {:?}, expected {expected:?}",
            checkpoints(&store).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await.expect("graceful shutdown");

    // Second run, another worker: it starts after the checkpoints and sees only the new records.
    let before = produced.clone();
    produce(&backend, 4, 3, &mut produced).await;
    let second = Deliveries::default();
    let b = worker("b", &backend, &store, &second, false);
    wait_until(LIMIT, "12 new records accepted", || second.accepted().len() == 12).await;
    // A little longer: nothing older comes late.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        second.all().len(),
        12,
        "no record of the first run again: {:?}",
        second.all()
    );
    for (key, to) in &produced {
        let from = before[key];
        let seen: Vec<u64> = second
            .accepted()
            .iter()
            .filter(|d| &d.key == key)
            .map(|d| d.index)
            .collect();
        assert_eq!(seen, (from..*to).collect::<Vec<_>>(), "key {key}");
    }
    assert_in_order(&second, &BTreeMap::new(), 0);
    b.shutdown().await.expect("graceful shutdown");
    assert_eq!(checkpoints(&store).await, last_accepted(&second));
}

#[test]
fn a_builder_without_its_parts_says_which_part_is_missing_and_how_to_give_it() {
    let error = |builder: kcl_core::SchedulerBuilder| builder.build().expect_err("incomplete").to_string();
    let processor = |_: Batch| async { Ok(()) };

    let message = error(
        Scheduler::builder("app", "s")
            .backend(LocalBackend::new())
            .handler(processor),
    );
    assert!(
        message.contains("a lease store is required") && message.contains(".lease_store("),
        "{message}"
    );
    assert!(
        message.contains(".aws().await?"),
        "the feature is on here: {message}"
    );

    let message = error(
        Scheduler::builder("app", "s")
            .lease_store(InMemoryLeaseStore::new())
            .handler(processor),
    );
    assert!(
        message.contains("a stream backend is required") && message.contains(".backend("),
        "{message}"
    );

    let message = error(
        Scheduler::builder("app", "s")
            .backend(LocalBackend::new())
            .lease_store(InMemoryLeaseStore::new()),
    );
    assert!(
        message.contains("a record processor is required") && message.contains(".handler("),
        "{message}"
    );
}
