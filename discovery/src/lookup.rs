//! Turning what a registry holds (`10.0.0.1:8080`, `grpc://pod-1.example:9000`) into
//! endpoint addresses: parsing, resolving host names with a bound, and dropping duplicate
//! addresses. Shared by the Consul and etcd backends.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{StreamExt as _, stream};

use crate::{Address, DiscoveryError, Endpoint, ErrorKind, Update, UpdateStream};

/// A watch that advances in steps: each step waits for what comes next (a blocking query's
/// answer, a watch event, a pause after a failure) and gives the items to publish.
pub(crate) trait Step: Send + 'static {
    /// The next step's items (none while nothing changed).
    fn step(&mut self) -> impl Future<Output = Vec<Result<Update, DiscoveryError>>> + Send;
}

/// The stream of a [`Step`]per's items, step after step, for as long as it is polled.
pub(crate) fn stepped(state: impl Step) -> UpdateStream {
    Box::pin(
        stream::unfold(state, |mut st| async move {
            let items = st.step().await;
            Some((stream::iter(items), st))
        })
        .flatten(),
    )
}

/// How long resolving an instance's host name may take.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an instance listens: an IP address, or a host name still to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    Ip(SocketAddr),
    Host(String, u16),
}

impl Place {
    /// The address to put in an endpoint until the host name is resolved.
    pub(crate) fn placeholder(&self) -> SocketAddr {
        match self {
            Place::Ip(sa) => *sa,
            Place::Host(_, port) => SocketAddr::from(([0, 0, 0, 0], *port)),
        }
    }
}

/// An entry turned into an endpoint, its address perhaps still a host name.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) place: Place,
    /// The endpoint, its address [`Place::placeholder`] while `place` is a host name.
    pub(crate) endpoint: Endpoint,
}

impl Found {
    /// An entry at `place` with this endpoint's weight and metadata.
    pub(crate) fn new(place: Place, endpoint: Endpoint) -> Self {
        Found { place, endpoint }
    }
}

/// A host (an IP, `[v6]`, or a DNS name) and port.
pub(crate) fn host_place(host: &str, port: u16) -> Result<Place, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err("the unspecified address, which cannot be dialed".into());
        }
        return Ok(Place::Ip(SocketAddr::new(ip, port)));
    }
    if crate::is_dns_name(bare) {
        return Ok(Place::Host(bare.to_owned(), port));
    }
    Err("not an IP address or host name".into())
}

/// `host:port`, `[v6]:port`.
pub(crate) fn host_port_place(s: &str) -> Result<Place, String> {
    let (host, port) = s.rsplit_once(':').ok_or("no port")?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port `{port}` is not a number in 1..=65535"))?;
    if host.is_empty() {
        return Err("no host".into());
    }
    host_place(host, port)
}

/// The authority of an endpoint URL such as kratos writes (`grpc://host:port`,
/// `grpcs://host:port?isSecure=true`), or of a bare `host:port`.
pub(crate) fn url_place(url: &str) -> Result<Place, String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    host_port_place(authority)
}

/// Resolves host names (each bounded by [`LOOKUP_TIMEOUT`]) and drops duplicate
/// addresses, the first one winning. Returns the endpoints and a message for each entry
/// whose name could not be resolved.
pub(crate) async fn resolve(found: Vec<Found>) -> (Vec<Endpoint>, Vec<String>) {
    let mut out = Vec::with_capacity(found.len());
    let mut problems = Vec::new();
    let mut seen: HashSet<Address> = HashSet::with_capacity(found.len());
    for f in found {
        let mut ep = f.endpoint;
        if let Place::Host(host, port) = &f.place {
            let lookup = tokio::time::timeout(
                LOOKUP_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await;
            match lookup {
                Ok(Ok(mut addrs)) => match addrs.next() {
                    Some(sa) => ep.addr = Address::Tcp(sa),
                    None => {
                        problems.push(format!("`{host}`: the name has no addresses"));
                        continue;
                    }
                },
                Ok(Err(e)) => {
                    problems.push(format!("`{host}`: cannot resolve it: {e}"));
                    continue;
                }
                Err(_) => {
                    problems.push(format!(
                        "`{host}`: no answer resolving it in {LOOKUP_TIMEOUT:?}"
                    ));
                    continue;
                }
            }
        }
        if seen.insert(ep.addr.clone()) {
            out.push(ep);
        }
    }
    (out, problems)
}

/// What a watching backend last told the channel: the set it sent, and whether its last
/// attempt failed. Consul and etcd discovery share it.
#[derive(Debug, Default)]
pub(crate) struct Published {
    last: Option<Vec<Endpoint>>,
    /// The last attempt failed: the next good answer is sent even when the set is
    /// unchanged, so the channel learns that discovery works again.
    pub failed: bool,
}

impl Published {
    /// Discovery works again with no new answer to send (a watch resumed where it was):
    /// the last set once more, when the last attempt had failed, so the channel learns it.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))] // etcd's watch resumes; Consul's polls
    pub fn recovered(&mut self) -> Option<Update> {
        if !self.failed {
            return None;
        }
        let last = self.last.clone()?;
        self.failed = false;
        Some(Update::Reset(last))
    }

    /// After a good answer: the set when it changed (or discovery recovers), then the
    /// entries it skipped (see [`skipped`]).
    pub fn answer(
        &mut self,
        label: &str,
        endpoints: Vec<Endpoint>,
        problems: Vec<String>,
    ) -> Vec<Result<Update, DiscoveryError>> {
        let mut out = Vec::new();
        if self.failed || self.last.as_ref() != Some(&endpoints) {
            self.failed = false;
            self.last = Some(endpoints.clone());
            out.push(Ok(Update::Reset(endpoints)));
        }
        out.extend(skipped(label, problems));
        out
    }

    /// After a failed attempt: the error, logged; the last set stays the channel's, and the
    /// backend waits `backoff`'s next delay (returned) before it tries again.
    pub fn fail(
        &mut self,
        label: &str,
        what: &str,
        backoff: &mut crate::backoff::Backoff,
        e: DiscoveryError,
    ) -> (Duration, Vec<Result<Update, DiscoveryError>>) {
        self.failed = true;
        tracing::warn!(target = %label, error = %e, "{what} failed, keeping the last known endpoints");
        (backoff.next_delay(), vec![Err(e)])
    }
}

/// The entries a watch skipped, as the `Malformed` errors it sends after the set (and
/// logs): `<label>: skipped <problem>`.
pub(crate) fn skipped(
    label: &str,
    problems: Vec<String>,
) -> impl Iterator<Item = Result<Update, DiscoveryError>> + '_ {
    problems.into_iter().map(move |p| {
        tracing::warn!(target = %label, "skipped {p}");
        Err(DiscoveryError::new(
            ErrorKind::Malformed,
            format!("{label}: skipped {p}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse() {
        let ip = |s: &str| Place::Ip(s.parse().unwrap());
        assert_eq!(
            host_port_place("10.0.0.1:8080").unwrap(),
            ip("10.0.0.1:8080")
        );
        assert_eq!(host_port_place("[::1]:8080").unwrap(), ip("[::1]:8080"));
        assert_eq!(
            host_port_place("pod-1.svc:80").unwrap(),
            Place::Host("pod-1.svc".into(), 80)
        );
        assert_eq!(
            url_place("grpc://10.0.0.1:9000").unwrap(),
            ip("10.0.0.1:9000")
        );
        assert_eq!(
            url_place("grpcs://10.0.0.1:9000?isSecure=true").unwrap(),
            ip("10.0.0.1:9000")
        );
        for (s, want) in [
            ("10.0.0.1", "no port"),
            ("10.0.0.1:0", "port `0`"),
            ("10.0.0.1:http", "port `http`"),
            (":80", "no host"),
            ("0.0.0.0:80", "unspecified"),
            ("no space:80", "not an IP address or host name"),
        ] {
            let e = host_port_place(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[tokio::test]
    async fn duplicates_are_dropped_and_names_resolved() {
        let ep = |p: &Place| Endpoint::new(p.placeholder());
        let a = host_port_place("127.0.0.1:1").unwrap();
        let b = host_port_place("localhost:2").unwrap();
        let found = vec![
            Found::new(a.clone(), ep(&a).with_weight(3)),
            Found::new(a.clone(), ep(&a).with_weight(5)),
            Found::new(b.clone(), ep(&b)),
        ];
        let (eps, problems) = resolve(found).await;
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].weight, 3, "the first of two equal addresses wins");
        match &eps[1].addr {
            Address::Tcp(sa) => assert!(sa.ip().is_loopback() && sa.port() == 2),
            other => panic!("localhost resolved to {other:?}"),
        }
    }
}
