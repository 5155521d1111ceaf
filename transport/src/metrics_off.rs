//! Without the `metrics` feature: a recorder that is never made, so the call path's
//! `if let Some(metrics)` is the whole cost.

use std::time::Duration;

use tonic::Code;

/// Never constructed without the feature.
#[derive(Debug)]
pub(crate) enum Metrics {}

/// A method label, never made.
pub(crate) type SharedString = String;

/// A per-endpoint latency instrument, never made without the feature.
#[derive(Debug, Clone)]
pub(crate) enum EndpointLatency {}

impl EndpointLatency {
    pub(crate) fn record(&self, _: f64) {
        match *self {}
    }
}

impl Metrics {
    pub(crate) fn endpoint_latency(&self, _: &meshless_discovery::Address) -> EndpointLatency {
        match *self {}
    }
    pub(crate) fn method(&self, _: &str) -> SharedString {
        match *self {}
    }
    pub(crate) fn attempt_started(&self, _: &SharedString) {
        match *self {}
    }
    pub(crate) fn attempt_ended(_: &SharedString, _: Code, _: Duration, _: u64, _: u64) {}
    pub(crate) fn call_duration_of(_: &SharedString, _: Code, _: Duration) {}
    pub(crate) fn call_ended(&self, _: &str, _: u32, _: u32, _: u32, _: Duration) {
        match *self {}
    }
    pub(crate) fn discovery_update(&self) {
        match *self {}
    }
    pub(crate) fn discovery_error(&self) {
        match *self {}
    }
    pub(crate) fn picker_rebuilt(&self) {
        match *self {}
    }
    pub(crate) fn sample_endpoints<'a>(
        &self,
        _: impl Iterator<
            Item = (
                &'a meshless_discovery::Address,
                &'a meshless_balancer::EndpointStats,
                meshless_balancer::ConnectivityState,
                bool,
            ),
        >,
    ) {
        match *self {}
    }
    pub(crate) fn sample_staleness(&self, _: f64) {
        match *self {}
    }
    pub(crate) fn connection_attempt(&self, _: bool) {
        match *self {}
    }
    pub(crate) fn disconnected(&self, _: &'static str) {
        match *self {}
    }
    pub(crate) fn connected(&self) {
        match *self {}
    }
    pub(crate) fn wrr_weights(&self, _: impl Iterator<Item = u32>) {
        match *self {}
    }
    pub(crate) fn ejection_enforced(&self, _: &'static str) {
        match *self {}
    }
    pub(crate) fn ejection_unenforced(&self, _: &'static str, _: &'static str) {
        match *self {}
    }
}
