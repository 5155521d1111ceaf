//! Load-balancing policies for meshless.
//!
//! A [`Balancer`] turns the current subchannels into an immutable [`Picker`]; the channel
//! publishes the picker and asks it, once per request, which endpoint to use. Policies are
//! small because everything around them (connections, state tracking, picker swaps,
//! queueing) is the channel's job.
//!
//! ```
//! use std::sync::Arc;
//! use meshless_balancer::{policy, ConnectivityState, EndpointStats, Pick, PickRequest, SubchannelView};
//! use meshless_discovery::Endpoint;
//!
//! let subchannels: Vec<SubchannelView> = (1..=3)
//!     .map(|i| SubchannelView {
//!         endpoint: Endpoint::new(format!("10.0.0.{i}:50051").parse::<std::net::SocketAddr>().unwrap()),
//!         stats: Arc::new(EndpointStats::default()),
//!         state: ConnectivityState::Ready,
//!     })
//!     .collect();
//! let picker = policy("round_robin").unwrap().new_balancer().build(&subchannels);
//! let req = http::Request::new(());
//! assert!(matches!(picker.pick(&PickRequest::from_request(&req)), Pick::Ready(i) if i < 3));
//! ```

#![warn(missing_docs)]

mod choice;
mod config;
mod hash_key;
mod least_request;
mod maglev;
mod p2c_ewma;
mod pick_first;
mod random;
mod registry;
mod ring_hash;
mod rng;
mod round_robin;
mod stats;
mod weighted_round_robin;

use std::fmt;
use std::sync::Arc;

use meshless_discovery::Endpoint;

pub use choice::{MAX_CHOICES, MIN_CHOICES};
pub use hash_key::{HashKeyConfig, RequestHashKey};
pub use least_request::{LeastRequest, LeastRequestConfig};
pub use maglev::{
    DEFAULT_MAX_TABLE_SIZE, DEFAULT_MIN_TABLE_SIZE, Maglev, MaglevConfig, SLOTS_PER_ENDPOINT,
};
pub use p2c_ewma::{P2cEwma, P2cEwmaConfig};
pub use pick_first::{HAPPY_EYEBALLS_DELAY, PickFirst, PickFirstConfig};
pub use random::{Random, RandomConfig};
pub use registry::{POLICY_NAMES, PolicyRegistry, UnknownPolicy, policy};
pub use ring_hash::{
    BALANCE_REPLICAS, DEFAULT_MAX_RING_SIZE, DEFAULT_MIN_RING_SIZE, RingHash, RingHashConfig,
};
pub use round_robin::RoundRobin;
pub use stats::{
    CODE_NAMES, CallStart, CodeSet, DEFAULT_DECAY, DEFAULT_FAILURE_PENALTY, DEFAULT_RTT,
    DEFAULT_SAMPLE_WINDOW, EndpointStats, FAILURE_RATIO_WEIGHT, FailureCodes, LoadClock, Outcome,
    Signals, code_from_name, code_name,
};
pub use weighted_round_robin::{MAX_SCHEDULE_LEN, WeightedRoundRobin, WeightedRoundRobinConfig};

/// The connectivity state of a subchannel, as gRPC names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// Not connected and not trying to.
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected; calls may be sent.
    Ready,
    /// The last attempt failed; waiting for backoff before the next.
    TransientFailure,
    /// Removed; will not connect again.
    Shutdown,
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectivityState::Idle => "idle",
            ConnectivityState::Connecting => "connecting",
            ConnectivityState::Ready => "ready",
            ConnectivityState::TransientFailure => "transient_failure",
            ConnectivityState::Shutdown => "shutdown",
        })
    }
}

/// What a balancer sees of one subchannel when it builds a picker.
#[derive(Debug, Clone)]
pub struct SubchannelView {
    /// The endpoint as discovery last reported it.
    pub endpoint: Endpoint,
    /// Its load statistics (live: pickers read them at pick time).
    pub stats: Arc<EndpointStats>,
    /// Its state when the picker was built.
    pub state: ConnectivityState,
}

impl SubchannelView {
    /// True when calls may be sent to it.
    pub fn is_ready(&self) -> bool {
        self.state == ConnectivityState::Ready
    }
}

/// The parts of a request a picker may look at.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    /// The request URI (its path is `/package.Service/Method`).
    pub uri: &'a http::Uri,
    /// The request headers (gRPC metadata).
    pub headers: &'a http::HeaderMap,
    /// The request extensions, where the application may put a hash key.
    pub extensions: &'a http::Extensions,
}

impl<'a> PickRequest<'a> {
    /// The pick view of an HTTP request.
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        PickRequest {
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }

    /// The gRPC method path, `/package.Service/Method`.
    pub fn path(&self) -> &'a str {
        self.uri.path()
    }
}

/// A picker's answer for one request.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Send it to the subchannel at this index of the slice the picker was built from.
    Ready(usize),
    /// Wait for the next picker (the channel bounds the wait).
    Queue,
    /// Fail the request with this status.
    Fail(tonic::Status),
}

/// An immutable decision procedure, built by a [`Balancer`] from one set of subchannels.
/// It is called concurrently from every request; implementations take no locks.
pub trait Picker: Send + Sync + 'static {
    /// Chooses a subchannel for `req`.
    fn pick(&self, req: &PickRequest<'_>) -> Pick;
}

/// A load-balancing policy as configured: it makes one [`Balancer`] per channel, so that two
/// channels built from the same configuration never share policy state (pick_first's choice,
/// weighted round robin's phases, p2c's load clock). gRPC calls this a balancer builder.
///
/// Every policy config of this crate implements it (`P2cEwmaConfig`, `RingHashConfig`, ...),
/// and converts into an `Arc<dyn Policy>`, which is what the channel builder takes. Register
/// your own under a name in a [`PolicyRegistry`] to select it by name.
pub trait Policy: Send + Sync + 'static {
    /// The policy's gRPC-style name, such as `round_robin`.
    fn name(&self) -> &'static str;

    /// A new balancer, with state of its own, for one channel.
    fn new_balancer(&self) -> Box<dyn Balancer>;
}

/// How a balancer wants its subchannels connected; the channel carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectMode {
    /// Connect to every endpoint and keep every connection up (round robin and the
    /// load-aware and hashing policies need them all).
    All,
    /// Connect to one endpoint at a time, in discovery order, as gRPC's pick_first does:
    /// the next one starts when the previous fails or after `attempt_delay` without an
    /// answer (gRFC A61's "happy eyeballs", 250 ms). Once one is ready the others are let go.
    OneAtATime {
        /// How long an attempt may go unanswered before the next endpoint is tried too.
        attempt_delay: std::time::Duration,
    },
}

/// One channel's load-balancing policy: builds a [`Picker`] whenever the subchannels or
/// their states change. Made by a [`Policy`]; only the channel's control task calls it.
pub trait Balancer: Send + Sync + 'static {
    /// The policy's gRPC-style name, such as `round_robin`.
    fn name(&self) -> &'static str;

    /// Builds a picker over `subchannels`, in discovery order. The channel calls this only
    /// when at least one of them is ready; pickers may only return ready ones.
    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker>;

    /// The load statistics the channel should create for a new endpoint address (it keeps
    /// them by address for as long as the address stays). A policy asks for the signals its
    /// picker reads and pays for nothing else: the default keeps only calls in flight and
    /// outcome counts ([`Signals::COUNTS`]). Policies that read latency, such as
    /// `p2c_ewma`, return stats with their configured decay, starting RTT and failure
    /// penalty, sharing one [`LoadClock`].
    fn new_stats(&self) -> EndpointStats {
        EndpointStats::default().with_signals(Signals::COUNTS)
    }

    /// Which subchannels the channel should connect. Default [`ConnectMode::All`].
    fn connect_mode(&self) -> ConnectMode {
        ConnectMode::All
    }
}

impl fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for dyn Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The indices of the ready subchannels, a starting point for most policies.
pub fn ready_indices(subchannels: &[SubchannelView]) -> Vec<usize> {
    subchannels
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_ready())
        .map(|(i, _)| i)
        .collect()
}

/// The ready subchannels that weighted policies may use, as `(index, weight)`: those with a
/// weight above 0, or, when every ready one has weight 0, all of them with weight 1 (a
/// weight of 0 means "only when nothing else is left").
pub fn ready_weighted(subchannels: &[SubchannelView]) -> Vec<(usize, u32)> {
    let ready = || subchannels.iter().enumerate().filter(|(_, s)| s.is_ready());
    if ready().any(|(_, s)| s.endpoint.weight > 0) {
        ready()
            .filter(|(_, s)| s.endpoint.weight > 0)
            .map(|(i, s)| (i, s.endpoint.weight))
            .collect()
    } else {
        ready().map(|(i, _)| (i, 1)).collect()
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Subchannels at 10.0.0.1.. with the given states.
    pub fn subchannels(states: &[ConnectivityState]) -> Vec<SubchannelView> {
        states
            .iter()
            .enumerate()
            .map(|(i, &state)| SubchannelView {
                endpoint: Endpoint::new(std::net::SocketAddr::from((
                    [10, 0, 0, i as u8 + 1],
                    50051,
                ))),
                stats: Arc::new(EndpointStats::default()),
                state,
            })
            .collect()
    }

    /// Ready subchannels at 10.0.0.1.. with the given weights.
    pub fn weighted(weights: &[u32]) -> Vec<SubchannelView> {
        let mut subs = subchannels(&vec![ConnectivityState::Ready; weights.len()]);
        for (s, &w) in subs.iter_mut().zip(weights) {
            s.endpoint.weight = w;
        }
        subs
    }

    /// `n` ready subchannels at distinct addresses (any `n`, unlike [`subchannels`]).
    pub fn many(n: usize) -> Vec<SubchannelView> {
        (0..n)
            .map(|i| SubchannelView {
                endpoint: Endpoint::new(std::net::SocketAddr::from((
                    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                    50051,
                ))),
                stats: Arc::new(EndpointStats::default()),
                state: ConnectivityState::Ready,
            })
            .collect()
    }

    /// How often each index was picked in `picks`.
    pub fn counts(picks: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &p in picks {
            c[p] += 1;
        }
        c
    }

    /// The 5-sigma sample size for estimating a share `p` within absolute tolerance `tol`:
    /// `ceil(p(1−p)·25/tol²) + 1000`.
    pub fn five_sigma_samples(p: f64, tol: f64) -> usize {
        (p * (1.0 - p) * 25.0 / (tol * tol)).ceil() as usize + 1000
    }

    /// Sends `requests` calls through `picker` with at most `concurrency` in flight, on
    /// tokio's paused clock: each call to endpoint `i` takes `outcome(i).0` and succeeds when
    /// `outcome(i).1`, recorded on its stats. Returns the endpoint of each call in order.
    pub async fn simulate(
        picker: &dyn Picker,
        subs: &[SubchannelView],
        outcome: impl Fn(usize) -> (std::time::Duration, bool),
        concurrency: usize,
        requests: usize,
    ) -> Vec<usize> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let start = tokio::time::Instant::now();
        let req = http::Request::new(());
        let pr = PickRequest::from_request(&req);
        let mut running: BinaryHeap<Reverse<(std::time::Duration, usize, usize)>> =
            BinaryHeap::new();
        let mut picks = Vec::with_capacity(requests);
        let mut calls = Vec::with_capacity(requests);
        for seq in 0..requests {
            if running.len() == concurrency {
                let Some(Reverse((done, call, i))) = running.pop() else {
                    unreachable!("the heap is full")
                };
                if let Some(wait) = done.checked_sub(start.elapsed()) {
                    tokio::time::advance(wait).await;
                }
                subs[i].stats.finish(calls[call], outcome(i).1);
            }
            let i = match picker.pick(&pr) {
                Pick::Ready(i) => i,
                other => panic!("expected Ready, got {other:?}"),
            };
            calls.push(subs[i].stats.start());
            running.push(Reverse((start.elapsed() + outcome(i).0, seq, i)));
            picks.push(i);
        }
        picks
    }

    /// Picks `n` times with an empty request; panics on anything but `Ready`.
    pub fn pick_n(picker: &dyn Picker, n: usize) -> Vec<usize> {
        let req = http::Request::new(());
        let pr = PickRequest::from_request(&req);
        (0..n)
            .map(|_| match picker.pick(&pr) {
                Pick::Ready(i) => i,
                other => panic!("expected Ready, got {other:?}"),
            })
            .collect()
    }
}
