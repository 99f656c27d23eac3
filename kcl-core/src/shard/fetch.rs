//! The shard reader: a task that polls `GetRecords` ahead of the processor into a bounded
//! channel (the read-ahead), so that reading and processing overlap.
//!
//! When the channel is full the reader waits: that is the back-pressure. It keeps within the
//! per-shard read limits (`min_read_interval` between calls, `polling_interval` after an empty
//! read), backs off with jitter on throttling and transient errors, and recovers from an
//! expired iterator by asking for a new one after the last record it read.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, Policy};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::read_ahead::{ByteBudget, Reserved};
use crate::aggregation::{deaggregate_batch, MisplacedKplRecords};
use crate::backend::{BackendError, IteratorPosition, StreamBackend};
use crate::record::{ChildShard, ExtendedSequenceNumber, HashKeyRange, Record, SequenceNumber};

/// Kinesis's read limit per shard, shared by every reader of the shard: 2 MiB/s.
const SHARD_READ_BYTES_PER_SEC: f64 = 2.0 * 1024.0 * 1024.0;

/// What the reader hands to the shard consumer.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// Records, in order; never empty.
    Batch {
        records: Vec<Record>,
        millis_behind_latest: u64,
        /// The batch's share of the read-ahead's byte budget, given back when it is dropped.
        budget: Reserved,
    },
    /// The shard is closed and was read to its end.
    End { children: Vec<ChildShard> },
    /// A failure retrying cannot fix (missing stream or shard, bad position).
    Failed(BackendError),
}

/// The reader's settings.
#[derive(Debug, Clone)]
pub(crate) struct FetchConfig {
    pub stream: String,
    pub shard_id: String,
    pub max_records: usize,
    pub polling_interval: Duration,
    pub min_read_interval: Duration,
    /// The shard's hash key range: KPL user records outside it are counted (and delivered or
    /// dropped as `misplaced_kpl` says).
    pub hash_range: Option<HashKeyRange>,
    /// What to do with KPL aggregates reaching outside `hash_range`.
    pub misplaced_kpl: MisplacedKplRecords,
    /// Counts KPL user records outside `hash_range`.
    pub misplaced: metrics::Counter,
    /// The bytes the read-ahead may hold.
    pub budget: ByteBudget,
    pub throttled: metrics::Counter,
    pub expired: metrics::Counter,
}

/// Turns the records a read returned into what the consumer gets: KPL aggregates become their
/// user records, and records a checkpoint inside an aggregate already covers are skipped.
/// Shared by the polling and the fan-out reader.
pub(crate) struct Unpacker {
    hash_range: Option<HashKeyRange>,
    policy: MisplacedKplRecords,
    misplaced: metrics::Counter,
    /// Whether misplaced user records were already logged for this shard (once, not per batch).
    warned: bool,
    /// Records at or before this were processed already (a checkpoint inside an aggregate is
    /// resumed at the aggregate, with `AT_SEQUENCE_NUMBER`).
    skip_through: Option<ExtendedSequenceNumber>,
}

impl Unpacker {
    pub(crate) fn new(config: &FetchConfig, skip_through: Option<ExtendedSequenceNumber>) -> Self {
        Self {
            hash_range: config.hash_range,
            policy: config.misplaced_kpl,
            misplaced: config.misplaced.clone(),
            warned: false,
            skip_through,
        }
    }

    /// The user records of `raw`, in order.
    pub(crate) fn unpack(&mut self, raw: Vec<Record>) -> Vec<Record> {
        let last_raw = raw.last().map(|r| r.sequence_number.clone());
        let unpacked = deaggregate_batch(raw, self.hash_range.as_ref(), self.policy);
        if unpacked.misplaced > 0 {
            self.misplaced.increment(unpacked.misplaced as u64);
            if !self.warned {
                self.warned = true;
                warn!(
                    misplaced = unpacked.misplaced,
                    dropped_aggregates = unpacked.dropped_aggregates,
                    policy = ?self.policy,
                    "KPL aggregates hold user records that hash outside this shard's range \
                     (counted in KplMisplacedRecords; logged once per shard)"
                );
            }
        }
        let mut records = unpacked.records;
        if let Some(skip) = &self.skip_through {
            records.retain(|r| r.extended_sequence_number() > *skip);
            if last_raw.as_ref().is_some_and(|l| Some(l) > skip.sequence()) {
                self.skip_through = None;
            }
        }
        records
    }
}

/// The children of the reader's shard if the shard is gone from a stream that still exists: a
/// closed shard trimmed by retention before it was read to its end (`ShardNotFound` on its
/// iterator or its subscription). `None` if the stream cannot be listed (a deleted stream is a
/// failure, not an end) or still lists the shard.
pub(crate) async fn vanished_shard_children(
    backend: &dyn StreamBackend,
    config: &FetchConfig,
) -> Option<Vec<ChildShard>> {
    let shards = match backend.list_shards(&config.stream).await {
        Ok(shards) => shards,
        Err(e) => {
            debug!(error = %e, "listing the shards to check for a trimmed shard failed");
            return None;
        }
    };
    if shards.iter().any(|s| s.shard_id == config.shard_id) {
        return None;
    }
    let children: Vec<ChildShard> = shards
        .iter()
        .filter(|s| s.parents().any(|p| p == config.shard_id))
        .map(|s| ChildShard {
            shard_id: s.shard_id.clone(),
            parent_shards: s.parents().map(str::to_owned).collect(),
            hash_key_range: s.hash_key_range,
        })
        .collect();
    warn!(
        children = ?children.iter().map(|c| &c.shard_id).collect::<Vec<_>>(),
        "the shard no longer exists (trimmed by retention before it was read to its end): \
         treating it as ended so that its children start; its unread records are gone"
    );
    Some(children)
}

/// What a reader hands over after a failure retrying cannot fix: the end of a vanished shard
/// (see [`vanished_shard_children`]) or the failure.
pub(crate) async fn unrecoverable(
    backend: &dyn StreamBackend,
    config: &FetchConfig,
    error: BackendError,
) -> Fetched {
    if matches!(error, BackendError::ShardNotFound(_)) {
        if let Some(children) = vanished_shard_children(backend, config).await {
            return Fetched::End { children };
        }
    }
    Fetched::Failed(error)
}

/// Reads one shard from `start`, skipping records at or before `skip_through` (a checkpoint
/// inside an aggregate is resumed with `AT_SEQUENCE_NUMBER`).
pub(crate) async fn run(
    backend: Arc<dyn StreamBackend>,
    config: FetchConfig,
    start: IteratorPosition,
    skip_through: Option<ExtendedSequenceNumber>,
    tx: mpsc::Sender<Fetched>,
) {
    let mut iterator: Option<String> = None;
    let mut last_read: Option<SequenceNumber> = None;
    let mut unpacker = Unpacker::new(&config, skip_through);
    let mut delays = Backoff::new(Policy::Read);
    loop {
        let it = match iterator.take() {
            Some(it) => it,
            None => {
                let position = match &last_read {
                    Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
                    None => start.clone(),
                };
                match backend
                    .get_shard_iterator(&config.stream, &config.shard_id, &position)
                    .await
                {
                    Ok(it) => it,
                    Err(e) if e.is_retryable() => {
                        debug!(error = %e, "getting a shard iterator failed; backing off");
                        tokio::time::sleep(delays.next_delay()).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(unrecoverable(&*backend, &config, e).await).await;
                        return;
                    }
                }
            }
        };
        let started = Instant::now();
        match backend.get_records(&config.stream, &it, config.max_records).await {
            Ok(out) => {
                delays.reset();
                if let Some(last) = out.records.last() {
                    last_read = Some(last.sequence_number.clone());
                }
                let records = unpacker.unpack(out.records);
                let empty = records.is_empty();
                let bytes: usize = records.iter().map(|r| r.data.len()).sum();
                if !empty {
                    let Some(budget) = config.budget.reserve(&records).await else {
                        return;
                    };
                    let batch = Fetched::Batch {
                        records,
                        millis_behind_latest: out.millis_behind_latest,
                        budget,
                    };
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                }
                match out.next_iterator {
                    Some(next) => iterator = Some(next),
                    None => {
                        let _ = tx
                            .send(Fetched::End {
                                children: out.child_shards,
                            })
                            .await;
                        return;
                    }
                }
                // Stay under the shard's read limits: calls per second, and bytes per second
                // (a large read is followed by a proportionally longer pause).
                let pause = if empty {
                    config.polling_interval
                } else {
                    config
                        .min_read_interval
                        .max(Duration::from_secs_f64(bytes as f64 / SHARD_READ_BYTES_PER_SEC))
                };
                tokio::time::sleep_until(started + pause).await;
            }
            Err(BackendError::ExpiredIterator) => {
                config.expired.increment(1);
                debug!("shard iterator expired; getting a new one after the last record read");
            }
            Err(e) if e.is_retryable() => {
                if matches!(e, BackendError::Throttled(_)) {
                    config.throttled.increment(1);
                    debug!(error = %e, "read throttled; backing off");
                } else {
                    warn!(error = %e, "reading records failed; backing off");
                }
                iterator = Some(it);
                tokio::time::sleep(delays.next_delay()).await;
            }
            Err(e) => {
                let _ = tx.send(unrecoverable(&*backend, &config, e).await).await;
                return;
            }
        }
    }
}
