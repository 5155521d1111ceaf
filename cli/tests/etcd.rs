//! `resolve`, `watch` and `register` on etcd, against a real etcd spawned on loopback by
//! the test kit (Debian's `etcd-server`, which scripts/test.sh installs).
#![cfg(feature = "etcd")]

mod common;

use std::time::Duration;

use common::{assert_one_line_error, json, meshless, servers, stdout};
use meshless_integration::etcd::EtcdServer;

async fn etcd() -> Option<EtcdServer> {
    if !meshless_integration::etcd::available() {
        assert!(
            std::env::var_os("MESHLESS_SKIP_ETCD").is_some(),
            "etcd is not installed; scripts/test.sh installs etcd-server and etcd-client \
             (MESHLESS_SKIP_ETCD=1 skips these tests)"
        );
        return None;
    }
    Some(EtcdServer::start().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_reads_go_zero_and_kratos_keys() {
    let Some(etcd) = etcd().await else { return };
    let s = servers(2);
    etcd.put("user.rpc/1", &s[0].addr().to_string())
        .await
        .unwrap();
    etcd.put(
        "/microservices/hello/k1",
        &format!(
            r#"{{"id":"k1","name":"hello","version":"v3","metadata":{{"weight":"9"}},"endpoints":["grpc://{}"]}}"#,
            s[1].addr()
        ),
    )
    .await
    .unwrap();
    let a = etcd.addr();
    for (target, addr, weight) in [
        (format!("etcd:///{a}?key=user.rpc"), s[0].addr(), 1),
        (
            format!("etcd:///{a}?key=hello&format=kratos"),
            s[1].addr(),
            9,
        ),
    ] {
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
        assert_eq!(eps[0]["address"], addr.to_string());
        assert_eq!(eps[0]["weight"], weight);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_keeps_the_key_until_it_stops_then_revokes_it() {
    let Some(etcd) = etcd().await else { return };
    let registry = format!("etcd://{}?format=kratos&ttl=3s", etcd.addr());
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
    let key = "/microservices/greeter/g-1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let kvs = etcd.get_prefix(key).await.unwrap();
        if !kvs.is_empty() {
            assert_eq!(
                kvs[0].1,
                r#"{"id":"g-1","name":"greeter","version":"v1","metadata":{"zone":"a"},"endpoints":["grpc://127.0.0.1:7001"]}"#
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = etcd.lease_of(key).await.unwrap();
    assert_eq!(etcd.granted_ttl(lease).await.unwrap(), 3);
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
        etcd.get_prefix(key).await.unwrap().is_empty(),
        "not revoked"
    );
}

#[test]
fn register_rejects_bad_etcd_input_with_one_line() {
    let out = meshless()
        .args([
            "register",
            "etcd://127.0.0.1:2379/user.rpc",
            "--addr",
            "127.0.0.1:1",
            "--name",
            "x",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "--name");
    let out = meshless()
        .args([
            "register",
            "etcd://127.0.0.1:2379",
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
    let out = meshless()
        .args([
            "register",
            "etcd://u:hunter2@127.0.0.1:2379?bogus=1",
            "--addr",
            "127.0.0.1:1",
            "--name",
            "x",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "bogus");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

#[test]
fn register_that_never_succeeds_exits_3() {
    let dead = common::closed_port();
    let out = meshless()
        .args([
            "register",
            &format!("etcd://{dead}?dial-timeout=200ms&timeout=300ms"),
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
