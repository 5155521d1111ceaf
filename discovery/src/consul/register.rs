//! Registration with a Consul agent (`PUT /v1/agent/service/register`) in the formats
//! go-zero and kratos write, kept alive with a TTL check.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::client::{Agent, Answer, REQUEST_TIMEOUT, enc};
use super::target::{check_agent, duration};
use crate::backoff::{Backoff, BackoffConfig};
use crate::{
    DEREGISTER_TIMEOUT, DiscoveryError, ErrorKind, Instance, Registrar, Registration, Reporter,
    Stop,
};

/// Which framework's record a registration writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsulFormat {
    /// go-zero (zero-contrib `zrpc/registry/consul/register.go`): ID
    /// `<name>-<host>-<port>`, Name `<name>`, the configured Tags, Meta = the metadata,
    /// Address and Port, and one TTL check with the service id as its CheckID,
    /// DeregisterCriticalServiceAfter 3 × TTL. go-zero clients read `Service.Address`
    /// (or `Node.Address`) and `Service.Port`.
    #[default]
    GoZero,
    /// kratos (`contrib/registry/consul/client.go`, `Register`): ID and Name from the
    /// instance, Tags `version=<v>`, Meta = the metadata (the weight as `Meta.weight`),
    /// `TaggedAddresses.grpc = {Address: "grpc://host:port", Port}`, Address and Port, a
    /// TCP check every 10 s and a TTL check `service:<id>`, both deregistered after 600 s
    /// critical. kratos clients find endpoints only through `TaggedAddresses`.
    Kratos,
}

impl std::str::FromStr for ConsulFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "go-zero" | "gozero" | "go_zero" => Ok(ConsulFormat::GoZero),
            "kratos" => Ok(ConsulFormat::Kratos),
            _ => Err(format!(
                "unknown format `{s}`: expected `go-zero` or `kratos`"
            )),
        }
    }
}

/// go-zero's TTL (`c.TTL` defaults to 20 s) and kratos's (twice its 10 s health-check
/// interval): the same 20 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(20);
/// kratos's DeregisterCriticalServiceAfter.
pub const KRATOS_DEREGISTER_AFTER: Duration = Duration::from_secs(600);
/// kratos's TCP check interval.
pub const KRATOS_TCP_INTERVAL: Duration = Duration::from_secs(10);

/// An optional gRPC health check run by the agent (`GRPC` + `Interval`), beside the TTL
/// check: the agent calls `grpc.health.v1.Health/Check` on the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCheck {
    /// How often the agent checks.
    pub interval: Duration,
    /// The service name to check (`host:port/<service>`); empty checks the server as a
    /// whole.
    pub service: String,
    /// Whether the agent speaks TLS to the instance.
    pub tls: bool,
}

/// Registration in Consul. Build with [`ConsulRegistrar::new`] or
/// [`from_target`](ConsulRegistrar::from_target), then [`Registrar::register`].
///
/// ```no_run
/// use meshless_discovery::consul::{ConsulFormat, ConsulRegistrar};
/// use meshless_discovery::{Instance, Registrar};
/// # async fn run() {
/// let registrar = ConsulRegistrar::new("127.0.0.1:8500").format(ConsulFormat::Kratos);
/// let registration = registrar
///     .register(Instance::new("helloworld", "10.0.0.1:9000").with_version("v1"))
///     .unwrap();
/// // ... serve; dropping `registration` deregisters.
/// # drop(registration);
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsulRegistrar {
    /// The agent's `host:port`.
    pub agent: String,
    /// The ACL token (`service:write` on the service). Default: `CONSUL_HTTP_TOKEN`.
    pub token: Option<String>,
    /// The record format.
    pub format: ConsulFormat,
    /// The TTL check's TTL.
    pub ttl: Duration,
    /// How often the TTL check is passed. Default: TTL / 2, so one lost update does not
    /// let the check expire (go-zero passes every TTL − 1 s, kratos every TTL / 2).
    pub pass_interval: Option<Duration>,
    /// DeregisterCriticalServiceAfter. Default: 3 × TTL (go-zero), 600 s (kratos).
    pub deregister_after: Option<Duration>,
    /// Tags written besides the format's own.
    pub tags: Vec<String>,
    /// A TCP check's interval. Default: none (go-zero), 10 s (kratos).
    pub tcp_check: Option<Duration>,
    /// A gRPC health check, none by default.
    pub grpc_check: Option<GrpcCheck>,
    /// The backoff between failed attempts to register.
    pub backoff: BackoffConfig,
}

impl ConsulRegistrar {
    /// A go-zero-format registrar for the agent at `agent` (`host:port`).
    pub fn new(agent: impl Into<String>) -> Self {
        ConsulRegistrar {
            agent: agent.into(),
            token: std::env::var("CONSUL_HTTP_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            format: ConsulFormat::GoZero,
            ttl: DEFAULT_TTL,
            pass_interval: None,
            deregister_after: None,
            tags: Vec::new(),
            tcp_check: None,
            grpc_check: None,
            backoff: BackoffConfig::registrar(),
        }
    }

    /// A registrar from `consul://agent-host:8500[?token=..&format=go-zero|kratos&ttl=20s]`,
    /// the form `meshless register` takes.
    pub fn from_target(target: &str) -> Result<Self, DiscoveryError> {
        let bad = |why: String| {
            DiscoveryError::new(
                ErrorKind::Other,
                format!("registration target `{target}`: {why}"),
            )
        };
        let rest = target
            .strip_prefix("consul://")
            .ok_or_else(|| bad("expected `consul://agent-host:8500`".into()))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad(
                "a registration target names only the agent; give the service with --name".into(),
            ));
        }
        check_agent(authority).map_err(|w| bad(format!("agent address `{authority}` {w}")))?;
        let mut r = ConsulRegistrar::new(authority);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned();
            match k {
                "token" => r.token = Some(v).filter(|t| !t.is_empty()),
                "format" => r.format = v.parse().map_err(bad)?,
                "ttl" => r = r.ttl(duration(&v).map_err(|e| bad(format!("`ttl`: {e}")))?),
                _ => {
                    return Err(bad(format!(
                        "unknown parameter `{k}`; known: token, format, ttl"
                    )));
                }
            }
        }
        Ok(r)
    }

    /// Sets the ACL token.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the format; kratos also turns on its TCP check.
    #[must_use]
    pub fn format(mut self, format: ConsulFormat) -> Self {
        self.format = format;
        if format == ConsulFormat::Kratos && self.tcp_check.is_none() {
            self.tcp_check = Some(KRATOS_TCP_INTERVAL);
        }
        self
    }

    /// Sets the TTL (at least 1 s).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Sets how often the TTL check is passed.
    #[must_use]
    pub fn pass_interval(mut self, every: Duration) -> Self {
        self.pass_interval = Some(every);
        self
    }

    /// Sets DeregisterCriticalServiceAfter.
    #[must_use]
    pub fn deregister_after(mut self, after: Duration) -> Self {
        self.deregister_after = Some(after);
        self
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the TCP check (`None`: no TCP check).
    #[must_use]
    pub fn tcp_check(mut self, interval: Option<Duration>) -> Self {
        self.tcp_check = interval;
        self
    }

    /// Adds a gRPC health check run by the agent.
    #[must_use]
    pub fn grpc_check(mut self, check: GrpcCheck) -> Self {
        self.grpc_check = Some(check);
        self
    }

    /// Sets the backoff between failed registrations.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// The service id an instance is registered under.
    pub fn service_id(&self, instance: &Instance) -> String {
        if !instance.id.is_empty() {
            return instance.id.clone();
        }
        let (host, port) = split(&instance.addr);
        format!("{}-{host}-{port}", instance.name)
    }

    /// The id of the TTL check.
    pub fn check_id(&self, instance: &Instance) -> String {
        let id = self.service_id(instance);
        match self.format {
            ConsulFormat::GoZero => id,
            ConsulFormat::Kratos => format!("service:{id}"),
        }
    }

    /// The JSON body of `PUT /v1/agent/service/register` for `instance`.
    pub fn registration_body(&self, instance: &Instance) -> Value {
        let id = self.service_id(instance);
        let (host, port) = split(&instance.addr);
        let port: u16 = port.parse().unwrap_or(0);
        let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
        let ttl = secs(self.ttl);
        let mut meta: Map<String, Value> = instance
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut tags: Vec<String> = Vec::new();
        let deregister_after = match self.format {
            ConsulFormat::GoZero => self.deregister_after.unwrap_or(self.ttl * 3),
            ConsulFormat::Kratos => self.deregister_after.unwrap_or(KRATOS_DEREGISTER_AFTER),
        };
        let mut checks = Vec::new();
        match self.format {
            ConsulFormat::GoZero => {
                if !instance.version.is_empty() {
                    tags.push(format!("version={}", instance.version));
                }
                tags.extend(self.tags.iter().cloned());
            }
            ConsulFormat::Kratos => {
                tags.push(format!("version={}", instance.version));
                tags.extend(self.tags.iter().cloned());
                if let Some(w) = instance.weight {
                    meta.insert("weight".into(), Value::String(w.to_string()));
                }
            }
        }
        if let Some(every) = self.tcp_check {
            checks.push(json!({
                "CheckID": format!("{id}:tcp"),
                "Name": format!("TCP {host}:{port}"),
                "TCP": join(host, port),
                "Interval": secs(every),
                "Timeout": "5s",
                "Status": "passing",
                "DeregisterCriticalServiceAfter": secs(deregister_after),
            }));
        }
        if let Some(g) = &self.grpc_check {
            let target = if g.service.is_empty() {
                join(host, port)
            } else {
                format!("{}/{}", join(host, port), g.service)
            };
            checks.push(json!({
                "CheckID": format!("{id}:grpc"),
                "Name": format!("gRPC health {target}"),
                "GRPC": target,
                "GRPCUseTLS": g.tls,
                "Interval": secs(g.interval),
                "Timeout": "5s",
                "DeregisterCriticalServiceAfter": secs(deregister_after),
            }));
        }
        checks.push(json!({
            "CheckID": self.check_id(instance),
            "Name": format!("TTL {}", instance.name),
            "TTL": ttl,
            "Status": "passing",
            "DeregisterCriticalServiceAfter": secs(deregister_after),
        }));
        let mut body = json!({
            "ID": id,
            "Name": instance.name,
            "Tags": tags,
            "Address": host,
            "Port": port,
            "Meta": meta,
            "Checks": checks,
        });
        if let Some(w) = instance.weight {
            body["Weights"] = json!({"Passing": w, "Warning": 1});
        }
        if self.format == ConsulFormat::Kratos {
            let scheme = if self.grpc_check.as_ref().is_some_and(|g| g.tls) {
                "grpcs"
            } else {
                "grpc"
            };
            body["TaggedAddresses"] = json!({
                scheme: {"Address": format!("{scheme}://{}", join(host, port)), "Port": port}
            });
        }
        body
    }
}

fn split(addr: &str) -> (&str, &str) {
    let (h, p) = addr.rsplit_once(':').unwrap_or((addr, ""));
    (h.trim_start_matches('[').trim_end_matches(']'), p)
}

fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Registrar for ConsulRegistrar {
    fn register(&self, instance: Instance) -> Result<Registration, DiscoveryError> {
        instance.validate()?;
        let agent = Agent::new(&self.agent, self.token.as_deref(), None, None)
            .map_err(|e| DiscoveryError::new(ErrorKind::Other, e))?;
        let job = Job {
            body: serde_json::to_vec(&self.registration_body(&instance)).unwrap_or_default(),
            id: self.service_id(&instance),
            check: self.check_id(&instance),
            name: instance.name.clone(),
            pass_every: self
                .pass_interval
                .unwrap_or(self.ttl / 2)
                .max(Duration::from_millis(100)),
            backoff: Backoff::new(self.backoff.clone()),
            agent,
        };
        Ok(Registration::spawn(
            job.id.clone(),
            move |reporter, stop| job.run(reporter, stop),
        ))
    }
}

struct Job {
    agent: Agent,
    body: Vec<u8>,
    id: String,
    check: String,
    name: String,
    pass_every: Duration,
    backoff: Backoff,
}

/// Why passing the TTL check failed.
enum PassError {
    /// The agent does not know the check: it restarted, or the service was deregistered
    /// (DeregisterCriticalServiceAfter, an operator). Register again.
    Lost(DiscoveryError),
    /// The agent could not be asked; the registration may well be there still.
    Other(DiscoveryError),
}

impl Job {
    async fn run(mut self, reporter: Reporter, mut stop: Stop) {
        'register: loop {
            if stop.is_stopped() {
                break;
            }
            match self.register().await {
                Ok(()) => {
                    self.backoff.reset();
                    reporter.registered();
                }
                Err(e) => {
                    reporter.failed(e);
                    let pause = self.backoff.next_delay();
                    tokio::select! {
                        _ = stop.wait() => break,
                        _ = tokio::time::sleep(pause) => continue 'register,
                    }
                }
            }
            loop {
                tokio::select! {
                    _ = stop.wait() => break 'register,
                    _ = tokio::time::sleep(self.pass_every) => {}
                }
                match self.pass().await {
                    Ok(()) => reporter.renewed(),
                    Err(PassError::Lost(e)) => {
                        reporter.failed(e);
                        continue 'register;
                    }
                    Err(PassError::Other(e)) => reporter.failed(e),
                }
            }
        }
        self.deregister().await;
    }

    async fn register(&self) -> Result<(), DiscoveryError> {
        let answer = self
            .agent
            .send(
                Method::PUT,
                "/v1/agent/service/register?replace-existing-checks=true",
                Some(self.body.clone()),
                REQUEST_TIMEOUT,
            )
            .await?;
        if answer.status == StatusCode::OK {
            return Ok(());
        }
        Err(self.refused("register", &answer))
    }

    async fn pass(&self) -> Result<(), PassError> {
        let path = format!("/v1/agent/check/pass/{}", enc(&self.check));
        let answer = self
            .agent
            .send(Method::PUT, &path, None, REQUEST_TIMEOUT)
            .await
            .map_err(PassError::Other)?;
        if answer.status == StatusCode::OK {
            return Ok(());
        }
        let text = answer.text().to_ascii_lowercase();
        // Consul answers 404 "Unknown check ID" since 1.11, and 500 "CheckID ... does not
        // have associated TTL" before.
        let lost = answer.status == StatusCode::NOT_FOUND
            || text.contains("does not have associated ttl")
            || text.contains("unknown check");
        let e = self.refused("pass the TTL check of", &answer);
        Err(if lost {
            PassError::Lost(DiscoveryError::new(
                ErrorKind::NotFound,
                format!(
                    "the Consul agent {} no longer knows `{}` (it restarted, or the service was \
                     deregistered): registering it again; {e}",
                    self.agent.addr(),
                    self.id
                ),
            ))
        } else {
            PassError::Other(e)
        })
    }

    async fn deregister(&self) {
        let path = format!("/v1/agent/service/deregister/{}", enc(&self.id));
        match self
            .agent
            .send(Method::PUT, &path, None, DEREGISTER_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => {
                tracing::info!(id = %self.id, "deregistered from Consul");
            }
            Ok(a) => tracing::warn!(id = %self.id, "{}", self.refused("deregister", &a)),
            Err(e) => tracing::warn!(id = %self.id, "cannot deregister: {e}"),
        }
    }

    fn refused(&self, what: &str, answer: &Answer) -> DiscoveryError {
        let code = answer.status.as_u16();
        let body = answer.text();
        let (kind, advice) = match answer.status {
            StatusCode::FORBIDDEN => (
                ErrorKind::Forbidden,
                format!(
                    ": the ACL token lacks `service:write` on `{}`; grant it in the token's \
                     policy or give another token",
                    self.name
                ),
            ),
            StatusCode::BAD_REQUEST => (ErrorKind::Other, String::new()),
            s if s.is_server_error() => (ErrorKind::Unavailable, "; retrying".to_owned()),
            _ => (ErrorKind::Other, String::new()),
        };
        DiscoveryError::new(
            kind,
            format!(
                "Consul agent {} refused to {what} `{}` ({code}: {body}){advice}",
                self.agent.addr(),
                self.id
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_zero_record() {
        let r = ConsulRegistrar::new("127.0.0.1:8500").tag("rpc");
        let i = Instance::new("user.rpc", "10.0.0.1:8080").with_metadata("k", "v");
        assert_eq!(r.service_id(&i), "user.rpc-10.0.0.1-8080");
        assert_eq!(
            r.registration_body(&i),
            json!({
                "ID": "user.rpc-10.0.0.1-8080", "Name": "user.rpc", "Tags": ["rpc"],
                "Address": "10.0.0.1", "Port": 8080, "Meta": {"k": "v"},
                "Checks": [{"CheckID": "user.rpc-10.0.0.1-8080", "Name": "TTL user.rpc",
                            "TTL": "20s", "Status": "passing",
                            "DeregisterCriticalServiceAfter": "60s"}],
            })
        );
    }

    #[test]
    fn kratos_record() {
        let r = ConsulRegistrar::new("127.0.0.1:8500").format(ConsulFormat::Kratos);
        let i = Instance::new("helloworld", "10.0.0.2:9000")
            .with_id("hw-1")
            .with_version("v1.0.0")
            .with_weight(30);
        let b = r.registration_body(&i);
        assert_eq!(b["ID"], "hw-1");
        assert_eq!(b["Tags"], json!(["version=v1.0.0"]));
        assert_eq!(b["Meta"], json!({"weight": "30"}));
        assert_eq!(
            b["TaggedAddresses"],
            json!({"grpc": {"Address": "grpc://10.0.0.2:9000", "Port": 9000}})
        );
        assert_eq!(b["Weights"], json!({"Passing": 30, "Warning": 1}));
        let checks = b["Checks"].as_array().unwrap();
        assert_eq!(checks[0]["TCP"], "10.0.0.2:9000");
        assert_eq!(checks[0]["Interval"], "10s");
        assert_eq!(checks[1]["CheckID"], "service:hw-1");
        assert_eq!(checks[1]["DeregisterCriticalServiceAfter"], "600s");
    }

    #[test]
    fn registration_targets() {
        let r =
            ConsulRegistrar::from_target("consul://127.0.0.1:8500?format=kratos&ttl=5s&token=t")
                .unwrap();
        assert_eq!(r.agent, "127.0.0.1:8500");
        assert_eq!(r.format, ConsulFormat::Kratos);
        assert_eq!(r.ttl, Duration::from_secs(5));
        assert_eq!(r.token.as_deref(), Some("t"));
        for (t, want) in [
            ("etcd://x:1", "expected `consul://"),
            ("consul://h", "no port"),
            ("consul://h:8500/svc", "--name"),
            ("consul://h:8500?format=nacos", "unknown format"),
            ("consul://h:8500?ttl=soon", "`ttl`"),
            ("consul://h:8500?wait=1s", "unknown parameter `wait`"),
        ] {
            let e = ConsulRegistrar::from_target(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }
}
