use kcl_core::prelude::*;

#[tokio::main]
async fn main() -> kcl_core::Result<()> {
    Scheduler::builder("my-app", "my-stream")
        .aws() // region, credentials, endpoint (AWS_ENDPOINT_URL) from the standard chain
        .await?
        .handler(|batch: Batch| async move {
            for record in batch.records() {
                println!("{}", String::from_utf8_lossy(&record.data));
            }
            Ok(()) // checkpoints the batch
        })
        .build()?
        .run(shutdown_signal()) // SIGTERM or Ctrl-C: checkpoint, then hand the leases over
        .await
}
