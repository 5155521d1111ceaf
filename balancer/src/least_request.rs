//! `least_request`: the least loaded of a few random endpoints, by calls in flight.

use std::sync::Arc;
use std::time::Duration;

use crate::choice::BestOf;
use crate::config::config_setters;
use crate::stats::{DEFAULT_DECAY, DEFAULT_RTT, Signals};
use crate::{Balancer, EndpointStats, Pick, PickRequest, Picker, SubchannelView, ready_weighted};

/// Candidates compared per pick by default: 2 (gRPC A48 `choice_count` default).
const DEFAULT_CHOICE_COUNT: u32 = 2;

/// Configuration of [`LeastRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeastRequestConfig {
    /// Distinct random candidates compared per pick, clamped to
    /// [[`MIN_CHOICES`](crate::MIN_CHOICES), [`MAX_CHOICES`](crate::MAX_CHOICES)] as gRPC A48
    /// does. Default 2.
    pub choice_count: u32,
    /// Time constant with which an endpoint's failure ratio decays toward 0 while it gets no
    /// calls, so one shunned for failing is tried again. Default [`DEFAULT_DECAY`] (10 s).
    pub failure_decay: Duration,
    /// One candidate is the previous pick's winner instead of a random endpoint, as
    /// [`P2cEwmaConfig::memory`](crate::P2cEwmaConfig::memory) explains. Default `false`,
    /// so that `least_request` is A48's, which draws every candidate at random. (In the
    /// `skew` example memory cut least_request's p90 from 60 to 19 ms, its p99.9 less.)
    pub memory: bool,
    /// Seeds the picker's random numbers, for reproducible tests and benchmarks. Default
    /// `None`: a per-thread generator seeded from the OS.
    pub seed: Option<u64>,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        LeastRequestConfig {
            choice_count: DEFAULT_CHOICE_COUNT,
            failure_decay: DEFAULT_DECAY,
            memory: false,
            seed: None,
        }
    }
}

config_setters!(LeastRequestConfig {
    choice_count: u32,
    failure_decay: Duration,
    memory: bool,
} optional {
    seed: u64,
});

crate::config::clocked_balancer!(
    /// gRPC's `least_request_experimental` (A48): each request draws
    /// [`choice_count`](LeastRequestConfig::choice_count) distinct ready endpoints at random
    /// and takes the one with the fewest calls in flight.
    ///
    /// Weights are honoured as Envoy's least-request balancer does: candidates are compared by
    /// `(in_flight + 1) / weight`, so under load an endpoint of weight 2 carries about twice the
    /// calls of one of weight 1 (the `+ 1` makes the heavier one win between idle endpoints).
    /// Endpoints of weight 0 are used only when all ready ones are.
    ///
    /// **Deviation from A48: failures count.** A48 looks at calls in flight only, so an
    /// endpoint that fails every call at once is always idle and wins every comparison it takes
    /// part in: with two choices it draws about `2/n` of the traffic, twice its fair share, and
    /// turns most of it into errors. meshless divides the cost by the endpoint's recent success
    /// ratio, `(in_flight + 1) / (weight × (1 − failure_ratio))` (see
    /// [`EndpointStats::scale_by_success`]; go-zero's p2c divides by a success EWMA the same way).
    /// An endpoint failing half its calls then counts double; one failing all of them loses
    /// after a handful of calls, and is retried only as its failure ratio decays with
    /// [`failure_decay`](LeastRequestConfig::failure_decay): a few probes a second whatever the
    /// request rate, so its share falls toward 0 over time, and it wins its share back within
    /// tens of calls once it answers again. For endpoints that have not failed lately the ratio
    /// is exactly 0 and the choice is A48's.
    ///
    /// The statistics must come from [`new_stats`](Balancer::new_stats) for the failure ratio to
    /// decay while an endpoint is shunned (they share one [`LoadClock`](crate::LoadClock)).
    LeastRequest(LeastRequestConfig),
    "least_request"
);

impl Balancer for LeastRequest {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let entries = ready_weighted(subchannels)
            .into_iter()
            .map(|(index, weight)| Entry {
                index,
                inv_weight: 1.0 / f64::from(weight),
                stats: subchannels[index].stats.clone(),
            })
            .collect();
        let c = &self.config;
        Arc::new(LeastRequestPicker {
            entries,
            choose: BestOf::new(c.choice_count, c.memory, c.seed),
        })
    }

    fn new_stats(&self) -> EndpointStats {
        // The failure ratio only: the picker reads no latency (the decay given is the
        // failure ratio's).
        EndpointStats::new(self.config.failure_decay, DEFAULT_RTT)
            .with_signals(Signals {
                failure_ratio: true,
                ..Signals::COUNTS
            })
            .with_clock(self.clock.clone())
    }
}

struct Entry {
    index: usize,
    inv_weight: f64,
    stats: Arc<EndpointStats>,
}

impl Entry {
    /// `(in_flight + 1) / (weight × success ratio)`; A48's (weighted) load while healthy.
    #[inline]
    fn cost(&self) -> f64 {
        let load = (self.stats.in_flight() as f64 + 1.0) * self.inv_weight;
        self.stats.scale_by_success(load)
    }
}

struct LeastRequestPicker {
    entries: Vec<Entry>,
    choose: BestOf,
}

impl Picker for LeastRequestPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        self.choose
            .pick_entry(&self.entries, |e| e.index, Entry::cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectivityState::*;
    use crate::test_util::{counts, pick_n, simulate, subchannels, weighted};

    fn policy(choices: u32) -> LeastRequest {
        LeastRequest::new(LeastRequestConfig::default().choice_count(choices).seed(11))
    }

    /// Gives `subs` stats from `p`, as the channel does.
    fn with_stats(p: &LeastRequest, mut subs: Vec<SubchannelView>) -> Vec<SubchannelView> {
        for s in &mut subs {
            s.stats = Arc::new(p.new_stats());
        }
        subs
    }

    #[test]
    fn prefers_fewer_in_flight_among_ready() {
        let subs = subchannels(&[Ready, Ready, Connecting, Ready]);
        for _ in 0..5 {
            let _ = subs[0].stats.start();
        }
        let _ = subs[3].stats.start();
        // With all three ready ones compared, the idle one always wins.
        let picker = policy(10).build(&subs);
        assert!(pick_n(&*picker, 100).iter().all(|&i| i == 1));
        // With two, the busiest never wins.
        let c = counts(&pick_n(&*policy(2).build(&subs), 3000), 4);
        assert_eq!((c[0], c[2]), (0, 0), "{c:?}");
        assert!(c[1] > c[3], "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_endpoint_gets_clearly_less() {
        let p = policy(2);
        let subs = with_stats(&p, subchannels(&[Ready; 4]));
        let picker = p.build(&subs);
        let ms = Duration::from_millis;
        let lat = [ms(1), ms(1), ms(1), ms(10)];
        let picks = simulate(&*picker, &subs, |i| (lat[i], true), 8, 20_000).await;
        let c = counts(&picks, 4);
        assert!(c[3] < 5000 / 2, "{c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_divide_by_the_success_ratio() {
        // Endpoint 1 has one call in flight: cost 2. Endpoint 0 is idle (cost 1) but failing.
        let p = policy(10);
        let subs = with_stats(&p, subchannels(&[Ready, Ready]));
        let _ = subs[1].stats.start();
        let fail = |n| {
            for _ in 0..n {
                let call = subs[0].stats.start();
                subs[0].stats.finish(call, false);
            }
        };
        // 6 failures: ratio 1 − 0.9⁶ = 0.469, cost 1 / 0.531 = 1.88 < 2, still the cheaper.
        fail(6);
        assert!((subs[0].stats.failure_ratio() - (1.0 - 0.9f64.powi(6))).abs() < 1e-12);
        assert!(pick_n(&*p.build(&subs), 100).iter().all(|&i| i == 0));
        // A 7th: ratio 0.522, cost 2.09 > 2: it loses every comparison.
        fail(1);
        assert!(pick_n(&*p.build(&subs), 100).iter().all(|&i| i == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_failing_endpoint_gets_at_most_fair_share_then_less() {
        let p = policy(2);
        let subs = with_stats(&p, subchannels(&[Ready; 4]));
        let picker = p.build(&subs);
        let ok = Duration::from_millis(5);
        let fail = Duration::from_micros(10);
        let outcome = |i: usize| if i == 0 { (fail, false) } else { (ok, true) };
        let picks = simulate(&*picker, &subs, outcome, 8, 20_000).await;
        let fair = picks.len() / 4;
        let c = counts(&picks, 4);
        assert!(c[0] <= fair, "{c:?}");
        // The run covers 20,000 × 5 ms / 8 ≈ 12.5 s; in its second half the endpoint is
        // only probed as its failure ratio decays, a few times a second.
        let late = counts(&picks[picks.len() / 2..], 4);
        assert!(
            late[0] <= c[0] / 2 && late[0] < fair / 10,
            "{c:?} then {late:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_endpoint_is_retried_after_decay_and_recovers() {
        let p = policy(10);
        let subs = with_stats(&p, subchannels(&[Ready, Ready]));
        for _ in 0..50 {
            let call = subs[0].stats.start();
            subs[0].stats.finish(call, false);
        }
        let busy = subs[1].stats.start();
        let picker = p.build(&subs);
        assert!(pick_n(&*picker, 100).iter().all(|&i| i == 1));
        // Ratio 1 − 0.9⁵⁰ ≈ 0.995; after one τ (10 s), seen through endpoint 1's completion
        // (so 0 in flight there: cost 1), e^-1 × 0.995 = 0.366: cost 1.58 > 1, still shunned.
        tokio::time::advance(Duration::from_secs(10)).await;
        subs[1].stats.finish(busy, true);
        assert!(pick_n(&*picker, 100).iter().all(|&i| i == 1));
        // With 2 in flight on endpoint 1 (cost 3) it is the cheaper again.
        let _ = subs[1].stats.start();
        let _ = subs[1].stats.start();
        assert!(pick_n(&*picker, 100).iter().all(|&i| i == 0));
        // It answers again: five successes bring the ratio to 0.366 × 0.9⁵ = 0.216, cost
        // 1.28 with nothing in flight, below endpoint 1's 3.
        for _ in 0..5 {
            let call = subs[0].stats.start();
            subs[0].stats.finish(call, true);
        }
        let f = subs[0].stats.failure_ratio();
        assert!((f - 0.366 * 0.9f64.powi(5)).abs() < 1e-3, "{f}");
    }

    #[test]
    fn weights_scale_in_flight() {
        // Weight 3 with 2 in flight costs 1; weight 1 with 1 in flight costs 2.
        let subs = weighted(&[3, 1]);
        let _ = subs[0].stats.start();
        let _ = subs[0].stats.start();
        let _ = subs[1].stats.start();
        assert!(
            pick_n(&*policy(2).build(&subs), 100)
                .iter()
                .all(|&i| i == 0)
        );
        // Weight 0 is left out while another endpoint is ready.
        let subs = weighted(&[0, 1]);
        assert!(
            pick_n(&*policy(2).build(&subs), 100)
                .iter()
                .all(|&i| i == 1)
        );
    }
}
