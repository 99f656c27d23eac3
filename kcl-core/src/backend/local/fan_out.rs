//! Enhanced fan-out on the local backend: consumers registered per stream, and subscriptions
//! that push records as soon as they are put.
//!
//! It behaves like Kinesis wherever a consumer could tell: registration is idempotent, and a new
//! consumer is `CREATING` for a configurable while before it is `ACTIVE` (subscribing before that
//! is refused with `ResourceInUse`); there is one subscription per consumer and shard — a second
//! one within 5 seconds of the first is refused with `ResourceInUse`, a later one takes over and
//! the replaced one fails with `ResourceInUse`; a subscription ends after its duration (5 minutes
//! by default); every event carries a continuation sequence number, except the one that
//! delivers the end of a closed shard, which carries the children instead; an idle subscription
//! sends an empty event every 5 seconds, as the service does. Fan-out reads are not subject to
//! the polling read limits (on Kinesis each consumer has its own 2 MiB/s per shard).

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::stream::sequence_number;
use super::{invalid, shard_not_found, trunc, LocalBackend, LOCAL_ACCOUNT, MAX_GET_RECORDS};
use crate::backend::{
    BackendError, ConsumerStatus, ConsumerTags, IteratorPosition, ShardSubscription, StreamConsumer,
    SubscribeEvent,
};
use crate::record::SequenceNumber;

/// How many consumers a stream accepts by default, as provisioned and On-demand Standard
/// streams on Kinesis.
pub(super) const DEFAULT_MAX_CONSUMERS: usize = 20;
/// How long a subscription lasts by default, as on Kinesis.
pub(super) const DEFAULT_SUBSCRIPTION_DURATION: Duration = Duration::from_secs(5 * 60);
/// A second subscription to the same shard by the same consumer sooner than this is refused.
const TAKEOVER_AFTER: Duration = Duration::from_secs(5);
/// An idle subscription sends an empty event this often.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A registered consumer.
pub(super) struct LocalConsumer {
    arn: String,
    registered: Instant,
    tags: ConsumerTags,
}

/// The live subscription of one consumer to one shard.
pub(super) struct Slot {
    id: u64,
    started: Instant,
}

impl LocalBackend {
    fn consumer_view(&self, name: &str, consumer: &LocalConsumer, now: Instant) -> StreamConsumer {
        let active =
            now.saturating_duration_since(consumer.registered) >= self.inner.config.consumer_activation;
        StreamConsumer {
            name: name.to_owned(),
            arn: consumer.arn.clone(),
            status: if active {
                ConsumerStatus::Active
            } else {
                ConsumerStatus::Creating
            },
        }
    }

    pub(super) fn register_consumer_now(
        &self,
        stream: &str,
        name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        let valid = (1..=128).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(invalid(format!("invalid consumer name {:?}", trunc(name))));
        }
        let max = self.inner.config.max_consumers;
        self.with_stream(stream, |s, now| {
            if !s.consumers.contains_key(name) {
                s.refuse_while_updating(stream, now, "RegisterStreamConsumer")?;
                if s.consumers.len() >= max {
                    return Err(BackendError::ConsumerLimit(format!(
                        "stream {stream} has {} registered consumers, the most it allows",
                        s.consumers.len()
                    )));
                }
            }
            let id = self
                .inner
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let consumer = s
                .consumers
                .entry(name.to_owned())
                .or_insert_with(|| LocalConsumer {
                    arn: format!(
                        "arn:aws:kinesis:local:{LOCAL_ACCOUNT}:stream/{stream}/consumer/{name}:{id}"
                    ),
                    registered: now,
                    tags: tags.clone(),
                });
            Ok(self.consumer_view(name, consumer, now))
        })
    }

    /// The tags `name` was registered with on `stream` (Kinesis' `ListTagsForResource` of the
    /// consumer).
    pub fn consumer_tags(&self, stream: &str, name: &str) -> Result<ConsumerTags, BackendError> {
        self.with_stream(stream, |s, _| {
            s.consumers
                .get(name)
                .map(|c| c.tags.clone())
                .ok_or_else(|| BackendError::ConsumerNotFound(format!("{name} on stream {stream}")))
        })
    }

    pub(super) fn describe_consumer_now(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.with_stream(stream, |s, now| {
            let consumer = s
                .consumers
                .get(name)
                .ok_or_else(|| BackendError::ConsumerNotFound(format!("{name} on stream {stream}")))?;
            Ok(self.consumer_view(name, consumer, now))
        })
    }

    pub(super) fn subscribe_now(
        &self,
        stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<LocalSubscription, BackendError> {
        let not_found = || BackendError::ConsumerNotFound(trunc(consumer_arn));
        let (stream_name, consumer_name) = parse_consumer_arn(consumer_arn).ok_or_else(not_found)?;
        if stream_name != stream {
            return Err(not_found());
        }
        let (id, start, now) = self.with_stream(stream_name, |s, now| {
            let consumer = s
                .consumers
                .get(consumer_name)
                .filter(|c| c.arn == consumer_arn)
                .ok_or_else(not_found)?;
            if now.saturating_duration_since(consumer.registered) < self.inner.config.consumer_activation {
                return Err(BackendError::ResourceInUse(format!(
                    "consumer {consumer_name} is not ACTIVE yet"
                )));
            }
            let start = s.start_position(shard_id, position, now)?;
            let key = (consumer_arn.to_owned(), shard_id.to_owned());
            if let Some(slot) = s.subscriptions.get(&key) {
                if now.saturating_duration_since(slot.started) < TAKEOVER_AFTER {
                    return Err(BackendError::ResourceInUse(format!(
                        "another subscription of consumer {consumer_name} to {shard_id} started less than 5 seconds ago"
                    )));
                }
            }
            let id = self.inner.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.subscriptions.insert(key, Slot { id, started: now });
            Ok((id, start, now))
        })?;
        Ok(LocalSubscription {
            backend: self.clone(),
            stream: stream_name.to_owned(),
            shard_id: shard_id.to_owned(),
            consumer_arn: consumer_arn.to_owned(),
            id,
            position: start,
            last_delivered: None,
            deadline: now + self.inner.config.subscription_duration,
            last_event: now,
            changes: self.inner.changes.subscribe(),
            ended: false,
        })
    }
}

/// `arn:aws:kinesis:<region>:<account>:stream/<stream>/consumer/<name>:<id>` → (stream, name).
fn parse_consumer_arn(arn: &str) -> Option<(&str, &str)> {
    let rest = arn.split_once(":stream/")?.1;
    let (stream, consumer) = rest.split_once("/consumer/")?;
    let name = consumer.rsplit_once(':')?.0;
    (!stream.is_empty() && !name.is_empty()).then_some((stream, name))
}

/// A subscription on the local backend.
pub(super) struct LocalSubscription {
    backend: LocalBackend,
    stream: String,
    shard_id: String,
    consumer_arn: String,
    id: u64,
    /// The counter of the next record to send.
    position: u64,
    /// The sequence number of the last record sent.
    last_delivered: Option<SequenceNumber>,
    deadline: Instant,
    last_event: Instant,
    changes: tokio::sync::watch::Receiver<u64>,
    ended: bool,
}

impl LocalSubscription {
    fn key(&self) -> (String, String) {
        (self.consumer_arn.clone(), self.shard_id.clone())
    }

    /// The event to send now, if any.
    fn poll(&mut self, now: Instant) -> Result<Option<SubscribeEvent>, BackendError> {
        let key = self.key();
        let mut streams = self.backend.lock();
        let stream = streams
            .get_mut(&self.stream)
            .ok_or_else(|| BackendError::StreamNotFound(self.stream.clone()))?;
        if stream
            .subscriptions
            .get(&key)
            .is_none_or(|slot| slot.id != self.id)
        {
            self.ended = true;
            return Err(BackendError::ResourceInUse(format!(
                "subscription to {} replaced by a newer one of the same consumer",
                self.shard_id
            )));
        }
        stream.trim_shard(&self.shard_id, now);
        let shard = stream
            .shards
            .get(&self.shard_id)
            .ok_or_else(|| shard_not_found(&self.shard_id))?;
        let batch = shard.read(self.position, MAX_GET_RECORDS);
        self.position = batch.next_position;
        if let Some(last) = batch.records.last() {
            self.last_delivered = Some(last.sequence_number.clone());
        }
        if batch.finished {
            self.ended = true;
            let child_shards = stream.children_of(&self.shard_id);
            return Ok(Some(SubscribeEvent {
                records: batch.records,
                continuation_sequence_number: None,
                millis_behind_latest: batch.millis_behind_latest,
                child_shards,
            }));
        }
        if batch.records.is_empty() && now.saturating_duration_since(self.last_event) < HEARTBEAT {
            return Ok(None);
        }
        // Where to resume: after the last record sent, or (nothing sent yet) just before the
        // position, when a record could be there at all.
        let continuation = self.last_delivered.clone().or_else(|| {
            let before = self.position.checked_sub(1)?;
            (before >= shard.start).then(|| sequence_number(before))
        });
        if continuation.is_none() {
            // Nothing to resume after yet: a new subscription at the same position is the same.
            self.last_event = now;
            return Ok(None);
        }
        Ok(Some(SubscribeEvent {
            records: batch.records,
            continuation_sequence_number: continuation,
            millis_behind_latest: batch.millis_behind_latest,
            child_shards: Vec::new(),
        }))
    }
}

#[async_trait]
impl ShardSubscription for LocalSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, BackendError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= self.deadline {
                self.ended = true;
                return Ok(None);
            }
            // Mark the current state seen before reading it, so that no put is missed.
            self.changes.borrow_and_update();
            if let Some(event) = self.poll(now)? {
                self.last_event = now;
                return Ok(Some(event));
            }
            let wake = self.deadline.min(self.last_event + HEARTBEAT);
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        let key = self.key();
        let mut streams = self.backend.lock();
        if let Some(stream) = streams.get_mut(&self.stream) {
            if stream
                .subscriptions
                .get(&key)
                .is_some_and(|slot| slot.id == self.id)
            {
                stream.subscriptions.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::backend::StreamBackend;

    const S: &str = "fan";

    fn backend() -> LocalBackend {
        let b = LocalBackend::builder()
            .consumer_activation(Duration::from_secs(2))
            .subscription_duration(Duration::from_secs(60))
            .build();
        b.create_stream(S, 1).unwrap();
        b
    }

    async fn put(b: &LocalBackend, data: &str) -> SequenceNumber {
        b.put_record(S, "k", Bytes::copy_from_slice(data.as_bytes()), None)
            .await
            .unwrap()
            .sequence_number
    }

    fn datas(e: &SubscribeEvent) -> Vec<String> {
        e.records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect()
    }

    const SHARD: &str = "shardId-000000000000";

    /// The consumer limit refuses one consumer more (typed), never one registered already; an
    /// `UPDATING` stream refuses new consumers until the update is done, and tags are kept.
    #[tokio::test(start_paused = true)]
    async fn the_consumer_limit_and_an_updating_stream_refuse_new_consumers() {
        let b = LocalBackend::builder()
            .max_consumers(2)
            .update_duration(Duration::from_secs(10))
            .build();
        b.create_stream(S, 1).unwrap();
        let tags: ConsumerTags = [("team".to_owned(), "a".to_owned())].into();
        b.register_consumer(S, "one", &tags).await.unwrap();
        b.update_max_record_size(S, 2048).unwrap();
        assert!(matches!(
            b.register_consumer(S, "two", &ConsumerTags::new()).await,
            Err(BackendError::ResourceInUse(_))
        ));
        assert!(matches!(
            b.update_max_record_size(S, 4096),
            Err(BackendError::ResourceInUse(_))
        ));
        b.register_consumer(S, "one", &ConsumerTags::new()).await.unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.stream_status(S).unwrap(), "ACTIVE");
        b.register_consumer(S, "two", &ConsumerTags::new()).await.unwrap();
        assert!(matches!(
            b.register_consumer(S, "three", &ConsumerTags::new()).await,
            Err(BackendError::ConsumerLimit(_))
        ));
        b.register_consumer(S, "two", &ConsumerTags::new()).await.unwrap();
        assert_eq!(b.consumer_tags(S, "one").unwrap(), tags, "kept as registered");
    }

    #[tokio::test(start_paused = true)]
    async fn registration_is_idempotent_and_activates_after_a_while() {
        let b = backend();
        let c = b.register_consumer(S, "app", &ConsumerTags::new()).await.unwrap();
        assert_eq!(c.status, ConsumerStatus::Creating);
        assert!(parse_consumer_arn(&c.arn) == Some((S, "app")), "{}", c.arn);
        assert!(matches!(
            b.subscribe_to_shard(S, &c.arn, SHARD, &IteratorPosition::TrimHorizon)
                .await,
            Err(BackendError::ResourceInUse(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = b.register_consumer(S, "app", &ConsumerTags::new()).await.unwrap();
        assert_eq!(again.arn, c.arn);
        assert_eq!(again.status, ConsumerStatus::Active);
        assert_eq!(b.describe_consumer(S, "app").await.unwrap(), again);
        assert!(matches!(
            b.describe_consumer(S, "other").await,
            Err(BackendError::ConsumerNotFound(_))
        ));
        assert!(matches!(
            b.register_consumer("nope", "app", &ConsumerTags::new()).await,
            Err(BackendError::StreamNotFound(_))
        ));
        assert!(matches!(
            b.register_consumer(S, "bad name", &ConsumerTags::new()).await,
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(matches!(
            b.subscribe_to_shard(S, "arn:garbage", SHARD, &IteratorPosition::TrimHorizon)
                .await,
            Err(BackendError::ConsumerNotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_records_as_they_arrive_and_ends_after_its_duration() {
        let b = backend();
        put(&b, "old").await;
        let c = b.register_consumer(S, "app", &ConsumerTags::new()).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut sub = b
            .subscribe_to_shard(S, &c.arn, SHARD, &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let first = sub.next_event().await.unwrap().unwrap();
        assert_eq!(datas(&first), ["old"]);
        let producer = b.clone();
        let put_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            put(&producer, "new").await
        });
        let started = Instant::now();
        let second = sub.next_event().await.unwrap().unwrap();
        assert_eq!(datas(&second), ["new"]);
        assert!(started.elapsed() < Duration::from_secs(1), "pushed, not polled");
        let seq = put_later.await.unwrap();
        assert_eq!(second.continuation_sequence_number.as_ref(), Some(&seq));
        // Idle: an empty event every 5 seconds, carrying the same continuation.
        let idle = sub.next_event().await.unwrap().unwrap();
        assert!(idle.records.is_empty());
        assert_eq!(idle.continuation_sequence_number, Some(seq.clone()));
        // After the subscription's minute, it ends.
        let mut events = 0;
        while sub.next_event().await.unwrap().is_some() {
            events += 1;
        }
        assert!(events >= 9, "heartbeats until the end, got {events}");
        assert!(Instant::now() - started >= Duration::from_secs(59));
        // Resuming after the continuation delivers only what is new.
        drop(sub);
        put(&b, "after").await;
        let mut sub = b
            .subscribe_to_shard(S, &c.arn, SHARD, &IteratorPosition::AfterSequenceNumber(seq))
            .await
            .unwrap();
        assert_eq!(datas(&sub.next_event().await.unwrap().unwrap()), ["after"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_subscription_per_consumer_and_shard() {
        let b = backend();
        let c = b.register_consumer(S, "app", &ConsumerTags::new()).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let pos = IteratorPosition::Latest;
        let mut first = b.subscribe_to_shard(S, &c.arn, SHARD, &pos).await.unwrap();
        assert!(matches!(
            b.subscribe_to_shard(S, &c.arn, SHARD, &pos).await,
            Err(BackendError::ResourceInUse(_))
        ));
        // Another consumer is independent.
        let other = b
            .register_consumer(S, "other", &ConsumerTags::new())
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.subscribe_to_shard(S, &other.arn, SHARD, &pos).await.is_ok());
        // After 5 seconds a new subscription takes over; the old one fails.
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut second = b.subscribe_to_shard(S, &c.arn, SHARD, &pos).await.unwrap();
        assert!(matches!(
            first.next_event().await,
            Err(BackendError::ResourceInUse(_))
        ));
        put(&b, "x").await;
        assert_eq!(datas(&second.next_event().await.unwrap().unwrap()), ["x"]);
        // Dropping a subscription frees the shard at once.
        drop(second);
        assert!(b.subscribe_to_shard(S, &c.arn, SHARD, &pos).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_a_closed_shard_carries_the_children() {
        let b = backend();
        let c = b.register_consumer(S, "app", &ConsumerTags::new()).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        put(&b, "a").await;
        let mut sub = b
            .subscribe_to_shard(S, &c.arn, SHARD, &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        assert_eq!(datas(&sub.next_event().await.unwrap().unwrap()), ["a"]);
        let (lo, hi) = b.split_shard(S, SHARD, 1 << 127).unwrap();
        let end = sub.next_event().await.unwrap().unwrap();
        assert!(end.records.is_empty());
        assert_eq!(end.continuation_sequence_number, None);
        let children: Vec<_> = end.child_shards.iter().map(|c| c.shard_id.clone()).collect();
        assert_eq!(children, [lo, hi]);
        assert!(sub.next_event().await.unwrap().is_none());
    }
}
