//! `LocalBackend`: the bundled, in-process Kinesis.
//!
//! It exists so that the whole library (and applications built on it) can be run, tested and
//! demonstrated without AWS, and it behaves like Kinesis wherever a consumer could tell the
//! difference: hash-key routing by the MD5 of the partition key, the even split of the hash key
//! space at creation, shard ids, decimal sequence numbers longer than a `u128`, split and merge
//! with Kinesis lineage, retention trimming (and closed shards disappearing after it), iterator
//! expiry, per-shard read limits, and `GetRecords` reporting child shards at the end of a closed
//! shard.
//!
//! All state is behind one `std::sync::Mutex`, held only for short synchronous sections (never
//! across an `.await`). Time is measured with `tokio::time::Instant`, so tests can pause and
//! advance it; the records' `approximate_arrival_timestamp` is wall-clock `SystemTime`.
//!
//! # Layout
//!
//! - this file: [`LocalBackend`] itself, its settings ([`LocalBackendBuilder`]), the limits it
//!   enforces, and the [`StreamBackend`] implementation, which counts and delays each call and
//!   hands it to the module of its concern;
//! - `stream`: stream storage: streams, shards, records within retention, sequence numbers,
//!   creating and deleting streams, reading a batch from a shard;
//! - `put`: `PutRecord` and `PutRecords`, their validation and hash-key routing;
//! - `iterator`: the shard iterator format, parsing and expiry, iterator positions,
//!   `GetShardIterator` and `GetRecords`;
//! - `read_limits`: the per-shard read limits ([`ReadLimits`]) and their token buckets;
//! - `reshard`: splitting and merging shards;
//! - `fan_out`: enhanced fan-out consumers and `SubscribeToShard` subscriptions;
//! - `table`: DynamoDB tables whose puts, updates and deletes become DynamoDB Streams change
//!   records on a stream of this backend ([`LocalBackend::create_table`]), with shard rotation
//!   ([`LocalBackend::rotate_shards`]) and streams disabled and enabled again
//!   ([`LocalBackend::disable_stream`], [`LocalBackend::enable_stream`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    BackendError, ConsumerTags, GetRecordsOutput, IteratorPosition, ShardSubscription, StreamBackend,
    StreamConsumer,
};
use crate::record::Shard;
use kcl_lease::StreamIdentifier;
use stream::StreamState;

mod fan_out;
mod iterator;
mod put;
mod read_limits;
mod reshard;
mod stream;
mod table;
#[cfg(test)]
mod testing;

pub use super::BackendOp;
pub use crate::record::partition_key_hash;
pub use put::PutResult;
pub use read_limits::ReadLimits;
pub use table::{KeySchema, LOCAL_REGION, MAX_ITEM_BYTES};

/// How long a shard iterator stays valid by default (as on Kinesis).
pub const DEFAULT_ITERATOR_TTL: Duration = Duration::from_secs(5 * 60);
/// How long records are kept by default (as on Kinesis).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest partition key, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// The largest record payload of a new stream, in bytes (1 MiB, as on Kinesis; see
/// [`LocalBackend::update_max_record_size`] for up to [`MAX_LARGE_RECORD_BYTES`]).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The largest record payload a stream can be set to accept, in bytes (10 MiB: Kinesis'
/// `MaxRecordSizeInKiB` of 10240).
pub const MAX_LARGE_RECORD_BYTES: usize = 10 * 1024 * 1024;
/// The largest `limit` of one `GetRecords` call; larger values are clamped.
pub const MAX_GET_RECORDS: usize = 10_000;
/// The most payload bytes one `GetRecords` call returns (at least one record is returned).
pub const MAX_GET_RECORDS_BYTES: usize = 10 * 1024 * 1024;
/// The most records one `put_records` call accepts.
pub const MAX_PUT_RECORDS: usize = 500;
/// The most payload bytes one `put_records` call accepts.
pub const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;
/// The most shards `create_stream` creates (a guard against accidental huge allocations).
pub const MAX_SHARDS: usize = 10_000;

/// The account id the local backend reports (in stream identifiers and ARNs).
pub const LOCAL_ACCOUNT: &str = "000000000000";

/// Settings of a [`LocalBackend`]; see [`LocalBackend::builder`].
#[derive(Clone, Debug)]
pub struct LocalBackendBuilder {
    iterator_ttl: Duration,
    read_limits: Option<ReadLimits>,
    latency: Duration,
    retention: Duration,
    consumer_activation: Duration,
    subscription_duration: Duration,
    max_consumers: usize,
    update_duration: Duration,
}

impl Default for LocalBackendBuilder {
    fn default() -> Self {
        Self {
            iterator_ttl: DEFAULT_ITERATOR_TTL,
            read_limits: None,
            latency: Duration::ZERO,
            retention: DEFAULT_RETENTION,
            consumer_activation: Duration::ZERO,
            subscription_duration: fan_out::DEFAULT_SUBSCRIPTION_DURATION,
            max_consumers: fan_out::DEFAULT_MAX_CONSUMERS,
            update_duration: Duration::ZERO,
        }
    }
}

impl LocalBackendBuilder {
    /// How long a shard iterator stays valid (default 5 minutes).
    #[must_use]
    pub fn iterator_ttl(mut self, ttl: Duration) -> Self {
        self.iterator_ttl = ttl;
        self
    }

    /// Per-shard read limits (default `None`: unlimited).
    #[must_use]
    pub fn read_limits(mut self, limits: Option<ReadLimits>) -> Self {
        self.read_limits = limits;
        self
    }

    /// A delay added to every asynchronous call, as a network round trip would (default zero).
    #[must_use]
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// How many fan-out consumers a stream accepts (default 20, as provisioned and On-demand
    /// Standard streams on Kinesis; On-demand Advantage streams accept 50). Registering one more
    /// fails with [`BackendError::ConsumerLimit`].
    #[must_use]
    pub fn max_consumers(mut self, n: usize) -> Self {
        self.max_consumers = n;
        self
    }

    /// How long a stream stays `UPDATING` after an update (`update_max_record_size`), as Kinesis
    /// keeps it for a while (default zero: the update is immediate). Records are put and read as
    /// usual meanwhile; registering a new fan-out consumer and another update are refused with
    /// [`BackendError::ResourceInUse`].
    #[must_use]
    pub fn update_duration(mut self, d: Duration) -> Self {
        self.update_duration = d;
        self
    }

    /// How long a newly registered fan-out consumer stays `CREATING` before it is `ACTIVE`
    /// (default zero; Kinesis takes seconds).
    #[must_use]
    pub fn consumer_activation(mut self, delay: Duration) -> Self {
        self.consumer_activation = delay;
        self
    }

    /// How long a `SubscribeToShard` subscription lasts before it ends (default 5 minutes, as
    /// on Kinesis).
    #[must_use]
    pub fn subscription_duration(mut self, duration: Duration) -> Self {
        self.subscription_duration = duration;
        self
    }

    /// The retention of newly created streams (default 24 hours); see
    /// [`LocalBackend::set_retention`].
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The backend, with no streams.
    pub fn build(self) -> LocalBackend {
        LocalBackend {
            inner: Arc::new(Inner {
                config: self,
                epoch: Instant::now(),
                streams: Mutex::new(BTreeMap::new()),
                tables: Mutex::new(BTreeMap::new()),
                ops: Default::default(),
                changes: tokio::sync::watch::channel(0).0,
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

/// An in-process Kinesis holding any number of named streams. Cloning gives another handle to
/// the same streams.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: LocalBackendBuilder,
    /// The zero of the iterators' issue times.
    epoch: Instant,
    streams: Mutex<BTreeMap<String, StreamState>>,
    /// Local DynamoDB tables by name (locked before `streams` when both are).
    tables: Mutex<BTreeMap<String, table::TableState>>,
    ops: [AtomicU64; BackendOp::ALL.len()],
    /// Bumped whenever records are put or shards close, to wake fan-out subscriptions.
    changes: tokio::sync::watch::Sender<u64>,
    /// Numbers consumers and subscriptions.
    next_id: AtomicU64,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let streams: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("LocalBackend")
            .field("config", &self.inner.config)
            .field("streams", &streams)
            .finish()
    }
}

impl LocalBackend {
    /// A backend with the default settings and no streams.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a backend.
    pub fn builder() -> LocalBackendBuilder {
        LocalBackendBuilder::default()
    }

    /// The names of all streams.
    pub fn stream_names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many times `op` was called (successful or not).
    pub fn op_count(&self, op: BackendOp) -> u64 {
        self.inner.ops[op.index()].load(Ordering::Relaxed)
    }

    fn count(&self, op: BackendOp) {
        self.inner.ops[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    async fn simulate_latency(&self) {
        if !self.inner.config.latency.is_zero() {
            tokio::time::sleep(self.inner.config.latency).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StreamState>> {
        // A poisoned lock only means a panic elsewhere while holding it; every mutation leaves
        // the streams consistent before anything can panic.
        self.inner.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the named stream under the lock.
    fn with_stream<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut StreamState, Instant) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let now = Instant::now();
        let mut streams = self.lock();
        let stream = streams
            .get_mut(name)
            .ok_or_else(|| BackendError::StreamNotFound(name.to_owned()))?;
        f(stream, now)
    }

    /// Wakes the subscriptions waiting for records.
    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait]
impl StreamBackend for LocalBackend {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.count(BackendOp::ListShards);
        self.simulate_latency().await;
        self.shards(stream)
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        self.count(BackendOp::GetShardIterator);
        self.simulate_latency().await;
        self.get_shard_iterator_now(stream, shard_id, position)
    }

    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.count(BackendOp::GetRecords);
        self.simulate_latency().await;
        self.get_records_now(stream, iterator, limit)
    }

    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        self.count(BackendOp::DescribeStream);
        self.simulate_latency().await;
        self.with_stream(stream, |s, _| {
            let epoch = s
                .created
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Ok(StreamIdentifier::new(LOCAL_ACCOUNT, stream, epoch))
        })
    }

    async fn check_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        self.count(BackendOp::DescribeStream);
        self.simulate_latency().await;
        self.table_stream_ended(stream)
    }

    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        self.count(BackendOp::RegisterConsumer);
        self.simulate_latency().await;
        self.register_consumer_now(stream, consumer_name, tags)
    }

    async fn describe_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.count(BackendOp::DescribeConsumer);
        self.simulate_latency().await;
        self.describe_consumer_now(stream, consumer_name)
    }

    async fn subscribe_to_shard(
        &self,
        stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Box<dyn ShardSubscription>, BackendError> {
        self.count(BackendOp::SubscribeToShard);
        self.simulate_latency().await;
        Ok(Box::new(self.subscribe_now(
            stream,
            consumer_arn,
            shard_id,
            position,
        )?))
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(80).collect()
}

fn invalid(msg: impl Into<String>) -> BackendError {
    BackendError::InvalidArgument(msg.into())
}

fn shard_not_found(shard_id: &str) -> BackendError {
    BackendError::ShardNotFound(shard_id.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use testing::{put, S};

    #[tokio::test]
    async fn latency_is_added_to_every_call() {
        tokio::time::pause();
        let b = LocalBackend::builder().latency(Duration::from_millis(50)).build();
        b.create_stream(S, 1).unwrap();
        let start = Instant::now();
        put(&b, "k", "x").await;
        b.list_shards(S).await.unwrap();
        // Paused timers fire on millisecond ticks, so allow rounding up.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(110),
            "{elapsed:?}"
        );
        assert_eq!(b.op_count(BackendOp::ListShards), 1);
    }
}
