//! What pickers compare: the pending-aware peak-EWMA load and the success-ratio scaling.

use std::sync::atomic::Ordering;

use super::EndpointStats;
#[cfg(doc)]
use super::LoadClock;
use super::peak_ewma::UNPROBED;

/// The least success ratio a cost is divided by (see [`EndpointStats::scale_by_success`]),
/// so an endpoint whose every recent call failed costs a thousand times its load rather than
/// infinity: costs stay comparable (no ∞ = ∞ ties), and it still loses to any endpoint with
/// less than a thousand times its load.
pub(super) const MIN_SUCCESS_RATIO: f64 = 1e-3;

impl EndpointStats {
    /// `cost` divided by the recent success ratio `1 − failure_ratio` (at least
    /// 0.001): an endpoint failing half its calls costs double, one failing all of them a
    /// thousand times. Unlike a fixed latency penalty this is scale-free: it holds however
    /// slow the healthy endpoints get under load. `cost` itself for an endpoint that has not
    /// failed lately.
    #[inline]
    pub fn scale_by_success(&self, cost: f64) -> f64 {
        let failed = self.failure_ratio();
        if failed == 0.0 {
            cost
        } else {
            cost / (1.0 - failed).max(MIN_SUCCESS_RATIO)
        }
    }

    /// Finagle's peak-EWMA load, pending-aware: `latency × (in_flight + 1)` in nanoseconds,
    /// with `latency` as [`latency_and_load`](Self::latency_and_load) reads it (the
    /// estimate decayed to the shared clock's time, or the mean age of the calls in flight
    /// when larger). Never reads the real clock (see [`LoadClock`]). `p2c_ewma` with
    /// `load_scale` 0 ranks endpoints by this.
    ///
    /// Why the age: the estimate learns only from completions, so an endpoint that is much
    /// slower than its estimate (a new one, still at the default RTT, or one that slowed
    /// down) keeps winning picks until its first slow answer comes back, up to its whole
    /// latency later. A call pending for `a` will take at least `a`, so the mean age of the
    /// pending calls is a lower bound of their mean latency, known at pick time; the cost
    /// takes it when it is the larger. This is brpc's locality-aware balancer's "inflight
    /// delay" (`docs/cn/lalb.md`: the sum of the in-flight calls' elapsed times over their
    /// count, used when above the average latency).
    #[inline]
    pub fn load_cost(&self) -> f64 {
        let (latency, in_flight) = self.latency_and_load();
        latency * (in_flight as f64 + 1.0)
    }

    /// The two inputs of [`load_cost`](Self::load_cost): `max(estimate, mean age of the
    /// calls in flight)` in nanoseconds, with the estimate decayed to the shared clock's
    /// time, and the calls in flight.
    ///
    /// One exception: an endpoint that no call has started on yet reads as latency 0, so
    /// that a policy comparing latencies tries it at once (as Finagle's `PeakEwma` does: an
    /// unprobed endpoint costs 0 until its first call is pending). From then on it reads as
    /// the starting estimate (or its calls' age) until its first answer replaces that; calls
    /// that never reached it ([`abandon`](Self::abandon)) do not make it free again.
    #[inline]
    pub fn latency_and_load(&self) -> (f64, u64) {
        let now = self.clock.now_nanos();
        let (in_flight, age) = self.pending_age_nanos(now);
        if in_flight > 0 {
            return (self.decayed_nanos(now).max(age), in_flight);
        }
        let word = self.base_and_calls.load(Ordering::Relaxed);
        if word == UNPROBED {
            return (0.0, 0);
        }
        (self.idle_decayed_nanos(now, word), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::stats::{DEFAULT_RTT, LoadClock};

    #[tokio::test(start_paused = true)]
    async fn shared_clock_decays_an_idle_endpoint() {
        let clock = Arc::new(LoadClock::new());
        let tau = Duration::from_secs(10);
        let idle = EndpointStats::new(tau, Duration::ZERO).with_clock(clock.clone());
        let busy = EndpointStats::new(tau, Duration::ZERO).with_clock(clock.clone());
        idle.observe(Duration::from_millis(100), Instant::now());
        let call = idle.start();
        // cost = 100 ms × (1 in flight + 1)
        assert_eq!(idle.load_cost(), 200e6);
        // Idle from here on: a call still pending would count its age (see
        // `pending_calls_count_their_age`).
        idle.abandon(call);
        assert_eq!(idle.load_cost(), 100e6);
        // Time passes for the idle endpoint only through the busy one's completions.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(idle.load_cost(), 100e6);
        busy.observe(Duration::from_millis(1), Instant::now());
        let expect = 100e6 * (-1.0f64).exp();
        assert!(
            (idle.load_cost() - expect).abs() < 1.0,
            "{}",
            idle.load_cost()
        );
        // Twenty more seconds: e^-3 of the peak.
        tokio::time::advance(Duration::from_secs(20)).await;
        busy.observe(Duration::from_millis(1), Instant::now());
        let expect = 100e6 * (-3.0f64).exp();
        assert!(
            (idle.load_cost() - expect).abs() < 1.0,
            "{}",
            idle.load_cost()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_is_free_until_its_first_call_starts() {
        let s = EndpointStats::default();
        assert_eq!(s.latency_and_load(), (0.0, 0));
        // While its first call is pending it reads as the starting estimate.
        let call = s.start();
        assert_eq!(s.latency_and_load(), (DEFAULT_RTT.as_nanos() as f64, 1));
        // A call that never reached it (a refused stream) does not make it free again: an
        // endpoint that refuses every stream would otherwise take every pick.
        s.abandon(call);
        assert_eq!(s.latency_and_load(), (DEFAULT_RTT.as_nanos() as f64, 0));
        // Once it answered, its estimate counts, idle or not.
        s.observe(Duration::from_millis(5), Instant::now());
        assert_eq!(s.latency_and_load(), (5e6, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_calls_count_their_age() {
        let clock = Arc::new(LoadClock::new());
        let tau = Duration::from_secs(10);
        let s = EndpointStats::new(tau, DEFAULT_RTT).with_clock(clock.clone());
        let other = EndpointStats::new(tau, DEFAULT_RTT).with_clock(clock);
        let ms = Duration::from_millis;
        // Time moves for `s` through another endpoint's completions only.
        let tick = |d: Duration| {
            let other = &other;
            async move {
                tokio::time::advance(d).await;
                other.observe(ms(1), Instant::now());
            }
        };
        let first = s.start();
        // Just started: the estimate (30 ms) × (1 + 1).
        assert_eq!(s.load_cost(), 60e6);
        // 100 ms later the pending call is older than the estimate: 100 ms × 2.
        tick(ms(100)).await;
        assert_eq!(s.pending_age(), ms(100));
        assert_eq!(s.load_cost(), 200e6);
        // A second call: mean age (100 + 0) / 2 = 50 ms, × 3.
        let second = s.start();
        assert_eq!(s.load_cost(), 150e6);
        // 50 ms on: ages 150 and 50, mean 100 ms, × 3.
        tick(ms(50)).await;
        assert_eq!(s.load_cost(), 300e6);
        // The first answers after 150 ms: the peak estimate jumps to it and is the larger
        // again (the other call is 50 ms old): 150 ms × 2.
        assert_eq!(s.finish(first, true), ms(150));
        assert_eq!(s.pending_age(), ms(50));
        assert_eq!(s.load_cost(), 300e6);
        // The second never reached the endpoint: 150 ms × 1, nothing pending.
        s.abandon(second);
        assert_eq!(s.load_cost(), 150e6);
        assert_eq!(s.pending_age(), Duration::ZERO);
    }
}
