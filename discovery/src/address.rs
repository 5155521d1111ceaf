//! Where an endpoint listens: a TCP socket address or a Unix domain socket path.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The address of one endpoint, the key under which meshless keeps its connection and its
/// load statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// A TCP socket address (IPv4 or IPv6).
    Tcp(SocketAddr),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

impl Address {
    /// The TCP socket address, when this is one.
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(sa) => Some(*sa),
            Address::Unix(_) => None,
        }
    }

    /// The text to put in the HTTP/2 `:authority` of a request sent to this address.
    ///
    /// Unix sockets have no host, so they use `localhost`, as grpc-go does.
    pub fn authority(&self) -> String {
        match self {
            Address::Tcp(sa) => sa.to_string(),
            Address::Unix(_) => "localhost".to_owned(),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(sa: SocketAddr) -> Self {
        Address::Tcp(sa)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(sa) => write!(f, "{sa}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
