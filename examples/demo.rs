//! The main job: why a tonic client behind a Kubernetes Service pins one pod, and what
//! meshless does about it.
//!
//! Starts 4 greeter servers on loopback (one 20 ms slower than the others) and sends the
//! same load three ways: a plain tonic `Channel` through an L4 proxy that, like kube-proxy,
//! picks one backend per TCP connection; then meshless with `pick_first`; then meshless with
//! `round_robin` (and every other policy this build has that the demo knows).
//!
//! ```text
//! cargo run --release --example demo [-- --requests N --concurrency C --json]
//! ```

use std::time::Duration;

use meshless::Channel;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::load::{self, LoadArgs, LoadOutcome};
use meshless_integration::proxy::ProxyHandle;
use meshless_integration::report::{Report, RunReport};
use meshless_integration::server::{ServerHandle, TestServer};

const DEFAULT_REQUESTS: usize = 4000;
const DEFAULT_CONCURRENCY: usize = 32;
/// Every server's service time; the slow one adds [`SLOW_EXTRA`].
const BASE_LATENCY: Duration = Duration::from_millis(1);
const SLOW_EXTRA: Duration = Duration::from_millis(20);
/// Policies run after pick_first and round_robin when this build has them.
const LOAD_AWARE: &[&str] = &["least_request", "p2c_ewma"];
/// Seed of the L4 proxy's backend choice, so the plain-tonic run is reproducible.
const PROXY_SEED: u64 = 7;

async fn meshless_run(
    policy: &str,
    servers: &[ServerHandle],
    args: &LoadArgs,
) -> Result<LoadOutcome, Box<dyn std::error::Error>> {
    let list: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let channel = Channel::builder(format!("static:///{}", list.join(",")))
        .policy(policy)
        .build()?;
    // Let every connection come up, so the run measures balancing, not connecting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while channel.status().ready_count() < servers.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(load::say_hello(GreeterClient::new(channel), args).await)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match LoadArgs::from_env("demo", DEFAULT_REQUESTS, DEFAULT_CONCURRENCY) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let servers: Vec<ServerHandle> = (0..4)
        .map(|i| {
            let latency = if i == 3 {
                BASE_LATENCY + SLOW_EXTRA
            } else {
                BASE_LATENCY
            };
            TestServer::new(format!("server-{i}{}", if i == 3 { " (slow)" } else { "" }))
                .latency(latency)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = servers.iter().map(|s| s.name().to_owned()).collect();
    let mut report = Report::default();

    // 1. What a tonic client does behind a Kubernetes Service: one connection, one pod.
    let proxy = ProxyHandle::spawn(servers.iter().map(|s| s.addr()).collect(), PROXY_SEED).await?;
    let plain = tonic::transport::Channel::from_shared(proxy.uri())?
        .connect()
        .await?;
    let outcome = load::say_hello(GreeterClient::new(plain), &args).await;
    report.push(RunReport::new("tonic_via_l4_proxy", &names, &outcome));

    // 2. meshless, one policy after another.
    let mut policies = vec!["pick_first", "round_robin"];
    policies.extend(
        LOAD_AWARE
            .iter()
            .filter(|p| meshless::balancer::POLICY_NAMES.contains(p)),
    );
    for policy in policies {
        let outcome = meshless_run(policy, &servers, &args).await?;
        report.push(RunReport::new(policy, &names, &outcome));
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        println!(
            "{} requests at concurrency {} to 4 loopback greeters (server-3 is {} ms slower)\n",
            args.requests,
            args.concurrency,
            SLOW_EXTRA.as_millis()
        );
        println!("{report}");
    }
    Ok(())
}
