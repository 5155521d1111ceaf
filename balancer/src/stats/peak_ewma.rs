//! The peak-EWMA latency estimate (Finagle's, as tower's `load/peak_ewma.rs`), with its
//! decay by time and its window of calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[cfg(doc)]
use super::LoadClock;
use super::{EndpointStats, pack_f32};

/// The default time constant of the latency EWMA: 10 s, Finagle's and go-zero's value.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// The latency estimate of an endpoint that has not completed a call yet: 30 ms, the
/// default RTT of linkerd2-proxy's peak-EWMA balancer. Starting from zero would make every
/// new endpoint look free, so it would take every request until its first answer. It is a
/// placeholder, not a measurement: the first answer replaces it (see
/// [`EndpointStats`]).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The latency sample a failed call counts as when it was faster than this: 1 s. A fast
/// failure then raises the endpoint's estimate far above a healthy one, so an endpoint that
/// fails every call at once stops attracting traffic instead of looking like the fastest.
/// Set it above the slowest latency a healthy endpoint has.
pub const DEFAULT_FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The default most calls a latency sample is remembered over: 128, the window of brpc's
/// locality-aware balancer (`docs/cn/lalb.md`: latency over a circular queue of 128 calls,
/// small enough because the in-flight delay corrects over-reactions). See
/// [`EndpointStats::with_sample_window`].
pub const DEFAULT_SAMPLE_WINDOW: u32 = 128;

/// [`EndpointStats::base_and_calls`] before any call started: NaN bits in the high half, so
/// never a real average.
pub(super) const UNPROBED: u64 = u64::MAX;

/// [`EndpointStats::base_and_calls`] once a call started but before the first sample.
pub(super) const UNSAMPLED: u64 = u64::MAX - 1;

/// Whether a `base_and_calls` word holds no sample yet ([`UNPROBED`] or [`UNSAMPLED`]).
#[inline]
pub(super) fn is_unsampled(word: u64) -> bool {
    word >= UNSAMPLED
}

/// Calls completed between a stamp and `completed`, both wrapping at 2³². Signed, then
/// clamped at 0: two completions racing may store their stamps out of order, and a stamp
/// a little ahead of `completed` must read as 0 calls, not as 4 billion.
#[inline]
pub(super) fn calls_since(completed: u64, stamp: u32) -> u64 {
    u64::from(((completed as u32).wrapping_sub(stamp) as i32).max(0) as u32)
}

/// The average (nanoseconds) and call count packed in a `base_and_calls` word.
#[inline]
pub(super) fn unpack_base(word: u64) -> (f64, u32) {
    (f64::from(f32::from_bits((word >> 32) as u32)), word as u32)
}

pub(super) fn pack_base(base_nanos: f64, calls: u64) -> u64 {
    (u64::from((base_nanos as f32).to_bits()) << 32) | (calls & u64::from(u32::MAX))
}

impl EndpointStats {
    /// `1 / τ` in 1/ns.
    #[inline]
    pub(super) fn inv_decay_nanos(&self) -> f64 {
        f64::from(f32::from_bits((self.rates >> 32) as u32))
    }

    /// `1 / window`, 0 for decay by time only.
    #[inline]
    pub(super) fn inv_window(&self) -> f64 {
        f64::from(f32::from_bits(self.rates as u32))
    }

    /// Bounds the estimate's memory by calls as well as by time: a sample below the
    /// estimate is blended in with weight `1 − e^(−x)`, where `x` is the larger of `Δt / τ`
    /// (Finagle's, `Δt` the time since the previous sample) and `Δc / (calls × n)`, `Δc`
    /// being the calls the whole balancer completed since this endpoint's previous sample
    /// and `n` its endpoints ([`LoadClock::set_endpoints`]). An endpoint that gets its even
    /// share of the calls thus remembers about its last `calls` samples (default
    /// [`DEFAULT_SAMPLE_WINDOW`]); one that gets few calls weighs each of them more, as
    /// Finagle's time-based decay does for an endpoint sampled rarely. 0 keeps the decay
    /// purely by time, as Finagle's and tower's `PeakEwma`.
    ///
    /// Why: with decay by time only, a busy endpoint's estimate is its recent *peak*. At
    /// 10,000 calls a second and τ = 10 s each sample below the estimate weighs 10⁻⁵, so one
    /// slow call (a scheduling hiccup at the p99.9) sets the estimate for seconds. Measured
    /// in the `skew` example's `two_slow` scenario: endpoints answering in 2.6 ms (p50) were
    /// estimated at 5.3–5.5 ms, and the 7.5 ms ones at 8.8–10 ms, so latency hardly told
    /// them apart. With the window, a lone peak fades within about `calls` of the
    /// balancer's calls per endpoint, while an endpoint that really slowed down keeps its
    /// estimate up with every call. Counting the balancer's calls rather than the endpoint's
    /// own keeps an endpoint that a peak made look slow, and so gets few calls, from
    /// keeping that estimate: its next answer replaces most of it. At low call rates the
    /// time constant is the shorter memory and nothing changes. For an endpoint with nothing
    /// in flight, see [`latency_and_load`](Self::latency_and_load).
    #[must_use]
    pub fn with_sample_window(mut self, calls: u32) -> Self {
        let inv = if calls == 0 { 0.0 } else { 1.0 / calls as f32 };
        self.rates = pack_f32(self.inv_decay_nanos() as f32, inv);
        self
    }

    /// The stored latency estimate, without decay for the time since it was updated.
    pub fn latency_ewma(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ewma_bits.load(Ordering::Relaxed)) as u64)
    }

    /// The latency estimate decayed toward zero for the time since its last update, as
    /// tower's `PeakEwma` reads it: an endpoint that stopped receiving calls is retried
    /// eventually instead of being shunned forever.
    pub fn latency_ewma_at(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.decayed_nanos(self.clock.nanos_at(now)) as u64)
    }

    /// The estimate of an endpoint with nothing in flight. Its whole estimate decays by
    /// time, as always; what its peaks added above the average of its last `window` or so
    /// samples fades also with the calls, at the rate a sample would be blended: about
    /// `e^(−Δc / (window × n))` (see [`with_sample_window`](Self::with_sample_window)).
    /// `word` is `base_and_calls`.
    ///
    /// Why: an endpoint that one slow answer made look slow loses every comparison, gets
    /// no call, and so no sample to correct it; with decay by time only it would starve for
    /// seconds. Its peak now fades within a few `window`s of the balancer's calls per
    /// endpoint, it is tried again, and its answer replaces most of the old estimate. An
    /// endpoint that is slow on average keeps its average until time decays it, so it is not
    /// retried (and its slow answers paid for) every few hundred calls. A slow *first*
    /// answer is the endpoint's average too, so it fades by time only, as in Finagle: a
    /// new endpoint whose first call took 50 ms next to 1 ms ones waits about τ·ln 50. The decay by calls
    /// applies only while nothing is in flight: the first call started stops it, so a
    /// retried endpoint gets one call until it answers, not a burst.
    #[inline]
    pub(super) fn idle_decayed_nanos(&self, now_nanos: u64, word: u64) -> f64 {
        let peak = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let (base, stamp_calls) = unpack_base(word);
        let base = base.min(peak);
        let elapsed = now_nanos.saturating_sub(self.stamp_nanos.load(Ordering::Relaxed));
        let by_time = elapsed as f64 * self.inv_decay_nanos();
        let by_calls = self.calls_decay(calls_since(self.clock.completed(), stamp_calls));
        if by_calls <= by_time {
            return peak * exp_neg(by_time);
        }
        // The excess fades as 1 / (1 + x + x²/2 + x³/6), e^(−x)'s series in the denominator:
        // the same as e^(−x) to third order near 0, never negative, a little slower later,
        // and no `exp` call, which at 1,000 endpoints was a quarter of a pick's cost.
        // Never slower than the decay by time, which it replaces here: the cost must not rise
        // as calls complete.
        let x = by_calls;
        let fade = 1.0 / (1.0 + x * (1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0))));
        let by_time = exp_neg(by_time);
        base * by_time + (peak - base) * fade.min(by_time)
    }

    /// Folds one latency sample taken at `now` into the peak EWMA, and moves the shared
    /// clock to `now`.
    pub fn observe(&self, latency: Duration, now: Instant) {
        self.observe_at(latency, self.clock.observe(now), self.clock.completed());
    }

    /// Folds `latency` in at `now_nanos` of the clock, when it had completed `calls`.
    pub(super) fn observe_at(&self, latency: Duration, now_nanos: u64, calls: u64) {
        let sample = latency.as_nanos() as f64;
        let prev_stamp = self.stamp_nanos.swap(now_nanos, Ordering::Relaxed);
        let elapsed = now_nanos.saturating_sub(prev_stamp) as f64;
        let mut word = self.base_and_calls.load(Ordering::Relaxed);
        while is_unsampled(word) {
            let first = pack_base(sample, calls);
            match self.base_and_calls.compare_exchange(
                word,
                first,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // The first sample replaces the starting placeholder (see the type's docs).
                    self.ewma_bits.store(sample.to_bits(), Ordering::Relaxed);
                    return;
                }
                Err(current) => word = current,
            }
        }
        let (avg, prev_calls) = unpack_base(word);
        // The weight the old estimate keeps: e^(−max(Δt/τ, Δc/(window × n))).
        let by_time = elapsed * self.inv_decay_nanos();
        let w = exp_neg(by_time.max(self.calls_decay(calls_since(calls, prev_calls))));
        update_f64(&self.ewma_bits, |est| {
            if sample > est {
                sample
            } else {
                est * w + sample * (1.0 - w)
            }
        });
        // The average counts the endpoint's own samples, 1 / window each (or by time when
        // that weighs more): an endpoint that got few calls while one slow call was pending
        // must not have that call weigh as much as all the calls it missed. A plain store,
        // not a compare-and-swap: two completions at once may lose one sample from the
        // average (and both count the calls since the previous one), which only has to be
        // roughly right, and the completion path saves a locked instruction.
        let w = exp_neg(by_time.max(self.inv_window()));
        self.base_and_calls.store(
            pack_base(avg * w + sample * (1.0 - w), calls),
            Ordering::Relaxed,
        );
    }

    /// `Δc / (window × n)` for `calls` completed by the balancer: the exponent of the decay
    /// by calls (see [`with_sample_window`](Self::with_sample_window)); 0 without a window.
    #[inline]
    pub(super) fn calls_decay(&self, calls: u64) -> f64 {
        calls as f64 * self.inv_window() * self.clock.inv_endpoints()
    }

    /// The estimate in nanoseconds decayed to `now_nanos` of the clock.
    #[inline]
    pub(super) fn decayed_nanos(&self, now_nanos: u64) -> f64 {
        let est = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = now_nanos.saturating_sub(self.stamp_nanos.load(Ordering::Relaxed));
        if elapsed == 0 {
            est
        } else {
            est * exp_neg(elapsed as f64 * self.inv_decay_nanos())
        }
    }
}

/// `e^(−x)` for `x ≥ 0`. Below 0.01, as most decays between two samples or reads are
/// (a millisecond of a 10 s time constant is 10⁻⁴), a third-order series is exact to
/// 5·10⁻¹⁰ and several times cheaper than `exp` on the pick path. (A branch-free
/// polynomial for the whole range measured slower than glibc's `exp` here.)
#[inline]
pub(super) fn exp_neg(x: f64) -> f64 {
    if x < 0.01 {
        1.0 - x * (1.0 - x * 0.5 * (1.0 - x * (1.0 / 3.0)))
    } else {
        (-x).exp()
    }
}

/// Replaces the `f64` stored as bits in `cell` by `f(value)`, retrying on races.
pub(super) fn update_f64(cell: &AtomicU64, f: impl Fn(f64) -> f64) {
    let mut cur = cell.load(Ordering::Relaxed);
    loop {
        let next = f(f64::from_bits(cur)).to_bits();
        match cell.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::stats::LoadClock;

    #[tokio::test(start_paused = true)]
    async fn peak_then_decay() {
        let s = EndpointStats::new(Duration::from_secs(10), Duration::ZERO);
        s.observe(Duration::from_millis(100), Instant::now());
        assert_eq!(s.latency_ewma(), Duration::from_millis(100));
        // A lower sample 10 s (one τ) later is blended with weight 1 - 1/e.
        tokio::time::advance(Duration::from_secs(10)).await;
        s.observe(Duration::from_millis(0), Instant::now());
        let expect = 100.0 * (-1.0f64).exp();
        let got = s.latency_ewma().as_secs_f64() * 1e3;
        assert!((got - expect).abs() < 1e-3, "{got} vs {expect}");
        // Reading decays too, without a sample.
        tokio::time::advance(Duration::from_secs(10)).await;
        let read = s.latency_ewma_at(Instant::now()).as_secs_f64() * 1e3;
        assert!((read - expect * (-1.0f64).exp()).abs() < 1e-3);
    }

    #[tokio::test(start_paused = true)]
    async fn first_sample_replaces_the_default_rtt() {
        let s = EndpointStats::default();
        assert_eq!(s.latency_ewma(), DEFAULT_RTT);
        // 1 ms replaces the 30 ms placeholder instead of being blended into it.
        s.observe(Duration::from_millis(1), Instant::now());
        assert_eq!(s.latency_ewma(), Duration::from_millis(1));
        // Later samples blend as usual: 3 ms is a peak, 2 ms one τ later weighs 1 − 1/e.
        s.observe(Duration::from_millis(3), Instant::now());
        tokio::time::advance(DEFAULT_DECAY).await;
        s.observe(Duration::from_millis(2), Instant::now());
        let expect = 3.0 * (-1.0f64).exp() + 2.0 * (1.0 - (-1.0f64).exp());
        let got = s.latency_ewma().as_secs_f64() * 1e3;
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_failure_counts_as_penalty() {
        let s = EndpointStats::new(DEFAULT_DECAY, Duration::from_millis(5))
            .with_failure_penalty(Duration::from_millis(500));
        let call = s.start();
        s.finish(call, false);
        assert_eq!(s.latency_ewma(), Duration::from_millis(500));
        // A failure slower than the penalty counts as what it took.
        let call = s.start();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.finish(call, false), Duration::from_secs(2));
        assert_eq!(s.latency_ewma(), Duration::from_secs(2));
    }

    #[test]
    fn exp_neg_matches_exp() {
        assert_eq!(exp_neg(0.0), 1.0);
        let mut worst: f64 = 0.0;
        // 0 to 60 in steps of 0.0005, across the switch at 0.01, then far out.
        for i in 0..120_000 {
            let x = i as f64 * 0.0005;
            worst = worst.max((exp_neg(x) / (-x).exp() - 1.0).abs());
        }
        for x in [100.0, 300.0, 699.0] {
            worst = worst.max((exp_neg(x) / (-x).exp() - 1.0).abs());
        }
        assert!(worst < 1e-8, "relative error {worst:e}");
        assert!(exp_neg(1e6) >= 0.0 && exp_neg(1e6) < 1e-300);
    }

    #[tokio::test(start_paused = true)]
    async fn window_counts_the_balancers_calls() {
        // Window 10 over 2 endpoints: a sample weighs 1 − e^(−Δc/20), Δc being the calls the
        // whole balancer completed since this endpoint's previous sample. No time passes, so
        // the time constant plays no part.
        for (window, expect) in [(10, 100.0 * (-1.0f64).exp()), (0, 100.0)] {
            let clock = Arc::new(LoadClock::new());
            clock.set_endpoints(2);
            let new = || {
                EndpointStats::new(DEFAULT_DECAY, DEFAULT_RTT)
                    .with_sample_window(window)
                    .with_clock(clock.clone())
            };
            let (a, b) = (new(), new());
            a.observe(Duration::from_millis(100), Instant::now());
            // The other endpoint completes 19 calls, then one of `a`'s answers in 0 ms: the
            // 20th call since `a`'s previous sample.
            for _ in 0..19 {
                b.finish(b.start(), true);
            }
            a.finish(a.start(), true);
            // Within 10 ns: `latency_ewma` truncates to whole nanoseconds.
            let got = a.latency_ewma().as_secs_f64() * 1e3;
            assert!(
                (got - expect).abs() < 1e-5,
                "window {window}: {got} vs {expect}"
            );
        }
    }

    #[test]
    fn calls_since_reads_a_stamp_ahead_as_none() {
        assert_eq!(calls_since(100, 90), 10);
        assert_eq!(calls_since(100, 101), 0);
        // Wrapping forward past 2³².
        assert_eq!(calls_since(1 << 32 | 5, u32::MAX), 6);
    }

    #[test]
    fn racing_completions_do_not_reset_the_estimate() {
        // Completions on one endpoint from 4 threads: their call stamps may be stored out of
        // order, which must read as "no calls since", not as 2³² calls (a weight of 1 that
        // replaces the estimate with the last sample). Over 10,000 endpoints each of these
        // 200,000 samples of about 0 ms weighs about 1 / 1,280,000: the 10 ms estimate must
        // keep about e^(−0.16) of itself, never drop to a sample. (Reading the stamps
        // unsigned, this failed in each of three debug runs, at 0.8–2.8 µs.)
        let clock = Arc::new(LoadClock::new());
        clock.set_endpoints(10_000);
        let s = Arc::new(EndpointStats::default().with_clock(clock));
        s.observe(Duration::from_millis(10), Instant::now());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let s = s.clone();
                scope.spawn(move || {
                    for _ in 0..50_000 {
                        s.finish(s.start(), true);
                    }
                });
            }
        });
        let left = s.latency_ewma().as_secs_f64() * 1e3;
        assert!(left > 5.0, "estimate fell to {left} ms");
    }
}
