//! A worker's recent lease moves and errors, for status pages and operators.
//!
//! Logs say the same, but a person looking at one worker wants the last few things that
//! happened to its leases without searching them: which leases it took (and from whom), lost,
//! handed off or released, and which calls failed. The [`Journal`] keeps the most recent of
//! each in two bounded rings (moves do not push errors out, nor the other way round), stamped
//! with the wall clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::held::lock;

/// How many moves and how many errors a journal keeps by default.
pub const DEFAULT_JOURNAL_CAPACITY: usize = 64;

/// What happened to a lease, or what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalEvent {
    /// This worker took the lease: it was free, expired, or (`stolen`) taken for balance from a
    /// live worker.
    Taken {
        /// Who held it before, if anybody.
        previous_owner: Option<String>,
        /// Taken from a live worker to even out the fleet.
        stolen: bool,
    },
    /// Another worker took the lease, or it could not be renewed in time.
    Lost,
    /// Another worker asked for the lease (graceful hand-off); it is checkpointed and passed on.
    HandoffRequested,
    /// The hand-off was completed: the requesting worker owns the lease now.
    HandedOff,
    /// The lease was let go (shard ended, shutdown, stream no longer tracked).
    Released,
    /// A call failed; the worker goes on (retries, or another worker takes over).
    Error {
        /// The error, in one line.
        message: String,
    },
}

impl JournalEvent {
    /// A short name for the event, as shown on the status page (`taken`, `stolen`, `lost`,
    /// `handoff-requested`, `handed-off`, `released`, `error`).
    pub fn name(&self) -> &'static str {
        match self {
            JournalEvent::Taken { stolen: false, .. } => "taken",
            JournalEvent::Taken { stolen: true, .. } => "stolen",
            JournalEvent::Lost => "lost",
            JournalEvent::HandoffRequested => "handoff-requested",
            JournalEvent::HandedOff => "handed-off",
            JournalEvent::Released => "released",
            JournalEvent::Error { .. } => "error",
        }
    }
}

/// One entry of a [`Journal`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalEntry {
    /// When it happened (wall clock).
    pub at: SystemTime,
    /// The lease it concerns, if any.
    pub lease: Option<String>,
    /// What happened.
    pub event: JournalEvent,
}

/// The two bounded rings of a worker's recent moves and errors. Cheap to write (a short
/// mutex-held push), so it is written on every move and every logged failure.
#[derive(Debug)]
pub struct Journal {
    moves: Mutex<VecDeque<JournalEntry>>,
    errors: Mutex<VecDeque<JournalEntry>>,
    capacity: usize,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new(DEFAULT_JOURNAL_CAPACITY)
    }
}

impl Journal {
    /// A journal keeping the last `capacity` moves and the last `capacity` errors (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            moves: Mutex::new(VecDeque::with_capacity(capacity)),
            errors: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Records an event now; errors go to the error ring, everything else to the moves.
    pub fn record(&self, lease: Option<&str>, event: JournalEvent) {
        let ring = match event {
            JournalEvent::Error { .. } => &self.errors,
            _ => &self.moves,
        };
        let entry = JournalEntry {
            at: SystemTime::now(),
            lease: lease.map(str::to_owned),
            event,
        };
        let mut ring = lock(ring);
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// Records a failed call.
    pub fn error(&self, lease: Option<&str>, message: impl std::fmt::Display) {
        self.record(
            lease,
            JournalEvent::Error {
                message: message.to_string(),
            },
        );
    }

    /// The recent moves, newest first.
    pub fn moves(&self) -> Vec<JournalEntry> {
        lock(&self.moves).iter().rev().cloned().collect()
    }

    /// The recent errors, newest first.
    pub fn errors(&self) -> Vec<JournalEntry> {
        lock(&self.errors).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_separately_and_read_newest_first() {
        let journal = Journal::new(3);
        for i in 0..5 {
            journal.record(Some(&format!("shard-{i}")), JournalEvent::Lost);
        }
        journal.error(None, "throttled");
        let moves = journal.moves();
        assert_eq!(moves.len(), 3);
        let keys: Vec<_> = moves
            .iter()
            .map(|e| e.lease.clone().unwrap_or_default())
            .collect();
        assert_eq!(keys, ["shard-4", "shard-3", "shard-2"]);
        assert_eq!(
            journal.errors(),
            vec![JournalEntry {
                at: journal.errors()[0].at,
                lease: None,
                event: JournalEvent::Error {
                    message: "throttled".into()
                }
            }]
        );
        assert_eq!(
            JournalEvent::Taken {
                previous_owner: None,
                stolen: true
            }
            .name(),
            "stolen"
        );
    }
}
