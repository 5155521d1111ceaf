//! A configurable loopback greeter server: the backend every test, the demo and the examples talk to.
//!
//! Each server runs on its own single-threaded tokio runtime in its own OS thread. That is what
//! makes [`ServerHandle::kill`] honest: shutting the runtime down drops every task it owns — the
//! accept loop and every connection task — so every established TCP connection is closed at once,
//! as when a process crashes. (tonic's `serve_with_*` spawns connection tasks with `tokio::spawn`
//! and does not track them, so dropping only the serve future would leave connections open.)
//! Because the server has its own runtime, `tokio::time::pause()` in a test does not freeze it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use meshless_integration::greeter::{HelloRequest, greeter_client::GreeterClient};
//! use meshless_integration::server::TestServer;
//! use std::time::Duration;
//!
//! let server = TestServer::new("a").latency(Duration::from_millis(5)).spawn()?;
//! let mut client = GreeterClient::connect(server.uri()).await.expect("connect");
//! let reply = client.say_hello(HelloRequest { name: "x".into(), ..Default::default() }).await.expect("call");
//! assert_eq!(reply.into_inner().server, "a");
//! assert_eq!(server.calls(), 1);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::greeter::greeter_server::{Greeter, GreeterServer};
use crate::greeter::{HelloReply, HelloRequest};

/// How long [`ServerHandle::kill`] waits for the server thread to finish tearing down.
/// Shutdown drops tasks without waiting for them, so this is only a guard against a bug.
const KILL_BOUND: Duration = Duration::from_secs(5);

/// How long [`ServerHandle::stop_graceful`] lets in-flight calls run before it kills the server.
pub const GRACEFUL_BOUND: Duration = Duration::from_secs(10);

/// How long [`ServerHandle::restart`] retries binding the old port while the kernel releases it.
const REBIND_BOUND: Duration = Duration::from_secs(2);

/// Listen backlog: large enough that a burst of connects in a load test never sees a refusal.
const BACKLOG: u32 = 1024;

/// `fail` value meaning "answer normally".
const NO_FAIL: i32 = -1;

// ===== CallInfo =====

/// The kind of RPC a call is, by the greeter method it called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `SayHello`: unary.
    Unary,
    /// `StreamReplies`: server streaming.
    ServerStreaming,
    /// `CollectHellos`: client streaming.
    ClientStreaming,
    /// `Chat`: bidirectional streaming.
    Bidi,
}

/// What a [`TestServer::on_call`] hook sees of a call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallInfo {
    /// The method called.
    pub kind: CallKind,
    /// The name of the server answering.
    pub server: String,
    /// The request name for unary and server-streaming calls; empty for calls that stream
    /// requests (the hook runs before the first request message is read).
    pub name: String,
    /// The request's metadata (headers).
    pub metadata: MetadataMap,
}

type LatencyFn = Arc<dyn Fn() -> Duration + Send + Sync>;
type Hook = Arc<dyn Fn(CallInfo) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

// ===== TestServer =====

/// Configuration of a loopback greeter server; [`spawn`](Self::spawn) starts it.
///
/// Defaults: no added latency, answers every call, no hook, binds `127.0.0.1:0` (a free port).
///
/// Replies: `SayHello` answers `"Hello {name}"`; `StreamReplies` sends `count` replies
/// `"Hello {name} #{i}"` (`i` from 0), the first at once and the rest `interval_ms` apart;
/// `CollectHellos` answers once with the number of requests it received as the message
/// (`"3"`); `Chat` answers each request with `"Hello {name}"`. Every reply carries the
/// server's name in `server`. The server also serves `grpc.health.v1.Health`, reporting
/// `SERVING` for `""` and `greeter.v1.Greeter` until a graceful stop begins.
#[derive(Clone)]
#[must_use]
pub struct TestServer {
    name: String,
    latency: Option<LatencyFn>,
    fail: Option<Code>,
    stream_fail: Option<Code>,
    hook: Option<Hook>,
    addr: SocketAddr,
    tls: Option<crate::tls::ServerTls>,
    /// Delay before each `grpc.health.v1.Health/Check` answer.
    check_latency: Duration,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("name", &self.name)
            .field("latency", &self.latency.as_ref().map(|_| ".."))
            .field("fail", &self.fail)
            .field("stream_fail", &self.stream_fail)
            .field("hook", &self.hook.as_ref().map(|_| ".."))
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("check_latency", &self.check_latency)
            .finish()
    }
}

impl TestServer {
    /// A server that names itself `name` in every reply.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            latency: None,
            fail: None,
            stream_fail: None,
            hook: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            check_latency: Duration::ZERO,
        }
    }

    /// Delays each `grpc.health.v1.Health/Check` answer by `latency` (what `meshless bench`
    /// calls), so that load-aware policies send such a server fewer calls.
    pub fn check_latency(mut self, latency: Duration) -> Self {
        self.check_latency = latency;
        self
    }

    /// Serves over TLS (or mTLS) only, with `tls`'s certificate.
    pub fn tls(mut self, tls: crate::tls::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds a fixed latency before each call is answered (before the first reply of a stream).
    pub fn latency(self, latency: Duration) -> Self {
        self.latency_with(move || latency)
    }

    /// Adds a latency drawn uniformly from `[0, max)` before each call, from an RNG seeded
    /// with `seed`, so a run is reproducible given the same order of calls.
    pub fn uniform_latency(self, max: Duration, seed: u64) -> Self {
        let rng = Mutex::new(StdRng::seed_from_u64(seed));
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        self.latency_with(move || {
            if max_nanos == 0 {
                return Duration::ZERO;
            }
            let mut rng = rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Duration::from_nanos(rng.random_range(0..max_nanos))
        })
    }

    /// Adds a latency computed per call by `f`, for any other distribution.
    pub fn latency_with(mut self, f: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        self.latency = Some(Arc::new(f));
        self
    }

    /// Fails every call at once (no latency, no hook) with `code`.
    /// [`ServerHandle::set_fail`] changes this while the server runs.
    pub fn fail_with(mut self, code: Code) -> Self {
        self.fail = Some(code);
        self
    }

    /// Ends every `StreamReplies` stream with `code` after its replies: the response headers
    /// go out first, so the client sees a committed call that then fails (unlike
    /// [`fail_with`](Self::fail_with), which answers Trailers-Only).
    pub fn fail_streams_with(mut self, code: Code) -> Self {
        self.stream_fail = Some(code);
        self
    }

    /// Runs `hook` at the start of each call, before the latency. An `Err` fails the call with
    /// that status; a hook that waits delays the call (for example until a test lets it go).
    pub fn on_call<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(CallInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |info| Box::pin(hook(info))));
        self
    }

    /// Binds `addr` instead of `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds the listener and starts the server on its own thread and runtime.
    ///
    /// The listener is bound before this returns, so clients may connect at once. It does not
    /// need to be called from within a tokio runtime.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let shared = Arc::new(Shared {
            calls: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            fail: AtomicI32::new(self.fail.map_or(NO_FAIL, |c| c as i32)),
            health: std::sync::Mutex::new(None),
        });
        let running = start(&self, self.addr, &shared)?;
        Ok(ServerHandle {
            addr: running.addr,
            config: self,
            shared,
            running: Some(running),
        })
    }
}

/// Starts `n` default greeter servers (which also answer `grpc.health.v1.Health`) named
/// `s0`..`s{n-1}`, on loopback ports of their own. Panics if one cannot start.
pub fn spawn_servers(n: usize) -> Vec<ServerHandle> {
    (0..n)
        .map(|i| {
            TestServer::new(format!("s{i}"))
                .spawn()
                .expect("spawn server")
        })
        .collect()
}

// ===== ServerHandle =====

/// A running (or stopped) greeter server. Dropping it kills the server.
#[derive(Debug)]
pub struct ServerHandle {
    config: TestServer,
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
}

/// Counters shared by every incarnation of one server (they survive restarts).
#[derive(Debug)]
struct Shared {
    calls: AtomicU64,
    /// `grpc.health.v1.Health/Check` calls (what `meshless bench` and `top` send).
    health_checks: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicU64,
    fail: AtomicI32,
    /// The running server's health reporter, for [`ServerHandle::set_health`].
    health: std::sync::Mutex<Option<tonic_health::server::HealthReporter>>,
}

#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    graceful: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as an `http://` URI, ready for `tonic::transport::Endpoint`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's name, as it appears in `HelloReply.server`.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Greeter calls received so far, over every restart, failed ones included
    /// (health checks are not counted).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// `grpc.health.v1.Health/Check` calls received so far, over every restart.
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, over every restart (for a TLS server: those whose
    /// handshake completed).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Greeter calls being handled now; a streaming call counts until its response stream ends.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Makes every following call fail at once with `code`, or answer normally with `None`.
    pub fn set_fail(&self, code: Option<Code>) {
        self.shared
            .fail
            .store(code.map_or(NO_FAIL, |c| c as i32), Ordering::SeqCst);
    }

    /// Whether the server is running (neither killed nor stopped).
    pub fn is_running(&self) -> bool {
        self.running
            .as_ref()
            .and_then(|r| r.thread.as_ref())
            .is_some_and(|t| !t.is_finished())
    }

    /// Sets what the server's `grpc.health.v1.Health` reports for `service` (`""` is the
    /// whole server; `greeter.v1.Greeter` the greeter). Watch streams hear it at once.
    ///
    /// # Panics
    ///
    /// If the server's health service is not up within 10 s of its start.
    pub async fn set_health(&self, service: &str, status: tonic_health::ServingStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let reporter = loop {
            let r = self
                .shared
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(r) = r {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server {}: its health service did not start",
                self.config.name
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        reporter.set_service_status(service, status).await;
    }

    /// Stops gracefully, as tonic does on a shutdown signal: reports `NOT_SERVING` on the health
    /// service, closes the listener, sends HTTP/2 GOAWAY on every connection and lets in-flight
    /// calls finish. Returns when every connection has closed, or kills the server after
    /// [`GRACEFUL_BOUND`].
    pub async fn stop_graceful(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if let Some(tx) = running.graceful.take() {
            let _ = tx.send(());
        }
        let deadline = Instant::now() + GRACEFUL_BOUND;
        // The server thread reports on a std channel; poll it rather than block the runtime.
        while Instant::now() < deadline {
            match running.done.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                _ => break,
            }
        }
        self.kill();
    }

    /// Kills the server abruptly, like a crashed process: the listener and every established
    /// connection are closed at once, and in-flight calls fail. Blocks for the short time the
    /// server thread needs to drop its tasks (bounded). Does nothing if already stopped.
    pub fn kill(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        if let Some(tx) = running.kill.take() {
            let _ = tx.send(());
        }
        // The thread reports once its runtime, and so every socket, is gone.
        // A disconnected channel means the thread has already gone.
        let finished = !matches!(
            running.done.recv_timeout(KILL_BOUND),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if finished && let Some(thread) = running.thread.take() {
            let _ = thread.join();
        }
    }

    /// Starts the server again on the same address, killing it first if it is running.
    /// Counters keep counting.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + REBIND_BOUND;
        loop {
            match start(&self.config, self.addr, &self.shared) {
                Ok(running) => {
                    self.running = Some(running);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Binds `addr` and runs one incarnation of the server on a fresh thread and runtime.
/// Binds a listener on `addr` with SO_REUSEADDR and a deep backlog.
fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Connections that the killed incarnation closed sit in TIME_WAIT on this port.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn start(config: &TestServer, addr: SocketAddr, shared: &Arc<Shared>) -> io::Result<Running> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bound = {
        // Registering the listener needs the server runtime's reactor.
        let _enter = runtime.enter();
        bind(addr)
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            // Dropping a runtime blocks, which panics inside a caller's async context.
            runtime.shutdown_background();
            return Err(e);
        }
    };
    let addr = listener.local_addr()?;
    let acceptor = match config.tls.as_ref().map(crate::tls::ServerTls::acceptor) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            runtime.shutdown_background();
            return Err(e);
        }
        None => None,
    };

    let counted = Arc::clone(shared);
    let greeter = GreeterService {
        name: config.name.clone(),
        latency: config.latency.clone(),
        hook: config.hook.clone(),
        stream_fail: config.stream_fail,
        shared: Arc::clone(shared),
    };
    let check_latency = config.check_latency;
    let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();

    let thread = thread::Builder::new()
        .name(format!("greeter-{}", config.name))
        .spawn(move || {
            runtime.block_on(async move {
                let health = tonic_health::server::HealthReporter::new();
                let health_service =
                    tonic_health::pb::health_server::HealthServer::new(SlowHealth {
                        inner: tonic_health::server::HealthService::from_health_reporter(
                            health.clone(),
                        ),
                        delay: check_latency,
                    });
                health.set_serving::<GreeterServer<GreeterService>>().await;
                *counted.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(health.clone());
                let signal = async move {
                    // A dropped sender means the handle is gone: stop as well.
                    let _ = graceful_rx.await;
                    health
                        .set_not_serving::<GreeterServer<GreeterService>>()
                        .await;
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                };
                let checks = Arc::clone(&counted);
                let router = Server::builder()
                    .layer(tower::util::MapRequestLayer::new(
                        move |req: http::Request<tonic::body::Body>| {
                            if req.uri().path() == "/grpc.health.v1.Health/Check" {
                                checks.health_checks.fetch_add(1, Ordering::SeqCst);
                            }
                            req
                        },
                    ))
                    .add_service(health_service)
                    .add_service(GreeterServer::new(greeter));
                let serve: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                    match acceptor {
                        None => {
                            let counted = Arc::clone(&counted);
                            let incoming = TcpIncoming::from(listener)
                                .with_nodelay(Some(true))
                                .inspect(move |c| {
                                    if c.is_ok() {
                                        counted.connections.fetch_add(1, Ordering::SeqCst);
                                    }
                                });
                            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                        }
                        Some(acceptor) => Box::pin(router.serve_with_incoming_shutdown(
                            tls_incoming(listener, acceptor, counted),
                            signal,
                        )),
                    };
                tokio::select! {
                    _ = serve => {}
                    _ = kill_rx => {}
                }
            });
            // Dropping the runtime drops every task it owns (the connection tasks tonic spawned
            // included), which closes every socket now instead of when their calls end.
            runtime.shutdown_timeout(Duration::ZERO);
            let _ = done_tx.send(());
        })?;

    Ok(Running {
        addr,
        graceful: Some(graceful_tx),
        kill: Some(kill_tx),
        done: done_rx,
        thread: Some(thread),
    })
}

/// Accepts TLS connections on `listener`: each handshake runs on its own task, and only
/// the connections that complete it reach the server (a failed handshake is dropped).
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    counted: Arc<Shared>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<crate::tls::TlsIo>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sender) = (acceptor.clone(), tx.clone());
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                {
                    counted.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = sender.send(Ok(crate::tls::TlsIo(tls))).await;
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

// ===== GreeterService =====

/// The greeter implementation one server incarnation serves.
#[derive(Clone)]
struct GreeterService {
    name: String,
    latency: Option<LatencyFn>,
    hook: Option<Hook>,
    stream_fail: Option<Code>,
    shared: Arc<Shared>,
}

/// Counts a call as in flight until dropped (for streams: until the response stream ends).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GreeterService {
    /// Counts the call, then applies the failure mode, the hook and the latency, in that order.
    async fn admit(
        &self,
        kind: CallKind,
        name: &str,
        metadata: &MetadataMap,
    ) -> Result<InFlight, Status> {
        self.shared.calls.fetch_add(1, Ordering::SeqCst);
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(&self.shared));

        let fail = self.shared.fail.load(Ordering::SeqCst);
        if fail != NO_FAIL {
            return Err(Status::new(
                Code::from_i32(fail),
                format!("server {} is configured to fail", self.name),
            ));
        }
        if let Some(hook) = &self.hook {
            hook(CallInfo {
                kind,
                server: self.name.clone(),
                name: name.to_owned(),
                metadata: metadata.clone(),
            })
            .await?;
        }
        if let Some(latency) = &self.latency {
            let delay = latency();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        Ok(guard)
    }

    fn reply(&self, message: String) -> HelloReply {
        HelloReply {
            message,
            server: self.name.clone(),
        }
    }
}

#[tonic::async_trait]
impl Greeter for GreeterService {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let _guard = self
            .admit(CallKind::Unary, &request.get_ref().name, request.metadata())
            .await?;
        let reply = self.reply(format!("Hello {}", request.get_ref().name));
        Ok(Response::new(reply))
    }

    type StreamRepliesStream = BoxStream<'static, Result<HelloReply, Status>>;

    async fn stream_replies(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::StreamRepliesStream>, Status> {
        let guard = self
            .admit(
                CallKind::ServerStreaming,
                &request.get_ref().name,
                request.metadata(),
            )
            .await?;
        let HelloRequest {
            name,
            count,
            interval_ms,
        } = request.into_inner();
        let interval = Duration::from_millis(u64::from(interval_ms));
        let this = self.clone();
        let stream_fail = self.stream_fail;
        let replies = stream::unfold((0u32, guard), move |(i, guard)| {
            let this = this.clone();
            let name = name.clone();
            async move {
                if i == count
                    && let Some(code) = stream_fail
                {
                    let status =
                        Status::new(code, format!("server {} fails its streams", this.name));
                    return Some((Err(status), (i + 1, guard)));
                }
                if i >= count {
                    return None;
                }
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let reply = this.reply(format!("Hello {name} #{i}"));
                Some((Ok(reply), (i + 1, guard)))
            }
        });
        Ok(Response::new(replies.boxed()))
    }

    async fn collect_hellos(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        let _guard = self
            .admit(CallKind::ClientStreaming, "", request.metadata())
            .await?;
        let mut requests = request.into_inner();
        let mut received = 0u64;
        while let Some(request) = requests.message().await? {
            let _ = request;
            received += 1;
        }
        Ok(Response::new(self.reply(received.to_string())))
    }

    type ChatStream = BoxStream<'static, Result<HelloReply, Status>>;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let guard = self.admit(CallKind::Bidi, "", request.metadata()).await?;
        let this = self.clone();
        let requests = request.into_inner();
        let replies = stream::unfold((requests, guard), move |(mut requests, guard)| {
            let this = this.clone();
            async move {
                let item = match requests.message().await {
                    Ok(Some(request)) => Ok(this.reply(format!("Hello {}", request.name))),
                    Ok(None) => return None,
                    Err(status) => Err(status),
                };
                Some((item, (requests, guard)))
            }
        });
        Ok(Response::new(replies.boxed()))
    }
}

/// The health service, with a delay before each `Check` answer.
struct SlowHealth {
    inner: tonic_health::server::HealthService,
    delay: Duration,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for SlowHealth {
    async fn check(
        &self,
        request: Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<Response<tonic_health::pb::HealthCheckResponse>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.check(request).await
    }

    type WatchStream = tonic_health::server::WatchStream;

    async fn watch(
        &self,
        request: Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.inner.watch(request).await
    }
}
