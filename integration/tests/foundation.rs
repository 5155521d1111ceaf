//! End-to-end behaviour of the foundation: a meshless Channel over real tonic servers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meshless::Channel;
use meshless::balancer::ConnectivityState;
use meshless::discovery::{Endpoint, ManualDiscovery};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::load;
use tokio::time::Instant;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_each_server_its_share() {
    let servers = servers(4);
    let channel = Channel::builder(static_target(&servers))
        .policy("round_robin")
        .build()
        .unwrap();
    wait_ready(&channel, 4).await;
    let client = GreeterClient::new(channel.clone());
    let out = load::run(16, 4000, |_| {
        let mut c = client.clone();
        async move { hello(&mut c).await }
    })
    .await;
    assert_eq!(out.failed(), 0, "{:?}", out.errors);
    assert_eq!(out.ok(), 4000);
    for s in &servers {
        let n = out.backends.get(s.name()).copied().unwrap_or(0);
        // Round robin is exact up to the interleaving of concurrent picks: ±5 % of 1000.
        assert!(
            (950..=1050).contains(&n),
            "{}: {n} of 4000 ({:?})",
            s.name(),
            out.backends
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_first_sticks_to_one_then_fails_over_when_it_dies() {
    let mut servers = servers(3);
    let channel = Channel::builder(static_target(&servers))
        .policy("pick_first")
        .backoff(fast_backoff())
        .build()
        .unwrap();
    // pick_first connects to one endpoint at a time, as gRPC does: the first answers, so the
    // others are never dialled.
    wait_ready(&channel, 1).await;
    let st = channel.status();
    assert_eq!(
        st.endpoints.iter().map(|e| e.state).collect::<Vec<_>>(),
        [
            ConnectivityState::Ready,
            ConnectivityState::Idle,
            ConnectivityState::Idle
        ],
        "{st:?}"
    );
    let mut client = GreeterClient::new(channel.clone());
    let mut seen = HashMap::new();
    for _ in 0..200 {
        *seen.entry(hello(&mut client).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1, "pick_first used several servers: {seen:?}");
    let first = seen.keys().next().unwrap().clone();
    let idx = servers.iter().position(|s| s.name() == first).unwrap();

    servers[idx].kill();
    // Calls move to another server once the dead one's connection closes. A failover that
    // never comes fails here, on any machine; how fast it comes is for the benchmarks.
    let deadline = Instant::now() + WAIT_BOUND;
    loop {
        assert!(
            Instant::now() < deadline,
            "no failover within {WAIT_BOUND:?}"
        );
        if let Ok(name) = hello(&mut client).await
            && name != first
        {
            break;
        }
    }
    // Once moved, no call fails and all go to one server.
    let mut after = HashMap::new();
    for _ in 0..300 {
        let name = hello(&mut client)
            .await
            .expect("no call fails after failover");
        *after.entry(name).or_insert(0) += 1;
    }
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after.contains_key(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_endpoint_takes_its_share_as_soon_as_it_is_ready() {
    let servers = servers(3);
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(endpoints(&servers[..2]));
    wait_ready(&channel, 2).await;
    let load = Load::start(&channel, 4);
    wait_until("load on both endpoints", || {
        servers[0].calls() > 10 && servers[1].calls() > 10
    })
    .await;
    assert_eq!(servers[2].calls(), 0);
    handle.add([Endpoint::new(servers[2].addr())]);
    // How soon it connects is for the benchmarks; a connection that never comes fails here.
    wait_ready(&channel, 3).await;
    // The channel publishes the picker before the status that shows the endpoint ready, so
    // from here on round robin gives it a third of the picks: counting calls, not time,
    // tells a picker that takes it at once from one that ignores or phases it in.
    let total = || servers.iter().map(|s| s.calls()).sum::<u64>();
    let (total_before, new_before) = (total(), servers[2].calls());
    wait_until("300 calls after it became ready", || {
        total() >= total_before + 300
    })
    .await;
    let (_, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "calls failed during the addition: {errors:?}");
    let (calls, got) = (total() - total_before, servers[2].calls() - new_before);
    // A third, up to the calls already under way when the status was read (4 tasks).
    assert!(
        got * 4 >= calls,
        "the new endpoint got {got} of the {calls} calls after it was ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_gets_no_new_calls_but_finishes_in_flight_stream() {
    let servers = servers(2);
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(endpoints(&servers[..1]));
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    // A slow server-streaming call on s0: 5 replies, 100 ms apart.
    let req = HelloRequest {
        name: "slow".into(),
        count: 5,
        interval_ms: 100,
    };
    let mut stream = client.stream_replies(req).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.server, "s0");

    handle.reset(endpoints(&servers[1..]));
    let s1 = meshless::discovery::Address::from(servers[1].addr());
    wait_until("s0 replaced by a ready s1", || {
        let st = channel.status();
        st.endpoints.len() == 1 && st.endpoint(&s1).is_some() && st.ready_count() == 1
    })
    .await;
    let before = servers[0].calls();
    for _ in 0..50 {
        assert_eq!(hello(&mut client).await.unwrap(), "s1");
    }
    assert_eq!(servers[0].calls(), before, "removed endpoint got new calls");
    // The in-flight stream completes on the removed endpoint.
    let mut rest = 0;
    while let Some(item) = stream.next().await {
        assert_eq!(item.expect("stream item").server, "s0");
        rest += 1;
    }
    assert_eq!(rest, 4);
}

#[tokio::test]
async fn all_endpoints_down_fails_unavailable_within_bound() {
    let target = format!("static:///{},{}", dead_addr(), dead_addr());
    let bound = Duration::from_secs(2);
    let channel = Channel::builder(target.clone())
        .queue_timeout(bound)
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel);
    let start = Instant::now();
    let err = hello(&mut client).await.unwrap_err();
    // Real connections are refused here, so the clock cannot be paused; a loaded machine
    // may overrun the bound by seconds. What must not happen is waiting for the default.
    let took = start.elapsed();
    assert!(
        took < meshless::transport::DEFAULT_QUEUE_TIMEOUT,
        "{took:?}"
    );
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message().contains(&target),
        "message does not name the target: {err}"
    );
    assert!(
        err.message().contains("refused"),
        "message lacks the last error: {err}"
    );
}

#[tokio::test]
async fn empty_endpoint_set_fails_unavailable() {
    let (channel, handle) = manual_channel("round_robin");
    handle.reset(vec![]);
    let mut client = GreeterClient::new(channel);
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("manual-test"), "{err}");
    assert!(err.message().contains("no endpoints"), "{err}");
}

// The clock is paused and jumps straight to the next timer, so `took` says which timer
// failed the call, whatever the machine's load: exactly the configured bound, not a longer
// one (the 10 s default) and not an early failure.
#[tokio::test(start_paused = true)]
async fn unresolved_target_waits_the_bound() {
    let (discovery, _handle) = ManualDiscovery::new();
    let bound = Duration::from_millis(300);
    let channel = Channel::with_discovery("never-resolves", Arc::new(discovery))
        .queue_timeout(bound)
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel);
    let start = Instant::now();
    let err = hello(&mut client).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("never-resolves"), "{err}");
    // Timers fire on whole milliseconds, so the wait may round up by one.
    assert!(
        took >= bound && took <= bound + Duration::from_millis(1),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_is_used_again_after_backoff() {
    let mut servers = servers(1);
    let channel = Channel::builder(static_target(&servers))
        .backoff(fast_backoff())
        .queue_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    assert_eq!(hello(&mut client).await.unwrap(), "s0");
    servers[0].kill();
    wait_until("endpoint leaves ready", || {
        channel.status().ready_count() == 0
    })
    .await;
    assert_eq!(
        hello(&mut client).await.unwrap_err().code(),
        Code::Unavailable
    );
    servers[0].restart().unwrap();
    wait_ready(&channel, 1).await;
    assert_eq!(hello(&mut client).await.unwrap(), "s0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_one_server_fails_no_calls() {
    let mut servers = servers(3);
    let channel = Channel::builder(static_target(&servers))
        .policy("round_robin")
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_ready(&channel, 3).await;
    let client = GreeterClient::new(channel.clone());
    let load = tokio::spawn(async move {
        load::run(8, 6000, |_| {
            let mut c = client.clone();
            async move { hello(&mut c).await }
        })
        .await
    });
    wait_until("load started", || servers[0].calls() > 100).await;
    servers[0].stop_graceful().await;
    let out = load.await.unwrap();
    assert_eq!(
        out.failed(),
        0,
        "calls failed during GOAWAY: {:?}",
        out.errors
    );
    assert_eq!(out.ok(), 6000);
    assert!(out.backends.get("s1").copied().unwrap_or(0) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_kinds_work_through_the_channel() {
    let servers = servers(2);
    let channel = Channel::builder(static_target(&servers))
        .policy("round_robin")
        .build()
        .unwrap();
    let mut client = GreeterClient::new(channel);
    // Bidirectional: each message is answered on the same stream.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut server = None;
    for i in 0..10 {
        tx.send(HelloRequest {
            name: format!("m{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let r = replies.next().await.unwrap().unwrap();
        assert_eq!(r.message, format!("Hello m{i}"));
        assert_eq!(
            *server.get_or_insert(r.server.clone()),
            r.server,
            "stream moved"
        );
    }
    drop(tx);
    assert!(replies.next().await.is_none());
    // Client streaming.
    let reqs = (0..7).map(|i| HelloRequest {
        name: format!("c{i}"),
        ..Default::default()
    });
    let reply = client
        .collect_hellos(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "7");
    // Server streaming.
    let req = HelloRequest {
        name: "s".into(),
        count: 3,
        interval_ms: 1,
    };
    let items: Vec<_> = client
        .stream_replies(req)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|r| r.is_ok()));
}

/// A TCP forwarder in front of `backend` that counts the client connections open through it.
async fn counting_forwarder(
    backend: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicI64>) {
    use std::sync::atomic::{AtomicI64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicI64::new(0));
    let gauge = open.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let gauge = gauge.clone();
            gauge.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                gauge.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_clone_stops_the_control_task_and_closes_connections() {
    use std::sync::atomic::Ordering;
    let servers = servers(2);
    let (a, open_a) = counting_forwarder(servers[0].addr()).await;
    let (b, open_b) = counting_forwarder(servers[1].addr()).await;
    let (discovery, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("drop-test", Arc::new(discovery))
        .policy("round_robin")
        .build()
        .unwrap();
    handle.reset(vec![Endpoint::new(a), Endpoint::new(b)]);
    wait_ready(&channel, 2).await;
    let clone = channel.clone();
    let mut client = GreeterClient::new(clone.clone());
    for _ in 0..20 {
        hello(&mut client).await.unwrap();
    }
    assert_eq!(open_a.load(Ordering::SeqCst), 1);
    assert_eq!(open_b.load(Ordering::SeqCst), 1);
    assert_eq!(
        handle.watcher_count(),
        1,
        "the control task watches discovery"
    );

    // Dropping some clones changes nothing.
    drop(clone);
    drop(channel);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handle.watcher_count(), 1);
    hello(&mut client).await.unwrap();

    // Dropping the last one stops the control task (its discovery watch is released) and
    // closes every connection.
    drop(client);
    wait_until("the control task to stop", || handle.watcher_count() == 0).await;
    wait_until("connections to close", || {
        open_a.load(Ordering::SeqCst) == 0 && open_b.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// A builder from `with_discovery` parses no target, so a registry set on it could only be
/// ignored: `build` says so instead.
#[tokio::test]
async fn with_discovery_refuses_a_registry() {
    let (discovery, _handle) = ManualDiscovery::new();
    let err = Channel::with_discovery("manual", Arc::new(discovery))
        .registry(meshless::Registry::default())
        .build()
        .expect_err("a registry with a given discovery is an error");
    assert!(
        matches!(err, meshless::BuildError::RegistryWithDiscovery { ref name } if name == "manual"),
        "{err}"
    );
    assert!(err.to_string().contains("with_discovery"), "{err}");
}

/// `Target::parse_with` parses against the registry given, as the channel does.
#[test]
fn targets_parse_with_the_channels_registry() {
    use meshless::discovery::StaticScheme;
    let empty = meshless::Registry::empty();
    assert!(meshless::Target::parse_with("static:///127.0.0.1:1", &empty).is_err());
    let mut registry = meshless::Registry::empty();
    registry.register(StaticScheme);
    assert!(meshless::Target::parse_with("static:///127.0.0.1:1", &registry).is_ok());
}
