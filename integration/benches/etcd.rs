//! etcd discovery convergence against a real etcd (a benchmark, not a timed test).
//!
//! ```text
//! cargo bench -p meshless-integration --bench etcd
//! ```
//!
//! With calls running throughout, from a key put in etcd to the first call served by the
//! new endpoint, 100 times each:
//!
//! 1. a go-zero key (`greeter/<n>` = `host:port`), put with etcd-client;
//! 2. a kratos key (`/microservices/greeter/<n>` = its JSON instance);
//! 3. meshless's own `EtcdRegistrar`: `register()` (lease grant, put) → the first call.
//!
//! Each key is deleted (the registration dropped) and the removal seen before the next
//! change. Needs Debian's `etcd-server` (scripts/test.sh installs it). Goal: p99 ≤ 50 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshless::Channel;
use meshless::discovery::etcd::etcd_client::Client;
use meshless::discovery::etcd::{EtcdFormat, EtcdRegistrar};
use meshless::discovery::{Address, Instance, Registrar};
use meshless_integration::etcd::EtcdServer;
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};

const CHANGES: usize = 100;
const BOUND: Duration = Duration::from_secs(10);

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

/// A channel on `target` with 4 callers running until `stop`.
fn loaded(target: String, stop: &Arc<AtomicBool>) -> (Channel, Vec<tokio::task::JoinHandle<()>>) {
    let channel = Channel::builder(target)
        .policy("round_robin")
        .build()
        .expect("channel");
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
    (channel, load)
}

fn kratos_value(id: &str, s: &ServerHandle) -> String {
    format!(
        r#"{{"id":"{id}","name":"greeter","version":"v1","metadata":null,"endpoints":["grpc://{}"]}}"#,
        s.addr()
    )
}

async fn run() {
    if !meshless_integration::etcd::available() {
        eprintln!(
            "etcd bench: `etcd`/`etcdctl` not installed (apt-get install etcd-server etcd-client); skipped"
        );
        return;
    }
    let etcd = EtcdServer::start().await.expect("etcd");
    let a = etcd.addr().to_string();
    let mut kv = Client::connect([a.as_str()], None)
        .await
        .expect("etcd client");
    let base = TestServer::new("base").spawn().expect("server");
    let pool = [
        TestServer::new("new-a").spawn().expect("server"),
        TestServer::new("new-b").spawn().expect("server"),
    ];
    kv.put("greeter/base", base.addr().to_string(), None)
        .await
        .expect("put");
    kv.put(
        "/microservices/greeter/base",
        kratos_value("base", &base),
        None,
    )
    .await
    .expect("put");
    let stop = Arc::new(AtomicBool::new(false));
    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
    let mut loads = Vec::new();

    // go-zero keys.
    let (channel, load) = loaded(format!("etcd:///{a}?key=greeter"), &stop);
    loads.extend(load);
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let key = format!("greeter/{}", 1000 + i);
        let before = s.calls();
        let t0 = Instant::now();
        kv.put(key.as_str(), s.addr().to_string(), None)
            .await
            .expect("put");
        times.push(first_call(s, before, t0, "a go-zero key").await);
        kv.delete(key.as_str(), None).await.expect("delete");
        gone(&channel, s).await;
    }
    results.push(("go-zero key put", times));

    // EtcdRegistrar, go-zero format, on the same channel.
    let registrar = EtcdRegistrar::new([a.clone()]);
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let before = s.calls();
        let t0 = Instant::now();
        let registration = registrar
            .register(Instance::new("greeter", s.addr().to_string()))
            .expect("register");
        times.push(first_call(s, before, t0, "an EtcdRegistrar registration").await);
        registration.deregister().await;
        gone(&channel, s).await;
    }
    results.push(("EtcdRegistrar::register", times));

    // kratos keys.
    let (channel, load) = loaded(format!("etcd:///{a}?key=greeter&format=kratos"), &stop);
    loads.extend(load);
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let id = format!("k{i}");
        let key = format!("/microservices/greeter/{id}");
        let before = s.calls();
        let t0 = Instant::now();
        kv.put(key.as_str(), kratos_value(&id, s), None)
            .await
            .expect("put");
        times.push(first_call(s, before, t0, "a kratos key").await);
        kv.delete(key.as_str(), None).await.expect("delete");
        gone(&channel, s).await;
    }
    results.push(("kratos key put", times));
    let kratos = EtcdRegistrar::new([a.clone()]).format(EtcdFormat::Kratos);
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let before = s.calls();
        let t0 = Instant::now();
        let registration = kratos
            .register(Instance::new("greeter", s.addr().to_string()).with_id(format!("r{i}")))
            .expect("register");
        times.push(first_call(s, before, t0, "a kratos EtcdRegistrar registration").await);
        registration.deregister().await;
        gone(&channel, s).await;
    }
    results.push(("EtcdRegistrar::register (kratos)", times));

    stop.store(true, Ordering::Relaxed);
    for l in loads {
        let _ = l.await;
    }
    println!(
        "etcd convergence: key put -> first call on the new endpoint ({CHANGES} changes each, 4 callers per channel)"
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "change", "p50 ms", "p99 ms", "max ms"
    );
    let mut all = Vec::new();
    for (label, mut t) in results {
        all.extend_from_slice(&t);
        println!(
            "  {:<34} {:>9.2} {:>9.2} {:>9.2}",
            label,
            ms(percentile(&mut t, 0.5)),
            ms(percentile(&mut t, 0.99)),
            ms(percentile(&mut t, 1.0))
        );
    }
    println!(
        "  {:<34} {:>9.2} {:>9.2} {:>9.2}   (goal: p99 <= 50 ms)",
        "all changes",
        ms(percentile(&mut all, 0.5)),
        ms(percentile(&mut all, 0.99)),
        ms(percentile(&mut all, 1.0))
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
