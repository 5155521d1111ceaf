//! One endpoint's HTTP/2 connection, its connectivity state and its reconnect loop.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshless_balancer::{ConnectivityState, EndpointStats};
use meshless_discovery::Address;
use tokio::sync::{mpsc, watch};

use crate::backoff::{Backoff, BackoffConfig};
use crate::body::ReqBody;
use crate::preface::{Preface, PrefaceWatch};

/// Connection settings shared by every subchannel of a channel.
#[derive(Debug, Clone)]
pub(crate) struct ConnectConfig {
    pub connect_timeout: Duration,
    pub backoff: BackoffConfig,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// Overrides the `:authority` of every request; otherwise the endpoint's address.
    pub authority: Option<http::uri::Authority>,
}

/// A state change the control task needs to hear about.
#[derive(Debug)]
pub(crate) struct StateEvent {
    pub addr: Address,
    /// Which incarnation of the subchannel sent it (an address re-added gets a new one).
    pub generation: u64,
    pub state: ConnectivityState,
    pub error: Option<String>,
}

/// The request path's view of one endpoint: where to send and where to record.
pub(crate) struct Subchannel {
    pub addr: Address,
    pub authority: http::uri::Authority,
    pub stats: Arc<EndpointStats>,
    sender: ArcSwapOption<http2::SendRequest<ReqBody>>,
    /// Told by a call that met the server's GOAWAY. hyper's dispatch task notices a GOAWAY
    /// only when the next request arrives if streams are still open, so without this the
    /// first call after every drain would pay for the reconnect.
    drained: tokio::sync::Notify,
}

impl Subchannel {
    /// The server said GOAWAY: stop using this connection and open a new one now.
    pub(crate) fn drained(&self) {
        self.sender.store(None);
        self.drained.notify_one();
    }

    /// A handle on the live connection, if there is one and it is not known to be closed.
    pub(crate) fn sender(&self) -> Option<http2::SendRequest<ReqBody>> {
        let guard = self.sender.load();
        let s = guard.as_ref()?;
        if s.is_closed() {
            return None;
        }
        Some(http2::SendRequest::clone(s))
    }
}

/// Stops the connection loop when dropped or told to. In-flight calls finish: hyper keeps
/// the HTTP/2 connection open until their streams end.
pub(crate) struct SubchannelHandle {
    pub sub: Arc<Subchannel>,
    pub generation: u64,
    stop: watch::Sender<bool>,
}

impl SubchannelHandle {
    pub(crate) fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for SubchannelHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Creates the subchannel for `addr` and spawns its connection loop.
pub(crate) fn spawn(
    addr: Address,
    generation: u64,
    stats: Arc<EndpointStats>,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
) -> SubchannelHandle {
    let authority = config
        .authority
        .clone()
        .or_else(|| addr.authority().parse().ok())
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    let sub = Arc::new(Subchannel {
        addr,
        authority,
        stats,
        sender: ArcSwapOption::empty(),
        drained: tokio::sync::Notify::new(),
    });
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(connection_loop(
        sub.clone(),
        generation,
        config,
        events,
        stop_rx,
    ));
    SubchannelHandle {
        sub,
        generation,
        stop,
    }
}

async fn connection_loop(
    sub: Arc<Subchannel>,
    generation: u64,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.backoff.clone());
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
        report(ConnectivityState::Connecting, None);
        let attempt = tokio::time::timeout(config.connect_timeout, connect(&sub.addr, &config));
        let outcome = tokio::select! {
            r = attempt => r,
            _ = stopped(&mut stop) => break,
        };
        match outcome {
            Ok(Ok((sender, conn))) => {
                sub.sender.store(Some(Arc::new(sender)));
                let ready_at = tokio::time::Instant::now();
                report(ConnectivityState::Ready, None);
                let end = tokio::select! {
                    r = conn => r,
                    // In-flight streams carry on in hyper's connection task.
                    _ = sub.drained.notified() => Ok(()),
                    _ = stopped(&mut stop) => {
                        // Dropping `conn` here ends our side of the dispatch; hyper keeps
                        // the connection until in-flight streams are done, then closes it.
                        break;
                    }
                };
                sub.sender.store(None);
                // GOAWAY or a closed connection: reconnect, never evict.
                let why = match end {
                    Ok(()) => "connection closed by the server (GOAWAY or EOF)".to_owned(),
                    Err(e) => format!("connection to {} lost: {e}", sub.addr),
                };
                tracing::debug!(addr = %sub.addr, "{why}");
                report(ConnectivityState::Idle, Some(why));
                // A connection that lived a while earns an immediate reconnect; one that
                // dies at once (a server accepting and dropping) must not spin.
                if ready_at.elapsed() >= config.backoff.base_delay {
                    backoff.reset();
                } else if wait_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
            Ok(Err(e)) => {
                let msg = format!("connecting to {} failed: {e}", sub.addr);
                tracing::debug!("{msg}");
                report(ConnectivityState::TransientFailure, Some(msg));
                if wait_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
            Err(_elapsed) => {
                let msg = format!(
                    "connecting to {} timed out after {:?} (no TCP connection, or no HTTP/2 preface from the server)",
                    sub.addr, config.connect_timeout
                );
                tracing::debug!("{msg}");
                report(ConnectivityState::TransientFailure, Some(msg));
                if wait_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
        }
    }
    sub.sender.store(None);
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

type Connection = std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>> + Send>>;

async fn connect(
    addr: &Address,
    config: &ConnectConfig,
) -> Result<(http2::SendRequest<ReqBody>, Connection), ConnectError> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(interval) = config.keepalive_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(config.keepalive_timeout)
            .keep_alive_while_idle(true);
    }
    match addr {
        Address::Tcp(sa) => {
            let tcp = tokio::net::TcpStream::connect(sa).await?;
            tcp.set_nodelay(true)?;
            handshake(&builder, tcp).await
        }
        #[cfg(unix)]
        Address::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
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

/// The HTTP/2 handshake, done only when the server has sent its SETTINGS frame (hyper's
/// returns as soon as our preface is written). The caller's connect timeout bounds the wait.
async fn handshake<T>(
    builder: &http2::Builder<TokioExecutor>,
    io: T,
) -> Result<(http2::SendRequest<ReqBody>, Connection), ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (io, mut preface) = PrefaceWatch::new(io);
    let (tx, conn) = builder.handshake(TokioIo::new(io)).await?;
    let mut conn: Connection = Box::pin(conn);
    // Drive our side of the dispatch too, so a connection that fails meanwhile is seen; what
    // the server sent says more than h2's protocol error, so it is looked at first.
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
        Preface::Http2 => Ok((tx, conn)),
        Preface::Other => Err(ConnectError::NotHttp2),
        Preface::Closed => Err(ConnectError::ClosedEarly),
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(
        "the server does not speak HTTP/2 (its first bytes are not a SETTINGS frame; TLS or HTTP/1 port?)"
    )]
    NotHttp2,
    #[error("the server closed the connection before its HTTP/2 preface")]
    ClosedEarly,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}
