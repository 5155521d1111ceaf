//! `meshless resolve` and `meshless watch` on the always-built schemes, run as a real binary.
//!
//! `watch --duration` on a watch that never ends, and its exit code, are tested in dns.rs:
//! there the test's own DNS server decides whether discovery fails, where a static host
//! name would leave it to the system resolver.

mod common;

use std::net::SocketAddr;

use common::{closed_port, json, meshless, static_target, stdout};

fn two_addrs() -> Vec<SocketAddr> {
    // Discovery does not connect, so nothing needs to listen here.
    vec![closed_port(), closed_port()]
}

#[test]
fn help_documents_the_exit_codes() {
    let out = meshless().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = stdout(&out);
    for line in [
        "Exit codes:",
        "0  success",
        "2  usage",
        "3  discovery failed",
        "4  calls failed",
    ] {
        assert!(help.contains(line), "`{line}` not in --help:\n{help}");
    }
}

#[test]
fn resolve_prints_a_table_of_the_endpoints() {
    let addrs = two_addrs();
    let target = static_target(&addrs);
    let out = meshless().args(["resolve", &target]).output().expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("{target}: 2 endpoints"));
    assert!(lines[1].starts_with("ADDRESS"), "{text}");
    for (line, addr) in lines[2..].iter().zip(&addrs) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        // address, weight, zone, readiness (static lists have no notion of it), metadata
        assert_eq!(
            cells,
            [addr.to_string().as_str(), "1", "-", "n/a", "-"],
            "{text}"
        );
    }
    assert_eq!(lines.len(), 4, "{text}");
}

#[test]
fn resolve_json_lists_every_field() {
    let addrs = two_addrs();
    let target = static_target(&addrs);
    let out = meshless()
        .args(["resolve", "--json", &target])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["target"], target);
    let eps = v["endpoints"].as_array().expect("endpoints array");
    assert_eq!(eps.len(), 2);
    for (ep, addr) in eps.iter().zip(&addrs) {
        assert_eq!(ep["address"], addr.to_string());
        assert_eq!(ep["weight"], 1);
        assert!(ep["zone"].is_null());
        assert!(ep["readiness"].is_null());
        assert_eq!(ep["metadata"], serde_json::json!({}));
    }
}

#[test]
fn resolve_handles_ipv6_and_unix_targets() {
    let out = meshless()
        .args(["resolve", "--json", "ipv6:[::1]:50051"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["endpoints"][0]["address"], "[::1]:50051");

    let out = meshless()
        .args(["resolve", "--json", "unix:///run/greeter.sock"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        json(&out)["endpoints"][0]["address"],
        "unix:/run/greeter.sock"
    );
}

#[test]
fn watch_json_prints_the_reset_then_the_end_of_a_static_list() {
    let addrs = two_addrs();
    let target = static_target(&addrs);
    let out = meshless()
        .args(["watch", "--json", "--duration", "30s", &target])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    let reset = &events[0];
    assert_eq!(reset["event"], "reset");
    assert_eq!(reset["endpoints"], 2);
    let added: Vec<&str> = reset["added"]
        .as_array()
        .expect("added")
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    // Sets are printed sorted by address.
    let mut wanted: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    wanted.sort();
    assert_eq!(added, wanted);
    assert_eq!(reset["removed"], serde_json::json!([]));
    assert_eq!(events[1]["event"], "end");
    for e in &events {
        let ts = e["ts"].as_str().expect("ts");
        humantime::parse_rfc3339(ts).unwrap_or_else(|err| panic!("ts `{ts}`: {err}"));
    }
}

#[test]
fn watch_prints_timestamped_sets() {
    let mut addrs = two_addrs();
    let out = meshless()
        .args(["watch", "--duration", "30s", &static_target(&addrs)])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    addrs.sort_by_key(SocketAddr::to_string); // sets are printed sorted by address
    assert!(
        lines[0].contains("  reset   2 endpoints (+2 ~0 -0)"),
        "{text}"
    );
    assert!(
        lines[1].contains(&format!("+ {}  weight=1 readiness=n/a", addrs[0])),
        "{text}"
    );
    assert!(lines[2].contains(&format!("+ {}", addrs[1])), "{text}");
    assert!(lines[3].contains("  end     "), "{text}");
}
