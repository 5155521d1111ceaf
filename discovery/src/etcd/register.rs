//! Registration in etcd in the formats go-zero and kratos write: a lease, a key put with
//! it, the lease kept alive; the key put back when someone deletes it, a new lease when
//! the old one is lost; the lease revoked at the end.
//!
//! Where the Go frameworks stop, this one goes on:
//! - kratos (`contrib/registry/etcd/registry.go`, `heartBeat`) gives up after `maxRetry`
//!   (5) failed attempts to re-register (kratos#3883);
//! - go-zero (`core/discov/publisher.go`, `keepAliveAsync`) re-registers once when the
//!   keepalive channel closes and leaves the service unregistered when that fails
//!   (go-zero#1926, #4201), and never notices a key deleted by someone else.
//!
//! Here every failure is retried with jittered backoff, forever, and the state shows in
//! [`Registration::status`](crate::Registration::status).

use std::fmt::Write as _;
use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::time::Instant;

use super::client::{self, Failure, Need, bounded};
use super::target::parse_registry;
use super::{EtcdCluster, EtcdFormat, KRATOS_NAMESPACE};
use crate::backoff::{Backoff, BackoffConfig};
use crate::params::duration;
use crate::{DiscoveryError, ErrorKind, Instance, Registrar, Registration, Reporter, Stop};

/// go-zero's lease TTL (`TimeToLive` in `core/discov/clients.go`).
pub const GO_ZERO_TTL: Duration = Duration::from_secs(10);
/// kratos's lease TTL (`New` in `contrib/registry/etcd/registry.go`).
pub const KRATOS_TTL: Duration = Duration::from_secs(15);

/// Registration in etcd. Build with [`EtcdRegistrar::new`] or
/// [`from_target`](EtcdRegistrar::from_target), then [`Registrar::register`].
///
/// ```no_run
/// use meshless_discovery::etcd::{EtcdFormat, EtcdRegistrar};
/// use meshless_discovery::{Instance, Registrar};
/// # async fn run() {
/// let registrar = EtcdRegistrar::new(["127.0.0.1:2379"]).format(EtcdFormat::Kratos);
/// let registration = registrar
///     .register(Instance::new("helloworld", "10.0.0.1:9000").with_version("v1"))
///     .unwrap();
/// // ... serve; dropping `registration` revokes the lease.
/// # drop(registration);
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdRegistrar {
    /// How to reach etcd.
    pub cluster: EtcdCluster,
    /// The record format.
    pub format: EtcdFormat,
    /// The lease TTL. Default: the format's ([`GO_ZERO_TTL`], [`KRATOS_TTL`]).
    pub ttl: Option<Duration>,
    /// How often the lease is kept alive. Default: TTL / 3, so two lost keepalives do
    /// not let it expire (etcd's Go client also keeps alive every TTL / 3).
    pub keepalive_interval: Option<Duration>,
    /// kratos's namespace, [`KRATOS_NAMESPACE`] by default.
    pub namespace: String,
    /// kratos: announce a `grpcs://` endpoint (a server with TLS) instead of `grpc://`.
    pub grpcs: bool,
    /// The backoff between failed attempts.
    pub backoff: BackoffConfig,
}

impl EtcdRegistrar {
    /// A go-zero-format registrar for the etcd members `hosts` (`host:port`).
    pub fn new<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> Self {
        Self::with_cluster(EtcdCluster::new(hosts))
    }

    /// A go-zero-format registrar for `cluster` (auth, TLS, timeouts).
    pub fn with_cluster(cluster: EtcdCluster) -> Self {
        EtcdRegistrar {
            cluster,
            format: EtcdFormat::GoZero,
            ttl: None,
            keepalive_interval: None,
            namespace: KRATOS_NAMESPACE.to_owned(),
            grpcs: false,
            backoff: BackoffConfig::registrar(),
        }
    }

    /// A registrar from `etcd://h1:2379,h2:2379[?format=go-zero|kratos&ttl=10s&user=..&
    /// password=..&ca-file=..&namespace=..&scheme=grpcs]`, the form `meshless register`
    /// takes.
    pub fn from_target(target: &str) -> Result<Self, DiscoveryError> {
        let bad = |why: String| {
            DiscoveryError::new(
                ErrorKind::Other,
                format!(
                    "registration target `{}`: {why}",
                    crate::redact_target(target)
                ),
            )
        };
        let (cluster, rest) = parse_registry(target).map_err(bad)?;
        let mut r = EtcdRegistrar::with_cluster(cluster);
        for (k, v) in rest {
            match k.as_str() {
                "format" => r.format = v.parse().map_err(bad)?,
                "ttl" => r = r.ttl(duration(&v).map_err(|e| bad(format!("`ttl`: {e}")))?),
                "namespace" => {
                    let ns = v.trim_end_matches('/');
                    if !ns.starts_with('/') {
                        return Err(bad(format!(
                            "`namespace={v}`: a kratos namespace starts with `/`"
                        )));
                    }
                    r.namespace = ns.to_owned();
                }
                "scheme" => match v.as_str() {
                    "grpc" => r.grpcs = false,
                    "grpcs" => r.grpcs = true,
                    _ => return Err(bad(format!("`scheme={v}`: expected `grpc` or `grpcs`"))),
                },
                _ => {
                    return Err(bad(format!(
                        "unknown parameter `{k}`; known: format, ttl, namespace, scheme, user, \
                         password, ca-file, cert-file, key-file, server-name, dial-timeout, \
                         timeout"
                    )));
                }
            }
        }
        Ok(r)
    }

    /// Sets the format.
    #[must_use]
    pub fn format(mut self, format: EtcdFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the lease TTL (at least 1 s; etcd counts in whole seconds and may raise it to
    /// its minimum).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl.max(Duration::from_secs(1)));
        self
    }

    /// Sets the etcd user and password.
    #[must_use]
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.cluster.user = Some(user.into());
        self.cluster.password = Some(password.into());
        self
    }

    /// Sets how often the lease is kept alive.
    #[must_use]
    pub fn keepalive_interval(mut self, every: Duration) -> Self {
        self.keepalive_interval = Some(every);
        self
    }

    /// Sets kratos's namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into().trim_end_matches('/').to_owned();
        self
    }

    /// kratos: announce `grpcs://` (the server speaks TLS).
    #[must_use]
    pub fn grpcs(mut self, grpcs: bool) -> Self {
        self.grpcs = grpcs;
        self
    }

    /// Sets the backoff between failed attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// The lease TTL in use.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl.unwrap_or(match self.format {
            EtcdFormat::GoZero => GO_ZERO_TTL,
            EtcdFormat::Kratos => KRATOS_TTL,
        })
    }

    /// The kratos instance id: the instance's, or `<name>-<host>-<port>`.
    pub fn kratos_id(&self, instance: &Instance) -> String {
        if !instance.id.is_empty() {
            return instance.id.clone();
        }
        let (host, port) = instance
            .addr
            .rsplit_once(':')
            .unwrap_or((&instance.addr, ""));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        format!("{}-{host}-{port}", instance.name)
    }

    /// The key `instance` is registered under with lease `lease`: go-zero's
    /// `<name>/<lease id>` (`<name>/<id>` when the instance has an id: `makeEtcdKey` in
    /// `core/discov/clients.go`), kratos's `<namespace>/<name>/<id>` (`registerKey`).
    pub fn key(&self, instance: &Instance, lease: i64) -> String {
        match self.format {
            EtcdFormat::GoZero if instance.id.is_empty() => format!("{}/{lease}", instance.name),
            EtcdFormat::GoZero => format!("{}/{}", instance.name, instance.id),
            EtcdFormat::Kratos => format!(
                "{}/{}/{}",
                self.namespace,
                instance.name,
                self.kratos_id(instance)
            ),
        }
    }

    /// The value written for `instance`: go-zero's plain `host:port`, or kratos's
    /// `registry.ServiceInstance` marshalled as Go's `encoding/json` does (fields in
    /// declaration order, map keys sorted, `<`, `>`, `&`, U+2028 and U+2029 escaped, a nil
    /// map as `null`), so the bytes are the ones a kratos server writes.
    pub fn value(&self, instance: &Instance) -> String {
        match self.format {
            EtcdFormat::GoZero => instance.addr.clone(),
            EtcdFormat::Kratos => {
                let mut metadata: Vec<(&str, String)> = instance
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                if let Some(w) = instance.weight {
                    metadata.retain(|(k, _)| *k != "weight");
                    metadata.push(("weight", w.to_string()));
                    metadata.sort_by(|a, b| a.0.cmp(b.0));
                }
                let scheme = if self.grpcs { "grpcs" } else { "grpc" };
                let mut s = String::from("{\"id\":");
                go_json_string(&mut s, &self.kratos_id(instance));
                s.push_str(",\"name\":");
                go_json_string(&mut s, &instance.name);
                s.push_str(",\"version\":");
                go_json_string(&mut s, &instance.version);
                s.push_str(",\"metadata\":");
                if metadata.is_empty() {
                    s.push_str("null");
                } else {
                    s.push('{');
                    for (i, (k, v)) in metadata.iter().enumerate() {
                        if i > 0 {
                            s.push(',');
                        }
                        go_json_string(&mut s, k);
                        s.push(':');
                        go_json_string(&mut s, v);
                    }
                    s.push('}');
                }
                s.push_str(",\"endpoints\":[");
                go_json_string(&mut s, &format!("{scheme}://{}", instance.addr));
                s.push_str("]}");
                s
            }
        }
    }
}

/// Appends `v` as a JSON string the way Go's `encoding/json` writes it (HTML-safe).
fn go_json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Registrar for EtcdRegistrar {
    fn register(&self, instance: Instance) -> Result<Registration, DiscoveryError> {
        instance.validate()?;
        if self.format == EtcdFormat::GoZero
            && !instance.id.is_empty()
            && instance.id.parse::<i64>().map_or(true, |id| id <= 0)
        {
            return Err(DiscoveryError::new(
                ErrorKind::Other,
                format!(
                    "cannot register instance `{}` at `{}`: id `{}` is not a go-zero id, \
                     which is a positive number (EtcdConf.ID int64); leave it empty for the \
                     lease id",
                    instance.name, instance.addr, instance.id
                ),
            ));
        }
        let key = self.key(&instance, 0);
        let task = Task {
            value: self.value(&instance),
            reg: self.clone(),
            instance,
            client: None,
            lease: None,
            key: String::new(),
        };
        Ok(Registration::spawn(key, |reporter, stop| {
            task.run(reporter, stop)
        }))
    }
}

/// Why keeping a registration alive ended.
enum Ended {
    /// Told to stop.
    Stopped,
    /// The lease is gone (expired, revoked): register again at once with a new one.
    LeaseLost(DiscoveryError),
    /// etcd could not be reached or failed: reconnect after a backoff, and try the same
    /// lease first.
    Broken(DiscoveryError),
}

struct Task {
    reg: EtcdRegistrar,
    instance: Instance,
    value: String,
    client: Option<Client>,
    lease: Option<i64>,
    key: String,
}

impl Task {
    fn ttl(&self) -> Duration {
        self.reg.lease_ttl()
    }

    fn error(&self, f: Failure, what: &str) -> DiscoveryError {
        let target = if self.key.is_empty() {
            self.reg.key(&self.instance, 0)
        } else {
            self.key.clone()
        };
        f.into_error(&self.reg.cluster, what, &target, Need::Write)
    }

    async fn run(mut self, reporter: Reporter, mut stop: Stop) {
        let mut backoff = Backoff::new(self.reg.backoff.clone());
        loop {
            let attempt = tokio::select! {
                r = self.establish() => r,
                _ = stop.wait() => break,
            };
            let ended = match attempt {
                Ok(rev) => {
                    reporter.set_key(self.key.clone());
                    reporter.registered();
                    backoff.reset();
                    self.keep(rev, &reporter, &mut stop).await
                }
                Err(e) => Ended::Broken(e),
            };
            match ended {
                Ended::Stopped => break,
                Ended::LeaseLost(e) => {
                    self.lease = None;
                    reporter.failed(e);
                }
                Ended::Broken(e) => {
                    self.client = None;
                    reporter.failed(e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.wait() => break,
                    }
                }
            }
        }
        self.revoke().await;
    }

    async fn client(&mut self) -> Result<Client, DiscoveryError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = client::connect(&self.reg.cluster, &self.reg.key(&self.instance, 0)).await?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Puts the registration's key and value on lease `id`, within the cluster's timeout.
    async fn put(&self, client: &Client, id: i64) -> Result<etcd_client::PutResponse, Failure> {
        let mut kv = client.kv_client();
        let put = kv.put(
            self.key.clone(),
            self.value.clone(),
            Some(PutOptions::new().with_lease(id)),
        );
        bounded(self.reg.cluster.timeout, put).await
    }

    /// Makes sure a live lease holds the key: keeps the lease it had when it is still
    /// alive, else grants a new one, and puts the key. Returns the put's revision.
    async fn establish(&mut self) -> Result<i64, DiscoveryError> {
        let timeout = self.reg.cluster.timeout;
        let client = self.client().await?;
        let mut leases = client.lease_client();
        if let Some(id) = self.lease {
            // A TimeToLive answer of -1 means the lease expired while we were away.
            match bounded(timeout, leases.time_to_live(id, None)).await {
                Ok(r) if r.ttl() > 0 => {}
                Ok(_) => self.lease = None,
                Err(f) => return Err(self.error(f, "check the lease of")),
            }
        }
        let id = match self.lease {
            Some(id) => id,
            None => {
                let secs = i64::try_from(self.ttl().as_secs().max(1)).unwrap_or(i64::MAX);
                let granted = bounded(timeout, leases.grant(secs, None))
                    .await
                    .map_err(|f| self.error(f, "grant a lease for"))?;
                self.lease = Some(granted.id());
                granted.id()
            }
        };
        self.key = self.reg.key(&self.instance, id);
        let put = self.put(&client, id).await;
        match put {
            Ok(r) => Ok(r.header().map_or(0, |h| h.revision())),
            Err(f) => {
                if f.lease_not_found() {
                    self.lease = None;
                }
                Err(self.error(f, "put"))
            }
        }
    }

    /// Keeps the lease alive and the key in place until told to stop or something fails.
    async fn keep(&mut self, rev: i64, reporter: &Reporter, stop: &mut Stop) -> Ended {
        let timeout = self.reg.cluster.timeout;
        let (Some(client), Some(id)) = (self.client.clone(), self.lease) else {
            return Ended::Broken(DiscoveryError::new(ErrorKind::Other, "no lease to keep"));
        };
        let ttl = self.ttl();
        let keepalive = bounded(timeout, client.lease_client().keep_alive(id)).await;
        let (mut keeper, mut answers) = match keepalive {
            Ok(k) => k,
            Err(Failure::Etcd(etcd_client::Error::LeaseKeepAliveError(_))) => {
                return Ended::LeaseLost(self.lost(id, "was not found when keeping it alive"));
            }
            Err(f) => return Ended::Broken(self.error(f, "keep alive the lease of")),
        };
        let options = WatchOptions::new().with_start_revision(rev + 1);
        let watch = bounded(
            timeout,
            client.watch_client().watch(self.key.clone(), Some(options)),
        )
        .await;
        let mut watch = match watch {
            Ok(w) => w,
            Err(f) => return Ended::Broken(self.error(f, "watch")),
        };
        let every = self
            .reg
            .keepalive_interval
            .unwrap_or(ttl / 3)
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut confirmed = Instant::now();
        loop {
            tokio::select! {
                _ = stop.wait() => return Ended::Stopped,
                _ = tick.tick() => {
                    if confirmed.elapsed() > ttl {
                        return Ended::Broken(DiscoveryError::new(
                            ErrorKind::Unavailable,
                            format!(
                                "etcd {}: no keepalive answer for `{}` in {ttl:?}, the lease's \
                                 TTL; reconnecting",
                                self.reg.cluster.hosts.join(","),
                                self.key
                            ),
                        ));
                    }
                    if let Err(f) = bounded(timeout, keeper.keep_alive()).await {
                        return Ended::Broken(self.error(f, "keep alive the lease of"));
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => {
                        confirmed = Instant::now();
                        reporter.renewed();
                    }
                    Ok(Some(_)) => return Ended::LeaseLost(self.lost(id, "expired or was revoked")),
                    Ok(None) => return Ended::Broken(DiscoveryError::new(
                        ErrorKind::Unavailable,
                        format!("etcd ended the keepalive stream of `{}`; reconnecting", self.key),
                    )),
                    Err(e) => return Ended::Broken(self.error(Failure::Etcd(e), "keep alive the lease of")),
                },
                event = watch.message() => match event {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Ended::Broken(DiscoveryError::new(
                                ErrorKind::Unavailable,
                                format!(
                                    "etcd canceled the watch of `{}` ({}); reconnecting",
                                    self.key,
                                    resp.cancel_reason()
                                ),
                            ));
                        }
                        // Someone deleted the key, or overwrote it without our lease:
                        // put it back. The lease's own end shows as a delete too, and
                        // then the put fails with "lease not found".
                        let ours = resp.events().iter().all(|ev| {
                            ev.event_type() == EventType::Put
                                && ev.kv().is_some_and(|kv| {
                                    kv.lease() == id && kv.value() == self.value.as_bytes()
                                })
                        });
                        if !ours {
                            tracing::warn!(key = %self.key, "the registration's key was deleted or overwritten; putting it back");
                            let put = self.put(&client, id).await;
                            match put {
                                Ok(_) => reporter.registered(),
                                Err(f) if f.lease_not_found() => {
                                    return Ended::LeaseLost(self.lost(id, "was revoked"));
                                }
                                Err(f) => return Ended::Broken(self.error(f, "put back")),
                            }
                        }
                    }
                    Ok(None) => return Ended::Broken(DiscoveryError::new(
                        ErrorKind::Unavailable,
                        format!("etcd ended the watch of `{}`; reconnecting", self.key),
                    )),
                    Err(e) => return Ended::Broken(self.error(Failure::Etcd(e), "watch")),
                },
            }
        }
    }

    fn lost(&self, id: i64, how: &str) -> DiscoveryError {
        DiscoveryError::new(
            ErrorKind::NotFound,
            format!(
                "etcd {}: the lease {id:x} of `{}` {how}; registering again with a new lease",
                self.reg.cluster.hosts.join(","),
                self.key
            ),
        )
    }

    /// Revokes the lease, which deletes the key. Bounded by the request timeout (and the
    /// registration's own deregistration bound).
    async fn revoke(&mut self) {
        let Some(id) = self.lease else { return };
        let timeout = self.reg.cluster.timeout;
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "cannot revoke the registration's lease; it expires after its TTL");
                return;
            }
        };
        match bounded(timeout, client.lease_client().revoke(id)).await {
            Ok(_) => tracing::debug!(key = %self.key, "deregistered: lease revoked"),
            Err(f) => {
                let e = self.error(f, "revoke the lease of");
                tracing::warn!(key = %self.key, error = %e, "cannot revoke the registration's lease; it expires after its TTL");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_zero_keys_and_values() {
        let r = EtcdRegistrar::new(["127.0.0.1:2379"]);
        let i = Instance::new("user.rpc", "10.0.0.1:8080");
        assert_eq!(
            r.key(&i, 7_587_869_234_128_001_234),
            "user.rpc/7587869234128001234"
        );
        assert_eq!(r.value(&i), "10.0.0.1:8080");
        assert_eq!(r.key(&i.clone().with_id("42"), 1), "user.rpc/42");
        assert_eq!(r.lease_ttl(), GO_ZERO_TTL);
        let e = r.register(i.with_id("pod-a")).unwrap_err();
        assert!(e.to_string().contains("positive number"), "{e}");
    }

    #[test]
    fn kratos_values_are_what_go_marshals() {
        let r = EtcdRegistrar::new(["127.0.0.1:2379"]).format(EtcdFormat::Kratos);
        assert_eq!(r.lease_ttl(), KRATOS_TTL);
        let i = Instance::new("helloworld", "10.0.0.1:9000")
            .with_id("f3c9")
            .with_version("v1");
        assert_eq!(r.key(&i, 1), "/microservices/helloworld/f3c9");
        // A nil metadata map marshals as null.
        assert_eq!(
            r.value(&i),
            r#"{"id":"f3c9","name":"helloworld","version":"v1","metadata":null,"endpoints":["grpc://10.0.0.1:9000"]}"#
        );
        let i = i
            .with_metadata("zone", "a<b>&c")
            .with_metadata("app", "x\"y\n")
            .with_weight(5);
        assert_eq!(
            r.value(&i),
            r#"{"id":"f3c9","name":"helloworld","version":"v1","metadata":{"app":"x\"y\n","weight":"5","zone":"a\u003cb\u003e\u0026c"},"endpoints":["grpc://10.0.0.1:9000"]}"#
        );
        let r = r.grpcs(true).namespace("/ms/");
        let i = Instance::new("helloworld", "10.0.0.1:9000");
        assert_eq!(r.key(&i, 1), "/ms/helloworld/helloworld-10.0.0.1-9000");
        assert!(
            r.value(&i)
                .contains(r#""version":"","metadata":null,"endpoints":["grpcs://10.0.0.1:9000"]"#)
        );
    }

    #[test]
    fn registry_targets() {
        let r = EtcdRegistrar::from_target(
            "etcd://127.0.0.1:2379?format=kratos&ttl=5s&namespace=/ms&scheme=grpcs",
        )
        .unwrap();
        assert_eq!(r.format, EtcdFormat::Kratos);
        assert_eq!(r.lease_ttl(), Duration::from_secs(5));
        assert_eq!(r.namespace, "/ms");
        assert!(r.grpcs);
        for (t, want) in [
            ("etcd://h:2379?bogus=1", "unknown parameter `bogus`"),
            ("etcd://h:2379?format=zk", "unknown format"),
            ("etcd://h:2379?ttl=long", "`ttl`"),
            ("etcd://h:2379/user.rpc", "--name"),
            ("etcd://u:secret@h:2379?bogus=1", "u:***@"),
        ] {
            let e = EtcdRegistrar::from_target(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
