//! A discovery driven from code: the application pushes endpoint sets into a handle.

use std::sync::Arc;

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
}

/// The write side of a [`ManualDiscovery`]. Cloneable; dropping every handle freezes the set.
#[derive(Debug, Clone)]
pub struct ManualHandle {
    tx: Arc<watch::Sender<State>>,
}

impl ManualDiscovery {
    /// A discovery with no endpoints yet, and the handle that sets them.
    pub fn new() -> (ManualDiscovery, ManualHandle) {
        let (tx, rx) = watch::channel(State::default());
        (ManualDiscovery { rx }, ManualHandle { tx: Arc::new(tx) })
    }
}

impl Discovery for ManualDiscovery {
    fn watch(&self) -> UpdateStream {
        let stream = WatchStream::new(self.rx.clone()).filter_map(|state| {
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
