//! The runnable examples and benchmarks: `kcl-demo` (the local demo), `kcl-replicate` (a
//! DynamoDB table replicated through its change stream, locally) and `kcl-bench`, and the
//! benchmark pieces too big for `kcl-bench` itself. The operator tools (`kcl-tail`, `kcl-admin`,
//! `kcl-multilang`) are the kcl-tools crate; their logging and exit status are used here too.
//! This crate turns on kcl-core's and kcl-lease's `testing` features (fault injection, for
//! `kcl-bench fleet` and `simulate`) and is never published.
//!
//! # Layout
//! - [`bench`](mod@bench): measuring helpers (CPU, memory, JSON lines).
//! - [`fleet`]: `kcl-bench fleet`, many workers in one process, with the cost meter.
//! - [`coordination`]: `kcl-bench --backend emulators coordination`, `kcl-tail` fleets on the
//!   emulators measured through their metrics endpoints (kcl-tools' `kcl-tail` binary, built
//!   beside `kcl-bench`).
//! - [`skewed`]: `kcl-bench skewed`, load-aware against count-based balancing on 2 hot shards.
//! - [`simulate`]: `kcl-bench simulate`, many seeds of the deterministic fleet simulator.
//! - [`replicate`]: `kcl-replicate`, and the replica, processor and writer the DynamoDB Streams
//!   tests share.
//! - Shared with kcl-tools (re-exported): [`logging`], [`exit_status`],
//!   [`CheckpointEveryBatch`].

pub mod bench;
pub mod coordination;
pub mod fleet;
pub mod replicate;
pub mod simulate;
pub mod skewed;

pub use kcl_tools::{exit_status, logging, CheckpointEveryBatch};
