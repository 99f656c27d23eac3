//! Errors that retrying cannot fix stop the worker with a typed error instead of a warning in a
//! loop: access denied or a deleted table in the lease store, access denied, a disabled KMS key
//! or a deleted stream in the backend, a background task that panics. In multi-stream mode a
//! stream that fails stops alone.
//!
//! These run in paused Tokio time: every wait is on a timer of the in-process runtime, so a run
//! takes milliseconds and replays the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
use kcl_core::backend::local::BackendOp;
use kcl_core::{
    BackendError, ExtendedSequenceNumber, FatalError, GetRecordsOutput, InMemoryLeaseStore, IteratorPosition,
    KclError, LocalBackend, Scheduler, SchedulerHandle, Shard, StreamBackend, StreamConfig,
};
use kcl_lease::{
    FailureLeaseStore, HeartbeatCondition, Lease, LeaseError, LeaseFault, LeaseFaultPlan, LeaseOp,
    LeaseStore, LeaseTrigger, StreamIdentifier, WorkerHeartbeat,
};
use kcl_tests::*;

const FAILOVER: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(120);

/// Waits (in paused time, through [`SchedulerHandle::stopped`]) until the worker has stopped by
/// itself, then returns its result.
async fn stopped(handle: SchedulerHandle) -> (Duration, Result<(), KclError>) {
    let start = tokio::time::Instant::now();
    tokio::time::timeout(LIMIT, handle.stopped())
        .await
        .expect("the worker stops by itself");
    assert!(
        !handle.is_running(),
        "stopped() resolves once the worker's task has ended"
    );
    let took = start.elapsed();
    assert!(!handle.fatal_errors().is_empty(), "the handle reports the cause");
    (took, handle.shutdown().await)
}

async fn running_worker(
    store: Arc<FailureLeaseStore<InMemoryLeaseStore>>,
    backend: impl StreamBackend,
    local: &LocalBackend,
    log: &Log,
) -> SchedulerHandle {
    let mut produced = BTreeMap::new();
    produce(local, 4, 5, &mut produced).await;
    let handle = fast("w", backend, store, log, FAILOVER).build().unwrap().spawn();
    wait_until(LIMIT, "records processed", || log.wait_count() == 20).await;
    handle
}

async fn lease_store_failure_stops_the_worker(fault: LeaseFault, expected: &str) {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let store = Arc::new(FailureLeaseStore::new(
        InMemoryLeaseStore::new(),
        LeaseFaultPlan::none(),
    ));
    let log = Log::default();
    let handle = running_worker(store.clone(), local.clone(), &local, &log).await;
    let mut plan = LeaseFaultPlan::new(0);
    for op in LeaseOp::ALL {
        plan = plan.rule(op, LeaseTrigger::Always, fault.clone());
    }
    store.set_plan(plan);
    let (took, result) = stopped(handle).await;
    match result {
        Err(KclError::Fatal(FatalError::LeaseStore(message))) => {
            assert!(message.contains(expected), "{message}")
        }
        other => panic!("expected a fatal lease-store error, got {other:?}"),
    }
    assert!(took <= FAILOVER, "stopped after {took:?}, not after retrying");
}

#[tokio::test(start_paused = true)]
async fn a_lease_store_that_denies_access_stops_the_worker_with_the_cause() {
    lease_store_failure_stops_the_worker(LeaseFault::AccessDenied, "access denied").await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_lease_table_stops_the_worker_with_the_cause() {
    lease_store_failure_stops_the_worker(LeaseFault::TableNotFound, "lease table not found").await;
}

async fn backend_failure_stops_the_worker(op: BackendOp, fault: Fault, expected: &str) {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let backend = Arc::new(FailureBackend::new(local.clone(), FaultPlan::none()));
    let store = Arc::new(FailureLeaseStore::new(
        InMemoryLeaseStore::new(),
        LeaseFaultPlan::none(),
    ));
    let log = Log::default();
    let handle = running_worker(store.clone(), backend.clone(), &local, &log).await;
    backend.set_plan(FaultPlan::new(0).rule(op, Trigger::Always, fault));
    let mut produced = BTreeMap::new();
    produce(&local, 4, 1, &mut produced).await;
    let (_, result) = stopped(handle).await;
    match result {
        Err(KclError::Fatal(FatalError::Stream { stream, reason })) => {
            assert_eq!(stream, STREAM);
            assert!(reason.contains(expected), "{reason}");
        }
        other => panic!("expected a fatal stream error, got {other:?}"),
    }
    // Stopped gracefully: the leases were released for other workers.
    let owned = store
        .inner()
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.lease_owner.is_some())
        .count();
    assert_eq!(owned, 0, "every lease released");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_denies_access_stops_the_worker() {
    backend_failure_stops_the_worker(BackendOp::GetRecords, Fault::AccessDenied, "access denied").await;
}

#[tokio::test(start_paused = true)]
async fn a_disabled_kms_key_stops_the_worker() {
    backend_failure_stops_the_worker(BackendOp::GetRecords, Fault::KmsDisabled, "KMS").await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_stream_stops_the_worker() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let store = Arc::new(FailureLeaseStore::new(
        InMemoryLeaseStore::new(),
        LeaseFaultPlan::none(),
    ));
    let log = Log::default();
    let handle = running_worker(store, local.clone(), &local, &log).await;
    local.delete_stream(STREAM).unwrap();
    let (_, result) = stopped(handle).await;
    match result {
        Err(KclError::Fatal(FatalError::Stream { stream, reason })) => {
            assert_eq!(stream, STREAM);
            assert!(reason.contains("not found"), "{reason}");
        }
        other => panic!("expected a fatal stream error, got {other:?}"),
    }
}

/// Panics in one lease-store operation once armed: a bug in a background task. With
/// `no_heartbeats`, answers heartbeat calls `Unsupported` instead (as the DynamoDB store does
/// for a heartbeat table that is missing or denied by the IAM policy).
struct PanickingStore {
    inner: InMemoryLeaseStore,
    armed: Arc<AtomicBool>,
    op: LeaseOp,
    no_heartbeats: bool,
}

impl PanickingStore {
    fn check(&self, op: LeaseOp) {
        if op == self.op && self.armed.load(Ordering::SeqCst) {
            panic!("injected panic in {op:?}");
        }
    }

    fn heartbeats(&self) -> kcl_lease::Result<()> {
        if self.no_heartbeats {
            return Err(LeaseError::Unsupported("no access to the heartbeat table".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for PanickingStore {
    async fn list(&self) -> kcl_lease::Result<Vec<Lease>> {
        self.check(LeaseOp::List);
        self.inner.list().await
    }
    async fn put_heartbeat(
        &self,
        heartbeat: &WorkerHeartbeat,
        condition: HeartbeatCondition,
    ) -> kcl_lease::Result<()> {
        self.check(LeaseOp::PutHeartbeat);
        self.heartbeats()?;
        self.inner.put_heartbeat(heartbeat, condition).await
    }
    async fn list_heartbeats(&self, consistent: bool) -> kcl_lease::Result<Vec<WorkerHeartbeat>> {
        self.check(LeaseOp::ListHeartbeats);
        self.heartbeats()?;
        self.inner.list_heartbeats(consistent).await
    }
    async fn delete_heartbeat(
        &self,
        worker_id: &str,
        condition: HeartbeatCondition,
    ) -> kcl_lease::Result<()> {
        self.inner.delete_heartbeat(worker_id, condition).await
    }
    async fn get(&self, key: &str) -> kcl_lease::Result<Option<Lease>> {
        self.inner.get(key).await
    }
    async fn create_if_absent(&self, lease: &Lease) -> kcl_lease::Result<bool> {
        self.inner.create_if_absent(lease).await
    }
    async fn renew(&self, expected: &Lease) -> kcl_lease::Result<Lease> {
        self.check(LeaseOp::Renew);
        self.inner.renew(expected).await
    }
    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> kcl_lease::Result<Lease> {
        self.inner.take(expected, new_owner, handoff).await
    }
    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> kcl_lease::Result<Lease> {
        self.inner
            .take_heartbeat_renewed(expected, new_owner, handoff)
            .await
    }
    async fn evict(&self, expected: &Lease) -> kcl_lease::Result<Lease> {
        self.inner.evict(expected).await
    }
    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> kcl_lease::Result<Lease> {
        self.inner.update_checkpoint(expected, worker, checkpoint).await
    }
    async fn complete_handoff(&self, handoff: &Lease) -> kcl_lease::Result<Lease> {
        self.inner.complete_handoff(handoff).await
    }
    async fn mark_children(
        &self,
        expected: &Lease,
        children: &std::collections::BTreeSet<String>,
    ) -> kcl_lease::Result<Lease> {
        self.inner.mark_children(expected, children).await
    }
    async fn delete(&self, expected: &Lease) -> kcl_lease::Result<()> {
        self.inner.delete(expected).await
    }
}

async fn a_panicking_background_task_stops_the_worker(op: LeaseOp, task: &str) {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let store = PanickingStore {
        inner: InMemoryLeaseStore::new(),
        armed: armed.clone(),
        op,
        no_heartbeats: false,
    };
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 4, 5, &mut produced).await;
    let handle = fast("w", local.clone(), store, &log, FAILOVER)
        .build()
        .unwrap()
        .spawn();
    wait_until(LIMIT, "records processed", || log.wait_count() == 20).await;
    armed.store(true, Ordering::SeqCst);
    let (took, result) = stopped(handle).await;
    match result {
        Err(KclError::Fatal(FatalError::Task { task: name, how })) => {
            assert_eq!(name, task);
            assert!(
                how.contains("panicked") && how.contains("injected panic"),
                "{how}"
            );
        }
        other => panic!("expected a fatal task error, got {other:?}"),
    }
    assert!(took <= FAILOVER, "stopped after {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_renewal_stops_the_worker() {
    a_panicking_background_task_stops_the_worker(LeaseOp::Renew, "lease coordinator").await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_heartbeat_watch_stops_the_worker() {
    a_panicking_background_task_stops_the_worker(LeaseOp::ListHeartbeats, "lease coordinator").await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_shard_sync_stops_the_worker() {
    a_panicking_background_task_stops_the_worker(LeaseOp::List, "shard sync").await;
}

/// Denies every read of one stream, as Kinesis does when the IAM policy names only the others.
struct DenyStream {
    inner: LocalBackend,
    denied: String,
    on: Arc<AtomicBool>,
}

impl DenyStream {
    fn check(&self, stream: &str) -> Result<(), BackendError> {
        if stream == self.denied && self.on.load(Ordering::SeqCst) {
            return Err(BackendError::AccessDenied(format!(
                "not allowed to read {stream}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl StreamBackend for DenyStream {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.check(stream)?;
        self.inner.list_shards(stream).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        self.check(stream)?;
        self.inner.get_shard_iterator(stream, shard_id, position).await
    }
    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.check(stream)?;
        self.inner.get_records(stream, iterator, limit).await
    }
    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        self.inner.stream_identifier(stream).await
    }
}

#[tokio::test(start_paused = true)]
async fn in_multi_stream_mode_a_denied_stream_stops_alone() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream("good", 2).unwrap();
    local.create_stream("denied", 2).unwrap();
    let on = Arc::new(AtomicBool::new(false));
    let backend = DenyStream {
        inner: local.clone(),
        denied: "denied".into(),
        on: on.clone(),
    };
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let put = |stream: &'static str, n: usize, round: u64| {
        let local = local.clone();
        async move {
            for i in 0..n {
                let key = format!("{stream}-{i}");
                local
                    .put_record(stream, &key, Bytes::from(format!("{key}:{round}")), None)
                    .await
                    .expect("put");
            }
        }
    };
    put("good", 10, 0).await;
    put("denied", 10, 0).await;
    let handle = Scheduler::multi_stream_builder(
        APP,
        vec![StreamConfig::named("good"), StreamConfig::named("denied")],
    )
    .worker_id("w".to_owned())
    .backend(backend)
    .lease_store(store.clone())
    .initial_position(kcl_core::InitialPosition::TrimHorizon)
    .failover_time(FAILOVER)
    .polling_interval(Duration::from_millis(50))
    .shard_sync_interval(Duration::from_millis(500))
    .processor_factory({
        let log = log.clone();
        move |shard: &str| Recorder {
            worker: "w".into(),
            shard: shard.to_owned(),
            log: log.clone(),
            delay: Duration::ZERO,
        }
    })
    .build()
    .unwrap()
    .spawn();
    wait_until(LIMIT, "both streams processed", || log.wait_count() == 20).await;
    on.store(true, Ordering::SeqCst);
    put("denied", 5, 1).await;
    wait_until(LIMIT, "the denied stream stopped", || {
        !handle.fatal_errors().is_empty()
    })
    .await;
    let denied_id = local.stream_identifier("denied").await.unwrap().to_string();
    let errors = handle.fatal_errors();
    assert!(
        matches!(&errors[..], [FatalError::Stream { stream, reason }] if *stream == denied_id && reason.contains("access denied")),
        "{errors:?}"
    );
    // Its leases are let go and not taken again; the good stream goes on.
    wait_until(LIMIT, "the denied stream's leases released", || {
        !handle.held_leases().iter().any(|k| k.contains(":denied:"))
    })
    .await;
    put("good", 10, 1).await;
    wait_until(LIMIT, "the good stream still processed", || {
        log.wait_count() == 30
    })
    .await;
    tokio::time::sleep(FAILOVER * 3).await;
    assert!(handle.is_running());
    assert!(
        !handle.held_leases().iter().any(|k| k.contains(":denied:")),
        "{:?}",
        handle.held_leases()
    );
    assert!(handle.shutdown().await.is_ok());
}

/// F3 of the coordination review: a worker configured for worker renewal whose heartbeat table
/// is missing or denied stops with a one-line error. Before, it fell back to judging leases by
/// counters that stand still under worker renewal, and took every lease of a live fleet.
#[tokio::test(start_paused = true)]
async fn worker_renewal_without_a_usable_heartbeat_table_stops_the_worker() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let store = PanickingStore {
        inner: InMemoryLeaseStore::new(),
        armed: Arc::new(AtomicBool::new(false)),
        op: LeaseOp::ListHeartbeats,
        no_heartbeats: true,
    };
    let log = Log::default();
    let handle = fast("w", local.clone(), store, &log, FAILOVER)
        .lease_renewal(kcl_lease::LeaseRenewal::Worker)
        .build()
        .unwrap()
        .spawn();
    let (took, result) = stopped(handle).await;
    match result {
        Err(KclError::Fatal(FatalError::LeaseStore(message))) => {
            assert!(
                message.contains("worker renewal needs the worker heartbeat table"),
                "{message}"
            );
            assert!(!message.contains('\n'), "one line: {message}");
        }
        other => panic!("expected a fatal lease-store error, got {other:?}"),
    }
    assert!(took <= FAILOVER, "stopped after {took:?}");
    assert_eq!(log.wait_count(), 0, "nothing processed");
}
