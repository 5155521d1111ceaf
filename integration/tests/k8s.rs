//! Kubernetes discovery end to end: real tonic servers, a loopback double of the API server
//! (integration/src/k8s.rs), and `meshless::Channel` with `kubernetes:` targets.
//!
//! Set `MESHLESS_TEST_KUBECONFIG` (and optionally `MESHLESS_TEST_NAMESPACE`, default
//! `default`) to run the tests that need no injected fault against a real cluster instead:
//! they create and change EndpointSlices through the API with the same code. The slices
//! point at servers on this machine's loopback, so the client must run here too.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use meshless::Channel;
use meshless::discovery::k8s::{K8sConfig, K8sDiscovery, K8sScheme};
use meshless::discovery::{Address, Discovery, Registry, Target, Update};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::k8s::{Fault, KubeApi, endpoint_slice};
use meshless_integration::server::{ServerHandle, TestServer};
use serde_json::Value;
use tokio::time::Instant;
use tonic::Code;

const SERVICE: &str = "greeter";

/// The API server the tests talk to: the double, or a real cluster.
struct Cluster {
    api: Option<KubeApi>,
    client: kube::Client,
    ns: String,
}

impl Cluster {
    async fn start() -> Cluster {
        if let Ok(path) = std::env::var("MESHLESS_TEST_KUBECONFIG") {
            let kc = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("kubeconfig");
            let client = kube::Client::try_from(config).expect("client");
            let ns = std::env::var("MESHLESS_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
            let c = Cluster {
                api: None,
                client,
                ns,
            };
            c.clear().await;
            return c;
        }
        let api = KubeApi::start().await.expect("start API double");
        let config = kube::Config::new(api.url().parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        Cluster {
            api: Some(api),
            client,
            ns: "default".into(),
        }
    }

    /// The double, for tests that inject faults; `None` on a real cluster (skip).
    fn double(&self) -> Option<&KubeApi> {
        self.api.as_ref()
    }

    fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces a slice.
    async fn apply(&self, slice: Value) {
        let slice: EndpointSlice = serde_json::from_value(slice).expect("slice");
        let name = slice.metadata.name.clone().expect("name");
        let api = self.slices();
        match api.get_opt(&name).await.expect("get") {
            Some(old) => {
                let mut new = slice;
                new.metadata.resource_version = old.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &new)
                    .await
                    .expect("replace");
            }
            None => {
                api.create(&PostParams::default(), &slice)
                    .await
                    .expect("create");
            }
        }
    }

    async fn delete(&self, name: &str) {
        self.slices()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }

    async fn clear(&self) {
        let api = self.slices();
        let lp = kube::api::ListParams::default()
            .labels(&format!("kubernetes.io/service-name={SERVICE}"));
        if let Ok(list) = api.list(&lp).await {
            for s in list.items {
                if let Some(n) = s.metadata.name {
                    let _ = api.delete(&n, &DeleteParams::default()).await;
                }
            }
        }
    }

    fn config(&self) -> K8sConfig {
        K8sConfig::default()
            .client(self.client.clone())
            .backoff(Duration::from_millis(50), Duration::from_millis(400))
    }

    /// A channel for `kubernetes:///greeter.<ns>:<port>`.
    fn channel(&self, port: &str, policy: &str) -> Channel {
        let mut registry = Registry::default();
        K8sScheme::new(self.config()).register(&mut registry);
        Channel::builder(format!("kubernetes:///{SERVICE}.{}:{port}", self.ns))
            .registry(registry)
            .policy(policy)
            .backoff(fast_backoff())
            .wait_for_ready_timeout(Duration::from_secs(3))
            .build()
            .expect("channel")
    }
}

/// `(ip, ready, serving, terminating)` for a server on loopback.
fn pod(s: &ServerHandle, ready: bool, terminating: bool) -> (String, bool, bool, bool) {
    (
        s.addr().ip().to_string(),
        ready,
        ready || terminating,
        terminating,
    )
}

/// A slice of `servers`, all on one port: each server listens on its own port, so each
/// slice holds servers with the same port (as pods of one Deployment do).
fn slice_for(name: &str, port: u16, eps: &[(String, bool, bool, bool)]) -> Value {
    let eps: Vec<(&str, bool, bool, bool)> = eps
        .iter()
        .map(|(a, r, s, t)| (a.as_str(), *r, *s, *t))
        .collect();
    endpoint_slice(name, SERVICE, "IPv4", &[("grpc", port)], &eps)
}

/// Loopback servers have distinct ports but one IP, so a "pod" here is one slice per server.
fn slice_name(s: &ServerHandle) -> String {
    format!("{SERVICE}-{}", s.addr().port())
}

async fn publish(c: &Cluster, s: &ServerHandle, ready: bool, terminating: bool) {
    c.apply(slice_for(
        &slice_name(s),
        s.addr().port(),
        &[pod(s, ready, terminating)],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_is_served_within_100ms_and_scale_down_stops_calls() {
    let c = Cluster::start().await;
    let servers = servers(3);
    for s in &servers[..2] {
        publish(&c, s, true, false).await;
    }
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 2).await;
    let load = Load::start(&channel, 4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(servers[2].calls(), 0);

    let changed = Instant::now();
    publish(&c, &servers[2], true, false).await;
    wait_until("the new pod's first call", || servers[2].calls() > 0).await;
    let took = changed.elapsed();

    // Scale down: s0 leaves; after the change is applied it gets no new calls.
    c.delete(&slice_name(&servers[0])).await;
    let s0 = Address::from(servers[0].addr());
    wait_until("s0 removed", || channel.status().endpoint(&s0).is_none()).await;
    // Calls picked just before the change may still arrive; after that, nothing new.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = servers[0].calls();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (calls, failed, errors) = load.finish().await;
    assert_eq!(servers[0].calls(), before, "a removed pod got new calls");
    assert_eq!(failed, 0, "{errors:?}");
    assert!(calls > 100);
    assert!(
        took < Duration::from_millis(100),
        "scale-up took {took:?} to get traffic"
    );
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
    for (o, n) in old.iter_mut().zip(&new) {
        // The new pod starts, then becomes ready.
        publish(&c, n, false, false).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        publish(&c, n, true, false).await;
        // The old pod is told to terminate: not ready, still serving.
        publish(&c, o, false, true).await;
        let addr = Address::from(o.addr());
        wait_until("old pod out of rotation", || {
            channel.status().endpoint(&addr).is_none()
        })
        .await;
        // It drains and exits (GOAWAY), then its slice goes.
        o.stop_graceful().await;
        c.delete(&slice_name(o)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (calls, failed, errors) = load.finish().await;
    assert_eq!(
        failed, 0,
        "failed calls during the rolling update: {errors:?}"
    );
    assert!(calls > 300, "only {calls} calls");
    assert!(new.iter().all(|s| s.calls() > 0));
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
    if let Some(api) = c.double() {
        // The initial list was paginated with limit/continue and filtered by label.
        let reqs = api.requests();
        assert!(
            reqs.iter().any(
                |r| r.contains("labelSelector=kubernetes.io%2Fservice-name%3Dgreeter")
                    || r.contains("labelSelector=kubernetes.io/service-name=greeter")
            ),
            "{reqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_is_followed() {
    let c = Cluster::start().await;
    if c.double().is_none() {
        return;
    }
    // More slices than kube's default page size of 500.
    for i in 0..520 {
        c.double().unwrap().apply(
            &c.ns,
            slice_for(
                &format!("greeter-{i:04}"),
                8080,
                &[(
                    format!("10.2.{}.{}", i / 250, i % 250 + 1),
                    true,
                    true,
                    false,
                )],
            ),
        );
    }
    let target = Target::parse(&format!("kubernetes:///{SERVICE}.{}:grpc", c.ns)).unwrap();
    let mut watch = K8sDiscovery::new(&target, c.config()).unwrap().watch();
    let first = tokio::time::timeout(WAIT_BOUND, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Update::Reset(eps) = first else { panic!() };
    assert_eq!(eps.len(), 520);
    let reqs = c.double().unwrap().requests();
    assert!(
        reqs.iter().any(|r| r.contains("continue=")),
        "second page not requested: {reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_gone_under_load_drops_no_traffic() {
    let c = Cluster::start().await;
    let Some(api) = c.double() else { return };
    let servers = servers(3);
    for s in &servers[..2] {
        publish(&c, s, true, false).await;
    }
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 2).await;
    let load = Load::start(&channel, 4);
    let lists = || {
        api.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET") && r.contains("labelSelector") && !r.contains("watch=")
            })
            .count()
    };
    let lists_before = lists();
    // History is compacted and the watch breaks: resuming gets 410, the client relists.
    publish(&c, &servers[2], true, false).await;
    api.compact();
    wait_until("a relist", || lists() > lists_before).await;
    assert!(
        api.gone_answers() >= 1,
        "the resumed watch was not answered 410"
    );
    wait_until("the change made before the relist is seen", || {
        servers[2].calls() > 0
    })
    .await;
    let (_, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_keeps_traffic_flowing_then_recovers() {
    let mut c = Cluster::start().await;
    if c.double().is_none() {
        return;
    }
    let servers = servers(3);
    for s in &servers[..2] {
        publish(&c, s, true, false).await;
    }
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 2).await;
    let load = Load::start(&channel, 4);
    c.api.as_mut().unwrap().stop();
    wait_until("the outage shows in status", || {
        channel.status().discovery_error.is_some()
    })
    .await;
    let err = channel.status().discovery_error.unwrap();
    assert!(
        err.contains("unreachable") && err.contains("keeping the last known endpoints"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        channel.status().ready_count(),
        2,
        "endpoints were dropped during the outage"
    );
    // A change made while the API server was down is seen after it comes back.
    c.api.as_ref().unwrap().apply(
        &c.ns,
        slice_for(
            &slice_name(&servers[2]),
            servers[2].addr().port(),
            &[pod(&servers[2], true, false)],
        ),
    );
    c.api.as_mut().unwrap().restart().await.unwrap();
    wait_until("recovery", || servers[2].calls() > 0).await;
    wait_until("status clears", || {
        channel.status().discovery_error.is_none()
    })
    .await;
    let (calls, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(calls > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_is_explained_and_heals_without_restart() {
    let c = Cluster::start().await;
    let Some(api) = c.double() else { return };
    let servers = servers(1);
    publish(&c, &servers[0], true, false).await;
    api.set_fault(Some(Fault::forbidden("default", "greeter-client")));
    let channel = c.channel("grpc", "round_robin");
    let mut client = GreeterClient::new(channel.clone());
    wait_until("the error in status", || {
        channel.status().discovery_error.is_some()
    })
    .await;
    let err = hello(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    for want in [
        "service account `greeter-client` in namespace `default`",
        "list",
        "endpointslices.discovery.k8s.io",
        "namespace `default`",
        "examples/k8s/rbac.yaml",
        "kubernetes:///greeter.default:grpc",
    ] {
        assert!(
            err.message().contains(want),
            "`{want}` missing from: {}",
            err.message()
        );
    }
    let status_err = channel.status().discovery_error.unwrap();
    assert!(status_err.contains("403"), "{status_err}");
    // Fixing the RBAC heals the client, no restart.
    api.set_fault(None);
    wait_ready(&channel, 1).await;
    assert_eq!(hello(&mut client).await.unwrap(), "s0");
    assert!(channel.status().discovery_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_api_errors_are_explained() {
    let c = Cluster::start().await;
    let Some(api) = c.double() else { return };
    for (fault, wants) in [
        (Fault::unauthorized(), vec!["401", "credentials"]),
        (
            Fault::status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
            vec!["404", "discovery.k8s.io/v1"],
        ),
        (
            Fault::status(500, "InternalError", "etcdserver: request timed out"),
            vec!["500", "etcdserver", "retrying"],
        ),
        // 429, 503 and 504 are retried inside kube's client first (up to 15 times), so
        // they surface later; 502 shows the same handling at once.
        (
            Fault::status(502, "BadGateway", "upstream connect error"),
            vec!["502", "keeping the last known endpoints"],
        ),
    ] {
        api.set_fault(Some(fault.clone()));
        let channel = c.channel("grpc", "round_robin");
        let mut client = GreeterClient::new(channel.clone());
        let what = format!("the {} error in status", fault.code);
        wait_until(&what, || channel.status().discovery_error.is_some()).await;
        let err = hello(&mut client).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        for want in wants {
            assert!(
                err.message().contains(want),
                "{}: `{want}` missing from: {}",
                fault.code,
                err.message()
            );
        }
    }
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
    K8sScheme::new(c.config()).register(&mut registry);
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
async fn malformed_and_null_fields_never_panic_and_good_slices_still_serve() {
    let c = Cluster::start().await;
    let Some(api) = c.double() else { return };
    let servers = servers(1);
    publish(&c, &servers[0], true, false).await;
    let ns = c.ns.clone();
    let label = serde_json::json!({"kubernetes.io/service-name": SERVICE});
    for (i, bad) in [
        serde_json::json!({"addressType": "IPv4", "endpoints": null, "ports": null}),
        serde_json::json!({"addressType": "IPv4", "endpoints": [{"addresses": ["not-an-ip"], "conditions": null}]}),
        serde_json::json!({"addressType": "IPv4", "endpoints": [{"conditions": {"ready": true}}]}),
        serde_json::json!({"endpoints": [{"addresses": ["10.9.9.9"]}]}),
        serde_json::json!({"addressType": "IPv4", "endpoints": 5}),
        serde_json::json!({"addressType": "FQDN", "endpoints": [{"addresses": ["x.example.com"]}]}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut obj = bad;
        obj["metadata"] = serde_json::json!({"name": format!("bad-{i}"), "labels": label});
        api.apply(&ns, obj);
    }
    let channel = c.channel("grpc", "round_robin");
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..10 {
        assert_eq!(hello(&mut client).await.unwrap(), "s0");
    }
    wait_until("problems reported", || {
        channel.status().discovery_error.is_some()
    })
    .await;
    let err = channel.status().discovery_error.unwrap();
    assert!(err.contains("EndpointSlice `bad-"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_connections_are_resumed() {
    let c = Cluster::start().await;
    let Some(api) = c.double() else { return };
    let servers = servers(2);
    publish(&c, &servers[0], true, false).await;
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 1).await;
    for _ in 0..3 {
        api.drop_watches();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    publish(&c, &servers[1], true, false).await;
    wait_ready(&channel, 2).await;
    let reqs = api.requests();
    assert!(
        reqs.iter().filter(|r| r.contains("watch=")).count() >= 2,
        "{reqs:?}"
    );
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
