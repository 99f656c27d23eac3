//! A batch handler of your own type: it holds a sink (here an in-memory table of totals per
//! customer, standing for a database), is shared by every shard, and writes each batch in one
//! transaction. `Ok` checkpoints the batch; an error (the sink is down) delivers the same batch
//! again after a backoff, so a batch is written whole, once it succeeds, and never skipped.
//!
//! ```text
//! cargo run -p kcl-core --example batch_handler
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_core::prelude::*;

/// Totals per customer; every third write fails, as a flaky database would.
#[derive(Default)]
struct Totals {
    table: Mutex<BTreeMap<String, u64>>,
    writes: AtomicUsize,
    records: AtomicUsize,
}

#[async_trait]
impl BatchHandler for Totals {
    async fn handle(&self, batch: Batch) -> Result<(), ProcessorError> {
        // Parse the whole batch first: a bad record fails the batch before anything is written.
        let mut amounts = Vec::with_capacity(batch.records().len());
        for record in &batch {
            let amount: u64 = std::str::from_utf8(&record.data)?.trim().parse()?;
            amounts.push((record.partition_key.to_string(), amount));
        }
        if self.writes.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            eprintln!(
                "{}: the database is busy (delivery {}); the batch comes again",
                batch.shard_id(),
                batch.attempt()
            );
            return Err("database busy".into());
        }
        // One transaction for the batch.
        let mut table = self.table.lock().map_err(|_| "poisoned")?;
        for (customer, amount) in amounts {
            *table.entry(customer).or_default() += amount;
        }
        self.records.fetch_add(batch.records().len(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = LocalBackend::new();
    stream.create_stream("payments", 4)?;
    for i in 1..=100u64 {
        let customer = format!("customer-{}", i % 5);
        stream
            .put_record("payments", &customer, i.to_string().into(), None)
            .await?;
    }

    let totals = Arc::new(Totals::default());
    let worker = Scheduler::builder("totals", "payments")
        .backend(stream)
        .lease_store(InMemoryLeaseStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10) // batches of at most 10 records
        .handler(totals.clone())
        .build()?
        .spawn();
    while totals.records.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await?;

    let table = totals.table.lock().map_err(|_| "poisoned")?;
    for (customer, total) in table.iter() {
        println!("{customer}: {total}");
    }
    let sum: u64 = table.values().sum();
    assert_eq!(sum, 5050, "every payment counted once");
    Ok(())
}
