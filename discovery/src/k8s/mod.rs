//! Kubernetes discovery: watches the EndpointSlices of a Service, so every ready pod gets
//! calls and scale-ups, scale-downs and rolling updates are seen as they happen.
//!
//! Targets: `kubernetes:///service.namespace:port`, `kubernetes:///service:port` (the
//! client's namespace), `kubernetes://namespace/service:port` and go-zero's
//! `k8s://namespace/service:port`. The port is a number (the pods' port, as the slices list
//! it) or a port name; it may be left out when the service has exactly one port.
//!
//! It needs only `list` and `watch` on `endpointslices` in API group `discovery.k8s.io`, in
//! the service's namespace (see `examples/k8s/rbac.yaml`). EndpointSlice `discovery.k8s.io/v1`
//! exists from Kubernetes 1.21.
//!
//! ```no_run
//! use meshless_discovery::Target;
//! let target = Target::parse("kubernetes:///greeter.prod:grpc").unwrap();
//! ```

mod slices;
mod target;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use slices::{AddressFamily, SERVICE_NAME_LABEL};
pub use target::{PortSpec, ServiceTarget};

use crate::backoff::BackoffConfig;
use crate::{Backend, Discovery, Scheme, Target, TargetError, UpdateStream};

/// Default first delay before retrying a failed list or watch (kube-runtime's default).
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(800);
/// Default longest delay between retries (kube-runtime's default).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Configuration of Kubernetes discovery.
#[derive(Clone)]
#[non_exhaustive]
pub struct K8sConfig {
    /// The client to use. Default: built from the environment, as `kube::Client::try_default`
    /// does: in-cluster service-account credentials (the token is re-read as it rotates) or
    /// `KUBECONFIG` / `~/.kube/config`.
    pub client: Option<kube::Client>,
    /// A kubeconfig file to build the client from, when no `client` is given.
    pub kubeconfig: Option<PathBuf>,
    /// The namespace for targets that name none. Default: the client's (the pod's own
    /// namespace in a cluster, the kubeconfig context's outside).
    pub namespace: Option<String>,
    /// The address family used when a Service has both (dual stack). The other family is
    /// used when the preferred one has no usable endpoint. Default: IPv4.
    pub family: AddressFamily,
    /// The retry backoff after a failed client build, list or watch: gRPC's (×1.6, jitter
    /// 0.2) from [`DEFAULT_BACKOFF_MIN`] to [`DEFAULT_BACKOFF_MAX`] by default.
    pub backoff: BackoffConfig,
}

impl Default for K8sConfig {
    fn default() -> Self {
        K8sConfig {
            client: None,
            kubeconfig: None,
            namespace: None,
            family: AddressFamily::default(),
            backoff: BackoffConfig::default()
                .base_delay(DEFAULT_BACKOFF_MIN)
                .max_delay(DEFAULT_BACKOFF_MAX),
        }
    }
}

impl K8sConfig {
    /// Uses this client.
    #[must_use]
    pub fn client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the client from this kubeconfig file.
    #[must_use]
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// Sets the default namespace.
    #[must_use]
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Sets the preferred address family.
    #[must_use]
    pub fn family(mut self, family: AddressFamily) -> Self {
        self.family = family;
        self
    }

    /// Sets the retry backoff after failures.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
}

impl std::fmt::Debug for K8sConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sConfig")
            .field("client", &self.client.as_ref().map(|_| "kube::Client"))
            .field("kubeconfig", &self.kubeconfig)
            .field("namespace", &self.namespace)
            .field("family", &self.family)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// The `kubernetes` and `k8s` schemes for a [`Registry`](crate::Registry), with one
/// [`K8sConfig`]: `registry.register(K8sScheme::new(config))` replaces the default ones.
#[derive(Debug, Clone, Default)]
pub struct K8sScheme {
    config: K8sConfig,
}

impl K8sScheme {
    /// A scheme whose discoveries use `config`.
    pub fn new(config: K8sConfig) -> Self {
        K8sScheme { config }
    }
}

impl Backend for K8sScheme {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        let scheme: Arc<dyn Scheme> = Arc::new(self);
        vec![
            ("kubernetes".to_owned(), scheme.clone()),
            ("k8s".to_owned(), scheme),
        ]
    }
}

impl Scheme for K8sScheme {
    fn check(&self, target: &Target) -> Result<(), TargetError> {
        ServiceTarget::parse(target).map(drop)
    }

    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        Ok(Arc::new(K8sDiscovery::new(target, self.config.clone())?))
    }
}

/// Watches the EndpointSlices of one Service.
#[derive(Debug, Clone)]
pub struct K8sDiscovery {
    label: String,
    target: ServiceTarget,
    config: K8sConfig,
}

impl K8sDiscovery {
    /// Discovery for `target` (a `kubernetes:` or `k8s:` target) with `config`.
    pub fn new(target: &Target, config: K8sConfig) -> Result<Self, TargetError> {
        Ok(K8sDiscovery {
            label: target.as_str().to_owned(),
            target: ServiceTarget::parse(target)?,
            config,
        })
    }
}

impl Discovery for K8sDiscovery {
    fn watch(&self) -> UpdateStream {
        watch::watch(self.label.clone(), self.target.clone(), self.config.clone())
    }
}
