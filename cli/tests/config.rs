//! `meshless check-config`: a valid file is ok; an invalid one lists every problem with its
//! position on stdout and exits 2 with one line on stderr.

mod common;

use common::{assert_one_line_error, json, meshless, stdout};

fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_valid_file_is_ok_and_an_invalid_one_lists_every_problem() {
    let (_d, good) = write(
        "good.yaml",
        "clients:\n  cart:\n    target: dns:///cart.prod:50051\n    serviceConfig:\n      loadBalancingConfig: [{round_robin: {}}]\n",
    );
    let out = meshless().arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("ok: 1 client: cart"),
        "{}",
        stdout(&out)
    );

    let (_d, bad) = write(
        "bad.toml",
        "[clients.cart]\ntarget = \"dns:///cart:1\"\nconectTimeout = \"1s\"\nqueueTimeout = \"5\"\n",
    );
    let out = meshless().arg("check-config").arg(&bad).output().unwrap();
    assert_one_line_error(&out, 2, "bad.toml: 2 problems (listed on stdout)");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with("bad.toml:3:1: clients.cart.conectTimeout: unknown key `conectTimeout`; did you mean `connectTimeout`?"), "{text}");
    assert!(
        lines[1].contains("bad.toml:4:16: clients.cart.queueTimeout:"),
        "{text}"
    );

    let out = meshless()
        .args(["check-config", "--json"])
        .arg(&bad)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["line"], 3);
    assert_eq!(v["problems"][0]["path"], "clients.cart.conectTimeout");
}

/// `bench --config FILE --client NAME` runs with the client's settings and service config
/// (here a retry on NOT_FOUND, so the endpoint that does not know the service is retried
/// away from); `resolve` takes the client's target.
#[test]
fn bench_and_resolve_take_a_configured_client() {
    let servers = common::servers(2);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(servers[0].set_health("svc.X", tonic_health::ServingStatus::Serving));
    let addrs: Vec<_> = servers.iter().map(|s| s.addr()).collect();
    let (_d, file) = write(
        "clients.yaml",
        &format!(
            "clients:\n  health:\n    target: {}\n    serviceConfig:\n      loadBalancingConfig: [{{round_robin: {{}}}}]\n      methodConfig:\n        - name: [{{service: grpc.health.v1.Health}}]\n          retryPolicy: {{maxAttempts: 2, initialBackoff: 1ms, maxBackoff: 5ms, backoffMultiplier: 2, retryableStatusCodes: [NOT_FOUND]}}\n",
            common::static_target(&addrs)
        ),
    );
    let out = meshless()
        .args([
            "bench",
            "--json",
            "--requests",
            "100",
            "--service",
            "svc.X",
            "--client",
            "health",
            "--config",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["policy"], "round_robin");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(
        v["resilience"],
        serde_json::json!(["the service config of client health"])
    );

    let out = meshless()
        .args(["resolve", "--json", "--client", "health", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for a in &addrs {
        assert!(text.contains(&a.to_string()), "{text}");
    }

    let out = meshless()
        .args(["resolve", "--client", "nope", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        2,
        "--client nope: the config file has no such client (it has: health)",
    );
}
