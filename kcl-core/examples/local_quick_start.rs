//! Quick start on the bundled local backend (no AWS, no Docker): a local stream of two shards,
//! ten records, and one worker that prints them with a batch handler. It stops once it has seen
//! them all; a service runs until `shutdown_signal()` instead (see `aws_consumer.rs`).
//!
//! ```text
//! cargo run -p kcl-core --example local_quick_start
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kcl_core::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = LocalBackend::new();
    stream.create_stream("orders", 2)?;
    for i in 0..10 {
        let customer = format!("customer-{}", i % 4);
        stream
            .put_record("orders", &customer, format!("order {i}").into(), None)
            .await?;
    }

    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let worker = Scheduler::builder("quick-start", "orders")
        .backend(stream)
        .lease_store(InMemoryLeaseStore::new())
        .initial_position(InitialPosition::TrimHorizon) // from the oldest record, not only new ones
        .handler(move |batch: Batch| {
            let counter = counter.clone();
            async move {
                for record in &batch {
                    let text = String::from_utf8_lossy(&record.data);
                    println!("{} {}: {text}", batch.shard_id(), record.partition_key);
                }
                counter.fetch_add(batch.records().len(), Ordering::SeqCst);
                Ok(()) // checkpoints the batch: a restarted worker resumes after it
            }
        })
        .build()?
        .spawn();

    while handled.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await?; // graceful: checkpoint, then release the leases
    Ok(())
}
