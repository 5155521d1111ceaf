//! Kubernetes discovery against the loopback double of the API server only: the tests that
//! inject faults into it (410 Gone, outages, 403/401/5xx, malformed objects, dropped
//! watches) or read its request log (pagination, label selector). A real cluster can do
//! neither on demand, so these tests ignore `MESHLESS_TEST_KUBECONFIG`; the ones that run
//! against a real cluster too are in `k8s.rs`.

mod common;
mod k8s_support;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use k8s_support::*;
use meshless::discovery::k8s::K8sDiscovery;
use meshless::discovery::{Discovery, Target, Update};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::k8s::Fault;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_is_followed() {
    let c = Cluster::double_only().await;
    // More slices than kube's default page size of 500.
    for i in 0..520 {
        c.double().apply(
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
    // The list was paginated with limit/continue and filtered by label.
    let reqs = c.double().requests();
    assert!(
        reqs.iter().any(|r| r.contains("continue=")),
        "second page not requested: {reqs:?}"
    );
    assert!(
        reqs.iter().any(
            |r| r.contains("labelSelector=kubernetes.io%2Fservice-name%3Dgreeter")
                || r.contains("labelSelector=kubernetes.io/service-name=greeter")
        ),
        "{reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_gone_under_load_drops_no_traffic() {
    let c = Cluster::double_only().await;
    let api = c.double();
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
    let mut c = Cluster::double_only().await;
    let servers = servers(3);
    for s in &servers[..2] {
        publish(&c, s, true, false).await;
    }
    let channel = c.channel("grpc", "round_robin");
    wait_ready(&channel, 2).await;
    let load = Load::start(&channel, 4);
    c.double_mut().stop();
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
    c.double().apply(
        &c.ns,
        slice_for(
            &slice_name(&servers[2]),
            servers[2].addr().port(),
            &[pod(&servers[2], true, false)],
        ),
    );
    c.double_mut().restart().await.unwrap();
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
    let c = Cluster::double_only().await;
    let api = c.double();
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
    let c = Cluster::double_only().await;
    let api = c.double();
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
async fn malformed_and_null_fields_never_panic_and_good_slices_still_serve() {
    let c = Cluster::double_only().await;
    let api = c.double();
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
    let c = Cluster::double_only().await;
    let api = c.double();
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
