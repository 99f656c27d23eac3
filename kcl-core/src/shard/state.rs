//! The shard consumer's life cycle as a pure state machine: no I/O, no time.
//!
//! ```text
//!                     ParentsFinished               Initialized
//!  WaitingOnParents ─────────────────▶ Initializing ───────────▶ Processing
//!        │                                  │                        │
//!        │ Shutdown(_)                      │ ShardEndReached        │ ShardEndReached
//!        │ (no callback has run)            ▼                        │
//!        │                             ShardEnding ◀─────────────────┘
//!        │                                  │ ShardEndCheckpointed
//!        ▼                                  ▼
//!     Complete ◀────────────────────────────┘
//!        ▲
//!        │ Stopped
//!  ShuttingDown(reason) ◀── Shutdown(reason) from Initializing, Processing or ShardEnding
//!        ↺ Shutdown(other): the higher-ranked reason is kept
//! ```
//!
//! Any other event leaves the state as it is; `Complete` is final. The test
//! `the_diagram_is_the_code` checks every arrow above against [`ShardState::next`].
//!
//! Shutdown reasons are ranked as in the Java KCL (`LeaseLost` > `ShardEnd` > `Requested`):
//! a shutdown already under way can only be escalated, never downgraded.

/// Why a shard consumer stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShutdownReason {
    /// The worker is shutting down, or the lease is being handed over gracefully: the
    /// processor gets `shutdown_requested` and may checkpoint.
    Requested,
    /// The shard ended but its end could not be completed (for example the lease was handed
    /// over during `shard_ended`).
    ShardEnd,
    /// The lease was lost: the processor gets `lease_lost` and cannot checkpoint.
    LeaseLost,
}

/// Where a shard consumer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Waiting until every parent shard has been checkpointed at `SHARD_END`.
    WaitingOnParents,
    /// Reading the checkpoint and calling the processor's `initialize`.
    Initializing,
    /// Reading records and calling `process_records`.
    Processing,
    /// Every record was delivered: creating child leases and calling `shard_ended` until the
    /// processor checkpoints `SHARD_END`.
    ShardEnding,
    /// Calling `shutdown_requested` or `lease_lost`.
    ShuttingDown(ShutdownReason),
    /// Done; the lease is released (or already lost).
    Complete,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardEvent {
    /// Every parent reached `SHARD_END` (or has no lease).
    ParentsFinished,
    /// The processor was initialized.
    Initialized,
    /// The reader delivered the last record of a closed shard (or the checkpoint already was
    /// `SHARD_END`).
    ShardEndReached,
    /// The processor checkpointed `SHARD_END`.
    ShardEndCheckpointed,
    /// The consumer must stop for this reason.
    Shutdown(ShutdownReason),
    /// The shutdown callback returned.
    Stopped,
}

impl ShardState {
    /// The state after `event`. Events that make no sense in a state leave it unchanged.
    pub fn next(self, event: ShardEvent) -> ShardState {
        use ShardEvent as E;
        use ShardState as S;
        match (self, event) {
            (S::Complete, _) => S::Complete,
            (S::WaitingOnParents, E::ParentsFinished) => S::Initializing,
            // No processor callback has run yet: nothing to shut down.
            (S::WaitingOnParents, E::Shutdown(_)) => S::Complete,
            (S::Initializing, E::Initialized) => S::Processing,
            (S::Initializing | S::Processing, E::ShardEndReached) => S::ShardEnding,
            (S::ShardEnding, E::ShardEndCheckpointed) => S::Complete,
            (S::ShuttingDown(current), E::Shutdown(reason)) => S::ShuttingDown(current.max(reason)),
            (S::ShuttingDown(_), E::Stopped) => S::Complete,
            (_, E::Shutdown(reason)) => S::ShuttingDown(reason),
            (state, _) => state,
        }
    }

    /// Whether the consumer has finished.
    pub fn is_complete(self) -> bool {
        self == ShardState::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::ShardEvent as E;
    use super::ShardState as S;
    use super::*;

    fn run(events: &[ShardEvent]) -> ShardState {
        events.iter().fold(S::WaitingOnParents, |s, e| s.next(*e))
    }

    #[test]
    fn happy_path_to_shard_end() {
        let s = run(&[E::ParentsFinished, E::Initialized, E::ShardEndReached]);
        assert_eq!(s, S::ShardEnding);
        assert!(s.next(E::ShardEndCheckpointed).is_complete());
    }

    #[test]
    fn shard_end_is_not_complete_until_checkpointed() {
        let s = run(&[
            E::ParentsFinished,
            E::Initialized,
            E::ShardEndReached,
            E::Stopped,
            E::Initialized,
        ]);
        assert_eq!(s, S::ShardEnding);
    }

    #[test]
    fn children_cannot_start_before_parents_finish() {
        assert_eq!(run(&[E::Initialized, E::ShardEndReached]), S::WaitingOnParents);
    }

    #[test]
    fn shutdown_reasons_only_escalate() {
        let s = run(&[
            E::ParentsFinished,
            E::Initialized,
            E::Shutdown(ShutdownReason::Requested),
        ]);
        assert_eq!(s, S::ShuttingDown(ShutdownReason::Requested));
        let s = s.next(E::Shutdown(ShutdownReason::LeaseLost));
        assert_eq!(s, S::ShuttingDown(ShutdownReason::LeaseLost));
        let s = s.next(E::Shutdown(ShutdownReason::Requested));
        assert_eq!(s, S::ShuttingDown(ShutdownReason::LeaseLost));
        assert!(s.next(E::Stopped).is_complete());
    }

    #[test]
    fn shutdown_while_waiting_on_parents_completes_without_callbacks() {
        assert!(run(&[E::Shutdown(ShutdownReason::LeaseLost)]).is_complete());
    }

    #[test]
    fn lease_loss_during_shard_end_shuts_down() {
        let s = run(&[E::ParentsFinished, E::Initialized, E::ShardEndReached]);
        assert_eq!(
            s.next(E::Shutdown(ShutdownReason::LeaseLost)),
            S::ShuttingDown(ShutdownReason::LeaseLost)
        );
    }
}

#[cfg(test)]
mod diagram {
    use super::{ShardEvent as E, ShardState as S, ShutdownReason as R};

    #[test]
    fn the_diagram_is_the_code() {
        let arrows = [
            (S::WaitingOnParents, E::ParentsFinished, S::Initializing),
            (S::WaitingOnParents, E::Shutdown(R::Requested), S::Complete),
            (S::WaitingOnParents, E::Shutdown(R::LeaseLost), S::Complete),
            (S::Initializing, E::Initialized, S::Processing),
            (S::Initializing, E::ShardEndReached, S::ShardEnding),
            (S::Processing, E::ShardEndReached, S::ShardEnding),
            (S::ShardEnding, E::ShardEndCheckpointed, S::Complete),
            (
                S::Initializing,
                E::Shutdown(R::Requested),
                S::ShuttingDown(R::Requested),
            ),
            (
                S::Processing,
                E::Shutdown(R::LeaseLost),
                S::ShuttingDown(R::LeaseLost),
            ),
            (
                S::ShardEnding,
                E::Shutdown(R::ShardEnd),
                S::ShuttingDown(R::ShardEnd),
            ),
            (
                S::ShuttingDown(R::Requested),
                E::Shutdown(R::LeaseLost),
                S::ShuttingDown(R::LeaseLost),
            ),
            (
                S::ShuttingDown(R::LeaseLost),
                E::Shutdown(R::Requested),
                S::ShuttingDown(R::LeaseLost),
            ),
            (S::ShuttingDown(R::ShardEnd), E::Stopped, S::Complete),
        ];
        for (from, event, to) in arrows {
            assert_eq!(from.next(event), to, "{from:?} --{event:?}-->");
        }
        // Everything else stays put; Complete is final.
        let states = [
            S::WaitingOnParents,
            S::Initializing,
            S::Processing,
            S::ShardEnding,
            S::ShuttingDown(R::Requested),
            S::Complete,
        ];
        let events = [
            E::ParentsFinished,
            E::Initialized,
            E::ShardEndReached,
            E::ShardEndCheckpointed,
            E::Shutdown(R::Requested),
            E::Stopped,
        ];
        for from in states {
            for event in events {
                let to = from.next(event);
                let drawn = arrows.iter().any(|(f, e, _)| *f == from && *e == event)
                    || (matches!(event, E::Shutdown(_)) && from != S::Complete)
                    || (from == S::ShuttingDown(R::Requested) && event == E::Stopped);
                if !drawn {
                    assert_eq!(to, from, "{from:?} --{event:?}--> {to:?} is not in the diagram");
                }
            }
        }
    }
}
