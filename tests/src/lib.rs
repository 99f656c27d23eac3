//! Shared helpers of the end-to-end tests: a processor that records what it saw, a producer,
//! and checks of the delivery guarantees (nothing lost, order per partition key, duplicates).

#![allow(missing_docs)]

pub mod aws;
pub mod ddb_streams_fake;
pub mod emulators;
pub mod java_kcl;
pub mod moto;
pub mod process;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::{
    InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler, SchedulerHandle, ShardEndedInput, ShutdownRequestedInput, StreamBackend,
};
use kcl_lease::LeaseStore;

pub const STREAM: &str = "test-stream";
pub const APP: &str = "test-app";

/// One record as a processor saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub worker: String,
    pub shard: String,
    pub key: String,
    pub index: u64,
    pub sequence: String,
}

/// Everything every processor saw, in the order they saw it.
#[derive(Clone, Default)]
pub struct Log {
    seen: Arc<Mutex<Vec<Seen>>>,
    pub failures_to_inject: Arc<AtomicU64>,
    pub failed_calls: Arc<AtomicU64>,
    pub lease_lost_calls: Arc<AtomicU64>,
    pub shutdown_calls: Arc<AtomicU64>,
}

impl Log {
    /// Records (key, index) pairs seen by a processor that does not track shards or workers.
    pub fn push_all(&self, records: Vec<(String, u64)>) {
        let mut seen = self.seen.lock().unwrap();
        for (key, index) in records {
            seen.push(Seen {
                worker: String::new(),
                shard: String::new(),
                key,
                index,
                sequence: String::new(),
            });
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Record indexes per key, in first-seen order, and the number of duplicates.
    pub fn summary(&self) -> (BTreeMap<String, Vec<u64>>, usize) {
        let mut first: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut count: HashMap<(String, u64), usize> = HashMap::new();
        for s in self.seen() {
            let c = count.entry((s.key.clone(), s.index)).or_default();
            *c += 1;
            if *c == 1 {
                first.entry(s.key).or_default().push(s.index);
            }
        }
        let dups = count.values().map(|c| c - 1).sum();
        (first, dups)
    }

    /// How many of the records `produced` (per key, indexes 0..n) were processed, and
    /// asserts the first processing of each key's records was in order.
    pub fn assert_complete_and_ordered(&self, produced: &BTreeMap<String, u64>) -> usize {
        let (first, dups) = self.summary();
        for (key, n) in produced {
            let got = first.get(key).cloned().unwrap_or_default();
            let expected: Vec<u64> = (0..*n).collect();
            assert_eq!(got, expected, "key {key}: records lost or out of order");
        }
        dups
    }

    pub fn wait_count(&self) -> usize {
        let (first, _) = self.summary();
        first.values().map(Vec::len).sum()
    }
}

/// A processor that logs each record and checkpoints after every batch, at shard end and at
/// shutdown. It fails while `failures_to_inject` is above zero.
pub struct Recorder {
    pub worker: String,
    pub shard: String,
    pub log: Log,
    pub delay: Duration,
}

#[async_trait]
impl RecordProcessor for Recorder {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        if self
            .log
            .failures_to_inject
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.log.failed_calls.fetch_add(1, Ordering::SeqCst);
            return Err("injected processor failure".into());
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        {
            let mut seen = self.log.seen.lock().unwrap();
            for r in input.records {
                let text = std::str::from_utf8(&r.data)?;
                let (key, index) = text.split_once(':').ok_or("bad payload")?;
                seen.push(Seen {
                    worker: self.worker.clone(),
                    shard: self.shard.clone(),
                    key: key.to_owned(),
                    index: index.parse()?,
                    sequence: r.sequence_number.to_string(),
                });
            }
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        self.log.shutdown_calls.fetch_add(1, Ordering::SeqCst);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn lease_lost(&mut self, _input: kcl_core::LeaseLostInput) {
        self.log.lease_lost_calls.fetch_add(1, Ordering::SeqCst);
    }
}

/// Fast settings for tests: short failover, fast polling.
pub fn fast(
    worker: &str,
    backend: impl StreamBackend,
    store: impl LeaseStore,
    log: &Log,
    failover: Duration,
) -> kcl_core::SchedulerBuilder {
    fast_for(APP, STREAM, worker, backend, store, log, failover)
}

/// [`fast`] for a given application and stream.
pub fn fast_for(
    app: &str,
    stream: &str,
    worker: &str,
    backend: impl StreamBackend,
    store: impl LeaseStore,
    log: &Log,
    failover: Duration,
) -> kcl_core::SchedulerBuilder {
    let w = worker.to_owned();
    let log = log.clone();
    Scheduler::builder(app, stream)
        .worker_id(worker.to_owned())
        .backend(backend)
        .lease_store(store)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(failover)
        .polling_interval(Duration::from_millis(50))
        .min_read_interval(Duration::from_millis(10))
        .parent_poll_interval(Duration::from_millis(50))
        .shard_sync_interval(Duration::from_millis(500))
        .max_records(100)
        .processor_factory(move |shard: &str| Recorder {
            worker: w.clone(),
            shard: shard.to_owned(),
            log: log.clone(),
            delay: Duration::ZERO,
        })
}

/// A started worker on the shared backend and store.
pub fn start(
    worker: &str,
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    log: &Log,
    failover: Duration,
) -> SchedulerHandle {
    fast(worker, backend.clone(), store.clone(), log, failover)
        .build()
        .expect("valid config")
        .spawn()
}

/// Puts `per_key` records for each of `keys` partition keys, payload `key:index`; returns the
/// counts per key so far.
pub async fn produce(
    backend: &LocalBackend,
    keys: usize,
    per_key: u64,
    produced: &mut BTreeMap<String, u64>,
) {
    for _ in 0..per_key {
        for k in 0..keys {
            let key = format!("key-{k}");
            let n = produced.entry(key.clone()).or_default();
            let data = Bytes::from(format!("{key}:{n}"));
            backend.put_record(STREAM, &key, data, None).await.expect("put");
            *n += 1;
        }
    }
}

/// Waits until `cond` holds, polling, or panics with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Number of leases per owner (unowned and finished leases excluded).
pub async fn owners(store: &InMemoryLeaseStore) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in store.list().await.expect("list") {
        if let (Some(o), false) = (l.lease_owner, l.checkpoint.is_shard_end()) {
            *m.entry(o).or_default() += 1;
        }
    }
    m
}

/// Initialises logging once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
