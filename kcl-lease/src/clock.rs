//! The clock a coordinator and its held leases read "now" from and run their timers on
//! ([`Clock`]): Tokio's clock in production; in the fleet simulator (feature `testing`), a
//! clock of the simulated process's own ([`ProcessClock`]: a rate of its own, stopped while
//! the host is suspended, timers held while the process is paused).
//!
//! Every decision on validity, expiry and death is taken in this clock's time: the
//! coordinator's "now", its renewal and heartbeat intervals, its watch timers, its call
//! timeouts, a held lease's validity and its hand-off deadline. Production code pays one
//! branch on an `Option` that is always `None` (nothing at all without the `testing` feature).

use std::future::Future;
#[cfg(any(test, feature = "testing"))]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The source of "now" and of timers for one process (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    #[cfg(any(test, feature = "testing"))]
    process: Option<Arc<ProcessClock>>,
}

/// A timeout ran out before the future completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl Clock {
    /// A process's own clock (the simulator).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn process(clock: Arc<ProcessClock>) -> Self {
        Self { process: Some(clock) }
    }

    /// The current instant.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        #[cfg(any(test, feature = "testing"))]
        if let Some(clock) = &self.process {
            return clock.now();
        }
        Instant::now()
    }

    /// Waits until `at` (in this clock's time).
    pub(crate) async fn sleep_until(&self, at: Instant) {
        #[cfg(any(test, feature = "testing"))]
        if let Some(clock) = &self.process {
            return clock.sleep_until(at).await;
        }
        tokio::time::sleep_until(at).await;
    }

    /// Waits for `duration` (in this clock's time).
    pub(crate) async fn sleep(&self, duration: Duration) {
        #[cfg(any(test, feature = "testing"))]
        if let Some(clock) = &self.process {
            return clock.sleep_until(clock.now() + duration).await;
        }
        tokio::time::sleep(duration).await;
    }

    /// `future`'s output, or [`Elapsed`] if it did not complete within `limit` (as
    /// `tokio::time::timeout`: the future is polled first).
    pub(crate) async fn timeout<F: Future>(&self, limit: Duration, future: F) -> Result<F::Output, Elapsed> {
        #[cfg(any(test, feature = "testing"))]
        if let Some(clock) = &self.process {
            let deadline = clock.now() + limit;
            return tokio::select! {
                biased;
                out = future => Ok(out),
                () = clock.sleep_until(deadline) => Err(Elapsed),
            };
        }
        tokio::time::timeout(limit, future).await.map_err(|_| Elapsed)
    }

    /// An interval of `period` whose first tick completes at once and whose missed ticks are
    /// delayed (`MissedTickBehavior::Delay`).
    pub(crate) fn interval(&self, period: Duration) -> Interval {
        #[cfg(any(test, feature = "testing"))]
        if let Some(clock) = &self.process {
            return Interval(IntervalInner::Process {
                clock: clock.clone(),
                next: clock.now(),
                period,
            });
        }
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Interval(IntervalInner::Tokio(interval))
    }
}

/// See [`Clock::interval`].
#[derive(Debug)]
pub(crate) struct Interval(IntervalInner);

#[derive(Debug)]
enum IntervalInner {
    Tokio(tokio::time::Interval),
    #[cfg(any(test, feature = "testing"))]
    Process {
        clock: Arc<ProcessClock>,
        next: Instant,
        period: Duration,
    },
}

impl Interval {
    /// Completes at the next tick. Cancel safe: dropped before it completes, it consumes no
    /// tick.
    pub(crate) async fn tick(&mut self) {
        match &mut self.0 {
            IntervalInner::Tokio(interval) => {
                interval.tick().await;
            }
            #[cfg(any(test, feature = "testing"))]
            IntervalInner::Process { clock, next, period } => {
                clock.sleep_until(*next).await;
                // As Tokio's `MissedTickBehavior::Delay` (a tick counts as missed 5 ms late).
                let now = clock.now();
                *next = if now > *next + Duration::from_millis(5) {
                    now + *period
                } else {
                    *next + *period
                };
            }
        }
    }
}

/// One simulated process's clock: its monotonic clock runs at `rate` times Tokio's (paused)
/// clock and stands still while the host is suspended; its boot clock goes on meanwhile (the
/// gap between the two is what [`crate::suspend::SuspendDetector`] watches). While the process
/// is paused or suspended, its timers do not fire: they fire when it resumes, if due by then.
/// A pause or suspend ends by itself at the Tokio instant it was given (a driver that awaits
/// the process meanwhile never deadlocks on its held timers), or earlier with
/// [`ProcessClock::resume`]. Instants of this clock start equal to Tokio's when it is made;
/// they are meaningful only to the process that owns the clock.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub(crate) struct ProcessClock {
    state: Mutex<ProcessState>,
    /// Notified at every change of suspend or pause: sleepers recompute their deadline. A
    /// `Notify`, not a `watch` channel: a channel's receivers are woken in an order drawn
    /// from the runtime's random generator, and a run would not replay exactly.
    changed: tokio::sync::Notify,
}

#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
struct ProcessState {
    /// This clock's reading at `anchor` (Tokio's time).
    local: Instant,
    anchor: Instant,
    rate: f64,
    /// The monotonic clock stands still until then (Tokio's time: the host is suspended).
    stopped_until: Option<Instant>,
    /// Timers do not fire until then (Tokio's time: the process is paused or suspended).
    held_until: Option<Instant>,
    /// Boot time minus monotonic time, as of `anchor`.
    gap: Duration,
}

#[cfg(any(test, feature = "testing"))]
impl ProcessState {
    fn scaled(&self, real: Instant) -> Duration {
        real.saturating_duration_since(self.anchor).mul_f64(self.rate)
    }

    /// Ends a suspend or pause whose end has come by `real`.
    fn settle(&mut self, real: Instant) {
        if let Some(until) = self.stopped_until.filter(|until| *until <= real) {
            self.gap += self.scaled(until);
            self.anchor = self.anchor.max(until);
            self.stopped_until = None;
        }
        if self.held_until.is_some_and(|until| until <= real) {
            self.held_until = None;
        }
    }

    /// The monotonic time at `real` (settled).
    fn now(&self, real: Instant) -> Instant {
        if self.stopped_until.is_some() {
            self.local
        } else {
            self.local + self.scaled(real)
        }
    }

    /// Boot minus monotonic time at `real` (settled).
    fn gap(&self, real: Instant) -> Duration {
        if self.stopped_until.is_some() {
            self.gap + self.scaled(real)
        } else {
            self.gap
        }
    }

    /// Moves the anchor to `real` (before a change of the clock's state).
    fn reanchor(&mut self, real: Instant) {
        self.settle(real);
        self.local = self.now(real);
        self.gap = self.gap(real);
        self.anchor = real;
    }
}

#[cfg(any(test, feature = "testing"))]
impl ProcessClock {
    /// A clock running at `rate` times Tokio's (1.0: the same), reading Tokio's time now.
    pub(crate) fn new(rate: f64) -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(ProcessState {
                local: now,
                anchor: now,
                rate,
                stopped_until: None,
                held_until: None,
                gap: Duration::ZERO,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The state, settled as of now (and now, Tokio's).
    fn state(&self) -> (std::sync::MutexGuard<'_, ProcessState>, Instant) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let real = Instant::now();
        state.settle(real);
        (state, real)
    }

    fn change(&self, f: impl FnOnce(&mut ProcessState, Instant)) {
        {
            let (mut state, real) = self.state();
            state.reanchor(real);
            f(&mut state, real);
        }
        self.changed.notify_waiters();
    }

    /// The process's monotonic time now.
    pub(crate) fn now(&self) -> Instant {
        let (state, real) = self.state();
        state.now(real)
    }

    /// Boot time minus monotonic time: how long the host has been suspended (at the clock's
    /// rate), for [`crate::suspend::SuspendDetector`].
    pub(crate) fn suspended_gap(&self) -> Duration {
        let (state, real) = self.state();
        state.gap(real)
    }

    /// The clock's rate.
    pub(crate) fn rate(&self) -> f64 {
        self.state().0.rate
    }

    /// The host is suspended for `length` (Tokio's time): the monotonic clock stops, the boot
    /// clock goes on, no timer fires.
    pub(crate) fn suspend(&self, length: Duration) {
        self.change(|s, real| {
            s.stopped_until = Some(real + length);
            s.held_until = s.held_until.max(Some(real + length));
        });
    }

    /// The process is paused for `length` (Tokio's time): its clocks go on, its timers do not
    /// fire.
    pub(crate) fn pause(&self, length: Duration) {
        self.change(|s, real| s.held_until = s.held_until.max(Some(real + length)));
    }

    /// Ends a suspend or pause now (the quiet phase).
    pub(crate) fn resume(&self) {
        self.change(|s, _| {
            s.stopped_until = None;
            s.held_until = None;
        });
    }

    /// Waits until this clock reads `at` or later, and the process is not held.
    pub(crate) async fn sleep_until(&self, at: Instant) {
        loop {
            // Before the state is read: a change from now on wakes it.
            let changed = self.changed.notified();
            let wake = {
                let (state, real) = self.state();
                match (state.held_until, state.stopped_until) {
                    (Some(until), _) | (None, Some(until)) => until,
                    (None, None) => {
                        let now = state.now(real);
                        if now >= at {
                            return;
                        }
                        // Rounded up: a wake-up a little early only loops once more.
                        real + (at - now).div_f64(state.rate) + Duration::from_nanos(1)
                    }
                }
            };
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(wake) => {}
                () = changed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_process_clock_runs_at_its_rate_and_stops_while_suspended() {
        let clock = Arc::new(ProcessClock::new(1.01));
        let c = Clock::process(clock.clone());
        let t0 = c.now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(c.now() - t0, Duration::from_millis(10_100));
        clock.suspend(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(c.now() - t0, Duration::from_millis(10_100));
        assert_eq!(clock.suspended_gap(), Duration::from_millis(4_040));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.now() - t0, Duration::from_millis(11_110));
        assert_eq!(clock.suspended_gap(), Duration::from_millis(5_050));
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_clock_holds_its_timers_while_paused() {
        let clock = Arc::new(ProcessClock::new(0.5));
        let c = Clock::process(clock.clone());
        let real = Instant::now();
        c.sleep(Duration::from_secs(1)).await;
        assert!((Instant::now() - real).as_millis().abs_diff(2000) <= 1);
        let paused = {
            let clock = clock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                clock.pause(Duration::from_secs(10));
            })
        };
        let real = Instant::now();
        assert_eq!(
            c.timeout(Duration::from_secs(1), std::future::pending::<()>())
                .await,
            Err(Elapsed)
        );
        // Due 2 s in, held from 0.5 s to 10.5 s: fires at the resume.
        assert!((Instant::now() - real).as_millis().abs_diff(10_500) <= 1);
        paused.await.expect("the pausing task ends");
        let mut interval = c.interval(Duration::from_secs(1));
        let real = Instant::now();
        interval.tick().await;
        interval.tick().await;
        assert!((Instant::now() - real).as_millis().abs_diff(2000) <= 1);
    }
}
