//! Parsing of `dns:` and `dns+srv:` targets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::target::HostPort;
use crate::{Target, TargetError, is_dns_name};

/// The port of a `dns:` target that gives none: 443, as in gRPC's naming document.
pub const DEFAULT_PORT: u16 = 443;
/// The port of a DNS server in a target's authority that gives none (RFC 1035).
pub const DEFAULT_DNS_SERVER_PORT: u16 = 53;

/// What a DNS target asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    /// An IP literal: no lookup at all.
    Literal(SocketAddr),
    /// A and/or AAAA records of `name`; every address gets `port`.
    Host { name: String, port: u16 },
    /// SRV records of `name`; ports, priorities and weights come from the records.
    Srv { name: String },
}

/// A parsed DNS target: what to ask and, when the authority names one, whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsTarget {
    pub query: Query,
    /// The DNS server from the target's authority (`dns://8.8.8.8/...`), if any.
    pub server: Option<SocketAddr>,
}

impl DnsTarget {
    pub(crate) fn parse(target: &Target) -> Result<DnsTarget, TargetError> {
        let invalid = |reason: String| TargetError::Invalid {
            input: target.as_str().to_owned(),
            reason,
        };
        let server = target
            .authority()
            .map(|a| parse_server(target, a))
            .transpose()?;
        let endpoint = target.endpoint().trim();
        if endpoint.is_empty() {
            let example = if target.scheme() == "dns+srv" {
                "dns+srv:///_grpc._tcp.example.com"
            } else {
                "dns:///example.com:50051"
            };
            return Err(invalid(format!("no host name: write it like `{example}`")));
        }
        if endpoint.contains(',') {
            return Err(invalid(format!(
                "a `{}:` target names one host; for a fixed list write `static:///{endpoint}`",
                target.scheme()
            )));
        }
        let query = if target.scheme() == "dns+srv" {
            let name = endpoint.strip_suffix('.').unwrap_or(endpoint);
            if name.contains(':') {
                return Err(invalid(format!(
                    "`{endpoint}`: an SRV target takes no port; the ports come from the SRV records"
                )));
            }
            if !is_dns_name(name) {
                return Err(TargetError::BadHost {
                    input: target.as_str().to_owned(),
                    part: endpoint.to_owned(),
                });
            }
            Query::Srv {
                name: endpoint.to_owned(),
            }
        } else {
            match target.host_port(&with_default_port(endpoint, DEFAULT_PORT))? {
                HostPort::Ip(sa) => Query::Literal(sa),
                HostPort::Name(name, port) => Query::Host { name, port },
            }
        };
        Ok(DnsTarget { query, server })
    }
}

/// Appends `:port` to `host` when it has no port, bracketing a bare IPv6 address.
fn with_default_port(host: &str, port: u16) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => format!("{host}:{port}"),
            _ => host.to_owned(), // has a port, or is malformed: host_port says which
        };
    }
    match host.matches(':').count() {
        0 => format!("{host}:{port}"),
        1 => host.to_owned(),
        // More than one colon and no brackets: only a bare IPv6 address can look like that.
        _ if host.parse::<Ipv6Addr>().is_ok() => format!("[{host}]:{port}"),
        _ => host.to_owned(),
    }
}

/// Parses the authority of a DNS target: the IP address (and port) of the DNS server to ask.
fn parse_server(target: &Target, authority: &str) -> Result<SocketAddr, TargetError> {
    let bad = || TargetError::Invalid {
        input: target.as_str().to_owned(),
        reason: format!(
            "the authority `{authority}` must be the IP address of a DNS server, with an optional \
             port, as in `dns://8.8.8.8:53/example.com:443` or `dns://[2001:4860:4860::8888]/...`"
        ),
    };
    let with_port = with_default_port(authority, DEFAULT_DNS_SERVER_PORT);
    let (host, port) = match with_port.rsplit_once(':') {
        Some(parts) => parts,
        None => return Err(bad()),
    };
    let port = target.port(authority, port)?;
    let ip: IpAddr = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().map_err(|_| bad())?.into(),
        None => host.parse::<Ipv4Addr>().map_err(|_| bad())?.into(),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DnsTarget, TargetError> {
        DnsTarget::parse(&Target::split(s).expect("split"))
    }

    #[test]
    fn host_with_and_without_port() {
        let t = parse("dns:///greeter.prod:50051").unwrap();
        assert_eq!(
            t.query,
            Query::Host {
                name: "greeter.prod".into(),
                port: 50051
            }
        );
        assert_eq!(t.server, None);
        let t = parse("dns:///greeter.prod").unwrap();
        assert_eq!(
            t.query,
            Query::Host {
                name: "greeter.prod".into(),
                port: DEFAULT_PORT
            }
        );
        // gRPC also accepts the form without slashes.
        assert!(matches!(
            parse("dns:greeter:1").unwrap().query,
            Query::Host { port: 1, .. }
        ));
    }

    #[test]
    fn literals_need_no_lookup() {
        assert_eq!(
            parse("dns:///10.0.0.1:8080").unwrap().query,
            Query::Literal("10.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse("dns:///[::1]:8080").unwrap().query,
            Query::Literal("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse("dns:///::1").unwrap().query,
            Query::Literal("[::1]:443".parse().unwrap())
        );
        assert_eq!(
            parse("dns:///10.0.0.1").unwrap().query,
            Query::Literal("10.0.0.1:443".parse().unwrap())
        );
    }

    #[test]
    fn authority_is_the_dns_server() {
        let t = parse("dns://10.0.0.53/greeter:50051").unwrap();
        assert_eq!(t.server, Some("10.0.0.53:53".parse().unwrap()));
        let t = parse("dns://127.0.0.1:5353/greeter:50051").unwrap();
        assert_eq!(t.server, Some("127.0.0.1:5353".parse().unwrap()));
        let t = parse("dns://[::1]:5353/greeter:50051").unwrap();
        assert_eq!(t.server, Some("[::1]:5353".parse().unwrap()));
        let t = parse("dns+srv://[::1]/_grpc._tcp.greeter").unwrap();
        assert_eq!(t.server, Some("[::1]:53".parse().unwrap()));
        let err = parse("dns://ns.example.com/greeter:1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must be the IP address of a DNS server"),
            "{err}"
        );
        let err = parse("dns://10.0.0.1:99999/greeter:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a number in 1..=65535"), "{err}");
    }

    #[test]
    fn srv_targets() {
        let t = parse("dns+srv:///_grpc._tcp.greeter.prod").unwrap();
        assert_eq!(
            t.query,
            Query::Srv {
                name: "_grpc._tcp.greeter.prod".into()
            }
        );
        let err = parse("dns+srv:///_grpc._tcp.greeter:50051")
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes no port"), "{err}");
        let err = parse("dns+srv:///").unwrap_err().to_string();
        assert!(err.contains("no host name"), "{err}");
    }

    #[test]
    fn malformed_targets_are_named() {
        for (input, needle) in [
            ("dns:///", "no host name"),
            ("dns:///a..b:1", "not a valid host name"),
            ("dns:///-a:1", "not a valid host name"),
            ("dns:///a:0", "not a number in 1..=65535"),
            ("dns:///a:65536", "not a number in 1..=65535"),
            ("dns:///a:-1", "not a number in 1..=65535"),
            ("dns:///a:http", "not a number in 1..=65535"),
            ("dns:///a:1,b:2", "names one host"),
            ("dns:///10.0.0.300:1", "not an IPv4 address"),
            ("dns:///[::zz]:1", "not an IPv6 address"),
            ("dns+srv:///bad name", "not a valid host name"),
        ] {
            let err = parse(input)
                .map(|t| format!("{t:?}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(err.contains(input.trim()), "{input}: {err}");
        }
        let long = format!("dns:///{}.com:1", "a".repeat(64));
        assert!(parse(&long).is_err());
    }
}
