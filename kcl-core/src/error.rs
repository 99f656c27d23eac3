//! `KclError`: what the runtime reports to the application.

use thiserror::Error;

pub use crate::backend::BackendError;
pub use crate::checkpoint::CheckpointError;
pub use kcl_lease::{ErrorChain, LeaseError};

/// An error of the runtime (not of a processor: those are retried).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KclError {
    /// The settings cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The stream backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The lease store failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The worker stopped on an error retrying cannot fix (see [`crate::fatal`]).
    #[error("worker stopped: {0}")]
    Fatal(#[from] crate::fatal::FatalError),
}

/// The result type of the runtime.
pub type Result<T, E = KclError> = std::result::Result<T, E>;
