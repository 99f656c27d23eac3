//! `FailureBackend`: wraps any [`StreamBackend`] and injects faults (throttling, errors, expired
//! iterators, delays) according to a [`FaultPlan`].
//!
//! Faults are data, not code: a plan is a seed and a list of rules (which operation, when, what
//! fault), so a test states exactly what goes wrong and a failing run can be replayed with the
//! same seed. The plan can be replaced while the backend is in use, e.g. to stop throttling and
//! check that the consumer recovers. Every method of the trait passes through the same hook.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::local::BackendOp;
use super::{BackendError, GetRecordsOutput, IteratorPosition, StreamBackend};
use crate::record::Shard;

/// When a rule fires, counted per operation (calls are numbered from 1 since the plan was set).
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// Only the `n`th call (1-based); `Nth(0)` never fires.
    Nth(u64),
    /// Every `n`th call (the `n`th, `2n`th, ...); `EveryNth(0)` never fires.
    EveryNth(u64),
    /// Each call with this probability (`0.0..=1.0`), drawn from the plan's seeded generator.
    Probability(f64),
    /// Every call.
    Always,
}

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
}

/// One rule of a [`FaultPlan`].
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// The operation the rule applies to.
    pub op: BackendOp,
    /// When it fires.
    pub trigger: Trigger,
    /// What it injects.
    pub fault: Fault,
}

/// Which faults to inject: a seed for the probabilistic triggers and a list of rules.
///
/// On each call every rule for the operation is evaluated in order. The delays of all firing
/// [`Fault::Delay`] rules add up; the first firing failing rule decides the error, returned after
/// the delays. A call no failing rule fires on goes through to the wrapped backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// The seed of the generator behind [`Trigger::Probability`].
    pub seed: u64,
    /// The rules, evaluated in order.
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// A plan without rules, with this seed.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rules: Vec::new(),
        }
    }

    /// A plan that injects nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a rule (builder style).
    #[must_use]
    pub fn rule(mut self, op: BackendOp, trigger: Trigger, fault: Fault) -> Self {
        self.rules.push(FaultRule { op, trigger, fault });
        self
    }
}

/// A [`StreamBackend`] that injects the faults of a [`FaultPlan`] into the calls it forwards.
pub struct FailureBackend<B> {
    inner: B,
    state: Mutex<PlanState>,
    injected: [AtomicU64; BackendOp::ALL.len()],
}

struct PlanState {
    plan: FaultPlan,
    rng: SplitMix64,
    /// Calls per operation since the plan was set.
    calls: [u64; BackendOp::ALL.len()],
}

impl PlanState {
    fn new(plan: FaultPlan) -> Self {
        Self {
            rng: SplitMix64(plan.seed),
            plan,
            calls: [0; BackendOp::ALL.len()],
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for FailureBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureBackend")
            .field("inner", &self.inner)
            .field("plan", &self.lock().plan)
            .finish()
    }
}

impl<B> FailureBackend<B> {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: B, plan: FaultPlan) -> Self {
        Self {
            inner,
            state: Mutex::new(PlanState::new(plan)),
            injected: Default::default(),
        }
    }

    /// Replaces the plan. The generator is reseeded and the per-operation call numbers that
    /// [`Trigger::Nth`] and [`Trigger::EveryNth`] count restart from zero; the counts of
    /// injected faults are kept.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.lock() = PlanState::new(plan);
    }

    /// The current plan.
    pub fn plan(&self) -> FaultPlan {
        self.lock().plan.clone()
    }

    /// How many faults (delays included) were injected into calls of `op`.
    pub fn injected(&self, op: BackendOp) -> u64 {
        self.injected[op.index()].load(Ordering::Relaxed)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Unwraps the backend.
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        // The state is plain counters and a plan; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides the faults of one call: the total delay and the failure, if any.
    fn decide(&self, op: BackendOp) -> (Duration, Option<Fault>) {
        let mut guard = self.lock();
        let PlanState { plan, rng, calls } = &mut *guard;
        calls[op.index()] += 1;
        let n = calls[op.index()];
        let mut delay = Duration::ZERO;
        let mut failure = None;
        for rule in plan.rules.iter().filter(|r| r.op == op) {
            let fires = match rule.trigger {
                Trigger::Nth(k) => n == k,
                Trigger::EveryNth(k) => k > 0 && n % k == 0,
                Trigger::Probability(p) => rng.next_f64() < p,
                Trigger::Always => true,
            };
            if !fires {
                continue;
            }
            match &rule.fault {
                Fault::Delay(d) => delay = delay.saturating_add(*d),
                fault if failure.is_none() => failure = Some(fault.clone()),
                _ => continue,
            }
            self.injected[op.index()].fetch_add(1, Ordering::Relaxed);
        }
        (delay, failure)
    }

    /// The hook every call passes: sleeps for injected delays, then fails or lets it through.
    async fn hook(&self, op: BackendOp) -> Result<(), BackendError> {
        let (delay, failure) = self.decide(op);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match failure {
            None | Some(Fault::Delay(_)) => Ok(()),
            Some(Fault::Throttle) => Err(BackendError::Throttled(format!("injected fault in {op:?}"))),
            Some(Fault::Error) => Err(BackendError::other(format!("injected fault in {op:?}"))),
            Some(Fault::ExpireIterator) => Err(BackendError::ExpiredIterator),
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

    async fn get_records(&self, iterator: &str, limit: usize) -> Result<GetRecordsOutput, BackendError> {
        self.hook(BackendOp::GetRecords).await?;
        self.inner.get_records(iterator, limit).await
    }
}

/// SplitMix64: a tiny, fast, seedable generator, plenty for deciding faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
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
        assert!(b.get_records(&it, 10).await.is_ok());
        assert!(b.get_records(&it, 10).await.is_ok());
        assert!(matches!(
            b.get_records(&it, 10).await,
            Err(BackendError::ExpiredIterator)
        ));
        assert!(b.get_records(&it, 10).await.is_ok());
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
        assert!(b.get_records(&it, 1).await.is_ok());
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
