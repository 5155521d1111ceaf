//! A small L4 TCP proxy that, like kube-proxy, picks one backend per connection.
//!
//! It shows the problem meshless solves: a plain tonic `Channel` dialled at a Service VIP opens
//! one HTTP/2 connection, the proxy pins that connection to one backend, and so every call of
//! the channel goes to that backend. [`ProxyHandle::add_backend`] plays a scale-up: like
//! kube-proxy learning a new pod, the proxy may send new connections to the added backend,
//! while connections already open stay where they are.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
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
    backends: Arc<Mutex<Backends>>,
    accept: JoinHandle<()>,
}

/// The backend set and the connections proxied to each, shared with the accept loop.
#[derive(Debug, Default)]
struct Backends {
    addrs: Vec<SocketAddr>,
    connections: Vec<u64>,
}

/// Locks the backend set; a panic elsewhere cannot leave it half-updated, so a poisoned
/// lock is still good.
fn lock(backends: &Mutex<Backends>) -> MutexGuard<'_, Backends> {
    backends
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let backends = Arc::new(Mutex::new(Backends {
            connections: vec![0; backends.len()],
            addrs: backends,
        }));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&backends),
            StdRng::seed_from_u64(seed),
        ));
        Ok(Self {
            addr,
            backends,
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

    /// The backends, in the order [`connections`](Self::connections) counts them: those
    /// given to [`spawn`](Self::spawn), then those added, in the order they were added.
    pub fn backends(&self) -> Vec<SocketAddr> {
        lock(&self.backends).addrs.clone()
    }

    /// Connections proxied to each backend so far, in the order of [`backends`](Self::backends).
    pub fn connections(&self) -> Vec<u64> {
        lock(&self.backends).connections.clone()
    }

    /// Adds `backend` to the set, as kube-proxy learns a pod that a scale-up added to a
    /// Service: every connection accepted from now on picks uniformly among all backends, the
    /// new one included. Connections already open keep their backend, so a client that holds
    /// its connections (a plain tonic `Channel`, a fixed pool of them) never reaches the new
    /// backend. Adding a backend already in the set adds it again, doubling its chance.
    pub fn add_backend(&self, backend: SocketAddr) {
        let mut set = lock(&self.backends);
        set.addrs.push(backend);
        set.connections.push(0);
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks; aborting it aborts them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, backends: Arc<Mutex<Backends>>, mut rng: StdRng) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                };
                let backend = {
                    let mut set = lock(&backends);
                    let index = rng.random_range(0..set.addrs.len());
                    set.connections[index] += 1;
                    set.addrs[index]
                };
                tasks.spawn(pipe(client, backend));
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
