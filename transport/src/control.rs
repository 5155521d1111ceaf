//! The control task: drives discovery and connections, and publishes pickers.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::{FutureExt, StreamExt};
use meshless_balancer::{
    Balancer, ConnectMode, ConnectivityState, EndpointStats, FailureCodes, Picker, SubchannelView,
};
use meshless_discovery::{Address, Discovery, DiscoveryError, Endpoint, Update, UpdateStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::status::{ChannelStatus, EndpointStatus};
use crate::subchannel::{self, ConnectConfig, StateEvent, Subchannel, SubchannelHandle};

/// The control task's maps, keyed by endpoint address: foldhash rather than SipHash, since
/// the keys come from our own discovery and a 5,000-endpoint update hashes each twice.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Load statistics of a removed endpoint are kept this long, so an endpoint that flaps out
/// of discovery and back keeps what was learned about it.
const STATS_RETENTION: Duration = Duration::from_secs(300);

/// What the request path does with a request, published as one immutable snapshot.
pub(crate) enum PickerState {
    /// Ask this picker; its indices refer to `Snapshot::subchannels`.
    Pick(Arc<dyn Picker>),
    /// Wait for the next snapshot (bounded by the caller).
    Queue,
    /// The channel let its connections go after its idle timeout: wake the control task,
    /// then wait for the next snapshot.
    Idle,
    /// Fail with this status.
    Fail(Status),
}

impl PickerState {
    /// The channel's aggregate connectivity state that this picker stands for.
    fn connectivity(&self) -> ConnectivityState {
        match self {
            PickerState::Pick(_) => ConnectivityState::Ready,
            PickerState::Queue => ConnectivityState::Connecting,
            PickerState::Idle => ConnectivityState::Idle,
            PickerState::Fail(_) => ConnectivityState::TransientFailure,
        }
    }
}

pub(crate) struct Snapshot {
    pub picker: PickerState,
    /// Shared by every snapshot until the endpoint set changes, so a readiness change
    /// publishes a new picker without copying the list.
    pub subchannels: Arc<Vec<Arc<Subchannel>>>,
}

/// State shared by the channel handles, in-flight calls and the control task.
pub(crate) struct Shared {
    pub target: Arc<str>,
    /// The policy's name; changed by a policy switch.
    pub policy: Mutex<&'static str>,
    pub snapshot: ArcSwap<Snapshot>,
    /// Bumped after every new snapshot; queued calls wait on it.
    pub version: watch::Sender<u64>,
    /// The aggregate connectivity state (gRPC's channel state).
    pub state: watch::Sender<ConnectivityState>,
    /// Bumped whenever `status()` would show something new.
    pub status_version: watch::Sender<u64>,
    pub queue_timeout: Duration,
    /// Which status codes count against an endpoint.
    pub failure_codes: FailureCodes,
    /// Set by every call, cleared by the idle timer.
    pub active: AtomicBool,
    /// Wakes the control task out of idleness.
    pub wake: Notify,
    /// Released whenever a call ends on a subchannel that was at its stream limit.
    pub capacity: Notify,
    /// How many endpoints discovery reports (for error messages without a status lock).
    pub endpoint_count: AtomicUsize,
    /// Caps on calls in flight.
    pub limits: Limits,
    /// Calls in flight on the whole channel; counted only when `limits.per_channel` is set.
    pub in_flight: std::sync::atomic::AtomicU64,
    /// The instruments, when metrics are on.
    pub metrics: Option<Arc<crate::Recorder>>,
    /// Set when the control task stopped (every `Channel` handle was dropped).
    pub closed: AtomicBool,
    /// The channel's TLS state, for `status()`'s reload error.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<crate::tls::TlsState>>,
    status: Mutex<StatusBase>,
}

/// Caps on calls in flight (Envoy's circuit-breaker `max_requests`, gRPC A32): a call over
/// one fails `UNAVAILABLE` at once and is not retried.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub per_endpoint: Option<u64>,
    pub per_channel: Option<u64>,
}

#[derive(Default)]
struct StatusBase {
    resolved: bool,
    discovery_error: Option<String>,
    /// A component that panicked, and what it said.
    panicked: Option<String>,
    /// One row per endpoint, as the published picker knows it.
    endpoints: Vec<StatusRow>,
}

struct StatusRow {
    endpoint: Endpoint,
    sub: Arc<Subchannel>,
    state: ConnectivityState,
    ejected: bool,
    last_error: Option<String>,
}

impl Shared {
    pub(crate) fn new(
        target: Arc<str>,
        policy: &'static str,
        queue_timeout: Duration,
        failure_codes: FailureCodes,
    ) -> Self {
        Shared {
            target,
            policy: Mutex::new(policy),
            snapshot: ArcSwap::from_pointee(Snapshot {
                picker: PickerState::Queue,
                subchannels: Arc::default(),
            }),
            version: watch::channel(0).0,
            state: watch::channel(ConnectivityState::Idle).0,
            status_version: watch::channel(0).0,
            queue_timeout,
            failure_codes,
            active: AtomicBool::new(false),
            wake: Notify::new(),
            capacity: Notify::new(),
            endpoint_count: AtomicUsize::new(0),
            limits: Limits::default(),
            in_flight: std::sync::atomic::AtomicU64::new(0),
            metrics: None,
            closed: AtomicBool::new(false),
            #[cfg(feature = "tls")]
            tls: None,
            status: Mutex::new(StatusBase::default()),
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        // The state first: whoever sees the picker can count on the state matching it.
        let state = snapshot.picker.connectivity();
        self.state
            .send_if_modified(|s| std::mem::replace(s, state) != state);
        let old = self.snapshot.swap(Arc::new(snapshot));
        self.version.send_modify(|v| *v += 1);
        // The old snapshot (thousands of references for a large set) goes after the news.
        drop(old);
    }

    /// The policy's name now.
    pub(crate) fn policy_name(&self) -> &'static str {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn status(&self) -> ChannelStatus {
        let base = self.status.lock().unwrap_or_else(|p| p.into_inner());
        ChannelStatus {
            target: self.target.to_string(),
            policy: self.policy_name(),
            resolved: base.resolved,
            discovery_error: base.discovery_error.clone(),
            panicked: base.panicked.clone(),
            #[cfg(feature = "tls")]
            tls_error: self.tls.as_ref().and_then(|t| t.error()),
            #[cfg(not(feature = "tls"))]
            tls_error: None,
            endpoints: base
                .endpoints
                .iter()
                .map(|r| EndpointStatus {
                    address: r.endpoint.addr.clone(),
                    weight: r.endpoint.weight,
                    zone: r.endpoint.zone.clone(),
                    state: r.state,
                    ejected: r.ejected,
                    in_flight: r.sub.stats.in_flight(),
                    successes: r.sub.stats.successes(),
                    failures: r.sub.stats.failures(),
                    latency_ewma: r.sub.stats.latency_ewma(),
                    last_error: r.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// What the control task keeps of a subchannel besides its [`SubchannelView`] (the
/// endpoint, stats and state, kept in `Run::views` at the same index, so a picker is built
/// from them without copying).
struct Entry {
    handle: SubchannelHandle,
    /// Failed since it was last ready (or since it was created): gRPC's sticky
    /// TRANSIENT_FAILURE, which makes calls fail fast instead of queueing.
    failed_since_ready: bool,
    /// The last error and when it happened (a sequence number over the channel), so the
    /// message of a failing channel names the most recent one.
    last_error: Option<(u64, String)>,
    /// When its current connection attempt started (for one-at-a-time connecting).
    connecting_since: Option<Instant>,
    /// The state its connection reports. The view the balancer sees says
    /// `TransientFailure` instead while outlier detection has it ejected.
    conn_state: ConnectivityState,
    /// Taken out of the picker by outlier detection (its connection stays).
    ejected: bool,
}

/// What an endpoint of a new set is to the current entries (see `Run::reconcile`).
#[derive(Debug, Clone, Copy)]
enum Claim {
    /// An address seen earlier in the same set.
    Duplicate,
    /// Not among the current entries.
    New,
    /// The current entry at this position.
    Keep(usize),
}

/// The old entries as reconcile takes them: walked in order once (when discovery kept its
/// order), or taken by position from slots.
enum Old<'a, I> {
    InOrder(std::iter::Enumerate<I>),
    Slots(&'a mut Vec<Option<(Entry, SubchannelView)>>),
}

impl<I: Iterator<Item = (Entry, SubchannelView)>> Old<'_, I> {
    /// The old entry at `at`. Walking in order, the unclaimed ones before it go to `gone`.
    fn take(
        &mut self,
        at: usize,
        mut gone: impl FnMut(Entry, SubchannelView),
    ) -> Option<(Entry, SubchannelView)> {
        match self {
            Old::InOrder(walk) => {
                for (i, pair) in walk.by_ref() {
                    if i == at {
                        return Some(pair);
                    }
                    gone(pair.0, pair.1);
                }
                None
            }
            // Each old address is claimed at most once (the new index has no duplicates),
            // so its slot is full.
            Old::Slots(slots) => slots.get_mut(at).and_then(Option::take),
        }
    }

    /// What nobody claimed goes to `gone`.
    fn rest(self, mut gone: impl FnMut(Entry, SubchannelView)) {
        match self {
            Old::InOrder(walk) => walk.for_each(|(_, (e, v))| gone(e, v)),
            Old::Slots(slots) => slots.drain(..).flatten().for_each(|(e, v)| gone(e, v)),
        }
    }
}

/// Keeps an old entry for `ep` at the end of the new lists; true when that changes
/// anything (its position, or what discovery says of it).
fn keep(
    entries: &mut Vec<Entry>,
    views: &mut Vec<SubchannelView>,
    entry: Entry,
    mut view: SubchannelView,
    ep: Endpoint,
    old_position: usize,
) -> bool {
    let mut changed = old_position != entries.len();
    if view.endpoint != ep {
        changed = true;
        view.endpoint = ep;
    }
    entries.push(entry);
    views.push(view);
    changed
}

/// What a `Channel` handle asks of its control task.
pub(crate) enum Command {
    /// Switch to this policy, keeping connections and load statistics.
    SetPolicy(Arc<dyn meshless_balancer::Policy>),
}

pub(crate) struct Control {
    pub shared: Arc<Shared>,
    pub balancer: Box<dyn Balancer>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub discovery: Arc<dyn Discovery>,
    pub config: Arc<ConnectConfig>,
    /// `:authority` of every call, whatever discovery says (the builder's `.authority`).
    pub forced_authority: Option<http::uri::Authority>,
    /// `:authority` from the target's host, for endpoints that give none of their own.
    pub default_authority: Option<http::uri::Authority>,
    pub idle_timeout: Option<Duration>,
    /// Outlier detection, when configured.
    pub outlier: Option<crate::outlier::OutlierDetection>,
    pub closed: oneshot::Receiver<()>,
    /// The discovery's TLS server names may be used (`Discovery::trusted_names`).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub trusted_names: bool,
    /// The TLS reload task, stopped with this task.
    #[cfg(feature = "tls")]
    pub _tls_reload: Option<crate::channel::AbortOnDrop>,
}

struct Run {
    c: Control,
    connect_mode: ConnectMode,
    events_tx: mpsc::UnboundedSender<StateEvent>,
    entries: Vec<Entry>,
    /// What the balancer sees of each entry, at the same index.
    views: Vec<SubchannelView>,
    /// The subchannels of `entries`, as the snapshots hand them to calls.
    subchannels: Arc<Vec<Arc<Subchannel>>>,
    /// Position of each address in `entries`.
    index: HashMap<Address, usize>,
    retired: HashMap<Address, (Arc<EndpointStats>, Instant)>,
    resolved: bool,
    discovery_error: Option<DiscoveryError>,
    /// A component that panicked: the channel fails every call, naming it.
    panicked: Option<String>,
    /// How many of `views` are ready, kept as states change so that an event does not scan
    /// every endpoint (a 5,000-endpoint channel starting up gets 15,000 events).
    ready: usize,
    next_generation: u64,
    error_seq: u64,
    /// The balancer's picker is stale: the subchannels, their endpoints or their readiness
    /// changed since it was built.
    dirty: bool,
    /// The endpoint set changed: the status rows are rebuilt from scratch.
    set_changed: bool,
    /// Entries whose state or error changed since the status rows were last written.
    changed_rows: Vec<usize>,
    /// Subchannels that left the set, shut down after the next publish.
    removed: Vec<SubchannelHandle>,
    /// Connection tasks of new subchannels, started once the picker with them is out.
    unstarted: Vec<subchannel::Unstarted>,
    /// The previous reconcile's buffer, kept so that the next one does not allocate (and
    /// page-fault) a MiB for a large set.
    spare_slots: Vec<Option<(Entry, SubchannelView)>>,
    spare_entries: Vec<Entry>,
    spare_views: Vec<SubchannelView>,
    spare_plan: Vec<Claim>,
    /// Let go of every connection after the idle timeout; the next call wakes it.
    idle: bool,
    /// When one-at-a-time connecting should start its next attempt.
    next_attempt: Option<Instant>,
    /// Outlier detection, when configured.
    outliers: Option<Outliers>,
    /// When discovery last answered without an error.
    last_good_discovery: Instant,
}

/// Outlier detection's state on the control task.
struct Outliers {
    detector: crate::outlier::Detector,
    /// By address, so an endpoint that leaves and comes back keeps its ejection.
    hosts: HashMap<Address, crate::outlier::Host>,
}

/// What the balancer sees of an endpoint: its connection's state, except that an ejected
/// endpoint with a live connection reads as failing.
fn effective_state(conn: ConnectivityState, ejected: bool) -> ConnectivityState {
    if ejected && conn == ConnectivityState::Ready {
        ConnectivityState::TransientFailure
    } else {
        conn
    }
}

impl Control {
    /// Runs the control task until every `Channel` handle is dropped. The calls into user
    /// code that can panic (a `Discovery`'s or a `Balancer`'s methods) are guarded where they
    /// are made, naming the component; should anything else panic, the channel still fails
    /// every call at once with the panic's message instead of leaving calls to wait for a
    /// picker that will never come.
    pub(crate) async fn supervise(self) {
        let shared = self.shared.clone();
        if let Err(panic) = AssertUnwindSafe(self.run()).catch_unwind().await {
            let what = format!(
                "the control task of `{}` panicked: {}; the channel fails every call until it is rebuilt",
                shared.target,
                panic_message(&panic)
            );
            tracing::error!("{what}");
            shared
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .panicked = Some(what.clone());
            shared.publish(Snapshot {
                picker: PickerState::Fail(Status::internal(what)),
                subchannels: Arc::default(),
            });
            shared.status_version.send_modify(|v| *v += 1);
        }
    }

    /// Runs until every `Channel` handle is dropped.
    async fn run(self) {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let discovery = self.discovery.clone();
        let watched = std::panic::catch_unwind(AssertUnwindSafe(|| discovery.watch()));
        let policy_name = self.balancer.name();
        let balancer = &self.balancer;
        let mode = std::panic::catch_unwind(AssertUnwindSafe(|| balancer.connect_mode()));
        let connect_mode = *mode.as_ref().unwrap_or(&ConnectMode::All);
        let idle_every = self.idle_timeout;
        let mut run = Run {
            c: self,
            connect_mode,
            events_tx,
            entries: Vec::new(),
            views: Vec::new(),
            subchannels: Arc::default(),
            index: HashMap::default(),
            retired: HashMap::default(),
            resolved: false,
            discovery_error: None,
            panicked: None,
            ready: 0,
            next_generation: 0,
            error_seq: 0,
            dirty: true,
            set_changed: true,
            changed_rows: Vec::new(),
            removed: Vec::new(),
            unstarted: Vec::new(),
            spare_slots: Vec::new(),
            spare_entries: Vec::new(),
            spare_views: Vec::new(),
            spare_plan: Vec::new(),
            idle: false,
            next_attempt: None,
            outliers: None,
            last_good_discovery: Instant::now(),
        };
        let mut updates: Option<UpdateStream> = match watched {
            Ok(stream) => Some(stream),
            Err(panic) => {
                run.on_panic("discovery", &panic_message(&panic));
                None
            }
        };
        if let Err(panic) = mode {
            run.on_panic(
                &format!("load-balancing policy `{policy_name}`"),
                &panic_message(&panic),
            );
        }
        if run.panicked.is_some() {
            // Nothing may ever wake the loop below (no discovery stream): fail calls now.
            run.rebuild();
        }
        run.outliers = run.c.outlier.clone().map(|config| Outliers {
            detector: crate::outlier::Detector::new(config, Instant::now(), rand::random()),
            hosts: HashMap::default(),
        });
        let shared = run.c.shared.clone();
        let mut outlier_tick = run.c.outlier.as_ref().map(|o| {
            let every = o.tick_every();
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // The sampled gauges, every second, when metrics are on.
        let mut sample_tick = run.c.shared.metrics.as_ref().map(|_| {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut idle_tick = idle_every.map(|d| {
            let mut t = tokio::time::interval_at(Instant::now() + d, d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                biased;
                _ = &mut run.c.closed => break,
                Some(cmd) = run.c.commands.recv() => run.on_command(cmd),
                Some(ev) = events_rx.recv() => {
                    run.on_event(ev);
                    // Apply every event already queued before rebuilding once.
                    while let Ok(ev) = events_rx.try_recv() {
                        run.on_event(ev);
                    }
                }
                item = next_update(&mut updates) => {
                    match item {
                        Some(Ok(Ok(update))) => run.on_update(update),
                        Some(Ok(Err(err))) => run.on_discovery_error(err),
                        Some(Err(panic)) => {
                            run.on_panic("discovery", &panic);
                            updates = None;
                        }
                        None => {
                            tracing::debug!(target = %run.c.shared.target, "discovery finished; keeping the last set");
                            updates = None;
                            continue;
                        }
                    }
                }
                _ = sleep_until(run.next_attempt) => run.next_attempt = None,
                _ = tick(&mut idle_tick) => run.on_idle_tick(),
                _ = tick(&mut outlier_tick) => run.on_outlier_tick(),
                _ = tick(&mut sample_tick) => run.sample_gauges(),
                _ = shared.wake.notified(), if run.idle => {
                    tracing::debug!(target = %shared.target, "a call woke the idle channel");
                    run.idle = false;
                    run.dirty = true;
                    // A whole idle timeout from now, not from the last tick: a tick right
                    // after waking would find no call in flight yet (the waking one waits
                    // for its connection) and let the new connection go again.
                    if let Some(t) = idle_tick.as_mut() {
                        t.reset();
                    }
                    if run.connect_mode == ConnectMode::All {
                        run.want_all(true);
                    }
                }
            }
            run.drive_connections();
            run.rebuild();
            for task in run.unstarted.drain(..) {
                task.start();
            }
            for handle in run.removed.drain(..) {
                handle.shutdown();
            }
        }
        run.shutdown();
    }
}

/// The next discovery item (`Err` when the stream panicked), or never when discovery has
/// finished.
async fn next_update(
    updates: &mut Option<UpdateStream>,
) -> Option<Result<Result<Update, DiscoveryError>, String>> {
    match updates {
        Some(s) => match AssertUnwindSafe(s.next()).catch_unwind().await {
            Ok(item) => item.map(Ok),
            Err(panic) => Some(Err(panic_message(&panic))),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What a caught panic said.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

impl Run {
    fn on_update(&mut self, update: Update) {
        if let Some(m) = &self.c.shared.metrics {
            m.discovery_update();
        }
        self.last_good_discovery = Instant::now();
        let next: Vec<Endpoint> = match update {
            Update::Reset(eps) => eps,
            Update::Add(eps) => {
                let mut cur: Vec<Endpoint> =
                    self.views.iter().map(|v| v.endpoint.clone()).collect();
                let mut pos = self.index.clone();
                for ep in eps {
                    match pos.get(&ep.addr) {
                        Some(&i) => cur[i] = ep,
                        None => {
                            pos.insert(ep.addr.clone(), cur.len());
                            cur.push(ep);
                        }
                    }
                }
                cur
            }
            Update::Remove(addrs) => {
                let gone: HashSet<&Address> = addrs.iter().collect();
                self.views
                    .iter()
                    .filter(|v| !gone.contains(&v.endpoint.addr))
                    .map(|v| v.endpoint.clone())
                    .collect()
            }
        };
        self.resolved = true;
        self.discovery_error = None;
        self.reconcile(next);
    }

    fn on_discovery_error(&mut self, err: DiscoveryError) {
        if let Some(m) = &self.c.shared.metrics {
            m.discovery_error();
        }
        tracing::warn!(target = %self.c.shared.target, "discovery failed, keeping the last known endpoints: {err}");
        self.discovery_error = Some(err);
        self.dirty |= !self.resolved;
    }

    fn on_panic(&mut self, component: &str, message: &str) {
        let what = format!(
            "{component} of `{}` panicked: {message}; the channel fails every call until it is rebuilt",
            self.c.shared.target
        );
        tracing::error!(
            target = %self.c.shared.target,
            component,
            message,
            "panicked; the channel fails every call until it is rebuilt"
        );
        self.panicked = Some(what);
        self.dirty = true;
    }

    /// The `:authority` for calls to `ep`.
    fn authority_for(&self, ep: &Endpoint) -> http::uri::Authority {
        self.c
            .forced_authority
            .clone()
            .or_else(|| ep.authority.as_deref().and_then(|a| a.parse().ok()))
            .or_else(|| self.c.default_authority.clone())
            .or_else(|| ep.addr.authority().parse().ok())
            .unwrap_or_else(|| http::uri::Authority::from_static("localhost"))
    }

    /// The name a TLS connection to `ep` verifies: the configured one, then a trusted
    /// discovery's, then the host of the endpoint's `:authority` (the target's host, or the
    /// endpoint's own address for lists). None without TLS, and for a unix socket without
    /// a configured name.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    fn tls_name_for(&self, ep: &Endpoint, authority: &http::uri::Authority) -> Option<Arc<str>> {
        #[cfg(feature = "tls")]
        {
            let tls = self.c.config.tls.as_ref()?;
            if let Some(name) = tls.forced_name() {
                return Some(name.into());
            }
            if self.c.trusted_names
                && let Some(name) = &ep.tls_server_name
            {
                return Some(name.as_str().into());
            }
            if matches!(ep.addr, Address::Unix(_)) {
                return None;
            }
            Some(crate::tls::host_of(authority.as_str()).into())
        }
        #[cfg(not(feature = "tls"))]
        None
    }

    /// Makes the subchannels match `next`: keeps the ones that stay (with their
    /// connections and stats), starts new ones, shuts down the rest. O(n) in the set size.
    fn reconcile(&mut self, next: Vec<Endpoint>) {
        let now = Instant::now();
        self.retired
            .retain(|_, (_, at)| now.duration_since(*at) < STATS_RETENTION);
        // Pass 1: what each endpoint of the new set is, by address: a duplicate (one
        // subchannel is enough), new, or the old entry it keeps (by its old position).
        let old_index = std::mem::take(&mut self.index);
        let mut index = HashMap::with_capacity_and_hasher(next.len(), Default::default());
        let mut plan = std::mem::take(&mut self.spare_plan);
        plan.clear();
        plan.reserve(next.len());
        let mut in_order = true;
        let mut last_kept: Option<usize> = None;
        let mut position = 0usize;
        for ep in &next {
            match index.entry(ep.addr.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    plan.push(Claim::Duplicate);
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(position);
                    position += 1;
                }
            }
            match old_index.get(&ep.addr) {
                Some(&old) => {
                    in_order &= last_kept.is_none_or(|l| old > l);
                    last_kept = Some(old);
                    plan.push(Claim::Keep(old));
                }
                None => plan.push(Claim::New),
            }
        }
        // Pass 2: the new entries, each old one moved once. When the kept entries are in
        // their old order (the usual case: discovery keeps its order, a few leave or come)
        // the old lists are walked alongside; otherwise each old entry is taken from a slot.
        let mut entries = std::mem::take(&mut self.spare_entries);
        let mut views = std::mem::take(&mut self.spare_views);
        entries.reserve(index.len());
        views.reserve(index.len());
        let mut old_entries = std::mem::take(&mut self.entries);
        let mut old_views = std::mem::take(&mut self.views);
        let mut changed = false;
        let connect_now = self.connect_mode == ConnectMode::All && !self.idle;
        let mut slots = std::mem::take(&mut self.spare_slots);
        {
            let drained = old_entries.drain(..).zip(old_views.drain(..));
            let mut old = if in_order {
                Old::InOrder(drained.enumerate())
            } else {
                slots.extend(drained.map(Some));
                Old::Slots(&mut slots)
            };
            for (ep, claim) in next.into_iter().zip(&plan) {
                match *claim {
                    Claim::Duplicate => continue,
                    Claim::New => {
                        changed = true;
                        let (entry, view) = self.new_entry(ep, connect_now);
                        entries.push(entry);
                        views.push(view);
                    }
                    Claim::Keep(at) => {
                        let retire = |e, v| {
                            changed = true;
                            self.retire(e, v, now);
                        };
                        if let Some((entry, view)) = old.take(at, retire) {
                            changed |= keep(&mut entries, &mut views, entry, view, ep, at);
                        }
                    }
                }
            }
            old.rest(|e, v| {
                changed = true;
                self.retire(e, v, now);
            });
        }
        self.spare_slots = slots;
        self.spare_entries = old_entries;
        self.spare_views = old_views;
        self.spare_plan = plan;
        self.entries = entries;
        self.views = views;
        self.index = index;
        self.ready = self.views.iter().filter(|v| v.is_ready()).count();
        if changed {
            self.subchannels =
                Arc::new(self.entries.iter().map(|e| e.handle.sub.clone()).collect());
            self.set_changed = true;
        }
        self.c
            .shared
            .endpoint_count
            .store(self.entries.len(), Ordering::Relaxed);
        // Even with no change the picker may wait on the first resolution.
        self.dirty |= changed || self.entries.is_empty();
    }

    /// A subchannel for a new endpoint (its connection task starts once the picker is out);
    /// its stats are those it had if it left a short while ago.
    fn new_entry(&mut self, ep: Endpoint, connect_now: bool) -> (Entry, SubchannelView) {
        let stats = self
            .retired
            .remove(&ep.addr)
            .map(|(s, _)| s)
            .unwrap_or_else(|| Arc::new(self.new_stats()));
        self.next_generation += 1;
        tracing::debug!(target = %self.c.shared.target, addr = %ep.addr, "endpoint added");
        let authority = self.authority_for(&ep);
        let tls_name = self.tls_name_for(&ep, &authority);
        let (handle, task) = subchannel::new(
            ep.addr.clone(),
            authority,
            tls_name,
            self.next_generation,
            stats.clone(),
            self.c.config.clone(),
            self.events_tx.clone(),
        );
        self.unstarted.push(task);
        if connect_now {
            handle.want(true);
        }
        let ejected = self
            .outliers
            .as_ref()
            .and_then(|o| o.hosts.get(&ep.addr))
            .is_some_and(crate::outlier::Host::is_ejected);
        let entry = Entry {
            handle,
            failed_since_ready: false,
            last_error: None,
            connecting_since: None,
            conn_state: ConnectivityState::Idle,
            ejected,
        };
        let view = SubchannelView {
            endpoint: ep,
            stats,
            state: ConnectivityState::Idle,
        };
        (entry, view)
    }

    /// An endpoint that left: its stats are kept a while (it may come back), its subchannel
    /// shuts down once the picker without it is out.
    fn retire(&mut self, entry: Entry, view: SubchannelView, now: Instant) {
        let addr = view.endpoint.addr;
        tracing::debug!(target = %self.c.shared.target, %addr, "endpoint removed; draining its connection");
        self.retired.insert(addr, (view.stats, now));
        self.removed.push(entry.handle);
    }

    fn on_event(&mut self, ev: StateEvent) {
        let Some(&i) = self.index.get(&ev.addr) else {
            return; // from a subchannel already removed
        };
        let entry = &mut self.entries[i];
        if entry.handle.generation != ev.generation {
            return; // from an earlier incarnation of the address
        }
        let view = &mut self.views[i];
        let was_ready = view.state == ConnectivityState::Ready;
        entry.conn_state = ev.state;
        view.state = effective_state(ev.state, entry.ejected);
        entry
            .handle
            .sub
            .pickable
            .store(view.state == ConnectivityState::Ready, Ordering::Relaxed);
        self.changed_rows.push(i);
        entry.connecting_since = (ev.state == ConnectivityState::Connecting).then(Instant::now);
        match ev.state {
            ConnectivityState::Ready => {
                tracing::debug!(target = %self.c.shared.target, addr = %ev.addr, "connection ready");
                entry.failed_since_ready = false;
            }
            ConnectivityState::TransientFailure => entry.failed_since_ready = true,
            _ => {}
        }
        let is_ready = view.state == ConnectivityState::Ready;
        self.ready = self.ready + usize::from(is_ready) - usize::from(was_ready);
        // Only readiness changes what a balancer's picker holds; while nothing is ready the
        // queue-or-fail decision depends on every state.
        self.dirty |= was_ready != is_ready || !self.any_ready();
        if let Some(error) = ev.error {
            self.error_seq += 1;
            let failed = ev.state == ConnectivityState::TransientFailure;
            let entry = &mut self.entries[i];
            entry.last_error = Some((self.error_seq, error));
            if failed {
                // Fresher addresses may help (DNS re-resolution on failure).
                let discovery = &self.c.discovery;
                if let Err(panic) =
                    std::panic::catch_unwind(AssertUnwindSafe(|| discovery.resolve_now()))
                {
                    self.on_panic("discovery", &panic_message(&panic));
                }
            }
        }
    }

    fn new_stats(&mut self) -> EndpointStats {
        let balancer = &self.c.balancer;
        let stats = match std::panic::catch_unwind(AssertUnwindSafe(|| balancer.new_stats())) {
            Ok(stats) => stats,
            Err(panic) => {
                let policy = self.c.balancer.name();
                self.on_panic(
                    &format!("load-balancing policy `{policy}`"),
                    &panic_message(&panic),
                );
                // Any statistics do: the picker fails every call from now on.
                EndpointStats::default()
            }
        };
        if self
            .c
            .outlier
            .as_ref()
            .is_some_and(|o| o.consecutive_failures.is_some())
        {
            stats.with_consecutive_failures()
        } else {
            stats
        }
    }

    /// Runs outlier detection over the current endpoints and applies what it decided.
    fn on_outlier_tick(&mut self) {
        let Some(o) = self.outliers.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut hosts: Vec<crate::outlier::Host> = self
            .views
            .iter()
            .map(|v| o.hosts.remove(&v.endpoint.addr).unwrap_or_default())
            .collect();
        // What is left belongs to endpoints gone from the set: kept while their stats are.
        o.hosts.retain(|addr, _| self.retired.contains_key(addr));
        let samples: Vec<crate::outlier::Sample<'_>> = self
            .views
            .iter()
            .zip(&self.entries)
            .map(|(v, e)| crate::outlier::Sample {
                addr: &v.endpoint.addr,
                stats: &v.stats,
                ready: e.conn_state == ConnectivityState::Ready,
            })
            .collect();
        let changes = o.detector.tick(now, &samples, &mut hosts);
        drop(samples);
        for (v, h) in self.views.iter().zip(hosts) {
            o.hosts.insert(v.endpoint.addr.clone(), h);
        }
        if let Some(m) = &self.c.shared.metrics {
            for how in &changes.enforced {
                m.ejection_enforced(how.name());
            }
            for (how, why) in &changes.unenforced {
                m.ejection_unenforced(how.name(), why.name());
            }
        }
        for (how, why) in &changes.unenforced {
            tracing::debug!(target = %self.c.shared.target, detection = how.name(), reason = why.name(), "outlier left in");
        }
        for (addrs, eject) in [(&changes.ejected, true), (&changes.returned, false)] {
            for addr in addrs {
                let Some(&i) = self.index.get(addr) else {
                    continue;
                };
                if eject {
                    tracing::info!(target = %self.c.shared.target, %addr, "outlier detection ejected the endpoint (it keeps its connection)");
                } else {
                    tracing::info!(target = %self.c.shared.target, %addr, "outlier detection returned the endpoint to the picker");
                }
                let entry = &mut self.entries[i];
                entry.ejected = eject;
                let state = effective_state(entry.conn_state, eject);
                entry
                    .handle
                    .sub
                    .pickable
                    .store(state == ConnectivityState::Ready, Ordering::Relaxed);
                if self.views[i].state != state {
                    let was_ready = self.views[i].is_ready();
                    self.views[i].state = state;
                    let is_ready = self.views[i].is_ready();
                    self.ready = self.ready + usize::from(is_ready) - usize::from(was_ready);
                    self.dirty = true;
                }
                self.changed_rows.push(i);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetPolicy(policy) => {
                let made = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let balancer = policy.new_balancer();
                    let probe = balancer.new_stats();
                    let mode = balancer.connect_mode();
                    (balancer, probe, mode)
                }));
                let (balancer, probe, connect_mode) = match made {
                    Ok(made) => made,
                    Err(panic) => {
                        self.on_panic("the new load-balancing policy", &panic_message(&panic));
                        return;
                    }
                };
                // The new policy's signals on the statistics as they are: in-flight counts,
                // outcomes and estimates carry over.
                for v in &self.views {
                    v.stats.add_signals(&probe);
                }
                for (stats, _) in self.retired.values() {
                    stats.add_signals(&probe);
                }
                tracing::info!(target = %self.c.shared.target, from = self.c.balancer.name(), to = balancer.name(), "switching load-balancing policy");
                self.c.balancer = balancer;
                *self
                    .c
                    .shared
                    .policy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = self.c.balancer.name();
                self.connect_mode = connect_mode;
                if self.connect_mode == ConnectMode::All && !self.idle {
                    self.want_all(true);
                }
                self.next_attempt = None;
                self.dirty = true;
                self.set_changed = true;
            }
        }
    }

    /// meshless's own gauges, sampled on the control task, never on the pick path.
    fn sample_gauges(&self) {
        let Some(m) = &self.c.shared.metrics else {
            return;
        };
        // The connection's own state (an ejected endpoint's view reads TransientFailure),
        // with the ejection beside it.
        m.sample_endpoints(
            self.entries
                .iter()
                .zip(&self.views)
                .map(|(e, v)| (&v.endpoint.addr, &*v.stats, e.conn_state, e.ejected)),
        );
        m.sample_staleness(self.last_good_discovery.elapsed().as_secs_f64());
    }

    fn any_ready(&self) -> bool {
        debug_assert_eq!(
            self.ready,
            self.views.iter().filter(|v| v.is_ready()).count(),
            "the ready count drifted from the views"
        );
        self.ready > 0
    }

    fn want_all(&self, on: bool) {
        for e in &self.entries {
            e.handle.want(on);
        }
    }

    fn on_idle_tick(&mut self) {
        if self.idle || self.entries.is_empty() {
            // Idle already: the activity flag stays for the call that wakes the channel.
            return;
        }
        let busy = self.c.shared.active.swap(false, Ordering::Relaxed)
            || self
                .entries
                .iter()
                .any(|e| e.handle.sub.stats.in_flight() > 0);
        if busy {
            return;
        }
        tracing::debug!(target = %self.c.shared.target, "no calls for the idle timeout; closing connections");
        self.idle = true;
        self.dirty = true;
        self.want_all(false);
    }

    /// Asks the subchannels to connect as the balancer wants them connected.
    /// (With [`ConnectMode::All`] new subchannels are asked when they are made and the idle
    /// timer switches them all, so there is nothing to do here per event.)
    fn drive_connections(&mut self) {
        if self.idle {
            return;
        }
        if let ConnectMode::OneAtATime { attempt_delay } = self.connect_mode {
            self.connect_one_at_a_time(attempt_delay);
        }
    }

    /// gRPC pick_first's connection management (gRFC A61): one endpoint at a time in
    /// discovery order, the next when the previous failed or after `delay` without an
    /// answer; once one is ready, the others are let go. After a whole pass every endpoint
    /// keeps retrying with its own backoff until one connects.
    fn connect_one_at_a_time(&mut self, delay: Duration) {
        if let Some(ready) = self.views.iter().position(SubchannelView::is_ready) {
            for (i, e) in self.entries.iter().enumerate() {
                e.handle.want(i == ready);
            }
            self.next_attempt = None;
            return;
        }
        let Some(last) = self.entries.iter().rposition(|e| e.handle.is_wanted()) else {
            if let Some(first) = self.entries.first() {
                first.handle.want(true);
                self.next_attempt = Some(Instant::now() + delay);
            }
            return;
        };
        if last + 1 >= self.entries.len() {
            self.next_attempt = None;
            return; // a whole pass made: everyone retries on their own
        }
        let e = &self.entries[last];
        let stalled = e
            .connecting_since
            .is_some_and(|since| since.elapsed() >= delay);
        if self.views[last].state == ConnectivityState::TransientFailure || stalled {
            self.entries[last + 1].handle.want(true);
            self.next_attempt = Some(Instant::now() + delay);
        } else if let Some(since) = e.connecting_since {
            self.next_attempt = Some(since + delay);
        } else {
            self.next_attempt = Some(Instant::now() + delay);
        }
    }

    fn rebuild(&mut self) {
        if self.dirty {
            self.dirty = false;
            let picker = self.picker_state();
            if let Some(m) = &self.c.shared.metrics {
                m.picker_rebuilt();
            }
            // Publish first: whoever sees the new status can count on the picker matching it.
            self.c.shared.publish(Snapshot {
                picker,
                subchannels: self.subchannels.clone(),
            });
        }
        let mut base = self
            .c
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let discovery_error = self.discovery_error.as_ref().map(|e| e.to_string());
        let news = self.set_changed
            || !self.changed_rows.is_empty()
            || base.resolved != self.resolved
            || base.discovery_error != discovery_error
            || base.panicked != self.panicked;
        base.resolved = self.resolved;
        base.discovery_error = discovery_error;
        base.panicked.clone_from(&self.panicked);
        let row = |(e, v): (&Entry, &SubchannelView)| StatusRow {
            endpoint: v.endpoint.clone(),
            sub: e.handle.sub.clone(),
            state: e.conn_state,
            ejected: e.ejected,
            last_error: e.last_error.as_ref().map(|(_, m)| m.clone()),
        };
        if std::mem::take(&mut self.set_changed) {
            base.endpoints.clear();
            base.endpoints
                .extend(self.entries.iter().zip(&self.views).map(row));
        } else {
            for i in self.changed_rows.drain(..) {
                if let Some(r) = base.endpoints.get_mut(i) {
                    *r = row((&self.entries[i], &self.views[i]));
                }
            }
        }
        self.changed_rows.clear();
        drop(base);
        if news {
            self.c.shared.status_version.send_modify(|v| *v += 1);
        }
    }

    /// gRPC's state aggregation: any ready endpoint → pick; otherwise queue while an
    /// endpoint that has not failed yet is connecting; otherwise fail fast.
    fn picker_state(&mut self) -> PickerState {
        let target = &self.c.shared.target;
        if let Some(what) = &self.panicked {
            return PickerState::Fail(Status::internal(what.clone()));
        }
        if self.idle {
            return PickerState::Idle;
        }
        if self.any_ready() {
            let (balancer, views) = (&self.c.balancer, &self.views);
            return match std::panic::catch_unwind(AssertUnwindSafe(|| balancer.build(views))) {
                Ok(picker) => {
                    if let Some(m) = &self.c.shared.metrics
                        && balancer.name() == "weighted_round_robin"
                    {
                        // A78's endpoint weights, as the scheduler just built uses them.
                        let weighted = meshless_balancer::ready_weighted(views);
                        m.wrr_weights(weighted.into_iter().map(|(_, w)| w));
                    }
                    PickerState::Pick(picker)
                }
                Err(panic) => {
                    let msg = panic_message(&panic);
                    let policy = self.c.balancer.name();
                    self.on_panic(&format!("load-balancing policy `{policy}`"), &msg);
                    self.dirty = false;
                    return self.picker_state();
                }
            };
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
            .zip(&self.views)
            .any(|(e, v)| !e.failed_since_ready && v.state != ConnectivityState::TransientFailure)
        {
            return PickerState::Queue;
        }
        let last = self
            .entries
            .iter()
            .filter_map(|e| e.last_error.as_ref())
            .max_by_key(|(seq, _)| *seq)
            .map_or("no connection attempt succeeded", |(_, m)| m.as_str());
        PickerState::Fail(Status::unavailable(format!(
            "{target}: all {} endpoints are unreachable; last error: {last}",
            self.entries.len()
        )))
    }

    fn shutdown(&mut self) {
        for e in self.entries.drain(..) {
            e.handle.shutdown();
        }
        self.c.shared.closed.store(true, Ordering::Release);
        self.c.shared.status_version.send_modify(|v| *v += 1);
        self.c.shared.publish(Snapshot {
            picker: PickerState::Fail(Status::unavailable(format!(
                "{}: channel was dropped",
                self.c.shared.target
            ))),
            subchannels: Arc::default(),
        });
    }
}
