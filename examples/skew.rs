//! Latency under skew: how the balancing policies cope with backends of very different
//! speeds, against tonic's own `Channel::balance_list`.
//!
//! Scenario `skew` is tower's published harness (tower PR #76): 10 loopback backends whose
//! latency is uniform on `[0, max)`, with `max` = 1, 10, 10, 10, 10, 100, 100, 100, 100 and
//! 1000 ms. Scenario `two_slow`: 4 backends at 1 ms, two of them 5 ms slower, next to an
//! all-healthy baseline of 4 × 1 ms. Every run gets fresh backends with the same latency
//! seeds. Prints p50/p90/p99/p99.9 and each backend's share, and checks the goals of
//! "Latency under skew" in docs/benchmarks.md; `--json` prints one JSON object instead.
//!
//! ```text
//! cargo run --release --example skew [-- --requests N --concurrency C --json]
//! ```
//!
//! The 0.1 % tail of 20,000 calls is 20 calls, so p2c_ewma meets tower's 105 ms p99.9 only
//! if fewer than about 20 calls reach the 1000 ms backend; the 1 % tail in `two_slow` is 200
//! calls, so its p99 stays on the fast pair only if the slow pair gets less than 1 %. Plain
//! best-of-2 (`p2c_ewma memory=false`) cannot: both candidates are slow in one pick of six.
//! `p2c_ewma load_scale=0` is Finagle's and tower's cost, `latency × (in_flight + 1)`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use meshless::Channel;
use meshless::balancer::{LeastRequestConfig, P2cEwmaConfig, Policy};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::load::{self, LoadArgs};
use meshless_integration::report::{Report, RunReport};
use meshless_integration::server::{ServerHandle, TestServer};

/// The run docs/benchmarks.md reports: 20,000 requests at concurrency 50 (tower PR #76's
/// harness used 50,000).
const DEFAULT_REQUESTS: usize = 20_000;
const DEFAULT_CONCURRENCY: usize = 50;
/// Upper bounds of the backends' uniform latencies in scenario `skew` (tower PR #76).
const SKEW_MAX_MS: [u64; 10] = [1, 10, 10, 10, 10, 100, 100, 100, 100, 1000];
/// Backend `i` of scenario `skew` draws its latencies from a generator seeded `SEED_BASE + i`.
const SEED_BASE: u64 = 76;
/// Scenario `two_slow`: every backend's latency, and what the slow ones add (brpc's
/// "two of four slow" case).
const TWO_SLOW_BASE: Duration = Duration::from_millis(1);
const TWO_SLOW_EXTRA: Duration = Duration::from_millis(5);
const TWO_SLOW_BACKENDS: usize = 4;
const TWO_SLOW_SLOW: usize = 2;
/// meshless policies compared, each with its defaults.
const POLICIES: &[&str] = &["p2c_ewma", "least_request", "round_robin", "random"];

/// Runs of a policy with one option changed from the default, shown after that policy's
/// default run to measure what the option does: p2c_ewma without "power of two choices with
/// memory" and with Finagle's cost (`load_scale` 0), least_request with memory.
fn variants(policy: &str) -> Vec<(&'static str, Arc<dyn Policy>)> {
    match policy {
        "p2c_ewma" => vec![
            (
                "p2c_ewma memory=false",
                P2cEwmaConfig::default().memory(false).into(),
            ),
            (
                "p2c_ewma load_scale=0",
                P2cEwmaConfig::default().load_scale(0).into(),
            ),
        ],
        "least_request" => vec![(
            "least_request memory=true",
            LeastRequestConfig::default().memory(true).into(),
        )],
        _ => Vec::new(),
    }
}
/// The name of the run through tonic's own balancer.
const TONIC: &str = "tonic_balance_list";
/// tonic's balancer connects in the background and says nothing about when it is done;
/// this long is plenty on loopback, so its run measures balancing, not connecting.
const TONIC_CONNECT_GRACE: Duration = Duration::from_millis(300);
/// How long a meshless run waits for every backend to be ready before it gives up.
const READY_BOUND: Duration = Duration::from_secs(5);
/// The goals of "Latency under skew" (docs/benchmarks.md): p2c_ewma's p99.9 in `skew` at
/// most tower's published 105 ms and at most half of tonic balance_list's; its p99 in
/// `two_slow` at most twice the all-healthy p99.
const GOAL_P999_MS: f64 = 105.0;
const GOAL_VS_TONIC: f64 = 0.5;
const GOAL_VS_HEALTHY: f64 = 2.0;

type Error = Box<dyn std::error::Error>;

// ===== backends =====

/// One backend of a scenario: its name and how long it takes to answer.
#[derive(Clone)]
struct Backend {
    name: String,
    latency: Latency,
}

#[derive(Clone, Copy)]
enum Latency {
    Fixed(Duration),
    Uniform { max: Duration, seed: u64 },
}

fn skew_backends() -> Vec<Backend> {
    SKEW_MAX_MS
        .iter()
        .enumerate()
        .map(|(i, &max)| Backend {
            name: format!("b{i} <{max}ms"),
            latency: Latency::Uniform {
                max: Duration::from_millis(max),
                seed: SEED_BASE + i as u64,
            },
        })
        .collect()
}

/// `slow` of `n` backends at [`TWO_SLOW_BASE`] add [`TWO_SLOW_EXTRA`].
fn fixed_backends(n: usize, slow: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| {
            let latency = if i >= n - slow {
                TWO_SLOW_BASE + TWO_SLOW_EXTRA
            } else {
                TWO_SLOW_BASE
            };
            Backend {
                name: format!("b{i} {}ms", latency.as_millis()),
                latency: Latency::Fixed(latency),
            }
        })
        .collect()
}

fn spawn(backends: &[Backend]) -> std::io::Result<Vec<ServerHandle>> {
    backends
        .iter()
        .map(|b| {
            let server = TestServer::new(b.name.clone());
            match b.latency {
                Latency::Fixed(d) => server.latency(d),
                Latency::Uniform { max, seed } => server.uniform_latency(max, seed),
            }
            .spawn()
        })
        .collect()
}

// ===== runs =====

/// One run of meshless with `policy` over fresh `backends`, reported as `name`.
async fn meshless_run(
    name: &str,
    policy: Arc<dyn Policy>,
    backends: &[Backend],
    args: &LoadArgs,
) -> Result<RunReport, Error> {
    let servers = spawn(backends)?;
    let list: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let channel = Channel::builder(format!("static:///{}", list.join(",")))
        .balancer(policy)
        .build()?;
    // Let every connection come up, so the run measures balancing, not connecting.
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    while channel.status().ready_count() < servers.len() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{name}: only {} of {} loopback backends ready after {READY_BOUND:?}",
                channel.status().ready_count(),
                servers.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outcome = load::say_hello(GreeterClient::new(channel), args).await;
    Ok(RunReport::new(name, &names(backends), &outcome))
}

/// One run of tonic's `Channel::balance_list` (tower's p2c over tonic connections) over
/// fresh `backends`.
async fn tonic_run(backends: &[Backend], args: &LoadArgs) -> Result<RunReport, Error> {
    let servers = spawn(backends)?;
    let endpoints = servers
        .iter()
        .map(|s| tonic::transport::Endpoint::from_shared(s.uri()))
        .collect::<Result<Vec<_>, _>>()?;
    let channel = tonic::transport::Channel::balance_list(endpoints.into_iter());
    tokio::time::sleep(TONIC_CONNECT_GRACE).await;
    let outcome = load::say_hello(GreeterClient::new(channel), args).await;
    Ok(RunReport::new(TONIC, &names(backends), &outcome))
}

/// Every meshless policy, then tonic, over fresh copies of `backends`.
async fn compare(backends: &[Backend], args: &LoadArgs) -> Result<Report, Error> {
    let mut report = Report::default();
    for name in POLICIES {
        let policy = meshless::balancer::policy(name)?;
        report.push(meshless_run(name, policy, backends, args).await?);
        for (variant, policy) in variants(name) {
            report.push(meshless_run(variant, policy, backends, args).await?);
        }
    }
    report.push(tonic_run(backends, args).await?);
    Ok(report)
}

fn names(backends: &[Backend]) -> Vec<String> {
    backends.iter().map(|b| b.name.clone()).collect()
}

// ===== output =====

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run<'a>(report: &'a Report, name: &str) -> Result<&'a RunReport, Error> {
    report
        .runs
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no run named {name}").into())
}

/// One line per run: percentiles, then each backend's share of the successful calls.
fn summary(title: &str, report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let Some(first) = report.runs.first() else {
        return out;
    };
    let _ = write!(
        out,
        "  {:<26} {:>8} {:>8} {:>8} {:>8}  share %:",
        "run (ms)", "p50", "p90", "p99", "p99.9"
    );
    for (b, _) in &first.backends {
        let _ = write!(out, " {:>8}", b.split(' ').next().unwrap_or(b));
    }
    let _ = writeln!(out);
    for r in &report.runs {
        let l = &r.latency;
        let _ = write!(
            out,
            "  {:<26} {:>8.2} {:>8.2} {:>8.2} {:>8.2}         ",
            r.name,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999)
        );
        let ok = r.ok().max(1) as f64;
        for (_, calls) in &r.backends {
            let _ = write!(out, " {:>8.2}", *calls as f64 * 100.0 / ok);
        }
        if r.failed() + r.unfinished > 0 {
            let _ = write!(
                out,
                "  ({} failed, {} unfinished)",
                r.failed(),
                r.unfinished
            );
        }
        let _ = writeln!(out);
    }
    out
}

/// A goal checked against this run's figures.
struct Goal {
    what: String,
    value_ms: f64,
    bound_ms: f64,
}

impl Goal {
    fn met(&self) -> bool {
        self.value_ms <= self.bound_ms
    }
}

fn goals(skew: &Report, two_slow: &Report, healthy: &RunReport) -> Result<Vec<Goal>, Error> {
    let p2c = run(skew, "p2c_ewma")?.latency.p999;
    let tonic = run(skew, TONIC)?.latency.p999;
    let p2c_two = run(two_slow, "p2c_ewma")?.latency.p99;
    Ok(vec![
        Goal {
            what: "skew: p2c_ewma p99.9 <= 105 ms (tower PR #76)".into(),
            value_ms: ms(p2c),
            bound_ms: GOAL_P999_MS,
        },
        Goal {
            what: format!(
                "skew: p2c_ewma p99.9 <= {GOAL_VS_TONIC} x {TONIC} p99.9 ({:.2} ms)",
                ms(tonic)
            ),
            value_ms: ms(p2c),
            bound_ms: GOAL_VS_TONIC * ms(tonic),
        },
        Goal {
            what: format!(
                "two_slow: p2c_ewma p99 <= {GOAL_VS_HEALTHY} x all-healthy p99 ({:.2} ms)",
                ms(healthy.latency.p99)
            ),
            value_ms: ms(p2c_two),
            bound_ms: GOAL_VS_HEALTHY * ms(healthy.latency.p99),
        },
    ])
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = match LoadArgs::from_env("skew", DEFAULT_REQUESTS, DEFAULT_CONCURRENCY) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let skew = compare(&skew_backends(), &args).await?;
    let two_slow = compare(&fixed_backends(TWO_SLOW_BACKENDS, TWO_SLOW_SLOW), &args).await?;
    let healthy = meshless_run(
        "all_healthy p2c_ewma",
        meshless::balancer::policy("p2c_ewma")?,
        &fixed_backends(TWO_SLOW_BACKENDS, 0),
        &args,
    )
    .await?;
    let goals = goals(&skew, &two_slow, &healthy)?;

    if args.json {
        let goals: Vec<serde_json::Value> = goals
            .iter()
            .map(|g| {
                serde_json::json!({
                    "goal": g.what, "value_ms": g.value_ms, "bound_ms": g.bound_ms, "met": g.met()
                })
            })
            .collect();
        let mut baseline = Report::default();
        baseline.push(healthy);
        let json = serde_json::json!({
            "requests": args.requests,
            "concurrency": args.concurrency,
            "scenarios": {
                "skew": skew.to_json(),
                "two_slow": two_slow.to_json(),
                "all_healthy": baseline.to_json(),
            },
            "goals": goals,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }

    println!(
        "{} requests at concurrency {} per run; fresh loopback backends per run\n",
        args.requests, args.concurrency
    );
    println!("{skew}");
    println!("{two_slow}");
    println!("{healthy}");
    print!(
        "{}",
        summary(
            "skew: 10 backends, latency uniform on [0, max), max = 1, 10 x4, 100 x4, 1000 ms",
            &skew
        )
    );
    println!();
    let mut two = Report::default();
    for r in &two_slow.runs {
        two.push(r.clone());
    }
    two.push(healthy.clone());
    print!(
        "{}",
        summary(
            "two_slow: 4 backends at 1 ms, two of them +5 ms (last row: all four at 1 ms)",
            &two
        )
    );
    println!();
    for g in &goals {
        println!(
            "goal {}: {:.2} ms vs bound {:.2} ms: {}",
            g.what,
            g.value_ms,
            g.bound_ms,
            if g.met() { "met" } else { "MISSED" }
        );
    }
    Ok(())
}
