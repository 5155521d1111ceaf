//! etcd discovery and registration, interoperable with go-zero (`core/discov`) and kratos
//! (`contrib/registry/etcd`), on etcd-client.
//!
//! **Discovery** lists a key prefix and watches it from the list's revision + 1
//! ([`EtcdTarget`] gives the syntax):
//!
//! ```text
//! etcd:///10.0.0.1:2379,10.0.0.2:2379?key=user.rpc       go-zero, prefix `user.rpc/`
//! etcd://10.0.0.1:2379/user.rpc                          go-zero before v1.10.2
//! etcd:///10.0.0.1:2379?key=helloworld&format=kratos     kratos, `/microservices/helloworld/`
//! ```
//!
//! - go-zero values are `host:port`; kratos values are JSON service instances, of which
//!   the first `grpc://` endpoint (`scheme=grpcs`: `grpcs://`) is used, with the weight
//!   from `metadata.weight`, the version and the metadata in the endpoint's metadata (see
//!   the `META_*` constants). Instances whose `name` is not the service's are left out.
//! - A value that does not parse is skipped, reported in the channel's status and the
//!   logs, and the others serve. The same address under several keys is one endpoint.
//! - The watch resumes from the last revision it saw after a broken stream; a revision
//!   that etcd compacted away makes it list the prefix again and apply the list as one
//!   snapshot. Every request requires a leader, and a silent watch asks for progress
//!   every [`EtcdConfig::progress_interval`], so a member cut off from its cluster is
//!   noticed and left.
//! - An etcd that is down or refuses us keeps the last known set serving, says so in the
//!   channel's status, and is retried with jittered backoff. An empty set is applied only
//!   when etcd lists the prefix as empty.
//!
//! **Registration** ([`EtcdRegistrar`]) grants a lease, puts the instance's key with it in
//! go-zero's or kratos's format, keeps the lease alive, puts the key back when someone
//! deletes it, grants a new lease when the old one is lost (etcd restarted without its
//! data, a partition longer than the TTL, an operator's revoke), forever, and revokes the
//! lease on drop.
//!
//! etcd-client is re-exported as [`etcd_client`] for applications that want to talk to
//! the same cluster.

mod client;
mod register;
mod target;
mod value;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use etcd_client;
pub use register::{EtcdRegistrar, GO_ZERO_TTL, KRATOS_TTL};
pub use target::{
    DEFAULT_DIAL_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_REQUEST_TIMEOUT, EtcdCluster, EtcdFormat,
    EtcdTarget, EtcdTls, KRATOS_NAMESPACE,
};

use crate::backoff::BackoffConfig;
use crate::{Backend, Discovery, Scheme, Target, TargetError, UpdateStream};

/// Metadata key: the etcd key an endpoint was read from.
pub const META_ETCD_KEY: &str = "etcd.key";
/// Metadata key: a kratos instance's `id`.
pub const META_KRATOS_ID: &str = "kratos.id";

/// Default time a watch may be silent before it asks etcd for progress.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(20);

/// Configuration of etcd discovery beyond what the target says.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// The backoff between failed attempts; its longest delay is the target's
    /// `max-backoff` (30 s by default).
    pub backoff: BackoffConfig,
    /// How long a watch may be silent before it asks etcd for progress; when the answer
    /// does not come within the target's `timeout`, the member is left and the watch
    /// resumes on a new connection. Default: [`DEFAULT_PROGRESS_INTERVAL`].
    pub progress_interval: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            backoff: BackoffConfig::default().base_delay(Duration::from_millis(200)),
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

impl EtcdConfig {
    /// Sets the backoff between failed attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets how long a watch may be silent before it asks for progress.
    #[must_use]
    pub fn progress_interval(mut self, d: Duration) -> Self {
        self.progress_interval = d.max(Duration::from_millis(10));
        self
    }
}

/// The `etcd` scheme for a [`Registry`](crate::Registry):
/// `registry.register(EtcdScheme::new(config))`.
#[derive(Debug, Clone, Default)]
pub struct EtcdScheme {
    config: EtcdConfig,
}

impl EtcdScheme {
    /// A scheme whose discoveries use `config`.
    pub fn new(config: EtcdConfig) -> Self {
        EtcdScheme { config }
    }
}

impl Backend for EtcdScheme {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        vec![("etcd".to_owned(), Arc::new(self))]
    }
}

impl Scheme for EtcdScheme {
    fn check(&self, target: &Target) -> Result<(), TargetError> {
        EtcdTarget::parse(target).map(drop)
    }

    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        Ok(Arc::new(EtcdDiscovery::new(target, self.config.clone())?))
    }
}

/// Watches the instances under one etcd key prefix.
#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    label: String,
    target: EtcdTarget,
    config: EtcdConfig,
}

impl EtcdDiscovery {
    /// Discovery for an `etcd:` target.
    pub fn new(target: &Target, config: EtcdConfig) -> Result<Self, TargetError> {
        Ok(EtcdDiscovery {
            label: crate::redact_target(target.as_str()),
            target: EtcdTarget::parse(target)?,
            config,
        })
    }

    /// The parsed target.
    pub fn target(&self) -> &EtcdTarget {
        &self.target
    }
}

impl Discovery for EtcdDiscovery {
    fn watch(&self) -> UpdateStream {
        watch::watch(self.label.clone(), self.target.clone(), self.config.clone())
    }
}
