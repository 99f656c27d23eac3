//! Fatal errors: what stops a worker (or one stream of a multi-stream worker) instead of being
//! retried.
//!
//! Some failures can never succeed however often they are retried: credentials refused or a
//! missing permission, an unusable KMS key, a deleted lease table or stream, a task of the
//! worker that panicked. Retrying them forever would leave a worker that looks alive, logs a
//! warning in a loop and processes nothing. Instead, the first one is recorded in the worker's
//! `FatalSignal`; the scheduler then shuts down (gracefully, so leases that can still be
//! released are) and [`crate::Scheduler::run`] returns [`crate::KclError::Fatal`] with the
//! cause in one line.
//!
//! A DynamoDB stream disabled on its table is not a failure of a call: its shards close and
//! stay readable, so the worker reads them to their end first; then the shard sync finds the
//! stream ended ([`crate::StreamBackend::check_stream_ended`]) and the worker stops with
//! [`FatalError::StreamDisabled`], which names the stream's ARN and the table's newer stream,
//! if any (rather than idling forever on a stream that gets no more changes).
//!
//! In multi-stream mode a failure that concerns one stream (access to that stream denied, its
//! KMS key disabled, the stream deleted) stops that stream only: its shard consumers stop, its
//! leases are no longer taken by this worker, and the other streams go on.
//!
//! Lease-store errors are seen in one place, `FatalGuardStore`, a store wrapper through
//! which every call of the worker goes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kcl_lease::{ExtendedSequenceNumber, HeartbeatCondition, Lease, LeaseError, LeaseStore, WorkerHeartbeat};
use thiserror::Error;
use tokio::sync::watch;
use tracing::error;

use crate::backend::{BackendError, StreamDisabled};

/// Why a worker (or one stream) stopped. Cloneable, so that the health summary can show it too.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FatalError {
    /// A lease-store call failed in a way retrying cannot fix (access denied, table deleted).
    #[error("lease store: {0}")]
    LeaseStore(String),
    /// A stream cannot be read (access denied, KMS key unusable, stream deleted).
    #[error("stream {stream}: {reason}")]
    Stream {
        /// The stream's name (or, in multi-stream mode, its identifier).
        stream: String,
        /// The backend's error.
        reason: String,
    },
    /// The stream ended for good (a DynamoDB stream disabled on its table, or gone), after
    /// every record still readable was processed: names its ARN and the table's newer stream.
    #[error("{0}")]
    StreamDisabled(StreamDisabled),
    /// A background task of the worker (lease coordinator, shard sync) panicked or ended while
    /// the worker was running: without it the worker would hold leases it does not renew, or
    /// never pick up new shards.
    #[error("worker task {task} {how}")]
    Task {
        /// Which task.
        task: &'static str,
        /// `panicked: <message>` or `ended`.
        how: String,
    },
}

#[derive(Debug, Default)]
struct State {
    /// The first error that stops the whole worker.
    worker: Option<FatalError>,
    /// Multi-stream: streams stopped, by identifier, with the reason.
    streams: BTreeMap<String, FatalError>,
}

/// Where fatal errors are recorded; the scheduler watches it. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct FatalSignal {
    state: Arc<Mutex<State>>,
    /// Bumped on every change.
    changed: watch::Sender<u64>,
}

impl Default for FatalSignal {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl FatalSignal {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records an error that stops the worker; only the first one is kept.
    pub(crate) fn stop_worker(&self, cause: FatalError) {
        {
            let mut state = self.state();
            if state.worker.is_some() {
                return;
            }
            error!(error = %cause, "fatal error: stopping the worker");
            state.worker = Some(cause);
        }
        self.bump();
    }

    /// Records a lease-store error if it is fatal.
    pub(crate) fn check_lease(&self, e: &LeaseError) {
        if e.is_fatal() {
            self.stop_worker(FatalError::LeaseStore(e.to_string()));
        }
    }

    /// Records a fatal backend error of one stream: the stream stops in multi-stream mode
    /// (`multi_stream`), the worker otherwise. Returns whether the error was fatal.
    pub(crate) fn check_stream(&self, stream: &str, multi_stream: bool, e: &BackendError) -> bool {
        if !e.is_fatal() {
            return false;
        }
        let cause = match e {
            BackendError::StreamDisabled(d) => FatalError::StreamDisabled(d.clone()),
            _ => FatalError::Stream {
                stream: stream.to_owned(),
                reason: e.to_string(),
            },
        };
        if !multi_stream {
            self.stop_worker(cause);
            return true;
        }
        {
            let mut state = self.state();
            if state.streams.contains_key(stream) {
                return true;
            }
            error!(%stream, error = %cause, "fatal error: stopping this stream");
            state.streams.insert(stream.to_owned(), cause);
        }
        self.bump();
        true
    }

    /// The error that stops the worker, if any.
    pub(crate) fn worker_error(&self) -> Option<FatalError> {
        self.state().worker.clone()
    }

    /// The streams stopped so far.
    pub(crate) fn failed_streams(&self) -> BTreeSet<String> {
        self.state().streams.keys().cloned().collect()
    }

    /// Every recorded error: the worker's first, then the streams'.
    pub(crate) fn errors(&self) -> Vec<FatalError> {
        let state = self.state();
        state
            .worker
            .iter()
            .chain(state.streams.values())
            .cloned()
            .collect()
    }

    /// A receiver that sees every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A lease store that passes every call through and records fatal errors in a
/// [`FatalSignal`].
///
/// A worker configured for worker renewal (`LeaseRenewal::Worker`) cannot run without its
/// heartbeat table: its leases are valid only through its heartbeat, and a worker without
/// heartbeats would judge the others' leases by counters that stand still and take them all.
/// For such a worker a heartbeat table that is missing or denied stops the worker.
pub(crate) struct FatalGuardStore {
    inner: Arc<dyn LeaseStore>,
    signal: FatalSignal,
    heartbeats_required: bool,
}

impl FatalGuardStore {
    pub(crate) fn new(inner: Arc<dyn LeaseStore>, signal: FatalSignal) -> Self {
        Self {
            inner,
            signal,
            heartbeats_required: false,
        }
    }

    /// Makes a store without usable heartbeats fatal (see the type's docs).
    pub(crate) fn heartbeats_required(mut self, required: bool) -> Self {
        self.heartbeats_required = required;
        self
    }

    fn check_heartbeats<T>(&self, result: kcl_lease::Result<T>) -> kcl_lease::Result<T> {
        if let (true, Err(LeaseError::Unsupported(what))) = (self.heartbeats_required, &result) {
            self.signal.stop_worker(FatalError::LeaseStore(format!(
                "worker renewal needs the worker heartbeat table: {what}"
            )));
        }
        self.check(result)
    }

    fn check<T>(&self, result: kcl_lease::Result<T>) -> kcl_lease::Result<T> {
        if let Err(e) = &result {
            self.signal.check_lease(e);
        }
        result
    }
}

#[async_trait]
impl LeaseStore for FatalGuardStore {
    async fn list(&self) -> kcl_lease::Result<Vec<Lease>> {
        self.check(self.inner.list().await)
    }
    async fn list_eventually_consistent(&self) -> kcl_lease::Result<Vec<Lease>> {
        self.check(self.inner.list_eventually_consistent().await)
    }
    async fn put_heartbeat(
        &self,
        heartbeat: &WorkerHeartbeat,
        condition: HeartbeatCondition,
    ) -> kcl_lease::Result<()> {
        self.check_heartbeats(self.inner.put_heartbeat(heartbeat, condition).await)
    }
    async fn list_heartbeats(&self, consistent: bool) -> kcl_lease::Result<Vec<WorkerHeartbeat>> {
        self.check_heartbeats(self.inner.list_heartbeats(consistent).await)
    }
    async fn delete_heartbeat(
        &self,
        worker_id: &str,
        condition: HeartbeatCondition,
    ) -> kcl_lease::Result<()> {
        self.check(self.inner.delete_heartbeat(worker_id, condition).await)
    }
    async fn get_heartbeat(
        &self,
        worker_id: &str,
        consistent: bool,
    ) -> kcl_lease::Result<Option<WorkerHeartbeat>> {
        self.check_heartbeats(self.inner.get_heartbeat(worker_id, consistent).await)
    }
    async fn nudge_heartbeat(&self, worker_id: &str) -> kcl_lease::Result<()> {
        self.check(self.inner.nudge_heartbeat(worker_id).await)
    }
    async fn get(&self, key: &str) -> kcl_lease::Result<Option<Lease>> {
        self.check(self.inner.get(key).await)
    }
    async fn create_if_absent(&self, lease: &Lease) -> kcl_lease::Result<bool> {
        self.check(self.inner.create_if_absent(lease).await)
    }
    async fn renew(&self, expected: &Lease) -> kcl_lease::Result<Lease> {
        self.check(self.inner.renew(expected).await)
    }
    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> kcl_lease::Result<Lease> {
        self.check(self.inner.take(expected, new_owner, handoff).await)
    }
    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> kcl_lease::Result<Lease> {
        self.check(
            self.inner
                .take_heartbeat_renewed(expected, new_owner, handoff)
                .await,
        )
    }
    async fn evict(&self, expected: &Lease) -> kcl_lease::Result<Lease> {
        self.check(self.inner.evict(expected).await)
    }
    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> kcl_lease::Result<Lease> {
        self.check(self.inner.update_checkpoint(expected, worker, checkpoint).await)
    }
    async fn reset_checkpoint(
        &self,
        expected: &Lease,
        checkpoint: &ExtendedSequenceNumber,
    ) -> kcl_lease::Result<Lease> {
        self.check(self.inner.reset_checkpoint(expected, checkpoint).await)
    }
    async fn complete_handoff(&self, handoff: &Lease) -> kcl_lease::Result<Lease> {
        self.check(self.inner.complete_handoff(handoff).await)
    }
    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> kcl_lease::Result<Lease> {
        self.check(self.inner.mark_children(expected, children).await)
    }
    async fn delete(&self, expected: &Lease) -> kcl_lease::Result<()> {
        self.check(self.inner.delete(expected).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcl_lease::{FatalKind, InMemoryLeaseStore};

    #[test]
    fn the_first_worker_error_is_kept_and_streams_stop_one_by_one() {
        let signal = FatalSignal::default();
        let mut rx = signal.subscribe();
        assert!(!signal.check_stream("a", true, &BackendError::Throttled("slow".into())));
        assert!(signal.check_stream("a", true, &BackendError::AccessDenied("no".into())));
        assert!(signal.check_stream("a", true, &BackendError::Kms("off".into())));
        assert_eq!(signal.failed_streams(), BTreeSet::from(["a".to_owned()]));
        assert!(signal.worker_error().is_none());
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        signal.check_lease(&LeaseError::Throttled("slow".into()));
        assert!(!rx.has_changed().unwrap_or(true));
        signal.check_lease(&LeaseError::fatal(FatalKind::TableNotFound, "gone"));
        signal.stop_worker(FatalError::Task {
            task: "shard sync",
            how: "ended".into(),
        });
        let first = signal.worker_error().expect("a worker error");
        assert!(
            matches!(first, FatalError::LeaseStore(ref m) if m.contains("gone")),
            "{first}"
        );
        assert_eq!(signal.errors().len(), 2);
        // A disabled DynamoDB stream is its own, typed cause.
        let disabled = crate::backend::StreamDisabled {
            stream: "arn:aws:dynamodb:us-east-1:111122223333:table/t/stream/x".into(),
            end: crate::backend::StreamEnd::Disabled,
            latest_stream_arn: None,
        };
        let ddb = FatalSignal::default();
        assert!(ddb.check_stream("s", false, &BackendError::StreamDisabled(disabled.clone())));
        assert_eq!(ddb.worker_error(), Some(FatalError::StreamDisabled(disabled)));
        // Single-stream: a stream error stops the worker (already stopped: the first stays).
        let single = FatalSignal::default();
        assert!(single.check_stream("s", false, &BackendError::StreamNotFound("s".into())));
        assert!(matches!(single.worker_error(), Some(FatalError::Stream { .. })));
    }

    #[tokio::test]
    async fn the_guard_records_fatal_store_errors_and_passes_results_through() {
        let memory = InMemoryLeaseStore::new();
        let signal = FatalSignal::default();
        let guard = FatalGuardStore::new(Arc::new(memory.clone()), signal.clone());
        assert!(guard
            .create_if_absent(&Lease::new("a", ExtendedSequenceNumber::Latest))
            .await
            .unwrap());
        assert!(matches!(guard.get("zz").await, Ok(None)));
        assert!(matches!(
            guard
                .renew(&Lease::new("zz", ExtendedSequenceNumber::Latest))
                .await,
            Err(LeaseError::NotFound(_))
        ));
        assert!(signal.worker_error().is_none(), "not found is not fatal");
        let failing = kcl_lease::FailureLeaseStore::new(
            memory,
            kcl_lease::LeaseFaultPlan::new(0).rule(
                kcl_lease::LeaseOp::List,
                kcl_lease::LeaseTrigger::Always,
                kcl_lease::LeaseFault::AccessDenied,
            ),
        );
        let guard = FatalGuardStore::new(Arc::new(failing), signal.clone());
        assert!(guard.list().await.is_err());
        assert!(matches!(signal.worker_error(), Some(FatalError::LeaseStore(_))));
    }
}
