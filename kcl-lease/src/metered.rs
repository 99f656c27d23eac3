//! `MeteredLeaseStore`: wraps any [`LeaseStore`] and counts, per operation, the calls, the rows
//! read, and the request units DynamoDB would bill for them. The cost meter of the project:
//! it is how coordination cost is measured (tests, `kcl-bench fleet`, a running worker's
//! health), whatever the store underneath.
//!
//! Item sizes are computed as DynamoDB computes them, from the item this crate writes (see
//! [`crate::row`], the rows the DynamoDB store writes): the UTF-8 length of every attribute name plus the size of its
//! value (strings: their UTF-8 length; numbers: about one byte per two significant digits plus
//! one; string sets: the sum of their strings). Units then follow DynamoDB's on-demand rules:
//!
//! | call | units |
//! |---|---|
//! | `GetItem` (`get`) | 1 read unit per 4 KB of the item, at least 1 |
//! | `Scan` (`list`, `list_heartbeats`) | 1 read unit per 4 KB of all items read, at least 1 |
//! | eventually consistent scan (`list_eventually_consistent`) | half of the above |
//! | `PutItem`, `UpdateItem`, `DeleteItem` (every write) | 1 write unit per 1 KB of the larger of the item before and after, at least 1; a failed conditional write is billed the same |
//!
//! Attributes other KCLs add to a row (the Java KCL 3.x's `throughputKBps`, ...) are not
//! counted, so figures for such tables are slightly low.
//!
//! Totals are emitted through the `metrics` facade (label `op`, plus `worker_id` when set):
//! counters `LeaseStore.Calls`, `LeaseStore.Errors`, `LeaseStore.RowsRead`,
//! `LeaseStore.WriteUnits`, and the gauge `LeaseStore.ReadUnits` (the running total: read units
//! come in halves).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{LeaseError, Result};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::lease::Lease;
use crate::memory::LeaseOp;
use crate::row;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;

/// Metric names of the meter (see the module docs).
pub mod metric_names {
    /// Counter: calls per operation.
    pub const CALLS: &str = "LeaseStore.Calls";
    /// Counter: calls that failed (conflicts included).
    pub const ERRORS: &str = "LeaseStore.Errors";
    /// Counter: rows read (items returned by scans and gets).
    pub const ROWS_READ: &str = "LeaseStore.RowsRead";
    /// Gauge: read units billed so far.
    pub const READ_UNITS: &str = "LeaseStore.ReadUnits";
    /// Counter: write units billed.
    pub const WRITE_UNITS: &str = "LeaseStore.WriteUnits";
}

/// The size of a lease row, as DynamoDB computes it.
pub fn lease_size(lease: &Lease) -> usize {
    row::row_size(&row::lease_row(lease))
}

/// The size of a heartbeat row, as DynamoDB computes it.
pub fn heartbeat_size(heartbeat: &WorkerHeartbeat) -> usize {
    row::row_size(&row::heartbeat_row(heartbeat))
}

/// Read units, in halves, for `bytes` read: 4 KB units, at least one.
fn read_halves(bytes: usize, consistent: bool) -> u64 {
    let units = bytes.div_ceil(4096).max(1) as u64;
    if consistent {
        units * 2
    } else {
        units
    }
}

fn write_units(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    rows: AtomicU64,
    read_halves: AtomicU64,
    write_units: AtomicU64,
}

/// The cost of one operation so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpCost {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (conflicts included).
    pub errors: u64,
    /// Rows read.
    pub rows_read: u64,
    /// Read request units billed.
    pub read_units: f64,
    /// Write request units billed.
    pub write_units: u64,
}

/// Whether the operation named `op` works on the heartbeat table.
fn is_heartbeat_op(op: &str) -> bool {
    [
        LeaseOp::PutHeartbeat,
        LeaseOp::ListHeartbeats,
        LeaseOp::DeleteHeartbeat,
        LeaseOp::GetHeartbeat,
        LeaseOp::NudgeHeartbeat,
    ]
    .iter()
    .any(|o| o.name() == op)
}

/// What a [`MeteredLeaseStore`] counted, per operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostSnapshot {
    /// Per operation (by [`LeaseOp::name`]); operations never called are absent.
    pub ops: BTreeMap<&'static str, OpCost>,
}

impl CostSnapshot {
    fn sum(&self, f: impl Fn(&str, &OpCost) -> f64) -> f64 {
        self.ops.iter().map(|(op, c)| f(op, c)).sum()
    }

    /// Read units of every operation.
    pub fn read_units(&self) -> f64 {
        self.sum(|_, c| c.read_units)
    }

    /// Write units of every operation.
    pub fn write_units(&self) -> u64 {
        self.sum(|_, c| c.write_units as f64) as u64
    }

    /// Lease rows read (heartbeat rows left out).
    pub fn lease_rows_read(&self) -> u64 {
        self.sum(|op, c| {
            if is_heartbeat_op(op) {
                0.0
            } else {
                c.rows_read as f64
            }
        }) as u64
    }

    /// Heartbeat rows read (scans and single rows).
    pub fn heartbeat_rows_read(&self) -> u64 {
        self.sum(|op, c| {
            if is_heartbeat_op(op) {
                c.rows_read as f64
            } else {
                0.0
            }
        }) as u64
    }

    /// Writes to the lease table (heartbeat writes left out).
    pub fn lease_writes(&self) -> u64 {
        self.sum(|op, c| {
            let read = op == LeaseOp::List.name() || op == LeaseOp::Get.name();
            if is_heartbeat_op(op) || read {
                0.0
            } else {
                c.calls as f64
            }
        }) as u64
    }

    /// Calls of every operation.
    pub fn calls(&self) -> u64 {
        self.sum(|_, c| c.calls as f64) as u64
    }

    /// What was counted since `earlier` (a snapshot of the same meter).
    pub fn since(&self, earlier: &CostSnapshot) -> CostSnapshot {
        let ops = self
            .ops
            .iter()
            .map(|(op, c)| {
                let e = earlier.ops.get(op).copied().unwrap_or_default();
                let d = OpCost {
                    calls: c.calls.saturating_sub(e.calls),
                    errors: c.errors.saturating_sub(e.errors),
                    rows_read: c.rows_read.saturating_sub(e.rows_read),
                    read_units: (c.read_units - e.read_units).max(0.0),
                    write_units: c.write_units.saturating_sub(e.write_units),
                };
                (*op, d)
            })
            .collect();
        CostSnapshot { ops }
    }
}

/// A [`LeaseStore`] that meters the calls it forwards. See the module docs. Cloning gives
/// another handle on the same counters.
#[derive(Clone)]
pub struct MeteredLeaseStore<S> {
    inner: S,
    counters: Arc<[Counters; LeaseOp::ALL.len()]>,
    worker_id: Option<String>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for MeteredLeaseStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredLeaseStore")
            .field("inner", &self.inner)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl<S> MeteredLeaseStore<S> {
    /// Meters `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counters: Arc::new(Default::default()),
            worker_id: None,
        }
    }

    /// Labels the emitted metrics with `worker_id` (builder style).
    #[must_use]
    pub fn with_worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> CostSnapshot {
        let mut ops = BTreeMap::new();
        for (i, op) in LeaseOp::ALL.iter().enumerate() {
            let c = &self.counters[i];
            let calls = c.calls.load(Ordering::Relaxed);
            if calls == 0 {
                continue;
            }
            ops.insert(
                op.name(),
                OpCost {
                    calls,
                    errors: c.errors.load(Ordering::Relaxed),
                    rows_read: c.rows.load(Ordering::Relaxed),
                    read_units: c.read_halves.load(Ordering::Relaxed) as f64 / 2.0,
                    write_units: c.write_units.load(Ordering::Relaxed),
                },
            );
        }
        CostSnapshot { ops }
    }

    fn record(&self, op: LeaseOp, ok: bool, rows: u64, read_halves: u64, write: u64) {
        let index = LeaseOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        let c = &self.counters[index];
        c.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.rows.fetch_add(rows, Ordering::Relaxed);
        let halves = c.read_halves.fetch_add(read_halves, Ordering::Relaxed) + read_halves;
        c.write_units.fetch_add(write, Ordering::Relaxed);
        let worker = self.worker_id.clone().unwrap_or_default();
        let labels = [("op", op.name().to_owned()), ("worker_id", worker)];
        metrics::counter!(metric_names::CALLS, &labels).increment(1);
        if !ok {
            metrics::counter!(metric_names::ERRORS, &labels).increment(1);
        }
        if rows > 0 {
            metrics::counter!(metric_names::ROWS_READ, &labels).increment(rows);
        }
        if read_halves > 0 {
            metrics::gauge!(metric_names::READ_UNITS, &labels).set(halves as f64 / 2.0);
        }
        if write > 0 {
            metrics::counter!(metric_names::WRITE_UNITS, &labels).increment(write);
        }
    }

    /// Records a conditional write on a row of about `before` bytes whose result is `result`.
    fn write<T>(&self, op: LeaseOp, before: usize, result: &Result<T>, after: impl Fn(&T) -> usize) {
        let size = match result {
            Ok(v) => before.max(after(v)),
            Err(LeaseError::Conflict {
                actual: Some(row), ..
            }) => before.max(lease_size(row)),
            Err(_) => before,
        };
        // Throttled and failed calls are not billed; conflicts are.
        let billed = match result {
            Ok(_) | Err(LeaseError::Conflict { .. }) | Err(LeaseError::NotFound(_)) => write_units(size),
            Err(_) => 0,
        };
        self.record(op, result.is_ok(), 0, 0, billed);
    }

    fn scan<T>(&self, op: LeaseOp, result: &Result<Vec<T>>, consistent: bool, size: impl Fn(&T) -> usize) {
        match result {
            Ok(rows) => {
                let bytes: usize = rows.iter().map(size).sum();
                self.record(op, true, rows.len() as u64, read_halves(bytes, consistent), 0);
            }
            Err(_) => self.record(op, false, 0, 0, 0),
        }
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for MeteredLeaseStore<S> {
    async fn list(&self) -> Result<Vec<Lease>> {
        let r = self.inner.list().await;
        self.scan(LeaseOp::List, &r, true, lease_size);
        r
    }

    async fn list_eventually_consistent(&self) -> Result<Vec<Lease>> {
        let r = self.inner.list_eventually_consistent().await;
        self.scan(LeaseOp::List, &r, false, lease_size);
        r
    }

    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        let r = self.inner.put_heartbeat(heartbeat, condition).await;
        if matches!(r, Err(LeaseError::Unsupported(_))) {
            return r;
        }
        self.write(LeaseOp::PutHeartbeat, heartbeat_size(heartbeat), &r, |_| 0);
        r
    }

    async fn list_heartbeats(&self, consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        let r = self.inner.list_heartbeats(consistent).await;
        if matches!(r, Err(LeaseError::Unsupported(_))) {
            return r;
        }
        self.scan(LeaseOp::ListHeartbeats, &r, consistent, heartbeat_size);
        r
    }

    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        let r = self.inner.delete_heartbeat(worker_id, condition).await;
        if matches!(r, Err(LeaseError::Unsupported(_))) {
            return r;
        }
        self.write(LeaseOp::DeleteHeartbeat, 64 + worker_id.len(), &r, |_| 0);
        r
    }

    async fn get_heartbeat(&self, worker_id: &str, consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        let r = self.inner.get_heartbeat(worker_id, consistent).await;
        match &r {
            Err(LeaseError::Unsupported(_)) => {}
            Ok(row) => {
                let size = row.as_ref().map_or(0, heartbeat_size);
                self.record(
                    LeaseOp::GetHeartbeat,
                    true,
                    u64::from(row.is_some()),
                    read_halves(size, consistent),
                    0,
                );
            }
            Err(_) => self.record(LeaseOp::GetHeartbeat, false, 0, 0, 0),
        }
        r
    }

    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        let r = self.inner.nudge_heartbeat(worker_id).await;
        if matches!(r, Err(LeaseError::Unsupported(_))) {
            return r;
        }
        // About a heartbeat row's size (the row is not read back).
        self.write(LeaseOp::NudgeHeartbeat, 96 + worker_id.len(), &r, |_| 0);
        r
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>> {
        let r = self.inner.get(key).await;
        match &r {
            Ok(row) => {
                let size = row.as_ref().map_or(0, lease_size);
                self.record(
                    LeaseOp::Get,
                    true,
                    u64::from(row.is_some()),
                    read_halves(size, true),
                    0,
                );
            }
            Err(_) => self.record(LeaseOp::Get, false, 0, 0, 0),
        }
        r
    }

    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        let r = self.inner.create_if_absent(lease).await;
        self.write(LeaseOp::Create, lease_size(lease), &r, |_| 0);
        r
    }

    async fn renew(&self, expected: &Lease) -> Result<Lease> {
        let r = self.inner.renew(expected).await;
        self.write(LeaseOp::Renew, lease_size(expected), &r, lease_size);
        r
    }

    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease> {
        let r = self.inner.take(expected, new_owner, handoff).await;
        self.write(LeaseOp::Take, lease_size(expected), &r, lease_size);
        r
    }

    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> Result<Lease> {
        let r = self
            .inner
            .take_heartbeat_renewed(expected, new_owner, handoff)
            .await;
        self.write(LeaseOp::Take, lease_size(expected), &r, lease_size);
        r
    }

    async fn evict(&self, expected: &Lease) -> Result<Lease> {
        let r = self.inner.evict(expected).await;
        self.write(LeaseOp::Evict, lease_size(expected), &r, lease_size);
        r
    }

    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        let r = self.inner.update_checkpoint(expected, worker, checkpoint).await;
        self.write(LeaseOp::Checkpoint, lease_size(expected), &r, lease_size);
        r
    }

    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        let r = self.inner.reset_checkpoint(expected, checkpoint).await;
        self.write(LeaseOp::Checkpoint, lease_size(expected), &r, lease_size);
        r
    }

    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease> {
        let r = self.inner.complete_handoff(handoff).await;
        self.write(LeaseOp::CompleteHandoff, 0, &r, lease_size);
        r
    }

    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease> {
        let r = self.inner.mark_children(expected, children).await;
        self.write(LeaseOp::MarkChildren, lease_size(expected), &r, lease_size);
        r
    }

    async fn delete(&self, expected: &Lease) -> Result<()> {
        let r = self.inner.delete(expected).await;
        self.write(LeaseOp::Delete, lease_size(expected), &r, |_| 0);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::LeaseRenewal;
    use crate::memory::InMemoryLeaseStore;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        // leaseKey (8) + 20, leaseCounter (12) + 1, checkpoint (10) + 12 ("TRIM_HORIZON"),
        // checkpointSubSequenceNumber (27) + 1, ownerSwitchesSinceCheckpoint (28) + 1.
        assert_eq!(lease_size(&lease), 8 + 20 + 12 + 1 + 10 + 12 + 27 + 1 + 28 + 1);
        assert_eq!(read_halves(1, true), 2);
        assert_eq!(read_halves(4097, false), 2);
        assert_eq!(write_units(1025), 2);
    }

    #[tokio::test]
    async fn counts_calls_rows_and_units() {
        let store = MeteredLeaseStore::new(InMemoryLeaseStore::new());
        for i in 0..100 {
            store
                .create_if_absent(&Lease::new(format!("shard-{i}"), ExtendedSequenceNumber::Latest))
                .await
                .unwrap();
        }
        let rows = store.list().await.unwrap();
        store.list_eventually_consistent().await.unwrap();
        let row = store.take(&rows[0], "w", false).await.unwrap();
        assert!(store.renew(&rows[0]).await.unwrap_err().is_conflict());
        store.renew(&row).await.unwrap();
        store
            .put_heartbeat(
                &WorkerHeartbeat {
                    worker_id: "w".into(),
                    counter: 1,
                    renewal: LeaseRenewal::PerLease,
                    leases: 1,
                    epoch: 0,
                    incarnation: Some(1),
                    lapsed: false,
                    nudges: 0,
                    view: 0,
                    watched: None,
                },
                HeartbeatCondition::Any,
            )
            .await
            .unwrap();
        store.list_heartbeats(true).await.unwrap();
        let s = store.snapshot();
        let bytes: usize = rows.iter().map(lease_size).sum();
        let units = bytes.div_ceil(4096) as f64;
        assert_eq!(s.ops["list"].calls, 2);
        assert_eq!(s.ops["list"].rows_read, 200);
        assert_eq!(
            s.ops["list"].read_units,
            units * 1.5,
            "one consistent and one eventual scan"
        );
        assert_eq!(s.ops["renew"].calls, 2);
        assert_eq!(s.ops["renew"].errors, 1);
        assert_eq!(
            s.ops["renew"].write_units, 2,
            "a failed conditional write is billed"
        );
        assert_eq!(s.ops["create"].write_units, 100);
        assert_eq!(s.lease_rows_read(), 200);
        assert_eq!(s.heartbeat_rows_read(), 1);
        assert_eq!(s.lease_writes(), 103);
        let later = store.snapshot();
        store.get("shard-1").await.unwrap();
        let d = store.snapshot().since(&later);
        assert_eq!(d.calls(), 1);
        assert_eq!(d.read_units(), 1.0);
    }
}
