//! gRPC A6 hedging, with an adaptive delay, as a tower layer above a meshless `Channel`.
//!
//! A hedged call is sent once at once and again after each hedging delay with no answer, up
//! to `maxAttempts` in flight, each to an endpoint the call has not tried while one is ready
//! ([`TriedEndpoints`]). The first attempt that is committed (its response headers arrive
//! without a status, or it ends `OK`) wins, and the others are dropped: the channel resets
//! their streams (RST_STREAM CANCEL), so their servers see them cancelled. An attempt that
//! fails with a fatal code (one not in `nonFatalStatusCodes`) ends the call with that status
//! and cancels the rest; a non-fatal failure sends the next hedge at once. Every hedge after
//! the first attempt needs the [`RetryBudget`](crate::RetryBudget) (and the [`RetryThrottle`], when configured)
//! to allow it.
//!
//! Beyond A6 (which grpc-go does not implement at all): the delay may be "the channel's
//! observed p95" ([`HedgeDelay::Percentile`]), so only calls slower than most are hedged.

pub(crate) mod sketch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::HeaderValue;
use meshless_transport::{GrpcTimeout, TriedEndpoints};
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

use crate::service::{ChannelService, take_ready};

use crate::limits::Limits;
use crate::retry::policy::{code_set, max_attempts as policy_max_attempts};
use crate::retry::{
    Buffered, Ended, PREVIOUS_ATTEMPTS_HEADER, PolicyError, Pushback, RetryThrottle, classify,
};
pub(crate) use sketch::Sketch;

/// When the next hedge of a call goes out.
#[derive(Debug, Clone, PartialEq)]
pub enum HedgeDelay {
    /// A6's `hedgingDelay`: a fixed time after the previous attempt.
    Fixed(Duration),
    /// The `quantile` (0.95: the p95) of the response-header latency of this layer's recent
    /// calls, measured over a rolling `window`; `fallback` while fewer than `min_samples`
    /// calls were seen. So hedging adds about `1 − quantile` of the load: 5 % for the p95.
    Percentile {
        /// The share of calls that are not hedged, such as 0.95.
        quantile: f64,
        /// The delay while the layer has seen too few calls.
        fallback: Duration,
        /// How many calls in the window it takes to trust the quantile.
        min_samples: u32,
        /// How far back the latencies count (the current and the previous window).
        window: Duration,
    },
}

impl HedgeDelay {
    /// The p95 over a 10 s window, after 100 calls; `fallback` before.
    pub fn p95(fallback: Duration) -> Self {
        HedgeDelay::Percentile {
            quantile: 0.95,
            fallback,
            min_samples: 100,
            window: Duration::from_secs(10),
        }
    }
}

/// gRPC A6's `hedgingPolicy`: `maxAttempts` (2 to 5; above 5 is taken as 5), `hedgingDelay`
/// and `nonFatalStatusCodes` (which may be empty: then any failure ends the call).
///
/// ```
/// use std::time::Duration;
/// use meshless_middleware::{HedgeDelay, HedgingPolicy};
/// use tonic::Code;
///
/// let adaptive = HedgingPolicy::new(3, HedgeDelay::p95(Duration::from_millis(50)), [Code::Unavailable])?;
/// let fixed = HedgingPolicy::new(2, HedgeDelay::Fixed(Duration::from_millis(20)), [])?;
/// assert!(HedgingPolicy::new(1, HedgeDelay::Fixed(Duration::ZERO), []).is_err());
/// # drop((adaptive, fixed));
/// # Ok::<(), meshless_middleware::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HedgingPolicy {
    max_attempts: u32,
    delay: HedgeDelay,
    non_fatal: meshless_balancer::CodeSet,
}

impl HedgingPolicy {
    /// A policy of `max_attempts` in flight at most, hedged after `delay`, carrying on past
    /// failures with the `non_fatal` codes.
    pub fn new(
        max_attempts: u32,
        delay: HedgeDelay,
        non_fatal: impl IntoIterator<Item = Code>,
    ) -> Result<Self, PolicyError> {
        let max_attempts = policy_max_attempts("hedgingPolicy.maxAttempts", max_attempts)?;
        if let HedgeDelay::Percentile {
            quantile, window, ..
        } = &delay
            && !(quantile.is_finite() && *quantile > 0.0 && *quantile < 1.0 && !window.is_zero())
        {
            return Err(PolicyError::new(
                "hedgingPolicy.hedgingDelay",
                format!(
                    "a percentile delay needs a quantile between 0 and 1 (0.95 for the p95) and a window above zero, got {quantile} over {window:?}"
                ),
            ));
        }
        let non_fatal = code_set("hedgingPolicy.nonFatalStatusCodes", non_fatal)?;
        Ok(HedgingPolicy {
            max_attempts,
            delay,
            non_fatal,
        })
    }

    /// How many attempts a call may have in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    fn is_non_fatal(&self, code: Code) -> bool {
        self.non_fatal.contains(code)
    }
}

/// Hedges calls by a [`HedgingPolicy`], within a [`RetryBudget`](crate::RetryBudget); see the [module
/// docs](self). Every service made from one layer shares its budget, throttle, latency
/// sketch and buffer bound: make one layer per channel.
///
/// Only requests that are complete when the call starts (unary and server-streaming calls)
/// are hedged; a client-streaming request is sent once.
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    policy: HedgingPolicy,
    limits: Arc<Limits>,
    sketch: Option<Arc<Sketch>>,
}

impl HedgeLayer {
    /// Hedges by `policy` within the default [`RetryBudget`](crate::RetryBudget) (20 % of calls plus 10 per
    /// second), keeping up to 256 KiB per request and 16 MiB in all.
    pub fn new(policy: HedgingPolicy) -> Self {
        let sketch = policy.new_sketch();
        HedgeLayer {
            policy,
            limits: Arc::default(),
            sketch,
        }
    }

    crate::limits::limits_builder!();

    /// The delay a call starting now would wait before its first hedge.
    pub fn current_delay(&self) -> Duration {
        self.policy.delay_now(self.sketch.as_deref())
    }
}

impl HedgingPolicy {
    /// A latency sketch for the adaptive delay, if the policy has one.
    pub(crate) fn new_sketch(&self) -> Option<Arc<Sketch>> {
        match &self.delay {
            HedgeDelay::Percentile { window, .. } => Some(Arc::new(Sketch::new(*window))),
            HedgeDelay::Fixed(_) => None,
        }
    }

    fn delay_now(&self, sketch: Option<&Sketch>) -> Duration {
        match &self.delay {
            HedgeDelay::Fixed(d) => *d,
            HedgeDelay::Percentile {
                quantile,
                fallback,
                min_samples,
                ..
            } => sketch
                .and_then(|s| s.quantile(*quantile, *min_samples))
                .unwrap_or(*fallback),
        }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;
    fn layer(&self, inner: S) -> Hedge<S> {
        Hedge {
            inner,
            policy: self.policy.clone(),
            limits: self.limits.clone(),
            sketch: self.sketch.clone(),
        }
    }
}

/// The service made by [`HedgeLayer`].
#[derive(Clone, Debug)]
pub struct Hedge<S> {
    inner: S,
    policy: HedgingPolicy,
    limits: Arc<Limits>,
    sketch: Option<Arc<Sketch>>,
}

/// The future of one call through [`Hedge`].
pub type HedgeFuture<B> = Pin<Box<dyn Future<Output = Result<http::Response<B>, Status>> + Send>>;

impl<S, B> Service<http::Request<tonic::body::Body>> for Hedge<S>
where
    // The first bound names `B`; the second says what the layer needs of the service.
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>> + ChannelService<B>,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = Status;
    type Future = HedgeFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> HedgeFuture<B> {
        let (ready, template) = take_ready(&mut self.inner);
        Box::pin(call(
            ready,
            template,
            self.policy.clone(),
            self.sketch.clone(),
            self.limits.clone(),
            req,
        ))
    }
}

type Attempt<B> =
    Pin<Box<dyn Future<Output = (Instant, Result<http::Response<B>, Status>)> + Send>>;

/// One call by `policy`: its hedged attempts, until one wins or a fatal failure ends it.
pub(crate) async fn call<S, B>(
    first: S,
    template: S,
    policy: HedgingPolicy,
    sketch: Option<Arc<Sketch>>,
    shared: Arc<Limits>,
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<B>, Status>
where
    S: ChannelService<B>,
    B: Send + 'static,
{
    let path = shared.metrics_path(&req);
    let mut sent = 0u32;
    let result = hedged(first, template, policy, sketch, &shared, req, &mut sent).await;
    shared.call_ended(path, 0, sent.saturating_sub(1), Duration::ZERO);
    result
}

async fn hedged<S, B>(
    first: S,
    template: S,
    policy: HedgingPolicy,
    sketch: Option<Arc<Sketch>>,
    shared: &Arc<Limits>,
    req: http::Request<tonic::body::Body>,
    sent_out: &mut u32,
) -> Result<http::Response<B>, Status>
where
    S: ChannelService<B>,
    B: Send + 'static,
{
    let (mut parts, body) = req.into_parts();
    let deadline = GrpcTimeout::parse(&parts.headers).map(|t| Instant::now() + t);
    let mut buffered = Buffered::new(body, shared.per_call, &shared.pool)?;
    if !matches!(buffered, Buffered::Kept(_)) {
        // Not complete at once (client streaming) or over a bound: sent once.
        let body = buffered
            .attempt(0)
            .ok_or_else(|| Status::internal("request body missing"))?;
        let mut first = first;
        return first
            .call(http::Request::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
            .await;
    }
    let tried = parts
        .extensions
        .get::<TriedEndpoints>()
        .cloned()
        .unwrap_or_default();
    parts.extensions.insert(tried);
    shared.budget.deposit();
    let delay = policy.delay_now(sketch.as_deref());
    let record = |start: Instant| {
        if let Some(s) = &sketch {
            s.record(start.elapsed());
        }
    };
    let mut first = Some(first);
    let mut pending: FuturesUnordered<Attempt<B>> = FuturesUnordered::new();
    let mut sent = 0u32;
    let mut next_at = Some(Instant::now());
    let mut last_failure: Option<Result<http::Response<B>, Status>> = None;
    loop {
        if next_at.is_some_and(|at| at <= Instant::now()) {
            next_at = None;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) && pending.is_empty() {
                return Err(Status::deadline_exceeded(format!(
                    "deadline exceeded after {sent} hedged attempts"
                )));
            }
            let allowed = sent == 0
                || (shared.throttle.as_ref().is_none_or(RetryThrottle::allows)
                    && shared.budget.withdraw());
            if allowed && left != Some(Duration::ZERO) {
                let body = buffered.attempt(sent).map(tonic::body::Body::new);
                let Some(body) = body else {
                    return Err(Status::internal("request body missing"));
                };
                let mut req = http::Request::from_parts(parts.clone(), body);
                if sent > 0 {
                    req.headers_mut()
                        .insert(PREVIOUS_ATTEMPTS_HEADER, HeaderValue::from(sent));
                }
                if let Some(left) = left {
                    GrpcTimeout::new(left).set(req.headers_mut());
                }
                let svc = first.take();
                let template = template.clone();
                pending.push(Box::pin(async move {
                    let start = Instant::now();
                    let result = match svc {
                        Some(mut ready) => ready.call(req).await,
                        None => match template.ready_oneshot().await {
                            Ok(mut ready) => ready.call(req).await,
                            Err(status) => Err(status),
                        },
                    };
                    (start, result)
                }));
                sent += 1;
                *sent_out = sent;
                if sent < policy.max_attempts {
                    next_at = Some(Instant::now() + delay);
                }
            }
        }
        if pending.is_empty() && next_at.is_none() {
            // Every attempt failed non-fatally, and no more may go.
            return last_failure
                .unwrap_or_else(|| Err(Status::internal("hedged call sent no attempt")));
        }
        let wake = next_at;
        let done = tokio::select! {
            done = pending.next(), if !pending.is_empty() => done,
            () = sleep_until(wake) => continue,
        };
        let Some((start, result)) = done else {
            continue;
        };
        let (code, pushback, result) = match classify(result) {
            Ended::Committed(resp) => {
                record(start);
                buffered.commit();
                if let Some(t) = &shared.throttle {
                    t.success();
                }
                // Dropping `pending` cancels the other attempts at their servers.
                return Ok(resp);
            }
            Ended::Failed {
                code,
                pushback,
                result,
            } => (code, pushback, result),
        };
        if code == Code::Ok {
            record(start);
            if let Some(t) = &shared.throttle {
                t.success();
            }
            return result;
        }
        let local =
            matches!(&result, Err(s) if meshless_transport::LocallyRejected::of(s).is_some());
        if !policy.is_non_fatal(code) || local {
            return result;
        }
        if let Some(t) = &shared.throttle {
            t.failure_allows_retry();
        }
        last_failure = Some(result);
        if sent < policy.max_attempts {
            next_at = match pushback {
                Pushback::Stop => None,
                Pushback::Wait(d) => Some(Instant::now() + d),
                // A non-fatal failure sends the next hedge at once (A6).
                Pushback::None => Some(Instant::now()),
            };
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
