//! Shard sync: keeps the lease table in step with the stream's shards.
//!
//! New shards get leases with their parents and hash key range. Where a new lease starts:
//! - a shard with a parent that is (or is about to be) leased starts at `TRIM_HORIZON` (or
//!   `AT_TIMESTAMP` when that is the initial position), so that nothing after the parent's end
//!   is missed; it waits for its parents at run time;
//! - any other open shard starts at the application's initial position;
//! - a closed shard without a leased ancestor gets a lease only when the initial position is
//!   `TRIM_HORIZON` or `AT_TIMESTAMP` (its records are wanted); with `LATEST` it is skipped.

use std::collections::{BTreeMap, BTreeSet};

use kcl_lease::{Lease, LeaseStore, StreamIdentifier};
use tracing::{debug, info};

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
    let mut decided: BTreeMap<String, Option<ExtendedSequenceNumber>> = BTreeMap::new();
    for shard in shards {
        decide(shard, &by_id, existing, initial, &mut decided, 0);
    }
    shards
        .iter()
        .filter_map(|shard| {
            let checkpoint = decided.get(&shard.shard_id)?.clone()?;
            if existing.contains(&shard.shard_id) {
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

/// Whether `shard` is or will be leased, and from where (memoised in `decided`).
fn decide(
    shard: &Shard,
    by_id: &BTreeMap<&str, &Shard>,
    existing: &BTreeSet<String>,
    initial: InitialPosition,
    decided: &mut BTreeMap<String, Option<ExtendedSequenceNumber>>,
    depth: usize,
) -> bool {
    if let Some(d) = decided.get(&shard.shard_id) {
        return d.is_some();
    }
    if existing.contains(&shard.shard_id) {
        // The checkpoint does not matter here, only that it is leased.
        decided.insert(shard.shard_id.clone(), Some(ExtendedSequenceNumber::TrimHorizon));
        return true;
    }
    let mut parent_leased = false;
    if depth < 10_000 {
        for parent in shard.parents() {
            if let Some(p) = by_id.get(parent) {
                parent_leased |= decide(p, by_id, existing, initial, decided, depth + 1);
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
    let shards = backend.list_shards(stream).await?;
    let existing: BTreeSet<String> = leases
        .iter()
        .filter(|l| l.stream().as_ref() == stream_id)
        .map(|l| l.shard_id().to_owned())
        .collect();
    let mut created = 0;
    for lease in leases_to_create(&shards, &existing, initial) {
        let lease = match stream_id {
            None => lease,
            Some(id) => {
                let mut multi = Lease::for_stream(id, &lease.lease_key, lease.checkpoint.clone());
                multi.parent_shard_ids = lease.parent_shard_ids;
                multi.hash_key_range = lease.hash_key_range;
                multi
            }
        };
        if store.create_if_absent(&lease).await? {
            debug!(lease = %lease.lease_key, checkpoint = %lease.checkpoint, "created lease");
            created += 1;
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
    fn existing_leases_are_not_recreated() {
        let existing = BTreeSet::from(["p".to_owned(), "a".to_owned(), "b".to_owned()]);
        assert!(leases_to_create(&split_stream(), &existing, InitialPosition::TrimHorizon).is_empty());
    }
}
