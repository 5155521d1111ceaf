//! The meshless [`Channel`]: a tower Service that discovers a target's endpoints, keeps one
//! HTTP/2 connection per endpoint and balances every call over them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use meshless_transport::Channel;
//! let channel = Channel::builder("static:///127.0.0.1:50051,127.0.0.1:50052")
//!     .policy("round_robin")
//!     .build()?;
//! // `channel` is the transport of any tonic client: `GreeterClient::new(channel)`.
//! println!("{:?}", channel.status());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod channel;
mod control;
mod errors;
mod frame_limit;
mod grpc_timeout;
mod h2client;
mod health;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics_off;
#[cfg(feature = "metrics")]
pub(crate) use crate::metrics::Label;
/// The channel's recorder and its method labels, real or (without the feature) never made.
#[cfg(feature = "metrics")]
pub(crate) use crate::metrics::{EndpointLatency, Metrics as Recorder};
#[cfg(not(feature = "metrics"))]
pub(crate) use metrics_off::{EndpointLatency, Metrics as Recorder, SharedString as Label};
#[cfg(feature = "otel")]
mod otel;
mod outlier;
mod preface;
mod rejected;
mod replay;
mod settings;
mod status;
mod subchannel;
#[cfg(feature = "tls")]
mod tls;
mod tracked;
mod tried;

pub use channel::{
    BuildError, CallMeasured, Channel, ChannelBuilder, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_REQUESTS_PER_ENDPOINT, DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_TCP_KEEPALIVE, ReportEndpoint, ResponseFuture, ServedBy, WaitForReady,
};
// For meshless's own middleware crate, not part of the API.
#[doc(hidden)]
pub use channel::a72_name;
#[doc(hidden)]
pub use errors::grpc_status;
pub use frame_limit::MaxMessageBytes;
pub use grpc_timeout::GrpcTimeout;
pub use meshless_discovery::backoff::{Backoff, BackoffConfig};
#[cfg(feature = "metrics")]
pub use metrics::{Metrics, MetricsConfig};
pub use outlier::{
    CONSECUTIVE_CHECK, FailurePercentageEjection, OutlierDetection, SuccessRateEjection,
};
pub use rejected::LocallyRejected;
/// The rustls this crate's TLS is built on, for [`TlsConfig::verifier`] and
/// [`TlsConfig::client_config`].
#[cfg(feature = "tls")]
pub use rustls;
pub use settings::{
    DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_HEADER_LIST_SIZE,
    DEFAULT_STREAM_WINDOW, Http2Settings,
};
pub use status::{ChannelStatus, EndpointStatus, StatusEvent};
#[cfg(feature = "tls")]
pub use tls::{DEFAULT_TLS_RELOAD, TlsConfig};
pub use tried::TriedEndpoints;
