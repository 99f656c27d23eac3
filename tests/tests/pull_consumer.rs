//! The pull-based consumer (`SchedulerBuilder::into_pull_consumer`) end to end on the local
//! backend: every record delivered in order per shard; out-of-order acks checkpoint only the
//! contiguous prefix; the in-flight bound per shard holds; a restarted consumer resumes after the
//! acked prefix; a lost lease is surfaced and its acks are no-ops; a shard that ended writes
//! `SHARD_END` (and its children start) only after every batch of it is acked; dropping the
//! consumer shuts the worker down gracefully.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use kcl_core::prelude::*;
use kcl_core::{AckError, ExtendedSequenceNumber};
use kcl_lease::LeaseStore;
use kcl_tests::{init_tracing, produce, APP, STREAM};

const LIMIT: Duration = Duration::from_secs(60);
const SHARD0: &str = "shardId-000000000000";

/// A stream of `shards` shards holding `per_key` records for each of `keys` keys, an empty lease
/// table, and what was produced (tracing on).
async fn table(
    shards: usize,
    keys: usize,
    per_key: u64,
) -> (LocalBackend, InMemoryLeaseStore, BTreeMap<String, u64>) {
    init_tracing();
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, shards).expect("create stream");
    let store = InMemoryLeaseStore::new();
    let mut produced = BTreeMap::new();
    produce(&backend, keys, per_key, &mut produced).await;
    (backend, store, produced)
}

/// A pull consumer with fast settings and `max_records` records per batch.
fn consumer(
    id: &str,
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    max_records: usize,
    options: PullOptions,
) -> PullConsumer {
    Scheduler::builder(APP, STREAM)
        .worker_id(id.to_owned())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .polling_interval(Duration::from_millis(50))
        .min_read_interval(Duration::from_millis(10))
        .parent_poll_interval(Duration::from_millis(50))
        .shard_sync_interval(Duration::from_millis(500))
        .max_records(max_records)
        .into_pull_consumer(options)
        .expect("a complete builder")
}

async fn next_event(consumer: &mut PullConsumer) -> PullEvent {
    tokio::time::timeout(LIMIT, consumer.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

async fn next_batch(consumer: &mut PullConsumer) -> (Batch, AckToken) {
    match next_event(consumer).await {
        PullEvent::Batch { batch, ack } => (batch, ack),
        other => panic!("expected a batch, got {other:?}"),
    }
}

/// Asserts that nothing comes for a while.
async fn assert_quiet(consumer: &mut PullConsumer, what: &str) {
    if let Ok(event) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
        panic!("{what}: got {event:?}");
    }
}

async fn checkpoint(store: &InMemoryLeaseStore, key: &str) -> ExtendedSequenceNumber {
    store.get(key).await.expect("get").expect("the lease").checkpoint
}

/// Waits until the lease of `key` is checkpointed at `expected`.
async fn wait_checkpoint(store: &InMemoryLeaseStore, key: &str, expected: &ExtendedSequenceNumber) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now = checkpoint(store, key).await;
        if now == *expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key}: checkpoint {now}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn last_of(batch: &Batch) -> ExtendedSequenceNumber {
    batch
        .records()
        .last()
        .expect("a batch is never empty")
        .extended_sequence_number()
}

/// `key:index` payloads of a batch.
fn payloads(batch: &Batch) -> Vec<String> {
    batch
        .records()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn out_of_order_acks_checkpoint_only_the_contiguous_prefix_and_every_record_comes_in_order() {
    let (backend, store, _) = table(1, 1, 20).await;
    let mut c = consumer(
        "a",
        &backend,
        &store,
        2,
        PullOptions::default().max_in_flight_batches(4),
    );

    // Four batches out, none acked: the shard waits.
    let mut out = Vec::new();
    for _ in 0..4 {
        out.push(next_batch(&mut c).await);
    }
    assert_quiet(&mut c, "a fifth batch while four are unacknowledged").await;
    let mut seen: Vec<String> = out.iter().flat_map(|(b, _)| payloads(b)).collect();

    // Batches 1..3 acked before batch 0: nothing is checkpointed past batch 0.
    let (batches, acks): (Vec<Batch>, Vec<AckToken>) = out.into_iter().unzip();
    let mut acks = acks.into_iter();
    let first = acks.next().expect("batch 0");
    for ack in acks.rev() {
        ack.ack().expect("held");
    }
    // Three slots are free again: three more batches come (the fourth waits for batch 0).
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(next_batch(&mut c).await);
    }
    assert_quiet(&mut c, "a batch beyond the in-flight bound").await;
    assert_eq!(
        checkpoint(&store, SHARD0).await,
        ExtendedSequenceNumber::TrimHorizon,
        "batch 0 is not acked: no checkpoint"
    );

    // Batch 0 acked: the checkpoint moves to the end of batch 3.
    first.ack().expect("held");
    wait_checkpoint(&store, SHARD0, &last_of(&batches[3])).await;

    // The rest, acked in order as it comes.
    seen.extend(later.iter().flat_map(|(b, _)| payloads(b)));
    let mut last = last_of(&later[2].0);
    for (_, ack) in later {
        ack.ack().expect("held");
    }
    while seen.len() < 20 {
        let (batch, ack) = next_batch(&mut c).await;
        assert_eq!(batch.shard_id(), SHARD0);
        seen.extend(payloads(&batch));
        last = last_of(&batch);
        ack.ack().expect("held");
    }
    let expected: Vec<String> = (0..20).map(|i| format!("key-0:{i}")).collect();
    assert_eq!(seen, expected, "every record once, in order");
    wait_checkpoint(&store, SHARD0, &last).await;
    c.shutdown().await.expect("clean shutdown");
    let lease = store.get(SHARD0).await.expect("get").expect("lease");
    assert_eq!(lease.lease_owner, None, "the lease is handed over at shutdown");
    assert_eq!(lease.checkpoint, last);
}

#[tokio::test(start_paused = true)]
async fn each_shard_has_at_most_the_bound_in_flight_and_every_record_comes_in_order() {
    let (backend, store, produced) = table(2, 6, 15).await;
    const BOUND: usize = 3;
    let mut c = consumer(
        "a",
        &backend,
        &store,
        2,
        PullOptions::default().max_in_flight_batches(BOUND).buffer(2),
    );

    // Per shard: the tokens held, the sequence numbers seen, the last record.
    let mut held: BTreeMap<String, Vec<AckToken>> = BTreeMap::new();
    let mut sequences: BTreeMap<String, Vec<kcl_core::SequenceNumber>> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last: BTreeMap<String, ExtendedSequenceNumber> = BTreeMap::new();
    let total: u64 = produced.values().sum();
    let mut received = 0u64;
    let mut round = 0u64;
    while received < total {
        let event = tokio::time::timeout(Duration::from_secs(2), c.next()).await;
        let Ok(Some(PullEvent::Batch { batch, ack })) = event else {
            if let Ok(other) = event {
                panic!("unexpected event {other:?}");
            }
            // Quiet: every shard that still has records must be at its bound. Release them,
            // in a scrambled order.
            for tokens in held.values_mut() {
                round += 1;
                let mut tokens = std::mem::take(tokens);
                let shift = (round as usize) % tokens.len().max(1);
                tokens.rotate_left(shift);
                for ack in tokens {
                    ack.ack().expect("held");
                }
            }
            continue;
        };
        let shard = batch.shard_id().to_owned();
        for record in batch.records() {
            sequences
                .entry(shard.clone())
                .or_default()
                .push(record.sequence_number.clone());
            let text = String::from_utf8_lossy(&record.data).into_owned();
            let (key, index) = text.split_once(':').expect("key:index");
            by_key
                .entry(key.to_owned())
                .or_default()
                .push(index.parse().expect("an index"));
            received += 1;
        }
        last.insert(shard.clone(), last_of(&batch));
        let tokens = held.entry(shard.clone()).or_default();
        tokens.push(ack);
        assert!(
            tokens.len() <= BOUND,
            "{shard}: {} batches in flight",
            tokens.len()
        );
    }
    for tokens in held.values_mut() {
        for ack in std::mem::take(tokens) {
            ack.ack().expect("held");
        }
    }
    assert_eq!(sequences.len(), 2, "both shards delivered");
    for (shard, seqs) in &sequences {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{shard}: in order, once each"
        );
    }
    for (key, n) in &produced {
        assert_eq!(by_key.get(key), Some(&(0..*n).collect::<Vec<_>>()), "{key}");
    }
    for (shard, last) in &last {
        wait_checkpoint(&store, shard, last).await;
    }
    c.shutdown().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_consumer_resumes_after_the_acked_prefix() {
    let (backend, store, _) = table(1, 1, 10).await;
    let options = PullOptions::default().drain_timeout(Duration::from_secs(2));

    let mut first = consumer("a", &backend, &store, 2, options.clone());
    let (b0, a0) = next_batch(&mut first).await;
    let (b1, a1) = next_batch(&mut first).await;
    let (_b2, a2) = next_batch(&mut first).await;
    let (_b3, a3) = next_batch(&mut first).await;
    assert_eq!(payloads(&b0), ["key-0:0", "key-0:1"]);
    a0.ack().expect("held");
    a1.ack().expect("held");
    a3.ack().expect("held"); // batch 2 is not acked: the checkpoint stays after batch 1
    wait_checkpoint(&store, SHARD0, &last_of(&b1)).await;
    // Shut down while batch 2 is still out: after the drain timeout it is given up.
    first.shutdown().await.expect("clean shutdown");
    assert!(
        matches!(a2.ack(), Err(AckError::NotHeld { .. })),
        "acks after shutdown are refused"
    );
    let lease = store.get(SHARD0).await.expect("get").expect("lease");
    assert_eq!(lease.checkpoint, last_of(&b1));
    assert_eq!(lease.lease_owner, None);

    // A new consumer starts with batch 2's records.
    let mut second = consumer("b", &backend, &store, 2, options);
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let (batch, ack) = next_batch(&mut second).await;
        seen.extend(payloads(&batch));
        ack.ack().expect("held");
    }
    let expected: Vec<String> = (4..10).map(|i| format!("key-0:{i}")).collect();
    assert_eq!(seen, expected);
    second.shutdown().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_is_surfaced_and_its_acks_are_no_ops() {
    let (backend, store, _) = table(1, 1, 2).await;
    let mut c = consumer("a", &backend, &store, 10, PullOptions::default());
    let (batch, ack) = next_batch(&mut c).await;
    assert_eq!(payloads(&batch), ["key-0:0", "key-0:1"]);
    assert!(ack.is_held());

    // Another worker takes the lease (without a hand-off).
    let lease = store.get(SHARD0).await.expect("get").expect("lease");
    assert_eq!(lease.lease_owner.as_deref(), Some("a"));
    store.take(&lease, "thief", false).await.expect("taken");
    match next_event(&mut c).await {
        PullEvent::LeaseLost { shard, handed_over } => {
            assert_eq!(shard.shard_id, SHARD0);
            assert!(!handed_over);
        }
        other => panic!("expected the lease loss, got {other:?}"),
    }
    assert!(!ack.is_held());
    assert!(matches!(ack.ack(), Err(AckError::NotHeld { shard_id }) if shard_id == SHARD0));
    assert_eq!(
        checkpoint(&store, SHARD0).await,
        ExtendedSequenceNumber::TrimHorizon
    );

    // The thief never renews: after the failover time this worker takes the shard back and
    // delivers the unacknowledged batch again.
    let (again, ack) = next_batch(&mut c).await;
    assert_eq!(payloads(&again), ["key-0:0", "key-0:1"]);
    ack.ack().expect("held");
    wait_checkpoint(&store, SHARD0, &last_of(&again)).await;
    c.shutdown().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn shard_end_is_checkpointed_only_after_every_batch_is_acked() {
    let (backend, store, mut produced) = table(1, 1, 4).await;
    let mut c = consumer("a", &backend, &store, 2, PullOptions::default());
    let (b0, a0) = next_batch(&mut c).await;
    let (b1, a1) = next_batch(&mut c).await;
    assert_eq!(payloads(&b0), ["key-0:0", "key-0:1"]);
    assert_eq!(payloads(&b1), ["key-0:2", "key-0:3"]);

    // Split: the parent is read to its end; the children get the new records.
    let (lower, upper) = backend.split_shard(STREAM, SHARD0, 1u128 << 127).expect("split");
    produce(&backend, 1, 4, &mut produced).await;
    // The second batch acked, the first not: no SHARD_END, no checkpoint, no child batch.
    a1.ack().expect("held");
    assert_quiet(&mut c, "an event before the parent's first batch is acked").await;
    assert_eq!(
        checkpoint(&store, SHARD0).await,
        ExtendedSequenceNumber::TrimHorizon
    );
    for child in [&lower, &upper] {
        if let Some(lease) = store.get(child).await.expect("get") {
            assert!(
                lease.checkpoint.is_sentinel(),
                "{child} started before its parent ended"
            );
        }
    }

    a0.ack().expect("held");
    let mut ended = false;
    let mut child_records = Vec::new();
    while !ended || child_records.len() < 4 {
        match next_event(&mut c).await {
            PullEvent::ShardEnded { shard } => {
                assert_eq!(shard.shard_id, SHARD0);
                ended = true;
            }
            PullEvent::Batch { batch, ack } => {
                assert_ne!(batch.shard_id(), SHARD0);
                assert_eq!(
                    checkpoint(&store, SHARD0).await,
                    ExtendedSequenceNumber::ShardEnd,
                    "a child batch before its parent's SHARD_END"
                );
                child_records.extend(payloads(&batch));
                ack.ack().expect("held");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(checkpoint(&store, SHARD0).await, ExtendedSequenceNumber::ShardEnd);
    let expected: Vec<String> = (4..8).map(|i| format!("key-0:{i}")).collect();
    assert_eq!(child_records, expected, "the children's records, once each");
    c.shutdown().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_consumer_checkpoints_the_acks_and_releases_the_leases() {
    let (backend, store, _) = table(1, 1, 2).await;
    let mut c = consumer("a", &backend, &store, 10, PullOptions::default());
    let (batch, ack) = next_batch(&mut c).await;
    ack.ack().expect("held");
    drop(c);
    let last = last_of(&batch);
    let released = async {
        loop {
            let lease = store.get(SHARD0).await.expect("get").expect("lease");
            if lease.lease_owner.is_none() && lease.checkpoint == last {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(LIMIT, released)
        .await
        .expect("the dropped consumer's worker shuts down gracefully");
}

#[tokio::test(start_paused = true)]
async fn a_second_worker_takes_a_shard_over_and_the_first_is_told() {
    let (backend, store, mut produced) = table(2, 6, 3).await;
    let total: u64 = produced.values().sum();

    // Worker a takes both shards and acknowledges everything.
    let mut a = consumer("a", &backend, &store, 100, PullOptions::default());
    let mut seen_by_a: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut n = 0;
    while n < total as usize {
        let (batch, ack) = next_batch(&mut a).await;
        n += batch.records().len();
        seen_by_a
            .entry(batch.shard_id().to_owned())
            .or_default()
            .extend(payloads(&batch));
        ack.ack().expect("held");
    }
    assert_eq!(a.handle().held_leases().len(), 2);

    // Worker b joins: it takes one shard from a, which is told.
    let mut b = consumer("b", &backend, &store, 100, PullOptions::default());
    let lost = match next_event(&mut a).await {
        PullEvent::LeaseLost { shard, handed_over } => {
            assert!(handed_over, "a steal hands the lease over gracefully");
            shard.shard_id
        }
        other => panic!("expected a lease handed over (no new records), got {other:?}"),
    };
    assert!(!a.handle().held_leases().contains(&lost));
    // Every batch a acknowledged was checkpointed before the lease moved: b starts after them.
    produce(&backend, 6, 3, &mut produced).await;
    let mut seen_by_b: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (batch, ack) = next_batch(&mut b).await;
        assert_eq!(batch.shard_id(), lost, "b holds only the shard it took");
        let records = payloads(&batch);
        for r in &records {
            assert!(
                !seen_by_a[&lost].contains(r),
                "{r} was acknowledged on a and delivered again on b"
            );
        }
        seen_by_b.extend(records);
        ack.ack().expect("held");
        let keys_on_lost: std::collections::BTreeSet<&str> = seen_by_a[&lost]
            .iter()
            .filter_map(|r| r.split_once(':').map(|(k, _)| k))
            .collect();
        if seen_by_b.len() == keys_on_lost.len() * 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b got {seen_by_b:?}");
    }
    b.shutdown().await.expect("clean shutdown");
    a.shutdown().await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_kpl_aggregate_is_checkpointed_at_its_last_sub_record() {
    init_tracing();
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, 1).expect("create stream");
    let store = InMemoryLeaseStore::new();
    let put = |data: bytes::Bytes| {
        let backend = backend.clone();
        async move { backend.put_record(STREAM, "k", data, None).await.expect("put") }
    };
    put("plain:0".into()).await;
    let aggregate = kcl_core::aggregation::aggregate(&[
        ("a", None, b"agg:0".as_slice()),
        ("b", None, b"agg:1".as_slice()),
        ("c", None, b"agg:2".as_slice()),
    ]);
    put(aggregate).await;

    let mut first = consumer("a", &backend, &store, 1, PullOptions::default());
    let mut out = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let (batch, ack) = next_batch(&mut first).await;
        seen.extend(payloads(&batch));
        out.push((last_of(&batch), ack));
    }
    assert_eq!(seen, ["plain:0", "agg:0", "agg:1", "agg:2"]);
    let last = out.last().expect("batches").0.clone();
    assert!(
        matches!(&last, ExtendedSequenceNumber::Sequence { sub_sequence: 2, .. }),
        "the last sub-record: {last}"
    );
    for (_, ack) in out.into_iter().rev() {
        ack.ack().expect("held");
    }
    wait_checkpoint(&store, SHARD0, &last).await;
    first.shutdown().await.expect("clean shutdown");

    // A restart resumes after the aggregate's last sub-record.
    put("plain:1".into()).await;
    let mut second = consumer("b", &backend, &store, 1, PullOptions::default());
    let (batch, ack) = next_batch(&mut second).await;
    assert_eq!(payloads(&batch), ["plain:1"]);
    ack.ack().expect("held");
    second.shutdown().await.expect("clean shutdown");
}
