//! Service discovery for meshless: what a target is, what an endpoint is, and the
//! [`Discovery`] trait every backend implements.
//!
//! ```
//! use meshless_discovery::{Registry, Target};
//!
//! let target = Target::parse("static:///10.0.0.1:50051,10.0.0.2:50051").unwrap();
//! let discovery = Registry::default().build(&target).unwrap();
//! # let _ = discovery;
//! assert!(Target::parse("gopher:///x:1").unwrap_err().to_string().contains("unknown scheme"));
//! ```
//!
//! Backends are modules, each a [`Backend`] value registered whole in a [`Registry`] with
//! [`Registry::register`]. Always present: `static`, `ipv4`, `ipv6`, `unix`
//! ([`StaticScheme`], [`StaticDiscovery`]) and the code-driven [`ManualDiscovery`]. With the
//! `dns` cargo feature: `dns` and `dns+srv` (`dns::DnsScheme`); with `k8s`: `kubernetes`
//! and `k8s` (`k8s::K8sScheme`); with `consul`: `consul` (`consul::ConsulScheme`); with
//! `etcd`: `etcd` (`etcd::EtcdScheme`).
//!
//! Servers announce themselves through a [`Registrar`] (etcd, Consul), which keeps a
//! [`Registration`] alive until it is dropped.

#![warn(missing_docs)]

mod address;
pub mod backoff;
#[cfg(feature = "consul")]
pub mod consul;
mod discovery;
#[cfg(feature = "dns")]
pub mod dns;
mod endpoint;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "k8s")]
pub mod k8s;
#[cfg(any(feature = "consul", feature = "etcd"))]
mod lookup;
mod manual;
#[cfg(any(feature = "consul", feature = "etcd"))]
mod params;
mod registrar;
mod registry;
mod static_list;
mod target;
pub mod text;

pub use address::Address;
pub use discovery::{Discovery, DiscoveryError, ErrorKind, Update, UpdateStream};
pub use endpoint::{DEFAULT_WEIGHT, Endpoint, META_PREFIX, META_VERSION, Metadata};
pub use manual::{ManualDiscovery, ManualHandle};
pub use registrar::{
    DEREGISTER_TIMEOUT, Instance, Registrar, Registration, RegistrationState, RegistrationStatus,
    Reporter, Stop,
};
pub use registry::{Backend, Registry, Scheme};
pub use static_list::{StaticDiscovery, StaticScheme};
pub use target::{HostPort, Target, TargetError, is_dns_name, redact_target};
