//! Channel behaviour beyond the basics: transparent retry of refused streams, Unix sockets,
//! the status snapshot and completion at the end of streaming bodies.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meshless::Channel;
use meshless::balancer::ConnectivityState;
use meshless::discovery::{Address, Endpoint};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use tokio::time::Instant;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_transparently_on_another_endpoint() {
    let good = servers(1);
    let (bad, refused) = refusing_server().await;
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![Endpoint::new(bad), Endpoint::new(good[0].addr())]);
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..200 {
        let server = hello(&mut client).await.expect("a refused call is retried");
        assert_eq!(server, "s0");
    }
    // Round robin sent about half of the first attempts to the refusing endpoint.
    let n = refused.load(Ordering::SeqCst);
    assert!(
        n >= 50,
        "only {n} calls were refused: the test did not exercise retry"
    );
    // A refused call says nothing about the endpoint's health and is not counted on it.
    let status = channel.status();
    let bad_ep = status.endpoint(&Address::from(bad)).unwrap();
    assert_eq!(bad_ep.failures + bad_ep.successes, 0, "{bad_ep:?}");
    assert_eq!(bad_ep.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_with_no_other_endpoint_fails_unavailable() {
    let (bad, _) = refusing_server().await;
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![Endpoint::new(bad)]);
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel);
    // Retried once (on the same endpoint, the only one), then reported.
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains(&bad.to_string()), "{err}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_targets_work() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("health.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    for target in [
        format!("unix:{}", path.display()),
        format!("unix://{}", path.display()),
    ] {
        let channel = Channel::builder(target.clone()).build().unwrap();
        let mut client = HealthClient::new(channel);
        let reply = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_are_sampled_at_their_headers_and_in_flight_to_the_end() {
    let servers = servers(1);
    let channel = Channel::builder(static_target(&servers))
        .policy("p2c_ewma")
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let addr = Address::from(servers[0].addr());
    let req = HelloRequest {
        name: "stream".into(),
        count: 3,
        interval_ms: 300,
    };
    let started = std::time::Instant::now();
    let mut stream = client.stream_replies(req).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    // Headers and the first message have arrived; the call is still in flight, and its
    // outcome is not known yet.
    let st = channel.status();
    let ep = st.endpoint(&addr).unwrap();
    assert_eq!(ep.state, ConnectivityState::Ready);
    assert_eq!((ep.in_flight, ep.successes), (1, 0), "{ep:?}");
    while let Some(item) = stream.next().await {
        item.unwrap();
    }
    let lasted = started.elapsed();
    wait_until("completion recorded", || {
        channel.status().endpoint(&addr).unwrap().successes == 1
    })
    .await;
    let st = channel.status();
    let ep = st.endpoint(&addr).unwrap();
    assert_eq!(ep.in_flight, 0);
    assert_eq!(ep.failures, 0);
    // The latency is the time to the headers, which the server sent at once, not the whole
    // stream (two 300 ms gaps): a long-lived stream must not make its endpoint look slow.
    assert!(lasted >= Duration::from_millis(600), "{lasted:?}");
    assert!(
        ep.latency_ewma < lasted / 2,
        "{ep:?} for a stream of {lasted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_cancelled_calls_are_recorded() {
    let servers = servers(1);
    servers[0].set_fail(Some(Code::Unavailable));
    let channel = Channel::builder(static_target(&servers)).build().unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let addr = Address::from(servers[0].addr());
    for _ in 0..3 {
        assert_eq!(
            hello(&mut client).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    // An application error is not the endpoint's fault.
    servers[0].set_fail(Some(Code::NotFound));
    assert_eq!(hello(&mut client).await.unwrap_err().code(), Code::NotFound);
    servers[0].set_fail(None);
    // A stream the caller abandons is no longer in flight, and counts as neither success nor
    // failure: no deadline was involved.
    let req = HelloRequest {
        name: "abandon".into(),
        count: 100,
        interval_ms: 50,
    };
    let mut stream = client.stream_replies(req).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    wait_until("abandoned stream recorded", || {
        channel.status().endpoint(&addr).unwrap().in_flight == 0
    })
    .await;
    let st = channel.status();
    let ep = st.endpoint(&addr).unwrap();
    assert_eq!((ep.failures, ep.successes), (3, 1), "{ep:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_states_and_errors() {
    let servers = servers(1);
    let dead = dead_addr();
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![Endpoint::new(servers[0].addr()), Endpoint::new(dead)]);
    wait_until("one ready, one failing", || {
        let st = channel.status();
        st.ready_count() == 1
            && st
                .endpoint(&Address::from(dead))
                .is_some_and(|e| e.last_error.is_some())
    })
    .await;
    let st = channel.status();
    assert_eq!(st.target, "manual-test");
    assert_eq!(st.policy, "round_robin");
    assert!(st.resolved);
    let bad = st.endpoint(&Address::from(dead)).unwrap();
    assert_ne!(bad.state, ConnectivityState::Ready);
    let err = bad.last_error.as_deref().unwrap();
    assert!(
        err.contains(&dead.to_string()) && err.contains("refused"),
        "{err}"
    );
    // Calls go only to the ready endpoint meanwhile.
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..20 {
        assert_eq!(hello(&mut client).await.unwrap(), "s0");
    }
}

/// A raw HTTP/2 server that accepts every stream and never answers (a hung process behind
/// an open socket); records each stream's `grpc-timeout` header.
async fn black_hole_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<(Instant, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let t = req
                        .headers()
                        .get("grpc-timeout")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    log.lock().unwrap().push((Instant::now(), t));
                    held.push(respond); // never answered, never reset
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_deadline_bounds_a_server_that_never_answers() {
    let (addr, seen) = black_hole_server().await;
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![Endpoint::new(addr)]);
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel);
    let mut req = tonic::Request::new(HelloRequest::default());
    req.set_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let err = client.say_hello(req).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The server was told what was left of the deadline when the call was sent: at most
    // the whole 300 ms, at least what was left when the server received it.
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (received, header) = &got[0];
    let left = Duration::from_micros(header.trim_end_matches('u').parse::<u64>().expect("micros"));
    let least = Duration::from_millis(300).saturating_sub(*received - start);
    assert!(
        left <= Duration::from_millis(300) && left + Duration::from_micros(1) >= least,
        "told {left:?}, at least {least:?} was left on arrival"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_encoded_fails_locally_and_reaches_no_server() {
    let servers = servers(1);
    let channel = Channel::builder(static_target(&servers)).build().unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone()).max_encoding_message_size(16);
    let err = client
        .say_hello(HelloRequest {
            name: "x".repeat(100),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert_eq!(servers[0].calls(), 0);
    let st = channel.status();
    assert_eq!(
        st.endpoints[0].failures, 0,
        "a local error was blamed on the endpoint"
    );
}

/// A TCP port that accepts and then writes `reply` (nothing, when empty) and holds the
/// connection: a sidecar whose app is not up, an HTTP/1 or TLS port.
async fn not_http2_port(reply: &'static [u8]) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            if !reply.is_empty() {
                let _ = sock.write_all(reply).await;
            }
            held.push(sock);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_does_not_speak_http2_is_never_ready() {
    for (reply, want) in [
        (&b""[..], "HTTP/2 preface"),
        (
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
            "answered with HTTP/1, not HTTP/2",
        ),
    ] {
        let addr = not_http2_port(reply).await;
        let (discovery, handle) = meshless::discovery::ManualDiscovery::new();
        let channel = Channel::with_discovery("not-h2", Arc::new(discovery))
            .connect_timeout(Duration::from_millis(300))
            .backoff(fast_backoff())
            .build()
            .unwrap();
        handle.reset(vec![Endpoint::new(addr)]);
        let mut client = GreeterClient::new(channel.clone());
        let err = hello(&mut client).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.message().contains(want), "`{want}` missing: {err}");
        let st = channel.status();
        assert_eq!(st.ready_count(), 0, "{st:?}");
    }
}

/// A TCP server that closes every connection it accepts before saying anything; returns its
/// address and how many connections it accepted.
async fn slamming_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (addr, count)
}

/// round_robin that counts how often it builds a picker.
#[derive(Debug)]
struct CountingRoundRobin(Arc<AtomicU64>);

/// Makes [`CountingRoundRobin`]s that share one counter.
struct CountingPolicy(Arc<AtomicU64>);

impl meshless::balancer::Policy for CountingPolicy {
    fn name(&self) -> &'static str {
        "round_robin"
    }
    fn new_balancer(&self) -> Box<dyn meshless::balancer::Balancer> {
        Box::new(CountingRoundRobin(self.0.clone()))
    }
}

impl meshless::balancer::Balancer for CountingRoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(
        &self,
        subchannels: &[meshless::balancer::SubchannelView],
    ) -> Arc<dyn meshless::balancer::Picker> {
        self.0.fetch_add(1, Ordering::SeqCst);
        meshless::balancer::Balancer::build(&meshless::balancer::RoundRobin, subchannels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_endpoint_that_never_gets_ready_does_not_rebuild_the_picker() {
    let servers = servers(1);
    let builds = Arc::new(AtomicU64::new(0));
    let (discovery, handle) = meshless::discovery::ManualDiscovery::new();
    let channel = Channel::with_discovery("flap", Arc::new(discovery))
        .balancer(Arc::new(CountingPolicy(builds.clone())) as Arc<dyn meshless::balancer::Policy>)
        .backoff(fast_backoff())
        .build()
        .unwrap();
    // An endpoint that accepts and closes at once: each connection attempt fails, and the
    // test can count them.
    let (dead, attempts) = slamming_server().await;
    handle.reset(vec![Endpoint::new(servers[0].addr()), Endpoint::new(dead)]);
    wait_ready(&channel, 1).await;
    wait_until("the dead endpoint failing", || {
        channel
            .status()
            .endpoint(&Address::from(dead))
            .is_some_and(|e| e.last_error.is_some())
    })
    .await;
    let before = builds.load(Ordering::SeqCst);
    // fast_backoff retries every 50–200 ms: wait for three more Connecting/TransientFailure
    // rounds.
    let tried = attempts.load(Ordering::SeqCst);
    wait_until("three more connection attempts", || {
        attempts.load(Ordering::SeqCst) >= tried + 3
    })
    .await;
    assert_eq!(
        builds.load(Ordering::SeqCst),
        before,
        "picker rebuilt for a non-ready endpoint's backoff"
    );
    // A real change still rebuilds.
    handle.reset(vec![Endpoint::new(servers[0].addr())]);
    wait_until("the rebuild", || builds.load(Ordering::SeqCst) > before).await;
    let mut client = GreeterClient::new(channel);
    assert_eq!(hello(&mut client).await.unwrap(), "s0");
}

/// `set_policy` switches a running channel: calls go on without a failure, no connection is
/// made or lost, the endpoints' counters carry over, and the new policy's latency signal is
/// on from then (p2c_ewma's estimate moves off its default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_policy_switches_in_place_keeping_connections_and_statistics() {
    let servers = servers(2);
    let channel = Channel::builder(static_target(&servers))
        .policy("round_robin")
        .build()
        .unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..50 {
        hello(&mut client).await.unwrap();
    }
    let before = channel.status();
    let connections: Vec<u64> = servers.iter().map(|s| s.connections()).collect();
    let default_rtt = before.endpoints[0].latency_ewma;
    channel.set_policy(meshless::balancer::P2cEwmaConfig::default());
    wait_until("the switch", || channel.status().policy == "p2c_ewma").await;
    for _ in 0..200 {
        hello(&mut client)
            .await
            .expect("no call fails across the switch");
    }
    let after = channel.status();
    assert_eq!(
        servers.iter().map(|s| s.connections()).collect::<Vec<_>>(),
        connections,
        "no new connection"
    );
    let total =
        |st: &meshless::ChannelStatus| st.endpoints.iter().map(|e| e.successes).sum::<u64>();
    assert_eq!(total(&after), total(&before) + 200, "counters carried over");
    assert!(
        after
            .endpoints
            .iter()
            .any(|e| e.latency_ewma != default_rtt),
        "p2c_ewma's estimate is fed after the switch: {after:?}"
    );
}

/// A call in flight keeps its channel running: a call waiting for an endpoint when the last
/// `Channel` handle goes (a layer that clones the channel per call and drops its clone, as a
/// reloading client does) still gets one, instead of failing "channel was dropped".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_an_endpoint_outlives_the_last_channel_handle() {
    /// Clones the channel for each call and keeps nothing of it.
    #[derive(Clone)]
    struct PerCall(Arc<std::sync::Mutex<Option<Channel>>>);
    impl tower::Service<http::Request<tonic::body::Body>> for PerCall {
        type Response = http::Response<tonic::body::Body>;
        type Error = tonic::Status;
        type Future = meshless::transport::ResponseFuture;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), tonic::Status>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let mut ch = self.0.lock().unwrap().clone().expect("a channel");
            tower::Service::call(&mut ch, req)
        }
    }
    let server = servers(1);
    let (d, handle) = meshless::discovery::ManualDiscovery::new();
    let channel = Channel::with_discovery("outlives", Arc::new(d))
        .build()
        .unwrap();
    let slot = Arc::new(std::sync::Mutex::new(Some(channel)));
    let mut client = GreeterClient::new(PerCall(slot.clone()));
    // No endpoint yet: the call waits in the channel's queue.
    let call = tokio::spawn(async move {
        client
            .say_hello(HelloRequest::default())
            .await
            .map(|r| r.into_inner().server)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!call.is_finished());
    // The last handle goes; only the waiting call holds the channel now.
    drop(slot.lock().unwrap().take());
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.reset(vec![Endpoint::new(server[0].addr())]);
    assert_eq!(call.await.unwrap().expect("the call completes"), "s0");
}
