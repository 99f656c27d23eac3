//! The Kinesis Client Library for Rust: consume a Kinesis data stream with many workers, each
//! holding leases on some shards, with checkpoints, fail-over, balancing and resharding.
//!
//! You write a batch handler (a closure, see [`handler`]) or implement [`RecordProcessor`]; the
//! [`Scheduler`] does the rest. `use kcl_core::prelude::*;` imports what a consumer needs.
//!
//! # On AWS
//!
//! With the `aws` feature (on by default) and tokio, nothing else:
//!
//! ```no_run
//! use kcl_core::prelude::*;
//!
//! #[tokio::main]
//! async fn main() -> kcl_core::Result<()> {
//!     Scheduler::builder("my-app", "my-stream")
//!         .aws() // region, credentials, endpoint (AWS_ENDPOINT_URL) from the standard chain
//!         .await?
//!         .handler(|batch: Batch| async move {
//!             for record in batch.records() {
//!                 println!("{}", String::from_utf8_lossy(&record.data));
//!             }
//!             Ok(()) // checkpoints the batch
//!         })
//!         .build()?
//!         .run(shutdown_signal()) // SIGTERM or Ctrl-C: checkpoint, then hand the leases over
//!         .await
//! }
//! ```
//!
//! The lease table is created when missing ([`SchedulerBuilder::create_lease_table`]). More
//! programs are in the crate's `examples/` directory.
//!
//! # Quick start
//!
//! A worker on the bundled local stream and in-memory lease table (swap in `KinesisBackend`
//! and `kcl_lease::DynamoDbLeaseStore` for AWS):
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use kcl_core::{
//!     InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError,
//!     RecordProcessor, Scheduler,
//! };
//!
//! struct Count(Arc<AtomicUsize>);
//!
//! #[async_trait]
//! impl RecordProcessor for Count {
//!     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
//!         self.0.fetch_add(input.records.len(), Ordering::SeqCst);
//!         input.checkpointer.checkpoint().await?; // a restarted worker resumes after this
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let stream = LocalBackend::new();
//!     stream.create_stream("orders", 2)?;
//!     for i in 0..10 {
//!         stream.put_record("orders", &format!("key-{i}"), format!("order {i}").into(), None).await?;
//!     }
//!     let seen = Arc::new(AtomicUsize::new(0));
//!     let counter = seen.clone();
//!     let worker = Scheduler::builder("my-app", "orders")
//!         .backend(stream)
//!         .lease_store(InMemoryLeaseStore::new())
//!         .initial_position(InitialPosition::TrimHorizon)
//!         .failover_time(Duration::from_secs(3))
//!         .processor_factory(move |_shard_id: &str| Count(counter.clone()))
//!         .build()?
//!         .spawn();
//!     while seen.load(Ordering::SeqCst) < 10 {
//!         tokio::time::sleep(Duration::from_millis(20)).await;
//!     }
//!     worker.shutdown().await?; // checkpoints, then hands the leases over
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//! - [`record`]: `Record`, `Shard`, sequence numbers.
//! - [`aggregation`]: unpacking (and packing) KPL-aggregated records.
//! - [`prelude`]: what a consumer needs, in one import.
//! - [`handler`]: the batch-handler form: `BatchHandler`, `Batch`.
//! - [`processor`]: the `RecordProcessor` trait, its inputs, and `ProcessorFactory`.
//! - [`checkpoint`]: the `Checkpointer` handed to processors.
//! - [`pull`]: the pull-based consumer for pipelines: `PullConsumer`, a `Stream` of batches
//!   with `AckToken`s whose acknowledgements (in any order) drive the checkpoints, bounded
//!   in flight per shard.
//! - [`config`]: `SchedulerConfig` and its defaults, `InitialPosition`.
//! - [`scheduler`]: `Scheduler` (one per worker), its builder and handle.
//! - [`shard`]: the per-shard consumer: a pure state machine ([`shard::state`]) driven by a task,
//!   with a bounded read-ahead.
//! - [`shard_sync`]: creating leases for new shards, parents before children.
//! - [`streams`]: multi-stream applications: `StreamTracker`, `StreamConfig`, clean-up of the
//!   leases of removed streams.
//! - [`dynamodb_streams`]: DynamoDB Streams change records, typed (`ChangeRecord`,
//!   `AttributeValue`), parsed from a record's data (the service's JSON wire format).
//! - [`backend`]: the `StreamBackend` trait, the bundled local stream
//!   ([`backend::local::LocalBackend`]), Kinesis through the AWS SDK (`backend::kinesis`,
//!   feature `kinesis`) and the fault-injecting wrapper (`backend::failure`, feature `testing`).
//! - `aws` (features `kinesis`, `dynamodb` or `dynamodb-streams`): loading AWS configuration (default chain, region,
//!   endpoint overrides), and `SchedulerBuilder::aws` (feature `aws`).
//! - [`error`]: `KclError` and friends.
//! - [`fatal`]: errors that stop a worker (or one stream) instead of being retried.
//! - [`jitter`]: seeds of the backoffs' jitter (fixed by simulation tests to replay a run).
//! - [`metrics`]: metric names (the Java KCL's) and the worker health summary;
//!   `metrics::cloudwatch` (feature `cloudwatch`): a `metrics` recorder that publishes them to
//!   CloudWatch as the Java KCL does (namespace, dimensions, levels, buffered statistic sets).
//! - [`shutdown_signal`]: SIGTERM or SIGINT (Ctrl-C elsewhere), for a graceful shutdown.
//!
//! The lease side (model, stores, coordinator) is the `kcl_lease` crate, re-exported as
//! [`lease`].
//!
//! # Features
//! - `aws` (default): `SchedulerBuilder::aws`, a consumer on AWS in a few lines; `kinesis` and
//!   `dynamodb` together.
//! - `kinesis`: `KinesisBackend`, Amazon Kinesis Data Streams through the AWS SDK.
//! - `dynamodb`: kcl-lease's `DynamoDbLeaseStore`, the lease table in Amazon DynamoDB.
//! - `testing`: fault injection for tests: `backend::failure::FailureBackend` and kcl-lease's
//!   `FailureLeaseStore`.
//! - `dynamodb-streams`: `DynamoDbStreamsBackend`, a DynamoDB table's change stream through the
//!   AWS SDK (`aws-sdk-dynamodbstreams`), read by the same scheduler; the typed change records
//!   ([`dynamodb_streams`]) and the local backend's tables need no feature.
//! - `status-page`: serving a worker's status page over HTTP (`status::serve`, hyper).
//! - `cloudwatch`: publishing the metrics to Amazon CloudWatch as the Java KCL does
//!   (`metrics::cloudwatch`, `aws-sdk-cloudwatch`).
//!
//! The local backend ([`LocalBackend`]), the in-memory lease store ([`InMemoryLeaseStore`]) and
//! the lease-store cost meter (`kcl_lease::MeteredLeaseStore`, which the scheduler uses for the
//! worker's health) are always there: with `--no-default-features` the crate builds without any
//! AWS SDK crate, for applications that bring their own `StreamBackend` and `LeaseStore`.

#![deny(missing_docs)]

pub mod aggregation;
#[cfg(any(feature = "kinesis", feature = "dynamodb", feature = "dynamodb-streams"))]
pub mod aws;
pub mod backend;
mod backoff;
pub mod checkpoint;
pub mod config;
pub mod dynamodb_streams;
pub mod error;
pub mod fatal;
pub mod handler;
pub mod jitter;
pub mod metrics;
pub mod prelude;
pub mod processor;
pub mod pull;
pub mod record;
pub mod scheduler;
pub mod shard;
pub mod shard_sync;
mod signal;
pub mod status;
pub mod stream_arn;
pub mod streams;

pub use kcl_lease as lease;

/// The README's Rust blocks, compiled (and run, unless `no_run`) as doc tests. The CloudWatch
/// block needs `cloudwatch`, the OpenTelemetry one `otlp`: `cargo test --workspace` has both
/// (kcl-tests turns them on).
#[cfg(all(doctest, feature = "aws", feature = "cloudwatch", feature = "otlp"))]
#[doc = include_str!("../../README.md")]
mod readme {}

#[cfg(feature = "dynamodb-streams")]
pub use backend::dynamodb_streams::DynamoDbStreamsBackend;
#[cfg(feature = "kinesis")]
pub use backend::kinesis::KinesisBackend;
pub use backend::local::LocalBackend;
pub use backend::routing::RoutingBackend;
pub use backend::{
    BackendError, ConsumerStatus, GetRecordsOutput, IteratorPosition, ShardSubscription, StreamBackend,
    StreamConsumer, StreamDisabled, StreamEnd, SubscribeEvent,
};
pub use checkpoint::{CheckpointError, Checkpointer};
pub use config::{FanOutConfig, InitialPosition, MisplacedKplRecords, RetrievalMode, SchedulerConfig};
pub use error::{ErrorChain, KclError, Result};
pub use fatal::FatalError;
pub use handler::{Batch, BatchHandler};
pub use kcl_lease::StreamIdentifier;
pub use kcl_lease::{InMemoryLeaseStore, LeaseStore};
pub use metrics::{ShardHealth, WorkerHealth};
pub use processor::{
    FailedBatch, FailedBatchHook, InitializeInput, LeaseLostInput, ProcessRecordsInput, ProcessorError,
    ProcessorFactory, ProcessorFailurePolicy, RecordProcessor, ShardEndedInput, ShardInfo,
    ShutdownRequestedInput, WithShardInfo,
};
pub use pull::{AckError, AckToken, PullConsumer, PullEvent, PullOptions};
pub use record::{ChildShard, ExtendedSequenceNumber, HashKeyRange, Record, SequenceNumber, Shard};
pub use scheduler::{Scheduler, SchedulerBuilder, SchedulerHandle};
pub use signal::shutdown_signal;
pub use streams::{FormerStreamsCleanup, StreamConfig, StreamList, StreamTracker};
