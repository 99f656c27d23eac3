//! Faults as data: the engine behind [`crate::FailureLeaseStore`] and kcl-core's
//! `FailureBackend`, in the style of mountpoint-s3's `failure_client.rs`.
//!
//! A [`Plan`] is a seed and a list of [`Rule`]s (which operation, when, what fault), so a test
//! states exactly what goes wrong and a failing run can be replayed with the same seed. An
//! [`Injector`] holds the plan (replaceable while in use), numbers the calls per operation and
//! decides, for each call, the delay to add and the failure to return.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

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

/// A kind of fault: either a delay before the call goes through, or a failure instead of it.
pub trait FaultKind: Clone {
    /// The delay, if this fault only delays the call.
    fn delay(&self) -> Option<Duration>;
}

/// One rule of a [`Plan`].
#[derive(Clone, Debug, PartialEq)]
pub struct Rule<Op, F> {
    /// The operation the rule applies to.
    pub op: Op,
    /// When it fires.
    pub trigger: Trigger,
    /// What it injects.
    pub fault: F,
}

/// Which faults to inject: a seed for the probabilistic triggers and a list of rules.
///
/// On each call every rule for the operation is evaluated in order. The delays of all firing
/// delay rules add up; the first firing failing rule decides the error, returned after the
/// delays. A call no failing rule fires on goes through.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<Op, F> {
    /// The seed of the generator behind [`Trigger::Probability`].
    pub seed: u64,
    /// The rules, evaluated in order.
    pub rules: Vec<Rule<Op, F>>,
}

impl<Op, F> Default for Plan<Op, F> {
    fn default() -> Self {
        Self {
            seed: 0,
            rules: Vec::new(),
        }
    }
}

impl<Op, F> Plan<Op, F> {
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
    pub fn rule(mut self, op: Op, trigger: Trigger, fault: F) -> Self {
        self.rules.push(Rule { op, trigger, fault });
        self
    }
}

struct State<Op, F> {
    plan: Plan<Op, F>,
    rng: SplitMix64,
    /// Calls per operation since the plan was set.
    calls: HashMap<Op, u64>,
    /// Faults injected per operation, over every plan.
    injected: HashMap<Op, u64>,
}

/// Applies a [`Plan`] to calls. A std mutex: each decision is a short synchronous section.
pub struct Injector<Op, F> {
    state: Mutex<State<Op, F>>,
}

impl<Op: std::fmt::Debug, F: std::fmt::Debug> std::fmt::Debug for Injector<Op, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("plan", &self.lock().plan)
            .finish()
    }
}

impl<Op, F> Injector<Op, F> {
    fn lock(&self) -> MutexGuard<'_, State<Op, F>> {
        // Plain counters and a plan: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<Op: Copy + Eq + Hash, F: FaultKind> Injector<Op, F> {
    /// An injector applying `plan`.
    pub fn new(plan: Plan<Op, F>) -> Self {
        let rng = SplitMix64(plan.seed);
        Self {
            state: Mutex::new(State {
                plan,
                rng,
                calls: HashMap::new(),
                injected: HashMap::new(),
            }),
        }
    }

    /// Replaces the plan. The generator is reseeded and the per-operation call numbers restart
    /// from zero; the counts of injected faults are kept.
    pub fn set_plan(&self, plan: Plan<Op, F>) {
        let mut state = self.lock();
        state.rng = SplitMix64(plan.seed);
        state.plan = plan;
        state.calls.clear();
    }

    /// The current plan.
    pub fn plan(&self) -> Plan<Op, F>
    where
        Op: Clone,
    {
        let state = self.lock();
        Plan {
            seed: state.plan.seed,
            rules: state.plan.rules.clone(),
        }
    }

    /// How many faults (delays included) were injected into calls of `op`.
    pub fn injected(&self, op: Op) -> u64 {
        self.lock().injected.get(&op).copied().unwrap_or(0)
    }

    /// Decides the faults of one call of `op`: the total delay, and the failure, if any.
    pub fn decide(&self, op: Op) -> (Duration, Option<F>) {
        let mut guard = self.lock();
        let State {
            plan,
            rng,
            calls,
            injected,
        } = &mut *guard;
        let n = {
            let c = calls.entry(op).or_insert(0);
            *c += 1;
            *c
        };
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
            match rule.fault.delay() {
                Some(d) => delay = delay.saturating_add(d),
                None if failure.is_none() => failure = Some(rule.fault.clone()),
                None => continue,
            }
            *injected.entry(op).or_insert(0) += 1;
        }
        (delay, failure)
    }

    /// Sleeps for the injected delay of one call of `op`, then returns the failure, if any.
    pub async fn apply(&self, op: Op) -> Option<F> {
        let (delay, failure) = self.decide(op);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        failure
    }
}

/// SplitMix64: a tiny, fast, seedable generator, plenty for deciding faults.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
