//! KPL aggregation: unpacking the records the Kinesis Producer Library packs many user records
//! into, and packing them (for the local backend and tests).
//!
//! The KPL (and AWS's `aws-kinesis-agg` libraries) put many small user records into one Kinesis
//! record to save on per-record costs. Such a record's data is the 4 magic bytes
//! [`MAGIC`], a protobuf `AggregatedRecord` (proto2) and the 16-byte MD5 digest of the protobuf
//! bytes:
//!
//! ```text
//! message AggregatedRecord { repeated string partition_key_table = 1;
//!                            repeated string explicit_hash_key_table = 2;
//!                            repeated Record records = 3; }
//! message Tag    { required string key = 1; optional string value = 2; }
//! message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
//!                  required bytes data = 3; repeated Tag tags = 4; }
//! ```
//!
//! [`deaggregate`] turns one Kinesis record into the user records inside it, all with the
//! Kinesis record's sequence number and told apart by their sub-sequence number; the Java KCL
//! delivers the same. A record that is not aggregated is delivered as it is. One that starts
//! with the magic bytes but cannot be unpacked (wrong digest, broken protobuf, an index
//! outside a key table) is also delivered as it is, with a warning and the
//! [`DEAGGREGATION_FAILURES`] counter: nothing is lost, and nothing panics.
//!
//! An aggregate may hold user records that hash outside the shard it was read from (the
//! aggregation libraries pack keys of several shards together; the KPL's shard map can be
//! stale across a reshard). [`filter_by_hash_range`] counts them and, by default, delivers
//! them; [`MisplacedKplRecords::DropAggregate`] drops such aggregates whole, as the Java KCL
//! does. [`deaggregate_batch`] does both for one `GetRecords` batch.
//!
//! The message types are written by hand with `prost`'s derive (no build script, no
//! `protoc`); `bytes` fields decode as slices of the record's buffer, so user data is not
//! copied.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use prost::Message;

use crate::record::partition_key_hash;
use crate::record::{HashKeyRange, Record};

/// The 4 bytes an aggregated record's data starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The name of the counter of records that start with [`MAGIC`] but could not be unpacked.
pub const DEAGGREGATION_FAILURES: &str = "KplDeaggregationFailures";

/// The length of the MD5 trailer.
const DIGEST_LEN: usize = 16;

/// The protobuf `AggregatedRecord`.
#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<InnerRecord>,
}

/// The protobuf `Tag`. Required fields are `Option`s so that their absence can be told (prost
/// does not check `required`; the Java KCL's parser does, and rejects the message).
#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, optional, tag = "1")]
    key: Option<String>,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// The protobuf `Record` (one user record); see [`Tag`] on the `Option`s.
#[derive(Clone, PartialEq, Message)]
struct InnerRecord {
    #[prost(uint64, optional, tag = "1")]
    partition_key_index: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", optional, tag = "3")]
    data: Option<Bytes>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

/// Why a record that starts with [`MAGIC`] could not be unpacked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeaggregationError {
    /// Too short to hold a protobuf and a digest after the magic bytes.
    #[error("{len} bytes: too short for an aggregated record")]
    TooShort {
        /// The record's data length.
        len: usize,
    },
    /// The MD5 trailer does not match the protobuf bytes.
    #[error("MD5 digest mismatch")]
    DigestMismatch,
    /// The protobuf does not decode.
    #[error("protobuf does not decode: {0}")]
    Protobuf(String),
    /// A required protobuf field is missing.
    #[error("user record {index}: required field `{field}` missing")]
    MissingField {
        /// The user record's position in the aggregate.
        index: usize,
        /// The protobuf field.
        field: &'static str,
    },
    /// A user record's partition key index is outside the partition key table.
    #[error("user record {index}: partition key index {key_index} outside a table of {table_len}")]
    PartitionKeyIndex {
        /// The user record's position in the aggregate.
        index: usize,
        /// The index it gives.
        key_index: u64,
        /// The table's length.
        table_len: usize,
    },
    /// A user record's explicit hash key index is outside the explicit hash key table.
    #[error("user record {index}: explicit hash key index {key_index} outside a table of {table_len}")]
    ExplicitHashKeyIndex {
        /// The user record's position in the aggregate.
        index: usize,
        /// The index it gives.
        key_index: u64,
        /// The table's length.
        table_len: usize,
    },
}

/// What one Kinesis record holds, as [`deaggregate`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deaggregated {
    /// Not an aggregate (no magic bytes): the record unchanged.
    Plain(Record),
    /// An aggregate: its user records in order, sub-sequence numbers `0, 1, ...`. Empty if the
    /// aggregate holds none (the Java KCL then delivers nothing either).
    Aggregated(Vec<Record>),
    /// Starts with the magic bytes but could not be unpacked: the original record, to be
    /// delivered as a plain one (already logged and counted).
    Corrupt {
        /// The record unchanged.
        record: Record,
        /// What is wrong with it.
        error: DeaggregationError,
    },
}

impl Deaggregated {
    /// The records to deliver, in order.
    pub fn records(&self) -> &[Record] {
        match self {
            Deaggregated::Plain(record) | Deaggregated::Corrupt { record, .. } => {
                std::slice::from_ref(record)
            }
            Deaggregated::Aggregated(records) => records,
        }
    }

    /// The records to deliver, in order.
    pub fn into_records(self) -> Vec<Record> {
        match self {
            Deaggregated::Plain(record) | Deaggregated::Corrupt { record, .. } => vec![record],
            Deaggregated::Aggregated(records) => records,
        }
    }

    /// Whether the record was a valid aggregate.
    pub fn is_aggregated(&self) -> bool {
        matches!(self, Deaggregated::Aggregated(_))
    }

    /// Whether every user record of an aggregate hashes into `range` (see
    /// [`effective_hash_key`]); always true for plain and corrupt records. A user record whose
    /// explicit hash key is not a decimal 128-bit number cannot be placed and counts as inside.
    pub fn within(&self, range: &HashKeyRange) -> bool {
        match self {
            Deaggregated::Plain(_) | Deaggregated::Corrupt { .. } => true,
            Deaggregated::Aggregated(records) => records.iter().all(|r| {
                effective_hash_key(&r.partition_key, r.explicit_hash_key.as_deref())
                    .is_none_or(|key| range.contains(key))
            }),
        }
    }
}

/// Unpacks one Kinesis record: the user records of a KPL aggregate, or the record itself.
///
/// The user records share the record's sequence number, arrival time and — unless the
/// aggregate is corrupt — nothing else: each has its own partition key, explicit hash key
/// (if the producer gave one), data (a slice of the record's buffer) and
/// `sub_sequence_number` (its 0-based position). Never panics; see [`Deaggregated`].
pub fn deaggregate(record: Record) -> Deaggregated {
    if !record.data.starts_with(&MAGIC) {
        return Deaggregated::Plain(record);
    }
    match unpack(&record) {
        Ok(records) => Deaggregated::Aggregated(records),
        Err(error) => {
            tracing::warn!(
                sequence_number = record.sequence_number.as_str(),
                len = record.data.len(),
                %error,
                "KPL aggregated record cannot be unpacked; delivering it as a plain record"
            );
            metrics::counter!(DEAGGREGATION_FAILURES).increment(1);
            Deaggregated::Corrupt { record, error }
        }
    }
}

/// Checks and decodes an aggregate that starts with [`MAGIC`].
fn unpack(record: &Record) -> Result<Vec<Record>, DeaggregationError> {
    let data = &record.data;
    // The Java KCL and aws-kinesis-agg want at least one protobuf byte.
    if data.len() <= MAGIC.len() + DIGEST_LEN {
        return Err(DeaggregationError::TooShort { len: data.len() });
    }
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    if Md5::digest(&body)[..] != data[data.len() - DIGEST_LEN..] {
        return Err(DeaggregationError::DigestMismatch);
    }
    let message = AggregatedRecord::decode(body).map_err(|e| DeaggregationError::Protobuf(e.to_string()))?;
    let partition_keys: Vec<Arc<str>> = message.partition_key_table.into_iter().map(Arc::from).collect();
    let explicit_hash_keys = message.explicit_hash_key_table;
    let lookup =
        |key_index: u64, table_len: usize| usize::try_from(key_index).ok().filter(|&i| i < table_len);
    let mut records = Vec::with_capacity(message.records.len());
    for (index, inner) in message.records.into_iter().enumerate() {
        let missing = |field| DeaggregationError::MissingField { index, field };
        let key_index = inner
            .partition_key_index
            .ok_or_else(|| missing("partition_key_index"))?;
        let data = inner.data.ok_or_else(|| missing("data"))?;
        if inner.tags.iter().any(|tag| tag.key.is_none()) {
            return Err(missing("tags.key"));
        }
        let partition_key = lookup(key_index, partition_keys.len())
            .map(|i| partition_keys[i].clone())
            .ok_or(DeaggregationError::PartitionKeyIndex {
                index,
                key_index,
                table_len: partition_keys.len(),
            })?;
        let explicit_hash_key = match inner.explicit_hash_key_index {
            None => None,
            Some(key_index) => Some(
                lookup(key_index, explicit_hash_keys.len())
                    .map(|i| explicit_hash_keys[i].clone())
                    .ok_or(DeaggregationError::ExplicitHashKeyIndex {
                        index,
                        key_index,
                        table_len: explicit_hash_keys.len(),
                    })?,
            ),
        };
        records.push(Record {
            data,
            partition_key,
            sequence_number: record.sequence_number.clone(),
            sub_sequence_number: index as u64,
            approximate_arrival_timestamp: record.approximate_arrival_timestamp,
            explicit_hash_key,
        });
    }
    Ok(records)
}

/// The hash key that places a user record on a shard: its explicit hash key as a decimal
/// number if it has one, else the MD5 of its partition key ([`partition_key_hash`]). `None`
/// if the explicit hash key is not a decimal 128-bit number.
pub fn effective_hash_key(partition_key: &str, explicit_hash_key: Option<&str>) -> Option<u128> {
    match explicit_hash_key {
        None => Some(partition_key_hash(partition_key)),
        Some(key) if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) => key.parse().ok(),
        Some(_) => None,
    }
}

/// What a reader does with a KPL aggregate holding user records that hash outside the shard it
/// was read from (see [`filter_by_hash_range`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MisplacedKplRecords {
    /// Deliver every user record, and count the misplaced ones (the default). Nothing is lost;
    /// after a reshard a KPL producer's copies of such an aggregate are delivered too, which
    /// at-least-once processing allows.
    #[default]
    Deliver,
    /// Drop the whole aggregate, as the Java KCL does, to hide the copies the KPL puts again
    /// after a reshard. **Loses data** of producers that pack keys of several shards into one
    /// aggregate (`aws-kinesis-agg` on PyPI and npm, Lambda producers): see
    /// awslabs/amazon-kinesis-client#343 and awslabs/kinesis-aggregation#11 and #175. Only for
    /// producers that are the KPL itself.
    DropAggregate,
}

/// One unpacked batch: the records to deliver and how many user records hashed outside the
/// reading shard's range (delivered or not, as the [`MisplacedKplRecords`] policy says).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// The records to deliver, in order.
    pub records: Vec<Record>,
    /// User records of aggregates whose hash key is outside the shard's range.
    pub misplaced: usize,
    /// Aggregates dropped whole under [`MisplacedKplRecords::DropAggregate`].
    pub dropped_aggregates: usize,
}

/// Flattens a batch into the records to deliver for a shard with hash key range `range`:
/// plain and corrupt records always; aggregates whole under [`MisplacedKplRecords::Deliver`],
/// and only if all their user records hash into the range ([`Deaggregated::within`]) under
/// [`MisplacedKplRecords::DropAggregate`].
///
/// Why the Java KCL drops (`AggregatorUtil.deaggregate` with a hash key range): the KPL packs
/// only user records it predicts go to one shard; when an aggregate lands on another shard
/// (its shard map was stale across a reshard) it puts every user record of it again. But
/// producers that pack keys of several shards together without such checks, like
/// `aws-kinesis-agg`, would lose those aggregates, so delivering is the default here.
pub fn filter_by_hash_range(
    batch: Vec<Deaggregated>,
    range: &HashKeyRange,
    policy: MisplacedKplRecords,
) -> Unpacked {
    let mut out = Unpacked {
        records: Vec::with_capacity(batch.iter().map(|d| d.records().len()).sum()),
        ..Unpacked::default()
    };
    for item in batch {
        let misplaced = match &item {
            Deaggregated::Aggregated(records) => records
                .iter()
                .filter(|r| {
                    effective_hash_key(&r.partition_key, r.explicit_hash_key.as_deref())
                        .is_some_and(|key| !range.contains(key))
                })
                .count(),
            Deaggregated::Plain(_) | Deaggregated::Corrupt { .. } => 0,
        };
        out.misplaced += misplaced;
        if misplaced > 0 && policy == MisplacedKplRecords::DropAggregate {
            out.dropped_aggregates += 1;
        } else {
            out.records.extend(item.into_records());
        }
    }
    out
}

/// Unpacks one `GetRecords` batch: [`deaggregate`] on each record, then, if the shard's hash
/// key range is given, [`filter_by_hash_range`] with `policy`.
pub fn deaggregate_batch(
    records: Vec<Record>,
    range: Option<&HashKeyRange>,
    policy: MisplacedKplRecords,
) -> Unpacked {
    if !records.iter().any(|r| r.data.starts_with(&MAGIC)) {
        // The common case without the KPL: no allocation.
        return Unpacked {
            records,
            ..Unpacked::default()
        };
    }
    let batch: Vec<Deaggregated> = records.into_iter().map(deaggregate).collect();
    match range {
        Some(range) => filter_by_hash_range(batch, range, policy),
        None => Unpacked {
            records: batch.into_iter().flat_map(Deaggregated::into_records).collect(),
            ..Unpacked::default()
        },
    }
}

/// Packs user records `(partition key, explicit hash key, data)` into one aggregated record's
/// data, as the KPL does: key tables without duplicates (in order of first use), the MD5
/// trailer. [`deaggregate`] gives them back exactly.
///
/// Kinesis takes records of up to 1 MiB; keeping under that is the caller's business. An
/// empty slice gives an aggregate too short to be read as one (readers deliver it as a plain
/// record): pack at least one user record.
pub fn aggregate(records: &[(&str, Option<&str>, &[u8])]) -> Bytes {
    fn index_of<'a>(table: &mut Vec<&'a str>, key: &'a str) -> u64 {
        let i = table.iter().position(|k| *k == key).unwrap_or_else(|| {
            table.push(key);
            table.len() - 1
        });
        i as u64
    }
    let mut partition_keys = Vec::new();
    let mut explicit_hash_keys = Vec::new();
    let mut inner = Vec::with_capacity(records.len());
    for &(partition_key, explicit_hash_key, data) in records {
        inner.push(InnerRecord {
            partition_key_index: Some(index_of(&mut partition_keys, partition_key)),
            explicit_hash_key_index: explicit_hash_key.map(|k| index_of(&mut explicit_hash_keys, k)),
            data: Some(Bytes::copy_from_slice(data)),
            tags: Vec::new(),
        });
    }
    let message = AggregatedRecord {
        partition_key_table: partition_keys.into_iter().map(String::from).collect(),
        explicit_hash_key_table: explicit_hash_keys.into_iter().map(String::from).collect(),
        records: inner,
    };
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(MAGIC.len() + len + DIGEST_LEN);
    out.put_slice(&MAGIC);
    message
        .encode(&mut out)
        .expect("BytesMut grows as needed, so encoding cannot run out of space");
    let digest = Md5::digest(&out[MAGIC.len()..]);
    out.put_slice(&digest);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::record::SequenceNumber;

    fn record(data: impl Into<Bytes>) -> Record {
        Record {
            data: data.into(),
            partition_key: Arc::from("outer"),
            sequence_number: SequenceNumber::new("4959").unwrap(),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            explicit_hash_key: None,
        }
    }

    fn wrap(body: &[u8]) -> Bytes {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(body);
        v.extend_from_slice(&Md5::digest(body));
        v.into()
    }

    #[test]
    fn plain_record_is_unchanged() {
        for data in [&b""[..], b"hello", &MAGIC[..3]] {
            let r = record(Bytes::copy_from_slice(data));
            assert_eq!(deaggregate(r.clone()), Deaggregated::Plain(r));
        }
    }

    #[test]
    fn round_trip_shares_sequence_and_slices_the_buffer() {
        let data = aggregate(&[
            ("a", None, b"one"),
            ("b", Some("42"), b""),
            ("a", Some("42"), b"three"),
        ]);
        let outer = record(data.clone());
        let Deaggregated::Aggregated(records) = deaggregate(outer.clone()) else {
            panic!("not an aggregate")
        };
        let got: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    &*r.partition_key,
                    r.explicit_hash_key.as_deref(),
                    &r.data[..],
                    r.sub_sequence_number,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", None, &b"one"[..], 0),
                ("b", Some("42"), b"", 1),
                ("a", Some("42"), b"three", 2)
            ]
        );
        for r in &records {
            assert_eq!(r.sequence_number, outer.sequence_number);
            assert_eq!(
                r.approximate_arrival_timestamp,
                outer.approximate_arrival_timestamp
            );
        }
        // Zero-copy: the user data points into the aggregate's buffer.
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        assert!(range.contains(&(records[2].data.as_ptr() as usize)));
        // Shared partition keys: one allocation per table entry.
        assert!(Arc::ptr_eq(&records[0].partition_key, &records[2].partition_key));
    }

    #[test]
    fn key_tables_are_deduplicated() {
        let data = aggregate(&[
            ("a", Some("1"), b"x"),
            ("a", Some("1"), b"y"),
            ("b", Some("2"), b"z"),
        ]);
        let message = AggregatedRecord::decode(&data[4..data.len() - 16]).unwrap();
        assert_eq!(message.partition_key_table, ["a", "b"]);
        assert_eq!(message.explicit_hash_key_table, ["1", "2"]);
    }

    fn corrupt(data: Bytes) -> DeaggregationError {
        let r = record(data);
        match deaggregate(r.clone()) {
            Deaggregated::Corrupt { record, error } => {
                assert_eq!(record, r);
                error
            }
            other => panic!("not corrupt: {other:?}"),
        }
    }

    #[test]
    fn corrupt_records_are_delivered_whole() {
        let good = aggregate(&[("a", None, b"one"), ("b", None, b"two")]);
        let mut flipped = good.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(corrupt(flipped.into()), DeaggregationError::DigestMismatch);
        assert_eq!(
            corrupt(good.slice(..good.len() - 1)),
            DeaggregationError::DigestMismatch
        );
        assert_eq!(
            corrupt(Bytes::from_static(&MAGIC)),
            DeaggregationError::TooShort { len: 4 }
        );
        assert!(matches!(
            corrupt(wrap(&good[4..good.len() - 20])),
            DeaggregationError::Protobuf(_)
        ));
        // Field 3 (records) holding one record with only a partition key index (5).
        assert_eq!(
            corrupt(wrap(&[0x0a, 1, b'k', 0x1a, 2, 0x08, 5, 0x1a, 0])),
            DeaggregationError::MissingField {
                index: 0,
                field: "data"
            }
        );
        let message = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![InnerRecord {
                partition_key_index: Some(0),
                explicit_hash_key_index: Some(u64::MAX),
                data: Some(Bytes::new()),
                tags: vec![],
            }],
        };
        assert_eq!(
            corrupt(wrap(&message.encode_to_vec())),
            DeaggregationError::ExplicitHashKeyIndex {
                index: 0,
                key_index: u64::MAX,
                table_len: 0
            }
        );
    }

    #[test]
    fn effective_hash_keys() {
        assert_eq!(
            effective_hash_key("a", None),
            Some(0x0cc175b9c0f1b6a831c399e269772661)
        );
        assert_eq!(effective_hash_key("a", Some("7")), Some(7));
        assert_eq!(
            effective_hash_key("a", Some("340282366920938463463374607431768211455")),
            Some(u128::MAX)
        );
        for bad in ["", "-1", "+1", "1e3", "340282366920938463463374607431768211456"] {
            assert_eq!(effective_hash_key("a", Some(bad)), None, "{bad:?}");
        }
    }

    fn straddling_batch() -> Vec<Record> {
        let inside = aggregate(&[("a", Some("1"), b"x"), ("b", Some("2"), b"y")]);
        let straddling = aggregate(&[("a", Some("3"), b"x"), ("b", Some(&u128::MAX.to_string()), b"y")]);
        let unplaceable = aggregate(&[("a", Some("not a number"), b"x")]);
        vec![
            record(inside),
            record(straddling),
            record(&b"plain"[..]),
            record(unplaceable),
        ]
    }

    fn keys(records: &[Record]) -> Vec<(Option<&str>, &[u8])> {
        records
            .iter()
            .map(|r| (r.explicit_hash_key.as_deref(), &r.data[..]))
            .collect()
    }

    #[test]
    fn misplaced_user_records_are_delivered_and_counted_by_default() {
        let lower = HashKeyRange::new(0, u128::MAX / 2).unwrap();
        let out = deaggregate_batch(straddling_batch(), Some(&lower), MisplacedKplRecords::default());
        assert_eq!(
            keys(&out.records),
            [
                (Some("1"), &b"x"[..]),
                (Some("2"), b"y"),
                (Some("3"), b"x"),
                (Some(&*u128::MAX.to_string()), b"y"),
                (None, b"plain"),
                (Some("not a number"), b"x")
            ]
        );
        // One user record (hash key 2^128-1) is outside the lower half; none dropped.
        assert_eq!((out.misplaced, out.dropped_aggregates), (1, 0));
        let upper = HashKeyRange::new(u128::MAX / 2 + 1, u128::MAX).unwrap();
        let out = deaggregate_batch(straddling_batch(), Some(&upper), MisplacedKplRecords::Deliver);
        assert_eq!((out.records.len(), out.misplaced), (6, 3));
    }

    #[test]
    fn drop_policy_drops_aggregates_reaching_outside_the_range() {
        let lower = HashKeyRange::new(0, u128::MAX / 2).unwrap();
        let batch = straddling_batch();
        let out = deaggregate_batch(batch.clone(), Some(&lower), MisplacedKplRecords::DropAggregate);
        assert_eq!(
            keys(&out.records),
            [
                (Some("1"), &b"x"[..]),
                (Some("2"), b"y"),
                (None, b"plain"),
                (Some("not a number"), b"x")
            ]
        );
        assert_eq!((out.misplaced, out.dropped_aggregates), (1, 1));
        let all = deaggregate_batch(batch, None, MisplacedKplRecords::DropAggregate);
        assert_eq!((all.records.len(), all.misplaced), (6, 0));
        let plain = vec![record(&b"p"[..])];
        assert_eq!(
            deaggregate_batch(plain.clone(), Some(&lower), MisplacedKplRecords::DropAggregate).records,
            plain
        );
    }
}
