//! The HTTP/2 client of a subchannel, on h2 directly.
//!
//! A unary call is sent from the caller's own task: its HEADERS and its one DATA frame are
//! queued on the connection, and the response is read from the stream, with no task spawned
//! and no channel crossed. (hyper's client sends every request through a channel to its
//! dispatch task, which spawns two tasks per request, one to pipe the body and one to hand
//! the response back; that was 15 % of a call's client instructions.) A streaming request
//! body is piped by a task of its own, as it must wait for flow-control capacity.
//!
//! What hyper did around h2 is here too: the connection's task ([`drive`]) sends keepalive
//! pings and grows the flow-control windows with the measured bandwidth-delay product when
//! the adaptive window is on, and request heads lose the connection-specific headers HTTP/2
//! forbids.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::replay::ReqBody;
use crate::settings::Http2Settings;

/// A failure of the HTTP/2 client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    /// h2's own: a protocol or I/O error, a reset stream, the server's GOAWAY.
    #[error("{0}")]
    H2(#[source] h2::Error),
    /// A keepalive ping went unanswered.
    #[error("keep-alive timed out: no answer to a ping within {0:?}")]
    KeepaliveTimeout(Duration),
    /// The request body failed before it was all sent.
    #[error("the request body failed: {0}")]
    Body(tonic::Status),
}

impl From<h2::Error> for ConnError {
    fn from(e: h2::Error) -> Self {
        ConnError::H2(e)
    }
}

/// What a connection's calls and its task share.
#[derive(Debug, Default)]
pub(crate) struct ConnShared {
    /// Streams open on the connection (calls and the health Watch): keepalive pings only
    /// while there are some, unless it pings while idle.
    open: AtomicUsize,
    /// The connection's task has ended: no call may use it.
    closed: AtomicBool,
    /// The adaptive window's byte count, when it is on.
    bdp: Option<BdpShared>,
}

impl ConnShared {
    /// True once the connection's task has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Bytes received since the adaptive window's ping went out, and the wake-up for the
/// connection's task when data arrives and no ping is out.
#[derive(Debug, Default)]
struct BdpShared {
    bytes: AtomicU64,
    data: Notify,
}

/// Settings of the connection's task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
    pub while_idle: bool,
}

/// The connection's task, made by [`handshake`]; ends when the connection does.
pub(crate) type Driver = Pin<Box<dyn Future<Output = Result<(), ConnError>> + Send>>;

/// h2's handshake on `io` with `settings` (hyper's defaults where HTTP/2 settings are not
/// ours to choose: no server push, 1 MiB of send buffer per stream, 100 streams before the
/// server's SETTINGS arrive). It returns once the client preface is written; the server's
/// SETTINGS are read by the connection's task.
pub(crate) async fn handshake<T>(
    io: T,
    settings: &Http2Settings,
) -> Result<(SendRequest<Bytes>, Connection<T, Bytes>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // RFC 9113 §6.5.2: frame sizes outside 2^14..2^24-1 are a protocol error.
    let frame = settings.max_frame_size.clamp(1 << 14, (1 << 24) - 1);
    let (stream_window, conn_window) = if settings.adaptive_window {
        // The adaptive window starts at HTTP/2's default and grows with the measured BDP.
        (BDP_INITIAL_WINDOW, BDP_INITIAL_WINDOW)
    } else {
        (
            settings.initial_stream_window,
            settings.initial_connection_window,
        )
    };
    h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(conn_window)
        .max_frame_size(frame)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(1024 * 1024)
        .initial_max_send_streams(100)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake(io)
        .await
}

/// The shared state of a new connection.
pub(crate) fn shared(settings: &Http2Settings) -> Arc<ConnShared> {
    Arc::new(ConnShared {
        bdp: settings.adaptive_window.then(BdpShared::default),
        ..ConnShared::default()
    })
}

/// The connection's task: drives `conn` until it ends, sending keepalive pings and, with
/// the adaptive window, BDP pings. Marks the connection closed when it ends.
pub(crate) fn drive<T>(
    mut conn: Connection<T, Bytes>,
    shared: Arc<ConnShared>,
    keepalive: Option<Keepalive>,
) -> Driver
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let pings = if keepalive.is_some() || shared.bdp.is_some() {
        conn.ping_pong()
    } else {
        None
    };
    Box::pin(async move {
        let end = match pings {
            None => conn.await.map_err(ConnError::from),
            Some(pings) => Pinger::new(pings, keepalive, &shared).run(&mut conn).await,
        };
        shared.closed.store(true, Ordering::Release);
        end
    })
}

/// The adaptive window starts here: HTTP/2's default window.
const BDP_INITIAL_WINDOW: u32 = 65_535;
/// The largest window the adaptive window grows to: 16 MiB.
const BDP_MAX_WINDOW: u32 = 16 * 1024 * 1024;
/// Least time between two BDP pings, so that a busy stream does not ping every round trip
/// forever.
const BDP_MIN_PING_GAP: Duration = Duration::from_millis(100);

/// The pings of one connection: keepalive (a ping after `interval` without one, when calls
/// are open or `while_idle`; the connection fails when no answer comes within `timeout`)
/// and the adaptive window (a ping when data arrives, the bytes received until its answer
/// measuring the bandwidth-delay product; a window below twice that grows to it). One ping
/// is out at a time; any answer proves the peer alive.
struct Pinger<'a> {
    pings: PingPong,
    keepalive: Option<Keepalive>,
    shared: &'a ConnShared,
    /// When the ping that is out was sent, and whether it measures the BDP.
    out: Option<(Instant, bool)>,
    next_keepalive: Option<Instant>,
    next_bdp: Instant,
    window: u32,
}

impl<'a> Pinger<'a> {
    fn new(pings: PingPong, keepalive: Option<Keepalive>, shared: &'a ConnShared) -> Self {
        let now = Instant::now();
        Pinger {
            pings,
            keepalive,
            shared,
            out: None,
            next_keepalive: keepalive.map(|k| now + k.interval),
            next_bdp: now,
            window: BDP_INITIAL_WINDOW,
        }
    }

    async fn run<T>(mut self, conn: &mut Connection<T, Bytes>) -> Result<(), ConnError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            // The next deadline: the answer to the ping that is out, or the next keepalive.
            let deadline = match (self.out, self.keepalive) {
                (Some((sent, _)), Some(k)) => Some(sent + k.timeout),
                (Some(_), None) => None,
                (None, _) => self.next_keepalive,
            };
            let bdp_wanted =
                self.out.is_none() && self.shared.bdp.is_some() && self.window < BDP_MAX_WINDOW;
            let next_bdp = self.next_bdp;
            tokio::select! {
                end = &mut *conn => return end.map_err(ConnError::from),
                pong = std::future::poll_fn(|cx| self.pings.poll_pong(cx)), if self.out.is_some() => {
                    pong?;
                    self.answered(conn)?;
                }
                () = sleep_until(deadline) => {
                    if let (Some(_), Some(k)) = (self.out, self.keepalive) {
                        return Err(ConnError::KeepaliveTimeout(k.timeout));
                    }
                    self.keepalive_due()?;
                }
                () = async {
                    tokio::time::sleep_until(next_bdp).await;
                    bdp_data(self.shared).await;
                }, if bdp_wanted => self.bdp_due()?,
            }
        }
    }

    /// The keepalive interval passed with no ping out: ping when calls are open (or while
    /// idle too, when asked).
    fn keepalive_due(&mut self) -> Result<(), ConnError> {
        let Some(k) = self.keepalive else {
            return Ok(());
        };
        let now = Instant::now();
        if k.while_idle || self.shared.open.load(Ordering::Relaxed) > 0 {
            self.pings.send_ping(Ping::opaque())?;
            self.out = Some((now, false));
        } else {
            self.next_keepalive = Some(now + k.interval);
        }
        Ok(())
    }

    /// Data arrived and no ping is out: start a BDP measurement (at most one per
    /// [`BDP_MIN_PING_GAP`]).
    fn bdp_due(&mut self) -> Result<(), ConnError> {
        let Some(bdp) = &self.shared.bdp else {
            return Ok(());
        };
        let now = Instant::now();
        bdp.bytes.store(0, Ordering::Relaxed);
        self.pings.send_ping(Ping::opaque())?;
        self.out = Some((now, true));
        Ok(())
    }

    /// The ping that was out was answered.
    fn answered<T>(&mut self, conn: &mut Connection<T, Bytes>) -> Result<(), ConnError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let now = Instant::now();
        if let (Some((_, true)), Some(bdp)) = (self.out, &self.shared.bdp) {
            let bytes = bdp.bytes.swap(0, Ordering::Relaxed);
            // A window below twice what one round trip carried is what limits the stream.
            if bytes >= u64::from(self.window) * 2 / 3 {
                let grown = u32::try_from(bytes.saturating_mul(2))
                    .unwrap_or(u32::MAX)
                    .min(BDP_MAX_WINDOW);
                if grown > self.window {
                    self.window = grown;
                    conn.set_target_window_size(grown);
                    conn.set_initial_window_size(grown)?;
                }
            }
            self.next_bdp = now + BDP_MIN_PING_GAP;
        }
        self.out = None;
        self.next_keepalive = self.keepalive.map(|k| now + k.interval);
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when data has arrived since the last BDP measurement.
async fn bdp_data(shared: &ConnShared) {
    let Some(bdp) = &shared.bdp else {
        return std::future::pending().await;
    };
    loop {
        let notified = bdp.data.notified();
        if bdp.bytes.load(Ordering::Relaxed) > 0 {
            return;
        }
        notified.await;
    }
}

/// Why a call could not be sent, and whether any of it reached the connection.
#[derive(Debug)]
pub(crate) struct SendError {
    pub error: ConnError,
    /// Nothing was sent: the connection refused the request before its HEADERS went out.
    pub never_sent: bool,
}

impl SendError {
    fn unsent(e: h2::Error) -> Self {
        SendError {
            error: ConnError::H2(e),
            never_sent: true,
        }
    }

    fn sent(error: ConnError) -> Self {
        SendError {
            error,
            never_sent: false,
        }
    }
}

/// Sends `req` on the connection of `tx` and waits for the response headers. A body known
/// whole (a unary call's) goes out with the HEADERS from this task; a streaming body is
/// piped by a task of its own.
pub(crate) async fn send(
    tx: &SendRequest<Bytes>,
    shared: &Arc<ConnShared>,
    req: http::Request<ReqBody>,
) -> Result<http::Response<H2Body>, SendError> {
    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    let mut tx = tx.clone().ready().await.map_err(SendError::unsent)?;
    let (whole, streamed) = match body {
        ReqBody::Full(b) => (Some(b.unwrap_or_default()), None),
        other => (None, Some(other)),
    };
    let end_now = whole.as_ref().is_some_and(Bytes::is_empty);
    let (response, mut stream) = tx
        .send_request(http::Request::from_parts(parts, ()), end_now)
        .map_err(SendError::unsent)?;
    let open = OpenStream::new(shared);
    match whole {
        Some(data) if !data.is_empty() => {
            // A stream the server reset as soon as its HEADERS arrived (REFUSED_STREAM, a
            // GOAWAY) refuses the data; the response says why, so it is what we wait for.
            if let Err(e) = stream.send_data(data, true) {
                tracing::trace!("request data not sent: {e}");
            }
        }
        Some(_) => {}
        None => {
            if let Some(body) = streamed {
                tokio::spawn(pipe(body, stream));
            }
        }
    }
    let response = response.await.map_err(|e| SendError::sent(e.into()))?;
    let (head, recv) = response.into_parts();
    Ok(http::Response::from_parts(
        head,
        H2Body {
            recv,
            data_done: false,
            open,
        },
    ))
}

/// Removes the headers HTTP/2 forbids (RFC 9113 §8.2.2), which h2 would refuse the request
/// for: `connection` and those it names' usual suspects, and a `te` other than `trailers`.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

/// Sends a streaming request body as capacity allows, then its end. A body that fails
/// resets the stream; a stream the server reset stops the pipe.
async fn pipe(mut body: ReqBody, mut stream: SendStream<Bytes>) {
    let result = std::future::poll_fn(|cx| poll_pipe(&mut body, &mut stream, cx)).await;
    if let Err(e) = result {
        tracing::debug!("request body not sent whole: {e}");
    }
}

fn poll_pipe(
    body: &mut ReqBody,
    stream: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ConnError>> {
    loop {
        // Wait for some send capacity before taking the next chunk, so that no more than
        // one chunk is ever buffered beyond the peer's window.
        stream.reserve_capacity(1);
        if stream.capacity() == 0 {
            loop {
                match std::task::ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Ok(())),
                }
            }
        } else if let Poll::Ready(reason) = stream.poll_reset(cx) {
            return Poll::Ready(Err(ConnError::H2(match reason {
                Ok(reason) => h2::Error::from(reason),
                Err(e) => e,
            })));
        }
        match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    stream.send_data(data, end)?;
                    if end {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.reserve_capacity(0);
                        stream.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(status)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Poll::Ready(Err(ConnError::Body(status)));
            }
            None => {
                stream.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Counts a stream as open on its connection while it lives.
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<ConnShared>);

impl OpenStream {
    pub(crate) fn new(shared: &Arc<ConnShared>) -> Self {
        shared.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(shared.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body read from its h2 stream: data frames (their flow-control capacity given
/// back as they are read), then the trailers. Dropped before its end, h2 resets the stream
/// with CANCEL.
#[derive(Debug)]
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// Counts the stream open while the body lives; its connection's shared state is where
    /// the adaptive window's bytes go.
    open: OpenStream,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = ConnError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ConnError>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(bdp) = &this.open.0.bdp {
                        bdp.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        bdp.data.notify_one();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(end_or_error(e)),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(end_or_error(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A reset with NO_ERROR ends the body without failing it (RFC 9113 §8.1: a server may
/// reset the request stream so once its response is complete); any other error fails it.
fn end_or_error(e: h2::Error) -> Option<Result<Frame<Bytes>, ConnError>> {
    if e.reason() == Some(h2::Reason::NO_ERROR) && e.is_remote() {
        return None;
    }
    Some(Err(ConnError::H2(e)))
}
