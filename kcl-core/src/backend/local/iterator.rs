//! Shard iterators: their format (`kcl-local-iterator/v1/<stream>/<shard>/<position>/<issued>`,
//! read from the right, as a stream name may hold `/`;
//! the position a counter and the issue time milliseconds since the backend's epoch), parsing
//! and expiry, where each `IteratorPosition` starts, and `GetShardIterator` and `GetRecords`
//! through them.
//!
//! An iterator carries everything needed to continue reading, so the backend keeps no state
//! per iterator; it is rejected once older than the configured time to live, when malformed,
//! or when given for another stream.

use tokio::time::Instant;

use super::stream::{parse_sequence_number, StreamState};
use super::{invalid, shard_not_found, LocalBackend, MAX_GET_RECORDS};
use crate::backend::{BackendError, GetRecordsOutput, IteratorPosition};

const ITERATOR_PREFIX: &str = "kcl-local-iterator/v1/";
const MAX_ITERATOR_LEN: usize = 512;

impl LocalBackend {
    fn millis_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.inner.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn iterator(&self, stream: &str, shard_id: &str, position: u64, now: Instant) -> String {
        let issued = self.millis_since_epoch(now);
        format!("{ITERATOR_PREFIX}{stream}/{shard_id}/{position}/{issued}")
    }

    pub(super) fn get_records_now(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        let it = ParsedIterator::parse(iterator)?;
        if it.stream != stream {
            return Err(invalid("the shard iterator is not one of this stream's"));
        }
        let now = Instant::now();
        let now_ms = self.millis_since_epoch(now);
        if it.issued_ms > now_ms {
            return Err(invalid("shard iterator was issued in the future"));
        }
        let ttl_ms = u64::try_from(self.inner.config.iterator_ttl.as_millis()).unwrap_or(u64::MAX);
        if now_ms - it.issued_ms > ttl_ms {
            return Err(BackendError::ExpiredIterator);
        }
        let limit = limit.clamp(1, MAX_GET_RECORDS);

        let mut streams = self.lock();
        let stream = streams
            .get_mut(it.stream)
            .ok_or_else(|| BackendError::StreamNotFound(it.stream.to_owned()))?;
        stream.trim_shard(it.shard, now);
        let shard = stream
            .shards
            .get_mut(it.shard)
            .ok_or_else(|| shard_not_found(it.shard))?;
        if let Some(limiter) = shard.limiter.as_mut() {
            limiter.admit(now, it.shard)?;
        }
        let batch = shard.read(it.position, limit);
        if let Some(limiter) = shard.limiter.as_mut() {
            limiter.consume(batch.bytes);
        }
        let finished = batch.finished;
        let next_position = batch.next_position;
        let mut out = GetRecordsOutput {
            records: batch.records,
            millis_behind_latest: batch.millis_behind_latest,
            ..Default::default()
        };
        if finished {
            out.child_shards = stream.children_of(it.shard);
        } else {
            out.next_iterator = Some(self.iterator(it.stream, it.shard, next_position, now));
        }
        Ok(out)
    }

    pub(super) fn get_shard_iterator_now(
        &self,
        stream_name: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        let (position, now) = self.with_stream(stream_name, |s, now| {
            Ok((s.start_position(shard_id, position, now)?, now))
        })?;
        Ok(self.iterator(stream_name, shard_id, position, now))
    }
}

impl StreamState {
    /// The counter a read at `position` starts from (after trimming the shard).
    pub(super) fn start_position(
        &mut self,
        shard_id: &str,
        position: &IteratorPosition,
        now: Instant,
    ) -> Result<u64, BackendError> {
        let sequence = match position {
            IteratorPosition::AtSequenceNumber(s) | IteratorPosition::AfterSequenceNumber(s) => {
                Some(parse_sequence_number(s)?)
            }
            _ => None,
        };
        self.trim_shard(shard_id, now);
        let next_seq = self.next_seq;
        let shard = self
            .shards
            .get(shard_id)
            .ok_or_else(|| shard_not_found(shard_id))?;
        if let Some(n) = sequence {
            let last = shard.end.unwrap_or_else(|| shard.start.max(next_seq - 1));
            if n < shard.start || n > last {
                return Err(invalid(format!(
                    "sequence number {n} does not belong to shard {shard_id}"
                )));
            }
        }
        Ok(match position {
            IteratorPosition::TrimHorizon => 0,
            IteratorPosition::Latest => next_seq,
            IteratorPosition::AtSequenceNumber(_) => sequence.unwrap_or(0),
            IteratorPosition::AfterSequenceNumber(_) => sequence.map_or(0, |n| n + 1),
            IteratorPosition::AtTimestamp(ts) => shard
                .records
                .iter()
                .find(|r| r.record.approximate_arrival_timestamp >= *ts)
                .map_or(next_seq, |r| r.counter),
        })
    }
}

/// A decoded shard iterator.
struct ParsedIterator<'a> {
    stream: &'a str,
    shard: &'a str,
    position: u64,
    issued_ms: u64,
}

impl<'a> ParsedIterator<'a> {
    fn parse(iterator: &'a str) -> Result<Self, BackendError> {
        let malformed = || invalid("malformed shard iterator");
        if iterator.len() > MAX_ITERATOR_LEN {
            return Err(malformed());
        }
        let rest = iterator.strip_prefix(ITERATOR_PREFIX).ok_or_else(malformed)?;
        // From the right: a stream name may hold `/` (a table's stream is named by its ARN).
        let mut parts = rest.rsplitn(4, '/');
        let (Some(issued), Some(position), Some(shard), Some(stream)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        if stream.is_empty() || shard.is_empty() {
            return Err(malformed());
        }
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            s.parse::<u64>().map_err(|_| malformed())
        };
        Ok(Self {
            stream,
            shard,
            position: number(position)?,
            issued_ms: number(issued)?,
        })
    }
}
#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::backend::local::testing::{backend, datas, put, read_all, shard_id, S};
    use crate::backend::{BackendOp, StreamBackend};
    use crate::record::SequenceNumber;

    #[tokio::test]
    async fn every_iterator_position() {
        let b = backend(1);
        let sh = shard_id(0);
        let mut seqs = Vec::new();
        for i in 0..5 {
            seqs.push(put(&b, "k", &i.to_string()).await.sequence_number);
        }
        assert_eq!(
            datas(&read_all(&b, &sh, IteratorPosition::TrimHorizon).await),
            ["0", "1", "2", "3", "4"]
        );
        let at = read_all(&b, &sh, IteratorPosition::AtSequenceNumber(seqs[2].clone())).await;
        assert_eq!(datas(&at), ["2", "3", "4"]);
        let after = read_all(&b, &sh, IteratorPosition::AfterSequenceNumber(seqs[2].clone())).await;
        assert_eq!(datas(&after), ["3", "4"]);

        let latest = b
            .get_shard_iterator(S, &sh, &IteratorPosition::Latest)
            .await
            .unwrap();
        let out = b.get_records(S, &latest, 100).await.unwrap();
        assert!(out.records.is_empty());
        assert_eq!(out.millis_behind_latest, 0);
        put(&b, "k", "5").await;
        let out = b.get_records(S, &out.next_iterator.unwrap(), 100).await.unwrap();
        assert_eq!(datas(&out), ["5"]);

        let past = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(
            read_all(&b, &sh, IteratorPosition::AtTimestamp(past))
                .await
                .records
                .len(),
            6
        );
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert!(read_all(&b, &sh, IteratorPosition::AtTimestamp(future))
            .await
            .records
            .is_empty());
        let ts = SystemTime::now();
        put(&b, "k", "6").await;
        let got = datas(&read_all(&b, &sh, IteratorPosition::AtTimestamp(ts)).await);
        // "5" arrived before `ts` unless the wall clock did not tick in between.
        assert!(got == ["6"] || got == ["5", "6"], "{got:?}");

        // Foreign and malformed sequence numbers, unknown shards and streams.
        let pos = |s: &str| IteratorPosition::AtSequenceNumber(SequenceNumber::new(s).unwrap());
        for foreign in [
            "12345",
            "4900000000000000000000000000000000000099",
            "59000000000000000000000000000000000000001",
        ] {
            assert!(matches!(
                b.get_shard_iterator(S, &sh, &pos(foreign)).await,
                Err(BackendError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            b.get_shard_iterator(S, "shardId-000000000009", &IteratorPosition::Latest)
                .await,
            Err(BackendError::ShardNotFound(_))
        ));
        assert!(matches!(
            b.get_shard_iterator("other", &sh, &IteratorPosition::Latest)
                .await,
            Err(BackendError::StreamNotFound(_))
        ));
    }

    #[tokio::test]
    async fn limit_is_respected_and_reading_continues() {
        let b = backend(1);
        for i in 0..25 {
            put(&b, "k", &i.to_string()).await;
        }
        let mut it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut behind = Vec::new();
        for _ in 0..3 {
            let out = b.get_records(S, &it, 10).await.unwrap();
            assert!(out.records.len() <= 10);
            seen.extend(datas(&out));
            behind.push(out.millis_behind_latest);
            it = out.next_iterator.unwrap();
        }
        assert_eq!(seen, (0..25).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(*behind.last().unwrap(), 0);
        // A zero limit is clamped to one.
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        assert_eq!(b.get_records(S, &it, 0).await.unwrap().records.len(), 1);
        assert_eq!(b.op_count(BackendOp::GetRecords), 4);
        assert_eq!(b.op_count(BackendOp::GetShardIterator), 2);
    }

    #[tokio::test]
    async fn iterators_expire_and_malformed_ones_are_rejected() {
        tokio::time::pause();
        let b = LocalBackend::builder()
            .iterator_ttl(Duration::from_secs(60))
            .build();
        b.create_stream(S, 1).unwrap();
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        let next = b.get_records(S, &it, 10).await.unwrap().next_iterator.unwrap();
        tokio::time::advance(Duration::from_millis(60_001)).await;
        assert!(matches!(
            b.get_records(S, &it, 10).await,
            Err(BackendError::ExpiredIterator)
        ));
        assert!(matches!(
            b.get_records(S, &next, 10).await,
            Err(BackendError::ExpiredIterator)
        ));

        let fresh = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        for bad in [
            "",
            "garbage",
            "kcl-local-iterator/v1/test/shardId-000000000000/0",
            "kcl-local-iterator/v1/test/shardId-000000000000/x/0",
            "kcl-local-iterator/v1/test/shardId-000000000000/0/0/extra",
            "kcl-local-iterator/v1/test/shardId-000000000000/0/99999999999999",
            "kcl-local-iterator/v1/test/shardId-000000000000/-1/0",
        ] {
            assert!(
                matches!(
                    b.get_records(S, bad, 10).await,
                    Err(BackendError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let renamed = fresh.replace("/test/", "/other/");
        assert!(matches!(
            b.get_records("other", &renamed, 10).await,
            Err(BackendError::StreamNotFound(_))
        ));
        // An iterator of one stream given as another's.
        assert!(matches!(
            b.get_records(S, &renamed, 10).await,
            Err(BackendError::InvalidArgument(_))
        ));
        let moved = fresh.replace("shardId-000000000000", "shardId-000000000042");
        assert!(matches!(
            b.get_records(S, &moved, 10).await,
            Err(BackendError::ShardNotFound(_))
        ));
    }
}
