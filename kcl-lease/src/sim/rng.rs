//! A small seeded generator (splitmix64) and a stable hash of call identities, so that a
//! simulated run depends on its seed alone (no dependency, no `RandomState`).
//!
//! Two ways to draw: a [`SimRng`] stream for the scenario (drawn in a fixed order by the
//! driver), and [`SimRng::for_call`], a generator keyed by *what* is being decided (a seed
//! and the parts naming one store call). Keyed draws make a store call's fault independent
//! of the order in which unrelated calls happened at the same simulated instant.

/// A splitmix64 generator: 64 bits of state, good enough statistics for a simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRng {
    state: u64,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finaliser: a bijective mix of 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one decision, keyed by `seed` and the words and strings naming it.
    pub fn for_call(seed: u64, words: &[u64], strings: &[&str]) -> Self {
        let mut h = mix64(seed ^ GOLDEN);
        for w in words {
            h = mix64(h ^ mix64(w.wrapping_add(GOLDEN)));
        }
        for s in strings {
            // Length first, so that ("ab", "c") and ("a", "bc") differ.
            h = mix64(h ^ s.len() as u64);
            for b in s.bytes() {
                h = mix64(h ^ u64::from(b));
            }
        }
        Self::new(h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // The modulo bias is below 2^-40 for the small ranges used here.
        self.next_u64() % n
    }

    /// A number in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// One element of `items` (`None` if empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_rng_is_seeded_and_keyed_draws_are_stable() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = SimRng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = SimRng::new(7);
        assert_eq!(a, (0..4).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(SimRng::new(8).next_u64(), a[0]);
        let k = |s: &str| SimRng::for_call(1, &[2, 3], &[s, "x"]).next_u64();
        assert_eq!(k("w1"), k("w1"));
        assert_ne!(k("w1"), k("w2"));
        assert_ne!(
            SimRng::for_call(1, &[], &["ab", "c"]).next_u64(),
            SimRng::for_call(1, &[], &["a", "bc"]).next_u64()
        );
        let mut r = SimRng::new(1);
        for _ in 0..1000 {
            let x = r.range(3, 5);
            assert!((3..=5).contains(&x));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
