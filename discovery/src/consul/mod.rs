//! Consul discovery and registration, interoperable with go-zero (zero-contrib) and kratos.
//!
//! **Discovery** watches `/v1/health/service/<name>` with blocking queries. The target is
//! go-zero's, with its parameter names ([`ConsulTarget`]):
//!
//! ```text
//! consul://[user:password@]agent-host:8500/service?wait=14s&tag=grpc&healthy=true&token=..
//! ```
//!
//! - Only instances whose checks all pass are used, by default. go-zero's default is the
//!   opposite (`healthy=false`: critical instances too); write `healthy=false` or
//!   `health=any` for that, and `health=warning` to keep instances with warning checks at
//!   their `Weights.Warning`.
//! - An endpoint's address is the instance's `grpc` (or `grpcs`) tagged address when it
//!   has one (kratos), else `Service.Address` (or the node's address) and `Service.Port`
//!   (go-zero). Its weight is `Weights.Passing`, overridden by `Meta.weight` (kratos). Its
//!   metadata carries the tags, id, node, datacenter, `version` tag and every `Meta`
//!   entry (see the `META_*` constants).
//! - A Consul agent that is down or answers 5xx keeps the last known set serving, with
//!   backoff, and the channel's status says so; 403 names the missing `service:read`;
//!   an entry that cannot be used is skipped and reported, the others serve. An empty
//!   passing set after a good one is applied: Consul says no instance passes.
//! - The agent is spoken to over plain HTTP (an agent on the node, as Consul deploys
//!   them); an HTTPS agent is not supported yet.
//!
//! **Registration** ([`ConsulRegistrar`]) writes go-zero's or kratos's record through
//! `PUT /v1/agent/service/register`, passes its TTL check, registers again whenever the
//! agent forgets it (an agent restart), forever, and deregisters on drop.

mod client;
mod health;
mod register;
mod target;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use crate::{META_PREFIX, META_VERSION};
pub use health::{
    META_CONSUL_DC, META_CONSUL_HEALTH, META_CONSUL_ID, META_CONSUL_NODE, META_CONSUL_TAGS,
};
pub use register::{
    ConsulFormat, ConsulRegistrar, DEFAULT_TTL, GrpcCheck, KRATOS_DEREGISTER_AFTER,
    KRATOS_TCP_INTERVAL,
};
pub use target::{ConsulTarget, DEFAULT_MAX_BACKOFF, DEFAULT_WAIT, HealthFilter, MAX_WAIT};

use crate::backoff::BackoffConfig;
use crate::{Backend, Discovery, Scheme, Target, TargetError, UpdateStream};

/// Default least time between the starts of two queries of one watch, sustained.
pub const DEFAULT_MIN_QUERY_INTERVAL: Duration = Duration::from_millis(50);
/// How many queries may start back to back before the rate limit applies: a watch that
/// has been blocking answers a change at once, and a loop that spins is still held to one
/// query per `min_query_interval`.
pub const QUERY_BURST: u32 = 5;

/// Configuration of Consul discovery beyond what the target says.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// The backoff between failed queries; its longest delay is the target's
    /// `max-backoff` (30 s by default).
    pub backoff: BackoffConfig,
    /// The least time between the starts of two queries, sustained (after a burst of
    /// [`QUERY_BURST`]), so an agent that answers at once every time cannot spin the loop.
    /// Default: [`DEFAULT_MIN_QUERY_INTERVAL`].
    pub min_query_interval: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            backoff: BackoffConfig::default().base_delay(Duration::from_millis(200)),
            min_query_interval: DEFAULT_MIN_QUERY_INTERVAL,
        }
    }
}

impl ConsulConfig {
    /// Sets the backoff between failed queries.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the least time between two queries.
    #[must_use]
    pub fn min_query_interval(mut self, d: Duration) -> Self {
        self.min_query_interval = d;
        self
    }
}

/// The `consul` scheme for a [`Registry`](crate::Registry):
/// `registry.register(ConsulScheme::new(config))`.
#[derive(Debug, Clone, Default)]
pub struct ConsulScheme {
    config: ConsulConfig,
}

impl ConsulScheme {
    /// A scheme whose discoveries use `config`.
    pub fn new(config: ConsulConfig) -> Self {
        ConsulScheme { config }
    }
}

impl Backend for ConsulScheme {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        vec![("consul".to_owned(), Arc::new(self))]
    }
}

impl Scheme for ConsulScheme {
    fn check(&self, target: &Target) -> Result<(), TargetError> {
        ConsulTarget::parse(target).map(drop)
    }

    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        Ok(Arc::new(ConsulDiscovery::new(target, self.config.clone())?))
    }
}

/// Watches the instances of one Consul service.
#[derive(Debug, Clone)]
pub struct ConsulDiscovery {
    label: String,
    target: ConsulTarget,
    config: ConsulConfig,
}

impl ConsulDiscovery {
    /// Discovery for a `consul:` target.
    pub fn new(target: &Target, config: ConsulConfig) -> Result<Self, TargetError> {
        Ok(ConsulDiscovery {
            label: target::redact(target.as_str()),
            target: ConsulTarget::parse(target)?,
            config,
        })
    }

    /// The parsed target.
    pub fn target(&self) -> &ConsulTarget {
        &self.target
    }
}

impl Discovery for ConsulDiscovery {
    fn watch(&self) -> UpdateStream {
        watch::watch(self.label.clone(), self.target.clone(), self.config.clone())
    }
}
