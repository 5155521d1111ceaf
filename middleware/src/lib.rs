//! tower layers that sit above a meshless [`Channel`](https://docs.rs/meshless-transport),
//! composed with `tower::ServiceBuilder` like any other layer.
//!
//! - [`Resilience`]: the usual stack in the right order, with per-method policy
//!   ([`MethodPolicies`], gRPC service config's `methodConfig`): deadline, then retries or
//!   hedging, then adaptive throttling. The layers below are its parts, usable alone.
//! - [`RetryLayer`]: gRPC A6 retries (`retryPolicy`), bounded by a retry budget and,
//!   optionally, A6 `retryThrottling`; retries avoid the endpoints already tried.
//! - [`HedgeLayer`]: gRPC A6 hedging (`hedgingPolicy`), with a fixed delay or the observed
//!   p95, within the same retry budget; hedges go to endpoints not tried yet.
//! - [`AdaptiveThrottleLayer`]: the Google SRE client-side throttle, which rejects calls
//!   locally while the backend refuses most of them.
//! - [`DefaultDeadlineLayer`]: gives every call that has no deadline a default one, so no
//!   call can wait forever on a slow server.
//!
//! ```
//! use std::time::Duration;
//! use meshless_middleware::DefaultDeadlineLayer;
//! use tower::ServiceBuilder;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(DefaultDeadlineLayer::new(Duration::from_secs(2)))
//!     .service(tower::service_fn(|req: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(req.headers()["grpc-timeout"].clone())
//!     }));
//! # drop(svc);
//! ```

#![warn(missing_docs)]

mod call_end;
mod deadline;
pub mod hedge;
mod limits;
pub mod retry;
mod service;
mod stack;
mod throttle;

pub use call_end::ObservedBody;
pub use deadline::{DefaultDeadline, DefaultDeadlineLayer};
pub use hedge::{Hedge, HedgeDelay, HedgeLayer, HedgingPolicy};
pub use meshless_transport::LocallyRejected;
pub use retry::{PolicyError, Retry, RetryBudget, RetryLayer, RetryPolicy, RetryThrottle};
pub use service::ChannelService;
pub use stack::{MethodPolicies, MethodPolicy, Resilience, Resilient, ResilientFuture};
pub use throttle::{
    AdaptiveThrottle, AdaptiveThrottleLayer, DEFAULT_REFUSAL_CODES, ThrottleConfig, ThrottleFuture,
};
