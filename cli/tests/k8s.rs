//! `resolve`, `watch` and `bench` on `kubernetes:` targets, against the test kit's loopback
//! double of the Kubernetes API server, reached through `--kubeconfig`.
#![cfg(feature = "k8s")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{assert_one_line_error, json, meshless, servers};
use meshless_integration::k8s::{Fault, KubeApi, endpoint_slice};

/// A kubeconfig file pointing at the double, namespace `default`.
fn kubeconfig(api: &KubeApi, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: double\n    user: u\n    namespace: default\ncurrent-context: c\n",
        api.url()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Runs the CLI off the runtime's threads, so the double keeps serving meanwhile.
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || meshless().args(args).output().expect("run"))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_lists_ready_pods_with_their_metadata() {
    let api = KubeApi::start().await.expect("api");
    let dir = tempfile::tempdir().expect("dir");
    let kc = kubeconfig(&api, dir.path());
    api.apply(
        "default",
        endpoint_slice(
            "greeter-a",
            "greeter",
            "IPv4",
            &[("grpc", 8080)],
            &[
                ("10.0.0.1", true, true, false),
                ("10.0.0.2", false, true, true),
            ],
        ),
    );
    let out = run(vec![
        "resolve".into(),
        "--json".into(),
        "--kubeconfig".into(),
        kc.display().to_string(),
        "kubernetes:///greeter:grpc".into(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let eps = v["endpoints"].as_array().expect("endpoints");
    assert_eq!(eps.len(), 1, "{v}");
    assert_eq!(eps[0]["address"], "10.0.0.1:8080");
    assert_eq!(eps[0]["metadata"]["slice"], "greeter-a");
    // --namespace names the namespace explicitly.
    let out = run(vec![
        "resolve".into(),
        "--kubeconfig".into(),
        kc.display().to_string(),
        "--namespace".into(),
        "default".into(),
        "kubernetes:///greeter:grpc".into(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_is_one_line_naming_the_rbac_rule() {
    let api = KubeApi::start().await.expect("api");
    let dir = tempfile::tempdir().expect("dir");
    let kc = kubeconfig(&api, dir.path());
    api.set_fault(Some(Fault::forbidden("default", "debugger")));
    let out = run(vec![
        "resolve".into(),
        "--kubeconfig".into(),
        kc.display().to_string(),
        "kubernetes:///greeter:grpc".into(),
    ])
    .await;
    let line = assert_one_line_error(&out, 3, "endpointslices.discovery.k8s.io");
    for want in [
        "service account `debugger`",
        "examples/k8s/rbac.yaml",
        "list",
    ] {
        assert!(line.contains(want), "`{want}` missing: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_a_scale_up_and_bench_spreads_calls() {
    let api = KubeApi::start().await.expect("api");
    let dir = tempfile::tempdir().expect("dir");
    let kc = kubeconfig(&api, dir.path());
    let servers = servers(2);
    let slice = |name: &str, port: u16| {
        endpoint_slice(
            name,
            "greeter",
            "IPv4",
            &[("grpc", port)],
            &[("127.0.0.1", true, true, false)],
        )
    };
    api.apply("default", slice("greeter-0", servers[0].addr().port()));
    let kc_arg = kc.display().to_string();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshless"))
        .args([
            "watch",
            "--json",
            "--duration",
            "3s",
            "--kubeconfig",
            &kc_arg,
            "kubernetes:///greeter",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    api.apply("default", slice("greeter-1", servers[1].addr().port()));
    let lines = lines.await.expect("lines");
    let _ = child.wait();
    let added: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|v| v["added"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect();
    assert!(added.contains(&servers[1].addr().to_string()), "{lines:?}");

    // bench over the same target: both pods get calls.
    let out = run(vec![
        "bench".into(),
        "--json".into(),
        "--requests".into(),
        "400".into(),
        "--policy".into(),
        "round_robin".into(),
        "--kubeconfig".into(),
        kc_arg.clone(),
        "kubernetes:///greeter:grpc".into(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let counts: Vec<u64> = v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 400, "{v}");
    assert!(counts.iter().all(|&c| c == 200), "{v}");
}
