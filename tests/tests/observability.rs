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
