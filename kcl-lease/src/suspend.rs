//! Detects that the host was suspended (laptop sleep, VM hibernation, some VM pauses).
//!
//! A worker's validity is measured with the monotonic clock (`CLOCK_MONOTONIC` on Linux), which
//! does not advance while the host is suspended: after a resume, a worker would believe that
//! the time it slept never passed and go on processing leases that others took meanwhile. Linux
//! keeps a second clock, `CLOCK_BOOTTIME`, that does count suspended time; the difference
//! between the two grows by exactly the time spent suspended (both are slewed alike by NTP).
//! [`SuspendDetector`] watches that difference. Elsewhere it reports nothing (no such clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How much the two clocks may drift apart before the worker counts as having been suspended.
pub const SUSPEND_THRESHOLD: Duration = Duration::from_millis(50);

/// A source of "time the monotonic clock missed since boot" (boot time minus monotonic time).
pub type GapSource = fn() -> Option<Duration>;

/// `CLOCK_BOOTTIME - CLOCK_MONOTONIC`: the time the host spent suspended since it booted.
#[cfg(target_os = "linux")]
pub fn suspended_since_boot() -> Option<Duration> {
    fn read(clock: libc::clockid_t) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it, and
        // both clock ids exist on every Linux since 2.6.39.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        if rc != 0 {
            return None;
        }
        Some(Duration::new(
            u64::try_from(ts.tv_sec).ok()?,
            u32::try_from(ts.tv_nsec).ok()?,
        ))
    }
    // Monotonic first: a suspend between the two reads makes the gap look larger, never
    // smaller (an extra lapse, never a missed one). But so does a thread preempted between
    // them, by as long as it waited (20 ms seen on a loaded 2-core host; past the threshold,
    // the worker would give up everything for nothing): the boot read is bracketed by two
    // monotonic ones, and of a few tries the narrowest bracket is kept. A suspend inside it
    // still counts in full: the monotonic clock stands still while the host sleeps.
    let mut best: Option<(Duration, Duration)> = None;
    for _ in 0..4 {
        let monotonic = read(libc::CLOCK_MONOTONIC)?;
        let boot = read(libc::CLOCK_BOOTTIME)?;
        let after = read(libc::CLOCK_MONOTONIC)?;
        let width = after.saturating_sub(monotonic);
        if best.is_none_or(|(narrowest, _)| width < narrowest) {
            best = Some((width, boot.saturating_sub(monotonic)));
        }
        if width < Duration::from_millis(1) {
            break;
        }
    }
    best.map(|(_, gap)| gap)
}

/// Elsewhere: unknown.
#[cfg(not(target_os = "linux"))]
pub fn suspended_since_boot() -> Option<Duration> {
    None
}

/// Remembers the suspended time at a baseline and tells whether the host was suspended since.
#[derive(Debug)]
pub struct SuspendDetector {
    source: Source,
    /// The gap at the baseline, in nanoseconds (`u64::MAX`: none).
    baseline: AtomicU64,
}

/// Where the gap is read from: a function, or (the simulator) a simulated process's clocks.
enum Source {
    Fn(GapSource),
    #[cfg(any(test, feature = "testing"))]
    Shared(std::sync::Arc<dyn Fn() -> Option<Duration> + Send + Sync>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Fn(source) => f.debug_tuple("Fn").field(source).finish(),
            #[cfg(any(test, feature = "testing"))]
            Source::Shared(_) => f.write_str("Shared"),
        }
    }
}

impl SuspendDetector {
    /// A detector on the host's clocks, with the baseline now.
    pub fn new() -> Self {
        Self::with_source(suspended_since_boot)
    }

    /// A detector on another source (tests).
    pub fn with_source(source: GapSource) -> Self {
        Self::from_source(Source::Fn(source))
    }

    /// A detector on a closure (the simulator: a process's own clocks).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn with_shared_source(
        source: std::sync::Arc<dyn Fn() -> Option<Duration> + Send + Sync>,
    ) -> Self {
        Self::from_source(Source::Shared(source))
    }

    fn from_source(source: Source) -> Self {
        let this = Self {
            source,
            baseline: AtomicU64::new(u64::MAX),
        };
        this.rebase();
        this
    }

    fn gap(&self) -> Option<u64> {
        let gap = match &self.source {
            Source::Fn(source) => source(),
            #[cfg(any(test, feature = "testing"))]
            Source::Shared(source) => source(),
        };
        gap.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1))
    }

    /// Takes the current gap as the new baseline (a fresh validity starts now).
    pub fn rebase(&self) {
        if let Some(gap) = self.gap() {
            self.baseline.store(gap, Ordering::SeqCst);
        }
    }

    /// The time the host was suspended since the baseline, if more than [`SUSPEND_THRESHOLD`].
    pub fn suspended(&self) -> Option<Duration> {
        let base = self.baseline.load(Ordering::SeqCst);
        let gap = self.gap()?;
        if base == u64::MAX {
            return None;
        }
        let missed = Duration::from_nanos(gap.saturating_sub(base));
        (missed > SUSPEND_THRESHOLD).then_some(missed)
    }
}

impl Default for SuspendDetector {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FAKE_GAP_MS: AtomicU64 = AtomicU64::new(0);

    fn fake() -> Option<Duration> {
        Some(Duration::from_millis(FAKE_GAP_MS.load(Ordering::SeqCst)))
    }

    #[test]
    fn a_growing_gap_between_the_clocks_is_a_suspend() {
        FAKE_GAP_MS.store(1_000, Ordering::SeqCst);
        let d = SuspendDetector::with_source(fake);
        assert_eq!(d.suspended(), None);
        FAKE_GAP_MS.store(1_040, Ordering::SeqCst);
        assert_eq!(d.suspended(), None, "within the threshold");
        FAKE_GAP_MS.store(31_000, Ordering::SeqCst);
        assert_eq!(d.suspended(), Some(Duration::from_secs(30)));
        d.rebase();
        assert_eq!(d.suspended(), None);
    }

    #[test]
    fn the_host_clocks_are_readable_here() {
        if cfg!(target_os = "linux") {
            let gap = suspended_since_boot().expect("both clocks");
            let again = suspended_since_boot().expect("both clocks");
            assert!(again >= gap || gap - again < SUSPEND_THRESHOLD);
            assert_eq!(SuspendDetector::new().suspended(), None);
        }
    }
}
