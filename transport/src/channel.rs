//! `Channel`: the tower Service that sends each call to the endpoint its picker chooses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Scheme, Uri};
use meshless_balancer::{
    ConnectivityState, FailureCodes, Pick, PickRequest, Policy, PolicyRegistry,
};
use meshless_discovery::{Address, Discovery, Registry, Target, TargetError};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::control::{Control, Limits, PickerState, Shared};
use crate::errors::{chain, code_of, go_away_code, never_processed, sanitize_status_details};
use crate::grpc_timeout;
use crate::rejected::LocallyRejected;
use crate::replay::{Replay, ReqBody};
use crate::settings::Http2Settings;
use crate::status::ChannelStatus;
use crate::subchannel::{Conn, ConnectConfig, Subchannel};
use crate::tracked::{CallGuard, StreamSlot, TrackedBody};
use crate::tried::TriedEndpoints;
use meshless_discovery::backoff::BackoffConfig;

/// `grpc-previous-rpc-attempts` (gRFC A6), parsed once.
static PREVIOUS_RPC_ATTEMPTS: http::HeaderName =
    http::HeaderName::from_static("grpc-previous-rpc-attempts");

/// Default bound on how long a call waits in the channel's queue for a ready endpoint (see
/// [`ChannelBuilder::queue_timeout`]).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one connection attempt. Shorter than gRPC's 20 s minimum because a
/// channel has other endpoints to use meanwhile.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default HTTP/2 keepalive ping timeout, when keepalive is on.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default TCP keepalive idle time and probe interval: 15 s, what grpc-go's dialer (Go's
/// `net.Dialer`) uses, so a peer that vanished is found even with HTTP/2 keepalive off.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// The per-endpoint cap of calls in flight that Envoy's circuit breaker (and gRPC A32's
/// `max_requests`) defaults to, for [`ChannelBuilder::max_requests_per_endpoint`].
pub const DEFAULT_MAX_REQUESTS_PER_ENDPOINT: u32 = 1024;
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
    commands: tokio::sync::mpsc::UnboundedSender<crate::control::Command>,
    _alive: Arc<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("target", &self.shared.target)
            .field("policy", &self.shared.policy_name())
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
    /// The TLS settings do not load: no trust given, a PEM that does not parse, a key that
    /// does not match its certificate, or a unix socket target without a server name.
    #[cfg(feature = "tls")]
    #[error("{0}")]
    Tls(String),
    /// [`ChannelBuilder::registry`] was set on a builder from [`Channel::with_discovery`],
    /// whose discovery is given: the registry would never be asked.
    #[error(
        "{name}: `.registry(..)` has no effect on a channel built with `Channel::with_discovery` (the discovery is given, no target is parsed); drop it, or use `Channel::builder(target).registry(..)`"
    )]
    RegistryWithDiscovery {
        /// The channel's name, as given to `with_discovery`.
        name: String,
    },
}

/// Configures and builds a [`Channel`]. Start from [`Channel::builder`].
#[must_use]
pub struct ChannelBuilder {
    target: Result<String, TargetError>,
    /// `None`: the default registry.
    registry: Option<Registry>,
    policies: PolicyRegistry,
    discovery: Option<Arc<dyn Discovery>>,
    balancer: Option<Arc<dyn Policy>>,
    policy: Option<String>,
    connect: ConnectConfig,
    authority: Option<http::uri::Authority>,
    queue_timeout: Duration,
    failure_codes: FailureCodes,
    #[cfg(feature = "tls")]
    tls: Option<crate::TlsConfig>,
    idle_timeout: Option<Duration>,
    limits: Limits,
    outlier: Option<crate::outlier::OutlierDetection>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::MetricsConfig>,
}

impl Channel {
    /// A builder for a channel to `target`, such as `static:///10.0.0.1:50051,10.0.0.2:50051`.
    /// The target is parsed by [`build`](ChannelBuilder::build).
    pub fn builder(target: impl Into<String>) -> ChannelBuilder {
        ChannelBuilder::new(Ok(target.into()))
    }

    /// A builder for a channel fed by `discovery` (for example a
    /// [`ManualDiscovery`](meshless_discovery::ManualDiscovery)); `name` labels it in errors
    /// and status. Calls carry each endpoint's own address as `:authority` unless
    /// discovery or [`authority`](ChannelBuilder::authority) sets one.
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

    /// Switches the channel to `policy` while it runs: connections stay, and so do the
    /// endpoints' load statistics (calls in flight, outcomes, estimates), with the new
    /// policy's signals turned on from now. The next picker is the new policy's.
    pub fn set_policy(&self, policy: impl Into<Arc<dyn Policy>>) {
        let _ = self
            .commands
            .send(crate::control::Command::SetPolicy(policy.into()));
    }

    /// The channel's recorder, when it was built with
    /// [`metrics`](ChannelBuilder::metrics), for the resilience layers above it to record
    /// into (A96). Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(&self) -> Option<Arc<crate::metrics::Metrics>> {
        self.shared.metrics.clone()
    }

    /// A snapshot of the endpoints, their states and their load.
    pub fn status(&self) -> ChannelStatus {
        self.shared.status()
    }

    /// The channel's aggregate connectivity state, as gRPC defines it: `Ready` while any
    /// endpoint is, `Connecting` while calls would wait for one, `TransientFailure` while
    /// they would fail at once, `Idle` before the first resolution or after the idle
    /// timeout. The receiver sees every change; `changed().await` waits for the next.
    pub fn state_watch(&self) -> watch::Receiver<ConnectivityState> {
        self.shared.state.subscribe()
    }

    /// Changes whenever [`status()`](Self::status) would show something new: the endpoint
    /// set, an endpoint's state or last error, discovery's answer or error. (Call counters
    /// change with every call and do not count.) `changed().await` waits for the next, so a
    /// tool can follow the channel without polling.
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.shared.status_version.subscribe()
    }

    /// The channel's changes as they happen, pushed rather than polled: endpoints added and
    /// removed, connection states with their errors, ejections and returns, discovery
    /// failing and recovering. The first items describe the channel as it is now (from an
    /// empty one). The stream ends when the channel is dropped; it does not keep the
    /// channel alive.
    pub fn watch_status(
        &self,
    ) -> impl futures_util::Stream<Item = crate::status::StatusEvent> + Send + 'static {
        let shared = self.shared.clone();
        let rx = shared.status_version.subscribe();
        let empty = ChannelStatus {
            target: String::new(),
            policy: "",
            resolved: false,
            discovery_error: None,
            panicked: None,
            endpoints: Vec::new(),
            tls_error: None,
        };
        let state = (shared, rx, empty, std::collections::VecDeque::new(), true);
        futures_util::stream::unfold(
            state,
            |(shared, mut rx, mut last, mut queue, mut first)| async move {
                loop {
                    if let Some(ev) = queue.pop_front() {
                        return Some((ev, (shared, rx, last, queue, first)));
                    }
                    if !first {
                        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
                            return None;
                        }
                        rx.changed().await.ok()?;
                    }
                    first = false;
                    rx.borrow_and_update();
                    let now = shared.status();
                    queue.extend(crate::status::diff(&last, &now));
                    last = now;
                    if shared.closed.load(std::sync::atomic::Ordering::Acquire) && queue.is_empty()
                    {
                        return None;
                    }
                }
            },
        )
    }

    /// Changes each time the channel publishes a new picker: after an endpoint set change
    /// or a readiness change has taken effect for new calls. `changed().await` waits for
    /// the next one.
    pub fn picker_watch(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Waits until an endpoint is ready, as a call would: bounded by the builder's
    /// [`queue_timeout`](ChannelBuilder::queue_timeout). Fails with the
    /// error a call would get (discovery's error, every endpoint unreachable, or no endpoint
    /// ready within the bound), without sending anything.
    pub async fn connect(&self) -> Result<(), Status> {
        let mut waiter = Waiter {
            rx: None,
            deadline: None,
            call_deadline: None,
            wait_for_ready: false,
        };
        loop {
            let snapshot = self.shared.snapshot.load();
            match &snapshot.picker {
                PickerState::Pick(_) => return Ok(()),
                PickerState::Fail(status) => return Err(status.clone()),
                PickerState::Idle => self.shared.wake.notify_one(),
                PickerState::Queue => {}
            }
            drop(snapshot);
            waiter.wait(&self.shared, &None).await?;
        }
    }
}

impl ChannelBuilder {
    fn new(target: Result<String, TargetError>) -> Self {
        ChannelBuilder {
            target,
            registry: None,
            policies: PolicyRegistry::default(),
            discovery: None,
            balancer: None,
            policy: None,
            connect: ConnectConfig {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                backoff: BackoffConfig::default(),
                keepalive_interval: None,
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                keepalive_while_idle: false,
                tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
                health_service: None,
                metrics: None,
                http2: Http2Settings::default(),
                #[cfg(feature = "tls")]
                tls: None,
            },
            authority: None,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            failure_codes: FailureCodes::DEFAULT,
            #[cfg(feature = "tls")]
            tls: None,
            idle_timeout: None,
            limits: Limits::default(),
            outlier: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// Uses this policy, for example a configured `P2cEwmaConfig` or `RingHashConfig`. Each
    /// channel built gets a balancer of its own from it. Default: `pick_first`, as in gRPC.
    pub fn balancer(mut self, policy: impl Into<Arc<dyn Policy>>) -> Self {
        self.balancer = Some(policy.into());
        self.policy = None;
        self
    }

    /// Uses the policy registered under this name (`round_robin`, `pick_first`, ..., or one
    /// added with [`policies`](Self::policies)), as configured there. An unknown name fails
    /// [`build`](Self::build).
    pub fn policy(mut self, name: impl Into<String>) -> Self {
        self.policy = Some(name.into());
        self.balancer = None;
        self
    }

    /// Looks policy names up in this registry instead of the built-in one, so that
    /// [`policy`](Self::policy) can select policies of your own.
    pub fn policies(mut self, policies: PolicyRegistry) -> Self {
        self.policies = policies;
        self
    }

    /// Resolves target schemes with this registry instead of the default one, so that the
    /// target may use schemes registered there (or backends configured there). A builder
    /// from [`Channel::with_discovery`] parses no target: [`build`](Self::build) fails with
    /// [`BuildError::RegistryWithDiscovery`] rather than ignore the registry.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
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

    /// Bounds how long a call waits in the channel's queue for a ready endpoint: while
    /// discovery has not answered yet, while the endpoints are still connecting, or while
    /// every ready one is at its server's limit of concurrent streams. Past it the call fails
    /// with `UNAVAILABLE`, naming the endpoints' states and the last connection error. A
    /// call's own `grpc-timeout` shortens it (the call then fails with `DEADLINE_EXCEEDED`).
    /// Default: [`DEFAULT_QUEUE_TIMEOUT`] (10 s).
    ///
    /// This is not gRPC's per-call *waitForReady* (`wait-for-ready.md`), which makes a call
    /// wait through `TRANSIENT_FAILURE` until its deadline. Calls here behave as gRPC calls
    /// without waitForReady: they fail at once when the channel is in `TRANSIENT_FAILURE`
    /// (every endpoint failed, or discovery failed before its first answer), and wait only
    /// while the channel is connecting. This option is the channel's bound on that wait, so
    /// a call without a deadline does not hang on a channel that never gets an endpoint.
    pub fn queue_timeout(mut self, d: Duration) -> Self {
        self.queue_timeout = d;
        self
    }

    /// Which gRPC status codes count against the endpoint that returned them, for the
    /// policies' failure signals (and, as they arrive, outlier detection and retry budgets).
    /// Default [`FailureCodes::DEFAULT`]: `UNKNOWN`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`,
    /// `RESOURCE_EXHAUSTED`. Transport failures, non-200 HTTP answers and deadlines this
    /// channel enforces always count; a call its caller drops never does.
    pub fn failure_codes(mut self, codes: FailureCodes) -> Self {
        self.failure_codes = codes;
        self
    }

    /// Records gRPC's standard client instruments (A66 per attempt, A94 subchannels, A91
    /// outlier detection) through the `metrics` facade, into whatever recorder the
    /// application installed (feature `metrics`; see [`metrics`](crate::metrics) for the
    /// names and the recommended buckets). Off by default: a channel without it records
    /// nothing.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, config: crate::metrics::MetricsConfig) -> Self {
        self.metrics = Some(config);
        self
    }

    /// Turns on client health checking (gRPC A17) for `service` (`""` asks about the whole
    /// server): each connection runs a `grpc.health.v1.Health/Watch` call, and its endpoint
    /// takes calls only while the answer is SERVING. Until the first answer it is
    /// connecting; NOT_SERVING or SERVICE_UNKNOWN takes it out of the picker with the next
    /// message (the connection stays); a server without the health service (UNIMPLEMENTED)
    /// counts as healthy, is logged once, and is not asked again on that connection; other
    /// failures retry the Watch with the channel's [`backoff`](Self::backoff), which starts
    /// over whenever a message arrives. The Watch call is no load for any policy. This one
    /// switch is all it takes (grpc-go needs a service config entry, an import and a
    /// policy that supports it). Off by default.
    pub fn health_check(mut self, service: impl Into<String>) -> Self {
        self.connect.health_service = Some(service.into());
        self
    }

    /// Turns on outlier detection (gRPC A50 success-rate and failure-percentage ejection,
    /// and consecutive failures): endpoints that fail more than their peers leave the picker
    /// for a while, keeping their connections. Failures are what
    /// [`failure_codes`](Self::failure_codes) says count against an endpoint. Its state is
    /// kept per endpoint address, so it survives endpoint set changes. Off by default;
    /// [`OutlierDetection::default()`](crate::OutlierDetection) has A50's, Envoy's and
    /// Linkerd's defaults. Ejections show in [`EndpointStatus::ejected`](crate::EndpointStatus).
    pub fn outlier_detection(mut self, config: crate::outlier::OutlierDetection) -> Self {
        self.outlier = Some(config);
        self
    }

    /// Caps the calls in flight on each endpoint at `n` (Envoy's and gRPC A32's
    /// `max_requests`; [`DEFAULT_MAX_REQUESTS_PER_ENDPOINT`] is the usual value). A pick that
    /// lands on an endpoint at its cap asks the policy again; a call for which every pick was
    /// at its cap fails `UNAVAILABLE` at once, with [`LocallyRejected::AtCapacity`] as the
    /// status's source, and a retry layer does not retry it. Off by default.
    pub fn max_requests_per_endpoint(mut self, n: u32) -> Self {
        self.limits.per_endpoint = Some(u64::from(n));
        self
    }

    /// Caps the calls in flight on the whole channel at `n`; a call over it fails
    /// `UNAVAILABLE` at once, as with [`max_requests_per_endpoint`](Self::max_requests_per_endpoint).
    /// Off by default (a channel with it counts its calls on one shared atomic).
    pub fn max_requests(mut self, n: u32) -> Self {
        self.limits.per_channel = Some(u64::from(n));
        self
    }

    /// Sends HTTP/2 pings at this interval while calls are open, failing a connection that
    /// does not answer within `timeout` (off by default). When a server answers with
    /// GOAWAY ENHANCE_YOUR_CALM (`too_many_pings`), the interval doubles for that endpoint,
    /// as in grpc-go.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.connect.keepalive_interval = Some(interval);
        self.connect.keepalive_timeout = timeout;
        self
    }

    /// Pings also while no call is open (gRPC's `permitWithoutStream`). Default `false`:
    /// gRPC servers allow that only when configured to, and answer it with GOAWAY
    /// `too_many_pings` otherwise.
    pub fn keepalive_while_idle(mut self, on: bool) -> Self {
        self.connect.keepalive_while_idle = on;
        self
    }

    /// Sets the TCP keepalive idle time and probe interval, `None` to turn it off.
    /// Default: [`DEFAULT_TCP_KEEPALIVE`].
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.connect.tcp_keepalive = idle;
        self
    }

    /// Sets the HTTP/2 settings of every connection. Default: [`Http2Settings::default`].
    pub fn http2(mut self, settings: Http2Settings) -> Self {
        self.connect.http2 = settings;
        self
    }

    /// Speaks TLS (mTLS with an identity) on every connection; see [`TlsConfig`] for trust,
    /// identity, the server name verified and certificate rotation. Default: plaintext h2c.
    ///
    /// [`TlsConfig`]: crate::TlsConfig
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Closes every connection after this long without calls; the next call reopens them
    /// (and waits for the connection, bounded as always). Default: off.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }

    /// Sets the `:authority` of every call, whatever the target or discovery says.
    /// Default: the target's host and port as written (`greeter.prod:50051` for
    /// `dns:///greeter.prod:50051`), as gRPC does; `localhost` for `unix:` targets; each
    /// endpoint's own address for address lists and [`Channel::with_discovery`]. A
    /// discovery backend may give an endpoint its own.
    pub fn authority(mut self, authority: http::uri::Authority) -> Self {
        self.authority = Some(authority);
        self
    }

    /// Builds the channel and starts its control task. Must run inside a Tokio runtime.
    pub fn build(self) -> Result<Channel, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let name = self.target?;
        let mut unix_target = false;
        let (discovery, default_authority) = match self.discovery {
            Some(_) if self.registry.is_some() => {
                return Err(BuildError::RegistryWithDiscovery { name });
            }
            Some(d) => (d, None),
            None => {
                let registry = self.registry.unwrap_or_default();
                let target: Target = registry.parse(&name)?;
                unix_target = target.scheme().starts_with("unix");
                let authority = default_authority(&target);
                (registry.build(&target)?, authority)
            }
        };
        let _ = unix_target;
        #[cfg_attr(not(any(feature = "tls", feature = "metrics")), allow(unused_mut))]
        let mut connect = self.connect;
        #[cfg(feature = "tls")]
        let tls_reload = match self.tls {
            None => None,
            Some(tls) => {
                let state = crate::tls::TlsState::new(tls).map_err(BuildError::Tls)?;
                if unix_target && state.forced_name().is_none() {
                    return Err(BuildError::Tls(format!(
                        "{name}: TLS to a unix socket needs the name to verify: set TlsConfig::server_name"
                    )));
                }
                let reload = state.reload_every().map(|every| {
                    AbortOnDrop(
                        runtime.spawn(crate::tls::reload_loop(Arc::downgrade(&state), every)),
                    )
                });
                connect.tls = Some(state);
                reload
            }
        };
        let policy = match (self.balancer, self.policy) {
            (Some(b), _) => b,
            (None, Some(p)) => self.policies.get(&p)?,
            (None, None) => self.policies.get("pick_first")?,
        };
        let balancer = policy.new_balancer();
        let mut shared = Shared::new(
            // Status and logs show the target without its secrets (a Consul token, a
            // password in the authority).
            meshless_discovery::redact_target(&name).into(),
            balancer.name(),
            self.queue_timeout,
            self.failure_codes,
        );
        #[cfg(feature = "tls")]
        {
            shared.tls = connect.tls.clone();
        }
        shared.limits = self.limits;
        #[cfg(feature = "metrics")]
        if let Some(config) = self.metrics {
            let m = crate::metrics::Metrics::new(config, &shared.target);
            connect.metrics = Some(m.clone());
            shared.metrics = Some(m);
        }
        let shared = Arc::new(shared);
        let (alive, closed) = oneshot::channel();
        let discovery_trusted = discovery.trusted_names();
        let (commands, commands_rx) = tokio::sync::mpsc::unbounded_channel();
        let control = Control {
            shared: shared.clone(),
            balancer,
            commands: commands_rx,
            discovery,
            config: Arc::new(connect),
            trusted_names: discovery_trusted,
            #[cfg(feature = "tls")]
            _tls_reload: tls_reload,
            forced_authority: self.authority,
            default_authority,
            idle_timeout: self.idle_timeout,
            outlier: self.outlier,
            closed,
        };
        runtime.spawn(control.supervise());
        Ok(Channel {
            shared,
            commands,
            _alive: Arc::new(alive),
        })
    }
}

/// Aborts a background task when dropped: the channel's TLS reload task, with the control
/// task that owns it.
#[cfg(feature = "tls")]
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) tokio::task::JoinHandle<T>);

#[cfg(feature = "tls")]
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `:authority` a target gives its calls by default, as gRPC does: the target's
/// endpoint as written when it is one `host[:port]` (`greeter.prod:50051`), or its host
/// when the port is a name (`kubernetes:///greeter.prod:grpc` gives `greeter.prod`);
/// `localhost` for unix sockets; none for a list of addresses, whose endpoints then carry
/// their own address.
fn default_authority(target: &Target) -> Option<http::uri::Authority> {
    if target.scheme().starts_with("unix") {
        return Some(http::uri::Authority::from_static("localhost"));
    }
    let endpoint = target.endpoint().trim_start_matches('/');
    if endpoint.is_empty() || endpoint.contains(',') || endpoint.contains('/') {
        return None;
    }
    // Only one address in an address list names a host worth sending.
    if matches!(target.scheme(), "ipv4" | "ipv6" | "static")
        && endpoint.parse::<std::net::SocketAddr>().is_err()
        && !endpoint.contains(':')
    {
        return None;
    }
    endpoint.parse().ok().or_else(|| {
        let (host, _port) = endpoint.rsplit_once(':')?;
        host.parse().ok()
    })
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
        let span = attempt_span(None, req.uri().path(), req.headers());
        #[cfg(feature = "otel")]
        let req = {
            let mut req = req;
            crate::otel::inject(&span, req.headers_mut());
            req
        };
        // A span no subscriber wants is not entered on every poll, nor kept.
        if span.is_disabled() {
            let call = call(self.shared.clone(), self._alive.clone(), req, None);
            return ResponseFuture {
                inner: Box::pin(call),
            };
        }
        let trace = Trace {
            parent: tracing::Span::current(),
            attempt: span.clone(),
        };
        let call = call(self.shared.clone(), self._alive.clone(), req, Some(trace));
        ResponseFuture {
            inner: Box::pin(tracing::Instrument::instrument(call, span)),
        }
    }
}

/// gRPC A72's attempt span, `Attempt.<service>.<method>` (as `otel.name`, the field
/// tracing-opentelemetry names spans by), a child of the call's span, with
/// `previous-rpc-attempts` from the request and `transparent-retry`: a transparent retry is
/// an attempt of its own, with the same `previous-rpc-attempts` (A72 leaves transparent
/// retries out of that count). Nothing is formatted unless a subscriber wants the span.
fn attempt_span(
    transparent_under: Option<&tracing::Span>,
    path: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    let span = match transparent_under {
        // The first attempt, in the span the call was made in.
        None => tracing::debug_span!(
            "Attempt",
            otel.name = tracing::field::Empty,
            "previous-rpc-attempts" = tracing::field::Empty,
            "transparent-retry" = false,
        ),
        Some(parent) => tracing::debug_span!(
            parent: parent,
            "Attempt",
            otel.name = tracing::field::Empty,
            "previous-rpc-attempts" = tracing::field::Empty,
            "transparent-retry" = true,
        ),
    };
    if !span.is_disabled() {
        span.record("otel.name", format!("Attempt.{}", a72_name(path)));
        let previous = headers
            .get(&PREVIOUS_RPC_ATTEMPTS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        span.record("previous-rpc-attempts", previous);
    }
    span
}

/// The spans of a call that a subscriber wants (A72): the call's span, and the span of its
/// current attempt, which the channel's events name as their parent.
struct Trace {
    parent: tracing::Span,
    attempt: tracing::Span,
}

/// What a call waited for before its pick (A72's events).
#[derive(Clone, Copy)]
enum Delay {
    /// Discovery's first answer.
    Resolution,
    /// A ready endpoint.
    Pick,
}

impl Delay {
    /// A72's event name.
    fn name(self) -> &'static str {
        match self {
            Delay::Resolution => "Delayed name resolution complete",
            Delay::Pick => "Delayed LB pick complete",
        }
    }
}

/// Records a call's transparent retries (A96) when the call ends, however it ends.
struct TransparentRetries<'a> {
    metrics: Option<&'a Arc<crate::Recorder>>,
    path: &'a Uri,
    count: u32,
}

impl Drop for TransparentRetries<'_> {
    fn drop(&mut self) {
        if self.count > 0
            && let Some(m) = self.metrics
        {
            m.call_ended(self.path.path(), 0, self.count, 0, Duration::ZERO);
        }
    }
}

/// `/package.Service/Method` as A72 writes it in span names: `package.Service.Method`.
pub fn a72_name(path: &str) -> String {
    path.trim_start_matches('/').replacen('/', ".", 1)
}

enum Picked {
    Send(Arc<Subchannel>, Arc<Conn>),
    Wait,
    /// Every endpoint the picker tried is at its server's stream limit.
    Busy,
    Fail(Status),
    /// The channel is in TRANSIENT_FAILURE: fail, unless the call waits for ready.
    Failing(Status),
}

/// How many times a call asks the picker again when the endpoint it picked is at its
/// stream limit, before it waits for a stream to free up.
const BUSY_REPICKS: usize = 4;

/// How many times a call that carries [`TriedEndpoints`] asks the picker again when it
/// picked an endpoint that an earlier attempt of the call went to, before the channel looks
/// for an untried ready endpoint itself.
const AVOID_REPICKS: usize = 4;

/// What a request's extensions ask of the channel, read once per call.
struct CallOptions {
    tried: Option<TriedEndpoints>,
    wait_for_ready: bool,
    limits: crate::MaxMessageBytes,
    report_endpoint: bool,
}

impl CallOptions {
    fn of(extensions: &http::Extensions) -> Self {
        CallOptions {
            tried: extensions.get::<TriedEndpoints>().cloned(),
            wait_for_ready: extensions.get::<WaitForReady>().is_some(),
            limits: extensions
                .get::<crate::MaxMessageBytes>()
                .copied()
                .unwrap_or_default(),
            report_endpoint: extensions.get::<ReportEndpoint>().is_some(),
        }
    }
}

fn pick(shared: &Shared, parts: &http::request::Parts, tried: Option<&TriedEndpoints>) -> Picked {
    let snapshot = shared.snapshot.load();
    match &snapshot.picker {
        PickerState::Pick(picker) => {
            let req = PickRequest {
                uri: &parts.uri,
                headers: &parts.headers,
                extensions: &parts.extensions,
            };
            // Asking again for an endpoint this call has not tried is worth it only while
            // one is left.
            let mut avoid = tried
                .filter(|t| !t.is_empty() && t.distinct() < snapshot.subchannels.len())
                .map_or(0, |_| AVOID_REPICKS);
            let cap = shared.limits.per_endpoint;
            let mut busy = false;
            let mut capped = false;
            let mut repicks = 0;
            while repicks < BUSY_REPICKS {
                match picker.pick(&req) {
                    Pick::Ready(i) => match snapshot.subchannels.get(i) {
                        Some(sub) => match sub.connection() {
                            Some(_)
                                if avoid > 0 && tried.is_some_and(|t| t.contains(&sub.addr)) =>
                            {
                                avoid -= 1;
                                if avoid == 0
                                    && let Some(t) = tried
                                    && let Some(found) = untried(shared, &snapshot.subchannels, t)
                                {
                                    return found;
                                }
                                continue;
                            }
                            Some(_) if cap.is_some_and(|c| sub.stats.in_flight() >= c) => {
                                capped = true;
                            }
                            Some(conn) if sub.at_stream_limit(&conn) => busy = true,
                            Some(conn) => return Picked::Send(sub.clone(), conn),
                            // Its connection just closed; the control task will publish a
                            // picker without it.
                            None => return Picked::Wait,
                        },
                        None => {
                            return Picked::Fail(Status::internal(format!(
                                "{}: policy `{}` picked index {i} of {} endpoints",
                                shared.target,
                                shared.policy_name(),
                                snapshot.subchannels.len()
                            )));
                        }
                    },
                    Pick::Queue => return Picked::Wait,
                    Pick::Fail(status) => return Picked::Fail(status),
                }
                repicks += 1;
            }
            if busy {
                Picked::Busy
            } else if capped {
                Picked::Fail(at_endpoint_cap(shared))
            } else {
                Picked::Wait
            }
        }
        PickerState::Queue => Picked::Wait,
        PickerState::Idle => {
            shared.wake.notify_one();
            Picked::Wait
        }
        PickerState::Fail(status) => Picked::Failing(status.clone()),
    }
}

/// A ready endpoint that `tried` does not hold, looked for from a random place in the list:
/// where the policy keeps choosing endpoints this call already tried (one that chooses by
/// the request, or a p2c whose remembered choice looks best), a retry or hedge still goes
/// somewhere else.
fn untried(shared: &Shared, subs: &[Arc<Subchannel>], tried: &TriedEndpoints) -> Option<Picked> {
    let n = subs.len();
    if n == 0 {
        return None;
    }
    let start = rand::random_range(0..n);
    let cap = shared.limits.per_endpoint;
    (0..n).map(|k| &subs[(start + k) % n]).find_map(|sub| {
        if !sub.pickable.load(std::sync::atomic::Ordering::Relaxed)
            || tried.contains(&sub.addr)
            || cap.is_some_and(|c| sub.stats.in_flight() >= c)
        {
            return None;
        }
        let conn = sub.connection()?;
        (!sub.at_stream_limit(&conn)).then(|| Picked::Send(sub.clone(), conn))
    })
}

fn at_endpoint_cap(shared: &Shared) -> Status {
    LocallyRejected::AtCapacity.status(format!(
        "{}: every endpoint picked is at its limit of {} calls in flight \
         (max_requests_per_endpoint); the call was not sent",
        shared.target,
        shared.limits.per_endpoint.unwrap_or_default()
    ))
}

/// gRPC's per-call *waitForReady*, as a request extension: a call that carries it waits for
/// a ready endpoint while the channel is in TRANSIENT_FAILURE (every endpoint failing, or
/// discovery failing before its first answer) instead of failing at once, until its deadline
/// (`grpc-timeout`, even past the queue timeout) or, without one, the channel's
/// [`queue_timeout`](ChannelBuilder::queue_timeout).
/// Config files set it per method (`methodConfig.waitForReady`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitForReady;

/// A request extension that asks the channel to say which endpoint served the call: its
/// response then carries [`ServedBy`]. Off by default, so that calls that do not ask pay
/// nothing (`meshless top` asks, for its per-endpoint latency percentiles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportEndpoint;

/// A response extension: the endpoint that served a call made with [`ReportEndpoint`]
/// (tonic keeps it in `tonic::Response::extensions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy(pub Address);

/// A request extension that says a layer above the channel records the call's
/// `grpc.client.call.duration` (A66) itself, over all its attempts: the channel then records
/// only the attempt instruments. The resilience stack sets it on its calls when its metrics
/// are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallMeasured;

/// A call's start, for A66's call duration.
pub(crate) struct CallClock {
    method: crate::Label,
    start: Instant,
}

impl CallClock {
    /// The call's method instruments.
    fn method(&self) -> crate::Label {
        self.method.clone()
    }

    /// The call ended with `code`.
    pub(crate) fn end(self, code: tonic::Code) {
        crate::Recorder::call_duration_of(&self.method, code, self.start.elapsed());
    }
}

/// A call's place under the channel's cap of calls in flight; given back on drop.
pub(crate) struct ChannelPermit(Arc<Shared>);

impl ChannelPermit {
    /// `Ok(None)` when the channel has no cap.
    fn acquire(shared: &Arc<Shared>) -> Result<Option<ChannelPermit>, Status> {
        let Some(cap) = shared.limits.per_channel else {
            return Ok(None);
        };
        let before = shared
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let permit = ChannelPermit(shared.clone());
        if before >= cap {
            drop(permit);
            return Err(LocallyRejected::AtCapacity.status(format!(
                "{}: the channel is at its limit of {cap} calls in flight (max_requests); the \
                 call was not sent",
                shared.target
            )));
        }
        Ok(Some(permit))
    }
}

impl Drop for ChannelPermit {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Waits for the picker to change, up to the call's bound.
struct Waiter {
    rx: Option<watch::Receiver<u64>>,
    deadline: Option<(Instant, bool)>,
    /// The call's own deadline, from its `grpc-timeout`.
    call_deadline: Option<Instant>,
    /// The call waits for ready ([`WaitForReady`]): its own deadline is its bound, even past
    /// the queue timeout.
    wait_for_ready: bool,
}

impl Waiter {
    /// Sets the bound on the first wait: the channel's, or the call's deadline if sooner (or
    /// the call's deadline whatever it is, for a call that waits for ready).
    fn arm(&mut self, shared: &Shared) -> (Instant, bool) {
        *self.deadline.get_or_insert_with(|| {
            let bound = later(Instant::now(), shared.queue_timeout);
            match self.call_deadline {
                Some(own) if own < bound || self.wait_for_ready => (own, true),
                _ => (bound, false),
            }
        })
    }

    /// Returns `Ok` when it is worth picking again.
    async fn wait(&mut self, shared: &Shared, last: &Option<String>) -> Result<(), Status> {
        let Some(rx) = &mut self.rx else {
            // First time: subscribe, then pick again at once, so a snapshot published
            // between our pick and the subscription is not missed.
            self.rx = Some(shared.version.subscribe());
            self.arm(shared);
            return Ok(());
        };
        let (deadline, _) = self.deadline.unwrap_or((Instant::now(), false));
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "{}: channel was dropped",
                shared.target
            ))),
            Err(_) => Err(self.timed_out(shared, last, "none ready")),
        }
    }

    /// Waits for a stream to free up on a subchannel at its limit, or for a new picker.
    /// `still_busy` is asked once the wait is armed, so a stream freed between the caller's
    /// check and the wait is not missed.
    async fn wait_busy(
        &mut self,
        shared: &Shared,
        last: &Option<String>,
        still_busy: impl Fn() -> bool,
    ) -> Result<(), Status> {
        let (deadline, _) = self.arm(shared);
        let freed = shared.capacity.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !still_busy() {
            return Ok(());
        }
        let rx = self.rx.get_or_insert_with(|| shared.version.subscribe());
        tokio::select! {
            _ = freed => Ok(()),
            _ = rx.changed() => Ok(()),
            _ = tokio::time::sleep_until(deadline) => Err(self.timed_out(
                shared,
                last,
                "every one at its server's limit of concurrent streams",
            )),
        }
    }

    fn timed_out(&self, shared: &Shared, last: &Option<String>, why: &str) -> Status {
        let (_, own) = self.deadline.unwrap_or((Instant::now(), false));
        let last = last
            .as_deref()
            .map(|l| format!("; last error: {l}"))
            .unwrap_or_default();
        let count = shared
            .endpoint_count
            .load(std::sync::atomic::Ordering::Relaxed);
        let states = if count == 0 {
            "no endpoints known yet".to_owned()
        } else {
            format!("{count} endpoints, {why}")
        };
        let msg = format!(
            "{}: no endpoint became ready within {} ({states}){last}",
            shared.target,
            if own {
                "the call's deadline".to_owned()
            } else {
                format!("{:?}", shared.queue_timeout)
            }
        );
        if own {
            Status::deadline_exceeded(msg)
        } else {
            Status::unavailable(msg)
        }
    }
}

async fn call(
    shared: Arc<Shared>,
    // A call holds the channel's life: its control task runs (and its pickers stay) until
    // the call has its response, even if every `Channel` handle is dropped meanwhile.
    _alive: Arc<oneshot::Sender<()>>,
    req: http::Request<tonic::body::Body>,
    trace: Option<Trace>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    // A66's call duration, unless a layer above records it (its calls carry
    // `CallMeasured`): a call that fails here ends now; one that gets a response ends
    // with it (the guard of its last attempt takes the clock).
    let mut clock = match &shared.metrics {
        Some(m) if req.extensions().get::<CallMeasured>().is_none() => Some(CallClock {
            method: m.method(req.uri().path()),
            start: Instant::now(),
        }),
        _ => None,
    };
    let result = call_inner(&shared, req, &mut clock, trace).await;
    if let (Err(status), Some(clock)) = (&result, clock) {
        clock.end(status.code());
    }
    result
}

async fn call_inner(
    shared: &Arc<Shared>,
    req: http::Request<tonic::body::Body>,
    clock: &mut Option<CallClock>,
    trace: Option<Trace>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    if !shared.active.load(std::sync::atomic::Ordering::Relaxed) {
        shared
            .active
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let permit = ChannelPermit::acquire(shared)?;
    let (parts, body) = req.into_parts();
    let opts = CallOptions::of(&parts.extensions);
    let body = match opts.limits.request {
        Some(limit) => tonic::body::Body::new(crate::frame_limit::CheckedRequest::new(body, limit)),
        None => body,
    };
    // A body that failed to encode (a message over the size limit) fails the call here, as
    // tonic's own channel does, instead of reaching the server cut short.
    let replay = Replay::new(body)?;
    let Some(timeout) = grpc_timeout::parse(&parts.headers) else {
        return attempts(shared, parts, opts, replay, None, permit, clock, trace).await;
    };
    // The call's deadline bounds everything up to the response headers, as tonic's own
    // channel does: the wait for an endpoint, connecting, and a server that never answers.
    let deadline = later(Instant::now(), timeout);
    let attempt = attempts(
        shared,
        parts,
        opts,
        replay,
        Some(deadline),
        permit,
        clock,
        trace,
    );
    match tokio::time::timeout_at(deadline, attempt).await {
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

#[allow(clippy::too_many_arguments)]
async fn attempts(
    shared: &Arc<Shared>,
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))] mut parts: http::request::Parts,
    opts: CallOptions,
    replay: Replay,
    deadline: Option<Instant>,
    mut permit: Option<ChannelPermit>,
    clock: &mut Option<CallClock>,
    mut trace: Option<Trace>,
) -> Result<http::Response<tonic::body::Body>, Status> {
    let mut waiter = Waiter {
        rx: None,
        deadline: None,
        call_deadline: deadline,
        wait_for_ready: opts.wait_for_ready,
    };
    let mut transparent_retries = 1usize;
    // A96's transparent retries of the call, recorded however the call ends (even when it
    // is dropped at its deadline).
    let mut transparent = TransparentRetries {
        metrics: shared.metrics.as_ref(),
        path: &parts.uri,
        count: 0,
    };
    let mut unsent = 0usize;
    let mut last_error: Option<String> = None;
    // A72's events: the call waited for discovery's first answer, or for a pick.
    let mut delayed: Option<Delay> = None;
    // A66: an attempt's clock starts before its pick (its duration includes the time to
    // pick an endpoint), once discovery has answered.
    let mut attempt_start: Option<Instant> = None;
    loop {
        if shared.metrics.is_some() && attempt_start.is_none() {
            attempt_start = Some(Instant::now());
        }
        let tried = opts.tried.as_ref();
        let (sub, conn) = match pick(shared, &parts, tried) {
            Picked::Send(sub, conn) => {
                match (delayed.take(), &trace) {
                    (Some(Delay::Resolution), Some(t)) => {
                        tracing::debug!(parent: &t.parent, endpoint = %sub.addr, "Delayed name resolution complete");
                    }
                    (Some(Delay::Pick), Some(t)) => {
                        tracing::debug!(parent: &t.attempt, endpoint = %sub.addr, "Delayed LB pick complete");
                    }
                    // The endpoint of every attempt, only for a subscriber that wants the
                    // attempt's span: an event per call is no cost to pay otherwise.
                    (None, Some(t)) => {
                        tracing::debug!(parent: &t.attempt, endpoint = %sub.addr, "Picked endpoint");
                    }
                    (Some(d), None) => tracing::debug!(endpoint = %sub.addr, "{}", d.name()),
                    (None, None) => {}
                }
                (sub, conn)
            }
            Picked::Wait => {
                let unresolved = shared
                    .endpoint_count
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 0;
                if unresolved {
                    // Waiting for discovery is no part of an attempt.
                    attempt_start = None;
                }
                if delayed.is_none() {
                    delayed = Some(if unresolved {
                        Delay::Resolution
                    } else {
                        Delay::Pick
                    });
                }
                waiter.wait(shared, &last_error).await?;
                continue;
            }
            Picked::Busy => {
                let busy = || matches!(pick(shared, &parts, tried), Picked::Busy);
                waiter.wait_busy(shared, &last_error, busy).await?;
                continue;
            }
            Picked::Fail(status) => return Err(status),
            Picked::Failing(status) => {
                if !waiter.wait_for_ready {
                    return Err(status);
                }
                // gRPC's waitForReady: wait through TRANSIENT_FAILURE for a ready
                // endpoint, bounded by the call's deadline (or the queue timeout).
                last_error.get_or_insert_with(|| status.message().to_owned());
                let unresolved = shared
                    .endpoint_count
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 0;
                delayed.get_or_insert(if unresolved {
                    Delay::Resolution
                } else {
                    Delay::Pick
                });
                waiter.wait(shared, &last_error).await?;
                continue;
            }
        };
        if let Some(tried) = tried {
            tried.record(&sub.addr);
        }
        let attempt = if shared.metrics.is_some() {
            replay.attempt_counted().map(|(b, n)| (b, Some(n)))
        } else {
            replay.attempt().map(|b| (b, None))
        };
        let Some((body, sent)) = attempt else {
            return Err(Status::unavailable(format!(
                "{}: {}",
                shared.target,
                last_error.unwrap_or_else(|| "request body could not be sent again".into())
            )));
        };
        let mut req = attempt_request(&parts, body);
        set_origin(req.uri_mut(), &sub.authority);
        if let Some(at) = deadline {
            // The server's deadline is what is left of the call's, not the whole of it.
            let left = at.saturating_duration_since(Instant::now());
            req.headers_mut()
                .insert(grpc_timeout::HEADER.clone(), grpc_timeout::encode(left));
        }
        let slot = StreamSlot::of(shared, &sub, &conn);
        let Some(mut guard) = CallGuard::start(sub.clone(), shared.failure_codes, deadline, slot)
        else {
            if shared
                .limits
                .per_endpoint
                .is_some_and(|c| sub.stats.in_flight() >= c)
            {
                // Other calls filled the endpoint to its cap since the pick.
                return Err(at_endpoint_cap(shared));
            }
            // Another call took the connection's last stream since the pick.
            let busy = || sub.at_stream_limit(&conn);
            waiter.wait_busy(shared, &last_error, busy).await?;
            continue;
        };
        if let (Some(m), Some(sent)) = (&shared.metrics, sent) {
            // The call's clock looked the method up already.
            let method = clock
                .as_ref()
                .map_or_else(|| m.method(parts.uri.path()), CallClock::method);
            let start = attempt_start.take().unwrap_or_else(Instant::now);
            guard.observe(m, method, sent, start);
        }
        match crate::h2client::send(&conn.tx, &conn.shared, req).await {
            Ok(resp) => {
                let (mut rparts, incoming) = resp.into_parts();
                sanitize_status_details(&mut rparts.headers);
                guard.responded(rparts.status, &rparts.headers);
                guard.hold(permit.take());
                guard.end_call_with(clock.take());
                if opts.report_endpoint {
                    rparts.extensions.insert(ServedBy(sub.addr.clone()));
                }
                let mut tracked = TrackedBody::new(incoming, guard);
                if let Some(limit) = opts.limits.response {
                    tracked = tracked.limit_messages(limit);
                }
                let body = tonic::body::Body::new(tracked);
                return Ok(http::Response::from_parts(rparts, body));
            }
            Err(err) => {
                let never_sent = err.never_sent;
                let error = err.error;
                last_error = Some(format!("{}: {}", sub.addr, chain(&error)));
                if never_sent {
                    // The connection refused the call before anything was sent (it met a
                    // GOAWAY, or it is closing): let the subchannel replace it, and try
                    // again.
                    sub.drained(&conn, go_away_code(&error).unwrap_or(0));
                    guard.abandon();
                    unsent += 1;
                    if unsent < MAX_UNSENT_ATTEMPTS {
                        continue;
                    }
                } else if transparent_retries > 0 && never_processed(&error) {
                    if let Some(code) = go_away_code(&error) {
                        sub.drained(&conn, code);
                    }
                    guard.abandon();
                    transparent_retries -= 1;
                    transparent.count += 1;
                    tracing::debug!(addr = %sub.addr, "call refused before processing; retrying transparently: {error}");
                    if let Some(t) = &mut trace {
                        // A72: the transparent retry is an attempt of its own, beside the
                        // first under the call's span.
                        t.attempt = attempt_span(Some(&t.parent), parts.uri.path(), &parts.headers);
                        #[cfg(feature = "otel")]
                        crate::otel::inject(&t.attempt, &mut parts.headers);
                    }
                    continue;
                } else {
                    guard.set_outcome(meshless_balancer::Outcome::Failure);
                    guard.set_code(code_of(&error, never_sent));
                }
                return Err(Status::new(
                    code_of(&error, never_sent),
                    format!("{}: {}", shared.target, last_error.unwrap_or_default()),
                ));
            }
        }
    }
}

/// One attempt's request: the call's method, URI, version and headers, kept in `parts` for
/// a transparent retry. The extensions stay behind: they are for the layers above, and h2
/// reads none of them for a gRPC call (only `Protocol`, for extended CONNECT), so cloning
/// them (a boxed clone of each) on every attempt would be waste.
fn attempt_request(parts: &http::request::Parts, body: ReqBody) -> http::Request<ReqBody> {
    let mut req = http::Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Points the request at `authority` over plain HTTP/2.
pub(crate) fn set_origin(uri: &mut Uri, authority: &http::uri::Authority) {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts).unwrap_or_default();
}
