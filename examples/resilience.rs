//! Resilience under faults: hedging against a black hole, retries with outlier detection
//! against a partial outage, the retry budget against a total outage, and adaptive
//! throttling against overload. Loopback tonic servers; prints one table per scenario and
//! checks the goals; `--json` prints one JSON object instead.
//!
//! ```text
//! cargo run --release --example resilience [-- --json]
//! ```
//!
//! 1. **black_hole**: 4 endpoints behind HTTP/2 proxies, p2c_ewma, concurrency 16, a 1 s
//!    deadline; one proxy stops forwarding for 5 s while its TCP connection stays open.
//!    Without hedging, then with hedging at the observed p95, against an all-healthy run.
//! 2. **partial_outage**: 1 of 5 endpoints answers UNAVAILABLE at once; retries (3 attempts)
//!    and outlier detection (interval 1 s).
//! 3. **total_outage**: every endpoint answers UNAVAILABLE for 10 s; retries with up to 5
//!    attempts, bounded by the default budget (20 % of calls + 10 retries/s).
//! 4. **overload**: one endpoint that serves 500 calls/s and refuses the rest with
//!    RESOURCE_EXHAUSTED, offered 2,500 calls/s for 8 s, with adaptive throttling off and on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshless::middleware::{
    HedgeDelay, HedgingPolicy, MethodPolicy, Resilience, Resilient, ThrottleConfig,
};
use meshless::{Channel, OutlierDetection, RetryPolicy};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::h2proxy::{Behaviour, H2ProxyHandle};
use meshless_integration::report::Latencies;
use meshless_integration::server::{ServerHandle, TestServer};
use serde_json::json;
use tokio::time::Instant;
use tonic::{Code, Status};

type Error = Box<dyn std::error::Error>;
type Client = GreeterClient<Resilient<Channel>>;

const CONCURRENCY: usize = 16;
const DEADLINE: Duration = Duration::from_secs(1);
/// Every server answers after 1 ms, like a fast backend on a quiet network.
const SERVER_LATENCY: Duration = Duration::from_millis(1);

/// What one closed-loop run saw.
#[derive(Default)]
struct Run {
    latencies: Latencies,
    errors: BTreeMap<String, u64>,
    calls: u64,
    elapsed: Duration,
}

impl Run {
    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn json(&self) -> serde_json::Value {
        let s = self.latencies.summary();
        json!({
            "calls": self.calls,
            "failed": self.failed(),
            "errors": self.errors,
            "p50_ms": ms(s.p50),
            "p99_ms": ms(s.p99),
            "max_ms": ms(s.max),
            "calls_per_sec": self.calls as f64 / self.elapsed.as_secs_f64(),
        })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Calls from `CONCURRENCY` tasks until `duration` has passed; `during` runs meanwhile
/// (the fault), given the start instant.
async fn closed_loop<F, Fut>(client: &Client, duration: Duration, during: F) -> Run
where
    F: FnOnce(Instant) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let stop = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut run = Run::default();
            while Instant::now() < stop {
                let begun = Instant::now();
                match c.say_hello(HelloRequest::default()).await {
                    Ok(_) => run.latencies.record(begun.elapsed()),
                    Err(e) => *run.errors.entry(format!("{:?}", e.code())).or_default() += 1,
                }
                run.calls += 1;
            }
            run
        }));
    }
    during(start).await;
    let mut all = Run::default();
    for t in tasks {
        let r = t.await.expect("load task");
        all.calls += r.calls;
        for (k, v) in r.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.latencies.merge(&r.latencies);
    }
    all.elapsed = start.elapsed();
    all
}

fn servers(n: usize) -> Result<Vec<ServerHandle>, Error> {
    (0..n)
        .map(|i| {
            Ok(TestServer::new(format!("s{i}"))
                .latency(SERVER_LATENCY)
                .spawn()?)
        })
        .collect()
}

fn target(addrs: impl IntoIterator<Item = std::net::SocketAddr>) -> String {
    let list: Vec<String> = addrs.into_iter().map(|a| a.to_string()).collect();
    format!("static:///{}", list.join(","))
}

async fn ready(channel: &Channel, n: usize) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while channel.status().ready_count() < n {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} endpoints ready",
                channel.status().ready_count()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

// ===== 1. black hole =====

async fn black_hole(json: bool) -> Result<(serde_json::Value, bool), Error> {
    let servers = servers(4)?;
    let mut proxies = Vec::new();
    for s in &servers {
        proxies.push(H2ProxyHandle::spawn(s.addr(), Behaviour::Forward).await?);
    }
    let proxies = Arc::new(proxies);
    let plain = MethodPolicy::new().timeout(DEADLINE);
    let hedged = plain.clone().hedge(HedgingPolicy::new(
        2,
        HedgeDelay::p95(Duration::from_millis(20)),
        [Code::Unavailable],
    )?);
    let mut results = serde_json::Map::new();
    let mut p99 = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for (name, policy, fault) in [
        ("all_healthy", plain.clone(), false),
        ("no_hedging", plain.clone(), true),
        ("hedging_p95", hedged.clone(), true),
    ] {
        let channel = Channel::builder(target(proxies.iter().map(|p| p.addr())))
            .policy("p2c_ewma")
            .build()?;
        ready(&channel, 4).await?;
        let stack = Resilience::new().default_policy(policy);
        let client = GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
        // Warm the channel's estimates and the hedging sketch.
        closed_loop(&client, Duration::from_millis(500), |_| async {}).await;
        let p = proxies.clone();
        let run = closed_loop(&client, Duration::from_secs(8), |start| async move {
            if fault {
                tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
                p[0].freeze();
                tokio::time::sleep_until(start + Duration::from_millis(6500)).await;
                p[0].thaw();
            }
        })
        .await;
        p99.insert(name, run.latencies.summary().p99);
        failed.insert(name, run.failed());
        if !json {
            let s = run.latencies.summary();
            println!(
                "  {name:<14} calls {:>7}  failed {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  {}",
                run.calls,
                run.failed(),
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                if run.errors.is_empty() {
                    String::new()
                } else {
                    format!("{:?}", run.errors)
                }
            );
        }
        results.insert(name.into(), run.json());
    }
    let ratio = p99["hedging_p95"].as_secs_f64() / p99["all_healthy"].as_secs_f64().max(1e-9);
    let met = failed["hedging_p95"] == 0 && ratio <= 3.0;
    if !json {
        println!(
            "  goal: with hedging 0 failed calls ({}) and p99 <= 3 x all-healthy ({ratio:.2} x): {}",
            failed["hedging_p95"],
            if met { "met" } else { "NOT met" }
        );
    }
    results.insert("hedging_p99_vs_healthy".into(), json!(ratio));
    results.insert("goal_met".into(), json!(met));
    Ok((serde_json::Value::Object(results), met))
}

// ===== 2. partial outage =====

async fn partial_outage(json: bool) -> Result<(serde_json::Value, bool), Error> {
    let servers = servers(5)?;
    servers[0].set_fail(Some(Code::Unavailable));
    let interval = Duration::from_secs(1);
    let channel = Channel::builder(target(servers.iter().map(|s| s.addr())))
        .policy("round_robin")
        .outlier_detection(OutlierDetection::default().interval(interval))
        .build()?;
    ready(&channel, 5).await?;
    let retry = RetryPolicy::new([Code::Unavailable])?.max_attempts(3)?;
    let stack =
        Resilience::new().default_policy(MethodPolicy::new().timeout(DEADLINE).retry(retry));
    let client = GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
    let bad = meshless::Address::Tcp(servers[0].addr());
    let ejected_at = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let watch = ejected_at.clone();
    let ch = channel.clone();
    let run = closed_loop(&client, Duration::from_secs(8), |start| async move {
        while start.elapsed() < Duration::from_secs(8) {
            if ch.status().endpoint(&bad).is_some_and(|e| e.ejected) {
                *watch.lock().unwrap() = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let attempts: u64 = servers.iter().map(|s| s.calls()).sum();
    let success = 1.0 - run.failed() as f64 / run.calls as f64;
    let ejected = *ejected_at.lock().unwrap();
    let intervals = ejected.map(|d| d.as_secs_f64() / interval.as_secs_f64());
    let met = success >= 0.9999 && intervals.is_some_and(|i| i <= 2.0);
    if !json {
        println!(
            "  calls {}  failed {}  success {:.4} %  attempts per call {:.3}  ejected after {}",
            run.calls,
            run.failed(),
            success * 100.0,
            attempts as f64 / run.calls as f64,
            intervals.map_or("never".into(), |i| format!(
                "{i:.2} intervals of {interval:?}"
            ))
        );
        println!(
            "  goal: >= 99.99 % success and ejected within 2 intervals: {}",
            if met { "met" } else { "NOT met" }
        );
    }
    Ok((
        json!({
            "run": run.json(),
            "success_ratio": success,
            "attempts_per_call": attempts as f64 / run.calls as f64,
            "ejected_after_intervals": intervals,
            "interval_secs": interval.as_secs_f64(),
            "goal_met": met,
        }),
        met,
    ))
}

// ===== 3. total outage =====

async fn total_outage(json: bool) -> Result<(serde_json::Value, bool), Error> {
    let servers = servers(5)?;
    for s in &servers {
        s.set_fail(Some(Code::Unavailable));
    }
    let channel = Channel::builder(target(servers.iter().map(|s| s.addr())))
        .policy("round_robin")
        .build()?;
    ready(&channel, 5).await?;
    let retry = RetryPolicy::new([Code::Unavailable])?
        .max_attempts(5)?
        .backoff(Duration::from_millis(5), Duration::from_millis(50), 2.0)?;
    let stack =
        Resilience::new().default_policy(MethodPolicy::new().timeout(DEADLINE).retry(retry));
    let client = GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
    let duration = Duration::from_secs(10);
    let run = closed_loop(&client, duration, |_| async {}).await;
    let attempts: u64 = servers.iter().map(|s| s.calls()).sum();
    let per_call = attempts as f64 / run.calls as f64;
    // 20 % of calls, plus the reserve of 10 retries/s over a 10 s window: a run of T s
    // overlaps up to T/10 + 1 windows, each with its reserve of 100.
    let window = 10.0;
    let bound = 1.2 + 10.0 * (duration.as_secs_f64() + window) / run.calls as f64;
    let met = per_call <= bound;
    if !json {
        println!(
            "  calls {}  attempts {}  attempts per call {per_call:.4}  bound {bound:.4} (1.2 + reserve / calls): {}",
            run.calls,
            attempts,
            if met { "met" } else { "NOT met" }
        );
    }
    Ok((
        json!({"calls": run.calls, "attempts": attempts, "attempts_per_call": per_call, "bound": bound, "goal_met": met}),
        met,
    ))
}

// ===== 4. overload =====

const CAPACITY: u64 = 500;
const OFFERED: u64 = 5 * CAPACITY;

/// A server that serves `CAPACITY` calls per second (in 100 ms slices) and refuses the rest.
fn capped_server() -> Result<ServerHandle, Error> {
    let slice = Arc::new(std::sync::Mutex::new((Instant::now(), 0u64)));
    Ok(TestServer::new("capped")
        .on_call(move |_| {
            let slice = slice.clone();
            async move {
                let mut s = slice.lock().unwrap();
                if s.0.elapsed() >= Duration::from_millis(100) {
                    *s = (Instant::now(), 0);
                }
                s.1 += 1;
                if s.1 > CAPACITY / 10 {
                    return Err(Status::resource_exhausted("over capacity"));
                }
                Ok(())
            }
        })
        .spawn()?)
}

async fn overload(json: bool) -> Result<(serde_json::Value, bool), Error> {
    let mut out = serde_json::Map::new();
    for throttled in [false, true] {
        let server = capped_server()?;
        let channel = Channel::builder(target([server.addr()])).build()?;
        ready(&channel, 1).await?;
        let mut stack = Resilience::new().default_policy(MethodPolicy::new().timeout(DEADLINE));
        if throttled {
            stack = stack.adaptive_throttle(ThrottleConfig::sre());
        }
        let client: Client = GreeterClient::new(tower::Layer::layer(&stack, channel.clone()));
        let duration = Duration::from_secs(8);
        let ok = Arc::new(AtomicU64::new(0));
        let local = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let every = Duration::from_secs(1) / OFFERED as u32;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut offered = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        while start.elapsed() < duration {
            tick.tick().await;
            offered += 1;
            let mut c = client.clone();
            let (ok, local) = (ok.clone(), local.clone());
            tasks.spawn(async move {
                match c.say_hello(HelloRequest::default()).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if meshless::LocallyRejected::of(&e).is_some() => {
                        local.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        stop.store(true, Ordering::Relaxed);
        while tasks.join_next().await.is_some() {}
        let secs = start.elapsed().as_secs_f64();
        let received = server.calls() as f64 / secs;
        let goodput = ok.load(Ordering::Relaxed) as f64 / secs;
        let name = if throttled {
            "throttling_on"
        } else {
            "throttling_off"
        };
        if !json {
            println!(
                "  {name:<15} offered {:>6.0}/s  server received {:>6.0}/s  goodput {:>5.0}/s  rejected locally {:>6.0}/s",
                offered as f64 / secs,
                received,
                goodput,
                local.load(Ordering::Relaxed) as f64 / secs
            );
        }
        out.insert(
            name.into(),
            json!({"offered_per_sec": offered as f64 / secs, "server_received_per_sec": received, "goodput_per_sec": goodput}),
        );
    }
    Ok((serde_json::Value::Object(out), true))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let json = std::env::args().any(|a| a == "--json");
    let mut all = serde_json::Map::new();
    let mut met = true;
    if !json {
        println!(
            "black_hole: 4 endpoints, one stops answering for 5 s (TCP open), concurrency {CONCURRENCY}, deadline {DEADLINE:?}, p2c_ewma"
        );
    }
    let (v, m) = black_hole(json).await?;
    all.insert("black_hole".into(), v);
    met &= m;
    if !json {
        println!(
            "partial_outage: 1 of 5 endpoints answers UNAVAILABLE; retries (3 attempts) + outlier detection"
        );
    }
    let (v, m) = partial_outage(json).await?;
    all.insert("partial_outage".into(), v);
    met &= m;
    if !json {
        println!(
            "total_outage: every endpoint answers UNAVAILABLE for 10 s; up to 5 attempts within the default budget"
        );
    }
    let (v, m) = total_outage(json).await?;
    all.insert("total_outage".into(), v);
    met &= m;
    if !json {
        println!(
            "overload: one endpoint serving {CAPACITY} calls/s, offered {OFFERED} calls/s (open loop), 8 s each"
        );
    }
    let (v, _) = overload(json).await?;
    all.insert("overload".into(), v);
    all.insert("goals_met".into(), json!(met));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(all))?
        );
    }
    Ok(())
}
