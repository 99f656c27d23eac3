//! Shard sync: keeps the lease table in step with the stream's shards.
//!
//! New shards get leases with their parents and hash key range. Where a new lease starts:
//! - a shard with a parent that is (or is about to be) leased starts at `TRIM_HORIZON` (or
//!   `AT_TIMESTAMP` when that is the initial position), so that nothing after the parent's end
//!   is missed; it waits for its parents at run time;
//! - any other open shard starts at the application's initial position;
//! - a closed shard without a leased ancestor gets a lease only when the initial position is
//!   `TRIM_HORIZON` or `AT_TIMESTAMP` (its records are wanted); with `LATEST` it is skipped;
//! - a shard with a leased descendant never gets a lease again: it was processed, and its lease
//!   deleted once its children were under way (see [`finished_leases_to_delete`]).
//!
//! Finished leases (`SHARD_END`) are deleted once every child has a lease whose processing has
//! started (a checkpoint at a sequence number, or `SHARD_END`), as the Java KCL's lease clean-up
//! does, so that a long-lived application that reshards often keeps a small table.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use kcl_lease::{Lease, LeaseStore, StreamIdentifier};
use tracing::{debug, info, warn};

use crate::backend::StreamBackend;
use crate::config::InitialPosition;
use crate::error::KclError;
use crate::record::{ExtendedSequenceNumber, Shard};

/// The leases to create for `shards`, given the keys already in the table.
pub fn leases_to_create(
    shards: &[Shard],
    existing: &BTreeSet<String>,
    initial: InitialPosition,
) -> Vec<Lease> {
    let by_id: BTreeMap<&str, &Shard> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let covered = with_leased_descendants(shards, existing);
    let mut decided: BTreeMap<String, Option<ExtendedSequenceNumber>> = BTreeMap::new();
    for shard in shards {
        decide(shard, &by_id, existing, &covered, initial, &mut decided, 0);
    }
    shards
        .iter()
        .filter_map(|shard| {
            let checkpoint = decided.get(&shard.shard_id)?.clone()?;
            if existing.contains(&shard.shard_id) || covered.contains(shard.shard_id.as_str()) {
                return None;
            }
            Some(
                Lease::new(&shard.shard_id, checkpoint)
                    .with_parents(shard.parents().map(str::to_owned))
                    .with_hash_key_range(shard.hash_key_range),
            )
        })
        .collect()
}

/// The shards (of `shards`) that have a descendant with a lease: they were processed before.
fn with_leased_descendants<'a>(shards: &'a [Shard], existing: &BTreeSet<String>) -> BTreeSet<&'a str> {
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for shard in shards {
        for parent in shard.parents() {
            children.entry(parent).or_default().push(shard.shard_id.as_str());
        }
    }
    // Walk up from every leased shard; each ancestor in the list is covered.
    let by_id: BTreeMap<&str, &Shard> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let mut covered = BTreeSet::new();
    let mut stack: Vec<&str> = shards
        .iter()
        .filter(|s| existing.contains(&s.shard_id))
        .map(|s| s.shard_id.as_str())
        .collect();
    while let Some(id) = stack.pop() {
        let Some(shard) = by_id.get(id) else { continue };
        for parent in shard.parents() {
            if let Some((key, _)) = by_id.get_key_value(parent) {
                if covered.insert(*key) {
                    stack.push(key);
                }
            }
        }
    }
    covered
}

/// Whether `shard` is or will be leased, and from where (memoised in `decided`).
fn decide(
    shard: &Shard,
    by_id: &BTreeMap<&str, &Shard>,
    existing: &BTreeSet<String>,
    covered: &BTreeSet<&str>,
    initial: InitialPosition,
    decided: &mut BTreeMap<String, Option<ExtendedSequenceNumber>>,
    depth: usize,
) -> bool {
    if let Some(d) = decided.get(&shard.shard_id) {
        return d.is_some();
    }
    if existing.contains(&shard.shard_id) || covered.contains(shard.shard_id.as_str()) {
        // The checkpoint does not matter here, only that it is leased.
        decided.insert(shard.shard_id.clone(), Some(ExtendedSequenceNumber::TrimHorizon));
        return true;
    }
    let mut parent_leased = false;
    if depth < 10_000 {
        for parent in shard.parents() {
            if let Some(p) = by_id.get(parent) {
                parent_leased |= decide(p, by_id, existing, covered, initial, decided, depth + 1);
            } else if existing.contains(parent) {
                parent_leased = true;
            }
        }
    }
    let initial_checkpoint = match initial {
        InitialPosition::Latest => ExtendedSequenceNumber::Latest,
        InitialPosition::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
        InitialPosition::AtTimestamp(_) => ExtendedSequenceNumber::AtTimestamp,
    };
    let checkpoint = if parent_leased {
        match initial {
            InitialPosition::AtTimestamp(_) => Some(ExtendedSequenceNumber::AtTimestamp),
            _ => Some(ExtendedSequenceNumber::TrimHorizon),
        }
    } else if shard.is_open() || initial != InitialPosition::Latest {
        Some(initial_checkpoint)
    } else {
        None
    };
    let leased = checkpoint.is_some();
    decided.insert(shard.shard_id.clone(), checkpoint);
    leased
}

/// At most this many lease creations in flight at once.
const CREATE_CONCURRENCY: usize = 32;

/// Creates one lease (keyed for `stream_id` in multi-stream mode); whether it was created.
async fn create(
    store: &dyn LeaseStore,
    stream_id: Option<&StreamIdentifier>,
    lease: Lease,
) -> Result<bool, kcl_lease::LeaseError> {
    let lease = match stream_id {
        None => lease,
        Some(id) => {
            let mut multi = Lease::for_stream(id, &lease.lease_key, lease.checkpoint.clone());
            multi.parent_shard_ids = lease.parent_shard_ids;
            multi.hash_key_range = lease.hash_key_range;
            multi
        }
    };
    let created = store.create_if_absent(&lease).await?;
    if created {
        debug!(lease = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
    }
    Ok(created)
}

/// Lists the shards and leases and creates the missing leases. Returns how many were created.
pub async fn sync_shards(
    backend: &dyn StreamBackend,
    store: &dyn LeaseStore,
    stream: &str,
    initial: InitialPosition,
) -> Result<usize, KclError> {
    let leases = store.list().await?;
    sync_stream(backend, store, &leases, stream, None, initial).await
}

/// Creates the missing leases of one stream, given the lease table's rows. With a stream
/// identifier (multi-stream mode) the leases are keyed `account:stream:creationEpoch:shardId`
/// and only that stream's rows count as existing.
pub async fn sync_stream(
    backend: &dyn StreamBackend,
    store: &dyn LeaseStore,
    leases: &[Lease],
    stream: &str,
    stream_id: Option<&StreamIdentifier>,
    initial: InitialPosition,
) -> Result<usize, KclError> {
    Ok(
        sync_stream_drain(backend, store, leases, stream, stream_id, initial)
            .await?
            .0,
    )
}

/// Whether a stream still has shards to read, as the shard sync sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Some shard is open (the usual case), or leases were created this round.
    Open,
    /// Every shard is closed, some lease is not finished yet.
    Draining,
    /// Every shard is closed and every lease of the stream finished (`SHARD_END`): nothing is
    /// left to read unless the stream gets new shards.
    Drained,
}

/// [`sync_stream`], and whether the stream is drained (see [`Drain`]).
pub(crate) async fn sync_stream_drain(
    backend: &dyn StreamBackend,
    store: &dyn LeaseStore,
    leases: &[Lease],
    stream: &str,
    stream_id: Option<&StreamIdentifier>,
    initial: InitialPosition,
) -> Result<(usize, Drain), KclError> {
    let shards = backend.list_shards(stream).await?;
    let ours: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.stream().as_ref() == stream_id)
        .collect();
    let existing: BTreeSet<String> = ours.iter().map(|l| l.shard_id().to_owned()).collect();
    let created = create_missing(store, &shards, &existing, stream, stream_id, initial).await?;
    let drain = if created > 0 || shards.iter().any(Shard::is_open) {
        Drain::Open
    } else if ours.iter().all(|l| l.is_finished()) {
        Drain::Drained
    } else {
        Drain::Draining
    };
    Ok((created, drain))
}

/// Creates the leases `leases_to_create` picks, parents first; returns how many.
async fn create_missing(
    store: &dyn LeaseStore,
    shards: &[Shard],
    existing: &BTreeSet<String>,
    stream: &str,
    stream_id: Option<&StreamIdentifier>,
    initial: InitialPosition,
) -> Result<usize, KclError> {
    let mut created = 0;
    let mut pending = leases_to_create(shards, existing, initial);
    // Parents before children (a child whose parent has no lease yet would not wait for it),
    // and within one generation a bounded number of creations at once: a new application
    // with thousands of shards gets its leases in seconds, not one round trip at a time.
    while !pending.is_empty() {
        let waiting: BTreeSet<String> = pending.iter().map(|l| l.lease_key.clone()).collect();
        let (ready, later): (Vec<Lease>, Vec<Lease>) = pending
            .into_iter()
            .partition(|l| l.parent_shard_ids.iter().all(|p| !waiting.contains(p)));
        if ready.is_empty() {
            // A cycle cannot come from Kinesis; create the rest in order rather than loop.
            warn!(
                stream,
                leases = later.len(),
                "shard lineage has a cycle; creating the rest in order"
            );
            for lease in later {
                created += usize::from(create(store, stream_id, lease).await?);
            }
            break;
        }
        pending = later;
        let results: Vec<Result<bool, kcl_lease::LeaseError>> = futures_util::stream::iter(ready)
            .map(|lease| create(store, stream_id, lease))
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            created += usize::from(r?);
        }
    }
    if created > 0 {
        info!(
            stream,
            created,
            shards = shards.len(),
            "shard sync created leases"
        );
    }
    Ok(created)
}

/// The finished leases (`SHARD_END`) that can go: every child shard (from `childShardIds`, and
/// any lease naming it as a parent) has a lease whose processing has started.
pub fn finished_leases_to_delete(leases: &[Lease]) -> Vec<&Lease> {
    let by_key: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();
    // Parent lease key to the keys of the leases that name it as a parent.
    let mut named_by: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for lease in leases {
        for parent in &lease.parent_shard_ids {
            named_by
                .entry(lease.sibling_key(parent))
                .or_default()
                .push(lease.lease_key.as_str());
        }
    }
    leases
        .iter()
        .filter(|lease| lease.is_finished())
        .filter(|lease| {
            let mut children: BTreeSet<String> = lease
                .child_shard_ids
                .iter()
                .map(|c| lease.sibling_key(c))
                .collect();
            if let Some(named) = named_by.get(&lease.lease_key) {
                children.extend(named.iter().map(|k| (*k).to_owned()));
            }
            !children.is_empty()
                && children.iter().all(|child| {
                    by_key.get(child.as_str()).is_some_and(|c| {
                        matches!(
                            c.checkpoint,
                            ExtendedSequenceNumber::Sequence { .. } | ExtendedSequenceNumber::ShardEnd
                        )
                    })
                })
        })
        .collect()
}

/// Deletes the finished leases that [`finished_leases_to_delete`] picks; returns how many.
/// A lease changed since `leases` was read is left for the next round.
pub async fn delete_finished_leases(store: &dyn LeaseStore, leases: &[Lease]) -> usize {
    let mut deleted = 0;
    for lease in finished_leases_to_delete(leases) {
        match store.delete(lease).await {
            Ok(()) => {
                debug!(lease = %lease.lease_key, "deleted finished lease");
                deleted += 1;
            }
            Err(kcl_lease::LeaseError::Conflict { .. } | kcl_lease::LeaseError::NotFound(_)) => {}
            Err(e) => warn!(lease = %lease.lease_key, error = %e, "deleting a finished lease failed"),
        }
    }
    if deleted > 0 {
        info!(deleted, "deleted finished leases whose children are under way");
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{HashKeyRange, SequenceNumber};

    fn shard(id: &str, parents: &[&str], open: bool) -> Shard {
        Shard {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            hash_key_range: HashKeyRange::FULL,
            starting_sequence_number: SequenceNumber::new("1").unwrap(),
            ending_sequence_number: (!open).then(|| SequenceNumber::new("2").unwrap()),
        }
    }

    fn keys(leases: &[Lease]) -> Vec<(&str, String)> {
        leases
            .iter()
            .map(|l| (l.lease_key.as_str(), l.checkpoint.to_string()))
            .collect()
    }

    /// p (closed) split into a and b (open).
    fn split_stream() -> Vec<Shard> {
        vec![
            shard("p", &[], false),
            shard("a", &["p"], true),
            shard("b", &["p"], true),
        ]
    }

    #[test]
    fn latest_on_a_new_application_leases_only_open_shards() {
        let leases = leases_to_create(&split_stream(), &BTreeSet::new(), InitialPosition::Latest);
        assert_eq!(keys(&leases), [("a", "LATEST".into()), ("b", "LATEST".into())]);
    }

    #[test]
    fn trim_horizon_leases_ancestors_and_children_start_at_trim_horizon() {
        let leases = leases_to_create(&split_stream(), &BTreeSet::new(), InitialPosition::TrimHorizon);
        assert_eq!(keys(&leases).len(), 3);
        let a = leases.iter().find(|l| l.lease_key == "a").unwrap();
        assert_eq!(a.parent_shard_ids, BTreeSet::from(["p".to_owned()]));
    }

    #[test]
    fn children_of_leased_shards_start_at_trim_horizon_even_with_latest() {
        let existing = BTreeSet::from(["p".to_owned()]);
        let leases = leases_to_create(&split_stream(), &existing, InitialPosition::Latest);
        assert_eq!(
            keys(&leases),
            [("a", "TRIM_HORIZON".into()), ("b", "TRIM_HORIZON".into())]
        );
    }

    #[test]
    fn merge_children_record_both_parents() {
        let shards = vec![
            shard("x", &[], false),
            shard("y", &[], false),
            shard("m", &["x", "y"], true),
        ];
        let existing = BTreeSet::from(["x".to_owned(), "y".to_owned()]);
        let leases = leases_to_create(&shards, &existing, InitialPosition::Latest);
        assert_eq!(leases.len(), 1);
        assert_eq!(
            leases[0].parent_shard_ids,
            BTreeSet::from(["x".to_owned(), "y".to_owned()])
        );
        assert_eq!(leases[0].checkpoint, ExtendedSequenceNumber::TrimHorizon);
    }

    #[test]
    fn ancestors_of_leased_shards_are_never_leased_again() {
        // p's lease was deleted after a and b started: p must not come back (at TRIM_HORIZON it
        // would be read again from the start), and neither must its ancestors.
        let mut shards = split_stream();
        shards.insert(0, shard("g", &[], false));
        shards[1] = shard("p", &["g"], false);
        let existing = BTreeSet::from(["a".to_owned()]);
        let leases = leases_to_create(&shards, &existing, InitialPosition::TrimHorizon);
        assert_eq!(
            keys(&leases),
            [("b", "TRIM_HORIZON".into())],
            "only p's other child"
        );
        let existing = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert!(leases_to_create(&shards, &existing, InitialPosition::TrimHorizon).is_empty());
    }

    fn lease(key: &str, cp: ExtendedSequenceNumber, parents: &[&str], children: &[&str]) -> Lease {
        let mut l = Lease::new(key, cp).with_parents(parents.iter().copied());
        l.child_shard_ids = children.iter().map(|c| (*c).to_owned()).collect();
        l
    }

    #[test]
    fn finished_leases_go_once_every_child_is_under_way() {
        let seq = || ExtendedSequenceNumber::at(SequenceNumber::new("5").unwrap(), 0);
        let end = ExtendedSequenceNumber::ShardEnd;
        let th = ExtendedSequenceNumber::TrimHorizon;
        let names = |v: Vec<&Lease>| v.into_iter().map(|l| l.lease_key.clone()).collect::<Vec<_>>();
        // One child started, the other not yet.
        let leases = vec![
            lease("p", end.clone(), &[], &["a", "b"]),
            lease("a", seq(), &["p"], &[]),
            lease("b", th.clone(), &["p"], &[]),
        ];
        assert!(finished_leases_to_delete(&leases).is_empty());
        // Both started.
        let leases = vec![
            lease("p", end.clone(), &[], &["a", "b"]),
            lease("a", seq(), &["p"], &[]),
            lease("b", end.clone(), &["p"], &[]),
        ];
        assert_eq!(names(finished_leases_to_delete(&leases)), ["p"]);
        // A child lease missing: keep the parent.
        let leases = vec![
            lease("p", end.clone(), &[], &["a", "b"]),
            lease("a", seq(), &["p"], &[]),
        ];
        assert!(finished_leases_to_delete(&leases).is_empty());
        // No childShardIds recorded: the children are found by their parentShardId.
        let leases = vec![lease("x", end.clone(), &[], &[]), lease("m", seq(), &["x"], &[])];
        assert_eq!(names(finished_leases_to_delete(&leases)), ["x"]);
        // A finished shard with no known child stays.
        let leases = vec![lease("lonely", end, &[], &[])];
        assert!(finished_leases_to_delete(&leases).is_empty());
        // Not finished: stays.
        let leases = vec![lease("p", seq(), &[], &["a"]), lease("a", seq(), &["p"], &[])];
        assert!(finished_leases_to_delete(&leases).is_empty());
    }

    #[test]
    fn existing_leases_are_not_recreated() {
        let existing = BTreeSet::from(["p".to_owned(), "a".to_owned(), "b".to_owned()]);
        assert!(leases_to_create(&split_stream(), &existing, InitialPosition::TrimHorizon).is_empty());
    }

    /// A stream whose shards all close (a DynamoDB stream disabled) is draining until every
    /// lease is finished, then drained; while a shard is open it is not.
    #[tokio::test]
    async fn a_stream_with_every_shard_closed_is_drained_once_every_lease_is_finished() {
        use crate::backend::local::{KeySchema, LocalBackend};
        use crate::dynamodb_streams::StreamViewType;
        use kcl_lease::InMemoryLeaseStore;

        let backend = LocalBackend::new();
        let stream = backend
            .create_table("orders", KeySchema::hash("pk"), StreamViewType::KeysOnly, 2)
            .unwrap();
        let store = InMemoryLeaseStore::new();
        let sync = |store: InMemoryLeaseStore| {
            let (backend, stream) = (backend.clone(), stream.clone());
            async move {
                let leases = store.list().await.unwrap();
                sync_stream_drain(
                    &backend,
                    &store,
                    &leases,
                    &stream,
                    None,
                    InitialPosition::TrimHorizon,
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(sync(store.clone()).await, (2, Drain::Open));
        assert_eq!(sync(store.clone()).await, (0, Drain::Open));
        backend.disable_stream("orders").unwrap();
        assert_eq!(sync(store.clone()).await, (0, Drain::Draining));
        let leases = store.list().await.unwrap();
        let owned = store.take(&leases[0], "w", false).await.unwrap();
        store
            .update_checkpoint(&owned, "w", &ExtendedSequenceNumber::ShardEnd)
            .await
            .unwrap();
        assert_eq!(sync(store.clone()).await, (0, Drain::Draining));
        let owned = store.take(&leases[1], "w", false).await.unwrap();
        store
            .update_checkpoint(&owned, "w", &ExtendedSequenceNumber::ShardEnd)
            .await
            .unwrap();
        assert_eq!(sync(store.clone()).await, (0, Drain::Drained));
    }
}
