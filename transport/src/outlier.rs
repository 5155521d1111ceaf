//! Outlier detection (gRPC A50, with Envoy's and Linkerd's consecutive-failure rule): which
//! endpoints to take out of the picker for a while because they fail more than their peers.
//!
//! The detector is plain arithmetic over counters the call path already keeps
//! ([`EndpointStats`] successes, failures and failures since the last success); the control
//! task runs it and applies its decisions. An ejected endpoint keeps its connection; it only
//! leaves the picker. "Failure" is meshless's own classification
//! ([`FailureCodes`](meshless_balancer::FailureCodes)), not grpc-go's "any non-OK status".

use std::time::Duration;

use meshless_balancer::EndpointStats;
use meshless_discovery::Address;
use tokio::time::Instant;

/// The settings of outlier detection: gRPC A50's `outlier_detection_experimental` with its
/// field names, plus consecutive failures. [`OutlierDetection::default`] turns on all three
/// algorithms with A50's, Envoy's and Linkerd's defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutlierDetection {
    /// How often the success-rate and failure-percentage algorithms run (`interval`, 10 s).
    pub interval: Duration,
    /// An endpoint's first ejection lasts this long; the n-th, n times as long
    /// (`baseEjectionTime`, 30 s).
    pub base_ejection_time: Duration,
    /// No ejection lasts longer (`maxEjectionTime`, 300 s; at least `base_ejection_time`).
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once, but always at least one
    /// (`maxEjectionPercent`, 10).
    pub max_ejection_percent: u32,
    /// `successRateEjection`; `None` turns it off.
    pub success_rate: Option<SuccessRateEjection>,
    /// `failurePercentageEjection`; `None` turns it off.
    pub failure_percentage: Option<FailurePercentageEjection>,
    /// Eject an endpoint whose last this-many calls all failed (Envoy's `consecutive_5xx`,
    /// Linkerd's consecutive failures: 5), checked every [`CONSECUTIVE_CHECK`] or every
    /// `interval` if shorter. It protects the small sets that A50's 5-host minimum leaves
    /// alone. `None` turns it off.
    pub consecutive_failures: Option<u32>,
}

/// How often the consecutive-failure rule is checked at most.
pub const CONSECUTIVE_CHECK: Duration = Duration::from_secs(1);

/// A50's success-rate ejection: an endpoint whose success rate over the last interval is
/// below `mean − stdev × stdev_factor / 1000` of its peers' is ejected.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SuccessRateEjection {
    /// `stdevFactor` in thousandths (1900: 1.9 standard deviations).
    pub stdev_factor: u32,
    /// `enforcementPercentage`: the chance, in percent, that a detected outlier is ejected.
    pub enforcement_percentage: u32,
    /// `minimumHosts`: the algorithm runs only when this many endpoints had enough calls.
    pub minimum_hosts: u32,
    /// `requestVolume`: the calls an endpoint needs in the interval to be judged.
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        SuccessRateEjection {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// A50's failure-percentage ejection: an endpoint whose failures over the last interval are
/// above `threshold` percent is ejected.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FailurePercentageEjection {
    /// `threshold`, in percent (85).
    pub threshold: u32,
    /// `enforcementPercentage` (100).
    pub enforcement_percentage: u32,
    /// `minimumHosts` (5).
    pub minimum_hosts: u32,
    /// `requestVolume` (50).
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        FailurePercentageEjection {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: Some(FailurePercentageEjection::default()),
            consecutive_failures: Some(5),
        }
    }
}

impl OutlierDetection {
    /// Sets `interval`.
    #[must_use]
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// Sets `baseEjectionTime` and `maxEjectionTime`.
    #[must_use]
    pub fn ejection_time(mut self, base: Duration, max: Duration) -> Self {
        self.base_ejection_time = base;
        self.max_ejection_time = max;
        self
    }

    /// Sets `maxEjectionPercent` (values above 100 are taken as 100).
    #[must_use]
    pub fn max_ejection_percent(mut self, percent: u32) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }

    /// Sets or turns off success-rate ejection.
    #[must_use]
    pub fn success_rate(mut self, s: Option<SuccessRateEjection>) -> Self {
        self.success_rate = s;
        self
    }

    /// Sets or turns off failure-percentage ejection.
    #[must_use]
    pub fn failure_percentage(mut self, f: Option<FailurePercentageEjection>) -> Self {
        self.failure_percentage = f;
        self
    }

    /// Sets or turns off consecutive-failure ejection.
    #[must_use]
    pub fn consecutive_failures(mut self, n: Option<u32>) -> Self {
        self.consecutive_failures = n.filter(|&n| n > 0);
        self
    }

    /// How long an endpoint ejected for the `multiplier`-th time stays out.
    fn ejection_for(&self, multiplier: u32) -> Duration {
        let cap = self.max_ejection_time.max(self.base_ejection_time);
        self.base_ejection_time
            .checked_mul(multiplier.max(1))
            .unwrap_or(Duration::MAX)
            .min(cap)
    }

    /// How often the control task should call [`Detector::tick`].
    pub(crate) fn tick_every(&self) -> Duration {
        let interval = self.interval.max(Duration::from_millis(1));
        if self.consecutive_failures.is_some() {
            interval.min(CONSECUTIVE_CHECK)
        } else {
            interval
        }
    }
}

/// What the detector knows of one endpoint. Kept by address, so it survives endpoint set
/// changes as the load statistics do.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    /// Counters at the start of the current interval.
    successes: u64,
    failures: u64,
    /// `failures` when it was last ejected: the consecutive count starts again after.
    failures_at_ejection: u64,
    /// How many ejections its next ejection time is multiplied by.
    multiplier: u32,
    ejected_at: Option<Instant>,
}

impl Host {
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_at.is_some()
    }
}

/// One endpoint as a tick sees it.
pub(crate) struct Sample<'a> {
    pub addr: &'a Address,
    pub stats: &'a EndpointStats,
    /// Connected (and healthy, where health checking is on), ejected or not.
    pub ready: bool,
}

/// Runs the algorithms of an [`OutlierDetection`] over the samples it is given.
pub(crate) struct Detector {
    pub config: OutlierDetection,
    next_interval: Instant,
    /// Draws for `enforcement_percentage`, SplitMix64.
    rng: u64,
}

/// What a tick changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub ejected: Vec<Address>,
    /// The algorithm behind each ejection of `ejected`, at the same index.
    pub enforced: Vec<Detection>,
    pub returned: Vec<Address>,
    /// Outliers found but left in, each with its algorithm and why it stayed.
    pub unenforced: Vec<(Detection, Unenforced)>,
}

/// The algorithm that found an outlier: A91's `grpc.lb.outlier_detection.detection_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detection {
    /// A50's success-rate ejection.
    SuccessRate,
    /// A50's failure-percentage ejection.
    FailurePercentage,
    /// meshless's consecutive-failure rule (Envoy's `consecutive_5xx`), which A50 lacks.
    ConsecutiveFailures,
}

impl Detection {
    /// The label value: A91's `success_rate` and `failure_percentage`, and
    /// `consecutive_failures` (after the setting's name) for the rule A91 does not know.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Detection::SuccessRate => "success_rate",
            Detection::FailurePercentage => "failure_percentage",
            Detection::ConsecutiveFailures => "consecutive_failures",
        }
    }
}

/// Why a detected outlier was left in: A91's `grpc.lb.outlier_detection.unenforced_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unenforced {
    /// The algorithm's `enforcement_percentage` roll said no.
    EnforcementPercentage,
    /// Ejecting it would pass `max_ejection_percent`, or leave no ready endpoint.
    MaxEjectionOverflow,
}

impl Unenforced {
    /// The label value, as A91 spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Unenforced::EnforcementPercentage => "enforcement_percentage",
            Unenforced::MaxEjectionOverflow => "max_ejection_overflow",
        }
    }
}

impl Detector {
    pub(crate) fn new(config: OutlierDetection, now: Instant, seed: u64) -> Self {
        Detector {
            next_interval: now + config.interval,
            config,
            rng: seed,
        }
    }

    fn roll(&mut self, percent: u32) -> bool {
        if percent >= 100 {
            return true;
        }
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 100 < u64::from(percent)
    }

    /// Runs what is due at `now` over `samples`, reading and updating `hosts` (one per
    /// sample, same order).
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        samples: &[Sample<'_>],
        hosts: &mut [Host],
    ) -> Changes {
        let mut changes = Changes::default();
        let total = samples.len();
        let mut ejected = hosts.iter().filter(|h| h.is_ejected()).count();
        let mut ready_in = samples
            .iter()
            .zip(hosts.iter())
            .filter(|(s, h)| s.ready && !h.is_ejected())
            .count();
        // May one more endpoint be ejected now?
        let limit = |ejected: usize, ready_in: usize, cfg: &OutlierDetection| {
            let under_percent = ejected == 0
                || (ejected as u64 + 1) * 100 <= u64::from(cfg.max_ejection_percent) * total as u64;
            under_percent && ready_in > 1
        };
        let eject = |i: usize,
                     how: Detection,
                     hosts: &mut [Host],
                     changes: &mut Changes,
                     ejected: &mut usize,
                     ready_in: &mut usize| {
            let h = &mut hosts[i];
            h.ejected_at = Some(now);
            h.multiplier = h.multiplier.saturating_add(1);
            h.failures_at_ejection = samples[i].stats.failures();
            *ejected += 1;
            if samples[i].ready {
                *ready_in -= 1;
            }
            changes.ejected.push(samples[i].addr.clone());
            changes.enforced.push(how);
        };

        // Consecutive failures: at every tick.
        if let Some(n) = self.config.consecutive_failures {
            for i in 0..total {
                if hosts[i].is_ejected() {
                    continue;
                }
                let stats = samples[i].stats;
                let since_ejection = stats
                    .failures()
                    .saturating_sub(hosts[i].failures_at_ejection);
                if stats.consecutive_failures().min(since_ejection) < u64::from(n) {
                    continue;
                }
                let how = Detection::ConsecutiveFailures;
                if limit(ejected, ready_in, &self.config) {
                    eject(i, how, hosts, &mut changes, &mut ejected, &mut ready_in);
                } else {
                    changes
                        .unenforced
                        .push((how, Unenforced::MaxEjectionOverflow));
                }
            }
        }

        if now < self.next_interval {
            return changes;
        }
        self.next_interval = now + self.config.interval;

        // The interval's counts, and the counters for the next one.
        let counts: Vec<(u64, u64)> = samples
            .iter()
            .zip(hosts.iter_mut())
            .map(|(s, h)| {
                let (ok, bad) = (s.stats.successes(), s.stats.failures());
                let d = (
                    ok.saturating_sub(h.successes),
                    bad.saturating_sub(h.failures),
                );
                h.successes = ok;
                h.failures = bad;
                d
            })
            .collect();

        if let Some(sr) = self.config.success_rate.clone() {
            let judged: Vec<(usize, f64)> = counts
                .iter()
                .enumerate()
                .filter(|(i, (ok, bad))| {
                    !hosts[*i].is_ejected() && ok + bad >= u64::from(sr.request_volume)
                })
                .map(|(i, (ok, bad))| (i, *ok as f64 / (ok + bad) as f64))
                .collect();
            if judged.len() >= sr.minimum_hosts as usize && !judged.is_empty() {
                let n = judged.len() as f64;
                let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
                let var = judged
                    .iter()
                    .map(|(_, r)| (r - mean) * (r - mean))
                    .sum::<f64>()
                    / n;
                let floor = mean - var.sqrt() * f64::from(sr.stdev_factor) / 1000.0;
                for (i, rate) in judged {
                    if rate >= floor || hosts[i].is_ejected() {
                        continue;
                    }
                    let how = Detection::SuccessRate;
                    if !limit(ejected, ready_in, &self.config) {
                        changes
                            .unenforced
                            .push((how, Unenforced::MaxEjectionOverflow));
                    } else if self.roll(sr.enforcement_percentage) {
                        eject(i, how, hosts, &mut changes, &mut ejected, &mut ready_in);
                    } else {
                        changes
                            .unenforced
                            .push((how, Unenforced::EnforcementPercentage));
                    }
                }
            }
        }

        if let Some(fp) = self.config.failure_percentage.clone() {
            let judged: Vec<(usize, f64)> = counts
                .iter()
                .enumerate()
                .filter(|(i, (ok, bad))| {
                    !hosts[*i].is_ejected() && ok + bad >= u64::from(fp.request_volume)
                })
                .map(|(i, (ok, bad))| (i, *bad as f64 * 100.0 / (ok + bad) as f64))
                .collect();
            if judged.len() >= fp.minimum_hosts as usize {
                for (i, percent) in judged {
                    if percent <= f64::from(fp.threshold) || hosts[i].is_ejected() {
                        continue;
                    }
                    let how = Detection::FailurePercentage;
                    if !limit(ejected, ready_in, &self.config) {
                        changes
                            .unenforced
                            .push((how, Unenforced::MaxEjectionOverflow));
                    } else if self.roll(fp.enforcement_percentage) {
                        eject(i, how, hosts, &mut changes, &mut ejected, &mut ready_in);
                    } else {
                        changes
                            .unenforced
                            .push((how, Unenforced::EnforcementPercentage));
                    }
                }
            }
        }

        // A50 step 5: clean intervals bring the multiplier down; ejections run out.
        for i in 0..total {
            let h = &mut hosts[i];
            match h.ejected_at {
                None => h.multiplier = h.multiplier.saturating_sub(1),
                Some(at) if at != now => {
                    if now.saturating_duration_since(at) >= self.config.ejection_for(h.multiplier) {
                        h.ejected_at = None;
                        // Its calls from before the ejection are not held against it again.
                        h.failures_at_ejection = samples[i].stats.failures();
                        changes.returned.push(samples[i].addr.clone());
                    }
                }
                Some(_) => {}
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshless_balancer::Outcome;

    struct Fleet {
        addrs: Vec<Address>,
        stats: Vec<EndpointStats>,
        hosts: Vec<Host>,
    }

    impl Fleet {
        fn new(n: usize) -> Self {
            Fleet {
                addrs: (0..n)
                    .map(|i| Address::Tcp(format!("127.0.0.1:{}", 1000 + i).parse().unwrap()))
                    .collect(),
                stats: (0..n)
                    .map(|_| EndpointStats::default().with_consecutive_failures())
                    .collect(),
                hosts: vec![Host::default(); n],
            }
        }

        /// `ok` successes and `bad` failures on endpoint `i`.
        fn calls(&self, i: usize, ok: u32, bad: u32) {
            for _ in 0..ok {
                self.stats[i].end(self.stats[i].start(), Outcome::Success);
            }
            for _ in 0..bad {
                self.stats[i].end(self.stats[i].start(), Outcome::Failure);
            }
        }

        fn tick(&mut self, d: &mut Detector, now: Instant) -> Changes {
            let samples: Vec<Sample<'_>> = self
                .addrs
                .iter()
                .zip(&self.stats)
                .map(|(addr, stats)| Sample {
                    addr,
                    stats,
                    ready: true,
                })
                .collect();
            d.tick(now, &samples, &mut self.hosts)
        }

        fn ejected(&self) -> Vec<usize> {
            (0..self.hosts.len())
                .filter(|&i| self.hosts[i].is_ejected())
                .collect()
        }
    }

    fn only(config: OutlierDetection) -> (Detector, Instant) {
        let now = Instant::now();
        (Detector::new(config, now, 7), now)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_endpoint_among_six_is_ejected_and_returns_after_30_then_60_seconds() {
        for algorithm in ["success_rate", "failure_percentage"] {
            let config = match algorithm {
                "success_rate" => OutlierDetection::default().failure_percentage(None),
                _ => OutlierDetection::default().success_rate(None),
            }
            .consecutive_failures(None)
            .max_ejection_percent(20);
            let (mut d, start) = only(config);
            let mut fleet = Fleet::new(6);
            let s = |t: u64| start + Duration::from_secs(t);
            for i in 0..6 {
                fleet.calls(
                    i,
                    if i == 0 { 0 } else { 200 },
                    if i == 0 { 200 } else { 2 },
                );
            }
            let c = fleet.tick(&mut d, s(10));
            assert_eq!(c.ejected, vec![fleet.addrs[0].clone()], "{algorithm}");
            assert_eq!(fleet.ejected(), [0]);
            // Out for the base ejection time: still out at 30 s, back at the tick at 40 s.
            for t in [20, 30] {
                for i in 1..6 {
                    fleet.calls(i, 200, 2);
                }
                assert!(
                    fleet.tick(&mut d, s(t)).returned.is_empty(),
                    "{algorithm} at {t}"
                );
            }
            let c = fleet.tick(&mut d, s(40));
            assert_eq!(c.returned, vec![fleet.addrs[0].clone()], "{algorithm}");
            // Fails again at once: the second ejection lasts twice as long.
            for i in 0..6 {
                fleet.calls(
                    i,
                    if i == 0 { 0 } else { 200 },
                    if i == 0 { 200 } else { 2 },
                );
            }
            assert_eq!(fleet.tick(&mut d, s(50)).ejected.len(), 1, "{algorithm}");
            for t in [60, 70, 80, 90, 100] {
                assert!(
                    fleet.tick(&mut d, s(t)).returned.is_empty(),
                    "{algorithm} at {t}"
                );
            }
            assert_eq!(
                fleet.tick(&mut d, s(110)).returned.len(),
                1,
                "{algorithm}: back after 60 s"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_four_hosts_only_consecutive_failures_eject() {
        let (mut d, start) = only(OutlierDetection::default().consecutive_failures(None));
        let mut fleet = Fleet::new(4);
        fleet.calls(0, 0, 500);
        for i in 1..4 {
            fleet.calls(i, 500, 0);
        }
        let c = fleet.tick(&mut d, start + Duration::from_secs(10));
        assert!(c.ejected.is_empty(), "A50 needs 5 hosts: {c:?}");

        let (mut d, start) = only(OutlierDetection::default());
        let mut fleet = Fleet::new(4);
        fleet.calls(0, 3, 4);
        fleet.calls(1, 0, 5);
        let c = fleet.tick(&mut d, start + Duration::from_secs(1));
        assert_eq!(fleet.ejected(), [1], "5 in a row eject, 4 do not: {c:?}");
        // Its failures before the ejection do not count again after it returns.
        for t in (2..=40).step_by(1) {
            fleet.tick(&mut d, start + Duration::from_secs(t));
        }
        assert!(fleet.ejected().is_empty(), "returned after 30 s");
        fleet.calls(1, 0, 4);
        assert!(
            fleet
                .tick(&mut d, start + Duration::from_secs(41))
                .ejected
                .is_empty()
        );
        fleet.calls(1, 0, 1);
        assert_eq!(
            fleet
                .tick(&mut d, start + Duration::from_secs(42))
                .ejected
                .len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outlier_the_enforcement_roll_spares_is_counted_with_its_algorithm() {
        let (mut d, start) = only(
            OutlierDetection::default()
                .consecutive_failures(None)
                .success_rate(None)
                .failure_percentage(Some(FailurePercentageEjection {
                    enforcement_percentage: 0,
                    ..FailurePercentageEjection::default()
                })),
        );
        let mut fleet = Fleet::new(6);
        for i in 0..6 {
            let bad = i == 0;
            fleet.calls(i, if bad { 0 } else { 100 }, if bad { 100 } else { 0 });
        }
        let c = fleet.tick(&mut d, start + Duration::from_secs(10));
        assert!(c.ejected.is_empty() && c.enforced.is_empty(), "{c:?}");
        assert_eq!(
            c.unenforced,
            [(
                Detection::FailurePercentage,
                Unenforced::EnforcementPercentage
            )]
        );
        assert_eq!(Detection::FailurePercentage.name(), "failure_percentage");
        assert_eq!(
            Unenforced::EnforcementPercentage.name(),
            "enforcement_percentage"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_and_the_last_ready_endpoint() {
        // 10 % of 20 is 2: three failing endpoints, two ejected, one left unenforced.
        let (mut d, start) = only(
            OutlierDetection::default()
                .consecutive_failures(None)
                .failure_percentage(None),
        );
        let mut fleet = Fleet::new(20);
        for i in 0..20 {
            let bad = i < 3;
            fleet.calls(i, if bad { 0 } else { 100 }, if bad { 100 } else { 0 });
        }
        let c = fleet.tick(&mut d, start + Duration::from_secs(10));
        assert_eq!(c.ejected.len(), 2, "{c:?}");
        assert_eq!(c.enforced, [Detection::SuccessRate; 2], "{c:?}");
        assert_eq!(
            c.unenforced,
            [(Detection::SuccessRate, Unenforced::MaxEjectionOverflow)],
            "{c:?}"
        );

        // 10 % of 3 rounds to nothing, but one may always go; never the last ready one.
        let (mut d, start) = only(OutlierDetection::default());
        let mut fleet = Fleet::new(2);
        fleet.calls(0, 0, 10);
        fleet.calls(1, 0, 10);
        let c = fleet.tick(&mut d, start + Duration::from_secs(1));
        assert_eq!(c.ejected.len(), 1, "{c:?}");
        assert_eq!(c.enforced, [Detection::ConsecutiveFailures], "{c:?}");
        assert_eq!(
            c.unenforced,
            [(
                Detection::ConsecutiveFailures,
                Unenforced::MaxEjectionOverflow
            )],
            "{c:?}"
        );
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let c = OutlierDetection::default();
        assert_eq!(c.ejection_for(1), Duration::from_secs(30));
        assert_eq!(c.ejection_for(3), Duration::from_secs(90));
        assert_eq!(c.ejection_for(100), Duration::from_secs(300));
        let c = c.ejection_time(Duration::MAX, Duration::from_secs(1));
        assert_eq!(
            c.ejection_for(u32::MAX),
            Duration::MAX,
            "no overflow; base wins over a smaller max"
        );
    }
}
