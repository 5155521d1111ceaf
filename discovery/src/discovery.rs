//! The contract every discovery backend implements.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;

use crate::{Address, Endpoint};

/// A change to the set of endpoints of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The complete current set: everything not listed is gone. Backends send one after
    /// every (re)list, so a consumer that missed events is made whole again.
    Reset(Vec<Endpoint>),
    /// These endpoints were added (or changed: same address, new weight or metadata).
    Add(Vec<Endpoint>),
    /// These endpoints are gone.
    Remove(Vec<Address>),
}

/// What kind of failure a [`DiscoveryError`] is, so callers can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The discovery server could not be reached, timed out or failed (5xx, SERVFAIL...).
    Unavailable,
    /// The server refused us: missing permission (HTTP 403, ACL denied).
    Forbidden,
    /// The server did not accept our credentials (HTTP 401).
    Unauthenticated,
    /// The thing we watch does not exist (unknown namespace, NXDOMAIN...).
    NotFound,
    /// The server answered with data we could not understand.
    Malformed,
    /// A name could not be resolved to addresses.
    Resolve,
    /// Anything else.
    Other,
}

/// A discovery failure. It is a value, not the end of discovery: backends report it, keep
/// their last good set and retry. The message says what failed, for which target, and what
/// to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DiscoveryError {
    kind: ErrorKind,
    message: Arc<str>,
}

impl DiscoveryError {
    /// A new error of `kind` with a complete, human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        DiscoveryError {
            kind,
            message: message.to_string().into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The stream a [`Discovery`] yields: updates and errors, in order.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, DiscoveryError>> + Send>>;

/// A source of endpoints for one target.
///
/// [`watch`](Discovery::watch) returns a stream that yields an [`Update::Reset`] as soon as
/// the set is known and further updates as it changes. Errors are yielded as values and the
/// stream goes on; a stream that ends means the set will not change again (a static list).
pub trait Discovery: Send + Sync + 'static {
    /// Starts watching. Each call starts an independent watch.
    fn watch(&self) -> UpdateStream;

    /// A hint that the consumer saw a connection fail and fresher data would help (gRPC's
    /// `ResolveNow`). Backends that poll (DNS) may re-resolve early; the default ignores it.
    fn resolve_now(&self) {}

    /// Whether the channel may use the TLS server names this discovery gives its endpoints
    /// (`Endpoint::tls_server_name`). Only sources the application controls say yes: static
    /// lists and [`ManualDiscovery`](crate::ManualDiscovery). DNS never does (anyone who can
    /// answer a query would choose the certificate), nor does a backend by default.
    fn trusted_names(&self) -> bool {
        false
    }
}

impl fmt::Debug for dyn Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Discovery")
    }
}
