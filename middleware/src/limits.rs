//! What bounds the extra attempts of every call through one layer: the retry budget, the
//! optional A6 throttle and the request buffer bounds. Retries and hedges of one channel
//! share one of these.

use std::sync::Arc;

use crate::retry::{
    DEFAULT_PER_CALL_BUFFER, DEFAULT_PER_CHANNEL_BUFFER, Pool, RetryBudget, RetryThrottle,
};

#[derive(Debug)]
pub(crate) struct Limits {
    pub budget: RetryBudget,
    pub throttle: Option<RetryThrottle>,
    pub per_call: usize,
    pub pool: Arc<Pool>,
    /// Where A96's per-call instruments go, when metrics are on.
    #[cfg(feature = "metrics")]
    pub metrics: Option<Arc<meshless_transport::Metrics>>,
}

impl Limits {
    /// The call's path, kept only when A96's instruments will want it (no copy otherwise).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn metrics_path(&self, req: &http::Request<tonic::body::Body>) -> Option<String> {
        #[cfg(feature = "metrics")]
        if self.metrics.is_some() {
            return Some(req.uri().path().to_owned());
        }
        None
    }

    /// Records what the call at `path` took (A96), when metrics are on.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub fn call_ended(
        &self,
        path: Option<String>,
        retries: u32,
        hedges: u32,
        delay: std::time::Duration,
    ) {
        #[cfg(feature = "metrics")]
        if let (Some(m), Some(path)) = (&self.metrics, path) {
            m.call_ended(&path, retries, 0, hedges, delay);
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            budget: RetryBudget::default(),
            throttle: None,
            per_call: DEFAULT_PER_CALL_BUFFER,
            pool: Pool::new(DEFAULT_PER_CHANNEL_BUFFER),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

/// Changes `limits` in place when this is its only handle; otherwise (a clone of the layer
/// holds it) starts from fresh limits with the same buffer bound, so that the clone keeps
/// what it had.
pub(crate) fn edit(limits: &mut Arc<Limits>, f: impl FnOnce(&mut Limits)) {
    if let Some(l) = Arc::get_mut(limits) {
        f(l);
        return;
    }
    let mut fresh = Limits {
        per_call: limits.per_call,
        ..Limits::default()
    };
    f(&mut fresh);
    *limits = Arc::new(fresh);
}

/// The builder methods every layer with [`Limits`] offers.
macro_rules! limits_builder {
    () => {
        /// Replaces the retry budget that every extra attempt draws from.
        #[must_use]
        pub fn budget(mut self, budget: $crate::RetryBudget) -> Self {
            $crate::limits::edit(&mut self.limits, |l| l.budget = budget);
            self
        }

        /// Adds A6 `retryThrottling`; extra attempts then need both it and the budget.
        #[must_use]
        pub fn throttle(mut self, throttle: $crate::RetryThrottle) -> Self {
            $crate::limits::edit(&mut self.limits, |l| l.throttle = Some(throttle));
            self
        }

        /// Records A96's per-call instruments (`grpc.client.call.retries`, `.hedges`,
        /// `.retry_delay`) into `metrics`, such as the channel's own
        /// (`Channel::metrics()`). Feature `metrics`.
        #[cfg(feature = "metrics")]
        #[must_use]
        pub fn metrics(mut self, metrics: std::sync::Arc<meshless_transport::Metrics>) -> Self {
            $crate::limits::edit(&mut self.limits, |l| l.metrics = Some(metrics));
            self
        }

        /// Bounds the request bytes kept for extra attempts: `per_call` per call,
        /// `per_channel` for all calls through this layer. A request over either is sent
        /// once.
        #[must_use]
        pub fn buffer_limits(mut self, per_call: usize, per_channel: usize) -> Self {
            $crate::limits::edit(&mut self.limits, |l| {
                l.per_call = per_call;
                l.pool = $crate::retry::Pool::new(per_channel);
            });
            self
        }
    };
}
pub(crate) use limits_builder;
