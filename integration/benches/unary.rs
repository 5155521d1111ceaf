//! Unary RPC throughput to one loopback server: plain tonic `Channel` against a
//! `meshless::Channel` with one endpoint, measured in the same run; then the same over TLS
//! (tonic's own TLS `Channel` against a meshless channel with `.tls(..)`).
//!
//! ```text
//! cargo bench -p meshless-integration --bench unary
//! ```
//!
//! Criterion times batches of calls for each channel; then an A/B loop alternates the two
//! channels for several rounds and prints the median ratio, which is what the README quotes:
//! alternating rounds cancels most of the drift of a shared, noisy machine.

use meshless_integration::load::Transport;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshless::transport::TlsConfig;
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::TestServer;
use meshless_integration::tls::{ServerTls, TestCa};
use tokio::runtime::Runtime;

/// Calls in flight at once in every measurement.
const CONCURRENCY: usize = 16;
/// Calls per criterion iteration.
const BATCH: u64 = 256;
/// Rounds of the A/B comparison, and calls per channel per round.
const AB_ROUNDS: usize = 9;
const AB_CALLS: u64 = 4000;
/// The metrics comparison's rounds and calls per round.
const METRICS_AB_ROUNDS: usize = 15;
const METRICS_AB_CALLS: u64 = 20_000;

type Client<T> = GreeterClient<T>;

async fn batch<T>(client: &Client<T>, calls: u64)
where
    T: Transport,
{
    let per_task = calls.div_ceil(CONCURRENCY as u64);
    let mut tasks = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                c.say_hello(HelloRequest::default())
                    .await
                    .expect("bench call failed");
            }
        }));
    }
    for t in tasks {
        t.await.expect("bench task panicked");
    }
}

async fn ready(mesh: &meshless::Channel) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh.status().ready_count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(mesh.status().ready_count(), 1, "{:?}", mesh.status());
}

/// The two channels of one comparison.
struct Pair {
    plain: Client<tonic::transport::Channel>,
    mesh: Client<meshless::Channel>,
}

fn plaintext_pair(rt: &Runtime, server: &meshless_integration::server::ServerHandle) -> Pair {
    rt.block_on(async {
        let plain = tonic::transport::Channel::from_shared(server.uri())
            .expect("uri")
            .connect()
            .await
            .expect("tonic connect");
        let mesh = meshless::Channel::builder(format!("static:///{}", server.addr()))
            .build()
            .expect("meshless channel");
        ready(&mesh).await;
        Pair {
            plain: GreeterClient::new(plain),
            mesh: GreeterClient::new(mesh),
        }
    })
}

fn tls_pair(
    rt: &Runtime,
    ca: &TestCa,
    server: &meshless_integration::server::ServerHandle,
) -> Pair {
    use tonic::transport::{Certificate, ClientTlsConfig};
    rt.block_on(async {
        let plain = tonic::transport::Channel::from_shared(format!(
            "https://127.0.0.1:{}",
            server.addr().port()
        ))
        .expect("uri")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.cert_pem()))
                .domain_name("127.0.0.1"),
        )
        .expect("tonic tls config")
        .connect()
        .await
        .expect("tonic tls connect");
        let mesh = meshless::Channel::builder(format!("static:///{}", server.addr()))
            .tls(TlsConfig::new().ca_pem(ca.cert_pem()))
            .build()
            .expect("meshless channel");
        ready(&mesh).await;
        Pair {
            plain: GreeterClient::new(plain),
            mesh: GreeterClient::new(mesh),
        }
    })
}

fn criterion_group_for(c: &mut Criterion, rt: &Runtime, group: &str, pair: &Pair) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(BATCH));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("tonic_channel", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(batch(&pair.plain, iters * BATCH));
            start.elapsed()
        })
    });
    group.bench_function("meshless_channel", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(batch(&pair.mesh, iters * BATCH));
            start.elapsed()
        })
    });
    group.finish();
}

/// A/B: alternate the channels, round after round, in the same process; prints the medians.
fn ab(rt: &Runtime, title: &str, pair: &Pair) {
    ab_of(
        rt,
        title,
        ("tonic Channel", &pair.plain),
        ("meshless Channel", &pair.mesh),
    );
}

/// A/B of any two clients: `b / a` is the figure.
fn ab_of<A, B>(rt: &Runtime, title: &str, a: (&str, &Client<A>), b: (&str, &Client<B>))
where
    A: Transport,
    B: Transport,
{
    ab_sized(rt, title, a, b, AB_ROUNDS, AB_CALLS);
}

/// [`ab_of`] with `rounds` alternating rounds of `calls` calls each.
fn ab_sized<A, B>(
    rt: &Runtime,
    title: &str,
    a: (&str, &Client<A>),
    b: (&str, &Client<B>),
    rounds: usize,
    calls: u64,
) where
    A: Transport,
    B: Transport,
{
    let mut ratios = Vec::with_capacity(rounds);
    let (mut a_rps, mut b_rps) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let time = |f: &dyn Fn()| {
            let start = Instant::now();
            f();
            calls as f64 / start.elapsed().as_secs_f64()
        };
        // Swap the order every round so neither always runs second.
        let (x, y) = if round % 2 == 0 {
            let x = time(&|| rt.block_on(batch(a.1, calls)));
            let y = time(&|| rt.block_on(batch(b.1, calls)));
            (x, y)
        } else {
            let y = time(&|| rt.block_on(batch(b.1, calls)));
            let x = time(&|| rt.block_on(batch(a.1, calls)));
            (x, y)
        };
        a_rps.push(x);
        b_rps.push(y);
        ratios.push(y / x);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (min, max) = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!();
    println!(
        "{title}, 1 loopback server, concurrency {CONCURRENCY}, {rounds} alternating rounds of {calls} calls"
    );
    println!("  channel                        median rps");
    println!("  {:<28} {:>10.0}", a.0, median(&mut a_rps));
    println!("  {:<28} {:>10.0}", b.0, median(&mut b_rps));
    println!(
        "  {:<28} {:>10.3}  (median of per-round ratios; min {min:.3}, max {max:.3})",
        "second / first",
        median(&mut ratios)
    );
}

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = TestServer::new("bench").spawn().expect("server");
    let ca = TestCa::new("bench-ca");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let tls_server = TestServer::new("bench-tls")
        .tls(ServerTls::new(cert, key))
        .spawn()
        .expect("tls server");

    let plain = plaintext_pair(&rt, &server);
    let tls = tls_pair(&rt, &ca, &tls_server);
    criterion_group_for(c, &rt, "unary_rpc", &plain);
    criterion_group_for(c, &rt, "unary_rpc_tls", &tls);
    ab(&rt, "unary RPC throughput (h2c)", &plain);
    ab(
        &rt,
        "unary RPC throughput over TLS (rustls/ring both)",
        &tls,
    );

    // The cost of metrics: a channel recording gRPC's instruments into a Prometheus
    // recorder against the same channel without metrics, in the same run.
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    // Both channels are made now, side by side, each with a connection of its own: a channel
    // made earlier and already used (`plain.mesh`) runs a few per cent faster than a new one
    // in this bench whatever it records, which would count against metrics.
    let (without_metrics, with_metrics) = rt.block_on(async {
        let builder = || meshless::Channel::builder(format!("static:///{}", server.addr()));
        let off = builder().build().expect("meshless channel");
        let on = builder()
            .metrics(
                meshless::transport::MetricsConfig::new()
                    .method("greeter.v1.Greeter/SayHello")
                    .target("bench"),
            )
            .build()
            .expect("meshless channel");
        ready(&off).await;
        ready(&on).await;
        (GreeterClient::new(off), GreeterClient::new(on))
    });
    // Longer rounds than the other comparisons: the cost being measured (a few per cent) is
    // below what 9 short rounds resolve.
    ab_sized(
        &rt,
        "unary RPC throughput, metrics on (Prometheus recorder) against off",
        ("meshless, metrics off", &without_metrics),
        ("meshless, metrics on", &with_metrics),
        METRICS_AB_ROUNDS,
        METRICS_AB_CALLS,
    );
    println!();
    println!("a Prometheus scrape of the metrics-on channel (excerpt):");
    for line in handle
        .render()
        .lines()
        .filter(|l| l.contains("grpc_client_attempt") && !l.contains("_bucket"))
        .take(8)
    {
        println!("  {line}");
    }
}

criterion_group!(benches, unary);
criterion_main!(benches);
