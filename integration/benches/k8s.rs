//! Kubernetes discovery benchmarks against the API server double (not timed tests).
//!
//! ```text
//! cargo bench -p meshless-integration --bench k8s
//! ```
//!
//! 1. Convergence: from a slice change at the API server to the first call served by the
//!    new endpoint, over 100 changes, with calls running throughout.
//! 2. Scale: a service of 5,000 endpoints in 50 slices: initial sync time, memory, and the
//!    cost of applying one slice change, measured while calls keep being picked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use meshless::Channel;
use meshless::discovery::k8s::{K8sConfig, K8sDiscovery, K8sScheme};
use meshless::discovery::{Discovery, Registry, Target, Update};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::k8s::{KubeApi, endpoint_slice};
use meshless_integration::server::TestServer;

const CHANGES: usize = 100;
const SCALE_SLICES: usize = 50;
const SCALE_PER_SLICE: usize = 100;
const SCALE_CHANGES: usize = 50;
const BOUND: Duration = Duration::from_secs(10);

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The 100 endpoints of slice `s`, each ready when `ready(e)` says so.
fn pods(s: usize, ready: impl Fn(usize) -> bool) -> Vec<(String, bool, bool, bool)> {
    (0..SCALE_PER_SLICE)
        .map(|e| (format!("127.0.{}.{}", s + 1, e + 1), ready(e), true, false))
        .collect()
}

/// Writes slice `s` of the scale service: 100 endpoints on `port`, ready where `ready` says.
fn publish(api: &KubeApi, s: usize, port: u16, ready: impl Fn(usize) -> bool) {
    let eps = pods(s, ready);
    let eps: Vec<(&str, bool, bool, bool)> = eps
        .iter()
        .map(|(a, r, sv, t)| (a.as_str(), *r, *sv, *t))
        .collect();
    let name = format!("greeter-{s:02}");
    api.apply(
        "default",
        endpoint_slice(&name, "greeter", "IPv4", &[("grpc", port)], &eps),
    );
}

fn client_for(api: &KubeApi) -> kube::Client {
    kube::Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client")
}

fn slice(name: &str, port: u16, ip: &str, ready: bool) -> serde_json::Value {
    endpoint_slice(
        name,
        "greeter",
        "IPv4",
        &[("grpc", port)],
        &[(ip, ready, ready, false)],
    )
}

async fn convergence() {
    let api = KubeApi::start().await.expect("api");
    let base = TestServer::new("base").spawn().expect("server");
    let pool = [
        TestServer::new("new-a").spawn().expect("server"),
        TestServer::new("new-b").spawn().expect("server"),
    ];
    api.apply(
        "default",
        slice("base", base.addr().port(), "127.0.0.1", true),
    );
    let mut registry = Registry::default();
    registry.register(K8sScheme::new(
        K8sConfig::default().client(client_for(&api)),
    ));
    let channel = Channel::builder("kubernetes:///greeter.default:grpc")
        .registry(registry)
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
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let s = &pool[i % 2];
        let name = format!("new-{}", i % 2);
        let before = s.calls();
        let t0 = Instant::now();
        api.apply("default", slice(&name, s.addr().port(), "127.0.0.1", true));
        while s.calls() == before {
            assert!(t0.elapsed() < BOUND, "change {i} never converged");
            tokio::task::yield_now().await;
        }
        times.push(t0.elapsed());
        api.delete("default", &name);
        let addr = meshless::discovery::Address::from(s.addr());
        while channel.status().endpoint(&addr).is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    let (p50, p99, max) = (
        percentile(&mut times, 0.50),
        percentile(&mut times, 0.99),
        percentile(&mut times, 1.0),
    );
    println!(
        "convergence: slice change at the API server -> first call on the new endpoint ({CHANGES} changes)"
    );
    println!(
        "  p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   (goal: p99 <= 50 ms)",
        ms(p50),
        ms(p99),
        ms(max)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn scale(only_apply: bool) {
    let api = KubeApi::start().await.expect("api");
    // One server on every loopback address: 127.0.x.y all reach it, so 5,000 endpoints are
    // 5,000 real connections.
    let server = TestServer::new("all")
        .bind("0.0.0.0:0".parse().expect("addr"))
        .spawn()
        .expect("server");
    let port = server.addr().port();
    for s in 0..SCALE_SLICES {
        publish(&api, s, port, |_| true);
    }
    let total = SCALE_SLICES * SCALE_PER_SLICE;

    // Discovery alone: list, merge, first snapshot.
    let target = Target::parse("kubernetes:///greeter.default:grpc").expect("target");
    let config = K8sConfig::default().client(client_for(&api));
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let mut watch = K8sDiscovery::new(&target, config.clone())
        .expect("discovery")
        .watch();
    let first = tokio::time::timeout(BOUND, watch.next())
        .await
        .expect("sync")
        .expect("item")
        .expect("ok");
    let sync = t0.elapsed();
    let Update::Reset(eps) = first else {
        panic!("expected a snapshot")
    };
    assert_eq!(eps.len(), total);
    let rss_discovery = rss_kib().saturating_sub(rss0);
    if only_apply {
        drop(watch);
        print_apply(channel_apply(&eps, port).await);
        return;
    }

    // The watch starts after the list: the first change waits for it. Warm up with one change
    // (endpoint 99 of slice 0), so the figures below are of a running watch.
    let warm_up = {
        let t = Instant::now();
        publish(&api, 0, port, |e| e != SCALE_PER_SLICE - 1);
        let item = tokio::time::timeout(BOUND, watch.next())
            .await
            .expect("warm-up")
            .expect("item");
        assert!(item.is_ok());
        t.elapsed()
    };
    // One slice change: one endpoint of a slice turns not ready (each slice once), time
    // until the new snapshot.
    let mut change = Vec::with_capacity(SCALE_CHANGES);
    for i in 0..SCALE_CHANGES {
        let s = i % SCALE_SLICES;
        let t = Instant::now();
        publish(&api, s, port, |e| {
            e != 0 && !(s == 0 && e == SCALE_PER_SLICE - 1)
        });
        let item = tokio::time::timeout(BOUND, watch.next())
            .await
            .expect("change")
            .expect("item");
        assert!(item.is_ok());
        change.push(t.elapsed());
    }
    drop(watch);

    // The whole channel: 5,000 connections, calls running while slices change.
    let mut registry = Registry::default();
    registry.register(K8sScheme::new(config));
    let rss1 = rss_kib();
    let t1 = Instant::now();
    let channel = Channel::builder("kubernetes:///greeter.default:grpc")
        .registry(registry)
        .policy("p2c_ewma")
        .build()
        .expect("channel");
    // The discovery phase above left one endpoint per slice not ready, and one more in slice 0.
    let expected = total - SCALE_SLICES - 1;
    while channel.status().ready_count() < expected {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "only {} ready",
            channel.status().ready_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_ready = t1.elapsed();
    let rss_channel = rss_kib().saturating_sub(rss1);
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..8 {
        let mut c = GreeterClient::new(channel.clone());
        let (calls, stop, lat) = (calls.clone(), stop.clone(), lat.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if c.say_hello(HelloRequest::default()).await.is_ok() {
                    calls.fetch_add(1, Ordering::Relaxed);
                    lat.lock().expect("lock").push(t.elapsed());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet: Vec<Duration> = std::mem::take(&mut *lat.lock().expect("lock"));
    for i in 0..SCALE_CHANGES {
        let s = i % SCALE_SLICES;
        publish(&api, s, port, |e| {
            e != 0 && e != 1 && !(s == 0 && e == SCALE_PER_SLICE - 1)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy: Vec<Duration> = std::mem::take(&mut *lat.lock().expect("lock"));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    drop(channel);
    // Let the 4,949 connections of that channel close before the apply phase times its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let apply = channel_apply(&eps, port).await;
    let (mut quiet, mut busy) = (quiet, busy);
    println!("scale: {total} endpoints in {SCALE_SLICES} slices");
    println!(
        "  first change after the initial list (watch starting)     {:>8.2} ms",
        ms(warm_up)
    );
    println!(
        "  discovery initial sync (list + merge + first snapshot)  {:>8.1} ms",
        ms(sync)
    );
    println!(
        "  discovery memory (RSS growth)                           {:>8} KiB",
        rss_discovery
    );
    let (c50, c99) = (percentile(&mut change, 0.5), percentile(&mut change, 0.99));
    println!(
        "  one slice change -> new snapshot ({SCALE_CHANGES} changes)       p50 {:>6.2} ms  p99 {:>6.2} ms  (goal <= 5 ms)",
        ms(c50),
        ms(c99)
    );
    println!(
        "  channel: all {expected} connections ready                    {:>8.1} ms",
        ms(all_ready)
    );
    println!(
        "  channel memory (RSS growth, {expected} connections)          {:>8} KiB",
        rss_channel
    );
    println!(
        "  call latency while picking, quiet vs during {SCALE_CHANGES} slice changes: p50 {:.2}/{:.2} ms  p99 {:.2}/{:.2} ms",
        ms(percentile(&mut quiet, 0.5)),
        ms(percentile(&mut busy, 0.5)),
        ms(percentile(&mut quiet, 0.99)),
        ms(percentile(&mut busy, 0.99)),
    );
    print_apply(apply);
}

fn print_apply(apply: Vec<(&'static str, Vec<Duration>)>) {
    for (policy, mut times) in apply {
        let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
        println!(
            "  channel applies one slice change, {policy:<21} ({SCALE_CHANGES} changes)  p50 {:>6.2} ms  p99 {:>6.2} ms  (goal p50 <= 2 ms)",
            ms(p50),
            ms(p99)
        );
    }
}

/// The channel's own share of a slice change: from a new endpoint set handed to the channel
/// (the set discovery produced) to the new picker published, with every endpoint connected.
/// Reconcile, status and picker build, for a policy with a trivial picker and for one that
/// keeps a large ring. Two kinds of change: one slice's 100 endpoints leave and come back
/// (alternately), or one slice's pods are replaced by 100 new addresses (a rollout).
async fn channel_apply(
    eps: &[meshless::discovery::Endpoint],
    port: u16,
) -> Vec<(&'static str, Vec<Duration>)> {
    let mut out = Vec::new();
    // `-- apply ring_hash` measures one policy only.
    let only: Vec<String> = std::env::args()
        .filter(|a| a == "round_robin" || a == "ring_hash")
        .collect();
    let cases = [
        ("round_robin", "round_robin", false),
        ("ring_hash", "ring_hash", false),
        ("round_robin, new pods", "round_robin", true),
        ("ring_hash, new pods", "ring_hash", true),
    ];
    for (label, policy, new_pods) in cases {
        if !only.is_empty() && !only.iter().any(|p| p == policy) {
            continue;
        }
        let (discovery, handle) = meshless::discovery::ManualDiscovery::new();
        let channel = Channel::with_discovery("apply", Arc::new(discovery))
            .policy(policy)
            .build()
            .expect("channel");
        // Every address on `port` (the endpoints from discovery all point there).
        let mut all: Vec<meshless::discovery::Endpoint> = eps
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if let meshless::discovery::Address::Tcp(sa) = &mut e.addr {
                    sa.set_port(port);
                }
                e
            })
            .collect();
        handle.reset(all.clone());
        let t = Instant::now();
        while channel.status().ready_count() < all.len() {
            assert!(t.elapsed() < Duration::from_secs(60), "{policy}: not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut picker = channel.picker_watch();
        let mut times = Vec::with_capacity(SCALE_CHANGES);
        for i in 0..SCALE_CHANGES {
            let s = i % SCALE_SLICES;
            let next = if new_pods {
                // Slice s's pods come back at new addresses, 127.(10 + i).(s + 1).(e + 1).
                for (e, ep) in all[s * SCALE_PER_SLICE..(s + 1) * SCALE_PER_SLICE]
                    .iter_mut()
                    .enumerate()
                {
                    let ip = std::net::Ipv4Addr::new(127, 10 + i as u8, s as u8 + 1, e as u8 + 1);
                    *ep =
                        meshless::discovery::Endpoint::new(std::net::SocketAddr::from((ip, port)));
                }
                all.clone()
            } else {
                // One slice's endpoints (100) leave, then come back.
                let mut next = all.clone();
                if i % 2 == 0 {
                    next.drain(s * SCALE_PER_SLICE..(s + 1) * SCALE_PER_SLICE);
                }
                next
            };
            let expect = next.len();
            picker.borrow_and_update();
            let t = Instant::now();
            handle.reset(next);
            tokio::time::timeout(BOUND, picker.changed())
                .await
                .expect("picker published")
                .expect("channel alive");
            times.push(t.elapsed());
            // Let new endpoints connect before the next change.
            while channel.status().ready_count() < expect {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        out.push((label, times));
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; `-- apply` runs only the channel's apply phase.
    let only_apply = std::env::args().any(|a| a == "apply");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if !only_apply {
            convergence().await;
        }
        scale(only_apply).await;
    });
}
