//! Log context under a `warn` filter: a warning names its worker, and a shard task's warning
//! its shard.
//!
//! A test binary of its own: `tracing` caches whether a callsite is enabled process-wide, from
//! the dispatcher of the thread that first reaches it. A sibling test running the same code on
//! another thread with no subscriber can cache "never" for the worker's span while this test's
//! thread-local subscriber is installed, and the span then disappears from this test's lines.

use std::collections::BTreeMap;
use std::time::Duration;

use kcl_core::{InMemoryLeaseStore, LocalBackend};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(30);

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
    // Ask every callsite reached so far again, now that this subscriber is installed.
    tracing::callsite::rebuild_interest_cache();

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
