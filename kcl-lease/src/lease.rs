//! The lease: one row of the lease table, with the Java KCL's fields and meanings.

use std::collections::BTreeSet;
use std::fmt;

use crate::sequence::ExtendedSequenceNumber;
use crate::stream::StreamIdentifier;

/// A contiguous range of the 128-bit hash key space, inclusive at both ends, as Kinesis gives it
/// for a shard (`startingHashKey`, `endingHashKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashKeyRange {
    /// The first hash key of the range.
    pub start: u128,
    /// The last hash key of the range (inclusive).
    pub end: u128,
}

impl HashKeyRange {
    /// The whole key space, `0..=2^128-1`.
    pub const FULL: HashKeyRange = HashKeyRange {
        start: 0,
        end: u128::MAX,
    };

    /// A range; `None` if `start > end`.
    pub fn new(start: u128, end: u128) -> Option<Self> {
        (start <= end).then_some(Self { start, end })
    }

    /// Whether `key` falls inside the range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

impl fmt::Display for HashKeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

/// One shard lease, field for field the Java KCL 2.x/3.x lease row.
///
/// The attribute names in the table are given on each field. A lease is *owned* when
/// `lease_owner` is set; its owner proves it is alive by incrementing `lease_counter`.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// `leaseKey`: the shard id (or `account:stream:epoch:shardId` in multi-stream mode).
    pub lease_key: String,
    /// `leaseOwner`: the worker id holding the lease, `None` when nobody does.
    pub lease_owner: Option<String>,
    /// `leaseCounter`: incremented by every renewal and every change of owner.
    pub lease_counter: u64,
    /// `checkpoint` and `checkpointSubSequenceNumber`: where processing resumes.
    pub checkpoint: ExtendedSequenceNumber,
    /// `pendingCheckpoint` and `pendingCheckpointSubSequenceNumber`: a prepared, not yet
    /// committed, checkpoint (two-phase checkpointing in the Java KCL).
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// `ownerSwitchesSinceCheckpoint`: how often the lease moved without a checkpoint in between.
    pub owner_switches_since_checkpoint: u64,
    /// `parentShardId`: the shards this one was split or merged from (a string set).
    pub parent_shard_ids: BTreeSet<String>,
    /// `childShardIds`: the shards this one was split or merged into, once it has ended.
    pub child_shard_ids: BTreeSet<String>,
    /// `checkpointOwner`: during a graceful hand-off, the previous owner, which may still
    /// checkpoint; the new owner (`lease_owner`) does not start until it is cleared.
    pub checkpoint_owner: Option<String>,
    /// `startingHashKey` and `endingHashKey`: the shard's hash key range, if known.
    pub hash_key_range: Option<HashKeyRange>,
    /// `streamName`: in multi-stream mode, the stream identifier `account:stream:creationEpoch`
    /// (the Java KCL kept the attribute's old name).
    pub stream_identifier: Option<String>,
    /// `shardId`: in multi-stream mode, the shard id (the lease key's last part).
    pub shard_id: Option<String>,
    /// `throughputKBps`: the shard's recent throughput in kilobytes per second as its owner
    /// measured it (the Java KCL 3.x's attribute and unit); `None` when no owner published one.
    pub throughput_kbps: Option<f64>,
    /// `ownerWithoutHeartbeat` (this crate's attribute): the worker id of an owner that renews
    /// this lease through the lease table alone, writing no heartbeat (its heartbeat table is
    /// unusable). Such a lease is judged by its counter only, never by a heartbeat row that
    /// names the same worker id (another process's, or a former one's). Meaningful only while
    /// it names `lease_owner` (or, during a hand-off, `checkpoint_owner`); the Java KCL
    /// ignores it.
    pub owner_without_heartbeat: Option<String>,
    /// `ownerRenewsByHeartbeat` (this crate's attribute): the worker id of an owner that renews
    /// this lease through its heartbeat alone (worker renewal), written by its take
    /// ([`crate::LeaseStore::take_heartbeat_renewed`]). The lease's counter then stands still
    /// while the owner lives: a worker that cannot read the heartbeat table never judges such a
    /// lease by its counter, and leaves it to the workers that can (F3 of the coordination
    /// review). Meaningful only while it names `lease_owner`; the Java KCL ignores it.
    pub owner_renews_by_heartbeat: Option<String>,
    /// `handoffFromCounter` (this crate's attribute): written by a graceful steal, the lease
    /// counter of the row it stole (the previous owner's last write). The previous owner's
    /// hand-off checkpoint is conditional on it, so that only that holding of the lease writes
    /// as `checkpointOwner`: not a late write of an earlier process with the same worker id (a
    /// host suspended with the write in flight), nor a holding after it. Removed when the
    /// hand-off ends; absent in a hand-off made by the Java KCL, which is then judged by
    /// `checkpointOwner` alone.
    pub handoff_from_counter: Option<u64>,
}

impl Lease {
    /// A new, unowned lease for `key` starting at `checkpoint`.
    pub fn new(key: impl Into<String>, checkpoint: ExtendedSequenceNumber) -> Self {
        Self {
            lease_key: key.into(),
            lease_owner: None,
            lease_counter: 0,
            checkpoint,
            pending_checkpoint: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: BTreeSet::new(),
            child_shard_ids: BTreeSet::new(),
            checkpoint_owner: None,
            hash_key_range: None,
            stream_identifier: None,
            shard_id: None,
            throughput_kbps: None,
            owner_without_heartbeat: None,
            owner_renews_by_heartbeat: None,
            handoff_from_counter: None,
        }
    }

    /// A new, unowned multi-stream lease for one shard of `stream`: key
    /// `account:stream:creationEpoch:shardId`, with `streamName` and `shardId` set.
    pub fn for_stream(stream: &StreamIdentifier, shard_id: &str, checkpoint: ExtendedSequenceNumber) -> Self {
        let mut lease = Self::new(stream.lease_key(shard_id), checkpoint);
        lease.stream_identifier = Some(stream.to_string());
        lease.shard_id = Some(shard_id.to_owned());
        lease
    }

    /// The shard this lease is for: the `shardId` attribute, else the shard part of a
    /// multi-stream key, else the key itself.
    pub fn shard_id(&self) -> &str {
        if let Some(id) = &self.shard_id {
            return id;
        }
        match StreamIdentifier::split_lease_key(&self.lease_key) {
            Some((_, shard)) => shard,
            None => &self.lease_key,
        }
    }

    /// The stream of a multi-stream lease (from `streamName`, else from the key); `None` for a
    /// single-stream lease.
    pub fn stream(&self) -> Option<StreamIdentifier> {
        self.stream_identifier
            .as_deref()
            .and_then(|s| s.parse().ok())
            .or_else(|| StreamIdentifier::split_lease_key(&self.lease_key).map(|(id, _)| id))
    }

    /// The lease key of a related shard (a parent or child) of the same stream.
    pub fn sibling_key(&self, shard_id: &str) -> String {
        match self.stream() {
            Some(stream) => stream.lease_key(shard_id),
            None => shard_id.to_owned(),
        }
    }

    /// Sets the parents (builder style).
    #[must_use]
    pub fn with_parents<I, S>(mut self, parents: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.parent_shard_ids = parents.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the hash key range (builder style).
    #[must_use]
    pub fn with_hash_key_range(mut self, range: HashKeyRange) -> Self {
        self.hash_key_range = Some(range);
        self
    }

    /// Whether `worker` owns the lease.
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.lease_owner.as_deref() == Some(worker)
    }

    /// Whether the shard was processed to its end (checkpoint `SHARD_END`).
    pub fn is_finished(&self) -> bool {
        self.checkpoint.is_shard_end()
    }
}
