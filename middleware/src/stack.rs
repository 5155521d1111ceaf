//! The usual resilience stack in the right order, with per-method policy: what gRPC's
//! service config `methodConfig` says, as one tower layer.
//!
//! Outside in: the call's deadline (the method's `timeout`, or the caller's if sooner), then
//! retries or hedging by the method's policy, then adaptive throttling (so that every attempt
//! counts as a request and a throttled attempt is never retried), then the channel.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use meshless_transport::GrpcTimeout;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::service::{ChannelService, take_ready};

use crate::hedge::Sketch;
use crate::limits::Limits;
use crate::{AdaptiveThrottle, AdaptiveThrottleLayer, HedgingPolicy, RetryPolicy, ThrottleConfig};

/// What calls to a method get: a `methodConfig` entry's `timeout` and its `retryPolicy` or
/// `hedgingPolicy` (one at most, as in gRPC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodPolicy {
    timeout: Option<Duration>,
    wait_for_ready: bool,
    max_message_bytes: meshless_transport::MaxMessageBytes,
    attempts: Attempts,
}

#[derive(Debug, Clone, Default, PartialEq)]
enum Attempts {
    #[default]
    Once,
    Retry(RetryPolicy),
    Hedge(HedgingPolicy),
}

impl MethodPolicy {
    /// One attempt, no deadline of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// The method's deadline: a call gets this `grpc-timeout` unless its caller set a
    /// sooner one (gRPC: the effective deadline is the sooner of the two).
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// gRPC's `waitForReady`: calls wait through TRANSIENT_FAILURE for a ready endpoint,
    /// until their deadline, instead of failing at once
    /// ([`WaitForReady`](meshless_transport::WaitForReady)).
    #[must_use]
    pub fn wait_for_ready(mut self, on: bool) -> Self {
        self.wait_for_ready = on;
        self
    }

    /// gRPC's `maxRequestMessageBytes` and `maxResponseMessageBytes`: a message over either
    /// fails the call with RESOURCE_EXHAUSTED (a request one before it is sent).
    #[must_use]
    pub fn max_message_bytes(mut self, request: Option<usize>, response: Option<usize>) -> Self {
        self.max_message_bytes = meshless_transport::MaxMessageBytes { request, response };
        self
    }

    /// Retries calls by `policy` (and stops hedging them).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.attempts = Attempts::Retry(policy);
        self
    }

    /// Hedges calls by `policy` (and stops retrying them).
    #[must_use]
    pub fn hedge(mut self, policy: HedgingPolicy) -> Self {
        self.attempts = Attempts::Hedge(policy);
        self
    }
}

/// A method policy, ready for calls: its timeout encoded once, its hedging sketch.
#[derive(Debug)]
struct Entry {
    policy: MethodPolicy,
    timeout: Option<(Duration, GrpcTimeout)>,
    sketch: Option<Arc<Sketch>>,
}

impl Entry {
    fn new(policy: MethodPolicy) -> Arc<Self> {
        let sketch = match &policy.attempts {
            Attempts::Hedge(h) => h.new_sketch(),
            _ => None,
        };
        Arc::new(Entry {
            timeout: policy.timeout.map(|d| (d, GrpcTimeout::new(d))),
            sketch,
            policy,
        })
    }
}

/// Method policies by name, matched as gRPC's service config matches `methodConfig.name`:
/// the exact `service/method` first, then the `service`, then the default entry.
///
/// ```
/// use std::time::Duration;
/// use meshless_middleware::{MethodPolicies, MethodPolicy, RetryPolicy};
///
/// let methods = MethodPolicies::new()
///     .default_policy(MethodPolicy::new().timeout(Duration::from_secs(2)))
///     .service("cart.v1.Cart", MethodPolicy::new().retry(RetryPolicy::default()))
///     .method("cart.v1.Cart", "Checkout", MethodPolicy::new().timeout(Duration::from_secs(10)));
/// # drop(methods);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MethodPolicies {
    default: Option<Arc<Entry>>,
    services: HashMap<String, Arc<Entry>>,
    methods: HashMap<String, Arc<Entry>>,
}

impl MethodPolicies {
    /// No policies: every call is sent once, with its caller's deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy of calls no other entry names.
    #[must_use]
    pub fn default_policy(mut self, policy: MethodPolicy) -> Self {
        self.default = Some(Entry::new(policy));
        self
    }

    /// The policy of every method of `service` (fully qualified: `package.Service`).
    #[must_use]
    pub fn service(mut self, service: impl Into<String>, policy: MethodPolicy) -> Self {
        self.services.insert(service.into(), Entry::new(policy));
        self
    }

    /// The policy of one method of `service`.
    #[must_use]
    pub fn method(
        mut self,
        service: impl AsRef<str>,
        method: impl AsRef<str>,
        policy: MethodPolicy,
    ) -> Self {
        let key = format!("{}/{}", service.as_ref(), method.as_ref());
        self.methods.insert(key, Entry::new(policy));
        self
    }

    /// The policy of a call to `path` (`/package.Service/Method`), if any entry matches.
    pub fn policy_for(&self, path: &str) -> Option<&MethodPolicy> {
        self.lookup(path).map(|e| &e.policy)
    }

    fn lookup(&self, path: &str) -> Option<&Arc<Entry>> {
        let full = path.strip_prefix('/').unwrap_or(path);
        if let Some(e) = self.methods.get(full) {
            return Some(e);
        }
        let service = full.rsplit_once('/').map_or(full, |(s, _)| s);
        self.services.get(service).or(self.default.as_ref())
    }
}

/// The resilience stack above a channel, in the right order (see the [module docs](self)):
/// per-method deadlines, retries or hedging, and adaptive throttling, all off until set, with
/// one retry budget for the channel.
///
/// ```
/// use std::time::Duration;
/// use meshless_middleware::{MethodPolicy, Resilience, RetryPolicy, ThrottleConfig};
///
/// let stack = Resilience::new()
///     .default_policy(MethodPolicy::new().timeout(Duration::from_secs(2)).retry(RetryPolicy::default()))
///     .adaptive_throttle(ThrottleConfig::sre());
/// // let svc = tower::ServiceBuilder::new().layer(stack).service(channel);
/// # drop(stack);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Resilience {
    methods: Arc<MethodPolicies>,
    limits: Arc<Limits>,
    throttle: Option<AdaptiveThrottleLayer>,
}

impl Resilience {
    /// Nothing on: calls pass through unchanged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses these per-method policies.
    #[must_use]
    pub fn methods(mut self, methods: MethodPolicies) -> Self {
        self.methods = Arc::new(methods);
        self
    }

    /// Sets the policy of calls no per-method entry names.
    #[must_use]
    pub fn default_policy(mut self, policy: MethodPolicy) -> Self {
        let mut methods = (*self.methods).clone();
        methods.default = Some(Entry::new(policy));
        self.methods = Arc::new(methods);
        self
    }

    /// Adds adaptive throttling below the retries ([`AdaptiveThrottleLayer`]).
    #[must_use]
    pub fn adaptive_throttle(mut self, config: ThrottleConfig) -> Self {
        self.throttle = Some(AdaptiveThrottleLayer::new(config));
        self
    }

    crate::limits::limits_builder!();

    /// The per-method policies.
    pub fn method_policies(&self) -> &MethodPolicies {
        &self.methods
    }
}

impl<S> Layer<S> for Resilience {
    type Service = Resilient<S>;
    fn layer(&self, inner: S) -> Resilient<S> {
        Resilient {
            inner: AdaptiveThrottle::maybe(inner, self.throttle.as_ref()),
            methods: self.methods.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// The service made by [`Resilience`].
#[derive(Debug, Clone)]
pub struct Resilient<S> {
    inner: AdaptiveThrottle<S>,
    methods: Arc<MethodPolicies>,
    limits: Arc<Limits>,
}

/// The future of one call through [`Resilient`].
pub type ResilientFuture<B> =
    Pin<Box<dyn Future<Output = Result<http::Response<B>, Status>> + Send>>;

impl<S, B> Service<http::Request<tonic::body::Body>> for Resilient<S>
where
    // The first bound names `B`; the second says what the layer needs of the service.
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>> + ChannelService<B>,
    B: crate::ObservedBody + Send + 'static,
{
    type Response = http::Response<B>;
    type Error = Status;
    type Future = ResilientFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResilientFuture<B> {
        // gRPC A72's call span, `Sent.<service>.<method>`, around every attempt.
        let span = tracing::debug_span!("Sent", otel.name = tracing::field::Empty);
        if !span.is_disabled() {
            span.record(
                "otel.name",
                format!("Sent.{}", meshless_transport::a72_name(req.uri().path())),
            );
        }
        #[cfg(feature = "metrics")]
        if let Some(m) = self.limits.metrics.clone() {
            // A66's call duration, from here to the end of the response, over all the
            // call's attempts; the channel then records only the attempts.
            let mut req = req;
            req.extensions_mut()
                .insert(meshless_transport::CallMeasured);
            let path = req.uri().path().to_owned();
            let start = std::time::Instant::now();
            let call = self.call_inner_in(&span, req);
            let measured = async move {
                match call.await {
                    Ok(resp) => {
                        let in_headers = meshless_transport::grpc_status(resp.headers());
                        let end = Box::new(move |code| {
                            m.call_duration(&path, code, start.elapsed());
                        });
                        Ok(resp.map(|b| b.on_end(in_headers, end)))
                    }
                    Err(status) => {
                        m.call_duration(&path, status.code(), start.elapsed());
                        Err(status)
                    }
                }
            };
            return Box::pin(tracing::Instrument::instrument(measured, span));
        }
        let call = self.call_inner_in(&span, req);
        Box::pin(tracing::Instrument::instrument(call, span))
    }
}

impl<S, B> Resilient<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>> + ChannelService<B>,
    B: Send + 'static,
{
    /// [`call_inner`](Self::call_inner) inside the call's span: a call with one attempt
    /// calls the service below at once, and that attempt's span must be the call span's
    /// child (A72).
    fn call_inner_in(
        &mut self,
        span: &tracing::Span,
        req: http::Request<tonic::body::Body>,
    ) -> ResilientFuture<B> {
        let _in_call = span.enter();
        self.call_inner(req)
    }

    fn call_inner(&mut self, mut req: http::Request<tonic::body::Body>) -> ResilientFuture<B> {
        let (mut ready, template) = take_ready(&mut self.inner);
        let Some(entry) = self.methods.lookup(req.uri().path()).cloned() else {
            return Box::pin(ready.call(req));
        };
        if let Some((d, header)) = &entry.timeout
            && GrpcTimeout::parse(req.headers()).is_none_or(|own| own > *d)
        {
            header.set(req.headers_mut());
        }
        if entry.policy.wait_for_ready {
            req.extensions_mut()
                .insert(meshless_transport::WaitForReady);
        }
        let limits = entry.policy.max_message_bytes;
        if limits.request.is_some() || limits.response.is_some() {
            req.extensions_mut().insert(limits);
        }
        match &entry.policy.attempts {
            Attempts::Once => Box::pin(ready.call(req)),
            Attempts::Retry(p) => Box::pin(crate::retry::call(
                ready,
                template,
                p.clone(),
                self.limits.clone(),
                req,
            )),
            Attempts::Hedge(p) => Box::pin(crate::hedge::call(
                ready,
                template,
                p.clone(),
                entry.sketch.clone(),
                self.limits.clone(),
                req,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_exact_method_then_service_then_default() {
        let short = MethodPolicy::new().timeout(Duration::from_secs(1));
        let long = MethodPolicy::new().timeout(Duration::from_secs(9));
        let retry = MethodPolicy::new().retry(RetryPolicy::default());
        let m = MethodPolicies::new()
            .default_policy(short.clone())
            .service("a.A", retry.clone())
            .method("a.A", "Slow", long.clone());
        assert_eq!(m.policy_for("/a.A/Slow"), Some(&long));
        assert_eq!(m.policy_for("/a.A/Other"), Some(&retry));
        assert_eq!(m.policy_for("/b.B/Any"), Some(&short));
        assert_eq!(MethodPolicies::new().policy_for("/a.A/Slow"), None);
    }
}
