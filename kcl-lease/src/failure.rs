//! `FailureLeaseStore`: wraps any [`LeaseStore`] and injects faults (throttling, errors,
//! conditional-write conflicts, delays) according to a [`LeaseFaultPlan`].
//!
//! Faults are data ([`crate::fault`]): a seed and rules, replaceable while the store is in use,
//! so a failing run can be replayed with the same seed. Every method of the trait passes
//! through the same hook.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{FatalKind, LeaseError, Result};
use crate::fault::{FaultKind, Injector, Plan, Rule, Trigger};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::lease::Lease;
use crate::memory::LeaseOp;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;

/// When a lease-store fault rule fires (see [`Trigger`]).
pub type LeaseTrigger = Trigger;
/// One rule of a [`LeaseFaultPlan`].
pub type LeaseFaultRule = Rule<LeaseOp, LeaseFault>;
/// Which faults to inject into lease-store calls.
pub type LeaseFaultPlan = Plan<LeaseOp, LeaseFault>;

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseFault {
    /// Fail with [`LeaseError::Throttled`] without calling the store.
    Throttle,
    /// Fail with [`LeaseError::Backend`] without calling the store.
    Error,
    /// Fail with [`LeaseError::Conflict`] (`actual: None`) without calling the store, as if
    /// another worker had changed the row. For [`LeaseOp::List`], which has no key, the key is
    /// empty.
    Conflict,
    /// Sleep for the duration, then call the store.
    Delay(Duration),
    /// Fail with [`LeaseError::Fatal`] ([`FatalKind::AccessDenied`]) without calling the store,
    /// as DynamoDB does when the IAM policy lacks the action.
    AccessDenied,
    /// Fail with [`LeaseError::Fatal`] ([`FatalKind::TableNotFound`]) without calling the
    /// store, as DynamoDB does once the table was deleted.
    TableNotFound,
    /// Call the store, then fail with [`LeaseError::Backend`] whatever it answered: a write
    /// that was applied but whose answer was lost (a timeout, a dropped connection).
    ApplyThenFail,
}

impl FaultKind for LeaseFault {
    fn delay(&self) -> Option<Duration> {
        match self {
            LeaseFault::Delay(d) => Some(*d),
            _ => None,
        }
    }
}

/// A [`LeaseStore`] that injects the faults of a [`LeaseFaultPlan`] into the calls it forwards.
pub struct FailureLeaseStore<S> {
    inner: S,
    faults: Injector<LeaseOp, LeaseFault>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for FailureLeaseStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLeaseStore")
            .field("inner", &self.inner)
            .field("faults", &self.faults)
            .finish()
    }
}

impl<S> FailureLeaseStore<S> {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: S, plan: LeaseFaultPlan) -> Self {
        Self {
            inner,
            faults: Injector::new(plan),
        }
    }

    /// Replaces the plan. The generator is reseeded and the per-operation call numbers that
    /// [`Trigger::Nth`] and [`Trigger::EveryNth`] count restart from zero; the counts of
    /// injected faults are kept.
    pub fn set_plan(&self, plan: LeaseFaultPlan) {
        self.faults.set_plan(plan);
    }

    /// The current plan.
    pub fn plan(&self) -> LeaseFaultPlan {
        self.faults.plan()
    }

    /// How many faults (delays included) were injected into calls of `op`.
    pub fn injected(&self, op: LeaseOp) -> u64 {
        self.faults.injected(op)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The hook every call passes: sleeps for injected delays, then fails, lets the call
    /// through, or lets it through and fails afterwards. `key` is the lease the call is about
    /// (for conflicts).
    async fn hook<T, F>(&self, op: LeaseOp, key: &str, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let injected = |what: &str| format!("injected fault in {op:?}: {what}");
        match self.faults.apply(op).await {
            None | Some(LeaseFault::Delay(_)) => call.await,
            Some(LeaseFault::Throttle) => Err(LeaseError::Throttled(injected("throttled"))),
            Some(LeaseFault::Error) => Err(LeaseError::backend(injected("error"))),
            Some(LeaseFault::Conflict) => Err(LeaseError::Conflict {
                key: key.to_owned(),
                actual: None,
            }),
            Some(LeaseFault::AccessDenied) => Err(LeaseError::fatal(
                FatalKind::AccessDenied,
                injected("AccessDeniedException"),
            )),
            Some(LeaseFault::TableNotFound) => Err(LeaseError::fatal(
                FatalKind::TableNotFound,
                injected("ResourceNotFoundException"),
            )),
            Some(LeaseFault::ApplyThenFail) => {
                let _applied = call.await;
                Err(LeaseError::backend(injected(
                    "the call was applied but its answer was lost",
                )))
            }
        }
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for FailureLeaseStore<S> {
    async fn list(&self) -> Result<Vec<Lease>> {
        self.hook(LeaseOp::List, "", self.inner.list()).await
    }

    async fn list_eventually_consistent(&self) -> Result<Vec<Lease>> {
        self.hook(LeaseOp::List, "", self.inner.list_eventually_consistent())
            .await
    }

    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        self.hook(
            LeaseOp::PutHeartbeat,
            &heartbeat.worker_id,
            self.inner.put_heartbeat(heartbeat, condition),
        )
        .await
    }

    async fn list_heartbeats(&self, consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        self.hook(
            LeaseOp::ListHeartbeats,
            "",
            self.inner.list_heartbeats(consistent),
        )
        .await
    }

    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        self.hook(
            LeaseOp::DeleteHeartbeat,
            worker_id,
            self.inner.delete_heartbeat(worker_id, condition),
        )
        .await
    }

    async fn get_heartbeat(&self, worker_id: &str, consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        self.hook(
            LeaseOp::GetHeartbeat,
            worker_id,
            self.inner.get_heartbeat(worker_id, consistent),
        )
        .await
    }

    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        self.hook(
            LeaseOp::NudgeHeartbeat,
            worker_id,
            self.inner.nudge_heartbeat(worker_id),
        )
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>> {
        self.hook(LeaseOp::Get, key, self.inner.get(key)).await
    }

    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        self.hook(
            LeaseOp::Create,
            &lease.lease_key,
            self.inner.create_if_absent(lease),
        )
        .await
    }

    async fn renew(&self, expected: &Lease) -> Result<Lease> {
        self.hook(LeaseOp::Renew, &expected.lease_key, self.inner.renew(expected))
            .await
    }

    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease> {
        self.hook(
            LeaseOp::Take,
            &expected.lease_key,
            self.inner.take(expected, new_owner, handoff),
        )
        .await
    }

    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> Result<Lease> {
        self.hook(
            LeaseOp::Take,
            &expected.lease_key,
            self.inner.take_heartbeat_renewed(expected, new_owner, handoff),
        )
        .await
    }

    async fn evict(&self, expected: &Lease) -> Result<Lease> {
        self.hook(LeaseOp::Evict, &expected.lease_key, self.inner.evict(expected))
            .await
    }

    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        self.hook(
            LeaseOp::Checkpoint,
            &expected.lease_key,
            self.inner.update_checkpoint(expected, worker, checkpoint),
        )
        .await
    }

    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        self.hook(
            LeaseOp::Checkpoint,
            &expected.lease_key,
            self.inner.reset_checkpoint(expected, checkpoint),
        )
        .await
    }

    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease> {
        self.hook(
            LeaseOp::CompleteHandoff,
            &handoff.lease_key,
            self.inner.complete_handoff(handoff),
        )
        .await
    }

    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease> {
        self.hook(
            LeaseOp::MarkChildren,
            &expected.lease_key,
            self.inner.mark_children(expected, children),
        )
        .await
    }

    async fn delete(&self, expected: &Lease) -> Result<()> {
        self.hook(LeaseOp::Delete, &expected.lease_key, self.inner.delete(expected))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InMemoryLeaseStore;

    fn lease(key: &str) -> Lease {
        Lease::new(key, ExtendedSequenceNumber::TrimHorizon)
    }

    #[tokio::test]
    async fn nth_fires_once_and_other_calls_are_delegated() {
        let memory = InMemoryLeaseStore::new();
        let store = FailureLeaseStore::new(
            memory.clone(),
            LeaseFaultPlan::new(1)
                .rule(LeaseOp::Create, LeaseTrigger::Nth(2), LeaseFault::Error)
                .rule(LeaseOp::Renew, LeaseTrigger::Nth(1), LeaseFault::Conflict)
                .rule(LeaseOp::List, LeaseTrigger::Nth(1), LeaseFault::Throttle),
        );
        assert!(store.create_if_absent(&lease("a")).await.unwrap());
        assert!(matches!(
            store.create_if_absent(&lease("b")).await,
            Err(LeaseError::Backend(_))
        ));
        assert!(store.create_if_absent(&lease("c")).await.unwrap());
        assert_eq!(
            memory.op_count(LeaseOp::Create),
            2,
            "the faulted call did not go through"
        );

        let seen = store.get("a").await.unwrap().unwrap();
        let taken = store.take(&seen, "w", false).await.unwrap();
        match store.renew(&taken).await {
            Err(LeaseError::Conflict { key, actual: None }) => assert_eq!(key, "a"),
            other => panic!("expected an injected conflict, got {other:?}"),
        }
        assert_eq!(memory.op_count(LeaseOp::Renew), 0);
        assert_eq!(store.renew(&taken).await.unwrap().lease_counter, 2);
        assert!(matches!(store.list().await, Err(LeaseError::Throttled(_))));
        assert_eq!(store.list().await.unwrap().len(), 2);
        assert_eq!(store.injected(LeaseOp::Create), 1);
        assert_eq!(store.injected(LeaseOp::Renew), 1);
        assert_eq!(store.injected(LeaseOp::List), 1);
        assert_eq!(store.injected(LeaseOp::Take), 0);
        // Errors of the wrapped store come through unchanged.
        assert!(matches!(
            store.renew(&lease("zz")).await,
            Err(LeaseError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn apply_then_fail_writes_and_reports_failure_fatal_faults_do_not_call() {
        let memory = InMemoryLeaseStore::new();
        memory.put_raw(lease("a"));
        let store = FailureLeaseStore::new(
            memory.clone(),
            LeaseFaultPlan::new(0)
                .rule(LeaseOp::Take, LeaseTrigger::Nth(1), LeaseFault::ApplyThenFail)
                .rule(LeaseOp::Renew, LeaseTrigger::Nth(1), LeaseFault::AccessDenied)
                .rule(LeaseOp::Get, LeaseTrigger::Nth(1), LeaseFault::TableNotFound),
        );
        let seen = memory.get("a").await.unwrap().unwrap();
        let err = store.take(&seen, "w", false).await.unwrap_err();
        assert!(
            matches!(err, LeaseError::Backend(_)) && err.is_retryable(),
            "{err:?}"
        );
        let row = memory.get("a").await.unwrap().unwrap();
        assert!(row.is_owned_by("w"), "the take was applied: {row:?}");
        let err = store.renew(&row).await.unwrap_err();
        assert!(
            matches!(
                err,
                LeaseError::Fatal {
                    kind: FatalKind::AccessDenied,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(memory.op_count(LeaseOp::Renew), 0);
        let err = store.get("a").await.unwrap_err();
        assert!(err.is_fatal() && !err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("table not found"), "{err}");
    }

    #[tokio::test]
    async fn every_method_is_hooked() {
        let memory = InMemoryLeaseStore::new();
        memory.put_raw(lease("a"));
        let mut plan = LeaseFaultPlan::new(0);
        for op in [
            LeaseOp::List,
            LeaseOp::Get,
            LeaseOp::Create,
            LeaseOp::Renew,
            LeaseOp::Take,
            LeaseOp::Evict,
            LeaseOp::Checkpoint,
            LeaseOp::CompleteHandoff,
            LeaseOp::MarkChildren,
            LeaseOp::Delete,
        ] {
            plan = plan.rule(op, LeaseTrigger::Always, LeaseFault::Throttle);
        }
        let store = FailureLeaseStore::new(memory.clone(), plan);
        let l = lease("a");
        let throttled = |r: Result<()>| matches!(r, Err(LeaseError::Throttled(_)));
        assert!(throttled(store.list().await.map(drop)));
        assert!(throttled(store.get("a").await.map(drop)));
        assert!(throttled(store.create_if_absent(&l).await.map(drop)));
        assert!(throttled(store.renew(&l).await.map(drop)));
        assert!(throttled(store.take(&l, "w", true).await.map(drop)));
        assert!(throttled(store.evict(&l).await.map(drop)));
        assert!(throttled(
            store
                .update_checkpoint(&l, "w", &ExtendedSequenceNumber::Latest)
                .await
                .map(drop)
        ));
        assert!(throttled(store.complete_handoff(&l).await.map(drop)));
        assert!(throttled(
            store.mark_children(&l, &BTreeSet::new()).await.map(drop)
        ));
        assert!(throttled(store.delete(&l).await));
        assert_eq!(
            memory.write_count() + memory.op_count(LeaseOp::List) + memory.op_count(LeaseOp::Get),
            0
        );
        // Turn the faults off at run time.
        store.set_plan(LeaseFaultPlan::none());
        assert_eq!(store.list().await.unwrap().len(), 1);
        store.delete(&l).await.unwrap();
        assert_eq!(store.injected(LeaseOp::Delete), 1);
    }

    #[tokio::test]
    async fn probability_is_seeded_and_about_right() {
        async fn pattern(seed: u64, p: f64) -> Vec<bool> {
            let store = FailureLeaseStore::new(
                InMemoryLeaseStore::new(),
                LeaseFaultPlan::new(seed).rule(LeaseOp::Get, LeaseTrigger::Probability(p), LeaseFault::Error),
            );
            let mut v = Vec::new();
            for _ in 0..1000 {
                v.push(store.get("a").await.is_err());
            }
            let fired = v.iter().filter(|f| **f).count() as u64;
            assert_eq!(store.injected(LeaseOp::Get), fired);
            assert_eq!(store.inner().op_count(LeaseOp::Get), 1000 - fired);
            v
        }
        let a = pattern(42, 0.2).await;
        let fired = a.iter().filter(|f| **f).count();
        assert!((140..=260).contains(&fired), "{fired} of 1000 at p = 0.2");
        assert_eq!(a, pattern(42, 0.2).await, "same seed, same faults");
        assert_ne!(a, pattern(43, 0.2).await, "another seed, other faults");
        assert!(pattern(7, 0.0).await.iter().all(|f| !f));
        assert!(pattern(7, 1.0).await.iter().all(|f| *f));
    }

    #[tokio::test]
    async fn every_nth_and_delays() {
        tokio::time::pause();
        let store = FailureLeaseStore::new(
            InMemoryLeaseStore::new(),
            LeaseFaultPlan::new(0)
                .rule(LeaseOp::Get, LeaseTrigger::EveryNth(2), LeaseFault::Throttle)
                .rule(
                    LeaseOp::List,
                    LeaseTrigger::Always,
                    LeaseFault::Delay(Duration::from_secs(1)),
                ),
        );
        let mut failed = Vec::new();
        for _ in 0..6 {
            failed.push(store.get("a").await.is_err());
        }
        assert_eq!(failed, [false, true, false, true, false, true]);
        let start = tokio::time::Instant::now();
        assert!(store.list().await.unwrap().is_empty());
        assert!(start.elapsed() >= Duration::from_secs(1) && start.elapsed() < Duration::from_millis(1010));
        assert_eq!(
            store.inner().op_count(LeaseOp::List),
            1,
            "a delayed call goes through"
        );
        assert_eq!(store.injected(LeaseOp::List), 1);
    }
}
