//! Per-endpoint load statistics, shared lock-free between the request path and pickers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

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

/// The weight of one call's outcome in the failure ratio: 0.1, a memory of about ten calls.
/// Large enough that a run of failures dominates within a few calls (after `k` failures
/// the ratio is `1 − 0.9^k`: 0.65 after 10), small enough that one failure among many
/// successes moves it only a little.
pub const FAILURE_RATIO_WEIGHT: f64 = 0.1;

/// A failure ratio below this is stored as exactly 0, so an endpoint that failed once long
/// ago returns to the fast path of a healthy one (see [`EndpointStats::failure_ratio`]).
const FAILURE_RATIO_FLOOR: f64 = 1e-6;

/// The least success ratio a cost is divided by (see [`EndpointStats::scale_by_success`]),
/// so an endpoint whose every recent call failed costs a thousand times its load rather than
/// infinity: costs stay comparable (no ∞ = ∞ ties), and it still loses to any endpoint with
/// less than a thousand times its load.
const MIN_SUCCESS_RATIO: f64 = 1e-3;

/// How far a [`LoadClock`] must move before it is written again: 1 ms. Costs decay over
/// seconds, so a millisecond of staleness changes nothing, and the shared cache line is
/// written at most a thousand times a second whatever the request rate.
const CLOCK_RESOLUTION_NANOS: u64 = 1_000_000;

// ===== LoadClock =====

/// A coarse clock shared by the statistics of one balancer's endpoints, advanced by every
/// completed call (which reads the real clock anyway).
///
/// Pickers read it instead of the real clock: reading `Instant::now()` costs 20–50 ns (more
/// under tokio's test clock), as much as the whole pick budget, while this is one relaxed
/// load. It lags real time only while no call completes anywhere, and then no estimate
/// changes either.
#[derive(Debug)]
pub struct LoadClock {
    origin: Instant,
    now_nanos: AtomicU64,
}

impl Default for LoadClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadClock {
    /// A clock that starts now.
    pub fn new() -> Self {
        LoadClock {
            origin: Instant::now(),
            now_nanos: AtomicU64::new(0),
        }
    }

    /// The last time observed, in nanoseconds since the clock started.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.now_nanos.load(Ordering::Relaxed)
    }

    /// Moves the clock forward to `t` (never backward) and returns `t` in its nanoseconds.
    pub fn observe(&self, t: Instant) -> u64 {
        let nanos = self.nanos_at(t);
        if nanos >= self.now_nanos().saturating_add(CLOCK_RESOLUTION_NANOS) {
            self.now_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
        nanos
    }

    fn nanos_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

// ===== CallStart =====

/// One call in flight on an endpoint, from [`EndpointStats::start`]: when it started, so
/// that [`EndpointStats::finish`] can measure it and take it off the pending calls' age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a call that is never finished or abandoned counts as in flight forever"]
pub struct CallStart {
    /// The start, in nanoseconds of the stats' clock.
    nanos: u64,
}

// ===== EndpointStats =====

/// Load statistics of one endpoint, kept by address: they outlive picker rebuilds and
/// endpoint set changes, so a policy never forgets what it learned about an endpoint that
/// stays.
///
/// Latency is a *peak* EWMA (Finagle's): a sample above the current estimate replaces it at
/// once, a sample below it is blended in with weight `1 - e^(-Δt/τ)`. A new endpoint starts
/// from [`DEFAULT_RTT`], which its first sample replaces whether above or below: blending a
/// 1 ms answer into a made-up 30 ms with a 10 s time constant would keep the endpoint at
/// about 30 ms for seconds, so a 1 ms and a 6 ms endpoint would look alike until then.
/// Finagle's `PeakEwma` behaves so too: its cost starts at 0 with a separate penalty for an
/// unprobed endpoint, so its first sample becomes the estimate through the peak rule. A
/// failed call counts as at least [`DEFAULT_FAILURE_PENALTY`].
///
/// Calls still in flight count too: [`load_cost`](Self::load_cost) uses the mean age of the
/// pending calls when it exceeds the estimate, as brpc's locality-aware balancer does with
/// its "inflight delay", so an endpoint that has not answered for a while looks slow before
/// its first slow answer arrives.
///
/// The failure ratio is an EWMA over calls (each outcome weighs [`FAILURE_RATIO_WEIGHT`])
/// that also decays toward 0 with the same time constant as the latency, so an endpoint
/// that stopped receiving calls because it failed is tried again eventually.
///
/// Everything is an atomic; recording and reading never take a lock. An update reads and
/// writes a value and its time stamp separately, so two completions at the same instant may
/// lose a little decay: estimates stay approximate, never corrupt.
#[derive(Debug)]
pub struct EndpointStats {
    in_flight: AtomicU64,
    /// The sum of the start times of the calls in flight, in nanoseconds of `clock`,
    /// wrapping: `in_flight × now − sum` is their total age, exact as long as that total
    /// (not the sum) fits in 64 bits (see [`pending_age_nanos`](Self::pending_age_nanos)).
    pending_start_sum: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    /// The latency estimate in nanoseconds, as `f64` bits.
    ewma_bits: AtomicU64,
    /// Whether a sample has replaced the starting estimate yet.
    sampled: AtomicBool,
    /// When the estimate was last updated, in nanoseconds of `clock`.
    stamp_nanos: AtomicU64,
    /// The failure ratio in [0, 1], as `f64` bits; 0 (all bits clear) while healthy.
    failure_bits: AtomicU64,
    /// When the failure ratio was last updated, in nanoseconds of `clock`.
    failure_stamp_nanos: AtomicU64,
    clock: Arc<LoadClock>,
    /// `1 / τ` in 1/ns.
    inv_decay_nanos: f64,
    failure_penalty: Duration,
}

impl Default for EndpointStats {
    /// Decay [`DEFAULT_DECAY`], starting estimate [`DEFAULT_RTT`], own clock.
    fn default() -> Self {
        Self::new(DEFAULT_DECAY, DEFAULT_RTT)
    }
}

impl EndpointStats {
    /// Stats with EWMA time constant `decay`, starting from the latency estimate `initial`,
    /// with a clock of their own (see [`with_clock`](Self::with_clock)).
    pub fn new(decay: Duration, initial: Duration) -> Self {
        EndpointStats {
            in_flight: AtomicU64::new(0),
            pending_start_sum: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ewma_bits: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            sampled: AtomicBool::new(false),
            stamp_nanos: AtomicU64::new(0),
            failure_bits: AtomicU64::new(0),
            failure_stamp_nanos: AtomicU64::new(0),
            clock: Arc::new(LoadClock::new()),
            inv_decay_nanos: 1.0 / decay.as_nanos().max(1) as f64,
            failure_penalty: DEFAULT_FAILURE_PENALTY,
        }
    }

    /// Sets the least latency a failed call counts as (default [`DEFAULT_FAILURE_PENALTY`]).
    #[must_use]
    pub fn with_failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Shares `clock` with the other endpoints of the same balancer, so that an endpoint
    /// which stopped receiving calls sees time pass through the others' completions, and
    /// its estimate decays in [`load_cost`](Self::load_cost) until it is tried again.
    /// Without a shared clock only the endpoint's own completions move time.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<LoadClock>) -> Self {
        let now = clock.observe(Instant::now());
        self.stamp_nanos = AtomicU64::new(now);
        self.failure_stamp_nanos = AtomicU64::new(now);
        self.clock = clock;
        self
    }

    /// Calls sent and not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls completed successfully.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Calls that failed in a way that counts against the endpoint.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
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
        f * (-(elapsed as f64) * self.inv_decay_nanos).exp()
    }

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

    /// The peak-EWMA load, pending-aware: `max(estimate, mean age of the calls in flight) ×
    /// (in_flight + 1)`, in nanoseconds, with the estimate decayed to the shared clock's
    /// time. Reads five atomics and takes one `exp`; never the real clock (see
    /// [`LoadClock`]).
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
        let now = self.clock.now_nanos();
        let (in_flight, age) = self.pending_age_nanos(now);
        self.decayed_nanos(now).max(age) * (in_flight as f64 + 1.0)
    }

    /// The calls in flight and their mean age at `now` (nanoseconds of the clock), 0 when
    /// none is pending or the two counters were caught mid-update.
    ///
    /// `start` adds to the sum before it raises the count (release); `finish` lowers the
    /// count before it takes from the sum (release). Reading the count, the sum (acquire) and
    /// the count again, equal counts mean the sum holds at least the calls counted: the only
    /// mismatch left is a sum with extra calls, which reads as a smaller age (clamped at 0),
    /// never as a spurious huge one.
    #[inline]
    fn pending_age_nanos(&self, now: u64) -> (u64, f64) {
        let n = self.in_flight.load(Ordering::Acquire);
        if n == 0 {
            return (0, 0.0);
        }
        let sum = self.pending_start_sum.load(Ordering::Acquire);
        if self.in_flight.load(Ordering::Relaxed) != n {
            return (n, 0.0);
        }
        // Wrapping: the sum may wrap, the total age does not (see `pending_start_sum`).
        let total = n.wrapping_mul(now).wrapping_sub(sum) as i64;
        (n, total.max(0) as f64 / n as f64)
    }

    /// The mean age of the calls in flight, by the shared clock (which may lag real time by
    /// up to about a millisecond while calls complete); zero when none is pending.
    pub fn pending_age(&self) -> Duration {
        Duration::from_nanos(self.pending_age_nanos(self.clock.now_nanos()).1 as u64)
    }

    /// Marks the start of a call, reading the clock once; pass the returned [`CallStart`] to
    /// [`finish`](Self::finish) or [`abandon`](Self::abandon). Until then the call counts in
    /// [`in_flight`](Self::in_flight) and its age in [`load_cost`](Self::load_cost).
    pub fn start(&self) -> CallStart {
        let nanos = self.clock.observe(Instant::now());
        self.pending_start_sum.fetch_add(nanos, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Release);
        CallStart { nanos }
    }

    /// Takes a call started with [`start`](Self::start) off the pending count and sum.
    fn end_pending(&self, call: CallStart) {
        // Saturating: a `CallStart` of other stats must not wrap the count to 2^64.
        if self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            self.pending_start_sum
                .fetch_sub(call.nanos, Ordering::Release);
        }
    }

    /// Undoes a [`start`](Self::start) for a call that never reached the endpoint (its
    /// connection closed first): nothing is learned about the endpoint from it.
    pub fn abandon(&self, call: CallStart) {
        self.end_pending(call);
    }

    /// Marks the end of a call started with [`start`](Self::start); its latency is the time
    /// since then. `ok` is false for failures that count against the endpoint; such a call
    /// counts as at least the failure penalty (see
    /// [`with_failure_penalty`](Self::with_failure_penalty)). Returns the latency.
    pub fn finish(&self, call: CallStart, ok: bool) -> Duration {
        self.end_pending(call);
        let now_nanos = self.clock.observe(Instant::now());
        let latency = Duration::from_nanos(now_nanos.saturating_sub(call.nanos));
        let sample = if ok {
            self.successes.fetch_add(1, Ordering::Relaxed);
            latency
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            latency.max(self.failure_penalty)
        };
        self.observe_at(sample, now_nanos);
        self.record_outcome(ok, now_nanos);
        latency
    }

    /// Folds one latency sample taken at `now` into the peak EWMA, and moves the shared
    /// clock to `now`.
    pub fn observe(&self, latency: Duration, now: Instant) {
        self.observe_at(latency, self.clock.observe(now));
    }

    /// Folds one call's outcome into the failure ratio: decay for the time since the last
    /// update, then `ratio · (1 − w) + w · failed`.
    fn record_outcome(&self, ok: bool, now_nanos: u64) {
        let mut cur = self.failure_bits.load(Ordering::Relaxed);
        if ok && cur == 0 {
            // Healthy and staying so: nothing to forget, and no shared write.
            return;
        }
        let prev_stamp = self.failure_stamp_nanos.swap(now_nanos, Ordering::Relaxed);
        let elapsed = now_nanos.saturating_sub(prev_stamp) as f64;
        let w = (-elapsed * self.inv_decay_nanos).exp();
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

    fn observe_at(&self, latency: Duration, now_nanos: u64) {
        let sample = latency.as_nanos() as f64;
        let prev_stamp = self.stamp_nanos.swap(now_nanos, Ordering::Relaxed);
        let elapsed = now_nanos.saturating_sub(prev_stamp) as f64;
        if !self.sampled.load(Ordering::Relaxed) && !self.sampled.swap(true, Ordering::Relaxed) {
            // The first sample replaces the starting placeholder (see the type's docs).
            self.ewma_bits.store(sample.to_bits(), Ordering::Relaxed);
            return;
        }
        let w = (-elapsed * self.inv_decay_nanos).exp();
        let mut cur = self.ewma_bits.load(Ordering::Relaxed);
        loop {
            let est = f64::from_bits(cur);
            let next = if sample > est {
                sample
            } else {
                est * w + sample * (1.0 - w)
            };
            match self.ewma_bits.compare_exchange_weak(
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

    /// The estimate in nanoseconds decayed to `now_nanos` of the clock.
    #[inline]
    fn decayed_nanos(&self, now_nanos: u64) -> f64 {
        let est = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = now_nanos.saturating_sub(self.stamp_nanos.load(Ordering::Relaxed));
        if elapsed == 0 {
            est
        } else {
            est * (-(elapsed as f64) * self.inv_decay_nanos).exp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn counts() {
        let s = EndpointStats::default();
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        s.finish(a, true);
        s.finish(b, false);
        assert_eq!((s.in_flight(), s.successes(), s.failures()), (0, 1, 1));
        // A stray finish (of a call finished already) does not wrap.
        s.finish(a, true);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.pending_age(), Duration::ZERO);
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
        assert!(
            (s.failure_ratio() - decayed).abs() < 1e-9,
            "{}",
            s.failure_ratio()
        );
        // Long after, successes bring it back to exactly 0 (the fast path).
        tokio::time::advance(tau * 20).await;
        s.finish(s.start(), true);
        assert_eq!(s.failure_ratio(), 0.0);
        assert_eq!((s.successes(), s.failures()), (3, 3));
    }

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
