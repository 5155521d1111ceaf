//! `Channel`: the tower Service that sends each call to the endpoint its picker chooses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Scheme, Uri};
use hyper::client::conn::http2;
use meshless_balancer::{Balancer, Pick, PickRequest};
use meshless_discovery::{Discovery, Registry, Target, TargetError};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::backoff::BackoffConfig;
use crate::body::{CallGuard, Replay, ReqBody, TrackedBody, outcome_of};
use crate::control::{Control, PickerState, Shared};
use crate::grpc_timeout;
use crate::status::ChannelStatus;
use crate::subchannel::{ConnectConfig, Subchannel};

/// Default bound on how long a call waits for an endpoint to become ready.
pub const DEFAULT_WAIT_FOR_READY: Duration = Duration::from_secs(10);
/// Default bound on one connection attempt. Shorter than gRPC's 20 s minimum because a
/// channel has other endpoints to use meanwhile.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default HTTP/2 keepalive ping timeout, when keepalive is on.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a call that was never sent (its connection closed first) is sent again.
const MAX_UNSENT_ATTEMPTS: usize = 3;

/// A gRPC channel that discovers the endpoints of a target, keeps one HTTP/2 connection per
/// endpoint and sends every call to the endpoint its load-balancing policy picks.
///
/// It is cheap to clone; all clones share the connections. It implements
/// `tower::Service<http::Request<tonic::body::Body>>`, so any tonic-generated client takes
/// it as its transport. Its background task stops, and its connections close once their
/// calls finish, when the last clone is dropped.
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
    _alive: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.shared.target)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The target string is malformed or its scheme unknown.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The load-balancing policy name is unknown.
    #[error(transparent)]
    Policy(#[from] meshless_balancer::UnknownPolicy),
    /// `build` was called outside a Tokio runtime.
    #[error("meshless::Channel must be built inside a Tokio runtime (it spawns its control task)")]
    NoRuntime,
}

/// Configures and builds a [`Channel`]. Start from [`Channel::builder`].
#[must_use]
pub struct ChannelBuilder {
    target: Result<String, TargetError>,
    registry: Registry,
    discovery: Option<Arc<dyn Discovery>>,
    balancer: Option<Arc<dyn Balancer>>,
    policy: Option<String>,
    connect: ConnectConfig,
    wait_for_ready: Duration,
}

impl Channel {
    /// A builder for a channel to `target`, such as `static:///10.0.0.1:50051,10.0.0.2:50051`.
    /// The target is parsed by [`build`](ChannelBuilder::build).
    pub fn builder(target: impl Into<String>) -> ChannelBuilder {
        ChannelBuilder::new(Ok(target.into()))
    }

    /// A builder for a channel fed by `discovery` (for example a
    /// [`ManualDiscovery`](meshless_discovery::ManualDiscovery)); `name` labels it in errors
    /// and status.
    pub fn with_discovery(
        name: impl Into<String>,
        discovery: Arc<dyn Discovery>,
    ) -> ChannelBuilder {
        let mut b = ChannelBuilder::new(Ok(name.into()));
        b.discovery = Some(discovery);
        b
    }

    /// The target this channel serves.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// A snapshot of the endpoints, their states and their load.
    pub fn status(&self) -> ChannelStatus {
        self.shared.status()
    }
}

impl ChannelBuilder {
    fn new(target: Result<String, TargetError>) -> Self {
        ChannelBuilder {
            target,
            registry: Registry::default(),
            discovery: None,
            balancer: None,
            policy: None,
            connect: ConnectConfig {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                backoff: BackoffConfig::default(),
                keepalive_interval: None,
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                authority: None,
            },
            wait_for_ready: DEFAULT_WAIT_FOR_READY,
        }
    }

    /// Uses this balancer instance. Default: `pick_first`, as in gRPC.
    pub fn balancer(mut self, balancer: Arc<dyn Balancer>) -> Self {
        self.balancer = Some(balancer);
        self.policy = None;
        self
    }

    /// Uses the policy with this gRPC-style name (`round_robin`, `pick_first`, ...) and its
    /// default configuration. An unknown name fails [`build`](Self::build).
    pub fn policy(mut self, name: impl Into<String>) -> Self {
        self.policy = Some(name.into());
        self.balancer = None;
        self
    }

    /// Resolves target schemes with this registry instead of the default one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Bounds each connection attempt. Default: [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect.connect_timeout = d;
        self
    }

    /// Sets the reconnect backoff. Default: gRPC's (1 s, ×1.6, jitter 0.2, cap 120 s).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.connect.backoff = backoff;
        self
    }

    /// Bounds how long a call waits for an endpoint while one is connecting. A call's own
    /// `grpc-timeout` shortens it. Default: [`DEFAULT_WAIT_FOR_READY`].
    pub fn wait_for_ready_timeout(mut self, d: Duration) -> Self {
        self.wait_for_ready = d;
        self
    }

    /// Sends HTTP/2 pings at this interval to detect dead connections (off by default),
    /// failing a connection that does not answer within `timeout`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.connect.keepalive_interval = Some(interval);
        self.connect.keepalive_timeout = timeout;
        self
    }

    /// Sets the `:authority` of every call. Default: the address of the endpoint the call
    /// goes to.
    pub fn authority(mut self, authority: http::uri::Authority) -> Self {
        self.connect.authority = Some(authority);
        self
    }

    /// Builds the channel and starts its control task. Must run inside a Tokio runtime.
    pub fn build(self) -> Result<Channel, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let name = self.target?;
        let discovery = match self.discovery {
            Some(d) => d,
            None => {
                let target: Target = self.registry.parse(&name)?;
                self.registry.build(&target)?
            }
        };
        let balancer = match (self.balancer, self.policy) {
            (Some(b), _) => b,
            (None, Some(p)) => meshless_balancer::policy(&p)?,
            (None, None) => meshless_balancer::policy("pick_first")?,
        };
        let shared = Arc::new(Shared::new(
            name.into(),
            balancer.name(),
            self.wait_for_ready,
        ));
        let (alive, closed) = oneshot::channel();
        let control = Control {
            shared: shared.clone(),
            balancer,
            discovery,
            config: Arc::new(self.connect),
            closed,
        };
        runtime.spawn(control.run());
        Ok(Channel {
            shared,
            _alive: Arc::new(alive),
        })
    }
}

// ===== impl Service =====

/// The future of one call through a [`Channel`].
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Status>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<tonic::body::Body>, Status>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Calls wait (boundedly) for an endpoint inside the future, so the channel is
        // always ready to take one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        ResponseFuture {
            inner: Box::pin(call(self.shared.clone(), req)),
        }
    }
}

enum Picked {
    Send(Arc<Subchannel>, http2::SendRequest<ReqBody>),
    Wait,
    Fail(Status),
}

fn pick(shared: &Shared, parts: &http::request::Parts) -> Picked {
    let snapshot = shared.snapshot.load();
    match &snapshot.picker {
        PickerState::Pick(picker) => {
            let req = PickRequest {
                uri: &parts.uri,
                headers: &parts.headers,
                extensions: &parts.extensions,
            };
            match picker.pick(&req) {
                Pick::Ready(i) => match snapshot.subchannels.get(i) {
                    Some(sub) => match sub.sender() {
                        Some(tx) => Picked::Send(sub.clone(), tx),
                        // Its connection just closed; the control task will publish a
                        // picker without it.
                        None => Picked::Wait,
                    },
                    None => Picked::Fail(Status::internal(format!(
                        "{}: policy `{}` picked index {i} of {} endpoints",
                        shared.target,
                        shared.policy,
                        snapshot.subchannels.len()
                    ))),
                },
                Pick::Queue => Picked::Wait,
                Pick::Fail(status) => Picked::Fail(status),
            }
        }
        PickerState::Queue => Picked::Wait,
        PickerState::Fail(status) => Picked::Fail(status.clone()),
    }
}

/// Waits for the picker to change, up to the call's bound.
struct Waiter {
    rx: Option<watch::Receiver<u64>>,
    deadline: Option<(Instant, bool)>,
    /// The call's own deadline, from its `grpc-timeout`.
    call_deadline: Option<Instant>,
}

impl Waiter {
    /// Returns `Ok` when it is worth picking again.
    async fn wait(&mut self, shared: &Shared, last: &Option<String>) -> Result<(), Status> {
        let Some(rx) = &mut self.rx else {
            // First time: subscribe, then pick again at once, so a snapshot published
            // between our pick and the subscription is not missed.
            self.rx = Some(shared.version.subscribe());
            let bound = later(Instant::now(), shared.wait_for_ready);
            self.deadline = Some(match self.call_deadline {
                Some(own) if own < bound => (own, true),
                _ => (bound, false),
            });
            return Ok(());
        };
        let (deadline, own) = self.deadline.unwrap_or((Instant::now(), false));
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "{}: channel was dropped",
                shared.target
            ))),
            Err(_) => {
                let last = last
                    .as_deref()
                    .map(|l| format!("; last error: {l}"))
                    .unwrap_or_default();
                let status = shared.status();
                let states = if status.endpoints.is_empty() {
                    "no endpoints known yet".to_owned()
                } else {
                    format!("{} endpoints, none ready", status.endpoints.len())
                };
                let msg = format!(
                    "{}: no endpoint became ready within {:?} ({states}){last}",
                    shared.target,
                    if own {
                        "the call's deadline".to_owned()
                    } else {
                        format!("{:?}", shared.wait_for_ready)
                    }
                );
                Err(if own {
                    Status::deadline_exceeded(msg)
                } else {
                    Status::unavailable(msg)
                })
            }
        }
    }
}

async fn call(
    shared: Arc<Shared>,
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    let (parts, body) = req.into_parts();
    // A body that failed to encode (a message over the size limit) fails the call here, as
    // tonic's own channel does, instead of reaching the server cut short.
    let replay = Replay::new(body)?;
    let Some(timeout) = grpc_timeout::parse(&parts.headers) else {
        return attempts(&shared, parts, replay, None).await;
    };
    // The call's deadline bounds everything up to the response headers, as tonic's own
    // channel does: the wait for an endpoint, connecting, and a server that never answers.
    let deadline = later(Instant::now(), timeout);
    match tokio::time::timeout_at(deadline, attempts(&shared, parts, replay, Some(deadline))).await
    {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{}: deadline of {timeout:?} exceeded",
            shared.target
        ))),
    }
}

/// `from + d`, or a time far enough away to mean "never" when that overflows.
fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(FAR_FUTURE_SECS))
}

/// About 30 years: what "no bound" means where an `Instant` is needed.
const FAR_FUTURE_SECS: u64 = 86_400 * 365 * 30;

async fn attempts(
    shared: &Shared,
    parts: http::request::Parts,
    replay: Replay,
    deadline: Option<Instant>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    let mut waiter = Waiter {
        rx: None,
        deadline: None,
        call_deadline: deadline,
    };
    let mut transparent_retries = 1usize;
    let mut unsent = 0usize;
    let mut last_error: Option<String> = None;
    loop {
        let (sub, mut sender) = match pick(shared, &parts) {
            Picked::Send(sub, tx) => (sub, tx),
            Picked::Wait => {
                waiter.wait(shared, &last_error).await?;
                continue;
            }
            Picked::Fail(status) => return Err(status),
        };
        let Some(body) = replay.attempt() else {
            return Err(Status::unavailable(format!(
                "{}: {}",
                shared.target,
                last_error.unwrap_or_else(|| "request body could not be sent again".into())
            )));
        };
        let mut req = http::Request::from_parts(parts.clone(), body);
        set_origin(req.uri_mut(), &sub.authority);
        if let Some(at) = deadline {
            // The server's deadline is what is left of the call's, not the whole of it.
            let left = at.saturating_duration_since(Instant::now());
            req.headers_mut()
                .insert(grpc_timeout::HEADER, grpc_timeout::encode(left));
        }
        let mut guard = CallGuard::start(sub.stats.clone());
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let (rparts, incoming) = resp.into_parts();
                if rparts.status != http::StatusCode::OK {
                    guard.set_outcome(false);
                } else if let Some(ok) = outcome_of(&rparts.headers) {
                    guard.set_outcome(ok); // trailers-only response
                }
                let body = tonic::body::Body::new(TrackedBody::new(incoming, guard));
                return Ok(http::Response::from_parts(rparts, body));
            }
            Err(mut err) => {
                let never_sent = err.take_message().is_some();
                let error = err.into_error();
                last_error = Some(format!("{}: {error}", sub.addr));
                if never_sent {
                    // The connection closed before the call reached it; nothing was sent.
                    guard.abandon();
                    unsent += 1;
                    if unsent < MAX_UNSENT_ATTEMPTS {
                        continue;
                    }
                } else if transparent_retries > 0 && never_processed(&error) {
                    if is_remote_go_away(&error) {
                        sub.drained();
                    }
                    guard.abandon();
                    transparent_retries -= 1;
                    tracing::debug!(addr = %sub.addr, "call refused before processing; retrying transparently: {error}");
                    continue;
                } else {
                    guard.set_outcome(false);
                }
                return Err(Status::new(
                    code_of(&error, never_sent),
                    format!("{}: {}", shared.target, last_error.unwrap_or_default()),
                ));
            }
        }
    }
}

/// The gRPC status code of a transport failure, per gRPC's HTTP/2 mapping
/// (PROTOCOL-HTTP2.md): a call that never left, a refused or drained stream, or a broken
/// connection is UNAVAILABLE; a stream the server cancelled is CANCELLED; ENHANCE_YOUR_CALM
/// is RESOURCE_EXHAUSTED; INADEQUATE_SECURITY is PERMISSION_DENIED; other resets are
/// INTERNAL. Spelled out here rather than taken from tonic, whose mapping depends on which
/// of its cargo features the application happens to enable.
fn code_of(err: &hyper::Error, never_sent: bool) -> tonic::Code {
    use tonic::Code;
    if never_sent || err.is_canceled() || err.is_closed() {
        return Code::Unavailable;
    }
    let Some(h2) = h2_error(err) else {
        return Code::Unavailable;
    };
    if h2.is_io() || h2.is_go_away() {
        return Code::Unavailable;
    }
    match h2.reason() {
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
    }
}

/// Points the request at `authority` over plain HTTP/2.
fn set_origin(uri: &mut Uri, authority: &http::uri::Authority) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts).unwrap_or_default();
}

/// True when the error is the server's GOAWAY.
fn is_remote_go_away(err: &hyper::Error) -> bool {
    h2_error(err).is_some_and(|h2| h2.is_remote() && h2.is_go_away())
}

/// The h2 error behind a hyper error, if there is one.
fn h2_error(err: &hyper::Error) -> Option<&h2::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = e.source();
    }
    None
}

/// True when the server provably did not process the stream: it refused it
/// (`REFUSED_STREAM`) or its GOAWAY's last stream id is below ours. gRPC retries these
/// transparently.
fn never_processed(err: &hyper::Error) -> bool {
    // h2 gives streams above a GOAWAY's last id the remote GOAWAY error itself; streams
    // below it that die later see a broken pipe instead.
    h2_error(err).is_some_and(|h2| {
        h2.is_remote() && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}
