//! Kubernetes discovery end to end: real tonic servers, a loopback double of the API server
//! (integration/src/k8s.rs), and `meshless::Channel` with `kubernetes:` targets.
//!
//! Set `MESHLESS_TEST_KUBECONFIG` (and optionally `MESHLESS_TEST_NAMESPACE`, default
//! `default`) to run these tests against a real cluster instead: they create and change
//! EndpointSlices through the API with the same code. The slices point at servers on this
//! machine's loopback, so the client must run here too. The tests that inject faults into
//! the double or read its request log are in `k8s_double.rs` and always use the double.

mod common;
mod k8s_support;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use k8s_support::*;
use meshless::Channel;
use meshless::discovery::k8s::{K8sDiscovery, K8sScheme};
use meshless::discovery::{Address, Discovery, Registry, Target, Update};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::k8s::endpoint_slice;
use meshless_integration::server::{ServerHandle, TestServer};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_takes_its_share_once_ready_and_scale_down_stops_calls() {
    let c = Cluster::start().await;
    let servers = servers(3);
    for s in &servers[..2] {
        publish(&c, s, true, false).await;
    }
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 2).await;
    let load = Load::start(&channel, 4);
    wait_until("load on both pods", || {
        servers[0].calls() > 10 && servers[1].calls() > 10
    })
    .await;
    assert_eq!(servers[2].calls(), 0);
    let total = || servers.iter().map(|s| s.calls()).sum::<u64>();

    // Scale up. How soon the change arrives and connects is for the benchmarks; one that
    // never does fails here. The picker is published before the status that shows the pod
    // ready, so from then on round robin gives it a third of the picks.
    publish(&c, &servers[2], true, false).await;
    wait_ready(&channel, 3).await;
    let (total_before, new_before) = (total(), servers[2].calls());
    wait_until("300 calls after the new pod was ready", || {
        total() >= total_before + 300
    })
    .await;
    let (calls, got) = (total() - total_before, servers[2].calls() - new_before);
    // A third, up to the calls already under way when the status was read (4 tasks).
    assert!(
        got * 4 >= calls,
        "the new pod got {got} of the {calls} calls after it was ready"
    );

    // Scale down: s0 leaves. Once the status no longer lists it, every new pick avoids it;
    // only the calls already picked may still arrive, at most one per load task.
    c.delete(&slice_name(&servers[0])).await;
    let s0 = Address::from(servers[0].addr());
    wait_until("s0 removed", || channel.status().endpoint(&s0).is_none()).await;
    let (s0_before, total_before) = (servers[0].calls(), total());
    wait_until("300 calls after s0 was removed", || {
        total() >= total_before + 300
    })
    .await;
    let (calls, failed, errors) = load.finish().await;
    let late = servers[0].calls() - s0_before;
    assert!(late <= 4, "a removed pod got {late} new calls");
    assert_eq!(failed, 0, "{errors:?}");
    assert!(calls > 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_load_fails_no_call() {
    let c = Cluster::start().await;
    let mut old: Vec<ServerHandle> = (0..3)
        .map(|i| TestServer::new(format!("v1-{i}")).spawn().unwrap())
        .collect();
    let new: Vec<ServerHandle> = (0..3)
        .map(|i| TestServer::new(format!("v2-{i}")).spawn().unwrap())
        .collect();
    for s in &old {
        publish(&c, s, true, false).await;
    }
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 3).await;
    let load = Load::start(&channel, 8);
    let new_calls = || new.iter().map(|s| s.calls()).sum::<u64>();
    for (o, n) in old.iter_mut().zip(&new) {
        // The new pod starts, then becomes ready, and serves.
        publish(&c, n, false, false).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        publish(&c, n, true, false).await;
        wait_until("the new pod serves", || n.calls() > 0).await;
        // The old pod is told to terminate: not ready, still serving.
        publish(&c, o, false, true).await;
        let addr = Address::from(o.addr());
        wait_until("old pod out of rotation", || {
            channel.status().endpoint(&addr).is_none()
        })
        .await;
        // Calls go on without it (counted, so the load runs through every step however
        // fast the machine is); then it drains and exits (GOAWAY), and its slice goes.
        let before = new_calls();
        wait_until("100 calls without the old pod", || {
            new_calls() >= before + 100
        })
        .await;
        o.stop_graceful().await;
        c.delete(&slice_name(o)).await;
    }
    let (calls, failed, errors) = load.finish().await;
    assert_eq!(
        failed, 0,
        "failed calls during the rolling update: {errors:?}"
    );
    assert!(calls >= 300, "only {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_pods_get_no_new_calls_but_finish_streams_and_are_the_last_resort() {
    let c = Cluster::start().await;
    let servers = servers(2);
    publish(&c, &servers[0], true, false).await;
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    let req = HelloRequest {
        name: "long".into(),
        count: 4,
        interval_ms: 100,
    };
    let mut stream = client.stream_replies(req).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();

    publish(&c, &servers[1], true, false).await;
    publish(&c, &servers[0], false, true).await; // s0 starts terminating
    let s0 = Address::from(servers[0].addr());
    wait_until("s0 out of rotation", || {
        channel.status().endpoint(&s0).is_none()
    })
    .await;
    let before = servers[0].calls();
    for _ in 0..20 {
        assert_eq!(hello(&mut client).await.unwrap(), "s1");
    }
    assert_eq!(servers[0].calls(), before);
    let mut rest = 0;
    while let Some(item) = stream.next().await {
        item.expect("in-flight stream on a terminating pod completes");
        rest += 1;
    }
    assert_eq!(rest, 3);

    // No pod ready at all: serving-but-terminating pods are used, as kube-proxy does.
    publish(&c, &servers[1], false, true).await;
    wait_until("fallback to terminating pods", || {
        let st = channel.status();
        st.endpoints.len() == 2 && st.ready_count() == 2
    })
    .await;
    assert!(hello(&mut client).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_slice_service_yields_every_endpoint_once() {
    let c = Cluster::start().await;
    // 250 endpoints across 3 slices; 10 addresses appear in two slices (a slice move).
    let ips: Vec<String> = (0..250)
        .map(|i| format!("10.1.{}.{}", i / 200, i % 200 + 1))
        .collect();
    let chunk = |r: std::ops::Range<usize>| -> Vec<(String, bool, bool, bool)> {
        ips[r]
            .iter()
            .map(|ip| (ip.clone(), true, true, false))
            .collect()
    };
    c.apply(slice_for("greeter-a", 8080, &chunk(0..100))).await;
    c.apply(slice_for("greeter-b", 8080, &chunk(90..200))).await;
    c.apply(slice_for("greeter-c", 8080, &chunk(200..250)))
        .await;
    let target = Target::parse(&format!("kubernetes:///{SERVICE}.{}:grpc", c.ns)).unwrap();
    let discovery = K8sDiscovery::new(&target, c.config()).unwrap();
    let mut watch = discovery.watch();
    let first = tokio::time::timeout(WAIT_BOUND, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Update::Reset(eps) = first else {
        panic!("expected a Reset, got {first:?}")
    };
    assert_eq!(eps.len(), 250);
    let mut unique: Vec<String> = eps.iter().map(|e| e.addr.to_string()).collect();
    unique.dedup();
    assert_eq!(unique.len(), 250);
    assert!(
        eps.iter()
            .all(|e| e.addr.as_socket_addr().unwrap().port() == 8080)
    );

    // Deleting a slice removes only what no other slice still lists.
    c.delete("greeter-c").await;
    let next = tokio::time::timeout(WAIT_BOUND, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Update::Reset(eps) = next else {
        panic!("expected a Reset")
    };
    assert_eq!(eps.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_by_name_number_or_omitted() {
    let c = Cluster::start().await;
    let servers = servers(1);
    let port = servers[0].addr().port();
    c.apply(endpoint_slice(
        &slice_name(&servers[0]),
        SERVICE,
        "IPv4",
        &[("grpc", port)],
        &[("127.0.0.1", true, true, false)],
    ))
    .await;
    for spec in ["grpc", &port.to_string()] {
        let channel = c.channel(spec, "pick_first");
        assert_eq!(
            hello(&mut GreeterClient::new(channel)).await.unwrap(),
            "s0",
            "port `{spec}`"
        );
    }
    // Omitted: the only port is used.
    let mut registry = Registry::default();
    registry.register(K8sScheme::new(c.config()));
    let channel = Channel::builder(format!("k8s://{}/{SERVICE}", c.ns))
        .registry(registry.clone())
        .build()
        .unwrap();
    assert_eq!(hello(&mut GreeterClient::new(channel)).await.unwrap(), "s0");
    // Two ports and none chosen; a wrong name: the error lists the ports.
    c.apply(endpoint_slice(
        &slice_name(&servers[0]),
        SERVICE,
        "IPv4",
        &[("grpc", port), ("metrics", 9090)],
        &[("127.0.0.1", true, true, false)],
    ))
    .await;
    let channel = Channel::builder(format!("k8s://{}/{SERVICE}", c.ns))
        .registry(registry)
        .build()
        .unwrap();
    let err = hello(&mut GreeterClient::new(channel)).await.unwrap_err();
    assert!(
        err.message()
            .contains(&format!("several ports (grpc={port}, metrics=9090)")),
        "{err}"
    );
    let channel = c.channel("http", "pick_first");
    let err = hello(&mut GreeterClient::new(channel)).await.unwrap_err();
    assert!(err.message().contains("no port named `http`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_slices_work_and_ipv4_is_preferred() {
    let c = Cluster::start().await;
    let v6 = TestServer::new("v6")
        .bind("[::1]:0".parse().unwrap())
        .spawn()
        .unwrap();
    let v4 = TestServer::new("v4").spawn().unwrap();
    c.apply(endpoint_slice(
        "greeter-v6",
        SERVICE,
        "IPv6",
        &[("grpc", v6.addr().port())],
        &[("::1", true, true, false)],
    ))
    .await;
    let channel = c.channel("grpc", "round_robin");
    let mut client = GreeterClient::new(channel.clone());
    assert_eq!(hello(&mut client).await.unwrap(), "v6");
    // Dual stack: the IPv4 slice wins by default.
    c.apply(endpoint_slice(
        "greeter-v4",
        SERVICE,
        "IPv4",
        &[("grpc", v4.addr().port())],
        &[("127.0.0.1", true, true, false)],
    ))
    .await;
    wait_until("IPv4 preferred", || {
        let st = channel.status();
        st.endpoints.len() == 1
            && st.endpoints[0]
                .address
                .as_socket_addr()
                .is_some_and(|a| a.is_ipv4())
    })
    .await;
    assert_eq!(hello(&mut client).await.unwrap(), "v4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_endpoints_after_a_successful_list_fails_naming_the_service() {
    let c = Cluster::start().await;
    let channel = c.channel("grpc", "round_robin");
    let mut client = GreeterClient::new(channel.clone());
    wait_until("resolved", || channel.status().resolved).await;
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("greeter") && err.message().contains("no endpoints"),
        "{err}"
    );
}
