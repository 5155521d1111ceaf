//! The control task: drives discovery and connections, and publishes pickers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use meshless_balancer::{Balancer, ConnectivityState, EndpointStats, Picker, SubchannelView};
use meshless_discovery::{Address, Discovery, DiscoveryError, Endpoint, Update, UpdateStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::status::{ChannelStatus, EndpointStatus};
use crate::subchannel::{self, ConnectConfig, StateEvent, Subchannel, SubchannelHandle};

/// Load statistics of a removed endpoint are kept this long, so an endpoint that flaps out
/// of discovery and back keeps what was learned about it.
const STATS_RETENTION: Duration = Duration::from_secs(300);

/// What the request path does with a request, published as one immutable snapshot.
pub(crate) enum PickerState {
    /// Ask this picker; its indices refer to `Snapshot::subchannels`.
    Pick(Arc<dyn Picker>),
    /// Wait for the next snapshot (bounded by the caller).
    Queue,
    /// Fail with this status.
    Fail(Status),
}

pub(crate) struct Snapshot {
    pub picker: PickerState,
    pub subchannels: Vec<Arc<Subchannel>>,
}

/// State shared by the channel handles, in-flight calls and the control task.
pub(crate) struct Shared {
    pub target: Arc<str>,
    pub policy: &'static str,
    pub snapshot: ArcSwap<Snapshot>,
    /// Bumped after every new snapshot; queued calls wait on it.
    pub version: watch::Sender<u64>,
    pub wait_for_ready: Duration,
    status: Mutex<StatusBase>,
}

#[derive(Default)]
struct StatusBase {
    resolved: bool,
    discovery_error: Option<String>,
    /// Endpoint, subchannel, state as the published picker knows it, last error.
    endpoints: Vec<(Endpoint, Arc<Subchannel>, ConnectivityState, Option<String>)>,
}

impl Shared {
    pub(crate) fn new(target: Arc<str>, policy: &'static str, wait_for_ready: Duration) -> Self {
        Shared {
            target,
            policy,
            snapshot: ArcSwap::from_pointee(Snapshot {
                picker: PickerState::Queue,
                subchannels: Vec::new(),
            }),
            version: watch::channel(0).0,
            wait_for_ready,
            status: Mutex::new(StatusBase::default()),
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.version.send_modify(|v| *v += 1);
    }

    pub(crate) fn status(&self) -> ChannelStatus {
        let base = self.status.lock().unwrap_or_else(|p| p.into_inner());
        ChannelStatus {
            target: self.target.to_string(),
            policy: self.policy,
            resolved: base.resolved,
            discovery_error: base.discovery_error.clone(),
            endpoints: base
                .endpoints
                .iter()
                .map(|(ep, sub, state, err)| EndpointStatus {
                    address: ep.addr.clone(),
                    weight: ep.weight,
                    zone: ep.zone.clone(),
                    state: *state,
                    in_flight: sub.stats.in_flight(),
                    successes: sub.stats.successes(),
                    failures: sub.stats.failures(),
                    latency_ewma: sub.stats.latency_ewma(),
                    last_error: err.clone(),
                })
                .collect(),
        }
    }
}

struct Entry {
    endpoint: Endpoint,
    handle: SubchannelHandle,
    state: ConnectivityState,
    /// Failed since it was last ready (or since it was created): gRPC's sticky
    /// TRANSIENT_FAILURE, which makes calls fail fast instead of queueing.
    failed_since_ready: bool,
    last_error: Option<String>,
}

pub(crate) struct Control {
    pub shared: Arc<Shared>,
    pub balancer: Arc<dyn Balancer>,
    pub discovery: Arc<dyn Discovery>,
    pub config: Arc<ConnectConfig>,
    pub closed: oneshot::Receiver<()>,
}

struct Run {
    c: Control,
    events_tx: mpsc::UnboundedSender<StateEvent>,
    entries: Vec<Entry>,
    retired: HashMap<Address, (Arc<EndpointStats>, Instant)>,
    resolved: bool,
    discovery_error: Option<DiscoveryError>,
    next_generation: u64,
    /// What the published picker was built from, while it is a balancer's picker: each
    /// subchannel's incarnation, endpoint and readiness.
    picked_from: Option<Vec<(u64, Endpoint, bool)>>,
}

impl Control {
    /// Runs until every `Channel` handle is dropped.
    pub(crate) async fn run(self) {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let mut updates: Option<UpdateStream> = Some(self.discovery.watch());
        let mut run = Run {
            c: self,
            events_tx,
            entries: Vec::new(),
            retired: HashMap::new(),
            resolved: false,
            discovery_error: None,
            next_generation: 0,
            picked_from: None,
        };
        loop {
            tokio::select! {
                biased;
                _ = &mut run.c.closed => break,
                Some(ev) = events_rx.recv() => {
                    run.on_event(ev);
                    // Apply every event already queued before rebuilding once.
                    while let Ok(ev) = events_rx.try_recv() {
                        run.on_event(ev);
                    }
                    run.rebuild();
                }
                item = next_update(&mut updates) => {
                    match item {
                        Some(Ok(update)) => run.on_update(update),
                        Some(Err(err)) => run.on_discovery_error(err),
                        None => {
                            tracing::debug!(target = %run.c.shared.target, "discovery finished; keeping the last set");
                            updates = None;
                            continue;
                        }
                    }
                    run.rebuild();
                }
            }
        }
        run.shutdown();
    }
}

/// The next discovery item, or never when discovery has finished.
async fn next_update(updates: &mut Option<UpdateStream>) -> Option<Result<Update, DiscoveryError>> {
    match updates {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Run {
    fn on_update(&mut self, update: Update) {
        let next: Vec<Endpoint> = match update {
            Update::Reset(eps) => eps,
            Update::Add(eps) => {
                let mut cur: Vec<Endpoint> =
                    self.entries.iter().map(|e| e.endpoint.clone()).collect();
                for ep in eps {
                    match cur.iter_mut().find(|c| c.addr == ep.addr) {
                        Some(slot) => *slot = ep,
                        None => cur.push(ep),
                    }
                }
                cur
            }
            Update::Remove(addrs) => self
                .entries
                .iter()
                .map(|e| e.endpoint.clone())
                .filter(|e| !addrs.contains(&e.addr))
                .collect(),
        };
        self.resolved = true;
        self.discovery_error = None;
        self.reconcile(next);
    }

    fn on_discovery_error(&mut self, err: DiscoveryError) {
        tracing::warn!(target = %self.c.shared.target, "discovery failed, keeping the last known endpoints: {err}");
        self.discovery_error = Some(err);
    }

    /// Makes the subchannels match `next`: keeps the ones that stay (with their
    /// connections and stats), starts new ones, shuts down the rest.
    fn reconcile(&mut self, next: Vec<Endpoint>) {
        let now = Instant::now();
        self.retired
            .retain(|_, (_, at)| now.duration_since(*at) < STATS_RETENTION);
        let mut old: HashMap<Address, Entry> = self
            .entries
            .drain(..)
            .map(|e| (e.endpoint.addr.clone(), e))
            .collect();
        let mut entries = Vec::with_capacity(next.len());
        for ep in next {
            if entries.iter().any(|e: &Entry| e.endpoint.addr == ep.addr) {
                continue; // duplicate address in the set: one subchannel is enough
            }
            if let Some(mut entry) = old.remove(&ep.addr) {
                entry.endpoint = ep;
                entries.push(entry);
                continue;
            }
            let stats = self
                .retired
                .remove(&ep.addr)
                .map(|(s, _)| s)
                .unwrap_or_else(|| Arc::new(self.c.balancer.new_stats()));
            self.next_generation += 1;
            let handle = subchannel::spawn(
                ep.addr.clone(),
                self.next_generation,
                stats,
                self.c.config.clone(),
                self.events_tx.clone(),
            );
            entries.push(Entry {
                endpoint: ep,
                handle,
                state: ConnectivityState::Idle,
                failed_since_ready: false,
                last_error: None,
            });
        }
        for (addr, entry) in old {
            tracing::debug!(%addr, "endpoint removed; draining its connection");
            self.retired
                .insert(addr, (entry.handle.sub.stats.clone(), now));
            entry.handle.shutdown();
        }
        self.entries = entries;
    }

    fn on_event(&mut self, ev: StateEvent) {
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.endpoint.addr == ev.addr && e.handle.generation == ev.generation)
        else {
            return; // from a subchannel already removed
        };
        entry.state = ev.state;
        match ev.state {
            ConnectivityState::Ready => entry.failed_since_ready = false,
            ConnectivityState::TransientFailure => entry.failed_since_ready = true,
            _ => {}
        }
        if ev.error.is_some() {
            entry.last_error = ev.error;
            if ev.state == ConnectivityState::TransientFailure {
                // Fresher addresses may help (DNS re-resolution on failure).
                self.c.discovery.resolve_now();
            }
        }
    }

    fn rebuild(&mut self) {
        // A balancer's picker depends only on which subchannels there are, their endpoints
        // and which are ready. Endpoints that are not ready going Connecting ↔ TransientFailure
        // through their backoff must not cost a rebuild (a ring or Maglev table for large sets)
        // and a wake-up of every queued call.
        let inputs: Option<Vec<(u64, Endpoint, bool)>> = self
            .entries
            .iter()
            .any(|e| e.state == ConnectivityState::Ready)
            .then(|| {
                self.entries
                    .iter()
                    .map(|e| {
                        (
                            e.handle.generation,
                            e.endpoint.clone(),
                            e.state == ConnectivityState::Ready,
                        )
                    })
                    .collect()
            });
        if inputs.is_none() || inputs != self.picked_from {
            let subchannels: Vec<Arc<Subchannel>> =
                self.entries.iter().map(|e| e.handle.sub.clone()).collect();
            let picker = self.picker_state();
            // Publish first: whoever sees the new status can count on the picker matching it.
            self.c.shared.publish(Snapshot {
                picker,
                subchannels,
            });
            self.picked_from = inputs;
        }
        let mut base = self
            .c
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        base.resolved = self.resolved;
        base.discovery_error = self.discovery_error.as_ref().map(|e| e.to_string());
        base.endpoints = self
            .entries
            .iter()
            .map(|e| {
                (
                    e.endpoint.clone(),
                    e.handle.sub.clone(),
                    e.state,
                    e.last_error.clone(),
                )
            })
            .collect();
    }

    /// gRPC's state aggregation: any ready endpoint → pick; otherwise queue while an
    /// endpoint that has not failed yet is connecting; otherwise fail fast.
    fn picker_state(&self) -> PickerState {
        let target = &self.c.shared.target;
        if self
            .entries
            .iter()
            .any(|e| e.state == ConnectivityState::Ready)
        {
            let views: Vec<SubchannelView> = self
                .entries
                .iter()
                .map(|e| SubchannelView {
                    endpoint: e.endpoint.clone(),
                    stats: e.handle.sub.stats.clone(),
                    state: e.state,
                })
                .collect();
            return PickerState::Pick(self.c.balancer.build(&views));
        }
        if !self.resolved {
            return match &self.discovery_error {
                Some(err) => PickerState::Fail(Status::unavailable(format!(
                    "{target}: discovery has not produced endpoints yet: {err}"
                ))),
                None => PickerState::Queue,
            };
        }
        if self.entries.is_empty() {
            let why = match &self.discovery_error {
                Some(err) => format!("; last discovery error: {err}"),
                None => String::new(),
            };
            return PickerState::Fail(Status::unavailable(format!(
                "{target}: discovery reports no endpoints{why}"
            )));
        }
        if self
            .entries
            .iter()
            .any(|e| !e.failed_since_ready && e.state != ConnectivityState::TransientFailure)
        {
            return PickerState::Queue;
        }
        let last = self
            .entries
            .iter()
            .filter_map(|e| e.last_error.as_deref())
            .next_back()
            .unwrap_or("no connection attempt succeeded");
        PickerState::Fail(Status::unavailable(format!(
            "{target}: all {} endpoints are unreachable; last error: {last}",
            self.entries.len()
        )))
    }

    fn shutdown(&mut self) {
        for e in self.entries.drain(..) {
            e.handle.shutdown();
        }
        self.c.shared.publish(Snapshot {
            picker: PickerState::Fail(Status::unavailable(format!(
                "{}: channel was dropped",
                self.c.shared.target
            ))),
            subchannels: Vec::new(),
        });
    }
}
