//! What a user writes: a [`RecordProcessor`] per shard, made by a [`ProcessorFactory`].
//!
//! The runtime calls the processor of a shard from one task, never concurrently, in this
//! order: `initialize` once, `process_records` for each batch in shard order, and then exactly
//! one of `shard_ended` (the shard was closed by a split or merge and fully read),
//! `shutdown_requested` (the worker is shutting down, or another worker took the lease with a
//! graceful hand-off), or `lease_lost` (the lease was taken after expiry; no checkpoint is
//! possible any more).
//!
//! Errors returned by `initialize`, `process_records` and `shard_ended` are retried with
//! backoff. For `process_records` the [`ProcessorFailurePolicy`] decides how long: by default
//! forever (the same batch is delivered again, records are never skipped); or, after a number
//! of attempts, the batch is handed to a [`FailedBatchHook`] (a dead-letter destination, say),
//! skipped and checkpointed past. A panic in `process_records` counts as a failure too.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;

use crate::checkpoint::Checkpointer;
use crate::record::{ExtendedSequenceNumber, Record};
use kcl_lease::StreamIdentifier;

/// The error a processor returns; any error type will do.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync>;

/// Given to [`RecordProcessor::initialize`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitializeInput {
    /// The shard this processor is for.
    pub shard_id: String,
    /// The stream the shard belongs to (one of several in a multi-stream application).
    pub stream_name: String,
    /// Where processing resumes: the lease's checkpoint.
    pub checkpoint: ExtendedSequenceNumber,
}

/// Given to [`RecordProcessor::process_records`].
#[non_exhaustive]
pub struct ProcessRecordsInput<'a> {
    /// The records of this batch, in shard order. Never empty.
    pub records: &'a [Record],
    /// How far behind the tip of the shard the last record is, in milliseconds.
    pub millis_behind_latest: u64,
    /// Checkpoints the shard.
    pub checkpointer: &'a Checkpointer,
    /// Which delivery of this batch this is: 1 the first time, 2 after one failure, ...
    pub attempt: u32,
}

/// Given to [`RecordProcessor::shard_ended`].
#[non_exhaustive]
pub struct ShardEndedInput<'a> {
    /// Call [`Checkpointer::checkpoint`] on it: at shard end that writes `SHARD_END`.
    pub checkpointer: &'a Checkpointer,
}

/// Given to [`RecordProcessor::shutdown_requested`].
#[non_exhaustive]
pub struct ShutdownRequestedInput<'a> {
    /// Checkpoints the shard one last time.
    pub checkpointer: &'a Checkpointer,
}

/// Given to [`RecordProcessor::lease_lost`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaseLostInput {
    /// The shard whose lease was lost.
    pub shard_id: String,
}

/// The processing of one shard. Implement this; the runtime does the rest.
///
/// ```
/// use async_trait::async_trait;
/// use kcl_core::processor::*;
///
/// struct Printer;
///
/// #[async_trait]
/// impl RecordProcessor for Printer {
///     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
///         for record in input.records {
///             println!("{} {}", record.partition_key, record.sequence_number);
///         }
///         input.checkpointer.checkpoint().await?;
///         Ok(())
///     }
///     // shard_ended's default checkpoints SHARD_END, which lets the child shards start.
/// }
/// ```
#[async_trait]
pub trait RecordProcessor: Send + 'static {
    /// Called once before the first batch. An error is retried with backoff.
    async fn initialize(&mut self, input: InitializeInput) -> Result<(), ProcessorError> {
        let _ = input;
        Ok(())
    }

    /// Processes one batch. Checkpoint when it suits you (after every batch is simplest). An
    /// error makes the runtime deliver the same batch again after a backoff.
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError>;

    /// The shard was closed (split or merged) and every record in it was delivered.
    ///
    /// **The shard must be checkpointed here** (`input.checkpointer.checkpoint()`), which
    /// records `SHARD_END`: the child shards do not start until every parent is checkpointed at
    /// `SHARD_END`. The default implementation does exactly that; override it to flush your own
    /// state first. If an override returns without that checkpoint, the runtime logs an error
    /// and calls `shard_ended` again after a backoff, as long as it holds the lease; the
    /// children wait. An error is retried the same way.
    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    /// The worker is shutting down, or another worker is taking the lease over gracefully.
    /// Checkpoint what you have processed so that the next owner does not see it again.
    /// An error is logged; the lease is handed over anyway.
    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        let _ = input;
        Ok(())
    }

    /// The lease was lost: another worker owns the shard now. Checkpointing is no longer
    /// possible; clean up and return quickly.
    async fn lease_lost(&mut self, input: LeaseLostInput) {
        let _ = input;
    }
}

/// The shard a processor is made for (see [`ProcessorFactory`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The shard's id (`shardId-000000000000`).
    pub shard_id: String,
    /// The name of the shard's stream.
    pub stream_name: String,
    /// Multi-stream applications: the stream's identity (account, name, creation time).
    pub stream: Option<StreamIdentifier>,
    /// The key of the shard's lease: the shard id, or in multi-stream applications
    /// `account:stream:creationEpoch:shardId`.
    pub lease_key: String,
}

impl ShardInfo {
    /// A shard of a single-stream application (its lease key is the shard id).
    pub fn new(stream_name: impl Into<String>, shard_id: impl Into<String>) -> Self {
        let shard_id = shard_id.into();
        Self {
            lease_key: shard_id.clone(),
            shard_id,
            stream_name: stream_name.into(),
            stream: None,
        }
    }

    /// A shard of a stream of a multi-stream application.
    pub fn of_stream(stream: StreamIdentifier, shard_id: impl Into<String>) -> Self {
        let shard_id = shard_id.into();
        Self {
            lease_key: stream.lease_key(&shard_id),
            stream_name: stream.stream_name.clone(),
            stream: Some(stream),
            shard_id,
        }
    }
}

/// Makes one processor per shard.
///
/// Any `Fn(&str) -> impl RecordProcessor` is a factory (it is given the shard id); wrap a
/// closure that wants the stream too in [`WithShardInfo`]:
///
/// ```
/// use kcl_core::{ProcessorFactory, ShardInfo, WithShardInfo};
/// # use kcl_core::{ProcessRecordsInput, ProcessorError, RecordProcessor};
/// # struct Printer { stream: String }
/// # #[async_trait::async_trait]
/// # impl RecordProcessor for Printer {
/// #     async fn process_records(&mut self, _: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> { Ok(()) }
/// # }
/// let by_shard_id = |shard_id: &str| Printer { stream: shard_id.to_owned() };
/// let by_stream = WithShardInfo(|shard: &ShardInfo| Printer { stream: shard.stream_name.clone() });
/// let shard = ShardInfo::new("orders", "shardId-000000000000");
/// let _one = by_shard_id.create(&shard);
/// let _two = by_stream.create(&shard);
/// ```
pub trait ProcessorFactory: Send + Sync + 'static {
    /// A new processor for `shard`.
    fn create(&self, shard: &ShardInfo) -> Box<dyn RecordProcessor>;
}

impl<F, P> ProcessorFactory for F
where
    F: Fn(&str) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    /// Calls the closure with the shard id.
    fn create(&self, shard: &ShardInfo) -> Box<dyn RecordProcessor> {
        Box::new(self(&shard.shard_id))
    }
}

/// A factory from a closure given the whole [`ShardInfo`] (shard id, stream, lease key).
#[derive(Clone, Copy, Debug)]
pub struct WithShardInfo<F>(pub F);

impl<F, P> ProcessorFactory for WithShardInfo<F>
where
    F: Fn(&ShardInfo) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    fn create(&self, shard: &ShardInfo) -> Box<dyn RecordProcessor> {
        Box::new((self.0)(shard))
    }
}

/// What the runtime does when `process_records` fails (returns an error or panics) on a batch.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ProcessorFailurePolicy {
    /// Deliver the same batch again after a backoff, forever (the default): nothing is skipped,
    /// but a batch that can never succeed stops its shard.
    #[default]
    RetryForever,
    /// After `attempts` failed deliveries, give the batch to `hook` (if any; retried until it
    /// succeeds), then skip it: checkpoint after its last record and go on with the next batch.
    SkipAfter {
        /// Failed deliveries before the batch is skipped (1 skips after the first failure).
        attempts: NonZeroU32,
        /// Called with the batch before it is skipped, e.g. to send it to a dead-letter queue.
        hook: Option<Arc<dyn FailedBatchHook>>,
    },
}

impl ProcessorFailurePolicy {
    /// Skip a batch after `attempts` failed deliveries, handing it to `hook` first.
    pub fn skip_after(attempts: NonZeroU32, hook: impl FailedBatchHook) -> Self {
        ProcessorFailurePolicy::SkipAfter {
            attempts,
            hook: Some(Arc::new(hook)),
        }
    }
}

impl fmt::Debug for ProcessorFailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessorFailurePolicy::RetryForever => f.write_str("RetryForever"),
            ProcessorFailurePolicy::SkipAfter { attempts, hook } => f
                .debug_struct("SkipAfter")
                .field("attempts", attempts)
                .field("hook", &hook.as_ref().map(|_| "..."))
                .finish(),
        }
    }
}

/// A batch about to be skipped under [`ProcessorFailurePolicy::SkipAfter`].
#[non_exhaustive]
pub struct FailedBatch<'a> {
    /// The stream the shard belongs to.
    pub stream_name: &'a str,
    /// The shard.
    pub shard_id: &'a str,
    /// The records of the batch, in shard order.
    pub records: &'a [Record],
    /// The error of the last attempt (a panic is reported as an error with its message).
    pub error: &'a (dyn std::error::Error + Send + Sync),
    /// How many deliveries failed.
    pub attempts: u32,
}

/// Receives the batches [`ProcessorFailurePolicy::SkipAfter`] skips. An error is retried with
/// backoff (the batch is not skipped until the hook succeeds, so nothing is lost silently).
#[async_trait]
pub trait FailedBatchHook: Send + Sync + 'static {
    /// Keeps the batch somewhere (a dead-letter stream, queue or file) before it is skipped.
    async fn failed_batch(&self, batch: FailedBatch<'_>) -> Result<(), ProcessorError>;
}

/// A shared hook: keep a clone of the `Arc` to look at the hook's state while the worker runs.
#[async_trait]
impl<T: FailedBatchHook + ?Sized> FailedBatchHook for Arc<T> {
    async fn failed_batch(&self, batch: FailedBatch<'_>) -> Result<(), ProcessorError> {
        (**self).failed_batch(batch).await
    }
}
