//! Connecting to etcd with etcd-client, and turning its errors into messages that say
//! what failed and what to do.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Error as EtcdError, Identity, TlsOptions};
use tonic::Code;

use super::EtcdCluster;
use crate::text::error_chain as chain;
use crate::{DiscoveryError, ErrorKind};

/// HTTP/2 keepalive to etcd: a ping every 10 s, answered within 5 s, so a member that
/// stops answering while its TCP connection stays open is noticed. etcd refuses pings more
/// often than its `--grpc-keepalive-min-time` (5 s by default).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request needed, for the advice in a permission error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need {
    Read,
    Write,
}

/// Connects to `cluster`: every member behind one balanced channel, a leader required for
/// every request (`hasleader` metadata, so a member cut off from its cluster answers
/// "no leader" instead of stale data), the user authenticated when one is given.
pub(crate) async fn connect(cluster: &EtcdCluster, prefix: &str) -> Result<Client, DiscoveryError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cluster.dial_timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let (Some(user), Some(password)) = (&cluster.user, &cluster.password) {
        options = options.with_user(user, password);
    }
    if let Some(tls) = &cluster.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read(ca, "ca-file").await?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(
                read(cert, "cert-file").await?,
                read(key, "key-file").await?,
            ));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name);
        }
        options = options.with_tls(t);
    }
    // Authentication is a request: bound it like one, after the dial.
    let bound = cluster.dial_timeout + cluster.timeout;
    bounded(bound, Client::connect(&cluster.hosts, Some(options)))
        .await
        .map_err(|e| e.into_error(cluster, "connect to", prefix, Need::Read))
}

async fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, DiscoveryError> {
    tokio::fs::read(path).await.map_err(|e| {
        DiscoveryError::new(
            ErrorKind::Other,
            format!("cannot read the etcd TLS {what} `{}`: {e}", path.display()),
        )
    })
}

/// A failed request: etcd's error, or no answer in time.
#[derive(Debug)]
pub(crate) enum Failure {
    Etcd(EtcdError),
    Timeout(Duration),
}

impl From<EtcdError> for Failure {
    fn from(e: EtcdError) -> Self {
        Failure::Etcd(e)
    }
}

/// Runs `fut`, a request to etcd, for at most `bound`.
pub(crate) async fn bounded<T>(
    bound: Duration,
    fut: impl Future<Output = Result<T, EtcdError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(bound, fut).await {
        Ok(r) => r.map_err(Failure::Etcd),
        Err(_) => Err(Failure::Timeout(bound)),
    }
}

impl Failure {
    /// The gRPC status etcd answered, if it answered one.
    pub(crate) fn status(&self) -> Option<&tonic::Status> {
        match self {
            Failure::Etcd(EtcdError::GRpcStatus(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether etcd said the lease does not exist (it expired or was revoked).
    pub(crate) fn lease_not_found(&self) -> bool {
        self.status()
            .is_some_and(|s| s.message().contains("requested lease not found"))
    }

    /// The message for a failure to `what` (e.g. "read") `prefix` in `cluster`.
    pub(crate) fn into_error(
        self,
        cluster: &EtcdCluster,
        what: &str,
        prefix: &str,
        need: Need,
    ) -> DiscoveryError {
        let hosts = cluster.hosts.join(",");
        let user = cluster.user.as_deref();
        let (kind, detail) = match &self {
            Failure::Timeout(d) => (
                ErrorKind::Unavailable,
                format!("no answer within {d:?}; retrying with backoff"),
            ),
            Failure::Etcd(EtcdError::GRpcStatus(s)) => status_detail(s, user, prefix, need),
            Failure::Etcd(e @ (EtcdError::TransportError(_) | EtcdError::IoError(_))) => (
                ErrorKind::Unavailable,
                format!("cannot reach etcd ({}); retrying with backoff", chain(e)),
            ),
            Failure::Etcd(e) => (ErrorKind::Other, e.to_string()),
        };
        // A TLS mismatch shows only as a transport failure or a canceled call: say what to
        // check.
        let hint = if kind != ErrorKind::Unavailable {
            ""
        } else {
            match &cluster.tls {
                None => {
                    " (if etcd serves TLS, give `ca-file=`, and `cert-file=` with `key-file=` \
                     when it requires client certificates)"
                }
                Some(t) if t.cert_file.is_none() => {
                    " (check that etcd serves TLS with a certificate `ca-file` signed; an etcd \
                     with --client-cert-auth also needs `cert-file=` and `key-file=`)"
                }
                Some(_) => {
                    " (check that etcd serves TLS with a certificate `ca-file` signed, and \
                     that it trusts the CA of `cert-file`)"
                }
            }
        };
        DiscoveryError::new(
            kind,
            format!("etcd {hosts}: cannot {what} `{prefix}`: {detail}{hint}"),
        )
    }
}

/// Kind and advice for a status etcd answered (its messages: `api/v3rpc/rpctypes/error.go`).
pub(crate) fn status_detail(
    s: &tonic::Status,
    user: Option<&str>,
    prefix: &str,
    need: Need,
) -> (ErrorKind, String) {
    let msg = s.message();
    let who = user.map_or_else(|| "no user".to_owned(), |u| format!("user `{u}`"));
    let perm = match need {
        Need::Read => "read",
        Need::Write => "readwrite",
    };
    if msg.contains("authentication failed") {
        return (
            ErrorKind::Unauthenticated,
            format!(
                "etcd did not accept the password of {who} ({msg}); check `user=` and \
                 `password=`"
            ),
        );
    }
    if msg.contains("user name is empty") || msg.contains("user name not found") {
        return (
            ErrorKind::Unauthenticated,
            format!(
                "etcd has auth enabled and {who} was given ({msg}); add `user=` and \
                 `password=`"
            ),
        );
    }
    if msg.contains("authentication is not enabled") {
        return (
            ErrorKind::Other,
            format!("a user was given but etcd has auth disabled ({msg}); remove `user=`"),
        );
    }
    match s.code() {
        Code::PermissionDenied => (
            ErrorKind::Forbidden,
            format!(
                "permission denied to {who}: grant it {perm} on the prefix, e.g. `etcdctl \
                 role grant-permission <role> {perm} --prefix=true {prefix}` and `etcdctl \
                 user grant-role {} <role>`",
                user.unwrap_or("<user>")
            ),
        ),
        Code::Unauthenticated => (
            ErrorKind::Unauthenticated,
            format!("etcd refused the auth token of {who} ({msg}); authenticating again"),
        ),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            let why = if msg.contains("no leader") {
                "the member has no leader (cut off from its cluster?)".to_owned()
            } else {
                let cause = std::error::Error::source(s)
                    .map(|c| format!(": {}", chain(c)))
                    .unwrap_or_default();
                format!("etcd is unavailable ({msg}{cause})")
            };
            (
                ErrorKind::Unavailable,
                format!("{why}; retrying with backoff"),
            )
        }
        _ => (
            ErrorKind::Other,
            format!("etcd answered {:?}: {msg}", s.code()),
        ),
    }
}
