//! `random`: a uniformly (or weight-proportionally) random ready endpoint.

use std::sync::Arc;

use crate::config::config_setters;
use crate::rng::{PickRng, below};
use crate::{Balancer, Pick, PickRequest, Picker, SubchannelView, ready_weighted};

/// The scale of an alias-table threshold: `2^32` stands for probability 1, compared with
/// 32 random bits.
const ALIAS_ONE: u64 = 1 << 32;

/// Configuration of [`Random`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RandomConfig {
    /// Choose endpoints in proportion to their weight instead of uniformly. Default `true`
    /// (with every weight at its default of 1 the two are the same).
    pub weighted: bool,
    /// Seeds the picker's random numbers, for reproducible tests and benchmarks. Default
    /// `None`: a per-thread generator seeded from the OS.
    pub seed: Option<u64>,
}

impl Default for RandomConfig {
    fn default() -> Self {
        RandomConfig {
            weighted: true,
            seed: None,
        }
    }
}

config_setters!(RandomConfig {
    weighted: bool,
} optional {
    seed: u64,
});

/// Sends each request to a random ready endpoint, each with probability proportional to
/// its weight (Vose's alias method: one random number and one table lookup per pick,
/// whatever the number of endpoints), or uniformly when unweighted. Endpoints of weight 0
/// are used only when all ready ones are.
#[derive(Debug, Default)]
pub struct Random {
    config: RandomConfig,
}

impl Random {
    /// A random policy with `config`.
    pub fn new(config: RandomConfig) -> Self {
        Random { config }
    }
}

impl Balancer for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let ready = ready_weighted(subchannels);
        let uniform = !self.config.weighted || ready.windows(2).all(|w| w[0].1 == w[1].1);
        let alias = if uniform {
            Vec::new()
        } else {
            alias_table(&ready.iter().map(|&(_, w)| w).collect::<Vec<_>>())
        };
        Arc::new(RandomPicker {
            ready: ready.into_iter().map(|(i, _)| i).collect(),
            alias,
            rng: PickRng::new(self.config.seed),
        })
    }
}

/// Vose's alias table for `weights`: slot `i` keeps itself when 32 random bits fall below
/// its threshold (scaled so [`ALIAS_ONE`] is certainty) and otherwise yields its alias.
fn alias_table(weights: &[u32]) -> Vec<(u64, u32)> {
    let n = weights.len();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let mut p: Vec<f64> = weights
        .iter()
        .map(|&w| f64::from(w) * n as f64 / total)
        .collect();
    let mut table: Vec<(u64, u32)> = (0..n).map(|i| (ALIAS_ONE, i as u32)).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| p[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        table[s] = ((p[s] * ALIAS_ONE as f64) as u64, l as u32);
        p[l] -= 1.0 - p[s];
        if p[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // Whatever is left is 1 up to rounding: it keeps itself (already set).
    table
}

struct RandomPicker {
    ready: Vec<usize>,
    /// Empty when the choice is uniform.
    alias: Vec<(u64, u32)>,
    rng: PickRng,
}

impl Picker for RandomPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        if self.ready.is_empty() {
            return Pick::Queue;
        }
        let r = self.rng.next_u64();
        // The slot comes from the high bits, the coin from the low 32: independent enough
        // while there are far fewer than 2^32 endpoints.
        let slot = below(r, self.ready.len());
        let Some(&(threshold, alias)) = self.alias.get(slot) else {
            return Pick::Ready(self.ready[slot]);
        };
        let keep = (r & (ALIAS_ONE - 1)) < threshold;
        Pick::Ready(self.ready[if keep { slot } else { alias as usize }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectivityState::*;
    use crate::test_util::{counts, five_sigma_samples, pick_n, subchannels, weighted};

    const TOL: f64 = 0.05;

    fn assert_shares(weights: &[u32], config: RandomConfig, expect: &[f64]) {
        let subs = weighted(weights);
        let picker = Random::new(config).build(&subs);
        let pmin = expect
            .iter()
            .copied()
            .filter(|&p| p > 0.0)
            .fold(1.0, f64::min);
        let n = five_sigma_samples(pmin, TOL * pmin);
        let c = counts(&pick_n(&*picker, n), weights.len());
        for (i, &p) in expect.iter().enumerate() {
            let got = c[i] as f64 / n as f64;
            assert!(
                (got - p).abs() <= TOL * p,
                "endpoint {i}: {got} vs {p} ({c:?})"
            );
        }
    }

    #[test]
    fn weighted_shares_within_5_percent() {
        assert_shares(
            &[5, 3, 1, 1],
            RandomConfig::default().seed(1),
            &[0.5, 0.3, 0.1, 0.1],
        );
        // A huge weight next to a small one.
        assert_shares(
            &[u32::MAX / 2, u32::MAX / 2, 0],
            RandomConfig::default().seed(2),
            &[0.5, 0.5, 0.0],
        );
    }

    #[test]
    fn unweighted_is_uniform_over_ready() {
        assert_shares(
            &[9, 1, 1],
            RandomConfig::default().weighted(false).seed(3),
            &[1.0 / 3.0; 3],
        );
        let subs = subchannels(&[Idle, Ready, TransientFailure, Ready]);
        let c = counts(&pick_n(&*Random::default().build(&subs), 1000), 4);
        assert_eq!((c[0], c[2]), (0, 0));
    }
}
