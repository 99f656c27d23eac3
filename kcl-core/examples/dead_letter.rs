//! A dead-letter policy: a batch the handler keeps failing on (a record it cannot parse) is
//! retried three times, then written to a dead-letter file and skipped, so that one bad record
//! does not stop its shard. Without a policy the batch is retried forever and nothing is lost.
//!
//! ```text
//! cargo run -p kcl-core --example dead_letter
//! ```

use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kcl_core::prelude::*;

/// Appends each skipped batch to a file, one line per record: shard, sequence number, error,
/// data. If the file cannot be written the hook fails and is retried: the batch is not skipped
/// until it is kept somewhere.
struct DeadLetterFile {
    path: PathBuf,
    batches: AtomicUsize,
}

#[async_trait]
impl FailedBatchHook for DeadLetterFile {
    async fn failed_batch(&self, batch: FailedBatch<'_>) -> Result<(), ProcessorError> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        for record in batch.records {
            writeln!(
                file,
                "{} {} {:?} {}",
                batch.shard_id,
                record.sequence_number,
                batch.error.to_string(),
                String::from_utf8_lossy(&record.data)
            )?;
        }
        file.sync_data()?;
        self.batches.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = LocalBackend::new();
    stream.create_stream("readings", 1)?;
    for reading in ["20.5", "21.0", "not a number", "21.5"] {
        stream
            .put_record("readings", "sensor-1", reading.into(), None)
            .await?;
    }

    let path = std::env::temp_dir().join(format!("dead-letter-{}.txt", std::process::id()));
    let dead_letters = Arc::new(DeadLetterFile {
        path: path.clone(),
        batches: AtomicUsize::new(0),
    });
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let attempts = NonZeroU32::new(3).ok_or("3 attempts")?;
    let worker = Scheduler::builder("sensors", "readings")
        .backend(stream)
        .lease_store(InMemoryLeaseStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(1) // one record per batch: only the bad record is dead-lettered
        .processor_failure(ProcessorFailurePolicy::skip_after(attempts, dead_letters.clone()))
        .handler(move |batch: Batch| {
            let counter = counter.clone();
            async move {
                for record in &batch {
                    let celsius: f64 = std::str::from_utf8(&record.data)?.parse()?;
                    println!("{}: {celsius} °C", record.partition_key);
                }
                counter.fetch_add(batch.records().len(), Ordering::SeqCst);
                Ok(())
            }
        })
        .build()?
        .spawn();
    while handled.load(Ordering::SeqCst) < 3 || dead_letters.batches.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await?;
    print!(
        "dead letters in {}:\n{}",
        path.display(),
        std::fs::read_to_string(&path)?
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
