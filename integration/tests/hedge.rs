//! gRPC A6 hedging through `HedgeLayer` above a real channel and real tonic servers:
//! distinct endpoints, cancelled losers, the budget bound, fatal and non-fatal failures, and
//! the adaptive (p95) delay.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use meshless::Channel;
use meshless::middleware::{Hedge, HedgeDelay, HedgeLayer, HedgingPolicy};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};
use tonic::{Code, Status};

type Client = GreeterClient<Hedge<Channel>>;

fn client(channel: &Channel, layer: &HedgeLayer) -> Client {
    GreeterClient::new(tower::Layer::layer(layer, channel.clone()))
}

async fn say(c: &mut Client) -> Result<String, Status> {
    c.say_hello(HelloRequest::default())
        .await
        .map(|r| r.into_inner().server)
}

async fn channel_over(servers: &[ServerHandle], policy: &str) -> Channel {
    let channel = Channel::builder(static_target(servers))
        .policy(policy)
        .build()
        .unwrap();
    wait_ready(&channel, servers.len()).await;
    channel
}

fn fixed(attempts: u32, delay_ms: u64, non_fatal: &[Code]) -> HedgeLayer {
    HedgeLayer::new(
        HedgingPolicy::new(
            attempts,
            HedgeDelay::Fixed(Duration::from_millis(delay_ms)),
            non_fatal.iter().copied(),
        )
        .unwrap(),
    )
}

/// Every call outlasts the hedging delay, so each sends all three attempts: to three
/// different endpoints, whatever the random policy picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_go_to_distinct_endpoints() {
    let servers: Vec<_> = (0..3)
        .map(|i| {
            TestServer::new(format!("s{i}"))
                .latency(Duration::from_millis(150))
                .spawn()
                .unwrap()
        })
        .collect();
    let channel = channel_over(&servers, "random").await;
    let mut c = client(&channel, &fixed(3, 10, &[]));
    const CALLS: u64 = 10;
    for i in 0..CALLS {
        say(&mut c).await.unwrap();
        wait_until("every attempt arrived", || {
            servers.iter().map(|s| s.calls()).sum::<u64>() == 3 * (i + 1)
        })
        .await;
        for s in &servers {
            assert_eq!(
                s.calls(),
                i + 1,
                "{}: each call once per endpoint",
                s.name()
            );
        }
    }
}

/// The first answer wins and the slower attempt is cancelled at its server: the server's
/// handler is dropped (RST_STREAM CANCEL) before it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loser_is_cancelled_at_the_server() {
    let first = Arc::new(AtomicBool::new(true));
    let cancelled = Arc::new(AtomicU64::new(0));
    struct Guard(Arc<AtomicU64>, bool);
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let server = |name: &str| {
        let (first, cancelled) = (first.clone(), cancelled.clone());
        TestServer::new(name)
            .on_call(move |_| {
                let slow = first.swap(false, Ordering::SeqCst);
                let cancelled = cancelled.clone();
                async move {
                    // Dropped unfinished when the server cancels the handler.
                    let mut guard = Guard(cancelled, false);
                    if slow {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    guard.1 = true;
                    Ok(())
                }
            })
            .spawn()
            .unwrap()
    };
    let servers = vec![server("a"), server("b")];
    let channel = channel_over(&servers, "round_robin").await;
    let mut c = client(&channel, &fixed(2, 50, &[]));
    let start = tokio::time::Instant::now();
    say(&mut c).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the hedge answered first"
    );
    wait_until("the slow attempt is cancelled at its server", || {
        cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(servers.iter().map(|s| s.in_flight()).sum::<u64>(), 0);
}

/// A fatal status ends the call at once; a non-fatal one sends the next hedge at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_ends_the_call_and_non_fatal_hedges_at_once() {
    let bad = TestServer::new("bad")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let good = TestServer::new("good").spawn().unwrap();
    let servers = vec![bad, good];
    let channel = channel_over(&servers, "round_robin").await;
    // UNAVAILABLE is non-fatal: the hedge goes out at once (not after 10 s) and wins.
    let mut c = client(&channel, &fixed(2, 10_000, &[Code::Unavailable]));
    for _ in 0..4 {
        assert_eq!(say(&mut c).await.unwrap(), "good");
    }
    // Fatal (no non-fatal codes): a call whose first attempt fails gets that failure.
    let mut c = client(&channel, &fixed(2, 10_000, &[]));
    let mut failed = 0;
    for _ in 0..4 {
        if let Err(e) = say(&mut c).await {
            assert_eq!(e.code(), Code::Unavailable);
            failed += 1;
        }
    }
    assert_eq!(
        failed, 2,
        "round robin sends every other call to the bad endpoint first"
    );
}

/// Hedges draw on the retry budget: calls that all outlast the delay send about 1.2
/// attempts each (plus the reserve), not `maxAttempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_load_stays_within_the_budget() {
    let servers: Vec<_> = (0..3)
        .map(|i| {
            TestServer::new(format!("s{i}"))
                .latency(Duration::from_millis(20))
                .spawn()
                .unwrap()
        })
        .collect();
    let channel = channel_over(&servers, "round_robin").await;
    let layer = fixed(3, 1, &[]);
    const CALLS: u64 = 400;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client(&channel, &layer);
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS / 8 {
                say(&mut c).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("every attempt arrived", || {
        servers.iter().map(|s| s.in_flight()).sum::<u64>() == 0
    })
    .await;
    let attempts: u64 = servers.iter().map(|s| s.calls()).sum();
    assert!(
        attempts <= CALLS + CALLS / 5 + 100 + 8,
        "{attempts} attempts for {CALLS} calls"
    );
    assert!(
        attempts > CALLS + CALLS / 10,
        "hedges were sent: {attempts}"
    );
}

/// The adaptive delay is the p95 of recent calls: with latencies uniform in [0, 40 ms) it
/// settles near 38 ms, and only the slowest calls are hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_delay_follows_the_p95() {
    let servers: Vec<_> = (0..2)
        .map(|i| {
            TestServer::new(format!("s{i}"))
                .uniform_latency(Duration::from_millis(40), 7 + i)
                .spawn()
                .unwrap()
        })
        .collect();
    let channel = channel_over(&servers, "round_robin").await;
    let layer = HedgeLayer::new(
        HedgingPolicy::new(2, HedgeDelay::p95(Duration::from_secs(5)), []).unwrap(),
    );
    assert_eq!(
        layer.current_delay(),
        Duration::from_secs(5),
        "the fallback first"
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client(&channel, &layer);
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                say(&mut c).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let d = layer.current_delay();
    // The server alone takes up to 40 ms; 38 ms is the p95 of that; the client's own time
    // on a loaded machine can add to it, hence the wide upper bound.
    assert!(
        d >= Duration::from_millis(36) && d <= Duration::from_millis(250),
        "{d:?}"
    );
    let attempts: u64 = servers.iter().map(|s| s.calls()).sum();
    assert!(attempts < 320 + 320 / 5, "{attempts}");
}
