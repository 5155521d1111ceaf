//! Outlier detection end to end: real servers, one of which fails every call, leave the
//! picker while their connections stay up; the detector's timing is tested on a paused clock
//! in `transport/src/outlier.rs`.

mod common;

use std::time::Duration;

use common::*;
use meshless::{Channel, OutlierDetection};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};
use tonic::Code;

fn fleet(good: usize) -> (ServerHandle, Vec<ServerHandle>) {
    let bad = TestServer::new("bad")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let good = (0..good)
        .map(|i| TestServer::new(format!("good{i}")).spawn().unwrap())
        .collect();
    (bad, good)
}

fn target(bad: &ServerHandle, good: &[ServerHandle]) -> String {
    let mut all = vec![bad.addr().to_string()];
    all.extend(good.iter().map(|s| s.addr().to_string()));
    format!("static:///{}", all.join(","))
}

/// Sends calls until `bad` is ejected; then no call reaches it, and its connection stays.
async fn ejects(channel: &Channel, bad: &ServerHandle) {
    let mut client = GreeterClient::new(channel.clone());
    let addr = meshless::Address::Tcp(bad.addr());
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let _ = hello(&mut client).await;
        let st = channel.status();
        if st.endpoint(&addr).is_some_and(|e| e.ejected) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ejected: {st:?}"
        );
    }
    let before = bad.calls();
    for i in 0..300 {
        hello(&mut client)
            .await
            .unwrap_or_else(|e| panic!("call {i} after the ejection: {e}"));
    }
    assert_eq!(bad.calls(), before, "an ejected endpoint gets no calls");
    let row = channel.status().endpoint(&addr).cloned().unwrap();
    assert_eq!(
        row.state,
        meshless::ConnectivityState::Ready,
        "its connection stays: {row:?}"
    );
    assert!(row.ejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_among_six_is_ejected_by_its_rates() {
    let (bad, good) = fleet(5);
    let channel = Channel::builder(target(&bad, &good))
        .policy("round_robin")
        .outlier_detection(
            OutlierDetection::default()
                .interval(Duration::from_millis(300))
                // 20 % of 6 allows one ejection, as 10 % does (at least one may always go).
                .consecutive_failures(None),
        )
        .build()
        .unwrap();
    wait_ready(&channel, 6).await;
    ejects(&channel, &bad).await;
}

/// Three endpoints are too few for A50's algorithms (5 hosts), but five failures in a row
/// still eject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_protect_a_small_set() {
    let (bad, good) = fleet(2);
    let channel = Channel::builder(target(&bad, &good))
        .policy("round_robin")
        .outlier_detection(OutlierDetection::default().interval(Duration::from_millis(300)))
        .build()
        .unwrap();
    wait_ready(&channel, 3).await;
    ejects(&channel, &bad).await;
}

/// The last ready endpoint is never ejected: a set whose only endpoint fails keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_ready_endpoint_stays() {
    let (bad, _) = fleet(0);
    let channel = Channel::builder(target(&bad, &[]))
        .outlier_detection(OutlierDetection::default().interval(Duration::from_millis(50)))
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..50 {
        let err = hello(&mut client).await.unwrap_err();
        assert!(err.message().contains("configured to fail"), "{err}");
    }
    // Consecutive failures are checked every 50 ms here: long past due.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = channel.status();
    assert!(!st.endpoints[0].ejected, "{st:?}");
    let err = hello(&mut client).await.unwrap_err();
    assert!(
        err.message().contains("configured to fail"),
        "still served: {err}"
    );
}
