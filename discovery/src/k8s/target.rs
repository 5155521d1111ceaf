//! `kubernetes:` and `k8s:` target syntax.

use std::fmt;

use crate::{Target, TargetError};

/// Which port of the service's endpoints to use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// A port number, as it appears in the EndpointSlices (the pods' port, `targetPort`).
    Number(u16),
    /// A port name, as in the Service's `ports[].name`.
    Name(String),
    /// Not given: the slices must have exactly one port.
    Only,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Name(n) => write!(f, "`{n}`"),
            PortSpec::Only => f.write_str("(the only port)"),
        }
    }
}

/// A parsed Kubernetes target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceTarget {
    /// The Service name.
    pub service: String,
    /// The namespace; `None` means the client's default namespace (the pod's own when in a
    /// cluster, the kubeconfig context's otherwise).
    pub namespace: Option<String>,
    /// The port.
    pub port: PortSpec,
}

impl ServiceTarget {
    /// Parses `kubernetes:///service[.namespace][:port]`, `kubernetes://namespace/service[:port]`
    /// and the same with `k8s:`. `service.namespace.svc[.cluster.local]` is accepted too.
    pub fn parse(target: &Target) -> Result<ServiceTarget, TargetError> {
        let bad = |reason: String| TargetError::Invalid {
            input: target.as_str().to_owned(),
            reason,
        };
        let rest = target.endpoint();
        if rest.is_empty() {
            return Err(bad(format!(
                "no service given; write `{}:///service.namespace:port`",
                target.scheme()
            )));
        }
        if rest.contains('/') || rest.contains(',') {
            return Err(bad(format!("`{rest}` is not `service[.namespace][:port]`")));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let port = match port {
            None => PortSpec::Only,
            Some("") => return Err(bad("empty port after `:`".to_owned())),
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
                PortSpec::Number(target.port(rest, p)?)
            }
            Some(p) if is_port_name(p) => PortSpec::Name(p.to_owned()),
            Some(p) => {
                return Err(bad(format!(
                    "port `{p}` is neither a number in 1..=65535 nor a port name (lowercase letters, digits and `-`, at most 15)"
                )));
            }
        };
        let host = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        let mut labels = host.split('.');
        let service = labels.next().unwrap_or_default().to_owned();
        let from_host = labels.next().map(str::to_owned);
        if let Some(extra) = labels.next() {
            return Err(bad(format!(
                "`{host}` has a part `{extra}` too many: write `service.namespace`"
            )));
        }
        let namespace = match (target.authority(), from_host) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!("namespace given twice, as `{a}` and as `{b}`")));
            }
            (Some(a), _) => Some(a.to_owned()),
            (None, b) => b,
        };
        if !is_dns1035_label(&service) {
            return Err(bad(format!(
                "`{service}` is not a valid Service name (lowercase letters, digits and `-`, starting with a letter, at most 63)"
            )));
        }
        if let Some(ns) = &namespace
            && !is_dns1123_label(ns)
        {
            return Err(bad(format!(
                "`{ns}` is not a valid namespace name (lowercase letters, digits and `-`, at most 63)"
            )));
        }
        Ok(ServiceTarget {
            service,
            namespace,
            port,
        })
    }
}

/// An IANA service name, as Kubernetes port names are: 1–15 of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or double hyphen.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn is_dns1123_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ServiceTarget, String> {
        ServiceTarget::parse(&Target::split(s).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn forms() {
        let t = parse("kubernetes:///greeter.prod:50051").unwrap();
        assert_eq!(
            (t.service.as_str(), t.namespace.as_deref(), t.port),
            ("greeter", Some("prod"), PortSpec::Number(50051))
        );
        let t = parse("kubernetes:///greeter:grpc").unwrap();
        assert_eq!((t.namespace, t.port), (None, PortSpec::Name("grpc".into())));
        let t = parse("k8s://prod/greeter:50051").unwrap();
        assert_eq!(t.namespace.as_deref(), Some("prod"));
        let t = parse("kubernetes:///greeter.prod.svc.cluster.local").unwrap();
        assert_eq!(
            (t.namespace.as_deref(), t.port),
            (Some("prod"), PortSpec::Only)
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (input, want) in [
            ("kubernetes:///", "no service given"),
            (
                "kubernetes:///Greeter:80",
                "`Greeter` is not a valid Service name",
            ),
            (
                "kubernetes:///greeter.Prod:80",
                "`Prod` is not a valid namespace",
            ),
            ("kubernetes:///greeter:", "empty port"),
            ("kubernetes:///greeter:99999", "port `99999`"),
            (
                "kubernetes:///greeter:Grpc_Port",
                "port `Grpc_Port` is neither",
            ),
            ("kubernetes:///a.b.c:80", "part `c` too many"),
            ("k8s://ns1/greeter.ns2:80", "namespace given twice"),
            ("k8s:///a,b:80", "is not `service"),
        ] {
            let err = parse(input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
