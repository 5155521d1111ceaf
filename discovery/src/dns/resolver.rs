//! The hickory resolver behind a DNS watch, and one resolution of a host or SRV name.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::{DnsConfig, IpFamilies};
use crate::{DiscoveryError, Endpoint, ErrorKind};

/// Metadata key of SRV endpoints: the target host the record named.
pub const META_SRV_TARGET: &str = "dns.srv.target";
/// Metadata key of SRV endpoints: the record's priority.
pub const META_SRV_PRIORITY: &str = "dns.srv.priority";

/// What one resolution found.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Endpoints, in happy-eyeballs order, and the smallest TTL of the records behind them.
    Found {
        endpoints: Vec<Endpoint>,
        ttl: Duration,
    },
    /// The name has no usable records: NXDOMAIN, or an answer with none.
    Empty { nxdomain: bool, what: String },
    /// The lookup itself failed (timeout, SERVFAIL, refused, unreadable answer...).
    Failed(DiscoveryError),
}

/// One record-type lookup.
enum Answer {
    Records { data: Vec<RData>, ttl: Duration },
    NoRecords { nxdomain: bool },
    Failed { kind: ErrorKind, reason: String },
}

/// A hickory resolver and the description of the servers it asks (for error messages).
pub(crate) struct Resolver {
    inner: TokioResolver,
    servers: String,
    /// Bound on one record lookup, retries over every server included.
    lookup_bound: Duration,
    families: IpFamilies,
}

impl Resolver {
    /// Builds the resolver: the target's server, else the configured servers, else the
    /// system configuration (`/etc/resolv.conf`). Reads that file, so it runs in the watch,
    /// not when the discovery is built.
    pub(crate) fn new(
        config: &DnsConfig,
        target_server: Option<SocketAddr>,
    ) -> Result<Resolver, DiscoveryError> {
        let explicit: Vec<SocketAddr> = match target_server {
            Some(s) => vec![s],
            None => config.name_servers.clone(),
        };
        let (resolver_config, mut opts, servers) = if explicit.is_empty() {
            let (rc, opts) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                DiscoveryError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "cannot read the system DNS configuration (/etc/resolv.conf): {e}; \
                         give DNS servers explicitly (DnsConfig::name_servers or `dns://SERVER/...`)"
                    ),
                )
            })?;
            let list: Vec<String> = rc
                .name_servers()
                .iter()
                .map(|ns| ns.ip.to_string())
                .collect();
            let servers = format!(
                "the system resolvers [{}] from /etc/resolv.conf",
                list.join(", ")
            );
            (rc, opts, servers)
        } else {
            let name_servers = explicit
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            let mut opts = ResolverOpts::default();
            // Explicit servers mean "ask these": /etc/hosts is not one of them.
            opts.use_hosts_file = ResolveHosts::Never;
            let list: Vec<String> = explicit.iter().map(SocketAddr::to_string).collect();
            (
                ResolverConfig::from_name_servers(name_servers),
                opts,
                list.join(", "),
            )
        };
        let server_count = resolver_config.name_servers().len().max(1);
        opts.timeout = config.query_timeout;
        opts.attempts = config.query_attempts;
        let mut builder =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default());
        *builder.options_mut() = opts;
        let inner = builder.build().map_err(|e| {
            DiscoveryError::new(
                ErrorKind::Other,
                format!("cannot build a DNS resolver for {servers}: {e}"),
            )
        })?;
        // hickory tries each server `attempts` times, each bounded by `timeout`; allow one
        // round more per server before giving up on the whole lookup ourselves.
        let rounds = u32::try_from(config.query_attempts.saturating_add(1)).unwrap_or(u32::MAX);
        let lookup_bound = config
            .query_timeout
            .saturating_mul(rounds)
            .saturating_mul(u32::try_from(server_count).unwrap_or(u32::MAX));
        Ok(Resolver {
            inner,
            servers,
            lookup_bound,
            families: config.families,
        })
    }

    /// The servers this resolver asks, for messages.
    pub(crate) fn servers(&self) -> &str {
        &self.servers
    }

    /// Resolves `name` to one endpoint per address, every one with `port`.
    ///
    /// With `partial_ok`, an answer for one family is used even when the other family's
    /// lookup failed (there is no earlier set to keep instead).
    pub(crate) async fn resolve_host(&self, name: &str, port: u16, partial_ok: bool) -> Outcome {
        self.forget();
        match self.addresses(name, partial_ok).await {
            Ok(Some((ips, ttl))) => Outcome::Found {
                endpoints: ips
                    .into_iter()
                    .map(|ip| Endpoint::new(SocketAddr::new(ip, port)))
                    .collect(),
                ttl,
            },
            Ok(None) => Outcome::Empty {
                nxdomain: false,
                what: format!("`{name}` has no {} records", self.families.record_names()),
            },
            Err(AddrError::NxDomain) => Outcome::Empty {
                nxdomain: true,
                what: format!("`{name}` does not exist (NXDOMAIN)"),
            },
            Err(AddrError::Failed(e)) => Outcome::Failed(e),
        }
    }

    /// Resolves the SRV records of `name`: the lowest priority that has addresses, each
    /// target's addresses with the record's port and weight.
    pub(crate) async fn resolve_srv(&self, name: &str, partial_ok: bool) -> Outcome {
        self.forget();
        let (records, srv_ttl) = match self.lookup(name, RecordType::SRV).await {
            Answer::Records { data, ttl } => (data, ttl),
            Answer::NoRecords { nxdomain } => {
                return Outcome::Empty {
                    nxdomain,
                    what: if nxdomain {
                        format!("`{name}` does not exist (NXDOMAIN)")
                    } else {
                        format!("`{name}` has no SRV records")
                    },
                };
            }
            Answer::Failed { kind, reason } => {
                return Outcome::Failed(self.error(kind, name, "SRV", &reason));
            }
        };
        let mut by_priority: BTreeMap<u16, Vec<super::srv::SrvRecord>> = BTreeMap::new();
        for data in records {
            if let RData::SRV(srv) = data
                && let Some(rec) = super::srv::SrvRecord::usable(&srv)
            {
                by_priority.entry(srv.priority).or_default().push(rec);
            }
        }
        // Lowest priority first; the next one is the fallback when it has no addresses.
        for (priority, group) in by_priority {
            let lookups = group.iter().map(|r| self.addresses(&r.target, partial_ok));
            let results = join_all(lookups).await;
            let mut resolved = Vec::with_capacity(group.len());
            let mut ttl = srv_ttl;
            for (rec, result) in group.into_iter().zip(results) {
                match result {
                    Ok(Some((ips, t))) => {
                        ttl = ttl.min(t);
                        resolved.push((rec, ips));
                    }
                    Ok(None) | Err(AddrError::NxDomain) => {
                        tracing::debug!(target = %rec.target, priority, "SRV target has no addresses");
                    }
                    Err(AddrError::Failed(e)) if !partial_ok => return Outcome::Failed(e),
                    Err(AddrError::Failed(e)) => tracing::debug!("{e}"),
                }
            }
            let endpoints = super::srv::endpoints(priority, resolved);
            if !endpoints.is_empty() {
                return Outcome::Found { endpoints, ttl };
            }
        }
        Outcome::Empty {
            nxdomain: false,
            what: format!(
                "the SRV records of `{name}` name no target with {} records",
                self.families.record_names()
            ),
        }
    }

    /// Empties hickory's answer cache. We schedule resolutions ourselves (TTL, failures), and
    /// a resolution brought forward by a failing connection must ask the server, not get the
    /// cached answer back until its TTL runs out.
    fn forget(&self) {
        self.inner.clear_cache();
    }

    /// The addresses of `name` in happy-eyeballs order and their smallest TTL; `None` when
    /// the name exists but has no address records of the configured families.
    async fn addresses(
        &self,
        name: &str,
        partial_ok: bool,
    ) -> Result<Option<(Vec<IpAddr>, Duration)>, AddrError> {
        let want_v6 = self.families.wants_v6();
        let want_v4 = self.families.wants_v4();
        let skip = || async { Answer::NoRecords { nxdomain: false } };
        let (v6, v4) = futures_util::future::join(
            async {
                if want_v6 {
                    self.lookup(name, RecordType::AAAA).await
                } else {
                    skip().await
                }
            },
            async {
                if want_v4 {
                    self.lookup(name, RecordType::A).await
                } else {
                    skip().await
                }
            },
        )
        .await;
        let mut ttl = None::<Duration>;
        let mut failure = None;
        let mut nxdomain = false;
        let mut lists: [Vec<IpAddr>; 2] = [Vec::new(), Vec::new()];
        for (slot, (answer, rtype)) in [(v6, "AAAA"), (v4, "A")].into_iter().enumerate() {
            match answer {
                Answer::Records { data, ttl: t } => {
                    ttl = Some(ttl.map_or(t, |cur| cur.min(t)));
                    lists[slot] = data
                        .into_iter()
                        .filter_map(|d| match d {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None, // CNAME links of the chain
                        })
                        .collect();
                }
                Answer::NoRecords { nxdomain: nx } => nxdomain |= nx,
                Answer::Failed { kind, reason } => {
                    failure.get_or_insert_with(|| self.error(kind, name, rtype, &reason));
                }
            }
        }
        let [mut v6, mut v4] = lists;
        let found = !v6.is_empty() || !v4.is_empty();
        if let Some(e) = failure
            && !(partial_ok && found)
        {
            return Err(AddrError::Failed(e));
        }
        if !found {
            return if nxdomain {
                Err(AddrError::NxDomain)
            } else {
                Ok(None)
            };
        }
        // Records come back in whatever order the server rotates them to; sorted, the same
        // set always gives the same list, so an unchanged answer is no update.
        v6.sort();
        v6.dedup();
        v4.sort();
        v4.dedup();
        let ordered = happy_eyeballs(v6, v4, self.families.prefers_v6());
        Ok(Some((ordered, ttl.unwrap_or_default())))
    }

    async fn lookup(&self, name: &str, rtype: RecordType) -> Answer {
        let lookup = self.inner.lookup(name, rtype);
        let result = match tokio::time::timeout(self.lookup_bound, lookup).await {
            Ok(r) => r,
            Err(_) => {
                return Answer::Failed {
                    kind: ErrorKind::Unavailable,
                    reason: format!(
                        "no answer within {:?} (is the DNS server reachable?)",
                        self.lookup_bound
                    ),
                };
            }
        };
        match result {
            Ok(lookup) => {
                let answers = lookup.answers();
                let ttl = answers.iter().map(|r| r.ttl).min().unwrap_or(0);
                let data: Vec<RData> = answers
                    .iter()
                    .filter(|r| r.data.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if data.is_empty() {
                    // Only CNAMEs, or records of another type.
                    Answer::NoRecords { nxdomain: false }
                } else {
                    Answer::Records {
                        data,
                        ttl: Duration::from_secs(u64::from(ttl)),
                    }
                }
            }
            Err(e) => classify(&e),
        }
    }

    fn error(&self, kind: ErrorKind, name: &str, rtype: &str, reason: &str) -> DiscoveryError {
        DiscoveryError::new(
            kind,
            format!(
                "DNS lookup of `{name}` ({rtype}) via {} failed: {reason}",
                self.servers
            ),
        )
    }
}

enum AddrError {
    NxDomain,
    Failed(DiscoveryError),
}

/// Sorts hickory's error into "no such records" and failures of a kind.
fn classify(e: &NetError) -> Answer {
    if let NetError::Dns(DnsError::NoRecordsFound(nr)) = e {
        return Answer::NoRecords {
            nxdomain: nr.response_code == ResponseCode::NXDomain,
        };
    }
    let kind = match e {
        NetError::Proto(_)
        | NetError::Truncated
        | NetError::QueryCaseMismatch
        | NetError::ForeignClassRecord { .. } => ErrorKind::Malformed,
        _ => ErrorKind::Unavailable,
    };
    let reason = match e {
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("the server answered {code:?} ({code})")
        }
        NetError::Timeout => "request timed out (is the DNS server reachable?)".to_owned(),
        other => other.to_string(),
    };
    Answer::Failed { kind, reason }
}

/// Interleaves the families, preferred one first (RFC 8305 section 4, "First Address Family
/// Count" of 1): a pick_first channel then tries v6, v4, v6, ... in turn, so one broken
/// family costs one failed attempt, not all of them.
pub(crate) fn happy_eyeballs(v6: Vec<IpAddr>, v4: Vec<IpAddr>, prefer_v6: bool) -> Vec<IpAddr> {
    let (first, second) = if prefer_v6 { (v6, v4) } else { (v4, v6) };
    let mut out = Vec::with_capacity(first.len() + second.len());
    let mut a = first.into_iter();
    let mut b = second.into_iter();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_eyeballs_interleaves_preferred_first() {
        let v6: Vec<IpAddr> = ["::1", "::2", "::3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v4: Vec<IpAddr> = ["10.0.0.1"].iter().map(|s| s.parse().unwrap()).collect();
        let s = |v: Vec<IpAddr>| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            s(happy_eyeballs(v6.clone(), v4.clone(), true)),
            "::1 10.0.0.1 ::2 ::3"
        );
        assert_eq!(
            s(happy_eyeballs(v6.clone(), v4.clone(), false)),
            "10.0.0.1 ::1 ::2 ::3"
        );
        assert_eq!(s(happy_eyeballs(Vec::new(), v4, true)), "10.0.0.1");
        assert_eq!(s(happy_eyeballs(v6, Vec::new(), false)), "::1 ::2 ::3");
    }
}
