//! The `LeaseStore` trait: the lease table as a remote service, every mutation conditional.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{LeaseError, Result};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;

/// A lease table. Implementations: [`crate::InMemoryLeaseStore`] (bundled, in process),
/// `FailureLeaseStore` (feature `testing`: wraps any store to inject faults), and
/// `DynamoDbLeaseStore` (feature `dynamodb`).
///
/// Every mutation is conditional on what the caller last saw of the row (the `expected`
/// argument: its owner and counter) and fails with [`crate::LeaseError::Conflict`] when the row
/// changed in between. Every successful mutation returns the row as it is now.
///
/// ```
/// use kcl_lease::{ExtendedSequenceNumber, InMemoryLeaseStore, Lease, LeaseError, LeaseStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LeaseError> {
/// let store = InMemoryLeaseStore::new();
/// let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
/// assert!(store.create_if_absent(&lease).await?);
/// let mine = store.take(&lease, "worker-a", false).await?;
/// let renewed = store.renew(&mine).await?;
/// assert!(renewed.lease_counter > mine.lease_counter);
/// // A write conditional on a row that has changed since is refused, and says what is there.
/// assert!(matches!(store.renew(&mine).await, Err(LeaseError::Conflict { .. })));
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Every lease in the table (a strongly consistent read).
    async fn list(&self) -> Result<Vec<Lease>>;

    /// Every lease in the table, possibly a little stale (an eventually consistent read, half
    /// the cost on DynamoDB). For callers whose every decision is checked by a conditional
    /// write. The default is [`LeaseStore::list`].
    async fn list_eventually_consistent(&self) -> Result<Vec<Lease>> {
        self.list().await
    }

    /// Writes a worker's heartbeat row if the row as it is now satisfies `condition` (or does
    /// not exist); else [`LeaseError::Conflict`] (keyed by the worker id). A worker writes its
    /// own row conditional on its incarnation, so that a second process started with the same
    /// id finds out. Stores without heartbeats answer [`LeaseError::Unsupported`] (the
    /// default), and workers then coordinate through the lease table alone.
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        let _ = (heartbeat, condition);
        Err(LeaseError::Unsupported("worker heartbeats".into()))
    }

    /// Every heartbeat row; a strongly consistent read if `consistent`.
    async fn list_heartbeats(&self, consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        let _ = consistent;
        Err(LeaseError::Unsupported("worker heartbeats".into()))
    }

    /// Deletes a worker's heartbeat row if it satisfies `condition` (else
    /// [`LeaseError::Conflict`]). A row already gone is not an error.
    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        let _ = (worker_id, condition);
        Err(LeaseError::Unsupported("worker heartbeats".into()))
    }

    /// One worker's heartbeat row, or `None` if there is none; a strongly consistent read if
    /// `consistent`. The divided watch reads one row per round this way (see
    /// [`crate::coordinator`]). The default reads every row ([`LeaseStore::list_heartbeats`]).
    async fn get_heartbeat(&self, worker_id: &str, consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        Ok(self
            .list_heartbeats(consistent)
            .await?
            .into_iter()
            .find(|row| row.worker_id == worker_id))
    }

    /// Increments the `nudges` of a worker's heartbeat row, if the row exists (a row that is
    /// gone needs no nudge: `Ok`). A worker that changed the lease table nudges every other
    /// worker's row, so that whoever watches that row looks at the table
    /// ([`WorkerHeartbeat::nudges`]). [`LeaseStore::put_heartbeat`] keeps a row's nudges.
    /// Stores that cannot answer [`LeaseError::Unsupported`] (the default), and their workers
    /// read every heartbeat row every round instead.
    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        let _ = worker_id;
        Err(LeaseError::Unsupported("heartbeat nudges".into()))
    }

    /// One lease, or `None` if there is no row with that key.
    async fn get(&self, key: &str) -> Result<Option<Lease>>;

    /// Creates the lease unless a row with its key exists. Returns whether it was created.
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool>;

    /// Renews: increments `leaseCounter`. Condition: owner and counter as in `expected`.
    /// If `expected.throughput_kbps` is set, it is written too (`throughputKBps`, in the same
    /// write: publishing the measured throughput costs no extra call).
    async fn renew(&self, expected: &Lease) -> Result<Lease>;

    /// Takes the lease for `new_owner`: sets the owner, increments the counter and, if the owner
    /// changes, `ownerSwitchesSinceCheckpoint`. With `handoff` and a current owner, that owner is
    /// kept as `checkpointOwner` so it can checkpoint before the new owner starts (graceful
    /// hand-off); otherwise `checkpointOwner` is cleared. Condition: owner and counter as in
    /// `expected`. The row's `ownerRenewsByHeartbeat` is removed (the new owner renews the
    /// lease row itself).
    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease>;

    /// [`LeaseStore::take`] for a worker that renews its leases through its heartbeat alone
    /// (worker renewal): the row also names `new_owner` in `ownerRenewsByHeartbeat`
    /// ([`Lease::owner_renews_by_heartbeat`]), so that a worker that cannot read the heartbeat
    /// table never takes the lease for a counter that stands still. A store that wraps
    /// another forwards it as it forwards `take`.
    async fn take_heartbeat_renewed(&self, expected: &Lease, new_owner: &str, handoff: bool)
        -> Result<Lease>;

    /// Releases the lease: removes the owner and `checkpointOwner`, increments the counter, so
    /// that any worker may take it at once. Condition: owner and counter as in `expected`.
    async fn evict(&self, expected: &Lease) -> Result<Lease>;

    /// Writes a checkpoint for `worker`, clears the pending checkpoint and resets
    /// `ownerSwitchesSinceCheckpoint`. Allowed when either `worker` owns the lease with the
    /// counter in `expected` and no hand-off is in progress (the counter is then incremented),
    /// or `worker` is the `checkpointOwner` of a hand-off in progress (the counter is left alone,
    /// so that the new owner's renewals are not disturbed). As the owner, a set
    /// `expected.throughput_kbps` is written too (as with [`LeaseStore::renew`]).
    ///
    /// When `expected` is the hand-off as `worker` learnt of it (`checkpointOwner` is `worker`,
    /// the owner another worker, the thief), only the second form is tried, and only while the
    /// thief still owns the lease: a worker that does not know `checkpointOwner` (the Java KCL
    /// 2.x) may have taken the lease since and left the attribute behind, and the previous
    /// owner's last checkpoint must not land on top of that worker's newer one (F10 of the
    /// coordination review).
    ///
    /// A row at `SHARD_END` takes no other checkpoint (a conflict): the end of a shard is final
    /// outside an admin reset ([`LeaseStore::reset_checkpoint`]), even for a writer whose
    /// earlier `SHARD_END` was applied with its reply lost.
    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease>;

    /// Ends the graceful hand-off `handoff` shows: its thief as `leaseOwner`, its previous owner
    /// as `checkpointOwner`, and the counter it was stolen from as `handoffFromCounter` (absent
    /// in a hand-off the Java KCL made). Clears `checkpointOwner` and `handoffFromCounter` if
    /// the row still shows that same hand-off; the counter is left alone. Any other row is a
    /// conflict: a completion that arrives late, after the lease moved on, must not end a later
    /// hand-off from the same previous owner, who may be processing the shard again (found by
    /// the simulator: seed 38075 at 8 workers, 32 shards, per-lease renewal, a thief's
    /// completion held up by a suspend of its host).
    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease>;

    /// Records the child shards of an ended shard and increments the counter. Condition: owner
    /// and counter as in `expected`.
    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease>;

    /// Deletes the lease. Condition: counter as in `expected`.
    async fn delete(&self, expected: &Lease) -> Result<()>;

    /// An operator's rewind (`kcl-admin reset`): sets the checkpoint, clears the pending
    /// checkpoint, the owner and `checkpointOwner`, resets `ownerSwitchesSinceCheckpoint` and
    /// increments the counter, so that the next worker to take the lease starts at
    /// `checkpoint` and a worker still holding it loses it at its next renewal. Condition:
    /// owner and counter as in `expected`. Stores that cannot do it answer
    /// [`LeaseError::Unsupported`] (the default).
    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        let _ = (expected, checkpoint);
        Err(LeaseError::Unsupported("resetting checkpoints".into()))
    }
}

#[async_trait]
impl<T: LeaseStore + ?Sized> LeaseStore for Arc<T> {
    async fn list(&self) -> Result<Vec<Lease>> {
        (**self).list().await
    }
    async fn list_eventually_consistent(&self) -> Result<Vec<Lease>> {
        (**self).list_eventually_consistent().await
    }
    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        (**self).put_heartbeat(heartbeat, condition).await
    }
    async fn list_heartbeats(&self, consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        (**self).list_heartbeats(consistent).await
    }
    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        (**self).delete_heartbeat(worker_id, condition).await
    }
    async fn get_heartbeat(&self, worker_id: &str, consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        (**self).get_heartbeat(worker_id, consistent).await
    }
    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        (**self).nudge_heartbeat(worker_id).await
    }
    async fn get(&self, key: &str) -> Result<Option<Lease>> {
        (**self).get(key).await
    }
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        (**self).create_if_absent(lease).await
    }
    async fn renew(&self, expected: &Lease) -> Result<Lease> {
        (**self).renew(expected).await
    }
    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease> {
        (**self).take(expected, new_owner, handoff).await
    }
    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> Result<Lease> {
        (**self)
            .take_heartbeat_renewed(expected, new_owner, handoff)
            .await
    }
    async fn evict(&self, expected: &Lease) -> Result<Lease> {
        (**self).evict(expected).await
    }
    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        (**self).update_checkpoint(expected, worker, checkpoint).await
    }
    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease> {
        (**self).complete_handoff(handoff).await
    }
    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease> {
        (**self).mark_children(expected, children).await
    }
    async fn delete(&self, expected: &Lease) -> Result<()> {
        (**self).delete(expected).await
    }
    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        (**self).reset_checkpoint(expected, checkpoint).await
    }
}

/// The thief of a hand-off `expected` describes as `worker` learnt of it (`checkpointOwner` is
/// `worker`, another worker owns the lease), if it does (see [`LeaseStore::update_checkpoint`]).
pub(crate) fn handoff_thief<'a>(expected: &'a Lease, worker: &str) -> Option<&'a str> {
    match (&expected.lease_owner, &expected.checkpoint_owner) {
        (Some(owner), Some(previous)) if previous == worker && owner != worker => Some(owner.as_str()),
        _ => None,
    }
}
