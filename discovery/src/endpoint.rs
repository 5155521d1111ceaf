//! One backend instance as discovery reports it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::Address;

/// Free-form facts a discovery backend knows about an endpoint (Kubernetes `nodeName`,
/// Consul tags, SRV priority, ...). Sorted, so printing it is stable.
///
/// Shared, copy-on-write: endpoint sets are cloned on every update (thousands of endpoints
/// for a large Kubernetes Service), and cloning this is one reference count, not a map.
/// Read it as a `BTreeMap` (it derefs to one); change it with [`insert`](Metadata::insert).
#[derive(Clone, Default, Eq)]
pub struct Metadata(Arc<BTreeMap<String, String>>);

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Metadata::default()
    }

    /// Sets `key` to `value`, returning the old value (copies the map first if it is shared).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        Arc::make_mut(&mut self.0).insert(key.into(), value.into())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        Arc::make_mut(&mut self.0).remove(key)
    }
}

impl Deref for Metadata {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        Metadata(Arc::new(map))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Metadata(Arc::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Metadata key: the instance's version, where the registry keeps one (kratos's
/// `version`, a Consul `version=<v>` tag).
pub const META_VERSION: &str = "version";
/// Prefix of the metadata keys that carry an instance's own metadata as the registry holds
/// it (kratos `metadata`, Consul `Meta`): `meta.weight`, `meta.zone`, ...
pub const META_PREFIX: &str = "meta.";

/// The default weight of an endpoint whose backend gives none.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One backend instance: where it listens and what the balancer may want to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Where the endpoint listens; the identity of the endpoint.
    pub addr: Address,
    /// Relative weight for weighted policies ([`DEFAULT_WEIGHT`] when the backend gives none).
    /// A weight of 0 means "send nothing here unless nothing else is left".
    pub weight: u32,
    /// The zone (failure domain) the endpoint runs in, when the backend knows it.
    pub zone: Option<String>,
    /// Everything else the backend reported.
    pub metadata: Metadata,
    /// The `:authority` calls to this endpoint carry, when the backend knows better than the
    /// target's host (the channel's `.authority(..)` still overrides it). Backends set it
    /// only from data the service owner controls.
    pub authority: Option<String>,
    /// The name a TLS channel verifies in this endpoint's certificate, when the backend
    /// knows it. A channel uses it only from a discovery that says its names can be trusted
    /// ([`Discovery::trusted_names`](crate::Discovery::trusted_names)): whoever sets this
    /// chooses which certificate passes.
    pub tls_server_name: Option<String>,
}

impl Endpoint {
    /// An endpoint at `addr` with the default weight, no zone and no metadata.
    pub fn new(addr: impl Into<Address>) -> Self {
        Endpoint {
            addr: addr.into(),
            weight: DEFAULT_WEIGHT,
            zone: None,
            metadata: Metadata::new(),
            authority: None,
            tls_server_name: None,
        }
    }

    /// Sets the TLS server name to verify (see [`Endpoint::tls_server_name`]).
    #[must_use]
    pub fn with_tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Sets the `:authority` of calls to this endpoint (see [`Endpoint::authority`]).
    #[must_use]
    pub fn with_authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Sets the weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    #[must_use]
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }
}
