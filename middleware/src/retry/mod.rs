//! gRPC A6 retries, bounded by a retry budget, as a tower layer above a meshless `Channel`.
//!
//! A call is retried only while nothing of the response has been received: when the server
//! answered Trailers-Only with a retryable status, or the call failed before reaching a
//! server. Once response headers arrive the call is committed and its response goes to the
//! caller, whatever follows. Each retry:
//!
//! - waits the policy's backoff, or the server's `grpc-retry-pushback-ms` (a negative or
//!   malformed pushback stops retrying);
//! - needs the [`RetryBudget`] (always) and the [`RetryThrottle`] (when configured) to allow it;
//! - carries `grpc-previous-rpc-attempts` and a `grpc-timeout` of what is left of the call's
//!   deadline, and is not started when the backoff would end past it;
//! - avoids the endpoints earlier attempts went to while another is ready
//!   ([`TriedEndpoints`]).

mod budget;
pub(crate) mod buffer;
pub(crate) mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use meshless_transport::{Backoff, GrpcTimeout, TriedEndpoints};
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

use crate::service::{ChannelService, take_ready};

pub use budget::{RetryBudget, RetryThrottle};
pub use buffer::{DEFAULT_PER_CALL_BUFFER, DEFAULT_PER_CHANNEL_BUFFER};
pub use policy::{MAX_ATTEMPTS_CAP, PolicyError, RetryPolicy};

use crate::limits::Limits;
pub(crate) use buffer::{Buffered, Pool};

/// The header that tells the server how many attempts of this call came before (A6).
pub const PREVIOUS_ATTEMPTS_HEADER: &str = "grpc-previous-rpc-attempts";
/// The trailer in which a server asks the client to wait before retrying, or not to (A6).
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// Retries failed calls by a [`RetryPolicy`], within a [`RetryBudget`]; see the
/// [module docs](self) for the rules. Every service made from one layer shares its budget,
/// throttle and buffer bound: make one layer per channel.
///
/// ```
/// use meshless_middleware::{RetryLayer, RetryPolicy};
/// use tonic::Code;
///
/// let retry = RetryLayer::new(RetryPolicy::new([Code::Unavailable])?.max_attempts(3)?);
/// // tower::ServiceBuilder::new().layer(retry).service(channel)
/// # drop(retry);
/// # Ok::<(), meshless_middleware::PolicyError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: RetryPolicy,
    limits: Arc<Limits>,
}

impl RetryLayer {
    /// Retries by `policy`, within the default [`RetryBudget`], keeping up to
    /// [`DEFAULT_PER_CALL_BUFFER`] of each request and [`DEFAULT_PER_CHANNEL_BUFFER`] in all.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy,
            limits: Arc::default(),
        }
    }

    crate::limits::limits_builder!();

    /// The policy this layer retries by.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
    limits: Arc<Limits>,
}

/// The future of one call through [`Retry`].
pub type RetryFuture<B> = Pin<Box<dyn Future<Output = Result<http::Response<B>, Status>> + Send>>;

impl<S, B> Service<http::Request<tonic::body::Body>> for Retry<S>
where
    // The first bound names `B`; the second says what the layer needs of the service.
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>> + ChannelService<B>,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = Status;
    type Future = RetryFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> RetryFuture<B> {
        // The service that was made ready goes to the first attempt; later ones use clones.
        let (ready, template) = take_ready(&mut self.inner);
        Box::pin(call(
            ready,
            template,
            self.policy.clone(),
            self.limits.clone(),
            req,
        ))
    }
}

/// What one attempt ended with, as far as retrying is concerned.
pub(crate) enum Ended<B> {
    /// Response headers arrived: the call is committed.
    Committed(http::Response<B>),
    /// A failure before any response headers: a Trailers-Only response or a local error.
    Failed {
        code: Code,
        pushback: Pushback,
        result: Result<http::Response<B>, Status>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    None,
    Wait(Duration),
    Stop,
}

fn pushback_of(headers: &http::HeaderMap) -> Pushback {
    match headers.get(PUSHBACK_HEADER) {
        None => Pushback::None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(ms) => Pushback::Wait(Duration::from_millis(ms)),
            // A6: a negative or unparseable pushback means "do not retry".
            None => Pushback::Stop,
        },
    }
}

pub(crate) fn classify<B>(result: Result<http::Response<B>, Status>) -> Ended<B> {
    match result {
        Ok(resp) => match Status::from_header_map(resp.headers()) {
            // Trailers-Only: the status came in the headers; nothing else will follow.
            Some(status) => Ended::Failed {
                code: status.code(),
                pushback: pushback_of(resp.headers()),
                result: Ok(resp),
            },
            None => Ended::Committed(resp),
        },
        Err(status) => Ended::Failed {
            code: status.code(),
            pushback: pushback_of(status.metadata().as_ref()),
            result: Err(status),
        },
    }
}

/// One call by `policy`: its attempts, until one is committed or a rule stops them.
pub(crate) async fn call<S, B>(
    first: S,
    template: S,
    policy: RetryPolicy,
    shared: Arc<Limits>,
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<B>, Status>
where
    S: ChannelService<B>,
{
    let path = shared.metrics_path(&req);
    let mut tally = Tally::default();
    let result = attempts(first, template, policy, &shared, req, &mut tally).await;
    shared.call_ended(path, tally.retries, 0, tally.delay);
    result
}

/// What a call's retries came to, for A96's instruments.
#[derive(Default)]
struct Tally {
    retries: u32,
    delay: Duration,
}

async fn attempts<S, B>(
    first: S,
    template: S,
    policy: RetryPolicy,
    shared: &Arc<Limits>,
    req: http::Request<tonic::body::Body>,
    tally: &mut Tally,
) -> Result<http::Response<B>, Status>
where
    S: ChannelService<B>,
{
    let (mut parts, body) = req.into_parts();
    let deadline = GrpcTimeout::parse(&parts.headers).map(|t| Instant::now() + t);
    let mut buffered = Buffered::new(body, shared.per_call, &shared.pool)?;
    let tried = parts
        .extensions
        .get::<TriedEndpoints>()
        .cloned()
        .unwrap_or_default();
    parts.extensions.insert(tried);
    shared.budget.deposit();
    let mut backoff = Backoff::new(policy.backoff_config());
    let mut svc = Some(first);
    let mut attempt = 0u32;
    loop {
        let Some(body) = buffered.attempt(attempt) else {
            // `replayable()` was checked before this retry; a body is always there.
            return Err(Status::internal("request body cannot be sent again"));
        };
        let mut req = http::Request::from_parts(parts.clone(), tonic::body::Body::new(body));
        if attempt > 0 {
            req.headers_mut()
                .insert(PREVIOUS_ATTEMPTS_HEADER, HeaderValue::from(attempt));
        }
        if let Some(at) = deadline {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded(format!(
                    "deadline exceeded after {attempt} attempts"
                )));
            }
            GrpcTimeout::new(left).set(req.headers_mut());
        }
        let result = match svc.take() {
            Some(mut ready) => ready.call(req).await,
            None => match template.clone().ready_oneshot().await {
                Ok(mut ready) => ready.call(req).await,
                Err(status) => Err(status),
            },
        };
        attempt += 1;
        let (code, pushback, result) = match classify(result) {
            Ended::Committed(resp) => {
                buffered.commit();
                if let Some(t) = &shared.throttle {
                    t.success();
                }
                return Ok(resp);
            }
            Ended::Failed {
                code,
                pushback,
                result,
            } => (code, pushback, result),
        };
        if code == Code::Ok {
            if let Some(t) = &shared.throttle {
                t.success();
            }
            return result;
        }
        if !policy.is_retryable(code) {
            return result;
        }
        if let Err(status) = &result
            && crate::LocallyRejected::of(status).is_some()
        {
            // Rejected here to shed load: another attempt would add to it.
            return result;
        }
        // A6 order: the throttle counts every retryable failure, even the last attempt's.
        let throttled = shared
            .throttle
            .as_ref()
            .is_some_and(|t| !t.failure_allows_retry());
        if throttled
            || pushback == Pushback::Stop
            || attempt >= policy.attempts()
            || !buffered.replayable()
            || !shared.budget.withdraw()
        {
            return result;
        }
        let delay = match pushback {
            Pushback::Wait(d) => {
                backoff.reset();
                d
            }
            _ => backoff.next_delay(),
        };
        if let Some(at) = deadline
            && Instant::now() + delay >= at
        {
            return result;
        }
        drop(result);
        tokio::time::sleep(delay).await;
        tally.retries += 1;
        tally.delay += delay;
    }
}
