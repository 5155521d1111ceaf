//! W3C trace context on the wire (feature `otel`): each call's request headers get the
//! OpenTelemetry context of its `Attempt` span (or, when no subscriber wants that span, of
//! the span the call was made in), through the text-map propagator the application set with
//! `opentelemetry::global::set_text_map_propagator` (such as opentelemetry_sdk's
//! `TraceContextPropagator`, which writes `traceparent` and `tracestate`). With
//! tracing-opentelemetry's layer installed the spans are exported and the server's spans
//! join the same trace. Without a propagator (OpenTelemetry's default is a no-op) or a
//! valid span context nothing is written.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::Injector;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The propagator's view of a request's headers.
struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A key or value that is not a valid header is skipped, not a failed call.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Writes `span`'s trace context into `headers`.
pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = if span.is_disabled() {
        tracing::Span::current().context()
    } else {
        span.context()
    };
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Headers(headers))
    });
}
