//! Consul discovery convergence against the agent double (a benchmark, not a timed test).
//!
//! ```text
//! cargo bench -p meshless-integration --bench consul
//! ```
//!
//! With calls running throughout, from a change at the agent to the first call served by
//! the new endpoint, 100 times each:
//!
//! 1. registration: `PUT /v1/agent/service/register` of an instance whose check passes;
//! 2. check change: `PUT /v1/agent/check/pass/<id>` of an instance whose TTL check was
//!    critical;
//! 3. meshless's own `ConsulRegistrar`: `register()` → the first call.
//!
//! Each change is undone (deregister, check fail, registration dropped) and its removal
//! seen before the next, then the bench waits [`SPACING`], so each change meets a watch
//! that is blocking, as changes in a fleet do. One more row makes the registrations back
//! to back: it shows the watch's rate limit (a burst of 5 queries, then one per 50 ms),
//! which batches changes that come faster than that. Goal: p99 ≤ 100 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use meshless::Channel;
use meshless::discovery::consul::ConsulRegistrar;
use meshless::discovery::{Address, Instance, Registrar};
use meshless_integration::consul::{ConsulAgent, request};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};
use serde_json::json;

const CHANGES: usize = 100;
const BOUND: Duration = Duration::from_secs(10);
/// The quiet time between two changes of the spaced rows.
const SPACING: Duration = Duration::from_millis(150);

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn record(id: &str, s: &ServerHandle, status: &str) -> serde_json::Value {
    json!({
        "ID": id, "Name": "greeter", "Address": "127.0.0.1", "Port": s.addr().port(),
        "Check": {"CheckID": id, "TTL": "60s", "Status": status},
    })
}

async fn put(agent: &str, path: &str, body: Option<serde_json::Value>) {
    let (code, _, text) = request(agent, Method::PUT, path, body, None)
        .await
        .expect("agent request");
    assert_eq!(code, 200, "PUT {path}: {}", String::from_utf8_lossy(&text));
}

async fn first_call(s: &ServerHandle, before: u64, t0: Instant, what: &str) -> Duration {
    while s.calls() == before {
        assert!(t0.elapsed() < BOUND, "{what} never converged");
        tokio::task::yield_now().await;
    }
    t0.elapsed()
}

async fn gone(channel: &Channel, s: &ServerHandle) {
    let addr = Address::from(s.addr());
    let t0 = Instant::now();
    while channel.status().endpoint(&addr).is_some() {
        assert!(t0.elapsed() < BOUND, "a removal never converged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn run() {
    let agent = ConsulAgent::start_new().await.expect("agent");
    let a = agent.addr().to_string();
    let base = TestServer::new("base").spawn().expect("server");
    let pool = [
        TestServer::new("new-a").spawn().expect("server"),
        TestServer::new("new-b").spawn().expect("server"),
    ];
    put(
        &a,
        "/v1/agent/service/register",
        Some(record("base", &base, "passing")),
    )
    .await;
    let channel = Channel::builder(format!("consul://{a}/greeter"))
        .policy("round_robin")
        .build()
        .expect("channel");
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut c = GreeterClient::new(channel.clone());
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = c.say_hello(HelloRequest::default()).await;
            }
        }));
    }
    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();

    for (label, spacing) in [
        ("registration (agent register)", SPACING),
        ("registration, back to back", Duration::ZERO),
    ] {
        let mut times = Vec::with_capacity(CHANGES);
        for i in 0..CHANGES {
            let s = &pool[i % 2];
            let id = format!("new-{}", i % 2);
            let before = s.calls();
            let t0 = Instant::now();
            put(
                &a,
                "/v1/agent/service/register",
                Some(record(&id, s, "passing")),
            )
            .await;
            times.push(first_call(s, before, t0, "a registration").await);
            put(&a, &format!("/v1/agent/service/deregister/{id}"), None).await;
            gone(&channel, s).await;
            tokio::time::sleep(spacing).await;
        }
        results.push((label, times));
    }

    for (i, s) in pool.iter().enumerate() {
        put(
            &a,
            "/v1/agent/service/register",
            Some(record(&format!("chk-{i}"), s, "critical")),
        )
        .await;
    }
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let id = format!("chk-{}", i % 2);
        let before = s.calls();
        let t0 = Instant::now();
        put(&a, &format!("/v1/agent/check/pass/{id}"), None).await;
        times.push(first_call(s, before, t0, "a check pass").await);
        put(&a, &format!("/v1/agent/check/fail/{id}"), None).await;
        gone(&channel, s).await;
        tokio::time::sleep(SPACING).await;
    }
    results.push(("check change (TTL pass)", times));
    for i in 0..2 {
        put(&a, &format!("/v1/agent/service/deregister/chk-{i}"), None).await;
    }

    let registrar = ConsulRegistrar::new(a.clone());
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let before = s.calls();
        let t0 = Instant::now();
        let registration = registrar
            .register(Instance::new("greeter", s.addr().to_string()))
            .expect("register");
        times.push(first_call(s, before, t0, "a ConsulRegistrar registration").await);
        registration.deregister().await;
        gone(&channel, s).await;
        tokio::time::sleep(SPACING).await;
    }
    results.push(("ConsulRegistrar::register", times));

    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    println!(
        "consul convergence: change at the agent -> first call on the new endpoint ({CHANGES} changes each, 4 callers)"
    );
    println!(
        "  {:<32} {:>9} {:>9} {:>9}",
        "change", "p50 ms", "p99 ms", "max ms"
    );
    let mut all = Vec::new();
    for (label, mut t) in results {
        if !label.contains("back to back") {
            all.extend_from_slice(&t);
        }
        println!(
            "  {:<32} {:>9.2} {:>9.2} {:>9.2}",
            label,
            ms(percentile(&mut t, 0.5)),
            ms(percentile(&mut t, 0.99)),
            ms(percentile(&mut t, 1.0))
        );
    }
    println!(
        "  {:<32} {:>9.2} {:>9.2} {:>9.2}   (goal: p99 <= 100 ms)",
        "all spaced changes",
        ms(percentile(&mut all, 0.5)),
        ms(percentile(&mut all, 0.99)),
        ms(percentile(&mut all, 1.0))
    );
    println!(
        "  health queries answered by the agent: {}",
        agent.health_queries()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}
