//! The pull-based consumer: a [`futures_util::Stream`] of batches, each with an [`AckToken`]
//! whose acknowledgements drive the checkpoints, for data pipelines that pull (as rdkafka's
//! `StreamConsumer` is used in Vector, Arroyo or Fluvio connectors) rather than hand a callback
//! to the worker.
//!
//! [`SchedulerBuilder::into_pull_consumer`] spawns the worker in the background and returns a
//! [`PullConsumer`], a stream of [`PullEvent`]s:
//!
//! - [`PullEvent::Batch`]: a batch of one shard (records in shard order, shard id, sequence
//!   numbers) and its [`AckToken`]. Batches of one shard come in shard order; shards interleave.
//! - [`PullEvent::LeaseLost`]: this worker no longer holds the shard (taken by another worker,
//!   handed over while balancing, or released at shutdown). Acknowledgements of its batches are
//!   no-ops from then on ([`AckError::NotHeld`]); another worker delivers them again from the
//!   shard's checkpoint.
//! - [`PullEvent::ShardEnded`]: the shard was closed by a split or merge, every batch of it was
//!   acknowledged, and `SHARD_END` is checkpointed: its children may start.
//!
//! **Checkpoints.** A shard checkpoints up to its highest *contiguous* acknowledged batch, at the
//! last record of that batch (sub-sequence numbers included, for KPL aggregates): acks may come
//! in any order, from any task; batch N+1 acknowledged before batch N does not checkpoint past N.
//! The checkpoints are written in the background, coalesced (one write for many acks). A token
//! dropped without [`AckToken::ack`] is *not* an acknowledgement: the shard's checkpoint stays
//! before that batch (and at the end of the shard, `SHARD_END` is not written, so the children
//! wait) until the lease moves to another worker or the consumer restarts, which delivers the
//! batch again (at least once).
//!
//! **Back-pressure.** Each shard has at most [`PullOptions::max_in_flight_batches`] batches
//! delivered and neither acknowledged nor dropped (default 4): its record processor waits while
//! that many are out, and its reader stops once its read-ahead is full. All shards share one
//! bounded channel ([`PullOptions::buffer`]) to the stream; nothing is queued without bound.
//!
//! **Stopping.** [`PullConsumer::shutdown`] stops delivering, gives the batches already handed
//! out [`PullOptions::drain_timeout`] to be acknowledged, checkpoints the acknowledged prefix of
//! every shard and hands the leases over. Dropping the consumer does the same in a background
//! task (it needs a Tokio runtime then, one that keeps running: at the end of `main`, await
//! `shutdown` instead, or the runtime's end cuts the shutdown short, as if the process had
//! died: nothing more is checkpointed and the leases expire). The stream ends (`None`) only when the worker stopped
//! by itself (a fatal error): [`PullConsumer::shutdown`] then returns the error.
//!
//! Built on the ordinary machinery: one internal [`RecordProcessor`] per shard forwards the
//! batches to the channel and waits for acknowledgements; the shard consumer is unchanged.
//!
//! ```
//! use futures_util::StreamExt;
//! use kcl_core::prelude::*;
//! use kcl_core::pull::{PullEvent, PullOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = LocalBackend::new();
//! stream.create_stream("orders", 1)?;
//! stream.put_record("orders", "k", "order 1".into(), None).await?;
//! let mut consumer = Scheduler::builder("my-app", "orders")
//!     .backend(stream)
//!     .lease_store(InMemoryLeaseStore::new())
//!     .initial_position(InitialPosition::TrimHorizon)
//!     .into_pull_consumer(PullOptions::default())?;
//! while let Some(event) = consumer.next().await {
//!     if let PullEvent::Batch { batch, ack } = event {
//!         println!("{} records from {}", batch.records().len(), batch.shard_id());
//!         ack.ack()?; // checkpointed once every earlier batch of the shard is acked too
//!         break;
//!     }
//! }
//! consumer.shutdown().await?; // checkpoints the acked batches, hands the leases over
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use kcl_lease::LeaseStatus;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::error::{KclError, Result};
use crate::handler::Batch;
use crate::processor::{
    LeaseLostInput, ProcessRecordsInput, ProcessorError, ProcessorFactory, RecordProcessor, ShardEndedInput,
    ShardInfo, ShutdownRequestedInput,
};
use crate::record::ExtendedSequenceNumber;
use crate::scheduler::{SchedulerBuilder, SchedulerHandle};

/// The settings of a [`PullConsumer`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PullOptions {
    max_in_flight_batches: usize,
    buffer: usize,
    drain_timeout: Duration,
}

impl Default for PullOptions {
    /// 4 batches in flight per shard, a buffer of 16 events, 10 s to drain.
    fn default() -> Self {
        Self {
            max_in_flight_batches: 4,
            buffer: 16,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl PullOptions {
    /// At most this many batches of one shard delivered and neither acknowledged nor dropped
    /// (at least 1; default 4). The shard waits while that many are out: a sink that gathers
    /// several batches of a shard before acknowledging them needs at least that many here, or
    /// it waits for a batch that waits for it.
    pub fn max_in_flight_batches(mut self, batches: usize) -> Self {
        self.max_in_flight_batches = batches.max(1);
        self
    }

    /// Events waiting in the channel to the stream, for all shards together (at least 1;
    /// default 16). Batches in the buffer count as in flight.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }

    /// How long a shard that is stopping (shutdown, or its lease handed over) waits for its
    /// batches in flight to be acknowledged before it checkpoints (default 10 s). Keep it below
    /// the scheduler's `graceful_shutdown_timeout` (default 30 s), after which shards are
    /// aborted.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

/// What a [`PullConsumer`] yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum PullEvent {
    /// A batch of one shard, and the token that acknowledges it.
    Batch {
        /// The records (in shard order, never empty) and their shard.
        batch: Batch,
        /// Acknowledges the batch: [`AckToken::ack`].
        ack: AckToken,
    },
    /// This worker stopped holding the shard; it comes after every batch of the shard. Its
    /// batches still out cannot be checkpointed any more (their acks return
    /// [`AckError::NotHeld`]); the shard's next owner delivers them again.
    LeaseLost {
        /// The shard.
        shard: ShardInfo,
        /// `true` when the lease was given up gracefully (balancing or shutdown) after
        /// checkpointing the acknowledged batches; `false` when another worker took it (after
        /// this worker failed to renew it) and nothing more could be checkpointed.
        handed_over: bool,
    },
    /// The shard ended (split or merge), every batch of it was acknowledged, and `SHARD_END`
    /// is checkpointed: its children may start.
    ShardEnded {
        /// The shard.
        shard: ShardInfo,
    },
}

/// Why an acknowledgement was not recorded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AckError {
    /// The consumer no longer holds the shard (lease lost, handed over, shard ended or
    /// shutdown): nothing is checkpointed; another owner delivers the batch again.
    #[error("shard {shard_id} is no longer held by this consumer; the acknowledgement was not recorded")]
    NotHeld {
        /// The shard.
        shard_id: String,
    },
}

/// Acknowledges one delivered batch. Cheap, `Send`, `Sync`: move it to the task that finishes
/// the batch. Acknowledge with [`AckToken::ack`]; dropping it without acknowledging leaves the
/// shard's checkpoint before the batch (see [the module docs](self)).
pub struct AckToken {
    shard: Arc<ShardAcks>,
    index: u64,
    last: ExtendedSequenceNumber,
    settled: bool,
}

impl AckToken {
    /// Acknowledges the batch: the shard checkpoints after its last record once every earlier
    /// batch of the shard is acknowledged too (in the background, coalesced). Returns
    /// [`AckError::NotHeld`] when the shard is no longer held by this consumer: a harmless
    /// no-op.
    pub fn ack(mut self) -> std::result::Result<(), AckError> {
        self.settled = true;
        self.shard.settle(self.index, true)
    }

    /// The shard's id.
    pub fn shard_id(&self) -> &str {
        &self.shard.shard.shard_id
    }

    /// The last record of the batch: where the checkpoint goes once the batch is acknowledged
    /// (with every earlier one).
    pub fn sequence_number(&self) -> &ExtendedSequenceNumber {
        &self.last
    }

    /// Whether the consumer still holds the shard (an ack can still be checkpointed).
    pub fn is_held(&self) -> bool {
        !self.shard.state().closed
    }
}

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckToken")
            .field("shard_id", &self.shard_id())
            .field("batch", &self.index)
            .field("sequence_number", &self.last)
            .finish()
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let stopping = *self.shard.stop.borrow();
        if self.shard.settle(self.index, false).is_ok() && !stopping {
            warn!(shard_id = %self.shard_id(), sequence_number = %self.last,
                "a batch was dropped without being acknowledged: the shard's checkpoint stays before it until the lease moves");
        }
    }
}

/// A stream of the batches of the shards this worker holds, with acknowledgements that drive
/// the checkpoints. Made by [`SchedulerBuilder::into_pull_consumer`]; see [the module
/// docs](self).
#[must_use = "a pull consumer does nothing unless polled"]
pub struct PullConsumer {
    rx: mpsc::Receiver<PullEvent>,
    stop: watch::Sender<bool>,
    /// Taken only by `shutdown` and `drop`.
    handle: Option<SchedulerHandle>,
}

impl fmt::Debug for PullConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullConsumer")
            .field("worker", &self.handle)
            .finish_non_exhaustive()
    }
}

impl PullConsumer {
    /// The worker running in the background: its id, leases, health and status.
    pub fn handle(&self) -> &SchedulerHandle {
        match &self.handle {
            Some(handle) => handle,
            // Taken only by `shutdown(self)` and `drop`, after which `&self` cannot exist.
            None => unreachable!("the worker handle is present until the consumer is consumed"),
        }
    }

    /// The next event, without `futures_util::StreamExt`; `None` once the worker stopped by
    /// itself (then [`PullConsumer::shutdown`] returns why).
    pub async fn recv(&mut self) -> Option<PullEvent> {
        self.rx.recv().await
    }

    /// Shuts down gracefully: stops delivering (events not yet taken from the stream are
    /// dropped), gives the batches handed out [`PullOptions::drain_timeout`] to be
    /// acknowledged (from other tasks), checkpoints every shard's acknowledged prefix, hands
    /// the leases over, and returns the worker's result.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        match self.handle.take() {
            Some(handle) => handle.shutdown().await,
            None => Ok(()),
        }
    }
}

impl futures_util::Stream for PullConsumer {
    type Item = PullEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PullEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for PullConsumer {
    /// Starts a graceful shutdown in the background (on the current Tokio runtime); without a
    /// runtime the worker stops delivering but keeps its leases until its runtime ends.
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let _ = self.stop.send(true);
        self.rx.close();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = handle.shutdown().await {
                        warn!(error = %e, "the dropped pull consumer's worker stopped with an error");
                    }
                });
            }
            Err(_) => {
                warn!("a pull consumer was dropped outside a Tokio runtime: its worker delivers nothing more but is not shut down");
                drop(handle);
            }
        }
    }
}

impl SchedulerBuilder {
    /// Builds the scheduler, spawns it on the current Tokio runtime, and returns it as a
    /// [`PullConsumer`]: a [`futures_util::Stream`] of [`PullEvent`]s (batches with their
    /// [`AckToken`]s, lost leases, ended shards), for pipelines that pull. Replaces any
    /// [`SchedulerBuilder::handler`] or [`SchedulerBuilder::processor_factory`]. See
    /// [`crate::pull`].
    ///
    /// Fails like [`SchedulerBuilder::build`], or when called outside a Tokio runtime.
    pub fn into_pull_consumer(self, options: PullOptions) -> Result<PullConsumer> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KclError::Config(
                "into_pull_consumer must be called within a Tokio runtime".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(options.buffer);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            tx,
            stop: stop_rx,
            options,
        });
        let scheduler = self.processor_factory(PullFactory(shared)).build()?;
        Ok(PullConsumer {
            rx,
            stop,
            handle: Some(scheduler.spawn()),
        })
    }
}

/// What every shard's processor shares with the consumer.
struct Shared {
    tx: mpsc::Sender<PullEvent>,
    /// `true` once the consumer is shutting down (or dropped).
    stop: watch::Receiver<bool>,
    options: PullOptions,
}

struct PullFactory(Arc<Shared>);

impl ProcessorFactory for PullFactory {
    fn create(&self, shard: &ShardInfo) -> Box<dyn RecordProcessor> {
        let shard = Arc::new(shard.clone());
        Box::new(PullProcessor {
            acks: Arc::new(ShardAcks {
                shard: shard.clone(),
                stop: self.0.stop.clone(),
                state: Mutex::new(AckState::default()),
                to_writer: Notify::new(),
                to_processor: Notify::new(),
            }),
            shard,
            shared: self.0.clone(),
            writer: None,
            status: None,
        })
    }
}

/// A delivered batch not yet in the shard's acknowledged prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Out, neither acknowledged nor dropped.
    Out,
    Acked,
    /// Dropped without an acknowledgement: the prefix never passes it.
    Dropped,
}

#[derive(Default)]
struct AckState {
    /// The index of the next batch.
    next: u64,
    /// The delivered batches after the acknowledged prefix, by index, with their last record.
    pending: BTreeMap<u64, (Slot, ExtendedSequenceNumber)>,
    /// Batches `Out`.
    out: usize,
    /// The end of the acknowledged prefix: the checkpoint to write.
    acked: Option<ExtendedSequenceNumber>,
    /// The last checkpoint the writer wrote.
    written: Option<ExtendedSequenceNumber>,
    /// The shard is no longer held (or is stopping): acks are refused.
    closed: bool,
    /// The writer writes what is acknowledged, then ends.
    writer_stop: bool,
}

/// One shard's acknowledgements, for one tenure of its lease.
struct ShardAcks {
    shard: Arc<ShardInfo>,
    stop: watch::Receiver<bool>,
    state: Mutex<AckState>,
    /// Wakes the writer (an ack, a stop).
    to_writer: Notify,
    /// Wakes the processor (an ack or a drop, a checkpoint written, the lease lost).
    to_processor: Notify,
}

impl ShardAcks {
    fn state(&self) -> MutexGuard<'_, AckState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self) {
        self.to_writer.notify_one();
        self.to_processor.notify_one();
    }

    /// Records an ack (or a drop) of batch `index` and moves the acknowledged prefix.
    fn settle(&self, index: u64, acked: bool) -> std::result::Result<(), AckError> {
        {
            let mut s = self.state();
            if s.closed {
                return Err(AckError::NotHeld {
                    shard_id: self.shard.shard_id.clone(),
                });
            }
            if let Some((slot, _)) = s.pending.get_mut(&index) {
                if *slot == Slot::Out {
                    *slot = if acked { Slot::Acked } else { Slot::Dropped };
                    s.out = s.out.saturating_sub(1);
                }
            }
            while let Some(entry) = s.pending.first_entry() {
                if entry.get().0 != Slot::Acked {
                    break;
                }
                let (_, last) = entry.remove();
                s.acked = Some(last);
            }
        }
        self.wake();
        Ok(())
    }

    /// Refuses acks from now on.
    fn close(&self) {
        self.state().closed = true;
        self.wake();
    }
}

/// Writes a shard's acknowledged prefix as it moves, until told to stop (then it writes what
/// is acknowledged last) or the lease is lost.
async fn write_acks(acks: Arc<ShardAcks>, checkpointer: Checkpointer) {
    loop {
        let (target, stopping) = {
            let s = acks.state();
            let target = s.acked.clone().filter(|a| s.written.as_ref() != Some(a));
            (target, s.writer_stop)
        };
        match target {
            Some(target) => match checkpointer.checkpoint_to(target.clone()).await {
                Ok(()) => {
                    debug!(checkpoint = %target, "checkpointed the acknowledged batches");
                    acks.state().written = Some(target);
                    acks.to_processor.notify_one();
                    continue;
                }
                Err(CheckpointError::LeaseLost { .. }) => {
                    acks.close();
                    return;
                }
                Err(e) if stopping => {
                    warn!(error = %e, "checkpointing the acknowledged batches failed at shutdown");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "checkpointing the acknowledged batches failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = acks.to_writer.notified() => {}
                    }
                }
            },
            None if stopping => return,
            None => acks.to_writer.notified().await,
        }
    }
}

/// The record processor of one shard: forwards batches to the stream, waits for room, and
/// checkpoints through the writer.
struct PullProcessor {
    shard: Arc<ShardInfo>,
    shared: Arc<Shared>,
    acks: Arc<ShardAcks>,
    /// Started with the first batch (it needs the checkpointer).
    writer: Option<JoinHandle<()>>,
    /// The lease's status, from the first batch on.
    status: Option<watch::Receiver<LeaseStatus>>,
}

impl Drop for PullProcessor {
    fn drop(&mut self) {
        self.acks.close();
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}

impl PullProcessor {
    /// Whether delivering must stop now: the consumer is stopping, or the lease is not held
    /// (lost, or to be handed over).
    fn interrupted(&self) -> bool {
        *self.shared.stop.borrow()
            || self
                .status
                .as_ref()
                .is_some_and(|s| *s.borrow() != LeaseStatus::Held)
    }

    /// Resolves when delivering must stop (see [`PullProcessor::interrupted`]).
    fn interruption(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.shared.stop.clone();
        let status = self.status.clone();
        async move {
            let lease = async move {
                match status {
                    Some(mut status) => {
                        let _ = status.wait_for(|s| *s != LeaseStatus::Held).await;
                    }
                    None => std::future::pending().await,
                }
            };
            // A dropped consumer (sender gone) stops too.
            let stop = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                () = lease => {}
                () = stop => {}
            }
        }
    }

    /// Stops the writer after it wrote the acknowledged prefix, and waits for it.
    async fn finish_writer(&mut self) {
        self.acks.state().writer_stop = true;
        self.acks.to_writer.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
    }

    /// Sends an event about the shard unless the consumer is stopping.
    async fn tell(&self, event: PullEvent) {
        if *self.shared.stop.borrow() {
            return;
        }
        let mut stop = self.shared.stop.clone();
        tokio::select! {
            _ = self.shared.tx.send(event) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

#[async_trait]
impl RecordProcessor for PullProcessor {
    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
    ) -> std::result::Result<(), ProcessorError> {
        let Some(last) = input.records.last().map(|r| r.extended_sequence_number()) else {
            return Ok(());
        };
        if self.writer.is_none() {
            self.status = Some(input.checkpointer.lease_status());
            let writer = write_acks(self.acks.clone(), input.checkpointer.clone());
            self.writer = Some(tokio::spawn(writer.in_current_span()));
        }
        // Room for one more batch: wait while `max_in_flight_batches` are out.
        let index = loop {
            if self.interrupted() {
                // Not delivered: nothing is checkpointed past it. The shard consumer stops next.
                return Ok(());
            }
            {
                let mut s = self.acks.state();
                if s.closed {
                    return Ok(());
                }
                if s.out < self.shared.options.max_in_flight_batches {
                    let index = s.next;
                    s.next += 1;
                    s.out += 1;
                    s.pending.insert(index, (Slot::Out, last.clone()));
                    break index;
                }
            }
            tokio::select! {
                () = self.acks.to_processor.notified() => {}
                () = self.interruption() => {}
            }
        };
        let ack = AckToken {
            shard: self.acks.clone(),
            index,
            last,
            settled: false,
        };
        let batch = Batch::delivered(
            self.shard.clone(),
            input.records.to_vec(),
            input.millis_behind_latest,
            input.attempt,
        );
        // An event not sent (consumer gone, or stopping) drops its token: not acknowledged.
        tokio::select! {
            _ = self.shared.tx.send(PullEvent::Batch { batch, ack }) => {}
            () = self.interruption() => {}
        }
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> std::result::Result<(), ProcessorError> {
        // SHARD_END only once every batch is acknowledged and checkpointed: the children start
        // after it.
        let mut warned = false;
        loop {
            {
                let s = self.acks.state();
                if s.closed {
                    return Err("the shard is no longer held".into());
                }
                if s.pending.is_empty() && s.written == s.acked {
                    break;
                }
                if !warned && s.pending.values().any(|(slot, _)| *slot == Slot::Dropped) {
                    warned = true;
                    warn!("the shard ended but a batch of it was dropped without an acknowledgement: SHARD_END waits (the children too) until the lease moves");
                }
            }
            tokio::select! {
                () = self.acks.to_processor.notified() => {}
                () = self.interruption() => {
                    return Err("stopping before every batch of the ended shard was acknowledged".into());
                }
            }
        }
        self.finish_writer().await;
        input.checkpointer.checkpoint().await?;
        info!("every batch acknowledged: SHARD_END checkpointed");
        self.acks.close();
        self.tell(PullEvent::ShardEnded {
            shard: (*self.shard).clone(),
        })
        .await;
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        _input: ShutdownRequestedInput<'_>,
    ) -> std::result::Result<(), ProcessorError> {
        // The batches out get some time to be acknowledged.
        let deadline = tokio::time::Instant::now() + self.shared.options.drain_timeout;
        loop {
            {
                let s = self.acks.state();
                if s.out == 0 || s.closed {
                    break;
                }
            }
            if self
                .status
                .as_ref()
                .is_some_and(|s| *s.borrow() == LeaseStatus::Lost)
            {
                break;
            }
            tokio::select! {
                () = self.acks.to_processor.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    warn!(out = self.acks.state().out, "batches still unacknowledged after the drain timeout: they will be delivered again");
                    break;
                }
            }
        }
        // Acks from now on are refused; what is acknowledged is written.
        self.acks.close();
        self.finish_writer().await;
        let lost = self
            .status
            .as_ref()
            .is_some_and(|s| *s.borrow() == LeaseStatus::Lost);
        debug!(lost, "acknowledged batches checkpointed; handing the lease over");
        self.tell(PullEvent::LeaseLost {
            shard: (*self.shard).clone(),
            handed_over: !lost,
        })
        .await;
        Ok(())
    }

    async fn lease_lost(&mut self, _input: LeaseLostInput) {
        self.acks.close();
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        self.tell(PullEvent::LeaseLost {
            shard: (*self.shard).clone(),
            handed_over: false,
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks() -> Arc<ShardAcks> {
        let (_stop, stop_rx) = watch::channel(false);
        Arc::new(ShardAcks {
            shard: Arc::new(ShardInfo::new("s", "shardId-000000000000")),
            stop: stop_rx,
            state: Mutex::new(AckState::default()),
            to_writer: Notify::new(),
            to_processor: Notify::new(),
        })
    }

    fn token(acks: &Arc<ShardAcks>, sequence: u64) -> AckToken {
        let last = ExtendedSequenceNumber::from_parts(&sequence.to_string(), 0).expect("a sequence number");
        let mut s = acks.state();
        let index = s.next;
        s.next += 1;
        s.out += 1;
        s.pending.insert(index, (Slot::Out, last.clone()));
        AckToken {
            shard: acks.clone(),
            index,
            last,
            settled: false,
        }
    }

    fn seq(n: u64) -> Option<ExtendedSequenceNumber> {
        ExtendedSequenceNumber::from_parts(&n.to_string(), 0).ok()
    }

    #[test]
    fn the_acknowledged_prefix_is_contiguous() {
        let acks = acks();
        let (a, b, c, d) = (
            token(&acks, 10),
            token(&acks, 20),
            token(&acks, 30),
            token(&acks, 40),
        );
        assert_eq!(acks.state().out, 4);
        c.ack().expect("held");
        b.ack().expect("held");
        assert_eq!(acks.state().acked, None, "batch 0 is not acknowledged yet");
        a.ack().expect("held");
        assert_eq!(acks.state().acked, seq(30));
        drop(d); // not an acknowledgement
        assert_eq!(acks.state().acked, seq(30));
        assert_eq!(acks.state().out, 0);
        let e = token(&acks, 50);
        e.ack().expect("held");
        assert_eq!(
            acks.state().acked,
            seq(30),
            "the dropped batch holds the prefix back"
        );
        let f = token(&acks, 60);
        acks.close();
        assert!(!f.is_held());
        assert!(matches!(f.ack(), Err(AckError::NotHeld { .. })));
    }

    #[test]
    fn tokens_and_events_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<AckToken>();
        check::<PullEvent>();
        fn stream<T: futures_util::Stream<Item = PullEvent> + Send + Unpin>() {}
        stream::<PullConsumer>();
    }
}
