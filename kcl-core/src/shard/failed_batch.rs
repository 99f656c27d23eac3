//! What happens to a batch the processor keeps failing on: a panic in `process_records` is
//! turned into an error (so it counts as a failure under the policy, like a returned error), and
//! under [`ProcessorFailurePolicy::SkipAfter`](crate::processor::ProcessorFailurePolicy) the
//! batch is handed to the user's hook, skipped and checkpointed past.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tracing::{error, warn};

use super::{ShardConsumer, ShutdownReason};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::processor::{FailedBatch, FailedBatchHook, ProcessorError};
use crate::record::Record;

/// A processor that panicked.
#[derive(Debug, thiserror::Error)]
#[error("process_records panicked: {0}")]
pub(crate) struct ProcessorPanic(String);

/// Runs a processor callback, turning a panic into a [`ProcessorPanic`] error.
pub(super) async fn catch_panic(
    callback: impl Future<Output = Result<(), ProcessorError>>,
) -> Result<(), ProcessorError> {
    match AssertUnwindSafe(callback).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(Box::new(ProcessorPanic(panic_message(&*panic)))),
    }
}

/// The message of a panic payload (`&str` or `String`), or `(no message)`.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

impl ShardConsumer {
    /// Gives up on a batch after `attempts` failed deliveries: the hook gets it first (retried
    /// until it succeeds), then the shard is checkpointed after its last record.
    pub(super) async fn skip_batch(
        &mut self,
        records: &[Record],
        checkpointer: &Checkpointer,
        error: &(dyn std::error::Error + Send + Sync),
        attempts: u32,
        hook: Option<Arc<dyn FailedBatchHook>>,
    ) -> Result<(), ShutdownReason> {
        if let Some(hook) = hook {
            let mut delays = crate::backoff::Backoff::new(crate::backoff::Policy::Processor);
            loop {
                let batch = FailedBatch {
                    stream_name: &self.stream,
                    shard_id: &self.shard_id,
                    records,
                    error,
                    attempts,
                };
                match hook.failed_batch(batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(error = %e, "the failed-batch hook failed; the batch is not skipped yet, retrying the hook");
                        if let Some(reason) = self.pause(&mut delays).await {
                            return Err(reason);
                        }
                    }
                }
            }
        }
        error!(
            %error,
            attempts,
            records = records.len(),
            "processor failed on this batch too often: skipping it and checkpointing past it"
        );
        self.metrics.skipped.increment(records.len() as u64);
        let mut delays = crate::backoff::Backoff::new(crate::backoff::Policy::Processor);
        loop {
            match checkpointer.checkpoint().await {
                // The processor may have checkpointed at or past the batch itself.
                Ok(()) | Err(CheckpointError::BehindCheckpoint { .. }) => return Ok(()),
                Err(CheckpointError::LeaseLost { .. }) => return Err(ShutdownReason::LeaseLost),
                Err(e) => {
                    warn!(error = %e, "checkpointing past a skipped batch failed; retrying");
                    if let Some(reason) = self.pause(&mut delays).await {
                        return Err(reason);
                    }
                }
            }
        }
    }
}
