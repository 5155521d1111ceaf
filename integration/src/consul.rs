//! A loopback double of a Consul agent's HTTP API, for the endpoints service discovery and
//! registration use, faithful to Consul's documented behaviour:
//!
//! - `PUT /v1/agent/service/register[?replace-existing-checks=true]` with `ID`, `Name`,
//!   `Tags`, `Address`, `Port`, `Meta`, `Weights` (default `{Passing: 1, Warning: 1}`),
//!   `TaggedAddresses` (plus the `lan_ipv4`/`wan_ipv4` entries the agent adds for an IPv4
//!   `Address`), and `Check` or `Checks`. Check IDs default to `service:<id>` (one check)
//!   or `service:<id>:<n>` (several, from 1); a check starts `critical` unless its `Status`
//!   says otherwise, and a re-registered check keeps its status. Without
//!   `replace-existing-checks`, checks left out of a re-registration stay.
//! - `PUT /v1/agent/service/deregister/<id>`; `GET /v1/agent/service/<id>`,
//!   `GET /v1/agent/services`, `GET /v1/agent/checks`.
//! - `PUT /v1/agent/check/{pass,warn,fail}/<id>[?note=]` and `PUT /v1/agent/check/update/<id>`
//!   (`{"Status", "Output"}`) on TTL checks; an unknown check answers 404 ``CheckID "x"
//!   does not have associated TTL``. A TTL check not updated within its TTL turns
//!   `critical` ("TTL expired"). TCP checks really connect, every `Interval`; gRPC checks
//!   really call `grpc.health.v1.Health/Check`.
//! - `DeregisterCriticalServiceAfter`: a service with a check critical for longer is
//!   removed. Real agents accept no value below one minute and reap every 30 s; the double
//!   takes any value and reaps every [`REAP_EVERY`], so tests run in seconds.
//! - `GET /v1/health/service/<name>` with `passing`, `tag` (repeatable: all must match),
//!   `dc` (another datacenter answers 500 `No path to datacenter`), `near`, `stale`,
//!   `consistent`, and blocking queries: `index` and `wait` (Go durations such as `55000ms`
//!   or `1m`; default 5 m, at most 10 m, plus up to wait/16 of jitter). The answer carries
//!   `X-Consul-Index` (the service's last change, or the catalog's for an unknown
//!   service), `X-Consul-KnownLeader` and `X-Consul-LastContact`. A query with an index
//!   at or above the current one blocks until the service changes or the wait ends.
//! - A snapshot restore ([`ConsulAgent::restore_index`]) moves every index back; blocked
//!   queries return at once with the lower index, as Consul abandons its state store.
//! - ACLs ([`ConsulAgent::set_acl`]), default policy deny: an unknown token gets 403 `ACL not
//!   found`; a write without `service:write` gets 403 ``Permission denied: token with
//!   AccessorID '…' lacks permission 'service:write' on "name"``; a health query without
//!   `service:read` gets its results filtered away, with `X-Consul-Results-Filtered-By-ACLs:
//!   true` when a token was given (Consul hides the header from the anonymous token).
//! - Faults: a status answer for every request ([`ConsulAgent::set_fault`]), a raw body for
//!   health queries ([`ConsulAgent::set_health_body`]), every open connection dropped
//!   ([`ConsulAgent::drop_connections`]), outages ([`ConsulAgent::stop`] and
//!   [`ConsulAgent::start`] on the same port), and an agent restart that forgets its
//!   services ([`ConsulAgent::restart_forgetting`]).
//!
//! The node is `node-1` at 127.0.0.1 in datacenter `dc1`, with a passing `serfHealth`
//! check.

// Handlers return their early answers as `Err(Response)`; a test double's responses are
// not worth boxing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::k8s::percent_decode;

/// How often the double expires TTL checks, runs TCP and gRPC checks that are due, and
/// reaps services critical for longer than their DeregisterCriticalServiceAfter.
pub const REAP_EVERY: Duration = Duration::from_millis(50);
/// The node every service is registered on.
pub const NODE: &str = "node-1";
/// The double's datacenter.
pub const DATACENTER: &str = "dc1";
/// The anonymous token's AccessorID, as in Consul.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
/// The default blocking wait, and the most a query may ask for.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

type Body = BoxBody<Bytes, Infallible>;

/// A fault every request gets instead of its answer.
#[derive(Debug, Clone)]
pub struct Fault {
    /// HTTP status code.
    pub code: u16,
    /// The plain-text body (Consul answers errors as text).
    pub body: String,
}

/// An ACL token: its secret (what clients send), its accessor, and the services it may
/// read and write. A rule is a service name, or a prefix ending in `*` (`*` alone: all),
/// like Consul's `service` and `service_prefix` rules.
#[derive(Debug, Clone, Default)]
pub struct AclToken {
    /// The SecretID, sent as `X-Consul-Token`.
    pub secret: String,
    /// The AccessorID, named in permission errors.
    pub accessor: String,
    /// `service:read` rules.
    pub service_read: Vec<String>,
    /// `service:write` rules (write implies read).
    pub service_write: Vec<String>,
}

impl AclToken {
    /// A token with the given secret and no permissions.
    pub fn new(secret: &str) -> Self {
        AclToken {
            secret: secret.into(),
            accessor: format!("accessor-{secret}"),
            ..Default::default()
        }
    }

    /// Grants `service:read` on `rule`.
    pub fn read(mut self, rule: &str) -> Self {
        self.service_read.push(rule.into());
        self
    }

    /// Grants `service:write` on `rule`.
    pub fn write(mut self, rule: &str) -> Self {
        self.service_write.push(rule.into());
        self
    }

    fn may(&self, rules: &[String], service: &str) -> bool {
        rules.iter().any(|r| match r.strip_suffix('*') {
            Some(prefix) => service.starts_with(prefix),
            None => r == service,
        })
    }

    fn may_read(&self, service: &str) -> bool {
        self.may(&self.service_read, service) || self.may_write(service)
    }

    fn may_write(&self, service: &str) -> bool {
        self.may(&self.service_write, service)
    }
}

/// ACLs with default policy deny: the anonymous token's rules and the known tokens.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// What a request without a token may do.
    pub anonymous: AclToken,
    /// The tokens that exist.
    pub tokens: Vec<AclToken>,
}

#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    tags: Vec<String>,
    address: String,
    port: u16,
    meta: Map<String, Value>,
    weights: Value,
    tagged: Map<String, Value>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Ttl(Duration),
    Tcp(String),
    Grpc {
        target: String,
        tls: bool,
    },
    /// HTTP, script and others: accepted, never run.
    Other,
}

#[derive(Debug, Clone)]
struct Check {
    id: String,
    name: String,
    service_id: String,
    status: String,
    output: String,
    kind: Kind,
    interval: Duration,
    timeout: Duration,
    deregister_after: Option<Duration>,
    /// TTL checks: when they expire. Others: when they run next.
    due: Instant,
    critical_since: Option<Instant>,
    running: bool,
    create_index: u64,
    modify_index: u64,
}

#[derive(Default)]
struct State {
    /// The catalog's raft index: bumped by every change.
    index: u64,
    services: BTreeMap<String, Service>,
    checks: BTreeMap<String, Check>,
    /// The index of the last change to each service name.
    service_index: BTreeMap<String, u64>,
    acl: Option<Acl>,
    fault: Option<Fault>,
    health_body: Option<String>,
    requests: Vec<String>,
    health_queries: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change: blocked queries look again.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to drop every open connection.
    drop_conns: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, st: &mut State, service: &str) {
        st.index += 1;
        let i = st.index;
        st.service_index.insert(service.to_owned(), i);
        self.changed.send_modify(|v| *v += 1);
    }
}

/// A running Consul agent double. Dropping it stops it and its check runner.
pub struct ConsulAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinSet<()>>,
    _runner: JoinSet<()>,
}

impl std::fmt::Debug for ConsulAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulAgent")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ConsulAgent {
    /// Starts the double on 127.0.0.1 (a free port), on the current tokio runtime.
    pub async fn start_new() -> std::io::Result<ConsulAgent> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index: 10,
                ..Default::default()
            }),
            changed: tokio::sync::watch::channel(0).0,
            drop_conns: tokio::sync::watch::channel(0).0,
        });
        let mut runner = JoinSet::new();
        runner.spawn(run_checks(shared.clone()));
        let mut agent = ConsulAgent {
            addr,
            shared,
            server: None,
            _runner: runner,
        };
        agent.serve(listener);
        Ok(agent)
    }

    /// `127.0.0.1:PORT`, the agent address targets name.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering: the listener and every connection close (an agent outage). The
    /// services and checks stay, and TTLs keep running.
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Answers again on the same port.
    pub async fn start(&mut self) -> std::io::Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// An agent restart that loses its local state (a new pod or VM with an empty data
    /// dir): connections drop, and every service and check is gone. Registrations must
    /// come back by themselves.
    pub async fn restart_forgetting(&mut self) -> std::io::Result<()> {
        self.stop();
        {
            let mut st = self.shared.lock();
            let names: BTreeSet<String> = st.services.values().map(|s| s.name.clone()).collect();
            st.services.clear();
            st.checks.clear();
            for n in names {
                self.shared.bump(&mut st, &n);
            }
        }
        self.start().await
    }

    /// Makes every request fail with `fault`, or answer normally again with `None`.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.lock().fault = fault;
    }

    /// Answers health queries with this body (status 200, the current index), or normally
    /// again with `None`.
    pub fn set_health_body(&self, body: Option<&str>) {
        let mut st = self.shared.lock();
        st.health_body = body.map(str::to_owned);
        st.index += 1;
        let i = st.index;
        for v in st.service_index.values_mut() {
            *v = i;
        }
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Turns ACLs on (default deny) with these tokens, or off with `None`. Blocked
    /// queries are not woken: a policy change does not change the catalog.
    pub fn set_acl(&self, acl: Option<Acl>) {
        self.shared.lock().acl = acl;
    }

    /// Drops every open connection mid-request, as a proxy or a crashed agent does.
    pub fn drop_connections(&self) {
        self.shared.drop_conns.send_modify(|v| *v += 1);
    }

    /// Restores a snapshot taken at `index`: every index moves back to it, and blocked
    /// queries return at once.
    pub fn restore_index(&self, index: u64) {
        let mut st = self.shared.lock();
        st.index = index;
        for v in st.service_index.values_mut() {
            *v = index;
        }
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// The current index of `service`, as `X-Consul-Index` gives it.
    pub fn index_of(&self, service: &str) -> u64 {
        let st = self.shared.lock();
        st.service_index.get(service).copied().unwrap_or(st.index)
    }

    /// Sets a check's status directly, as its runner would (`passing`, `warning`,
    /// `critical`); false if there is no such check.
    pub fn set_check_status(&self, check_id: &str, status: &str) -> bool {
        let mut st = self.shared.lock();
        set_status(&self.shared, &mut st, check_id, status, "set by the test")
    }

    /// The status of a check, if it exists.
    pub fn check_status(&self, check_id: &str) -> Option<String> {
        self.shared
            .lock()
            .checks
            .get(check_id)
            .map(|c| c.status.clone())
    }

    /// The IDs of the registered services.
    pub fn service_ids(&self) -> Vec<String> {
        self.shared.lock().services.keys().cloned().collect()
    }

    /// Requests seen so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many health queries were answered.
    pub fn health_queries(&self) -> u64 {
        self.shared.lock().health_queries
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let shared = self.shared.clone();
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Go's net package sets TCP_NODELAY on every connection, so Consul does.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let mut dropped = shared.drop_conns.subscribe();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn({
                        let shared = shared.clone();
                        move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = dropped.changed() => {}
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        self.server = Some(set);
    }
}

fn set_status(shared: &Shared, st: &mut State, check_id: &str, status: &str, output: &str) -> bool {
    let Some(c) = st.checks.get_mut(check_id) else {
        return false;
    };
    let now = Instant::now();
    if let Kind::Ttl(ttl) = c.kind {
        c.due = now + ttl;
    }
    if c.status == status && c.output == output {
        return true;
    }
    let was = std::mem::replace(&mut c.status, status.to_owned());
    c.output = output.to_owned();
    if status == "critical" {
        if was != "critical" {
            c.critical_since = Some(now);
        }
    } else {
        c.critical_since = None;
    }
    let service_id = c.service_id.clone();
    let name = st
        .services
        .get(&service_id)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    shared.bump(st, &name);
    let i = st.index;
    if let Some(c) = st.checks.get_mut(check_id) {
        c.modify_index = i;
    }
    true
}

/// Expires TTLs, runs due TCP/gRPC checks, reaps long-critical services.
async fn run_checks(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes = JoinSet::new();
    loop {
        tick.tick().await;
        while probes.try_join_next().is_some() {}
        let now = Instant::now();
        let mut st = shared.lock();
        let ids: Vec<String> = st.checks.keys().cloned().collect();
        for id in ids {
            let Some(c) = st.checks.get_mut(&id) else {
                continue;
            };
            match c.kind.clone() {
                Kind::Ttl(_) if now >= c.due && c.status != "critical" => {
                    set_status(&shared, &mut st, &id, "critical", "TTL expired");
                }
                Kind::Tcp(addr) if now >= c.due && !c.running => {
                    c.running = true;
                    c.due = now + c.interval;
                    let timeout = c.timeout;
                    let shared = shared.clone();
                    probes.spawn(async move {
                        let r =
                            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr))
                                .await;
                        let (status, output) = match r {
                            Ok(Ok(_)) => ("passing", format!("TCP connect {addr}: Success")),
                            Ok(Err(e)) => ("critical", format!("dial tcp {addr}: {e}")),
                            Err(_) => ("critical", format!("dial tcp {addr}: i/o timeout")),
                        };
                        finish_probe(&shared, &id, status, &output);
                    });
                }
                Kind::Grpc { target, tls } if now >= c.due && !c.running => {
                    c.running = true;
                    c.due = now + c.interval;
                    let timeout = c.timeout;
                    let shared = shared.clone();
                    probes.spawn(async move {
                        let (status, output) = grpc_probe(&target, tls, timeout).await;
                        finish_probe(&shared, &id, status, &output);
                    });
                }
                _ => {}
            }
        }
        // DeregisterCriticalServiceAfter.
        let doomed: BTreeSet<String> = st
            .checks
            .values()
            .filter(|c| match (c.critical_since, c.deregister_after) {
                (Some(since), Some(after)) => now.duration_since(since) >= after,
                _ => false,
            })
            .map(|c| c.service_id.clone())
            .collect();
        for sid in doomed {
            deregister(&shared, &mut st, &sid);
        }
    }
}

fn finish_probe(shared: &Shared, id: &str, status: &str, output: &str) {
    let mut st = shared.lock();
    if let Some(c) = st.checks.get_mut(id) {
        c.running = false;
    }
    set_status(shared, &mut st, id, status, output);
}

async fn grpc_probe(target: &str, tls: bool, timeout: Duration) -> (&'static str, String) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    if tls {
        return (
            "critical",
            "the double runs gRPC checks over plaintext only".into(),
        );
    }
    let (addr, service) = target.split_once('/').unwrap_or((target, ""));
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(s)) if s == ServingStatus::Serving as i32 => {
            ("passing", format!("gRPC check {target}: success"))
        }
        Ok(Ok(s)) => ("critical", format!("gRPC check {target}: status {s}")),
        Ok(Err(e)) => ("critical", format!("gRPC check {target}: {e}")),
        Err(_) => ("critical", format!("gRPC check {target}: timeout")),
    }
}

fn deregister(shared: &Shared, st: &mut State, service_id: &str) -> bool {
    let Some(s) = st.services.remove(service_id) else {
        return false;
    };
    st.checks.retain(|_, c| c.service_id != service_id);
    shared.bump(st, &s.name);
    true
}

/// `(key, value)` pairs of a query, decoded, repeated keys kept.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A Go duration (`55000ms`, `1m30s`, `10s`). Consul parses `wait` and check durations
/// with `time.ParseDuration`, which rejects a bare number other than 0. Written apart from
/// meshless's own parser on purpose: the double stands for Consul, so a bug in meshless's
/// parsing must not be mirrored by the agent it is tested against.
fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn text(code: u16, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(v: &Value, index: Option<u64>) -> Response<Body> {
    let mut resp =
        Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).boxed());
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(i) = index {
        h.insert("x-consul-index", http::HeaderValue::from(i));
        h.insert(
            "x-consul-knownleader",
            http::HeaderValue::from_static("true"),
        );
        h.insert("x-consul-lastcontact", http::HeaderValue::from_static("0"));
    }
    resp
}

/// Who is asking: `Ok(None)` when ACLs are off.
fn caller(st: &State, token: Option<&str>) -> Result<Option<AclToken>, Response<Body>> {
    let Some(acl) = &st.acl else {
        return Ok(None);
    };
    match token.filter(|t| !t.is_empty()) {
        None => Ok(Some(acl.anonymous.clone())),
        Some(t) => match acl.tokens.iter().find(|k| k.secret == t) {
            Some(k) => Ok(Some(k.clone())),
            None => Err(text(403, "ACL not found")),
        },
    }
}

fn denied(token: &AclToken, permission: &str, service: &str) -> Response<Body> {
    let accessor = if token.accessor.is_empty() {
        ANONYMOUS_ACCESSOR
    } else {
        &token.accessor
    };
    text(
        403,
        &format!(
            "Permission denied: token with AccessorID '{accessor}' lacks permission \
             '{permission}' on \"{service}\""
        ),
    )
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = query_pairs(req.uri().query().unwrap_or(""));
    let token = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone())
        });
    {
        let mut st = shared.lock();
        st.requests.push(format!(
            "{method} {}",
            req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
        ));
        if let Some(f) = st.fault.clone() {
            return text(f.code, &f.body);
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let has = |k: &str| query.iter().any(|(q, _)| q == k);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "health", "service", name]) => {
            health(shared, &percent_decode(name), &query, token.as_deref()).await
        }
        (Method::PUT, ["v1", "agent", "service", "register"]) => register(
            shared,
            &body,
            get("replace-existing-checks").is_some_and(|v| v == "true" || v == "1" || v.is_empty())
                && has("replace-existing-checks"),
            token.as_deref(),
        ),
        (Method::PUT, ["v1", "agent", "service", "deregister", id]) => {
            let id = percent_decode(id);
            let mut st = shared.lock();
            let name = st.services.get(&id).map(|s| s.name.clone());
            let who = match caller(&st, token.as_deref()) {
                Ok(w) => w,
                Err(r) => return r,
            };
            let Some(name) = name else {
                return text(
                    404,
                    &format!(
                        "Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."
                    ),
                );
            };
            if let Some(w) = &who
                && !w.may_write(&name)
            {
                return denied(w, "service:write", &name);
            }
            deregister(shared, &mut st, &id);
            text(200, "")
        }
        (Method::GET, ["v1", "agent", "service", id]) => {
            let id = percent_decode(id);
            let st = shared.lock();
            let who = match caller(&st, token.as_deref()) {
                Ok(w) => w,
                Err(r) => return r,
            };
            match st.services.get(&id) {
                Some(s) => {
                    if let Some(w) = &who
                        && !w.may_read(&s.name)
                    {
                        return denied(w, "service:read", &s.name);
                    }
                    json_response(&agent_service(s), None)
                }
                None => text(404, &format!("unknown service ID: {id}")),
            }
        }
        (Method::GET, ["v1", "agent", "services"]) => {
            let st = shared.lock();
            let who = match caller(&st, token.as_deref()) {
                Ok(w) => w,
                Err(r) => return r,
            };
            let all: Map<String, Value> = st
                .services
                .values()
                .filter(|s| who.as_ref().is_none_or(|w| w.may_read(&s.name)))
                .map(|s| (s.id.clone(), agent_service(s)))
                .collect();
            json_response(&Value::Object(all), None)
        }
        (Method::GET, ["v1", "agent", "checks"]) => {
            let st = shared.lock();
            let all: Map<String, Value> = st
                .checks
                .values()
                .map(|c| (c.id.clone(), check_json(&st, c)))
                .collect();
            json_response(&Value::Object(all), None)
        }
        (
            Method::PUT,
            [
                "v1",
                "agent",
                "check",
                verb @ ("pass" | "warn" | "fail" | "update"),
                id,
            ],
        ) => {
            let id = percent_decode(id);
            let (status, output) = match *verb {
                "pass" => ("passing".to_owned(), get("note").unwrap_or("").to_owned()),
                "warn" => ("warning".to_owned(), get("note").unwrap_or("").to_owned()),
                "fail" => ("critical".to_owned(), get("note").unwrap_or("").to_owned()),
                _ => {
                    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                        return text(400, "Request decode failed: invalid JSON");
                    };
                    let status = v["Status"].as_str().unwrap_or("").to_owned();
                    if !["passing", "warning", "critical"].contains(&status.as_str()) {
                        return text(400, &format!("Invalid check status: '{status}'"));
                    }
                    (status, v["Output"].as_str().unwrap_or("").to_owned())
                }
            };
            let mut st = shared.lock();
            let who = match caller(&st, token.as_deref()) {
                Ok(w) => w,
                Err(r) => return r,
            };
            let Some(c) = st.checks.get(&id) else {
                return text(
                    404,
                    &format!("CheckID \"{id}\" does not have associated TTL"),
                );
            };
            if !matches!(c.kind, Kind::Ttl(_)) {
                return text(
                    404,
                    &format!("CheckID \"{id}\" does not have associated TTL"),
                );
            }
            let name = st
                .services
                .get(&c.service_id)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            if let Some(w) = &who
                && !w.may_write(&name)
            {
                return denied(w, "service:write", &name);
            }
            set_status(shared, &mut st, &id, &status, &output);
            text(200, "")
        }
        (m, _) => text(
            if m == Method::GET || m == Method::PUT {
                404
            } else {
                405
            },
            &format!("the double does not serve {m} {path}"),
        ),
    }
}

fn agent_service(s: &Service) -> Value {
    json!({
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Address": s.address,
        "Port": s.port,
        "Weights": s.weights,
        "TaggedAddresses": s.tagged,
        "EnableTagOverride": false,
        "Datacenter": DATACENTER,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

fn check_json(st: &State, c: &Check) -> Value {
    let (name, tags) = st
        .services
        .get(&c.service_id)
        .map(|s| (s.name.clone(), s.tags.clone()))
        .unwrap_or_default();
    let kind = match c.kind {
        Kind::Ttl(_) => "ttl",
        Kind::Tcp(_) => "tcp",
        Kind::Grpc { .. } => "grpc",
        Kind::Other => "",
    };
    json!({
        "Node": NODE,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status,
        "Notes": "",
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": name,
        "ServiceTags": tags,
        "Type": kind,
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    })
}

fn node_check() -> Value {
    json!({
        "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status",
        "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
        "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
        "CreateIndex": 5, "ModifyIndex": 5,
    })
}

/// Reads a field that Consul decodes case-insensitively (`ID` / `id` / `Id`).
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn str_field(v: &Value, name: &str) -> String {
    field(v, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn register(
    shared: &Arc<Shared>,
    body: &[u8],
    replace: bool,
    token: Option<&str>,
) -> Response<Body> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return text(400, &format!("Request decode failed: {e}")),
    };
    let name = str_field(&v, "Name");
    if name.is_empty() {
        return text(400, "Invalid Service: Missing service name");
    }
    let id = Some(str_field(&v, "ID"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let port = match field(&v, "Port") {
        None | Some(Value::Null) => 0,
        Some(p) => match p.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) => p,
            None => {
                return text(400, &format!("Request decode failed: invalid port {p}"));
            }
        },
    };
    let address = str_field(&v, "Address");
    let tags: Vec<String> = field(&v, "Tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let meta = field(&v, "Meta")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if meta.values().any(|m| !m.is_string()) {
        return text(400, "Request decode failed: Meta values must be strings");
    }
    let weights = match field(&v, "Weights") {
        Some(w) if w.is_object() => {
            let p = field(w, "Passing").and_then(Value::as_u64).unwrap_or(1);
            let wa = field(w, "Warning").and_then(Value::as_u64).unwrap_or(1);
            if p == 0 {
                return text(400, "Invalid Service: Passing must be greater than 0");
            }
            json!({"Passing": p, "Warning": wa})
        }
        _ => json!({"Passing": 1, "Warning": 1}),
    };
    let mut tagged = Map::new();
    if let Some(t) = field(&v, "TaggedAddresses").and_then(Value::as_object) {
        for (k, a) in t {
            let addr = str_field(a, "Address");
            let p = field(a, "Port").and_then(Value::as_u64).unwrap_or(0);
            tagged.insert(k.clone(), json!({"Address": addr, "Port": p}));
        }
    }
    if address.parse::<std::net::Ipv4Addr>().is_ok() {
        for k in ["lan_ipv4", "wan_ipv4"] {
            tagged
                .entry(k)
                .or_insert_with(|| json!({"Address": address, "Port": port}));
        }
    }
    // Checks: `Check` and/or `Checks`.
    let mut defs: Vec<Value> = Vec::new();
    if let Some(c) = field(&v, "Check").filter(|c| c.is_object()) {
        defs.push(c.clone());
    }
    if let Some(cs) = field(&v, "Checks").and_then(Value::as_array) {
        defs.extend(cs.iter().cloned());
    }
    let many = defs.len() > 1;
    let mut new_checks = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let cid = Some(str_field(d, "CheckID"))
            .filter(|s| !s.is_empty())
            .or_else(|| Some(str_field(d, "ID")).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| {
                if many {
                    format!("service:{id}:{}", i + 1)
                } else {
                    format!("service:{id}")
                }
            });
        let dur = |k: &str| -> Result<Option<Duration>, Response<Body>> {
            match field(d, k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                None => Ok(None),
                Some(s) => go_duration(s).map(Some).ok_or_else(|| {
                    text(
                        400,
                        &format!("Request decode failed: time: invalid duration \"{s}\""),
                    )
                }),
            }
        };
        let ttl = match dur("TTL") {
            Ok(t) => t,
            Err(r) => return r,
        };
        let interval = match dur("Interval") {
            Ok(t) => t,
            Err(r) => return r,
        };
        let timeout = match dur("Timeout") {
            Ok(t) => t.unwrap_or(Duration::from_secs(10)),
            Err(r) => return r,
        };
        let deregister_after = match dur("DeregisterCriticalServiceAfter") {
            Ok(t) => t,
            Err(r) => return r,
        };
        let tcp = str_field(d, "TCP");
        let grpc = str_field(d, "GRPC");
        let kind = if let Some(t) = ttl {
            Kind::Ttl(t)
        } else if !tcp.is_empty() {
            Kind::Tcp(tcp)
        } else if !grpc.is_empty() {
            Kind::Grpc {
                target: grpc,
                tls: field(d, "GRPCUseTLS")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        } else {
            Kind::Other
        };
        if !matches!(kind, Kind::Ttl(_) | Kind::Other) && interval.is_none() {
            return text(
                400,
                &format!("Invalid check: Interval is required for check {cid:?}"),
            );
        }
        let status = str_field(d, "Status");
        if !status.is_empty() && !["passing", "warning", "critical"].contains(&status.as_str()) {
            return text(400, &format!("Invalid check status: '{status}'"));
        }
        new_checks.push((
            cid,
            str_field(d, "Name"),
            status,
            kind,
            interval.unwrap_or_default(),
            timeout,
            deregister_after,
        ));
    }

    let mut st = shared.lock();
    let who = match caller(&st, token) {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(w) = &who
        && !w.may_write(&name)
    {
        return denied(w, "service:write", &name);
    }
    let old_name = st.services.get(&id).map(|s| s.name.clone());
    let create_index = st
        .services
        .get(&id)
        .map(|s| s.create_index)
        .unwrap_or(st.index + 1);
    let keep: BTreeSet<String> = new_checks.iter().map(|c| c.0.clone()).collect();
    if replace {
        st.checks
            .retain(|cid, c| c.service_id != id || keep.contains(cid));
    }
    let now = Instant::now();
    for (cid, cname, status, kind, interval, timeout, deregister_after) in new_checks {
        let existing = st.checks.get(&cid).filter(|c| c.service_id == id);
        let status = if !status.is_empty() {
            status
        } else {
            existing
                .map(|c| c.status.clone())
                .unwrap_or_else(|| "critical".into())
        };
        let due = match kind {
            Kind::Ttl(t) => now + t,
            _ => now,
        };
        let critical_since = (status == "critical")
            .then_some(existing.and_then(|c| c.critical_since).unwrap_or(now));
        let cname = if cname.is_empty() {
            format!("Service '{name}' check")
        } else {
            cname
        };
        let c = Check {
            id: cid.clone(),
            name: cname,
            service_id: id.clone(),
            status,
            output: String::new(),
            kind,
            interval,
            timeout,
            deregister_after,
            due,
            critical_since,
            running: false,
            create_index: existing.map(|c| c.create_index).unwrap_or(st.index + 1),
            modify_index: st.index + 1,
        };
        st.checks.insert(cid, c);
    }
    let svc = Service {
        id: id.clone(),
        name: name.clone(),
        tags,
        address,
        port,
        meta,
        weights,
        tagged,
        create_index,
        modify_index: st.index + 1,
    };
    st.services.insert(id, svc);
    if let Some(old) = old_name.filter(|o| *o != name) {
        shared.bump(&mut st, &old);
    }
    shared.bump(&mut st, &name);
    text(200, "")
}

async fn health(
    shared: &Arc<Shared>,
    name: &str,
    query: &[(String, String)],
    token: Option<&str>,
) -> Response<Body> {
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let passing = query
        .iter()
        .any(|(k, v)| k == "passing" && v != "false" && v != "0");
    let tags: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    if let Some(dc) = get("dc").filter(|d| !d.is_empty() && *d != DATACENTER) {
        return text(500, &format!("No path to datacenter: {dc}"));
    }
    let index: Option<u64> = match get("index") {
        None => None,
        Some(i) => match i.parse() {
            Ok(i) => Some(i),
            Err(_) => return text(400, &format!("Invalid index: {i}")),
        },
    };
    let wait = match get("wait") {
        None => DEFAULT_WAIT,
        Some(w) => match go_duration(w) {
            Some(w) => w.min(MAX_WAIT),
            None => return text(400, &format!("Invalid wait time: {w}")),
        },
    };
    // Block while the service's index is at or below the one asked for.
    if let Some(asked) = index.filter(|&i| i > 0) {
        let jitter = wait.as_nanos() as u64 / 16;
        let jitter = if jitter > 0 {
            Duration::from_nanos(rand::random::<u64>() % jitter)
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + wait + jitter;
        let mut changed = shared.changed.subscribe();
        changed.borrow_and_update();
        loop {
            let current = {
                let st = shared.lock();
                st.service_index.get(name).copied().unwrap_or(st.index)
            };
            if current > asked {
                break;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {
                    // A restore moved the index back: answer at once.
                    let st = shared.lock();
                    let now = st.service_index.get(name).copied().unwrap_or(st.index);
                    if now < asked {
                        break;
                    }
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    let mut st = shared.lock();
    st.health_queries += 1;
    let idx = st
        .service_index
        .get(name)
        .copied()
        .unwrap_or(st.index)
        .max(1);
    if let Some(raw) = st.health_body.clone() {
        let mut resp = text(200, &raw);
        resp.headers_mut()
            .insert("x-consul-index", http::HeaderValue::from(idx));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    let who = match caller(&st, token) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut entries = Vec::new();
    let mut filtered = false;
    for s in st.services.values().filter(|s| s.name == name) {
        if !tags.iter().all(|t| s.tags.iter().any(|st| st == t)) {
            continue;
        }
        let mut checks = vec![node_check()];
        checks.extend(
            st.checks
                .values()
                .filter(|c| c.service_id == s.id)
                .map(|c| check_json(&st, c)),
        );
        if passing && checks.iter().any(|c| c["Status"] != "passing") {
            continue;
        }
        if let Some(w) = &who
            && !w.may_read(&s.name)
        {
            filtered = true;
            continue;
        }
        let mut service = agent_service(s);
        service.as_object_mut().map(|o| o.remove("Datacenter"));
        entries.push(json!({
            "Node": {
                "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
                "Node": NODE,
                "Address": "127.0.0.1",
                "Datacenter": DATACENTER,
                "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": 5,
                "ModifyIndex": 5,
            },
            "Service": service,
            "Checks": checks,
        }));
    }
    let mut resp = json_response(&Value::Array(entries), Some(idx));
    if filtered && token.is_some_and(|t| !t.is_empty()) {
        resp.headers_mut().insert(
            "x-consul-results-filtered-by-acls",
            http::HeaderValue::from_static("true"),
        );
    }
    resp
}

/// One HTTP/1 request to a Consul agent (the double or a real one), for tests that write
/// and read records as go-zero's or kratos's code would: `(status, X-Consul-Index, body)`.
/// Bounded by 10 s.
pub async fn request(
    agent: &str,
    method: Method,
    path_and_query: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> std::io::Result<(u16, Option<u64>, Bytes)> {
    let io_err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let call = async {
        let stream = tokio::net::TcpStream::connect(agent).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io_err(&e))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", agent);
        if let Some(t) = token {
            req = req.header("x-consul-token", t);
        }
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap_or_default())
            .unwrap_or_default();
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| io_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io_err(&e))?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| io_err(&e))?
            .to_bytes();
        conn.abort();
        Ok((status, index, body))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("55000ms"), Some(Duration::from_secs(55)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("1x"), None);
        assert_eq!(go_duration(""), None);
    }

    #[tokio::test]
    async fn register_query_and_block() {
        let agent = ConsulAgent::start_new().await.unwrap();
        let a = agent.addr().to_string();
        let reg = json!({"ID": "s1", "Name": "svc", "Address": "127.0.0.1", "Port": 1,
                         "Check": {"TTL": "10s", "Status": "passing"}});
        let (code, _, _) = request(
            &a,
            Method::PUT,
            "/v1/agent/service/register",
            Some(reg),
            None,
        )
        .await
        .unwrap();
        assert_eq!(code, 200);
        assert_eq!(agent.check_status("service:s1").as_deref(), Some("passing"));
        let (code, idx, body) = request(
            &a,
            Method::GET,
            "/v1/health/service/svc?passing=1",
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(code, 200);
        let list: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["Service"]["TaggedAddresses"]["lan_ipv4"]["Port"], 1);
        let idx = idx.unwrap();
        // A blocking query returns when the check fails.
        let q = format!("/v1/health/service/svc?passing=1&index={idx}&wait=5s");
        let blocked = tokio::spawn({
            let a = a.clone();
            async move { request(&a, Method::GET, &q, None, None).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!blocked.is_finished());
        assert!(agent.set_check_status("service:s1", "critical"));
        let (_, idx2, body) = tokio::time::timeout(Duration::from_secs(2), blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(idx2.unwrap() > idx);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!([]));
    }
}
