//! `resolve`, `watch` and `bench` on `kubernetes:` targets, against the test kit's loopback
//! double of the Kubernetes API server, reached through `--kubeconfig`.
#![cfg(feature = "k8s")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{RUN_BOUND, assert_one_line_error, json, meshless, servers};
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

/// A running child process, killed and reaped when the test is done with it or fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next event a `watch --json` printed; fails if none comes within half of
/// [`RUN_BOUND`] or the watch ends first.
async fn next_event(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> serde_json::Value {
    let line = tokio::time::timeout(RUN_BOUND / 2, lines.recv())
        .await
        .expect("no watch event in time")
        .expect("the watch ended before the expected event");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The addresses an event added to the set.
fn added(event: &serde_json::Value) -> Vec<String> {
    event["added"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    // --duration only bounds a run whose test failed; the test stops it once it has seen
    // what it waits for.
    let duration = format!("{}s", RUN_BOUND.as_secs());
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshless"))
        .args([
            "watch",
            "--json",
            "--duration",
            &duration,
            "--kubeconfig",
            &kc_arg,
            "kubernetes:///greeter",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let watch = KillOnDrop(child);
    // Lines are read off the runtime, so the double keeps serving while the test waits.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The second slice goes in only once the watch has printed the first set: the watch has
    // started by then, so it must report the slice as an addition.
    let first = next_event(&mut lines).await;
    assert_eq!(first["event"], "reset", "{first}");
    assert_eq!(added(&first), [servers[0].addr().to_string()], "{first}");
    api.apply("default", slice("greeter-1", servers[1].addr().port()));
    loop {
        let event = next_event(&mut lines).await;
        assert_ne!(event["event"], "end", "{event}");
        if added(&event).contains(&servers[1].addr().to_string()) {
            break;
        }
    }
    drop(watch);

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
