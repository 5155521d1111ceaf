//! DNS discovery (cargo feature `dns`): the `dns:` and `dns+srv:` schemes, on
//! [hickory-resolver](https://docs.rs/hickory-resolver).
//!
//! ```no_run
//! use std::time::Duration;
//! use meshless_discovery::Registry;
//! use meshless_discovery::dns::{DnsConfig, DnsScheme};
//!
//! // The default registry resolves `dns:` targets with the system configuration...
//! let target = Registry::default().parse("dns:///greeter.prod.svc.cluster.local:50051").unwrap();
//! # let _ = target;
//! // ...or register the schemes with a configuration of your own.
//! let mut registry = Registry::default();
//! registry.register(DnsScheme::new(
//!     DnsConfig::default()
//!         .name_servers(["10.0.0.53:53".parse().unwrap()])
//!         .ttl_bounds(Duration::from_secs(1), Duration::from_secs(10)),
//! ));
//! let discovery = registry.build(&registry.parse("dns+srv:///_grpc._tcp.greeter.prod").unwrap());
//! # let _ = discovery;
//! ```
//!
//! # Targets
//!
//! - `dns:///host:port`: the A and AAAA records of `host`, one endpoint per address, all
//!   with `port`. The port defaults to **443**, as in gRPC's naming document. IP literals
//!   (`dns:///10.0.0.1:50051`, `dns:///[::1]:50051`) resolve without a lookup.
//! - `dns://server/host:port`: the same, asking the DNS server at `server` (an IP address,
//!   port 53 unless given: `dns://10.0.0.53:5353/host:port`), as in gRPC naming.
//! - `dns+srv:///_grpc._tcp.name` (and `dns+srv://server/...`): the SRV records of the name
//!   (RFC 2782). Each record's target host is resolved to addresses; the record gives the
//!   port and the weight (→ [`Endpoint::weight`](crate::Endpoint::weight), for
//!   `weighted_round_robin`). Only the lowest priority value that yields any address is
//!   used; the next priority is the fallback when the first has no records or no addresses.
//!   Endpoints carry the metadata [`META_SRV_TARGET`] and [`META_SRV_PRIORITY`].
//!
//! # Behaviour
//!
//! - **Re-resolution** when the answer's TTL expires, clamped to
//!   [`DnsConfig::ttl_bounds`] (1 s to 30 s by default), or on a fixed
//!   [`refresh_interval`](DnsConfig::refresh_interval) instead. A connection failure
//!   ([`Discovery::resolve_now`]) brings the next resolution forward, but no closer than
//!   [`resolve_now_min_interval`](DnsConfig::resolve_now_min_interval) (5 s) after the last.
//! - **Failures** (timeout, SERVFAIL, REFUSED, unreadable answers) keep the last good set,
//!   are yielded as errors (the channel shows them in its status) and are retried with
//!   the shared gRPC backoff ([`DnsConfig::backoff`]: 1 s, ×1.6, jitter 0.2, cap 30 s). A first
//!   resolution that fails names the host and the server asked.
//! - **NXDOMAIN or an empty answer** after a good one keeps the last set for
//!   [`EmptyAnswer::KeepFor`] 60 s by default ([`on_empty`](DnsConfig::on_empty)), then
//!   empties it.
//! - **Addresses** of both families by default, IPv6 first, interleaved v6, v4, v6, ...
//!   (RFC 8305 happy eyeballs) so that `pick_first` tries both families early; see
//!   [`IpFamilies`]. The same answer always gives the same order.
//! - **Configuration** comes from `/etc/resolv.conf` unless servers are given in the target
//!   or in [`DnsConfig::name_servers`].
//! - Resolution runs only while the watch stream is polled; dropping it stops everything.
//!
//! [`Discovery::resolve_now`]: crate::Discovery::resolve_now

mod resolver;
mod schedule;
mod srv;
mod target;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use resolver::{META_SRV_PRIORITY, META_SRV_TARGET};
pub use target::{DEFAULT_DNS_SERVER_PORT, DEFAULT_PORT};

use crate::backoff::BackoffConfig;
use crate::{Backend, Discovery, Endpoint, Scheme, Target, TargetError, Update, UpdateStream};
use target::{DnsTarget, Query};

/// Default lower bound of the re-resolution delay: a TTL of 0 must not make a busy loop.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// Default upper bound of the re-resolution delay: a long TTL must not hide new backends
/// for long (grpc-go's complaint: it re-resolves only after failures, at most every 30 s).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(30);
/// Default minimum time between two resolutions triggered by connection failures, so that a
/// burst of failing connections costs one query, not one each.
pub const DEFAULT_RESOLVE_NOW_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Default first retry delay after a failed resolution (the `base_delay` of the default
/// [`DnsConfig::backoff`]; gRPC's `INITIAL_BACKOFF`).
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Default longest retry delay after failed resolutions (the `max_delay` of the default
/// [`DnsConfig::backoff`]): shorter than gRPC's 120 s, so a resolver that comes back is seen
/// within half a minute, as with [`DEFAULT_MAX_TTL`].
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Default time the last set is kept while the name answers NXDOMAIN or nothing: long enough
/// to ride out a zone reload or a headless Service being recreated, short enough that the
/// endpoints of a deleted service go within a minute.
pub const DEFAULT_KEEP_ON_EMPTY: Duration = Duration::from_secs(60);
/// Default timeout of one DNS query (resolv.conf's default `timeout:5`).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default attempts per DNS query (resolv.conf's default `attempts:2`).
pub const DEFAULT_QUERY_ATTEMPTS: usize = 2;

// ===== DnsConfig =====

/// Which address families to look up, and in which order to offer them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpFamilies {
    /// A and AAAA, interleaved starting with IPv6 (RFC 8305's recommendation). The default.
    #[default]
    Ipv6ThenIpv4,
    /// A and AAAA, interleaved starting with IPv4.
    Ipv4ThenIpv6,
    /// A records only.
    Ipv4Only,
    /// AAAA records only.
    Ipv6Only,
}

impl IpFamilies {
    fn wants_v4(self) -> bool {
        self != IpFamilies::Ipv6Only
    }
    fn wants_v6(self) -> bool {
        self != IpFamilies::Ipv4Only
    }
    fn prefers_v6(self) -> bool {
        matches!(self, IpFamilies::Ipv6ThenIpv4 | IpFamilies::Ipv6Only)
    }
    fn record_names(self) -> &'static str {
        match self {
            IpFamilies::Ipv4Only => "A",
            IpFamilies::Ipv6Only => "AAAA",
            _ => "A or AAAA",
        }
    }
}

/// What to do when a name that had addresses answers NXDOMAIN or no records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmptyAnswer {
    /// Keep the last set for this long (checked on every retry), then empty it. The default,
    /// with [`DEFAULT_KEEP_ON_EMPTY`]. `Duration::MAX` keeps it for good.
    KeepFor(Duration),
    /// Empty the set at once: the answer is the truth.
    Clear,
}

impl Default for EmptyAnswer {
    fn default() -> Self {
        EmptyAnswer::KeepFor(DEFAULT_KEEP_ON_EMPTY)
    }
}

/// Configuration of DNS discovery. Build it from [`DnsConfig::default`] with the methods
/// below; every default is a named constant of this module.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DnsConfig {
    /// DNS servers to ask. Empty (the default) means the system's, from `/etc/resolv.conf`.
    /// A server in the target's authority (`dns://10.0.0.53/...`) overrides these.
    pub name_servers: Vec<SocketAddr>,
    /// Shortest delay before re-resolving, whatever the TTL ([`DEFAULT_MIN_TTL`]).
    pub min_ttl: Duration,
    /// Longest delay before re-resolving, whatever the TTL ([`DEFAULT_MAX_TTL`]).
    pub max_ttl: Duration,
    /// Re-resolve on this fixed interval instead of on TTL expiry. Default: `None`.
    pub refresh_interval: Option<Duration>,
    /// Minimum time between the last resolution and one brought forward by a connection
    /// failure ([`DEFAULT_RESOLVE_NOW_MIN_INTERVAL`]).
    pub resolve_now_min_interval: Duration,
    /// The retry backoff after failed resolutions: gRPC's (×1.6, jitter 0.2) from
    /// [`DEFAULT_RETRY_MIN`] to [`DEFAULT_RETRY_MAX`] by default. A success resets it.
    pub backoff: BackoffConfig,
    /// What NXDOMAIN or an empty answer does to a held set ([`EmptyAnswer::default`]).
    pub on_empty: EmptyAnswer,
    /// Address families and their order ([`IpFamilies::Ipv6ThenIpv4`]).
    pub families: IpFamilies,
    /// Timeout of one query to one server ([`DEFAULT_QUERY_TIMEOUT`]).
    pub query_timeout: Duration,
    /// Attempts per query ([`DEFAULT_QUERY_ATTEMPTS`]).
    pub query_attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            name_servers: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            refresh_interval: None,
            resolve_now_min_interval: DEFAULT_RESOLVE_NOW_MIN_INTERVAL,
            backoff: BackoffConfig::default()
                .base_delay(DEFAULT_RETRY_MIN)
                .max_delay(DEFAULT_RETRY_MAX),
            on_empty: EmptyAnswer::default(),
            families: IpFamilies::default(),
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            query_attempts: DEFAULT_QUERY_ATTEMPTS,
        }
    }
}

impl DnsConfig {
    /// Asks these DNS servers instead of the system's (the CLI's `--dns-server`).
    #[must_use]
    pub fn name_servers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.name_servers = servers.into_iter().collect();
        self
    }

    /// Clamps the TTL-driven re-resolution delay to `[min, max]`.
    #[must_use]
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max;
        self
    }

    /// Re-resolves on a fixed interval instead of on TTL expiry (`None`: use TTLs).
    #[must_use]
    pub fn refresh_interval(mut self, interval: Option<Duration>) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Sets the minimum interval of failure-triggered re-resolution.
    #[must_use]
    pub fn resolve_now_min_interval(mut self, interval: Duration) -> Self {
        self.resolve_now_min_interval = interval;
        self
    }

    /// Sets the retry backoff after failed resolutions.
    #[must_use]
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets what NXDOMAIN or an empty answer does to a held set.
    #[must_use]
    pub fn on_empty(mut self, policy: EmptyAnswer) -> Self {
        self.on_empty = policy;
        self
    }

    /// Sets the address families and their order.
    #[must_use]
    pub fn families(mut self, families: IpFamilies) -> Self {
        self.families = families;
        self
    }

    /// Sets the timeout of one query and the attempts per query.
    #[must_use]
    pub fn query_timeout(mut self, timeout: Duration, attempts: usize) -> Self {
        self.query_timeout = timeout;
        self.query_attempts = attempts.max(1);
        self
    }
}

// ===== DnsScheme =====

/// The registry backend of the `dns` and `dns+srv` schemes, with one [`DnsConfig`]:
/// `registry.register(DnsScheme::new(config))` replaces the default ones.
#[derive(Debug, Clone, Default)]
pub struct DnsScheme {
    config: Arc<DnsConfig>,
}

impl DnsScheme {
    /// A scheme backend that builds discoveries with `config`.
    pub fn new(config: DnsConfig) -> Self {
        DnsScheme {
            config: Arc::new(config),
        }
    }
}

impl Backend for DnsScheme {
    fn into_schemes(self) -> Vec<(String, Arc<dyn Scheme>)> {
        let scheme: Arc<dyn Scheme> = Arc::new(self);
        vec![
            ("dns".to_owned(), scheme.clone()),
            ("dns+srv".to_owned(), scheme),
        ]
    }
}

impl Scheme for DnsScheme {
    fn check(&self, target: &Target) -> Result<(), TargetError> {
        DnsTarget::parse(target).map(drop)
    }

    fn build(&self, target: &Target) -> Result<Arc<dyn Discovery>, TargetError> {
        Ok(Arc::new(DnsDiscovery::with_target(
            DnsTarget::parse(target)?,
            self.config.clone(),
        )))
    }
}

// ===== DnsDiscovery =====

/// Discovery of one `dns:` or `dns+srv:` target. See the [module docs](self).
#[derive(Debug)]
pub struct DnsDiscovery {
    target: Arc<DnsTarget>,
    config: Arc<DnsConfig>,
    /// Bumped by [`Discovery::resolve_now`]; every watch has a receiver.
    resolve_now: tokio::sync::watch::Sender<u64>,
}

impl DnsDiscovery {
    /// The discovery of `target` (scheme `dns` or `dns+srv`) with `config`. Does no I/O.
    pub fn new(target: &Target, config: DnsConfig) -> Result<DnsDiscovery, TargetError> {
        if !matches!(target.scheme(), "dns" | "dns+srv") {
            return Err(TargetError::Invalid {
                input: target.as_str().to_owned(),
                reason: format!(
                    "DNS discovery serves the `dns:` and `dns+srv:` schemes, not `{}:`",
                    target.scheme()
                ),
            });
        }
        Ok(DnsDiscovery::with_target(
            DnsTarget::parse(target)?,
            Arc::new(config),
        ))
    }

    fn with_target(target: DnsTarget, config: Arc<DnsConfig>) -> DnsDiscovery {
        DnsDiscovery {
            target: Arc::new(target),
            config,
            resolve_now: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Discovery for DnsDiscovery {
    fn watch(&self) -> UpdateStream {
        if let Query::Literal(sa) = self.target.query {
            // Nothing to look up, nothing will change.
            return Box::pin(futures_util::stream::iter([Ok(Update::Reset(vec![
                Endpoint::new(sa),
            ]))]));
        }
        let watcher = watch::Watcher::new(
            self.target.clone(),
            self.config.clone(),
            self.resolve_now.subscribe(),
        );
        Box::pin(futures_util::stream::unfold(watcher, |mut w| async move {
            let item = w.next().await;
            Some((item, w))
        }))
    }

    fn resolve_now(&self) {
        self.resolve_now.send_modify(|n| *n = n.wrapping_add(1));
    }
}
