//! The pick path's random numbers: a per-thread SplitMix64, or a shared seeded one for tests.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64's increment, the golden ratio in 64-bit fixed point (Steele, Lea and Flood,
/// "Fast splittable pseudorandom number generators", OOPSLA 2014).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

thread_local! {
    /// This thread's SplitMix64 state; 0 means "not seeded yet".
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// SplitMix64's output function: a bijective mix of a Weyl-sequence value.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform `x` onto `0..n` without a division (Lemire, "Fast random integer
/// generation in an interval", 2019); the bias is below `n / 2^64`.
#[inline]
pub(crate) fn below(x: u64, n: usize) -> usize {
    ((u128::from(x) * n as u128) >> 64) as usize
}

/// A picker's source of randomness. Unseeded (the default) it uses a per-thread state, so
/// threads picking at once share no cache line; seeded it steps one shared atomic, so a
/// single-threaded test sees the same sequence on every run.
#[derive(Debug)]
pub(crate) struct PickRng {
    seeded: Option<Padded<AtomicU64>>,
}

/// Keeps a hot atomic on its own cache line.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl PickRng {
    /// A per-thread generator when `seed` is `None`, else a reproducible one.
    pub(crate) fn new(seed: Option<u64>) -> Self {
        PickRng {
            seeded: seed.map(|s| Padded(AtomicU64::new(s))),
        }
    }

    /// 64 uniform bits.
    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        match &self.seeded {
            Some(state) => mix64(
                state
                    .0
                    .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
                    .wrapping_add(GOLDEN_GAMMA),
            ),
            None => STATE.with(|s| {
                let mut x = s.get();
                if x == 0 {
                    // First use on this thread: seed from the OS-backed generator once.
                    x = rand::random::<u64>() | 1;
                }
                x = x.wrapping_add(GOLDEN_GAMMA);
                s.set(x);
                mix64(x)
            }),
        }
    }

    /// A uniform index in `0..n` (`n` > 0).
    #[inline]
    pub(crate) fn below(&self, n: usize) -> usize {
        below(self.next_u64(), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_in_range() {
        let a = PickRng::new(Some(7));
        let b = PickRng::new(Some(7));
        for _ in 0..1000 {
            let (x, y) = (a.below(10), b.below(10));
            assert_eq!(x, y);
            assert!(x < 10);
        }
        let t = PickRng::new(None);
        assert!((0..1000).all(|_| t.below(3) < 3));
    }
}
