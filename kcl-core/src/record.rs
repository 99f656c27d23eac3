//! Records as the processor sees them, and the shard description the backends return.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
pub use kcl_lease::{ExtendedSequenceNumber, HashKeyRange, SequenceNumber};
use md5::{Digest, Md5};

/// One data record read from a shard.
///
/// For a KPL-aggregated record each user record inside it is one `Record`, sharing the
/// sequence number and told apart by `sub_sequence_number`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The payload. Cloning is cheap (reference counted).
    pub data: Bytes,
    /// The partition key the producer gave (shared: cloning a record copies no bytes).
    pub partition_key: Arc<str>,
    /// The record's sequence number in its shard.
    pub sequence_number: SequenceNumber,
    /// The position inside a KPL aggregate (0 for plain records).
    pub sub_sequence_number: u64,
    /// When Kinesis accepted the record.
    pub approximate_arrival_timestamp: SystemTime,
    /// The explicit hash key, if the producer set one.
    pub explicit_hash_key: Option<String>,
}

impl Record {
    /// The record's position, as a checkpoint would store it.
    pub fn extended_sequence_number(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at(self.sequence_number.clone(), self.sub_sequence_number)
    }
}

/// A shard of a stream, as `ListShards` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The shard id, e.g. `shardId-000000000003`.
    pub shard_id: String,
    /// The shard this one was split from, or the first of the two it was merged from.
    pub parent_shard_id: Option<String>,
    /// The second parent of a merge.
    pub adjacent_parent_shard_id: Option<String>,
    /// The hash keys the shard serves.
    pub hash_key_range: HashKeyRange,
    /// The first sequence number of the shard.
    pub starting_sequence_number: SequenceNumber,
    /// The last sequence number, once the shard is closed (split, merged); `None` while open.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl Shard {
    /// The parents (zero, one or two).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id
            .iter()
            .chain(self.adjacent_parent_shard_id.iter())
            .map(String::as_str)
    }

    /// Whether the shard is still open for writes.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }
}

/// A child of a shard that has ended, as `GetRecords` reports it at the end of a closed shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's shard id.
    pub shard_id: String,
    /// All parents of the child (the ended shard, and the adjacent one after a merge).
    pub parent_shards: Vec<String>,
    /// The child's hash key range.
    pub hash_key_range: HashKeyRange,
}

/// The Kinesis partition-key hash: the MD5 digest of the key's UTF-8 bytes as a big-endian
/// unsigned 128-bit number.
pub fn partition_key_hash(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}
