//! gRPC's standard client instruments, through the `metrics` facade (feature `metrics`):
//! the application installs the exporter (Prometheus, OTLP, statsd); this crate only
//! records. Names, units and attributes are those of the gRFCs: A66 (per attempt), A94
//! (subchannels), A91 (outlier detection). A channel without [`MetricsConfig`] records
//! nothing and pays nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};
use meshless_balancer::ConnectivityState;
use meshless_balancer::EndpointStats;
use meshless_discovery::Address;
use tonic::Code;

/// A96: retries of a call (recorded only for calls that had some).
pub const CALL_RETRIES: &str = "grpc.client.call.retries";
/// A96: transparent retries of a call (recorded only for calls that had some).
pub const CALL_TRANSPARENT_RETRIES: &str = "grpc.client.call.transparent_retries";
/// A96: hedges of a call (recorded only for calls that had some).
pub const CALL_HEDGES: &str = "grpc.client.call.hedges";
/// A96: the time a call spent with no attempt in flight (backoffs), in seconds.
pub const CALL_RETRY_DELAY: &str = "grpc.client.call.retry_delay";
/// meshless: calls in flight on an endpoint (sampled every second).
pub const ENDPOINT_IN_FLIGHT: &str = "meshless.endpoint.in_flight";
/// meshless: an endpoint's load cost as p2c_ewma and least_request weigh it (sampled).
pub const ENDPOINT_COST: &str = "meshless.endpoint.cost";
/// meshless: calls an endpoint completed successfully since the channel has known it, a
/// counter sampled every second from the endpoint's own count (set with `absolute`, so a
/// scrape sees it move once a second and never pays on the call path).
pub const ENDPOINT_SUCCESSES: &str = "meshless.endpoint.successes";
/// meshless: calls that failed on an endpoint in a way that counts against it (the
/// channel's failure codes, transport failures, its own deadlines), sampled as
/// [`ENDPOINT_SUCCESSES`]. Calls the caller cancelled count in neither.
pub const ENDPOINT_FAILURES: &str = "meshless.endpoint.failures";
/// meshless: an endpoint's connectivity state, as a gauge per [`STATE`] label value (like
/// kube-state-metrics' state series): 1 for the state it is in, 0 for the others, sampled
/// every second. The values are [`STATES`]. An endpoint that left the channel reads
/// `shutdown` once; its series then stay (with that value) until the exporter forgets them.
pub const ENDPOINT_STATE: &str = "meshless.endpoint.state";
/// meshless: 1 while outlier detection has an endpoint ejected (its connection stays and
/// its [`ENDPOINT_STATE`] is the connection's), 0 otherwise; sampled.
pub const ENDPOINT_EJECTED: &str = "meshless.endpoint.ejected";
/// meshless: an endpoint's latency estimate in seconds (the peak EWMA that p2c_ewma
/// compares), sampled; recorded only for endpoints whose policy keeps an estimate.
pub const ENDPOINT_LATENCY_EWMA: &str = "meshless.endpoint.latency_ewma";
/// meshless: the duration of each attempt an endpoint served, in seconds (A66's attempt
/// duration, by endpoint), for per-endpoint percentiles (`meshless top --scrape`).
pub const ENDPOINT_DURATION: &str = "meshless.endpoint.duration";
/// meshless: endpoint sets and changes discovery delivered.
pub const DISCOVERY_UPDATES: &str = "meshless.discovery.updates";
/// meshless: errors discovery reported.
pub const DISCOVERY_ERRORS: &str = "meshless.discovery.errors";
/// meshless: seconds since discovery last answered without an error (sampled).
pub const DISCOVERY_STALENESS: &str = "meshless.discovery.seconds_since_update";
/// meshless: pickers the channel built and published.
pub const PICKER_REBUILDS: &str = "meshless.picker.rebuilds";
/// A66: call duration, from the call's start to the end of its response, across every
/// attempt (transparent retries, and retries and hedges of the resilience layers), in
/// seconds.
pub const CALL_DURATION: &str = "grpc.client.call.duration";
/// A66: attempts started.
pub const ATTEMPT_STARTED: &str = "grpc.client.attempt.started";
/// A66: attempt duration, in seconds: from before its pick (A66 counts the time to pick an
/// endpoint, not the wait for discovery's first answer) to the end of its response.
pub const ATTEMPT_DURATION: &str = "grpc.client.attempt.duration";
/// A66: bytes of the request messages an attempt sent, compressed if so, without gRPC's
/// 5-byte message prefixes (A66 leaves out gRPC and transport framing); every message of a
/// client-streaming request counts.
pub const ATTEMPT_SENT_SIZE: &str = "grpc.client.attempt.sent_total_compressed_message_size";
/// A66: bytes of the response messages an attempt received, without the prefixes.
pub const ATTEMPT_RCVD_SIZE: &str = "grpc.client.attempt.rcvd_total_compressed_message_size";
/// A94: connection attempts that succeeded.
pub const CONNECTION_ATTEMPTS_SUCCEEDED: &str = "grpc.subchannel.connection_attempts_succeeded";
/// A94: connection attempts that failed.
pub const CONNECTION_ATTEMPTS_FAILED: &str = "grpc.subchannel.connection_attempts_failed";
/// A94: connections that closed, by reason (`grpc.disconnect_error`).
pub const DISCONNECTIONS: &str = "grpc.subchannel.disconnections";
/// A94: connections open now.
pub const OPEN_CONNECTIONS: &str = "grpc.subchannel.open_connections";
/// A91: ejections outlier detection made.
pub const EJECTIONS_ENFORCED: &str = "grpc.lb.outlier_detection.ejections_enforced";
/// A91: outliers found but left in (enforcement percentage, ejection limit).
pub const EJECTIONS_UNENFORCED: &str = "grpc.lb.outlier_detection.ejections_unenforced";

/// A78: the weight of each endpoint `weighted_round_robin` schedules, recorded each time its
/// scheduler is built (a picker rebuild, off the pick path). meshless's weights are
/// discovery's static ones, never load reports, so A78's `grpc.lb.wrr.rr_fallback`,
/// `endpoint_weight_not_yet_usable` and `endpoint_weight_stale` do not apply and are not
/// recorded.
pub const WRR_ENDPOINT_WEIGHTS: &str = "grpc.lb.wrr.endpoint_weights";

/// The label of the endpoint's address on the `meshless.endpoint.*` instruments.
pub const ENDPOINT: &str = "endpoint";

/// A per-endpoint latency instrument.
pub(crate) type EndpointLatency = Histogram;
/// The label of [`ENDPOINT_STATE`]: one of [`STATES`].
pub const STATE: &str = "state";
/// The values of the [`STATE`] label, gRPC's connectivity state names.
pub const STATES: [&str; 5] = [
    "idle",
    "connecting",
    "ready",
    "transient_failure",
    "shutdown",
];

/// A91's label on both ejection counters: the algorithm that found the outlier,
/// `success_rate` or `failure_percentage` (A50's), or `consecutive_failures` for meshless's
/// consecutive-failure rule, which A91 does not name.
pub const DETECTION_METHOD: &str = "grpc.lb.outlier_detection.detection_method";
/// A91's label on [`EJECTIONS_UNENFORCED`]: `enforcement_percentage` (the algorithm's
/// enforcement roll said no) or `max_ejection_overflow` (ejecting it would pass
/// `max_ejection_percent`, or take out the last ready endpoint).
pub const UNENFORCED_REASON: &str = "grpc.lb.outlier_detection.unenforced_reason";

/// A66's recommended latency buckets, in seconds, for the exporter's histogram settings
/// (such as `metrics_exporter_prometheus::PrometheusBuilder::set_buckets_for_metric`).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];
/// A66's recommended size buckets, in bytes.
pub const SIZE_BUCKETS: &[f64] = &[
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// A66's recommended buckets for counts.
pub const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0,
];
/// A96's recommended buckets for [`CALL_RETRIES`] (unit `{retry}`).
pub const RETRY_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0];
/// A96's recommended buckets for [`CALL_TRANSPARENT_RETRIES`] (unit `{transparent_retry}`).
pub const TRANSPARENT_RETRY_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0];
/// A96's recommended buckets for [`CALL_HEDGES`] (unit `{hedge}`).
pub const HEDGE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0];

/// Every histogram this crate records, with the buckets its gRFC recommends: A66's latency
/// buckets for the durations and A96's retry delay, A66's size buckets for the message
/// sizes, A96's own for its counts. For the exporter's per-metric histogram settings, since
/// the `metrics` facade carries no bucket hints.
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (CALL_DURATION, LATENCY_BUCKETS),
    (ATTEMPT_DURATION, LATENCY_BUCKETS),
    (CALL_RETRY_DELAY, LATENCY_BUCKETS),
    (ATTEMPT_SENT_SIZE, SIZE_BUCKETS),
    (ATTEMPT_RCVD_SIZE, SIZE_BUCKETS),
    (CALL_RETRIES, RETRY_BUCKETS),
    (CALL_TRANSPARENT_RETRIES, TRANSPARENT_RETRY_BUCKETS),
    (CALL_HEDGES, HEDGE_BUCKETS),
    (ENDPOINT_DURATION, LATENCY_BUCKETS),
];

/// Which instruments a channel records, and the methods it names. Methods the application
/// has not registered are recorded as `other` (A66), so a client that calls arbitrary
/// method names cannot blow up the exporter's cardinality.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    methods: HashSet<String>,
    target: Option<String>,
}

impl MetricsConfig {
    /// Metrics on, every method recorded as `other` until registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `method` by name: `package.Service/Method` (a leading `/` is allowed).
    #[must_use]
    pub fn method(mut self, method: &str) -> Self {
        self.methods
            .insert(method.trim_start_matches('/').to_owned());
        self
    }

    /// Records these methods by name.
    #[must_use]
    pub fn methods<'a>(mut self, methods: impl IntoIterator<Item = &'a str>) -> Self {
        for m in methods {
            self = self.method(m);
        }
        self
    }

    /// The `grpc.target` attribute (default: the channel's target as written, secrets
    /// redacted).
    #[must_use]
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

/// A channel's (or a layer's) recorder: the instruments of one target. Made from a
/// [`MetricsConfig`]; the resilience layers take one to record A96's per-call instruments.
///
/// The per-call instruments are registered with the recorder once per method and status
/// code, at their first use, and recorded through their handles after that: building a
/// key and looking it up in the recorder's registry on every call costs more than the
/// rest of the call path. So install the application's recorder before the first call.
#[derive(Debug)]
pub struct Metrics {
    methods: HashMap<String, Label>,
    other: Label,
    target: SharedString,
    /// The sampled instruments of each endpoint of the last sample, by address: registered
    /// once, so a sample of 1,000 endpoints is stores, not registry lookups. Only the
    /// control task's once-a-second sample takes the lock.
    endpoints: Mutex<HashMap<Address, EndpointInstruments>>,
}

/// The sampled `meshless.endpoint.*` instruments of one endpoint.
#[derive(Debug)]
struct EndpointInstruments {
    in_flight: Gauge,
    cost: Gauge,
    /// Registered once the endpoint's statistics keep a latency estimate, so an exporter
    /// shows no made-up value for the policies that keep none.
    latency: Option<Gauge>,
    successes: Counter,
    failures: Counter,
    ejected: Gauge,
    /// One per [`STATES`] value, in that order.
    state: [Gauge; 5],
    /// Set by the sample in progress; an entry a sample did not set has left the channel.
    seen: bool,
}

impl EndpointInstruments {
    fn new(target: &SharedString, endpoint: &Address) -> Self {
        let labels = [
            ("grpc.target", target.clone()),
            (ENDPOINT, SharedString::from(endpoint.to_string())),
        ];
        let state = STATES.map(|s| {
            let mut l = labels.to_vec();
            l.push((STATE, SharedString::const_str(s)));
            gauge!(ENDPOINT_STATE, &l)
        });
        EndpointInstruments {
            in_flight: gauge!(ENDPOINT_IN_FLIGHT, &labels),
            cost: gauge!(ENDPOINT_COST, &labels),
            latency: None,
            successes: counter!(ENDPOINT_SUCCESSES, &labels),
            failures: counter!(ENDPOINT_FAILURES, &labels),
            ejected: gauge!(ENDPOINT_EJECTED, &labels),
            state,
            seen: true,
        }
    }

    /// Sets the state series: 1 for `now`, 0 for the others.
    fn set_state(&self, now: ConnectivityState) {
        let now = state_index(now);
        for (i, g) in self.state.iter().enumerate() {
            g.set(if i == now { 1.0 } else { 0.0 });
        }
    }
}

/// The position of `state`'s name in [`STATES`].
fn state_index(state: ConnectivityState) -> usize {
    match state {
        ConnectivityState::Idle => 0,
        ConnectivityState::Connecting => 1,
        ConnectivityState::Ready => 2,
        ConnectivityState::TransientFailure => 3,
        ConnectivityState::Shutdown => 4,
    }
}

/// The per-call instruments of one `grpc.method` value.
pub(crate) type Label = Arc<MethodInstruments>;

const OTHER: &str = "other";

/// The instruments of one `grpc.method` value, each registered at its first use (so an
/// exporter shows only series that were recorded).
#[derive(Debug)]
pub(crate) struct MethodInstruments {
    name: SharedString,
    target: SharedString,
    started: OnceLock<Counter>,
    /// By status code (gRPC has 17): an attempt's duration and sizes, and a call's duration.
    attempts: [OnceLock<AttemptInstruments>; 17],
    calls: [OnceLock<Histogram>; 17],
}

/// The per-status instruments of one method's attempts.
#[derive(Debug)]
struct AttemptInstruments {
    duration: Histogram,
    sent: Histogram,
    rcvd: Histogram,
}

impl MethodInstruments {
    fn new(name: SharedString, target: SharedString) -> Label {
        Arc::new(MethodInstruments {
            name,
            target,
            started: OnceLock::new(),
            attempts: std::array::from_fn(|_| OnceLock::new()),
            calls: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    fn started(&self) -> &Counter {
        self.started.get_or_init(|| {
            counter!(ATTEMPT_STARTED, "grpc.method" => self.name.clone(), "grpc.target" => self.target.clone())
        })
    }

    fn labels(&self, code: Code) -> [(&'static str, SharedString); 3] {
        [
            ("grpc.method", self.name.clone()),
            ("grpc.target", self.target.clone()),
            (
                "grpc.status",
                SharedString::const_str(meshless_balancer::code_name(code)),
            ),
        ]
    }

    fn attempt(&self, code: Code) -> &AttemptInstruments {
        let i = (code as usize).min(self.attempts.len() - 1);
        self.attempts[i].get_or_init(|| {
            let labels = self.labels(code);
            AttemptInstruments {
                duration: histogram!(ATTEMPT_DURATION, &labels),
                sent: histogram!(ATTEMPT_SENT_SIZE, &labels),
                rcvd: histogram!(ATTEMPT_RCVD_SIZE, &labels),
            }
        })
    }

    fn call(&self, code: Code) -> &Histogram {
        let i = (code as usize).min(self.calls.len() - 1);
        self.calls[i].get_or_init(|| histogram!(CALL_DURATION, &self.labels(code)))
    }
}

impl Metrics {
    /// The recorder of `config`, for a channel to `channel_target` (the `grpc.target`
    /// attribute unless the config names one).
    pub fn new(config: MetricsConfig, channel_target: &str) -> Arc<Self> {
        describe();
        let target = SharedString::from(config.target.unwrap_or_else(|| channel_target.to_owned()));
        let methods = config
            .methods
            .into_iter()
            .map(|m| {
                let label = MethodInstruments::new(SharedString::from(m.clone()), target.clone());
                (m, label)
            })
            .collect();
        Arc::new(Metrics {
            methods,
            other: MethodInstruments::new(SharedString::const_str(OTHER), target.clone()),
            target,
            endpoints: Mutex::default(),
        })
    }

    /// The instruments of the `grpc.method` attribute of a call to `path`.
    pub(crate) fn method(&self, path: &str) -> Label {
        let m = path.trim_start_matches('/');
        self.methods.get(m).unwrap_or(&self.other).clone()
    }

    pub(crate) fn attempt_started(&self, method: &Label) {
        method.started().increment(1);
    }

    /// Needs no recorder handle: a call keeps only its method's instruments, so no shared
    /// reference count is touched per call beyond theirs.
    pub(crate) fn attempt_ended(
        method: &Label,
        code: Code,
        duration: Duration,
        sent: u64,
        rcvd: u64,
    ) {
        let i = method.attempt(code);
        i.duration.record(duration.as_secs_f64());
        i.sent.record(sent as f64);
        i.rcvd.record(rcvd as f64);
    }

    /// A66: a call to `path` ended with `code` after `duration` (from its start to the end
    /// of its response).
    pub fn call_duration(&self, path: &str, code: Code, duration: Duration) {
        Self::call_duration_of(&self.method(path), code, duration);
    }

    pub(crate) fn call_duration_of(method: &Label, code: Code, duration: Duration) {
        method.call(code).record(duration.as_secs_f64());
    }

    /// A96: a call's retries, transparent retries, hedges and time without an attempt in
    /// flight; counts of zero are not recorded (A96).
    pub fn call_ended(
        &self,
        path: &str,
        retries: u32,
        transparent: u32,
        hedges: u32,
        delay: Duration,
    ) {
        if retries == 0 && transparent == 0 && hedges == 0 {
            return; // the usual call: nothing to record, nothing looked up
        }
        let labels = [
            ("grpc.method", self.method(path).name.clone()),
            ("grpc.target", self.target.clone()),
        ];
        if retries > 0 {
            histogram!(CALL_RETRIES, &labels).record(f64::from(retries));
        }
        if transparent > 0 {
            histogram!(CALL_TRANSPARENT_RETRIES, &labels).record(f64::from(transparent));
        }
        if hedges > 0 {
            histogram!(CALL_HEDGES, &labels).record(f64::from(hedges));
        }
        if retries > 0 || hedges > 0 {
            histogram!(CALL_RETRY_DELAY, &labels).record(delay.as_secs_f64());
        }
    }

    pub(crate) fn discovery_update(&self) {
        counter!(DISCOVERY_UPDATES, "grpc.target" => self.target.clone()).increment(1);
    }

    pub(crate) fn discovery_error(&self) {
        counter!(DISCOVERY_ERRORS, "grpc.target" => self.target.clone()).increment(1);
    }

    pub(crate) fn picker_rebuilt(&self) {
        counter!(PICKER_REBUILDS, "grpc.target" => self.target.clone()).increment(1);
    }

    /// The per-endpoint instruments, sampled on the control task (never per pick or per
    /// call): each endpoint's address, statistics, connection state and ejection. An
    /// endpoint of the previous sample that is not in this one has left: its state reads
    /// `shutdown` and its in-flight count and ejection 0, and it is forgotten.
    /// The latency instrument of the endpoint at `addr`, held by its subchannel so that a
    /// call records into it without a lookup.
    pub(crate) fn endpoint_latency(&self, addr: &Address) -> EndpointLatency {
        histogram!(
            ENDPOINT_DURATION,
            "grpc.target" => self.target.clone(),
            ENDPOINT => SharedString::from(addr.to_string())
        )
    }

    pub(crate) fn sample_endpoints<'a>(
        &self,
        endpoints: impl Iterator<Item = (&'a Address, &'a EndpointStats, ConnectivityState, bool)>,
    ) {
        let mut known = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        for (addr, stats, state, ejected) in endpoints {
            let i = match known.get_mut(addr) {
                Some(i) => {
                    i.seen = true;
                    i
                }
                None => known
                    .entry(addr.clone())
                    .or_insert_with(|| EndpointInstruments::new(&self.target, addr)),
            };
            i.in_flight.set(stats.in_flight() as f64);
            i.cost.set(stats.load_cost());
            if stats.signals().latency {
                i.latency
                    .get_or_insert_with(|| {
                        gauge!(ENDPOINT_LATENCY_EWMA,
                            "grpc.target" => self.target.clone(),
                            ENDPOINT => addr.to_string())
                    })
                    .set(stats.latency_ewma().as_secs_f64());
            }
            i.successes.absolute(stats.successes());
            i.failures.absolute(stats.failures());
            i.ejected.set(if ejected { 1.0 } else { 0.0 });
            i.set_state(state);
        }
        known.retain(|_, i| {
            if !std::mem::take(&mut i.seen) {
                i.set_state(ConnectivityState::Shutdown);
                i.in_flight.set(0.0);
                i.ejected.set(0.0);
                return false;
            }
            true
        });
    }

    pub(crate) fn sample_staleness(&self, seconds: f64) {
        gauge!(DISCOVERY_STALENESS, "grpc.target" => self.target.clone()).set(seconds);
    }

    pub(crate) fn connection_attempt(&self, ok: bool) {
        let name = if ok {
            CONNECTION_ATTEMPTS_SUCCEEDED
        } else {
            CONNECTION_ATTEMPTS_FAILED
        };
        counter!(name, "grpc.target" => self.target.clone()).increment(1);
    }

    /// A connection closed; `reason` is A94's `grpc.disconnect_error`.
    pub(crate) fn disconnected(&self, reason: &'static str) {
        counter!(DISCONNECTIONS, "grpc.target" => self.target.clone(), "grpc.disconnect_error" => reason)
            .increment(1);
        gauge!(OPEN_CONNECTIONS, "grpc.target" => self.target.clone()).decrement(1.0);
    }

    pub(crate) fn connected(&self) {
        gauge!(OPEN_CONNECTIONS, "grpc.target" => self.target.clone()).increment(1.0);
    }

    /// A78: the weights of the endpoints a `weighted_round_robin` scheduler was built with.
    pub(crate) fn wrr_weights(&self, weights: impl Iterator<Item = u32>) {
        let h = histogram!(WRR_ENDPOINT_WEIGHTS, "grpc.target" => self.target.clone());
        for w in weights {
            h.record(f64::from(w));
        }
    }

    /// A91: an ejection outlier detection made, by the algorithm that found the outlier.
    pub(crate) fn ejection_enforced(&self, detection: &'static str) {
        counter!(EJECTIONS_ENFORCED,
            "grpc.target" => self.target.clone(),
            DETECTION_METHOD => detection)
        .increment(1);
    }

    /// A91: an outlier found and left in, by algorithm and reason.
    pub(crate) fn ejection_unenforced(&self, detection: &'static str, reason: &'static str) {
        counter!(EJECTIONS_UNENFORCED,
            "grpc.target" => self.target.clone(),
            DETECTION_METHOD => detection,
            UNENFORCED_REASON => reason)
        .increment(1);
    }
}

fn describe() {
    describe_counter!(ATTEMPT_STARTED, "Attempts started (gRPC A66).");
    describe_gauge!(
        ENDPOINT_IN_FLIGHT,
        "Calls in flight on an endpoint, sampled every second."
    );
    describe_gauge!(
        ENDPOINT_COST,
        "An endpoint's load cost as p2c_ewma and least_request weigh it, sampled."
    );
    describe_counter!(
        ENDPOINT_SUCCESSES,
        "Calls an endpoint completed successfully, sampled every second."
    );
    describe_counter!(
        ENDPOINT_FAILURES,
        "Calls that failed against an endpoint, sampled every second."
    );
    describe_gauge!(
        ENDPOINT_STATE,
        "1 for an endpoint's connectivity state (label `state`), 0 for the others, sampled."
    );
    describe_gauge!(
        ENDPOINT_EJECTED,
        "1 while outlier detection has an endpoint ejected, sampled."
    );
    describe_gauge!(
        ENDPOINT_LATENCY_EWMA,
        Unit::Seconds,
        "An endpoint's latency estimate (peak EWMA), sampled."
    );
    describe_histogram!(
        ENDPOINT_DURATION,
        Unit::Seconds,
        "Duration of each attempt an endpoint served, from before its pick to the end of its response."
    );
    describe_counter!(
        DISCOVERY_UPDATES,
        "Endpoint sets and changes discovery delivered."
    );
    describe_counter!(DISCOVERY_ERRORS, "Errors discovery reported.");
    describe_gauge!(
        DISCOVERY_STALENESS,
        Unit::Seconds,
        "Time since discovery last answered without an error, sampled."
    );
    describe_counter!(PICKER_REBUILDS, "Pickers built and published.");
    describe_histogram!(
        CALL_DURATION,
        Unit::Seconds,
        "Time from a call's start to the end of its response, over every attempt (gRPC A66)."
    );
    describe_histogram!(CALL_RETRIES, "Retries of a call (gRPC A96).");
    describe_histogram!(
        CALL_TRANSPARENT_RETRIES,
        "Transparent retries of a call (gRPC A96)."
    );
    describe_histogram!(CALL_HEDGES, "Hedges of a call (gRPC A96).");
    describe_histogram!(
        CALL_RETRY_DELAY,
        Unit::Seconds,
        "Time a call had no attempt in flight (gRPC A96)."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "Attempt duration, to the end of its response (gRPC A66)."
    );
    describe_histogram!(
        ATTEMPT_SENT_SIZE,
        Unit::Bytes,
        "Request message bytes an attempt sent (gRPC A66)."
    );
    describe_histogram!(
        ATTEMPT_RCVD_SIZE,
        Unit::Bytes,
        "Response message bytes an attempt received (gRPC A66)."
    );
    describe_counter!(
        CONNECTION_ATTEMPTS_SUCCEEDED,
        "Connection attempts that succeeded (gRPC A94)."
    );
    describe_counter!(
        CONNECTION_ATTEMPTS_FAILED,
        "Connection attempts that failed (gRPC A94)."
    );
    describe_counter!(DISCONNECTIONS, "Connections closed, by reason (gRPC A94).");
    describe_gauge!(OPEN_CONNECTIONS, "Connections open now (gRPC A94).");
    describe_histogram!(
        WRR_ENDPOINT_WEIGHTS,
        "Weight of each endpoint at each weighted_round_robin scheduler build (gRPC A78)."
    );
    describe_counter!(
        EJECTIONS_ENFORCED,
        "Outlier-detection ejections (gRPC A91)."
    );
    describe_counter!(
        EJECTIONS_UNENFORCED,
        "Outliers found but not ejected (gRPC A91)."
    );
}
