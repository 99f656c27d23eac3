//! Behaviour every [`LeaseStore`] must show, as checks that run against any store: the
//! in-memory store's unit tests and the DynamoDB store's tests (on an emulator) call the same
//! function, so the two cannot drift apart (feature `testing`). Each check panics with what
//! differs.

use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;

/// `ownerWithoutHeartbeat` ([`Lease::owner_without_heartbeat`]): written by a renewal that
/// carries it and removed by one that does not, kept through a graceful steal (it is then about
/// the previous owner), removed by a plain take and by an eviction. Uses the lease key `key`,
/// which must not exist yet.
pub async fn owner_without_heartbeat_follows_renewals_and_takes(store: &dyn LeaseStore, key: &str) {
    let seen = new_row(store, key).await;
    let mut p = store.take(&seen, "p", false).await.expect("take");
    assert_eq!(p.owner_without_heartbeat, None);
    p.owner_without_heartbeat = Some("p".into());
    let p = store.renew(&p).await.expect("renew");
    assert_eq!(p.owner_without_heartbeat.as_deref(), Some("p"));
    let stolen = store.take(&p, "q", true).await.expect("steal");
    assert_eq!(stolen.checkpoint_owner.as_deref(), Some("p"));
    assert_eq!(
        stolen.owner_without_heartbeat.as_deref(),
        Some("p"),
        "kept through a hand-off"
    );
    let mut r = store.take(&stolen, "r", false).await.expect("take");
    assert_eq!(r.owner_without_heartbeat, None, "removed by a plain take");
    r.owner_without_heartbeat = Some("r".into());
    let mut r = store.renew(&r).await.expect("renew");
    r.owner_without_heartbeat = None;
    let mut r = store.renew(&r).await.expect("renew");
    assert_eq!(r.owner_without_heartbeat, None, "removed by a renewal without it");
    r.owner_without_heartbeat = Some("r".into());
    let r = store.renew(&r).await.expect("renew");
    let evicted = store.evict(&r).await.expect("evict");
    assert_eq!(evicted.owner_without_heartbeat, None, "removed by an eviction");
    assert_eq!(
        store.get(key).await.expect("get"),
        Some(evicted),
        "as the store returned it"
    );
}

/// `SHARD_END` is final for [`LeaseStore::update_checkpoint`]: once a lease is checkpointed at
/// the shard's end, a lower checkpoint is a conflict, for the owner and for the previous owner
/// of a hand-off (`checkpointOwner`), while `SHARD_END` again is accepted. An admin reset
/// ([`LeaseStore::reset_checkpoint`]) may still move it. Uses the lease key `key`, which must not
/// exist yet.
pub async fn shard_end_is_final_for_checkpoints(store: &dyn LeaseStore, key: &str) {
    use crate::error::LeaseError;
    let seen = new_row(store, key).await;
    let p = store.take(&seen, "p", false).await.expect("take");
    let p = store
        .update_checkpoint(&p, "p", &seq_at("100"))
        .await
        .expect("checkpoint");
    let ended = store
        .update_checkpoint(&p, "p", &ExtendedSequenceNumber::ShardEnd)
        .await
        .expect("SHARD_END");
    assert!(ended.checkpoint.is_shard_end());
    match store.update_checkpoint(&ended, "p", &seq_at("200")).await {
        Err(LeaseError::Conflict { .. }) => {}
        other => panic!("a checkpoint below SHARD_END by the owner: {other:?}"),
    }
    let ended = store
        .update_checkpoint(&ended, "p", &ExtendedSequenceNumber::ShardEnd)
        .await
        .expect("SHARD_END again");
    // A graceful steal: the previous owner writes as `checkpointOwner`.
    let stolen = store.take(&ended, "q", true).await.expect("steal");
    assert_eq!(stolen.checkpoint_owner.as_deref(), Some("p"));
    match store.update_checkpoint(&stolen, "p", &seq_at("200")).await {
        Err(LeaseError::Conflict { .. }) => {}
        other => panic!("a checkpoint below SHARD_END as checkpointOwner: {other:?}"),
    }
    let row = store.get(key).await.expect("get").expect("the row");
    assert!(row.checkpoint.is_shard_end(), "still SHARD_END: {row:?}");
    assert_eq!(row.checkpoint_owner.as_deref(), Some("p"));
    let reset = store
        .reset_checkpoint(&row, &ExtendedSequenceNumber::TrimHorizon)
        .await
        .expect("an admin reset moves it");
    assert_eq!(reset.checkpoint, ExtendedSequenceNumber::TrimHorizon);
}

/// `ownerRenewsByHeartbeat` ([`Lease::owner_renews_by_heartbeat`]): written with the new owner
/// by [`LeaseStore::take_heartbeat_renewed`] (a take or a steal), removed by a plain take, a
/// renewal, an eviction and an admin reset, kept by checkpoints. Uses the lease key `key`,
/// which must not exist yet.
pub async fn owner_renews_by_heartbeat_follows_takes(store: &dyn LeaseStore, key: &str) {
    let seen = new_row(store, key).await;
    let p = store
        .take_heartbeat_renewed(&seen, "p", false)
        .await
        .expect("take");
    assert_eq!(p.owner_renews_by_heartbeat.as_deref(), Some("p"));
    let p = store
        .update_checkpoint(&p, "p", &seq_at("100"))
        .await
        .expect("checkpoint");
    assert_eq!(
        p.owner_renews_by_heartbeat.as_deref(),
        Some("p"),
        "kept by a checkpoint"
    );
    let q = store.take_heartbeat_renewed(&p, "q", true).await.expect("steal");
    assert_eq!(q.checkpoint_owner.as_deref(), Some("p"));
    assert_eq!(
        q.owner_renews_by_heartbeat.as_deref(),
        Some("q"),
        "names the thief"
    );
    let r = store.take(&q, "r", false).await.expect("take");
    assert_eq!(r.owner_renews_by_heartbeat, None, "removed by a plain take");
    let s = store.take_heartbeat_renewed(&r, "s", false).await.expect("take");
    let renewed = store.renew(&s).await.expect("renew");
    assert_eq!(renewed.owner_renews_by_heartbeat, None, "removed by a renewal");
    let t = store
        .take_heartbeat_renewed(&renewed, "t", false)
        .await
        .expect("take");
    let evicted = store.evict(&t).await.expect("evict");
    assert_eq!(evicted.owner_renews_by_heartbeat, None, "removed by an eviction");
    let u = store
        .take_heartbeat_renewed(&evicted, "u", false)
        .await
        .expect("take");
    match store
        .reset_checkpoint(&u, &ExtendedSequenceNumber::TrimHorizon)
        .await
    {
        Ok(reset) => assert_eq!(reset.owner_renews_by_heartbeat, None, "removed by a reset"),
        Err(crate::error::LeaseError::Unsupported(_)) => {}
        Err(e) => panic!("reset: {e}"),
    }
    let row = store.get(key).await.expect("get").expect("the row");
    assert!(
        row.owner_renews_by_heartbeat.is_none() || row.owner_renews_by_heartbeat == row.lease_owner,
        "as the store returned it: {row:?}"
    );
}

/// `handoffFromCounter` ([`Lease::handoff_from_counter`]): a graceful steal records the counter
/// of the row it stole, and the previous owner's hand-off checkpoint lands only for that
/// holding: a late write of an earlier process with the same worker id (its row older) is a
/// conflict, whether it knew of the hand-off or not. Completing the hand-off removes the
/// attribute; so does a plain take. Uses the lease key `key`, which must not exist yet.
pub async fn a_hand_off_checkpoint_lands_only_for_the_holding_stolen_from(store: &dyn LeaseStore, key: &str) {
    use crate::error::LeaseError;
    let seen = new_row(store, key).await;
    // Process A of worker "p" holds the lease; it stops (a suspended host, a write in flight).
    let a = store.take(&seen, "p", false).await.expect("take");
    let a = store
        .update_checkpoint(&a, "p", &seq_at("100"))
        .await
        .expect("checkpoint");
    // q takes it, then process B of worker "p" steals it from q, and r steals it from B.
    let q = store.take(&a, "q", false).await.expect("take");
    let b = store.take(&q, "p", true).await.expect("steal");
    assert_eq!(b.handoff_from_counter, Some(q.lease_counter));
    let b = store.complete_handoff(&b).await.expect("hand-off done");
    assert_eq!(b.handoff_from_counter, None, "removed with checkpointOwner");
    let b = store
        .update_checkpoint(&b, "p", &seq_at("300"))
        .await
        .expect("checkpoint");
    let r = store.take(&b, "r", true).await.expect("steal");
    assert_eq!(r.checkpoint_owner.as_deref(), Some("p"));
    assert_eq!(r.handoff_from_counter, Some(b.lease_counter));
    // A's late writes, as it knew the row and as it would write the hand-off once it learnt of
    // it: both refused.
    for late in [
        a.clone(),
        Lease {
            lease_owner: Some("r".into()),
            checkpoint_owner: Some("p".into()),
            ..a.clone()
        },
    ] {
        match store.update_checkpoint(&late, "p", &seq_at("150")).await {
            Err(LeaseError::Conflict { .. }) => {}
            other => panic!("a late hand-off checkpoint of an earlier holding: {other:?}"),
        }
    }
    assert_eq!(
        store.get(key).await.expect("get").expect("the row").checkpoint,
        seq_at("300")
    );
    // B's own hand-off checkpoint lands.
    let handed = store
        .update_checkpoint(&b, "p", &seq_at("320"))
        .await
        .expect("B's hand-off checkpoint");
    assert_eq!(handed.checkpoint, seq_at("320"));
    assert_eq!(handed.lease_owner.as_deref(), Some("r"));
    let done = store.complete_handoff(&handed).await.expect("hand-off done");
    assert_eq!(done.handoff_from_counter, None);
    let plain = store.take(&done, "s", false).await.expect("take");
    assert_eq!(plain.handoff_from_counter, None);
}

/// [`LeaseStore::complete_handoff`] ends only the hand-off it names (thief, previous owner and
/// the counter stolen from): a completion that arrives late, after the lease moved on and was
/// stolen again from the same previous owner, is a conflict and leaves `checkpointOwner` in
/// place, so that the new thief does not start while the previous owner still processes
/// (simulator seed 38075 at 8 workers, 32 shards, per-lease renewal). Uses the lease key `key`,
/// which must not exist yet.
pub async fn a_late_completion_does_not_end_a_later_hand_off(store: &dyn LeaseStore, key: &str) {
    use crate::error::LeaseError;
    let seen = new_row(store, key).await;
    let p = store.take(&seen, "p", false).await.expect("take");
    // q steals it from p; the hand-off as both saw it.
    let first = store.take(&p, "q", true).await.expect("steal");
    assert_eq!(first.checkpoint_owner.as_deref(), Some("p"));
    let done = store.complete_handoff(&first).await.expect("hand-off done");
    assert_eq!(done.checkpoint_owner, None);
    assert_eq!(done.handoff_from_counter, None);
    // q stops renewing; p takes the lease back and processes; r steals it from p.
    let again = store.take(&done, "p", false).await.expect("take");
    let second = store.take(&again, "r", true).await.expect("steal");
    assert_eq!(second.checkpoint_owner.as_deref(), Some("p"));
    // The first hand-off's completion once more (q's, held up): refused, nothing changed.
    match store.complete_handoff(&first).await {
        Err(LeaseError::Conflict { .. }) => {}
        other => panic!("a late completion of an earlier hand-off: {other:?}"),
    }
    // Named right but for another thief, or another counter: refused too.
    for wrong in [
        Lease {
            lease_owner: Some("q".into()),
            ..second.clone()
        },
        Lease {
            handoff_from_counter: first.handoff_from_counter,
            ..second.clone()
        },
    ] {
        match store.complete_handoff(&wrong).await {
            Err(LeaseError::Conflict { .. }) => {}
            other => panic!("a completion of another hand-off: {other:?}"),
        }
    }
    let row = store.get(key).await.expect("get").expect("the row");
    assert_eq!(row, second, "as the second steal left it");
    // The second hand-off's own completion lands.
    let done = store.complete_handoff(&second).await.expect("hand-off done");
    assert_eq!(done.checkpoint_owner, None);
    assert!(done.is_owned_by("r"));
    assert_eq!(
        done.lease_counter, second.lease_counter,
        "the counter is left alone"
    );
}

/// Creates the lease `key` (which must not exist yet) and reads it back.
async fn new_row(store: &dyn LeaseStore, key: &str) -> Lease {
    assert!(store
        .create_if_absent(&Lease::new(key, ExtendedSequenceNumber::TrimHorizon))
        .await
        .expect("create"));
    store.get(key).await.expect("get").expect("the row")
}

/// A checkpoint at record `n`.
fn seq_at(n: &str) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::from_parts(n, 0).expect("a sequence number")
}
