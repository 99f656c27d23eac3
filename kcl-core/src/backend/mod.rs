//! Stream backends: the `StreamBackend` trait (what the consumer needs of Kinesis), the bundled
//! in-process stream, and a wrapper that injects faults into any backend.
//!
//! The AWS SDK implementation lives beside these and implements the same trait. Two ways of
//! reading are modelled: polling (`get_shard_iterator` + `get_records`) and enhanced fan-out
//! (`register_consumer` + `subscribe_to_shard`, which pushes [`SubscribeEvent`]s through a
//! [`ShardSubscription`]). A backend that cannot fan out keeps the default methods, which answer
//! [`BackendError::Unsupported`].

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use thiserror::Error;

use crate::record::{ChildShard, Record, SequenceNumber, Shard};
use crate::stream_arn::StreamArn;
use kcl_lease::StreamIdentifier;

#[cfg(feature = "dynamodb-streams")]
pub mod dynamodb_streams;
#[cfg(any(test, feature = "testing"))]
pub mod failure;
#[cfg(feature = "kinesis")]
pub mod kinesis;
pub mod local;
mod op;
pub mod routing;

pub use op::BackendOp;

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
    /// No such enhanced fan-out consumer.
    #[error("stream consumer {0} not found")]
    ConsumerNotFound(String),
    /// The request was malformed (bad iterator, bad sequence number, bad argument).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The resource is busy (`ResourceInUseException`): a fan-out consumer that is not active
    /// yet, or another subscription to the same shard by the same consumer (including one that
    /// replaced ours). Retry after a delay.
    #[error("resource in use: {0}")]
    ResourceInUse(String),
    /// The backend does not offer this operation (e.g. enhanced fan-out).
    #[error("not supported by this backend: {0}")]
    Unsupported(String),
    /// The credentials were refused or lack a permission for this call
    /// (`AccessDeniedException`, `UnrecognizedClientException`). Fatal: retrying with the same
    /// credentials and policy cannot succeed.
    #[error("access denied ({0}); check the credentials and that the IAM policy allows this call")]
    AccessDenied(String),
    /// The stream is encrypted with a KMS key that cannot be used (disabled, deleted, not
    /// allowed: `KMSDisabledException`, `KMSAccessDeniedException`, ...). Fatal.
    #[error("the stream's KMS key cannot be used: {0}")]
    Kms(String),
    /// The stream has as many registered enhanced fan-out consumers as it allows (20 on
    /// provisioned and On-demand Standard streams, 50 on On-demand Advantage ones), and the
    /// application's is not one of them. Fatal for the stream: deregister an unused consumer, or
    /// read by polling.
    #[error(
        "the stream has as many fan-out consumers as it allows: {0}; deregister one, or read by polling"
    )]
    ConsumerLimit(String),
    /// The stream has ended for good: a DynamoDB stream disabled on its table (or gone). Fatal
    /// for the stream; raised once every record still readable has been read (see
    /// [`StreamBackend::check_stream_ended`]), or at once when the stream no longer exists.
    #[error(transparent)]
    StreamDisabled(StreamDisabled),
    /// Anything else: transport failures, service errors, permissions.
    #[error("backend error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How a stream ended for good ([`BackendError::StreamDisabled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// Being disabled (`StreamStatus` `DISABLING`): its shards close, no new changes arrive.
    Disabling,
    /// Disabled (`StreamStatus` `DISABLED`): its records stay readable for 24 hours, no new
    /// ones arrive.
    Disabled,
    /// Gone (`ResourceNotFoundException`: disabled more than 24 hours ago, or deleted with
    /// its table).
    Deleted,
}

impl std::fmt::Display for StreamEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disabling => "being disabled (StreamStatus DISABLING)",
            Self::Disabled => "disabled (StreamStatus DISABLED)",
            Self::Deleted => "gone (ResourceNotFoundException)",
        })
    }
}

/// A DynamoDB stream that was disabled on its table, or is gone: what stops the worker (the
/// stream, in multi-stream mode) once the records still readable are processed. Names the
/// stream's ARN and, when the table has a newer stream, that one's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDisabled {
    /// The stream (its ARN).
    pub stream: String,
    /// How it ended.
    pub end: StreamEnd,
    /// The table's `LatestStreamArn`, when the table has a newer stream that is enabled (a
    /// stream enabled again is a new stream, with a new ARN and new shards).
    pub latest_stream_arn: Option<String>,
}

impl std::fmt::Display for StreamDisabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the DynamoDB stream {} is {}", self.stream, self.end)?;
        if self.end != StreamEnd::Deleted {
            f.write_str("; every record still in it was processed")?;
        }
        match &self.latest_stream_arn {
            Some(latest) => write!(
                f,
                "; its table has a newer stream, {latest}: consume that one (by its ARN, or by the table)"
            ),
            None => f.write_str(
                "; no newer stream is enabled on its table (enable one with StreamSpecification to consume the table's changes again)",
            ),
        }
    }
}

impl std::error::Error for StreamDisabled {}

impl BackendError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::ResourceInUse(_) | Self::Other(_))
    }

    /// Whether retrying can never succeed: access denied, an unusable KMS key, or a stream that
    /// does not exist or has ended for good (for that stream).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::AccessDenied(_)
                | Self::Kms(_)
                | Self::StreamNotFound(_)
                | Self::ConsumerLimit(_)
                | Self::StreamDisabled(_)
        )
    }

    /// An `Other` error from a message.
    pub fn other(msg: impl Into<String>) -> Self {
        Self::Other(msg.into().into())
    }
}

/// The resource tags of an enhanced fan-out consumer, set when it is registered.
pub type ConsumerTags = std::collections::BTreeMap<String, String>;

/// A sequence number a service returned; one that is not a number is a backend error.
#[cfg(any(feature = "kinesis", feature = "dynamodb-streams"))]
pub(crate) fn service_sequence(s: &str) -> Result<SequenceNumber, BackendError> {
    SequenceNumber::new(s).map_err(|e| BackendError::other(e.to_string()))
}

/// The state of an enhanced fan-out consumer (`ConsumerStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerStatus {
    /// Registered, not yet usable.
    Creating,
    /// Usable: shards may be subscribed to.
    Active,
    /// Being deregistered.
    Deleting,
}

/// An enhanced fan-out consumer registered on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    /// The consumer's name (unique per stream).
    pub name: String,
    /// The consumer's ARN, which `subscribe_to_shard` takes.
    pub arn: String,
    /// Whether it can be used yet.
    pub status: ConsumerStatus,
}

/// One event pushed through an enhanced fan-out subscription.
#[derive(Clone, Debug, Default)]
pub struct SubscribeEvent {
    /// The records, in shard order (possibly none: the service also sends empty events).
    pub records: Vec<Record>,
    /// Where a new subscription resumes (`AFTER_SEQUENCE_NUMBER`); `None` once a closed shard
    /// has been read to its end (then `child_shards` lists its children).
    pub continuation_sequence_number: Option<SequenceNumber>,
    /// How far the last record is behind the tip of the shard, in milliseconds.
    pub millis_behind_latest: u64,
    /// At the end of a closed shard: its children.
    pub child_shards: Vec<ChildShard>,
}

/// A live `SubscribeToShard` subscription: a stream of events that the service ends after
/// five minutes. Dropping it closes the subscription.
#[async_trait]
pub trait ShardSubscription: Send {
    /// The next event; `Ok(None)` when the subscription ended normally (its five minutes are
    /// up, or the shard's end was delivered). An error ends the subscription too
    /// ([`BackendError::ResourceInUse`] when another subscription replaced it).
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, BackendError>;
}

/// A Kinesis-like stream, as a consumer needs it.
///
/// Implemented by [`local::LocalBackend`], `KinesisBackend` (feature `kinesis`),
/// `DynamoDbStreamsBackend` (feature `dynamodb-streams`) and the
/// wrappers ([`routing::RoutingBackend`], `failure::FailureBackend`); the scheduler needs
/// nothing else of a stream.
///
/// ```
/// use kcl_core::{IteratorPosition, LocalBackend, StreamBackend};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), kcl_core::BackendError> {
/// let stream = LocalBackend::new();
/// stream.create_stream("orders", 1)?;
/// stream.put_record("orders", "key", "hello".into(), None).await?;
/// let shard = &stream.list_shards("orders").await?[0];
/// let iterator = stream
///     .get_shard_iterator("orders", &shard.shard_id, &IteratorPosition::TrimHorizon)
///     .await?;
/// let out = stream.get_records("orders", &iterator, 100).await?;
/// assert_eq!(&out.records[0].data[..], b"hello");
/// # Ok(())
/// # }
/// ```
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

    /// Up to `limit` records from `iterator`, an iterator of a shard of `stream` (the stream is
    /// named too so that the call can carry its ARN and be routed by stream).
    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError>;

    /// Tells the backend that `arn` names the stream `arn.stream_name` (a [`StreamConfig`]
    /// given by ARN): a backend that can address streams by ARN makes every call on that
    /// stream with it. Called by the scheduler before the stream is used, possibly again; the
    /// default ignores it.
    ///
    /// [`StreamConfig`]: crate::StreamConfig
    fn name_by_arn(&self, arn: &StreamArn) {
        let _ = arn;
    }

    /// The stream's identity for multi-stream lease keys: its account and creation time
    /// (`DescribeStreamSummary`).
    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        let _ = stream;
        Err(BackendError::Unsupported(
            "describing a stream (DescribeStreamSummary)".into(),
        ))
    }

    /// Called by the shard sync once every shard of `stream` is closed and every leased one
    /// has been read to its end: whether the stream has ended for good. A DynamoDB stream
    /// disabled on its table (or gone) is [`BackendError::StreamDisabled`], which stops the
    /// worker (the stream, in multi-stream mode) with its ARN instead of leaving it idle; any
    /// other error is retried at the next sync. The default, `Ok(())`, is right for Kinesis,
    /// where closed shards have open children (or the stream is gone, which `list_shards` says).
    async fn check_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        let _ = stream;
        Ok(())
    }

    /// Registers an enhanced fan-out consumer on `stream` with `tags` (the consumer's resource
    /// tags, set at registration; none when empty), or returns the one registered under that
    /// name already (idempotent; its tags are left as they are). It may still be
    /// [`ConsumerStatus::Creating`]. A stream that is not `ACTIVE` (`UPDATING`) refuses new
    /// consumers for a while: [`BackendError::ResourceInUse`], retried by the caller.
    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        let _ = (stream, consumer_name, tags);
        Err(BackendError::Unsupported(
            "enhanced fan-out (RegisterStreamConsumer)".into(),
        ))
    }

    /// The consumer registered on `stream` under `consumer_name`.
    async fn describe_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let _ = (stream, consumer_name);
        Err(BackendError::Unsupported(
            "enhanced fan-out (DescribeStreamConsumer)".into(),
        ))
    }

    /// Subscribes the consumer (registered on `stream`) to one shard from `position`.
    async fn subscribe_to_shard(
        &self,
        stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Box<dyn ShardSubscription>, BackendError> {
        let _ = (stream, consumer_arn, shard_id, position);
        Err(BackendError::Unsupported(
            "enhanced fan-out (SubscribeToShard)".into(),
        ))
    }
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
    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        (**self).get_records(stream, iterator, limit).await
    }
    fn name_by_arn(&self, arn: &StreamArn) {
        (**self).name_by_arn(arn);
    }
    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        (**self).stream_identifier(stream).await
    }
    async fn check_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        (**self).check_stream_ended(stream).await
    }
    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        (**self).register_consumer(stream, consumer_name, tags).await
    }
    async fn describe_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        (**self).describe_consumer(stream, consumer_name).await
    }
    async fn subscribe_to_shard(
        &self,
        stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Box<dyn ShardSubscription>, BackendError> {
        (**self)
            .subscribe_to_shard(stream, consumer_arn, shard_id, position)
            .await
    }
}
