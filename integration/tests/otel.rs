//! W3C trace context on the wire (feature `otel`): a server sees the `traceparent` of the
//! client's trace, written by the application's propagator; without one, nothing.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use meshless::Channel;
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::TestServer;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

// One test: the propagator is process-wide. A current-thread runtime, so the thread's
// subscriber (set below) sees the call's spans.
#[tokio::test]
async fn a_server_sees_the_traceparent_of_the_client_span() {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    let server = TestServer::new("traced")
        .on_call(move |info| {
            let tp = info
                .metadata
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            record.lock().unwrap().push(tp);
            async { Ok(()) }
        })
        .spawn()
        .unwrap();
    let channel = Channel::builder(static_target(std::slice::from_ref(&server)))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel);

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("meshless-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    // OpenTelemetry's default propagator is a no-op: nothing goes on the wire.
    let span = tracing::info_span!("before a propagator is set");
    client
        .say_hello(HelloRequest::default())
        .instrument(span)
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().pop(), Some(None));

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let span = tracing::info_span!("client operation");
    let ours = span.context().span().span_context().clone();
    assert!(ours.is_valid());
    client
        .say_hello(HelloRequest::default())
        .instrument(span)
        .await
        .unwrap();
    let traceparent = seen
        .lock()
        .unwrap()
        .pop()
        .flatten()
        .expect("a traceparent header");
    // version-traceid-spanid-flags, lowercase hex (W3C Trace Context).
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], ours.trace_id().to_string(), "the client's trace");
    assert_eq!(parts[2].len(), 16);
    // The attempt span (a child of ours) is the parent of the server's work.
    assert_ne!(
        parts[2],
        ours.span_id().to_string(),
        "the attempt's own span"
    );
    assert_eq!(parts[3], "01", "sampled");
}
