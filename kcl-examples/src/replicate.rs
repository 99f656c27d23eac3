//! `kcl-replicate`: a DynamoDB table replicated into a second, in-memory table through its change
//! stream, on the bundled local backend (no AWS), with the pieces the end-to-end tests share.
//!
//! Why: it is the use DynamoDB Streams exists for (a replica, a search index, a cache kept in
//! step with a table), shown end to end with the same scheduler as for Kinesis, through what
//! makes it hard: a shard rotation in the middle (parents finished before children), a worker
//! killed without a graceful shutdown (its unfinished batch delivered again by the other after
//! the failover time), and at-least-once delivery made harmless by applying each change only if
//! it is newer than what the replica holds.
//!
//! The pieces:
//! - [`Writer`]: puts, updates and deletes over overlapping keys, so that order per key
//!   matters; each change carries the item's version attribute `v` and is remembered per key.
//! - [`Replica`] and [`ReplicaProcessor`]: the processor that applies each change to the
//!   replica, idempotent by version (a replayed or stale change is skipped), and remembers every
//!   delivery.
//! - [`check_order`] and [`compare`]: every change delivered, first deliveries in the written
//!   order per key; the replica equal to the table.
//! - [`run`]: the whole demo with its figures ([`Report`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use kcl_core::backend::local::KeySchema;
use kcl_core::dynamodb_streams::{
    item_to_dynamodb_json, AttributeValue, ChangeRecord, EventName, Item, StreamViewType,
};
use kcl_core::{
    InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler, SchedulerHandle, ShardEndedInput, ShutdownRequestedInput, StreamBackend,
};
use tokio::time::Instant;

/// The version attribute every item carries; it grows by one with every put or update of a key.
pub const VERSION: &str = "v";

/// The table's key attributes: a partition key and a sort key.
pub const PARTITION_KEY: &str = "pk";
/// The sort key attribute.
pub const SORT_KEY: &str = "sk";

/// The key schema of the replicated table.
pub fn key_schema() -> KeySchema {
    KeySchema::hash_and_range(PARTITION_KEY, SORT_KEY)
}

/// An item's key (its key attributes) as compact DynamoDB JSON: the replica's map key.
pub fn key_of(keys: &Item) -> String {
    item_to_dynamodb_json(keys).to_string()
}

/// The version attribute of an item (an image).
pub fn version(item: &Item) -> Result<u64, ProcessorError> {
    match item.get(VERSION) {
        Some(AttributeValue::N(n)) => Ok(n.parse()?),
        other => Err(format!("no version in the image: {other:?}").into()),
    }
}

/// Where a change stands in its key's history: the item's version, and whether it is the
/// removal of that version (which comes after it, and before the next version's put).
pub type ChangeOrder = (u64, bool);

/// One change as a processor received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The worker whose processor received it.
    pub worker: String,
    /// The item's key ([`key_of`]).
    pub key: String,
    /// The change's sequence number.
    pub sequence: String,
    /// Insert, modify or remove.
    pub event: EventName,
    /// The version of the new image (insert, modify) or of the removed item.
    pub version: u64,
    /// Whether the replica applied it (false: it held this change or a newer one already).
    pub applied: bool,
}

/// What the replica holds and what was delivered to it.
#[derive(Debug, Default)]
pub struct ReplicaState {
    /// The replicated items by key.
    pub items: BTreeMap<String, Item>,
    /// Per key, the newest change applied (a removed item keeps its tombstone here).
    pub applied: BTreeMap<String, ChangeOrder>,
    /// Every delivery, in the order the processors handled them.
    pub deliveries: Vec<Delivery>,
    /// The distinct sequence numbers delivered.
    pub sequences: BTreeSet<String>,
}

/// The in-memory replica table, shared by every processor of every worker. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    state: Arc<Mutex<ReplicaState>>,
}

impl Replica {
    /// The replica's state, locked.
    pub fn lock(&self) -> MutexGuard<'_, ReplicaState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many distinct changes were delivered.
    pub fn unique_deliveries(&self) -> usize {
        self.lock().sequences.len()
    }

    /// How many deliveries there were in all (replays included).
    pub fn deliveries(&self) -> usize {
        self.lock().deliveries.len()
    }

    /// Applies one change unless the replica holds it or a newer one; returns whether it did.
    pub fn apply(&self, worker: &str, change: &ChangeRecord) -> Result<bool, ProcessorError> {
        let key = key_of(&change.keys);
        let (order, new) = match change.event_name {
            EventName::Insert | EventName::Modify => {
                let new = change
                    .new_image
                    .clone()
                    .ok_or("no new image (the stream must be NEW_AND_OLD_IMAGES)")?;
                ((version(&new)?, false), Some(new))
            }
            EventName::Remove => {
                let old = change
                    .old_image
                    .as_ref()
                    .ok_or("no old image (the stream must be NEW_AND_OLD_IMAGES)")?;
                ((version(old)?, true), None)
            }
        };
        let mut state = self.lock();
        let applied = state.applied.get(&key).is_none_or(|held| *held < order);
        if applied {
            state.applied.insert(key.clone(), order);
            match new {
                Some(item) => state.items.insert(key.clone(), item),
                None => state.items.remove(&key),
            };
        }
        let sequence = change.sequence_number.to_string();
        state.sequences.insert(sequence.clone());
        state.deliveries.push(Delivery {
            worker: worker.to_owned(),
            key,
            sequence,
            event: change.event_name,
            version: order.0,
            applied,
        });
        Ok(applied)
    }
}

/// The record processor: parses each change and applies it to the [`Replica`], then (after
/// `checkpoint_delay`, slow work that lets a crash land between applying and checkpointing)
/// checkpoints the batch.
pub struct ReplicaProcessor {
    worker: String,
    replica: Replica,
    checkpoint_delay: Duration,
}

impl ReplicaProcessor {
    /// A processor of `worker` applying changes to `replica`.
    pub fn new(worker: impl Into<String>, replica: Replica, checkpoint_delay: Duration) -> Self {
        Self {
            worker: worker.into(),
            replica,
            checkpoint_delay,
        }
    }
}

#[async_trait]
impl RecordProcessor for ReplicaProcessor {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        for record in input.records {
            let change = ChangeRecord::from_record(record)?;
            self.replica.apply(&self.worker, &change)?;
        }
        if !self.checkpoint_delay.is_zero() {
            tokio::time::sleep(self.checkpoint_delay).await;
        }
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

/// The timings of a replicating worker.
#[derive(Clone, Copy, Debug)]
pub struct WorkerTimings {
    /// The lease failover time.
    pub failover: Duration,
    /// The polling interval of a shard with nothing new.
    pub polling: Duration,
    /// The shard sync interval.
    pub shard_sync: Duration,
    /// The processor's pause between applying a batch and checkpointing it.
    pub checkpoint_delay: Duration,
    /// The most records in one batch.
    pub max_records: usize,
}

impl Default for WorkerTimings {
    fn default() -> Self {
        Self {
            failover: Duration::from_millis(1200),
            polling: Duration::from_millis(50),
            shard_sync: Duration::from_millis(500),
            checkpoint_delay: Duration::from_millis(40),
            max_records: 25,
        }
    }
}

/// Starts a worker of the application `replicator` on `stream` (any backend), applying changes
/// to `replica`, from the trim horizon.
pub fn start_worker(
    name: &str,
    stream: &str,
    backend: &(impl StreamBackend + Clone),
    store: &InMemoryLeaseStore,
    replica: &Replica,
    timings: WorkerTimings,
) -> Result<SchedulerHandle, kcl_core::KclError> {
    let (worker, replica) = (name.to_owned(), replica.clone());
    Ok(Scheduler::builder("replicator", stream)
        .worker_id(name.to_owned())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(timings.failover)
        .polling_interval(timings.polling)
        .min_read_interval(Duration::from_millis(10))
        .parent_poll_interval(timings.polling)
        .shard_sync_interval(timings.shard_sync)
        .max_records(timings.max_records)
        .processor_factory(move |_shard: &str| {
            ReplicaProcessor::new(worker.clone(), replica.clone(), timings.checkpoint_delay)
        })
        .build()?
        .spawn())
}

/// The writer: puts, updates and deletes over `keys` items (partition key `user-N` shared by
/// several items, sort key a number), chosen by a fixed pseudo-random sequence. Every put or
/// update sets the item's version `v` to one more than the key's last; a delete removes the
/// item with its version. Remembers each change per key, in order.
#[derive(Debug)]
pub struct Writer {
    backend: LocalBackend,
    table: String,
    keys: u64,
    state: u64,
    versions: BTreeMap<u64, u64>,
    /// Per key ([`key_of`]), every change written, in order: the event and its version.
    pub expected: BTreeMap<String, Vec<(EventName, u64)>>,
    /// How many changes were written.
    pub writes: usize,
}

impl Writer {
    /// A writer to `table` (created with [`key_schema`]) over `keys` distinct items.
    pub fn new(backend: &LocalBackend, table: &str, keys: u64) -> Self {
        Self {
            backend: backend.clone(),
            table: table.to_owned(),
            keys: keys.max(1),
            state: 0x9E37_79B9_7F4A_7C15,
            versions: BTreeMap::new(),
            expected: BTreeMap::new(),
            writes: 0,
        }
    }

    /// The key attributes of item `k`.
    pub fn key(k: u64) -> Item {
        [
            (
                PARTITION_KEY.to_owned(),
                AttributeValue::s(format!("user-{}", k % 4)),
            ),
            (SORT_KEY.to_owned(), AttributeValue::n(k)),
        ]
        .into()
    }

    fn next(&mut self) -> u64 {
        // xorshift64: a fixed sequence, so that a run can be repeated.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// Writes `ops` changes (each one a record on the stream).
    pub fn write(&mut self, ops: u64) -> Result<(), kcl_core::BackendError> {
        for _ in 0..ops {
            let r = self.next();
            let k = r % self.keys;
            let key = Self::key(k);
            let exists = self.backend.get_item(&self.table, &key)?.is_some();
            let v = self.versions.entry(k).or_default();
            let event = match (exists, (r / self.keys) % 10) {
                (true, 0..=2) => {
                    self.backend.delete_item(&self.table, key.clone())?;
                    (EventName::Remove, *v)
                }
                (true, 3..=7) => {
                    *v += 1;
                    let set: Item = [
                        (VERSION.to_owned(), AttributeValue::n(*v)),
                        (
                            "tags".to_owned(),
                            AttributeValue::Ss(vec![format!("t{}", self.writes)]),
                        ),
                    ]
                    .into();
                    self.backend
                        .update_item(&self.table, key.clone(), set, &["note"])?;
                    (EventName::Modify, *v)
                }
                (exists, _) => {
                    *v += 1;
                    let mut item = key.clone();
                    item.insert(VERSION.into(), AttributeValue::n(*v));
                    item.insert("note".into(), AttributeValue::s(format!("put {}", self.writes)));
                    self.backend.put_item(&self.table, item)?;
                    let event = if exists {
                        EventName::Modify
                    } else {
                        EventName::Insert
                    };
                    (event, *v)
                }
            };
            self.expected.entry(key_of(&key)).or_default().push(event);
            self.writes += 1;
        }
        Ok(())
    }
}

/// Checks that every change written was delivered and that, per key, the first delivery of
/// each change came in the order written (replays only repeat earlier changes). Returns what
/// is wrong, if anything.
pub fn check_order(replica: &Replica, writer: &Writer) -> Vec<String> {
    let state = replica.lock();
    let mut first: BTreeMap<&str, Vec<(EventName, u64)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for d in &state.deliveries {
        if seen.insert(d.sequence.as_str()) {
            first
                .entry(d.key.as_str())
                .or_default()
                .push((d.event, d.version));
        }
    }
    let mut problems = Vec::new();
    for (key, changes) in &writer.expected {
        let got = first.get(key.as_str()).map(Vec::as_slice).unwrap_or_default();
        if got != changes.as_slice() {
            problems.push(format!("{key}: written {changes:?}, first delivered {got:?}"));
        }
    }
    for key in first.keys().filter(|k| !writer.expected.contains_key(**k)) {
        problems.push(format!("{key}: delivered but never written"));
    }
    problems
}

/// The table's items by key ([`key_of`] of their key attributes).
pub fn table_items(
    backend: &LocalBackend,
    table: &str,
) -> Result<BTreeMap<String, Item>, kcl_core::BackendError> {
    Ok(backend
        .scan(table)?
        .into_iter()
        .map(|item| {
            let keys: Item = item
                .iter()
                .filter(|(k, _)| *k == PARTITION_KEY || *k == SORT_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (key_of(&keys), item)
        })
        .collect())
}

/// How the replica differs from the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Items in the table and the replica.
    pub table_items: usize,
    /// Items in the replica.
    pub replica_items: usize,
    /// Keys in the table, not in the replica.
    pub missing: Vec<String>,
    /// Keys in the replica, not in the table.
    pub extra: Vec<String>,
    /// Keys in both, with different items.
    pub different: Vec<String>,
}

impl Comparison {
    /// Whether the replica equals the table.
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// Compares the replica with the table.
pub fn compare(replica: &Replica, table: &BTreeMap<String, Item>) -> Comparison {
    let state = replica.lock();
    let items = &state.items;
    Comparison {
        table_items: table.len(),
        replica_items: items.len(),
        missing: table
            .keys()
            .filter(|k| !items.contains_key(*k))
            .cloned()
            .collect(),
        extra: items
            .keys()
            .filter(|k| !table.contains_key(*k))
            .cloned()
            .collect(),
        different: table
            .iter()
            .filter(|(k, v)| items.get(*k).is_some_and(|r| r != *v))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

/// The settings of [`run`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Changes to write.
    pub changes: u64,
    /// Distinct items the changes go to.
    pub keys: u64,
    /// Changes written per second.
    pub rate: u64,
    /// Shards of the table's stream.
    pub shards: usize,
    /// Shard rotations, spread over the writing.
    pub rotations: usize,
    /// Kill one of the two workers at 60 % of the writing.
    pub kill: bool,
    /// The workers' timings.
    pub timings: WorkerTimings,
    /// How long to wait for the replica to catch up once the writing is done.
    pub deadline: Duration,
    /// Print a line at each event.
    pub verbose: bool,
}

/// The table the demo writes to.
pub const TABLE: &str = "orders";

/// What [`run`] measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Changes written to the table.
    pub written: usize,
    /// Changes delivered to the processors, replays included.
    pub delivered: usize,
    /// Distinct changes delivered.
    pub unique: usize,
    /// Deliveries the replica applied.
    pub applied: usize,
    /// Deliveries of a change delivered before (at-least-once replays after the kill).
    pub replayed: usize,
    /// Deliveries skipped as older than what the replica held (replays included).
    pub skipped: usize,
    /// Shard rotations made.
    pub rotations: usize,
    /// Shards closed by the rotations.
    pub rotated_shards: usize,
    /// Shards of the stream at the end.
    pub shards: usize,
    /// How many leases the killed worker held (0: no worker was killed).
    pub killed_leases: usize,
    /// How long after the kill every lease of the killed worker was held by the other (or
    /// finished); `None`: no kill, or the takeover never completed.
    pub failover: Option<Duration>,
    /// The configured failover time.
    pub failover_time: Duration,
    /// From the start of the writing to the replica caught up.
    pub wall: Duration,
    /// Deliveries per worker.
    pub per_worker: BTreeMap<String, usize>,
    /// Order problems ([`check_order`]); empty when every change came in order per key.
    pub order_problems: Vec<String>,
    /// The replica against the table.
    pub comparison: Comparison,
}

impl Report {
    /// Whether the replication is right: every change in order per key and the replica equal
    /// to the table.
    pub fn ok(&self) -> bool {
        self.order_problems.is_empty() && self.comparison.equal() && self.unique == self.written
    }
}

/// Runs the demo: a table with a `NEW_AND_OLD_IMAGES` change stream, two workers replicating it
/// into a [`Replica`], the writer at `rate`, shard rotations spread over the writing, one worker
/// killed at 60 % of it (the other takes its shards after the failover time); then waits for
/// every change and compares.
pub async fn run(config: &Config) -> Result<Report> {
    if config.changes == 0 || config.keys == 0 || config.rate == 0 || config.shards == 0 {
        bail!("--changes, --keys, --rate and --shards must be at least 1");
    }
    let say = |t: Duration, what: &str| {
        if config.verbose {
            println!("[{:>5.2}s] {what}", t.as_secs_f64());
        }
    };
    let backend = LocalBackend::new();
    let stream = backend
        .create_table(
            TABLE,
            key_schema(),
            StreamViewType::NewAndOldImages,
            config.shards,
        )
        .context("creating the local table")?;
    let store = InMemoryLeaseStore::new();
    let replica = Replica::default();
    let mut workers: Vec<Option<SchedulerHandle>> = ["worker-a", "worker-b"]
        .iter()
        .map(|name| start_worker(name, &stream, &backend, &store, &replica, config.timings).map(Some))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    while workers.iter().flatten().any(|w| w.held_leases().is_empty()) && config.shards >= 2 {
        if started.elapsed() > config.deadline {
            bail!(
                "the workers did not share the shards within {:?}",
                config.deadline
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The writer, paced in 10 ms ticks; `written` is its progress.
    let written = Arc::new(AtomicUsize::new(0));
    let epoch = Instant::now();
    let writer_task = {
        let mut writer = Writer::new(&backend, TABLE, config.keys);
        let (written, total, rate) = (written.clone(), config.changes, config.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while (writer.writes as u64) < total {
                tick.tick().await;
                let due = (rate.saturating_mul(epoch.elapsed().as_millis() as u64) / 1000).min(total);
                writer.write(due.saturating_sub(writer.writes as u64))?;
                written.store(writer.writes, Ordering::Relaxed);
            }
            anyhow::Ok(writer)
        })
    };

    let total = usize::try_from(config.changes).unwrap_or(usize::MAX);
    let rotate_at: Vec<usize> = (1..=config.rotations)
        .map(|i| total * i / (config.rotations + 1))
        .collect();
    let mut rotations = 0;
    let mut rotated_shards = 0;
    let mut killed: Option<(Instant, BTreeSet<String>)> = None;
    let mut failover = None;
    let mut writer = None;
    let mut writer_task = Some(writer_task);
    let deadline = Duration::from_secs_f64(config.changes as f64 / config.rate as f64) + config.deadline;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = epoch.elapsed();
        let progress = written.load(Ordering::Relaxed);
        while rotations < rotate_at.len() && progress >= rotate_at[rotations] {
            let closed = backend.rotate_shards(&stream)?;
            rotations += 1;
            rotated_shards += closed.len();
            say(
                t,
                &format!(
                    "rotation {rotations}: {} shards closed, a child opened for each",
                    closed.len()
                ),
            );
        }
        // At 60 % of the writing, once the second worker has applied changes: it dies without
        // a word (no checkpoint, no lease released).
        if config.kill && killed.is_none() && progress >= total * 3 / 5 {
            let victim_delivered = replica.lock().deliveries.iter().any(|d| d.worker == "worker-b");
            if victim_delivered {
                if let Some(victim) = workers[1].take() {
                    let held: BTreeSet<String> = victim.held_leases().into_iter().collect();
                    say(t, &format!("killing worker-b (it held {} leases)", held.len()));
                    victim.kill().await;
                    killed = Some((Instant::now(), held));
                }
            }
        }
        if let (Some((at, held)), None) = (&killed, failover) {
            let elsewhere: BTreeSet<String> =
                workers.iter().flatten().flat_map(|w| w.held_leases()).collect();
            let rows = store.snapshot();
            let taken = held.iter().all(|s| {
                elsewhere.contains(s)
                    || rows
                        .iter()
                        .find(|l| &l.lease_key == s)
                        .is_none_or(|l| l.is_finished())
            });
            if taken {
                failover = Some(at.elapsed());
                say(
                    t,
                    &format!(
                        "worker-a took worker-b's shards over after {:.2} s",
                        at.elapsed().as_secs_f64()
                    ),
                );
            }
        }
        if writer.is_none() && writer_task.as_ref().is_some_and(|w| w.is_finished()) {
            if let Some(task) = writer_task.take() {
                writer = Some(task.await.context("the writer task")??);
                say(t, &format!("{total} changes written"));
            }
        }
        if let Some(w) = &writer {
            if replica.unique_deliveries() >= w.writes && (failover.is_some() || killed.is_none()) {
                break;
            }
        }
        if t > deadline {
            say(t, "gave up waiting for the replica");
            break;
        }
    }
    let wall = epoch.elapsed();
    if let Some(task) = writer_task.take() {
        task.abort();
    }
    for w in workers.iter_mut().filter_map(Option::take) {
        w.shutdown().await.context("shutting the worker down")?;
    }
    let Some(writer) = writer else {
        bail!("the writer did not finish within {deadline:?}");
    };
    let table = table_items(&backend, TABLE)?;
    let state = replica.lock();
    let mut per_worker = BTreeMap::new();
    for d in &state.deliveries {
        *per_worker.entry(d.worker.clone()).or_default() += 1;
    }
    let delivered = state.deliveries.len();
    let unique = state.sequences.len();
    let applied = state.deliveries.iter().filter(|d| d.applied).count();
    drop(state);
    Ok(Report {
        written: writer.writes,
        delivered,
        unique,
        applied,
        replayed: delivered - unique,
        skipped: delivered - applied,
        rotations,
        rotated_shards,
        shards: backend.shards(&stream)?.len(),
        killed_leases: killed.as_ref().map_or(0, |(_, held)| held.len()),
        failover,
        failover_time: config.timings.failover,
        wall,
        per_worker,
        order_problems: check_order(&replica, &writer),
        comparison: compare(&replica, &table),
    })
}
