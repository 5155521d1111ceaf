//! `meshless bench` and `meshless resolve --connect` against real TLS and mTLS servers on
//! loopback, with certificates made by a throwaway CA in each test.
#![cfg(feature = "tls")]

mod common;

use std::path::PathBuf;

use common::{assert_one_line_error, json, meshless, static_target, stdout};
use meshless_integration::server::{ServerHandle, TestServer};
use meshless_integration::tls::{ServerTls, TestCa};

/// Writes `text` to `name` in `dir` and returns the path as a string.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path: PathBuf = dir.path().join(name);
    std::fs::write(&path, text).expect("write pem");
    path.to_str().expect("utf-8 path").to_owned()
}

fn tls_servers(n: usize, tls: impl Fn() -> ServerTls) -> Vec<ServerHandle> {
    (0..n)
        .map(|i| {
            TestServer::new(format!("s{i}"))
                .tls(tls())
                .spawn()
                .expect("tls server")
        })
        .collect()
}

fn target_of(servers: &[ServerHandle]) -> String {
    static_target(&servers.iter().map(ServerHandle::addr).collect::<Vec<_>>())
}

#[test]
fn bench_spreads_calls_over_a_tls_fleet_with_mtls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("ca");
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem());
    let (client_cert, client_key) = ca.issue(&["client.test"]);
    let cert_file = write(&dir, "client.crt", &client_cert);
    let key_file = write(&dir, "client.key", &client_key);
    let servers = tls_servers(3, || {
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        ServerTls::new(cert, key).require_client_cert(ca.cert_pem())
    });
    let target = target_of(&servers);

    let out = meshless()
        .args(["bench", "--json", "--requests", "300", "--concurrency", "4"])
        .args(["--tls-ca", &ca_file, "--tls-cert", &cert_file])
        .args(["--tls-key", &key_file, &target])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["requests"], 300);
    assert_eq!(v["errors"], 0);
    // Round robin over three ready endpoints: each gets exactly its third.
    for e in v["endpoints"].as_array().expect("endpoints") {
        assert_eq!(e["count"], 100, "{v}");
    }

    // Without the client identity every server refuses us, and the one error line says to
    // give one.
    let out = meshless()
        .args(["bench", "--requests", "10", "--timeout", "5s"])
        .args(["--tls-ca", &ca_file, &target])
        .output()
        .expect("run");
    assert_one_line_error(&out, 4, "requires a client certificate");
}

#[test]
fn bench_verifies_the_server_name_it_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("ca");
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem());
    let servers = tls_servers(1, || {
        let (cert, key) = ca.issue(&["greeter.test"]);
        ServerTls::new(cert, key)
    });
    let target = target_of(&servers);

    // The address is not in the certificate: refused, naming what was expected.
    let out = meshless()
        .args(["bench", "--requests", "5", "--timeout", "5s"])
        .args(["--tls-ca", &ca_file, &target])
        .output()
        .expect("run");
    let line = assert_one_line_error(&out, 4, "127.0.0.1");
    assert!(line.contains("greeter.test"), "{line}");

    let out = meshless()
        .args(["bench", "--json", "--requests", "5"])
        .args(["--tls-ca", &ca_file, "--tls-server-name", "greeter.test"])
        .arg(&target)
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["errors"], 0);
}

#[test]
fn resolve_with_tls_options_shows_which_endpoints_accept_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("ca");
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem());
    let good = tls_servers(1, || {
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        ServerTls::new(cert, key)
    });
    // A server whose certificate comes from a CA we do not trust.
    let stranger = TestCa::new("stranger");
    let bad = tls_servers(1, || {
        let (cert, key) = stranger.issue(&["127.0.0.1"]);
        ServerTls::new(cert, key)
    });
    let target = static_target(&[good[0].addr(), bad[0].addr()]);

    let out = meshless()
        .args(["resolve", "--json", "--timeout", "5s", "--tls-ca", &ca_file])
        .arg(&target)
        .output()
        .expect("run");
    // Some endpoint did not connect: exit code 4, after the full report.
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v = json(&out);
    let conns = v["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 2, "{v}");
    assert_eq!(conns[0]["address"], good[0].addr().to_string());
    assert_eq!(conns[0]["state"], "ready", "{v}");
    assert_eq!(conns[1]["state"], "transient_failure", "{v}");
    let error = conns[1]["error"].as_str().expect("error");
    assert!(error.contains("does not trust"), "{error}");

    // Only trusted servers: a table with a CONNECTION column, exit 0.
    let out = meshless()
        .args(["resolve", "--timeout", "5s", "--tls-ca", &ca_file])
        .arg(target_of(&good))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("CONNECTION"), "{text}");
    assert!(text.contains("ready"), "{text}");

    // Plain resolve does not connect at all.
    let out = meshless()
        .args(["resolve", "--json"])
        .arg(target_of(&bad))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(json(&out).get("connections").is_none());
}

#[test]
fn tls_options_with_missing_files_are_usage_errors() {
    let out = meshless()
        .args([
            "bench",
            "--tls-ca",
            "/nonexistent/ca.pem",
            "static:///127.0.0.1:1",
        ])
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "--tls-ca /nonexistent/ca.pem: no such file");

    // A certificate without its key: clap refuses it.
    let out = meshless()
        .args(["bench", "--tls-cert", "/tmp/c.pem", "static:///127.0.0.1:1"])
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "--tls-key");
}
