//! The codec between a [`Lease`] and a DynamoDB item, with exactly the Java KCL's attribute names
//! and types, so that a table can be shared with (or migrated from) Java workers.
//!
//! The codec is pure: no I/O. [`encode`] produces the full item written by `create_if_absent`;
//! every other write is an `UpdateItem` naming only the attributes it changes, so attributes
//! this crate does not know (the Java KCL 3.x adds `throughputKBps`, `isMarkedForLeaseSteal`,
//! `pendingCheckpointState`, ...) survive every write. [`decode`] is as tolerant as the Java
//! reader: missing optional attributes take their defaults, unknown attributes are ignored, and
//! anything present with the wrong type or an unparsable value makes the row
//! [`LeaseError::Corrupt`] with a reason naming the attribute.

use std::collections::{BTreeSet, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::LeaseError;
use crate::heartbeat::{LeaseRenewal, WorkerHeartbeat};
use crate::lease::{HashKeyRange, Lease};
use crate::row::{self, Row, Value};
use crate::sequence::ExtendedSequenceNumber;

/// A DynamoDB item: attribute name to value.
pub type Item = HashMap<String, AttributeValue>;

pub use crate::row::{
    CHECKPOINT, CHECKPOINT_OWNER, CHECKPOINT_SUB_SEQUENCE, CHILD_SHARD_IDS, ENDING_HASH_KEY, ENTITY_TYPE,
    EPOCH, FLEET_VIEW, HANDOFF_FROM_COUNTER, HEARTBEAT_COUNTER, INCARNATION, LAPSED, LEASE_COUNT,
    LEASE_COUNTER, LEASE_ENTITY, LEASE_KEY, LEASE_OWNER, LEASE_RENEWAL, NUDGES, OWNER_RENEWS_BY_HEARTBEAT,
    OWNER_SWITCHES, OWNER_WITHOUT_HEARTBEAT, PARENT_SHARD_IDS, PENDING_CHECKPOINT, PENDING_CHECKPOINT_STATE,
    PENDING_CHECKPOINT_SUB_SEQUENCE, SHARD_ID, STARTING_HASH_KEY, STREAM_NAME, THROUGHPUT_KBPS,
    WATCHED_COUNTER, WATCHED_INCARNATION, WATCHED_WORKER, WORKER_ID,
};

/// Whether `item` is a lease (no `entityType`, or `LEASE`), as the Java KCL 3.5 reads it; other
/// rows of a shared table are no leases and are left alone, not reported as corrupt leases.
pub fn is_lease_row(item: &Item) -> bool {
    match item.get(ENTITY_TYPE) {
        Some(AttributeValue::S(kind)) => kind == LEASE_ENTITY,
        // The Java reader treats a missing or non-string entityType as a lease.
        _ => true,
    }
}

/// `LeaseOwnerToLeaseKeyIndex`: the global secondary index the Java KCL 3.x adds to the lease
/// table (hash key `leaseOwner` S, range key `leaseKey` S, projection `KEYS_ONLY`), to list a
/// worker's leases. [`crate::DynamoDbLeaseStore::ensure_table`] creates tables with it; this
/// crate never queries it, so tables without it (a 2.x application's) work as well.
pub const LEASE_OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";

/// The heartbeat table's name for a lease table: `<lease table>-WorkerHeartbeats`.
pub fn heartbeat_table_name(lease_table: &str) -> String {
    format!("{lease_table}-WorkerHeartbeats")
}

/// The heartbeat row of a worker ([`row::heartbeat_row`] as an item).
pub fn encode_heartbeat(hb: &WorkerHeartbeat) -> Item {
    to_item(row::heartbeat_row(hb))
}

/// Reads a heartbeat row; a row without a string `workerId`, or with a bad counter or renewal
/// mode, is [`LeaseError::Corrupt`]. Missing optional attributes default to 0 / `per-lease`.
pub fn decode_heartbeat(item: &Item) -> Result<WorkerHeartbeat, LeaseError> {
    let Some(AttributeValue::S(worker)) = item.get(WORKER_ID) else {
        return Err(LeaseError::Corrupt {
            key: "<heartbeat row without workerId>".into(),
            reason: format!("{WORKER_ID} is missing or not a string"),
        });
    };
    let reader = Reader { item, key: worker };
    let renewal = match reader.string(LEASE_RENEWAL)? {
        None => LeaseRenewal::PerLease,
        Some(mode) => mode
            .parse()
            .map_err(|e: crate::heartbeat::ParseLeaseRenewalError| reader.corrupt(e.to_string()))?,
    };
    Ok(WorkerHeartbeat {
        worker_id: worker.clone(),
        counter: reader
            .number(HEARTBEAT_COUNTER)?
            .ok_or_else(|| reader.corrupt(format!("{HEARTBEAT_COUNTER} is missing")))?,
        renewal,
        leases: reader.number(LEASE_COUNT)?.unwrap_or(0),
        epoch: reader.number(EPOCH)?.unwrap_or(0),
        incarnation: reader.number(INCARNATION)?,
        lapsed: reader.number(LAPSED)?.is_some_and(|v| v != 0),
        nudges: reader.number(NUDGES)?.unwrap_or(0),
        view: reader.number(FLEET_VIEW)?.unwrap_or(0),
        watched: match (reader.string(WATCHED_WORKER)?, reader.number(WATCHED_COUNTER)?) {
            (Some(worker_id), Some(counter)) => Some(crate::heartbeat::WatchedRow {
                worker_id: worker_id.to_owned(),
                counter,
                incarnation: reader.number(WATCHED_INCARNATION)?,
            }),
            _ => None,
        },
    })
}

/// A number attribute value.
pub fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A throughput in KB/s as a DynamoDB number ([`row::kbps`]).
pub fn kbps(value: f64) -> AttributeValue {
    AttributeValue::N(row::kbps(value))
}

/// A string attribute value.
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A string-set attribute value; `None` for an empty set, which DynamoDB cannot store.
pub fn ss(values: &BTreeSet<String>) -> Option<AttributeValue> {
    (!values.is_empty()).then(|| AttributeValue::Ss(values.iter().cloned().collect()))
}

/// The full item for `lease`, as the Java KCL writes it ([`row::lease_row`] as an item):
/// optional attributes that are unset (owner, pending checkpoint, empty sets, checkpoint owner,
/// hash key range) are absent.
pub fn encode(lease: &Lease) -> Item {
    to_item(row::lease_row(lease))
}

/// The attribute value of a row value.
pub fn attribute(value: Value) -> AttributeValue {
    match value {
        Value::S(v) => AttributeValue::S(v),
        Value::N(v) => AttributeValue::N(v),
        Value::Ss(v) => AttributeValue::Ss(v),
    }
}

fn to_item(row: Row) -> Item {
    row.into_iter()
        .map(|(name, value)| (name.to_owned(), attribute(value)))
        .collect()
}

/// The lease key of an item, if it has a string `leaseKey` (for error messages and logs).
pub fn key_of(item: &Item) -> Option<&str> {
    match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => Some(key),
        _ => None,
    }
}

/// Reads a lease from an item. Unknown attributes are ignored; missing optional attributes take
/// their defaults (`leaseCounter`, `checkpointSubSequenceNumber` and
/// `ownerSwitchesSinceCheckpoint` 0; no owner, pending checkpoint, parents, children, checkpoint
/// owner; a hash key range only when both ends are present). A missing `leaseKey` or
/// `checkpoint`, a wrong type or an unparsable value is [`LeaseError::Corrupt`].
pub fn decode(item: &Item) -> Result<Lease, LeaseError> {
    let key = match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => key.clone(),
        Some(other) => {
            return Err(LeaseError::Corrupt {
                key: format!("<{LEASE_KEY} of type {}>", type_name(other)),
                reason: format!("{LEASE_KEY} is not a string (S)"),
            })
        }
        None => {
            return Err(LeaseError::Corrupt {
                key: "<row without leaseKey>".into(),
                reason: format!("{LEASE_KEY} is missing"),
            })
        }
    };
    let reader = Reader { item, key: &key };
    let checkpoint = match reader.string(CHECKPOINT)? {
        Some(cp) => {
            let sub = reader.number(CHECKPOINT_SUB_SEQUENCE)?.unwrap_or(0);
            ExtendedSequenceNumber::from_parts(cp, sub)
                .map_err(|e| reader.corrupt(format!("{CHECKPOINT}: {e}")))?
        }
        None => return Err(reader.corrupt(format!("{CHECKPOINT} is missing"))),
    };
    let pending_checkpoint = match reader.string(PENDING_CHECKPOINT)? {
        Some(cp) => {
            let sub = reader.number(PENDING_CHECKPOINT_SUB_SEQUENCE)?.unwrap_or(0);
            Some(
                ExtendedSequenceNumber::from_parts(cp, sub)
                    .map_err(|e| reader.corrupt(format!("{PENDING_CHECKPOINT}: {e}")))?,
            )
        }
        None => None,
    };
    let hash_key_range = match (reader.string(STARTING_HASH_KEY)?, reader.string(ENDING_HASH_KEY)?) {
        (Some(start), Some(end)) => {
            let start = reader.u128(STARTING_HASH_KEY, start)?;
            let end = reader.u128(ENDING_HASH_KEY, end)?;
            Some(HashKeyRange::new(start, end).ok_or_else(|| {
                reader.corrupt(format!(
                    "{STARTING_HASH_KEY} {start} is greater than {ENDING_HASH_KEY} {end}"
                ))
            })?)
        }
        // The Java KCL only reads the range when both ends are present.
        _ => None,
    };
    Ok(Lease {
        lease_owner: reader.string(LEASE_OWNER)?.map(str::to_owned),
        lease_counter: reader.number(LEASE_COUNTER)?.unwrap_or(0),
        checkpoint,
        pending_checkpoint,
        owner_switches_since_checkpoint: reader.number(OWNER_SWITCHES)?.unwrap_or(0),
        parent_shard_ids: reader.string_set(PARENT_SHARD_IDS)?,
        child_shard_ids: reader.string_set(CHILD_SHARD_IDS)?,
        checkpoint_owner: reader.string(CHECKPOINT_OWNER)?.map(str::to_owned),
        hash_key_range,
        stream_identifier: reader.string(STREAM_NAME)?.map(str::to_owned),
        shard_id: reader.string(SHARD_ID)?.map(str::to_owned),
        throughput_kbps: reader.float(THROUGHPUT_KBPS)?,
        owner_without_heartbeat: reader.string(OWNER_WITHOUT_HEARTBEAT)?.map(str::to_owned),
        owner_renews_by_heartbeat: reader.string(OWNER_RENEWS_BY_HEARTBEAT)?.map(str::to_owned),
        handoff_from_counter: reader.number(HANDOFF_FROM_COUNTER)?,
        lease_key: key,
    })
}

/// Every lease attribute [`decode`] reads, for [`decode_patched`].
const LEASE_ATTRIBUTES: [&str; 19] = [
    LEASE_OWNER,
    LEASE_COUNTER,
    CHECKPOINT,
    CHECKPOINT_SUB_SEQUENCE,
    PENDING_CHECKPOINT,
    PENDING_CHECKPOINT_SUB_SEQUENCE,
    OWNER_SWITCHES,
    PARENT_SHARD_IDS,
    CHILD_SHARD_IDS,
    CHECKPOINT_OWNER,
    STARTING_HASH_KEY,
    ENDING_HASH_KEY,
    STREAM_NAME,
    SHARD_ID,
    THROUGHPUT_KBPS,
    PENDING_CHECKPOINT_STATE,
    OWNER_WITHOUT_HEARTBEAT,
    OWNER_RENEWS_BY_HEARTBEAT,
    HANDOFF_FROM_COUNTER,
];

/// Decodes `item`, taking each attribute that is corrupt in it from `fallback` instead (as
/// [`encode`] writes it, or absent). Returns the lease and the attributes patched. For the row a
/// conditional write of this worker returned: the condition held, so `fallback` is this
/// worker's own, current view of the row. Fails as [`decode`] does if the key is corrupt.
pub fn decode_patched(item: &Item, fallback: &Lease) -> Result<(Lease, Vec<&'static str>), LeaseError> {
    let replacement = encode(fallback);
    let mut item = item.clone();
    let mut patched: Vec<&'static str> = Vec::new();
    loop {
        match decode(&item) {
            Ok(lease) => return Ok((lease, patched)),
            Err(LeaseError::Corrupt { key, reason }) => {
                let bad = LEASE_ATTRIBUTES
                    .into_iter()
                    .filter(|a| !patched.contains(a))
                    .find(|a| reason.starts_with(a) && !reason[a.len()..].starts_with(char::is_alphanumeric));
                let Some(bad) = bad else {
                    return Err(LeaseError::Corrupt { key, reason });
                };
                match replacement.get(bad) {
                    Some(value) => item.insert(bad.to_owned(), value.clone()),
                    None => item.remove(bad),
                };
                patched.push(bad);
            }
            Err(other) => return Err(other),
        }
    }
}

/// Typed, attribute-naming access to one item.
struct Reader<'a> {
    item: &'a Item,
    key: &'a str,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, reason: String) -> LeaseError {
        LeaseError::Corrupt {
            key: self.key.to_owned(),
            reason,
        }
    }

    fn wrong_type(&self, name: &str, expected: &str, got: &AttributeValue) -> LeaseError {
        self.corrupt(format!("{name} has type {}, expected {expected}", type_name(got)))
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, LeaseError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v)),
            Some(other) => Err(self.wrong_type(name, "S", other)),
        }
    }

    fn number(&self, name: &str) -> Result<Option<u64>, LeaseError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.corrupt(format!("{name} is not a non-negative integer: {v:?}"))),
            Some(other) => Err(self.wrong_type(name, "N", other)),
        }
    }

    fn float(&self, name: &str) -> Result<Option<f64>, LeaseError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(self.corrupt(format!("{name} is not a non-negative number: {v:?}"))),
            },
            Some(other) => Err(self.wrong_type(name, "N", other)),
        }
    }

    fn string_set(&self, name: &str) -> Result<BTreeSet<String>, LeaseError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(BTreeSet::new()),
            Some(AttributeValue::Ss(v)) => Ok(v.iter().cloned().collect()),
            Some(other) => Err(self.wrong_type(name, "SS", other)),
        }
    }

    fn u128(&self, name: &str, value: &str) -> Result<u128, LeaseError> {
        value
            .parse::<u128>()
            .map_err(|_| self.corrupt(format!("{name} is not a decimal 128-bit hash key: {value:?}")))
    }
}

/// The DynamoDB type tag of a value, for messages.
pub fn type_name(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::N(_) => "N",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::S(_) => "S",
        AttributeValue::Ss(_) => "SS",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::SequenceNumber;

    const JAVA_SEQ: &str = "49590338271490256608559692538361571095921575989136588898";

    /// A row exactly as the Java KCL 3.1.3 writes it, with an attribute this crate does not know.
    fn java_row() -> Item {
        let mut item = Item::new();
        item.insert("leaseKey".into(), s("shardId-000000000001"));
        item.insert("leaseOwner".into(), s("worker-a"));
        item.insert("leaseCounter".into(), AttributeValue::N("42".into()));
        item.insert("checkpoint".into(), s(JAVA_SEQ));
        item.insert(
            "checkpointSubSequenceNumber".into(),
            AttributeValue::N("0".into()),
        );
        item.insert(
            "ownerSwitchesSinceCheckpoint".into(),
            AttributeValue::N("1".into()),
        );
        item.insert("startingHashKey".into(), s("0"));
        item.insert(
            "endingHashKey".into(),
            s("170141183460469231731687303715884105727"),
        );
        item.insert(
            "parentShardId".into(),
            AttributeValue::Ss(vec!["shardId-000000000000".into()]),
        );
        item.insert("throughputKBps".into(), AttributeValue::N("1.5".into()));
        item
    }

    fn corrupt_reason(item: &Item) -> (String, String) {
        match decode(item) {
            Err(LeaseError::Corrupt { key, reason }) => (key, reason),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_java_kcl_row() {
        let lease = decode(&java_row()).unwrap();
        assert_eq!(lease.lease_key, "shardId-000000000001");
        assert_eq!(lease.lease_owner.as_deref(), Some("worker-a"));
        assert_eq!(lease.lease_counter, 42);
        assert_eq!(
            lease.checkpoint,
            ExtendedSequenceNumber::at(SequenceNumber::new(JAVA_SEQ).unwrap(), 0)
        );
        assert_eq!(lease.pending_checkpoint, None);
        assert_eq!(lease.owner_switches_since_checkpoint, 1);
        assert_eq!(
            lease.parent_shard_ids,
            BTreeSet::from(["shardId-000000000000".to_owned()])
        );
        assert!(lease.child_shard_ids.is_empty());
        assert_eq!(lease.checkpoint_owner, None);
        assert_eq!(
            lease.hash_key_range,
            Some(HashKeyRange {
                start: 0,
                end: 170141183460469231731687303715884105727
            })
        );
    }

    #[test]
    fn writes_what_the_java_kcl_writes() {
        let lease = decode(&java_row()).unwrap();
        assert_eq!(lease.throughput_kbps, Some(1.5));
        assert_eq!(encode(&lease), java_row());
    }

    #[test]
    fn throughput_is_a_decimal_number_the_java_kcl_reads_as_a_double() {
        assert_eq!(kbps(12.3456), AttributeValue::N("12.346".into()));
        assert_eq!(kbps(3.0), AttributeValue::N("3".into()));
        assert_eq!(kbps(-1.0), AttributeValue::N("0".into()));
        assert_eq!(kbps(f64::NAN), AttributeValue::N("0".into()));
        assert_eq!(kbps(f64::INFINITY), AttributeValue::N("0".into()));
    }

    #[test]
    fn multi_stream_rows_carry_the_stream_and_the_shard() {
        let stream: crate::StreamIdentifier = "123456789012:orders:1700000000".parse().unwrap();
        let lease = Lease::for_stream(
            &stream,
            "shardId-000000000003",
            ExtendedSequenceNumber::TrimHorizon,
        )
        .with_parents(["shardId-000000000001"]);
        let item = encode(&lease);
        assert_eq!(
            item.get(LEASE_KEY),
            Some(&s("123456789012:orders:1700000000:shardId-000000000003"))
        );
        assert_eq!(item.get(STREAM_NAME), Some(&s("123456789012:orders:1700000000")));
        assert_eq!(item.get(SHARD_ID), Some(&s("shardId-000000000003")));
        let back = decode(&item).unwrap();
        assert_eq!(back, lease);
        assert_eq!(back.shard_id(), "shardId-000000000003");
        assert_eq!(back.stream(), Some(stream.clone()));
        assert_eq!(
            back.sibling_key("shardId-000000000001"),
            "123456789012:orders:1700000000:shardId-000000000001"
        );
        // A Java row without the extra attributes is understood from its key alone.
        let mut bare = item.clone();
        bare.remove(STREAM_NAME);
        bare.remove(SHARD_ID);
        let bare = decode(&bare).unwrap();
        assert_eq!(bare.shard_id(), "shardId-000000000003");
        assert_eq!(bare.stream(), Some(stream));
        // A single-stream lease is its own shard.
        let single = Lease::new("shardId-000000000000", ExtendedSequenceNumber::Latest);
        assert_eq!(single.shard_id(), "shardId-000000000000");
        assert_eq!(single.stream(), None);
        assert_eq!(single.sibling_key("shardId-000000000001"), "shardId-000000000001");
    }

    #[test]
    fn a_patched_decode_takes_corrupt_attributes_from_the_fallback() {
        let mine = decode(&java_row()).unwrap();
        let mut item = java_row();
        item.insert(CHECKPOINT.into(), AttributeValue::N("12".into()));
        item.insert(OWNER_SWITCHES.into(), s("many"));
        item.insert(LEASE_COUNTER.into(), n(43));
        assert!(decode(&item).is_err());
        let (lease, patched) = decode_patched(&item, &mine).unwrap();
        assert_eq!(patched, [CHECKPOINT, OWNER_SWITCHES]);
        assert_eq!(lease.checkpoint, mine.checkpoint);
        assert_eq!(lease.lease_counter, 43, "valid attributes come from the row");
        let mut keyless = item.clone();
        keyless.remove(LEASE_KEY);
        assert!(decode_patched(&keyless, &mine).is_err());
    }

    /// Rows a Java KCL 3.5 worker writes into the lease table besides leases, built from its
    /// sources: worker metrics keyed by worker id, and the leader lock.
    fn java_35_other_rows() -> Vec<Item> {
        let mut metrics = Item::new();
        metrics.insert("leaseKey".into(), s("worker-a"));
        metrics.insert("entityType".into(), s("WORKER_METRIC_STATS"));
        metrics.insert("lut".into(), AttributeValue::N("1796270000".into()));
        metrics.insert(
            "sts".into(),
            AttributeValue::M(HashMap::from([(
                "CPU".to_owned(),
                AttributeValue::L(vec![
                    AttributeValue::N("12.5".into()),
                    AttributeValue::N("40".into()),
                ]),
            )])),
        );
        metrics.insert(
            "opr".into(),
            AttributeValue::M(HashMap::from([(
                "CPU".to_owned(),
                AttributeValue::L(vec![AttributeValue::N("100".into())]),
            )])),
        );
        let mut leader = Item::new();
        leader.insert("leaseKey".into(), s("Leader"));
        leader.insert("entityType".into(), s("LEADER"));
        leader.insert("leaseOwner".into(), s("worker-a"));
        vec![metrics, leader]
    }

    #[test]
    fn java_35_rows_that_are_not_leases_are_recognised() {
        for row in java_35_other_rows() {
            assert!(!is_lease_row(&row), "{row:?}");
        }
        let mut lease = java_row();
        assert!(is_lease_row(&lease), "no entityType: a lease");
        lease.insert(ENTITY_TYPE.into(), s(LEASE_ENTITY));
        assert!(is_lease_row(&lease));
        assert_eq!(decode(&lease).unwrap().lease_key, "shardId-000000000001");
    }

    #[test]
    fn round_trips_every_field() {
        let full = Lease {
            lease_key: "shardId-000000000007".into(),
            lease_owner: Some("w1".into()),
            lease_counter: 7,
            checkpoint: ExtendedSequenceNumber::at(SequenceNumber::new("123").unwrap(), 4),
            pending_checkpoint: Some(ExtendedSequenceNumber::at(SequenceNumber::new("456").unwrap(), 2)),
            owner_switches_since_checkpoint: 3,
            parent_shard_ids: ["p1", "p2"].into_iter().map(String::from).collect(),
            child_shard_ids: ["c1"].into_iter().map(String::from).collect(),
            checkpoint_owner: Some("w0".into()),
            hash_key_range: Some(HashKeyRange::FULL),
            stream_identifier: None,
            shard_id: None,
            throughput_kbps: Some(12.25),
            owner_without_heartbeat: Some("w1".into()),
            owner_renews_by_heartbeat: Some("w1".into()),
            handoff_from_counter: Some(6),
        };
        let item = encode(&full);
        assert!(!item.contains_key(STREAM_NAME) && !item.contains_key(SHARD_ID));
        assert_eq!(item.get(ENDING_HASH_KEY), Some(&s(u128::MAX.to_string())));
        assert_eq!(item.get(PENDING_CHECKPOINT_SUB_SEQUENCE), Some(&n(2)));
        assert_eq!(decode(&item).unwrap(), full);
        for cp in [
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            ExtendedSequenceNumber::AtTimestamp,
            ExtendedSequenceNumber::ShardEnd,
        ] {
            let lease = Lease::new("k", cp.clone());
            let item = encode(&lease);
            assert_eq!(item.get(CHECKPOINT), Some(&s(cp.checkpoint_str())));
            assert_eq!(item.get(CHECKPOINT_SUB_SEQUENCE), Some(&n(0)));
            assert_eq!(decode(&item).unwrap(), lease);
        }
    }

    #[test]
    fn unset_optional_attributes_are_absent() {
        let item = encode(&Lease::new("k", ExtendedSequenceNumber::TrimHorizon));
        let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "checkpoint",
                "checkpointSubSequenceNumber",
                "leaseCounter",
                "leaseKey",
                "ownerSwitchesSinceCheckpoint"
            ]
        );
    }

    #[test]
    fn missing_optional_attributes_take_defaults() {
        let mut item = Item::new();
        item.insert(LEASE_KEY.into(), s("k"));
        item.insert(CHECKPOINT.into(), s("77"));
        let lease = decode(&item).unwrap();
        assert_eq!(
            lease,
            Lease::new(
                "k",
                ExtendedSequenceNumber::at(SequenceNumber::new("77").unwrap(), 0)
            )
        );
        // Half a hash key range is ignored, as the Java KCL does.
        item.insert(STARTING_HASH_KEY.into(), s("5"));
        assert_eq!(decode(&item).unwrap().hash_key_range, None);
        // A pending checkpoint without its sub-sequence number has sub-sequence 0.
        item.insert(PENDING_CHECKPOINT.into(), s("SHARD_END"));
        assert_eq!(
            decode(&item).unwrap().pending_checkpoint,
            Some(ExtendedSequenceNumber::ShardEnd)
        );
    }

    #[test]
    fn corrupt_rows_name_the_attribute() {
        let mut no_key = java_row();
        no_key.remove(LEASE_KEY);
        let (_, reason) = corrupt_reason(&no_key);
        assert!(reason.contains("leaseKey"), "{reason}");

        let mut key_number = java_row();
        key_number.insert(LEASE_KEY.into(), n(1));
        let (_, reason) = corrupt_reason(&key_number);
        assert!(reason.contains("leaseKey"), "{reason}");

        let mut bad_counter = java_row();
        bad_counter.insert(LEASE_COUNTER.into(), AttributeValue::N("abc".into()));
        let (key, reason) = corrupt_reason(&bad_counter);
        assert_eq!(key, "shardId-000000000001");
        assert!(reason.contains("leaseCounter"), "{reason}");

        let mut negative = java_row();
        negative.insert(OWNER_SWITCHES.into(), AttributeValue::N("-1".into()));
        let (_, reason) = corrupt_reason(&negative);
        assert!(reason.contains("ownerSwitchesSinceCheckpoint"), "{reason}");

        let mut bad_checkpoint = java_row();
        bad_checkpoint.insert(CHECKPOINT.into(), s("12x"));
        let (_, reason) = corrupt_reason(&bad_checkpoint);
        assert!(reason.contains("checkpoint"), "{reason}");

        let mut no_checkpoint = java_row();
        no_checkpoint.remove(CHECKPOINT);
        let (_, reason) = corrupt_reason(&no_checkpoint);
        assert!(reason.contains("checkpoint is missing"), "{reason}");

        let mut parents_as_string = java_row();
        parents_as_string.insert(PARENT_SHARD_IDS.into(), s("shardId-000000000000"));
        let (_, reason) = corrupt_reason(&parents_as_string);
        assert!(
            reason.contains("parentShardId") && reason.contains("SS"),
            "{reason}"
        );

        let mut owner_as_bool = java_row();
        owner_as_bool.insert(LEASE_OWNER.into(), AttributeValue::Bool(true));
        let (_, reason) = corrupt_reason(&owner_as_bool);
        assert!(reason.contains("leaseOwner"), "{reason}");

        let mut bad_range = java_row();
        bad_range.insert(STARTING_HASH_KEY.into(), s("-3"));
        let (_, reason) = corrupt_reason(&bad_range);
        assert!(reason.contains("startingHashKey"), "{reason}");

        let mut inverted = java_row();
        inverted.insert(STARTING_HASH_KEY.into(), s("9"));
        inverted.insert(ENDING_HASH_KEY.into(), s("3"));
        let (_, reason) = corrupt_reason(&inverted);
        assert!(reason.contains("greater"), "{reason}");

        let mut bad_sub = java_row();
        bad_sub.insert(CHECKPOINT_SUB_SEQUENCE.into(), s("0"));
        let (_, reason) = corrupt_reason(&bad_sub);
        assert!(reason.contains("checkpointSubSequenceNumber"), "{reason}");
    }

    #[test]
    fn unknown_attributes_are_ignored() {
        let mut item = java_row();
        item.insert("isMarkedForLeaseSteal".into(), AttributeValue::Bool(true));
        item.insert(
            PENDING_CHECKPOINT_STATE.into(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![1, 2])),
        );
        assert_eq!(decode(&item).unwrap(), decode(&java_row()).unwrap());
    }
}
