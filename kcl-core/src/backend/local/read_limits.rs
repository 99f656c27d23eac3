//! Per-shard read limits for polling consumers: [`ReadLimits`] (the configuration, off by
//! default, [`ReadLimits::KINESIS`] for the service's 5 calls and 2 MiB per second) and the token
//! buckets that enforce them, one pair per shard.
//!
//! They let tests see `Throttled` the way a provisioned stream gives it; fan-out subscriptions
//! are not subject to them.

use tokio::time::Instant;

use crate::backend::BackendError;

/// Per-shard read limits, enforced with token buckets. Exceeding either gives
/// [`BackendError::Throttled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// `GetRecords` calls per second per shard (the bucket holds one second's worth).
    pub reads_per_second: u32,
    /// Payload bytes per second per shard. A call may overdraw the bucket (up to
    /// [`MAX_GET_RECORDS_BYTES`](super::MAX_GET_RECORDS_BYTES)); further calls are throttled until it has refilled.
    pub bytes_per_second: u64,
}

impl ReadLimits {
    /// The limits of a provisioned Kinesis shard: 5 reads and 2 MiB per second.
    pub const KINESIS: ReadLimits = ReadLimits {
        reads_per_second: 5,
        bytes_per_second: 2 * 1024 * 1024,
    };
}

/// Token buckets for one shard's reads.
pub(super) struct Limiter {
    limits: ReadLimits,
    calls: f64,
    bytes: f64,
    refilled: Instant,
}

impl Limiter {
    pub(super) fn new(limits: ReadLimits, now: Instant) -> Self {
        Self {
            limits,
            calls: limits.reads_per_second.into(),
            bytes: limits.bytes_per_second as f64,
            refilled: now,
        }
    }

    /// Takes one call token, or fails if there is none or the byte bucket is overdrawn.
    pub(super) fn admit(&mut self, now: Instant, shard_id: &str) -> Result<(), BackendError> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let calls_cap = f64::from(self.limits.reads_per_second);
        let bytes_cap = self.limits.bytes_per_second as f64;
        self.calls = (self.calls + elapsed * calls_cap).min(calls_cap);
        self.bytes = (self.bytes + elapsed * bytes_cap).min(bytes_cap);
        self.refilled = now;
        if self.calls < 1.0 {
            return Err(BackendError::Throttled(format!(
                "more than {} GetRecords calls per second on {shard_id}",
                self.limits.reads_per_second
            )));
        }
        if self.bytes <= 0.0 {
            return Err(BackendError::Throttled(format!(
                "more than {} bytes per second read from {shard_id}",
                self.limits.bytes_per_second
            )));
        }
        self.calls -= 1.0;
        Ok(())
    }

    pub(super) fn consume(&mut self, bytes: usize) {
        self.bytes -= bytes as f64;
    }
}
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::backend::local::testing::{shard_id, S};
    use crate::backend::local::LocalBackend;
    use crate::backend::{IteratorPosition, StreamBackend};

    #[tokio::test]
    async fn read_limits_throttle_then_recover() {
        tokio::time::pause();
        let limits = ReadLimits {
            reads_per_second: 5,
            bytes_per_second: 1000,
        };
        let b = LocalBackend::builder().read_limits(Some(limits)).build();
        b.create_stream(S, 2).unwrap();
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        for _ in 0..5 {
            b.get_records(S, &it, 10).await.unwrap();
        }
        assert!(matches!(
            b.get_records(S, &it, 10).await,
            Err(BackendError::Throttled(_))
        ));
        // Other shards have their own budget.
        let other = b
            .get_shard_iterator(S, &shard_id(1), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        b.get_records(S, &other, 10).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let it = b
            .get_shard_iterator(S, &shard_id(0), &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        b.get_records(S, &it, 10).await.unwrap();

        // Bytes: one large read overdraws the bucket, the next call waits for the refill.
        b.put_record(S, "a", Bytes::from(vec![0; 3000]), None)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let out = b.get_records(S, &it, 10).await.unwrap();
        assert_eq!(out.records.len(), 1);
        let next = out.next_iterator.unwrap();
        assert!(matches!(
            b.get_records(S, &next, 10).await,
            Err(BackendError::Throttled(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            b.get_records(S, &next, 10).await,
            Err(BackendError::Throttled(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.get_records(S, &next, 10).await.unwrap().records.is_empty());
    }
}
