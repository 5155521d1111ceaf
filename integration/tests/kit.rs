//! Tests of the test kit itself: the greeter server, its kill/stop/restart, the L4 proxy and
//! the load runner, all through plain tonic channels (no meshless).

use std::time::{Duration, Instant};

use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::greeter::{HelloReply, HelloRequest};
use meshless_integration::{ProxyHandle, TestServer, load};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Bound on any single wait in these tests; loopback answers in well under a millisecond.
const STEP: Duration = Duration::from_secs(5);

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn stream_request(name: &str, count: u32, interval_ms: u32) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        count,
        interval_ms,
    }
}

async fn client(uri: String) -> GreeterClient<Channel> {
    let channel = Endpoint::from_shared(uri)
        .expect("valid uri")
        .connect_timeout(STEP)
        .timeout(STEP)
        .connect()
        .await
        .expect("connect to loopback server");
    GreeterClient::new(channel)
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

#[tokio::test]
async fn serves_every_rpc_kind_and_health() {
    let server = TestServer::new("alpha").spawn().expect("spawn");
    let mut greeter = client(server.uri()).await;

    let reply = greeter
        .say_hello(hello("ann"))
        .await
        .expect("unary")
        .into_inner();
    assert_eq!(
        reply,
        HelloReply {
            message: "Hello ann".into(),
            server: "alpha".into()
        }
    );

    let replies: Vec<HelloReply> = greeter
        .stream_replies(stream_request("bo", 3, 1))
        .await
        .expect("server streaming")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("stream ends cleanly");
    let messages: Vec<&str> = replies.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["Hello bo #0", "Hello bo #1", "Hello bo #2"]);

    let requests = tokio_stream::iter([hello("a"), hello("b"), hello("c")]);
    let reply = greeter
        .collect_hellos(requests)
        .await
        .expect("client streaming")
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.server.as_str()),
        ("3", "alpha")
    );

    let requests = tokio_stream::iter([hello("x"), hello("y")]);
    let replies: Vec<String> = greeter
        .chat(requests)
        .await
        .expect("bidi")
        .into_inner()
        .map(|r| r.expect("bidi reply").message)
        .collect()
        .await;
    assert_eq!(replies, ["Hello x", "Hello y"]);

    let mut health = HealthClient::new(Channel::from_shared(server.uri()).unwrap().connect_lazy());
    for service in ["", "greeter.v1.Greeter"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }

    assert_eq!(server.calls(), 4, "health checks are not counted");
    assert_eq!(server.in_flight(), 0);
}

#[tokio::test]
async fn kill_closes_established_connections() {
    let mut server = TestServer::new("k").spawn().expect("spawn");

    // A raw HTTP/2 connection the server has accepted: it answers our preface with SETTINGS.
    let mut raw = TcpStream::connect(server.addr()).await.expect("connect");
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("send preface");
    let mut buf = [0u8; 1024];
    let n = bounded("server SETTINGS", raw.read(&mut buf))
        .await
        .expect("read");
    assert!(
        n >= 9 && buf[3] == 0x4,
        "expected a SETTINGS frame, got {:?}",
        &buf[..n]
    );
    // Left alone, the server keeps the idle connection open: after its handshake frames (a
    // SETTINGS ACK may follow the SETTINGS), the connection goes quiet but does not close.
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_millis(200), raw.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(n)) if n > 0 => continue,
            Ok(other) => {
                panic!("an idle connection must stay open while the server runs: {other:?}")
            }
        }
    }

    // And a tonic call in flight on another connection.
    let mut greeter = client(server.uri()).await;
    let mut stream = greeter
        .stream_replies(stream_request("long", 1000, 20))
        .await
        .expect("start stream")
        .into_inner();
    bounded("first reply", stream.message())
        .await
        .expect("first reply");

    let killed_at = Instant::now();
    server.kill();
    assert!(!server.is_running());

    // The raw connection sees EOF or a reset, promptly.
    loop {
        match bounded("raw connection close", raw.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => continue, // a GOAWAY would be fine too, but the socket must close after it
        }
    }
    // The in-flight stream fails instead of finishing its 1000 replies.
    let failed = loop {
        match bounded("in-flight stream failure", stream.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended cleanly after kill"),
            Err(status) => break status,
        }
    };
    assert!(
        killed_at.elapsed() < STEP,
        "kill took {:?}",
        killed_at.elapsed()
    );
    assert_ne!(failed.code(), Code::Ok);

    // A new call finds nobody listening.
    let status = greeter
        .say_hello(hello("after"))
        .await
        .expect_err("server is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        TcpStream::connect(server.addr()).await.is_err(),
        "listener is closed"
    );

    // Restart on the same port: the same tonic channel reconnects and is served again.
    let addr = server.addr();
    server.restart().expect("restart");
    assert_eq!(server.addr(), addr);
    assert!(server.is_running());
    let deadline = Instant::now() + STEP;
    let reply = loop {
        match greeter.say_hello(hello("back")).await {
            Ok(reply) => break reply.into_inner(),
            Err(status) if Instant::now() < deadline => {
                let _ = status;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("restarted server not reachable: {status:?}"),
        }
    };
    assert_eq!(reply.server, "k");
}

#[tokio::test]
async fn stop_graceful_lets_in_flight_stream_finish() {
    let mut server = TestServer::new("g").spawn().expect("spawn");
    let mut greeter = client(server.uri()).await;
    let mut stream = greeter
        .stream_replies(stream_request("slow", 5, 100))
        .await
        .expect("start stream")
        .into_inner();
    let first = bounded("first reply", stream.message())
        .await
        .expect("first reply")
        .expect("some");
    assert_eq!(first.message, "Hello slow #0");
    assert_eq!(server.in_flight(), 1);

    let started = Instant::now();
    let rest = async {
        let mut messages = Vec::new();
        while let Some(reply) = stream.message().await.expect("in-flight stream completes") {
            messages.push(reply.message);
        }
        messages
    };
    let ((), rest) = bounded("graceful stop", async {
        tokio::join!(server.stop_graceful(), rest)
    })
    .await;
    assert_eq!(
        rest,
        [
            "Hello slow #1",
            "Hello slow #2",
            "Hello slow #3",
            "Hello slow #4"
        ]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "stop_graceful returned before the stream's remaining 400 ms: {:?}",
        started.elapsed()
    );
    assert!(!server.is_running());
    assert!(
        TcpStream::connect(server.addr()).await.is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn dropping_the_handle_kills_the_server() {
    let server = TestServer::new("d").spawn().expect("spawn");
    let addr = server.addr();
    let mut greeter = client(server.uri()).await;
    greeter.say_hello(hello("x")).await.expect("served");
    drop(server);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed"
    );
    assert!(greeter.say_hello(hello("y")).await.is_err());
}

#[tokio::test]
async fn failure_mode_hook_and_latency() {
    // Long enough that an instant failure can't be mistaken for a delayed one on a busy machine.
    const LATENCY: Duration = Duration::from_secs(1);
    let server = TestServer::new("f")
        .fail_with(Code::ResourceExhausted)
        .on_call(|info| async move {
            if info.name == "reject" {
                Err(tonic::Status::permission_denied("hook said no"))
            } else {
                Ok(())
            }
        })
        .latency(LATENCY)
        .spawn()
        .expect("spawn");
    let mut greeter = client(server.uri()).await;

    let started = Instant::now();
    let status = greeter.say_hello(hello("x")).await.expect_err("fails");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < LATENCY, "failure is instant");

    server.set_fail(None);
    let status = greeter
        .say_hello(hello("reject"))
        .await
        .expect_err("hook rejects");
    assert_eq!(status.code(), Code::PermissionDenied);

    let started = Instant::now();
    greeter.say_hello(hello("ok")).await.expect("served");
    assert!(started.elapsed() >= LATENCY, "latency is added");
    assert_eq!(server.calls(), 3);
}

#[tokio::test]
async fn uniform_latency_stays_below_max() {
    const MAX: Duration = Duration::from_millis(20);
    let server = TestServer::new("u")
        .uniform_latency(MAX, 7)
        .spawn()
        .expect("spawn");
    let greeter = client(server.uri()).await;
    let outcome = load::run(4, 40, |_| {
        let mut greeter = greeter.clone();
        async move {
            greeter
                .say_hello(hello("u"))
                .await
                .map(|r| r.into_inner().server)
        }
    })
    .await;
    assert_eq!(outcome.ok(), 40);
    let summary = outcome.latencies.summary();
    // A measured latency is the draw plus the loopback overhead, which a loaded machine can
    // stretch without bound, so the cap is checked only for a gross excess: a distribution
    // that ignores `max` or slips a unit draws seconds among 40 calls.
    assert!(summary.max < MAX + STEP, "{summary:?}");
    // Timers never fire early, so this lower bound holds however loaded the machine is.
    assert!(
        summary.p90 > Duration::from_millis(5),
        "latencies are spread: {summary:?}"
    );
}

#[tokio::test]
async fn proxy_pins_a_plain_channel_to_one_backend() {
    let servers: Vec<_> = ["p0", "p1", "p2"]
        .into_iter()
        .map(|name| TestServer::new(name).spawn().expect("spawn"))
        .collect();
    let proxy = ProxyHandle::spawn(servers.iter().map(|s| s.addr()).collect(), 42)
        .await
        .expect("proxy");
    let greeter = client(proxy.uri()).await;

    let outcome = load::run(8, 200, |i| {
        let mut greeter = greeter.clone();
        async move {
            greeter
                .say_hello(hello(&format!("call {i}")))
                .await
                .map(|r| r.into_inner().server)
        }
    })
    .await;
    assert_eq!(outcome.ok(), 200, "{outcome:?}");
    assert_eq!(
        outcome.backends.len(),
        1,
        "one connection, one backend: {:?}",
        outcome.backends
    );
    assert_eq!(proxy.connections().iter().sum::<u64>(), 1);
    let (pinned, _) = outcome.backends.iter().next().expect("one backend");
    let pinned = servers
        .iter()
        .find(|s| s.name() == pinned)
        .expect("known server");
    assert_eq!(pinned.calls(), 200);
}

#[tokio::test]
async fn proxy_sends_new_connections_to_an_added_backend_and_keeps_old_ones() {
    let old = TestServer::new("old").spawn().expect("spawn");
    let added = TestServer::new("added").spawn().expect("spawn");
    let proxy = ProxyHandle::spawn(vec![old.addr()], 42)
        .await
        .expect("proxy");
    let mut pinned = client(proxy.uri()).await;
    let reply = bounded("call before the add", pinned.say_hello(hello("x")))
        .await
        .expect("call");
    assert_eq!(reply.into_inner().server, "old");

    proxy.add_backend(added.addr());
    assert_eq!(proxy.backends(), [old.addr(), added.addr()]);

    // New connections pick between both backends: within a few, one lands on the added one
    // (each has an even chance; the seed makes the count the same every run).
    let mut fresh = Vec::new();
    while added.calls() == 0 {
        assert!(
            fresh.len() < 64,
            "no new connection reached the added backend"
        );
        let mut greeter = client(proxy.uri()).await;
        bounded("call on a new connection", greeter.say_hello(hello("y")))
            .await
            .expect("call");
        fresh.push(greeter);
    }
    let connections = proxy.connections();
    assert_eq!(connections.iter().sum::<u64>(), 1 + fresh.len() as u64);
    assert_eq!(connections[1], added.calls());

    // The connection opened before the add stays on its backend.
    let before = old.calls();
    for _ in 0..20 {
        let reply = bounded("call on the old connection", pinned.say_hello(hello("z")))
            .await
            .expect("call");
        assert_eq!(reply.into_inner().server, "old");
    }
    assert_eq!(old.calls(), before + 20);
}

#[tokio::test]
async fn load_run_counts_errors_and_honours_its_timeout() {
    let failing = TestServer::new("bad")
        .fail_with(Code::Unavailable)
        .spawn()
        .expect("spawn");
    let greeter = client(failing.uri()).await;
    let outcome = load::run(4, 20, |_| {
        let mut greeter = greeter.clone();
        async move {
            greeter
                .say_hello(hello("x"))
                .await
                .map(|r| r.into_inner().server)
        }
    })
    .await;
    assert_eq!(outcome.ok(), 0);
    assert_eq!(outcome.errors.get("Unavailable"), Some(&20));

    let slow = TestServer::new("slow")
        .latency(Duration::from_secs(30))
        .spawn()
        .expect("spawn");
    let greeter = client(slow.uri()).await;
    let started = Instant::now();
    let outcome = load::run_with_timeout(2, 6, Duration::from_millis(200), |_| {
        let mut greeter = greeter.clone();
        async move {
            greeter
                .say_hello(hello("x"))
                .await
                .map(|r| r.into_inner().server)
        }
    })
    .await;
    assert!(started.elapsed() < STEP);
    assert_eq!(
        (outcome.ok(), outcome.failed(), outcome.unfinished),
        (0, 0, 6)
    );
}

#[tokio::test]
async fn a_taken_port_is_an_error_not_a_panic_inside_a_runtime() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = TestServer::new("late")
        .bind(addr)
        .spawn()
        .expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}
