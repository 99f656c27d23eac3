//! The rows of the lease table as the Java KCL writes them, independent of any storage SDK:
//! the attribute names, and the attributes of a lease row and of a heartbeat row as plain
//! values (strings, numbers as decimal strings, string sets).
//!
//! `dynamodb::schema` (feature `dynamodb`) turns these rows into DynamoDB items (and reads items back);
//! [`crate::metered`] sizes them as DynamoDB bills them, whatever store holds them, so the cost
//! meter works without the DynamoDB SDK compiled in.

use std::collections::BTreeSet;

use crate::heartbeat::WorkerHeartbeat;
use crate::lease::Lease;

/// `leaseKey` (S): the table's hash key, the shard id.
pub const LEASE_KEY: &str = "leaseKey";
/// `leaseOwner` (S): the owning worker; absent when the lease is unowned.
pub const LEASE_OWNER: &str = "leaseOwner";
/// `leaseCounter` (N): incremented by every renewal and change of owner.
pub const LEASE_COUNTER: &str = "leaseCounter";
/// `checkpoint` (S): a decimal sequence number or a sentinel (`TRIM_HORIZON`, ...).
pub const CHECKPOINT: &str = "checkpoint";
/// `checkpointSubSequenceNumber` (N): the KPL sub-sequence number of the checkpoint.
pub const CHECKPOINT_SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
/// `pendingCheckpoint` (S): a prepared checkpoint; absent when there is none.
pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
/// `pendingCheckpointSubSequenceNumber` (N): its sub-sequence number.
pub const PENDING_CHECKPOINT_SUB_SEQUENCE: &str = "pendingCheckpointSubSequenceNumber";
/// `pendingCheckpointState` (B): the Java KCL's application state of a prepared checkpoint.
/// Not modelled by [`Lease`]; removed together with the pending checkpoint, as the Java KCL does.
pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
/// `ownerSwitchesSinceCheckpoint` (N).
pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
/// `parentShardId` (SS): absent when empty (DynamoDB forbids empty sets).
pub const PARENT_SHARD_IDS: &str = "parentShardId";
/// `childShardIds` (SS): absent when empty.
pub const CHILD_SHARD_IDS: &str = "childShardIds";
/// `checkpointOwner` (S): the previous owner during a graceful hand-off; absent otherwise.
pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
/// `startingHashKey` (S): decimal `u128`.
pub const STARTING_HASH_KEY: &str = "startingHashKey";
/// `endingHashKey` (S): decimal `u128`.
pub const ENDING_HASH_KEY: &str = "endingHashKey";
/// `streamName` (S): multi-stream leases only, the stream identifier
/// `account:stream:creationEpoch`.
pub const STREAM_NAME: &str = "streamName";
/// `shardId` (S): multi-stream leases only, the shard id.
pub const SHARD_ID: &str = "shardId";
/// `throughputKBps` (N): the shard's throughput in KB/s as its owner measured it (Java KCL 3.x).
pub const THROUGHPUT_KBPS: &str = "throughputKBps";
/// `ownerWithoutHeartbeat` (S, this crate's): the owner that renews the lease through the lease
/// table alone (see [`Lease::owner_without_heartbeat`]); absent otherwise.
pub const OWNER_WITHOUT_HEARTBEAT: &str = "ownerWithoutHeartbeat";
/// `ownerRenewsByHeartbeat` (S, this crate's): the owner that renews the lease through its
/// heartbeat alone (see [`Lease::owner_renews_by_heartbeat`]); absent otherwise.
pub const OWNER_RENEWS_BY_HEARTBEAT: &str = "ownerRenewsByHeartbeat";
/// `handoffFromCounter` (N, this crate's): during a graceful hand-off, the counter of the row
/// the thief stole (see [`Lease::handoff_from_counter`]); absent otherwise.
pub const HANDOFF_FROM_COUNTER: &str = "handoffFromCounter";

/// `entityType` (S): the Java KCL 3.5's kind of row. From 3.5 the lease table also holds other
/// rows under the same `leaseKey` hash key: worker metrics (`WORKER_METRIC_STATS`, keyed by worker
/// id), the leader lock (`LEADER`, key `Leader`), stream information (`STREAM`) and migration
/// state (`CLIENT_VERSION_MIGRATION`, `TABLE_MIGRATION`). Lease rows carry `LEASE`, or no
/// `entityType` at all (rows written before 3.5, and by this crate).
pub const ENTITY_TYPE: &str = "entityType";
/// The `entityType` of a lease row.
pub const LEASE_ENTITY: &str = "LEASE";

/// `workerId` (S): the heartbeat table's hash key.
pub const WORKER_ID: &str = "workerId";
/// `heartbeatCounter` (N): incremented by every heartbeat.
pub const HEARTBEAT_COUNTER: &str = "heartbeatCounter";
/// `leaseRenewal` (S): `per-lease` or `worker`.
pub const LEASE_RENEWAL: &str = "leaseRenewal";
/// `leaseCount` (N): leases held at the heartbeat.
pub const LEASE_COUNT: &str = "leaseCount";
/// `epoch` (N): bumped when the worker announces a change of the lease table.
pub const EPOCH: &str = "epoch";
/// `incarnation` (N): drawn at random by each worker process (tells two processes with one
/// worker id apart).
pub const INCARNATION: &str = "incarnation";
/// `lapsed` (N, 1; present only when true): written by a worker whose validity had run out.
pub const LAPSED: &str = "lapsed";
/// `nudges` (N; present once nudged): incremented by other workers that changed the lease
/// table, so that whoever watches this row looks (never written by the row's worker).
pub const NUDGES: &str = "nudges";
/// `fleetView` (N; present when not 0): the writer's digest of the fleet it knows.
pub const FLEET_VIEW: &str = "fleetView";
/// `watchedWorker` (S; with the two below, present when the writer watches a row): the row the
/// writer watches, as it last read it.
pub const WATCHED_WORKER: &str = "watchedWorker";
/// `watchedCounter` (N): that row's heartbeat counter as read.
pub const WATCHED_COUNTER: &str = "watchedCounter";
/// `watchedIncarnation` (N; absent when that row had none): that row's incarnation as read.
pub const WATCHED_INCARNATION: &str = "watchedIncarnation";

/// One attribute value of a row, with DynamoDB's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string (`S`).
    S(String),
    /// A number (`N`), as its decimal string.
    N(String),
    /// A non-empty string set (`SS`).
    Ss(Vec<String>),
}

/// A row: attribute name to value, in the order written; absent attributes are left out.
pub type Row = Vec<(&'static str, Value)>;

/// A number value.
pub fn n(value: u64) -> Value {
    Value::N(value.to_string())
}

/// A string value.
pub fn s(value: impl Into<String>) -> Value {
    Value::S(value.into())
}

/// A string-set value; `None` for an empty set, which DynamoDB cannot store.
pub fn ss(values: &BTreeSet<String>) -> Option<Value> {
    (!values.is_empty()).then(|| Value::Ss(values.iter().cloned().collect()))
}

/// A throughput in KB/s as a decimal number with at most three places (what the Java KCL 3.x
/// reads back as a double); a negative or non-finite value is written as 0.
pub fn kbps(value: f64) -> String {
    let value = if value.is_finite() && value > 0.0 {
        (value * 1000.0).round() / 1000.0
    } else {
        0.0
    };
    value.to_string()
}

/// The full row for `lease`, as the Java KCL writes it: optional attributes that are unset
/// (owner, pending checkpoint, empty sets, checkpoint owner, hash key range) are absent.
pub fn lease_row(lease: &Lease) -> Row {
    let mut row = Row::with_capacity(16);
    row.push((LEASE_KEY, s(&lease.lease_key)));
    if let Some(owner) = &lease.lease_owner {
        row.push((LEASE_OWNER, s(owner)));
    }
    row.push((LEASE_COUNTER, n(lease.lease_counter)));
    row.push((CHECKPOINT, s(lease.checkpoint.checkpoint_str())));
    row.push((CHECKPOINT_SUB_SEQUENCE, n(lease.checkpoint.sub_sequence())));
    if let Some(pending) = &lease.pending_checkpoint {
        row.push((PENDING_CHECKPOINT, s(pending.checkpoint_str())));
        row.push((PENDING_CHECKPOINT_SUB_SEQUENCE, n(pending.sub_sequence())));
    }
    row.push((OWNER_SWITCHES, n(lease.owner_switches_since_checkpoint)));
    if let Some(parents) = ss(&lease.parent_shard_ids) {
        row.push((PARENT_SHARD_IDS, parents));
    }
    if let Some(children) = ss(&lease.child_shard_ids) {
        row.push((CHILD_SHARD_IDS, children));
    }
    if let Some(owner) = &lease.checkpoint_owner {
        row.push((CHECKPOINT_OWNER, s(owner)));
    }
    if let Some(range) = &lease.hash_key_range {
        row.push((STARTING_HASH_KEY, s(range.start.to_string())));
        row.push((ENDING_HASH_KEY, s(range.end.to_string())));
    }
    if let Some(stream) = &lease.stream_identifier {
        row.push((STREAM_NAME, s(stream)));
    }
    if let Some(shard) = &lease.shard_id {
        row.push((SHARD_ID, s(shard)));
    }
    if let Some(throughput) = lease.throughput_kbps {
        row.push((THROUGHPUT_KBPS, Value::N(kbps(throughput))));
    }
    if let Some(owner) = &lease.owner_without_heartbeat {
        row.push((OWNER_WITHOUT_HEARTBEAT, s(owner)));
    }
    if let Some(owner) = &lease.owner_renews_by_heartbeat {
        row.push((OWNER_RENEWS_BY_HEARTBEAT, s(owner)));
    }
    if let Some(counter) = lease.handoff_from_counter {
        row.push((HANDOFF_FROM_COUNTER, n(counter)));
    }
    row
}

/// The heartbeat row of a worker.
pub fn heartbeat_row(hb: &WorkerHeartbeat) -> Row {
    let mut row = vec![
        (WORKER_ID, s(&hb.worker_id)),
        (HEARTBEAT_COUNTER, n(hb.counter)),
        (LEASE_RENEWAL, s(hb.renewal.as_str())),
        (LEASE_COUNT, n(hb.leases)),
        (EPOCH, n(hb.epoch)),
    ];
    if let Some(incarnation) = hb.incarnation {
        row.push((INCARNATION, n(incarnation)));
    }
    if hb.lapsed {
        row.push((LAPSED, n(1)));
    }
    if hb.nudges > 0 {
        row.push((NUDGES, n(hb.nudges)));
    }
    if hb.view != 0 {
        row.push((FLEET_VIEW, n(hb.view)));
    }
    if let Some(watched) = &hb.watched {
        row.push((WATCHED_WORKER, s(&watched.worker_id)));
        row.push((WATCHED_COUNTER, n(watched.counter)));
        if let Some(incarnation) = watched.incarnation {
            row.push((WATCHED_INCARNATION, n(incarnation)));
        }
    }
    row
}

/// The size of one value as DynamoDB bills it: strings their UTF-8 length, numbers about one
/// byte per two significant digits plus one, string sets the sum of their strings.
pub fn value_size(value: &Value) -> usize {
    match value {
        Value::S(s) => s.len(),
        Value::N(n) => {
            let digits = n
                .trim_start_matches(['-', '0'])
                .chars()
                .filter(char::is_ascii_digit)
                .count();
            digits.div_ceil(2) + 1
        }
        Value::Ss(set) => set.iter().map(String::len).sum(),
    }
}

/// The size of a row as DynamoDB computes an item's: every attribute name's UTF-8 length plus
/// its value's size.
pub fn row_size(row: &Row) -> usize {
    row.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::ExtendedSequenceNumber;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        assert_eq!(value_size(&Value::N("12345".into())), 4);
        assert_eq!(value_size(&Value::N("0".into())), 1);
        assert_eq!(value_size(&Value::N("-0.5".into())), 2);
        assert_eq!(value_size(&Value::Ss(vec!["ab".into(), "c".into()])), 3);
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        // leaseKey (8) + 20, leaseCounter (12) + 1, checkpoint (10) + 12 ("TRIM_HORIZON"),
        // checkpointSubSequenceNumber (27) + 1, ownerSwitchesSinceCheckpoint (28) + 1.
        assert_eq!(
            row_size(&lease_row(&lease)),
            8 + 20 + 12 + 1 + 10 + 12 + 27 + 1 + 28 + 1
        );
    }

    #[test]
    fn throughput_has_three_places_and_is_never_negative() {
        assert_eq!(kbps(1.23456), "1.235");
        assert_eq!(kbps(-3.0), "0");
        assert_eq!(kbps(f64::NAN), "0");
    }
}
