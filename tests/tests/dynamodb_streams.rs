//! DynamoDB Streams on the bundled local backend, end to end: a table's changes replicated into
//! a second in-memory table by a processor that parses `ChangeRecord`s, through the unchanged
//! scheduler, with a shard rotation in the middle (parents finished before children) and one of
//! two workers killed mid-run. Every change must arrive in order per key, none lost, and the
//! replica must equal the table at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::backend::local::KeySchema;
use kcl_core::dynamodb_streams::{
    item_to_dynamodb_json, AttributeValue, ChangeRecord, EventName, Item, StreamViewType,
};
use kcl_core::lease::LeaseStore;
use kcl_core::{
    InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler, SchedulerHandle, ShardEndedInput, ShutdownRequestedInput,
};
use kcl_tests::{init_tracing, wait_until};

const LIMIT: Duration = Duration::from_secs(60);
const TABLE: &str = "orders";
const KEYS: u64 = 12;

/// One change as a processor received it.
#[derive(Clone, Debug)]
struct Delivery {
    worker: String,
    key: String,
    sequence: String,
    event: EventName,
    version: u64,
}

#[derive(Clone, Default)]
struct Replica {
    items: Arc<Mutex<BTreeMap<String, Item>>>,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Replica {
    fn unique_deliveries(&self) -> usize {
        let d = self.deliveries.lock().unwrap();
        d.iter()
            .map(|d| d.sequence.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

/// Applies each change to the replica (in delivery order, without any guard: a replay after a
/// fail-over re-applies a suffix in order, so the replica converges only if order is kept).
struct Replicator {
    worker: String,
    replica: Replica,
}

fn key_of(keys: &Item) -> String {
    item_to_dynamodb_json(keys).to_string()
}

fn version(item: &Item) -> Result<u64, ProcessorError> {
    match item.get("v") {
        Some(AttributeValue::N(n)) => Ok(n.parse()?),
        other => Err(format!("no version in the image: {other:?}").into()),
    }
}

#[async_trait]
impl RecordProcessor for Replicator {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        for record in input.records {
            let change = ChangeRecord::from_record(record)?;
            let key = key_of(&change.keys);
            let version = match change.event_name {
                EventName::Insert | EventName::Modify => {
                    let new = change.new_image.clone().ok_or("no new image")?;
                    let v = version(&new)?;
                    self.replica.items.lock().unwrap().insert(key.clone(), new);
                    v
                }
                EventName::Remove => {
                    let old = change.old_image.as_ref().ok_or("no old image")?;
                    self.replica.items.lock().unwrap().remove(&key);
                    version(old)?
                }
            };
            self.replica.deliveries.lock().unwrap().push(Delivery {
                worker: self.worker.clone(),
                key,
                sequence: change.sequence_number.to_string(),
                event: change.event_name,
                version,
            });
        }
        // Slow work between applying and checkpointing, so that the kill lands in the middle of
        // a batch: its changes are applied but not checkpointed, and are delivered again.
        tokio::time::sleep(Duration::from_millis(40)).await;
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn worker(
    name: &str,
    stream: &str,
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    replica: &Replica,
) -> SchedulerHandle {
    let (w, r) = (name.to_owned(), replica.clone());
    Scheduler::builder("replicator", stream)
        .worker_id(name.to_owned())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_millis(1200))
        .polling_interval(Duration::from_millis(50))
        .min_read_interval(Duration::from_millis(10))
        .parent_poll_interval(Duration::from_millis(50))
        .shard_sync_interval(Duration::from_millis(500))
        .max_records(25)
        .processor_factory(move |_shard: &str| Replicator {
            worker: w.clone(),
            replica: r.clone(),
        })
        .build()
        .expect("valid config")
        .spawn()
}

/// The writer: puts, updates and deletes over `KEYS` items (partition key `user-N`, sort key a
/// number), each write bumping the item's version `v`; remembers each change per key.
struct Writer {
    backend: LocalBackend,
    versions: BTreeMap<u64, u64>,
    expected: BTreeMap<String, Vec<(EventName, u64)>>,
    writes: usize,
}

impl Writer {
    fn key(k: u64) -> Item {
        [
            ("pk".to_owned(), AttributeValue::s(format!("user-{}", k % 4))),
            ("sk".to_owned(), AttributeValue::n(k)),
        ]
        .into()
    }

    fn write(&mut self, ops: u64) {
        for _ in 0..ops {
            let i = self.writes as u64;
            // A fixed, scrambled choice of key and operation (Fibonacci hashing).
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
            let k = h % KEYS;
            let key = Self::key(k);
            let exists = self.backend.get_item(TABLE, &key).unwrap().is_some();
            let v = self.versions.entry(k).or_default();
            *v += 1;
            let v = *v;
            let event = match (exists, (h / KEYS) % 5) {
                (false, _) | (true, 0) => {
                    let mut item = key.clone();
                    item.insert("v".into(), AttributeValue::n(v));
                    item.insert("note".into(), AttributeValue::s(format!("put {i}")));
                    self.backend.put_item(TABLE, item).unwrap();
                    if exists {
                        EventName::Modify
                    } else {
                        EventName::Insert
                    }
                }
                (true, 1..=3) => {
                    let set: Item = [
                        ("v".to_owned(), AttributeValue::n(v)),
                        ("tags".to_owned(), AttributeValue::Ss(vec![format!("t{i}")])),
                    ]
                    .into();
                    self.backend
                        .update_item(TABLE, key.clone(), set, &["note"])
                        .unwrap();
                    EventName::Modify
                }
                (true, _) => {
                    let old = self.backend.delete_item(TABLE, key.clone()).unwrap().unwrap();
                    // A removal carries the old image: its version is the one before.
                    *self.versions.get_mut(&k).unwrap() -= 1;
                    self.expected
                        .entry(key_of(&key))
                        .or_default()
                        .push((EventName::Remove, version(&old).unwrap()));
                    self.writes += 1;
                    continue;
                }
            };
            self.expected.entry(key_of(&key)).or_default().push((event, v));
            self.writes += 1;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_table_is_replicated_through_a_rotation_and_a_killed_worker() {
    init_tracing();
    let backend = LocalBackend::new();
    let stream = backend
        .create_table(
            TABLE,
            KeySchema::hash_and_range("pk", "sk"),
            StreamViewType::NewAndOldImages,
            3,
        )
        .unwrap();
    let store = InMemoryLeaseStore::new();
    let replica = Replica::default();
    let mut writer = Writer {
        backend: backend.clone(),
        versions: BTreeMap::new(),
        expected: BTreeMap::new(),
        writes: 0,
    };

    let a = worker("a", &stream, &backend, &store, &replica);
    let b = worker("b", &stream, &backend, &store, &replica);
    wait_until(LIMIT, "the shards are shared", || {
        !a.held_leases().is_empty() && !b.held_leases().is_empty()
    })
    .await;

    writer.write(120);
    // Rotation before the first wave is read: every shard closes with its changes unread and a
    // child opens for each; the next changes go to the children, which must wait until their
    // parents are finished for the order per key to hold.
    let rotated = backend.rotate_shards(&stream).unwrap();
    assert_eq!(rotated.len(), 3);
    writer.write(120);
    // b dies mid-run (about half of the changes so far delivered): whatever it had not
    // checkpointed is delivered
    // again by a, after the fail-over time.
    wait_until(LIMIT, "part of the second wave is delivered", || {
        replica.unique_deliveries() >= 130
    })
    .await;
    b.kill().await;
    writer.write(120);
    wait_until(LIMIT, "every change is delivered", || {
        replica.unique_deliveries() == writer.writes
    })
    .await;
    wait_until(LIMIT, "a holds the three children", || a.held_leases().len() == 3).await;
    a.shutdown().await.unwrap();
    let replays = replica.deliveries.lock().unwrap().len() - writer.writes;
    tracing::info!(replays, "delivered again after the kill");
    assert!(
        replays > 0,
        "the kill landed between batches: nothing to deliver again"
    );

    // Every change, in order per key: the first delivery of each sequence number, in delivery
    // order, is exactly what was written (replays after the kill only repeat earlier ones).
    let deliveries = replica.deliveries.lock().unwrap().clone();
    let mut first: BTreeMap<String, Vec<(EventName, u64)>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for d in &deliveries {
        if seen.insert(d.sequence.clone()) {
            first.entry(d.key.clone()).or_default().push((d.event, d.version));
        }
    }
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        writer.expected.keys().collect::<Vec<_>>()
    );
    for (key, changes) in &writer.expected {
        assert_eq!(&first[key], changes, "the changes of {key}, in order");
    }
    assert_eq!(writer.writes, 360);
    assert!(writer
        .expected
        .values()
        .flatten()
        .any(|(e, _)| *e == EventName::Remove));
    let workers: std::collections::BTreeSet<&str> = deliveries.iter().map(|d| d.worker.as_str()).collect();
    assert_eq!(workers.len(), 2, "both workers delivered changes");
    // The replica equals the table.
    let table: BTreeMap<String, Item> = backend
        .scan(TABLE)
        .unwrap()
        .into_iter()
        .map(|item| {
            let keys: Item = item
                .iter()
                .filter(|(k, _)| *k == "pk" || *k == "sk")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (key_of(&keys), item)
        })
        .collect();
    assert!(!table.is_empty());
    assert_eq!(*replica.items.lock().unwrap(), table);

    // The parents were finished (SHARD_END) and the children are under way; the stream has six
    // shards.
    let shards = backend.shards(&stream).unwrap();
    assert_eq!(shards.len(), 6);
    for lease in store.list().await.unwrap() {
        let parent = rotated.iter().any(|(p, _)| *p == lease.lease_key);
        assert!(!parent || lease.checkpoint.is_shard_end(), "{lease:?}");
    }
}
