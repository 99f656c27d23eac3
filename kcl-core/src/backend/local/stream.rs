//! Stream storage: each stream's shards, their records within retention, and the
//! sequence-number counter they are numbered from.
//!
//! This is the state everything else reads and changes under the backend's one lock: the
//! stream and shard records ([`StreamState`], [`ShardState`]), the even division of the hash
//! key space at creation, the Kinesis-shaped sequence numbers, retention trimming (closed
//! shards disappear once retention has passed since they closed and their records are gone),
//! and reading a batch from a shard, which both `GetRecords` and fan-out subscriptions use.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};
use tokio::time::Instant;

use super::read_limits::{Limiter, ReadLimits};
use super::{
    fan_out, invalid, shard_not_found, trunc, LocalBackend, MAX_GET_RECORDS_BYTES, MAX_RECORD_BYTES,
    MAX_SHARDS,
};
use crate::backend::BackendError;
use crate::record::{ChildShard, HashKeyRange, Record, SequenceNumber, Shard};

const SEQUENCE_PREFIX: &str = "49";
const SEQUENCE_DIGITS: usize = 38;

impl LocalBackend {
    /// Creates a stream of `shard_count` open shards that divide the hash key space evenly, as
    /// Kinesis does. Fails if the stream exists, the name is not a valid Kinesis stream name, or
    /// the count is not in `1..=MAX_SHARDS`.
    pub fn create_stream(&self, name: &str, shard_count: usize) -> Result<(), BackendError> {
        validate_stream_name(name)?;
        self.create_stream_with(name, shard_count, ShardIds::Kinesis)
    }

    /// Creates a stream (of any name) whose shard ids are of the `ids` style.
    pub(super) fn create_stream_with(
        &self,
        name: &str,
        shard_count: usize,
        ids: ShardIds,
    ) -> Result<(), BackendError> {
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
            name: name.to_owned(),
            shards: BTreeMap::new(),
            next_shard_index: 0,
            shard_ids: ids,
            next_seq: 1,
            retention: self.inner.config.retention,
            created: SystemTime::now(),
            consumers: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            max_record_bytes: MAX_RECORD_BYTES,
            updating_until: None,
        };
        for range in even_ranges(shard_count) {
            stream.add_shard(range, None, None, self.inner.config.read_limits, now);
        }
        streams.insert(name.to_owned(), stream);
        Ok(())
    }

    /// Sets the largest record `stream` accepts, in KiB (Kinesis' `UpdateMaxRecordSize`): from
    /// 1024 (1 MiB, the default) to 10240 (10 MiB). Reads are unchanged: a `GetRecords` call
    /// returns at most [`MAX_GET_RECORDS_BYTES`] but always at least one record, and the
    /// per-shard read limits (when set) charge its size, so a 10 MiB record holds the shard's
    /// next reads back for about 5 s at 2 MiB/s.
    pub fn update_max_record_size(&self, stream: &str, kib: u32) -> Result<(), BackendError> {
        const KIB: std::ops::RangeInclusive<u32> = 1024..=10240;
        if !KIB.contains(&kib) {
            return Err(invalid(format!(
                "MaxRecordSizeInKiB {kib} is not in {}..={}",
                KIB.start(),
                KIB.end()
            )));
        }
        let update = self.inner.config.update_duration;
        self.with_stream(stream, |s, now| {
            s.refuse_while_updating(stream, now, "UpdateMaxRecordSize")?;
            s.max_record_bytes = kib as usize * 1024;
            s.updating_until = (!update.is_zero()).then(|| now + update);
            Ok(())
        })
    }

    /// The stream's status as `DescribeStreamSummary` gives it: `UPDATING` for a while after an
    /// update (see [`crate::backend::local::LocalBackendBuilder::update_duration`]), else
    /// `ACTIVE`.
    pub fn stream_status(&self, stream: &str) -> Result<&'static str, BackendError> {
        self.with_stream(stream, |s, now| {
            Ok(if s.is_updating(now) { "UPDATING" } else { "ACTIVE" })
        })
    }

    /// The largest record `stream` accepts, in bytes.
    pub fn max_record_size(&self, stream: &str) -> Result<usize, BackendError> {
        self.with_stream(stream, |s, _| Ok(s.max_record_bytes))
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

    /// The stream's shards, like [`StreamBackend::list_shards`](crate::backend::StreamBackend::list_shards) but synchronous.
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
}

/// How a stream names its shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShardIds {
    /// Kinesis: `shardId-000000000003`, numbered from zero.
    Kinesis,
    /// DynamoDB Streams: `shardId-00000001700000000000-abcdef01`, the creation time in epoch
    /// milliseconds (strictly increasing within the stream) and eight hex digits.
    DynamoDb {
        /// The milliseconds of the last shard id issued.
        last_millis: u64,
    },
}

/// One stream: its shards in id order and its sequence-number counter.
pub(super) struct StreamState {
    /// The stream's name (its key among the backend's streams).
    pub(super) name: String,
    pub(super) shards: BTreeMap<String, ShardState>,
    pub(super) next_shard_index: u64,
    pub(super) shard_ids: ShardIds,
    /// The counter of the next record (also the starting number of a shard created now).
    pub(super) next_seq: u64,
    pub(super) retention: Duration,
    /// When the stream was created (wall clock; its identifier's creation epoch).
    pub(super) created: SystemTime,
    /// Enhanced fan-out consumers, by name.
    pub(super) consumers: BTreeMap<String, fan_out::LocalConsumer>,
    /// The live subscription of each (consumer ARN, shard).
    pub(super) subscriptions: BTreeMap<(String, String), fan_out::Slot>,
    /// The largest record payload this stream accepts ([`MAX_RECORD_BYTES`] unless updated).
    pub(super) max_record_bytes: usize,
    /// Until when the stream is `UPDATING` (after an update).
    pub(super) updating_until: Option<Instant>,
}

impl StreamState {
    /// Whether the stream is `UPDATING` at `now`.
    pub(super) fn is_updating(&self, now: Instant) -> bool {
        self.updating_until.is_some_and(|until| now < until)
    }

    /// Refuses `operation` while the stream is `UPDATING`, as Kinesis does
    /// (`ResourceInUseException`).
    pub(super) fn refuse_while_updating(
        &self,
        stream: &str,
        now: Instant,
        operation: &str,
    ) -> Result<(), BackendError> {
        if self.is_updating(now) {
            return Err(BackendError::ResourceInUse(format!(
                "{operation}: stream {stream} is UPDATING, not ACTIVE"
            )));
        }
        Ok(())
    }
}

pub(super) struct ShardState {
    /// The description `ListShards` returns.
    pub(super) shard: Shard,
    /// The counter of `starting_sequence_number`.
    pub(super) start: u64,
    /// The counter of `ending_sequence_number`, once closed.
    pub(super) end: Option<u64>,
    pub(super) closed_at: Option<Instant>,
    /// The records within retention; counters increase front to back.
    pub(super) records: VecDeque<Stored>,
    pub(super) limiter: Option<Limiter>,
}

pub(super) struct Stored {
    pub(super) counter: u64,
    pub(super) arrived: Instant,
    pub(super) size: usize,
    pub(super) record: Record,
}

impl StreamState {
    /// Adds an open shard with the next id; returns the id.
    pub(super) fn add_shard(
        &mut self,
        range: HashKeyRange,
        parent: Option<&str>,
        adjacent_parent: Option<&str>,
        limits: Option<ReadLimits>,
        now: Instant,
    ) -> String {
        let shard_id = self.next_shard_id();
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

    /// The id of the next shard, in the stream's style.
    fn next_shard_id(&mut self) -> String {
        let index = self.next_shard_index;
        self.next_shard_index += 1;
        match &mut self.shard_ids {
            ShardIds::Kinesis => format!("shardId-{index:012}"),
            ShardIds::DynamoDb { last_millis } => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let millis = now.max(last_millis.saturating_add(1));
                *last_millis = millis;
                let digest = Md5::digest(format!("{}/{index}", self.name).as_bytes());
                format!(
                    "shardId-{millis:020}-{:02x}{:02x}{:02x}{:02x}",
                    digest[0], digest[1], digest[2], digest[3]
                )
            }
        }
    }

    pub(super) fn open_shard(&self, shard_id: &str) -> Result<&ShardState, BackendError> {
        let shard = self
            .shards
            .get(shard_id)
            .ok_or_else(|| shard_not_found(shard_id))?;
        if shard.end.is_some() {
            return Err(invalid(format!("shard {shard_id} is closed")));
        }
        Ok(shard)
    }

    /// Drops expired records of one shard, and the shard itself once it is closed and gone.
    pub(super) fn trim_shard(&mut self, shard_id: &str, now: Instant) {
        let retention = self.retention;
        if let Some(shard) = self.shards.get_mut(shard_id) {
            if shard.trim(now, retention) {
                self.shards.remove(shard_id);
            }
        }
    }

    /// Drops expired records of every shard, and closed shards past retention.
    pub(super) fn trim_all(&mut self, now: Instant) {
        let retention = self.retention;
        self.shards.retain(|_, shard| !shard.trim(now, retention));
    }

    /// The children of `parent` as `GetRecords` reports them.
    pub(super) fn children_of(&self, parent: &str) -> Vec<ChildShard> {
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
pub(super) struct Batch {
    pub(super) records: Vec<Record>,
    pub(super) bytes: usize,
    /// The counter to read from next.
    pub(super) next_position: u64,
    pub(super) millis_behind_latest: u64,
    /// The shard is closed and this read reached its end.
    pub(super) finished: bool,
}

impl ShardState {
    /// Up to `limit` records (and [`MAX_GET_RECORDS_BYTES`], but at least one) from counter
    /// `position` on.
    pub(super) fn read(&self, position: u64, limit: usize) -> Batch {
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
    pub(super) fn trim(&mut self, now: Instant, retention: Duration) -> bool {
        let expired = |t: Instant| t.checked_add(retention).is_some_and(|deadline| deadline <= now);
        while self.records.front().is_some_and(|r| expired(r.arrived)) {
            self.records.pop_front();
        }
        self.records.is_empty() && self.closed_at.is_some_and(expired)
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
pub(super) fn sequence_number(n: u64) -> SequenceNumber {
    SequenceNumber::new(&format!("{SEQUENCE_PREFIX}{n:0SEQUENCE_DIGITS$}"))
        .expect("a string of decimal digits is a sequence number")
}

/// The counter of a sequence number this backend issued; `InvalidArgument` for anything else.
pub(super) fn parse_sequence_number(s: &SequenceNumber) -> Result<u64, BackendError> {
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
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::local::testing::{backend, datas, put, read_all, shard_id, S};
    use crate::backend::{IteratorPosition, StreamBackend};

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
}
