//! Seeds for the jitter of the runtime's backoffs.
//!
//! Every retry loop of the runtime (reads, checkpoints, processor retries) backs off with
//! jitter, so that workers and shards that failed together do not retry together. By default
//! the seeds are random, per process. A test that drives the runtime in paused Tokio time can
//! fix them with [`set_seed`] so that a run replays exactly (the chaos test does, with its own
//! seed).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The generator's state; initialised randomly on first use unless [`set_seed`] came first.
static STATE: OnceLock<AtomicU64> = OnceLock::new();

fn state() -> &'static AtomicU64 {
    STATE.get_or_init(|| AtomicU64::new(RandomState::new().hash_one("kcl-jitter")))
}

/// Makes every jitter seed drawn from now on a function of `seed` and of the order of the
/// draws: with the rest of a run deterministic (paused time, a seeded runtime), the run replays.
pub fn set_seed(seed: u64) {
    state().store(seed, Ordering::SeqCst);
}

/// The next seed (SplitMix64 over a shared counter).
pub(crate) fn next_seed() -> u64 {
    let mut z = state()
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_from_draw_to_draw() {
        let a = next_seed();
        let b = next_seed();
        assert_ne!(a, b);
    }
}
