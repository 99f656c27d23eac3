//! The [`Checkpointer`]: how a processor records its progress in the lease table.
//!
//! A checkpoint is validated before it is written: it may not be beyond the last record
//! delivered to the processor, nor behind the current checkpoint. Once the lease is lost every
//! checkpoint fails with [`CheckpointError::LeaseLost`]. Throttled writes are retried a few
//! times with backoff before the error is returned.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::backoff::{Backoff, Policy};
use kcl_lease::{HeldLease, LeaseError, LeaseStatus};
use thiserror::Error;
use tracing::debug;

use crate::record::{ExtendedSequenceNumber, SequenceNumber};

/// Why a checkpoint was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The lease is gone (taken by another worker after expiry): the checkpoint was not written.
    #[error("lease for shard {shard_id} was lost; checkpoint not written")]
    LeaseLost {
        /// The shard.
        shard_id: String,
    },
    /// The value is beyond the last record delivered to the processor.
    #[error("checkpoint {requested} is beyond the last delivered record ({last_delivered:?})")]
    BeyondDelivered {
        /// The value asked for.
        requested: ExtendedSequenceNumber,
        /// The last record delivered, if any.
        last_delivered: Option<ExtendedSequenceNumber>,
    },
    /// The value is behind the current checkpoint.
    #[error("checkpoint {requested} is behind the current checkpoint {current}")]
    BehindCheckpoint {
        /// The value asked for.
        requested: ExtendedSequenceNumber,
        /// The current checkpoint.
        current: ExtendedSequenceNumber,
    },
    /// The sequence number is not a decimal number.
    #[error(transparent)]
    InvalidSequenceNumber(#[from] kcl_lease::ParseSequenceError),
    /// The lease store failed (after retries).
    #[error("writing the checkpoint failed: {0}")]
    Store(#[source] LeaseError),
}

#[derive(Debug)]
struct Progress {
    last_delivered: Option<ExtendedSequenceNumber>,
    checkpoint: ExtendedSequenceNumber,
    at_shard_end: bool,
}

/// Checkpoints one shard. Cheap to clone; handed to the processor with every callback.
///
/// [`Checkpointer::checkpoint`] records the last record delivered; [`Checkpointer::checkpoint_at`]
/// a given one (e.g. the last one processed so far). A checkpoint never moves backwards, and a
/// worker that lost the lease cannot checkpoint ([`CheckpointError`]).
///
/// ```
/// use kcl_core::{ProcessRecordsInput, ProcessorError, RecordProcessor, ShutdownRequestedInput};
///
/// /// Checkpoints every 1,000 records rather than every batch, and at shutdown.
/// struct Every1000 {
///     since_checkpoint: usize,
/// }
///
/// #[async_trait::async_trait]
/// impl RecordProcessor for Every1000 {
///     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
///         for record in input.records {
///             // ... handle the record ...
///             self.since_checkpoint += 1;
///             if self.since_checkpoint >= 1000 {
///                 input
///                     .checkpointer
///                     .checkpoint_at(record.sequence_number.as_str(), record.sub_sequence_number)
///                     .await?;
///                 self.since_checkpoint = 0;
///             }
///         }
///         Ok(())
///     }
///
///     async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
///         input.checkpointer.checkpoint().await?; // the next owner resumes right after
///         Ok(())
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Checkpointer {
    shard_id: Arc<str>,
    lease: Arc<HeldLease>,
    progress: Arc<Mutex<Progress>>,
}

impl Checkpointer {
    pub(crate) fn new(shard_id: &str, lease: Arc<HeldLease>, checkpoint: ExtendedSequenceNumber) -> Self {
        Self {
            shard_id: shard_id.into(),
            lease,
            progress: Arc::new(Mutex::new(Progress {
                last_delivered: None,
                checkpoint,
                at_shard_end: false,
            })),
        }
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The checkpoint as last written (or as found when the lease was taken).
    pub fn current(&self) -> ExtendedSequenceNumber {
        self.progress().checkpoint.clone()
    }

    /// The last record delivered to the processor, if any.
    pub fn last_delivered(&self) -> Option<ExtendedSequenceNumber> {
        self.progress().last_delivered.clone()
    }

    /// Checkpoints at the last record delivered to the processor; in `shard_ended`, writes
    /// `SHARD_END`. Does nothing if nothing was delivered since the last checkpoint.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let target = {
            let p = self.progress();
            if p.at_shard_end {
                ExtendedSequenceNumber::ShardEnd
            } else {
                match &p.last_delivered {
                    Some(last) => last.clone(),
                    None => return self.ensure_held(),
                }
            }
        };
        self.write(target).await
    }

    /// Checkpoints at a given record: `sequence_number` and, inside a KPL aggregate,
    /// `sub_sequence_number` (0 otherwise). The record must have been delivered.
    pub async fn checkpoint_at(
        &self,
        sequence_number: &str,
        sub_sequence_number: u64,
    ) -> Result<(), CheckpointError> {
        let seq = SequenceNumber::new(sequence_number)?;
        self.write(ExtendedSequenceNumber::at(seq, sub_sequence_number))
            .await
    }

    fn ensure_held(&self) -> Result<(), CheckpointError> {
        match self.lease.status() {
            LeaseStatus::Lost => Err(CheckpointError::LeaseLost {
                shard_id: self.shard_id.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn validate(&self, target: &ExtendedSequenceNumber) -> Result<bool, CheckpointError> {
        let p = self.progress();
        if target.is_shard_end() {
            if !p.at_shard_end {
                return Err(CheckpointError::BeyondDelivered {
                    requested: target.clone(),
                    last_delivered: p.last_delivered.clone(),
                });
            }
        } else if p.last_delivered.as_ref().is_none_or(|last| target > last) {
            return Err(CheckpointError::BeyondDelivered {
                requested: target.clone(),
                last_delivered: p.last_delivered.clone(),
            });
        }
        if *target < p.checkpoint {
            return Err(CheckpointError::BehindCheckpoint {
                requested: target.clone(),
                current: p.checkpoint.clone(),
            });
        }
        Ok(*target != p.checkpoint)
    }

    async fn write(&self, target: ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        self.ensure_held()?;
        if !self.validate(&target)? {
            return Ok(());
        }
        let mut delays = Backoff::new(Policy::Checkpoint);
        loop {
            match self.lease.checkpoint(&target).await {
                Ok(_) => {
                    debug!(shard_id = %self.shard_id, checkpoint = %target, "checkpointed");
                    let mut p = self.progress();
                    if target > p.checkpoint {
                        p.checkpoint = target;
                    }
                    return Ok(());
                }
                Err(_) if self.lease.status() == LeaseStatus::Lost => {
                    return Err(CheckpointError::LeaseLost {
                        shard_id: self.shard_id.to_string(),
                    })
                }
                Err(e) if e.is_retryable() => match delays.next_retry() {
                    Some(d) => tokio::time::sleep(d).await,
                    None => return Err(CheckpointError::Store(e)),
                },
                Err(e) => return Err(CheckpointError::Store(e)),
            }
        }
    }

    /// Checkpoints at `target` (a delivered record, or `SHARD_END` at shard end).
    pub(crate) async fn checkpoint_to(&self, target: ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        self.write(target).await
    }

    /// The status of the shard's lease, as it changes (held, hand-off requested, lost).
    pub(crate) fn lease_status(&self) -> tokio::sync::watch::Receiver<LeaseStatus> {
        self.lease.subscribe()
    }

    pub(crate) fn delivered(&self, last: ExtendedSequenceNumber) {
        self.progress().last_delivered = Some(last);
    }

    pub(crate) fn set_shard_end(&self) {
        self.progress().at_shard_end = true;
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}
