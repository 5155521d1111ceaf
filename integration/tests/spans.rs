//! gRPC A72's span names and fields, seen by a subscriber that records every span and its
//! parent: the call span `Sent.<service>.<method>` of the resilience stack, one
//! `Attempt.<service>.<method>` per attempt under it with `previous-rpc-attempts` and
//! `transparent-retry`, and the events "Delayed name resolution complete", "Delayed LB pick
//! complete" and "Picked endpoint" on the span A72 puts them on.

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

/// A span: its name, its fields and its parent's id.
#[derive(Debug, Clone)]
struct SpanRecord {
    fields: HashMap<String, String>,
    parent: Option<u64>,
    metadata: &'static Metadata<'static>,
}

/// An event: its message, its fields and the span it belongs to.
#[derive(Debug, Clone)]
struct EventRecord {
    message: String,
    fields: HashMap<String, String>,
    parent: Option<u64>,
}

/// Every span (by id), every event, and the spans entered now (the tests run on one
/// thread).
#[derive(Default)]
struct Seen {
    spans: Mutex<HashMap<u64, SpanRecord>>,
    events: Mutex<Vec<EventRecord>>,
    entered: Mutex<Vec<u64>>,
    next: AtomicU64,
}

impl Seen {
    /// The parent of a new span or event: the explicit one, or the span entered now.
    fn parent(&self, explicit: Option<&Id>, contextual: bool) -> Option<u64> {
        match explicit {
            Some(id) => Some(id.into_u64()),
            None if contextual => self.entered.lock().unwrap().last().copied(),
            None => None,
        }
    }

    /// The spans whose `otel.name` is `name`, with their ids.
    fn named(&self, name: &str) -> Vec<(u64, SpanRecord)> {
        let mut v: Vec<_> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.fields.get("otel.name").map(String::as_str) == Some(name))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    fn events(&self) -> Vec<EventRecord> {
        self.events.lock().unwrap().clone()
    }
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
        let parent = self.0.parent(attrs.parent(), attrs.is_contextual());
        self.0.spans.lock().unwrap().insert(
            id,
            SpanRecord {
                fields,
                parent,
                metadata: attrs.metadata(),
            },
        );
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(s) = self.0.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut s.fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let parent = self.0.parent(event.parent(), event.is_contextual());
        if let Some(m) = fields.remove("message") {
            self.0.events.lock().unwrap().push(EventRecord {
                message: m,
                fields,
                parent,
            });
        }
    }
    fn current_span(&self) -> tracing_core::span::Current {
        let Some(id) = self.0.entered.lock().unwrap().last().copied() else {
            return tracing_core::span::Current::none();
        };
        let metadata = self.0.spans.lock().unwrap()[&id].metadata;
        tracing_core::span::Current::new(Id::from_u64(id), metadata)
    }
    fn enter(&self, span: &Id) {
        self.0.entered.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut entered = self.0.entered.lock().unwrap();
        if let Some(i) = entered.iter().rposition(|&s| s == span.into_u64()) {
            entered.remove(i);
        }
    }
}

const SENT: &str = "Sent.greeter.v1.Greeter.SayHello";
const ATTEMPT: &str = "Attempt.greeter.v1.Greeter.SayHello";

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

    let seen = &recorder.0;
    let sent = seen.named(SENT);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let attempts = seen.named(ATTEMPT);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1.fields["previous-rpc-attempts"], "0");
    assert_eq!(attempts[1].1.fields["previous-rpc-attempts"], "1");
    assert_eq!(attempts[0].1.fields["transparent-retry"], "false");
    assert!(
        attempts.iter().all(|(_, a)| a.parent == Some(sent[0].0)),
        "every attempt is the call span's child: {attempts:?} {sent:?}"
    );
    // The first pick waited for discovery (the call was made before the control task
    // ran): A72's event on the call span. The retry's pick did not wait.
    let events = seen.events();
    let delayed: Vec<_> = events
        .iter()
        .filter(|e| e.message.starts_with("Delayed"))
        .collect();
    assert_eq!(delayed.len(), 1, "{events:?}");
    assert_eq!(delayed[0].message, "Delayed name resolution complete");
    assert_eq!(delayed[0].parent, Some(sent[0].0));
    let picked: Vec<_> = events
        .iter()
        .filter(|e| e.message == "Picked endpoint")
        .collect();
    assert_eq!(picked.len(), 1, "{events:?}");
    assert_eq!(picked[0].parent, Some(attempts[1].0));
    assert_eq!(picked[0].fields["endpoint"], server.addr().to_string());
}

/// A method with no policy sends its one attempt at once: that attempt's span is still the
/// call span's child.
#[tokio::test(flavor = "current_thread")]
async fn a_single_attempt_is_the_call_spans_child() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let server = TestServer::new("s").spawn().unwrap();
    let channel = Channel::builder(static_target(std::slice::from_ref(&server)))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    for stack in [
        Resilience::new(),
        Resilience::new().default_policy(MethodPolicy::new()),
    ] {
        let mut client = GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
        client.say_hello(HelloRequest::default()).await.unwrap();
    }
    let seen = &recorder.0;
    let sent = seen.named(SENT);
    let attempts = seen.named(ATTEMPT);
    assert_eq!(
        (sent.len(), attempts.len()),
        (2, 2),
        "{sent:?} {attempts:?}"
    );
    for (s, a) in sent.iter().zip(&attempts) {
        assert_eq!(a.1.parent, Some(s.0), "{sent:?} {attempts:?}");
    }
    // The channel was ready: no pick waited, each attempt names its endpoint.
    let events = seen.events();
    assert!(!events.iter().any(|e| e.message.starts_with("Delayed")));
    for (id, _) in &attempts {
        assert!(
            events
                .iter()
                .any(|e| e.message == "Picked endpoint" && e.parent == Some(*id)),
            "{events:?}"
        );
    }
}

/// A stream refused before processing is sent again: A72 makes that a new attempt span,
/// beside the first under the call span, with `transparent-retry=true` and the same
/// `previous-rpc-attempts`.
#[tokio::test(flavor = "current_thread")]
async fn a_transparent_retry_is_an_attempt_span_of_its_own() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (refusing, refused) = refusing_server().await;
    let good = TestServer::new("good").spawn().unwrap();
    let channel = Channel::builder(format!("static:///{refusing},{}", good.addr()))
        .policy("round_robin")
        .build()
        .unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(tower::Layer::layer(&Resilience::new(), channel.clone()));
    while refused.load(Ordering::SeqCst) == 0 {
        client.say_hello(HelloRequest::default()).await.unwrap();
    }
    let seen = &recorder.0;
    let attempts = seen.named(ATTEMPT);
    let retry = attempts
        .iter()
        .find(|(_, a)| a.fields["transparent-retry"] == "true")
        .unwrap_or_else(|| panic!("no transparent retry span: {attempts:?}"));
    let call = retry.1.parent.expect("under the call span");
    assert_eq!(seen.spans.lock().unwrap()[&call].fields["otel.name"], SENT);
    let siblings: Vec<_> = attempts
        .iter()
        .filter(|(_, a)| a.parent == Some(call))
        .collect();
    assert_eq!(siblings.len(), 2, "{siblings:?}");
    assert_eq!(siblings[0].1.fields["transparent-retry"], "false");
    assert_eq!(siblings[1].0, retry.0);
    assert!(
        siblings
            .iter()
            .all(|(_, a)| a.fields["previous-rpc-attempts"] == "0")
    );
    // The retry's pick is named on the retry's span: the good endpoint.
    let events = seen.events();
    let picked: Vec<_> = events
        .iter()
        .filter(|e| e.message == "Picked endpoint" && e.parent == Some(retry.0))
        .collect();
    assert_eq!(picked.len(), 1, "{events:?}");
    assert_eq!(picked[0].fields["endpoint"], good.addr().to_string());
}

/// A call that waits for a connection (its endpoint is known but not reachable yet) gets
/// "Delayed LB pick complete" on its attempt span.
#[tokio::test(flavor = "current_thread")]
async fn a_pick_that_waited_for_a_connection_is_a_delayed_lb_pick() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let addr = dead_addr();
    let channel = Channel::builder(format!("static:///{addr}"))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_until("a refused connection", || {
        channel
            .status()
            .endpoints
            .first()
            .is_some_and(|e| e.last_error.is_some())
    })
    .await;
    let mut client = GreeterClient::new(tower::Layer::layer(&Resilience::new(), channel.clone()));
    let mut req = tonic::Request::new(HelloRequest::default());
    req.extensions_mut().insert(meshless::WaitForReady);
    let call = tokio::spawn(async move { client.say_hello(req).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _server = TestServer::new("late").bind(addr).spawn().unwrap();
    call.await.unwrap().unwrap();
    let seen = &recorder.0;
    let attempts = seen.named(ATTEMPT);
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let events = seen.events();
    let delayed: Vec<_> = events
        .iter()
        .filter(|e| e.message.starts_with("Delayed"))
        .collect();
    assert_eq!(delayed.len(), 1, "{events:?}");
    assert_eq!(delayed[0].message, "Delayed LB pick complete");
    assert_eq!(delayed[0].parent, Some(attempts[0].0));
    assert_eq!(delayed[0].fields["endpoint"], addr.to_string());
}
