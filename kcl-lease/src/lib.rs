//! Shard leases for the Kinesis Client Library for Rust.
//!
//! A lease gives one worker the right to process one shard. Workers prove they are alive by
//! incrementing the lease counter; a lease whose counter has not moved for the failover time is
//! expired and may be taken by another worker. The table has the same schema and meaning as the
//! Java KCL's, so applications can move between the two.
//!
//! # Layout
//! - [`sequence`]: `SequenceNumber` and `ExtendedSequenceNumber` (checkpoints and sentinels).
//! - [`lease`]: `Lease`, one row of the lease table, and `HashKeyRange`.
//! - [`store`]: the `LeaseStore` trait; every mutation is conditional.
//! - [`stream`]: `StreamIdentifier` and multi-stream lease keys (`account:stream:epoch:shardId`).
//! - [`memory`]: `InMemoryLeaseStore`, the bundled table.
//! - [`dynamodb`]: `DynamoDbLeaseStore`, the lease table in Amazon DynamoDB with the Java KCL's
//!   schema (the schema table is in the module docs).
//! - [`failure`]: `FailureLeaseStore`, wraps any store to inject faults.
//! - [`fault`]: faults as data (triggers, rules, plans, seeded injector), shared with
//!   kcl-core's `FailureBackend`.
//! - [`balance`]: pure logic: expiry as observed by one worker, and which leases to take or
//!   steal. No I/O, time is an argument.
//! - [`coordinator`]: the async driver: renews held leases, takes and steals, publishes
//!   acquired leases and lease loss.
//! - [`error`]: the `LeaseError` type.

#![deny(missing_docs)]

pub mod balance;
pub mod coordinator;
pub mod dynamodb;
pub mod error;
pub mod failure;
pub mod fault;

pub mod lease;
pub mod memory;
pub mod sequence;
pub mod store;
pub mod stream;

pub use balance::{plan_takes, BalanceConfig, ExpiryTracker, TakePlan};
pub use coordinator::{CoordinatorConfig, HeldLease, LeaseCoordinator, LeaseStatus};
pub use dynamodb::DynamoDbLeaseStore;
pub use error::{LeaseError, ParseSequenceError, Result};
pub use failure::{FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseFaultRule, LeaseTrigger};

pub use lease::{HashKeyRange, Lease};
pub use memory::{InMemoryLeaseStore, LeaseOp};
pub use sequence::{ExtendedSequenceNumber, SequenceNumber};
pub use store::LeaseStore;
pub use stream::{ParseStreamIdError, StreamIdentifier};
