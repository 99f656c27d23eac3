//! Resharding: `split_shard` and `merge_shards`, with Kinesis lineage, and `rotate_shards`, with
//! DynamoDB Streams lineage.
//!
//! All close their parents (the ending sequence number is the last one issued, and the
//! counter moves past it, so children start strictly after their parents end) and add the
//! children with the next shard ids; a closed parent stays readable to its end, where
//! `GetRecords` names its children.

use tokio::time::Instant;

use super::stream::{sequence_number, StreamState};
use super::{invalid, LocalBackend};
use crate::backend::BackendError;
use crate::record::HashKeyRange;

impl LocalBackend {
    /// Splits an open shard at `new_starting_hash_key` (which must satisfy
    /// `start < new_starting_hash_key <= end`). The shard is closed; returns the ids of the
    /// lower and the upper child.
    pub fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<(String, String), BackendError> {
        let limits = self.inner.config.read_limits;
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            let range = s.open_shard(shard_id)?.shard.hash_key_range;
            if !(range.start < new_starting_hash_key && new_starting_hash_key <= range.end) {
                return Err(invalid(format!(
                    "new starting hash key {new_starting_hash_key} is not inside ({range}] of {shard_id}"
                )));
            }
            s.close(&[shard_id], now);
            let lower = HashKeyRange {
                start: range.start,
                end: new_starting_hash_key - 1,
            };
            let upper = HashKeyRange {
                start: new_starting_hash_key,
                end: range.end,
            };
            let a = s.add_shard(lower, Some(shard_id), None, limits, now);
            let b = s.add_shard(upper, Some(shard_id), None, limits, now);
            Ok((a, b))
        })
        .inspect(|_| self.changed())
    }

    /// Merges two open shards whose hash key ranges touch into one. Both are closed; the child
    /// has `shard_id` as parent and `adjacent_shard_id` as adjacent parent. Returns its id.
    pub fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<String, BackendError> {
        let limits = self.inner.config.read_limits;
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            if shard_id == adjacent_shard_id {
                return Err(invalid(format!("cannot merge {shard_id} with itself")));
            }
            let a = s.open_shard(shard_id)?.shard.hash_key_range;
            let b = s.open_shard(adjacent_shard_id)?.shard.hash_key_range;
            let touch = |x: HashKeyRange, y: HashKeyRange| x.end.checked_add(1) == Some(y.start);
            if !touch(a, b) && !touch(b, a) {
                return Err(invalid(format!(
                    "{shard_id} ({a}) and {adjacent_shard_id} ({b}) are not adjacent"
                )));
            }
            s.close(&[shard_id, adjacent_shard_id], now);
            let union = HashKeyRange {
                start: a.start.min(b.start),
                end: a.end.max(b.end),
            };
            Ok(s.add_shard(union, Some(shard_id), Some(adjacent_shard_id), limits, now))
        })
        .inspect(|_| self.changed())
    }
}

impl LocalBackend {
    /// Rotates every open shard of `stream`, as DynamoDB Streams does about every four hours:
    /// each open shard is closed and one child, with the same hash key range and the shard as
    /// its parent, opens in its place. Returns `(parent, child)` pairs. A consumer finishes each
    /// parent before it starts the child, so the order of the changes to an item is kept.
    pub fn rotate_shards(&self, stream: &str) -> Result<Vec<(String, String)>, BackendError> {
        let limits = self.inner.config.read_limits;
        self.with_stream(stream, |s, now| {
            s.trim_all(now);
            let open: Vec<(String, HashKeyRange)> = s
                .shards
                .values()
                .filter(|sh| sh.end.is_none())
                .map(|sh| (sh.shard.shard_id.clone(), sh.shard.hash_key_range))
                .collect();
            let ids: Vec<&str> = open.iter().map(|(id, _)| id.as_str()).collect();
            s.close(&ids, now);
            Ok(open
                .iter()
                .map(|(parent, range)| {
                    let child = s.add_shard(*range, Some(parent), None, limits, now);
                    (parent.clone(), child)
                })
                .collect())
        })
        .inspect(|_| self.changed())
    }
}

impl StreamState {
    /// Closes the (open, existing) shards: their ending sequence number is the last one issued
    /// in the stream, or their starting one if none was issued since. The counter moves past
    /// it, so children start strictly after their parents end.
    pub(super) fn close(&mut self, ids: &[&str], now: Instant) {
        let last_issued = self.next_seq - 1;
        for id in ids {
            if let Some(shard) = self.shards.get_mut(*id) {
                let end = last_issued.max(shard.start);
                shard.end = Some(end);
                shard.closed_at = Some(now);
                shard.shard.ending_sequence_number = Some(sequence_number(end));
                self.next_seq = self.next_seq.max(end + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::backend::local::testing::{backend, datas, put, read_all, shard_id, S};
    use crate::backend::{IteratorPosition, StreamBackend};

    #[tokio::test]
    async fn split_closes_the_parent_and_reports_children_at_its_end() {
        let b = backend(1);
        let parent = shard_id(0);
        put(&b, "a", "before-0").await;
        let last = put(&b, "b", "before-1").await;
        let middle = 1u128 << 127;
        assert!(matches!(
            b.split_shard(S, &parent, 0),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.split_shard(S, "shardId-000000000007", 1),
            Err(BackendError::ShardNotFound(_))
        ));
        let (low, high) = b.split_shard(S, &parent, middle).unwrap();
        assert_eq!(
            (low.as_str(), high.as_str()),
            ("shardId-000000000001", "shardId-000000000002")
        );
        assert!(matches!(
            b.split_shard(S, &parent, middle),
            Err(BackendError::InvalidArgument(_))
        ));

        let shards = b.shards(S).unwrap();
        assert_eq!(shards.len(), 3);
        assert_eq!(
            shards[0].ending_sequence_number.as_ref(),
            Some(&last.sequence_number)
        );
        assert_eq!(shards[1].parent_shard_id.as_deref(), Some(parent.as_str()));
        assert_eq!(
            shards[1].hash_key_range,
            HashKeyRange {
                start: 0,
                end: middle - 1
            }
        );
        assert_eq!(
            shards[2].hash_key_range,
            HashKeyRange {
                start: middle,
                end: u128::MAX
            }
        );
        assert!(shards[1].starting_sequence_number > last.sequence_number);
        assert!(shards[1].is_open() && shards[2].is_open());

        // New puts go to the children.
        let r = put(&b, "a", "after").await;
        assert!(r.shard_id == low || r.shard_id == high);
        assert!(r.sequence_number >= shards[1].starting_sequence_number);
        let r = b
            .put_record(S, "x", Bytes::new(), Some(&middle.to_string()))
            .await
            .unwrap();
        assert_eq!(r.shard_id, high);

        // The parent is readable to its end, then has no next iterator and names its children.
        let it = b
            .get_shard_iterator(S, &parent, &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let out = b.get_records(S, &it, 1).await.unwrap();
        assert_eq!(datas(&out), ["before-0"]);
        let out = b.get_records(S, &out.next_iterator.unwrap(), 10).await.unwrap();
        assert_eq!(datas(&out), ["before-1"]);
        assert_eq!(out.next_iterator, None);
        let children: Vec<_> = out.child_shards.iter().map(|c| c.shard_id.clone()).collect();
        assert_eq!(children, [low.clone(), high.clone()]);
        assert_eq!(out.child_shards[0].parent_shards, [parent.as_str()]);
        assert_eq!(out.child_shards[1].hash_key_range, shards[2].hash_key_range);
        // LATEST on a closed shard is at its end at once.
        let out = read_all(&b, &parent, IteratorPosition::Latest).await;
        assert!(out.records.is_empty() && out.next_iterator.is_none() && out.child_shards.len() == 2);
        // Its ending sequence number is still a valid position.
        let out = read_all(
            &b,
            &parent,
            IteratorPosition::AfterSequenceNumber(last.sequence_number),
        )
        .await;
        assert!(out.records.is_empty() && out.next_iterator.is_none());
    }

    #[tokio::test]
    async fn merge_joins_adjacent_open_shards() {
        let b = backend(3);
        put(&b, "a", "x").await;
        assert!(matches!(
            b.merge_shards(S, &shard_id(0), &shard_id(2)),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.merge_shards(S, &shard_id(0), &shard_id(0)),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.merge_shards(S, &shard_id(0), "nope"),
            Err(BackendError::ShardNotFound(_))
        ));
        // Merge in either order of adjacency.
        let child = b.merge_shards(S, &shard_id(2), &shard_id(1)).unwrap();
        assert_eq!(child, shard_id(3));
        let shards = b.shards(S).unwrap();
        let c = &shards[3];
        assert_eq!(c.parent_shard_id.as_deref(), Some("shardId-000000000002"));
        assert_eq!(
            c.adjacent_parent_shard_id.as_deref(),
            Some("shardId-000000000001")
        );
        assert_eq!(c.hash_key_range.start, shards[1].hash_key_range.start);
        assert_eq!(c.hash_key_range.end, u128::MAX);
        assert!(!shards[1].is_open() && !shards[2].is_open());
        assert!(c.starting_sequence_number > *shards[1].ending_sequence_number.as_ref().unwrap());
        assert!(matches!(
            b.merge_shards(S, &shard_id(1), &shard_id(0)),
            Err(BackendError::InvalidArgument(_))
        ));
        let out = read_all(&b, &shard_id(1), IteratorPosition::TrimHorizon).await;
        assert_eq!(out.next_iterator, None);
        assert_eq!(out.child_shards.len(), 1);
        assert_eq!(out.child_shards[0].parent_shards, [shard_id(2), shard_id(1)]);
        // Merge the child with shard 0: the whole key space again.
        let all = b.merge_shards(S, &shard_id(0), &child).unwrap();
        let r = put(&b, "a", "y").await;
        assert_eq!(r.shard_id, all);
        assert_eq!(
            b.shards(S).unwrap().last().unwrap().hash_key_range,
            HashKeyRange::FULL
        );
    }
}
