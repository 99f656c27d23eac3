//! A deterministic fleet simulator for lease coordination (feature `testing`): real
//! [`crate::LeaseCoordinator`]s and simulated shard consumers on one shared, fault-injecting
//! lease table, in paused Tokio time, with the invariants checked as the run goes.
//!
//! Why: the coordinator's safety rests on interleavings that the in-memory store never
//! produces (stale eventually consistent scans, slow calls that return old rows, writes
//! applied whose reply was lost, reads failing while writes work, paused and duplicated
//! processes). One seed gives one run, replayable, so a violation comes with the seed that
//! reproduces it.
//!
//! # Layout
//! - `rng`: splitmix64 and keyed draws.
//! - `store`: [`SimLeaseStore`], the shared tables with DynamoDB's consistency and per-process
//!   faults ([`WorkerFaults`]).
//! - `invariants`: [`Monitor`], the event log and the overlap and checkpoint checks.
//! - `fleet`: the driver of one run ([`run_seed`]): processes, consumers, scenario events, the
//!   quiet phase and its liveness check.
//! - `tests`: the store's semantics, fault-free fleets, replay; and, ignored until the
//!   review's findings are fixed, sweeps of many seeds that print every violation.
//!
//! # A run
//! 1. `workers` coordinators start at random offsets within the first second, each on a clock
//!    of its own (a rate the seed draws within `1 ± clock_drift_ppm`, ±1 % by default: the
//!    coordinator's "now", timers, call timeouts and validities run on it), each with a
//!    consumer per acquired lease (batches of 50–300 ms, checkpoints every N batches or T
//!    seconds, N and T by the seed; a stolen lease first waits for its hand-off).
//! 2. The faulty phase (`faulty_phase`, from 2 s on): the enabled [`FaultClass`]es, as the seed
//!    draws them: per-call store faults on some processes, and scenario events (crashes and
//!    restarts, pauses longer than the failover time, a second process with an existing id,
//!    graceful shutdowns, read outages, an unusable heartbeat table, suspends of a process's
//!    host: its monotonic clock stops while its boot clock goes on, and the real
//!    [`crate::suspend::SuspendDetector`] reads the gap). And, each from a stream
//!    of its own (the other events of a seed stay as they were), until two failover times
//!    before the quiet phase:
//!    - `kcl-admin reset` of one lease ([`FaultClass::AdminReset`], 1–3 per run, half of them
//!      `--force`): its checkpoint set back to an earlier position or `TRIM_HORIZON` and its
//!      owner cleared, conditionally on the row read. Without `--force`, only a lease not
//!      held live (two reads a failover time apart: neither its counter nor its owner's
//!      heartbeat moved; a live one is refused); with it, any lease, announced as the tool
//!      does (a lapsed heartbeat row of `kcl-admin`, a nudge of every worker's row). The
//!      checkpoint may move back through a reset only; a consumer must then resume from
//!      the reset checkpoint. A forced reset's owner may go on processing until it learns of
//!      the reset (the window F8 of docs/coordination.md leaves to the operator): its
//!      consumers of that lease (those started before it took the lease again, a take from
//!      before the reset confirmed late included) are not checked for overlaps, but must
//!      have stopped by the quiet phase.
//!    - Reshards ([`FaultClass::Reshard`], 0–3 per run): a split (an open shard ends up to
//!      1,500 records past those delivered so far; two child leases with it as parent) or a
//!      merge (two shards end; one child with both as parents), the child leases created
//!      as the shard sync does. A consumer processes an ended shard to its end and
//!      checkpoints `SHARD_END` (the lease is then finished: released, never taken again);
//!      a child's consumer reads its parents' leases until each is finished, as the real
//!      shard consumer does. No batch of a child may start before every parent's lease is
//!      checkpointed `SHARD_END`, and a parent is checkpointed `SHARD_END` only once its
//!      last record was delivered.
//! 3. The quiet phase: every fault stops, crashed processes scheduled to restart do, and once
//!    the delays already injected have run out, every shard not finished must be held by a
//!    running process and processed again within `failover_time + 2 s` (a child whose
//!    parents are not finished, or finished less than a second before, only held), every
//!    admin reset must have had a consumer resume from it, with the leases spread evenly
//!    (max − min ≤ 1 per worker id, finished leases not counted).
//!
//! ```
//! use kcl_lease::sim::{run_seed, SimConfig};
//! use kcl_lease::LeaseRenewal;
//!
//! let config = SimConfig::fault_free(LeaseRenewal::PerLease);
//! let summary = run_seed(7, &config).expect("a fault-free fleet never violates");
//! assert!(summary.batches > 0);
//! ```
//!
//! # What the model leaves out
//! - Clocks are Tokio's paused clock scaled per process: a constant rate per process (no NTP
//!   slewing, no steps; ±1 % by default, `clock_drift_ppm` for more), and a suspend stops a
//!   process's monotonic clock whole while its boot clock runs at the same rate (the real
//!   `CLOCK_BOOTTIME` and `CLOCK_MONOTONIC` are read by the detector, not modelled). A suspend
//!   that also stops the boot clock (a VM paused with its clocks frozen) is not modelled: no
//!   coordinator can tell it from no time passing. Consumers (batches, checkpoint intervals)
//!   and the store run on the fleet's clock.
//! - A pause or suspend is modelled, not real: the process's store calls are delayed by its
//!   length and its consumers sleep; its coordinator's timers (on its clock) do not fire until
//!   it resumes, but a call already in flight (an awaited store call) completes as the store
//!   delays it.
//! - Scans are atomic (one page); no load balancing, no Java workers.
//! - Reshards are the lease table's side of them: the children's leases are created at once
//!   (as the shard sync does, not by the parent's consumer at its end), finished leases are
//!   never deleted, no `childShardIds` are written, and an admin reset never picks a
//!   finished lease (a reset of a parent whose child has started is the operator's mistake,
//!   not modelled).
//! - A non-forced `kcl-admin reset` watches for a failover time (the tool's `--watch`): a
//!   watch shorter than that can take an owner whose renewals failed for a while for a
//!   stopped one, which still processes until its validity runs out.
//! - Processing is a sleep: a batch's records are numbers, checkpoints are positions. The real
//!   runtime (kcl-core's schedulers, shard consumers and processors on a local stream) runs on
//!   this table in `tests/tests/chaos.rs`, its batches checked by the same [`Monitor`].
//!
//! # Determinism
//! Everything random is drawn from the seed (splitmix64, no `RandomState`); time is Tokio's
//! paused clock on a current-thread runtime (a process's clock is a function of it; its
//! rate is drawn from a stream keyed by the process's name, its suspends from a stream of
//! their own, so the fleet's and the scenario's draws are those of the seed before clocks); consumers are named by process, lease and count,
//! not by the order they started in; the coordinator's `tokio::select!`s are `biased` (a
//! plain one polls ready branches in an order seeded per runtime) and its leader cleans up
//! stale heartbeat rows in id order (it used `HashMap` order), and nudges the others in id
//! order too (it spawned them in `HashMap` order); a process's clock wakes its
//! sleepers with a `Notify`, not a `watch` channel (whose receivers wake in an order drawn
//! from the runtime's random generator). Store faults are drawn per call
//! *identity* (process, operation, lease, how many such calls before), not per call order,
//! and eventually consistent reads pick a state by time, never between two writes of one
//! instant. Replays compare [`canonical`] logs (sorted within each instant); 200 replays
//! (100 seeds per mode) gave identical logs, not just canonical ones. Random incarnations are
//! never written to the log.

mod fleet;
mod invariants;
mod rng;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

pub use fleet::{run_seed, run_seed_logged};
pub use invariants::{canonical, BatchId, Event, EventKind, Invariant, Monitor, Violation};
pub use store::{SimLeaseStore, WorkerFaults};

use crate::heartbeat::LeaseRenewal;

/// The default bound of the processes' clock rates: ±1 % (see `SimConfig::clock_drift_ppm`).
const DEFAULT_CLOCK_DRIFT_PPM: u32 = 10_000;

/// A class of fault or scenario event the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FaultClass {
    /// A delay before a call reaches the table (counted per call).
    DelayBefore,
    /// A delay after a call was applied: a slow reply, old rows (per call).
    DelayAfter,
    /// A reply later than half the failover time, up to twice it, after the call was applied
    /// (a stalled connection, a starved client): a strongly consistent read returns rows
    /// older than the failover time, as the review's F4 needs (per call).
    SlowReply,
    /// A throttled call: an error, nothing applied (per call).
    Throttled,
    /// A write applied whose reply was lost: a backend error (per call).
    ReplyLost,
    /// Eventually consistent reads lag by up to 500 ms (counted as stale reads, not here).
    StaleRead,
    /// A process's reads fail while its writes work, for a while (per failed call).
    ReadOutage,
    /// A process's heartbeat table answers `Unsupported` (per failed call).
    HeartbeatUnusable,
    /// A process paused for longer than the failover time: its clocks go on, its timers do
    /// not fire until it resumes, its store calls are delayed (per pause).
    Pause,
    /// A process crashed, and maybe restarted with the same or a new id (per crash).
    Crash,
    /// A second process started with the id of a running one (per duplicate).
    DuplicateId,
    /// A graceful shutdown: stop taking, release every lease, leave (per shutdown).
    Shutdown,
    /// A batch that takes from half the failover time up to twice it (a processor stalled on
    /// a slow downstream call), ending by the quiet phase: a lease lost meanwhile is let go of
    /// only after it, so its key must not be taken again by the same worker before (the
    /// review's F6; per slow batch).
    SlowBatch,
    /// The host of a process suspended (laptop sleep, VM hibernation) for 100 ms up to twice
    /// the failover time: its monotonic clock stands still while its boot clock goes on, its
    /// timers do not fire and its store calls are delayed; the coordinator's suspend detector
    /// must end its validity when it resumes (F9; per suspend).
    Suspend,
    /// An operator's `kcl-admin reset` of one lease (per reset applied): its checkpoint set
    /// back to an earlier position or `TRIM_HORIZON`, its owner cleared. Without `--force`
    /// only a lease not held live (kcl-admin's two reads a failover time apart: neither its
    /// counter nor its owner's heartbeat moved); with `--force` any lease, announced with a
    /// lapsed heartbeat row of `kcl-admin` and a nudge of every worker's row (F8).
    AdminReset,
    /// A reshard (per reshard): a split (an open shard ends at a position, two child leases
    /// with it as parent) or a merge (two shards end, one child lease with both as parents).
    Reshard,
}

impl FaultClass {
    /// Every class.
    pub const ALL: [FaultClass; 16] = [
        FaultClass::DelayBefore,
        FaultClass::DelayAfter,
        FaultClass::SlowReply,
        FaultClass::Throttled,
        FaultClass::ReplyLost,
        FaultClass::StaleRead,
        FaultClass::ReadOutage,
        FaultClass::HeartbeatUnusable,
        FaultClass::Pause,
        FaultClass::Crash,
        FaultClass::DuplicateId,
        FaultClass::Shutdown,
        FaultClass::SlowBatch,
        FaultClass::Suspend,
        FaultClass::AdminReset,
        FaultClass::Reshard,
    ];

    /// The class's name (`delay-before`, `reply-lost`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            FaultClass::DelayBefore => "delay-before",
            FaultClass::DelayAfter => "delay-after",
            FaultClass::SlowReply => "slow-reply",
            FaultClass::Throttled => "throttled",
            FaultClass::ReplyLost => "reply-lost",
            FaultClass::StaleRead => "stale-read",
            FaultClass::ReadOutage => "read-outage",
            FaultClass::HeartbeatUnusable => "heartbeat-unusable",
            FaultClass::Pause => "pause",
            FaultClass::Crash => "crash",
            FaultClass::DuplicateId => "duplicate-id",
            FaultClass::Shutdown => "shutdown",
            FaultClass::SlowBatch => "slow-batch",
            FaultClass::Suspend => "suspend",
            FaultClass::AdminReset => "admin-reset",
            FaultClass::Reshard => "reshard",
        }
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of the simulated runs (the seed draws everything else).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimConfig {
    /// How the coordinators renew their leases.
    pub renewal: LeaseRenewal,
    /// Processes started at the beginning (at least 1).
    pub workers: usize,
    /// Leases (shards) in the table.
    pub shards: usize,
    /// The coordinators' failover time (at least 300 ms).
    pub failover_time: Duration,
    /// How long faults are injected (from 2 s on).
    pub faulty_phase: Duration,
    /// The fault classes that may be injected (empty: a fault-free run).
    pub faults: BTreeSet<FaultClass>,
    /// Log every store call in the event log (see [`SimLeaseStore::set_trace`]); off by
    /// default.
    pub trace_calls: bool,
    /// How far a process's clock rate may be from the fleet's, in parts per million: each
    /// process's rate is drawn by the seed within `1 ± clock_drift_ppm / 10⁶` (default
    /// 10,000: ±1 %, so that two clocks differ by less than the coordinator's 2 % validity
    /// margin; 0: one clock for every process).
    pub clock_drift_ppm: u32,
}

impl SimConfig {
    /// 4 workers, 16 shards, a 3 s failover time, 30 s of faults of every class.
    pub fn new(renewal: LeaseRenewal) -> Self {
        Self {
            renewal,
            workers: 4,
            shards: 16,
            failover_time: Duration::from_secs(3),
            faulty_phase: Duration::from_secs(30),
            faults: FaultClass::ALL.into_iter().collect(),
            trace_calls: false,
            clock_drift_ppm: DEFAULT_CLOCK_DRIFT_PPM,
        }
    }

    /// As [`SimConfig::new`], without faults: no fault class at all, not even lagging
    /// eventually consistent reads (add [`FaultClass::StaleRead`] for DynamoDB's lags). The
    /// processes' clock rates still differ within the bound (not a fault: see
    /// [`SimConfig::clock_drift_ppm`]).
    pub fn fault_free(renewal: LeaseRenewal) -> Self {
        Self::new(renewal).with_faults([])
    }

    /// As [`SimConfig::new`], with only the fault classes given.
    #[must_use]
    pub fn with_faults(mut self, faults: impl IntoIterator<Item = FaultClass>) -> Self {
        self.faults = faults.into_iter().collect();
        self
    }

    /// Sets the bound of the processes' clock rates (see [`SimConfig::clock_drift_ppm`]).
    #[must_use]
    pub fn with_clock_drift_ppm(mut self, ppm: u32) -> Self {
        self.clock_drift_ppm = ppm;
        self
    }

    /// Sets the number of workers and shards.
    #[must_use]
    pub fn with_fleet(mut self, workers: usize, shards: usize) -> Self {
        self.workers = workers;
        self.shards = shards;
        self
    }

    /// Why this configuration cannot run as given (it is clamped by [`run_seed`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("at least one worker".into());
        }
        if self.failover_time < Duration::from_millis(300) {
            return Err("failover_time must be at least 300 ms".into());
        }
        Ok(())
    }

    /// A one-line description (for reports).
    pub fn describe(&self) -> String {
        let faults = if self.faults.len() == FaultClass::ALL.len() {
            "all".to_owned()
        } else if self.faults.is_empty() {
            "none".to_owned()
        } else {
            self.faults
                .iter()
                .map(FaultClass::name)
                .collect::<Vec<_>>()
                .join(",")
        };
        let drift = if self.clock_drift_ppm == DEFAULT_CLOCK_DRIFT_PPM {
            String::new()
        } else {
            format!(" clock-drift=±{}ppm", self.clock_drift_ppm)
        };
        format!(
            "renewal={} workers={} shards={} failover={:?} faults={faults}{drift}",
            self.renewal, self.workers, self.shards, self.failover_time
        )
    }

    fn has(&self, class: FaultClass) -> bool {
        self.faults.contains(&class)
    }
}

/// What a run that violated nothing did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// The seed.
    pub seed: u64,
    /// Processes started (restarts and duplicates included).
    pub processes: usize,
    /// Batches processed.
    pub batches: u64,
    /// Takes applied (steals included).
    pub takes: u64,
    /// Steals applied.
    pub steals: u64,
    /// Checkpoints applied.
    pub checkpoints: u64,
    /// Faults injected per class (see [`FaultClass`] for what is counted).
    pub faults: BTreeMap<FaultClass, u64>,
    /// Eventually consistent reads that returned an older state than the current one.
    pub stale_reads: u64,
    /// Lines in the event log.
    pub events: usize,
    /// A digest of the event log (equal digests: the same run).
    pub digest: u64,
    /// Simulated time of the run.
    pub simulated: Duration,
}

#[cfg(test)]
mod tests;
