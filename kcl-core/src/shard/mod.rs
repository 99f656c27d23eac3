//! The shard consumer: one task per held lease, driving the [`state`] machine.
//!
//! The task waits for the parents, initializes the processor from the checkpoint, delivers
//! batches from the read-ahead `fetch` task in order, handles the end of the shard, and shuts
//! down on lease loss, graceful hand-off or worker shutdown. Processor callbacks always run to
//! completion: a stop signal is acted on between callbacks, never by cancelling one.

pub(crate) mod failed_batch;
pub(crate) mod fan_out;
pub(crate) mod fetch;
mod read_ahead;
pub mod state;
pub mod throughput;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, Policy};
use kcl_lease::{HeldLease, Lease, LeaseStatus, LeaseStore};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn, Instrument};

use crate::backend::{IteratorPosition, StreamBackend};
use crate::checkpoint::Checkpointer;
use crate::config::{InitialPosition, RetrievalMode, SchedulerConfig};
use crate::metrics::{self as names, SharedShardHealth};
use crate::processor::{
    InitializeInput, LeaseLostInput, ProcessRecordsInput, ProcessorFailurePolicy, RecordProcessor,
    ShardEndedInput, ShutdownRequestedInput,
};
use crate::record::{ChildShard, ExtendedSequenceNumber, HashKeyRange, Record};
use fetch::{FetchConfig, Fetched};
use state::{ShardEvent, ShardState, ShutdownReason};
use throughput::ThroughputMeter;

/// What a shard consumer needs from its worker.
pub(crate) struct ShardContext {
    pub backend: Arc<dyn StreamBackend>,
    pub store: Arc<dyn LeaseStore>,
    pub config: Arc<SchedulerConfig>,
    /// Worker shutdown: `true` once a graceful shutdown started.
    pub shutdown: watch::Receiver<bool>,
    /// Woken when a shard ended, so that children are picked up at once.
    pub shard_ended: Arc<Notify>,
    /// The fan-out consumers, when reading with enhanced fan-out.
    pub consumers: Option<Arc<fan_out::ConsumerRegistry>>,
    /// `true` when the worker wants this one shard stopped and its lease released (its stream
    /// is no longer tracked).
    pub release: watch::Receiver<bool>,
    /// Where errors that cannot be retried are recorded (they stop the worker or the stream).
    pub fatal: crate::fatal::FatalSignal,
}

/// Aborts the read-ahead task when the consumer is done with it.
struct Reader {
    rx: mpsc::Receiver<Fetched>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Metric handles of one shard consumer, made once (labels allocated once, not per batch).
struct ShardMetrics {
    records: metrics::Counter,
    bytes: metrics::Counter,
    behind: metrics::Gauge,
    time: metrics::Histogram,
    errors: metrics::Counter,
    failed_records: metrics::Counter,
    throttled: metrics::Counter,
    expired: metrics::Counter,
    misplaced: metrics::Counter,
    skipped: metrics::Counter,
}

/// How often a shard consumer touches its metric series while it holds the shard, even with no
/// records: exporters that drop idle series (the Prometheus exporter's `idle_timeout`, which
/// `kcl-tail` sets to [`crate::metrics::SHARD_SERIES_IDLE_TIMEOUT`]) then keep the series of
/// the shards a worker holds and drop those of shards that left it.
pub(crate) const METRICS_KEEPALIVE: Duration = Duration::from_secs(10);

impl ShardMetrics {
    /// Marks every series as current without changing its value.
    fn touch(&self, millis_behind_latest: u64) {
        for counter in [
            &self.records,
            &self.bytes,
            &self.errors,
            &self.failed_records,
            &self.throttled,
            &self.expired,
            &self.misplaced,
            &self.skipped,
        ] {
            counter.increment(0);
        }
        self.behind.set(millis_behind_latest as f64);
    }

    fn new(worker: &str, shard: &str) -> Self {
        let labels = [("worker_id", worker.to_owned()), ("shard_id", shard.to_owned())];
        Self {
            records: metrics::counter!(names::RECORDS_PROCESSED, &labels),
            bytes: metrics::counter!(names::BYTES_PROCESSED, &labels),
            behind: metrics::gauge!(names::MILLIS_BEHIND_LATEST, &labels),
            time: metrics::histogram!(names::PROCESS_TIME, &labels),
            errors: metrics::counter!(names::PROCESSOR_ERRORS, &labels),
            failed_records: metrics::counter!(names::RECORDS_FAILED_PROCESSING, &labels),
            throttled: metrics::counter!(names::GET_RECORDS_THROTTLED, &labels),
            expired: metrics::counter!(names::EXPIRED_ITERATOR, &labels),
            misplaced: metrics::counter!(names::KPL_MISPLACED_RECORDS, &labels),
            skipped: metrics::counter!(names::SKIPPED_RECORDS, &labels),
        }
    }
}

/// How often an idle consumer refreshes its published throughput (a busy one does on every
/// batch).
const THROUGHPUT_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// One shard's consumer.
pub(crate) struct ShardConsumer {
    /// The shard's id (the lease key's shard part).
    shard_id: String,
    /// The stream the shard belongs to.
    stream: String,
    lease: Arc<HeldLease>,
    status: watch::Receiver<LeaseStatus>,
    ctx: ShardContext,
    /// In a `std::sync::Mutex` only to make the consumer `Sync` (so that `&self` may live across
    /// an `.await` in a spawned task); it is only ever reached through `get_mut`, never locked.
    processor: std::sync::Mutex<Box<dyn RecordProcessor>>,
    checkpointer: Option<Checkpointer>,
    reader: Option<Reader>,
    children: Vec<ChildShard>,
    health: SharedShardHealth,
    metrics: ShardMetrics,
    /// When the metric series were last touched (see [`METRICS_KEEPALIVE`]).
    metrics_touched: tokio::time::Instant,
    /// What this consumer delivers, smoothed; published in the health and on the lease row.
    throughput: ThroughputMeter,
}

impl ShardConsumer {
    pub(crate) fn new(
        lease: Arc<HeldLease>,
        processor: Box<dyn RecordProcessor>,
        ctx: ShardContext,
        health: SharedShardHealth,
    ) -> Self {
        let stream = lease
            .stream()
            .map_or_else(|| ctx.config.stream_name.clone(), |s| s.stream_name.clone());
        let shard_id = lease.shard_id().to_owned();
        Self {
            metrics: ShardMetrics::new(lease.worker_id(), lease.key()),
            metrics_touched: tokio::time::Instant::now(),
            health,
            shard_id,
            stream,
            status: lease.subscribe(),
            lease,
            ctx,
            processor: std::sync::Mutex::new(processor),
            checkpointer: None,
            reader: None,
            children: Vec::new(),
            throughput: ThroughputMeter::new(tokio::time::Instant::now()),
        }
    }

    /// Publishes the measured throughput at `now` in the health summary and on the held lease
    /// (written to `throughputKBps` with its next renewal or checkpoint).
    fn publish_throughput(&self, now: tokio::time::Instant) {
        let kbps = self.throughput.kbps(now);
        let rps = self.throughput.records_per_sec(now);
        self.lease.set_throughput_kbps(kbps);
        let mut h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.throughput_kbps = Some(kbps);
        h.records_per_sec = Some(rps);
    }

    /// Runs the consumer to completion and returns its last state before `Complete`.
    pub(crate) async fn run(mut self) -> ShardState {
        let mut state = ShardState::WaitingOnParents;
        loop {
            let event = match state {
                ShardState::WaitingOnParents => self.wait_for_parents().await,
                ShardState::Initializing => self.initialize().await,
                ShardState::Processing => self.process().await,
                ShardState::ShardEnding => self.end_shard().await,
                ShardState::ShuttingDown(reason) => self.shut_down(reason).await,
                ShardState::Complete => return state,
            };
            let next = state.next(event);
            debug!(from = ?state, ?event, to = ?next, "shard state");
            self.update_health(|h| h.state = next);
            if next == ShardState::Complete {
                return state;
            }
            state = next;
        }
    }

    fn touch_metrics(&mut self) {
        let behind = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .millis_behind_latest;
        self.metrics.touch(behind);
        self.metrics_touched = tokio::time::Instant::now();
    }

    fn update_health(&self, f: impl FnOnce(&mut crate::metrics::ShardHealth)) {
        let mut h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut h);
        if let Some(cp) = &self.checkpointer {
            h.checkpoint = Some(cp.current());
        }
    }

    fn processor(&mut self) -> &mut dyn RecordProcessor {
        self.processor
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
    }

    /// A stop that is already signalled, if any.
    fn pending_stop(&self) -> Option<ShutdownReason> {
        match *self.status.borrow() {
            LeaseStatus::Lost => return Some(ShutdownReason::LeaseLost),
            LeaseStatus::HandoffRequested => return Some(ShutdownReason::Requested),
            LeaseStatus::Held => {}
        }
        (*self.ctx.shutdown.borrow() || *self.ctx.release.borrow()).then_some(ShutdownReason::Requested)
    }

    /// Resolves when the consumer must stop. Owns clones of the signals, so it borrows nothing.
    fn stop_signal(&self) -> impl std::future::Future<Output = ShutdownReason> + Send + 'static {
        let mut status = self.status.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        let mut release = self.ctx.release.clone();
        async move {
            let release = async move {
                if release.wait_for(|r| *r).await.is_err() {
                    // The worker is gone: only lease loss or shutdown stop us.
                    std::future::pending::<()>().await;
                }
            };
            let lease = async move { status.wait_for(|s| *s != LeaseStatus::Held).await.map(|s| *s) };
            let stop = async move { shutdown.wait_for(|s| *s).await.is_ok() };
            tokio::select! {
                s = lease => match s {
                    Ok(LeaseStatus::HandoffRequested) => ShutdownReason::Requested,
                    _ => ShutdownReason::LeaseLost,
                },
                ok = stop => {
                    if !ok {
                        // The worker is gone without a graceful shutdown: only lease loss stops us.
                        std::future::pending::<()>().await;
                    }
                    ShutdownReason::Requested
                }
                () = release => ShutdownReason::Requested,
            }
        }
    }

    /// Sleeps for the next backoff delay, or returns the reason to stop.
    async fn pause(&self, delays: &mut Backoff) -> Option<ShutdownReason> {
        let delay = delays.next_delay();
        tokio::select! {
            reason = self.stop_signal() => Some(reason),
            () = tokio::time::sleep(delay) => self.pending_stop(),
        }
    }

    async fn wait_for_parents(&mut self) -> ShardEvent {
        let parents = self.lease.lease().await.parent_shard_ids;
        loop {
            match self.unfinished_parent(&parents).await {
                None => return ShardEvent::ParentsFinished,
                Some(parent) => debug!(%parent, "waiting for parent shard to reach SHARD_END"),
            }
            let poll = self.ctx.config.parent_poll_interval;
            tokio::select! {
                reason = self.stop_signal() => return ShardEvent::Shutdown(reason),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// The first parent that has not reached `SHARD_END`. A parent without a lease (never
    /// consumed, or already cleaned up) counts as finished.
    async fn unfinished_parent(&self, parents: &BTreeSet<String>) -> Option<String> {
        for parent in parents {
            match self.ctx.store.get(&self.lease.sibling_key(parent)).await {
                Ok(None) => {}
                Ok(Some(lease)) if lease.is_finished() => {}
                Ok(Some(_)) => return Some(parent.clone()),
                Err(e) => {
                    warn!(%parent, error = %e, "reading parent lease failed");
                    return Some(parent.clone());
                }
            }
        }
        None
    }

    async fn initialize(&mut self) -> ShardEvent {
        let poll = self
            .ctx
            .config
            .parent_poll_interval
            .min(Duration::from_millis(200));
        let lease = tokio::select! {
            reason = self.stop_signal() => return ShardEvent::Shutdown(reason),
            lease = self.lease.wait_for_handoff(poll) => lease,
        };
        let Ok(lease) = lease else {
            return ShardEvent::Shutdown(ShutdownReason::LeaseLost);
        };
        let checkpoint = lease.checkpoint.clone();
        info!(%checkpoint, "initializing shard consumer");
        self.checkpointer = Some(Checkpointer::new(
            &self.shard_id,
            self.lease.clone(),
            checkpoint.clone(),
        ));
        let mut delays = Backoff::new(Policy::Processor);
        loop {
            let input = InitializeInput {
                shard_id: self.shard_id.clone(),
                stream_name: self.stream.clone(),
                checkpoint: checkpoint.clone(),
            };
            match self.processor().initialize(input).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "processor initialize failed; retrying");
                    if let Some(reason) = self.pause(&mut delays).await {
                        return ShardEvent::Shutdown(reason);
                    }
                }
            }
        }
        if checkpoint.is_shard_end() {
            return ShardEvent::ShardEndReached;
        }
        self.start_reader(&checkpoint, lease.hash_key_range);
        ShardEvent::Initialized
    }

    fn start_reader(&mut self, checkpoint: &ExtendedSequenceNumber, hash_range: Option<HashKeyRange>) {
        let (start, skip) = match checkpoint {
            ExtendedSequenceNumber::TrimHorizon => (IteratorPosition::TrimHorizon, None),
            ExtendedSequenceNumber::Latest => (IteratorPosition::Latest, None),
            ExtendedSequenceNumber::AtTimestamp => match self.ctx.config.initial_position {
                InitialPosition::AtTimestamp(ts) => (IteratorPosition::AtTimestamp(ts), None),
                _ => {
                    warn!("lease checkpoint is AT_TIMESTAMP but no timestamp is configured: reading from TRIM_HORIZON");
                    (IteratorPosition::TrimHorizon, None)
                }
            },
            ExtendedSequenceNumber::Sequence {
                sequence,
                sub_sequence: 0,
            } => (IteratorPosition::AfterSequenceNumber(sequence.clone()), None),
            ExtendedSequenceNumber::Sequence { sequence, .. } => (
                IteratorPosition::AtSequenceNumber(sequence.clone()),
                Some(checkpoint.clone()),
            ),
            ExtendedSequenceNumber::ShardEnd => return,
        };
        let config = &self.ctx.config;
        let fetch = FetchConfig {
            stream: self.stream.clone(),
            shard_id: self.shard_id.clone(),
            max_records: config.max_records,
            polling_interval: config.polling_interval,
            min_read_interval: config.min_read_interval,
            hash_range,
            misplaced_kpl: config.misplaced_kpl_records,
            misplaced: self.metrics.misplaced.clone(),
            budget: read_ahead::ByteBudget::new(config.max_prefetch_bytes),
            throttled: self.metrics.throttled.clone(),
            expired: self.metrics.expired.clone(),
        };
        let (tx, rx) = mpsc::channel(config.max_prefetch_batches);
        let backend = self.ctx.backend.clone();
        let task = match (&config.retrieval, &self.ctx.consumers) {
            (RetrievalMode::FanOut(fan), Some(consumers)) => tokio::spawn(
                fan_out::run(backend, consumers.clone(), fetch, fan.clone(), start, skip, tx)
                    .in_current_span(),
            ),
            _ => tokio::spawn(fetch::run(backend, fetch, start, skip, tx).in_current_span()),
        };
        self.reader = Some(Reader { rx, task });
    }

    async fn process(&mut self) -> ShardEvent {
        // An idle shard gets no batches: its measured throughput decays on this tick.
        let mut publish = tokio::time::interval_at(
            tokio::time::Instant::now() + THROUGHPUT_PUBLISH_INTERVAL,
            THROUGHPUT_PUBLISH_INTERVAL,
        );
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Every turn (an item or a publish tick) keeps the shard's metric series alive.
            if self.metrics_touched.elapsed() >= METRICS_KEEPALIVE {
                self.touch_metrics();
            }
            let item = {
                let stop = self.stop_signal();
                let Some(reader) = self.reader.as_mut() else {
                    return ShardEvent::Shutdown(ShutdownReason::Requested);
                };
                tokio::select! {
                    biased;
                    _ = stop => None,
                    item = reader.rx.recv() => Some(item),
                    now = publish.tick() => {
                        self.publish_throughput(now);
                        continue;
                    }
                }
            };
            let item = match item {
                None => {
                    return ShardEvent::Shutdown(self.pending_stop().unwrap_or(ShutdownReason::Requested))
                }
                Some(item) => item,
            };
            match item {
                Some(Fetched::Batch {
                    records,
                    millis_behind_latest,
                    budget,
                }) => {
                    // Held until the batch is delivered (or skipped): its bytes count until then.
                    let _budget = budget;
                    if let Err(reason) = self.deliver(records, millis_behind_latest).await {
                        return ShardEvent::Shutdown(reason);
                    }
                }
                Some(Fetched::End { children }) => {
                    self.children = children;
                    return ShardEvent::ShardEndReached;
                }
                Some(Fetched::Failed(e)) => {
                    let (stream, multi_stream) = match self.lease.stream() {
                        Some(id) => (id.to_string(), true),
                        None => (self.ctx.config.stream_name.clone(), false),
                    };
                    if !self.ctx.fatal.check_stream(&stream, multi_stream, &e) {
                        error!(error = %e, "reading the shard failed and cannot be retried; giving the lease up");
                    }
                    return ShardEvent::Shutdown(ShutdownReason::Requested);
                }
                None => return ShardEvent::Shutdown(ShutdownReason::Requested),
            }
        }
    }

    /// Delivers one batch, retrying the processor until it succeeds, the failure policy skips
    /// the batch, or the consumer must stop.
    async fn deliver(
        &mut self,
        records: Vec<Record>,
        millis_behind_latest: u64,
    ) -> Result<(), ShutdownReason> {
        let (Some(checkpointer), Some(last)) = (self.checkpointer.clone(), records.last()) else {
            return Ok(());
        };
        let last = last.extended_sequence_number();
        let mut delays = Backoff::new(Policy::Processor);
        let mut attempt = 0u32;
        loop {
            if let Some(reason) = self.pending_stop() {
                return Err(reason);
            }
            if !self.lease.is_valid() {
                // Not renewed in time: another worker may take it any moment. Stop now.
                self.lease.mark_lost();
                return Err(ShutdownReason::LeaseLost);
            }
            checkpointer.delivered(last.clone());
            attempt = attempt.saturating_add(1);
            let input = ProcessRecordsInput {
                records: &records,
                millis_behind_latest,
                checkpointer: &checkpointer,
                attempt,
            };
            let started = tokio::time::Instant::now();
            let result = failed_batch::catch_panic(self.processor().process_records(input)).await;
            self.metrics.time.record(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    let n = records.len() as u64;
                    let bytes = records.iter().map(|r| r.data.len() as u64).sum();
                    self.metrics.records.increment(n);
                    self.metrics.bytes.increment(bytes);
                    let now = tokio::time::Instant::now();
                    self.throughput.record(bytes, n, now);
                    self.publish_throughput(now);
                    self.metrics.behind.set(millis_behind_latest as f64);
                    self.update_health(|h| {
                        h.records_processed += n;
                        h.millis_behind_latest = millis_behind_latest;
                    });
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.errors.increment(1);
                    self.metrics.failed_records.increment(records.len() as u64);
                    if let ProcessorFailurePolicy::SkipAfter { attempts, hook } =
                        &self.ctx.config.processor_failure
                    {
                        if attempt >= attempts.get() {
                            let hook = hook.clone();
                            return self.skip_batch(&records, &checkpointer, &*e, attempt, hook).await;
                        }
                    }
                    warn!(error = %e, attempt, records = records.len(), "processor failed; the batch will be delivered again");
                    if let Some(reason) = self.pause(&mut delays).await {
                        return Err(reason);
                    }
                }
            }
        }
    }

    async fn end_shard(&mut self) -> ShardEvent {
        self.reader = None;
        let Some(checkpointer) = self.checkpointer.clone() else {
            return ShardEvent::Shutdown(ShutdownReason::ShardEnd);
        };
        // Child leases first: they wait for this shard's SHARD_END before they start.
        let stream = self.lease.stream().cloned();
        'children: for child in self.children.clone() {
            // A merge's child also waits for its other parent; a parent without a lease counts
            // as finished. So while the other parent has no lease yet (it is still open, and
            // its lease comes from its own end or from the shard sync, which creates parents
            // first), the child's lease is left to them: created now, it could start first.
            for other in child.parent_shards.iter().filter(|p| **p != self.shard_id) {
                match self.ctx.store.get(&self.lease.sibling_key(other)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        debug!(child = %child.shard_id, parent = %other,
                            "the child's other parent has no lease yet: leaving the child's lease to it");
                        continue 'children;
                    }
                    Err(e) => {
                        warn!(child = %child.shard_id, parent = %other, error = %e,
                            "reading the other parent's lease failed: leaving the child's lease to the shard sync");
                        continue 'children;
                    }
                }
            }
            let lease = match &stream {
                Some(id) => Lease::for_stream(id, &child.shard_id, ExtendedSequenceNumber::TrimHorizon),
                None => Lease::new(&child.shard_id, ExtendedSequenceNumber::TrimHorizon),
            };
            let lease = lease
                .with_parents(child.parent_shards.iter().cloned())
                .with_hash_key_range(child.hash_key_range);
            let mut delays = Backoff::new(Policy::Processor);
            while let Err(e) = self.ctx.store.create_if_absent(&lease).await {
                warn!(child = %child.shard_id, error = %e, "creating child lease failed; retrying");
                if let Some(reason) = self.pause(&mut delays).await {
                    return ShardEvent::Shutdown(reason);
                }
            }
        }
        checkpointer.set_shard_end();
        let mut delays = Backoff::new(Policy::Processor);
        loop {
            if let Some(reason) = self.pending_stop() {
                return ShardEvent::Shutdown(reason);
            }
            match self
                .processor()
                .shard_ended(ShardEndedInput {
                    checkpointer: &checkpointer,
                })
                .await
            {
                Ok(()) if checkpointer.current().is_shard_end() => break,
                Ok(()) => error!(
                    "shard_ended returned without checkpointing SHARD_END; child shards stay blocked. \
                     Call checkpointer.checkpoint() in shard_ended. Retrying"
                ),
                Err(e) => warn!(error = %e, "processor shard_ended failed; retrying"),
            }
            if let Some(reason) = self.pause(&mut delays).await {
                return ShardEvent::Shutdown(reason);
            }
        }
        let children: BTreeSet<String> = self.children.iter().map(|c| c.shard_id.clone()).collect();
        if !children.is_empty() {
            if let Err(e) = self.lease.mark_children(&children).await {
                warn!(error = %e, "recording child shards in the lease failed");
            }
        }
        info!(children = ?children, "shard ended");
        self.ctx.shard_ended.notify_one();
        ShardEvent::ShardEndCheckpointed
    }

    async fn shut_down(&mut self, reason: ShutdownReason) -> ShardEvent {
        self.reader = None;
        let Some(checkpointer) = self.checkpointer.clone() else {
            return ShardEvent::Stopped;
        };
        match reason {
            ShutdownReason::LeaseLost => {
                info!("lease lost: stopping");
                let input = LeaseLostInput {
                    shard_id: self.shard_id.clone(),
                };
                self.processor().lease_lost(input).await;
            }
            ShutdownReason::Requested | ShutdownReason::ShardEnd => {
                debug!("shutdown requested");
                let input = ShutdownRequestedInput {
                    checkpointer: &checkpointer,
                };
                if let Err(e) = self.processor().shutdown_requested(input).await {
                    warn!(error = %e, "processor shutdown_requested failed");
                }
            }
        }
        ShardEvent::Stopped
    }
}
