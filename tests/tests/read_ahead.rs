//! The read-ahead is bounded in bytes as well as in batches: a slow processor of big records
//! does not let a shard's prefetched records grow beyond `max_prefetch_bytes` (in paused time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::backend::local::BackendOp;
use kcl_core::{
    InMemoryLeaseStore, InitialPosition, LocalBackend, ProcessRecordsInput, ProcessorError, RecordProcessor,
    Scheduler,
};
use kcl_tests::*;

const RECORD: usize = 64 * 1024;

struct Slow {
    processed: Arc<AtomicU64>,
}

#[async_trait]
impl RecordProcessor for Slow {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.processed
            .fetch_add(input.records.len() as u64, Ordering::SeqCst);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_processor_of_big_records_keeps_the_read_ahead_within_its_bytes() {
    init_tracing();
    let local = LocalBackend::new();
    local.create_stream(STREAM, 1).unwrap();
    for i in 0..60u32 {
        local
            .put_record(STREAM, "k", Bytes::from(vec![i as u8; RECORD]), None)
            .await
            .expect("put");
    }
    let processed = Arc::new(AtomicU64::new(0));
    let budget = 4 * RECORD;
    let handle = Scheduler::builder(APP, STREAM)
        .worker_id("w".to_owned())
        .backend(local.clone())
        .lease_store(InMemoryLeaseStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(10))
        .max_records(1)
        .min_read_interval(Duration::from_millis(10))
        .max_prefetch_batches(100)
        .max_prefetch_bytes(budget)
        .processor_factory({
            let processed = processed.clone();
            move |_: &str| Slow {
                processed: processed.clone(),
            }
        })
        .build()
        .unwrap()
        .spawn();
    let mut most_ahead = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // One record per read: reads are records read from the shard.
        let read = local.op_count(BackendOp::GetRecords);
        let done = processed.load(Ordering::SeqCst);
        most_ahead = most_ahead.max(read.saturating_sub(done));
    }
    // The batch in the processor, the budget's batches, and one read waiting for room.
    let allowed = (budget / RECORD) as u64 + 2;
    assert!(processed.load(Ordering::SeqCst) > 10, "records were processed");
    assert!(
        most_ahead <= allowed,
        "{most_ahead} records ({} KiB) read ahead, the budget holds {} KiB",
        most_ahead * RECORD as u64 / 1024,
        budget / 1024
    );
    handle.shutdown().await.unwrap();
}
