//! `InMemoryLeaseStore`: the bundled lease table, a map under a lock with the same conditional
//! semantics as the DynamoDB store, and per-operation counters that tests can assert on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::error::{LeaseError, Result};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::{handoff_thief, LeaseStore};

/// The lease-store operations, for counting calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LeaseOp {
    /// [`LeaseStore::list`]
    List,
    /// [`LeaseStore::get`]
    Get,
    /// [`LeaseStore::create_if_absent`]
    Create,
    /// [`LeaseStore::renew`]
    Renew,
    /// [`LeaseStore::take`]
    Take,
    /// [`LeaseStore::evict`]
    Evict,
    /// [`LeaseStore::update_checkpoint`]
    Checkpoint,
    /// [`LeaseStore::complete_handoff`]
    CompleteHandoff,
    /// [`LeaseStore::mark_children`]
    MarkChildren,
    /// [`LeaseStore::delete`]
    Delete,
    /// [`LeaseStore::put_heartbeat`]
    PutHeartbeat,
    /// [`LeaseStore::list_heartbeats`]
    ListHeartbeats,
    /// [`LeaseStore::delete_heartbeat`]
    DeleteHeartbeat,
    /// [`LeaseStore::get_heartbeat`]
    GetHeartbeat,
    /// [`LeaseStore::nudge_heartbeat`]
    NudgeHeartbeat,
}

impl LeaseOp {
    /// Every operation.
    pub const ALL: [LeaseOp; 15] = [
        LeaseOp::List,
        LeaseOp::Get,
        LeaseOp::Create,
        LeaseOp::Renew,
        LeaseOp::Take,
        LeaseOp::Evict,
        LeaseOp::Checkpoint,
        LeaseOp::CompleteHandoff,
        LeaseOp::MarkChildren,
        LeaseOp::Delete,
        LeaseOp::PutHeartbeat,
        LeaseOp::ListHeartbeats,
        LeaseOp::DeleteHeartbeat,
        LeaseOp::GetHeartbeat,
        LeaseOp::NudgeHeartbeat,
    ];

    /// Whether the operation only reads.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            LeaseOp::List | LeaseOp::Get | LeaseOp::ListHeartbeats | LeaseOp::GetHeartbeat
        )
    }

    /// The operation's name, as metrics label it (`list`, `renew`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            LeaseOp::List => "list",
            LeaseOp::Get => "get",
            LeaseOp::Create => "create",
            LeaseOp::Renew => "renew",
            LeaseOp::Take => "take",
            LeaseOp::Evict => "evict",
            LeaseOp::Checkpoint => "checkpoint",
            LeaseOp::CompleteHandoff => "complete_handoff",
            LeaseOp::MarkChildren => "mark_children",
            LeaseOp::Delete => "delete",
            LeaseOp::PutHeartbeat => "put_heartbeat",
            LeaseOp::ListHeartbeats => "list_heartbeats",
            LeaseOp::DeleteHeartbeat => "delete_heartbeat",
            LeaseOp::GetHeartbeat => "get_heartbeat",
            LeaseOp::NudgeHeartbeat => "nudge_heartbeat",
        }
    }
}

/// An in-process lease table. Cloning gives another handle to the same table, so several
/// workers in one process can share it.
///
/// The map is behind a `std::sync::Mutex`: every operation is a short, synchronous critical
/// section, never held across an `.await`.
#[derive(Clone, Default)]
pub struct InMemoryLeaseStore {
    rows: Arc<Mutex<BTreeMap<String, Lease>>>,
    heartbeats: Arc<Mutex<BTreeMap<String, WorkerHeartbeat>>>,
    counters: Arc<[AtomicU64; LeaseOp::ALL.len()]>,
}

impl std::fmt::Debug for InMemoryLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLeaseStore")
            .field("leases", &self.lock().len())
            .finish()
    }
}

impl InMemoryLeaseStore {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `op` was called (successful or not).
    pub fn op_count(&self, op: LeaseOp) -> u64 {
        self.counters[Self::index(op)].load(Ordering::Relaxed)
    }

    /// Calls of every mutating operation (everything but the reads): the writes a DynamoDB
    /// table would be billed for.
    pub fn write_count(&self) -> u64 {
        LeaseOp::ALL
            .iter()
            .filter(|op| !op.is_read())
            .map(|op| self.op_count(*op))
            .sum()
    }

    /// Every row, read synchronously (for tests and progress displays).
    pub fn snapshot(&self) -> Vec<Lease> {
        self.lock().values().cloned().collect()
    }

    /// Writes a row as is, unconditionally (test set-up, importing a table).
    pub fn put_raw(&self, lease: Lease) {
        self.lock().insert(lease.lease_key.clone(), lease);
    }

    fn index(op: LeaseOp) -> usize {
        LeaseOp::ALL.iter().position(|o| *o == op).unwrap_or(0)
    }

    fn count(&self, op: LeaseOp) {
        self.counters[Self::index(op)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every heartbeat row, read synchronously.
    pub fn heartbeats(&self) -> Vec<WorkerHeartbeat> {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Lease>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself is
        // always left consistent (every mutation is a single assignment).
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the row if `cond` holds, returning the updated row or a conflict.
    fn mutate(
        &self,
        op: LeaseOp,
        key: &str,
        cond: impl FnOnce(&Lease) -> bool,
        f: impl FnOnce(&mut Lease),
    ) -> Result<Lease> {
        self.count(op);
        let mut rows = self.lock();
        let row = rows
            .get_mut(key)
            .ok_or_else(|| LeaseError::NotFound(key.to_owned()))?;
        if !cond(row) {
            return Err(LeaseError::Conflict {
                key: key.to_owned(),
                actual: Some(Box::new(row.clone())),
            });
        }
        f(row);
        Ok(row.clone())
    }

    /// A take, with `ownerRenewsByHeartbeat` set to the new owner when `by_heartbeat`.
    fn take_row(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
        by_heartbeat: bool,
    ) -> Result<Lease> {
        self.mutate(
            LeaseOp::Take,
            &expected.lease_key,
            same_owner_and_counter(expected),
            |row| {
                let previous = row.lease_owner.replace(new_owner.to_owned());
                if previous.as_deref() != Some(new_owner) {
                    row.owner_switches_since_checkpoint += 1;
                }
                row.checkpoint_owner = match previous {
                    Some(prev) if handoff && prev != new_owner => Some(prev),
                    _ => None,
                };
                row.handoff_from_counter = row.checkpoint_owner.is_some().then_some(expected.lease_counter);
                if row.checkpoint_owner.is_none() {
                    // Kept through a hand-off: it says how the previous owner renews.
                    row.owner_without_heartbeat = None;
                }
                row.owner_renews_by_heartbeat = by_heartbeat.then(|| new_owner.to_owned());
                row.lease_counter += 1;
            },
        )
    }
}

fn same_owner_and_counter(expected: &Lease) -> impl FnOnce(&Lease) -> bool + '_ {
    move |row| row.lease_owner == expected.lease_owner && row.lease_counter == expected.lease_counter
}

#[async_trait]
impl LeaseStore for InMemoryLeaseStore {
    async fn list(&self) -> Result<Vec<Lease>> {
        self.count(LeaseOp::List);
        Ok(self.lock().values().cloned().collect())
    }

    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        self.count(LeaseOp::PutHeartbeat);
        let mut rows = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        if !condition.holds(rows.get(&heartbeat.worker_id)) {
            return Err(LeaseError::Conflict {
                key: heartbeat.worker_id.clone(),
                actual: None,
            });
        }
        // The row's nudges are the other workers' to write: kept.
        let nudges = rows.get(&heartbeat.worker_id).map_or(0, |row| row.nudges);
        rows.insert(
            heartbeat.worker_id.clone(),
            WorkerHeartbeat {
                nudges,
                ..heartbeat.clone()
            },
        );
        Ok(())
    }

    async fn get_heartbeat(&self, worker_id: &str, _consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        self.count(LeaseOp::GetHeartbeat);
        let rows = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rows.get(worker_id).cloned())
    }

    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        self.count(LeaseOp::NudgeHeartbeat);
        let mut rows = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(row) = rows.get_mut(worker_id) {
            row.nudges += 1;
        }
        Ok(())
    }

    async fn list_heartbeats(&self, _consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        self.count(LeaseOp::ListHeartbeats);
        Ok(self.heartbeats())
    }

    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        self.count(LeaseOp::DeleteHeartbeat);
        let mut rows = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        if !condition.holds(rows.get(worker_id)) {
            return Err(LeaseError::Conflict {
                key: worker_id.to_owned(),
                actual: None,
            });
        }
        rows.remove(worker_id);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>> {
        self.count(LeaseOp::Get);
        Ok(self.lock().get(key).cloned())
    }

    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        self.count(LeaseOp::Create);
        let mut rows = self.lock();
        if rows.contains_key(&lease.lease_key) {
            return Ok(false);
        }
        rows.insert(lease.lease_key.clone(), lease.clone());
        Ok(true)
    }

    async fn renew(&self, expected: &Lease) -> Result<Lease> {
        self.mutate(
            LeaseOp::Renew,
            &expected.lease_key,
            same_owner_and_counter(expected),
            |row| {
                row.lease_counter += 1;
                if let Some(kbps) = expected.throughput_kbps {
                    row.throughput_kbps = Some(kbps);
                }
                row.owner_without_heartbeat = expected.owner_without_heartbeat.clone();
                row.owner_renews_by_heartbeat = None;
            },
        )
    }

    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease> {
        self.take_row(expected, new_owner, handoff, false)
    }

    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> Result<Lease> {
        self.take_row(expected, new_owner, handoff, true)
    }

    async fn evict(&self, expected: &Lease) -> Result<Lease> {
        self.mutate(
            LeaseOp::Evict,
            &expected.lease_key,
            same_owner_and_counter(expected),
            |row| {
                row.lease_owner = None;
                row.checkpoint_owner = None;
                row.owner_without_heartbeat = None;
                row.owner_renews_by_heartbeat = None;
                row.handoff_from_counter = None;
                row.lease_counter += 1;
            },
        )
    }

    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        // The hand-off as this worker learnt of it: only while its thief still owns the lease.
        let thief = handoff_thief(expected, worker);
        let as_owner = |row: &Lease| {
            thief.is_none()
                && row.is_owned_by(worker)
                && row.lease_counter == expected.lease_counter
                && row.checkpoint_owner.is_none()
        };
        // Only the holding the thief stole from (see `Lease::handoff_from_counter`).
        let as_handoff = |row: &Lease| {
            row.checkpoint_owner.as_deref() == Some(worker)
                && thief.is_none_or(|thief| row.is_owned_by(thief))
                && row
                    .handoff_from_counter
                    .is_none_or(|c| c == expected.lease_counter)
        };
        // The end of a shard is final outside an admin reset.
        let keeps_the_end = |row: &Lease| checkpoint.is_shard_end() || !row.checkpoint.is_shard_end();
        self.mutate(
            LeaseOp::Checkpoint,
            &expected.lease_key,
            |row| keeps_the_end(row) && (as_owner(row) || as_handoff(row)),
            |row| {
                if !as_handoff(row) {
                    row.lease_counter += 1;
                    if let Some(kbps) = expected.throughput_kbps {
                        row.throughput_kbps = Some(kbps);
                    }
                }
                row.checkpoint = checkpoint.clone();
                row.pending_checkpoint = None;
                row.owner_switches_since_checkpoint = 0;
            },
        )
    }

    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease> {
        self.mutate(
            LeaseOp::CompleteHandoff,
            &handoff.lease_key,
            |row| {
                row.checkpoint_owner.is_some()
                    && row.checkpoint_owner == handoff.checkpoint_owner
                    && row.lease_owner == handoff.lease_owner
                    && row.handoff_from_counter == handoff.handoff_from_counter
            },
            |row| {
                row.checkpoint_owner = None;
                row.handoff_from_counter = None;
            },
        )
    }

    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease> {
        self.mutate(
            LeaseOp::MarkChildren,
            &expected.lease_key,
            same_owner_and_counter(expected),
            |row| {
                row.child_shard_ids = children.clone();
                row.lease_counter += 1;
            },
        )
    }

    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        // Counted as a checkpoint: it is one conditional write of the checkpoint.
        self.mutate(
            LeaseOp::Checkpoint,
            &expected.lease_key,
            same_owner_and_counter(expected),
            |row| {
                row.lease_owner = None;
                row.checkpoint_owner = None;
                row.owner_without_heartbeat = None;
                row.owner_renews_by_heartbeat = None;
                row.handoff_from_counter = None;
                row.lease_counter += 1;
                row.checkpoint = checkpoint.clone();
                row.pending_checkpoint = None;
                row.owner_switches_since_checkpoint = 0;
            },
        )
    }

    async fn delete(&self, expected: &Lease) -> Result<()> {
        self.count(LeaseOp::Delete);
        let mut rows = self.lock();
        match rows.get(&expected.lease_key) {
            None => Err(LeaseError::NotFound(expected.lease_key.clone())),
            Some(row) if row.lease_counter != expected.lease_counter => Err(LeaseError::Conflict {
                key: expected.lease_key.clone(),
                actual: Some(Box::new(row.clone())),
            }),
            Some(_) => {
                rows.remove(&expected.lease_key);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str) -> Lease {
        Lease::new(key, ExtendedSequenceNumber::TrimHorizon)
    }

    #[tokio::test]
    async fn owner_without_heartbeat_follows_renewals_and_takes() {
        let store = InMemoryLeaseStore::new();
        crate::conformance::owner_without_heartbeat_follows_renewals_and_takes(&store, "a").await;
    }

    #[tokio::test]
    async fn owner_renews_by_heartbeat_follows_takes() {
        let store = InMemoryLeaseStore::new();
        crate::conformance::owner_renews_by_heartbeat_follows_takes(&store, "a").await;
    }

    #[tokio::test]
    async fn a_hand_off_checkpoint_lands_only_for_the_holding_stolen_from() {
        let store = InMemoryLeaseStore::new();
        crate::conformance::a_hand_off_checkpoint_lands_only_for_the_holding_stolen_from(&store, "a").await;
    }

    #[tokio::test]
    async fn a_late_completion_does_not_end_a_later_hand_off() {
        let store = InMemoryLeaseStore::new();
        crate::conformance::a_late_completion_does_not_end_a_later_hand_off(&store, "a").await;
    }

    #[tokio::test]
    async fn shard_end_is_final_for_checkpoints() {
        let store = InMemoryLeaseStore::new();
        crate::conformance::shard_end_is_final_for_checkpoints(&store, "a").await;
    }

    #[tokio::test]
    async fn create_is_idempotent_and_keeps_the_first_row() {
        let store = InMemoryLeaseStore::new();
        assert!(store.create_if_absent(&lease("a")).await.unwrap());
        let mut other = lease("a");
        other.checkpoint = ExtendedSequenceNumber::Latest;
        assert!(!store.create_if_absent(&other).await.unwrap());
        assert_eq!(
            store.get("a").await.unwrap().unwrap().checkpoint,
            ExtendedSequenceNumber::TrimHorizon
        );
    }

    #[tokio::test]
    async fn renewal_and_checkpoint_publish_the_measured_throughput() {
        let store = InMemoryLeaseStore::new();
        store.create_if_absent(&lease("a")).await.unwrap();
        let seen = store.get("a").await.unwrap().unwrap();
        let mut mine = store.take(&seen, "w1", false).await.unwrap();
        assert_eq!(mine.throughput_kbps, None);
        mine.throughput_kbps = Some(42.5);
        let renewed = store.renew(&mine).await.unwrap();
        assert_eq!(renewed.throughput_kbps, Some(42.5));
        // A renewal that does not carry a figure leaves the last one in place.
        let mut plain = renewed.clone();
        plain.throughput_kbps = None;
        let again = store.renew(&plain).await.unwrap();
        assert_eq!(again.throughput_kbps, Some(42.5));
        let mut with_cp = again.clone();
        with_cp.throughput_kbps = Some(7.0);
        let cp = ExtendedSequenceNumber::from_parts("5", 0).unwrap();
        let after = store.update_checkpoint(&with_cp, "w1", &cp).await.unwrap();
        assert_eq!(after.throughput_kbps, Some(7.0));
        assert_eq!(store.get("a").await.unwrap().unwrap().throughput_kbps, Some(7.0));
    }

    #[tokio::test]
    async fn every_mutation_is_conditional_on_owner_and_counter() {
        let store = InMemoryLeaseStore::new();
        store.create_if_absent(&lease("a")).await.unwrap();
        let seen = store.get("a").await.unwrap().unwrap();
        let mine = store.take(&seen, "w1", false).await.unwrap();
        assert_eq!(mine.lease_counter, 1);
        assert_eq!(mine.owner_switches_since_checkpoint, 1);
        // A second taker with the stale view conflicts and learns the current row.
        match store.take(&seen, "w2", false).await {
            Err(LeaseError::Conflict {
                actual: Some(row), ..
            }) => assert!(row.is_owned_by("w1")),
            other => panic!("expected conflict, got {other:?}"),
        }
        let renewed = store.renew(&mine).await.unwrap();
        assert_eq!(renewed.lease_counter, 2);
        assert!(store.renew(&mine).await.unwrap_err().is_conflict());
        assert!(store.evict(&mine).await.unwrap_err().is_conflict());
        assert!(store
            .mark_children(&mine, &BTreeSet::new())
            .await
            .unwrap_err()
            .is_conflict());
        assert!(store.delete(&mine).await.unwrap_err().is_conflict());
        let cp = ExtendedSequenceNumber::from_parts("5", 0).unwrap();
        assert!(store
            .update_checkpoint(&mine, "w1", &cp)
            .await
            .unwrap_err()
            .is_conflict());
        let after = store.update_checkpoint(&renewed, "w1", &cp).await.unwrap();
        assert_eq!(after.checkpoint, cp);
        assert_eq!(after.owner_switches_since_checkpoint, 0);
        let released = store.evict(&after).await.unwrap();
        assert_eq!(released.lease_owner, None);
        assert!(matches!(
            store.renew(&lease("zz")).await,
            Err(LeaseError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn handoff_lets_the_previous_owner_checkpoint_without_disturbing_the_new_one() {
        let store = InMemoryLeaseStore::new();
        store.create_if_absent(&lease("a")).await.unwrap();
        let seen = store.get("a").await.unwrap().unwrap();
        let old = store.take(&seen, "old", false).await.unwrap();
        let new = store.take(&old, "new", true).await.unwrap();
        assert_eq!(new.checkpoint_owner.as_deref(), Some("old"));
        let new = store.renew(&new).await.unwrap();
        // The old owner checkpoints with its stale view: allowed as checkpoint owner.
        let cp = ExtendedSequenceNumber::from_parts("9", 0).unwrap();
        let row = store.update_checkpoint(&old, "old", &cp).await.unwrap();
        assert_eq!(
            row.lease_counter, new.lease_counter,
            "hand-off checkpoint leaves the counter"
        );
        // The new owner cannot checkpoint until the hand-off is complete.
        assert!(store
            .update_checkpoint(&new, "new", &cp)
            .await
            .unwrap_err()
            .is_conflict());
        store.complete_handoff(&new).await.unwrap();
        assert!(store.complete_handoff(&new).await.unwrap_err().is_conflict());
        // ... and its renewals still work.
        let new = store.renew(&new).await.unwrap();
        assert_eq!(new.checkpoint_owner, None);
        assert_eq!(store.op_count(LeaseOp::Renew), 2);
    }
}
