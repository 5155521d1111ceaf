//! Unary throughput over 3 endpoints, side by side in one run: meshless round_robin (and
//! p2c_ewma), tonic's `Channel::balance_list`, and grpc-go's round_robin client where it can be
//! built here (Debian's `golang-go` and `golang-google-grpc-dev`).
//!
//! ```text
//! cargo bench -p meshless-integration --bench throughput
//! cargo bench -p meshless-integration --bench throughput -- --rounds 7 --calls 30000
//! ```
//!
//! Three tonic-health servers (`grpc.health.v1.Health/Check`) run in a child process of their
//! own (this binary, re-run), so every client pays for the same servers and none shares its
//! runtime with them. Each client makes its calls from 32 tasks (goroutines for grpc-go), each
//! call with a 10 s deadline, after a warm-up that connects every endpoint. The clients take
//! turns, A B C D A B C D, for `--rounds` rounds (default 5) of `--calls` calls (default
//! 30,000); the table gives each client's median calls per second and the median of the
//! per-round ratios against tonic's `balance_list` and against grpc-go.
//!
//! Goals (the performance issue): meshless round_robin ≥ 1.05 × tonic `balance_list`, and
//! ≥ 1.0 × grpc-go's round_robin client.

use meshless_integration::load::Transport;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SERVERS: usize = 3;
const CONCURRENCY: usize = 32;
const WARM_UP: usize = 3_000;
const DEFAULT_CALLS: usize = 30_000;
const DEFAULT_ROUNDS: usize = 5;
/// The deadline of every call.
const DEADLINE: Duration = Duration::from_secs(10);
/// The bound of one round: a round that needs this long is broken.
const ROUND_BOUND: Duration = Duration::from_secs(120);

const SERVE_ENV: &str = "MESHLESS_THROUGHPUT_SERVE";

fn main() {
    if std::env::var_os(SERVE_ENV).is_some() {
        serve();
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let calls = flag("--calls", DEFAULT_CALLS);
    if args.iter().any(|a| a == "--subscriber") {
        tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
            .expect("first subscriber");
    }
    let rounds = flag("--rounds", DEFAULT_ROUNDS).max(1);

    let mut servers = Servers::start();
    let addrs = servers.addrs.clone();
    let go = GoClient::start(&addrs, calls, rounds);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (rr, tonic, p2c) = rt.block_on(async {
        (
            HealthClient::new(meshless(&addrs, "round_robin").await),
            HealthClient::new(tonic_balance_list(&addrs)),
            HealthClient::new(meshless(&addrs, "p2c_ewma").await),
        )
    });
    // One closure per client, so the rounds below can take turns; each runs `n` calls.
    let clients: Vec<(&str, Box<RunCalls>)> = vec![
        (
            "meshless round_robin",
            Box::new(|n| rt.block_on(run(rr.clone(), n))),
        ),
        (
            "tonic balance_list",
            Box::new(|n| rt.block_on(run(tonic.clone(), n))),
        ),
        (
            "meshless p2c_ewma",
            Box::new(|n| rt.block_on(run(p2c.clone(), n))),
        ),
    ];
    for (name, client) in &clients {
        let (done, _) = client(WARM_UP);
        assert_eq!(done, WARM_UP, "{name}: warm-up calls failed");
    }

    let mut names: Vec<&str> = clients.iter().map(|(n, _)| *n).collect();
    let mut go = match go {
        Ok(go) => {
            names.push("grpc-go round_robin");
            Some(go)
        }
        Err(why) => {
            eprintln!("grpc-go client skipped: {why}");
            None
        }
    };
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (i, (name, client)) in clients.iter().enumerate() {
            let (done, secs) = client(calls);
            assert_eq!(done, calls, "{name}: calls failed");
            rps[i].push(calls as f64 / secs);
        }
        if let Some(go) = go.as_mut() {
            rps[clients.len()].push(go.round(calls));
        }
    }
    drop(go);
    servers.stop();

    println!(
        "unary throughput, {SERVERS} loopback tonic-health servers (one child process), grpc.health.v1.Health/Check, concurrency {CONCURRENCY}, {rounds} alternating rounds of {calls} calls"
    );
    println!("  {:<22} {:>12}  {:>14}", "client", "median rps", "rounds");
    for (name, r) in names.iter().zip(&rps) {
        let range = format!("{:.0}–{:.0}", min(r), max(r));
        println!("  {name:<22} {:>12.0}  {range:>14}", median(r));
    }
    let ratio = |a: usize, b: usize| {
        let per_round: Vec<f64> = rps[a].iter().zip(&rps[b]).map(|(x, y)| x / y).collect();
        (median(&per_round), min(&per_round), max(&per_round))
    };
    let report = |label: &str, a: usize, b: usize, goal: f64| {
        let (m, lo, hi) = ratio(a, b);
        let verdict = if m >= goal { "met" } else { "not met" };
        println!("  {label:<40} {m:.3}  (per-round {lo:.3}–{hi:.3}; goal >= {goal:.2}: {verdict})");
    };
    report("meshless round_robin / tonic balance_list", 0, 1, 1.05);
    report("meshless p2c_ewma / tonic balance_list", 2, 1, 0.0);
    if names.len() > clients.len() {
        report("meshless round_robin / grpc-go round_robin", 0, 3, 1.0);
        report("tonic balance_list / grpc-go round_robin", 1, 3, 0.0);
    }
}

async fn meshless(addrs: &[String], policy: &str) -> meshless::Channel {
    let channel = meshless::Channel::builder(format!("static:///{}", addrs.join(",")))
        .policy(policy)
        .build()
        .expect("meshless channel");
    tokio::time::timeout(Duration::from_secs(10), channel.connect())
        .await
        .expect("ready within 10 s")
        .expect("ready");
    channel
}

fn tonic_balance_list(addrs: &[String]) -> tonic::transport::Channel {
    let endpoints = addrs.iter().map(|a| {
        tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("endpoint uri")
    });
    tonic::transport::Channel::balance_list(endpoints)
}

/// Runs `n` calls with one client; the successful calls and the seconds they took.
type RunCalls<'a> = dyn Fn(usize) -> (usize, f64) + 'a;

/// `calls` calls from [`CONCURRENCY`] tasks; the successful calls and the seconds it took.
async fn run<T>(client: HealthClient<T>, calls: usize) -> (usize, f64)
where
    T: Transport,
{
    let left = Arc::new(AtomicUsize::new(calls));
    let ok = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (left, ok, mut client) = (left.clone(), ok.clone(), client.clone());
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let mut request = tonic::Request::new(HealthCheckRequest::default());
                    request.set_timeout(DEADLINE);
                    if client.check(request).await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(ROUND_BOUND, futures_util::future::join_all(tasks))
        .await
        .expect("a round finished within its bound");
    (ok.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

/// The servers' child process.
struct Servers {
    child: Child,
    addrs: Vec<String>,
}

impl Servers {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(SERVE_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the servers' addresses");
        let addrs: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(addrs.len(), SERVERS, "server process said {line:?}");
        Servers { child, addrs }
    }

    fn stop(&mut self) {
        // Closing stdin ends the server process.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: [`SERVERS`] tonic-health servers on loopback; prints their addresses, serves
/// until stdin closes.
fn serve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut addrs = Vec::new();
        for _ in 0..SERVERS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
            let (_reporter, service) = tonic_health::server::health_reporter();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    // TCP_NODELAY on every accepted connection, as tonic's own
                    // `serve(addr)` and grpc-go's servers set it.
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    )
                    .await
            });
        }
        println!("{}", addrs.join(" "));
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await
        .expect("stdin");
    });
}

/// grpc-go's round_robin client (integration/go/rrclient), one process for every round.
struct GoClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl GoClient {
    /// Builds the client (when Go and Debian's grpc-go are installed) and starts it; it
    /// connects and warms up before this returns.
    fn start(addrs: &[String], calls: usize, rounds: usize) -> Result<Self, String> {
        let exe = build_go_client()?;
        let mut child = Command::new(exe)
            .args([
                addrs.join(","),
                WARM_UP.to_string(),
                calls.to_string(),
                CONCURRENCY.to_string(),
                rounds.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the grpc-go client: {e}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Ok(GoClient {
            child,
            stdin,
            stdout,
        })
    }

    /// One measured round; calls per second.
    fn round(&mut self, calls: usize) -> f64 {
        writeln!(self.stdin, "go").expect("grpc-go client stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("grpc-go round");
        let fields: Vec<f64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        assert!(
            fields.len() == 3 && fields[0] as usize == calls && fields[1] == 0.0,
            "grpc-go round said {line:?}"
        );
        fields[0] / fields[2]
    }
}

impl Drop for GoClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds integration/go/rrclient against Debian's grpc-go (GOPATH mode, offline); the path
/// of the binary, or why it cannot be built here.
fn build_go_client() -> Result<PathBuf, String> {
    const GOPATH: &str = "/usr/share/gocode";
    if !std::path::Path::new(GOPATH)
        .join("src/google.golang.org/grpc")
        .exists()
    {
        return Err(format!(
            "Debian's golang-google-grpc-dev is not installed (no {GOPATH}/src/google.golang.org/grpc)"
        ));
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("go/rrclient");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rrclient");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&source)
        .env("GOPATH", GOPATH)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env(
            "GOCACHE",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache"),
        )
        .status()
        .map_err(|e| format!("go is not installed ({e}); install golang-go"))?;
    if !status.success() {
        return Err(format!("go build failed: {status}"));
    }
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
