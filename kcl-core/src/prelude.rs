//! What a consumer needs, in one import: `use kcl_core::prelude::*;`.
//!
//! The scheduler and its handle, the processing forms (the [`BatchHandler`] with its [`Batch`],
//! the [`RecordProcessor`] trait with its inputs and the `async_trait` attribute its
//! implementations need, and the pull-based [`PullConsumer`] with its events and tokens), the bundled local backend and in-memory lease store, the settings
//! most applications touch, the shutdown signal, and (feature `aws`) the AWS options. The
//! crate's `Result` alias is left out, so that `std`'s stays in scope.
//!
//! ```
//! use kcl_core::prelude::*;
//!
//! struct Printer;
//!
//! #[async_trait]
//! impl RecordProcessor for Printer {
//!     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
//!         println!("{} records", input.records.len());
//!         input.checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//! }
//! ```

pub use async_trait::async_trait;

#[cfg(feature = "aws")]
pub use crate::aws::AwsOptions;
pub use crate::handler::{Batch, BatchHandler};
pub use crate::pull::{AckToken, PullConsumer, PullEvent, PullOptions};
pub use crate::{
    shutdown_signal, Checkpointer, FailedBatch, FailedBatchHook, FanOutConfig, InMemoryLeaseStore,
    InitialPosition, InitializeInput, KclError, LeaseLostInput, LocalBackend, ProcessRecordsInput,
    ProcessorError, ProcessorFailurePolicy, Record, RecordProcessor, RetrievalMode, Scheduler,
    SchedulerHandle, ShardEndedInput, ShardInfo, ShutdownRequestedInput, StreamConfig, WithShardInfo,
};
