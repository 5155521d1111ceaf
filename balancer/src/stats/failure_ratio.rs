//! Outcome counts and the decaying failure ratio.

use std::sync::atomic::Ordering;

use super::EndpointStats;
use super::peak_ewma::exp_neg;

/// The weight of one call's outcome in the failure ratio: 0.1, a memory of about ten calls.
/// Large enough that a run of failures dominates within a few calls (after `k` failures
/// the ratio is `1 − 0.9^k`: 0.65 after 10), small enough that one failure among many
/// successes moves it only a little.
pub const FAILURE_RATIO_WEIGHT: f64 = 0.1;

/// A failure ratio below this is stored as exactly 0, so an endpoint that failed once long
/// ago returns to the fast path of a healthy one (see [`EndpointStats::failure_ratio`]).
pub(super) const FAILURE_RATIO_FLOOR: f64 = 1e-6;

impl EndpointStats {
    /// Calls completed successfully.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Calls that failed in a way that counts against the endpoint.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The share of recent calls that failed, in [0, 1], decayed toward 0 for the time since
    /// the last completion on this endpoint (by the shared clock, as
    /// [`load_cost`](Self::load_cost)). Exactly 0 for an endpoint that has not failed
    /// lately; then it costs one atomic load.
    #[inline]
    pub fn failure_ratio(&self) -> f64 {
        let f = f64::from_bits(self.failure_bits.load(Ordering::Relaxed));
        if f == 0.0 {
            return 0.0;
        }
        let elapsed = self
            .clock
            .now_nanos()
            .saturating_sub(self.failure_stamp_nanos.load(Ordering::Relaxed));
        f * exp_neg(elapsed as f64 * self.inv_decay_nanos())
    }

    /// Folds one call's outcome into the failure ratio: decay for the time since the last
    /// update, then `ratio · (1 − w) + w · failed`.
    pub(super) fn record_outcome(&self, ok: bool, now_nanos: u64) {
        let mut cur = self.failure_bits.load(Ordering::Relaxed);
        if ok && cur == 0 {
            // Healthy and staying so: nothing to forget, and no shared write.
            return;
        }
        let prev_stamp = self.failure_stamp_nanos.swap(now_nanos, Ordering::Relaxed);
        let elapsed = now_nanos.saturating_sub(prev_stamp) as f64;
        let w = exp_neg(elapsed * self.inv_decay_nanos());
        let add = if ok { 0.0 } else { FAILURE_RATIO_WEIGHT };
        loop {
            let f = f64::from_bits(cur) * w * (1.0 - FAILURE_RATIO_WEIGHT) + add;
            let next = if f < FAILURE_RATIO_FLOOR {
                0.0
            } else {
                f.min(1.0)
            };
            match self.failure_bits.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::stats::LoadClock;

    #[tokio::test(start_paused = true)]
    async fn failure_ratio_rises_falls_and_decays() {
        let clock = Arc::new(LoadClock::new());
        let tau = Duration::from_secs(10);
        let s = EndpointStats::new(tau, Duration::ZERO).with_clock(clock.clone());
        let other = EndpointStats::new(tau, Duration::ZERO).with_clock(clock);
        // Successes on a healthy endpoint leave it at exactly 0.
        s.finish(s.start(), true);
        assert_eq!(s.failure_ratio(), 0.0);
        // Three failures at the same instant: 1 − 0.9³.
        for _ in 0..3 {
            s.finish(s.start(), false);
        }
        let three = 1.0 - 0.9f64.powi(3);
        assert!(
            (s.failure_ratio() - three).abs() < 1e-12,
            "{}",
            s.failure_ratio()
        );
        // A success scales it by 0.9.
        s.finish(s.start(), true);
        assert!((s.failure_ratio() - three * 0.9).abs() < 1e-12);
        // One τ later, seen through another endpoint's completion: e^-1 of that.
        tokio::time::advance(tau).await;
        assert!((s.failure_ratio() - three * 0.9).abs() < 1e-12);
        other.finish(other.start(), true);
        let decayed = three * 0.9 * (-1.0f64).exp();
        // Within 10⁻⁷: the rate 1/τ is kept as an f32.
        assert!(
            (s.failure_ratio() - decayed).abs() < 1e-7,
            "{}",
            s.failure_ratio()
        );
        // Long after, successes bring it back to exactly 0 (the fast path).
        tokio::time::advance(tau * 20).await;
        s.finish(s.start(), true);
        assert_eq!(s.failure_ratio(), 0.0);
        assert_eq!((s.successes(), s.failures()), (3, 3));
    }
}
