//! Client instructions per unary call, counted by valgrind's callgrind: a figure that the
//! noise of a shared machine cannot move, unlike calls per second.
//!
//! ```text
//! cargo bench -p meshless-integration --bench instructions            # every client, a table
//! cargo bench -p meshless-integration --bench instructions -- --calls 4000
//! ```
//!
//! Each client runs in a process of its own under
//! `valgrind --tool=callgrind --toggle-collect=meshless_measured_calls`: the servers (tonic
//! greeters on loopback) run on threads of their own, outside the toggled function, so only
//! the client's work is counted. The client is a current-thread tokio runtime whose
//! `block_on` runs inside `meshless_measured_calls`: tonic's codegen, the channel's `call`,
//! the picker and stats, hyper's and h2's client side, the connection tasks, and tokio's
//! wakeups are all in the count, for every client alike. 200 calls warm each client up
//! before the measured ones. Clients:
//!
//! - `tonic`: tonic's `Channel` to one endpoint;
//! - `tonic_balance_list`: tonic's `Channel::balance_list` over 3 endpoints;
//! - `meshless_<policy>_<n>`: a `meshless::Channel` over `n` static endpoints;
//! - `meshless_metrics_<policy>_<n>`: the same with gRPC's instruments recording into a
//!   Prometheus recorder (metrics-exporter-prometheus, no listener).
//!
//! Goals (the performance issue): meshless round_robin over 3 ≤ tonic balance_list over 3;
//! meshless over 1 ≤ 1.05 × tonic `Channel`; p2c_ewma ≤ 1.05 × round_robin.

use std::time::Duration;

use meshless_integration::callgrind;
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::load::Transport;
use meshless_integration::server::{ServerHandle, spawn_servers};

/// Calls in flight at once.
const CONCURRENCY: usize = 8;
const WARM_UP: usize = 200;
const DEFAULT_CALLS: usize = 2000;

const CLIENTS: &[&str] = &[
    "tonic",
    "meshless_pick_first_1",
    "meshless_round_robin_1",
    "meshless_p2c_ewma_1",
    "tonic_balance_list",
    "meshless_round_robin_3",
    "meshless_p2c_ewma_3",
    "meshless_metrics_round_robin_3",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(DEFAULT_CALLS);
    if let Some(i) = args.iter().position(|a| a == "--client") {
        let client = args.get(i + 1).expect("--client NAME");
        run_client(client, calls);
        return;
    }
    drive(calls);
}

/// Runs every client under callgrind and prints instructions per call.
fn drive(calls: usize) {
    let exe = std::env::current_exe().expect("own path");
    let dir = std::env::temp_dir().join(format!("meshless-instructions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rows = Vec::new();
    for client in CLIENTS {
        let out = dir.join(format!("{client}.out"));
        let args = ["--client", client, "--calls", &calls.to_string()];
        let Some(total) = callgrind::count(&exe, "meshless_measured_calls", &args, &out) else {
            return;
        };
        rows.push((*client, total as f64 / calls as f64));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let per = |name: &str| rows.iter().find(|(c, _)| *c == name).map(|r| r.1);
    println!(
        "client instructions per unary call (callgrind, {calls} calls at concurrency {CONCURRENCY}, after {WARM_UP} warm-up calls)"
    );
    println!(
        "  {:<26} {:>12}  {:>10}",
        "client", "instr/call", "vs tonic"
    );
    for (client, ipc) in &rows {
        let peer = if client.ends_with("_3") || *client == "tonic_balance_list" {
            per("tonic_balance_list")
        } else {
            per("tonic")
        };
        let ratio = peer.map_or(String::new(), |p| format!("{:.3}", ipc / p));
        println!("  {client:<26} {ipc:>12.0}  {ratio:>10}");
    }
    if let (Some(rr), Some(p2c)) = (per("meshless_round_robin_3"), per("meshless_p2c_ewma_3")) {
        println!("  p2c_ewma / round_robin over 3: {:.3}", p2c / rr);
    }
    if let (Some(off), Some(on)) = (
        per("meshless_round_robin_3"),
        per("meshless_metrics_round_robin_3"),
    ) {
        println!("  metrics on / off, round_robin over 3: {:.3}", on / off);
    }
}

/// One client: warm up, then the measured calls inside `meshless_measured_calls`.
fn run_client(client: &str, calls: usize) {
    let n = if client.ends_with("_3") || client == "tonic_balance_list" {
        3
    } else {
        1
    };
    let servers = spawn_servers(n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match client {
        "tonic" => {
            let channel = rt.block_on(async {
                tonic::transport::Channel::from_shared(servers[0].uri())
                    .expect("uri")
                    .connect()
                    .await
                    .expect("connect")
            });
            let client = GreeterClient::new(channel);
            measure(&mut |n| rt.block_on(run_calls(&client, n)), calls);
        }
        "tonic_balance_list" => {
            let channel = rt.block_on(async {
                let eps = servers.iter().map(|s| {
                    tonic::transport::Endpoint::from_shared(s.uri()).expect("endpoint uri")
                });
                tonic::transport::Channel::balance_list(eps)
            });
            let client = GreeterClient::new(channel);
            measure(&mut |n| rt.block_on(run_calls(&client, n)), calls);
        }
        other => {
            // `meshless_metrics_<policy>_<n>`: gRPC's instruments on, into a Prometheus
            // recorder (no HTTP listener), as an application with metrics runs.
            let (metrics, rest) = match other.strip_prefix("meshless_metrics_") {
                Some(rest) => (true, rest),
                None => (
                    false,
                    other.strip_prefix("meshless_").expect("meshless_..."),
                ),
            };
            let policy = rest.rsplit_once('_').map(|(p, _)| p).expect("<policy>_<n>");
            if metrics {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .install_recorder()
                    .expect("the only recorder of this process");
            }
            let channel = rt.block_on(meshless_channel(&servers, policy, metrics));
            let client = GreeterClient::new(channel);
            measure(&mut |n| rt.block_on(run_calls(&client, n)), calls);
        }
    }
    drop(servers);
}

async fn meshless_channel(
    servers: &[ServerHandle],
    policy: &str,
    metrics: bool,
) -> meshless::Channel {
    let list: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let mut builder =
        meshless::Channel::builder(format!("static:///{}", list.join(","))).policy(policy);
    if metrics {
        builder = builder.metrics(
            meshless::transport::MetricsConfig::new().method("greeter.v1.Greeter/SayHello"),
        );
    }
    let channel = builder.build().expect("meshless channel");
    tokio::time::timeout(Duration::from_secs(10), channel.connect())
        .await
        .expect("ready within 10 s")
        .expect("ready");
    // Every endpoint connected, so the measured calls spread as in steady state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while channel.status().ready_count() < servers.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    channel
}

/// Warms `calls(n)` up, then counts `calls(measured)`.
fn measure(calls: &mut dyn FnMut(usize), measured: usize) {
    calls(WARM_UP);
    meshless_measured_calls(&mut || calls(measured));
}

/// The function callgrind counts inside (`--toggle-collect`): everything `work` does.
#[unsafe(no_mangle)]
#[inline(never)]
fn meshless_measured_calls(work: &mut dyn FnMut()) {
    work();
}

async fn run_calls<T: Transport>(client: &GreeterClient<T>, calls: usize) {
    let per_task = calls.div_ceil(CONCURRENCY);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut tasks = Vec::with_capacity(CONCURRENCY);
            for _ in 0..CONCURRENCY {
                let mut c = client.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    for _ in 0..per_task {
                        c.say_hello(HelloRequest::default())
                            .await
                            .expect("call failed");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        })
        .await;
}
