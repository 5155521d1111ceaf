//! `p2c_ewma`: the cheaper of two random endpoints, by peak-EWMA latency × load.

use std::sync::Arc;
use std::time::Duration;

use crate::choice::BestOf;
use crate::config::config_setters;
use crate::stats::{
    DEFAULT_DECAY, DEFAULT_FAILURE_PENALTY, DEFAULT_RTT, DEFAULT_SAMPLE_WINDOW, LoadClock,
};
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
/// The default [`P2cEwmaConfig::load_scale`]: an endpoint holding four times its even share
/// of the calls in flight costs twice its latency (chosen from the `skew` example's
/// `two_slow` runs; see [`P2cEwmaConfig::load_scale`]).
const DEFAULT_LOAD_SCALE: u32 = 4;

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
    /// How in-flight calls weigh against latency. The cost of an endpoint is
    /// `latency × (1 + in_flight / (load_scale × mean_in_flight + 1))`, where
    /// `mean_in_flight` is the balancer's calls in flight divided by its ready endpoints: an
    /// endpoint holding `load_scale` times its even share of the calls costs twice its
    /// latency. `0` gives Finagle's and tower's `latency × (in_flight + 1)`.
    ///
    /// Why not Finagle's: `latency × (in_flight + 1)` prices every call in flight at one
    /// whole latency, as if the endpoint served its calls one at a time. gRPC servers serve
    /// many at once, and at any real concurrency the in-flight count then outweighs latency:
    /// with 50 calls in flight over two endpoints at 2.6 ms and two at 7.5 ms (the `skew`
    /// example's `two_slow`), costs even out only when the slow ones hold 8 calls each, and
    /// they get 13–18 % of the calls, which lands the p99 on them. Measured against the
    /// mean, the trade between load and latency no longer depends on how many calls the
    /// client has in flight: an endpoint `r` times slower than an idle one gets calls only
    /// once that one holds about `(r − 1) × load_scale` times its even share. Among equally
    /// fast endpoints the cost still grows with every call in flight, so they share the
    /// calls evenly.
    ///
    /// Default 4, chosen by measurement (`cargo run --release --example skew`, `two_slow`,
    /// where the fast pair holds twice its even share when it takes every call): the slow
    /// pair got about 2 % of the calls with 2 (the p99 lands on it: 2.1× the all-healthy
    /// p99), 0.6–0.8 % with 3 and 0.15–0.6 % with 4 (p99 1.0–1.4× the all-healthy one),
    /// while four equal endpoints got 23–27 % each at every setting. Larger values trust
    /// latency more and load less. The presets [`go_zero`](Self::go_zero) and
    /// [`kratos`](Self::kratos) set it to 0.
    pub load_scale: u32,
    /// Calls a latency sample is remembered over at most, besides the time constant (see
    /// [`EndpointStats::with_sample_window`]). Default [`DEFAULT_SAMPLE_WINDOW`] (128);
    /// 0 decays by time only. The presets [`go_zero`](Self::go_zero) and
    /// [`kratos`](Self::kratos) set it to 0.
    pub sample_window: u32,
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
            load_scale: DEFAULT_LOAD_SCALE,
            sample_window: DEFAULT_SAMPLE_WINDOW,
            seed: None,
        }
    }
}

impl P2cEwmaConfig {
    /// go-zero's parameters: τ = 10 s decaying by time only, cost `latency × (in_flight +
    /// 1)`, two random choices, no memory. (go-zero also divides by an EWMA of the success
    /// rate; meshless counts failures as a latency penalty and a success ratio instead.)
    pub fn go_zero() -> Self {
        Self::classic().decay(GO_ZERO_DECAY)
    }

    /// kratos's parameters: τ = 600 ms decaying by time only, cost `latency × (in_flight +
    /// 1)`, two random choices, no memory.
    pub fn kratos() -> Self {
        Self::classic().decay(KRATOS_DECAY)
    }

    /// Finagle's and tower's peak EWMA as published: decay by time only, cost
    /// `latency × (in_flight + 1)`, two random choices.
    fn classic() -> Self {
        Self::default().memory(false).load_scale(0).sample_window(0)
    }
}

config_setters!(P2cEwmaConfig {
    load_scale: u32,
    sample_window: u32,
    decay: Duration,
    default_rtt: Duration,
    failure_penalty: Duration,
    choice_count: u32,
    memory: bool,
} optional {
    seed: u64,
});

crate::config::clocked_balancer!(
    /// Power of two choices over peak-EWMA cost, after Finagle's and tower's `p2c` + `PeakEwma`:
    /// each request compares two distinct ready endpoints and takes the one with the lower
    /// `latency × (1 + in_flight / (load_scale × mean_in_flight + 1))`, where latency is
    /// `max(latency estimate, mean age of its pending calls)` and `mean_in_flight` the calls in
    /// flight per ready endpoint. With [`load_scale`](P2cEwmaConfig::load_scale) 0 that is
    /// Finagle's `latency × (in_flight + 1)`; the default (4) weighs in-flight calls against
    /// the mean instead, so latency still counts at high concurrency (see there). The latency
    /// estimate remembers about the last [`sample_window`](P2cEwmaConfig::sample_window) calls
    /// per endpoint, not only the last τ of time, so that one slow call does not mark a busy
    /// endpoint slow for seconds. By default
    /// one candidate is random and the other is the previous pick's winner
    /// ([`memory`](P2cEwmaConfig::memory)); without memory both are random.
    ///
    /// An endpoint that has not answered yet costs 0 while it has nothing in flight, so it is
    /// tried at once (see [`EndpointStats::latency_and_load`]); while its first call is pending
    /// it costs the [`default_rtt`](P2cEwmaConfig::default_rtt).
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
    ///
    /// Give each channel a `P2cEwma` of its own (`.policy("p2c_ewma")` does): the mean load is
    /// counted over every endpoint whose statistics this instance made, so two channels sharing
    /// one would weigh each other's calls. Calls still in flight on endpoints that left the
    /// picker (removed, or no longer ready) count toward that mean until they end, which makes
    /// the load weigh a little less meanwhile.
    P2cEwma(P2cEwmaConfig),
    "p2c_ewma"
);

impl Balancer for P2cEwma {
    fn name(&self) -> &'static str {
        "p2c_ewma"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let entries = ready_weighted(subchannels)
            .into_iter()
            .map(|(index, _)| (index, subchannels[index].stats.clone()))
            .collect::<Vec<_>>();
        self.clock.set_endpoints(entries.len());
        let entries_len = entries.len();
        let c = &self.config;
        Arc::new(P2cPicker {
            entries,
            choose: BestOf::new(c.choice_count, c.memory, c.seed),
            clock: self.clock.clone(),
            scale_per_endpoint: f64::from(c.load_scale) / entries_len.max(1) as f64,
        })
    }

    fn new_stats(&self) -> EndpointStats {
        EndpointStats::new(self.config.decay, self.config.default_rtt)
            .with_failure_penalty(self.config.failure_penalty)
            .with_sample_window(self.config.sample_window)
            .with_clock(self.clock.clone())
    }
}

struct P2cPicker {
    entries: Vec<(usize, Arc<EndpointStats>)>,
    choose: BestOf,
    /// The clock the entries' stats share, for the calls in flight over all of them.
    clock: Arc<LoadClock>,
    /// `load_scale / entries.len()`: times the calls in flight, `load_scale ×
    /// mean_in_flight`.
    scale_per_endpoint: f64,
}

impl Picker for P2cPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        if self.entries.len() < 2 {
            return self.choose.pick_entry(&self.entries, |e| e.0, |_| 0.0);
        }
        // In-flight calls count in units of `load_scale` × the mean per endpoint, + 1.
        // `latency × (1 + in_flight / unit)` ranks endpoints as `latency × (unit +
        // in_flight)` does, `unit` being the same for all: no division per pick.
        let unit = self.clock.in_flight() as f64 * self.scale_per_endpoint + 1.0;
        self.choose.pick_entry(
            &self.entries,
            |e| e.0,
            |(_, stats)| {
                let (latency, in_flight) = stats.latency_and_load();
                stats.scale_by_success(latency * (unit + in_flight as f64))
            },
        )
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

    #[tokio::test(start_paused = true)]
    async fn load_counts_against_the_mean_not_as_whole_latencies() {
        // Endpoint 0 answered in 1 ms and holds 5 calls; endpoint 1 answered in 3 ms and is
        // idle. Default: 5 calls against a mean of 2.5 per endpoint cost 1 ms × (1 + 5 /
        // (4 × 2.5 + 1)) = 1.45 ms, less than 3 ms. Finagle's (load_scale 0): 1 ms × 6 = 6 ms.
        let ms = Duration::from_millis;
        for (config, winner) in [
            (P2cEwmaConfig::default(), 0),
            (P2cEwmaConfig::default().load_scale(0), 1),
        ] {
            let p = P2cEwma::new(config.seed(1));
            let subs = subs_with_stats(&p, 2);
            let now = tokio::time::Instant::now;
            subs[0].stats.observe(ms(1), now());
            subs[1].stats.observe(ms(3), now());
            let _calls: Vec<_> = (0..5).map(|_| subs[0].stats.start()).collect();
            let picker = p.build(&subs);
            let picks = pick_n(&*picker, 20);
            assert!(picks.iter().all(|&i| i == winner), "{picks:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_refuses_every_call_is_not_a_black_hole() {
        // Three endpoints answer in 1 ms; a new one refuses every stream, so the channel
        // abandons each call it sends there (and retries elsewhere). Free to try only until
        // its first call started, it then costs the 30 ms default RTT and loses; were it free
        // again after each abandoned call, the remembered winner would be it, every time.
        let p = P2cEwma::new(P2cEwmaConfig::default().seed(9));
        let subs = subs_with_stats(&p, 4);
        let now = tokio::time::Instant::now;
        for s in &subs[..3] {
            s.stats.observe(Duration::from_millis(1), now());
        }
        let picker = p.build(&subs);
        let mut refused = 0;
        for _ in 0..1000 {
            let i = pick_n(&*picker, 1)[0];
            let call = subs[i].stats.start();
            if i == 3 {
                refused += 1;
                subs[i].stats.abandon(call);
            } else {
                subs[i].stats.finish(call, true);
            }
        }
        assert!(
            refused <= 1,
            "{refused} of 1000 picks went to the refusing endpoint"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_pair_gets_almost_nothing_at_high_concurrency() {
        // brpc's "two of four slow" at concurrency 40: four endpoints at 1 ms, two of them
        // 5 ms slower. Finagle's cost sends the slow pair calls until each holds two or
        // three; weighed against the mean load, only the calls before the first answers.
        let slow = |config: P2cEwmaConfig| async move {
            let p = P2cEwma::new(config.seed(17));
            let subs = subs_with_stats(&p, 4);
            let picker = p.build(&subs);
            let ms = Duration::from_millis;
            let lat = [ms(1), ms(1), ms(6), ms(6)];
            let picks = simulate(&*picker, &subs, |i| (lat[i], true), 40, 20_000).await;
            let c = counts(&picks, 4);
            c[2] + c[3]
        };
        let finagle = slow(P2cEwmaConfig::default().load_scale(0)).await;
        let default = slow(P2cEwmaConfig::default()).await;
        // Before the first answer nothing tells the endpoints apart, so the first 40 calls
        // spread over all four (21 of them, with this seed, on the slow pair); after that
        // the slow pair gets none. Finagle's cost: 667 calls (3.3 %).
        assert!(default <= 40, "{default} calls on the slow pair");
        assert!(finagle > 400, "{finagle} calls on the slow pair");
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_answer_does_not_starve_an_endpoint() {
        // Four equal endpoints at 1 ms, concurrency 40; the 400th outcome drawn (about the
        // 200th call) takes 20 ms.
        // The peak rule sets that endpoint's estimate to 20 ms and it loses every comparison.
        // Decaying by time only (τ = 10 s, Finagle's), the estimate stays far above the
        // others' for the whole half second the run takes: the endpoint starves. With the
        // window, the peak fades over the balancer's calls while the endpoint is idle (about
        // 2,500 calls here), it is tried again, and the four then share evenly.
        let picks = |config: P2cEwmaConfig| async move {
            let p = P2cEwma::new(config.seed(23));
            let subs = subs_with_stats(&p, 4);
            let picker = p.build(&subs);
            let n = std::cell::Cell::new(0u64);
            let outcome = |_| {
                n.set(n.get() + 1);
                let ms = if n.get() == 400 { 20 } else { 1 };
                (Duration::from_millis(ms), true)
            };
            simulate(&*picker, &subs, outcome, 40, 20_000).await
        };
        let windowed = picks(P2cEwmaConfig::default()).await;
        let late = counts(&windowed[10_000..], 4);
        assert!(late.iter().all(|&k| k.abs_diff(2500) < 250), "{late:?}");
        let by_time = counts(&picks(P2cEwmaConfig::default().sample_window(0)).await, 4);
        assert!(by_time.iter().any(|&k| k < 500), "{by_time:?}");
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
        // more than a sixth of the calls (3,339 with this seed). With memory a slow one is
        // taken only when cheaper than the last winner (the fast ones' recent answer), which
        // here it never is after the start: 3 calls.
        let plain = slow_pair_calls(false).await;
        let remembered = slow_pair_calls(true).await;
        assert!(plain > 20_000 / 6, "{plain}");
        assert!(remembered < 200, "{remembered} vs {plain}");
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
