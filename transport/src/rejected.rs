//! Calls that meshless failed locally, without sending them.

use tonic::Status;

/// Why meshless failed a call without sending it, set as the source of its `Status`. A
/// retry layer (meshless-middleware's `RetryLayer`) never retries such a call: another
/// attempt would only add to the load the rejection is there to shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocallyRejected {
    /// Adaptive throttling rejected it (meshless-middleware's `AdaptiveThrottleLayer`).
    #[error("rejected locally by adaptive throttling")]
    Throttled,
    /// Every endpoint it could go to was at its cap of calls in flight, or the channel was
    /// at its own ([`ChannelBuilder::max_requests`](crate::ChannelBuilder::max_requests)).
    #[error("rejected locally: at the limit of calls in flight")]
    AtCapacity,
}

impl LocallyRejected {
    /// An `UNAVAILABLE` status with `message` and this rejection as its source.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::unavailable(message);
        status.set_source(std::sync::Arc::new(self));
        status
    }

    /// The local rejection behind `status`, if it is one.
    pub fn of(status: &Status) -> Option<LocallyRejected> {
        std::error::Error::source(status)?
            .downcast_ref::<LocallyRejected>()
            .copied()
    }
}
