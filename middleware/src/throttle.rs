//! Client-side adaptive throttling, as the Google SRE book describes it ("Handling
//! Overload"): a client that sees its backend reject more and more of its calls starts
//! rejecting calls itself, locally, before they cost the backend anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::retry::PolicyError;
use meshless_balancer::CodeSet;

/// The codes adaptive throttling takes for a refusal by default: `UNAVAILABLE` and
/// `RESOURCE_EXHAUSTED`, what an overloaded or draining server answers (the SRE book's
/// "rejected for lack of quota" and gRPC's overload signals).
pub const DEFAULT_REFUSAL_CODES: CodeSet =
    CodeSet::of(&[Code::Unavailable, Code::ResourceExhausted]);
use meshless_transport::LocallyRejected;

/// The settings of [`AdaptiveThrottleLayer`].
///
/// Over a rolling window the client counts `requests` (every call it was asked to make,
/// rejected ones included) and `accepts` (calls the backend did not refuse as overloaded or
/// down), and rejects a new call with probability
///
/// `p = max(0, (requests − K · accepts) / (requests + 1))`
///
/// so that about `K` calls per accepted call still reach the backend: enough to notice
/// when it recovers. A call counts as not accepted when it ends with one of the
/// [`refusal codes`](Self::refusal_codes) (default `UNAVAILABLE` and `RESOURCE_EXHAUSTED`,
/// [`DEFAULT_REFUSAL_CODES`]), or when the channel's own deadline (or any other failure
/// before a server answered) ends it with `DEADLINE_EXCEEDED`; every other answer, errors of
/// the application included, is an accept.
///
/// Presets: [`sre`](Self::sre) (the default), [`go_zero`](Self::go_zero),
/// [`kratos`](Self::kratos).
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    k: f64,
    refused: CodeSet,
    window: Duration,
    buckets: u32,
    min_requests: u64,
    force_pass: Duration,
    seed: Option<u64>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig::sre()
    }
}

impl ThrottleConfig {
    /// The SRE book's K = 2, over 10 s in 40 buckets; no rejection below 10 requests in the
    /// window; a call is let through when none has passed for 1 s.
    pub fn sre() -> Self {
        ThrottleConfig {
            k: 2.0,
            refused: DEFAULT_REFUSAL_CODES,
            window: Duration::from_secs(10),
            buckets: 40,
            min_requests: 10,
            force_pass: Duration::from_secs(1),
            seed: None,
        }
    }

    /// go-zero's `googleBreaker`: K = 1.5, 10 s in 40 buckets, a floor of 5 requests, a
    /// forced pass after 1 s without one.
    pub fn go_zero() -> Self {
        ThrottleConfig {
            k: 1.5,
            min_requests: 5,
            ..ThrottleConfig::sre()
        }
    }

    /// kratos's SRE breaker (`aegis/circuitbreaker/sre`): success = 0.6, so K = 1/0.6, over
    /// 3 s in 10 buckets, and no rejection below 100 requests in the window.
    pub fn kratos() -> Self {
        ThrottleConfig {
            k: 1.0 / 0.6,
            window: Duration::from_secs(3),
            buckets: 10,
            min_requests: 100,
            ..ThrottleConfig::sre()
        }
    }

    /// Sets K, the number of calls allowed to reach the backend per accepted call: at
    /// least 1 (1 rejects as soon as anything fails; 2 is the SRE book's advice).
    pub fn k(mut self, k: f64) -> Result<Self, PolicyError> {
        if !(k.is_finite() && k >= 1.0) {
            return Err(PolicyError::new(
                "adaptiveThrottling.k",
                format!("must be a number of at least 1, such as 2, got {k}"),
            ));
        }
        self.k = k;
        Ok(self)
    }

    /// Sets the rolling window and how many buckets it moves in (1 to 1000, each at least
    /// 1 ms).
    pub fn window(mut self, window: Duration, buckets: u32) -> Result<Self, PolicyError> {
        if buckets == 0 || buckets > 1000 {
            return Err(PolicyError::new(
                "adaptiveThrottling.buckets",
                format!("must be between 1 and 1000, got {buckets}"),
            ));
        }
        if window / buckets < Duration::from_millis(1) {
            return Err(PolicyError::new(
                "adaptiveThrottling.window",
                format!("must give each of its {buckets} buckets at least 1ms, got {window:?}"),
            ));
        }
        self.window = window;
        self.buckets = buckets;
        Ok(self)
    }

    /// Sets the floor: no call is rejected while the window holds fewer requests.
    #[must_use]
    pub fn min_requests(mut self, n: u64) -> Self {
        self.min_requests = n;
        self
    }

    /// Sets how long without a call let through forces one through (zero turns it off).
    #[must_use]
    pub fn force_pass_after(mut self, d: Duration) -> Self {
        self.force_pass = d;
        self
    }

    /// Sets the status codes that say the backend refused a call (overloaded or down), as
    /// opposed to answering it. Default [`DEFAULT_REFUSAL_CODES`].
    #[must_use]
    pub fn refusal_codes(mut self, codes: CodeSet) -> Self {
        self.refused = codes;
        self
    }

    /// Draws the rejections from a generator seeded with `seed` (for reproducible tests);
    /// by default the seed is random.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// One bucket of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    accepts: u64,
}

#[derive(Debug)]
struct Window {
    buckets: Vec<Bucket>,
    current: usize,
    current_start: Instant,
    requests: u64,
    accepts: u64,
    last_pass: Instant,
    rng: u64,
}

impl Window {
    /// Moves the window to `now`, dropping the buckets that fell out of it.
    fn advance(&mut self, now: Instant, bucket: Duration) {
        let elapsed = now.saturating_duration_since(self.current_start);
        if elapsed < bucket {
            return;
        }
        let steps = (elapsed.as_nanos() / bucket.as_nanos()) as u64;
        let n = self.buckets.len() as u64;
        for _ in 0..steps.min(n) {
            self.current = (self.current + 1) % self.buckets.len();
            let old = std::mem::take(&mut self.buckets[self.current]);
            self.requests -= old.requests;
            self.accepts -= old.accepts;
        }
        if steps >= n {
            self.current_start = now;
        } else {
            self.current_start += bucket * steps as u32;
        }
    }

    /// SplitMix64, uniform in [0, 1).
    fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug)]
struct State {
    config: ThrottleConfig,
    bucket: Duration,
    window: Mutex<Window>,
}

impl State {
    fn new(config: ThrottleConfig) -> Self {
        let now = Instant::now();
        let bucket = config.window / config.buckets;
        State {
            window: Mutex::new(Window {
                buckets: vec![Bucket::default(); config.buckets as usize],
                current: 0,
                current_start: now,
                requests: 0,
                accepts: 0,
                last_pass: now,
                rng: config.seed.unwrap_or_else(rand::random),
            }),
            bucket,
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Every change under the lock keeps the counts consistent.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request; `Err(p)` when it is rejected, with the rejection probability.
    fn admit(&self) -> Result<(), f64> {
        let now = Instant::now();
        let mut w = self.lock();
        w.advance(now, self.bucket);
        let p = self.reject_probability(&w, now);
        let current = w.current;
        w.buckets[current].requests += 1;
        w.requests += 1;
        if p > 0.0 && w.draw() < p {
            return Err(p);
        }
        w.last_pass = now;
        Ok(())
    }

    fn reject_probability(&self, w: &Window, now: Instant) -> f64 {
        if w.requests < self.config.min_requests {
            return 0.0;
        }
        if !self.config.force_pass.is_zero()
            && now.saturating_duration_since(w.last_pass) >= self.config.force_pass
        {
            return 0.0;
        }
        let r = w.requests as f64;
        ((r - self.config.k * w.accepts as f64) / (r + 1.0)).max(0.0)
    }

    fn accepted(&self) {
        let mut w = self.lock();
        w.advance(Instant::now(), self.bucket);
        let current = w.current;
        w.buckets[current].accepts += 1;
        w.accepts += 1;
    }
}

/// Adaptive client-side throttling by a [`ThrottleConfig`]; see there for the rule. A
/// rejected call fails at once with `UNAVAILABLE`, a message that says it was throttled, and
/// a [`LocallyRejected`] source, so a [`RetryLayer`](crate::RetryLayer) above does not
/// retry it. Every service made from one layer shares one window: make one per target.
///
/// Put it below a retry layer, so retries count as requests too:
/// `ServiceBuilder::new().layer(retry).layer(throttle).service(channel)`.
#[derive(Debug, Clone)]
pub struct AdaptiveThrottleLayer {
    state: Arc<State>,
}

impl AdaptiveThrottleLayer {
    /// A throttle by `config`.
    pub fn new(config: ThrottleConfig) -> Self {
        AdaptiveThrottleLayer {
            state: Arc::new(State::new(config)),
        }
    }

    /// The probability that a call made now is rejected.
    pub fn reject_probability(&self) -> f64 {
        let now = Instant::now();
        let mut w = self.state.lock();
        w.advance(now, self.state.bucket);
        self.state.reject_probability(&w, now)
    }
}

impl<S> Layer<S> for AdaptiveThrottleLayer {
    type Service = AdaptiveThrottle<S>;
    fn layer(&self, inner: S) -> AdaptiveThrottle<S> {
        AdaptiveThrottle {
            inner,
            state: Some(self.state.clone()),
        }
    }
}

/// The service made by [`AdaptiveThrottleLayer`] (or by a
/// [`Resilience`](crate::Resilience) stack, where it may be switched off).
#[derive(Debug, Clone)]
pub struct AdaptiveThrottle<S> {
    inner: S,
    state: Option<Arc<State>>,
}

impl<S> AdaptiveThrottle<S> {
    /// `inner` throttled by `layer`, or passed through when `None`.
    pub(crate) fn maybe(inner: S, layer: Option<&AdaptiveThrottleLayer>) -> Self {
        AdaptiveThrottle {
            inner,
            state: layer.map(|l| l.state.clone()),
        }
    }
}

impl<S, Req, B> Service<http::Request<Req>> for AdaptiveThrottle<S>
where
    S: Service<http::Request<Req>, Response = http::Response<B>, Error = Status>,
{
    type Response = http::Response<B>;
    type Error = Status;
    type Future = ThrottleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let Some(state) = &self.state else {
            return ThrottleFuture {
                inner: Some(self.inner.call(req)),
                state: None,
                rejected: None,
            };
        };
        match state.admit() {
            Ok(()) => ThrottleFuture {
                inner: Some(self.inner.call(req)),
                state: Some(state.clone()),
                rejected: None,
            },
            Err(p) => {
                let status = LocallyRejected::Throttled.status(format!(
                    "throttled locally: the backend refused most recent calls, so this client \
                     rejects {:.0} % of calls until it recovers (adaptive throttling)",
                    p * 100.0
                ));
                ThrottleFuture {
                    inner: None,
                    state: None,
                    rejected: Some(status),
                }
            }
        }
    }
}

pin_project! {
    /// The future of one call through [`AdaptiveThrottle`].
    pub struct ThrottleFuture<F> {
        #[pin]
        inner: Option<F>,
        state: Option<Arc<State>>,
        rejected: Option<Status>,
    }

    impl<F> PinnedDrop for ThrottleFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // A caller that gave up says nothing about the backend: not a refusal.
            if let Some(state) = this.project().state.take() {
                state.accepted();
            }
        }
    }
}

impl<F, B> Future for ThrottleFuture<F>
where
    F: Future<Output = Result<http::Response<B>, Status>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(this
                .rejected
                .take()
                .unwrap_or_else(|| Status::unavailable("throttled locally"))));
        };
        let result = std::task::ready!(inner.poll(cx));
        if let Some(state) = this.state.take() {
            let codes = state.config.refused;
            let refused = match &result {
                Ok(resp) => meshless_transport::grpc_status(resp.headers())
                    .is_some_and(|c| codes.contains(c)),
                // Failures before any server answered: the channel's own deadline, no
                // endpoint, connections refused.
                Err(s) => codes.contains(s.code()) || s.code() == Code::DeadlineExceeded,
            };
            if !refused {
                state.accepted();
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates `seconds` of traffic at `offered` calls per second against a backend that
    /// accepts at most `capacity` per second (and refuses the rest); returns, per second,
    /// how many calls reached the backend.
    async fn simulate(state: &State, seconds: u32, offered: u32, capacity: u32) -> Vec<u32> {
        let step = Duration::from_secs(1) / offered;
        let mut per_second = Vec::new();
        for _ in 0..seconds {
            let mut reached = 0;
            for _ in 0..offered {
                if state.admit().is_ok() {
                    reached += 1;
                    if reached <= capacity {
                        state.accepted();
                    }
                }
                tokio::time::advance(step).await;
            }
            per_second.push(reached);
        }
        per_second
    }

    fn mean(v: &[u32]) -> f64 {
        v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64
    }

    /// Offered 5 × capacity, the calls that reach the backend settle near K × capacity; once
    /// the overload ends, the client lets everything through again within one window.
    #[tokio::test(start_paused = true)]
    async fn settles_near_k_times_capacity_and_recovers_within_a_window() {
        // A lower K lets fewer calls probe the recovered backend, so it climbs back more
        // slowly: within one window for the SRE book's K = 2, two for go-zero's 1.5.
        for (k, seed, windows) in [(2.0, 1, 1), (1.5, 2, 2)] {
            let state = State::new(ThrottleConfig::sre().k(k).unwrap().seed(seed));
            let reached = simulate(&state, 30, 500, 100).await;
            let settled = mean(&reached[15..]);
            // K · C = 200 (or 150); the draws of 7,500 calls move the mean by about ±1 %.
            assert!(
                (settled - k * 100.0).abs() <= 0.15 * k * 100.0,
                "K = {k}: {settled} calls/s reached the backend: {reached:?}"
            );
            let after = simulate(&state, 10 * windows + 2, 500, u32::MAX).await;
            let n = after.len();
            assert_eq!(after[n - 2..], [500, 500], "K = {k}: recovered: {after:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn floor_and_forced_pass() {
        let state = State::new(ThrottleConfig::sre().min_requests(10).seed(3));
        // Nothing is accepted, yet the first 10 requests all pass: below the floor.
        for i in 0..10 {
            assert!(state.admit().is_ok(), "request {i}");
        }
        // From then on almost everything is rejected, but one call per second gets through.
        let reached = simulate(&state, 10, 500, 0).await;
        assert!(
            reached.iter().all(|&n| (1..=10).contains(&n)),
            "{reached:?}"
        );
        let no_force = State::new(
            ThrottleConfig::sre()
                .force_pass_after(Duration::ZERO)
                .seed(4),
        );
        let reached = simulate(&no_force, 20, 500, 0).await;
        assert!(reached[10..].iter().sum::<u32>() < 20, "{reached:?}");
    }

    #[test]
    fn config_errors_name_the_field() {
        assert!(ThrottleConfig::sre().k(0.5).is_err());
        assert!(ThrottleConfig::sre().k(f64::NAN).is_err());
        assert!(
            ThrottleConfig::sre()
                .window(Duration::from_secs(1), 0)
                .is_err()
        );
        let e = ThrottleConfig::sre()
            .window(Duration::from_micros(10), 40)
            .unwrap_err();
        assert_eq!(e.field(), "adaptiveThrottling.window");
    }
}
