//! `resolve`, `watch` and `bench` on `dns:` and `dns+srv:` targets, against the test kit's
//! in-process DNS server (real DNS over UDP/TCP on loopback).
#![cfg(feature = "dns")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{assert_one_line_error, json, meshless, servers, stdout};
use meshless_integration::dns::{DnsServer, Srv, loopback_ip};

/// TTL of the test records: the backend re-resolves after it (its lower clamp is 1 s).
const TTL_SECS: u32 = 1;

fn dns() -> DnsServer {
    let dns = DnsServer::spawn().expect("dns server");
    dns.set_ttl(TTL_SECS);
    dns
}

/// The endpoints of a `resolve --json` or watch event list, as sorted `address` strings.
fn addresses(endpoints: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = endpoints
        .as_array()
        .expect("endpoint array")
        .iter()
        .map(|e| e["address"].as_str().expect("address").to_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn resolve_asks_the_server_in_the_target_or_in_the_flag() {
    let dns = dns();
    dns.set_a("greeter.test", &[loopback_ip(0), loopback_ip(1)]);
    let wanted = ["127.0.0.2:50051", "127.0.0.3:50051"];

    let out = meshless()
        .args(["resolve", "--json"])
        .arg(format!("dns://{}/greeter.test:50051", dns.addr()))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(addresses(&json(&out)["endpoints"]), wanted);

    let out = meshless()
        .args(["resolve", "--dns-server", &dns.addr().to_string()])
        .arg("dns:///greeter.test:50051")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with("dns:///greeter.test:50051: 2 endpoints"),
        "{text}"
    );
    for addr in wanted {
        assert!(text.contains(&format!("{addr}  1 ")), "{text}");
    }
}

#[test]
fn resolve_srv_shows_weights_and_record_metadata() {
    let dns = dns();
    dns.set_a("a.greeter.test", &[loopback_ip(0)]);
    dns.set_a("b.greeter.test", &[loopback_ip(1)]);
    dns.set_srv(
        "_grpc._tcp.greeter.test",
        &[
            Srv::new(0, 3, 50051, "a.greeter.test"),
            Srv::new(0, 1, 50052, "b.greeter.test"),
        ],
    );
    let out = meshless()
        .args(["resolve", "--json", "--dns-server", &dns.addr().to_string()])
        .arg("dns+srv:///_grpc._tcp.greeter.test")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let mut eps: Vec<(String, u64, String)> = v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_owned(),
                e["weight"].as_u64().unwrap_or_default(),
                e["metadata"][meshless::discovery::dns::META_SRV_TARGET]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        [
            // The record's target as DNS gives it: fully qualified.
            ("127.0.0.2:50051".into(), 3, "a.greeter.test.".into()),
            ("127.0.0.3:50052".into(), 1, "b.greeter.test.".into()),
        ]
    );
    // DNS has no notion of readiness.
    assert!(v["endpoints"][0]["readiness"].is_null(), "{v}");
}

#[test]
fn a_name_that_does_not_exist_is_a_discovery_error_naming_it_and_the_server() {
    let dns = dns();
    let server = dns.addr().to_string();
    let out = meshless()
        .args([
            "resolve",
            "--dns-server",
            &server,
            "dns:///nothing.test:50051",
        ])
        .output()
        .expect("run");
    let line = assert_one_line_error(&out, 3, "nothing.test");
    assert!(line.contains(&server), "{line}");
}

#[test]
fn dns_server_flag_misuse_is_a_usage_error() {
    for (target, server, wanted) in [
        ("static:///127.0.0.1:1", "127.0.0.1", "applies to `dns:`"),
        (
            "dns://127.0.0.1:53/a.test:1",
            "127.0.0.1",
            "already names DNS server",
        ),
        ("dns:///a.test:1", "ns.example", "not an IP address"),
    ] {
        let out = meshless()
            .args(["resolve", "--dns-server", server, target])
            .output()
            .expect("run");
        assert_one_line_error(&out, 2, wanted);
    }
}

#[test]
fn watch_shows_records_changed_mid_watch() {
    let dns = dns();
    dns.set_a("greeter.test", &[loopback_ip(0), loopback_ip(1)]);
    // A child we read line by line while we change the records; --duration bounds it, so
    // reading its output never blocks past that.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("meshless"))
        .args(["watch", "--json", "--duration", "30s"])
        .args([
            "--dns-server",
            &dns.addr().to_string(),
            "dns:///greeter.test:50051",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn meshless watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_event = || -> serde_json::Value {
        let line = lines
            .next()
            .expect("watch ended before the expected event")
            .expect("read stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };

    let first = next_event();
    assert_eq!(first["event"], "reset", "{first}");
    assert_eq!(
        addresses(&first["added"]),
        ["127.0.0.2:50051", "127.0.0.3:50051"]
    );

    // Scale: 127.0.0.3 leaves, 127.0.0.4 arrives; seen at the next re-resolution (TTL).
    dns.set_a("greeter.test", &[loopback_ip(0), loopback_ip(2)]);
    let change = loop {
        let e = next_event();
        if e["event"] == "reset" {
            break e;
        }
        assert_ne!(e["event"], "end", "{e}");
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(change["endpoints"], 2, "{change}");
    assert_eq!(addresses(&change["added"]), ["127.0.0.4:50051"], "{change}");
    assert_eq!(
        change["removed"],
        serde_json::json!(["127.0.0.3:50051"]),
        "{change}"
    );
    assert_eq!(change["changed"], serde_json::json!([]), "{change}");
}

/// The events of a finished `watch --json` run.
fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

// A DNS watch never ends (DNS can always change), so only --duration stops these two; the
// DNS server here answers at once, which leaves each run one possible outcome. They live
// here rather than beside the static-list tests because a static host name goes through
// the system resolver, whose answer (or silence) a test cannot choose.

#[test]
fn watch_duration_stops_a_healthy_watch_with_exit_0() {
    let dns = dns();
    dns.set_a("greeter.test", &[loopback_ip(0)]);
    let out = meshless()
        .args(["watch", "--json", "--duration", "2s", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("dns:///greeter.test:50051")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events = events(&out);
    assert_eq!(events.first().map(|e| &e["event"]), Some(&"reset".into()));
    assert_eq!(addresses(&events[0]["added"]), ["127.0.0.2:50051"]);
    // Re-resolving the same answer every TTL prints nothing; the stream did not end.
    assert!(events.iter().all(|e| e["event"] == "reset"), "{events:?}");
}

#[test]
fn watch_stopped_while_discovery_fails_exits_3() {
    let dns = dns();
    let out = meshless()
        .args(["watch", "--json", "--duration", "2s", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("dns:///nothing.test:50051")
        .output()
        .expect("run");
    let events = events(&out);
    // The name does not exist: every attempt is an error event, and the watch stops on one.
    assert!(!events.is_empty(), "no event in 2 s: {out:?}");
    for e in &events {
        assert_eq!(e["event"], "error", "{e}");
        assert_eq!(e["kind"], "not_found", "{e}");
    }
    assert_one_line_error(&out, 3, "still failing when the watch stopped");
}

#[test]
fn bench_balances_over_srv_endpoints() {
    let servers = servers(2);
    let dns = dns();
    let mut records = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let host = format!("s{i}.greeter.test");
        dns.set_a(&host, &[s.addr().ip()]);
        records.push(Srv::new(0, 1, s.addr().port(), host));
    }
    dns.set_srv("_grpc._tcp.greeter.test", &records);
    let out = meshless()
        .args([
            "bench",
            "--json",
            "--requests",
            "400",
            "--policy",
            "round_robin",
        ])
        .arg(format!("dns+srv://{}/_grpc._tcp.greeter.test", dns.addr()))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let counts: Vec<(String, u64)> = v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_owned(),
                e["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let mut wanted: Vec<(String, u64)> = servers
        .iter()
        .map(|s| (s.addr().to_string(), 200))
        .collect();
    let mut got = counts;
    got.sort();
    wanted.sort();
    assert_eq!(got, wanted, "round robin over two endpoints: 200 each");
}
