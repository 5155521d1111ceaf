//! What the channel tells its balancer and what it sends: latency at the response headers,
//! deadlines as failures, the default `:authority`, server stream limits, large trailers,
//! lazy connecting, policies per channel, readiness, and panicking components.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use futures_util::{FutureExt, StreamExt};
use meshless::Channel;
use meshless::balancer::{
    Balancer, ConnectivityState, P2cEwmaConfig, Picker, Policy, PolicyRegistry, SubchannelView,
};
use meshless::discovery::{Address, Discovery, Endpoint, ManualDiscovery, UpdateStream};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::greeter::{HelloReply, HelloRequest};
use prost::Message;
use tonic::Code;

// ===== a raw HTTP/2 gRPC server =====

/// How a [`raw_server`] answers.
#[derive(Clone, Default)]
struct Raw {
    /// Its name in every reply.
    name: &'static str,
    /// SETTINGS_MAX_CONCURRENT_STREAMS it announces.
    max_streams: Option<u32>,
    /// How long each call takes.
    delay: Duration,
    /// Fail every call with INTERNAL and `grpc-status-details-bin` of this many bytes (a
    /// multiple of 3, so that its base64 needs no padding).
    details: Option<usize>,
    /// Fail every call with INTERNAL and a `grpc-status-details-bin` that is not base64.
    bad_details: bool,
}

/// What a [`raw_server`] saw.
#[derive(Default)]
struct Seen {
    authorities: Mutex<Vec<String>>,
    connections: AtomicUsize,
    calls: AtomicU64,
}

/// A gRPC server written on h2 directly, so that a test controls what tonic's server does
/// not let it: the SETTINGS it announces, the `:authority` it receives, huge trailers.
/// Answers any unary call with a `HelloReply` naming `raw.name`.
async fn raw_server(raw: Raw) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let (seen, raw) = (seen.clone(), raw.clone());
            tokio::spawn(async move {
                let mut b = h2::server::Builder::new();
                if let Some(n) = raw.max_streams {
                    b.max_concurrent_streams(n);
                }
                let Ok(mut conn) = b.handshake::<_, Bytes>(sock).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let (seen, raw) = (seen.clone(), raw.clone());
                    tokio::spawn(answer(req, respond, seen, raw));
                }
            });
        }
    });
    (addr, out)
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: Arc<Seen>,
    raw: Raw,
) {
    let authority = req.uri().authority().map(|a| a.to_string());
    seen.authorities
        .lock()
        .unwrap()
        .push(authority.unwrap_or_default());
    seen.calls.fetch_add(1, Ordering::SeqCst);
    let mut body = req.into_body();
    while let Some(Ok(_)) = body.data().await {}
    tokio::time::sleep(raw.delay).await;
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let mut trailers = http::HeaderMap::new();
    if let Some(n) = raw.details.or(raw.bad_details.then_some(3)) {
        // "AAAA" is base64 for three zero bytes; "A" alone is not base64 at all.
        let details = if raw.bad_details {
            "A".to_owned()
        } else {
            "A".repeat(n / 3 * 4)
        };
        trailers.insert("grpc-status", "13".parse().unwrap());
        trailers.insert("grpc-message", "rich error".parse().unwrap());
        trailers.insert("grpc-status-details-bin", details.parse().unwrap());
    } else {
        let reply = HelloReply {
            message: "hi".into(),
            server: raw.name.into(),
        }
        .encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + reply.len());
        frame.put_u8(0);
        frame.put_u32(reply.len() as u32);
        frame.put_slice(&reply);
        let _ = send.send_data(frame.freeze(), false);
        trailers.insert("grpc-status", "0".parse().unwrap());
    }
    let _ = send.send_trailers(trailers);
}

// ===== load signals =====

/// `requests` unary calls at concurrency 8; how many each of `servers` answered.
async fn unary_load(
    client: &GreeterClient<Channel>,
    servers: &[meshless_integration::server::ServerHandle],
    requests: usize,
) -> Vec<u64> {
    let before: Vec<u64> = servers.iter().map(|s| s.calls()).collect();
    let out = meshless_integration::load::run(8, requests, {
        let client = client.clone();
        move |_| {
            let mut c = client.clone();
            async move { hello(&mut c).await }
        }
    })
    .await;
    assert_eq!(out.failed(), 0, "{:?}", out.errors);
    servers
        .iter()
        .zip(before)
        .map(|(s, b)| s.calls() - b)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_stream_does_not_keep_unary_calls_off_its_endpoint() {
    // Every answer takes 2 ms, so a loaded machine's scheduling noise (a fraction of that)
    // does not decide the comparisons.
    let servers: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            meshless_integration::server::TestServer::new(*n)
                .latency(Duration::from_millis(2))
                .spawn()
                .unwrap()
        })
        .collect();
    let channel = Channel::builder(static_target(&servers))
        // Finagle's cost, latency × (in-flight + 1): the load term spreads equal endpoints
        // evenly, so the test sees the stream's effect rather than the latency noise of a
        // loaded machine, which the default cost follows more closely.
        .balancer(P2cEwmaConfig::default().load_scale(0).seed(11))
        .build()
        .unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    // Both endpoints answer many calls first, so both estimates are their own (a slow
    // first answer, such as a cold server thread's, fades only with time).
    unary_load(&client, &servers, 2000).await;
    let req = HelloRequest {
        name: "watch".into(),
        count: 1000,
        interval_ms: 100,
    };
    let mut stream = client.stream_replies(req).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    let holder = servers
        .iter()
        .position(|s| s.in_flight() == 1)
        .expect("one server holds the stream");
    // While the stream lives (and keeps its endpoint one call busier), 2,000 unary calls at
    // concurrency 8 are shared about evenly. Measured to the end of the stream, as before,
    // its endpoint had a pending age of seconds against answers of a millisecond, and got
    // almost none.
    let calls = unary_load(&client, &servers, 2000).await;
    let share = calls[holder] as f64 / calls.iter().sum::<u64>() as f64;
    assert!(
        (0.3..=0.7).contains(&share),
        "the stream's endpoint got {share:.2} of the unary calls: {calls:?}"
    );
    let st = channel.status();
    let ep = st.endpoint(&Address::from(servers[holder].addr())).unwrap();
    assert!(ep.in_flight >= 1, "{ep:?}");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_counts_against_the_endpoint_and_a_caller_drop_does_not() {
    // A server that holds every call for 2 s and ignores `grpc-timeout` (tonic's own server
    // would answer CANCELLED at the deadline, racing ours): a black hole, as far as a call
    // with a 100 ms deadline can tell.
    let (slow, _) = raw_server(Raw {
        name: "slow",
        delay: Duration::from_secs(2),
        ..Raw::default()
    })
    .await;
    let channel = Channel::builder(format!("static:///{slow}"))
        .build()
        .unwrap();
    channel.connect().await.unwrap();
    let addr = Address::from(slow);
    let mut client = GreeterClient::new(channel.clone());
    // Our deadline expires while the server holds the call: a failure of the endpoint.
    let mut req = tonic::Request::new(HelloRequest {
        name: "late".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(100));
    let err = client.say_hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    wait_until("the expired call ended", || {
        channel.status().endpoint(&addr).unwrap().in_flight == 0
    })
    .await;
    let ep = channel.status().endpoint(&addr).cloned().unwrap();
    assert_eq!((ep.failures, ep.successes), (1, 0), "{ep:?}");
    // The caller gives up on a call with no deadline: neither success nor failure.
    let call = client.say_hello(HelloRequest {
        name: "dropped".into(),
        ..Default::default()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
    );
    wait_until("the dropped call ended", || {
        channel.status().endpoint(&addr).unwrap().in_flight == 0
    })
    .await;
    let ep = channel.status().endpoint(&addr).cloned().unwrap();
    assert_eq!((ep.failures, ep.successes), (1, 0), "{ep:?}");
}

// ===== what is sent =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_authority_is_the_targets_host() {
    let (addr, seen) = raw_server(Raw {
        name: "raw",
        ..Raw::default()
    })
    .await;
    let port = addr.port();
    let cases: [(String, Option<&str>, String); 4] = [
        // One address: as written.
        (format!("static:///{addr}"), None, addr.to_string()),
        // A host name: the host as written, with its port.
        (
            format!("static:///localhost:{port}"),
            None,
            format!("localhost:{port}"),
        ),
        // A list: each endpoint's own address.
        (
            format!("ipv4:{addr},127.0.0.1:{port}"),
            None,
            addr.to_string(),
        ),
        // `.authority()` wins over everything.
        (
            format!("static:///localhost:{port}"),
            Some("greeter.prod:443"),
            "greeter.prod:443".to_owned(),
        ),
    ];
    for (target, forced, want) in cases {
        let mut b = Channel::builder(target.clone());
        if let Some(a) = forced {
            b = b.authority(a.parse().unwrap());
        }
        let channel = b.build().unwrap();
        let mut client = GreeterClient::new(channel);
        assert_eq!(hello(&mut client).await.unwrap(), "raw", "{target}");
        let got = seen.authorities.lock().unwrap().pop().unwrap();
        assert_eq!(got, want, "{target}");
    }
    // Discovery may give an endpoint an authority of its own.
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![
        Endpoint::new(addr).with_authority("pod-1.greeter:50051"),
    ]);
    let mut client = GreeterClient::new(channel);
    assert_eq!(hello(&mut client).await.unwrap(), "raw");
    let got = seen.authorities.lock().unwrap().pop().unwrap();
    assert_eq!(got, "pod-1.greeter:50051");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_with_16_kib_of_error_details_arrive_whole() {
    // 16 KiB + 2 bytes of details: 21,848 bytes of base64, over hyper's 16 KiB default.
    let size = 16 * 1024 + 2;
    let (addr, _) = raw_server(Raw {
        name: "rich",
        details: Some(size),
        ..Raw::default()
    })
    .await;
    let channel = Channel::builder(format!("static:///{addr}"))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel);
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert_eq!(err.message(), "rich error");
    assert_eq!(err.details().len(), size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_that_are_not_base64_do_not_panic_the_caller() {
    let (addr, _) = raw_server(Raw {
        name: "buggy",
        bad_details: true,
        ..Raw::default()
    })
    .await;
    let channel = Channel::builder(format!("static:///{addr}"))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel);
    // tonic would panic decoding these details; the channel drops them and the status
    // arrives.
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert_eq!(err.message(), "rich error");
    assert!(err.details().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_at_its_stream_limit_is_busy_for_the_picker() {
    // s0 allows one stream at a time and takes 1 s; s1 is fast.
    let (s0, seen0) = raw_server(Raw {
        name: "s0",
        max_streams: Some(1),
        delay: Duration::from_secs(1),
        ..Raw::default()
    })
    .await;
    let (s1, _) = raw_server(Raw {
        name: "s1",
        ..Raw::default()
    })
    .await;
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![Endpoint::new(s0)]);
    channel.connect().await.unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let slow = tokio::spawn({
        let mut c = client.clone();
        async move { hello(&mut c).await }
    });
    wait_until("s0 holds its one stream", || {
        seen0.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    handle.reset(vec![Endpoint::new(s0), Endpoint::new(s1)]);
    wait_ready(&channel, 2).await;
    // Round robin would send every other call to s0, where it would queue behind the slow
    // call inside the HTTP/2 client; s0 is busy, so they all go to s1.
    for _ in 0..20 {
        assert_eq!(hello(&mut client).await.unwrap(), "s1");
    }
    assert_eq!(seen0.calls.load(Ordering::SeqCst), 1);
    assert_eq!(slow.await.unwrap().unwrap(), "s0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_every_stream_limit_wait_boundedly() {
    let (s0, seen) = raw_server(Raw {
        name: "s0",
        max_streams: Some(1),
        delay: Duration::from_millis(300),
        ..Raw::default()
    })
    .await;
    let (d, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("limited", Arc::new(d))
        .queue_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    handle.reset(vec![Endpoint::new(s0)]);
    channel.connect().await.unwrap();
    let client = GreeterClient::new(channel);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { hello(&mut c).await })
        })
        .collect();
    let mut ok = 0;
    let mut waited = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e}");
                assert!(e.message().contains("concurrent streams"), "{e}");
                waited += 1;
            }
        }
    }
    // One runs; the others wait for its stream up to the 100 ms bound, not behind it.
    assert_eq!((ok, waited), (1, 2));
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
}

// ===== connecting =====

/// A TCP listener that accepts and never says anything: a connect attempt to it hangs
/// until the connect timeout.
async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_first_tries_the_next_endpoint_when_the_first_hangs() {
    let (hanging, _task) = silent_server().await;
    let good = servers(1);
    let channel = Channel::builder(format!("static:///{hanging},{}", good[0].addr()))
        .policy("pick_first")
        .connect_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Without the next attempt after 250 ms, nothing would be ready for a minute.
    let mut client = GreeterClient::new(channel.clone());
    let mut req = tonic::Request::new(HelloRequest::default());
    req.set_timeout(Duration::from_secs(10));
    assert_eq!(
        client.say_hello(req).await.unwrap().into_inner().server,
        "s0"
    );
    let st = channel.status();
    assert_eq!(st.endpoints[0].state, ConnectivityState::Idle, "{st:?}");
    assert_eq!(st.endpoints[1].state, ConnectivityState::Ready, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_channel_lets_its_connections_go_and_the_next_call_reopens_them() {
    let (addr, seen) = raw_server(Raw {
        name: "raw",
        ..Raw::default()
    })
    .await;
    let channel = Channel::builder(format!("static:///{addr}"))
        .idle_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    assert_eq!(hello(&mut client).await.unwrap(), "raw");
    let mut state = channel.state_watch();
    wait_until("the channel went idle", || {
        *state.borrow_and_update() == ConnectivityState::Idle
    })
    .await;
    wait_until("the connection closed", || {
        channel.status().endpoints[0].state == ConnectivityState::Idle
    })
    .await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(hello(&mut client).await.unwrap(), "raw");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_readiness_or_reports_the_error() {
    let good = servers(1);
    let channel = Channel::builder(static_target(&good)).build().unwrap();
    let mut state = channel.state_watch();
    channel.connect().await.unwrap();
    assert_eq!(*state.borrow_and_update(), ConnectivityState::Ready);
    // Every endpoint refusing: the error a call would get, at once.
    let channel = Channel::builder(format!("static:///{}", dead_addr()))
        .build()
        .unwrap();
    let err = channel.connect().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("unreachable"), "{err}");
    assert_eq!(
        *channel.state_watch().borrow(),
        ConnectivityState::TransientFailure
    );
    // Discovery failing before its first set: its error.
    let (d, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("failing", Arc::new(d))
        .build()
        .unwrap();
    handle.fail(meshless::discovery::DiscoveryError::new(
        meshless::discovery::ErrorKind::Forbidden,
        "403: cannot list endpointslices",
    ));
    let err = channel.connect().await.unwrap_err();
    assert!(err.message().contains("403"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_report_each_new_fact_without_polling() {
    // One good endpoint and one that refuses: with round_robin both are dialled, and the
    // refusal shows as a status change even though the picker (good one ready) stays.
    let good = servers(1);
    let dead = dead_addr();
    let (d, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("changes", Arc::new(d))
        .policy("round_robin")
        .build()
        .unwrap();
    let mut changes = channel.status_changes();
    changes.borrow_and_update();
    handle.reset(vec![
        meshless::discovery::Endpoint::new(good[0].addr()),
        meshless::discovery::Endpoint::new(dead),
    ]);
    let settled = |st: &meshless::ChannelStatus| {
        st.endpoints.len() == 2
            && st.endpoint(&Address::from(good[0].addr())).unwrap().state
                == ConnectivityState::Ready
            && st
                .endpoint(&Address::from(dead))
                .unwrap()
                .last_error
                .is_some()
    };
    let mut seen = 0;
    while !settled(&channel.status()) {
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("a status change within the bound")
            .unwrap();
        changes.borrow_and_update();
        seen += 1;
    }
    // Reached by waiting on changes alone. How many there were depends on how the control
    // task batched the set and the connection events (a watch coalesces too), so only
    // "at least one" is certain.
    assert!(seen >= 1, "{seen}");
    // Discovery's error is news too, the endpoints staying as they were.
    handle.fail(meshless::discovery::DiscoveryError::new(
        meshless::discovery::ErrorKind::Unavailable,
        "api server down",
    ));
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the discovery error is a change")
        .unwrap();
    let st = channel.status();
    assert!(st.discovery_error.unwrap().contains("api server down"));
    assert_eq!(st.endpoints.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn which_codes_count_against_an_endpoint_is_configurable() {
    let server = meshless_integration::server::TestServer::new("not-found")
        .fail_with(Code::NotFound)
        .spawn()
        .unwrap();
    let target = format!("static:///{}", server.addr());
    let failures_after_three = |codes: Option<meshless::FailureCodes>| {
        let target = target.clone();
        async move {
            let mut b = Channel::builder(target);
            if let Some(codes) = codes {
                b = b.failure_codes(codes);
            }
            let channel = b.build().unwrap();
            let mut client = GreeterClient::new(channel.clone());
            for _ in 0..3 {
                let err = hello(&mut client).await.unwrap_err();
                assert_eq!(err.code(), Code::NotFound);
            }
            let st = channel.status();
            (st.endpoints[0].successes, st.endpoints[0].failures)
        }
    };
    // NOT_FOUND is the application's answer: by default it says nothing against the server.
    assert_eq!(failures_after_three(None).await, (3, 0));
    let codes = meshless::FailureCodes::DEFAULT.with(Code::NotFound);
    assert_eq!(failures_after_three(Some(codes)).await, (0, 3));
}

// ===== policies per channel =====

/// A policy that counts the balancers it made and the pickers they built.
struct Counting {
    balancers: Arc<AtomicUsize>,
    builds: Arc<Mutex<HashMap<usize, usize>>>,
}

struct CountingBalancer {
    id: usize,
    builds: Arc<Mutex<HashMap<usize, usize>>>,
}

impl Policy for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn new_balancer(&self) -> Box<dyn Balancer> {
        let id = self.balancers.fetch_add(1, Ordering::SeqCst);
        Box::new(CountingBalancer {
            id,
            builds: self.builds.clone(),
        })
    }
}

impl Balancer for CountingBalancer {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        *self.builds.lock().unwrap().entry(self.id).or_default() += 1;
        Balancer::build(&meshless::balancer::RoundRobin, subchannels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_gets_a_balancer_of_its_own_and_custom_policies_go_by_name() {
    let servers = servers(1);
    let counting = Counting {
        balancers: Arc::new(AtomicUsize::new(0)),
        builds: Arc::new(Mutex::new(HashMap::new())),
    };
    let (made, builds) = (counting.balancers.clone(), counting.builds.clone());
    let mut policies = PolicyRegistry::default();
    policies.register("counting", Arc::new(counting) as Arc<dyn Policy>);
    let channels: Vec<Channel> = (0..2)
        .map(|_| {
            Channel::builder(static_target(&servers))
                .policies(policies.clone())
                .policy("Counting")
                .build()
                .unwrap()
        })
        .collect();
    for ch in &channels {
        ch.connect().await.unwrap();
        assert_eq!(ch.status().policy, "counting");
    }
    assert_eq!(made.load(Ordering::SeqCst), 2);
    let builds = builds.lock().unwrap().clone();
    assert_eq!(builds.len(), 2, "{builds:?}");
    // An unknown name lists what the registry knows.
    let err = Channel::builder(static_target(&servers))
        .policies(policies)
        .policy("fastest")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("counting, least_request"), "{err}");
}

// ===== panics =====

struct Panicking;

impl Policy for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn new_balancer(&self) -> Box<dyn Balancer> {
        Box::new(Panicking)
    }
}

impl Balancer for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn build(&self, _: &[SubchannelView]) -> Arc<dyn Picker> {
        panic!("picker table overflow")
    }
}

/// A discovery whose stream panics when polled.
struct PanickingDiscovery;

impl Discovery for PanickingDiscovery {
    fn watch(&self) -> UpdateStream {
        Box::pin(futures_util::stream::poll_fn(|_| {
            panic!("watch decoder bug")
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_policy_or_discovery_fails_calls_at_once_naming_it() {
    let servers = servers(1);
    let channel = Channel::builder(static_target(&servers))
        .balancer(Arc::new(Panicking) as Arc<dyn Policy>)
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let err = tokio::time::timeout(Duration::from_secs(5), hello(&mut client))
        .await
        .expect("fails at once, does not wait for readiness")
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.message().contains("`panicking`"), "{err}");
    assert!(err.message().contains("picker table overflow"), "{err}");
    wait_until("status names the panic", || {
        channel
            .status()
            .panicked
            .is_some_and(|p| p.contains("picker table overflow"))
    })
    .await;

    let channel = Channel::with_discovery("broken", Arc::new(PanickingDiscovery))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let err = tokio::time::timeout(Duration::from_secs(5), hello(&mut client))
        .await
        .expect("fails at once")
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    assert!(err.message().contains("discovery"), "{err}");
    assert!(err.message().contains("watch decoder bug"), "{err}");
}

/// A policy whose balancer panics in the method it is named for.
struct PanicsIn(&'static str);

impl Policy for PanicsIn {
    fn name(&self) -> &'static str {
        "panics_in"
    }
    fn new_balancer(&self) -> Box<dyn Balancer> {
        Box::new(PanicsIn(self.0))
    }
}

impl Balancer for PanicsIn {
    fn name(&self) -> &'static str {
        "panics_in"
    }
    fn build(&self, _: &[SubchannelView]) -> Arc<dyn Picker> {
        panic!("build bug")
    }
    fn new_stats(&self) -> meshless::balancer::EndpointStats {
        if self.0 == "new_stats" {
            panic!("new_stats bug");
        }
        meshless::balancer::EndpointStats::default()
    }
    fn connect_mode(&self) -> meshless::balancer::ConnectMode {
        if self.0 == "connect_mode" {
            panic!("connect_mode bug");
        }
        meshless::balancer::ConnectMode::All
    }
}

/// A discovery that panics in `watch()` itself, or in `resolve_now()` after handing out
/// endpoints.
struct DiscoveryPanicsIn {
    method: &'static str,
    endpoints: Vec<Endpoint>,
}

impl Discovery for DiscoveryPanicsIn {
    fn watch(&self) -> UpdateStream {
        if self.method == "watch" {
            panic!("watch() bug");
        }
        let set = meshless::discovery::Update::Reset(self.endpoints.clone());
        Box::pin(
            futures_util::stream::once(async move { Ok(set) })
                .chain(futures_util::stream::pending()),
        )
    }
    fn resolve_now(&self) {
        if self.method == "resolve_now" {
            panic!("resolve_now() bug");
        }
    }
}

/// Every method of a user's `Balancer` or `Discovery` that the control task calls is
/// guarded: a panic in any of them fails calls at once with a message naming the component
/// and the panic, and `status()` says so; nothing waits for a picker that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_any_method_of_a_policy_or_discovery_fails_calls_at_once() {
    async fn fails_naming(channel: Channel, component: &str, panic: &str) {
        let mut client = GreeterClient::new(channel.clone());
        let err = tokio::time::timeout(Duration::from_secs(5), hello(&mut client))
            .await
            .unwrap_or_else(|_| panic!("{panic}: the call waited instead of failing"))
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err}");
        assert!(err.message().contains(component), "{err}");
        assert!(err.message().contains(panic), "{err}");
        wait_until("status names the panic", || {
            channel.status().panicked.is_some_and(|p| p.contains(panic))
        })
        .await;
    }
    let servers = servers(1);
    for method in ["new_stats", "connect_mode"] {
        let channel = Channel::builder(static_target(&servers))
            .balancer(Arc::new(PanicsIn(method)) as Arc<dyn Policy>)
            .build()
            .unwrap();
        fails_naming(channel, "`panics_in`", &format!("{method} bug")).await;
    }
    let watch = DiscoveryPanicsIn {
        method: "watch",
        endpoints: Vec::new(),
    };
    let channel = Channel::with_discovery("broken", Arc::new(watch))
        .build()
        .unwrap();
    fails_naming(channel, "discovery", "watch() bug").await;
    // resolve_now is called when a connection attempt fails: give it a dead endpoint.
    let resolve = DiscoveryPanicsIn {
        method: "resolve_now",
        endpoints: vec![Endpoint::new(dead_addr())],
    };
    let channel = Channel::with_discovery("broken", Arc::new(resolve))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    fails_naming(channel, "discovery", "resolve_now() bug").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unavailable_message_names_the_most_recent_error() {
    // A backoff long enough that nothing retries during the test: each endpoint fails once.
    let (d, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("two-dead", Arc::new(d))
        .policy("round_robin")
        .backoff(meshless::BackoffConfig::default().base_delay(Duration::from_secs(60)))
        .build()
        .unwrap();
    let (a, b) = (dead_addr(), dead_addr());
    let failed = |addr: SocketAddr| {
        let channel = channel.clone();
        move || {
            channel
                .status()
                .endpoint(&Address::from(addr))
                .is_some_and(|e| e.last_error.is_some())
        }
    };
    // b fails first; then a, listed before it, fails later.
    handle.reset(vec![Endpoint::new(b)]);
    wait_until("b failed", failed(b)).await;
    handle.reset(vec![Endpoint::new(a), Endpoint::new(b)]);
    wait_until("a failed", failed(a)).await;
    let mut client = GreeterClient::new(channel.clone());
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains(&a.to_string()), "{err}");
    assert!(!err.message().contains(&b.to_string()), "{err}");
}

/// `watch_status` pushes each change as an event: endpoints added, their states, a removal,
/// discovery failing; and ends when the channel is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_status_pushes_changes_and_ends_with_the_channel() {
    use futures_util::StreamExt;
    use meshless::StatusEvent;
    let good = servers(1);
    let dead = dead_addr();
    let (d, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("events", Arc::new(d))
        .policy("round_robin")
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut events = Box::pin(channel.watch_status());
    let (ga, da) = (Address::from(good[0].addr()), Address::from(dead));
    handle.reset(vec![
        meshless::discovery::Endpoint::new(good[0].addr()),
        meshless::discovery::Endpoint::new(dead),
    ]);
    let mut seen = Vec::new();
    async fn next<S: futures_util::Stream + Unpin>(events: &mut S) -> Option<S::Item> {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within the bound")
    }
    // Until the good one is ready and the dead one has failed.
    while !(seen.contains(&StatusEvent::State { address: ga.clone(), state: ConnectivityState::Ready, error: None })
        && seen.iter().any(|e| matches!(e, StatusEvent::State { address, state: ConnectivityState::TransientFailure, error: Some(_) } if *address == da)))
    {
        seen.push(next(&mut events).await.expect("the stream goes on"));
    }
    assert!(seen.contains(&StatusEvent::Added(ga.clone())), "{seen:?}");
    assert!(seen.contains(&StatusEvent::Added(da.clone())), "{seen:?}");
    handle.reset(vec![meshless::discovery::Endpoint::new(good[0].addr())]);
    loop {
        if next(&mut events).await.expect("goes on") == StatusEvent::Removed(da.clone()) {
            break;
        }
    }
    handle.fail(meshless::discovery::DiscoveryError::new(
        meshless::discovery::ErrorKind::Unavailable,
        "api server down",
    ));
    loop {
        if let StatusEvent::DiscoveryFailed(e) = next(&mut events).await.expect("goes on") {
            assert!(e.contains("api server down"), "{e}");
            break;
        }
    }
    // Discovery answers again.
    handle.reset(vec![meshless::discovery::Endpoint::new(good[0].addr())]);
    loop {
        let e = next(&mut events).await.expect("goes on");
        assert!(!matches!(e, StatusEvent::DiscoveryFailed(_)), "{e:?}");
        if e == StatusEvent::DiscoveryRecovered {
            break;
        }
    }
    drop(channel);
    loop {
        if next(&mut events).await.is_none() {
            break;
        }
    }
}

/// Outlier detection's decisions reach `watch_status()`: the failing endpoint is ejected,
/// and returned once its ejection time is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_status_pushes_ejections_and_returns() {
    use meshless::StatusEvent;
    let fleet = servers(3);
    fleet[0].set_fail(Some(Code::Unavailable));
    let channel = Channel::builder(static_target(&fleet))
        .policy("round_robin")
        .outlier_detection(
            meshless::OutlierDetection::default()
                .interval(Duration::from_millis(50))
                .ejection_time(Duration::from_millis(300), Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    wait_ready(&channel, 3).await;
    let mut events = Box::pin(channel.watch_status());
    let bad = Address::from(fleet[0].addr());
    let mut client = GreeterClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    // Calls until the failing endpoint is ejected; the events say so.
    let mut seen = Vec::new();
    while !seen.contains(&StatusEvent::Ejected(bad.clone())) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ejected: {seen:?}"
        );
        let _ = hello(&mut client).await;
        while let Some(Some(e)) = events.next().now_or_never() {
            seen.push(e);
        }
    }
    fleet[0].set_fail(None);
    // No more calls: the ejection runs out and the endpoint comes back.
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("returned within the bound")
            .expect("the stream goes on");
        assert_ne!(e, StatusEvent::Ejected(bad.clone()));
        if e == StatusEvent::Returned(bad.clone()) {
            break;
        }
    }
}
