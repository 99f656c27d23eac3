//! Enhanced fan-out: records pushed to this application through `SubscribeToShard`, with a
//! read throughput of its own (2 MiB/s per shard) and lower latency than polling. The consumer
//! is registered on the stream when the first worker starts (and reused afterwards); every
//! worker of the application shares it. It is billed by AWS per shard-hour and per GB.
//!
//! ```text
//! AWS_REGION=eu-west-1 cargo run -p kcl-core --example fan_out
//! ```

use kcl_core::prelude::*;

#[tokio::main]
async fn main() -> kcl_core::Result<()> {
    Scheduler::builder("my-app", "my-stream")
        .aws()
        .await?
        .retrieval(RetrievalMode::FanOut(FanOutConfig::named("my-app-consumer")))
        .handler(|batch: Batch| async move {
            println!(
                "{}: {} records, {} ms behind",
                batch.shard_id(),
                batch.records().len(),
                batch.millis_behind_latest()
            );
            Ok(())
        })
        .build()?
        .run(shutdown_signal())
        .await
}
