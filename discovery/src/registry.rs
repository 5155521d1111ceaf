//! The scheme registry: which discovery backend serves which target scheme.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Discovery, Target, TargetError};

/// A discovery backend as the registry sees it: it checks targets of its scheme and builds
/// a [`Discovery`] for them. Building must be cheap and do no I/O; the work starts in
/// [`Discovery::watch`].
pub trait Scheme: Send + Sync + 'static {
    /// Checks that `target` is well formed for this scheme, naming the bad part if not.
    fn check(&self, target: &Target) -> Result<(), TargetError>;
    /// Builds the discovery for a target that passed [`check`](Scheme::check).
    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError>;
}

/// A discovery backend as it is registered: the target schemes it serves, each with the
/// [`Scheme`] that parses and builds its targets. Every backend of this crate is one value
/// ([`StaticScheme`](crate::StaticScheme), `dns::DnsScheme`, `k8s::K8sScheme`), so all are
/// registered the same way, `registry.register(DnsScheme::new(config))`; a scheme of your
/// own registers as a `(name, scheme)` pair.
pub trait Backend {
    /// The scheme names this backend serves and the scheme of each.
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)>;
}

/// One scheme under one name: `registry.register(("consul", MyConsulScheme::new()))`.
impl<S: Scheme> Backend for (&str, S) {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        vec![(self.0.to_owned(), Arc::new(self.1))]
    }
}

/// One scheme under one name, already shared.
impl Backend for (&str, Arc<dyn Scheme>) {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        vec![(self.0.to_owned(), self.1)]
    }
}

/// Maps target schemes to discovery backends.
///
/// [`Registry::default`] holds every scheme compiled into this build: `static`, `ipv4`,
/// `ipv6` and `unix` always, and the schemes of enabled cargo features. Add or replace
/// backends with [`Registry::register`]:
///
/// ```
/// use std::sync::Arc;
/// use meshless_discovery::{
///     Discovery, Endpoint, Registry, Scheme, StaticDiscovery, Target, TargetError,
/// };
///
/// /// `fixed:` always answers one address.
/// struct Fixed;
/// impl Scheme for Fixed {
///     fn check(&self, _: &Target) -> Result<(), TargetError> {
///         Ok(())
///     }
///     fn build(&self, _: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
///         let addr: std::net::SocketAddr = "10.0.0.1:50051".parse().unwrap();
///         Ok(Arc::new(StaticDiscovery::new(vec![Endpoint::new(addr)])))
///     }
/// }
///
/// let mut registry = Registry::default();
/// registry.register(("fixed", Fixed));
/// assert!(registry.parse("fixed:anything").is_ok());
/// ```
#[derive(Clone)]
pub struct Registry {
    schemes: BTreeMap<String, Arc<dyn Scheme>>,
}

/// Schemes that exist but live behind a cargo feature, so the error can say which one.
const FEATURE_SCHEMES: &[(&str, &str)] = &[
    ("dns", "dns"),
    ("dns+srv", "dns"),
    ("kubernetes", "k8s"),
    ("k8s", "k8s"),
    ("etcd", "etcd"),
    ("consul", "consul"),
];

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry::empty();
        r.register(crate::StaticScheme);
        #[cfg(feature = "dns")]
        r.register(crate::dns::DnsScheme::default());
        #[cfg(feature = "k8s")]
        r.register(crate::k8s::K8sScheme::default());
        #[cfg(feature = "consul")]
        r.register(crate::consul::ConsulScheme::default());
        #[cfg(feature = "etcd")]
        r.register(crate::etcd::EtcdScheme::default());
        r
    }
}

impl Registry {
    /// A registry with no schemes at all.
    pub fn empty() -> Self {
        Registry {
            schemes: BTreeMap::new(),
        }
    }

    /// Registers `backend` under each of its schemes (matched case-insensitively), replacing
    /// what served them before.
    pub fn register(&mut self, backend: impl Backend) -> &mut Self {
        for (scheme, s) in backend.into_schemes() {
            self.schemes.insert(scheme.to_ascii_lowercase(), s);
        }
        self
    }

    /// The registered scheme names, sorted.
    pub fn schemes(&self) -> impl Iterator<Item = &str> {
        self.schemes.keys().map(String::as_str)
    }

    /// Parses `input` and checks it with the backend of its scheme.
    pub fn parse(&self, input: &str) -> Result<Target, TargetError> {
        let target = match Target::split(input) {
            Ok(t) => t,
            Err(TargetError::MissingScheme { input, .. }) => {
                return Err(TargetError::MissingScheme {
                    hint: self.bare_hint(&input),
                    input,
                });
            }
            Err(e) => return Err(e),
        };
        self.backend(&target)?.check(&target)?;
        Ok(target)
    }

    /// Builds the discovery for `target`.
    pub fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        let backend = self.backend(target)?;
        backend.check(target)?;
        backend.build(target)
    }

    fn backend(&self, target: &Target) -> Result<&Arc<dyn Scheme>, TargetError> {
        if let Some(b) = self.schemes.get(target.scheme()) {
            return Ok(b);
        }
        if let Some((_, feature)) = FEATURE_SCHEMES.iter().find(|(s, _)| *s == target.scheme()) {
            return Err(TargetError::FeatureDisabled {
                scheme: target.scheme().to_owned(),
                input: target.as_str().to_owned(),
                feature,
            });
        }
        // `localhost:50051` splits as scheme `localhost`: say what was probably meant.
        let hint = if target.endpoint().parse::<u16>().is_ok() {
            self.bare_hint(target.as_str())
        } else {
            String::new()
        };
        Err(TargetError::UnknownScheme {
            scheme: target.scheme().to_owned(),
            input: target.as_str().to_owned(),
            known: self.schemes().collect::<Vec<_>>().join(", "),
            hint,
        })
    }

    fn bare_hint(&self, input: &str) -> String {
        if self.schemes.contains_key("dns") {
            format!(" (did you mean `dns:///{input}` or `static:///{input}`?)")
        } else {
            format!(" (did you mean `static:///{input}`?)")
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.schemes()).finish()
    }
}
