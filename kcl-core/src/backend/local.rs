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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    BackendError, GetRecordsOutput, IteratorPosition, ShardSubscription, StreamBackend, StreamConsumer,
};
use crate::record::{ChildShard, HashKeyRange, Record, SequenceNumber, Shard};
use kcl_lease::StreamIdentifier;

mod fan_out;

pub use super::BackendOp;
pub use crate::record::partition_key_hash;

/// How long a shard iterator stays valid by default (as on Kinesis).
pub const DEFAULT_ITERATOR_TTL: Duration = Duration::from_secs(5 * 60);
/// How long records are kept by default (as on Kinesis).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest partition key, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// The largest record payload, in bytes.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
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

const ITERATOR_PREFIX: &str = "kcl-local-iterator/v1/";
const MAX_ITERATOR_LEN: usize = 512;
const SEQUENCE_PREFIX: &str = "49";
const SEQUENCE_DIGITS: usize = 38;

/// Per-shard read limits, enforced with token buckets. Exceeding either gives
/// [`BackendError::Throttled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// `GetRecords` calls per second per shard (the bucket holds one second's worth).
    pub reads_per_second: u32,
    /// Payload bytes per second per shard. A call may overdraw the bucket (up to
    /// [`MAX_GET_RECORDS_BYTES`]); further calls are throttled until it has refilled.
    pub bytes_per_second: u64,
}

impl ReadLimits {
    /// The limits of a provisioned Kinesis shard: 5 reads and 2 MiB per second.
    pub const KINESIS: ReadLimits = ReadLimits {
        reads_per_second: 5,
        bytes_per_second: 2 * 1024 * 1024,
    };
}

/// Where [`LocalBackend::put_record`] stored a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The shard the record went to.
    pub shard_id: String,
    /// The record's sequence number.
    pub sequence_number: SequenceNumber,
}

/// Settings of a [`LocalBackend`]; see [`LocalBackend::builder`].
#[derive(Clone, Debug)]
pub struct LocalBackendBuilder {
    iterator_ttl: Duration,
    read_limits: Option<ReadLimits>,
    latency: Duration,
    retention: Duration,
    consumer_activation: Duration,
    subscription_duration: Duration,
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

    /// Creates a stream of `shard_count` open shards that divide the hash key space evenly, as
    /// Kinesis does. Fails if the stream exists, the name is not a valid Kinesis stream name, or
    /// the count is not in `1..=MAX_SHARDS`.
    pub fn create_stream(&self, name: &str, shard_count: usize) -> Result<(), BackendError> {
        validate_stream_name(name)?;
        if shard_count == 0 || shard_count > MAX_SHARDS {
            return Err(invalid(format!(
                "shard count {shard_count} is not in 1..={MAX_SHARDS}"
            )));
        }
        let now = Instant::now();
        let mut streams = self.lock();
        if streams.contains_key(name) {
            return Err(invalid(format!("stream {name} already exists")));
        }
        let mut stream = StreamState {
            shards: BTreeMap::new(),
            next_shard_index: 0,
            next_seq: 1,
            retention: self.inner.config.retention,
            created: SystemTime::now(),
            consumers: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
        };
        for range in even_ranges(shard_count) {
            stream.add_shard(range, None, None, self.inner.config.read_limits, now);
        }
        streams.insert(name.to_owned(), stream);
        Ok(())
    }

    /// Deletes a stream and all its records.
    pub fn delete_stream(&self, name: &str) -> Result<(), BackendError> {
        self.lock()
            .remove(name)
            .map(drop)
            .ok_or_else(|| BackendError::StreamNotFound(name.to_owned()))
            .inspect(|()| self.changed())
    }

    /// Sets how long the stream keeps records (default 24 hours). Unlike Kinesis any non-zero
    /// duration is accepted, so tests can use short ones.
    pub fn set_retention(&self, name: &str, retention: Duration) -> Result<(), BackendError> {
        if retention.is_zero() {
            return Err(invalid("retention must be positive"));
        }
        self.with_stream(name, |stream, now| {
            stream.retention = retention;
            stream.trim_all(now);
            Ok(())
        })
    }

    /// Puts one record. The hash key is `explicit_hash_key` (a decimal `u128`) if given, else the
    /// MD5 of the partition key read as a big-endian 128-bit number; the record goes to the open
    /// shard whose range contains it.
    pub async fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: Bytes,
        explicit_hash_key: Option<&str>,
    ) -> Result<PutResult, BackendError> {
        self.count(BackendOp::PutRecord);
        self.simulate_latency().await;
        let hash = hash_key(partition_key, &data, explicit_hash_key)?;
        let arrival = SystemTime::now();
        self.with_stream(stream, |s, now| {
            s.put(
                partition_key,
                data,
                explicit_hash_key.map(str::to_owned),
                hash,
                now,
                arrival,
            )
        })
        .inspect(|_| self.changed())
    }

    /// Puts several records (at most [`MAX_PUT_RECORDS`], [`MAX_PUT_RECORDS_BYTES`] in all),
    /// each as `(partition_key, data)`. All or nothing: if any record is invalid, none is put.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<PutResult>, BackendError> {
        self.count(BackendOp::PutRecords);
        self.simulate_latency().await;
        if records.is_empty() || records.len() > MAX_PUT_RECORDS {
            return Err(invalid(format!(
                "{} records; a batch holds 1..={MAX_PUT_RECORDS}",
                records.len()
            )));
        }
        let total: usize = records.iter().map(|(pk, data)| pk.len() + data.len()).sum();
        if total > MAX_PUT_RECORDS_BYTES {
            return Err(invalid(format!(
                "batch of {total} bytes exceeds {MAX_PUT_RECORDS_BYTES}"
            )));
        }
        let hashes = records
            .iter()
            .map(|(pk, data)| hash_key(pk, data, None))
            .collect::<Result<Vec<_>, _>>()?;
        let arrival = SystemTime::now();
        self.with_stream(stream, |s, now| {
            records
                .into_iter()
                .zip(hashes)
                .map(|((pk, data), hash)| s.put(&pk, data, None, hash, now, arrival))
                .collect()
        })
        .inspect(|_| self.changed())
    }

    /// Splits an open shard at `new_starting_hash_key` (which must satisfy
    /// `start < new_starting_hash_key <= end`). The shard is closed; returns the ids of the
    /// lower and the upper child.
    pub fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<(String, String), BackendError> {
        let limits = self.inner.config.read_limits;
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            let range = s.open_shard(shard_id)?.shard.hash_key_range;
            if !(range.start < new_starting_hash_key && new_starting_hash_key <= range.end) {
                return Err(invalid(format!(
                    "new starting hash key {new_starting_hash_key} is not inside ({range}] of {shard_id}"
                )));
            }
            s.close(&[shard_id], now);
            let lower = HashKeyRange {
                start: range.start,
                end: new_starting_hash_key - 1,
            };
            let upper = HashKeyRange {
                start: new_starting_hash_key,
                end: range.end,
            };
            let a = s.add_shard(lower, Some(shard_id), None, limits, now);
            let b = s.add_shard(upper, Some(shard_id), None, limits, now);
            Ok((a, b))
        })
        .inspect(|_| self.changed())
    }

    /// Merges two open shards whose hash key ranges touch into one. Both are closed; the child
    /// has `shard_id` as parent and `adjacent_shard_id` as adjacent parent. Returns its id.
    pub fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<String, BackendError> {
        let limits = self.inner.config.read_limits;
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            if shard_id == adjacent_shard_id {
                return Err(invalid(format!("cannot merge {shard_id} with itself")));
            }
            let a = s.open_shard(shard_id)?.shard.hash_key_range;
            let b = s.open_shard(adjacent_shard_id)?.shard.hash_key_range;
            let touch = |x: HashKeyRange, y: HashKeyRange| x.end.checked_add(1) == Some(y.start);
            if !touch(a, b) && !touch(b, a) {
                return Err(invalid(format!(
                    "{shard_id} ({a}) and {adjacent_shard_id} ({b}) are not adjacent"
                )));
            }
            s.close(&[shard_id, adjacent_shard_id], now);
            let union = HashKeyRange {
                start: a.start.min(b.start),
                end: a.end.max(b.end),
            };
            Ok(s.add_shard(union, Some(shard_id), Some(adjacent_shard_id), limits, now))
        })
        .inspect(|_| self.changed())
    }

    /// The stream's shards, like [`StreamBackend::list_shards`] but synchronous.
    pub fn shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            Ok(s.shards.values().map(|sh| sh.shard.clone()).collect())
        })
    }

    /// How many records the stream holds (within retention), over all shards.
    pub fn record_count(&self, stream: &str) -> Result<usize, BackendError> {
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            Ok(s.shards.values().map(|sh| sh.records.len()).sum())
        })
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

    fn millis_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.inner.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn iterator(&self, stream: &str, shard_id: &str, position: u64, now: Instant) -> String {
        let issued = self.millis_since_epoch(now);
        format!("{ITERATOR_PREFIX}{stream}/{shard_id}/{position}/{issued}")
    }

    fn get_records_now(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        let it = ParsedIterator::parse(iterator)?;
        if it.stream != stream {
            return Err(invalid("the shard iterator is not one of this stream's"));
        }
        let now = Instant::now();
        let now_ms = self.millis_since_epoch(now);
        if it.issued_ms > now_ms {
            return Err(invalid("shard iterator was issued in the future"));
        }
        let ttl_ms = u64::try_from(self.inner.config.iterator_ttl.as_millis()).unwrap_or(u64::MAX);
        if now_ms - it.issued_ms > ttl_ms {
            return Err(BackendError::ExpiredIterator);
        }
        let limit = limit.clamp(1, MAX_GET_RECORDS);

        let mut streams = self.lock();
        let stream = streams
            .get_mut(it.stream)
            .ok_or_else(|| BackendError::StreamNotFound(it.stream.to_owned()))?;
        stream.trim_shard(it.shard, now);
        let shard = stream
            .shards
            .get_mut(it.shard)
            .ok_or_else(|| shard_not_found(it.shard))?;
        if let Some(limiter) = shard.limiter.as_mut() {
            limiter.admit(now, it.shard)?;
        }
        let batch = shard.read(it.position, limit);
        if let Some(limiter) = shard.limiter.as_mut() {
            limiter.consume(batch.bytes);
        }
        let finished = batch.finished;
        let next_position = batch.next_position;
        let mut out = GetRecordsOutput {
            records: batch.records,
            millis_behind_latest: batch.millis_behind_latest,
            ..Default::default()
        };
        if finished {
            out.child_shards = stream.children_of(it.shard);
        } else {
            out.next_iterator = Some(self.iterator(it.stream, it.shard, next_position, now));
        }
        Ok(out)
    }

    fn get_shard_iterator_now(
        &self,
        stream_name: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        let (position, now) = self.with_stream(stream_name, |s, now| {
            Ok((s.start_position(shard_id, position, now)?, now))
        })?;
        Ok(self.iterator(stream_name, shard_id, position, now))
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

    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.count(BackendOp::RegisterConsumer);
        self.simulate_latency().await;
        self.register_consumer_now(stream, consumer_name)
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

/// One stream: its shards in id order and its sequence-number counter.
struct StreamState {
    shards: BTreeMap<String, ShardState>,
    next_shard_index: u64,
    /// The counter of the next record (also the starting number of a shard created now).
    next_seq: u64,
    retention: Duration,
    /// When the stream was created (wall clock; its identifier's creation epoch).
    created: SystemTime,
    /// Enhanced fan-out consumers, by name.
    consumers: BTreeMap<String, fan_out::LocalConsumer>,
    /// The live subscription of each (consumer ARN, shard).
    subscriptions: BTreeMap<(String, String), fan_out::Slot>,
}

struct ShardState {
    /// The description `ListShards` returns.
    shard: Shard,
    /// The counter of `starting_sequence_number`.
    start: u64,
    /// The counter of `ending_sequence_number`, once closed.
    end: Option<u64>,
    closed_at: Option<Instant>,
    /// The records within retention; counters increase front to back.
    records: VecDeque<Stored>,
    limiter: Option<Limiter>,
}

struct Stored {
    counter: u64,
    arrived: Instant,
    size: usize,
    record: Record,
}

impl StreamState {
    /// Adds an open shard with the next id; returns the id.
    fn add_shard(
        &mut self,
        range: HashKeyRange,
        parent: Option<&str>,
        adjacent_parent: Option<&str>,
        limits: Option<ReadLimits>,
        now: Instant,
    ) -> String {
        let shard_id = format!("shardId-{:012}", self.next_shard_index);
        self.next_shard_index += 1;
        let shard = Shard {
            shard_id: shard_id.clone(),
            parent_shard_id: parent.map(str::to_owned),
            adjacent_parent_shard_id: adjacent_parent.map(str::to_owned),
            hash_key_range: range,
            starting_sequence_number: sequence_number(self.next_seq),
            ending_sequence_number: None,
        };
        let state = ShardState {
            shard,
            start: self.next_seq,
            end: None,
            closed_at: None,
            records: VecDeque::new(),
            limiter: limits.map(|l| Limiter::new(l, now)),
        };
        self.shards.insert(shard_id.clone(), state);
        shard_id
    }

    fn open_shard(&self, shard_id: &str) -> Result<&ShardState, BackendError> {
        let shard = self
            .shards
            .get(shard_id)
            .ok_or_else(|| shard_not_found(shard_id))?;
        if shard.end.is_some() {
            return Err(invalid(format!("shard {shard_id} is closed")));
        }
        Ok(shard)
    }

    /// Closes the (open, existing) shards: their ending sequence number is the last one issued
    /// in the stream, or their starting one if none was issued since. The counter moves past
    /// it, so children start strictly after their parents end.
    fn close(&mut self, ids: &[&str], now: Instant) {
        let last_issued = self.next_seq - 1;
        for id in ids {
            if let Some(shard) = self.shards.get_mut(*id) {
                let end = last_issued.max(shard.start);
                shard.end = Some(end);
                shard.closed_at = Some(now);
                shard.shard.ending_sequence_number = Some(sequence_number(end));
                self.next_seq = self.next_seq.max(end + 1);
            }
        }
    }

    fn put(
        &mut self,
        partition_key: &str,
        data: Bytes,
        explicit_hash_key: Option<String>,
        hash: u128,
        now: Instant,
        arrival: SystemTime,
    ) -> Result<PutResult, BackendError> {
        let retention = self.retention;
        let counter = self.next_seq;
        let shard = self
            .shards
            .values_mut()
            .find(|s| s.end.is_none() && s.shard.hash_key_range.contains(hash))
            .ok_or_else(|| BackendError::other(format!("no open shard serves hash key {hash}")))?;
        shard.trim(now, retention);
        let sequence = sequence_number(counter);
        let size = data.len();
        shard.records.push_back(Stored {
            counter,
            arrived: now,
            size,
            record: Record {
                data,
                partition_key: partition_key.into(),
                sequence_number: sequence.clone(),
                sub_sequence_number: 0,
                approximate_arrival_timestamp: arrival,
                explicit_hash_key,
            },
        });
        self.next_seq += 1;
        Ok(PutResult {
            shard_id: shard.shard.shard_id.clone(),
            sequence_number: sequence,
        })
    }

    /// Drops expired records of one shard, and the shard itself once it is closed and gone.
    fn trim_shard(&mut self, shard_id: &str, now: Instant) {
        let retention = self.retention;
        if let Some(shard) = self.shards.get_mut(shard_id) {
            if shard.trim(now, retention) {
                self.shards.remove(shard_id);
            }
        }
    }

    /// Drops expired records of every shard, and closed shards past retention.
    fn trim_all(&mut self, now: Instant) {
        let retention = self.retention;
        self.shards.retain(|_, shard| !shard.trim(now, retention));
    }

    /// The counter a read at `position` starts from (after trimming the shard).
    fn start_position(
        &mut self,
        shard_id: &str,
        position: &IteratorPosition,
        now: Instant,
    ) -> Result<u64, BackendError> {
        let sequence = match position {
            IteratorPosition::AtSequenceNumber(s) | IteratorPosition::AfterSequenceNumber(s) => {
                Some(parse_sequence_number(s)?)
            }
            _ => None,
        };
        self.trim_shard(shard_id, now);
        let next_seq = self.next_seq;
        let shard = self
            .shards
            .get(shard_id)
            .ok_or_else(|| shard_not_found(shard_id))?;
        if let Some(n) = sequence {
            let last = shard.end.unwrap_or_else(|| shard.start.max(next_seq - 1));
            if n < shard.start || n > last {
                return Err(invalid(format!(
                    "sequence number {n} does not belong to shard {shard_id}"
                )));
            }
        }
        Ok(match position {
            IteratorPosition::TrimHorizon => 0,
            IteratorPosition::Latest => next_seq,
            IteratorPosition::AtSequenceNumber(_) => sequence.unwrap_or(0),
            IteratorPosition::AfterSequenceNumber(_) => sequence.map_or(0, |n| n + 1),
            IteratorPosition::AtTimestamp(ts) => shard
                .records
                .iter()
                .find(|r| r.record.approximate_arrival_timestamp >= *ts)
                .map_or(next_seq, |r| r.counter),
        })
    }

    /// The children of `parent` as `GetRecords` reports them.
    fn children_of(&self, parent: &str) -> Vec<ChildShard> {
        self.shards
            .values()
            .filter(|s| s.shard.parents().any(|p| p == parent))
            .map(|s| ChildShard {
                shard_id: s.shard.shard_id.clone(),
                parent_shards: s.shard.parents().map(str::to_owned).collect(),
                hash_key_range: s.shard.hash_key_range,
            })
            .collect()
    }
}

/// What one read of a shard found.
struct Batch {
    records: Vec<Record>,
    bytes: usize,
    /// The counter to read from next.
    next_position: u64,
    millis_behind_latest: u64,
    /// The shard is closed and this read reached its end.
    finished: bool,
}

impl ShardState {
    /// Up to `limit` records (and [`MAX_GET_RECORDS_BYTES`], but at least one) from counter
    /// `position` on.
    fn read(&self, position: u64, limit: usize) -> Batch {
        let first = self.records.partition_point(|r| r.counter < position);
        let mut records = Vec::with_capacity(limit.min(self.records.len() - first));
        let mut bytes = 0;
        for stored in self.records.range(first..).take(limit) {
            if !records.is_empty() && bytes + stored.size > MAX_GET_RECORDS_BYTES {
                break;
            }
            bytes += stored.size;
            records.push(stored.record.clone());
        }
        let end = first + records.len();
        let (next_position, millis_behind_latest) = match end.checked_sub(1).and_then(|i| self.records.get(i))
        {
            Some(last) if !records.is_empty() => {
                let newest = self.records.back().map_or(last.arrived, |r| r.arrived);
                let behind = newest.saturating_duration_since(last.arrived).as_millis();
                (last.counter + 1, u64::try_from(behind).unwrap_or(u64::MAX))
            }
            _ => (position, 0),
        };
        Batch {
            records,
            bytes,
            next_position,
            millis_behind_latest,
            finished: self.end.is_some() && end == self.records.len(),
        }
    }

    /// Drops records older than `retention`; returns whether the shard itself has expired
    /// (closed for longer than retention, no records left).
    fn trim(&mut self, now: Instant, retention: Duration) -> bool {
        let expired = |t: Instant| t.checked_add(retention).is_some_and(|deadline| deadline <= now);
        while self.records.front().is_some_and(|r| expired(r.arrived)) {
            self.records.pop_front();
        }
        self.records.is_empty() && self.closed_at.is_some_and(expired)
    }
}

/// Token buckets for one shard's reads.
struct Limiter {
    limits: ReadLimits,
    calls: f64,
    bytes: f64,
    refilled: Instant,
}

impl Limiter {
    fn new(limits: ReadLimits, now: Instant) -> Self {
        Self {
            limits,
            calls: limits.reads_per_second.into(),
            bytes: limits.bytes_per_second as f64,
            refilled: now,
        }
    }

    /// Takes one call token, or fails if there is none or the byte bucket is overdrawn.
    fn admit(&mut self, now: Instant, shard_id: &str) -> Result<(), BackendError> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let calls_cap = f64::from(self.limits.reads_per_second);
        let bytes_cap = self.limits.bytes_per_second as f64;
        self.calls = (self.calls + elapsed * calls_cap).min(calls_cap);
        self.bytes = (self.bytes + elapsed * bytes_cap).min(bytes_cap);
        self.refilled = now;
        if self.calls < 1.0 {
            return Err(BackendError::Throttled(format!(
                "more than {} GetRecords calls per second on {shard_id}",
                self.limits.reads_per_second
            )));
        }
        if self.bytes <= 0.0 {
            return Err(BackendError::Throttled(format!(
                "more than {} bytes per second read from {shard_id}",
                self.limits.bytes_per_second
            )));
        }
        self.calls -= 1.0;
        Ok(())
    }

    fn consume(&mut self, bytes: usize) {
        self.bytes -= bytes as f64;
    }
}

/// A decoded shard iterator.
struct ParsedIterator<'a> {
    stream: &'a str,
    shard: &'a str,
    position: u64,
    issued_ms: u64,
}

impl<'a> ParsedIterator<'a> {
    fn parse(iterator: &'a str) -> Result<Self, BackendError> {
        let malformed = || invalid("malformed shard iterator");
        if iterator.len() > MAX_ITERATOR_LEN {
            return Err(malformed());
        }
        let rest = iterator.strip_prefix(ITERATOR_PREFIX).ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(stream), Some(shard), Some(position), Some(issued), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        if stream.is_empty() || shard.is_empty() {
            return Err(malformed());
        }
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            s.parse::<u64>().map_err(|_| malformed())
        };
        Ok(Self {
            stream,
            shard,
            position: number(position)?,
            issued_ms: number(issued)?,
        })
    }
}

/// Validates a record and computes its hash key.
fn hash_key(
    partition_key: &str,
    data: &Bytes,
    explicit_hash_key: Option<&str>,
) -> Result<u128, BackendError> {
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(invalid(format!(
            "partition key of {chars} characters; 1..={MAX_PARTITION_KEY_CHARS} allowed"
        )));
    }
    if data.len() > MAX_RECORD_BYTES {
        return Err(invalid(format!(
            "record of {} bytes exceeds {MAX_RECORD_BYTES}",
            data.len()
        )));
    }
    match explicit_hash_key {
        None => Ok(partition_key_hash(partition_key)),
        Some(key) => {
            let bad = || {
                invalid(format!(
                    "explicit hash key {:?} is not a decimal 128-bit number",
                    trunc(key)
                ))
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            key.parse::<u128>().map_err(|_| bad())
        }
    }
}

/// The ranges of `n` shards dividing the key space evenly: shard `i` gets
/// `[i * step, (i + 1) * step - 1]` with `step = 2^128 / n`, the last one ending at `u128::MAX`.
fn even_ranges(n: usize) -> Vec<HashKeyRange> {
    let n = n as u128;
    if n <= 1 {
        return vec![HashKeyRange::FULL];
    }
    // floor(2^128 / n) without overflow: floor((MAX + 1) / n).
    let step = u128::MAX / n + (u128::MAX % n + 1) / n;
    (0..n)
        .map(|i| HashKeyRange {
            start: i * step,
            end: if i == n - 1 { u128::MAX } else { (i + 1) * step - 1 },
        })
        .collect()
}

/// The sequence number of counter `n`: 40 decimal digits, more than a `u128` holds.
fn sequence_number(n: u64) -> SequenceNumber {
    SequenceNumber::new(&format!("{SEQUENCE_PREFIX}{n:0SEQUENCE_DIGITS$}"))
        .expect("a string of decimal digits is a sequence number")
}

/// The counter of a sequence number this backend issued; `InvalidArgument` for anything else.
fn parse_sequence_number(s: &SequenceNumber) -> Result<u64, BackendError> {
    let foreign = || {
        invalid(format!(
            "sequence number {} was not issued by this stream",
            trunc(s.as_str())
        ))
    };
    let digits = s.as_str().strip_prefix(SEQUENCE_PREFIX).ok_or_else(foreign)?;
    if digits.len() != SEQUENCE_DIGITS {
        return Err(foreign());
    }
    digits.parse::<u64>().map_err(|_| foreign())
}

/// Kinesis stream names: 1 to 128 characters of `[a-zA-Z0-9_.-]`.
fn validate_stream_name(name: &str) -> Result<(), BackendError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("invalid stream name {:?}", trunc(name))))
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
    use super::*;

    const S: &str = "test";

    fn backend(shards: usize) -> LocalBackend {
        let b = LocalBackend::new();
        b.create_stream(S, shards).unwrap();
        b
    }

    async fn put(b: &LocalBackend, key: &str, data: &str) -> PutResult {
        b.put_record(S, key, Bytes::from(data.to_owned()), None)
            .await
            .unwrap()
    }

    async fn read_all(b: &LocalBackend, shard: &str, pos: IteratorPosition) -> GetRecordsOutput {
        let it = b.get_shard_iterator(S, shard, &pos).await.unwrap();
        b.get_records(S, &it, 10_000).await.unwrap()
    }

    fn datas(out: &GetRecordsOutput) -> Vec<String> {
        out.records
            .iter()
            .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
            .collect()
    }

    fn shard_id(i: u64) -> String {
        format!("shardId-{i:012}")
    }

    #[test]
    fn creation_splits_the_key_space_like_kinesis() {
        let b = backend(4);
        let shards = b.shards(S).unwrap();
        assert_eq!(shards.len(), 4);
        assert_eq!(shards[0].shard_id, "shardId-000000000000");
        assert_eq!(shards[3].shard_id, "shardId-000000000003");
        assert_eq!(
            shards[0].hash_key_range,
            HashKeyRange {
                start: 0,
                end: (1u128 << 126) - 1
            }
        );
        assert_eq!(
            shards[3].hash_key_range,
            HashKeyRange {
                start: 3 << 126,
                end: u128::MAX
            }
        );
        assert!(shards.iter().all(|s| s.is_open() && s.parents().next().is_none()));
        // Three shards, as Kinesis lays them out.
        let r = even_ranges(3);
        assert_eq!(r[0].end, 113427455640312821154458202477256070484);
        assert_eq!(r[1].start, 113427455640312821154458202477256070485);
        assert_eq!(r[2].start, 226854911280625642308916404954512140970);
        assert_eq!(r[2].end, u128::MAX);
        assert_eq!(even_ranges(1), vec![HashKeyRange::FULL]);
        for n in [2, 5, 7, 1000] {
            let r = even_ranges(n);
            assert_eq!(r.len(), n);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[n - 1].end, u128::MAX);
            assert!(r.windows(2).all(|w| w[0].end + 1 == w[1].start));
        }
        assert!(matches!(
            b.create_stream(S, 1),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.create_stream("x", 0),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.create_stream("a/b", 1),
            Err(BackendError::InvalidArgument(_))
        ));
        b.delete_stream(S).unwrap();
        assert!(matches!(b.shards(S), Err(BackendError::StreamNotFound(_))));
        assert!(matches!(b.delete_stream(S), Err(BackendError::StreamNotFound(_))));
    }

    #[tokio::test]
    async fn routes_by_md5_of_the_partition_key() {
        let b = backend(4);
        assert_eq!(partition_key_hash("a"), 0x0cc175b9c0f1b6a831c399e269772661);
        assert_eq!(put(&b, "a", "x").await.shard_id, shard_id(0));
        let high = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| partition_key_hash(k) >> 120 >= 0xc0)
            .unwrap();
        assert_eq!(put(&b, &high, "y").await.shard_id, shard_id(3));
        // An explicit hash key overrides the partition key.
        let r = b
            .put_record(S, "a", Bytes::new(), Some(&(2u128 << 126).to_string()))
            .await
            .unwrap();
        assert_eq!(r.shard_id, shard_id(2));
        let out = read_all(&b, &shard_id(2), IteratorPosition::TrimHorizon).await;
        assert_eq!(
            out.records[0].explicit_hash_key.as_deref(),
            Some("170141183460469231731687303715884105728")
        );
        assert_eq!(b.record_count(S).unwrap(), 3);
    }

    #[tokio::test]
    async fn puts_are_validated_like_kinesis() {
        let b = backend(1);
        let bad = |r: Result<PutResult, BackendError>| matches!(r, Err(BackendError::InvalidArgument(_)));
        assert!(bad(b.put_record(S, "", Bytes::new(), None).await));
        assert!(bad(b.put_record(S, &"k".repeat(257), Bytes::new(), None).await));
        assert!(b
            .put_record(S, &"é".repeat(256), Bytes::new(), None)
            .await
            .is_ok());
        assert!(bad(b
            .put_record(S, "k", Bytes::from(vec![0; MAX_RECORD_BYTES + 1]), None)
            .await));
        assert!(b
            .put_record(S, "k", Bytes::from(vec![0; MAX_RECORD_BYTES]), None)
            .await
            .is_ok());
        assert!(bad(b.put_record(S, "k", Bytes::new(), Some("-1")).await));
        assert!(bad(b
            .put_record(S, "k", Bytes::new(), Some(&format!("{}0", u128::MAX)))
            .await));
        assert!(matches!(
            b.put_record("nope", "k", Bytes::new(), None).await,
            Err(BackendError::StreamNotFound(_))
        ));
        // All or nothing.
        let batch = vec![("a".to_owned(), Bytes::new()), (String::new(), Bytes::new())];
        assert!(matches!(
            b.put_records(S, batch).await,
            Err(BackendError::InvalidArgument(_))
        ));
        assert_eq!(b.record_count(S).unwrap(), 2);
        let batch = (0..10).map(|i| (format!("k{i}"), Bytes::from(vec![i]))).collect();
        let results = b.put_records(S, batch).await.unwrap();
        assert_eq!(results.len(), 10);
        assert!(results
            .windows(2)
            .all(|w| w[0].sequence_number < w[1].sequence_number));
        assert_eq!(b.op_count(BackendOp::PutRecords), 2);
        assert_eq!(b.op_count(BackendOp::PutRecord), 8);
    }

    #[tokio::test]
    async fn sequence_numbers_increase_across_puts_and_shards() {
        let b = backend(4);
        let mut last: Option<SequenceNumber> = None;
        for i in 0..50 {
            let r = put(&b, &format!("key-{i}"), "d").await;
            assert_eq!(r.sequence_number.as_str().len(), 40);
            assert!(
                r.sequence_number.as_str().parse::<u128>().is_err(),
                "beyond u128 on purpose"
            );
            if let Some(prev) = &last {
                assert!(*prev < r.sequence_number);
            }
            last = Some(r.sequence_number);
        }
        assert_eq!(b.record_count(S).unwrap(), 50);
    }

    #[tokio::test]
    async fn every_iterator_position() {
        let b = backend(1);
        let sh = shard_id(0);
        let mut seqs = Vec::new();
        for i in 0..5 {
            seqs.push(put(&b, "k", &i.to_string()).await.sequence_number);
        }
        assert_eq!(
            datas(&read_all(&b, &sh, IteratorPosition::TrimHorizon).await),
            ["0", "1", "2", "3", "4"]
        );
        let at = read_all(&b, &sh, IteratorPosition::AtSequenceNumber(seqs[2].clone())).await;
        assert_eq!(datas(&at), ["2", "3", "4"]);
        let after = read_all(&b, &sh, IteratorPosition::AfterSequenceNumber(seqs[2].clone())).await;
        assert_eq!(datas(&after), ["3", "4"]);

        let latest = b
            .get_shard_iterator(S, &sh, &IteratorPosition::Latest)
            .await
            .unwrap();
        let out = b.get_records(S, &latest, 100).await.unwrap();
        assert!(out.records.is_empty());
        assert_eq!(out.millis_behind_latest, 0);
        put(&b, "k", "5").await;
        let out = b.get_records(S, &out.next_iterator.unwrap(), 100).await.unwrap();
        assert_eq!(datas(&out), ["5"]);

        let past = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(
            read_all(&b, &sh, IteratorPosition::AtTimestamp(past))
                .await
                .records
                .len(),
            6
        );
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert!(read_all(&b, &sh, IteratorPosition::AtTimestamp(future))
            .await
            .records
            .is_empty());
        let ts = SystemTime::now();
        put(&b, "k", "6").await;
        let got = datas(&read_all(&b, &sh, IteratorPosition::AtTimestamp(ts)).await);
        // "5" arrived before `ts` unless the wall clock did not tick in between.
        assert!(got == ["6"] || got == ["5", "6"], "{got:?}");

        // Foreign and malformed sequence numbers, unknown shards and streams.
        let pos = |s: &str| IteratorPosition::AtSequenceNumber(SequenceNumber::new(s).unwrap());
        for foreign in [
            "12345",
            "4900000000000000000000000000000000000099",
            "59000000000000000000000000000000000000001",
        ] {
            assert!(matches!(
                b.get_shard_iterator(S, &sh, &pos(foreign)).await,
                Err(BackendError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            b.get_shard_iterator(S, "shardId-000000000009", &IteratorPosition::Latest)
                .await,
            Err(BackendError::ShardNotFound(_))
        ));
        assert!(matches!(
            b.get_shard_iterator("other", &sh, &IteratorPosition::Latest)
                .await,
            Err(BackendError::StreamNotFound(_))
        ));
    }

    #[tokio::test]
    async fn limit_is_respected_and_reading_continues() {
        let b = backend(1);
        for i in 0..25 {
            put(&b, "k", &i.to_string()).await;
        }
        let mut it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut behind = Vec::new();
        for _ in 0..3 {
            let out = b.get_records(S, &it, 10).await.unwrap();
            assert!(out.records.len() <= 10);
            seen.extend(datas(&out));
            behind.push(out.millis_behind_latest);
            it = out.next_iterator.unwrap();
        }
        assert_eq!(seen, (0..25).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(*behind.last().unwrap(), 0);
        // A zero limit is clamped to one.
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        assert_eq!(b.get_records(S, &it, 0).await.unwrap().records.len(), 1);
        assert_eq!(b.op_count(BackendOp::GetRecords), 4);
        assert_eq!(b.op_count(BackendOp::GetShardIterator), 2);
    }

    #[tokio::test]
    async fn millis_behind_latest_measures_the_distance_to_the_tip() {
        tokio::time::pause();
        let b = backend(1);
        put(&b, "k", "0").await;
        tokio::time::advance(Duration::from_millis(1500)).await;
        put(&b, "k", "1").await;
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let out = b.get_records(S, &it, 1).await.unwrap();
        assert_eq!(out.millis_behind_latest, 1500);
        let out = b.get_records(S, &out.next_iterator.unwrap(), 1).await.unwrap();
        assert_eq!(out.millis_behind_latest, 0);
    }

    #[tokio::test]
    async fn iterators_expire_and_malformed_ones_are_rejected() {
        tokio::time::pause();
        let b = LocalBackend::builder()
            .iterator_ttl(Duration::from_secs(60))
            .build();
        b.create_stream(S, 1).unwrap();
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        let next = b.get_records(S, &it, 10).await.unwrap().next_iterator.unwrap();
        tokio::time::advance(Duration::from_millis(60_001)).await;
        assert!(matches!(
            b.get_records(S, &it, 10).await,
            Err(BackendError::ExpiredIterator)
        ));
        assert!(matches!(
            b.get_records(S, &next, 10).await,
            Err(BackendError::ExpiredIterator)
        ));

        let fresh = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        for bad in [
            "",
            "garbage",
            "kcl-local-iterator/v1/test/shardId-000000000000/0",
            "kcl-local-iterator/v1/test/shardId-000000000000/x/0",
            "kcl-local-iterator/v1/test/shardId-000000000000/0/0/extra",
            "kcl-local-iterator/v1/test/shardId-000000000000/0/99999999999999",
            "kcl-local-iterator/v1/test/shardId-000000000000/-1/0",
        ] {
            assert!(
                matches!(
                    b.get_records(S, bad, 10).await,
                    Err(BackendError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let renamed = fresh.replace("/test/", "/other/");
        assert!(matches!(
            b.get_records("other", &renamed, 10).await,
            Err(BackendError::StreamNotFound(_))
        ));
        // An iterator of one stream given as another's.
        assert!(matches!(
            b.get_records(S, &renamed, 10).await,
            Err(BackendError::InvalidArgument(_))
        ));
        let moved = fresh.replace("shardId-000000000000", "shardId-000000000042");
        assert!(matches!(
            b.get_records(S, &moved, 10).await,
            Err(BackendError::ShardNotFound(_))
        ));
    }

    #[tokio::test]
    async fn split_closes_the_parent_and_reports_children_at_its_end() {
        let b = backend(1);
        let parent = shard_id(0);
        put(&b, "a", "before-0").await;
        let last = put(&b, "b", "before-1").await;
        let middle = 1u128 << 127;
        assert!(matches!(
            b.split_shard(S, &parent, 0),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.split_shard(S, "shardId-000000000007", 1),
            Err(BackendError::ShardNotFound(_))
        ));
        let (low, high) = b.split_shard(S, &parent, middle).unwrap();
        assert_eq!(
            (low.as_str(), high.as_str()),
            ("shardId-000000000001", "shardId-000000000002")
        );
        assert!(matches!(
            b.split_shard(S, &parent, middle),
            Err(BackendError::InvalidArgument(_))
        ));

        let shards = b.shards(S).unwrap();
        assert_eq!(shards.len(), 3);
        assert_eq!(
            shards[0].ending_sequence_number.as_ref(),
            Some(&last.sequence_number)
        );
        assert_eq!(shards[1].parent_shard_id.as_deref(), Some(parent.as_str()));
        assert_eq!(
            shards[1].hash_key_range,
            HashKeyRange {
                start: 0,
                end: middle - 1
            }
        );
        assert_eq!(
            shards[2].hash_key_range,
            HashKeyRange {
                start: middle,
                end: u128::MAX
            }
        );
        assert!(shards[1].starting_sequence_number > last.sequence_number);
        assert!(shards[1].is_open() && shards[2].is_open());

        // New puts go to the children.
        let r = put(&b, "a", "after").await;
        assert!(r.shard_id == low || r.shard_id == high);
        assert!(r.sequence_number >= shards[1].starting_sequence_number);
        let r = b
            .put_record(S, "x", Bytes::new(), Some(&middle.to_string()))
            .await
            .unwrap();
        assert_eq!(r.shard_id, high);

        // The parent is readable to its end, then has no next iterator and names its children.
        let it = b
            .get_shard_iterator(S, &parent, &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let out = b.get_records(S, &it, 1).await.unwrap();
        assert_eq!(datas(&out), ["before-0"]);
        let out = b.get_records(S, &out.next_iterator.unwrap(), 10).await.unwrap();
        assert_eq!(datas(&out), ["before-1"]);
        assert_eq!(out.next_iterator, None);
        let children: Vec<_> = out.child_shards.iter().map(|c| c.shard_id.clone()).collect();
        assert_eq!(children, [low.clone(), high.clone()]);
        assert_eq!(out.child_shards[0].parent_shards, [parent.as_str()]);
        assert_eq!(out.child_shards[1].hash_key_range, shards[2].hash_key_range);
        // LATEST on a closed shard is at its end at once.
        let out = read_all(&b, &parent, IteratorPosition::Latest).await;
        assert!(out.records.is_empty() && out.next_iterator.is_none() && out.child_shards.len() == 2);
        // Its ending sequence number is still a valid position.
        let out = read_all(
            &b,
            &parent,
            IteratorPosition::AfterSequenceNumber(last.sequence_number),
        )
        .await;
        assert!(out.records.is_empty() && out.next_iterator.is_none());
    }

    #[tokio::test]
    async fn merge_joins_adjacent_open_shards() {
        let b = backend(3);
        put(&b, "a", "x").await;
        assert!(matches!(
            b.merge_shards(S, &shard_id(0), &shard_id(2)),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.merge_shards(S, &shard_id(0), &shard_id(0)),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.merge_shards(S, &shard_id(0), "nope"),
            Err(BackendError::ShardNotFound(_))
        ));
        // Merge in either order of adjacency.
        let child = b.merge_shards(S, &shard_id(2), &shard_id(1)).unwrap();
        assert_eq!(child, shard_id(3));
        let shards = b.shards(S).unwrap();
        let c = &shards[3];
        assert_eq!(c.parent_shard_id.as_deref(), Some("shardId-000000000002"));
        assert_eq!(
            c.adjacent_parent_shard_id.as_deref(),
            Some("shardId-000000000001")
        );
        assert_eq!(c.hash_key_range.start, shards[1].hash_key_range.start);
        assert_eq!(c.hash_key_range.end, u128::MAX);
        assert!(!shards[1].is_open() && !shards[2].is_open());
        assert!(c.starting_sequence_number > *shards[1].ending_sequence_number.as_ref().unwrap());
        assert!(matches!(
            b.merge_shards(S, &shard_id(1), &shard_id(0)),
            Err(BackendError::InvalidArgument(_))
        ));
        let out = read_all(&b, &shard_id(1), IteratorPosition::TrimHorizon).await;
        assert_eq!(out.next_iterator, None);
        assert_eq!(out.child_shards.len(), 1);
        assert_eq!(out.child_shards[0].parent_shards, [shard_id(2), shard_id(1)]);
        // Merge the child with shard 0: the whole key space again.
        let all = b.merge_shards(S, &shard_id(0), &child).unwrap();
        let r = put(&b, "a", "y").await;
        assert_eq!(r.shard_id, all);
        assert_eq!(
            b.shards(S).unwrap().last().unwrap().hash_key_range,
            HashKeyRange::FULL
        );
    }

    #[tokio::test]
    async fn retention_trims_records_and_expired_closed_shards() {
        tokio::time::pause();
        let b = backend(1);
        b.set_retention(S, Duration::from_secs(3600)).unwrap();
        put(&b, "k", "old").await;
        tokio::time::advance(Duration::from_secs(1800)).await;
        put(&b, "k", "new").await;
        let (low, _high) = b.split_shard(S, &shard_id(0), 1 << 127).unwrap();
        put(&b, "a", "child").await;
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert_eq!(
            datas(&read_all(&b, &shard_id(0), IteratorPosition::TrimHorizon).await),
            ["new"]
        );
        assert_eq!(b.record_count(S).unwrap(), 2);
        tokio::time::advance(Duration::from_secs(1800)).await;
        // Everything in the parent expired and it was closed longer than retention: gone.
        let ids: Vec<_> = b.shards(S).unwrap().into_iter().map(|s| s.shard_id).collect();
        assert_eq!(ids, [low.clone(), shard_id(2)]);
        assert!(matches!(
            b.get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
                .await,
            Err(BackendError::ShardNotFound(_))
        ));
        assert_eq!(b.record_count(S).unwrap(), 0);
        // A closed shard without records stays until retention has passed since it closed.
        let (a, _) = b.split_shard(S, &low, 1).unwrap();
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(b.shards(S).unwrap().iter().any(|s| s.shard_id == low));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!b.shards(S).unwrap().iter().any(|s| s.shard_id == low));
        assert!(b.shards(S).unwrap().iter().any(|s| s.shard_id == a));
    }

    #[tokio::test]
    async fn read_limits_throttle_then_recover() {
        tokio::time::pause();
        let limits = ReadLimits {
            reads_per_second: 5,
            bytes_per_second: 1000,
        };
        let b = LocalBackend::builder().read_limits(Some(limits)).build();
        b.create_stream(S, 2).unwrap();
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        for _ in 0..5 {
            b.get_records(S, &it, 10).await.unwrap();
        }
        assert!(matches!(
            b.get_records(S, &it, 10).await,
            Err(BackendError::Throttled(_))
        ));
        // Other shards have their own budget.
        let other = b
            .get_shard_iterator(S, &shard_id(1), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        b.get_records(S, &other, 10).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        b.get_records(S, &it, 10).await.unwrap();

        // Bytes: one large read overdraws the bucket, the next call waits for the refill.
        b.put_record(S, "a", Bytes::from(vec![0; 3000]), None)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let out = b.get_records(S, &it, 10).await.unwrap();
        assert_eq!(out.records.len(), 1);
        let next = out.next_iterator.unwrap();
        assert!(matches!(
            b.get_records(S, &next, 10).await,
            Err(BackendError::Throttled(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            b.get_records(S, &next, 10).await,
            Err(BackendError::Throttled(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.get_records(S, &next, 10).await.unwrap().records.is_empty());
    }

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
