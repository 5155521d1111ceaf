//! gRPC A72's span names and fields, seen by a subscriber that records every span: the call
//! span `Sent.<service>.<method>` of the resilience stack, one `Attempt.<service>.<method>`
//! per attempt with `previous-rpc-attempts`, and the "Delayed LB pick complete" event.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use meshless::Channel;
use meshless::RetryPolicy;
use meshless::middleware::{MethodPolicy, Resilience, Resilient};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::TestServer;
use tonic::Status;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span's name and its fields.
type SpanRecord = (String, HashMap<String, String>);

/// Every span (by id) and every event message.
#[derive(Default)]
struct Seen {
    spans: Mutex<HashMap<u64, SpanRecord>>,
    events: Mutex<Vec<String>>,
    next: AtomicU64,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Seen>);

impl Subscriber for Recorder {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target().starts_with("meshless")
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0
            .spans
            .lock()
            .unwrap()
            .insert(id, (attrs.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.0.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        if let Some(m) = fields.get("message") {
            self.0.events.lock().unwrap().push(m.clone());
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn call_and_attempt_spans_have_a72_names_and_fields() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    // The first attempt fails UNAVAILABLE, the retry succeeds.
    let n = Arc::new(AtomicU64::new(0));
    let server = TestServer::new("s")
        .on_call(move |_| {
            let n = n.clone();
            async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(Status::unavailable("first"));
                }
                Ok(())
            }
        })
        .spawn()
        .unwrap();
    let channel = Channel::builder(static_target(std::slice::from_ref(&server)))
        .build()
        .unwrap();
    let retry = RetryPolicy::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(2), 2.0)
        .unwrap();
    let stack = Resilience::new().default_policy(MethodPolicy::new().retry(retry));
    let mut client: GreeterClient<Resilient<Channel>> =
        GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
    // Called before the channel is ready: the pick is delayed.
    client.say_hello(HelloRequest::default()).await.unwrap();

    let spans = recorder.0.spans.lock().unwrap();
    let named = |name: &str| -> Vec<HashMap<String, String>> {
        spans
            .values()
            .filter(|(_, f)| f.get("otel.name").map(String::as_str) == Some(name))
            .map(|(_, f)| f.clone())
            .collect()
    };
    assert_eq!(
        named("Sent.greeter.v1.Greeter.SayHello").len(),
        1,
        "{spans:?}"
    );
    let mut attempts = named("Attempt.greeter.v1.Greeter.SayHello");
    attempts.sort_by_key(|f| f["previous-rpc-attempts"].clone());
    assert_eq!(attempts.len(), 2, "{spans:?}");
    assert_eq!(attempts[0]["previous-rpc-attempts"], "0");
    assert_eq!(attempts[1]["previous-rpc-attempts"], "1");
    assert_eq!(attempts[0]["transparent-retry"], "false");
    let events = recorder.0.events.lock().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e == "Delayed LB pick complete" || e == "Delayed name resolution complete"),
        "{events:?}"
    );
}
