//! One application consuming two streams with one lease table and one fleet of workers (the
//! Java KCL's multi-stream mode and lease keys). Run as many copies as you like: the shards of
//! both streams are balanced over them.
//!
//! ```text
//! AWS_REGION=eu-west-1 cargo run -p kcl-core --example multi_stream
//! ```

use kcl_core::prelude::*;

#[tokio::main]
async fn main() -> kcl_core::Result<()> {
    // A fixed list; a `kcl_core::StreamList` can gain and lose streams while the worker runs.
    let streams = vec![
        StreamConfig::named("orders"),
        StreamConfig::named("payments").initial_position(InitialPosition::TrimHorizon),
    ];
    Scheduler::multi_stream_builder("billing", streams)
        .aws()
        .await?
        .handler(|batch: Batch| async move {
            for record in &batch {
                let text = String::from_utf8_lossy(&record.data);
                println!("{} {}: {text}", batch.stream_name(), record.partition_key);
            }
            Ok(())
        })
        .build()?
        .run(shutdown_signal())
        .await
}
