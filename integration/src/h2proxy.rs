//! A small HTTP/2 frame-aware TCP proxy, for tests of how a client manages its connections.
//!
//! An L4 proxy ([`crate::proxy`]) copies bytes, so it cannot say GOAWAY or notice PINGs. This
//! one reads the client's connection preface and then whole frames in both directions
//! (a 9-byte header: 24-bit length, type, flags, 31-bit stream id; then the payload) and
//! forwards them whole, so it can inject frames at frame boundaries, answer as the server
//! itself, or stop answering, while counting what the client did.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use meshless_integration::h2proxy::{Behaviour, H2ProxyHandle};
//! use meshless_integration::server::TestServer;
//! use std::time::Duration;
//!
//! let server = TestServer::new("a").spawn()?;
//! let min_interval = Duration::from_millis(300);
//! let proxy = H2ProxyHandle::spawn(server.addr(), Behaviour::PolicePings { min_interval }).await?;
//! // Dial proxy.addr() instead of server.addr(), then read what happened:
//! println!("{} connections, {} GOAWAYs", proxy.connections(), proxy.goaways_sent());
//! # Ok(()) }
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The client connection preface (RFC 9113 §3.4), which precedes the client's first frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of an HTTP/2 frame header (RFC 9113 §4.1).
const FRAME_HEADER_LEN: usize = 9;

/// Frame types (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
/// The ACK flag of SETTINGS and PING frames.
const ACK: u8 = 0x1;

/// Error codes (RFC 9113 §7).
const NO_ERROR: u32 = 0x0;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// The debug data grpc-go's server puts in the GOAWAY it sends for pings that come too often;
/// clients look for it (or for ENHANCE_YOUR_CALM) to slow their keepalive down.
const TOO_MANY_PINGS: &[u8] = b"too_many_pings";

/// How long [`Behaviour::GoAwayFirstConnection`] keeps the refused connection open after its
/// GOAWAY: a draining server does not hang up at once, and a client must not need it to.
const REFUSE_LINGER: Duration = Duration::from_millis(200);
/// How long the proxy waits to connect to the backend before it drops the client.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept, so a persistent error does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What an [`H2ProxyHandle`] does with the connections it accepts. Every behaviour counts
/// connections, client HEADERS and client PINGs, and can be frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behaviour {
    /// Forward every frame unchanged.
    Forward,
    /// On the first accepted connection only, answer as the server instead of forwarding:
    /// send an empty SETTINGS frame, ACK the client's SETTINGS (and PINGs), and once
    /// `streams` HEADERS frames have arrived send GOAWAY with last-stream-id 0 and NO_ERROR,
    /// so every one of those streams is provably unprocessed; keep the socket open about
    /// 200 ms, then close it. Later connections are forwarded. This is a server that drains
    /// while calls are arriving, which a client must retry transparently.
    GoAwayFirstConnection {
        /// How many client HEADERS frames to wait for before the GOAWAY.
        streams: usize,
    },
    /// Forward, but police client PINGs as grpc-go servers do: when two PINGs (without the
    /// ACK flag) arrive less than `min_interval` apart on one connection, send the client
    /// GOAWAY ENHANCE_YOUR_CALM with debug data `too_many_pings` (last-stream-id: the
    /// highest stream the client opened), stop forwarding and close that connection.
    PolicePings {
        /// The shortest gap between two client PINGs the "server" tolerates.
        min_interval: Duration,
    },
}

/// A running HTTP/2 proxy in front of one backend. Dropping it closes the listener and every
/// connection, and ends every task it started.
#[derive(Debug)]
pub struct H2ProxyHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    frozen: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// What the proxy saw and did, shared by its connection tasks.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    goaways: AtomicU64,
    pings: AtomicU64,
    headers: AtomicU64,
    /// Per connection, in accept order: the gaps between consecutive client PINGs.
    ping_intervals: Mutex<Vec<Vec<Duration>>>,
}

impl Stats {
    /// Counts a new connection; returns its index in accept order.
    fn new_connection(&self) -> usize {
        let mut intervals = self.intervals();
        intervals.push(Vec::new());
        self.connections.fetch_add(1, Ordering::SeqCst);
        intervals.len() - 1
    }

    fn intervals(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Duration>>> {
        // A panicking test thread must not hide the figures from the others.
        self.ping_intervals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl H2ProxyHandle {
    /// Listens on `127.0.0.1:0` and treats each accepted connection as `behaviour` says,
    /// forwarding to `backend`. Runs on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Any error from binding the listener.
    pub async fn spawn(backend: SocketAddr, behaviour: Behaviour) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (frozen, gate) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            listener,
            backend,
            behaviour,
            Arc::clone(&stats),
            Gate(gate),
        ));
        Ok(Self {
            addr,
            stats,
            frozen,
            accept,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far, the refused or policed ones included.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// GOAWAY frames the proxy sent to clients on its own (counted as the proxy starts to
    /// write one, so a test that sees the client react also sees the count). GOAWAYs the
    /// backend sends are forwarded and not counted.
    pub fn goaways_sent(&self) -> u64 {
        self.stats.goaways.load(Ordering::SeqCst)
    }

    /// PING frames without the ACK flag that clients sent, over every connection.
    pub fn pings_seen(&self) -> u64 {
        self.stats.pings.load(Ordering::SeqCst)
    }

    /// HEADERS frames clients sent (one per call for gRPC), over every connection.
    pub fn headers_seen(&self) -> u64 {
        self.stats.headers.load(Ordering::SeqCst)
    }

    /// For each connection, in accept order, the gaps between consecutive client PINGs
    /// (without the ACK flag) as the proxy received them.
    pub fn ping_intervals(&self) -> Vec<Vec<Duration>> {
        self.stats.intervals().clone()
    }

    /// Stops forwarding in both directions, on every connection and on those accepted
    /// meanwhile, while keeping every TCP connection open: a peer that stops answering, like
    /// a SIGSTOPped process or a black-holing network path, which only an application-level
    /// keepalive can tell from a quiet one.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Resumes forwarding after [`freeze`](Self::freeze); what was held back goes on.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Whether the proxy is frozen.
    pub fn is_frozen(&self) -> bool {
        *self.frozen.borrow()
    }
}

impl Drop for H2ProxyHandle {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks; aborting it aborts them all.
        self.accept.abort();
    }
}

/// Holds a connection's traffic back while the proxy is frozen.
#[derive(Debug, Clone)]
struct Gate(watch::Receiver<bool>);

impl Gate {
    /// Returns once the proxy is not frozen; fails when the handle is gone.
    async fn open(&mut self) -> io::Result<()> {
        match self.0.wait_for(|frozen| !*frozen).await {
            Ok(_) => Ok(()),
            Err(_) => Err(io::Error::other("the proxy handle was dropped")),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    backend: SocketAddr,
    behaviour: Behaviour,
    stats: Arc<Stats>,
    gate: Gate,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                };
                let _ = client.set_nodelay(true);
                let conn = ConnState {
                    index: stats.new_connection(),
                    stats: Arc::clone(&stats),
                    gate: gate.clone(),
                    last_ping: None,
                    last_stream: 0,
                };
                // Errors (a peer that hung up, bytes that are not HTTP/2) end only this
                // connection's task.
                match behaviour {
                    Behaviour::GoAwayFirstConnection { streams } if conn.index == 0 => {
                        tasks.spawn(refuse(client, streams, conn));
                    }
                    Behaviour::PolicePings { min_interval } => {
                        tasks.spawn(forward(client, backend, conn, Some(min_interval)));
                    }
                    _ => {
                        tasks.spawn(forward(client, backend, conn, None));
                    }
                }
            }
            // Reap finished connections so the set does not grow with every connection.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

// ===== frames =====

/// One whole frame, header included, as read from the wire.
struct Frame {
    bytes: Vec<u8>,
}

impl Frame {
    fn new(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> io::Result<Frame> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l < 1 << 24)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
        let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        bytes.extend_from_slice(&len.to_be_bytes()[1..]);
        bytes.push(kind);
        bytes.push(flags);
        bytes.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
        bytes.extend_from_slice(payload);
        Ok(Frame { bytes })
    }

    /// A GOAWAY frame: last-stream-id, error code, then the debug data.
    fn go_away(last_stream_id: u32, code: u32, debug: &[u8]) -> io::Result<Frame> {
        let mut payload = Vec::with_capacity(8 + debug.len());
        payload.extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(debug);
        Frame::new(GOAWAY, 0, 0, &payload)
    }

    fn kind(&self) -> u8 {
        self.bytes[3]
    }

    fn flags(&self) -> u8 {
        self.bytes[4]
    }

    fn stream_id(&self) -> u32 {
        u32::from_be_bytes([self.bytes[5], self.bytes[6], self.bytes[7], self.bytes[8]])
            & 0x7fff_ffff
    }

    fn payload(&self) -> &[u8] {
        &self.bytes[FRAME_HEADER_LEN..]
    }
}

/// Reads one whole frame. The 24-bit length bounds what a peer can make us allocate (16 MiB).
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Frame> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut header).await?;
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut bytes = vec![0u8; FRAME_HEADER_LEN + len];
    bytes[..FRAME_HEADER_LEN].copy_from_slice(&header);
    r.read_exact(&mut bytes[FRAME_HEADER_LEN..]).await?;
    Ok(Frame { bytes })
}

/// Reads the client's connection preface; anything else is not HTTP/2 and ends the connection.
async fn read_preface<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<()> {
    let mut preface = [0u8; PREFACE.len()];
    r.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/2 client preface",
        ));
    }
    Ok(())
}

// ===== connections =====

/// One connection's view: where it records, and what it tracks of the client's frames.
struct ConnState {
    index: usize,
    stats: Arc<Stats>,
    gate: Gate,
    last_ping: Option<Instant>,
    /// The highest stream the client opened: what a GOAWAY lets finish.
    last_stream: u32,
}

impl ConnState {
    /// Records a frame from the client; for a PING after an earlier one, returns the gap.
    fn client_frame(&mut self, frame: &Frame) -> Option<Duration> {
        match frame.kind() {
            HEADERS => {
                self.stats.headers.fetch_add(1, Ordering::SeqCst);
                self.last_stream = self.last_stream.max(frame.stream_id());
                None
            }
            PING if frame.flags() & ACK == 0 => {
                self.stats.pings.fetch_add(1, Ordering::SeqCst);
                let now = Instant::now();
                let gap = now.saturating_duration_since(self.last_ping.replace(now)?);
                if let Some(list) = self.stats.intervals().get_mut(self.index) {
                    list.push(gap);
                }
                Some(gap)
            }
            _ => None,
        }
    }
}

/// Forwards frames both ways between `client` and a new connection to `backend`, policing
/// client PINGs when `min_ping_interval` is set. Ends when either side closes or errs.
async fn forward(
    client: TcpStream,
    backend: SocketAddr,
    mut conn: ConnState,
    min_ping_interval: Option<Duration>,
) -> io::Result<()> {
    let upstream = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "backend connect timed out"))??;
    upstream.set_nodelay(true)?;
    let (mut client_rd, client_wr) = client.into_split();
    let (mut backend_rd, mut backend_wr) = upstream.into_split();
    // Both directions write to the client (frames from the backend, and our own GOAWAY), a
    // whole frame at a time under this lock, so what we inject lands at a frame boundary.
    let client_wr = tokio::sync::Mutex::new(client_wr);
    let mut down_gate = conn.gate.clone();

    let up = async {
        conn.gate.open().await?;
        read_preface(&mut client_rd).await?;
        conn.gate.open().await?;
        backend_wr.write_all(PREFACE).await?;
        loop {
            conn.gate.open().await?;
            let frame = read_frame(&mut client_rd).await?;
            let gap = conn.client_frame(&frame);
            if let (Some(gap), Some(min)) = (gap, min_ping_interval)
                && gap < min
            {
                let go_away = Frame::go_away(conn.last_stream, ENHANCE_YOUR_CALM, TOO_MANY_PINGS)?;
                let mut w = client_wr.lock().await;
                conn.stats.goaways.fetch_add(1, Ordering::SeqCst);
                w.write_all(&go_away.bytes).await?;
                // A FIN after the GOAWAY, as a server closing the connection sends; the
                // offending PING is neither forwarded nor answered.
                w.shutdown().await?;
                return Ok(());
            }
            conn.gate.open().await?;
            backend_wr.write_all(&frame.bytes).await?;
        }
    };
    let down = async {
        loop {
            down_gate.open().await?;
            let frame = read_frame(&mut backend_rd).await?;
            down_gate.open().await?;
            client_wr.lock().await.write_all(&frame.bytes).await?;
        }
    };
    // Whichever direction ends first ends the connection: dropping the halves closes both
    // sockets.
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// Answers as an HTTP/2 server that sends GOAWAY (last-stream-id 0, NO_ERROR) once `streams`
/// HEADERS frames have arrived, then lingers and closes. Nothing reaches the backend.
async fn refuse(client: TcpStream, streams: usize, mut conn: ConnState) -> io::Result<()> {
    let (mut rd, mut wr) = client.into_split();
    conn.gate.open().await?;
    read_preface(&mut rd).await?;
    conn.gate.open().await?;
    wr.write_all(&Frame::new(SETTINGS, 0, 0, &[])?.bytes)
        .await?;
    let mut seen = 0usize;
    while seen < streams {
        conn.gate.open().await?;
        let frame = read_frame(&mut rd).await?;
        conn.client_frame(&frame);
        let reply = match frame.kind() {
            HEADERS => {
                seen += 1;
                None
            }
            SETTINGS if frame.flags() & ACK == 0 => Some(Frame::new(SETTINGS, ACK, 0, &[])?),
            PING if frame.flags() & ACK == 0 => Some(Frame::new(PING, ACK, 0, frame.payload())?),
            _ => None,
        };
        if let Some(reply) = reply {
            conn.gate.open().await?;
            wr.write_all(&reply.bytes).await?;
        }
    }
    conn.gate.open().await?;
    conn.stats.goaways.fetch_add(1, Ordering::SeqCst);
    wr.write_all(&Frame::go_away(0, NO_ERROR, &[])?.bytes)
        .await?;
    // Read and drop what the client still sends meanwhile, so that the close is a FIN and
    // not a reset for unread data.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    wr.shutdown().await
}
