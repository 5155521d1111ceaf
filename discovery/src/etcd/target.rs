//! `etcd:` target syntax: go-zero's two forms (`zrpc/resolver/target.go`,
//! `BuildDiscovTarget`, and `zrpc/resolver/internal/targets/endpoints.go`, `GetHosts` and
//! `GetKey`), a kratos form, and options named after go-zero's `EtcdConf`
//! (`core/discov/config.go`).

use std::path::PathBuf;
use std::time::Duration;

use crate::params::{boolean, check_host_port, decode, duration, pairs, suggest};
use crate::{Target, TargetError};

/// Which framework's records a target reads, or a registrar writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtcdFormat {
    /// go-zero (`core/discov`): key `<Key>/<lease id in decimal>` (or `<Key>/<ID>`), value
    /// the plain `host:port`, lease TTL 10 s; clients watch the prefix `<Key>/`.
    #[default]
    GoZero,
    /// kratos (`contrib/registry/etcd`): key `<namespace>/<name>/<id>` (namespace
    /// `/microservices`), value the JSON of its `registry.ServiceInstance`
    /// (`{"id","name","version","metadata","endpoints":["grpc://ip:port"]}`), lease TTL
    /// 15 s; clients watch `<namespace>/<name>` and keep the instances named `<name>`.
    Kratos,
}

impl std::str::FromStr for EtcdFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "go-zero" | "gozero" | "go_zero" => Ok(EtcdFormat::GoZero),
            "kratos" => Ok(EtcdFormat::Kratos),
            _ => Err(format!(
                "unknown format `{s}`: expected `go-zero` or `kratos`"
            )),
        }
    }
}

impl std::fmt::Display for EtcdFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EtcdFormat::GoZero => "go-zero",
            EtcdFormat::Kratos => "kratos",
        })
    }
}

/// kratos's default namespace (`contrib/registry/etcd/registry.go`, `New`).
pub const KRATOS_NAMESPACE: &str = "/microservices";
/// go-zero's dial timeout (`core/discov/internal/vars.go`).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// go-zero's request timeout (`core/discov/internal/vars.go`), the bound of every request
/// but the watch stream itself.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Default longest delay between retries after a failure.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// TLS to etcd, with go-zero's `EtcdConf` files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EtcdTls {
    /// `ca-file` (go-zero `CACertFile`): the CA that signed etcd's certificate, PEM.
    pub ca_file: Option<PathBuf>,
    /// `cert-file` (`CertFile`): our client certificate, PEM, for etcd's
    /// `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// `key-file` (`CertKeyFile`): its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// `server-name`: the name to verify in etcd's certificate (default: the host).
    pub server_name: Option<String>,
}

/// How to reach an etcd cluster: hosts, credentials, TLS and timeouts. Shared by
/// discovery ([`EtcdTarget`]) and registration
/// ([`EtcdRegistrar`](super::EtcdRegistrar)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdCluster {
    /// The members' `host:port`s.
    pub hosts: Vec<String>,
    /// `user` (go-zero `User`): the etcd user, when etcd has auth enabled.
    pub user: Option<String>,
    /// `password` (`Pass`; `pass=` is read too).
    pub password: Option<String>,
    /// TLS, when any of the files is given; plain HTTP/2 otherwise.
    pub tls: Option<EtcdTls>,
    /// `dial-timeout`: how long connecting to a member may take.
    pub dial_timeout: Duration,
    /// `timeout`: how long a request may take.
    pub timeout: Duration,
}

impl EtcdCluster {
    /// A cluster of `hosts` (`host:port`), no auth, no TLS, go-zero's timeouts.
    pub fn new<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> Self {
        EtcdCluster {
            hosts: hosts.into_iter().map(Into::into).collect(),
            user: None,
            password: None,
            tls: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Reads one of the cluster parameters; `Ok(false)` when `key` is not one.
    fn param(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let file = |v: &str| Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        match key {
            "user" => self.user = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "password" | "pass" => self.password = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "ca-file" => self.tls.get_or_insert_with(Default::default).ca_file = file(value),
            "cert-file" => self.tls.get_or_insert_with(Default::default).cert_file = file(value),
            "key-file" => self.tls.get_or_insert_with(Default::default).key_file = file(value),
            "server-name" => {
                self.tls.get_or_insert_with(Default::default).server_name =
                    Some(value.to_owned()).filter(|v| !v.is_empty());
            }
            "insecure-skip-verify" => {
                if boolean(value)? {
                    return Err("meshless always verifies etcd's certificate; give the CA \
                                that signed it with `ca-file=`"
                        .into());
                }
            }
            "dial-timeout" => {
                let d = duration(value)?;
                if !d.is_zero() {
                    self.dial_timeout = d;
                }
            }
            "timeout" => {
                let d = duration(value)?;
                if !d.is_zero() {
                    self.timeout = d;
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks what the parameters cannot check one by one.
    fn finish(&mut self) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Err("no etcd hosts".into());
        }
        for h in &self.hosts {
            if h.contains("://") {
                return Err(format!(
                    "etcd host `{h}`: write `host:2379` without a scheme (TLS is chosen by \
                     `ca-file=`)"
                ));
            }
            check_host_port(h, "host:2379").map_err(|w| format!("etcd host `{h}` {w}"))?;
        }
        if self.password.is_some() && self.user.is_none() {
            return Err("`password` without `user`: give both".into());
        }
        if self.user.is_some() && self.password.is_none() {
            return Err(format!(
                "`user={}` without `password`: give both",
                self.user.as_deref().unwrap_or_default()
            ));
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err("`cert-file` and `key-file` go together: give both or neither".into());
        }
        Ok(())
    }
}

/// A parsed `etcd:` target.
///
/// ```text
/// etcd:///h1:2379,h2:2379?key=user.rpc                go-zero (v1.10.2 and later)
/// etcd://h1:2379,h2:2379/user.rpc                     go-zero (earlier)
/// etcd:///h1:2379?key=helloworld&format=kratos        kratos: key is the service name
/// etcd://h1:2379/helloworld?format=kratos&namespace=/microservices&scheme=grpc
///
/// options: user=..&password=..            etcd auth
///          ca-file=..&cert-file=..&key-file=..&server-name=..    TLS to etcd
///          dial-timeout=5s&timeout=3s&max-backoff=30s
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdTarget {
    /// How to reach etcd.
    pub cluster: EtcdCluster,
    /// go-zero's `Key`, or kratos's service name.
    pub key: String,
    /// `format`: whose records the keys hold.
    pub format: EtcdFormat,
    /// `namespace` (kratos): the prefix before the name. Default [`KRATOS_NAMESPACE`].
    pub namespace: String,
    /// `scheme` (kratos): which endpoint of an instance to use, `grpc` (default) or
    /// `grpcs`, as a kratos client with TLS picks `grpcs`.
    pub scheme: String,
    /// `max-backoff`: the longest delay between retries after a failure.
    pub max_backoff: Duration,
}

/// The query parameters a target may have.
const PARAMS: &[&str] = &[
    "key",
    "format",
    "namespace",
    "scheme",
    "user",
    "password",
    "pass",
    "ca-file",
    "cert-file",
    "key-file",
    "server-name",
    "insecure-skip-verify",
    "dial-timeout",
    "timeout",
    "max-backoff",
];

impl EtcdTarget {
    /// Parses an `etcd:` target, naming the bad part when it is not well formed.
    pub fn parse(target: &Target) -> Result<EtcdTarget, TargetError> {
        let input = target.as_str();
        let bad = |reason: String| TargetError::Invalid {
            input: input.to_owned(),
            reason,
        };
        const FORM: &str = "write `etcd:///host:2379,host:2379?key=<key>` or \
                            `etcd://host:2379/<key>`";
        // The authority, when there is one, ends at `/` (Target::split) or at `?`.
        let (authority, rest) = match target.authority() {
            Some(a) => match a.split_once('?') {
                Some((a, q)) => (Some(a), format!("?{q}")),
                None => (Some(a), target.endpoint().to_owned()),
            },
            None => (None, target.endpoint().to_owned()),
        };
        let (path, query) = rest.split_once('?').unwrap_or((&rest, ""));
        let (hosts, mut key, userinfo) = match authority {
            // Legacy form: hosts in the authority, the key in the path.
            Some(a) => {
                let (userinfo, hosts) = match a.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, a),
                };
                (hosts.to_owned(), decode(path.trim_matches('/')), userinfo)
            }
            // New form: hosts in the path, the key in `key=`.
            None => {
                if path.contains('/') {
                    return Err(bad(format!(
                        "`{path}`: the hosts are a comma-separated list with no `/`; {FORM}"
                    )));
                }
                (path.to_owned(), String::new(), None)
            }
        };
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if hosts.is_empty() {
            return Err(bad(format!("no etcd hosts: {FORM}")));
        }
        let mut cluster = EtcdCluster::new(hosts);
        if let Some(u) = userinfo {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            cluster.user = Some(decode(user)).filter(|u| !u.is_empty());
            cluster.password = Some(decode(pass)).filter(|p| !p.is_empty());
        }
        let mut t = EtcdTarget {
            cluster,
            key: String::new(),
            format: EtcdFormat::GoZero,
            namespace: KRATOS_NAMESPACE.to_owned(),
            scheme: "grpc".to_owned(),
            max_backoff: DEFAULT_MAX_BACKOFF,
        };
        for (k, v) in pairs(query) {
            let param = |what: &str| bad(format!("parameter `{k}={v}`: {what}"));
            match k.as_str() {
                "key" => {
                    if authority.is_some() && !key.is_empty() {
                        return Err(param(
                            "the key is given twice, in the path and in `key=`: give one",
                        ));
                    }
                    key = v.clone();
                }
                "format" => t.format = v.parse().map_err(|e: String| param(&e))?,
                "namespace" => {
                    let ns = v.trim_end_matches('/');
                    if ns.is_empty() || !ns.starts_with('/') {
                        return Err(param(
                            "a kratos namespace starts with `/`, e.g. `/microservices`",
                        ));
                    }
                    t.namespace = ns.to_owned();
                }
                "scheme" => {
                    if v != "grpc" && v != "grpcs" {
                        return Err(param("expected `grpc` or `grpcs`"));
                    }
                    t.scheme = v.clone();
                }
                "max-backoff" => {
                    let d = duration(&v).map_err(|e| param(&e))?;
                    if !d.is_zero() {
                        t.max_backoff = d;
                    }
                }
                _ => {
                    if !t.cluster.param(&k, &v).map_err(|e| param(&e))? {
                        return Err(bad(format!(
                            "unknown parameter `{k}`{}; known: {}",
                            suggest(&k, PARAMS),
                            PARAMS.join(", ")
                        )));
                    }
                }
            }
        }
        t.cluster.finish().map_err(bad)?;
        if key.is_empty() {
            return Err(bad(format!("no key: {FORM}")));
        }
        if t.format == EtcdFormat::Kratos && key.contains('/') {
            return Err(bad(format!(
                "`{key}` is not a kratos service name (it has a `/`); the namespace goes in \
                 `namespace=`"
            )));
        }
        if t.format == EtcdFormat::GoZero && (t.namespace != KRATOS_NAMESPACE || t.scheme != "grpc")
        {
            return Err(bad(
                "`namespace` and `scheme` are kratos options: add `format=kratos`".into(),
            ));
        }
        t.key = key;
        Ok(t)
    }

    /// The prefix the target lists and watches: `<Key>/` (go-zero, `makeKeyPrefix` in
    /// `core/discov/internal/registry.go`) or `<namespace>/<name>/` (kratos, whose own
    /// watch leaves off the `/` and then filters on the name).
    pub fn prefix(&self) -> String {
        match self.format {
            EtcdFormat::GoZero => format!("{}/", self.key),
            EtcdFormat::Kratos => format!("{}/{}/", self.namespace, self.key),
        }
    }
}

/// Parses a registration target: `etcd://h1:2379,h2:2379[?format=..&ttl=..&user=..]` or
/// `etcd:///h1:2379,h2:2379?..`, with no key (the service name comes with the instance).
/// Returns the cluster and the parameters that are not cluster parameters.
pub(crate) fn parse_registry(target: &str) -> Result<(EtcdCluster, Vec<(String, String)>), String> {
    let rest = target
        .strip_prefix("etcd://")
        .ok_or("expected `etcd://host:2379[,host:2379][?param=value]`")?;
    let (head, query) = rest.split_once('?').unwrap_or((rest, ""));
    let head = head.trim_start_matches('/').trim_end_matches('/');
    if head.contains('/') {
        return Err(
            "a registration target names only the etcd hosts; the service name comes \
                    from the instance (--name)"
                .into(),
        );
    }
    let (userinfo, hosts) = match head.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, head),
    };
    let mut cluster = EtcdCluster::new(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned),
    );
    if let Some(u) = userinfo {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        cluster.user = Some(decode(user)).filter(|u| !u.is_empty());
        cluster.password = Some(decode(pass)).filter(|p| !p.is_empty());
    }
    let mut rest = Vec::new();
    for (k, v) in pairs(query) {
        if !cluster
            .param(&k, &v)
            .map_err(|e| format!("parameter `{k}={v}`: {e}"))?
        {
            rest.push((k, v));
        }
    }
    cluster.finish()?;
    Ok((cluster, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EtcdTarget, String> {
        let t = Target::split(s).map_err(|e| e.to_string())?;
        EtcdTarget::parse(&t).map_err(|e| e.to_string())
    }

    #[test]
    fn go_zero_forms_parse() {
        // What go-zero's BuildDiscovTarget writes since v1.10.2: url.QueryEscape(key).
        let t = parse("etcd:///10.0.0.1:2379,10.0.0.2:2379?key=user.rpc").unwrap();
        assert_eq!(t.cluster.hosts, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(t.key, "user.rpc");
        assert_eq!(t.format, EtcdFormat::GoZero);
        assert_eq!(t.prefix(), "user.rpc/");
        let t = parse("etcd:///h:2379?key=%2Fsvc%2Fuser%2Brpc").unwrap();
        assert_eq!(t.key, "/svc/user+rpc");
        // Earlier: hosts in the authority, the key in the path.
        let t = parse("etcd://10.0.0.1:2379,10.0.0.2:2379/user.rpc").unwrap();
        assert_eq!(t.cluster.hosts.len(), 2);
        assert_eq!(t.key, "user.rpc");
        let t = parse("etcd://h:2379/a/b").unwrap();
        assert_eq!(t.key, "a/b");
        assert_eq!(t.cluster.dial_timeout, DEFAULT_DIAL_TIMEOUT);
        assert_eq!(t.cluster.timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn kratos_form_and_options_parse() {
        let t = parse(
            "etcd:///127.0.0.1:2379?key=helloworld&format=kratos&namespace=/ms/&scheme=grpcs\
             &user=bob&password=s%40cret&ca-file=/etc/ca.pem&cert-file=c.pem&key-file=k.pem\
             &server-name=etcd.local&dial-timeout=2s&timeout=500ms&max-backoff=1s",
        )
        .unwrap();
        assert_eq!(t.format, EtcdFormat::Kratos);
        assert_eq!(t.prefix(), "/ms/helloworld/");
        assert_eq!(t.scheme, "grpcs");
        assert_eq!(t.cluster.user.as_deref(), Some("bob"));
        assert_eq!(t.cluster.password.as_deref(), Some("s@cret"));
        let tls = t.cluster.tls.as_ref().unwrap();
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(tls.server_name.as_deref(), Some("etcd.local"));
        assert_eq!(t.cluster.dial_timeout, Duration::from_secs(2));
        assert_eq!(t.cluster.timeout, Duration::from_millis(500));
        assert_eq!(t.max_backoff, Duration::from_secs(1));
        let t = parse("etcd://u:p@h:2379/helloworld?format=kratos").unwrap();
        assert_eq!(t.prefix(), "/microservices/helloworld/");
        assert_eq!(t.cluster.user.as_deref(), Some("u"));
    }

    #[test]
    fn bad_targets_name_the_bad_part() {
        for (input, want) in [
            ("etcd:///?key=a", "no etcd hosts"),
            ("etcd:///h:2379", "no key"),
            ("etcd://h:2379", "no key"),
            ("etcd://h:2379/", "no key"),
            ("etcd:///h/x?key=a", "no `/`"),
            ("etcd:///h?key=a", "etcd host `h` has no port"),
            ("etcd:///h:0?key=a", "port `0`"),
            ("etcd:///http://h:2379?key=a", "no `/`"),
            ("etcd://h:2379/a?key=b", "given twice"),
            ("etcd:///h:2379?key=a&format=zk", "unknown format `zk`"),
            ("etcd:///h:2379?key=a&kye=b", "did you mean `key`"),
            ("etcd:///h:2379?key=a&bogus=1", "unknown parameter `bogus`"),
            ("etcd:///h:2379?key=a&user=bob", "without `password`"),
            ("etcd:///h:2379?key=a&password=x", "without `user`"),
            ("etcd:///h:2379?key=a&cert-file=c.pem", "go together"),
            (
                "etcd:///h:2379?key=a&insecure-skip-verify=true",
                "always verifies",
            ),
            ("etcd:///h:2379?key=a&timeout=soon", "`timeout=soon`"),
            (
                "etcd:///h:2379?key=a/b&format=kratos",
                "not a kratos service name",
            ),
            (
                "etcd:///h:2379?key=a&format=kratos&namespace=ms",
                "starts with `/`",
            ),
            (
                "etcd:///h:2379?key=a&format=kratos&scheme=http",
                "`grpc` or `grpcs`",
            ),
            ("etcd:///h:2379?key=a&scheme=grpcs", "add `format=kratos`"),
        ] {
            let e = parse(input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn registry_targets_parse() {
        let (c, rest) =
            parse_registry("etcd://h1:2379,h2:2379?format=kratos&ttl=5s&user=u&password=p")
                .unwrap();
        assert_eq!(c.hosts, ["h1:2379", "h2:2379"]);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(
            rest,
            [
                ("format".to_owned(), "kratos".to_owned()),
                ("ttl".to_owned(), "5s".to_owned())
            ]
        );
        let (c, _) = parse_registry("etcd:///h1:2379").unwrap();
        assert_eq!(c.hosts, ["h1:2379"]);
        assert!(
            parse_registry("etcd://h:2379/user.rpc")
                .unwrap_err()
                .contains("--name")
        );
        assert!(parse_registry("consul://h:8500").is_err());
    }
}
