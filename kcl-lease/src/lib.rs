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
//! - [`row`]: the lease table's rows (attribute names and values) as the Java KCL writes them,
//!   independent of any SDK.
//! - `dynamodb` (feature `dynamodb`, on by default): `DynamoDbLeaseStore`, the lease table in
//!   Amazon DynamoDB with the Java KCL's schema (the schema table is in the module docs).
//! - `failure` (feature `testing`): `FailureLeaseStore`, wraps any store to inject faults.
//! - `fault` (feature `testing`): faults as data (triggers, rules, plans, seeded injector),
//!   shared with kcl-core's `FailureBackend`.
//! - [`heartbeat`]: worker heartbeat rows, the renewal modes, and `WorkerTracker` (which
//!   workers are live, dead or unknown, as one worker observes them).
//! - [`metered`]: `MeteredLeaseStore`, wraps any store and counts calls, rows and the
//!   DynamoDB request units they would be billed.
//! - [`balance`]: pure logic: expiry as observed by one worker, and which leases to take or
//!   steal. No I/O, time is an argument.
//! - [`load`]: pure load-aware balancing (`BalanceMode`): which lease evens the
//!   `throughputKBps` per worker, with damping.
//! - [`held`]: `HeldLease` (a lease this worker holds, its status and validity) and
//!   `Liveness` (the worker's own validity from its heartbeats).
//! - [`machine`]: the coordinator's decisions as a pure state machine (time passed in, named
//!   timers): when to read which heartbeat row and scan the lease table, and each take round's
//!   plan and actions.
//! - [`coordinator`]: the async driver of [`machine`]: heartbeats, renews held leases, makes the
//!   take rounds' calls, publishes acquired leases and lease loss.
//! - [`error`]: the `LeaseError` type, and `ErrorChain` (an error with its causes, on one line).
//! - [`journal`]: a worker's recent lease moves and errors (for status pages).
//! - [`suspend`]: detects a suspended host (the monotonic clock stood still while it slept).
//! - `conformance` (feature `testing`): behaviour every lease store must show, as checks the
//!   in-memory store's and the DynamoDB store's tests share.
//! - `sim` (feature `testing`): a deterministic fleet simulator: real coordinators and
//!   simulated consumers on a shared lease table with DynamoDB's consistency and seeded
//!   faults, with the safety and liveness invariants checked as it runs.
//!
//! # Features
//! - `dynamodb` (default): `DynamoDbLeaseStore`, through the AWS SDK for DynamoDB.
//! - `testing`: `FailureLeaseStore` and the fault engine, for tests of code built on a store;
//!   `sim`, the fleet simulator (it needs Tokio's `test-util` for paused time).
//!
//! The in-memory store and the cost meter (`MeteredLeaseStore`, which a worker uses for its
//! health) need neither.

#![deny(missing_docs)]

pub mod balance;
mod clock;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod coordinator;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod failure;
#[cfg(any(test, feature = "testing"))]
pub mod fault;
pub mod heartbeat;
pub mod held;
pub mod journal;
pub mod machine;
pub mod metered;

pub mod lease;
pub mod load;
pub mod memory;
pub mod row;
pub mod sequence;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
pub mod store;
pub mod stream;
pub mod suspend;

pub use balance::{plan_takes, BalanceConfig, ExpiryTracker, TakePlan};
pub use coordinator::{
    CoordinatorConfig, FleetView, HeldLease, LeaseCoordinator, LeaseSettings, LeaseStatus,
};
#[cfg(feature = "dynamodb")]
pub use dynamodb::DynamoDbLeaseStore;
pub use error::{ErrorChain, FatalKind, LeaseError, ParseSequenceError, Result};
#[cfg(any(test, feature = "testing"))]
pub use failure::{FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseFaultRule, LeaseTrigger};
pub use heartbeat::{
    HeartbeatCondition, LeaseRenewal, WatchedRow, WorkerHeartbeat, WorkerStatus, WorkerTracker,
};
pub use journal::{Journal, JournalEntry, JournalEvent};
pub use metered::{CostSnapshot, MeteredLeaseStore, OpCost};

pub use lease::{HashKeyRange, Lease};
pub use load::{BalanceMode, LoadBalancing};
pub use memory::{InMemoryLeaseStore, LeaseOp};
pub use sequence::{ExtendedSequenceNumber, SequenceNumber};
pub use store::LeaseStore;
pub use stream::{ParseStreamIdError, StreamIdentifier};
