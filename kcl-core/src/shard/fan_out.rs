//! The enhanced fan-out reader: the same job as the polling reader in [`super::fetch`], with
//! records pushed through `SubscribeToShard` instead of polled.
//!
//! One subscription at a time per shard. It is renewed before the service ends it (after
//! `subscription_renewal`), when it ends, when it stays silent for `idle_timeout`, and after an
//! error (with backoff); every new subscription starts after the last continuation sequence
//! number, so nothing is skipped or read twice across renewals. `ResourceInUse` (the consumer is
//! not active yet, another subscription holds the shard, or ours was replaced) and throttling are
//! retried with backoff; a consumer deregistered behind our back is registered again. The
//! bounded channel to the shard consumer is the back-pressure: while it is full no event is
//! read, and the transport's flow control holds the service back. While only empty events
//! arrive, one `GetRecords` call every `end_probe_interval` checks whether the shard is closed
//! and read to its end, for services that never announce it (kinesis-mock, LocalStack).
//!
//! [`ConsumerRegistry`] registers the application's consumer once per stream (idempotent, shared
//! by every worker of the application) and waits until it is `ACTIVE`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::fetch::{FetchConfig, Fetched, Unpacker};
use crate::backend::{
    BackendError, ConsumerStatus, ConsumerTags, IteratorPosition, ShardSubscription, StreamBackend,
    SubscribeEvent,
};
use crate::backoff::{Backoff, Policy};
use crate::config::FanOutConfig;
use crate::record::{ExtendedSequenceNumber, SequenceNumber};

/// The ARNs of the application's fan-out consumer, one per stream, registered on first use.
#[derive(Debug)]
pub(crate) struct ConsumerRegistry {
    name: String,
    tags: ConsumerTags,
    arns: tokio::sync::Mutex<HashMap<String, String>>,
}

impl ConsumerRegistry {
    pub(crate) fn new(name: impl Into<String>, tags: ConsumerTags) -> Self {
        Self {
            name: name.into(),
            tags,
            arns: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The ARN of the consumer on `stream`, once it is `ACTIVE`: registers it if needed and
    /// waits. Concurrent callers wait for the first one (one registration, not one per shard).
    pub(crate) async fn arn(
        &self,
        backend: &dyn StreamBackend,
        stream: &str,
    ) -> Result<String, BackendError> {
        let mut arns = self.arns.lock().await;
        if let Some(arn) = arns.get(stream) {
            return Ok(arn.clone());
        }
        let mut consumer = backend.register_consumer(stream, &self.name, &self.tags).await?;
        let mut delays = Backoff::new(Policy::Consumer);
        while consumer.status != ConsumerStatus::Active {
            debug!(consumer = %self.name, status = ?consumer.status, "waiting for the fan-out consumer to become active");
            tokio::time::sleep(delays.next_delay()).await;
            consumer = match consumer.status {
                // Being deleted (by an operator): register it again once it is gone.
                ConsumerStatus::Deleting => backend.register_consumer(stream, &self.name, &self.tags).await?,
                _ => backend.describe_consumer(stream, &self.name).await?,
            };
        }
        info!(consumer = %self.name, arn = %consumer.arn, stream, "fan-out consumer active");
        arns.insert(stream.to_owned(), consumer.arn.clone());
        Ok(consumer.arn)
    }

    /// Forgets the ARN for `stream` (the consumer was deregistered); the next call registers.
    pub(crate) async fn forget(&self, stream: &str) {
        self.arns.lock().await.remove(stream);
    }
}

/// Reads one shard through enhanced fan-out from `start`, skipping records at or before
/// `skip_through`, into `tx`.
pub(crate) async fn run(
    backend: Arc<dyn StreamBackend>,
    consumers: Arc<ConsumerRegistry>,
    config: FetchConfig,
    fan_out: FanOutConfig,
    start: IteratorPosition,
    skip_through: Option<ExtendedSequenceNumber>,
    tx: mpsc::Sender<Fetched>,
) {
    let reader = Reader {
        unpacker: Unpacker::new(&config, skip_through),
        backend,
        consumers,
        config,
        fan_out,
        start,
        tx,
        continuation: None,
        idle_since: None,
        last_probe: Instant::now(),
    };
    reader.run().await;
}

/// One shard's fan-out reader: subscribes, reads each subscription until it must be renewed,
/// and resumes after the last continuation sequence number.
struct Reader {
    backend: Arc<dyn StreamBackend>,
    consumers: Arc<ConsumerRegistry>,
    config: FetchConfig,
    fan_out: FanOutConfig,
    start: IteratorPosition,
    tx: mpsc::Sender<Fetched>,
    unpacker: Unpacker,
    /// Where the next subscription resumes (`AFTER_SEQUENCE_NUMBER`).
    continuation: Option<SequenceNumber>,
    /// Since when only empty events came.
    idle_since: Option<Instant>,
    /// When the shard's end was last probed with `GetRecords`.
    last_probe: Instant,
}

/// What to do after a step of the reader.
enum Next<T> {
    /// Go on with this.
    Go(T),
    /// Back off, then subscribe again.
    Retry,
    /// The reader is done (the shard's end, a fatal error, or the consumer of the records is
    /// gone).
    Stop,
}

impl Reader {
    async fn run(mut self) {
        let mut delays = Backoff::new(Policy::Read);
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                tokio::time::sleep(delays.next_delay()).await;
            }
            let subscription = match self.subscribe().await {
                Next::Go(s) => s,
                Next::Retry => {
                    failures += 1;
                    continue;
                }
                Next::Stop => return,
            };
            match self.read(subscription, &mut delays).await {
                Next::Go(()) => failures = 0,
                Next::Retry => failures += 1,
                Next::Stop => return,
            }
        }
    }

    /// Registers the consumer if needed and subscribes from where the last subscription ended.
    async fn subscribe(&mut self) -> Next<Box<dyn ShardSubscription>> {
        let (backend, config) = (&*self.backend, &self.config);
        let arn = match self.consumers.arn(backend, &config.stream).await {
            Ok(arn) => arn,
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "registering the fan-out consumer failed; retrying");
                return Next::Retry;
            }
            Err(e) => {
                let _ = self.tx.send(Fetched::Failed(e)).await;
                return Next::Stop;
            }
        };
        let position = match &self.continuation {
            Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
            None => self.start.clone(),
        };
        match backend
            .subscribe_to_shard(&config.stream, &arn, &config.shard_id, &position)
            .await
        {
            Ok(s) => {
                debug!(?position, "subscribed");
                Next::Go(s)
            }
            Err(BackendError::ConsumerNotFound(c)) => {
                // Kinesis answers a subscription to a trimmed shard with ResourceNotFound too.
                if let Some(children) = super::fetch::vanished_shard_children(backend, config).await {
                    let _ = self.tx.send(Fetched::End { children }).await;
                    return Next::Stop;
                }
                warn!(consumer = %c, "fan-out consumer is gone; registering it again");
                self.consumers.forget(&config.stream).await;
                Next::Retry
            }
            Err(e) if e.is_retryable() => {
                if matches!(e, BackendError::Throttled(_)) {
                    config.throttled.increment(1);
                }
                debug!(error = %e, "subscribing failed; backing off");
                Next::Retry
            }
            Err(e) => {
                let _ = self
                    .tx
                    .send(super::fetch::unrecoverable(backend, config, e).await)
                    .await;
                Next::Stop
            }
        }
    }

    /// Reads one subscription until it is due for renewal, silent for too long, ended or
    /// failed (`Go`: renew at once; `Retry`: back off first).
    async fn read(&mut self, mut subscription: Box<dyn ShardSubscription>, delays: &mut Backoff) -> Next<()> {
        let renew_at = Instant::now() + self.fan_out.subscription_renewal;
        loop {
            let deadline = renew_at.min(Instant::now() + self.fan_out.idle_timeout);
            let event = match tokio::time::timeout_at(deadline, subscription.next_event()).await {
                Err(_) if Instant::now() >= renew_at => {
                    debug!("renewing the subscription before the service ends it");
                    return Next::Go(());
                }
                Err(_) => {
                    warn!(idle = ?self.fan_out.idle_timeout, "subscription silent; renewing it");
                    return Next::Go(());
                }
                Ok(Ok(None)) => {
                    debug!("subscription ended; renewing it");
                    return Next::Go(());
                }
                Ok(Err(e)) => {
                    match &e {
                        BackendError::ResourceInUse(_) => {
                            info!(error = %e, "subscription taken over or refused; backing off");
                        }
                        BackendError::Throttled(_) => {
                            self.config.throttled.increment(1);
                            debug!(error = %e, "subscription throttled; backing off");
                        }
                        _ => warn!(error = %e, "subscription failed; backing off"),
                    }
                    return Next::Retry;
                }
                Ok(Ok(Some(event))) => event,
            };
            delays.reset();
            if !self.deliver(event).await {
                return Next::Stop;
            }
        }
    }

    /// Hands one event's records on (and finds a shard's end the subscription does not
    /// announce); `false` when the reader is done.
    async fn deliver(&mut self, event: SubscribeEvent) -> bool {
        if event.records.is_empty() && event.continuation_sequence_number.is_some() {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            let now = Instant::now();
            if now.duration_since(since) >= self.fan_out.end_probe_interval
                && now.duration_since(self.last_probe) >= self.fan_out.end_probe_interval
            {
                self.last_probe = now;
                let after = match &event.continuation_sequence_number {
                    Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
                    None => self.start.clone(),
                };
                if let Some(children) = probe_end(&*self.backend, &self.config, &after).await {
                    info!("shard read to its end (found by GetRecords; the subscription did not say)");
                    let _ = self.tx.send(Fetched::End { children }).await;
                    return false;
                }
            }
        } else {
            self.idle_since = None;
        }
        let records = self.unpacker.unpack(event.records);
        if !records.is_empty() {
            let Some(budget) = self.config.budget.reserve(&records).await else {
                return false;
            };
            let batch = Fetched::Batch {
                records,
                millis_behind_latest: event.millis_behind_latest,
                budget,
            };
            if self.tx.send(batch).await.is_err() {
                return false;
            }
        }
        match event.continuation_sequence_number {
            Some(seq) => {
                self.continuation = Some(seq);
                true
            }
            None => {
                let _ = self
                    .tx
                    .send(Fetched::End {
                        children: event.child_shards,
                    })
                    .await;
                false
            }
        }
    }
}

/// Whether the shard is closed and has nothing after `after`: its children if so.
async fn probe_end(
    backend: &dyn StreamBackend,
    config: &FetchConfig,
    after: &IteratorPosition,
) -> Option<Vec<crate::record::ChildShard>> {
    let iterator = match backend
        .get_shard_iterator(&config.stream, &config.shard_id, after)
        .await
    {
        Ok(it) => it,
        Err(e) => {
            debug!(error = %e, "probing the shard's end failed");
            return None;
        }
    };
    match backend.get_records(&config.stream, &iterator, 1).await {
        Ok(out) if out.records.is_empty() && out.next_iterator.is_none() => Some(out.child_shards),
        Ok(_) => None,
        Err(e) => {
            debug!(error = %e, "probing the shard's end failed");
            None
        }
    }
}
