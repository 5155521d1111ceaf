//! gRPC connection backoff: how long a subchannel waits between failed connection attempts.

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

/// The running state of one backoff sequence.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    /// The un-jittered delay the next failure will wait.
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        let next = config.base_delay;
        Backoff { config, next }
    }

    /// Starts over, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.config.base_delay;
    }

    /// The delay before the next attempt, with `unit` a uniform sample in [-1, 1].
    pub(crate) fn next_delay_with(&mut self, unit: f64) -> Duration {
        let cur = self.next.min(self.config.max_delay);
        let mult = if self.config.multiplier.is_nan() {
            1.0
        } else {
            self.config.multiplier.clamp(1.0, MAX_MULTIPLIER)
        };
        self.next = cur.mul_f64(mult).min(self.config.max_delay);
        // NaN settings must not reach `mul_f64`, which panics on them.
        let jitter = if self.config.jitter.is_nan() || unit.is_nan() {
            0.0
        } else {
            self.config.jitter.clamp(0.0, 1.0) * unit.clamp(-1.0, 1.0)
        };
        cur.mul_f64(1.0 + jitter)
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
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
}
