//! gRPC A6 retries through `RetryLayer` above a real channel and real tonic servers: attempt
//! counts, the commit point, pushback, buffering bounds, deadlines, endpoint avoidance and
//! the retry budget.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meshless::balancer::RandomConfig;
use meshless::middleware::Retry;
use meshless::{Channel, RetryBudget, RetryLayer, RetryPolicy};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::TestServer;
use tokio::time::Instant;
use tonic::{Code, Status};

type Client = GreeterClient<Retry<Channel>>;

fn fast(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(max_attempts)
        .unwrap()
        .backoff(Duration::from_millis(2), Duration::from_millis(10), 2.0)
        .unwrap()
}

fn client(channel: &Channel, layer: &RetryLayer) -> Client {
    GreeterClient::new(tower::Layer::layer(layer, channel.clone()))
}

async fn say(client: &mut Client, name: &str) -> Result<String, Status> {
    let req = HelloRequest {
        name: name.into(),
        ..Default::default()
    };
    client.say_hello(req).await.map(|r| r.into_inner().server)
}

fn channel_to(servers: &[&meshless_integration::server::ServerHandle]) -> Channel {
    let list: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    Channel::builder(format!("static:///{}", list.join(",")))
        .policy("round_robin")
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_ten_gives_five_attempts() {
    let server = TestServer::new("down")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let mut c = client(&channel, &RetryLayer::new(fast(10)));
    let err = say(&mut c, "x").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(server.calls(), 5, "A6 caps maxAttempts at 5");
}

/// Records, per attempt the server sees, its `grpc-previous-rpc-attempts` and its
/// `grpc-timeout`, and fails the first `fail_first` attempts with `status`.
/// One attempt as the server saw it: `grpc-previous-rpc-attempts`, `grpc-timeout`, when.
type Attempt = (Option<String>, Option<String>, Instant);

#[derive(Clone, Default)]
struct Seen {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    n: Arc<AtomicU64>,
}

impl Seen {
    fn server(
        &self,
        name: &str,
        fail_first: u64,
        status: impl Fn() -> Status + Send + Sync + 'static,
    ) -> TestServer {
        let seen = self.clone();
        let status = Arc::new(status);
        TestServer::new(name).on_call(move |info| {
            let seen = seen.clone();
            let status = status.clone();
            async move {
                let get = |k: &str| {
                    info.metadata
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                seen.attempts.lock().unwrap().push((
                    get("grpc-previous-rpc-attempts"),
                    get("grpc-timeout"),
                    Instant::now(),
                ));
                if seen.n.fetch_add(1, Ordering::SeqCst) < fail_first {
                    Err(status())
                } else {
                    Ok(())
                }
            }
        })
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_failure_is_retried_with_the_attempt_count() {
    let seen = Seen::default();
    let server = seen
        .server("flaky", 2, || Status::unavailable("try again"))
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let mut c = client(&channel, &RetryLayer::new(fast(3)));
    assert_eq!(say(&mut c, "x").await.unwrap(), "flaky");
    let previous: Vec<Option<String>> = seen.attempts().into_iter().map(|a| a.0).collect();
    assert_eq!(previous, [None, Some("1".into()), Some("2".into())]);

    // A code the policy does not list is not retried.
    let seen = Seen::default();
    let server = seen
        .server("denied", 5, || Status::permission_denied("no"))
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let mut c = client(&channel, &RetryLayer::new(fast(3)));
    assert_eq!(
        say(&mut c, "x").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(server.calls(), 1);
}

/// Once response headers arrive the call is committed: an error in the trailers after them
/// goes to the caller, not to another attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_then_an_error_trailer_are_not_retried() {
    let server = TestServer::new("midway")
        .fail_streams_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let mut c = client(&channel, &RetryLayer::new(fast(5)));
    for count in [0, 2] {
        let before = server.calls();
        let req = HelloRequest {
            name: "s".into(),
            count,
            interval_ms: 0,
        };
        let mut stream = c
            .stream_replies(req)
            .await
            .expect("headers arrive")
            .into_inner();
        let mut got = 0;
        let end = loop {
            match stream.next().await {
                Some(Ok(_)) => got += 1,
                Some(Err(e)) => break e,
                None => panic!("the stream must end with the server's error"),
            }
        };
        assert_eq!((got, end.code()), (count, Code::Unavailable), "{end}");
        assert_eq!(
            server.calls() - before,
            1,
            "committed after {count} replies"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushback_sets_the_delay_and_a_negative_one_stops() {
    let pushback = |v: &'static str| {
        move || {
            let mut s = Status::unavailable("busy");
            s.metadata_mut()
                .insert("grpc-retry-pushback-ms", v.parse().unwrap());
            s
        }
    };
    let seen = Seen::default();
    let server = seen.server("pushy", 1, pushback("250")).spawn().unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    // The policy's own backoff is 2–10 ms: a wait of 250 ms can only be the pushback.
    let mut c = client(&channel, &RetryLayer::new(fast(3)));
    assert_eq!(say(&mut c, "x").await.unwrap(), "pushy");
    let a = seen.attempts();
    assert_eq!(a.len(), 2);
    let waited = a[1].2 - a[0].2;
    assert!(
        waited >= Duration::from_millis(250),
        "retried after {waited:?}"
    );

    for stop in ["-1", "soon"] {
        let seen = Seen::default();
        let server = seen.server("stop", 10, pushback(stop)).spawn().unwrap();
        let channel = channel_to(&[&server]);
        wait_ready(&channel, 1).await;
        let mut c = client(&channel, &RetryLayer::new(fast(5)));
        assert_eq!(
            say(&mut c, "x").await.unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(server.calls(), 1, "pushback {stop:?} means do not retry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_buffer_bound_is_sent_once() {
    let server = TestServer::new("down")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let layer = RetryLayer::new(fast(5));
    let mut c = client(&channel, &layer);
    let big = "x".repeat(300 * 1024);
    assert_eq!(
        say(&mut c, &big).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(server.calls(), 1, "300 KiB is over the 256 KiB default");
    assert_eq!(
        say(&mut c, "small").await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(server.calls(), 1 + 5);

    // The channel-wide bound: one in-flight call holds it all, so the next is sent once.
    let layer = RetryLayer::new(fast(5)).buffer_limits(256 * 1024, 100);
    let mut c = client(&channel, &layer);
    let before = server.calls();
    let over = "y".repeat(200);
    assert_eq!(
        say(&mut c, &over).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(
        server.calls() - before,
        1,
        "200 bytes are over the channel's 100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_carries_what_is_left_of_the_deadline() {
    let seen = Seen::default();
    let server = seen
        .server("slowfail", 10, || Status::unavailable("no"))
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let policy = RetryPolicy::default()
        .max_attempts(5)
        .unwrap()
        .backoff(Duration::from_millis(20), Duration::from_millis(40), 2.0)
        .unwrap();
    let mut c = client(&channel, &RetryLayer::new(policy));
    let mut req = tonic::Request::new(HelloRequest {
        name: "d".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(5));
    let err = c.say_hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let timeouts: Vec<Duration> = seen
        .attempts()
        .iter()
        .map(|a| parse_timeout(a.1.as_deref().expect("every attempt has a deadline")))
        .collect();
    assert_eq!(timeouts.len(), 5);
    assert!(timeouts[0] <= Duration::from_secs(5));
    for w in timeouts.windows(2) {
        // Each retry waited at least 16 ms (20 ms − 20 % jitter) after the previous attempt.
        assert!(
            w[1] + Duration::from_millis(16) <= w[0],
            "deadline did not shrink: {timeouts:?}"
        );
    }

    // A backoff that would end past the deadline is not started: one attempt, and the
    // caller gets that attempt's status at once.
    let server = TestServer::new("down")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let slow = RetryPolicy::default()
        .max_attempts(5)
        .unwrap()
        .backoff(Duration::from_secs(30), Duration::from_secs(30), 1.0)
        .unwrap();
    let mut c = client(&channel, &RetryLayer::new(slow));
    let mut req = tonic::Request::new(HelloRequest::default());
    req.set_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let err = c.say_hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(server.calls(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "did not wait for the deadline"
    );
}

fn parse_timeout(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

/// With one bad endpoint of three and a random policy, every retry goes to an endpoint the
/// call has not tried: every call succeeds, and the bad endpoint sees each call at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_an_endpoint_not_tried_yet() {
    let bad = TestServer::new("bad")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let good: Vec<_> = (0..2)
        .map(|i| TestServer::new(format!("good{i}")).spawn().unwrap())
        .collect();
    let list = [bad.addr(), good[0].addr(), good[1].addr()]
        .map(|a| a.to_string())
        .join(",");
    let channel = Channel::builder(format!("static:///{list}"))
        .balancer(RandomConfig::default().seed(11))
        .build()
        .unwrap();
    wait_ready(&channel, 3).await;
    let mut c = client(&channel, &RetryLayer::new(fast(2)));
    const CALLS: u64 = 300;
    for i in 0..CALLS {
        let before = bad.calls();
        let who = say(&mut c, "x")
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_ne!(who, "bad");
        assert!(
            bad.calls() - before <= 1,
            "call {i} went to the bad endpoint twice"
        );
    }
    // The random policy sent about a third of first attempts to the bad endpoint; with
    // p = 1/3 and n = 300, 5 sigma is ±41 around 100.
    let first_to_bad = bad.calls();
    assert!((59..=141).contains(&first_to_bad), "{first_to_bad}");
}

/// Under a total outage the budget, not maxAttempts, bounds the attempts: 20 % of calls
/// plus a reserve of 10 retries per second over 10 s (100), instead of 5 attempts per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_total_outage_attempts_stay_within_the_budget() {
    let servers: Vec<_> = (0..2)
        .map(|i| {
            TestServer::new(format!("down{i}"))
                .fail_with(Code::Unavailable)
                .spawn()
                .unwrap()
        })
        .collect();
    let channel = channel_to(&[&servers[0], &servers[1]]);
    wait_ready(&channel, 2).await;
    let layer = RetryLayer::new(fast(5));
    let mut c = client(&channel, &layer);
    const CALLS: u64 = 1000;
    for _ in 0..CALLS {
        assert_eq!(
            say(&mut c, "x").await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    let attempts: u64 = servers.iter().map(|s| s.calls()).sum();
    // The run takes well under the budget's 10 s window, so nothing expires from it.
    assert!(
        attempts <= CALLS + CALLS / 5 + 100,
        "{attempts} attempts for {CALLS} calls"
    );
    assert!(
        attempts >= CALLS + CALLS / 5,
        "the budget allowed its share: {attempts}"
    );

    // No reserve and no share: no retries at all.
    let none =
        RetryLayer::new(fast(5)).budget(RetryBudget::new(Duration::from_secs(10), 0, 0.0).unwrap());
    let mut c = client(&channel, &none);
    let before: u64 = servers.iter().map(|s| s.calls()).sum();
    for _ in 0..50 {
        let _ = say(&mut c, "x").await;
    }
    let after: u64 = servers.iter().map(|s| s.calls()).sum();
    assert_eq!(after - before, 50);
}

/// Adaptive throttling below a retry layer: against a server that refuses everything, the
/// client soon rejects most calls itself (the server sees a fraction of them), the rejected
/// calls say so and carry `LocallyRejected`, and the retry layer does not retry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_fail_locally_and_are_not_retried() {
    use meshless::middleware::{AdaptiveThrottleLayer, LocallyRejected, ThrottleConfig};
    let server = TestServer::new("down")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    let throttle = AdaptiveThrottleLayer::new(ThrottleConfig::sre().seed(5));
    let retry = RetryLayer::new(fast(2));
    let svc = tower::ServiceBuilder::new()
        .layer(retry)
        .layer(throttle.clone())
        .service(channel.clone());
    let mut client = GreeterClient::new(svc);
    const CALLS: u64 = 400;
    let mut throttled = 0;
    for _ in 0..CALLS {
        let before = server.calls();
        let err = client.say_hello(HelloRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        if LocallyRejected::of(&err) == Some(LocallyRejected::Throttled) {
            throttled += 1;
            assert!(err.message().contains("throttled locally"), "{err}");
            // The rejected attempt was not followed by another: at most the attempt before
            // it (when a retry was the one throttled) reached the server.
            assert!(server.calls() - before <= 1);
        }
    }
    assert!(
        throttled >= CALLS / 2,
        "only {throttled} of {CALLS} calls throttled"
    );
    assert!(
        server.calls() < CALLS / 2,
        "the server saw {} attempts for {CALLS} calls",
        server.calls()
    );
    assert!(throttle.reject_probability() > 0.9);
}

/// Which answers count as refusals is configurable: INTERNAL is an answer by default (never
/// throttled however many come back), and a refusal when listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_refusal_codes_are_configurable() {
    use meshless::CodeSet;
    use meshless::middleware::{AdaptiveThrottleLayer, LocallyRejected, ThrottleConfig};
    let server = TestServer::new("broken")
        .fail_with(Code::Internal)
        .spawn()
        .unwrap();
    let channel = channel_to(&[&server]);
    wait_ready(&channel, 1).await;
    async fn throttled(channel: &meshless::Channel, config: ThrottleConfig) -> u32 {
        let svc = tower::ServiceBuilder::new()
            .layer(AdaptiveThrottleLayer::new(config))
            .service(channel.clone());
        let mut client = GreeterClient::new(svc);
        let mut throttled = 0;
        for _ in 0..200 {
            let err = client.say_hello(HelloRequest::default()).await.unwrap_err();
            throttled += u32::from(LocallyRejected::of(&err) == Some(LocallyRejected::Throttled));
        }
        throttled
    }
    assert_eq!(throttled(&channel, ThrottleConfig::sre().seed(6)).await, 0);
    let internal = ThrottleConfig::sre()
        .seed(6)
        .refusal_codes(CodeSet::of(&[Code::Internal]));
    let n = throttled(&channel, internal).await;
    assert!(n >= 100, "only {n} of 200 calls throttled");
}

/// A server whose calls wait until the test lets them go.
fn gated(
    name: &str,
    gate: &Arc<tokio::sync::Semaphore>,
) -> meshless_integration::server::ServerHandle {
    let gate = gate.clone();
    TestServer::new(name)
        .on_call(move |_| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                Ok(())
            }
        })
        .spawn()
        .unwrap()
}

/// Caps on calls in flight (A32 `max_requests`): a call over the per-endpoint or the
/// per-channel cap fails at once with `AtCapacity`, and a retry layer does not retry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_caps_fail_at_once_and_are_not_retried() {
    use meshless::middleware::LocallyRejected;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let servers = [gated("a", &gate), gated("b", &gate)];
    let list = servers
        .iter()
        .map(|s| s.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for (per_endpoint, per_channel, fill) in [(Some(1), None, 2), (None, Some(3), 3)] {
        let mut b = Channel::builder(format!("static:///{list}")).policy("round_robin");
        if let Some(n) = per_endpoint {
            b = b.max_requests_per_endpoint(n);
        }
        if let Some(n) = per_channel {
            b = b.max_requests(n);
        }
        let channel = b.build().unwrap();
        wait_ready(&channel, 2).await;
        let layer = RetryLayer::new(fast(5));
        let before: u64 = servers.iter().map(|s| s.calls()).sum();
        let held: Vec<_> = (0..fill)
            .map(|_| {
                let mut c = client(&channel, &layer);
                tokio::spawn(async move { say(&mut c, "held").await })
            })
            .collect();
        wait_until("the held calls reach the servers", || {
            servers.iter().map(|s| s.in_flight()).sum::<u64>() == fill
        })
        .await;
        let mut c = client(&channel, &layer);
        let err = say(&mut c, "over").await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert_eq!(
            LocallyRejected::of(&err),
            Some(LocallyRejected::AtCapacity),
            "{err}"
        );
        let want = if per_channel.is_some() {
            "(max_requests)"
        } else {
            "(max_requests_per_endpoint)"
        };
        assert!(err.message().contains(want), "{err}");
        let after: u64 = servers.iter().map(|s| s.calls()).sum();
        assert_eq!(after - before, fill, "the rejected call reached no server");
        gate.add_permits(fill as usize);
        for h in held {
            h.await.unwrap().unwrap();
        }
        // Below the cap again: calls go through.
        gate.add_permits(1);
        say(&mut c, "after").await.unwrap();
    }
}

/// A policy that keeps choosing the endpoint a call already tried (ring_hash, by the
/// call's hash key) still gets its retry sent elsewhere: the channel takes a ready untried
/// endpoint itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_leaves_an_endpoint_that_the_policy_keeps_choosing() {
    use meshless::balancer::{HashKeyConfig, RingHashConfig};
    let servers: Vec<_> = (0..3)
        .map(|i| TestServer::new(format!("s{i}")).spawn().unwrap())
        .collect();
    let list = servers
        .iter()
        .map(|s| s.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let channel = Channel::builder(format!("static:///{list}"))
        .balancer(RingHashConfig::default().key(
            HashKeyConfig::default().request_hash_header(http::HeaderName::from_static("x-user")),
        ))
        .build()
        .unwrap();
    wait_ready(&channel, 3).await;
    let mut c = client(&channel, &RetryLayer::new(fast(2)));
    let call = |c: &mut Client| {
        let mut req = tonic::Request::new(HelloRequest::default());
        req.metadata_mut()
            .insert("x-user", "alice".parse().unwrap());
        let mut c = c.clone();
        async move { c.say_hello(req).await.map(|r| r.into_inner().server) }
    };
    let home = call(&mut c).await.unwrap();
    let home = servers.iter().find(|s| s.name() == home).unwrap();
    assert_eq!(
        call(&mut c).await.unwrap(),
        home.name(),
        "the key sticks to one endpoint"
    );
    home.set_fail(Some(Code::Unavailable));
    for _ in 0..20 {
        let before = home.calls();
        let got = call(&mut c).await.unwrap();
        assert_ne!(got, home.name());
        assert_eq!(
            home.calls() - before,
            1,
            "the first attempt went home, the retry elsewhere"
        );
    }
}
