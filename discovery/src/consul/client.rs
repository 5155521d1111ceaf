//! A small Consul HTTP API client: only the endpoints meshless uses.
//!
//! Why not rs-consul 0.15, the maintained async crate: it registers only through the
//! catalog (no `/v1/agent/service/register`, no TTL check pass), its `Service` type has
//! no `Meta`, `Weights` or `TaggedAddresses` (and types `TaggedAddresses` with the wrong
//! shape), so neither go-zero's nor kratos's records can be read or written with it; it
//! also pulls in ureq (a second HTTP stack), slog-scope and bon, and its fixed 5 s
//! timeout cuts every blocking query short. This client runs on the hyper and hyper-util
//! already in the graph, one connection pool per agent.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::text::error_chain as chain;
use crate::{DiscoveryError, ErrorKind};

/// The largest answer read from the agent (a health list of some thousands of instances
/// fits many times over).
const MAX_BODY: usize = 64 << 20;
/// Timeout of a request that does not block (registration, check updates).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One agent: where it is and how we authenticate.
#[derive(Clone)]
pub(crate) struct Agent {
    addr: String,
    token: Option<HeaderValue>,
    basic: Option<HeaderValue>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("addr", &self.addr).finish()
    }
}

/// An answer from the agent.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// `X-Consul-Index`, when present and a number.
    pub(crate) index: Option<u64>,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: the token may not see everything.
    pub(crate) filtered: bool,
    pub(crate) body: Bytes,
}

impl Answer {
    /// The body as text for error messages, cut short.
    pub(crate) fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        let t = t.trim();
        if t.len() > 300 {
            let mut end = 300;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &t[..end])
        } else {
            t.to_owned()
        }
    }
}

impl Agent {
    /// A client for the agent at `addr` (`host:port`).
    pub(crate) fn new(
        addr: &str,
        token: Option<&str>,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Agent, String> {
        let token = token
            .map(|t| {
                HeaderValue::from_str(t).map_err(|_| "the ACL token has characters HTTP forbids")
            })
            .transpose()?;
        let basic = user
            .map(|u| {
                let raw = format!("{u}:{}", password.unwrap_or_default());
                let enc = base64::engine::general_purpose::STANDARD.encode(raw);
                HeaderValue::from_str(&format!("Basic {enc}"))
                    .map_err(|_| "the basic-auth user has characters HTTP forbids")
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Agent {
            addr: addr.to_owned(),
            token,
            basic,
            client,
        })
    }

    /// The agent's `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request, bounded by `timeout` as a whole (headers and body).
    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, DiscoveryError> {
        let uri = format!("http://{}{path_and_query}", self.addr);
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t.clone());
        }
        if let Some(b) = &self.basic {
            req = req.header(http::header::AUTHORIZATION, b.clone());
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| {
                DiscoveryError::new(
                    ErrorKind::Other,
                    format!("cannot build the request {method} {uri}: {e}"),
                )
            })?;
        let unavailable = |what: String| {
            DiscoveryError::new(
                ErrorKind::Unavailable,
                format!(
                    "Consul agent {} {what}: is the agent running and reachable?",
                    self.addr
                ),
            )
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                unavailable(format!(
                    "did not answer {method} {path_and_query}: {}",
                    chain(&e)
                ))
            })?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let filtered = resp
                .headers()
                .get("x-consul-results-filtered-by-acls")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    unavailable(format!(
                        "broke off its answer to {method} {path_and_query}: {e}"
                    ))
                })?
                .to_bytes();
            Ok(Answer {
                status,
                index,
                filtered,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "did not answer {method} {path_and_query} within {timeout:?}"
            ))),
        }
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
