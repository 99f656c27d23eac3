//! Stream backends: the `StreamBackend` trait (what the consumer needs of Kinesis), the bundled
//! in-process stream, and a wrapper that injects faults into any backend.
//!
//! The AWS SDK implementation lives beside these and implements the same trait.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use thiserror::Error;

use crate::record::{ChildShard, Record, SequenceNumber, Shard};

pub mod failure;
pub mod kinesis;
pub mod local;

/// Where a shard iterator starts (`ShardIteratorType` plus its argument).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IteratorPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Just after the newest record: only records put from now on.
    Latest,
    /// At the record with this sequence number.
    AtSequenceNumber(SequenceNumber),
    /// Just after the record with this sequence number.
    AfterSequenceNumber(SequenceNumber),
    /// At the first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

/// What one `GetRecords` call returns.
#[derive(Clone, Debug, Default)]
pub struct GetRecordsOutput {
    /// The records, in shard order (possibly none).
    pub records: Vec<Record>,
    /// Where to read next; `None` once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
    /// How far the last returned record is behind the tip of the shard, in milliseconds.
    pub millis_behind_latest: u64,
    /// At the end of a closed shard: its children.
    pub child_shards: Vec<ChildShard>,
}

/// What can go wrong with a stream-backend call. Every backend can produce each of these;
/// anything specific goes in [`BackendError::Other`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The per-shard or per-account limit was exceeded (`ProvisionedThroughputExceeded`,
    /// `LimitExceeded`); retry after a delay.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The shard iterator is older than the backend accepts (5 minutes on Kinesis); get a new
    /// one from the last delivered position.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// No such stream.
    #[error("stream {0} not found")]
    StreamNotFound(String),
    /// No such shard in the stream.
    #[error("shard {0} not found")]
    ShardNotFound(String),
    /// The request was malformed (bad iterator, bad sequence number, bad argument).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Anything else: transport failures, service errors, permissions.
    #[error("backend error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Other(_))
    }

    /// An `Other` error from a message.
    pub fn other(msg: impl Into<String>) -> Self {
        Self::Other(msg.into().into())
    }
}

/// A Kinesis-like stream, as a consumer needs it.
#[async_trait]
pub trait StreamBackend: Send + Sync + 'static {
    /// Every shard of the stream that is still within retention, open and closed, with parents
    /// and hash key ranges.
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError>;

    /// A shard iterator at `position`.
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError>;

    /// Up to `limit` records from `iterator`.
    async fn get_records(&self, iterator: &str, limit: usize) -> Result<GetRecordsOutput, BackendError>;
}

#[async_trait]
impl<T: StreamBackend + ?Sized> StreamBackend for Arc<T> {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        (**self).list_shards(stream).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        (**self).get_shard_iterator(stream, shard_id, position).await
    }
    async fn get_records(&self, iterator: &str, limit: usize) -> Result<GetRecordsOutput, BackendError> {
        (**self).get_records(iterator, limit).await
    }
}
