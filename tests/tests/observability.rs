//! The health summary and the metrics a worker emits.

use std::collections::BTreeMap;
use std::time::Duration;

use kcl_core::shard::state::ShardState;
use kcl_core::{InMemoryLeaseStore, LocalBackend};
use kcl_tests::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const LIMIT: Duration = Duration::from_secs(30);

/// Sums of the counters and the last gauge values, by metric name.
fn snapshot(recorder: &metrics_util::debugging::Snapshotter) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (key, _, _, value) in recorder.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        *out.entry(name).or_insert(0.0) += v;
    }
    out
}

#[test]
fn health_and_metrics_follow_what_the_worker_does() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A runtime of its own, so that the recorder is the one its tasks see.
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let backend = LocalBackend::new();
            backend.create_stream(STREAM, 3).unwrap();
            let store = InMemoryLeaseStore::new();
            let log = Log::default();
            let mut produced = BTreeMap::new();
            produce(&backend, 9, 10, &mut produced).await;
            let worker = start("w", &backend, &store, &log, Duration::from_secs(3));
            wait_until(LIMIT, "all processed", || log.wait_count() == 90).await;
            wait_until(LIMIT, "health shows every record", || {
                worker
                    .health()
                    .shards
                    .iter()
                    .map(|s| s.records_processed)
                    .sum::<u64>()
                    == 90
            })
            .await;
            let health = worker.health();
            assert!(health.running);
            assert_eq!(health.worker_id, "w");
            assert_eq!(health.leases_held, 3);
            assert_eq!(health.shards.len(), 3);
            for shard in &health.shards {
                assert_eq!(shard.state, ShardState::Processing, "{shard:?}");
                assert!(
                    shard.checkpoint.as_ref().is_some_and(|c| c.sequence().is_some()),
                    "{shard:?}"
                );
            }
            assert_eq!(
                health.max_millis_behind_latest(),
                health
                    .shards
                    .iter()
                    .map(|s| s.millis_behind_latest)
                    .max()
                    .unwrap()
            );
            worker.shutdown().await.unwrap();
        });
    });
    let m = snapshot(&snapshotter);
    assert_eq!(m.get("RecordsProcessed"), Some(&90.0), "{m:?}");
    let bytes: f64 = m.get("BytesProcessed").copied().unwrap_or(0.0);
    assert!(bytes >= 90.0 * 7.0, "payloads are at least 7 bytes: {m:?}");
    assert_eq!(m.get("TakenLeases"), Some(&3.0), "{m:?}");
    assert!(m.get("ProcessTask.Time").copied().unwrap_or(0.0) >= 1.0, "{m:?}");
    assert_eq!(
        m.get("LostLeases"),
        None,
        "releasing at shutdown is not losing: {m:?}"
    );
}

/// Log lines written into a buffer, for one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// With a `warn` filter (the tools' default), a warning still names its worker, and a shard
/// task's warning its shard: the context spans are on whenever any event is, and the lease
/// coordinator's own tasks (renewals, heartbeats, takes) carry the worker's span. Before, the
/// spans were at info level and a `warn` filter turned them off.
#[tokio::test(start_paused = true)]
async fn warnings_name_their_worker_and_shard_under_a_warn_filter() {
    use kcl_core::backend::failure::{FailureBackend, Fault, FaultPlan, Trigger};
    use kcl_core::backend::local::BackendOp;
    use kcl_lease::{FailureLeaseStore, LeaseFault, LeaseFaultPlan, LeaseOp, LeaseTrigger};

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime is one thread: every task of the worker logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let backend = FailureBackend::new(
        local.clone(),
        FaultPlan::new(5).rule(BackendOp::GetRecords, Trigger::EveryNth(3), Fault::Error),
    );
    let store = FailureLeaseStore::new(
        InMemoryLeaseStore::new(),
        LeaseFaultPlan::new(5).rule(LeaseOp::Renew, LeaseTrigger::EveryNth(4), LeaseFault::Throttle),
    );
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 4, 5, &mut produced).await;
    let worker = fast("w-logs", backend, store, &log, Duration::from_secs(3))
        .build()
        .expect("valid config")
        .spawn();
    let has = |what: &str| {
        let lines = captured.lines();
        lines.iter().any(|l| l.contains(what))
    };
    wait_until(LIMIT, "a failed read and a failed renewal logged", || {
        has("reading records failed") && has("renewal failed")
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    let lines = captured.lines();
    let read = lines
        .iter()
        .find(|l| l.contains("reading records failed"))
        .expect("a failed read");
    assert!(
        read.contains("worker{worker_id=w-logs}") && read.contains("shard{shard_id=shardId-"),
        "a shard task's warning names its worker and shard: {read}"
    );
    let renewal = lines
        .iter()
        .find(|l| l.contains("renewal failed"))
        .expect("a failed renewal");
    assert!(
        renewal.contains("worker{worker_id=w-logs}"),
        "a renewal's warning names its worker: {renewal}"
    );
}
