//! The read-ahead's byte budget: the reader of a shard holds at most `max_prefetch_bytes` of
//! records (payloads and partition keys, counted after KPL unpacking) that the processor has
//! not finished with, besides the `max_prefetch_batches` limit on the number of batches. Big
//! records and a slow processor then cannot make a worker's memory grow without bound: the
//! reader waits (back-pressure) until delivered batches give their bytes back.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::record::Record;

/// A per-shard budget of bytes.
#[derive(Clone, Debug)]
pub(crate) struct ByteBudget {
    permits: Arc<Semaphore>,
    capacity: u32,
}

/// A batch's share of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reserved {
    _permit: OwnedSemaphorePermit,
}

/// What a record costs in the budget.
pub(crate) fn record_bytes(record: &Record) -> usize {
    record.data.len() + record.partition_key.len()
}

impl ByteBudget {
    /// A budget of `bytes` (at most `u32::MAX`, Tokio's largest single acquisition).
    pub(crate) fn new(bytes: usize) -> Self {
        let capacity = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Waits until the budget has room for `records`, then takes it. A batch larger than the
    /// whole budget takes all of it (it proceeds alone, never deadlocks). `None` if the budget
    /// was closed.
    pub(crate) async fn reserve(&self, records: &[Record]) -> Option<Reserved> {
        let bytes: usize = records.iter().map(record_bytes).sum();
        let wanted = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.capacity);
        let permit = self.permits.clone().acquire_many_owned(wanted).await.ok()?;
        Some(Reserved { _permit: permit })
    }

    /// Bytes held now by batches not yet given back.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.capacity as usize - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(len: usize) -> Record {
        Record {
            data: Bytes::from(vec![0u8; len]),
            partition_key: "k".into(),
            sequence_number: crate::record::SequenceNumber::new("1").expect("a sequence number"),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: std::time::SystemTime::UNIX_EPOCH,
            explicit_hash_key: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_blocks_until_bytes_are_given_back_and_big_batches_go_alone() {
        let budget = ByteBudget::new(1000);
        let a = budget.reserve(&[record(599)]).await.expect("room");
        assert_eq!(budget.held(), 600);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(&[record(499)]).await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "no room: the reader waits");
        drop(a);
        waiting
            .await
            .expect("task")
            .expect("room after the first batch was delivered");
        let big = budget
            .reserve(&[record(5000)])
            .await
            .expect("a batch bigger than the budget");
        assert_eq!(budget.held(), 1000);
        drop(big);
        assert_eq!(budget.held(), 0);
    }
}
