//! `kcl-admin`'s logic, over any lease store and stream backend: what an application's lease
//! table says (leases, workers, lag), and the two operator actions (rewinding checkpoints,
//! checked for live workers first).
//!
//! # Layout
//! - this module: observing an application ([`observe`]: two reads of the lease and heartbeat
//!   tables a short time apart, plus the lag of each lease read from the stream), the
//!   per-worker view ([`workers`]) and [`reset`].
//! - [`table`]: the plain-text tables the binary prints.
//!
//! # What "live" means here
//! `kcl-admin` is not a worker and has no history: it reads the lease table (and the heartbeat
//! table, when there is one) twice, `watch` apart. A lease is *held live* when it has an owner
//! and either its counter moved between the reads (per-lease renewal, as the Java KCL does) or
//! its owner's heartbeat row moved (worker renewal). A watch shorter than the workers' renewal
//! interval (a third of the failover time by default) can miss a renewal: use a watch longer
//! than that.

pub mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kcl_core::{BackendError, IteratorPosition, StreamBackend};
use kcl_lease::{ExtendedSequenceNumber, FatalKind, Lease, LeaseError, LeaseStore, WorkerHeartbeat};
use serde::Serialize;
use thiserror::Error;

/// At most this many records are counted per lease for its lag (then it shows as "at least").
pub const LAG_COUNT_LIMIT: u64 = 10_000;
/// Records per `GetRecords` while counting the lag.
const LAG_PAGE: usize = 1_000;

/// What can go wrong in `kcl-admin`; each kind has its own exit code ([`AdminError::exit_code`]).
#[derive(Debug, Error)]
pub enum AdminError {
    /// The lease table does not exist.
    #[error("unknown application {0:?}: there is no lease table with that name (check --application-name, --region and --endpoint-url)")]
    UnknownApplication(String),
    /// The arguments are wrong in a way the argument parser cannot tell.
    #[error("{0}")]
    Usage(String),
    /// Leases are held by live workers and `--force` was not given.
    #[error("refused: {} lease(s) are held by live workers ({}); stop the workers first, or pass --force (they then lose the leases and take them again from the new position)",
        .0.len(), .0.iter().map(|l| format!("{} by {}", l.shard_id, l.owner)).collect::<Vec<_>>().join(", "))]
    Live(Vec<LiveLease>),
    /// A lease-store call failed.
    #[error("lease table: {0}")]
    Store(#[from] LeaseError),
    /// A stream call failed.
    #[error("stream: {0}")]
    Stream(#[from] BackendError),
}

impl AdminError {
    /// The process exit code: 1 error, 2 usage, 3 refused because live, 5 unknown application.
    /// (4, a conflict, is not an error of one call: see [`ResetReport::conflicts`].)
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Usage(_) => EXIT_USAGE,
            AdminError::Live(_) => EXIT_LIVE,
            AdminError::UnknownApplication(_) => EXIT_UNKNOWN_APPLICATION,
            AdminError::Store(_) | AdminError::Stream(_) => EXIT_ERROR,
        }
    }

    /// The error as JSON, for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let kind = match self {
            AdminError::Usage(_) => "usage",
            AdminError::Live(_) => "live",
            AdminError::UnknownApplication(_) => "unknown_application",
            AdminError::Store(_) => "lease_store",
            AdminError::Stream(_) => "stream",
        };
        let mut v = serde_json::json!({ "error": kind, "message": self.to_string() });
        if let AdminError::Live(leases) = self {
            v["live_leases"] = serde_json::json!(leases);
        }
        v
    }
}

/// Exit code: an AWS, lease-store or stream error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: refused because leases are held by live workers (no `--force`).
pub const EXIT_LIVE: u8 = 3;
/// Exit code: a conditional write lost to a concurrent change; nothing was overwritten.
pub const EXIT_CONFLICT: u8 = 4;
/// Exit code: the application (its lease table) does not exist.
pub const EXIT_UNKNOWN_APPLICATION: u8 = 5;

/// A lease held by a live worker.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LiveLease {
    /// The lease key.
    pub lease_key: String,
    /// The shard.
    pub shard_id: String,
    /// Its owner.
    pub owner: String,
}

/// How far a lease's checkpoint is behind the stream.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Lag {
    /// Records after the checkpoint, counted up to [`LAG_COUNT_LIMIT`]; `None` when the
    /// stream cannot tell (see `note`).
    pub records: Option<u64>,
    /// Whether counting stopped at [`LAG_COUNT_LIMIT`] (there are at least `records`).
    pub at_least: bool,
    /// `MillisBehindLatest` of the first record after the checkpoint (0 when there is none).
    pub millis: Option<u64>,
    /// Why the lag is unknown, or how it was read.
    pub note: Option<String>,
}

/// The renewal of a lease during the watch.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Renewal {
    /// No owner: nothing renews it.
    Unowned,
    /// The counter moved by this much between the two reads.
    Renewed(u64),
    /// Owned, but the counter did not move during the watch.
    NotRenewed,
    /// Only one read was made (`watch` 0).
    NotWatched,
}

/// One lease as `kcl-admin leases` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseRow {
    /// `leaseKey`, as it is in the table.
    pub lease_key: String,
    /// The shard.
    pub shard_id: String,
    /// The stream of a multi-stream lease (`account:stream:epoch`).
    pub stream: Option<String>,
    /// `leaseOwner`.
    pub owner: Option<String>,
    /// `leaseCounter` at the second read.
    pub counter: u64,
    /// `checkpoint` (a sequence number or a sentinel).
    pub checkpoint: String,
    /// `checkpointSubSequenceNumber`.
    pub checkpoint_sub_sequence: u64,
    /// `checkpointOwner` (a graceful hand-off in progress).
    pub checkpoint_owner: Option<String>,
    /// `parentShardId`.
    pub parents: BTreeSet<String>,
    /// `childShardIds`.
    pub children: BTreeSet<String>,
    /// `throughputKBps`.
    pub throughput_kbps: Option<f64>,
    /// Whether the counter moved during the watch.
    pub renewal: Renewal,
    /// Whether the lease is held by a live worker (counter or owner's heartbeat moved).
    pub live: bool,
    /// The lag, if it was read.
    pub lag: Option<Lag>,
    /// The lease as read (for the conditional writes of `reset`).
    #[serde(skip)]
    pub lease: Lease,
}

/// A worker's heartbeat row and whether it moved during the watch.
#[derive(Clone, Debug, Serialize)]
pub struct HeartbeatRow {
    /// `workerId`.
    pub worker_id: String,
    /// `heartbeatCounter` at the second read.
    pub counter: u64,
    /// `leaseRenewal`.
    pub renewal: String,
    /// `leaseCount`.
    pub leases: u64,
    /// Whether the counter moved during the watch (`None`: not watched).
    pub moved: Option<bool>,
}

/// An application as observed.
#[derive(Clone, Debug, Serialize)]
pub struct Observation {
    /// The application (lease table).
    pub application: String,
    /// How long apart the two reads were, in milliseconds (0: one read).
    pub watch_ms: u64,
    /// Every lease, sorted by key.
    pub leases: Vec<LeaseRow>,
    /// Heartbeat rows (empty when the table has none or there is no heartbeat table).
    pub heartbeats: Vec<HeartbeatRow>,
}

/// What to observe besides the leases.
#[derive(Clone, Debug)]
pub struct ObserveOptions {
    /// Time between the two reads (zero: one read, nothing is known about liveness).
    pub watch: Duration,
    /// The stream of single-stream leases, for reading the lag (`None`: no lag for those).
    pub stream: Option<String>,
    /// Read the lag from the stream.
    pub lag: bool,
}

fn map_missing(application: &str, e: LeaseError) -> AdminError {
    match e {
        LeaseError::Fatal {
            kind: FatalKind::TableNotFound,
            ..
        } => AdminError::UnknownApplication(application.to_owned()),
        other => AdminError::Store(other),
    }
}

async fn read_heartbeats(store: &impl LeaseStore) -> Result<Vec<WorkerHeartbeat>, AdminError> {
    match store.list_heartbeats(true).await {
        Ok(rows) => Ok(rows),
        // No heartbeat table (Java applications, older versions): leases are judged alone.
        Err(LeaseError::Unsupported(_)) => Ok(Vec::new()),
        Err(LeaseError::Fatal {
            kind: FatalKind::TableNotFound,
            ..
        }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the application's leases and heartbeats twice, `options.watch` apart, and the lag
/// of each lease. A missing lease table is [`AdminError::UnknownApplication`].
pub async fn observe<S: LeaseStore, B: StreamBackend>(
    application: &str,
    store: &S,
    backend: &B,
    options: &ObserveOptions,
) -> Result<Observation, AdminError> {
    let first = store.list().await.map_err(|e| map_missing(application, e))?;
    let first_hb = read_heartbeats(store).await?;
    let watched = !options.watch.is_zero();
    let (leases, heartbeats) = if watched {
        tokio::time::sleep(options.watch).await;
        let leases = store.list().await.map_err(|e| map_missing(application, e))?;
        (leases, read_heartbeats(store).await?)
    } else {
        (first.clone(), first_hb.clone())
    };
    let before: HashMap<&str, u64> = first
        .iter()
        .map(|l| (l.lease_key.as_str(), l.lease_counter))
        .collect();
    let hb_before: HashMap<&str, u64> = first_hb
        .iter()
        .map(|h| (h.worker_id.as_str(), h.counter))
        .collect();
    let heartbeats: Vec<HeartbeatRow> = heartbeats
        .iter()
        .map(|h| HeartbeatRow {
            worker_id: h.worker_id.clone(),
            counter: h.counter,
            renewal: h.renewal.to_string(),
            leases: h.leases,
            moved: watched.then(|| hb_before.get(h.worker_id.as_str()) != Some(&h.counter)),
        })
        .collect();
    let live_heartbeat: BTreeSet<&str> = heartbeats
        .iter()
        .filter(|h| h.moved == Some(true))
        .map(|h| h.worker_id.as_str())
        .collect();
    let mut rows = Vec::with_capacity(leases.len());
    for lease in leases {
        let renewal = match (&lease.lease_owner, watched) {
            (None, _) => Renewal::Unowned,
            (Some(_), false) => Renewal::NotWatched,
            (Some(_), true) => match before.get(lease.lease_key.as_str()) {
                Some(c) if *c < lease.lease_counter => Renewal::Renewed(lease.lease_counter - c),
                Some(_) => Renewal::NotRenewed,
                // Created during the watch: as good as renewed.
                None => Renewal::Renewed(lease.lease_counter),
            },
        };
        let live = lease
            .lease_owner
            .as_deref()
            .is_some_and(|owner| matches!(renewal, Renewal::Renewed(_)) || live_heartbeat.contains(owner));
        let stream_name = match lease.stream() {
            Some(id) => Some(id.stream_name),
            None => options.stream.clone(),
        };
        let lag = if options.lag {
            Some(match stream_name {
                Some(stream) => read_lag(backend, &stream, lease.shard_id(), &lease.checkpoint).await,
                None => unknown("no --stream given"),
            })
        } else {
            None
        };
        rows.push(LeaseRow {
            lease_key: lease.lease_key.clone(),
            shard_id: lease.shard_id().to_owned(),
            stream: lease.stream_identifier.clone(),
            owner: lease.lease_owner.clone(),
            counter: lease.lease_counter,
            checkpoint: lease.checkpoint.checkpoint_str().to_owned(),
            checkpoint_sub_sequence: lease.checkpoint.sub_sequence(),
            checkpoint_owner: lease.checkpoint_owner.clone(),
            parents: lease.parent_shard_ids.clone(),
            children: lease.child_shard_ids.clone(),
            throughput_kbps: lease.throughput_kbps,
            renewal,
            live,
            lag,
            lease,
        });
    }
    rows.sort_by(|a, b| a.lease_key.cmp(&b.lease_key));
    Ok(Observation {
        application: application.to_owned(),
        watch_ms: u64::try_from(options.watch.as_millis()).unwrap_or(u64::MAX),
        leases: rows,
        heartbeats,
    })
}

fn unknown(note: impl Into<String>) -> Lag {
    Lag {
        records: None,
        at_least: false,
        millis: None,
        note: Some(note.into()),
    }
}

/// The lag of a checkpoint: `GetRecords` from just after it, one record for its
/// `MillisBehindLatest`, then pages of [`LAG_PAGE`] counted up to [`LAG_COUNT_LIMIT`].
async fn read_lag<B: StreamBackend>(
    backend: &B,
    stream: &str,
    shard_id: &str,
    checkpoint: &ExtendedSequenceNumber,
) -> Lag {
    let position = match checkpoint {
        ExtendedSequenceNumber::ShardEnd => {
            return Lag {
                records: Some(0),
                at_least: false,
                millis: Some(0),
                note: Some("shard ended and processed".into()),
            }
        }
        ExtendedSequenceNumber::Latest => return unknown("LATEST: starts at the tip when first read"),
        ExtendedSequenceNumber::AtTimestamp => {
            return unknown("AT_TIMESTAMP: the timestamp is the workers' configuration")
        }
        ExtendedSequenceNumber::TrimHorizon => IteratorPosition::TrimHorizon,
        ExtendedSequenceNumber::Sequence {
            sequence,
            sub_sequence: 0,
        } => IteratorPosition::AfterSequenceNumber(sequence.clone()),
        // Inside an aggregate: the rest of that record is still to do.
        ExtendedSequenceNumber::Sequence { sequence, .. } => {
            IteratorPosition::AtSequenceNumber(sequence.clone())
        }
    };
    match count_after(backend, stream, shard_id, &position).await {
        Ok(lag) => lag,
        Err(e) => unknown(format!("cannot read the stream: {e}")),
    }
}

async fn count_after<B: StreamBackend>(
    backend: &B,
    stream: &str,
    shard_id: &str,
    position: &IteratorPosition,
) -> Result<Lag, BackendError> {
    let mut iterator = Some(backend.get_shard_iterator(stream, shard_id, position).await?);
    let mut records = 0u64;
    let mut millis = None;
    while let Some(it) = iterator.take() {
        let limit = if millis.is_none() { 1 } else { LAG_PAGE };
        let out = backend.get_records(stream, &it, limit).await?;
        let got = out.records.len() as u64;
        if millis.is_none() {
            millis = Some(if got > 0 { out.millis_behind_latest } else { 0 });
        }
        records += got;
        if records >= LAG_COUNT_LIMIT {
            return Ok(Lag {
                records: Some(records),
                at_least: true,
                millis,
                note: None,
            });
        }
        // At the tip (or the end of a closed shard): done.
        if got == 0 || out.millis_behind_latest == 0 {
            break;
        }
        iterator = out.next_iterator;
    }
    Ok(Lag {
        records: Some(records),
        at_least: false,
        millis,
        note: None,
    })
}

/// One worker as `kcl-admin workers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerRow {
    /// The worker id (`leaseOwner`, `workerId`).
    pub worker_id: String,
    /// Leases it owns.
    pub leases: usize,
    /// Their shards.
    pub shards: Vec<String>,
    /// The sum of their `throughputKBps` (`None` when none published one).
    pub throughput_kbps: Option<f64>,
    /// Leases it renewed during the watch.
    pub renewed: usize,
    /// Its heartbeat row, if it has one.
    pub heartbeat: Option<HeartbeatRow>,
    /// Whether any of its leases or its heartbeat moved during the watch.
    pub live: bool,
}

/// The per-worker view of an observation: every owner and every heartbeat row.
pub fn workers(observation: &Observation) -> Vec<WorkerRow> {
    let mut by: BTreeMap<String, WorkerRow> = BTreeMap::new();
    let entry = |by: &mut BTreeMap<String, WorkerRow>, id: &str| {
        by.entry(id.to_owned())
            .or_insert_with(|| WorkerRow {
                worker_id: id.to_owned(),
                leases: 0,
                shards: Vec::new(),
                throughput_kbps: None,
                renewed: 0,
                heartbeat: None,
                live: false,
            })
            .worker_id
            .clone()
    };
    for lease in &observation.leases {
        let Some(owner) = &lease.owner else { continue };
        entry(&mut by, owner);
        if let Some(w) = by.get_mut(owner) {
            w.leases += 1;
            w.shards.push(lease.shard_id.clone());
            if let Some(t) = lease.throughput_kbps {
                w.throughput_kbps = Some(w.throughput_kbps.unwrap_or(0.0) + t);
            }
            if matches!(lease.renewal, Renewal::Renewed(_)) {
                w.renewed += 1;
            }
            w.live |= lease.live;
        }
    }
    for hb in &observation.heartbeats {
        entry(&mut by, &hb.worker_id);
        if let Some(w) = by.get_mut(&hb.worker_id) {
            w.live |= hb.moved == Some(true);
            w.heartbeat = Some(hb.clone());
        }
    }
    by.into_values().collect()
}

/// Where `reset` moves the checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum ResetTarget {
    /// `TRIM_HORIZON`: the oldest record still in the shard.
    TrimHorizon,
    /// `LATEST`: the tip of the shard when a worker first reads it.
    Latest,
    /// `AT_TIMESTAMP`: the Java KCL's sentinel; the timestamp itself is the workers'
    /// configuration (`kcl-tail --initial-position at-timestamp:T`), not stored in the lease.
    AtTimestamp(String),
    /// A sequence number of the shard: processing resumes after that record, as if it was
    /// the last one checkpointed.
    Sequence(kcl_lease::SequenceNumber),
}

impl ResetTarget {
    /// The checkpoint written.
    pub fn checkpoint(&self) -> ExtendedSequenceNumber {
        match self {
            ResetTarget::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
            ResetTarget::Latest => ExtendedSequenceNumber::Latest,
            ResetTarget::AtTimestamp(_) => ExtendedSequenceNumber::AtTimestamp,
            ResetTarget::Sequence(s) => ExtendedSequenceNumber::at(s.clone(), 0),
        }
    }
}

/// One lease `reset` changed.
#[derive(Clone, Debug, Serialize)]
pub struct ResetChange {
    /// The lease key.
    pub lease_key: String,
    /// The shard.
    pub shard_id: String,
    /// The owner before (removed by the reset).
    pub owner_before: Option<String>,
    /// The checkpoint before.
    pub checkpoint_before: String,
    /// The checkpoint after.
    pub checkpoint_after: String,
    /// The counter before.
    pub counter_before: u64,
    /// The counter after.
    pub counter_after: u64,
}

/// A lease `reset` did not change because it changed after it was read.
#[derive(Clone, Debug, Serialize)]
pub struct ResetConflict {
    /// The lease key.
    pub lease_key: String,
    /// The shard.
    pub shard_id: String,
    /// The counter `reset` read.
    pub counter_read: u64,
    /// The counter now, if the store said.
    pub counter_now: Option<u64>,
    /// The owner now, if the store said.
    pub owner_now: Option<String>,
}

/// What `reset` did.
#[derive(Clone, Debug, Serialize, Default)]
pub struct ResetReport {
    /// Leases rewritten.
    pub changed: Vec<ResetChange>,
    /// Leases left alone because they changed since they were read (exit code 4).
    pub conflicts: Vec<ResetConflict>,
}

/// Which leases `reset` (or `delete-application`) acts on: every lease, or those of one shard.
pub fn select<'a>(
    observation: &'a Observation,
    shard: Option<&str>,
) -> Result<Vec<&'a LeaseRow>, AdminError> {
    let rows: Vec<&LeaseRow> = observation
        .leases
        .iter()
        .filter(|l| shard.is_none_or(|s| l.shard_id == s || l.lease_key == s))
        .collect();
    if let (Some(s), true) = (shard, rows.is_empty()) {
        return Err(AdminError::Usage(format!(
            "no lease for shard {s:?} in application {:?} (see `kcl-admin leases`)",
            observation.application
        )));
    }
    Ok(rows)
}

/// Refuses (with [`AdminError::Live`]) if any of `rows` is held by a live worker, unless `force`.
pub fn check_not_live(rows: &[&LeaseRow], force: bool) -> Result<(), AdminError> {
    let live: Vec<LiveLease> = rows
        .iter()
        .filter(|l| l.live)
        .map(|l| LiveLease {
            lease_key: l.lease_key.clone(),
            shard_id: l.shard_id.clone(),
            owner: l.owner.clone().unwrap_or_default(),
        })
        .collect();
    if live.is_empty() || force {
        Ok(())
    } else {
        Err(AdminError::Live(live))
    }
}

/// Rewrites the checkpoints of `rows` to `target`, each write conditional on the owner and
/// counter read; a lease that changed since is reported in [`ResetReport::conflicts`], not
/// overwritten. Call [`check_not_live`] first.
pub async fn reset<S: LeaseStore>(
    store: &S,
    rows: &[&LeaseRow],
    target: &ResetTarget,
) -> Result<ResetReport, AdminError> {
    if matches!(target, ResetTarget::Sequence(_)) && rows.len() > 1 {
        return Err(AdminError::Usage(
            "a sequence number belongs to one shard: pass --shard with --to sequence".into(),
        ));
    }
    let checkpoint = target.checkpoint();
    let mut report = ResetReport::default();
    for row in rows {
        match store.reset_checkpoint(&row.lease, &checkpoint).await {
            Ok(after) => report.changed.push(ResetChange {
                lease_key: row.lease_key.clone(),
                shard_id: row.shard_id.clone(),
                owner_before: row.owner.clone(),
                checkpoint_before: row.lease.checkpoint.to_string(),
                checkpoint_after: after.checkpoint.to_string(),
                counter_before: row.counter,
                counter_after: after.lease_counter,
            }),
            Err(LeaseError::Conflict { actual, .. }) => report.conflicts.push(ResetConflict {
                lease_key: row.lease_key.clone(),
                shard_id: row.shard_id.clone(),
                counter_read: row.counter,
                counter_now: actual.as_ref().map(|l| l.lease_counter),
                owner_now: actual.and_then(|l| l.lease_owner),
            }),
            Err(e) => return Err(e.into()),
        }
    }
    if report.changed.iter().any(|c| c.owner_before.is_some()) {
        announce_reset(store).await;
    }
    Ok(report)
}

/// The worker id under which `reset` announces its changes in the heartbeat table.
pub const ANNOUNCER: &str = "kcl-admin";

/// Tells the workers that leases they held were reset (`--force`): a heartbeat row of
/// [`ANNOUNCER`], marked lapsed (it holds nothing and does not count as a worker), whose
/// appearance, and a nudge of every worker's row, make every worker scan the lease table
/// strongly consistent at once. A worker
/// that renews through its heartbeat learns there that it lost the lease (it has no renewal
/// to learn it from; F8 of the coordination review). The leader removes the row later, as
/// any row that stands still. A store without heartbeats: nothing to do.
async fn announce_reset<S: LeaseStore>(store: &S) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let row = WorkerHeartbeat {
        worker_id: ANNOUNCER.to_owned(),
        counter: now,
        renewal: kcl_lease::LeaseRenewal::PerLease,
        leases: 0,
        epoch: now,
        incarnation: None,
        lapsed: true,
        nudges: 0,
        view: 0,
        watched: None,
    };
    if let Err(e) = store
        .put_heartbeat(&row, kcl_lease::HeartbeatCondition::Any)
        .await
    {
        tracing::debug!(error = %e, "announcing the reset in the heartbeat table failed");
    }
    // Workers that watch one row each (the divided watch) look when their row is nudged.
    if let Ok(rows) = store.list_heartbeats(true).await {
        for row in rows.iter().filter(|r| r.worker_id != ANNOUNCER) {
            if let Err(e) = store.nudge_heartbeat(&row.worker_id).await {
                tracing::debug!(worker = %row.worker_id, error = %e, "nudging a worker's heartbeat row failed");
            }
        }
    }
}
