//! Best of k random distinct candidates: the core of `p2c_ewma` and `least_request`.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Pick;
use crate::rng::{Padded, PickRng, below, mix64};

/// The fewest candidates compared per pick (gRPC A48 `choice_count` minimum).
pub const MIN_CHOICES: u32 = 2;
/// The most candidates compared per pick (gRPC A48 `choice_count` maximum).
pub const MAX_CHOICES: u32 = 10;

/// `choice_count` clamped to [`MIN_CHOICES`, `MAX_CHOICES`], as gRPC A48 does.
pub(crate) fn clamp_choices(choice_count: u32) -> usize {
    choice_count.clamp(MIN_CHOICES, MAX_CHOICES) as usize
}

/// The choice step of a picker: best of `choices` candidates, one of them optionally the
/// previous winner ("power of two choices with memory", Mitzenmacher, Prabhakar and Shah,
/// "Load balancing with memory", FOCS 2002).
#[derive(Debug)]
pub(crate) struct BestOf {
    choices: usize,
    rng: PickRng,
    /// The previous pick's winner when memory is on. Written only when the winner
    /// changes, so threads that keep picking the same endpoint read the cache line without
    /// bouncing it.
    last: Option<Padded<AtomicUsize>>,
}

impl BestOf {
    /// `choice_count` clamped as [`clamp_choices`]; `memory` remembers the last winner;
    /// `seed` as [`PickRng::new`].
    pub(crate) fn new(choice_count: u32, memory: bool, seed: Option<u64>) -> Self {
        BestOf {
            choices: clamp_choices(choice_count),
            rng: PickRng::new(seed),
            last: memory.then(|| Padded(AtomicUsize::new(0))),
        }
    }

    /// The lowest-`cost` index of `0..n` among the candidates (see [`best_of_with`]).
    #[inline]
    pub(crate) fn pick(&self, n: usize, cost: impl Fn(usize) -> f64) -> usize {
        let remembered = self.last.as_ref().map(|l| l.0.load(Ordering::Relaxed));
        let best = best_of_with(&self.rng, n, self.choices, remembered, cost);
        if let Some(last) = &self.last
            && remembered != Some(best)
        {
            last.0.store(best, Ordering::Relaxed);
        }
        best
    }

    /// The pick among `entries`, each an endpoint of subchannel index `index(entry)`: none
    /// queues, one is taken without a draw, more are compared by `cost` (see
    /// [`pick`](Self::pick)).
    #[inline]
    pub(crate) fn pick_entry<T>(
        &self,
        entries: &[T],
        index: impl Fn(&T) -> usize,
        cost: impl Fn(&T) -> f64,
    ) -> Pick {
        match entries {
            [] => Pick::Queue,
            [only] => Pick::Ready(index(only)),
            _ => Pick::Ready(index(
                &entries[self.pick(entries.len(), |i| cost(&entries[i]))],
            )),
        }
    }
}

/// Draws `k` distinct indices out of `0..n` (Floyd's algorithm: exactly `k` draws, no
/// rejection loop) and returns the one with the lowest `cost`, ties broken uniformly at
/// random. With `remembered` (an index below `n`), that one is a candidate and only `k − 1`
/// others are drawn. When `n <= k` every index is a candidate. No allocation: the
/// candidates live in a fixed array of [`MAX_CHOICES`].
#[inline]
pub(crate) fn best_of_with(
    rng: &PickRng,
    n: usize,
    k: usize,
    remembered: Option<usize>,
    cost: impl Fn(usize) -> f64,
) -> usize {
    debug_assert!(n > 0 && k <= MAX_CHOICES as usize);
    let mut bits = rng.next_u64();
    if n <= k {
        return best_in(0..n, &mut bits, cost);
    }
    let mut chosen = [0usize; MAX_CHOICES as usize];
    let mut len = 0;
    // With a remembered candidate, draw the others out of the `n − 1` remaining indices and
    // map them past it afterwards (a monotone map, so they stay distinct).
    let (pool, first) = match remembered {
        Some(r) if r < n => {
            chosen[0] = r;
            len = 1;
            (n - 1, 1)
        }
        _ => (n, 0),
    };
    for j in pool - (k - first)..pool {
        bits = mix64(bits);
        let t = below(bits, j + 1);
        let pick = if chosen[first..len].contains(&t) {
            j
        } else {
            t
        };
        chosen[len] = pick;
        len += 1;
    }
    if first == 1 {
        let r = chosen[0];
        for c in &mut chosen[1..len] {
            if *c >= r {
                *c += 1;
            }
        }
    }
    best_in(chosen[..len].iter().copied(), &mut bits, cost)
}

/// The lowest-cost index of `candidates`, ties broken by reservoir sampling so every tied
/// candidate is equally likely whatever the order the candidates came in.
#[inline]
fn best_in(
    candidates: impl Iterator<Item = usize>,
    bits: &mut u64,
    cost: impl Fn(usize) -> f64,
) -> usize {
    let mut best = usize::MAX;
    let mut best_cost = f64::INFINITY;
    let mut ties = 0usize;
    for i in candidates {
        let c = cost(i);
        if best == usize::MAX || c < best_cost {
            best = i;
            best_cost = c;
            ties = 1;
        } else if c == best_cost {
            ties += 1;
            *bits = mix64(*bits);
            if below(*bits, ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_distinct_and_uniform() {
        let rng = PickRng::new(Some(1));
        // With equal costs every index must come out about equally often, including the
        // last one, which Floyd's algorithm only ever yields as the second candidate.
        let n = 5;
        let mut counts = [0u32; 5];
        let draws = 50_000;
        for _ in 0..draws {
            counts[best_of_with(&rng, n, 2, None, |_| 1.0)] += 1;
        }
        let mean = f64::from(draws) / n as f64;
        for c in counts {
            assert!((f64::from(c) - mean).abs() < 0.05 * mean, "{counts:?}");
        }
        // The worst of n never wins when two distinct candidates are compared.
        for _ in 0..1000 {
            assert_ne!(best_of_with(&rng, n, 2, None, |i| -(i as f64)), 0);
        }
    }

    #[test]
    fn clamps_like_a48() {
        assert_eq!(clamp_choices(0), 2);
        assert_eq!(clamp_choices(3), 3);
        assert_eq!(clamp_choices(100), 10);
    }

    #[test]
    fn remembered_is_always_a_candidate_and_the_others_are_uniform() {
        let rng = PickRng::new(Some(2));
        let n = 5;
        // Index 3 is remembered and the cheapest: it always wins.
        for _ in 0..1000 {
            assert_eq!(
                best_of_with(&rng, n, 2, Some(3), |i| (i != 3) as u8 as f64),
                3
            );
        }
        // Remembered index 3 the dearest: the winner is the random other, uniform over the
        // remaining four and never 3 itself.
        let mut counts = [0u32; 5];
        let draws = 40_000;
        for _ in 0..draws {
            counts[best_of_with(&rng, n, 2, Some(3), |i| (i == 3) as u8 as f64)] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        let mean = f64::from(draws) / 4.0;
        for (i, &c) in counts.iter().enumerate().filter(|&(i, _)| i != 3) {
            assert!((f64::from(c) - mean).abs() < 0.05 * mean, "{i}: {counts:?}");
        }
    }
}
