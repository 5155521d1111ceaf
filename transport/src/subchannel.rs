//! One endpoint's HTTP/2 connection, its connectivity state and its reconnect loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use meshless_balancer::{ConnectivityState, EndpointStats};
use meshless_discovery::Address;
use tokio::sync::{Notify, mpsc, watch};

use crate::errors::{chain, is_too_many_pings};
use crate::h2client::{self, ConnShared, Driver, Keepalive};
use crate::preface::{Preface, PrefaceWatch};
use crate::settings::Http2Settings;
use meshless_discovery::backoff::{Backoff, BackoffConfig};

/// Connection settings shared by every subchannel of a channel.
#[derive(Debug, Clone)]
pub(crate) struct ConnectConfig {
    pub connect_timeout: Duration,
    pub backoff: BackoffConfig,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// Ping even when no call is open (off by default: gRPC servers answer pings on idle
    /// connections with GOAWAY `too_many_pings`).
    pub keepalive_while_idle: bool,
    /// TCP keepalive idle time and probe interval; `None` turns it off.
    pub tcp_keepalive: Option<Duration>,
    /// The service whose health (gRPC A17) decides readiness; `None`: no health checking.
    pub health_service: Option<String>,
    /// The instruments, when metrics are on.
    pub metrics: Option<Arc<crate::Recorder>>,
    pub http2: Http2Settings,
    /// TLS for every connection; `None` speaks h2c.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<crate::tls::TlsState>>,
}

/// A state change the control task needs to hear about.
#[derive(Debug)]
pub(crate) struct StateEvent {
    pub addr: Address,
    /// Which incarnation of the subchannel sent it (an address re-added gets a new one).
    pub generation: u64,
    pub state: ConnectivityState,
    /// Why it left Ready or failed to connect; `None` for a normal close (a GOAWAY
    /// reconnect), which is no error of the endpoint's.
    pub error: Option<String>,
}

/// One HTTP/2 connection of a subchannel, as calls see it.
pub(crate) struct Conn {
    pub tx: h2::client::SendRequest<bytes::Bytes>,
    /// What the connection's calls and its task share (open streams, closed).
    pub shared: Arc<ConnShared>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (u32::MAX when it announced none).
    pub max_streams: u32,
    /// Told by a call that met this connection's GOAWAY: the connection's task ends only
    /// once its open streams are done, so without this the subchannel would wait for them
    /// before it reconnects. Per connection, so a stale signal from calls on an old
    /// connection cannot drop a new one.
    drained: Notify,
    drained_flag: AtomicBool,
    /// The error code of the GOAWAY a call met, for A94's disconnect reason.
    go_away: AtomicU32,
}

/// The request path's view of one endpoint: where to send and where to record.
pub(crate) struct Subchannel {
    pub addr: Address,
    pub authority: http::uri::Authority,
    /// The TLS server name to verify (with TLS on).
    pub tls_name: Option<Arc<str>>,
    pub stats: Arc<EndpointStats>,
    /// Where its calls' durations are recorded, with metrics on.
    pub latency: Option<crate::EndpointLatency>,
    conn: ArcSwapOption<Conn>,
    /// Whether the policy may pick it: ready, healthy and not ejected, as the control task
    /// last saw it. Read only where the channel picks without the policy (a retry's
    /// fallback to an endpoint not tried yet).
    pub pickable: AtomicBool,
}

impl Subchannel {
    /// The server said GOAWAY with error `code` on `conn`: stop using that connection and
    /// open a new one now. Only the first signal per connection counts; signals about an
    /// older connection do nothing.
    pub(crate) fn drained(&self, conn: &Arc<Conn>, code: u32) {
        if conn.drained_flag.swap(true, Ordering::AcqRel) {
            return;
        }
        conn.go_away.store(code, Ordering::Relaxed);
        let current = self.conn.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.conn.store(None);
        }
        conn.drained.notify_one();
    }

    /// The live connection, if there is one and it is not known to be closed.
    pub(crate) fn connection(&self) -> Option<Arc<Conn>> {
        let guard = self.conn.load();
        let c = guard.as_ref()?;
        if c.shared.is_closed() {
            return None;
        }
        Some(Arc::clone(c))
    }

    /// True when the live connection has as many calls open as the server allows, so a
    /// call sent now would queue inside the HTTP/2 client instead of running.
    pub(crate) fn at_stream_limit(&self, conn: &Conn) -> bool {
        conn.max_streams != u32::MAX && self.stats.in_flight() >= u64::from(conn.max_streams)
    }
}

/// Stops the connection loop when dropped or told to. In-flight calls finish: the
/// connection's task runs until their streams end.
pub(crate) struct SubchannelHandle {
    pub sub: Arc<Subchannel>,
    pub generation: u64,
    stop: watch::Sender<bool>,
    wanted: watch::Sender<bool>,
}

impl SubchannelHandle {
    pub(crate) fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Asks the subchannel to connect (and to stay connected), or to let its connection go
    /// (in-flight calls finish) and stay idle.
    pub(crate) fn want(&self, on: bool) {
        self.wanted
            .send_if_modified(|w| std::mem::replace(w, on) != on);
    }

    /// Whether the subchannel was asked to connect.
    pub(crate) fn is_wanted(&self) -> bool {
        *self.wanted.borrow()
    }
}

impl Drop for SubchannelHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A subchannel's connection task, made but not started yet (see [`new`]).
pub(crate) struct Unstarted(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl Unstarted {
    /// Spawns the task on the current runtime.
    pub(crate) fn start(self) {
        tokio::spawn(self.0);
    }
}

/// A new subchannel for `addr` and its connection task, which [`Unstarted::start`] spawns;
/// it stays idle until [`SubchannelHandle::want`] asks it to connect. The control task
/// starts the tasks of a discovery update only once the picker with them is out, so their
/// first connects do not compete with publishing it.
pub(crate) fn new(
    addr: Address,
    authority: http::uri::Authority,
    tls_name: Option<Arc<str>>,
    generation: u64,
    stats: Arc<EndpointStats>,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
) -> (SubchannelHandle, Unstarted) {
    let latency = config.metrics.as_ref().map(|m| m.endpoint_latency(&addr));
    let sub = Arc::new(Subchannel {
        addr,
        authority,
        tls_name,
        stats,
        latency,
        conn: ArcSwapOption::empty(),
        pickable: AtomicBool::new(false),
    });
    let (stop, stop_rx) = watch::channel(false);
    let (wanted, wanted_rx) = watch::channel(false);
    // Boxed: the loop's state holds a whole connect attempt, too big to copy into tokio's
    // task cell by value.
    let task = Unstarted(Box::pin(connection_loop(
        sub.clone(),
        generation,
        config,
        events,
        stop_rx,
        wanted_rx,
    )));
    let handle = SubchannelHandle {
        sub,
        generation,
        stop,
        wanted,
    };
    (handle, task)
}

async fn connection_loop(
    sub: Arc<Subchannel>,
    generation: u64,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
    mut stop: watch::Receiver<bool>,
    mut wanted: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.backoff.clone());
    // Doubled each time the server says our pings come too often, as grpc-go does.
    let mut keepalive = config.keepalive_interval;
    let report = |state: ConnectivityState, error: Option<String>| {
        // The control task is gone only when the channel is shutting down.
        let _ = events.send(StateEvent {
            addr: sub.addr.clone(),
            generation,
            state,
            error,
        });
    };
    loop {
        // Idle until asked to connect.
        tokio::select! {
            r = wanted.wait_for(|w| *w) => if r.is_err() { break },
            _ = stopped(&mut stop) => break,
        }
        report(ConnectivityState::Connecting, None);
        let attempt = tokio::time::timeout(
            config.connect_timeout,
            connect(&sub.addr, sub.tls_name.as_deref(), &config, keepalive),
        );
        let outcome = tokio::select! {
            r = attempt => r,
            _ = stopped(&mut stop) => break,
            // Let go while connecting (pick_first found another endpoint): give up the
            // attempt and stay idle.
            _ = wanted.wait_for(|w| !*w) => {
                report(ConnectivityState::Idle, None);
                continue;
            }
        };
        match outcome {
            Ok(Ok((tx, driver, max_streams, shared))) => {
                let health = config.health_service.as_deref().map(|service| {
                    crate::health::watch(
                        tx.clone(),
                        shared.clone(),
                        sub.authority.clone(),
                        service,
                        &config.backoff,
                        &sub.addr,
                        &report,
                    )
                });
                // The Watch stream takes one of the server's streams.
                let max_streams = match (&health, max_streams) {
                    (Some(_), m) if m != u32::MAX => m.saturating_sub(1).max(1),
                    (_, m) => m,
                };
                let c = Arc::new(Conn {
                    tx,
                    shared,
                    max_streams,
                    drained: Notify::new(),
                    drained_flag: AtomicBool::new(false),
                    go_away: AtomicU32::new(0),
                });
                sub.conn.store(Some(c.clone()));
                if let Some(m) = &config.metrics {
                    m.connection_attempt(true);
                    m.connected();
                }
                let ready_at = tokio::time::Instant::now();
                // With health checking the Watch stream says when it is ready.
                if health.is_none() {
                    report(ConnectivityState::Ready, None);
                }
                let health = async move {
                    match health {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                };
                // The connection's task runs on its own, woken by its own I/O alone (polled
                // inside this select it would poll every branch below on each of its
                // wake-ups, several per call). It is never aborted: when this loop lets the
                // connection go, the calls on it finish, the last handle to it drops, and
                // h2 closes it.
                let mut driver = tokio::spawn(driver);
                let (end, reason) = tokio::select! {
                    r = &mut driver => match r {
                        Ok(Ok(())) => (Ok(()), "GOAWAY NO_ERROR"),
                        Ok(Err(e)) => {
                            let reason = crate::errors::disconnect_reason(&e);
                            (Err(e), reason)
                        }
                        Err(e) => {
                            tracing::warn!(addr = %sub.addr, "connection task ended abnormally: {e}");
                            (Ok(()), "unknown")
                        }
                    },
                    // It never ends: UNIMPLEMENTED leaves it pending.
                    () = health => (Ok(()), "unknown"),
                    // In-flight streams carry on in the connection's task.
                    _ = c.drained.notified() => (
                        Ok(()),
                        crate::errors::go_away_reason(c.go_away.load(Ordering::Relaxed)),
                    ),
                    // Let go (idle, or pick_first chose another endpoint): calls in flight
                    // finish on the connection, then it closes.
                    _ = wanted.wait_for(|w| !*w) => (Ok(()), "subchannel shutdown"),
                    _ = stopped(&mut stop) => {
                        // The connection stays until in-flight streams are done, then closes.
                        if let Some(m) = &config.metrics {
                            m.disconnected("subchannel shutdown");
                        }
                        break;
                    }
                };
                drop(driver);
                if let Some(m) = &config.metrics {
                    // A94's reason. h2 ends a connection without an error both on the
                    // server's GOAWAY NO_ERROR and when the server closes the socket cleanly
                    // without one, so both count as GOAWAY NO_ERROR.
                    m.disconnected(reason);
                }
                if sub
                    .conn
                    .load()
                    .as_ref()
                    .is_some_and(|cur| Arc::ptr_eq(cur, &c))
                {
                    sub.conn.store(None);
                }
                // GOAWAY or a closed connection: reconnect, never evict.
                let error = match end {
                    Ok(()) => None,
                    Err(e) => {
                        if let Some(k) = keepalive.filter(|_| is_too_many_pings(&e)) {
                            let doubled = k.saturating_mul(2);
                            tracing::warn!(addr = %sub.addr, "server sent GOAWAY too_many_pings; keepalive interval {k:?} -> {doubled:?}");
                            keepalive = Some(doubled);
                        }
                        Some(format!("connection to {} lost: {}", sub.addr, chain(&e)))
                    }
                };
                tracing::debug!(addr = %sub.addr, reason, error = error.as_deref(), "connection ended");
                report(ConnectivityState::Idle, error);
                // A connection that lived a while earns an immediate reconnect; one that
                // dies at once (a server accepting and dropping) must not spin.
                if ready_at.elapsed() >= config.backoff.base_delay {
                    backoff.reset();
                } else if wait_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
            Ok(Err(e)) => {
                let msg = format!("connecting to {} failed: {}", sub.addr, chain(&e));
                if let Some(m) = &config.metrics {
                    m.connection_attempt(false);
                }
                tracing::debug!(addr = %sub.addr, error = %chain(&e), "connecting failed");
                report(ConnectivityState::TransientFailure, Some(msg));
                if wait_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
            Err(_elapsed) => {
                if let Some(m) = &config.metrics {
                    m.connection_attempt(false);
                }
                let msg = format!(
                    "connecting to {} timed out after {:?} (no TCP connection, or no HTTP/2 preface from the server)",
                    sub.addr, config.connect_timeout
                );
                tracing::debug!(addr = %sub.addr, timeout = ?config.connect_timeout, "connecting timed out");
                report(ConnectivityState::TransientFailure, Some(msg));
                if wait_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
        }
    }
    sub.conn.store(None);
}

/// Resolves when the handle says stop or is dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `d`; true when told to stop meanwhile.
async fn wait_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    }
}

/// A new connection: its sender, its task, the server's SETTINGS_MAX_CONCURRENT_STREAMS
/// (`u32::MAX` when it announced none), and what its calls and task share.
type Connected = (
    h2::client::SendRequest<bytes::Bytes>,
    Driver,
    u32,
    Arc<ConnShared>,
);

#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
async fn connect(
    addr: &Address,
    tls_name: Option<&str>,
    config: &ConnectConfig,
    keepalive: Option<Duration>,
) -> Result<Connected, ConnectError> {
    let builder = (
        &config.http2,
        keepalive.map(|interval| Keepalive {
            interval,
            timeout: config.keepalive_timeout,
            while_idle: config.keepalive_while_idle,
        }),
    );
    match addr {
        Address::Tcp(sa) => {
            let tcp = tokio::net::TcpStream::connect(sa).await?;
            tcp.set_nodelay(true)?;
            if let Some(idle) = config.tcp_keepalive {
                // Dead peers that never answer (a node gone, a black-holing network) are
                // found by the kernel even when HTTP/2 keepalive is off.
                let ka = socket2::TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(idle);
                socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka)?;
            }
            #[cfg(feature = "tls")]
            if let Some(tls) = &config.tls {
                let name = tls_name
                    .ok_or_else(|| ConnectError::Tls(format!("{addr}: no TLS server name")))?;
                let (stream, auth) = tls.connect(name, tcp).await.map_err(ConnectError::Tls)?;
                return handshake(&builder, stream)
                    .await
                    .map_err(|e| e.after_tls(auth));
            }
            handshake(&builder, tcp).await
        }
        #[cfg(unix)]
        Address::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            #[cfg(feature = "tls")]
            if let Some(tls) = &config.tls {
                let name = tls_name.ok_or_else(|| {
                    ConnectError::Tls(format!(
                        "{}: TLS to a unix socket needs the name to verify: set TlsConfig::server_name",
                        path.display()
                    ))
                })?;
                let (stream, auth) = tls.connect(name, stream).await.map_err(ConnectError::Tls)?;
                return handshake(&builder, stream)
                    .await
                    .map_err(|e| e.after_tls(auth));
            }
            handshake(&builder, stream).await
        }
        #[cfg(not(unix))]
        Address::Unix(path) => Err(ConnectError::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "unix sockets are not supported on this platform: {}",
                path.display()
            ),
        ))),
    }
}

/// The HTTP/2 handshake, done only when the server has sent its SETTINGS frame (h2's
/// returns as soon as our preface is written). The caller's connect timeout bounds the wait.
async fn handshake<T>(
    (settings, keepalive): &(&Http2Settings, Option<Keepalive>),
    io: T,
) -> Result<Connected, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (io, mut preface) = PrefaceWatch::new(io);
    let (tx, mut conn) = h2client::handshake(io, settings).await?;
    // Drive the connection too, so a connection that fails meanwhile is seen; what the
    // server sent says more than h2's protocol error, so it is looked at first.
    let seen = tokio::select! {
        biased;
        p = &mut preface => p.unwrap_or(Preface::Closed),
        r = &mut conn => match (r, preface.try_recv()) {
            (_, Ok(p)) => p,
            (Ok(()), Err(_)) => Preface::Closed,
            (Err(e), Err(_)) => return Err(ConnectError::Handshake(e)),
        },
    };
    match seen {
        Preface::Http2 {
            max_concurrent_streams,
        } => {
            let shared = h2client::shared(settings);
            let driver = h2client::drive(conn, shared.clone(), *keepalive);
            Ok((
                tx,
                driver,
                max_concurrent_streams.unwrap_or(u32::MAX),
                shared,
            ))
        }
        Preface::Tls => Err(ConnectError::AnsweredTls),
        Preface::Http1 => Err(ConnectError::AnsweredHttp1),
        Preface::Other => Err(ConnectError::NotHttp2),
        Preface::Closed => Err(ConnectError::ClosedEarly),
        Preface::Failed(e) => Err(read_error(&e)),
    }
}

/// A read error before the server's preface; with TLS, the server's alert explained.
fn read_error(e: &std::io::Error) -> ConnectError {
    #[cfg(feature = "tls")]
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return ConnectError::Alert(crate::tls::describe(tls, None));
    }
    ConnectError::Read(format!("reading the server's HTTP/2 preface: {e}"))
}

#[cfg(feature = "tls")]
impl ConnectError {
    /// A server that asked for our client certificate and then closed or reset the
    /// connection before its preface refused the certificate (or its absence): say so.
    fn after_tls(self, auth: crate::tls::ClientAuth) -> Self {
        // An `Alert` is already explained by the server's own words.
        let early = matches!(
            self,
            ConnectError::ClosedEarly | ConnectError::Read(_) | ConnectError::Handshake(_)
        );
        match auth.explain_early_close() {
            Some(why) if early => ConnectError::Tls(why),
            _ => self,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(
        "the server does not speak HTTP/2 (its first bytes are not a SETTINGS frame); check the port"
    )]
    NotHttp2,
    #[error(
        "the server answered with TLS, and this channel speaks plaintext h2c: give the channel .tls(TlsConfig::new()...) (feature `tls`), or check the port"
    )]
    AnsweredTls,
    #[error(
        "the server answered with HTTP/1, not HTTP/2: gRPC needs HTTP/2; check the port (an HTTP/1 proxy or a web port?)"
    )]
    AnsweredHttp1,
    #[error("{0}")]
    Read(String),
    /// A TLS alert from the server, explained.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[error("{0}")]
    Alert(String),
    #[error("the server closed the connection before its HTTP/2 preface")]
    ClosedEarly,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[from] h2::Error),
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    #[error("{0}")]
    Tls(String),
}
