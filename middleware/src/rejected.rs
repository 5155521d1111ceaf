//! Calls that meshless failed locally, without sending them.

use tonic::Status;

/// Why a layer failed a call without sending it, set as the source of its `Status`. A
/// [`RetryLayer`](crate::RetryLayer) never retries such a call: another attempt would only
/// add to the load the rejection is there to shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocallyRejected {
    /// Adaptive throttling rejected it ([`AdaptiveThrottleLayer`](crate::AdaptiveThrottleLayer)).
    #[error("rejected locally by adaptive throttling")]
    Throttled,
}

impl LocallyRejected {
    /// The local rejection behind `status`, if it is one.
    pub fn of(status: &Status) -> Option<LocallyRejected> {
        std::error::Error::source(status)?
            .downcast_ref::<LocallyRejected>()
            .copied()
    }
}
