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
