//! Client-side service discovery and per-request load balancing for tonic gRPC clients:
//! what a service mesh gives a client, without the mesh.
//!
//! gRPC sends every call over one long-lived HTTP/2 connection, and a Kubernetes Service
//! balances once per connection, so a plain tonic client pins all its traffic to one pod.
//! A [`Channel`] resolves a target to its real endpoints, keeps them current, holds one
//! connection per endpoint and picks an endpoint for every call.
//!
//! ```no_run
//! use meshless::Channel;
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Channel::builder("static:///10.0.0.1:50051,10.0.0.2:50051")
//!     .policy("round_robin")
//!     .build()?;
//! // Any tonic-generated client takes it as its transport.
//! let mut client = HealthClient::new(channel.clone());
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! println!("{:?}", reply.into_inner().status());
//! for ep in channel.status().endpoints {
//!     println!("{} {}", ep.address, ep.state);
//! }
//! # Ok(()) }
//! ```
//!
//! The pieces live in their own crates and are re-exported here: [`discovery`] (targets,
//! endpoints, backends), [`balancer`] (policies), [`transport`] (the channel) and
//! [`middleware`] (tower layers that go above a channel).

#![warn(missing_docs)]

pub use meshless_balancer as balancer;
/// Clients from config files (feature `config`).
#[cfg(feature = "config")]
pub use meshless_config as config;
pub use meshless_discovery as discovery;
pub use meshless_middleware as middleware;
pub use meshless_transport as transport;

// What using a channel needs, from one place; the rest is in the crate modules above.
pub use meshless_balancer::{
    CodeSet, ConnectivityState, FailureCodes, LeastRequestConfig, MaglevConfig, P2cEwmaConfig,
    PickFirstConfig, Policy, PolicyRegistry, RandomConfig, RequestHashKey, RingHashConfig,
    RoundRobin, WeightedRoundRobinConfig,
};
pub use meshless_discovery::backoff::BackoffConfig;
pub use meshless_discovery::{
    Address, Endpoint, ManualDiscovery, ManualHandle, Registry, Target, TargetError,
};
pub use meshless_middleware::{
    AdaptiveThrottleLayer, DefaultDeadline, DefaultDeadlineLayer, HedgeDelay, HedgeLayer,
    HedgingPolicy, MethodPolicies, MethodPolicy, Resilience, RetryBudget, RetryLayer, RetryPolicy,
    RetryThrottle, ThrottleConfig,
};
#[cfg(feature = "metrics")]
pub use meshless_transport::MetricsConfig;
#[cfg(feature = "tls")]
pub use meshless_transport::TlsConfig;
pub use meshless_transport::{
    BuildError, CallMeasured, Channel, ChannelBuilder, ChannelStatus, DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_HEADER_LIST_SIZE, DEFAULT_STREAM_WINDOW, EndpointStatus,
    GrpcTimeout, Http2Settings, LocallyRejected, MaxMessageBytes, OutlierDetection, ReportEndpoint,
    ServedBy, StatusEvent, TriedEndpoints, WaitForReady,
};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
