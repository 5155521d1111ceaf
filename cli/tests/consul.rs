//! `resolve`, `watch` and `register` on Consul, against the test kit's loopback Consul
//! agent double.
#![cfg(feature = "consul")]

mod common;

use common::{assert_one_line_error, json, meshless, servers, stdout};
use http::Method;
use meshless_integration::consul::{ConsulAgent, request};
use serde_json::json as j;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_reads_go_zero_and_kratos_records() {
    let agent = ConsulAgent::start_new().await.unwrap();
    let a = agent.addr().to_string();
    let s = servers(1);
    let body = j!({"ID": "k1", "Name": "hello", "Tags": ["version=v3"], "Meta": {"weight": "9"},
        "Address": "127.0.0.1", "Port": s[0].addr().port(),
        "TaggedAddresses": {"grpc": {"Address": format!("grpc://{}", s[0].addr()), "Port": s[0].addr().port()}},
        "Check": {"TTL": "30s", "Status": "passing"}});
    let (code, _, _) = request(
        &a,
        Method::PUT,
        "/v1/agent/service/register",
        Some(body),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let target = format!("consul://{a}/hello");
    let out = tokio::task::spawn_blocking(move || {
        meshless()
            .args(["resolve", &target, "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let eps = v["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 1, "{v}");
    assert_eq!(eps[0]["address"], s[0].addr().to_string());
    assert_eq!(eps[0]["weight"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_keeps_the_instance_until_it_stops_then_deregisters() {
    let agent = ConsulAgent::start_new().await.unwrap();
    let a = agent.addr().to_string();
    let registry = format!("consul://{a}?format=kratos&ttl=2s");
    let run = tokio::task::spawn_blocking(move || {
        meshless()
            .args([
                "register",
                &registry,
                "--addr",
                "127.0.0.1:7001",
                "--name",
                "greeter",
                "--id",
                "g-1",
                "--version",
                "v1",
                "--meta",
                "zone=a",
                "--duration",
                "2s",
                "--json",
            ])
            .output()
            .unwrap()
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while agent.service_ids() != ["g-1"] {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        agent.check_status("service:g-1").as_deref(),
        Some("passing")
    );
    let out = run.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let states: Vec<String> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        states.first().map(String::as_str),
        Some("registering"),
        "{states:?}"
    );
    assert!(states.iter().any(|s| s == "registered"), "{states:?}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("deregistered"),
        "{states:?}"
    );
    assert!(
        agent.service_ids().is_empty(),
        "not deregistered: {:?}",
        agent.service_ids()
    );
}

#[test]
fn register_rejects_bad_input_with_one_line() {
    let out = meshless()
        .args([
            "register",
            "zk://127.0.0.1:2181",
            "--addr",
            "127.0.0.1:1",
            "--name",
            "x",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "zk://");
    let out = meshless()
        .args([
            "register",
            "consul://127.0.0.1:8500",
            "--addr",
            "127.0.0.1",
            "--name",
            "x",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "port");
    let out = meshless()
        .args([
            "register",
            "consul://127.0.0.1:8500",
            "--addr",
            "127.0.0.1:1",
            "--name",
            "x",
            "--format",
            "dubbo",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "dubbo");
}

#[test]
fn register_that_never_succeeds_exits_3() {
    let dead = common::closed_port();
    let out = meshless()
        .args([
            "register",
            &format!("consul://{dead}"),
            "--addr",
            "127.0.0.1:1",
            "--name",
            "x",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 3, "never registered");
}
