//! The runtime's one backoff type: every retry loop (reads, processor calls, checkpoints,
//! fan-out consumer registration and activation) waits with [`Backoff`], an exponential backoff
//! with jitter (backon's), of one of a few named [`Policy`]s.
//!
//! Why one type: the delays of each kind of retry are chosen in one place (below), jittered the
//! same way (seeded by [`crate::jitter`], so that a test in paused time replays exactly), and
//! a retry loop reads the same everywhere: `tokio::time::sleep(delays.next_delay()).await`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Which retry a [`Backoff`] is for: its delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// A failed stream read (`GetRecords`, `GetShardIterator`, `SubscribeToShard`): 100 ms
    /// doubling to 5 s, forever.
    Read,
    /// A failed (or panicking) processor call, or a failed-batch hook: 100 ms doubling to
    /// 10 s, forever.
    Processor,
    /// A checkpoint write that failed for a retryable reason: 50 ms doubling to 1 s, four
    /// retries, then the error goes to the processor.
    Checkpoint,
    /// Registering the fan-out consumer, or waiting for it to become active: 200 ms doubling
    /// to 5 s, forever.
    Consumer,
}

/// An exponential backoff with jitter of one [`Policy`].
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: Policy,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// A fresh backoff: the next delay is the policy's first.
    pub(crate) fn new(policy: Policy) -> Self {
        let (min, max, times) = match policy {
            Policy::Read => (100, 5_000, None),
            Policy::Processor => (100, 10_000, None),
            Policy::Checkpoint => (50, 1_000, Some(4)),
            Policy::Consumer => (200, 5_000, None),
        };
        let builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(min))
            .with_max_delay(Duration::from_millis(max))
            .with_jitter()
            .with_jitter_seed(crate::jitter::next_seed());
        let builder = match times {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        };
        Self {
            policy,
            delays: builder.build(),
        }
    }

    /// The next delay; `None` once a bounded policy ([`Policy::Checkpoint`]) is exhausted.
    pub(crate) fn next_retry(&mut self) -> Option<Duration> {
        self.delays.next()
    }

    /// The next delay of a policy that retries forever (the maximum delay should the
    /// underlying iterator ever end).
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Duration::from_secs(10))
    }

    /// Starts over from the policy's first delay (after a success).
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_policys_maximum_and_bounded_policies_end() {
        let mut read = Backoff::new(Policy::Read);
        let delays: Vec<Duration> = (0..12).map(|_| read.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(100)));
        // Jitter adds up to the delay itself on top.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[11] >= Duration::from_secs(5));
        let mut checkpoint = Backoff::new(Policy::Checkpoint);
        assert_eq!((0..10).filter_map(|_| checkpoint.next_retry()).count(), 4);
        checkpoint.reset();
        assert!(checkpoint.next_retry().is_some());
    }
}
