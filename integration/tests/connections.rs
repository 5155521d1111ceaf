//! Connection management against real tonic servers behind an HTTP/2 frame-aware proxy
//! (`meshless_integration::h2proxy`): a GOAWAY that refuses streams, keepalive pings that a
//! server polices, and a peer that stops answering while its TCP connection stays open.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshless::Channel;
use meshless::balancer::ConnectivityState;
use meshless::discovery::{Address, Endpoint, ManualDiscovery};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::h2proxy::{Behaviour, H2ProxyHandle};

/// Every call's own deadline, so that no call can hang a test.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Aborts a background task when the test ends, passing or not.
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One unary call with [`CALL_DEADLINE`]; the name of the server that answered.
async fn hello_bounded(client: &mut GreeterClient<Channel>) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(HelloRequest {
        name: "test".into(),
        ..Default::default()
    });
    req.set_timeout(CALL_DEADLINE);
    client.say_hello(req).await.map(|r| r.into_inner().server)
}

/// Waits until `cond` holds, up to `bound` (for waits longer than `wait_until`'s).
async fn wait_for(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + bound;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Keeps one server-streaming call open at all times (HTTP/2 keepalive pings only while a
/// call is open): the server sends one reply at once and the next a minute later, so the
/// connection is quiet in between; a call that ends (its connection closed) is reopened.
fn hold_a_stream_open(channel: &Channel) -> Background {
    let mut client = GreeterClient::new(channel.clone());
    Background(tokio::spawn(async move {
        loop {
            let mut req = tonic::Request::new(HelloRequest {
                name: "held".into(),
                count: 2,
                interval_ms: 60_000,
            });
            req.set_timeout(Duration::from_secs(120));
            if let Ok(resp) = client.stream_replies(req).await {
                let mut stream = resp.into_inner();
                while let Ok(Some(_)) = stream.message().await {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }))
}

/// A server that drains (GOAWAY, last-stream-id 0) while five calls arrive refuses all five;
/// each call must then say `drained` for *that* connection only. If the signal outlived it
/// (a stored notification), the healthy connection opened next would be dropped at once and
/// the subchannel would sleep through a backoff and open a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_refusing_several_streams_does_not_drop_the_next_connection() {
    let servers = servers(1);
    let proxy = H2ProxyHandle::spawn(
        servers[0].addr(),
        Behaviour::GoAwayFirstConnection { streams: 5 },
    )
    .await
    .unwrap();
    let channel = Channel::builder(format!("static:///{}", proxy.addr()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let client = GreeterClient::new(channel.clone());

    let calls = (0..5).map(|_| {
        let mut client = client.clone();
        async move { hello_bounded(&mut client).await }
    });
    for result in futures_util::future::join_all(calls).await {
        let server = result.expect("a call refused by GOAWAY is retried on the new connection");
        assert_eq!(server, "s0");
    }
    assert_eq!(proxy.goaways_sent(), 1);
    // All five reached the refusing "server" first: the retry was exercised for each.
    assert!(proxy.headers_seen() >= 10, "{}", proxy.headers_seen());
    // Each was processed once, on the healthy connection.
    assert_eq!(servers[0].calls(), 5);
    assert_eq!(
        proxy.connections(),
        2,
        "the refusing connection and one healthy one; a third means the healthy one was dropped"
    );

    let mut client = client;
    for _ in 0..20 {
        assert_eq!(hello_bounded(&mut client).await.unwrap(), "s0");
    }
    assert_eq!(proxy.connections(), 2);
    assert_eq!(servers[0].calls(), 25);
    let st = channel.status();
    assert_eq!(st.ready_count(), 1, "{st:?}");
    // A GOAWAY is a normal reconnect, not an error of the endpoint's.
    assert_eq!(st.endpoints[0].last_error, None, "{st:?}");
}

/// A grpc-go-like server answers pings that come faster than it allows with GOAWAY
/// ENHANCE_YOUR_CALM `too_many_pings`; the client must double its keepalive interval for
/// the next connection, as grpc-go does, instead of being sent away again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pings_doubles_the_keepalive_interval() {
    let servers = servers(1);
    let min_interval = Duration::from_millis(300);
    let proxy = H2ProxyHandle::spawn(servers[0].addr(), Behaviour::PolicePings { min_interval })
        .await
        .unwrap();
    let channel = Channel::builder(format!("static:///{}", proxy.addr()))
        .backoff(fast_backoff())
        .keepalive(Duration::from_millis(200), Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let _held = hold_a_stream_open(&channel);

    // Pings every ~200 ms: the first connection is sent away.
    wait_until("the first connection to get GOAWAY too_many_pings", || {
        proxy.goaways_sent() >= 1
    })
    .await;
    // On the second, pings every ~400 ms: wait for several (about 2.4 s), or fail early on a
    // second GOAWAY.
    wait_until(
        "six pings on the second connection, or a second GOAWAY",
        || proxy.goaways_sent() >= 2 || proxy.ping_intervals().get(1).is_some_and(|i| i.len() >= 5),
    )
    .await;

    let intervals = proxy.ping_intervals();
    eprintln!("ping intervals per connection: {intervals:?}");
    assert_eq!(
        proxy.goaways_sent(),
        1,
        "sent away again after too_many_pings: {intervals:?}"
    );
    assert_eq!(proxy.connections(), 2, "{intervals:?}");
    assert!(
        intervals[0].iter().any(|gap| *gap < min_interval),
        "the first connection was policed for a gap under {min_interval:?}: {intervals:?}"
    );
    assert!(
        intervals[1].iter().all(|gap| *gap >= min_interval),
        "the second connection pinged faster than {min_interval:?}: {intervals:?}"
    );
    // The stream kept open is what made the pings; the channel still works.
    let mut client = GreeterClient::new(channel.clone());
    assert_eq!(hello_bounded(&mut client).await.unwrap(), "s0");
}

/// Keepalive pings only while a call is open (gRPC's default, ping-while-idle off): gRPC
/// servers answer pings on an idle connection with GOAWAY `too_many_pings`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_sends_no_pings_while_no_call_is_open() {
    let servers = servers(1);
    let proxy = H2ProxyHandle::spawn(servers[0].addr(), Behaviour::Forward)
        .await
        .unwrap();
    let channel = Channel::builder(format!("static:///{}", proxy.addr()))
        .keepalive(Duration::from_millis(200), Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    // The connection has carried a call, and is idle after it.
    let mut client = GreeterClient::new(channel.clone());
    assert_eq!(hello_bounded(&mut client).await.unwrap(), "s0");
    // Seven keepalive intervals with no call open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        proxy.pings_seen(),
        0,
        "pinged while idle: {:?}",
        proxy.ping_intervals()
    );
    assert_eq!(proxy.connections(), 1);
}

/// `keepalive_while_idle(true)` pings with no call open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_while_idle_pings_with_no_call_open() {
    let servers = servers(1);
    let proxy = H2ProxyHandle::spawn(servers[0].addr(), Behaviour::Forward)
        .await
        .unwrap();
    let channel = Channel::builder(format!("static:///{}", proxy.addr()))
        .keepalive(Duration::from_millis(200), Duration::from_secs(5))
        .keepalive_while_idle(true)
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    wait_until("three pings with no call open", || proxy.pings_seen() >= 3).await;
    assert_eq!(servers[0].calls(), 0);
    // Answered pings keep the connection up.
    assert_eq!(proxy.connections(), 1);
    assert_eq!(channel.status().ready_count(), 1);
}

/// A peer that stops answering while its TCP connection stays open (a SIGSTOPped process,
/// a black-holing path) looks healthy to TCP: the proxy's kernel still ACKs. HTTP/2
/// keepalive must notice, take the endpoint out of Ready, and calls must go elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_is_found_by_keepalive_and_calls_move_elsewhere() {
    let servers = servers(2);
    let proxy = H2ProxyHandle::spawn(servers[1].addr(), Behaviour::Forward)
        .await
        .unwrap();
    let (discovery, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("frozen-peer", Arc::new(discovery))
        .policy("round_robin")
        .backoff(fast_backoff())
        .keepalive(Duration::from_millis(300), Duration::from_millis(500))
        .build()
        .unwrap();
    handle.reset(vec![
        Endpoint::new(servers[0].addr()),
        Endpoint::new(proxy.addr()),
    ]);
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..10 {
        answered.insert(hello_bounded(&mut client).await.unwrap());
    }
    assert_eq!(answered.len(), 2, "both endpoints answer before the freeze");
    let frozen = Address::from(proxy.addr());
    let s1_calls = servers[1].calls();

    proxy.freeze();
    let frozen_at = Instant::now();
    // Round robin sends about half of these to the frozen peer, where they hang: they are
    // the open calls that make the client ping.
    let pending: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { hello_bounded(&mut client).await })
        })
        .collect();
    wait_for(
        "keepalive to take the frozen endpoint out of Ready",
        Duration::from_secs(15),
        || {
            channel
                .status()
                .endpoint(&frozen)
                .is_some_and(|e| e.state != ConnectivityState::Ready)
        },
    )
    .await;
    let detection = frozen_at.elapsed();
    eprintln!("keepalive (300 ms, timeout 500 ms) found the frozen peer after {detection:?}");

    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(match p.await.unwrap() {
            Ok(server) => server,
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        });
    }
    eprintln!("calls in flight at the freeze: {outcomes:?}");
    assert!(
        !outcomes.iter().any(|o| o == "s1"),
        "nothing answers through the frozen proxy: {outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o != "s0"),
        "no call landed on the frozen peer, so nothing made the client ping: {outcomes:?}"
    );
    eprintln!(
        "frozen endpoint after detection: {:?}",
        channel.status().endpoint(&frozen)
    );

    for _ in 0..50 {
        let server = hello_bounded(&mut client)
            .await
            .expect("calls go to the endpoint that answers");
        assert_eq!(server, "s0");
    }
    assert_eq!(
        servers[1].calls(),
        s1_calls,
        "nothing reached s1 while frozen"
    );

    // Once it answers again, the endpoint comes back.
    proxy.thaw();
    wait_ready(&channel, 2).await;
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..10 {
        answered.insert(hello_bounded(&mut client).await.unwrap());
    }
    assert_eq!(answered.len(), 2, "{answered:?}");
}

/// One discovery update that reorders the set, repeats an address, drops some endpoints and
/// adds others: every kept endpoint keeps its connection (no new connection to it), the
/// status lists the new set in discovery's order with each address once, and removed
/// endpoints get no more calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_reorders_repeats_drops_and_adds_keeps_what_stays() {
    let servers = servers(5);
    let (channel, handle) = manual_channel("round_robin");
    let ep = |i: usize| Endpoint::new(servers[i].addr());
    handle.reset(vec![ep(0), ep(1), ep(2), ep(3)]);
    wait_ready(&channel, 4).await;
    let before: Vec<u64> = servers.iter().map(|s| s.connections()).collect();

    // Reordered, with a duplicate: the same four, no connection made or lost.
    handle.reset(vec![ep(3), ep(1), ep(1), ep(0), ep(2)]);
    let order = |channel: &Channel| -> Vec<Address> {
        channel
            .status()
            .endpoints
            .iter()
            .map(|r| r.address.clone())
            .collect()
    };
    let want: Vec<Address> = [3, 1, 0, 2].iter().map(|&i| ep(i).addr).collect();
    wait_until("the reordered set", || order(&channel) == want).await;
    assert_eq!(
        channel.status().ready_count(),
        4,
        "every kept endpoint stays ready"
    );

    // In order again, two leave, one comes, one repeated.
    handle.reset(vec![ep(1), ep(4), ep(2), ep(4)]);
    let want: Vec<Address> = [1, 4, 2].iter().map(|&i| ep(i).addr).collect();
    wait_until("the changed set", || order(&channel) == want).await;
    wait_ready(&channel, 3).await;
    let after: Vec<u64> = servers.iter().map(|s| s.connections()).collect();
    assert_eq!(
        &after[..4],
        &before[..4],
        "kept endpoints were not reconnected (and removed ones not dialled again)"
    );
    assert_eq!(
        after[4],
        before[4] + 1,
        "the new endpoint got one connection"
    );

    let mut client = GreeterClient::new(channel.clone());
    let calls_before: Vec<u64> = servers.iter().map(|s| s.calls()).collect();
    for _ in 0..30 {
        hello(&mut client).await.unwrap();
    }
    let got: Vec<u64> = servers
        .iter()
        .zip(&calls_before)
        .map(|(s, b)| s.calls() - b)
        .collect();
    assert_eq!(
        got[0] + got[3],
        0,
        "removed endpoints get no calls: {got:?}"
    );
    assert_eq!(got[1] + got[2] + got[4], 30);
    assert!(
        got[1] > 0 && got[2] > 0 && got[4] > 0,
        "all three serve: {got:?}"
    );
}

/// The kernel's timer on the client's socket to `server`, read from /proc/net/tcp: its kind
/// ("00" none, "02" keepalive) and when it fires, in clock ticks.
#[cfg(target_os = "linux")]
fn client_socket_timer_now(server: std::net::SocketAddr) -> Option<(String, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!("{:04X}", server.port());
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state, timer) = (f[1], f[2], f[3], f[5]);
        // ESTABLISHED, towards the server's port, from another port: the client's end.
        let ours = state == "01"
            && remote.ends_with(&format!(":{port}"))
            && !local.ends_with(&format!(":{port}"));
        ours.then(|| {
            let (kind, when) = timer.split_once(':').unwrap();
            (kind.to_owned(), u64::from_str_radix(when, 16).unwrap())
        })
    })
}

/// [`client_socket_timer_now`] once the socket is quiet: while bytes it sent wait for their
/// ACK (loopback delays ACKs up to 40 ms) the kernel shows the retransmit timer ("01").
#[cfg(target_os = "linux")]
async fn client_socket_timer(server: std::net::SocketAddr) -> Option<(String, u64)> {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let timer = client_socket_timer_now(server);
        if timer.as_ref().is_none_or(|(kind, _)| kind != "01")
            || tokio::time::Instant::now() > deadline
        {
            return timer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// TCP keepalive is on by default, with grpc-go's 15 s, on every connection a channel makes
/// (seen by the kernel's keepalive timer on the socket); `.tcp_keepalive(None)` turns it off.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_is_on_every_connection_by_default() {
    let servers = servers(1);
    let addr = servers[0].addr();
    let channel = Channel::builder(static_target(&servers)).build().unwrap();
    tokio::time::timeout(WAIT_BOUND, channel.connect())
        .await
        .unwrap()
        .unwrap();
    let (kind, when) = client_socket_timer(addr)
        .await
        .expect("the channel's socket");
    assert_eq!(kind, "02", "a keepalive timer on an idle connection");
    // In clock ticks (USER_HZ, 100 a second on Linux): at most the 15 s idle time.
    assert!(when > 0 && when <= 1500, "fires in {when} ticks");
    drop(channel);

    let servers = meshless_integration::server::spawn_servers(1);
    let addr = servers[0].addr();
    let channel = Channel::builder(static_target(&servers))
        .tcp_keepalive(None)
        .build()
        .unwrap();
    tokio::time::timeout(WAIT_BOUND, channel.connect())
        .await
        .unwrap()
        .unwrap();
    let (kind, _) = client_socket_timer(addr)
        .await
        .expect("the channel's socket");
    assert_eq!(kind, "00", "no timer without keepalive");
}

/// The HTTP/2 settings a channel is given are what its connections announce: the client's
/// SETTINGS frame and its connection WINDOW_UPDATE, read off the wire by a listener that
/// never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_reach_the_wire() {
    use tokio::io::AsyncReadExt;
    async fn announced(settings: Option<meshless::Http2Settings>) -> (Vec<(u16, u32)>, u32) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut builder = Channel::builder(format!("static:///{addr}"));
        if let Some(s) = settings {
            builder = builder.http2(s);
        }
        let channel = builder.build().unwrap();
        let (mut sock, _) = tokio::time::timeout(WAIT_BOUND, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut settings = Vec::new();
        let mut window_update = 0;
        // SETTINGS, then the connection's WINDOW_UPDATE (when its window is above 65,535).
        for _ in 0..2 {
            let mut head = [0u8; 9];
            if tokio::time::timeout(Duration::from_secs(1), sock.read_exact(&mut head))
                .await
                .is_err()
            {
                break;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            sock.read_exact(&mut payload).await.unwrap();
            match head[3] {
                0x4 => settings.extend(payload.chunks(6).map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })),
                0x8 => window_update = u32::from_be_bytes(payload[..4].try_into().unwrap()),
                _ => {}
            }
        }
        drop(channel);
        (settings, window_update)
    }
    let get = |s: &[(u16, u32)], id: u16| s.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_FRAME_SIZE: u16 = 0x5;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;

    // The documented defaults.
    let (s, update) = announced(None).await;
    assert_eq!(
        get(&s, INITIAL_WINDOW_SIZE),
        Some(meshless::DEFAULT_STREAM_WINDOW),
        "{s:?}"
    );
    assert_eq!(
        get(&s, MAX_HEADER_LIST_SIZE),
        Some(meshless::DEFAULT_MAX_HEADER_LIST_SIZE),
        "{s:?}"
    );
    // 16 KiB is HTTP/2's default frame size: it may go unannounced.
    assert!(get(&s, MAX_FRAME_SIZE).is_none_or(|v| v == 16_384), "{s:?}");
    assert_eq!(update + 65_535, meshless::DEFAULT_CONNECTION_WINDOW);

    // Settings of our own.
    let ours = meshless::Http2Settings::default()
        .initial_stream_window(1 << 20)
        .initial_connection_window(3 << 20)
        .max_frame_size(1 << 15)
        .max_header_list_size(64 << 10);
    let (s, update) = announced(Some(ours)).await;
    assert_eq!(get(&s, INITIAL_WINDOW_SIZE), Some(1 << 20), "{s:?}");
    assert_eq!(get(&s, MAX_FRAME_SIZE), Some(1 << 15), "{s:?}");
    assert_eq!(get(&s, MAX_HEADER_LIST_SIZE), Some(64 << 10), "{s:?}");
    assert_eq!(update + 65_535, 3 << 20);
}

/// The largest send capacity (the client's window) a server saw while it sent `total`
/// bytes of response as fast as the client's windows allowed, and the bytes the client
/// read.
async fn largest_window_seen(settings: meshless::Http2Settings, total: usize) -> (usize, usize) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = largest.clone();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        // Without it, Nagle holds each window's last segment for the client's delayed ACK.
        sock.set_nodelay(true).unwrap();
        let mut conn = h2::server::handshake(sock).await.unwrap();
        let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut stream = respond.send_response(resp, false).unwrap();
        let mut sent = 0;
        while sent < total {
            stream.reserve_capacity(total - sent);
            let Some(Ok(cap)) = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await else {
                return;
            };
            seen.fetch_max(cap, std::sync::atomic::Ordering::Relaxed);
            let n = cap.min(total - sent);
            stream
                .send_data(bytes::Bytes::from(vec![0u8; n]), false)
                .unwrap();
            sent += n;
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        stream.send_trailers(trailers).unwrap();
    });
    // What the client sends (its WINDOW_UPDATEs and pings) reaches the server 5 ms late,
    // as over a network: on bare loopback one round trip carries too little to be worth a
    // larger window.
    let delayed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = delayed.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, _) = delayed.accept().await.unwrap();
        client.set_nodelay(true).unwrap();
        let server = tokio::net::TcpStream::connect(addr).await.unwrap();
        server.set_nodelay(true).unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let channel = Channel::builder(format!("static:///{proxy}"))
        .http2(settings)
        .build()
        .unwrap();
    let req = http::Request::post(format!("http://{addr}/bulk.Service/Download"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let resp = tokio::time::timeout(WAIT_BOUND, channel.oneshot(req))
        .await
        .unwrap()
        .unwrap();
    let body = tokio::time::timeout(WAIT_BOUND, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let read = body.to_bytes().len();
    (largest.load(std::sync::atomic::Ordering::Relaxed), read)
}

/// With the adaptive window on, the client grows its windows past HTTP/2's 64 KiB default
/// when a stream is limited by them (BDP pings measure what one round trip carries); with
/// the same start and no adaptive window, the server never gets more than 64 KiB of credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_window_grows_the_windows_of_a_busy_stream() {
    const TOTAL: usize = 8 << 20;
    let fixed = meshless::Http2Settings::default()
        .initial_stream_window(65_535)
        .initial_connection_window(65_535);
    let t = Instant::now();
    let (largest, read) = largest_window_seen(fixed, TOTAL).await;
    eprintln!("fixed {:?} {largest}", t.elapsed());
    assert_eq!(read, TOTAL);
    assert!(largest <= 65_535, "{largest}");

    let adaptive = meshless::Http2Settings::default().adaptive_window(true);
    let t = Instant::now();
    let (largest, read) = largest_window_seen(adaptive, TOTAL).await;
    eprintln!("adaptive {:?} {largest}", t.elapsed());
    assert_eq!(read, TOTAL);
    assert!(largest > 65_535, "the window never grew: {largest}");
}

/// A call's deadline bounds its whole response, not only the wait for its headers: a server
/// (or a network) that stops after the response headers fails the call with
/// DEADLINE_EXCEEDED at the deadline, and that counts against the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_a_response_that_stops_after_its_headers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(sock).await.unwrap();
        let mut held = Vec::new();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let resp = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            // Headers, then nothing: the stream stays open.
            held.push(respond.send_response(resp, false).unwrap());
        }
    });
    let channel = Channel::builder(format!("static:///{addr}"))
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let mut req = tonic::Request::new(HelloRequest::default());
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT_BOUND, client.say_hello(req))
        .await
        .expect("the deadline ends the call")
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let status = channel.status();
    let ep = status.endpoint(&Address::from(addr)).unwrap();
    assert_eq!((ep.failures, ep.in_flight), (1, 0), "{ep:?}");
}
