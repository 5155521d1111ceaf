//! An in-process DNS server on loopback (hickory-server, UDP and TCP on one port) whose
//! records tests change while it runs, and a UDP responder that answers garbage.
//!
//! ```no_run
//! # fn demo() -> std::io::Result<()> {
//! use meshless_integration::dns::{DnsServer, Srv};
//!
//! let dns = DnsServer::spawn()?;
//! dns.set_ttl(1);
//! dns.set_a("greeter.test", &["127.0.0.2".parse().unwrap()]);
//! dns.set_srv("_grpc._tcp.greeter.test", &[Srv::new(0, 3, 50051, "a.greeter.test")]);
//! let target = format!("dns://{}/greeter.test:50051", dns.addr());
//! # let _ = target; Ok(()) }
//! ```
//!
//! Like the greeter [`TestServer`](crate::TestServer), it runs on its own thread and runtime,
//! so `tokio::time::pause()` in a test does not freeze it, and [`DnsServer::stop`] closes
//! its sockets at once.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::oneshot;

/// How long a TCP client may stay silent before the server drops its connection
/// (hickory-server's per-connection request timeout).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses buffered per TCP connection (hickory-server's own tests use a small number).
const TCP_RESPONSE_BUFFER: usize = 16;
/// How long [`DnsServer::stop`] waits for the server thread to drop its sockets.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// How long [`DnsServer::restart`] retries binding the old port while the kernel releases it.
const REBIND_BOUND: Duration = Duration::from_secs(2);
/// Tries at finding a port free for both UDP and TCP.
const BIND_TRIES: usize = 20;
/// Default TTL of the records served, in seconds.
pub const DEFAULT_TTL: u32 = 1;

// ===== records =====

/// One SRV record: priority, weight, port and target host (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// The port of the service on the target.
    pub port: u16,
    /// The host that runs it (`.` means "no service here").
    pub target: String,
}

impl Srv {
    /// An SRV record.
    pub fn new(priority: u16, weight: u16, port: u16, target: impl Into<String>) -> Self {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }
}

/// How the server answers every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// From its records: the answer, NODATA (name known, no such type) or NXDOMAIN.
    Answer = 0,
    /// SERVFAIL to everything.
    ServFail = 1,
    /// REFUSED to everything.
    Refused = 2,
    /// No answer at all (the client times out).
    Silent = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::ServFail,
            2 => Mode::Refused,
            3 => Mode::Silent,
            _ => Mode::Answer,
        }
    }
}

/// The zone: what every incarnation of one server serves.
#[derive(Debug, Default)]
struct Zone {
    /// By (lower-case name without the final dot, type).
    records: Mutex<BTreeMap<(String, RecordType), Vec<RData>>>,
    ttl: AtomicU32,
    mode: AtomicU8,
    queries: AtomicU64,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    fn set(&self, name: &str, rtype: RecordType, data: Vec<RData>) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if data.is_empty() {
            records.remove(&(key(name), rtype));
        } else {
            records.insert((key(name), rtype), data);
        }
    }

    /// The records of `name` of `rtype`, or `Err(true)` when the name has none of any type
    /// (NXDOMAIN), `Err(false)` when it has others (NODATA).
    fn get(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, bool> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let name = key(name);
        match records.get(&(name.clone(), rtype)) {
            Some(data) => Ok(data.clone()),
            None => Err(!records.keys().any(|(n, _)| *n == name)),
        }
    }
}

// ===== DnsServer =====

/// A running (or stopped) DNS server on `127.0.0.1`, UDP and TCP on one port. Dropping it
/// stops it.
#[derive(Debug)]
pub struct DnsServer {
    zone: Arc<Zone>,
    addr: SocketAddr,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    stop: Option<oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server with no records on a free port of `127.0.0.1`; records have a TTL of
    /// [`DEFAULT_TTL`] seconds until [`set_ttl`](Self::set_ttl). Needs no tokio runtime.
    pub fn spawn() -> io::Result<DnsServer> {
        let zone = Arc::new(Zone::default());
        zone.ttl.store(DEFAULT_TTL, Ordering::SeqCst);
        let mut last_err = None;
        for _ in 0..BIND_TRIES {
            match start(&zone, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))) {
                Ok((addr, running)) => {
                    return Ok(DnsServer {
                        zone,
                        addr,
                        running: Some(running),
                    });
                }
                // The UDP port's TCP twin was taken: try another port.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// The address it listens on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the TTL, in seconds, of every record served from now on.
    pub fn set_ttl(&self, seconds: u32) {
        self.zone.ttl.store(seconds, Ordering::SeqCst);
    }

    /// Sets how every query is answered.
    pub fn set_mode(&self, mode: Mode) {
        self.zone.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Queries received so far, over every restart.
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Replaces the A and AAAA records of `name` with `ips` (empty: none of either).
    pub fn set_a(&self, name: &str, ips: &[IpAddr]) {
        let v4 = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6 = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                IpAddr::V4(_) => None,
            })
            .collect();
        self.zone.set(name, RecordType::A, v4);
        self.zone.set(name, RecordType::AAAA, v6);
    }

    /// Replaces the SRV records of `name` (empty: none).
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        let data = records
            .iter()
            .map(|r| {
                // Names on the wire are absolute; `.` (root) is RFC 2782's "no service".
                let fqdn = format!("{}.", r.target.trim_end_matches('.'));
                let target = Name::from_ascii(&fqdn).unwrap_or_else(|_| Name::root());
                RData::SRV(SRV::new(r.priority, r.weight, r.port, target))
            })
            .collect();
        self.zone.set(name, RecordType::SRV, data);
    }

    /// Makes `name` exist with no records of any type we serve (answers are NODATA, not
    /// NXDOMAIN), by giving it a TXT record.
    pub fn set_exists_empty(&self, name: &str) {
        self.set_a(name, &[]);
        self.set_srv(name, &[]);
        self.zone.set(
            name,
            RecordType::TXT,
            vec![RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![
                "meshless test".to_owned(),
            ]))],
        );
    }

    /// Removes every record of `name`: it answers NXDOMAIN.
    pub fn remove(&self, name: &str) {
        let mut records = self.zone.records.lock().unwrap_or_else(|p| p.into_inner());
        let name = key(name);
        records.retain(|(n, _), _| *n != name);
    }

    /// Stops the server: both sockets are closed when this returns (bounded). Records stay.
    pub fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        if let Some(tx) = running.stop.take() {
            let _ = tx.send(());
        }
        let finished = !matches!(
            running.done.recv_timeout(STOP_BOUND),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if finished && let Some(thread) = running.thread.take() {
            let _ = thread.join();
        }
    }

    /// Starts the server again on the same port, stopping it first if it runs.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let deadline = Instant::now() + REBIND_BOUND;
        loop {
            match start(&self.zone, self.addr) {
                Ok((_, running)) => {
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

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds UDP and TCP on `addr` (port 0: a free port for both) and serves on a new thread.
///
/// The sockets are bound with std before any runtime exists: a runtime that was built for a
/// failed attempt would have to be dropped here, and this may run inside a test's runtime,
/// where dropping one panics.
fn start(zone: &Arc<Zone>, addr: SocketAddr) -> io::Result<(SocketAddr, Running)> {
    let udp = std::net::UdpSocket::bind(addr)?;
    let addr = udp.local_addr()?;
    // std sets SO_REUSEADDR on listeners, so a restart can bind over TIME_WAIT connections.
    let tcp = std::net::TcpListener::bind(addr)?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let handler = Handler(zone.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name(format!("dns-{addr}"))
        .spawn(move || {
            serve(handler, udp, tcp, stop_rx);
            let _ = done_tx.send(());
        })?;
    Ok((
        addr,
        Running {
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        },
    ))
}

/// Runs the server on a runtime of this thread until `stop` fires or its handle is dropped.
fn serve(
    handler: Handler,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("DNS test server: no runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let (udp, tcp) = match (
            tokio::net::UdpSocket::from_std(udp),
            tokio::net::TcpListener::from_std(tcp),
        ) {
            (Ok(udp), Ok(tcp)) => (udp, tcp),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("DNS test server: cannot register its sockets: {e}");
                return;
            }
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tokio::select! {
            _ = server.block_until_done() => {}
            _ = stop => {}
        }
    });
    // Dropping the runtime drops the server's tasks and so closes every socket now.
    runtime.shutdown_timeout(Duration::ZERO);
}

struct Handler(Arc<Zone>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let zone = &self.0;
        zone.queries.fetch_add(1, Ordering::SeqCst);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let mut edns = Edns::new();
        if let Some(req) = request.edns.as_ref() {
            edns.set_max_payload(req.max_payload().max(512));
            builder.edns(&edns);
        }
        let code = match Mode::from_u8(zone.mode.load(Ordering::SeqCst)) {
            Mode::Silent => return header_only(&request.metadata, ResponseCode::NoError),
            Mode::ServFail => Some(ResponseCode::ServFail),
            Mode::Refused => Some(ResponseCode::Refused),
            Mode::Answer => None,
        };
        let Some(query) = request.queries.queries().first() else {
            return send(
                &mut response,
                builder.error_msg(&request.metadata, ResponseCode::FormErr),
                request,
            )
            .await;
        };
        if let Some(code) = code {
            return send(
                &mut response,
                builder.error_msg(&request.metadata, code),
                request,
            )
            .await;
        }
        let name = query.original().name().clone();
        let ttl = zone.ttl.load(Ordering::SeqCst);
        let (records, code) = match zone.get(&name.to_ascii(), query.query_type()) {
            Ok(data) => (
                data.into_iter()
                    .map(|d| Record::from_rdata(name.clone(), ttl, d))
                    .collect::<Vec<_>>(),
                ResponseCode::NoError,
            ),
            Err(true) => (Vec::new(), ResponseCode::NXDomain),
            Err(false) => (Vec::new(), ResponseCode::NoError),
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = code;
        let msg = builder.build(metadata, records.iter(), [], [], []);
        send(&mut response, msg, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(_) => header_only(&request.metadata, ResponseCode::ServFail),
    }
}

fn header_only(request: &Metadata, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

// ===== GarbageDns =====

/// What a [`GarbageDns`] sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Bytes that are no DNS message at all.
    Noise,
    /// The query's id and a header cut short (5 bytes).
    ShortHeader,
    /// A well-formed, empty response with the TC (truncated) bit set: the client must retry
    /// over TCP, where nothing listens.
    Truncated,
    /// A response that claims one answer record and carries none.
    LyingCounts,
}

/// A raw UDP socket on `127.0.0.1` that answers every datagram with garbage. Stops when
/// dropped.
#[derive(Debug)]
pub struct GarbageDns {
    addr: SocketAddr,
    answered: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl GarbageDns {
    /// Starts the responder on the current tokio runtime.
    pub async fn spawn(kind: Garbage) -> io::Result<GarbageDns> {
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = socket.local_addr()?;
        let answered = Arc::new(AtomicU64::new(0));
        let count = answered.clone();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = tokio::select! {
                    r = socket.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    _ = &mut stop_rx => return,
                };
                let reply = garbage(kind, &buf[..n]);
                let _ = socket.send_to(&reply, from).await;
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(GarbageDns {
            addr,
            answered,
            _stop: stop_tx,
        })
    }

    /// The address it listens on (UDP only).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }
}

/// DNS header flag bits (RFC 1035 section 4.1.1), byte 2 of the message.
const FLAG_QR: u8 = 0x80;
const FLAG_TC: u8 = 0x02;

fn garbage(kind: Garbage, query: &[u8]) -> Vec<u8> {
    let id = [
        query.first().copied().unwrap_or(0),
        query.get(1).copied().unwrap_or(0),
    ];
    match kind {
        Garbage::Noise => b"\xde\xad\xbe\xef this is not DNS at all \xff\xff\xff".to_vec(),
        Garbage::ShortHeader => vec![id[0], id[1], FLAG_QR, 0, 0],
        Garbage::Truncated | Garbage::LyingCounts => {
            // The query's header and question, turned into a response.
            let mut out = query.to_vec();
            if out.len() < 12 {
                return vec![id[0], id[1], FLAG_QR];
            }
            out[2] |= FLAG_QR;
            if kind == Garbage::Truncated {
                out[2] |= FLAG_TC;
                out[6..12].fill(0); // no answers, authorities or additionals
            } else {
                out[6] = 0;
                out[7] = 1; // one answer...
                out[8..12].fill(0); // ...that is not there
            }
            // Drop an EDNS OPT record the query carried in additionals.
            out.truncate(question_end(&out).unwrap_or(out.len()));
            out
        }
    }
}

/// The offset after the first question of a message, if it parses.
fn question_end(msg: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        i += len;
    }
    let end = i + 4; // type and class
    (end <= msg.len()).then_some(end)
}

/// Loopback addresses other than 127.0.0.1 for backends that must share one port, as the
/// A records of one name do: `127.0.0.{2+i}`.
pub fn loopback_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(i)))
}

/// `::1`, for AAAA records.
pub fn loopback_v6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::LOCALHOST)
}
