//! What a TLS connection costs: the time to open one (TCP, TLS and HTTP/2 handshakes, from
//! `build()` to ready) against plaintext and against tonic's own TLS `Endpoint::connect`, and
//! the time and client memory of opening 1,000 TLS connections against 1,000 plaintext ones.
//!
//! ```text
//! cargo bench -p meshless-integration --bench tls_connections
//! ```
//!
//! Handshake times are medians of alternated rounds in one process. The 1,000-connection
//! runs each happen in a child process of their own (this binary, re-run), so its resident
//! memory before and after is the client's alone; the servers stay in this process. The 1,000
//! endpoints are 1,000 loopback addresses (127.1.x.y) of one server listening on 0.0.0.0.
//! The same run measures tonic's `Channel::balance_list` over the same 1,000 plaintext
//! endpoints, the peer for memory per connection: tonic has no readiness to watch, so its
//! child makes calls (which drive tower's balancer to connect every endpoint) until this
//! process's server has accepted all 1,000 connections, then measures.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshless::transport::TlsConfig;
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::TestServer;
use meshless_integration::tls::{ServerTls, TestCa};

/// Rounds of the handshake comparison.
const HANDSHAKE_ROUNDS: usize = 41;
/// Connections of the big run, and how many times each mode runs (alternated).
const CONNECTIONS: usize = 1000;
const BIG_ROUNDS: usize = 3;
/// Upper bound of one big run.
const BIG_BOUND: Duration = Duration::from_secs(60);
/// How long the connections stay idle before the memory is read, in every mode.
const SETTLE: Duration = Duration::from_millis(500);
/// The name every server certificate carries (forced with `TlsConfig::server_name`).
const NAME: &str = "bench.test";

const CHILD_MODE: &str = "MESHLESS_TLS_BENCH_CHILD";
const CHILD_PORT: &str = "MESHLESS_TLS_BENCH_PORT";
const CHILD_CA: &str = "MESHLESS_TLS_BENCH_CA";

fn main() {
    // cargo bench passes `--bench`; criterion-style filters are not used here.
    if let Ok(mode) = std::env::var(CHILD_MODE) {
        child(&mode);
        return;
    }
    let ca = TestCa::new("bench-ca");
    let (cert, key) = ca.issue(&[NAME]);
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let tls_server = TestServer::new("tls")
        .tls(ServerTls::new(cert, key))
        .bind(any)
        .spawn()
        .expect("tls server");
    let plain_server = TestServer::new("plain")
        .bind(any)
        .spawn()
        .expect("plain server");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write ca");

    handshakes(&ca, tls_server.addr().port(), plain_server.addr().port());

    // Modes of the big run: meshless plaintext, meshless TLS, tonic balance_list plaintext.
    const MODES: [&str; 3] = ["plain", "tls", "tonic"];
    let mut runs: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for round in 0..BIG_ROUNDS {
        for i in 0..MODES.len() {
            // Rotate which mode goes first.
            let mode = (i + round) % MODES.len();
            let port = if MODES[mode] == "tls" {
                tls_server.addr().port()
            } else {
                plain_server.addr().port()
            };
            let accepted_before = plain_server.connections();
            let mut child = Command::new(std::env::current_exe().expect("exe"))
                .env(CHILD_MODE, MODES[mode])
                .env(CHILD_PORT, port.to_string())
                .env(CHILD_CA, &ca_file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("child run");
            let mut stdin = child.stdin.take().expect("child stdin");
            if MODES[mode] == "tonic" {
                // Tell the child once the server has accepted all its connections.
                let deadline = Instant::now() + BIG_BOUND;
                while plain_server.connections() < accepted_before + CONNECTIONS as u64 {
                    assert!(
                        Instant::now() < deadline,
                        "tonic connected {} of {CONNECTIONS}",
                        plain_server.connections() - accepted_before
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                writeln!(stdin, "all accepted").expect("child stdin");
            }
            drop(stdin);
            let out = child.wait_with_output().expect("child output");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "child failed: {text}");
            let mut fields = text
                .split_whitespace()
                .map(|f| f.parse::<f64>().expect("number"));
            let (ms, kib) = (fields.next().expect("ms"), fields.next().expect("kib"));
            runs[mode].0.push(ms);
            runs[mode].1.push(kib);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!(
        "{CONNECTIONS} connections to {CONNECTIONS} loopback endpoints from one channel, median of {BIG_ROUNDS} runs each, alternated; client process only"
    );
    println!(
        "  mode                         time to all ready   client memory (RSS growth)   per connection"
    );
    for (name, i) in [
        ("meshless round_robin, h2c", 0),
        ("meshless round_robin, TLS", 1),
        ("tonic balance_list, h2c", 2),
    ] {
        let (ms, kib) = (median(&mut runs[i].0), median(&mut runs[i].1));
        println!(
            "  {name:<27}  {ms:>14.0} ms   {:>20.1} MiB   {:>10.1} KiB",
            kib / 1024.0,
            kib / CONNECTIONS as f64
        );
    }
}

/// Times new connections: meshless TLS, meshless plaintext and tonic TLS, alternated.
fn handshakes(ca: &TestCa, tls_port: u16, plain_port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut times: [Vec<f64>; 3] = Default::default();
    rt.block_on(async {
        for round in 0..HANDSHAKE_ROUNDS {
            for i in 0..3 {
                let which = (i + round) % 3;
                let start = Instant::now();
                match which {
                    0 => {
                        let ch =
                            meshless::Channel::builder(format!("static:///127.0.0.1:{tls_port}"))
                                .tls(TlsConfig::new().ca_pem(ca.cert_pem()).server_name(NAME))
                                .build()
                                .expect("channel");
                        ch.connect().await.expect("tls connect");
                    }
                    1 => {
                        let ch =
                            meshless::Channel::builder(format!("static:///127.0.0.1:{plain_port}"))
                                .build()
                                .expect("channel");
                        ch.connect().await.expect("plain connect");
                    }
                    _ => {
                        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
                        Endpoint::from_shared(format!("https://127.0.0.1:{tls_port}"))
                            .expect("uri")
                            .tls_config(
                                ClientTlsConfig::new()
                                    .ca_certificate(Certificate::from_pem(ca.cert_pem()))
                                    .domain_name(NAME),
                            )
                            .expect("tonic tls")
                            .connect()
                            .await
                            .expect("tonic connect");
                    }
                }
                times[which].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!(
        "a new connection, from build() to ready (TCP + TLS + HTTP/2 handshakes), median of {HANDSHAKE_ROUNDS} alternated rounds"
    );
    println!("  channel                      median ms");
    for (name, i) in [
        ("meshless, plaintext h2c", 1),
        ("meshless, TLS", 0),
        ("tonic Endpoint, TLS", 2),
    ] {
        println!("  {name:<27}  {:>9.3}", median(&mut times[i]));
    }
}

/// One big run: opens the connections, prints `milliseconds RSS-growth-KiB`.
fn child(mode: &str) {
    let port: u16 = std::env::var(CHILD_PORT)
        .expect("port")
        .parse()
        .expect("port number");
    let ca = std::env::var(CHILD_CA).expect("ca path");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let list: Vec<String> = (0..CONNECTIONS)
        .map(|i| format!("127.1.{}.{}:{port}", i / 200, i % 200 + 1))
        .collect();
    let target = format!("static:///{}", list.join(","));
    if mode == "tonic" {
        rt.block_on(tonic_child(&list));
        return;
    }
    rt.block_on(async {
        let before = rss_kib();
        let start = Instant::now();
        let mut builder = meshless::Channel::builder(target).policy("round_robin");
        if mode == "tls" {
            builder = builder.tls(TlsConfig::new().ca_file(&ca).server_name(NAME));
        }
        let channel = builder.build().expect("channel");
        let deadline = Instant::now() + BIG_BOUND;
        while channel.status().ready_count() < CONNECTIONS {
            assert!(
                Instant::now() < deadline,
                "not all ready: {}",
                channel.status().ready_count()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = start.elapsed();
        tokio::time::sleep(SETTLE).await;
        let after = rss_kib();
        println!(
            "{:.1} {}",
            elapsed.as_secs_f64() * 1e3,
            after.saturating_sub(before)
        );
        drop(channel);
    });
}

/// The tonic run: `balance_list` over `list`, calls until the parent says that every
/// connection was accepted (a line on stdin), then prints `milliseconds RSS-growth-KiB`.
async fn tonic_child(list: &[String]) {
    let before = rss_kib();
    let start = Instant::now();
    let endpoints = list.iter().map(|a| {
        tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("endpoint uri")
    });
    let channel = tonic::transport::Channel::balance_list(endpoints);
    let caller = tokio::spawn(async move {
        let mut client = GreeterClient::new(channel);
        loop {
            let _ = client.say_hello(HelloRequest::default()).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).expect("stdin")
    })
    .await
    .expect("stdin task");
    let elapsed = start.elapsed();
    // Accepted is not yet handshaken: let the HTTP/2 handshakes finish, calls still going.
    tokio::time::sleep(SETTLE).await;
    caller.abort();
    let _ = caller.await;
    let after = rss_kib();
    println!(
        "{:.1} {}",
        elapsed.as_secs_f64() * 1e3,
        after.saturating_sub(before)
    );
}

/// This process's resident memory, KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
