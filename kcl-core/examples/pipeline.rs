//! A pull-based pipeline on the bundled local backend: the consumer is a `Stream` of batches; a
//! sink writes up to eight batches at once, they finish out of order, and each is acknowledged
//! once written. Each shard checkpoints its contiguous acknowledged prefix; at most four batches
//! per shard are out at once (back-pressure).
//!
//! ```text
//! cargo run -p kcl-core --example pipeline
//! ```

use std::time::Duration;

use futures_util::StreamExt;
use kcl_core::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = LocalBackend::new();
    stream.create_stream("clicks", 2)?;
    for i in 0..200u64 {
        let user = format!("user-{}", i % 7);
        stream
            .put_record("clicks", &user, format!("click {i}").into(), None)
            .await?;
    }
    let mut consumer = Scheduler::builder("pipeline", "clicks")
        .backend(stream)
        .lease_store(InMemoryLeaseStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .max_records(20)
        .into_pull_consumer(PullOptions::default().max_in_flight_batches(4))?;

    let written = {
        let mut n = 0u64;
        let sink = (&mut consumer)
            .filter_map(|event| async move {
                match event {
                    PullEvent::Batch { batch, ack } => Some((batch, ack)),
                    other => {
                        println!("{other:?}"); // a lease lost or handed over, a shard ended
                        None
                    }
                }
            })
            .map(|(batch, ack)| {
                n += 1;
                let write_time = Duration::from_millis(if n.is_multiple_of(2) { 5 } else { 30 });
                async move {
                    // Stands for a write to a database or an object store.
                    tokio::time::sleep(write_time).await;
                    let records = batch.records().len();
                    ack.ack().map(|()| records) // an error: the shard moved, its next owner redelivers
                }
            })
            .buffer_unordered(8);
        let mut sink = std::pin::pin!(sink);
        let mut written = 0;
        while written < 200 {
            match sink.next().await {
                Some(Ok(records)) => written += records,
                Some(Err(e)) => eprintln!("{e}"),
                None => break, // the worker stopped by itself: shutdown() says why
            }
        }
        written
    };
    consumer.shutdown().await?; // checkpoints what is acknowledged, hands the leases over
    println!("{written} records written and checkpointed");
    Ok(())
}
