//! The main job: why a tonic client behind a Kubernetes Service pins one pod, why a pool of
//! connections does not fix it, and what meshless does about it, before and after a
//! scale-up.
//!
//! Starts 4 greeter servers on loopback (one 20 ms slower than the others) and sends the
//! same load several ways. Every run sends half of its calls, then starts a fifth server
//! (the scale-up), then sends the other half:
//!
//! - a plain tonic `Channel` through an L4 proxy that, like kube-proxy, picks one backend
//!   per TCP connection: every call goes where its one connection landed;
//! - a pool of 4 plain channels through such a proxy, used in turn, as teams try first: the
//!   spread is wherever its 4 connections happened to land (the proxy's choice is seeded, so
//!   it is the same every run);
//! - meshless with `pick_first`, `round_robin`, and every load-aware policy this build has
//!   that the demo knows, fed by a discovery the demo drives.
//!
//! At the scale-up the proxy adds the fifth server to its backends, as kube-proxy learns a
//! new pod, but the plain channel and the pool keep their connections and never send it a
//! call. meshless learns it through discovery; the second half starts once the channel has
//! it ready (a real scale-up takes that connect time too), so the table shows the steady
//! state after it. Calls per server are counted by the servers.
//!
//! ```text
//! cargo run --release --example demo [-- --requests N --concurrency C --json]
//! ```

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshless::balancer::ConnectMode;
use meshless::{Channel, ChannelStatus, ConnectivityState, Endpoint, ManualDiscovery};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::load::{self, LoadArgs, LoadOutcome};
use meshless_integration::proxy::ProxyHandle;
use meshless_integration::report::ScaleUpReport;
use meshless_integration::server::{ServerHandle, TestServer};

type DemoResult<T> = Result<T, Box<dyn Error>>;

const DEFAULT_REQUESTS: usize = 4000;
const DEFAULT_CONCURRENCY: usize = 32;
/// Every server's service time; the slow one adds [`SLOW_EXTRA`].
const BASE_LATENCY: Duration = Duration::from_millis(1);
const SLOW_EXTRA: Duration = Duration::from_millis(20);
/// Plain channels in the pool run.
const POOL_SIZE: usize = 4;
/// Policies run after pick_first and round_robin when this build has them.
const LOAD_AWARE: &[&str] = &["least_request", "p2c_ewma"];
/// Seed of the L4 proxy's backend choice, so the plain-tonic and pool runs are reproducible.
const PROXY_SEED: u64 = 7;
/// The server the scale-up starts.
const NEW_SERVER: &str = "server-4 (new)";
/// Bound on waiting for meshless connections to come up; loopback needs milliseconds.
const READY_BOUND: Duration = Duration::from_secs(5);

fn hello(i: usize) -> HelloRequest {
    HelloRequest {
        name: format!("call {i}"),
        ..Default::default()
    }
}

/// Every server's call count, in order.
fn counts(servers: &[ServerHandle]) -> Vec<u64> {
    servers.iter().map(ServerHandle::calls).collect()
}

/// Starts the fifth server, at the base latency.
fn start_new_server() -> std::io::Result<ServerHandle> {
    TestServer::new(NEW_SERVER).latency(BASE_LATENCY).spawn()
}

/// The report of a run, from the servers' counters: `start`, `mid` and `end` were taken
/// before, between and after the halves; `new` is the server the scale-up started.
fn scale_up_report(
    name: &str,
    servers: &[ServerHandle],
    (start, mid, end): (&[u64], &[u64], &[u64]),
    new: &ServerHandle,
    halves: (&LoadOutcome, &LoadOutcome),
) -> ScaleUpReport {
    let mut report = ScaleUpReport::new(name, NEW_SERVER, halves.0, halves.1);
    for (i, s) in servers.iter().enumerate() {
        report = report.calls(s.name(), mid[i] - start[i], end[i] - mid[i]);
    }
    // It did not exist before the scale-up.
    report.calls(new.name(), 0, new.calls())
}

/// `connections` plain tonic channels dialled through a fresh L4 proxy, used in turn call
/// by call; with one connection this is a plain channel.
async fn pinned_run(
    name: &str,
    connections: usize,
    servers: &[ServerHandle],
    args: &LoadArgs,
) -> DemoResult<ScaleUpReport> {
    let proxy = ProxyHandle::spawn(servers.iter().map(|s| s.addr()).collect(), PROXY_SEED).await?;
    let mut clients = Vec::with_capacity(connections);
    let mut landed = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = tonic::transport::Channel::from_shared(proxy.uri())?
            .connect()
            .await?;
        let mut client = GreeterClient::new(channel);
        // One call tells which backend the proxy pinned this connection to.
        let reply = client.say_hello(hello(0)).await?;
        landed.push(reply.into_inner().server);
        clients.push(client);
    }
    let send = |requests: usize| {
        load::run(args.concurrency, requests, |i| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                client
                    .say_hello(hello(i))
                    .await
                    .map(|r| r.into_inner().server)
            }
        })
    };
    let half = args.requests / 2;
    let start = counts(servers);
    let first = send(half).await;
    let mid = counts(servers);
    let new = start_new_server()?;
    proxy.add_backend(new.addr());
    let second = send(args.requests - half).await;
    let end = counts(servers);
    Ok(scale_up_report(name, servers, (&start, &mid, &end), &new, (&first, &second))
        .connections(landed)
        .note(format!(
            "the proxy learned {NEW_SERVER}; new connections may land on it, these stay where they are"
        )))
}

/// Waits until `status` of `channel` satisfies `done`, bounded by [`READY_BOUND`]; answers
/// how long that took. Wakes on every picker the channel publishes; the channel publishes a
/// picker just before it updates its status, so a short re-check covers the status that
/// follows a wake-up.
async fn wait_for(
    channel: &Channel,
    what: &str,
    done: impl Fn(&ChannelStatus) -> bool,
) -> DemoResult<Duration> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    let mut pickers = channel.picker_watch();
    while !done(&channel.status()) {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what} within {READY_BOUND:?}").into());
        }
        let recheck = (tokio::time::Instant::now() + Duration::from_millis(2)).min(deadline);
        let _ = tokio::time::timeout_at(recheck, pickers.changed()).await;
    }
    Ok(started.elapsed())
}

/// meshless with `policy`, fed by a [`ManualDiscovery`] that adds the fifth server at the
/// half-way point.
async fn meshless_run(
    policy: &str,
    servers: &[ServerHandle],
    args: &LoadArgs,
) -> DemoResult<ScaleUpReport> {
    let (discovery, handle) = ManualDiscovery::new();
    handle.reset(servers.iter().map(|s| Endpoint::new(s.addr())).collect());
    let channel = Channel::with_discovery("greeter", Arc::new(discovery))
        .policy(policy)
        .build()?;
    // pick_first connects to one endpoint and keeps it; the other policies connect to all.
    let connects_all = meshless::balancer::policy(policy)?
        .new_balancer()
        .connect_mode()
        == ConnectMode::All;
    let want = if connects_all { servers.len() } else { 1 };
    // Let the connections come up, so the run measures balancing, not connecting.
    wait_for(&channel, "connections ready", |s| s.ready_count() >= want).await?;

    let half = LoadArgs {
        requests: args.requests / 2,
        ..args.clone()
    };
    let rest = LoadArgs {
        requests: args.requests - half.requests,
        ..args.clone()
    };
    let client = GreeterClient::new(channel.clone());
    let start = counts(servers);
    let first = load::say_hello(client.clone(), &half).await;
    let mid = counts(servers);
    let new = start_new_server()?;
    let addr = meshless::Address::from(new.addr());
    handle.add([Endpoint::new(new.addr())]);
    let (note, ready) = if connects_all {
        let after = wait_for(&channel, "the new server ready", |s| {
            s.endpoint(&addr)
                .is_some_and(|e| e.state == ConnectivityState::Ready)
        })
        .await?;
        (
            format!("discovery added {NEW_SERVER}; the second half started once it was ready"),
            Some(after),
        )
    } else {
        wait_for(&channel, "the new server in the channel's set", |s| {
            s.endpoint(&addr).is_some()
        })
        .await?;
        (
            format!("discovery added {NEW_SERVER}; {policy} keeps the one connection it has"),
            None,
        )
    };
    let second = load::say_hello(client, &rest).await;
    let end = counts(servers);
    drop(channel);
    let mut report = scale_up_report(
        policy,
        servers,
        (&start, &mid, &end),
        &new,
        (&first, &second),
    )
    .note(note);
    if let Some(after) = ready {
        report = report.added_ready(after);
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> DemoResult<()> {
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
    let mut runs = Vec::new();

    // 1. What a tonic client does behind a Kubernetes Service: one connection, one pod.
    runs.push(pinned_run("tonic_via_l4_proxy", 1, &servers, &args).await?);
    // 2. What teams try first: a pool of connections, each pinned where it landed.
    runs.push(pinned_run("tonic_pool_via_l4_proxy", POOL_SIZE, &servers, &args).await?);
    // 3. meshless, one policy after another.
    let mut policies = vec!["pick_first", "round_robin"];
    policies.extend(
        LOAD_AWARE
            .iter()
            .filter(|p| meshless::balancer::POLICY_NAMES.contains(p)),
    );
    for policy in policies {
        runs.push(meshless_run(policy, &servers, &args).await?);
    }

    if args.json {
        let json: serde_json::Map<String, serde_json::Value> =
            runs.iter().map(|r| (r.name.clone(), r.to_json())).collect();
        let json = serde_json::json!({
            "requests": args.requests,
            "concurrency": args.concurrency,
            "scale_up_after": args.requests / 2,
            "runs": json,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "{} requests at concurrency {} to 4 loopback greeters (server-3 is {} ms slower);\n\
             after {} of them {NEW_SERVER} starts; calls counted by the servers\n",
            args.requests,
            args.concurrency,
            SLOW_EXTRA.as_millis(),
            args.requests / 2,
        );
        for (i, run) in runs.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{run}");
        }
    }
    Ok(())
}
