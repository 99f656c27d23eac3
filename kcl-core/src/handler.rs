//! The batch-handler form: one function for every shard, called with each [`Batch`]; returning
//! `Ok` checkpoints the batch (as a Lambda function's successful batch response does), an error
//! hands the batch to the [`ProcessorFailurePolicy`](crate::ProcessorFailurePolicy) (by default
//! it is delivered again after a backoff).
//!
//! Give it to [`SchedulerBuilder::handler`](crate::SchedulerBuilder::handler). A closure
//! returning a future is a handler (`|batch: Batch| async move { .. }`), and so is an async
//! closure that captures nothing (`async |batch: Batch| { .. }`); so is your own type
//! implementing [`BatchHandler`]. To share a client or a counter with a closure, clone it into
//! each batch's future: `move |batch: Batch| { let db = db.clone(); async move { .. } }`.
//! The handler is shared by every shard of the worker and called concurrently for different
//! shards, in order within a shard: for state per shard (aggregates, a checkpoint every
//! N records) implement [`RecordProcessor`] instead.
//!
//! ```
//! use kcl_core::prelude::*;
//!
//! let builder = Scheduler::builder("my-app", "orders").handler(|batch: Batch| async move {
//!     for record in &batch {
//!         let text = std::str::from_utf8(&record.data)?; // an error: the batch is delivered again
//!         println!("{} {text}", batch.shard_id());
//!     }
//!     Ok(()) // checkpoints the batch
//! });
//! ```

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::processor::{ProcessRecordsInput, ProcessorError, ProcessorFactory, RecordProcessor, ShardInfo};
use crate::record::Record;

/// One batch of a shard's records, as a [`BatchHandler`] gets it: the records in shard order
/// (never empty), the shard, how far behind the tip of the shard the batch is, and which delivery
/// of the batch this is. Records are reference counted: the batch owns them without copying the
/// data.
#[derive(Clone, Debug)]
pub struct Batch {
    records: Vec<Record>,
    shard: Arc<ShardInfo>,
    millis_behind_latest: u64,
    attempt: u32,
}

impl Batch {
    /// A first delivery of `records` from `shard`, 0 ms behind: for testing a handler.
    pub fn new(shard: ShardInfo, records: Vec<Record>) -> Self {
        Self {
            records,
            shard: Arc::new(shard),
            millis_behind_latest: 0,
            attempt: 1,
        }
    }

    /// A delivery by the runtime.
    pub(crate) fn delivered(
        shard: Arc<ShardInfo>,
        records: Vec<Record>,
        millis_behind_latest: u64,
        attempt: u32,
    ) -> Self {
        Self {
            records,
            shard,
            millis_behind_latest,
            attempt,
        }
    }

    /// The records, in shard order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records, owned.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }

    /// The shard's id (`shardId-000000000000`).
    pub fn shard_id(&self) -> &str {
        &self.shard.shard_id
    }

    /// The name of the shard's stream (one of several in a multi-stream application).
    pub fn stream_name(&self) -> &str {
        &self.shard.stream_name
    }

    /// The shard: its id, its stream, its lease key.
    pub fn shard(&self) -> &ShardInfo {
        &self.shard
    }

    /// How far behind the tip of the shard the last record is, in milliseconds.
    pub fn millis_behind_latest(&self) -> u64 {
        self.millis_behind_latest
    }

    /// Which delivery of this batch this is: 1 the first time, 2 after one failure, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = &'a Record;
    type IntoIter = std::slice::Iter<'a, Record>;

    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

/// Handles the batches of every shard: returning `Ok` checkpoints the batch; an error goes to the
/// [`ProcessorFailurePolicy`](crate::ProcessorFailurePolicy) (by default the same batch is
/// delivered again after a backoff, forever; nothing is skipped). A checkpoint that cannot be
/// written after `Ok` counts as a failure too: the batch is delivered again (at least once).
///
/// Any `Fn(Batch) -> impl Future<Output = Result<(), ProcessorError>>` (shareable between
/// threads) is a handler; implement the trait for a type of your own when it holds clients or
/// settings:
///
/// ```
/// use kcl_core::prelude::*;
///
/// struct Forward {
///     prefix: String,
/// }
///
/// #[async_trait]
/// impl BatchHandler for Forward {
///     async fn handle(&self, batch: Batch) -> Result<(), ProcessorError> {
///         for record in batch.records() {
///             println!("{}{}", self.prefix, record.partition_key);
///         }
///         Ok(())
///     }
/// }
///
/// let builder = Scheduler::builder("my-app", "orders").handler(Forward { prefix: "> ".into() });
/// ```
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles one batch of one shard. Called for different shards at once, never twice at
    /// once for one shard.
    async fn handle(&self, batch: Batch) -> Result<(), ProcessorError>;
}

#[async_trait]
impl<F, Fut> BatchHandler for F
where
    F: Fn(Batch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ProcessorError>> + Send + 'static,
{
    /// Calls the closure.
    async fn handle(&self, batch: Batch) -> Result<(), ProcessorError> {
        self(batch).await
    }
}

/// A shared handler: keep a clone of the `Arc` to look at the handler's state while it runs.
#[async_trait]
impl<T: BatchHandler + ?Sized> BatchHandler for Arc<T> {
    async fn handle(&self, batch: Batch) -> Result<(), ProcessorError> {
        (**self).handle(batch).await
    }
}

/// The [`ProcessorFactory`] of a [`BatchHandler`]: one [`HandlerProcessor`] per shard, all
/// sharing the handler.
pub(crate) struct HandlerFactory(pub(crate) Arc<dyn BatchHandler>);

impl ProcessorFactory for HandlerFactory {
    fn create(&self, shard: &ShardInfo) -> Box<dyn RecordProcessor> {
        Box::new(HandlerProcessor {
            handler: self.0.clone(),
            shard: Arc::new(shard.clone()),
        })
    }
}

/// Calls the handler with each batch and checkpoints the batches it accepts. `shard_ended`
/// checkpoints `SHARD_END` (the default); nothing is checkpointed at shutdown or on a failed
/// batch (every accepted batch is checkpointed already).
struct HandlerProcessor {
    handler: Arc<dyn BatchHandler>,
    shard: Arc<ShardInfo>,
}

#[async_trait]
impl RecordProcessor for HandlerProcessor {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let batch = Batch::delivered(
            self.shard.clone(),
            input.records.to_vec(),
            input.millis_behind_latest,
            input.attempt,
        );
        self.handler.handle(batch).await?;
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A closure with `?` on foreign errors and a bare `Ok(())` is a handler (the error type
    /// is inferred), and so is an async closure.
    #[tokio::test]
    async fn closures_are_handlers() {
        fn take(handler: impl BatchHandler) -> Arc<dyn BatchHandler> {
            Arc::new(handler)
        }
        let parse = take(|batch: Batch| async move {
            for record in &batch {
                let _: u32 = std::str::from_utf8(&record.data)?.parse()?;
            }
            Ok(())
        });
        static COUNTED: AtomicUsize = AtomicUsize::new(0);
        let count = take(async |batch: Batch| {
            COUNTED.fetch_add(batch.records().len(), Ordering::SeqCst);
            Ok(())
        });
        // State shared with a closure: cloned into each batch's future.
        let counter = Arc::new(AtomicUsize::new(0));
        let seen = counter.clone();
        let shared = take(move |batch: Batch| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(batch.records().len(), Ordering::SeqCst);
                Ok(())
            }
        });
        let record = |data: &'static str| Record {
            data: bytes::Bytes::from_static(data.as_bytes()),
            partition_key: "k".into(),
            sequence_number: "1".parse().expect("a sequence number"),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: std::time::SystemTime::UNIX_EPOCH,
            explicit_hash_key: None,
        };
        let shard = ShardInfo::new("s", "shardId-000000000000");
        let good = Batch::new(shard.clone(), vec![record("1"), record("2")]);
        assert!(parse.handle(good.clone()).await.is_ok());
        assert!(parse.handle(Batch::new(shard, vec![record("x")])).await.is_err());
        count.handle(good.clone()).await.expect("counted");
        assert_eq!(COUNTED.load(Ordering::SeqCst), 2);
        shared.handle(good).await.expect("counted");
        assert_eq!(counter.load(Ordering::SeqCst), 2);
    }
}
