//! Errors of lease stores and lease coordination, and [`ErrorChain`] to show one with its causes.

use thiserror::Error;

/// A string that is neither a decimal sequence number nor a known sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not a sequence number or checkpoint sentinel: {0:?}")]
pub struct ParseSequenceError(pub String);

/// What can go wrong with a lease-store call. Every store (in memory, DynamoDB) can produce
/// each of these; anything specific to one store goes in [`LeaseError::Backend`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// A conditional write failed: the lease is not in the state the caller last saw (another
    /// worker renewed, took or released it). `actual` is the row as it is now, if known.
    #[error("conditional write on lease {key} failed: it changed since it was read")]
    Conflict {
        /// The lease key.
        key: String,
        /// The current row, if the store returned it.
        actual: Option<Box<crate::Lease>>,
    },
    /// The lease does not exist.
    #[error("lease {0} does not exist")]
    NotFound(String),
    /// The store throttled the call; retry later.
    #[error("lease store throttled the call: {0}")]
    Throttled(String),
    /// A row in the store cannot be read as a lease. The row is left untouched.
    #[error("lease row {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The key of the bad row (or a description if it has none).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store cannot do this (for example a store without worker heartbeats, or a
    /// heartbeat table that does not exist). Callers fall back to what works without it.
    #[error("not supported by this lease store: {0}")]
    Unsupported(String),
    /// The call can never succeed as the worker is configured: the credentials are refused
    /// or lack a permission, a KMS key cannot be used, or the lease table does not exist. A
    /// worker stops on it instead of retrying.
    #[error("{kind}: {source}")]
    Fatal {
        /// What kind of failure.
        kind: FatalKind,
        /// The store's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Any other failure of the store (network, service error).
    #[error("lease store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a lease-store error is [`LeaseError::Fatal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FatalKind {
    /// The credentials were refused or lack a permission (`AccessDeniedException`,
    /// `UnrecognizedClientException`), or a KMS key of the table cannot be used.
    AccessDenied,
    /// The lease table does not exist (deleted, or never created).
    TableNotFound,
}

impl std::fmt::Display for FatalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FatalKind::AccessDenied => "lease store access denied (check the credentials and the IAM policy)",
            FatalKind::TableNotFound => "lease table not found",
        })
    }
}

impl LeaseError {
    /// Whether retrying the same call later may succeed (throttling and transient failures).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Backend(_))
    }

    /// Whether retrying can never help (see [`LeaseError::Fatal`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Fatal { .. })
    }

    /// A fatal error from a message.
    pub fn fatal(kind: FatalKind, msg: impl Into<String>) -> Self {
        Self::Fatal {
            kind,
            source: msg.into().into(),
        }
    }

    /// Whether this is a failed conditional write.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// A backend error from a message.
    pub fn backend(msg: impl Into<String>) -> Self {
        Self::Backend(msg.into().into())
    }
}

/// The result type of lease operations.
pub type Result<T, E = LeaseError> = std::result::Result<T, E>;

/// Displays an error and its causes (the `source()` chain) on one line, joined by `": "`: for
/// logs and error messages, e.g. `tracing::warn!(error = %ErrorChain(&e), "...")`.
///
/// A cause whose text is already shown is left out (errors that print their source within
/// their own message, as `thiserror`'s `#[error("...: {0}")]` with `#[source]` does), and line
/// breaks become spaces. Unlike the AWS SDK's `DisplayErrorContext`, it adds no `Debug` dump of
/// the error: only the messages.
///
/// ```
/// use kcl_lease::error::ErrorChain;
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let err = kcl_lease::LeaseError::Backend(Box::new(io));
/// assert_eq!(ErrorChain(&err).to_string(), "lease store error: connection refused");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let one_line = |e: &dyn std::error::Error| {
            e.to_string()
                .split(['\n', '\r'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut shown = one_line(self.0);
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = one_line(cause);
            if !text.is_empty() && !shown.contains(&text) {
                if !shown.is_empty() {
                    shown.push_str(": ");
                }
                shown.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer {
        text: &'static str,
        source: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.text)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref().map(|s| s as _)
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one")
    }

    #[test]
    fn causes_joined_on_one_line_without_repeats_or_debug() {
        let e = chain(&[
            "dispatch failure",
            "io error",
            "tcp connect error",
            "Connection refused",
        ]);
        assert_eq!(
            ErrorChain(&e).to_string(),
            "dispatch failure: io error: tcp connect error: Connection refused"
        );
        // A message that already shows its cause (and its cause's cause).
        let e = chain(&[
            "lease store error: DynamoDB Scan failed: refused",
            "DynamoDB Scan failed: refused",
            "refused",
        ]);
        assert_eq!(
            ErrorChain(&e).to_string(),
            "lease store error: DynamoDB Scan failed: refused"
        );
        let e = chain(&["reading stream s", "two\nlines  \n", ""]);
        assert_eq!(ErrorChain(&e).to_string(), "reading stream s: two lines");
        let e = LeaseError::Backend(Box::new(chain(&["outer", "inner"])));
        assert_eq!(ErrorChain(&e).to_string(), "lease store error: outer: inner");
    }
}
