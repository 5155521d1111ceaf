//! Helpers shared by the end-to-end tests (included with `mod common;`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshless::discovery::{Endpoint, ManualDiscovery, ManualHandle};
use meshless::{BackoffConfig, Channel};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::ServerHandle;

/// Upper bound for any "wait until" loop in these tests.
pub const WAIT_BOUND: Duration = Duration::from_secs(10);

/// Starts `n` greeter servers named s0..s{n-1}.
pub fn servers(n: usize) -> Vec<ServerHandle> {
    meshless_integration::server::spawn_servers(n)
}

/// A `static:///` target for these servers.
pub fn static_target(servers: &[ServerHandle]) -> String {
    let list: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// Endpoints for these servers.
pub fn endpoints(servers: &[ServerHandle]) -> Vec<Endpoint> {
    servers.iter().map(|s| Endpoint::new(s.addr())).collect()
}

/// Fast reconnects, so tests about recovery do not wait for gRPC's 1 s base.
pub fn fast_backoff() -> BackoffConfig {
    BackoffConfig::default()
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200))
}

/// A channel over a manual discovery with `policy`.
pub fn manual_channel(policy: &str) -> (Channel, ManualHandle) {
    let (discovery, handle) = ManualDiscovery::new();
    let channel = Channel::with_discovery("manual-test", Arc::new(discovery))
        .policy(policy)
        .backoff(fast_backoff())
        .build()
        .expect("build channel");
    (channel, handle)
}

/// Waits until `n` endpoints of the channel are ready.
pub async fn wait_ready(channel: &Channel, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while channel.status().ready_count() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} endpoints ready: {:?}",
            channel.status().ready_count(),
            channel.status()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `cond` holds, polling every millisecond, up to [`WAIT_BOUND`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One unary call; the name of the server that answered.
pub async fn hello(client: &mut GreeterClient<Channel>) -> Result<String, tonic::Status> {
    let req = HelloRequest {
        name: "test".into(),
        ..Default::default()
    };
    client.say_hello(req).await.map(|r| r.into_inner().server)
}

/// An address nothing listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Runs unary calls on `n` tasks until stopped; counts failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Load {
    /// Starts `n` tasks that send unary calls until [`finish`](Self::finish).
    pub fn start(channel: &Channel, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..n)
            .map(|_| {
                let mut client = GreeterClient::new(channel.clone());
                let (stop, failures, calls, errors) = (
                    stop.clone(),
                    failures.clone(),
                    calls.clone(),
                    errors.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        calls.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = hello(&mut client).await {
                            failures.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(e.to_string());
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            failures,
            calls,
            tasks,
            errors,
        }
    }

    /// Stops the calls; returns (calls, failures, failure messages).
    pub async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.calls.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Waits until the channel's discovery error contains every one of `needle`; returns it.
pub async fn wait_error(channel: &Channel, what: &str, needle: &[&str]) -> String {
    let mut last = None;
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let e = channel.status().discovery_error;
        if let Some(e) = &e
            && needle.iter().all(|n| e.contains(n))
        {
            return e.clone();
        }
        last = e.or(last);
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last discovery error: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw HTTP/2 server that refuses every stream with `REFUSED_STREAM`, as an overloaded or
/// draining server does; returns its address and how many streams it refused.
#[allow(dead_code)]
pub async fn refusing_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, refused)
}
