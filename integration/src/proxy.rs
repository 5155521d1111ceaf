//! A small L4 TCP proxy that, like kube-proxy, picks one backend per connection.
//!
//! It shows the problem meshless solves: a plain tonic `Channel` dialled at a Service VIP opens
//! one HTTP/2 connection, the proxy pins that connection to one backend, and so every call of
//! the channel goes to that backend.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long the proxy waits to connect to the backend it picked before it drops the client.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed accept, so a persistent error does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A running proxy. Dropping it closes the listener and every proxied connection.
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    backends: Vec<SocketAddr>,
    connections: Arc<Vec<AtomicU64>>,
    accept: JoinHandle<()>,
}

impl ProxyHandle {
    /// Listens on `127.0.0.1:0` and proxies each accepted connection to one of `backends`,
    /// chosen uniformly at random by an RNG seeded with `seed`. Runs on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `backends` is empty; any error from binding the listener.
    pub async fn spawn(backends: Vec<SocketAddr>, seed: u64) -> io::Result<Self> {
        if backends.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a proxy needs at least one backend",
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Vec<AtomicU64>> =
            Arc::new(backends.iter().map(|_| AtomicU64::new(0)).collect());
        let accept = tokio::spawn(accept_loop(
            listener,
            backends.clone(),
            Arc::clone(&connections),
            StdRng::seed_from_u64(seed),
        ));
        Ok(Self {
            addr,
            backends,
            connections,
            accept,
        })
    }

    /// The address clients dial: the "Service VIP".
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as an `http://` URI, ready for `tonic::transport::Endpoint`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The backends, in the order [`connections`](Self::connections) counts them.
    pub fn backends(&self) -> &[SocketAddr] {
        &self.backends
    }

    /// Connections proxied to each backend so far, in the order of [`backends`](Self::backends).
    pub fn connections(&self) -> Vec<u64> {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks; aborting it aborts them all.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    backends: Vec<SocketAddr>,
    connections: Arc<Vec<AtomicU64>>,
    mut rng: StdRng,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                };
                let index = rng.random_range(0..backends.len());
                connections[index].fetch_add(1, Ordering::SeqCst);
                tasks.spawn(pipe(client, backends[index]));
            }
            // Reap finished connections so the set does not grow with every connection.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Copies bytes both ways until either side closes; a failed backend connect drops the client.
async fn pipe(mut client: TcpStream, backend: SocketAddr) {
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend)).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
