//! The target argument every command takes, and the options that reach discovery backends.

use std::sync::Arc;

use clap::Args;
use meshless::discovery::{Discovery, Registry};

use crate::error::CliError;

/// The target and the backend options, shared by `resolve`, `watch` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The target: `static:///10.0.0.1:50051,10.0.0.2:50051`, `ipv4:...`, `ipv6:...`,
    /// `unix:/path`, and the schemes of the backends compiled in.
    #[arg(required_unless_present = "config")]
    pub target: Option<String>,

    /// Take the target (and, for `bench`, the client's settings and per-method policies)
    /// from this config file's client `--client`.
    #[arg(
        long,
        value_name = "FILE",
        requires = "client",
        conflicts_with = "target"
    )]
    pub config: Option<std::path::PathBuf>,

    /// The client of `--config` to use.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub client: Option<String>,

    /// Kubernetes: the kubeconfig file to use instead of `KUBECONFIG` or the in-cluster
    /// service account.
    #[cfg(feature = "k8s")]
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// Kubernetes: the namespace of a `kubernetes:///service:port` or `k8s:///service:port`
    /// target that names none (default: the pod's, or the kubeconfig's).
    #[cfg(feature = "k8s")]
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// DNS: the server to ask (`IP` or `IP:PORT`) instead of the system's resolvers; the
    /// same as writing it as the target's authority, `dns://IP:PORT/name:port`.
    #[cfg(feature = "dns")]
    #[arg(long, value_name = "IP[:PORT]")]
    pub dns_server: Option<String>,
}

impl TargetArgs {
    /// The target with the backend options that live in it applied (`--namespace` names the
    /// namespace in the target, so messages show the namespace actually used).
    pub fn target(&self) -> Result<String, CliError> {
        #[allow(unused_mut)] // changed only by backend options of enabled features
        let mut target = match (&self.target, self.configured()?) {
            (_, Some((config, name))) => config
                .target(&name)
                .map(str::to_owned)
                .ok_or_else(|| CliError::Usage(no_client(&config, &name)))?,
            (Some(t), None) => t.trim().to_owned(),
            (None, None) => {
                return Err(CliError::Usage(
                    "give a target, or --config FILE --client NAME".into(),
                ));
            }
        };
        #[cfg(feature = "k8s")]
        if let Some(namespace) = &self.namespace {
            target = with_namespace(&target, namespace)?;
        }
        Ok(target)
    }

    /// The config file of `--config` and the client name of `--client`, when given.
    pub fn configured(&self) -> Result<Option<(meshless::config::Config, String)>, CliError> {
        let (Some(path), Some(name)) = (&self.config, &self.client) else {
            return Ok(None);
        };
        let config = meshless::config::Config::from_file(path)
            .map_err(|e| CliError::Usage(crate::error::one_line(&format!("--config: {e}"))))?;
        if config.target(name).is_none() {
            return Err(CliError::Usage(no_client(&config, name)));
        }
        Ok(Some((config, name.clone())))
    }

    /// The scheme registry: every backend of this build, configured by the options.
    pub fn registry(&self) -> Result<Registry, CliError> {
        #[allow(unused_mut)] // changed only by backend options of enabled features
        let mut registry = Registry::default();
        #[cfg(feature = "dns")]
        if let Some(server) = &self.dns_server {
            use meshless::discovery::dns::{DnsConfig, DnsScheme};
            let addr = dns_server_addr(server)?;
            check_dns_target(&self.target()?)?;
            registry.register(DnsScheme::new(DnsConfig::default().name_servers([addr])));
        }
        #[cfg(feature = "k8s")]
        if let Some(path) = &self.kubeconfig {
            use meshless::discovery::k8s::{K8sConfig, K8sScheme};
            registry.register(K8sScheme::new(K8sConfig::default().kubeconfig(path)));
        }
        Ok(registry)
    }

    /// Parses the target with [`registry`](Self::registry) and builds its discovery.
    pub fn discovery(&self) -> Result<(String, Arc<dyn Discovery>), CliError> {
        let target = self.target()?;
        let registry = self.registry()?;
        let parsed = registry
            .parse(&target)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let discovery = registry
            .build(&parsed)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok((target, discovery))
    }
}

/// Splits `scheme:rest` into the lower-cased scheme and the rest.
#[cfg(any(feature = "dns", feature = "k8s"))]
fn split_scheme(target: &str) -> Option<(String, &str)> {
    let (scheme, rest) = target.split_once(':')?;
    Some((scheme.to_ascii_lowercase(), rest))
}

/// Splits `//authority/endpoint` (or a bare `endpoint`) into authority and endpoint.
#[cfg(any(feature = "dns", feature = "k8s"))]
fn split_authority(rest: &str) -> (Option<&str>, &str) {
    match rest.strip_prefix("//") {
        Some(after) => match after.split_once('/') {
            Some((auth, ep)) => (Some(auth).filter(|a| !a.is_empty()), ep),
            None => (Some(after).filter(|a| !a.is_empty()), ""),
        },
        None => (None, rest),
    }
}

/// The address of `--dns-server`: `IP`, `IP:PORT`, `[IPv6]:PORT`; port 53 when none is given.
#[cfg(feature = "dns")]
fn dns_server_addr(server: &str) -> Result<std::net::SocketAddr, CliError> {
    use meshless::discovery::dns::DEFAULT_DNS_SERVER_PORT;
    use std::net::{IpAddr, SocketAddr};

    let server = server.trim();
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = server.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, DEFAULT_DNS_SERVER_PORT)),
        Err(_) => Err(CliError::Usage(format!(
            "--dns-server `{server}` is not an IP address or IP:PORT (for example 10.96.0.10 or 10.96.0.10:53)"
        ))),
    }
}

/// `--dns-server` only means something for a `dns:` or `dns+srv:` target that names no
/// server of its own (a server in the target would silently win).
#[cfg(feature = "dns")]
fn check_dns_target(target: &str) -> Result<(), CliError> {
    let Some((_, rest)) = split_scheme(target).filter(|(s, _)| s == "dns" || s == "dns+srv") else {
        return Err(CliError::Usage(format!(
            "--dns-server applies to `dns:` and `dns+srv:` targets, not `{target}`"
        )));
    };
    match split_authority(rest) {
        (Some(server), _) => Err(CliError::Usage(format!(
            "target `{target}` already names DNS server `{server}`; give the server either in the target or with --dns-server"
        ))),
        (None, _) => Ok(()),
    }
}

/// Gives a Kubernetes target that names no namespace the namespace `ns`:
/// `kubernetes:///svc:port` becomes `kubernetes:///svc.ns:port`, and `k8s:///svc:port`
/// becomes `k8s://ns/svc:port`.
#[cfg(feature = "k8s")]
fn with_namespace(target: &str, ns: &str) -> Result<String, CliError> {
    let conflict = |given: &str| {
        CliError::Usage(format!(
            "target `{target}` already names namespace `{given}`; drop it or --namespace `{ns}`"
        ))
    };
    match split_scheme(target) {
        Some((scheme, rest)) if scheme == "kubernetes" => {
            let (authority, endpoint) = split_authority(rest);
            let (host, port) = match endpoint.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (endpoint, None),
            };
            let host = match host.split_once('.') {
                Some((_, given)) if given.split('.').next() != Some(ns) => {
                    return Err(conflict(given));
                }
                Some(_) => host.to_owned(),
                None => format!("{host}.{ns}"),
            };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            Ok(format!(
                "kubernetes://{}/{host}{port}",
                authority.unwrap_or("")
            ))
        }
        Some((scheme, rest)) if scheme == "k8s" => match split_authority(rest) {
            (Some(given), _) if given != ns => Err(conflict(given)),
            (_, endpoint) => Ok(format!("k8s://{ns}/{endpoint}")),
        },
        _ => Err(CliError::Usage(format!(
            "--namespace applies to `kubernetes:` and `k8s:` targets, not `{target}`"
        ))),
    }
}

fn no_client(config: &meshless::config::Config, name: &str) -> String {
    format!(
        "--client {name}: the config file has no such client (it has: {})",
        config.client_names().collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)] // used by the tests of enabled backend features
    use super::*;

    #[cfg(feature = "dns")]
    #[test]
    fn dns_server_flag() {
        for (server, wanted) in [
            ("10.0.0.2", "10.0.0.2:53"),
            ("10.0.0.2:5353", "10.0.0.2:5353"),
            ("::1", "[::1]:53"),
            ("[::1]", "[::1]:53"),
            ("[::1]:5353", "[::1]:5353"),
        ] {
            assert_eq!(
                dns_server_addr(server).unwrap().to_string(),
                wanted,
                "{server}"
            );
        }
        let err = dns_server_addr("ns.example").unwrap_err().to_string();
        assert!(err.contains("not an IP address"), "{err}");

        check_dns_target("dns:///greeter.local:50051").unwrap();
        check_dns_target("dns+srv:_grpc._tcp.x").unwrap();
        for (target, wanted) in [
            ("dns://10.0.0.3/a:1", "already names DNS server `10.0.0.3`"),
            ("static:///a:1", "applies to `dns:`"),
        ] {
            let err = check_dns_target(target).unwrap_err().to_string();
            assert!(err.contains(wanted), "{target}: {err}");
        }
    }

    #[cfg(feature = "k8s")]
    #[test]
    fn namespace_fills_the_target() {
        for (target, wanted) in [
            (
                "kubernetes:///greeter:50051",
                "kubernetes:///greeter.prod:50051",
            ),
            ("kubernetes:///greeter", "kubernetes:///greeter.prod"),
            (
                "kubernetes:///greeter.prod:grpc",
                "kubernetes:///greeter.prod:grpc",
            ),
            ("k8s:///greeter:50051", "k8s://prod/greeter:50051"),
            ("k8s://prod/greeter:50051", "k8s://prod/greeter:50051"),
        ] {
            assert_eq!(with_namespace(target, "prod").unwrap(), wanted, "{target}");
        }
        for (target, wanted) in [
            (
                "kubernetes:///greeter.dev:1",
                "already names namespace `dev`",
            ),
            ("k8s://dev/greeter:1", "already names namespace `dev`"),
            ("dns:///greeter:1", "applies to `kubernetes:`"),
        ] {
            let err = with_namespace(target, "prod").unwrap_err().to_string();
            assert!(err.contains(wanted), "{target}: {err}");
        }
    }
}
