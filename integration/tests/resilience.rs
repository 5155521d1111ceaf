//! The composed stack (`Resilience`) with per-method policies, over real servers: the
//! exact method wins over its service, the service over the default; the method's timeout
//! caps the caller's deadline; retries apply only where a policy says so.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meshless::Channel;
use meshless::RetryPolicy;
use meshless::middleware::{MethodPolicies, MethodPolicy, Resilience, Resilient};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{CallKind, TestServer};
use tonic::{Code, Status};

const SERVICE: &str = "greeter.v1.Greeter";

/// One attempt as the server saw it: its kind and its `grpc-timeout`.
type Seen = (CallKind, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_method_policies_are_matched_as_grpc_does() {
    // Every call's first attempt fails UNAVAILABLE; the server records each attempt's kind
    // and deadline.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let n = Arc::new(AtomicU64::new(0));
    let record = seen.clone();
    let server = TestServer::new("s")
        .on_call(move |info| {
            let record = record.clone();
            let n = n.clone();
            async move {
                let timeout = info
                    .metadata
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                record.lock().unwrap().push((info.kind, timeout));
                if info.name != "slow" && n.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    return Err(Status::unavailable("first attempt"));
                }
                if info.name == "slow" {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Ok(())
            }
        })
        .spawn()
        .unwrap();
    let channel = Channel::builder(static_target(std::slice::from_ref(&server)))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let retry = RetryPolicy::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(5), 2.0)
        .unwrap();
    let stack = Resilience::new().methods(
        MethodPolicies::new()
            .default_policy(MethodPolicy::new().timeout(Duration::from_millis(300)))
            .service(
                SERVICE,
                MethodPolicy::new()
                    .retry(retry)
                    .timeout(Duration::from_secs(20)),
            )
            .method(SERVICE, "StreamReplies", MethodPolicy::new()),
    );
    let mut client: GreeterClient<Resilient<Channel>> =
        GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));

    // SayHello: the service's policy retries it, and its 20 s timeout is sent.
    let reply = client
        .say_hello(HelloRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.server, "s");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "retried once: {seen:?}");
        for (_, t) in seen.iter() {
            let t = parse_timeout(t.as_deref().expect("a deadline"));
            assert!(
                t > Duration::from_secs(19) && t <= Duration::from_secs(20),
                "{t:?}"
            );
        }
    }

    // StreamReplies: its own entry (no retry) wins over the service's.
    let before = seen.lock().unwrap().len();
    let req = HelloRequest {
        name: "x".into(),
        count: 1,
        interval_ms: 0,
    };
    let err = match client.stream_replies(req).await {
        Err(e) => e,
        Ok(resp) => resp.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(seen.lock().unwrap().len(), before + 1, "not retried");

    // A caller's sooner deadline wins over the method's 20 s.
    let mut req = tonic::Request::new(HelloRequest {
        name: "slow".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(200));
    let err = client.say_hello(req).await.unwrap_err();
    assert!(expired(&err), "{err}");
    let last = seen.lock().unwrap().last().cloned().unwrap();
    let sent = parse_timeout(&last.1.unwrap());
    assert!(
        sent <= Duration::from_millis(200),
        "the caller's 200 ms was sent: {sent:?}"
    );
}

/// Methods of other services get the default entry: its 300 ms timeout bounds a call
/// whose caller set none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_entry_gives_calls_its_timeout() {
    let server = TestServer::new("slow")
        .latency(Duration::from_secs(3))
        .spawn()
        .unwrap();
    let channel = Channel::builder(static_target(std::slice::from_ref(&server)))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let stack =
        Resilience::new().default_policy(MethodPolicy::new().timeout(Duration::from_millis(300)));
    assert!(
        stack
            .method_policies()
            .policy_for("/any.Service/Method")
            .is_some()
    );
    let mut client: GreeterClient<Resilient<Channel>> =
        GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
    let start = tokio::time::Instant::now();
    let err = client.say_hello(HelloRequest::default()).await.unwrap_err();
    assert!(expired(&err), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "bounded by the 300 ms, not the server"
    );
}

fn parse_timeout(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

/// A call ended by its deadline: DEADLINE_EXCEEDED from the channel, or CANCELLED
/// ("Timeout expired") from a tonic server whose own timer, set from the same
/// `grpc-timeout`, fired first.
fn expired(err: &Status) -> bool {
    err.code() == Code::DeadlineExceeded
        || (err.code() == Code::Cancelled && err.message().contains("Timeout expired"))
}

/// gRPC's waitForReady: against a channel whose only endpoint is down (TRANSIENT_FAILURE),
/// a call without it fails at once, and a call with it waits until the endpoint comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_ready_waits_through_transient_failure() {
    let addr = dead_addr();
    let channel = Channel::builder(format!("static:///{addr}"))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_until("the channel fails", || {
        *channel.state_watch().borrow() == meshless::ConnectivityState::TransientFailure
    })
    .await;
    let plain = Resilience::new();
    let mut fail_fast: GreeterClient<Resilient<Channel>> =
        GreeterClient::new(tower::Layer::layer(&plain, channel.clone()));
    let err = fail_fast
        .say_hello(HelloRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    let wfr = Resilience::new().default_policy(
        MethodPolicy::new()
            .wait_for_ready(true)
            .timeout(Duration::from_secs(20)),
    );
    let mut waits: GreeterClient<Resilient<Channel>> =
        GreeterClient::new(tower::Layer::layer(&wfr, channel.clone()));
    let call = tokio::spawn(async move { waits.say_hello(HelloRequest::default()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "it waits");
    let _server = TestServer::new("late").bind(addr).spawn().unwrap();
    let reply = call.await.unwrap().expect("served once the endpoint is up");
    assert_eq!(reply.into_inner().server, "late");
}

/// gRPC's per-method message limits: a request over `maxRequestMessageBytes` fails
/// RESOURCE_EXHAUSTED without reaching the server; a response over
/// `maxResponseMessageBytes` fails the call when its length prefix arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limits_fail_resource_exhausted() {
    let server = TestServer::new("s").spawn().unwrap();
    let channel = Channel::builder(static_target(std::slice::from_ref(&server)))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let stack = Resilience::new()
        .default_policy(MethodPolicy::new().max_message_bytes(Some(100), Some(60)));
    let mut client: GreeterClient<Resilient<Channel>> =
        GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
    // The reply is "Hello " + the name + the server's name: a short name fits in 60 bytes.
    client
        .say_hello(HelloRequest {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .expect("within both limits");
    let err = client
        .say_hello(HelloRequest {
            name: "x".repeat(200),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("request message of"), "{err}");
    assert_eq!(server.calls(), 1, "the oversized request was not sent");
    let err = client
        .say_hello(HelloRequest {
            name: "y".repeat(80),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("response message of"), "{err}");
    assert_eq!(
        server.calls(),
        2,
        "that one was sent; its reply was too large"
    );
}
