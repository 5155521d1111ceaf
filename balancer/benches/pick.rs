//! Pick cost of every meshless strategy, picker build time, and tower's p2c for comparison.
//!
//! `cargo bench -p meshless-balancer --bench pick`
//!
//! What is measured:
//! - `pick/<policy>/<n>`: one `Picker::pick` on a picker over `n` ready endpoints, one
//!   thread. Hashing policies get requests without a key, so each pick looks up a random
//!   point (as a keyed workload with many keys would). Load-aware policies see endpoints
//!   with varied in-flight counts (a quarter of them idle) and latency estimates, after
//!   `4 × n` calls completed since those estimates were taken.
//! - `pick8/<policy>/<n>`: the same with 8 threads picking from one picker at once; the
//!   figure is wall time divided by the picks of all threads (inverse throughput). The
//!   machine that made the README table has 2 cores, so 8 threads time-share them.
//! - `build/<policy>/<n>`: the first `Balancer::build` over `n` endpoints, by a new balancer.
//! - `tower_p2c/<n>`: `tower::balance::p2c::Balance` over `PeakEwma` services from a
//!   `ServiceList` of trivial always-ready services: `poll_ready` (p2c selection among the
//!   ready services, after re-polling the one used last, which `Balance` moves back to
//!   pending on every call) plus `call` plus polling the response future to completion
//!   (which records the RTT in `PeakEwma`). Tower's `Balance` is `&mut self` and not
//!   `Sync` (it needs a `Buffer` to be shared), so it has no 8-thread figure.
//! - `p2c_record/<n>`: meshless p2c_ewma's comparable per-request work: `pick`, then
//!   `EndpointStats::start` and `finish` (each reads the clock once), as the channel does.
//! - `p2c_record8/{shared,own}/<n>`: the same from 8 threads at once, with the stats sharing
//!   the balancer's `LoadClock` (its call counters are written by every call) or each on a
//!   clock of its own: what the shared counters cost under contention.
//!
//! At the end a table is printed: mean ns per iteration over all criterion samples.
//!
//! `cargo bench -p meshless-balancer --bench pick -- --instructions` counts instead of
//! timing: for each policy and size it re-runs this binary under `valgrind --tool=callgrind`,
//! builds the same picker, and counts the instructions of [`PICKS`] picks inside
//! `meshless_measured_picks` (`--toggle-collect`), a figure the machine's load cannot move.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use meshless_balancer::{
    Balancer, ConnectivityState, DEFAULT_DECAY, DEFAULT_RTT, EndpointStats, LeastRequestConfig,
    MaglevConfig, P2cEwmaConfig, Pick, PickFirstConfig, PickRequest, Policy, RandomConfig,
    RingHashConfig, RoundRobin, SubchannelView, WeightedRoundRobinConfig,
};
use meshless_discovery::Endpoint;
use tower::Service;

/// Endpoint counts of the pick benchmarks (docs/benchmarks.md, "Pick cost": its goals are
/// at 1,000).
const PICK_SIZES: [usize; 3] = [10, 100, 1000];
/// Endpoint counts of the build benchmarks.
const BUILD_SIZES: [usize; 2] = [1_000, 10_000];
/// Threads picking at once in the contended case.
const THREADS: usize = 8;
/// Seed of every seeded policy and of the bench's own endpoint setup.
const SEED: u64 = 42;

/// `(total time, total iterations)` per benchmark id, for the closing table.
static RESULTS: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn record(id: &str, elapsed: Duration, iters: u64) {
    let mut r = RESULTS.lock().unwrap_or_else(|p| p.into_inner());
    let e = r.entry(id.to_owned()).or_default();
    e.0 += elapsed;
    e.1 += iters;
}

fn mean_ns(id: &str) -> Option<f64> {
    let r = RESULTS.lock().unwrap_or_else(|p| p.into_inner());
    r.get(id)
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| d.as_nanos() as f64 / *n as f64)
}

/// Every strategy, configured as a user would, seeded where it draws random numbers.
fn policies() -> Vec<Box<dyn Balancer>> {
    configs().iter().map(|p| p.new_balancer()).collect()
}

fn configs() -> Vec<Arc<dyn Policy>> {
    vec![
        PickFirstConfig::default().into(),
        RoundRobin.into(),
        WeightedRoundRobinConfig::default().seed(SEED).into(),
        RandomConfig::default().into(),
        LeastRequestConfig::default().into(),
        P2cEwmaConfig::default().into(),
        RingHashConfig::default().into(),
        MaglevConfig::default().into(),
    ]
}

/// `n` ready endpoints with weights 1–4, stats from the policy, some load recorded.
fn endpoints(policy: &dyn Balancer, n: usize) -> Vec<SubchannelView> {
    endpoints_with(n, || policy.new_stats())
}

/// As [`endpoints`], each endpoint's stats made by `new_stats`.
fn endpoints_with(n: usize, new_stats: impl Fn() -> EndpointStats) -> Vec<SubchannelView> {
    let mut x = SEED;
    let mut next = move || {
        // xorshift64: enough to vary the setup reproducibly.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let views: Vec<SubchannelView> = (0..n)
        .map(|i| {
            let addr =
                std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 50051));
            let stats = Arc::new(new_stats());
            for _ in 0..next() % 4 {
                let _ = stats.start();
            }
            stats.observe(
                Duration::from_micros(500 + next() % 5000),
                tokio::time::Instant::now(),
            );
            SubchannelView {
                endpoint: Endpoint::new(addr).with_weight(1 + (next() % 4) as u32),
                stats,
                state: ConnectivityState::Ready,
            }
        })
        .collect();
    // Calls completed since the endpoints' samples, as in a running channel: the balancer's
    // calls move the estimates' decay by calls (`EndpointStats::with_sample_window`), so
    // idle endpoints take the path that reads it. Latency ~0 on the last endpoint only.
    if let Some(last) = views.last() {
        for _ in 0..4 * n {
            last.stats.finish(last.stats.start(), true);
        }
    }
    views
}

/// Runs `per_call` `iters` times in all, split over [`THREADS`] threads started together;
/// records the wall time against `id` and returns it scaled to `iters` calls.
fn on_threads(id: &str, iters: u64, per_call: impl Fn(&PickRequest<'_>) + Sync) -> Duration {
    let per_thread = iters.div_ceil(THREADS as u64);
    let barrier = Barrier::new(THREADS + 1);
    let elapsed = std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let req = http::Request::new(());
                let pr = PickRequest::from_request(&req);
                barrier.wait();
                for _ in 0..per_thread {
                    per_call(&pr);
                }
            });
        }
        barrier.wait();
        // Leaving the scope joins every thread.
        Instant::now()
    })
    .elapsed();
    let total = per_thread * THREADS as u64;
    record(id, elapsed, total);
    elapsed.mul_f64(iters as f64 / total as f64)
}

fn bench_picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for policy in policies() {
        for n in PICK_SIZES {
            let subs = endpoints(&*policy, n);
            let picker = policy.build(&subs);
            let id = format!("pick/{}/{n}", policy.name());
            group.bench_function(BenchmarkId::new(policy.name(), n), |b| {
                let req = http::Request::new(());
                let pr = PickRequest::from_request(&req);
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(picker.pick(black_box(&pr)));
                    }
                    let elapsed = start.elapsed();
                    record(&id, elapsed, iters);
                    elapsed
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("pick8");
    for policy in policies() {
        for n in PICK_SIZES {
            let subs = endpoints(&*policy, n);
            let picker = policy.build(&subs);
            let id = format!("pick8/{}/{n}", policy.name());
            group.bench_function(BenchmarkId::new(policy.name(), n), |b| {
                // Each thread makes `iters / THREADS` picks; wall time covers all.
                b.iter_custom(|iters| {
                    on_threads(&id, iters, |pr| {
                        black_box(picker.pick(black_box(pr)));
                    })
                })
            });
        }
    }
    group.finish();
}

fn bench_builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for config in configs() {
        let policy = config.new_balancer();
        for n in BUILD_SIZES {
            let subs = endpoints(&*policy, n);
            let id = format!("build/{}/{n}", policy.name());
            group.bench_function(BenchmarkId::new(policy.name(), n), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        // A balancer of its own each time: a first build (ring_hash keeps
                        // its ring between builds of one balancer).
                        black_box(config.new_balancer().build(black_box(&subs)));
                    }
                    let elapsed = start.elapsed();
                    record(&id, elapsed, iters);
                    elapsed
                })
            });
        }
    }
    group.finish();
}

fn bench_versus_tower(c: &mut Criterion) {
    let mut group = c.benchmark_group("versus_tower");
    let waker = Waker::noop();
    for n in PICK_SIZES {
        // tower: Balance<ServiceList<Vec<PeakEwma<trivial>>>>, Finagle's defaults as
        // meshless's (30 ms starting RTT, τ = 10 s).
        let services: Vec<_> = (0..n)
            .map(|_| {
                tower::load::PeakEwma::new(
                    tower::service_fn(|()| std::future::ready(Ok::<(), Infallible>(()))),
                    Duration::from_millis(30),
                    Duration::from_secs(10).as_nanos() as f64,
                    tower::load::CompleteOnResponse::default(),
                )
            })
            .collect();
        let mut balance: tower::balance::p2c::Balance<_, ()> =
            tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
        let mut cx = Context::from_waker(waker);
        // Let it discover every service and see them ready.
        let mut ready = false;
        for _ in 0..n + 10 {
            if let Poll::Ready(Ok(())) = balance.poll_ready(&mut cx) {
                ready = true;
            }
        }
        assert!(ready, "tower Balance never became ready");
        let id = format!("tower_p2c/{n}");
        group.bench_function(BenchmarkId::new("tower_p2c", n), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    if let Poll::Ready(Ok(())) = balance.poll_ready(&mut cx) {
                        let mut fut = std::pin::pin!(balance.call(()));
                        black_box(fut.as_mut().poll(&mut cx).is_ready());
                    }
                }
                let elapsed = start.elapsed();
                record(&id, elapsed, iters);
                elapsed
            })
        });

        let policy = P2cEwmaConfig::default().new_balancer();
        let subs = endpoints(&*policy, n);
        let picker = policy.build(&subs);
        let id = format!("p2c_record/{n}");
        group.bench_function(BenchmarkId::new("p2c_record", n), |b| {
            let req = http::Request::new(());
            let pr = PickRequest::from_request(&req);
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    if let Pick::Ready(i) = picker.pick(black_box(&pr)) {
                        let stats = &subs[i].stats;
                        let call = stats.start();
                        stats.finish(call, true);
                    }
                }
                let elapsed = start.elapsed();
                record(&id, elapsed, iters);
                elapsed
            })
        });
    }
    group.finish();
}

/// 8 threads each doing p2c_ewma's per-call work (pick, `start`, `finish`) on one picker,
/// with the endpoints' stats sharing the balancer's `LoadClock` (as `new_stats` makes them:
/// every call writes its call counters) or each on a clock of its own (no line written by
/// every call). The difference is what the shared counters cost under contention.
fn bench_record_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("p2c_record8");
    let policy = P2cEwmaConfig::default().new_balancer();
    for (kind, shared) in [("shared", true), ("own", false)] {
        for n in PICK_SIZES {
            // The same setup either way; only whose clock the stats use differs.
            let subs = if shared {
                endpoints(&*policy, n)
            } else {
                endpoints_with(n, || EndpointStats::new(DEFAULT_DECAY, DEFAULT_RTT))
            };
            let picker = policy.build(&subs);
            let id = format!("p2c_record8/{kind}/{n}");
            group.bench_function(BenchmarkId::new(kind, n), |b| {
                b.iter_custom(|iters| {
                    on_threads(&id, iters, |pr| {
                        if let Pick::Ready(i) = picker.pick(black_box(pr)) {
                            let stats = &subs[i].stats;
                            let call = stats.start();
                            stats.finish(call, true);
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

fn fmt_ns(v: Option<f64>) -> String {
    match v {
        Some(ns) if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        Some(ns) if ns >= 1e4 => format!("{:.1} µs", ns / 1e3),
        Some(ns) => format!("{ns:.1} ns"),
        None => "-".to_owned(),
    }
}

fn print_table() {
    println!("\n## Pick cost (mean ns per pick; 8 threads: wall time / all picks)\n");
    print!("| policy |");
    for n in PICK_SIZES {
        print!(" {n} × 1 thread | {n} × 8 threads |");
    }
    println!("\n|---|{}", "---|---|".repeat(PICK_SIZES.len()));
    for policy in policies() {
        print!("| {} |", policy.name());
        for n in PICK_SIZES {
            print!(
                " {} | {} |",
                fmt_ns(mean_ns(&format!("pick/{}/{n}", policy.name()))),
                fmt_ns(mean_ns(&format!("pick8/{}/{n}", policy.name())))
            );
        }
        println!();
    }
    println!("\n## Picker build time\n");
    print!("| policy |");
    for n in BUILD_SIZES {
        print!(" {n} endpoints |");
    }
    println!("\n|---|{}", "---|".repeat(BUILD_SIZES.len()));
    for policy in policies() {
        print!("| {} |", policy.name());
        for n in BUILD_SIZES {
            print!(
                " {} |",
                fmt_ns(mean_ns(&format!("build/{}/{n}", policy.name())))
            );
        }
        println!();
    }
    println!("\n## meshless p2c_ewma vs tower p2c::Balance<PeakEwma> (one thread)\n");
    println!(
        "| endpoints | meshless pick | meshless pick + record | tower poll_ready + call + complete | tower / meshless pick | tower / meshless pick + record |"
    );
    println!("|---|---|---|---|---|---|");
    for n in PICK_SIZES {
        let pick = mean_ns(&format!("pick/p2c_ewma/{n}"));
        let rec = mean_ns(&format!("p2c_record/{n}"));
        let tower = mean_ns(&format!("tower_p2c/{n}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "-".to_owned(),
        };
        println!(
            "| {n} | {} | {} | {} | {} | {} |",
            fmt_ns(pick),
            fmt_ns(rec),
            fmt_ns(tower),
            ratio(tower, pick),
            ratio(tower, rec)
        );
    }
    println!("\n## p2c_ewma pick + record, 8 threads (wall time / all calls)\n");
    println!("| endpoints | stats sharing the balancer's clock | stats on clocks of their own |");
    println!("|---|---|---|");
    for n in PICK_SIZES {
        println!(
            "| {n} | {} | {} |",
            fmt_ns(mean_ns(&format!("p2c_record8/shared/{n}"))),
            fmt_ns(mean_ns(&format!("p2c_record8/own/{n}")))
        );
    }
}

/// Picks counted per policy and size by `--instructions`.
const PICKS: u64 = 100_000;

/// `--instructions`: instructions per pick, from callgrind, for every policy and size.
fn count_instructions() {
    let exe = std::env::current_exe().expect("own path");
    let dir = std::env::temp_dir().join(format!("meshless-pick-instr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("instructions per pick (callgrind, {PICKS} picks after 1,000 warm-up picks)");
    print!("| policy |");
    for n in PICK_SIZES {
        print!(" {n} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(PICK_SIZES.len()));
    for policy in policies() {
        print!("| {} |", policy.name());
        for n in PICK_SIZES {
            let out = dir.join(format!("{}-{n}.out", policy.name()));
            let args = ["--pick-child", policy.name(), &n.to_string()];
            let Some(total) = meshless_integration::callgrind::count(
                &exe,
                "meshless_measured_picks",
                &args,
                &out,
            ) else {
                return;
            };
            print!(" {:.1} |", total as f64 / PICKS as f64);
        }
        println!();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The child of `--instructions`: `PICKS` picks of one policy over `n` endpoints.
fn pick_child(name: &str, n: usize) {
    let policy = policies()
        .into_iter()
        .find(|p| p.name() == name)
        .expect("a known policy");
    let subs = endpoints(&*policy, n);
    let picker = policy.build(&subs);
    let req = http::Request::new(());
    let pr = PickRequest::from_request(&req);
    for _ in 0..1_000 {
        black_box(picker.pick(black_box(&pr)));
    }
    meshless_measured_picks(&mut || {
        for _ in 0..PICKS {
            black_box(picker.pick(black_box(&pr)));
        }
    });
}

/// The function callgrind counts inside (`--toggle-collect`): everything `work` does.
#[unsafe(no_mangle)]
#[inline(never)]
fn meshless_measured_picks(work: &mut dyn FnMut()) {
    work();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--pick-child") {
        let name = args.get(i + 1).expect("--pick-child POLICY N");
        let n = args.get(i + 2).and_then(|n| n.parse().ok()).expect("N");
        pick_child(name, n);
        return;
    }
    if args.iter().any(|a| a == "--instructions") {
        count_instructions();
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_picks(&mut c);
    bench_builds(&mut c);
    bench_versus_tower(&mut c);
    bench_record_contended(&mut c);
    c.final_summary();
    print_table();
}
