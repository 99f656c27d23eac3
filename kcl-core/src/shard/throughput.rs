//! A shard's throughput, smoothed: bytes and records per second of what its consumer delivered,
//! as an exponentially weighted rate over a few seconds (time constant [`ThroughputMeter::TAU`]).
//!
//! Each delivery adds its bytes and records to a sum that decays with `exp(-elapsed / tau)`;
//! the rate is that sum divided by `tau × (1 - exp(-age / tau))` (`age`: time since the meter
//! started), so a steady stream reads at its true rate from the first seconds on, and an idle
//! shard decays to zero. Pure: every call takes the time, so tests need no sleeps.

use std::time::Duration;

use tokio::time::Instant;

/// Bytes per kilobyte in `throughputKBps` (the Java KCL 3.x's unit).
pub const BYTES_PER_KB: f64 = 1024.0;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ThroughputMeter {
    started: Instant,
    last: Instant,
    bytes: f64,
    records: f64,
    tau: Duration,
}

impl ThroughputMeter {
    /// The default time constant: the rate follows a change within a few seconds.
    pub const TAU: Duration = Duration::from_secs(5);

    /// A meter starting at `now` with the default time constant.
    pub fn new(now: Instant) -> Self {
        Self::with_tau(now, Self::TAU)
    }

    /// A meter starting at `now` with time constant `tau` (at least 1 ms).
    pub fn with_tau(now: Instant, tau: Duration) -> Self {
        Self {
            started: now,
            last: now,
            bytes: 0.0,
            records: 0.0,
            tau: tau.max(Duration::from_millis(1)),
        }
    }

    fn decay_to(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        if dt > 0.0 {
            let k = (-dt / self.tau.as_secs_f64()).exp();
            self.bytes *= k;
            self.records *= k;
            self.last = now;
        }
    }

    /// Records a delivery of `records` records and `bytes` payload bytes at `now`.
    pub fn record(&mut self, bytes: u64, records: u64, now: Instant) {
        self.decay_to(now);
        self.bytes += bytes as f64;
        self.records += records as f64;
    }

    fn window(&self, now: Instant) -> f64 {
        let tau = self.tau.as_secs_f64();
        let age = now.saturating_duration_since(self.started).as_secs_f64();
        // The weight the window has had so far; never below 1/20 of a full window so that the
        // very first delivery does not read as an absurd rate.
        tau * (1.0 - (-age / tau).exp()).max(0.05)
    }

    fn decayed(&self, value: f64, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        value * (-dt / self.tau.as_secs_f64()).exp()
    }

    /// Bytes per second at `now`.
    pub fn bytes_per_sec(&self, now: Instant) -> f64 {
        self.decayed(self.bytes, now) / self.window(now)
    }

    /// Kilobytes (1024 bytes) per second at `now`: the value of `throughputKBps`.
    pub fn kbps(&self, now: Instant) -> f64 {
        self.bytes_per_sec(now) / BYTES_PER_KB
    }

    /// Records per second at `now`.
    pub fn records_per_sec(&self, now: Instant) -> f64 {
        self.decayed(self.records, now) / self.window(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_reads_at_its_rate_and_an_idle_shard_decays_to_zero() {
        let t0 = Instant::now();
        let mut m = ThroughputMeter::new(t0);
        // 10 batches a second of 100 records of 512 bytes: 500 KB/s, 1000 records/s.
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_millis(100);
            m.record(51_200, 100, t);
        }
        let kbps = m.kbps(t);
        assert!((kbps - 500.0).abs() < 500.0 * 0.1, "{kbps}");
        let rps = m.records_per_sec(t);
        assert!((rps - 1000.0).abs() < 100.0, "{rps}");
        // Even after one second the estimate is in the right range (bias-corrected warm-up).
        let mut early = ThroughputMeter::new(t0);
        let mut t1 = t0;
        for _ in 0..10 {
            t1 += Duration::from_millis(100);
            early.record(51_200, 100, t1);
        }
        let e = early.kbps(t1);
        assert!(e > 400.0 && e < 600.0, "{e}");
        // Idle for a minute: down to almost nothing.
        assert!(m.kbps(t + Duration::from_secs(60)) < 0.1);
    }

    #[test]
    fn a_change_of_rate_is_followed_within_a_few_time_constants() {
        let t0 = Instant::now();
        let mut m = ThroughputMeter::with_tau(t0, Duration::from_secs(1));
        let mut t = t0;
        for _ in 0..50 {
            t += Duration::from_millis(100);
            m.record(10_240, 1, t); // 100 KB/s
        }
        for _ in 0..50 {
            t += Duration::from_millis(100);
            m.record(1_024, 1, t); // 10 KB/s
        }
        let kbps = m.kbps(t);
        assert!(kbps < 15.0 && kbps > 8.0, "{kbps}");
    }
}
