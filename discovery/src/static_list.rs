//! Fixed endpoint lists: the `static`, `ipv4`, `ipv6` and `unix` schemes.
//!
//! - `ipv4:10.0.0.1:50051,10.0.0.2:50051` and `ipv6:[::1]:50051,[fe80::1]:50051`: IP
//!   literals with ports, as in gRPC's naming document (the port is required here).
//! - `unix:relative/path`, `unix:/absolute/path` and `unix:///absolute/path`.
//! - `static:///host1:50051,10.0.0.2:50051`: names or IP literals. Names are resolved once
//!   with the system resolver; a name that does not resolve is retried with the shared
//!   [`Backoff`](crate::backoff::Backoff) (0.5 s, ×1.6, jitter 0.2, cap 30 s).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, BackoffConfig};
use crate::target::HostPort;
use crate::{
    Address, Backend, Discovery, DiscoveryError, Endpoint, ErrorKind, Scheme, Target, TargetError,
    Update, UpdateStream,
};

/// How long one system lookup of a static host name may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after a failed lookup; grows as gRPC's backoff up to [`LOOKUP_RETRY_MAX`].
const LOOKUP_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay after failed lookups.
const LOOKUP_RETRY_MAX: Duration = Duration::from_secs(30);

/// The retry backoff of failed lookups: gRPC's, from [`LOOKUP_RETRY_MIN`] to [`LOOKUP_RETRY_MAX`].
fn lookup_backoff() -> Backoff {
    Backoff::new(
        BackoffConfig::default()
            .base_delay(LOOKUP_RETRY_MIN)
            .max_delay(LOOKUP_RETRY_MAX),
    )
}

/// The backend of the `static`, `ipv4`, `ipv6` and `unix` schemes, for a [`Registry`](crate::Registry)
/// (the default one has it; `Registry::empty().register(StaticScheme)` adds it to an empty
/// one).
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticScheme;

impl Backend for StaticScheme {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        vec![
            ("static".to_owned(), Arc::new(ListScheme::Static)),
            ("ipv4".to_owned(), Arc::new(ListScheme::Ipv4)),
            ("ipv6".to_owned(), Arc::new(ListScheme::Ipv6)),
            ("unix".to_owned(), Arc::new(UnixScheme)),
        ]
    }
}

#[derive(Debug, Clone, Copy)]
enum ListScheme {
    Static,
    Ipv4,
    Ipv6,
}

impl ListScheme {
    fn parse(self, target: &Target) -> Result<Vec<HostPort>, TargetError> {
        target.expect_no_authority()?;
        let mut out = Vec::new();
        for part in target.endpoint_list()? {
            let hp = target.host_port(part)?;
            let ok = matches!(
                (self, &hp),
                (ListScheme::Static, _)
                    | (ListScheme::Ipv4, HostPort::Ip(SocketAddr::V4(_)))
                    | (ListScheme::Ipv6, HostPort::Ip(SocketAddr::V6(_)))
            );
            if !ok {
                let input = target.as_str().to_owned();
                let part = part.to_owned();
                return Err(match self {
                    ListScheme::Ipv6 => TargetError::BadIpv6 { input, part },
                    _ => TargetError::BadIpv4 { input, part },
                });
            }
            out.push(hp);
        }
        Ok(out)
    }
}

impl Scheme for ListScheme {
    fn check(&self, target: &Target) -> Result<(), TargetError> {
        self.parse(target).map(drop)
    }

    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        Ok(Arc::new(StaticDiscovery {
            source: Source::Hosts(Arc::new(self.parse(target)?)),
        }))
    }
}

#[derive(Debug)]
struct UnixScheme;

impl UnixScheme {
    fn path(target: &Target) -> Result<PathBuf, TargetError> {
        let bad = |reason: &str| TargetError::BadUnixPath {
            input: target.as_str().to_owned(),
            reason: reason.to_owned(),
        };
        // `unix:///abs` is the absolute path `/abs`; `unix:path` is taken as written.
        let rest = &target.as_str()["unix:".len()..];
        let path = match rest.strip_prefix("//") {
            Some(abs) if abs.starts_with('/') => abs,
            Some(_) => {
                return Err(bad(
                    "`unix://` must be followed by an absolute path, as in `unix:///run/app.sock`",
                ));
            }
            None => rest,
        };
        if path.is_empty() {
            return Err(bad("no socket path after `unix:`"));
        }
        if path.contains(',') {
            return Err(bad(
                "a unix target names one socket; lists are not supported",
            ));
        }
        Ok(PathBuf::from(path))
    }
}

impl Scheme for UnixScheme {
    fn check(&self, target: &Target) -> Result<(), TargetError> {
        Self::path(target).map(drop)
    }

    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        Ok(Arc::new(StaticDiscovery::new(vec![Endpoint::new(
            Address::Unix(Self::path(target)?),
        )])))
    }
}

/// A fixed list of endpoints. Host names in it are resolved once.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Fully formed endpoints, given from code: weights and metadata are kept.
    Endpoints(Arc<Vec<Endpoint>>),
    /// `host:port` pairs from a target; names still to resolve.
    Hosts(Arc<Vec<HostPort>>),
}

impl StaticDiscovery {
    /// A discovery that always reports exactly `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        StaticDiscovery {
            source: Source::Endpoints(Arc::new(endpoints)),
        }
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self) -> UpdateStream {
        match &self.source {
            Source::Endpoints(eps) => Box::pin(futures_util::stream::iter([Ok(Update::Reset(
                eps.as_ref().clone(),
            ))])),
            Source::Hosts(hosts) => Box::pin(resolve_stream(hosts.clone())),
        }
    }

    /// The list is the application's own configuration.
    fn trusted_names(&self) -> bool {
        true
    }
}

/// Resolves the hosts until it succeeds once, yielding each failure on the way.
fn resolve_stream(
    hosts: Arc<Vec<HostPort>>,
) -> impl futures_core::Stream<Item = Result<Update, DiscoveryError>> + Send {
    // State: the wait before the next attempt and the backoff; `None` once resolved.
    futures_util::stream::unfold(Some((Duration::ZERO, lookup_backoff())), move |state| {
        let hosts = hosts.clone();
        async move {
            let (wait, mut backoff) = state?;
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match resolve_all(&hosts).await {
                Ok(eps) => Some((Ok(Update::Reset(eps)), None)),
                Err(e) => {
                    let next = backoff.next_delay();
                    Some((Err(e), Some((next, backoff))))
                }
            }
        }
    })
}

async fn resolve_all(hosts: &[HostPort]) -> Result<Vec<Endpoint>, DiscoveryError> {
    let mut out: Vec<Endpoint> = Vec::with_capacity(hosts.len());
    for hp in hosts {
        match hp {
            HostPort::Ip(sa) => push_unique(&mut out, Endpoint::new(*sa)),
            HostPort::Name(name, port) => {
                let lookup = tokio::net::lookup_host((name.as_str(), *port));
                let addrs = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
                    Ok(Err(e)) => {
                        return Err(DiscoveryError::new(
                            ErrorKind::Resolve,
                            format!(
                                "static host `{name}:{port}` does not resolve: {e}; check the name or use an IP address"
                            ),
                        ));
                    }
                    Err(_) => {
                        return Err(DiscoveryError::new(
                            ErrorKind::Unavailable,
                            format!(
                                "looking up static host `{name}` timed out after {LOOKUP_TIMEOUT:?}; is the system resolver reachable?"
                            ),
                        ));
                    }
                };
                for sa in addrs {
                    push_unique(&mut out, Endpoint::new(sa));
                }
            }
        }
    }
    Ok(out)
}

fn push_unique(out: &mut Vec<Endpoint>, ep: Endpoint) {
    if !out.iter().any(|e| e.addr == ep.addr) {
        out.push(ep);
    }
}
