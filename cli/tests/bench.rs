//! `meshless bench` against real loopback gRPC servers that serve grpc.health.v1.Health.

mod common;

use std::collections::BTreeMap;

use common::{assert_one_line_error, closed_port, json, meshless, servers, static_target, stdout};
use meshless_integration::server::ServerHandle;

/// Calls in the distribution test: with 4 endpoints, a 5-sigma band of a fair split is
/// ±5·sqrt(N·¼·¾) ≈ ±97 calls around 500 (the band is for a random split; round robin's
/// should be exact, barring transparent retries).
const SPREAD_REQUESTS: u64 = 2000;

fn target_of(servers: &[ServerHandle]) -> String {
    static_target(&servers.iter().map(ServerHandle::addr).collect::<Vec<_>>())
}

/// The JSON's endpoint counts by address.
fn counts(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().expect("address").to_owned(),
                e["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

#[test]
fn round_robin_spreads_calls_evenly_and_the_counts_add_up() {
    let servers = servers(4);
    let out = meshless()
        .args([
            "bench",
            "--json",
            "--policy",
            "round_robin",
            "--concurrency",
            "8",
        ])
        .args([
            "--requests",
            &SPREAD_REQUESTS.to_string(),
            &target_of(&servers),
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["policy"], "round_robin");
    assert_eq!(v["requests"], SPREAD_REQUESTS);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["errors_by_code"], serde_json::json!({}));
    let counts = counts(&v);
    let wanted: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    assert_eq!(counts.keys().cloned().collect::<Vec<_>>(), {
        let mut w = wanted.clone();
        w.sort();
        w
    });
    assert_eq!(counts.values().sum::<u64>(), SPREAD_REQUESTS, "{counts:?}");
    let n = SPREAD_REQUESTS as f64;
    let (p, k) = (0.25, 4.0);
    let band = 5.0 * (n * p * (1.0 - p)).sqrt();
    for (addr, &c) in &counts {
        assert!(
            (c as f64 - n / k).abs() <= band,
            "{addr}: {c} of {n} ({counts:?})"
        );
    }
    let seconds = v["seconds"].as_f64().expect("seconds");
    let rps = v["rps"].as_f64().expect("rps");
    assert!(
        // rps is rounded to a whole number
        seconds > 0.0 && (rps - n / seconds).abs() <= 0.5,
        "{seconds} s, {rps}/s"
    );
    let l = &v["latency_ms"];
    let ps: Vec<f64> = ["p50", "p90", "p99", "p999"]
        .iter()
        .map(|k| {
            l[k].as_f64()
                .unwrap_or_else(|| panic!("latency_ms.{k}: {l}"))
        })
        .collect();
    assert!(ps[0] > 0.0 && ps.windows(2).all(|w| w[0] <= w[1]), "{l}");
}

#[test]
fn pick_first_sends_everything_to_one_endpoint() {
    let servers = servers(3);
    let out = meshless()
        .args([
            "bench",
            "--json",
            "--policy",
            "pick_first",
            "--requests",
            "200",
        ])
        .arg(target_of(&servers))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let mut counts: Vec<u64> = counts(&v).into_values().collect();
    counts.sort();
    assert_eq!(counts, [0, 0, 200]);
}

#[test]
fn duration_mode_counts_every_call_it_sent() {
    let servers = servers(2);
    let out = meshless()
        .args([
            "bench",
            "--json",
            "--duration",
            "500ms",
            "--concurrency",
            "4",
        ])
        .arg(target_of(&servers))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    let requests = v["requests"].as_u64().expect("requests");
    assert!(requests > 0, "{v}");
    assert_eq!(counts(&v).values().sum::<u64>(), requests, "{v}");
}

#[test]
fn failed_calls_are_counted_by_status_code() {
    // The health service answers NOT_FOUND for a service it does not know.
    let servers = servers(2);
    let out = meshless()
        .args([
            "bench",
            "--json",
            "--requests",
            "50",
            "--service",
            "no.such.Service",
        ])
        .arg(target_of(&servers))
        .output()
        .expect("run");
    assert_one_line_error(&out, 4, "50 of 50 calls failed; most common: NOT_FOUND");
    let v = json(&out);
    assert_eq!(v["errors"], 50);
    assert_eq!(v["errors_by_code"], serde_json::json!({"NOT_FOUND": 50}));
    assert!(v["latency_ms"].is_null(), "no successful call: {v}");
}

#[test]
fn a_dead_endpoint_is_reported_and_the_live_one_takes_the_calls() {
    let servers = servers(1);
    let live = servers[0].addr();
    let dead = closed_port();
    let out = meshless()
        .args(["bench", "--json", "--requests", "100"])
        .arg(static_target(&[live, dead]))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: 1 of 2 endpoints are not ready")
            && stderr.contains(&dead.to_string()),
        "{stderr}"
    );
    let counts = counts(&json(&out));
    assert_eq!(counts[&live.to_string()], 100, "{counts:?}");
    assert_eq!(counts[&dead.to_string()], 0, "{counts:?}");
}

#[test]
fn the_table_shows_shares_latency_and_errors() {
    let servers = servers(2);
    let out = meshless()
        .args(["bench", "--requests", "400", "--policy", "round_robin"])
        .arg(target_of(&servers))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("via round_robin: 400 calls in "), "{text}");
    for s in &servers {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(&s.addr().to_string()))
            .unwrap_or_else(|| panic!("no row for {}: {text}", s.addr()));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // address, calls, share, failed, bar of 50% of 40 characters
        assert_eq!(cells[1..4], ["200", "50.0%", "0"], "{row}");
        assert_eq!(cells[4], "█".repeat(20), "{row}");
    }
    assert!(text.contains("  latency  p50 "), "{text}");
    assert!(text.contains("  errors   none"), "{text}");
    // Not a terminal: no progress bar on stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--retry-attempts` sends a failed call again, to an endpoint it has not tried: with one of
/// two endpoints answering NOT_FOUND (it does not know the service) every call succeeds,
/// in about 1.5 attempts; without it half the calls fail. Bad resilience flags are usage
/// errors.
#[test]
fn retries_from_flags_recover_calls_that_one_endpoint_fails() {
    let servers = servers(2);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(servers[0].set_health("svc.X", tonic_health::ServingStatus::Serving));
    let run = |extra: &[&str]| {
        meshless()
            .args([
                "bench",
                "--json",
                "--requests",
                "200",
                "--policy",
                "round_robin",
            ])
            .args(["--service", "svc.X"])
            .args(extra)
            .arg(target_of(&servers))
            .output()
            .expect("run")
    };
    let out = run(&["--retry-attempts", "2", "--retry-codes", "NOT_FOUND"]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    assert_eq!(v["errors"], 0, "{v}");
    let per_call = v["attempts_per_call"].as_f64().unwrap();
    assert!((1.3..=1.7).contains(&per_call), "{v}");
    assert_eq!(v["resilience"], serde_json::json!(["retry 2"]));

    let out = run(&[]);
    let v = json(&out);
    assert_eq!(
        v["errors"], 100,
        "round robin sends every other call to the unknowing one: {v}"
    );

    let out = run(&["--retry-attempts", "1"]);
    assert_one_line_error(
        &out,
        2,
        "--retry-attempts: retryPolicy.maxAttempts: must be 2 or more",
    );
    let out = run(&["--retry-attempts", "2", "--retry-codes", "BUSY"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown status code `BUSY`"));
    let out = run(&["--throttle", "fast"]);
    assert_one_line_error(
        &out,
        2,
        "--throttle fast: unknown preset (use sre, go-zero or kratos)",
    );
}

/// `meshless top --json` prints one frame per interval; each frame has each endpoint's share
/// of its calls and the p50 and p99 of the calls each endpoint served, and each endpoint's
/// share over all frames is within 5 points of the share its server counted, with shares far
/// from even.
#[test]
fn top_json_prints_a_frame_per_interval() {
    // Uneven shares, so that a count shown on the wrong endpoint shows: least_request sends
    // most calls to the server that answers at once, few to the one that takes 3 ms.
    let servers = vec![
        meshless_integration::server::TestServer::new("slow")
            .check_latency(std::time::Duration::from_millis(3))
            .spawn()
            .unwrap(),
        meshless_integration::server::TestServer::new("fast")
            .spawn()
            .unwrap(),
    ];
    let out = meshless()
        .args([
            "top",
            "--json",
            "--duration",
            "2600ms",
            "--interval",
            "500ms",
            "--concurrency",
            "8",
            "--policy",
            "least_request",
        ])
        .arg(target_of(&servers))
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let frames: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(frames.len() >= 4, "{text}");
    let mut totals = BTreeMap::<String, u64>::new();
    for f in &frames {
        let eps = f["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2, "{f}");
        let calls: u64 = eps.iter().map(|e| e["calls"].as_u64().unwrap()).sum();
        for e in eps {
            let n = e["calls"].as_u64().unwrap();
            *totals
                .entry(e["address"].as_str().unwrap().to_owned())
                .or_default() += n;
            assert_eq!(e["state"], "ready", "{f}");
            if calls > 0 {
                let share = e["share"].as_f64().unwrap();
                assert!((share - n as f64 / calls as f64).abs() < 1e-9, "{f}");
            }
            if n >= 50 {
                // The latencies of the calls it served, from the channel's report.
                let (p50, p99) = (e["p50_ms"].as_f64().unwrap(), e["p99_ms"].as_f64().unwrap());
                assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{f}");
            }
        }
    }
    let all: u64 = totals.values().sum();
    assert!(all > 200, "{totals:?}");
    // Each endpoint's share in the frames is the share its server counted, within 5 points.
    let counted: Vec<u64> = servers.iter().map(|s| s.health_checks()).collect();
    let shown = shares_match_the_servers(&totals, &servers, &counted);
    // Far from even: counts swapped between the endpoints would be off by more than 5 points.
    assert!(shown[1] - shown[0] > 0.3, "slow, fast: {shown:?}");
}

/// `--metrics-addr` serves the run's gRPC instruments as Prometheus text while it runs.
#[test]
fn metrics_addr_serves_the_runs_instruments() {
    use std::io::{Read, Write};
    let servers = servers(1);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bin = assert_cmd::cargo::cargo_bin("meshless");
    let mut child = std::process::Command::new(bin)
        .args(["bench", "--json", "--duration", "4s", "--concurrency", "2"])
        // Every call hedged at once: A96's hedge counts, with their own buckets.
        .args([
            "--hedge-attempts",
            "2",
            "--hedge-delay",
            "0ms",
            "--metrics-addr",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg(target_of(&servers))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let scrape = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no scrape with the instruments"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        if body.contains("grpc_client_attempt_started") && body.contains("grpc_client_call_hedges")
        {
            break body;
        }
    };
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(
        scrape.contains(r#"grpc_client_attempt_started{grpc_method="grpc.health.v1.Health/Check""#),
        "{scrape}"
    );
    // Each histogram with its gRFC's buckets: A66's latency and size buckets, A96's counts.
    let buckets = |name: &str| -> Vec<String> {
        let prefix = format!("{name}_bucket{{");
        // The bounds of the first series (each series lists them all, up to +Inf).
        let mut les = Vec::new();
        for l in scrape.lines().filter(|l| l.starts_with(&prefix)) {
            let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
            les.extend(le.map(str::to_owned));
            if le == Some("+Inf") {
                break;
            }
        }
        les
    };
    let hedges = buckets("grpc_client_call_hedges");
    assert!(
        hedges == ["1", "2", "3", "4", "5", "+Inf"],
        "A96's hedge buckets: {hedges:?}\n{scrape}"
    );
    let duration = buckets("grpc_client_attempt_duration");
    assert_eq!(
        duration.len(),
        42,
        "A66's 41 latency buckets and +Inf: {duration:?}"
    );
    assert_eq!(duration[1], "0.00001");
    let sent = buckets("grpc_client_attempt_sent_total_compressed_message_size");
    assert_eq!(sent.len(), 15, "A66's 14 size buckets and +Inf: {sent:?}");
    assert_eq!(sent[1], "1024");
    assert!(
        scrape.contains("grpc_subchannel_open_connections"),
        "{scrape}"
    );
}

/// A loopback port nothing listens on yet, for a child process to bind.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `top --scrape` watches an application that is already running (here `bench
/// --metrics-addr`, a meshless channel with a Prometheus exporter) and sends nothing itself:
/// the shares it shows are those the servers counted, from the sampled success and failure
/// counters of the exposition.
#[test]
fn top_scrape_shows_a_running_applications_endpoints() {
    // Uneven shares, as in `top_json_prints_a_frame_per_interval`.
    let servers = vec![
        meshless_integration::server::TestServer::new("slow")
            .check_latency(std::time::Duration::from_millis(3))
            .spawn()
            .unwrap(),
        meshless_integration::server::TestServer::new("fast")
            .spawn()
            .unwrap(),
    ];
    let port = free_port();
    let bin = assert_cmd::cargo::cargo_bin("meshless");
    // The application: 7 s of calls, its metrics served on `port`.
    let mut app = std::process::Command::new(bin)
        .args(["bench", "--json", "--duration", "7s", "--concurrency", "8"])
        .args(["--policy", "least_request", "--metrics-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(target_of(&servers))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the exporter answers with the sampled counters, so that top's run lies
    // inside the application's.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        if body.contains("meshless_endpoint_successes") {
            break;
        }
    }
    let before: Vec<u64> = servers.iter().map(|s| s.health_checks()).collect();
    let out = meshless()
        .args(["top", "--scrape", &url, "--json", "--duration", "4s"])
        .args(["--interval", "1s", "--target", &target_of(&servers)])
        .output()
        .expect("run");
    let after: Vec<u64> = servers.iter().map(|s| s.health_checks()).collect();
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let frames: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(frames.len() >= 2, "{text}");
    let mut totals = BTreeMap::<String, u64>::new();
    for f in &frames {
        let eps = f["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2, "{f}");
        for e in eps {
            assert_eq!(e["state"], "ready", "{f}");
            assert_eq!(e["ejected"], false, "{f}");
            assert_eq!(e["target"], target_of(&servers), "{f}");
            assert!(e["in_flight"].as_u64().is_some(), "{f}");
            // The percentiles of the calls each endpoint served in the interval, from
            // `meshless.endpoint.duration`'s buckets (when it served any).
            if e["calls"].as_u64().unwrap() > 0 {
                let (p50, p99) = (e["p50_ms"].as_f64().unwrap(), e["p99_ms"].as_f64().unwrap());
                assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{f}");
            }
            *totals
                .entry(e["address"].as_str().unwrap().to_owned())
                .or_default() += e["calls"].as_u64().unwrap();
        }
    }
    let app = app.wait().unwrap();
    assert!(app.success());
    let all: u64 = totals.values().sum();
    assert!(all > 200, "{totals:?}\n{text}");
    // Each endpoint's share over top's frames against its server's count over top's run
    // (the frames' window is the samples' one, a second or so apart from the run's; the
    // split is steady, so the shares agree within 5 points).
    let counted: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    let shown = shares_match_the_servers(&totals, &servers, &counted);
    assert!(shown[1] - shown[0] > 0.3, "slow, fast: {shown:?}");
}

/// Asserts that each server's share of the calls `top` showed (`totals`, by address) is the
/// share of `counted` (the calls each server counted itself) within 5 points; returns the
/// shares shown, in the servers' order.
fn shares_match_the_servers(
    totals: &BTreeMap<String, u64>,
    servers: &[meshless_integration::server::ServerHandle],
    counted: &[u64],
) -> Vec<f64> {
    let all: u64 = totals.values().sum();
    let served: u64 = counted.iter().sum();
    servers
        .iter()
        .zip(counted)
        .map(|(s, &c)| {
            let share = totals[&s.addr().to_string()] as f64 / all as f64;
            let counted = c as f64 / served as f64;
            assert!(
                (share - counted).abs() < 0.05,
                "{}: top showed {share:.3}, the server counted {counted:.3} ({totals:?})",
                s.addr()
            );
            share
        })
        .collect()
}

/// A scrape URL with nothing listening: a line per failed scrape, then exit code 5 (no
/// scrape succeeded), never a panic.
#[test]
fn top_scrape_of_nothing_reports_each_failure_and_exits_5() {
    let url = format!("http://{}/metrics", closed_port());
    let out = meshless()
        .args(["top", "--scrape", &url, "--json", "--interval", "200ms"])
        .args(["--duration", "1s"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    for l in &lines {
        assert!(l.starts_with("meshless: ") && l.contains(&url), "{l}");
        assert!(!l.contains("panicked"), "{l}");
    }
    assert!(lines[0].contains("failed"), "{stderr}");
    assert!(lines.last().unwrap().contains("no scrape of"), "{stderr}");
}

/// A malformed scrape URL is a usage error that names it; `--target` needs `--scrape`.
#[test]
fn top_scrape_url_must_be_http() {
    let out = meshless()
        .args(["top", "--scrape", "https://127.0.0.1:9090/metrics"])
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "--scrape https://127.0.0.1:9090/metrics");
    let out = meshless()
        .args(["top", "--target", "x", "static:///127.0.0.1:1"])
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "--target");
}
