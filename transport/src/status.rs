//! What an application can read about a channel: its endpoints, their states and load.

use std::time::Duration;

use meshless_balancer::ConnectivityState;
use meshless_discovery::Address;

/// A point-in-time view of a channel, from [`Channel::status`](crate::Channel::status).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChannelStatus {
    /// The target the channel was built for.
    pub target: String,
    /// The load-balancing policy's name.
    pub policy: &'static str,
    /// True once discovery has produced its first endpoint set.
    pub resolved: bool,
    /// The last discovery error, while discovery is failing (the channel keeps serving from
    /// the last known set meanwhile). `None` once discovery succeeds again.
    pub discovery_error: Option<String>,
    /// A component (the discovery backend or the load-balancing policy) that panicked, with
    /// its message: the channel then fails every call at once, naming it.
    pub panicked: Option<String>,
    /// The endpoints, in discovery order.
    pub endpoints: Vec<EndpointStatus>,
    /// Why the last reload of TLS certificate or key files failed, while it fails: new
    /// connections keep the last good set meanwhile. Always `None` without TLS.
    pub tls_error: Option<String>,
}

impl ChannelStatus {
    /// How many endpoints are ready.
    pub fn ready_count(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.state == ConnectivityState::Ready)
            .count()
    }

    /// The endpoint at `addr`, if the channel has it.
    pub fn endpoint(&self, addr: &Address) -> Option<&EndpointStatus> {
        self.endpoints.iter().find(|e| &e.address == addr)
    }
}

/// One endpoint of a [`ChannelStatus`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// Its address.
    pub address: Address,
    /// Its weight.
    pub weight: u32,
    /// Its zone, if known.
    pub zone: Option<String>,
    /// Its connection's state.
    pub state: ConnectivityState,
    /// Taken out of the picker by outlier detection, while its connection stays up (the
    /// connection's `state` can still be `Ready`).
    pub ejected: bool,
    /// Calls in flight.
    pub in_flight: u64,
    /// Calls completed successfully.
    pub successes: u64,
    /// Calls that failed in a way that counts against the endpoint.
    pub failures: u64,
    /// The latency estimate (peak EWMA).
    pub latency_ewma: Duration,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// A change of a channel, as [`Channel::watch_status`](crate::Channel::watch_status) pushes
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusEvent {
    /// Discovery gave the endpoint.
    Added(Address),
    /// Discovery no longer gives the endpoint.
    Removed(Address),
    /// The endpoint's connection changed state (with the error, when it failed).
    State {
        /// The endpoint.
        address: Address,
        /// Its new state.
        state: ConnectivityState,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// Outlier detection took the endpoint out of the picker.
    Ejected(Address),
    /// Outlier detection gave the endpoint back to the picker.
    Returned(Address),
    /// Discovery failed (the channel keeps its last endpoints).
    DiscoveryFailed(String),
    /// Discovery answers again.
    DiscoveryRecovered,
}

/// What changed from `old` to `new`, in order: removals, additions, then per-endpoint
/// changes, then discovery's.
pub(crate) fn diff(old: &ChannelStatus, new: &ChannelStatus) -> Vec<StatusEvent> {
    let mut out = Vec::new();
    for e in &old.endpoints {
        if new.endpoint(&e.address).is_none() {
            out.push(StatusEvent::Removed(e.address.clone()));
        }
    }
    for e in &new.endpoints {
        match old.endpoint(&e.address) {
            None => {
                out.push(StatusEvent::Added(e.address.clone()));
                if e.state != ConnectivityState::Idle {
                    out.push(StatusEvent::State {
                        address: e.address.clone(),
                        state: e.state,
                        error: e.last_error.clone(),
                    });
                }
                if e.ejected {
                    out.push(StatusEvent::Ejected(e.address.clone()));
                }
            }
            Some(o) => {
                if o.state != e.state || o.last_error != e.last_error {
                    out.push(StatusEvent::State {
                        address: e.address.clone(),
                        state: e.state,
                        error: e.last_error.clone(),
                    });
                }
                match (o.ejected, e.ejected) {
                    (false, true) => out.push(StatusEvent::Ejected(e.address.clone())),
                    (true, false) => out.push(StatusEvent::Returned(e.address.clone())),
                    _ => {}
                }
            }
        }
    }
    match (&old.discovery_error, &new.discovery_error) {
        (o, Some(e)) if o.as_ref() != Some(e) => out.push(StatusEvent::DiscoveryFailed(e.clone())),
        (Some(_), None) => out.push(StatusEvent::DiscoveryRecovered),
        _ => {}
    }
    out
}
