//! `p2c_ewma`: the cheaper of two random endpoints, by peak-EWMA latency × load.

use std::sync::Arc;
use std::time::Duration;

use crate::choice::BestOf;
use crate::stats::{DEFAULT_DECAY, DEFAULT_FAILURE_PENALTY, DEFAULT_RTT, LoadClock};
use crate::{Balancer, EndpointStats, Pick, PickRequest, Picker, SubchannelView, ready_weighted};

/// kratos's EWMA time constant: 600 ms (`tau` in `selector/p2c/p2c.go` of go-kratos).
const KRATOS_DECAY: Duration = Duration::from_millis(600);
/// go-zero's EWMA time constant: 10 s (`decayTime` in `zrpc/internal/balancer/p2c`).
const GO_ZERO_DECAY: Duration = Duration::from_secs(10);
/// Candidates compared per pick by default: two, "the power of two choices" (Mitzenmacher).
const DEFAULT_CHOICE_COUNT: u32 = 2;
/// Whether one candidate is the previous pick's winner by default (see
/// [`P2cEwmaConfig::memory`]; chosen from the `skew` example's `two_slow` runs).
const DEFAULT_MEMORY: bool = true;

/// Configuration of [`P2cEwma`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct P2cEwmaConfig {
    /// Time constant τ of the latency EWMA. Default [`DEFAULT_DECAY`] (10 s, Finagle's).
    pub decay: Duration,
    /// Latency estimate of an endpoint before its first answer. Default [`DEFAULT_RTT`] (30 ms).
    pub default_rtt: Duration,
    /// Least latency a failed call counts as. Default [`DEFAULT_FAILURE_PENALTY`] (1 s). The
    /// failure ratio also decays with [`decay`](Self::decay).
    pub failure_penalty: Duration,
    /// Distinct random candidates compared per pick, clamped to
    /// [[`MIN_CHOICES`](crate::MIN_CHOICES), [`MAX_CHOICES`](crate::MAX_CHOICES)]. Default 2.
    pub choice_count: u32,
    /// "Power of two choices with memory" (Mitzenmacher, Prabhakar and Shah, "Load
    /// balancing with memory", FOCS 2002): one of the candidates is the endpoint the previous
    /// pick chose instead of a random one, and the winner is remembered for the next pick.
    ///
    /// Why: with plain best-of-2, two random candidates are both slow with probability
    /// `s(s−1) / n(n−1)` for `s` slow endpoints of `n` (1 in 6 for 2 of 4), and then a slow
    /// one is taken however idle the fast ones are. The remembered endpoint is the last
    /// winner, so usually a cheap one: a slow endpoint is taken only when it is cheaper than
    /// that, i.e. when the fast ones are really more loaded. Herding onto the remembered
    /// endpoint is held back by the cost itself: each call started on it raises its
    /// `in_flight + 1` factor before the next pick reads it.
    ///
    /// Default `true`. The presets [`go_zero`](Self::go_zero) and [`kratos`](Self::kratos)
    /// set it to `false`, as those projects pick two at random.
    pub memory: bool,
    /// Seeds the picker's random numbers, for reproducible tests and benchmarks. Default
    /// `None`: a per-thread generator seeded from the OS.
    pub seed: Option<u64>,
}

impl Default for P2cEwmaConfig {
    fn default() -> Self {
        P2cEwmaConfig {
            decay: DEFAULT_DECAY,
            default_rtt: DEFAULT_RTT,
            failure_penalty: DEFAULT_FAILURE_PENALTY,
            choice_count: DEFAULT_CHOICE_COUNT,
            memory: DEFAULT_MEMORY,
            seed: None,
        }
    }
}

impl P2cEwmaConfig {
    /// go-zero's parameters: τ = 10 s, two random choices, no memory. (go-zero also divides
    /// by an EWMA of the success rate; meshless counts failures as a latency penalty
    /// instead.)
    pub fn go_zero() -> Self {
        Self::default().decay(GO_ZERO_DECAY).memory(false)
    }

    /// kratos's parameters: τ = 600 ms, two random choices, no memory.
    pub fn kratos() -> Self {
        Self::default().decay(KRATOS_DECAY).memory(false)
    }

    /// Sets [`decay`](Self::decay).
    #[must_use]
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// Sets [`default_rtt`](Self::default_rtt).
    #[must_use]
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// Sets [`failure_penalty`](Self::failure_penalty).
    #[must_use]
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Sets [`choice_count`](Self::choice_count).
    #[must_use]
    pub fn choice_count(mut self, n: u32) -> Self {
        self.choice_count = n;
        self
    }

    /// Sets [`memory`](Self::memory).
    #[must_use]
    pub fn memory(mut self, memory: bool) -> Self {
        self.memory = memory;
        self
    }

    /// Sets [`seed`](Self::seed).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// Power of two choices over peak-EWMA cost, as Finagle's and tower's `p2c` + `PeakEwma`:
/// each request compares two distinct ready endpoints and takes the one with the lower
/// `max(latency estimate, mean age of its pending calls) × (in-flight + 1)`. By default one
/// candidate is random and the other is the previous pick's winner
/// ([`memory`](P2cEwmaConfig::memory)); without memory both are random.
///
/// The pending calls' age (see [`EndpointStats::load_cost`]) is what keeps a slow endpoint
/// that has not answered yet, such as a new one still at the default RTT, from taking
/// call after call until its first slow answer comes back.
///
/// The estimate is a peak EWMA (see [`EndpointStats`]): it jumps up at once on a slow call
/// and decays with time constant [`decay`](P2cEwmaConfig::decay), also while the endpoint
/// receives nothing, so a shunned endpoint is retried. A failed call counts as at least
/// [`failure_penalty`](P2cEwmaConfig::failure_penalty), so an endpoint that fails fast looks
/// slow instead of fast, and the cost is divided by the endpoint's recent success ratio
/// ([`EndpointStats::scale_by_success`]). The penalty alone is not enough: under load, when
/// healthy latency × (in-flight + 1) nears the penalty, a failing endpoint would win again;
/// the ratio keeps it a thousand times dearer whatever the healthy endpoints' latency. Endpoints of weight 0 are used only when all ready ones are;
/// other weights are ignored.
///
/// The statistics must come from [`new_stats`](Balancer::new_stats) for the configured
/// decay, starting RTT and penalty to apply, and for idle endpoints to see time pass.
#[derive(Debug)]
pub struct P2cEwma {
    config: P2cEwmaConfig,
    clock: Arc<LoadClock>,
}

impl Default for P2cEwma {
    fn default() -> Self {
        Self::new(P2cEwmaConfig::default())
    }
}

impl P2cEwma {
    /// A p2c_ewma policy with `config`.
    pub fn new(config: P2cEwmaConfig) -> Self {
        P2cEwma {
            config,
            clock: Arc::new(LoadClock::new()),
        }
    }
}

impl Balancer for P2cEwma {
    fn name(&self) -> &'static str {
        "p2c_ewma"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let entries = ready_weighted(subchannels)
            .into_iter()
            .map(|(index, _)| (index, subchannels[index].stats.clone()))
            .collect();
        let c = &self.config;
        Arc::new(P2cPicker {
            entries,
            choose: BestOf::new(c.choice_count, c.memory, c.seed),
        })
    }

    fn new_stats(&self) -> EndpointStats {
        EndpointStats::new(self.config.decay, self.config.default_rtt)
            .with_failure_penalty(self.config.failure_penalty)
            .with_clock(self.clock.clone())
    }
}

struct P2cPicker {
    entries: Vec<(usize, Arc<EndpointStats>)>,
    choose: BestOf,
}

impl Picker for P2cPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        match self.entries.len() {
            0 => Pick::Queue,
            1 => Pick::Ready(self.entries[0].0),
            n => {
                let best = self.choose.pick(n, |i| {
                    let stats = &self.entries[i].1;
                    stats.scale_by_success(stats.load_cost())
                });
                Pick::Ready(self.entries[best].0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{counts, many, pick_n, simulate};

    fn policy() -> P2cEwma {
        P2cEwma::new(P2cEwmaConfig::default().seed(7))
    }

    fn subs_with_stats(p: &P2cEwma, n: usize) -> Vec<SubchannelView> {
        let mut subs = many(n);
        for s in &mut subs {
            s.stats = Arc::new(p.new_stats());
        }
        subs
    }

    #[tokio::test(start_paused = true)]
    async fn slow_endpoint_gets_clearly_less() {
        let p = policy();
        let subs = subs_with_stats(&p, 4);
        let picker = p.build(&subs);
        let ms = Duration::from_millis;
        let lat = [ms(1), ms(1), ms(1), ms(10)];
        let picks = simulate(&*picker, &subs, |i| (lat[i], true), 8, 20_000).await;
        let c = counts(&picks, 4);
        // Fair share is 5000; the 10× slower endpoint should get a small fraction of it.
        assert!(c[3] < 1250, "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_failing_endpoint_gets_at_most_fair_share_then_less() {
        let p = policy();
        let subs = subs_with_stats(&p, 4);
        let picker = p.build(&subs);
        let lat = Duration::from_millis(5);
        let fail = Duration::from_micros(10);
        let outcome = |i: usize| if i == 0 { (fail, false) } else { (lat, true) };
        let picks = simulate(&*picker, &subs, outcome, 8, 20_000).await;
        let fair = picks.len() / 4;
        let c = counts(&picks, 4);
        assert!(c[0] <= fair, "{c:?}");
        let late = counts(&picks[picks.len() / 2..], 4);
        assert!(
            late[0] <= c[0] / 2 && late[0] < fair / 10,
            "{c:?} then {late:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shunned_endpoint_is_retried_after_decay() {
        let p = P2cEwma::new(P2cEwmaConfig::kratos().seed(3));
        let subs = subs_with_stats(&p, 2);
        subs[0]
            .stats
            .observe(Duration::from_secs(1), tokio::time::Instant::now());
        subs[1]
            .stats
            .observe(Duration::from_millis(10), tokio::time::Instant::now());
        let picker = p.build(&subs);
        assert!(pick_n(&*picker, 100).iter().all(|&i| i == 1));
        // Ten τ later (6 s), 1 s × e^-10 ≈ 45 µs < 10 ms: endpoint 0 is cheaper again. The
        // clock moves through endpoint 1's completions.
        tokio::time::advance(Duration::from_secs(6)).await;
        subs[1]
            .stats
            .observe(Duration::from_millis(10), tokio::time::Instant::now());
        assert!(pick_n(&*picker, 10).iter().all(|&i| i == 0));
    }

    #[tokio::test(start_paused = true)]
    async fn load_state_survives_rebuild() {
        let p = policy();
        let mut subs = subs_with_stats(&p, 3);
        subs[1]
            .stats
            .observe(Duration::from_secs(2), tokio::time::Instant::now());
        let _ = subs[2].stats.start();
        let _ = p.build(&subs);
        // Endpoint 0 leaves, a new one arrives; 1 and 2 keep what they learned.
        subs.remove(0);
        let mut fresh = subs_with_stats(&p, 5);
        subs.push(fresh.remove(4));
        let picker = p.build(&subs);
        let c = counts(&pick_n(&*picker, 3000), 3);
        // The slow one (now index 0) loses every comparison; the one with a call in flight
        // (index 1) loses to the fresh idle one.
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] < c[2], "{c:?}");
        assert_eq!(subs[1].stats.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_endpoint_loses_even_when_healthy_ones_are_slower_than_the_penalty() {
        // Healthy endpoints at 2 s (above the 1 s penalty) against one that fails in 10 µs:
        // by latency alone the failing one would look cheaper; its failure ratio after ten
        // failures (1 − 0.9¹⁰ = 0.65) makes it 1 s / 0.35 = 2.9 s > 2 s.
        let p = policy();
        let subs = subs_with_stats(&p, 2);
        let now = tokio::time::Instant::now;
        subs[1].stats.observe(Duration::from_secs(2), now());
        for _ in 0..10 {
            let call = subs[0].stats.start();
            subs[0].stats.finish(call, false);
        }
        assert_eq!(subs[0].stats.latency_ewma(), Duration::from_secs(1));
        let cost0 = subs[0].stats.scale_by_success(subs[0].stats.load_cost());
        assert!(
            (cost0 / 1e9 - 1.0 / 0.9f64.powi(10)).abs() < 1e-9,
            "{cost0}"
        );
        assert!(pick_n(&*p.build(&subs), 100).iter().all(|&i| i == 1));
    }

    #[test]
    fn presets() {
        assert_eq!(P2cEwmaConfig::go_zero().decay, Duration::from_secs(10));
        assert_eq!(P2cEwmaConfig::kratos().decay, Duration::from_millis(600));
        assert!(P2cEwmaConfig::default().memory);
        assert!(!P2cEwmaConfig::go_zero().memory && !P2cEwmaConfig::kratos().memory);
        let s = P2cEwma::new(P2cEwmaConfig::default().default_rtt(Duration::from_millis(7)))
            .new_stats();
        assert_eq!(s.latency_ewma(), Duration::from_millis(7));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_age_turns_picks_away_before_the_first_answer() {
        let p = P2cEwma::new(P2cEwmaConfig::default().seed(5));
        let subs = subs_with_stats(&p, 2);
        let now = tokio::time::Instant::now;
        // Endpoint 1 answered in 80 ms: cost 80 ms. Endpoint 0 is new (30 ms) and has one
        // call out: 30 ms × 2 = 60 ms, the cheaper.
        subs[1].stats.observe(Duration::from_millis(80), now());
        let _pending = subs[0].stats.start();
        let picker = p.build(&subs);
        assert_eq!(subs[0].stats.load_cost(), 60e6);
        assert!(pick_n(&*picker, 10).iter().all(|&i| i == 0));
        // 100 ms on without an answer from it: its call is 100 ms old, so it costs at least
        // 100 ms × 2 = 200 ms (estimate-only it would still be 59.4 ms).
        tokio::time::advance(Duration::from_millis(100)).await;
        subs[1].stats.observe(Duration::from_millis(80), now());
        assert_eq!(subs[0].stats.load_cost(), 200e6);
        assert!(pick_n(&*picker, 10).iter().all(|&i| i == 1));
    }

    /// 20,000 calls at concurrency 8 over 4 endpoints at 1 ms, two of them at 6 ms:
    /// the calls sent to the slow two.
    async fn slow_pair_calls(memory: bool) -> usize {
        let p = P2cEwma::new(P2cEwmaConfig::default().memory(memory).seed(11));
        let subs = subs_with_stats(&p, 4);
        let picker = p.build(&subs);
        let ms = Duration::from_millis;
        let lat = [ms(1), ms(1), ms(6), ms(6)];
        let picks = simulate(&*picker, &subs, |i| (lat[i], true), 8, 20_000).await;
        let c = counts(&picks, 4);
        c[2] + c[3]
    }

    #[tokio::test(start_paused = true)]
    async fn memory_keeps_calls_off_a_slow_pair() {
        // Without memory both candidates are slow in 1 pick of 6, so the slow pair gets
        // more than a sixth of the calls (3,357 with this seed). With memory a slow one is
        // taken only when cheaper than the last winner: less than half that sixth (1,034).
        let plain = slow_pair_calls(false).await;
        let remembered = slow_pair_calls(true).await;
        assert!(plain > 20_000 / 6, "{plain}");
        assert!(remembered < 20_000 / 12, "{remembered} vs {plain}");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_does_not_herd() {
        // Four equal endpoints: the remembered one wins only while it is no dearer than a
        // random other, and every call started on it makes it dearer, so the calls spread
        // evenly instead of piling onto the last winner.
        let p = P2cEwma::new(P2cEwmaConfig::default().seed(13));
        let subs = subs_with_stats(&p, 4);
        let picker = p.build(&subs);
        let lat = Duration::from_millis(1);
        let picks = simulate(&*picker, &subs, |_| (lat, true), 8, 20_000).await;
        let c = counts(&picks, 4);
        assert!(c.iter().all(|&n| n.abs_diff(5000) < 500), "{c:?}");
    }
}
