//! One backend instance as discovery reports it.

use std::collections::BTreeMap;

use crate::Address;

/// Free-form facts a discovery backend knows about an endpoint (Kubernetes `nodeName`,
/// Consul tags, SRV priority, ...). Sorted, so printing it is stable.
pub type Metadata = BTreeMap<String, String>;

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
}

impl Endpoint {
    /// An endpoint at `addr` with the default weight, no zone and no metadata.
    pub fn new(addr: impl Into<Address>) -> Self {
        Endpoint {
            addr: addr.into(),
            weight: DEFAULT_WEIGHT,
            zone: None,
            metadata: Metadata::new(),
        }
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
        self.metadata.insert(key.into(), value.into());
        self
    }
}
