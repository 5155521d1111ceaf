//! gRPC's exponential backoff with jitter (`connection-backoff.md`): how long to wait
//! between failed attempts. Every retry loop of meshless uses it: a subchannel between
//! connection attempts, and the discovery backends (DNS re-resolution after an error, the
//! Kubernetes list/watch, the lookup of `static:` host names) between failed attempts.
//!
//! ```
//! use std::time::Duration;
//! use meshless_discovery::backoff::{Backoff, BackoffConfig};
//!
//! let mut backoff = Backoff::new(BackoffConfig::default().max_delay(Duration::from_secs(30)));
//! let first = backoff.next_delay(); // 1 s ± 20 %
//! assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
//! backoff.reset(); // after a success
//! ```

use std::time::Duration;

/// Connection backoff, as in gRPC's `connection-backoff.md`: the first retry waits
/// `base_delay`, each further one `multiplier` times longer, up to `max_delay`, each spread
/// by ±`jitter`. A connection that became ready resets the sequence.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// Delay after the first failure. Default: 1 s (gRPC `INITIAL_BACKOFF`).
    pub base_delay: Duration,
    /// Growth factor per failure. Default: 1.6 (gRPC `MULTIPLIER`).
    pub multiplier: f64,
    /// Relative random spread, 0.0..=1.0. Default: 0.2 (gRPC `JITTER`).
    pub jitter: f64,
    /// Longest delay. Default: 120 s (gRPC `MAX_BACKOFF`).
    pub max_delay: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_delay: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max_delay: Duration::from_secs(120),
        }
    }
}

impl BackoffConfig {
    /// What Consul's and etcd's registrars retry a lost registration with: from 200 ms up
    /// to 30 s, so a registry that comes back sees the instance again within seconds.
    #[cfg(any(feature = "consul", feature = "etcd"))]
    pub(crate) fn registrar() -> Self {
        BackoffConfig::default()
            .base_delay(Duration::from_millis(200))
            .max_delay(Duration::from_secs(30))
    }

    /// Sets [`base_delay`](Self::base_delay).
    #[must_use]
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Sets [`multiplier`](Self::multiplier) (values below 1.0 are taken as 1.0).
    #[must_use]
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }

    /// Sets [`jitter`](Self::jitter) (clamped to 0.0..=1.0).
    #[must_use]
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = j;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    #[must_use]
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
}

/// Multipliers above this are taken as this: the delay reaches the cap in a step or two
/// anyway, and an infinite multiplier must not overflow `Duration`.
const MAX_MULTIPLIER: f64 = 1e6;

/// `d * factor`, saturating at `Duration::MAX` (zero for a negative or NaN product).
/// `Duration::mul_f64` panics when the product does not fit, which a configured delay near
/// `Duration::MAX` times any factor above 1 reaches.
fn scale(d: Duration, factor: f64) -> Duration {
    let secs = d.as_secs_f64() * factor;
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// The running state of one backoff sequence of a [`BackoffConfig`].
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    /// The un-jittered delay the next failure will wait.
    next: Duration,
}

impl Backoff {
    /// A sequence whose first delay is `config.base_delay`.
    pub fn new(config: BackoffConfig) -> Self {
        let next = config.base_delay;
        Backoff { config, next }
    }

    /// Starts over, after a success.
    pub fn reset(&mut self) {
        self.next = self.config.base_delay;
    }

    /// The configuration of this sequence.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// The delay before the next attempt, with `unit` a uniform sample in [-1, 1] (so tests
    /// can pin the jitter); [`next_delay`](Self::next_delay) draws it at random.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let cur = self.next.min(self.config.max_delay);
        let mult = if self.config.multiplier.is_nan() {
            1.0
        } else {
            self.config.multiplier.clamp(1.0, MAX_MULTIPLIER)
        };
        self.next = scale(cur, mult).min(self.config.max_delay);
        // A NaN jitter would make every delay NaN; it is taken as no jitter.
        let jitter = if self.config.jitter.is_nan() || unit.is_nan() {
            0.0
        } else {
            self.config.jitter.clamp(0.0, 1.0) * unit.clamp(-1.0, 1.0)
        };
        scale(cur, 1.0 + jitter)
    }

    /// The delay before the next attempt: the current delay spread by ±`jitter`; the one
    /// after it is `multiplier` times longer, up to `max_delay`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random_range(-1.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_sequence_and_cap() {
        let mut b = Backoff::new(BackoffConfig::default());
        let secs: Vec<f64> = (0..14)
            .map(|_| b.next_delay_with(0.0).as_secs_f64())
            .collect();
        assert_eq!(secs[0], 1.0);
        assert!((secs[1] - 1.6).abs() < 1e-9);
        assert!((secs[2] - 2.56).abs() < 1e-9);
        assert_eq!(*secs.last().unwrap(), 120.0);
        b.reset();
        assert_eq!(b.next_delay_with(0.0), Duration::from_secs(1));
    }

    #[test]
    fn nonsense_settings_do_not_panic() {
        let cfg = BackoffConfig::default()
            .jitter(f64::NAN)
            .multiplier(f64::INFINITY)
            .base_delay(Duration::from_secs(1));
        let mut b = Backoff::new(cfg);
        for _ in 0..5 {
            assert!(b.next_delay() <= Duration::from_secs(120));
        }
        let mut b = Backoff::new(BackoffConfig::default().multiplier(f64::NAN));
        assert_eq!(b.next_delay_with(0.0), Duration::from_secs(1));
        assert_eq!(b.next_delay_with(0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_bounds() {
        let mut b = Backoff::new(BackoffConfig::default());
        assert_eq!(b.next_delay_with(1.0), Duration::from_millis(1200));
        b.reset();
        assert_eq!(b.next_delay_with(-1.0), Duration::from_millis(800));
    }

    /// Every delay of `config`'s sequence for these samples, after `steps` failures each.
    fn delays(config: BackoffConfig, steps: usize) -> Vec<Duration> {
        let mut out = Vec::new();
        for unit in [
            -1.0,
            -0.5,
            0.0,
            0.5,
            1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut b = Backoff::new(config.clone());
            for _ in 0..steps {
                out.push(b.next_delay_with(unit));
            }
            b.reset();
            out.push(b.next_delay_with(unit));
        }
        out
    }

    #[test]
    fn no_configured_value_panics() {
        let near_max = Duration::MAX - Duration::from_nanos(1);
        let durations = [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_secs(1),
            Duration::from_secs(u64::MAX / 2),
            near_max,
            Duration::MAX,
        ];
        let factors = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.6,
            -0.0,
            0.0,
            0.5,
            1.0,
            1.6,
            f64::MAX,
        ];
        for base in durations {
            for max in durations {
                for multiplier in factors {
                    for jitter in factors {
                        let config = BackoffConfig::default()
                            .base_delay(base)
                            .max_delay(max)
                            .multiplier(multiplier)
                            .jitter(jitter);
                        // Jitter spreads a delay by at most its own length above the cap
                        // (compared in f64: the arithmetic is, and rounds near the top).
                        let bound = 2.0 * max.as_secs_f64();
                        for d in delays(config.clone(), 4) {
                            assert!(
                                d.as_secs_f64() <= bound,
                                "{d:?} > twice {max:?} for {config:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_base_near_duration_max_saturates() {
        let near_max = Duration::MAX - Duration::from_nanos(1);
        let mut b = Backoff::new(
            BackoffConfig::default()
                .base_delay(near_max)
                .max_delay(Duration::MAX)
                .jitter(1.0),
        );
        assert_eq!(b.next_delay_with(1.0), Duration::MAX);
        assert_eq!(b.next_delay_with(1.0), Duration::MAX);
        // Below the cap the delay is still spread: half of it, not zero or the cap.
        let half = b.next_delay_with(-0.5);
        assert!(
            half > Duration::MAX / 3 && half < Duration::MAX / 3 * 2,
            "{half:?}"
        );
        // The default cap still applies to a huge base.
        let mut b = Backoff::new(BackoffConfig::default().base_delay(Duration::MAX));
        assert_eq!(b.next_delay_with(0.0), Duration::from_secs(120));
    }

    #[test]
    fn multipliers_below_one_or_nan_keep_the_delay_and_infinite_ones_jump_to_the_cap() {
        for m in [f64::NAN, f64::NEG_INFINITY, -1.6, -0.0, 0.0, 0.5, 1.0] {
            let mut b = Backoff::new(BackoffConfig::default().multiplier(m));
            for _ in 0..3 {
                assert_eq!(b.next_delay_with(0.0), Duration::from_secs(1), "{m}");
            }
        }
        for m in [f64::INFINITY, f64::MAX] {
            let mut b = Backoff::new(BackoffConfig::default().multiplier(m));
            assert_eq!(b.next_delay_with(0.0), Duration::from_secs(1), "{m}");
            assert_eq!(b.next_delay_with(0.0), Duration::from_secs(120), "{m}");
        }
    }

    #[test]
    fn jitter_is_clamped_to_zero_one() {
        let second = |jitter: f64, unit: f64| {
            Backoff::new(BackoffConfig::default().jitter(jitter)).next_delay_with(unit)
        };
        assert_eq!(second(5.0, 1.0), Duration::from_secs(2));
        assert_eq!(second(f64::INFINITY, -1.0), Duration::ZERO);
        for j in [f64::NAN, -0.3, f64::NEG_INFINITY] {
            assert_eq!(second(j, 1.0), Duration::from_secs(1), "{j}");
        }
        // A NaN or infinite sample is harmless too.
        assert_eq!(second(0.2, f64::NAN), Duration::from_secs(1));
        assert_eq!(second(0.2, f64::INFINITY), Duration::from_millis(1200));
    }

    #[test]
    fn a_cap_below_the_base_wins() {
        let mut b = Backoff::new(
            BackoffConfig::default()
                .base_delay(Duration::from_secs(10))
                .max_delay(Duration::from_secs(2)),
        );
        for _ in 0..3 {
            assert_eq!(b.next_delay_with(0.0), Duration::from_secs(2));
        }
        let mut b = Backoff::new(BackoffConfig::default().max_delay(Duration::ZERO));
        assert_eq!(b.next_delay_with(1.0), Duration::ZERO);
    }
}
