//! meshless clients from a config file: YAML, TOML or JSON, with a top-level `defaults` map
//! and a `clients` map, each client holding a target, connection settings and a gRPC
//! **service config** (gRPC's names and semantics: `loadBalancingConfig`, `methodConfig`,
//! `retryThrottling`, `healthCheckConfig`).
//!
//! ```
//! # #[cfg(feature = "yaml")] {
//! use meshless_config::{Config, Format};
//!
//! let config = Config::from_str(r#"
//! defaults:
//!   connectTimeout: 2s
//! clients:
//!   cart:
//!     target: static:///127.0.0.1:50051,127.0.0.1:50052
//!     serviceConfig:
//!       loadBalancingConfig: [{round_robin: {}}]
//!       methodConfig:
//!         - name: [{service: cart.v1.Cart}]
//!           timeout: 1.5s
//!           retryPolicy:
//!             maxAttempts: 3
//!             initialBackoff: 100ms
//!             maxBackoff: 1s
//!             backoffMultiplier: 2
//!             retryableStatusCodes: [UNAVAILABLE]
//! "#, Format::Yaml)?;
//! assert_eq!(config.client_names().collect::<Vec<_>>(), ["cart"]);
//!
//! // A typo is an error with its place and a suggestion, never a key silently ignored.
//! let text = "clients:\n  cart:\n    target: dns:///cart:50051\n    connectTimout: 1s\n";
//! let err = Config::from_str(text, Format::Yaml).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "4:5: clients.cart.connectTimout: unknown key `connectTimout`; did you mean `connectTimeout`?"
//! );
//! # }
//! # Ok::<(), meshless_config::ConfigError>(())
//! ```
//!
//! Every error gives the line and column, and the path of the key; all errors of a file are
//! reported at once. Values may use `${VAR}` and `${VAR:-default}` (go-zero's and kratos's
//! environment placeholders); a variable that is not set and has no default is an error
//! naming it. Durations take gRPC's `"1.5s"` and Go's `"100ms"` or `"1m30s"`.

#![warn(missing_docs)]

mod decode;
#[cfg(feature = "watch")]
mod reload;
mod schema;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use meshless_middleware::{MethodPolicies, Resilience, Resilient, ResilientFuture, RetryThrottle};
use meshless_transport::{BuildError, Channel, ChannelBuilder, OutlierDetection};
use tonic::Status;

pub use decode::parse_duration;
#[cfg(feature = "watch")]
pub use reload::{ConfigWatch, DEFAULT_DEBOUNCE, ReloadingClient};
pub use tree::Pos;

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// YAML 1.2 (feature `yaml`, serde-saphyr).
    Yaml,
    /// TOML 1.0 (feature `toml`).
    Toml,
    /// JSON (feature `json`).
    Json,
}

impl Format {
    /// The format of a file by its extension: `.yaml`/`.yml`, `.toml`, `.json`.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The path of the key, such as `clients.cart.serviceConfig.methodConfig[1].timeout`.
    pub path: String,
    /// Where it is (line and column of the key or value).
    pub pos: Pos,
    /// What is wrong, and what to do.
    pub message: String,
}

/// Everything wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when read from one.
    pub file: Option<PathBuf>,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    /// One line per problem: `file:line:column: path: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if let Some(file) = &self.file {
                write!(f, "{}:", file.display())?;
            }
            write!(f, "{}:{}: ", p.pos.line, p.pos.column)?;
            if !p.path.is_empty() {
                write!(f, "{}: ", p.path)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(file: Option<PathBuf>, path: &str, pos: Pos, message: impl Into<String>) -> Self {
        ConfigError {
            file,
            problems: vec![Problem {
                path: path.to_owned(),
                pos,
                message: message.into(),
            }],
        }
    }
}

/// A gRPC service config on its own (the JSON that gRPC's resolvers and `--service-config`
/// flags carry), for a channel built in code: its policy, outlier detection and health
/// checking go to the builder, its per-method policies and retry throttling to the stack.
///
/// ```
/// # #[cfg(feature = "json")] {
/// use meshless_config::ServiceConfig;
///
/// let sc = ServiceConfig::from_json(r#"{"loadBalancingConfig": [{"round_robin": {}}],
///     "methodConfig": [{"name": [{"service": "cart.v1.Cart"}], "timeout": "1.5s"}]}"#)?;
/// let builder = sc.apply(meshless_transport::Channel::builder("dns:///cart.prod:50051"));
/// let stack = sc.stack(); // tower::ServiceBuilder::new().layer(stack).service(channel)
/// # drop((builder, stack));
/// # }
/// # Ok::<(), meshless_config::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    settings: schema::Settings,
}

impl ServiceConfig {
    /// Parses and validates gRPC service config JSON.
    #[cfg(feature = "json")]
    pub fn from_json(text: &str) -> Result<ServiceConfig, ConfigError> {
        let root =
            tree::parse_json(text).map_err(|(msg, pos)| ConfigError::one(None, "", pos, msg))?;
        let env = |k: &str| std::env::var(k).ok();
        let mut cx = decode::Cx {
            problems: Vec::new(),
            env: &env,
            policies: None,
        };
        let sc = schema::service_config(&mut cx, &root, "");
        cx.finish(
            None,
            ServiceConfig {
                settings: schema::Settings {
                    service_config: Some(sc),
                    ..Default::default()
                },
            },
        )
    }

    /// `builder` with this config's policy, outlier detection and health checking.
    pub fn apply(&self, builder: ChannelBuilder) -> ChannelBuilder {
        build::apply_service_config(builder, &self.settings)
    }

    /// The resilience stack of this config's `methodConfig` and `retryThrottling`.
    pub fn stack(&self) -> Resilience {
        build::stack(&self.settings)
    }
}

/// A parsed, valid config file.
#[derive(Debug, Clone)]
pub struct Config {
    clients: BTreeMap<String, schema::Settings>,
}

/// Why [`Config::client`] could not give a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The file has no client of that name.
    #[error("no client `{name}` in the config (it has: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names the file has, comma-separated.
        known: String,
    },
    /// The channel did not build (a target the registry does not know, TLS files that do
    /// not load, ...).
    #[error("client `{name}`: {source}")]
    Build {
        /// The client's name.
        name: String,
        /// What the builder said.
        source: BuildError,
    },
}

impl Config {
    /// Reads and validates `path`, choosing the format by its extension.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::read_and_parse(path.as_ref(), None)
    }

    /// Reads `path` and parses it, with `policies` selectable by name when given.
    fn read_and_parse(
        path: &Path,
        policies: Option<&meshless_balancer::PolicyRegistry>,
    ) -> Result<Config, ConfigError> {
        let (text, format) = Self::read(path)?;
        Self::parse(
            &text,
            format,
            Some(path.to_path_buf()),
            &|k| std::env::var(k).ok(),
            policies,
        )
    }

    /// The file's text and its format (by its extension).
    fn read(path: &Path) -> Result<(String, Format), ConfigError> {
        let file = Some(path.to_path_buf());
        let format = Format::of(path).ok_or_else(|| {
            ConfigError::one(
                file.clone(),
                "",
                Pos::default(),
                "unknown file type: name it .yaml, .yml, .toml or .json",
            )
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(
                file.clone(),
                "",
                Pos::default(),
                format!("cannot read the file: {e}"),
            )
        })?;
        Ok((text, format))
    }

    /// [`from_file`](Self::from_file) where `loadBalancingConfig` may also name the
    /// policies of `policies` (your own, registered in code with
    /// [`PolicyRegistry::register`](meshless_balancer::PolicyRegistry::register)). Such a
    /// policy's block in the file must be empty (`{my_policy: {}}`): its configuration is
    /// the one it was registered with.
    pub fn from_file_with_policies(
        path: impl AsRef<Path>,
        policies: &meshless_balancer::PolicyRegistry,
    ) -> Result<Config, ConfigError> {
        Self::read_and_parse(path.as_ref(), Some(policies))
    }

    /// [`from_str`](Self::from_str) with the policies of `policies` selectable by name, as
    /// [`from_file_with_policies`](Self::from_file_with_policies) describes.
    pub fn from_str_with_policies(
        text: &str,
        format: Format,
        policies: &meshless_balancer::PolicyRegistry,
    ) -> Result<Config, ConfigError> {
        Self::parse(
            text,
            format,
            None,
            &|k| std::env::var(k).ok(),
            Some(policies),
        )
    }

    /// Parses and validates `text` in `format`, taking variables from the environment.
    #[allow(clippy::should_implement_trait)] // it takes a format, unlike FromStr
    pub fn from_str(text: &str, format: Format) -> Result<Config, ConfigError> {
        Self::parse(text, format, None, &|k| std::env::var(k).ok(), None)
    }

    /// [`from_str`](Self::from_str) with variables from `env` instead of the environment.
    pub fn from_str_with_env(
        text: &str,
        format: Format,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse(text, format, None, env, None)
    }

    fn parse(
        text: &str,
        format: Format,
        file: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
        policies: Option<&meshless_balancer::PolicyRegistry>,
    ) -> Result<Config, ConfigError> {
        let parsed = match format {
            #[cfg(feature = "yaml")]
            Format::Yaml => tree::parse_yaml(text),
            #[cfg(feature = "toml")]
            Format::Toml => tree::parse_toml(text),
            #[cfg(feature = "json")]
            Format::Json => tree::parse_json(text),
            #[allow(unreachable_patterns)]
            other => {
                return Err(ConfigError::one(
                    file,
                    "",
                    Pos::default(),
                    format!(
                        "this meshless-config was built without {other:?}: enable its cargo feature"
                    ),
                ));
            }
        };
        let root = parsed.map_err(|(msg, pos)| ConfigError::one(file.clone(), "", pos, msg))?;
        let mut cx = decode::Cx {
            problems: Vec::new(),
            env,
            policies,
        };
        let mut clients = BTreeMap::new();
        if let Some(top) = decode::Obj::new(&mut cx, &root, "", &["defaults", "clients"]) {
            let defaults = top
                .get("defaults")
                .map(|(n, p)| schema::settings(&mut cx, n, &p, true))
                .unwrap_or_default();
            match top.get("clients") {
                Some((n, p)) => {
                    if let Some(map) = decode::Obj::names(&mut cx, n, &p) {
                        for (name, pos, node) in map.entries() {
                            let cp = decode::join(&p, name);
                            let own = schema::settings(&mut cx, node, &cp, false);
                            if own.target.is_none() {
                                cx.err(
                                    &cp,
                                    pos,
                                    "a client needs a `target`, such as dns:///cart.prod:50051",
                                );
                            }
                            clients.insert(name.to_owned(), merge(own, &defaults));
                        }
                    }
                }
                None => cx.err("clients", root.pos, "the file has no `clients` map"),
            }
        }
        cx.finish(file, Config { clients })
    }

    /// The names of the clients, in order.
    pub fn client_names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// The channel builder of client `name`, with its target and connection settings (and
    /// its service config's policy, outlier detection and health checking): for settings
    /// the file does not hold.
    pub fn builder(&self, name: &str) -> Result<ChannelBuilder, ClientError> {
        let s = self.settings(name)?;
        Ok(build::builder(s))
    }

    /// Client `name`: its channel with the per-method policies of its service config
    /// applied through the resilience layers, ready to be the transport of a tonic client
    /// (`CartClient::new(config.client("cart")?)`).
    pub fn client(&self, name: &str) -> Result<Client, ClientError> {
        let s = self.settings(name)?;
        let channel = build::builder(s)
            .build()
            .map_err(|source| ClientError::Build {
                name: name.to_owned(),
                source,
            })?;
        Ok(self.client_on(name, channel))
    }

    /// Client `name`'s resilience stack (its `methodConfig` and `retryThrottling`), to put
    /// above a channel built from [`builder`](Self::builder).
    pub fn stack(&self, name: &str) -> Result<Resilience, ClientError> {
        Ok(build::stack(self.settings(name)?))
    }

    /// Client `name`'s per-method policies over an existing `channel`.
    #[cfg_attr(not(feature = "watch"), allow(dead_code))]
    pub(crate) fn client_on(&self, name: &str, channel: Channel) -> Client {
        let stack = self.clients.get(name).map(build::stack).unwrap_or_default();
        Client {
            service: tower_layer::Layer::layer(&stack, channel.clone()),
            channel,
        }
    }

    /// Client `name`'s target.
    pub fn target(&self, name: &str) -> Option<&str> {
        self.clients.get(name)?.target.as_deref()
    }

    /// The load-balancing policy client `name`'s service config chose (by meshless's name:
    /// `ring_hash_experimental` is `ring_hash`), if it chose one.
    pub fn policy(&self, name: &str) -> Option<&str> {
        let sc = self.clients.get(name)?.service_config.as_ref()?;
        sc.policy.as_ref().map(|(n, _)| n.as_str())
    }

    /// Client `name`'s per-method policies (`methodConfig`).
    pub fn methods(&self, name: &str) -> Option<&MethodPolicies> {
        Some(&self.clients.get(name)?.service_config.as_ref()?.methods)
    }

    /// Client `name`'s outlier detection (`outlier_detection_experimental`), if on.
    pub fn outlier_detection(&self, name: &str) -> Option<&OutlierDetection> {
        self.clients
            .get(name)?
            .service_config
            .as_ref()?
            .outlier_detection
            .as_ref()
    }

    /// The service client `name` health-checks (`healthCheckConfig.serviceName`), if on.
    pub fn health_check(&self, name: &str) -> Option<&str> {
        self.clients
            .get(name)?
            .service_config
            .as_ref()?
            .health_check
            .as_deref()
    }

    /// Client `name`'s `retryThrottling` (`maxTokens`, `tokenRatio`), if set.
    pub fn retry_throttling(&self, name: &str) -> Option<(u32, f64)> {
        self.clients
            .get(name)?
            .service_config
            .as_ref()?
            .retry_throttling
    }

    /// What decides client `name`'s channel (everything but its per-method policies and
    /// retry throttling), rendered: equal renderings build equal channels.
    #[cfg_attr(not(feature = "watch"), allow(dead_code))]
    pub(crate) fn channel_key(&self, name: &str) -> Option<String> {
        let s = self.clients.get(name)?;
        let sc = s.service_config.as_ref();
        Some(format!(
            "{:?}",
            (
                &s.target,
                &s.authority,
                (s.connect_timeout, s.queue_timeout, s.idle_timeout),
                &s.keepalive,
                &s.backoff,
                &s.http2,
                &s.tls,
                (s.max_requests_per_endpoint, s.max_requests),
                sc.map(|c| (&c.outlier_detection, &c.health_check)),
            )
        ))
    }

    /// What decides client `name`'s load-balancing policy, rendered.
    #[cfg_attr(not(feature = "watch"), allow(dead_code))]
    pub(crate) fn policy_key(&self, name: &str) -> String {
        self.clients
            .get(name)
            .and_then(|s| s.service_config.as_ref())
            .map(|c| c.balancing_source.clone())
            .unwrap_or_default()
    }

    /// Client `name`'s policy, as its service config chose it (or pick_first).
    #[cfg_attr(not(feature = "watch"), allow(dead_code))]
    pub(crate) fn policy_of(&self, name: &str) -> std::sync::Arc<dyn meshless_balancer::Policy> {
        self.clients
            .get(name)
            .and_then(|s| s.service_config.as_ref())
            .and_then(|c| c.policy.as_ref())
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| meshless_balancer::PickFirstConfig::default().into())
    }

    fn settings(&self, name: &str) -> Result<&schema::Settings, ClientError> {
        self.clients.get(name).ok_or_else(|| ClientError::Unknown {
            name: name.to_owned(),
            known: self.clients.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// A client's settings over the defaults': each key the client sets wins; its
/// `serviceConfig`, when given, replaces the defaults' whole.
fn merge(own: schema::Settings, d: &schema::Settings) -> schema::Settings {
    schema::Settings {
        target: own.target,
        authority: own.authority.or_else(|| d.authority.clone()),
        connect_timeout: own.connect_timeout.or(d.connect_timeout),
        queue_timeout: own.queue_timeout.or(d.queue_timeout),
        idle_timeout: own.idle_timeout.or(d.idle_timeout),
        keepalive: own.keepalive.or_else(|| d.keepalive.clone()),
        backoff: own.backoff.or_else(|| d.backoff.clone()),
        http2: own.http2.or_else(|| d.http2.clone()),
        tls: own.tls.or_else(|| d.tls.clone()),
        max_requests_per_endpoint: own
            .max_requests_per_endpoint
            .or(d.max_requests_per_endpoint),
        max_requests: own.max_requests.or(d.max_requests),
        service_config: own.service_config.or_else(|| d.service_config.clone()),
    }
}

mod build {
    use super::*;

    pub(super) fn builder(s: &schema::Settings) -> ChannelBuilder {
        let mut b = Channel::builder(s.target.clone().unwrap_or_default());
        if let Some(a) = s.authority.as_deref().and_then(|a| a.parse().ok()) {
            b = b.authority(a);
        }
        if let Some(d) = s.connect_timeout {
            b = b.connect_timeout(d);
        }
        if let Some(d) = s.queue_timeout {
            b = b.queue_timeout(d);
        }
        if let Some(d) = s.idle_timeout {
            b = b.idle_timeout(d);
        }
        if let Some(k) = &s.keepalive {
            b = b
                .keepalive(k.time, k.timeout)
                .keepalive_while_idle(k.permit_without_stream);
        }
        if let Some(bo) = &s.backoff {
            b = b.backoff(bo.clone());
        }
        if let Some(h) = s.http2.clone() {
            b = b.http2(h);
        }
        #[cfg(feature = "tls")]
        if let Some(t) = &s.tls {
            let mut tls = meshless_transport::TlsConfig::new();
            if let Some(ca) = &t.ca_file {
                tls = tls.ca_file(ca);
            }
            if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
                tls = tls.identity_files(c, k);
            }
            if let Some(n) = &t.server_name {
                tls = tls.server_name(n.clone());
            }
            b = b.tls(tls.assume_http2(t.assume_http2));
        }
        if let Some(n) = s.max_requests_per_endpoint {
            b = b.max_requests_per_endpoint(n);
        }
        if let Some(n) = s.max_requests {
            b = b.max_requests(n);
        }
        apply_service_config(b, s)
    }

    pub(super) fn apply_service_config(
        mut b: ChannelBuilder,
        s: &schema::Settings,
    ) -> ChannelBuilder {
        if let Some(sc) = &s.service_config {
            if let Some((_, p)) = &sc.policy {
                b = b.balancer(p.clone());
            }
            if let Some(od) = &sc.outlier_detection {
                b = b.outlier_detection(od.clone());
            }
            if let Some(h) = &sc.health_check {
                b = b.health_check(h.clone());
            }
        }
        b
    }

    pub(super) fn stack(s: &schema::Settings) -> Resilience {
        let Some(sc) = &s.service_config else {
            return Resilience::new();
        };
        let mut stack = Resilience::new().methods(sc.methods.clone());
        if let Some((max, ratio)) = sc.retry_throttling
            && let Ok(t) = RetryThrottle::new(max, ratio)
        {
            stack = stack.throttle(t);
        }
        stack
    }
}

/// A configured client: its channel, with its service config's per-method policies
/// applied. It is the transport of any tonic client.
#[derive(Debug, Clone)]
pub struct Client {
    service: Resilient<Channel>,
    channel: Channel,
}

impl Client {
    /// The channel below the resilience layers (for `status()` and `connect()`).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Client {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = ResilientFuture<tonic::body::Body>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.service.call(req)
    }
}
