//! A discovery driven from code: the application pushes endpoint sets into a handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::{Address, Discovery, DiscoveryError, Endpoint, Update, UpdateStream};

/// What the handles have pushed. A watch channel keeps only the latest value, so a reader
/// that falls behind sees several pushes at once; the versions tell it which parts are new
/// to it, so that an error pushed after a set cannot hide that set.
#[derive(Debug, Clone, Default)]
struct State {
    /// `None` until the first set is pushed: a channel waits for it.
    endpoints: Option<Arc<Vec<Endpoint>>>,
    /// Bumped by every push of a set.
    endpoints_version: u64,
    /// The error reported since the last set, if any (the last set stays in force). A new
    /// set clears it: it is the news that discovery works again.
    error: Option<DiscoveryError>,
    /// Bumped by every reported error, so a repeated error is a new event.
    error_version: u64,
}

impl State {
    fn set(&mut self, endpoints: Vec<Endpoint>) {
        self.endpoints = Some(Arc::new(endpoints));
        self.endpoints_version = self.endpoints_version.wrapping_add(1);
        self.error = None;
    }

    fn current(&self) -> Vec<Endpoint> {
        self.endpoints.as_deref().cloned().unwrap_or_default()
    }
}

/// A [`Discovery`] whose endpoints are set from code through a [`ManualHandle`].
///
/// Every change is delivered as a full [`Update::Reset`], so a watcher always converges on
/// the latest set even if it falls behind: a watcher that looks only after several pushes
/// gets the latest set and then, if one was reported after it, the latest error, in that
/// order. Sets and errors that a later push replaced before the watcher looked are not
/// delivered (a set replaces the errors before it: discovery works again).
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
        let cursor = Cursor {
            rx: self.rx.clone(),
            endpoints_seen: 0,
            error_seen: 0,
            queued: None,
            _open: WatchToken::new(self.watches.clone()),
        };
        Box::pin(futures_util::stream::unfold(cursor, Cursor::next))
    }

    /// The application pushes these endpoints itself.
    fn trusted_names(&self) -> bool {
        true
    }
}

/// One watch's place in the pushes: which versions it has yielded.
struct Cursor {
    rx: watch::Receiver<State>,
    /// Version 0 is "nothing pushed yet", so a new watch yields whatever is there.
    endpoints_seen: u64,
    error_seen: u64,
    /// An error read together with a newer set, yielded right after that set.
    queued: Option<DiscoveryError>,
    _open: WatchToken,
}

impl Cursor {
    async fn next(mut self) -> Option<(Result<Update, DiscoveryError>, Cursor)> {
        loop {
            if let Some(error) = self.queued.take() {
                return Some((Err(error), self));
            }
            let set = {
                // Marks the value seen: `changed` below then waits for the next push only.
                let state = self.rx.borrow_and_update();
                let set = (state.endpoints_version != self.endpoints_seen)
                    .then(|| state.endpoints.clone())
                    .flatten();
                self.endpoints_seen = state.endpoints_version;
                if state.error_version != self.error_seen {
                    self.error_seen = state.error_version;
                    // A set clears the error, so one still present came after that set.
                    self.queued = state.error.clone();
                }
                set
            };
            if let Some(endpoints) = set {
                return Some((Ok(Update::Reset(endpoints.as_ref().clone())), self));
            }
            if self.queued.is_some() {
                continue;
            }
            // Every handle is gone and everything pushed was yielded: the set is final.
            self.rx.changed().await.ok()?;
        }
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
        self.tx.send_modify(|s| s.set(endpoints));
    }

    /// Adds endpoints (an endpoint with an address already present replaces it).
    pub fn add(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        // Read and write under one lock, so concurrent edits from clones of the handle
        // cannot undo each other.
        self.tx.send_modify(|s| {
            let mut set = s.current();
            for ep in endpoints {
                match set.iter_mut().find(|e| e.addr == ep.addr) {
                    Some(slot) => *slot = ep,
                    None => set.push(ep),
                }
            }
            s.set(set);
        });
    }

    /// Removes the endpoints at these addresses.
    pub fn remove(&self, addrs: &[Address]) {
        self.tx.send_modify(|s| {
            let mut set = s.current();
            set.retain(|e| !addrs.contains(&e.addr));
            s.set(set);
        });
    }

    /// Reports a discovery error; the last pushed set stays in force. Watchers get it after
    /// the set pushed before it, even if they look only after both.
    pub fn fail(&self, error: DiscoveryError) {
        self.tx.send_modify(|s| {
            s.error = Some(error);
            s.error_version = s.error_version.wrapping_add(1);
        });
    }

    /// How many watches of the discovery are open (a channel holds one while its control
    /// task runs).
    pub fn watcher_count(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// The current set (empty before the first push).
    pub fn current(&self) -> Vec<Endpoint> {
        self.tx.borrow().current()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::ErrorKind;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    fn err(message: &str) -> DiscoveryError {
        DiscoveryError::new(ErrorKind::Unavailable, message)
    }

    /// The next item, or a panic naming what was expected if none comes: every push here
    /// is already made, so the item is ready at once and the bound only catches a hang.
    async fn next(stream: &mut UpdateStream, what: &str) -> Result<Update, DiscoveryError> {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no item; expected {what}"))
            .unwrap_or_else(|| panic!("stream ended; expected {what}"))
    }

    /// Asserts that nothing more is ready now.
    fn nothing_ready(stream: &mut UpdateStream) {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        match stream.poll_next_unpin(&mut cx) {
            std::task::Poll::Pending => {}
            std::task::Poll::Ready(item) => panic!("unexpected item: {item:?}"),
        }
    }

    fn reset_of(item: Result<Update, DiscoveryError>) -> Vec<Endpoint> {
        match item {
            Ok(Update::Reset(eps)) => eps,
            other => panic!("expected a Reset, got {other:?}"),
        }
    }

    fn error_of(item: Result<Update, DiscoveryError>) -> String {
        match item {
            Err(e) => e.message().to_owned(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_set_then_an_error_before_the_first_poll_yields_both_in_order() {
        let (discovery, handle) = ManualDiscovery::new();
        let mut stream = discovery.watch();
        handle.reset(vec![ep(1)]);
        handle.fail(err("down"));
        assert_eq!(reset_of(next(&mut stream, "the set").await), vec![ep(1)]);
        assert_eq!(error_of(next(&mut stream, "the error").await), "down");
        nothing_ready(&mut stream);
    }

    #[tokio::test]
    async fn a_watch_opened_after_a_set_and_an_error_yields_both_in_order() {
        let (discovery, handle) = ManualDiscovery::new();
        handle.reset(vec![ep(1)]);
        handle.fail(err("down"));
        let mut stream = discovery.watch();
        assert_eq!(reset_of(next(&mut stream, "the set").await), vec![ep(1)]);
        assert_eq!(error_of(next(&mut stream, "the error").await), "down");
        nothing_ready(&mut stream);
    }

    #[tokio::test]
    async fn a_set_after_an_error_replaces_it() {
        let (discovery, handle) = ManualDiscovery::new();
        let mut stream = discovery.watch();
        handle.fail(err("down"));
        handle.reset(vec![ep(2)]);
        // The set is the news that discovery works again; the error it replaced is stale.
        assert_eq!(reset_of(next(&mut stream, "the set").await), vec![ep(2)]);
        nothing_ready(&mut stream);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_gets_the_latest_set_then_the_latest_error() {
        let (discovery, handle) = ManualDiscovery::new();
        let mut stream = discovery.watch();
        handle.reset(vec![ep(1)]);
        handle.fail(err("first"));
        handle.add([ep(2)]);
        handle.fail(err("second"));
        handle.fail(err("third"));
        assert_eq!(
            reset_of(next(&mut stream, "the set").await),
            vec![ep(1), ep(2)]
        );
        assert_eq!(error_of(next(&mut stream, "the error").await), "third");
        nothing_ready(&mut stream);
    }

    #[tokio::test]
    async fn each_push_is_yielded_once_and_a_repeated_error_again() {
        let (discovery, handle) = ManualDiscovery::new();
        let mut stream = discovery.watch();
        nothing_ready(&mut stream);
        handle.fail(err("before any set"));
        assert_eq!(
            error_of(next(&mut stream, "the error").await),
            "before any set"
        );
        nothing_ready(&mut stream);
        handle.reset(vec![ep(1)]);
        assert_eq!(reset_of(next(&mut stream, "the set").await), vec![ep(1)]);
        nothing_ready(&mut stream);
        for _ in 0..2 {
            handle.fail(err("same"));
            assert_eq!(error_of(next(&mut stream, "the error").await), "same");
            nothing_ready(&mut stream);
        }
        handle.remove(&[ep(1).addr]);
        assert_eq!(reset_of(next(&mut stream, "the empty set").await), vec![]);
        nothing_ready(&mut stream);
    }

    #[tokio::test]
    async fn dropping_every_handle_ends_the_stream_after_what_was_pushed() {
        let (discovery, handle) = ManualDiscovery::new();
        let mut stream = discovery.watch();
        assert_eq!(handle.watcher_count(), 1);
        handle.reset(vec![ep(1)]);
        handle.fail(err("down"));
        drop(handle.clone());
        drop(handle);
        assert_eq!(reset_of(next(&mut stream, "the set").await), vec![ep(1)]);
        assert_eq!(error_of(next(&mut stream, "the error").await), "down");
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream ends");
        assert!(end.is_none(), "{end:?}");
    }

    #[test]
    fn watcher_count_follows_open_streams() {
        let (discovery, handle) = ManualDiscovery::new();
        let a = discovery.watch();
        let b = discovery.watch();
        assert_eq!(handle.watcher_count(), 2);
        drop(a);
        assert_eq!(handle.watcher_count(), 1);
        drop(b);
        assert_eq!(handle.watcher_count(), 0);
    }

    #[test]
    fn edits_from_clones_of_the_handle_all_land() {
        let (_discovery, handle) = ManualDiscovery::new();
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        handle.add([ep(t * 100 + i)]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(handle.current().len(), 200);
    }
}
