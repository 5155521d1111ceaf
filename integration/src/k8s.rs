//! A loopback double of the Kubernetes API server, for EndpointSlices only, faithful to the
//! documented API semantics that discovery depends on:
//!
//! - list with `resourceVersion`, `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`) and
//!   `limit`/`continue` (each paginated list is a consistent snapshot);
//! - watch with `resourceVersion`, `allowWatchBookmarks` and `timeoutSeconds`: newline-
//!   delimited `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` and `ERROR` events; a watch from a
//!   resource version older than the compacted history gets an `ERROR` event with a 410
//!   `Status` ("too old resource version"), as etcd compaction causes;
//! - create (POST), replace (PUT), get and delete by name, with `metadata.resourceVersion`
//!   and 409/404 `Status` answers;
//! - injected faults: a `Status` answer for every request (403 with the real server's
//!   message, 401, 404, 500, ...), watch streams dropped mid-stream, and outages (the
//!   listener and every connection closed, then restarted on the same port).
//!
//! Point a `kube::Client` at [`KubeApi::url`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

/// The path prefix of the one resource the double serves.
const PREFIX: &str = "/apis/discovery.k8s.io/v1/namespaces/";
/// How often an open watch gets a BOOKMARK when the client asked for bookmarks. Real API
/// servers send one about every minute; the double sends them often so tests see them.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);
/// Capacity of the event fan-out; a watcher that falls this far behind is disconnected.
const EVENT_BUFFER: usize = 4096;

type Body = BoxBody<Bytes, std::io::Error>;

/// A fault every request gets instead of its answer.
#[derive(Debug, Clone)]
pub struct Fault {
    /// HTTP status code (403, 401, 404, 500, 503...).
    pub code: u16,
    /// The `Status.reason` (`Forbidden`, `Unauthorized`, ...).
    pub reason: String,
    /// The `Status.message`.
    pub message: String,
}

impl Fault {
    /// 403 with the message a real API server gives a service account without RBAC.
    pub fn forbidden(namespace: &str, service_account: &str) -> Self {
        Fault {
            code: 403,
            reason: "Forbidden".into(),
            message: format!(
                "endpointslices.discovery.k8s.io is forbidden: User \"system:serviceaccount:{namespace}:{service_account}\" cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"{namespace}\""
            ),
        }
    }

    /// 401, as for an expired or wrong token.
    pub fn unauthorized() -> Self {
        Fault {
            code: 401,
            reason: "Unauthorized".into(),
            message: "Unauthorized".into(),
        }
    }

    /// Any other status.
    pub fn status(code: u16, reason: &str, message: &str) -> Self {
        Fault {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
struct WatchEvent {
    rv: u64,
    kind: &'static str,
    namespace: String,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Objects by (namespace, name).
    objects: BTreeMap<(String, String), Value>,
    /// Every change, in order; entries at or below `compacted` are gone.
    history: Vec<WatchEvent>,
    compacted: u64,
    fault: Option<Fault>,
    /// Snapshots of paginated lists, by continue-token id.
    pages: BTreeMap<u64, (u64, Vec<Value>)>,
    next_page_id: u64,
    /// Requests seen, as `METHOD path?query`, for tests that check what the client sent.
    requests: Vec<String>,
    /// Watches answered with 410 Gone.
    gone: u64,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
    /// Bumped to make every open watch drop its connection.
    drop_watches: tokio::sync::watch::Sender<u64>,
}

/// A running API server double. Dropping it stops it.
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinSet<()>>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").field("addr", &self.addr).finish()
    }
}

impl KubeApi {
    /// Starts the double on 127.0.0.1 (a free port), on the current tokio runtime.
    pub async fn start() -> std::io::Result<KubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            drop_watches: tokio::sync::watch::channel(0).0,
        });
        let mut api = KubeApi {
            addr,
            shared,
            server: None,
        };
        api.serve(listener);
        Ok(api)
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: the listener and every connection close (an API server outage).
    pub fn stop(&mut self) {
        self.server = None; // dropping the JoinSet aborts the accept loop and connections
    }

    /// Starts answering again on the same port, with the same objects.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes every request fail with `fault` (or answer normally again with `None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().fault = fault;
    }

    /// Drops every open watch connection mid-stream, as a load balancer or API server
    /// restart does.
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|v| *v += 1);
    }

    /// Compacts the history, as etcd does: every resource version seen so far becomes too
    /// old to watch from, and open watches break. A client resuming its watch gets an ERROR
    /// event with a 410 `Status` and must relist.
    pub fn compact(&self) {
        {
            let mut st = self.lock();
            st.compacted = st.rv;
            // Other resources moved on meanwhile: a fresh list is newer than the compaction.
            st.rv += 1;
            st.history.clear();
        }
        self.drop_watches();
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// How many watches were answered with 410 Gone.
    pub fn gone_answers(&self) -> u64 {
        self.lock().gone
    }

    /// Requests seen so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Creates or replaces an object directly (as a controller would), returning its new
    /// resource version. `object` must have `metadata.name`.
    pub fn apply(&self, namespace: &str, object: Value) -> u64 {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut st = self.lock();
        let kind = if st
            .objects
            .contains_key(&(namespace.to_owned(), name.clone()))
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.commit(&mut st, namespace, name, object, kind)
    }

    /// Deletes an object directly; false if it did not exist.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        let mut st = self.lock();
        match st.objects.remove(&(namespace.to_owned(), name.to_owned())) {
            Some(obj) => {
                st.rv += 1;
                let mut obj = obj;
                obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                let ev = WatchEvent {
                    rv: st.rv,
                    kind: "DELETED",
                    namespace: namespace.to_owned(),
                    object: obj,
                };
                st.history.push(ev.clone());
                let _ = self.shared.events.send(ev);
                true
            }
            None => false,
        }
    }

    fn commit(
        &self,
        st: &mut State,
        namespace: &str,
        name: String,
        mut object: Value,
        kind: &'static str,
    ) -> u64 {
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        object["metadata"]["namespace"] = json!(namespace);
        object["apiVersion"] = json!("discovery.k8s.io/v1");
        object["kind"] = json!("EndpointSlice");
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{namespace}-{name}"));
        }
        st.objects
            .insert((namespace.to_owned(), name), object.clone());
        let ev = WatchEvent {
            rv: st.rv,
            kind,
            namespace: namespace.to_owned(),
            object,
        };
        st.history.push(ev.clone());
        let _ = self.shared.events.send(ev);
        st.rv
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let api = ApiHandle {
            shared: self.shared.clone(),
        };
        set.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = api.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        self.server = Some(set);
    }
}

/// What a connection task needs of the double.
#[derive(Clone)]
struct ApiHandle {
    shared: Arc<Shared>,
}

impl ApiHandle {
    fn api(&self) -> KubeApi {
        // A non-serving view used to reuse `commit`/`delete`; it owns no server.
        KubeApi {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared: self.shared.clone(),
            server: None,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let query = parse_query(req.uri().query().unwrap_or(""));
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        {
            let api = self.api();
            let mut st = api.lock();
            st.requests.push(format!(
                "{method} {}",
                req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
            ));
            if let Some(f) = st.fault.clone() {
                return status(f.code, &f.reason, &f.message);
            }
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            );
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name) = match parts.as_slice() {
            [ns, "endpointslices"] => (ns.to_string(), None),
            [ns, "endpointslices", name] => (ns.to_string(), Some(name.to_string())),
            _ => {
                return status(
                    404,
                    "NotFound",
                    &format!("the server could not find the requested resource ({path})"),
                );
            }
        };
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        match (method, name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(&ns, &query)
            }
            (Method::GET, None) => self.list(&ns, &query),
            (Method::GET, Some(name)) => match self.api().lock().objects.get(&(ns, name.clone())) {
                Some(o) => json_response(200, o),
                None => not_found(&name),
            },
            (Method::POST, None) => self.create(&ns, &body),
            (Method::PUT, Some(name)) => self.replace(&ns, &name, &body),
            (Method::DELETE, Some(name)) => {
                let api = self.api();
                let obj = api.lock().objects.get(&(ns.clone(), name.clone())).cloned();
                match obj {
                    Some(o) if api.delete(&ns, &name) => json_response(200, &o),
                    _ => not_found(&name),
                }
            }
            (m, _) => status(
                405,
                "MethodNotAllowed",
                &format!("{m} is not supported by the double"),
            ),
        }
    }

    fn create(&self, ns: &str, body: &[u8]) -> Response<Body> {
        let Ok(obj) = serde_json::from_slice::<Value>(body) else {
            return status(400, "BadRequest", "the body is not JSON");
        };
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
            return status(422, "Invalid", "metadata.name: Required value");
        };
        let api = self.api();
        let mut st = api.lock();
        if st.objects.contains_key(&(ns.to_owned(), name.clone())) {
            return status(
                409,
                "AlreadyExists",
                &format!("endpointslices.discovery.k8s.io \"{name}\" already exists"),
            );
        }
        api.commit(&mut st, ns, name.clone(), obj, "ADDED");
        let stored = st
            .objects
            .get(&(ns.to_owned(), name))
            .cloned()
            .unwrap_or_default();
        json_response(201, &stored)
    }

    fn replace(&self, ns: &str, name: &str, body: &[u8]) -> Response<Body> {
        let Ok(obj) = serde_json::from_slice::<Value>(body) else {
            return status(400, "BadRequest", "the body is not JSON");
        };
        let api = self.api();
        let mut st = api.lock();
        if !st.objects.contains_key(&(ns.to_owned(), name.to_owned())) {
            return not_found(name);
        }
        api.commit(&mut st, ns, name.to_owned(), obj, "MODIFIED");
        let stored = st
            .objects
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default();
        json_response(200, &stored)
    }

    fn list(&self, ns: &str, query: &BTreeMap<String, String>) -> Response<Body> {
        let selector = query.get("labelSelector").map(String::as_str).unwrap_or("");
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > 0);
        let api = self.api();
        let mut st = api.lock();
        // A continued list pages through the snapshot its first page took.
        let (rv, items, offset, id) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let parsed = token.split_once(':').and_then(|(id, off)| {
                    Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?))
                });
                let Some((id, off)) = parsed else {
                    return status(400, "BadRequest", "invalid continue token");
                };
                match st.pages.get(&id) {
                    Some((rv, items)) => (*rv, items.clone(), off, id),
                    None => {
                        return status(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        );
                    }
                }
            }
            None => {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((o_ns, _), o)| o_ns == ns && matches_selector(o, selector))
                    .map(|(_, o)| o.clone())
                    .collect();
                st.next_page_id += 1;
                let id = st.next_page_id;
                let rv = st.rv;
                st.pages.insert(id, (rv, items.clone()));
                (rv, items, 0, id)
            }
        };
        let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
        let page: Vec<Value> = items.get(offset..end).unwrap_or_default().to_vec();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if end < items.len() {
            metadata["continue"] = json!(format!("{id}:{end}"));
            metadata["remainingItemCount"] = json!(items.len() - end);
        } else {
            st.pages.remove(&id);
        }
        json_response(
            200,
            &json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": metadata, "items": page}),
        )
    }

    fn watch(&self, ns: &str, query: &BTreeMap<String, String>) -> Response<Body> {
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
        let api = self.api();
        // Subscribe before reading history, so nothing falls between the two.
        let mut live = self.shared.events.subscribe();
        let mut drops = self.shared.drop_watches.subscribe();
        let (backlog, too_old, current) = {
            let mut st = api.lock();
            let too_old = since != 0 && since <= st.compacted;
            if too_old {
                st.gone += 1;
            }
            let backlog: Vec<WatchEvent> = st
                .history
                .iter()
                .filter(|e| e.rv > since && e.namespace == ns)
                .cloned()
                .collect();
            (backlog, too_old, st.rv)
        };
        let ns = ns.to_owned();
        tokio::spawn(async move {
            let send = |tx: &mpsc::Sender<_>, v: Value| {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                let tx = tx.clone();
                async move { tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_ok() }
            };
            if too_old {
                let st = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": format!("too old resource version: {since} ({current})"),
                    "reason": "Expired", "code": 410}});
                let _ = send(&tx, st).await;
                return;
            }
            let mut last = since;
            for ev in backlog {
                if matches_selector(&ev.object, &selector)
                    && !send(&tx, json!({"type": ev.kind, "object": ev.object})).await
                {
                    return;
                }
                last = ev.rv;
            }
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            tick.tick().await;
            loop {
                let until_deadline = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ev = live.recv() => match ev {
                        Ok(ev) if ev.rv > last && ev.namespace == ns => {
                            last = ev.rv;
                            if matches_selector(&ev.object, &selector)
                                && !send(&tx, json!({"type": ev.kind, "object": ev.object})).await {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Too slow to keep up, or the double is gone: end the watch.
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let rv = last.max(current);
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice",
                            "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}}});
                        if !send(&tx, bm).await {
                            return;
                        }
                    }
                    _ = drops.changed() => {
                        // Break the connection, not just the stream: an error aborts it.
                        let _ = tx
                            .send(Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionReset,
                                "watch dropped by the test",
                            )))
                            .await;
                        return;
                    }
                    _ = until_deadline => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

pub(crate) fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors: `k=v`, `k==v`, `k!=v` and `k` (exists), comma-separated.
fn matches_selector(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
        .map_err(|never: Infallible| match never {});
    let mut resp = Response::new(BodyExt::boxed(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn not_found(name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        &format!("endpointslices.discovery.k8s.io \"{name}\" not found"),
    )
}

/// An EndpointSlice for `service` as the EndpointSlice controller writes it.
///
/// `endpoints` are `(ip, ready, serving, terminating)`; `ports` are `(name, port)`.
pub fn endpoint_slice(
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, bool, bool, bool)],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        "endpoints": endpoints.iter().map(|(ip, r, s, t)| json!({
            "addresses": [ip],
            "conditions": {"ready": r, "serving": s, "terminating": t},
            "targetRef": {"kind": "Pod", "name": format!("pod-{ip}")},
        })).collect::<Vec<_>>(),
    })
}
