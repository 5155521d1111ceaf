//! A discovery driven from code: the application pushes endpoint sets into a handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::{Address, Discovery, DiscoveryError, Endpoint, Update, UpdateStream};

#[derive(Debug, Clone, Default)]
struct State {
    /// `None` until the first set is pushed: a channel waits for it.
    endpoints: Option<Arc<Vec<Endpoint>>>,
    /// An error to report instead of a set (the last set stays in force).
    error: Option<DiscoveryError>,
}

/// A [`Discovery`] whose endpoints are set from code through a [`ManualHandle`].
///
/// Every change is delivered as a full [`Update::Reset`], so a watcher always converges on
/// the latest set even if it falls behind.
///
/// ```
/// use meshless_discovery::{Endpoint, ManualDiscovery};
/// let (discovery, handle) = ManualDiscovery::new();
/// handle.reset(vec![Endpoint::new("127.0.0.1:50051".parse::<std::net::SocketAddr>().unwrap())]);
/// # drop(discovery);
/// ```
#[derive(Debug, Clone)]
pub struct ManualDiscovery {
    rx: watch::Receiver<State>,
    /// The number of open watch streams.
    watches: Arc<AtomicUsize>,
}

/// The write side of a [`ManualDiscovery`]. Cloneable; dropping every handle freezes the set.
#[derive(Debug, Clone)]
pub struct ManualHandle {
    tx: Arc<watch::Sender<State>>,
    watches: Arc<AtomicUsize>,
}

impl ManualDiscovery {
    /// A discovery with no endpoints yet, and the handle that sets them.
    pub fn new() -> (ManualDiscovery, ManualHandle) {
        let (tx, rx) = watch::channel(State::default());
        let watches = Arc::new(AtomicUsize::new(0));
        (
            ManualDiscovery {
                rx,
                watches: watches.clone(),
            },
            ManualHandle {
                tx: Arc::new(tx),
                watches: watches.clone(),
            },
        )
    }
}

impl Discovery for ManualDiscovery {
    fn watch(&self) -> UpdateStream {
        let token = WatchToken::new(self.watches.clone());
        let stream = WatchStream::new(self.rx.clone()).filter_map(move |state| {
            let _open = &token; // dropped with the stream
            if let Some(err) = state.error {
                return Some(Err(err));
            }
            state
                .endpoints
                .map(|eps| Ok(Update::Reset(eps.as_ref().clone())))
        });
        Box::pin(stream)
    }
}

/// Counts one open watch for as long as it lives.
#[derive(Debug)]
struct WatchToken(Arc<AtomicUsize>);

impl WatchToken {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        WatchToken(count)
    }
}

impl Drop for WatchToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ManualHandle {
    /// Replaces the whole set.
    pub fn reset(&self, endpoints: Vec<Endpoint>) {
        self.tx.send_modify(|s| {
            s.endpoints = Some(Arc::new(endpoints));
            s.error = None;
        });
    }

    /// Adds endpoints (an endpoint with an address already present replaces it).
    pub fn add(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        let mut set = self.current();
        for ep in endpoints {
            match set.iter_mut().find(|e| e.addr == ep.addr) {
                Some(slot) => *slot = ep,
                None => set.push(ep),
            }
        }
        self.reset(set);
    }

    /// Removes the endpoints at these addresses.
    pub fn remove(&self, addrs: &[Address]) {
        let mut set = self.current();
        set.retain(|e| !addrs.contains(&e.addr));
        self.reset(set);
    }

    /// Reports a discovery error; the last pushed set stays in force.
    pub fn fail(&self, error: DiscoveryError) {
        self.tx.send_modify(|s| s.error = Some(error));
    }

    /// How many watches of the discovery are open (a channel holds one while its control
    /// task runs).
    pub fn watcher_count(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// The current set (empty before the first push).
    pub fn current(&self) -> Vec<Endpoint> {
        self.tx
            .borrow()
            .endpoints
            .as_deref()
            .cloned()
            .unwrap_or_default()
    }
}
