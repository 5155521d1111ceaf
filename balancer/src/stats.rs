//! Per-endpoint load statistics, shared lock-free between the request path and pickers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::rng::Padded;

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

/// The default most calls a latency sample is remembered over: 128, the window of brpc's
/// locality-aware balancer (`docs/cn/lalb.md`: latency over a circular queue of 128 calls,
/// small enough because the in-flight delay corrects over-reactions). See
/// [`EndpointStats::with_sample_window`].
pub const DEFAULT_SAMPLE_WINDOW: u32 = 128;

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
/// completed call (which reads the real clock anyway), and the count of their calls in
/// flight.
///
/// Pickers read it instead of the real clock: reading `Instant::now()` costs 20–50 ns (more
/// under tokio's test clock), as much as the whole pick budget, while this is one relaxed
/// load. It lags real time only while no call completes anywhere, and then no estimate
/// changes either.
#[derive(Debug)]
pub struct LoadClock {
    origin: Instant,
    now_nanos: AtomicU64,
    /// `1 / n` for the `n` endpoints a balancer picks among (see
    /// [`set_endpoints`](Self::set_endpoints)), as `f64` bits, so that the pick path
    /// multiplies instead of divides.
    inv_endpoints_bits: AtomicU64,
    /// Calls started and completed (or abandoned) over every endpoint sharing this clock.
    /// On a cache line of their own: every call writes them, while every pick reads
    /// `now_nanos`.
    calls: Padded<CallCounts>,
}

#[derive(Debug, Default)]
struct CallCounts {
    started: AtomicU64,
    completed: AtomicU64,
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
            inv_endpoints_bits: AtomicU64::new(1f64.to_bits()),
            calls: Padded(CallCounts::default()),
        }
    }

    /// Calls in flight over every endpoint whose statistics share this clock (see
    /// [`EndpointStats::with_clock`]).
    #[inline]
    pub fn in_flight(&self) -> u64 {
        // Completed first: a call that completes in between then reads as still in flight,
        // never the count as negative.
        let completed = self.completed();
        self.calls
            .0
            .started
            .load(Ordering::Relaxed)
            .saturating_sub(completed)
    }

    /// Calls completed or abandoned over every endpoint sharing this clock: the clock the
    /// estimates' [sample window](EndpointStats::with_sample_window) counts in.
    #[inline]
    pub fn completed(&self) -> u64 {
        self.calls.0.completed.load(Ordering::Relaxed)
    }

    /// Tells the endpoints sharing this clock how many of them the balancer picks among
    /// (at least 1), which scales their [sample window](EndpointStats::with_sample_window).
    /// Balancers set it when they build a picker.
    pub fn set_endpoints(&self, n: usize) {
        let n = n.max(1);
        self.inv_endpoints_bits
            .store((1.0 / n as f64).to_bits(), Ordering::Relaxed);
    }

    /// `1 / n`, as [`set_endpoints`](Self::set_endpoints) stored it.
    #[inline]
    fn inv_endpoints(&self) -> f64 {
        f64::from_bits(self.inv_endpoints_bits.load(Ordering::Relaxed))
    }

    /// As last set by [`set_endpoints`](Self::set_endpoints); 1 before.
    pub fn endpoints(&self) -> u64 {
        (1.0 / self.inv_endpoints()).round() as u64
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
    /// The start, in nanoseconds of the stats' clock (0 when latency is not tracked).
    nanos: u64,
    /// Still waiting for its response headers: counted in the pending calls' age.
    pending: bool,
}

// ===== Signals, Outcome =====

/// Which load signals an endpoint's statistics keep. Calls in flight and the success and
/// failure counts are always kept; the rest costs work on every call, so each policy asks
/// only for what its picker reads (see [`Balancer::new_stats`](crate::Balancer::new_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Signals {
    /// The peak-EWMA latency estimate and the age of calls waiting for their response
    /// headers (`p2c_ewma`). Reads the clock twice per call.
    pub latency: bool,
    /// The decaying failure ratio (`p2c_ewma`, `least_request`).
    pub failure_ratio: bool,
}

impl Signals {
    /// Every signal: what [`EndpointStats::default`] keeps.
    pub const ALL: Signals = Signals {
        latency: true,
        failure_ratio: true,
    };
    /// Only calls in flight and outcome counts: what policies that read no load keep.
    pub const COUNTS: Signals = Signals {
        latency: false,
        failure_ratio: false,
    };

    fn bits(self) -> u8 {
        u8::from(self.latency) | (u8::from(self.failure_ratio) << 1)
    }
}

/// How a call ended, as far as its endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It succeeded, or failed in a way that says nothing about the endpoint (the
    /// application rejected the request: NOT_FOUND, INVALID_ARGUMENT, ...).
    Success,
    /// It failed in a way that counts against the endpoint: a transport error, an
    /// UNAVAILABLE, or our own deadline expiring while it waited for the endpoint.
    Failure,
    /// The caller gave it up with no deadline involved: neither success nor failure.
    Cancelled,
}

/// The in-flight word: calls in flight in the low half, calls still waiting for their
/// response headers (pending) in the high half. One word, so a pick reads both in one load
/// and the stats keep their one-cache-line layout.
const PENDING_ONE: u64 = 1 << 32;
const IN_FLIGHT_MASK: u64 = u32::MAX as u64;

const SIGNAL_LATENCY: u8 = 1;
const SIGNAL_FAILURE_RATIO: u8 = 2;

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
///
/// What a pick reads fits one 64-byte line at the start of the struct (`repr(C)` keeps the
/// order): at 1,000 endpoints the picker's reads are mostly cache misses, so lines, not
/// instructions, are what a pick costs. That is why the rates are `f32` and the average
/// shares a word with a call count.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct EndpointStats {
    // What a pick reads: 8 words.
    /// Calls in flight (low half) and, of those, calls still waiting for their response
    /// headers (high half): see [`PENDING_ONE`].
    in_flight: AtomicU64,
    /// The sum of the start times of the pending calls, in nanoseconds of `clock`,
    /// wrapping: `pending × now − sum` is their total age, exact as long as that total
    /// (not the sum) fits in 64 bits (see [`pending_age_nanos`](Self::pending_age_nanos)).
    pending_start_sum: AtomicU64,
    /// The latency estimate in nanoseconds, as `f64` bits.
    ewma_bits: AtomicU64,
    /// When the estimate was last updated, in nanoseconds of `clock`.
    stamp_nanos: AtomicU64,
    /// The failure ratio in [0, 1], as `f64` bits; 0 (all bits clear) while healthy.
    failure_bits: AtomicU64,
    clock: Arc<LoadClock>,
    /// `1 / τ` in 1/ns (high half) and `1 / window` (low half, 0 for decay by time only;
    /// see [`with_sample_window`](Self::with_sample_window)), as `f32` bits: relative
    /// precision 6·10⁻⁸, plenty for decay rates.
    rates: u64,
    /// [`UNPROBED`], then [`UNSAMPLED`] once a call started, until the first sample; then
    /// the average of the recent samples
    /// without the peak rule, in nanoseconds as `f32` bits (high half; see
    /// [`idle_decayed_nanos`](Self::idle_decayed_nanos)), and the clock's
    /// [completed](LoadClock::completed) calls at the last sample, wrapping at 2³² (low half).
    base_and_calls: AtomicU64,
    // What only completions touch.
    successes: AtomicU64,
    failures: AtomicU64,
    /// When the failure ratio was last updated, in nanoseconds of `clock`.
    failure_stamp_nanos: AtomicU64,
    failure_penalty: Duration,
    /// [`Signals`] as bits.
    signals: u8,
}

/// [`EndpointStats::base_and_calls`] before any call started: NaN bits in the high half, so
/// never a real average.
const UNPROBED: u64 = u64::MAX;

/// [`EndpointStats::base_and_calls`] once a call started but before the first sample.
const UNSAMPLED: u64 = u64::MAX - 1;

/// Whether a `base_and_calls` word holds no sample yet ([`UNPROBED`] or [`UNSAMPLED`]).
#[inline]
fn is_unsampled(word: u64) -> bool {
    word >= UNSAMPLED
}

/// Calls completed between a stamp and `completed`, both wrapping at 2³². Signed, then
/// clamped at 0: two completions racing may store their stamps out of order, and a stamp
/// a little ahead of `completed` must read as 0 calls, not as 4 billion.
#[inline]
fn calls_since(completed: u64, stamp: u32) -> u64 {
    u64::from(((completed as u32).wrapping_sub(stamp) as i32).max(0) as u32)
}

/// Packs two `f32` into a word, `high` in the high half.
fn pack_f32(high: f32, low: f32) -> u64 {
    (u64::from(high.to_bits()) << 32) | u64::from(low.to_bits())
}

/// The average (nanoseconds) and call count packed in a `base_and_calls` word.
#[inline]
fn unpack_base(word: u64) -> (f64, u32) {
    (f64::from(f32::from_bits((word >> 32) as u32)), word as u32)
}

fn pack_base(base_nanos: f64, calls: u64) -> u64 {
    (u64::from((base_nanos as f32).to_bits()) << 32) | (calls & u64::from(u32::MAX))
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
            ewma_bits: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            stamp_nanos: AtomicU64::new(0),
            failure_bits: AtomicU64::new(0),
            clock: Arc::new(LoadClock::new()),
            rates: pack_f32(
                (1.0 / decay.as_nanos().max(1) as f64) as f32,
                1.0 / DEFAULT_SAMPLE_WINDOW as f32,
            ),
            base_and_calls: AtomicU64::new(UNPROBED),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failure_stamp_nanos: AtomicU64::new(0),
            failure_penalty: DEFAULT_FAILURE_PENALTY,
            signals: Signals::ALL.bits(),
        }
    }

    /// `1 / τ` in 1/ns.
    #[inline]
    fn inv_decay_nanos(&self) -> f64 {
        f64::from(f32::from_bits((self.rates >> 32) as u32))
    }

    /// `1 / window`, 0 for decay by time only.
    #[inline]
    fn inv_window(&self) -> f64 {
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

    /// Sets the least latency a failed call counts as (default [`DEFAULT_FAILURE_PENALTY`]).
    #[must_use]
    pub fn with_failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Keeps only these signals (default [`Signals::ALL`]). Without latency a call reads no
    /// clock and updates no estimate; without the failure ratio an outcome only counts.
    #[must_use]
    pub fn with_signals(mut self, signals: Signals) -> Self {
        self.signals = signals.bits();
        self
    }

    /// The signals these statistics keep.
    pub fn signals(&self) -> Signals {
        Signals {
            latency: self.tracks(SIGNAL_LATENCY),
            failure_ratio: self.tracks(SIGNAL_FAILURE_RATIO),
        }
    }

    #[inline]
    fn tracks(&self, signal: u8) -> bool {
        self.signals & signal != 0
    }

    /// Shares `clock` with the other endpoints of the same balancer, so that an endpoint
    /// which stopped receiving calls sees time pass through the others' completions, and
    /// its estimate decays in [`load_cost`](Self::load_cost) until it is tried again.
    /// Without a shared clock only the endpoint's own completions move time.
    ///
    /// Call it before the first call starts, as [`Balancer::new_stats`] does. Calls already
    /// in flight move to the new clock's count of calls in flight, but their start times are
    /// in the old clock's time: their age and latency would be misread.
    ///
    /// [`Balancer::new_stats`]: crate::Balancer::new_stats
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<LoadClock>) -> Self {
        let now = clock.observe(Instant::now());
        self.stamp_nanos = AtomicU64::new(now);
        self.failure_stamp_nanos = AtomicU64::new(now);
        let word = self.base_and_calls.load(Ordering::Relaxed);
        if !is_unsampled(word) {
            let (base, _) = unpack_base(word);
            self.base_and_calls = AtomicU64::new(pack_base(base, clock.completed()));
        }
        // Calls already started move to the new clock, so that finishing them balances.
        let pending = self.in_flight();
        let old = &self.clock.calls.0;
        old.completed.fetch_add(pending, Ordering::Relaxed);
        clock.calls.0.started.fetch_add(pending, Ordering::Relaxed);
        self.clock = clock;
        self
    }

    /// Calls sent and not yet completed (a streaming call until its response body ends).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) & IN_FLIGHT_MASK
    }

    /// Calls sent that have not received their response headers yet.
    pub fn pending(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) >> 32
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
        f * exp_neg(elapsed as f64 * self.inv_decay_nanos())
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
    fn idle_decayed_nanos(&self, now_nanos: u64, word: u64) -> f64 {
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

    /// The calls in flight and the mean age of those still waiting for their response
    /// headers at `now` (nanoseconds of the clock); the age is 0 when none is pending or the
    /// counters were caught mid-update.
    ///
    /// `start` adds to the sum before it raises the count (release); `respond` and `finish`
    /// lower the count before they take from the sum (release). Reading the count, the sum
    /// (acquire) and the count again, equal counts mean the sum holds at least the calls
    /// counted: the only mismatch left is a sum with extra calls, which reads as a smaller age
    /// (clamped at 0), never as a spurious huge one.
    #[inline]
    fn pending_age_nanos(&self, now: u64) -> (u64, f64) {
        let word = self.in_flight.load(Ordering::Acquire);
        let sum = self.pending_start_sum.load(Ordering::Acquire);
        let in_flight = word & IN_FLIGHT_MASK;
        if self.in_flight.load(Ordering::Relaxed) != word {
            return (in_flight, 0.0);
        }
        let n = word >> 32;
        // Wrapping: the sum may wrap, the total age does not (see `pending_start_sum`).
        // With nothing pending the sum is 0, or a call's start caught mid-update, which
        // reads as negative and is clamped: the age is 0 without a branch on `n`.
        let total = n.wrapping_mul(now).wrapping_sub(sum) as i64;
        (in_flight, total.max(0) as f64 / n.max(1) as f64)
    }

    /// The mean age of the calls waiting for their response headers, by the shared clock
    /// (which may lag real time by up to about a millisecond while calls complete); zero
    /// when none is pending.
    pub fn pending_age(&self) -> Duration {
        Duration::from_nanos(self.pending_age_nanos(self.clock.now_nanos()).1 as u64)
    }

    /// Marks the start of a call, reading the clock once when latency is tracked; pass the
    /// returned [`CallStart`] to [`respond`](Self::respond) when the response headers
    /// arrive, and to [`end`](Self::end) (or [`abandon`](Self::abandon)) when the call is
    /// over. Until its headers arrive the call's age counts in
    /// [`load_cost`](Self::load_cost); until it ends it counts in
    /// [`in_flight`](Self::in_flight).
    pub fn start(&self) -> CallStart {
        match self.start_below(u64::MAX) {
            Some(call) => call,
            None => unreachable!("no limit to be at"),
        }
    }

    /// As [`start`](Self::start), but only while fewer than `max_in_flight` calls are in
    /// flight, checked and counted in one atomic step: a server that allows `n` concurrent
    /// streams gets at most `n` calls from callers racing for its last stream.
    pub fn try_start(&self, max_in_flight: u64) -> Option<CallStart> {
        self.start_below(max_in_flight)
    }

    /// [`start`](Self::start) while fewer than `limit` calls are in flight.
    #[inline]
    fn start_below(&self, limit: u64) -> Option<CallStart> {
        let raise = |add: u64, order: Ordering| -> bool {
            if limit >= IN_FLIGHT_MASK {
                self.in_flight.fetch_add(add, order);
                return true;
            }
            self.in_flight
                .fetch_update(order, Ordering::Relaxed, |w| {
                    (w & IN_FLIGHT_MASK < limit).then_some(w + add)
                })
                .is_ok()
        };
        if !self.tracks(SIGNAL_LATENCY) {
            return raise(1, Ordering::Relaxed).then_some(CallStart {
                nanos: 0,
                pending: false,
            });
        }
        let nanos = self.clock.observe(Instant::now());
        // The sum before the count (see `pending_age_nanos`); taken back if the limit is
        // reached, which meanwhile reads as a smaller age, never a larger one.
        self.pending_start_sum.fetch_add(nanos, Ordering::Relaxed);
        if !raise(1 | PENDING_ONE, Ordering::Release) {
            self.pending_start_sum.fetch_sub(nanos, Ordering::Relaxed);
            return None;
        }
        self.clock.calls.0.started.fetch_add(1, Ordering::Relaxed);
        // An endpoint is free to try only until its first call starts: one whose calls are
        // all abandoned (refused streams) must not stay free, or it would take every pick.
        if self.base_and_calls.load(Ordering::Relaxed) == UNPROBED {
            let _ = self.base_and_calls.compare_exchange(
                UNPROBED,
                UNSAMPLED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Some(CallStart {
            nanos,
            pending: true,
        })
    }

    /// The response headers of `call` arrived: its latency is sampled now, as tower's
    /// `CompleteOnResponse` and Finagle do, so a stream that stays open for minutes reads as
    /// the time its server took to answer, not as its lifetime. gRPC servers send a unary
    /// call's headers only once the handler has answered. `failed` is true for a
    /// Trailers-Only response whose status counts against the endpoint; the sample is then
    /// at least the failure penalty. The call stays in flight until [`end`](Self::end).
    /// Returns the latency (zero when latency is not tracked, or already sampled).
    pub fn respond(&self, call: &mut CallStart, failed: bool) -> Duration {
        if !call.pending {
            return Duration::ZERO;
        }
        call.pending = false;
        let mut removed = false;
        let _ = self
            .in_flight
            .fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
                removed = w >> 32 > 0;
                removed.then(|| w - PENDING_ONE)
            });
        if removed {
            self.pending_start_sum
                .fetch_sub(call.nanos, Ordering::Release);
        }
        let now_nanos = self.clock.observe(Instant::now());
        let latency = Duration::from_nanos(now_nanos.saturating_sub(call.nanos));
        let sample = if failed {
            latency.max(self.failure_penalty)
        } else {
            latency
        };
        // The call sampled counts as one of the balancer's calls since this endpoint's
        // previous sample, as it would if it were sampled when it completes.
        self.observe_at(sample, now_nanos, self.clock.completed().wrapping_add(1));
        latency
    }

    /// Takes a call off the in-flight count (and the pending one, if its headers never
    /// came); returns the clock's [completed](LoadClock::completed) calls after it.
    fn end_in_flight(&self, call: &CallStart) -> u64 {
        let dec = if call.pending { 1 | PENDING_ONE } else { 1 };
        // Checked: a `CallStart` of other stats, or one ended twice, must not wrap the
        // count to 2^32.
        let ended = self
            .in_flight
            .fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
                let ok = w & IN_FLIGHT_MASK > 0 && (!call.pending || w >> 32 > 0);
                ok.then(|| w - dec)
            })
            .is_ok();
        if !ended || !self.tracks(SIGNAL_LATENCY) {
            return self.clock.completed();
        }
        if call.pending {
            self.pending_start_sum
                .fetch_sub(call.nanos, Ordering::Release);
        }
        self.clock.calls.0.completed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Undoes a [`start`](Self::start) for a call that never reached the endpoint (its
    /// connection closed first): nothing is learned about the endpoint from it.
    pub fn abandon(&self, call: CallStart) {
        let _ = self.end_in_flight(&call);
    }

    /// Marks the end of a call started with [`start`](Self::start): its response body
    /// ended, failed or was dropped. `outcome` counts toward the success and failure counts
    /// and the failure ratio ([`Outcome::Cancelled`] toward neither). A call that ends
    /// before its headers arrived (a connection lost, our deadline) is sampled now, a
    /// failure as at least the failure penalty; a cancelled one is not sampled.
    pub fn end(&self, call: CallStart, outcome: Outcome) {
        let calls = self.end_in_flight(&call);
        let ok = match outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                true
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                false
            }
            Outcome::Cancelled => return,
        };
        let sample_now = call.pending && self.tracks(SIGNAL_LATENCY);
        // With a failure ratio the clock moves on every completion, healthy ones too: the
        // ratio of an endpoint that gets no calls decays by the time its peers see.
        let ratio = self.tracks(SIGNAL_FAILURE_RATIO);
        if !sample_now && !ratio {
            return;
        }
        let now_nanos = self.clock.observe(Instant::now());
        if sample_now {
            let latency = Duration::from_nanos(now_nanos.saturating_sub(call.nanos));
            let sample = if ok {
                latency
            } else {
                latency.max(self.failure_penalty)
            };
            self.observe_at(sample, now_nanos, calls);
        }
        if ratio {
            self.record_outcome(ok, now_nanos);
        }
    }

    /// A whole call at once: [`respond`](Self::respond) then [`end`](Self::end), as a unary
    /// call that answered now. `ok` is false for failures that count against the endpoint;
    /// such a call counts as at least the failure penalty (see
    /// [`with_failure_penalty`](Self::with_failure_penalty)). Returns the latency.
    pub fn finish(&self, mut call: CallStart, ok: bool) -> Duration {
        let latency = self.respond(&mut call, !ok);
        self.end(
            call,
            if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        );
        latency
    }

    /// Folds one latency sample taken at `now` into the peak EWMA, and moves the shared
    /// clock to `now`.
    pub fn observe(&self, latency: Duration, now: Instant) {
        self.observe_at(latency, self.clock.observe(now), self.clock.completed());
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

    /// Folds `latency` in at `now_nanos` of the clock, when it had completed `calls`.
    fn observe_at(&self, latency: Duration, now_nanos: u64, calls: u64) {
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
    fn calls_decay(&self, calls: u64) -> f64 {
        calls as f64 * self.inv_window() * self.clock.inv_endpoints()
    }

    /// The estimate in nanoseconds decayed to `now_nanos` of the clock.
    #[inline]
    fn decayed_nanos(&self, now_nanos: u64) -> f64 {
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
fn exp_neg(x: f64) -> f64 {
    if x < 0.01 {
        1.0 - x * (1.0 - x * 0.5 * (1.0 - x * (1.0 / 3.0)))
    } else {
        (-x).exp()
    }
}

/// Replaces the `f64` stored as bits in `cell` by `f(value)`, retrying on races.
fn update_f64(cell: &AtomicU64, f: impl Fn(f64) -> f64) {
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

    #[test]
    fn clock_counts_calls_in_flight_over_its_endpoints() {
        let clock = Arc::new(LoadClock::new());
        let a = EndpointStats::default().with_clock(clock.clone());
        // A call started before the stats joined the clock moves with them.
        let early = EndpointStats::default();
        let pending = early.start();
        let b = early.with_clock(clock.clone());
        let (x, y) = (a.start(), a.start());
        assert_eq!(clock.in_flight(), 3);
        a.finish(x, true);
        a.abandon(y);
        b.finish(pending, true);
        assert_eq!((clock.in_flight(), clock.completed()), (0, 3));
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_sampled_at_its_headers_and_in_flight_until_it_ends() {
        let s = EndpointStats::default();
        let ms = Duration::from_millis;
        let mut call = s.start();
        tokio::time::advance(ms(4)).await;
        assert_eq!(s.respond(&mut call, false), ms(4));
        assert_eq!((s.in_flight(), s.pending()), (1, 0));
        assert_eq!(s.latency_ewma(), ms(4));
        // Ten minutes of streaming: no pending age, and the end takes no second sample.
        tokio::time::advance(Duration::from_secs(600)).await;
        s.observe(ms(4), Instant::now());
        assert_eq!(s.pending_age(), Duration::ZERO);
        s.end(call, Outcome::Success);
        assert_eq!((s.in_flight(), s.successes()), (0, 1));
        assert_eq!(s.latency_ewma(), ms(4));
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_without_headers() {
        let s = EndpointStats::default().with_failure_penalty(Duration::from_millis(500));
        // Cancelled by the caller before any answer: neither counted nor sampled.
        let call = s.start();
        tokio::time::advance(Duration::from_secs(3)).await;
        s.end(call, Outcome::Cancelled);
        assert_eq!((s.in_flight(), s.successes(), s.failures()), (0, 0, 0));
        assert_eq!(s.latency_ewma(), DEFAULT_RTT);
        assert_eq!(s.failure_ratio(), 0.0);
        // Our deadline (a failure) after 2 s without headers: a 2 s sample, and a failure.
        let call = s.start();
        tokio::time::advance(Duration::from_secs(2)).await;
        s.end(call, Outcome::Failure);
        assert_eq!((s.in_flight(), s.pending(), s.failures()), (0, 0, 1));
        assert_eq!(s.latency_ewma(), Duration::from_secs(2));
        assert!(s.failure_ratio() > 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_only_keeps_no_latency() {
        let s = EndpointStats::default().with_signals(Signals::COUNTS);
        let mut call = s.start();
        assert_eq!((s.in_flight(), s.pending()), (1, 0));
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(s.respond(&mut call, false), Duration::ZERO);
        s.end(call, Outcome::Failure);
        assert_eq!((s.in_flight(), s.failures()), (0, 1));
        assert_eq!(s.latency_ewma(), DEFAULT_RTT);
        assert_eq!(s.failure_ratio(), 0.0);
        assert_eq!(s.signals(), Signals::COUNTS);
    }

    #[test]
    fn try_start_stops_at_the_limit() {
        for s in [
            EndpointStats::default(),
            EndpointStats::default().with_signals(Signals::COUNTS),
        ] {
            let a = s.try_start(2).expect("first");
            let _b = s.try_start(2).expect("second");
            assert!(s.try_start(2).is_none());
            assert_eq!(s.in_flight(), 2);
            s.finish(a, true);
            assert!(s.try_start(2).is_some());
            assert_eq!(s.pending_age(), Duration::ZERO);
        }
    }
}
