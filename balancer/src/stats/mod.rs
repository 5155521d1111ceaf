//! Per-endpoint load statistics, shared lock-free between the request path and pickers.
//!
//! One concept per file, as tower keeps `load/peak_ewma.rs` and `load/pending_requests.rs`
//! apart; all of them fill in the one [`EndpointStats`] defined here, whose fields share a
//! cache line:
//!
//! - `in_flight`: calls in flight and pending, packed in one atomic word;
//! - `clock`: the coarse [`LoadClock`] shared by one balancer's endpoints;
//! - `peak_ewma`: the latency estimate and its windows;
//! - `failure_ratio`: outcome counts and the decaying failure ratio;
//! - `cost`: what pickers compare;
//! - `call`: [`CallStart`], [`Outcome`] and [`Signals`];
//! - `failure_codes`: [`CodeSet`], a set of status codes, and [`FailureCodes`], which of them count
//!   against an endpoint.

mod call;
mod clock;
mod cost;
mod failure_codes;
mod failure_ratio;
mod in_flight;
mod peak_ewma;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use call::{CallStart, Outcome, Signals};
pub use clock::LoadClock;
pub use failure_codes::{CODE_NAMES, CodeSet, FailureCodes, code_from_name, code_name};
pub use failure_ratio::FAILURE_RATIO_WEIGHT;
pub use peak_ewma::{DEFAULT_DECAY, DEFAULT_FAILURE_PENALTY, DEFAULT_RTT, DEFAULT_SAMPLE_WINDOW};

use call::{SIGNAL_CONSECUTIVE, SIGNAL_FAILURE_RATIO, SIGNAL_LATENCY};
#[cfg(doc)]
use in_flight::PENDING_ONE;
use peak_ewma::{UNPROBED, is_unsampled, pack_base, unpack_base};

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
/// shares a word with a call count. The benchmark that shows it is `cargo bench -p
/// meshless-balancer --bench pick` (`pick/p2c_ewma/1000` and `pick/least_request/1000`
/// against the 10-endpoint figures, where every line is in cache; see docs/benchmarks.md,
/// "Pick cost").
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
    /// `failures` at the last success, with [`with_consecutive_failures`](Self::with_consecutive_failures).
    last_success_failures: AtomicU64,
    /// When the failure ratio was last updated, in nanoseconds of `clock`.
    failure_stamp_nanos: AtomicU64,
    failure_penalty: Duration,
    /// [`Signals`] as bits.
    /// Atomic so that a channel switching policy can turn on what the new one reads
    /// without losing what the statistics hold ([`add_signals`](Self::add_signals)).
    signals: std::sync::atomic::AtomicU8,
}

/// Packs two `f32` into a word, `high` in the high half.
fn pack_f32(high: f32, low: f32) -> u64 {
    (u64::from(high.to_bits()) << 32) | u64::from(low.to_bits())
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
            last_success_failures: AtomicU64::new(0),
            failure_stamp_nanos: AtomicU64::new(0),
            failure_penalty: DEFAULT_FAILURE_PENALTY,
            signals: std::sync::atomic::AtomicU8::new(Signals::ALL.bits()),
        }
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
    pub fn with_signals(self, signals: Signals) -> Self {
        self.signals
            .store(signals.bits(), std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Also keeps how many calls failed since the last success
    /// ([`consecutive_failures`](Self::consecutive_failures)), for outlier detection: one
    /// more load and store per successful call.
    #[must_use]
    pub fn with_consecutive_failures(self) -> Self {
        self.signals
            .fetch_or(SIGNAL_CONSECUTIVE, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Calls that failed since the last success (0 unless
    /// [`with_consecutive_failures`](Self::with_consecutive_failures) is on). Calls that end
    /// at the same moment may be counted in either order.
    pub fn consecutive_failures(&self) -> u64 {
        if !self.tracks(SIGNAL_CONSECUTIVE) {
            return 0;
        }
        self.failures
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(
                self.last_success_failures
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
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
        self.signals.load(std::sync::atomic::Ordering::Relaxed) & signal != 0
    }

    /// Turns on `signals` as well as those kept already, keeping every count and estimate:
    /// what a channel does when it switches to a policy that reads more (round_robin to
    /// p2c_ewma). The latency estimate starts from its default until the next samples.
    pub fn add_signals(&self, signals: &EndpointStats) {
        let bits = signals.signals.load(std::sync::atomic::Ordering::Relaxed);
        self.signals
            .fetch_or(bits, std::sync::atomic::Ordering::Relaxed);
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
}
