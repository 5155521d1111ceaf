//! Client health checking (gRPC A17) against real servers: tonic's health service on the
//! test servers, and raw HTTP/2 servers that answer Watch as a test needs.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use meshless::{Address, Channel, ConnectivityState};
use meshless_integration::greeter::greeter_client::GreeterClient;
use tokio::time::Instant;
use tonic::Code;
use tonic_health::ServingStatus;

const GREETER: &str = "greeter.v1.Greeter";

fn state_of(channel: &Channel, addr: SocketAddr) -> Option<ConnectivityState> {
    Some(channel.status().endpoint(&Address::Tcp(addr))?.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_leaves_the_picker_and_serving_brings_it_back() {
    let servers = servers(2);
    let channel = Channel::builder(static_target(&servers))
        .policy("round_robin")
        .health_check(GREETER)
        .build()
        .unwrap();
    wait_ready(&channel, 2).await;
    // Both Watch streams are open now, and they are no load for the policy.
    let st = channel.status();
    assert!(
        st.endpoints
            .iter()
            .all(|e| e.in_flight == 0 && e.successes == 0),
        "{st:?}"
    );
    servers[0]
        .set_health(GREETER, ServingStatus::NotServing)
        .await;
    wait_until("s0 leaves ready", || {
        state_of(&channel, servers[0].addr()) == Some(ConnectivityState::TransientFailure)
    })
    .await;
    let st = channel.status();
    let row = st.endpoint(&Address::Tcp(servers[0].addr())).unwrap();
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("NOT_SERVING"),
        "{row:?}"
    );
    let mut client = GreeterClient::new(channel.clone());
    let before = servers[0].calls();
    for _ in 0..100 {
        assert_eq!(hello(&mut client).await.unwrap(), "s1");
    }
    assert_eq!(servers[0].calls(), before);
    // The connection stayed: SERVING brings it back without reconnecting.
    let connections = servers[0].connections();
    servers[0].set_health(GREETER, ServingStatus::Serving).await;
    wait_ready(&channel, 2).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(hello(&mut client).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(servers[0].connections(), connections, "no new connection");
}

/// An endpoint is not ready until its first SERVING: while its service reports NOT_SERVING
/// calls fail and say why, and the first SERVING makes it ready. A service the server does
/// not know (tonic's health service answers NOT_FOUND) never becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_serving() {
    let servers = servers(1);
    servers[0]
        .set_health("svc.X", ServingStatus::NotServing)
        .await;
    let channel = Channel::builder(static_target(&servers))
        .health_check("svc.X")
        .queue_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    wait_until("the health answer arrives", || {
        state_of(&channel, servers[0].addr()) == Some(ConnectivityState::TransientFailure)
    })
    .await;
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("NOT_SERVING"), "{err}");
    assert_eq!(servers[0].calls(), 0);
    servers[0].set_health("svc.X", ServingStatus::Serving).await;
    wait_ready(&channel, 1).await;
    assert_eq!(hello(&mut client).await.unwrap(), "s0");

    let channel = Channel::builder(static_target(&servers))
        .health_check("no.such.Service")
        .queue_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    wait_until("the health check fails", || {
        channel.status().endpoints.first().is_some_and(|r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("health check") && e.contains("no.such.Service"))
        })
    })
    .await;
    let before = servers[0].calls();
    assert_eq!(
        hello(&mut client).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(servers[0].calls(), before);
}

/// How a raw HTTP/2 server answers each Watch call.
#[derive(Clone, Copy)]
enum Answer {
    /// Trailers-Only with this grpc-status.
    Status(u8),
    /// One SERVING message, then an UNAVAILABLE trailer.
    ServingThenFail,
}

/// A raw HTTP/2 server that answers every stream as `answer` says and records when each
/// Watch call arrived.
async fn watch_server(answer: Answer) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if req.uri().path() == "/grpc.health.v1.Health/Watch" {
                        record.lock().unwrap().push(Instant::now());
                    }
                    let headers = |status: Option<u8>| {
                        let mut b = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc");
                        if let Some(s) = status {
                            b = b.header("grpc-status", s.to_string());
                        }
                        b.body(()).unwrap()
                    };
                    match answer {
                        Answer::Status(code) => {
                            let _ = respond.send_response(headers(Some(code)), true);
                        }
                        Answer::ServingThenFail => {
                            let Ok(mut stream) = respond.send_response(headers(None), false) else {
                                continue;
                            };
                            // HealthCheckResponse { status: SERVING }, gRPC-framed.
                            let msg = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
                            let _ = stream.send_data(msg, false);
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "14".parse().unwrap());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let _ = stream.send_trailers(trailers);
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A server without the health service: healthy, one Watch call per connection, never
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_counts_as_healthy_and_is_asked_once() {
    let (addr, seen) = watch_server(Answer::Status(12)).await;
    let channel = Channel::builder(format!("static:///{addr}"))
        .health_check("")
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    // Ready means picked: the greeter call reaches the server (which answers it
    // UNIMPLEMENTED too).
    let mut client = GreeterClient::new(channel.clone());
    assert_eq!(
        hello(&mut client).await.unwrap_err().code(),
        Code::Unimplemented
    );
    // The fast backoff would have retried several times by now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(state_of(&channel, addr), Some(ConnectivityState::Ready));
}

/// A failing Watch is retried with the channel's backoff, which grows; a message resets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_is_retried_with_backoff_that_a_message_resets() {
    let (addr, seen) = watch_server(Answer::Status(14)).await;
    let base = Duration::from_millis(150);
    let channel = Channel::builder(format!("static:///{addr}"))
        .health_check("")
        .backoff(
            meshless::BackoffConfig::default()
                .base_delay(base)
                .multiplier(2.0)
                .max_delay(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    wait_until("four Watch calls", || seen.lock().unwrap().len() >= 4).await;
    let times = seen.lock().unwrap().clone();
    for (n, w) in times.windows(2).enumerate().take(3) {
        // The n-th retry waits base · 2^n, less 20 % jitter at most.
        let least = base.mul_f64(2f64.powi(n as i32) * 0.8);
        assert!(
            w[1] - w[0] >= least,
            "retry {}: {:?} < {least:?}",
            n + 1,
            w[1] - w[0]
        );
    }
    assert_ne!(state_of(&channel, addr), Some(ConnectivityState::Ready));
    drop(channel);

    // One SERVING message between failures: every retry comes at once, never after the
    // 2.4 s (3 s less jitter) a backoff would wait.
    let (addr, seen) = watch_server(Answer::ServingThenFail).await;
    let channel = Channel::builder(format!("static:///{addr}"))
        .health_check("")
        .backoff(meshless::BackoffConfig::default().base_delay(Duration::from_secs(3)))
        .build()
        .unwrap();
    wait_until("four Watch calls", || seen.lock().unwrap().len() >= 4).await;
    let times = seen.lock().unwrap().clone();
    for w in times.windows(2).take(3) {
        assert!(
            w[1] - w[0] < Duration::from_millis(2400),
            "{:?}",
            w[1] - w[0]
        );
    }
    drop(channel);
}
