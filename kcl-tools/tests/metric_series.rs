//! Per-shard metric series end when the shard leaves the worker: the shard consumer touches its
//! series while it holds the shard, and the Prometheus exporter (as `kcl-tail` configures it,
//! with a shorter idle timeout here) drops the series of a shard that moved to another worker,
//! while the series of shards still held stay, even with no records flowing. Real time: the
//! exporter's clock is not Tokio's.

use std::collections::BTreeMap;
use std::time::Duration;

use kcl_core::{InMemoryLeaseStore, LocalBackend};
use kcl_tests::*;

fn series(text: &str, worker: &str, shard: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("MillisBehindLatest")
            && l.contains(&format!("worker_id=\"{worker}\""))
            && l.contains(&format!("shard_id=\"{shard}\""))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_of_a_shard_that_left_the_worker_disappear() {
    init_tracing();
    let idle = Duration::from_secs(15);
    let prometheus = kcl_tools::prometheus_builder(idle)
        .install_recorder()
        .expect("the only recorder of this test binary");
    let local = LocalBackend::new();
    local.create_stream(STREAM, 2).unwrap();
    let store = InMemoryLeaseStore::new();
    let log = Log::default();
    let mut produced = BTreeMap::new();
    produce(&local, 8, 2, &mut produced).await;
    let a = start("a", &local, &store, &log, Duration::from_secs(2));
    wait_until(Duration::from_secs(30), "a processes both shards", || {
        log.wait_count() == 16 && a.held_leases().len() == 2
    })
    .await;
    let text = prometheus.render();
    let shards = a.held_leases();
    for shard in &shards {
        assert!(series(&text, "a", shard), "{shard} reported by a:\n{text}");
    }
    let b = start("b", &local, &store, &log, Duration::from_secs(2));
    wait_until(Duration::from_secs(30), "one shard each", || {
        a.held_leases().len() == 1 && b.held_leases().len() == 1
    })
    .await;
    let moved = b.held_leases().remove(0);
    let kept = a.held_leases().remove(0);
    // No records flow from here: only the keep-alive touches the series.
    tokio::time::sleep(idle + Duration::from_secs(8)).await;
    let text = prometheus.render();
    assert!(
        !series(&text, "a", &moved),
        "a's series of {moved} are gone:\n{text}"
    );
    assert!(
        series(&text, "a", &kept),
        "a's series of {kept}, still held, stay:\n{text}"
    );
    assert!(series(&text, "b", &moved), "b reports {moved}:\n{text}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
