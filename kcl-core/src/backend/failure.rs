//! `FailureBackend`: wraps any [`StreamBackend`] and injects faults (throttling, errors, expired
//! iterators, delays) according to a [`FaultPlan`].
//!
//! Faults are data (the engine is `kcl_lease::fault`, shared with the lease store's wrapper): a
//! seed and rules, replaceable while the backend is in use, e.g. to stop throttling and check
//! that the consumer recovers. Every method of the trait passes through the same hook.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use kcl_lease::fault::Trigger;
use kcl_lease::fault::{FaultKind, Injector, Plan, Rule};

use super::{
    BackendError, BackendOp, ConsumerTags, GetRecordsOutput, IteratorPosition, ShardSubscription,
    StreamBackend, StreamConsumer, SubscribeEvent,
};
use crate::record::Shard;
use crate::stream_arn::StreamArn;
use kcl_lease::StreamIdentifier;

/// One rule of a [`FaultPlan`].
pub type FaultRule = Rule<BackendOp, Fault>;
/// Which faults to inject into backend calls.
pub type FaultPlan = Plan<BackendOp, Fault>;

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail with [`BackendError::Throttled`] without calling the backend.
    Throttle,
    /// Fail with [`BackendError::Other`] without calling the backend.
    Error,
    /// Fail with [`BackendError::ExpiredIterator`] without calling the backend.
    ExpireIterator,
    /// Sleep for the duration, then call the backend.
    Delay(Duration),
    /// Fail with [`BackendError::ResourceInUse`] without calling the backend (for a
    /// subscription event: the subscription was replaced by another one).
    ResourceInUse,
    /// For [`BackendOp::SubscriptionEvent`]: the subscription ends early, as at the end of its
    /// five minutes (the wrapped subscription is dropped). For other operations: an error.
    EndSubscription,
    /// Fail with [`BackendError::AccessDenied`] without calling the backend, as Kinesis does
    /// when the IAM policy lacks the action (fatal).
    AccessDenied,
    /// Fail with [`BackendError::Kms`] without calling the backend, as Kinesis does when the
    /// stream's KMS key is disabled (fatal).
    KmsDisabled,
    /// Fail with [`BackendError::ShardNotFound`] (Kinesis's `ResourceNotFoundException` for a
    /// shard) without calling the backend, as for a shard trimmed by retention.
    ShardNotFound,
}

impl FaultKind for Fault {
    fn delay(&self) -> Option<Duration> {
        match self {
            Fault::Delay(d) => Some(*d),
            _ => None,
        }
    }
}

/// A [`StreamBackend`] that injects the faults of a [`FaultPlan`] into the calls it forwards.
pub struct FailureBackend<B> {
    inner: B,
    faults: Arc<Injector<BackendOp, Fault>>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for FailureBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureBackend")
            .field("inner", &self.inner)
            .field("faults", &self.faults)
            .finish()
    }
}

impl<B> FailureBackend<B> {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: B, plan: FaultPlan) -> Self {
        Self {
            inner,
            faults: Arc::new(Injector::new(plan)),
        }
    }

    /// Replaces the plan. The generator is reseeded and the per-operation call numbers that
    /// [`Trigger::Nth`] and [`Trigger::EveryNth`] count restart from zero; the counts of
    /// injected faults are kept.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.faults.set_plan(plan);
    }

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        self.faults.plan()
    }

    /// How many faults (delays included) were injected into calls of `op`.
    pub fn injected(&self, op: BackendOp) -> u64 {
        self.faults.injected(op)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Unwraps the backend.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// The hook every call passes: sleeps for injected delays, then fails or lets it through.
    async fn hook(&self, op: BackendOp) -> Result<(), BackendError> {
        match self.faults.apply(op).await {
            Some(Fault::EndSubscription) => Err(BackendError::other(format!("injected end in {op:?}"))),
            fault => injected(fault, op),
        }
    }
}

/// The outcome of an injected fault other than [`Fault::EndSubscription`] (which each call
/// site maps itself): `Ok` for none or a delay, else the error the fault stands for.
fn injected(fault: Option<Fault>, op: BackendOp) -> Result<(), BackendError> {
    match fault {
        None | Some(Fault::Delay(_)) => Ok(()),
        Some(Fault::Throttle) => Err(BackendError::Throttled(format!("injected fault in {op:?}"))),
        Some(Fault::Error | Fault::EndSubscription) => {
            Err(BackendError::other(format!("injected fault in {op:?}")))
        }
        Some(Fault::ExpireIterator) => Err(BackendError::ExpiredIterator),
        Some(Fault::ResourceInUse) => Err(BackendError::ResourceInUse(format!("injected fault in {op:?}"))),
        Some(Fault::AccessDenied) => Err(BackendError::AccessDenied(format!(
            "AccessDeniedException injected in {op:?}"
        ))),
        Some(Fault::KmsDisabled) => Err(BackendError::Kms(format!(
            "KMSDisabledException injected in {op:?}"
        ))),
        Some(Fault::ShardNotFound) => Err(BackendError::ShardNotFound(format!("injected fault in {op:?}"))),
    }
}

/// A subscription whose events pass through the [`BackendOp::SubscriptionEvent`] rules.
struct FailureSubscription {
    inner: Option<Box<dyn ShardSubscription>>,
    faults: Arc<Injector<BackendOp, Fault>>,
}

#[async_trait]
impl ShardSubscription for FailureSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, BackendError> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(None);
        };
        let op = BackendOp::SubscriptionEvent;
        match self.faults.apply(op).await {
            Some(Fault::EndSubscription) => {
                self.inner = None;
                Ok(None)
            }
            fault => {
                injected(fault, op)?;
                inner.next_event().await
            }
        }
    }
}

#[async_trait]
impl<B: StreamBackend> StreamBackend for FailureBackend<B> {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.hook(BackendOp::ListShards).await?;
        self.inner.list_shards(stream).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        self.hook(BackendOp::GetShardIterator).await?;
        self.inner.get_shard_iterator(stream, shard_id, position).await
    }

    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.hook(BackendOp::GetRecords).await?;
        self.inner.get_records(stream, iterator, limit).await
    }

    fn name_by_arn(&self, arn: &StreamArn) {
        self.inner.name_by_arn(arn);
    }

    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        self.hook(BackendOp::DescribeStream).await?;
        self.inner.stream_identifier(stream).await
    }

    async fn check_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        self.hook(BackendOp::DescribeStream).await?;
        self.inner.check_stream_ended(stream).await
    }

    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        self.hook(BackendOp::RegisterConsumer).await?;
        self.inner.register_consumer(stream, consumer_name, tags).await
    }

    async fn describe_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.hook(BackendOp::DescribeConsumer).await?;
        self.inner.describe_consumer(stream, consumer_name).await
    }

    async fn subscribe_to_shard(
        &self,
        stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Box<dyn ShardSubscription>, BackendError> {
        self.hook(BackendOp::SubscribeToShard).await?;
        let inner = self
            .inner
            .subscribe_to_shard(stream, consumer_arn, shard_id, position)
            .await?;
        Ok(Box::new(FailureSubscription {
            inner: Some(inner),
            faults: self.faults.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    const S: &str = "test";

    fn local() -> LocalBackend {
        let b = LocalBackend::new();
        b.create_stream(S, 1).unwrap();
        b
    }

    #[tokio::test]
    async fn nth_fires_once_and_other_calls_are_delegated() {
        let local = local();
        let b = FailureBackend::new(
            local.clone(),
            FaultPlan::new(1)
                .rule(BackendOp::ListShards, Trigger::Nth(2), Fault::Throttle)
                .rule(BackendOp::GetShardIterator, Trigger::Nth(1), Fault::Error)
                .rule(BackendOp::GetRecords, Trigger::Nth(3), Fault::ExpireIterator),
        );
        assert_eq!(b.list_shards(S).await.unwrap().len(), 1);
        assert!(matches!(b.list_shards(S).await, Err(BackendError::Throttled(_))));
        assert_eq!(b.list_shards(S).await.unwrap().len(), 1);
        assert_eq!(
            local.op_count(BackendOp::ListShards),
            2,
            "the faulted call did not go through"
        );
        assert_eq!(b.injected(BackendOp::ListShards), 1);

        let pos = IteratorPosition::TrimHorizon;
        assert!(matches!(
            b.get_shard_iterator(S, "shardId-000000000000", &pos).await,
            Err(BackendError::Other(_))
        ));
        let it = b
            .get_shard_iterator(S, "shardId-000000000000", &pos)
            .await
            .unwrap();
        assert!(b.get_records(S, &it, 10).await.is_ok());
        assert!(b.get_records(S, &it, 10).await.is_ok());
        assert!(matches!(
            b.get_records(S, &it, 10).await,
            Err(BackendError::ExpiredIterator)
        ));
        assert!(b.get_records(S, &it, 10).await.is_ok());
        assert_eq!(local.op_count(BackendOp::GetRecords), 3);
        assert_eq!(b.injected(BackendOp::GetRecords), 1);
        assert_eq!(b.injected(BackendOp::GetShardIterator), 1);
        // Errors of the wrapped backend come through unchanged.
        assert!(matches!(
            b.list_shards("nope").await,
            Err(BackendError::StreamNotFound(_))
        ));
    }

    #[tokio::test]
    async fn every_nth_and_always() {
        let b = FailureBackend::new(
            local(),
            FaultPlan::new(1)
                .rule(BackendOp::ListShards, Trigger::EveryNth(3), Fault::Error)
                .rule(BackendOp::GetShardIterator, Trigger::Always, Fault::Throttle)
                .rule(BackendOp::GetRecords, Trigger::EveryNth(0), Fault::Throttle)
                .rule(BackendOp::GetRecords, Trigger::Nth(0), Fault::Throttle),
        );
        let failed: Vec<bool> = {
            let mut v = Vec::new();
            for _ in 0..9 {
                v.push(b.list_shards(S).await.is_err());
            }
            v
        };
        assert_eq!(
            failed,
            [false, false, true, false, false, true, false, false, true]
        );
        for _ in 0..3 {
            let r = b
                .get_shard_iterator(S, "shardId-000000000000", &IteratorPosition::Latest)
                .await;
            assert!(matches!(r, Err(BackendError::Throttled(_))));
        }
        assert_eq!(b.inner().op_count(BackendOp::GetShardIterator), 0);
        // Turn the faults off at run time.
        b.set_plan(FaultPlan::none());
        let it = b
            .get_shard_iterator(S, "shardId-000000000000", &IteratorPosition::Latest)
            .await
            .unwrap();
        assert!(b.get_records(S, &it, 1).await.is_ok());
        assert_eq!(b.injected(BackendOp::GetShardIterator), 3);
        assert_eq!(b.injected(BackendOp::GetRecords), 0);
    }

    #[tokio::test]
    async fn probability_is_seeded_and_about_right() {
        async fn pattern(seed: u64, p: f64) -> Vec<bool> {
            let b = FailureBackend::new(
                local(),
                FaultPlan::new(seed).rule(BackendOp::ListShards, Trigger::Probability(p), Fault::Throttle),
            );
            let mut v = Vec::new();
            for _ in 0..1000 {
                v.push(b.list_shards(S).await.is_err());
            }
            assert_eq!(
                b.injected(BackendOp::ListShards),
                v.iter().filter(|f| **f).count() as u64
            );
            assert_eq!(
                b.inner().op_count(BackendOp::ListShards),
                v.iter().filter(|f| !**f).count() as u64
            );
            v
        }
        let a = pattern(42, 0.3).await;
        let fired = a.iter().filter(|f| **f).count();
        assert!((230..=370).contains(&fired), "{fired} of 1000 at p = 0.3");
        assert_eq!(a, pattern(42, 0.3).await, "same seed, same faults");
        assert_ne!(a, pattern(43, 0.3).await, "another seed, other faults");
        assert!(pattern(7, 0.0).await.iter().all(|f| !f));
        assert!(pattern(7, 1.0).await.iter().all(|f| *f));
    }

    #[tokio::test]
    async fn delays_add_up_then_call_through() {
        tokio::time::pause();
        let b = FailureBackend::new(
            local(),
            FaultPlan::new(0)
                .rule(
                    BackendOp::ListShards,
                    Trigger::Always,
                    Fault::Delay(Duration::from_millis(300)),
                )
                .rule(
                    BackendOp::ListShards,
                    Trigger::Nth(1),
                    Fault::Delay(Duration::from_millis(200)),
                )
                .rule(BackendOp::ListShards, Trigger::Nth(2), Fault::Throttle),
        );
        let start = tokio::time::Instant::now();
        assert!(b.list_shards(S).await.is_ok());
        let ms = |d: Duration| d.as_millis();
        assert!((500..505).contains(&ms(start.elapsed())), "{:?}", start.elapsed());
        assert!(matches!(b.list_shards(S).await, Err(BackendError::Throttled(_))));
        assert!(
            (800..810).contains(&ms(start.elapsed())),
            "the delay comes before the error"
        );
        assert_eq!(b.injected(BackendOp::ListShards), 4);
        assert_eq!(b.inner().op_count(BackendOp::ListShards), 1);
        assert_eq!(b.plan().rules.len(), 3);
    }
}
