//! gRPC's standard instruments (A66, A94, A91) with the `metrics` crate's debugging
//! recorder: exact names, units, attributes and counts, against real servers. One test,
//! because a process has one global recorder.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use meshless::transport::metrics::{self as m, MetricsConfig};
use meshless::{Channel, OutlierDetection};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::greeter::{HelloReply, HelloRequest};
use meshless_integration::server::TestServer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use prost::Message;
use tonic::Code;

/// Name and sorted `key=value` labels.
type Series = (String, String);

/// Everything recorded so far. The debugging recorder's snapshots drain what they report
/// (counters and gauges as changes since the last snapshot, histograms as new samples), so
/// each snapshot is added to the running totals here.
#[derive(Default)]
struct Totals {
    /// The unit each instrument was described with.
    units: BTreeMap<String, metrics::Unit>,
    counters: BTreeMap<Series, u64>,
    gauges: BTreeMap<Series, f64>,
    histograms: BTreeMap<Series, Vec<f64>>,
}

impl Totals {
    fn update(&mut self, s: &Snapshotter) -> &Self {
        for (key, unit, _desc, value) in s.snapshot().into_vec() {
            let key = key.key();
            if let Some(u) = unit {
                self.units.insert(key.name().to_owned(), u);
            }
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let series = (key.name().to_owned(), labels.join(","));
            match value {
                DebugValue::Counter(n) => *self.counters.entry(series).or_default() += n,
                DebugValue::Gauge(g) => *self.gauges.entry(series).or_default() += g.into_inner(),
                DebugValue::Histogram(h) => self
                    .histograms
                    .entry(series)
                    .or_default()
                    .extend(h.into_iter().map(|x| x.into_inner())),
            }
        }
        self
    }

    fn counter(&self, name: &str, labels: &str) -> u64 {
        *self
            .counters
            .get(&(name.to_owned(), labels.to_owned()))
            .unwrap_or_else(|| panic!("{name}{{{labels}}}; have: {:?}", self.counters.keys()))
    }

    fn gauge(&self, name: &str, labels: &str) -> f64 {
        *self
            .gauges
            .get(&(name.to_owned(), labels.to_owned()))
            .unwrap_or_else(|| panic!("{name}{{{labels}}}; have: {:?}", self.gauges.keys()))
    }

    fn histogram(&self, name: &str, labels: &str) -> &[f64] {
        self.histograms
            .get(&(name.to_owned(), labels.to_owned()))
            .unwrap_or_else(|| panic!("{name}{{{labels}}}; have: {:?}", self.histograms.keys()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_instruments_have_the_grfc_names_attributes_and_counts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");

    // A66: successful and failed calls, a registered method and an unregistered one.
    let ok = TestServer::new("ok").spawn().unwrap();
    let bad = TestServer::new("bad")
        .fail_with(Code::Unavailable)
        .spawn()
        .unwrap();
    let target = format!("static:///{},{}", ok.addr(), bad.addr());
    let channel = Channel::builder(target.clone())
        .policy("round_robin")
        .metrics(
            MetricsConfig::new()
                .method("greeter.v1.Greeter/SayHello")
                .target("greeter"),
        )
        .build()
        .unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    let (mut oks, mut fails) = (0, 0);
    for _ in 0..10 {
        match hello(&mut client).await {
            Ok(_) => oks += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                fails += 1;
            }
        }
    }
    assert_eq!((oks, fails), (5, 5), "round robin alternates");
    let req = HelloRequest {
        name: "s".into(),
        count: 0,
        interval_ms: 0,
    };
    let mut stream = client.stream_replies(req).await.map(|r| r.into_inner());
    if let Ok(s) = &mut stream {
        use futures_util::StreamExt;
        while s.next().await.is_some() {}
    }
    let mut totals = Totals::default();
    let v = totals.update(&snapshotter);
    let say = "grpc.method=greeter.v1.Greeter/SayHello,grpc.target=greeter";
    let ended = |status: &str| {
        format!("grpc.method=greeter.v1.Greeter/SayHello,grpc.status={status},grpc.target=greeter")
    };
    assert_eq!(v.counter(m::ATTEMPT_STARTED, say), 10);
    assert_eq!(v.histogram(m::ATTEMPT_DURATION, &ended("OK")).len(), 5);
    assert_eq!(
        v.histogram(m::ATTEMPT_DURATION, &ended("UNAVAILABLE"))
            .len(),
        5
    );
    assert_eq!(v.histogram(m::ATTEMPT_SENT_SIZE, &ended("OK")).len(), 5);
    assert_eq!(v.histogram(m::ATTEMPT_RCVD_SIZE, &ended("OK")).len(), 5);
    // A66's call duration: one per call, with the status the application got; here (no
    // layer above) each call was one attempt, so a call lasted at least its attempt.
    let calls_ok = v.histogram(m::CALL_DURATION, &ended("OK"));
    assert_eq!(calls_ok.len(), 5);
    assert_eq!(
        v.histogram(m::CALL_DURATION, &ended("UNAVAILABLE")).len(),
        5
    );
    let mut attempts_ok = v.histogram(m::ATTEMPT_DURATION, &ended("OK")).to_vec();
    let mut calls_sorted = calls_ok.to_vec();
    attempts_ok.sort_by(f64::total_cmp);
    calls_sorted.sort_by(f64::total_cmp);
    assert!(
        calls_sorted.iter().zip(&attempts_ok).all(|(c, a)| c >= a),
        "calls {calls_sorted:?} attempts {attempts_ok:?}"
    );
    // meshless's per-endpoint duration: every attempt, by the endpoint that served it,
    // each as long as A66's attempt duration says.
    let mut by_endpoint: Vec<f64> = v
        .histograms
        .iter()
        .filter(|((name, _), _)| name == m::ENDPOINT_DURATION)
        .flat_map(|(_, samples)| samples.iter().copied())
        .collect();
    let mut all_attempts: Vec<f64> = v
        .histograms
        .iter()
        .filter(|((name, _), _)| name == m::ATTEMPT_DURATION)
        .flat_map(|(_, samples)| samples.iter().copied())
        .collect();
    by_endpoint.sort_by(f64::total_cmp);
    all_attempts.sort_by(f64::total_cmp);
    assert_eq!(by_endpoint, all_attempts);
    assert!(
        v.histograms
            .keys()
            .any(|(name, labels)| name == m::ENDPOINT_DURATION
                && labels.contains("endpoint=")
                && labels.contains("grpc.target=greeter"))
    );
    // The units of A66: seconds and bytes.
    for (name, unit) in [
        (m::CALL_DURATION, metrics::Unit::Seconds),
        (m::ATTEMPT_DURATION, metrics::Unit::Seconds),
        (m::ATTEMPT_SENT_SIZE, metrics::Unit::Bytes),
        (m::ATTEMPT_RCVD_SIZE, metrics::Unit::Bytes),
    ] {
        assert_eq!(v.units.get(name), Some(&unit), "{name}");
    }
    // The unregistered method is `other`.
    assert_eq!(
        v.counter(m::ATTEMPT_STARTED, "grpc.method=other,grpc.target=greeter"),
        1
    );
    // A94: two connections opened.
    assert_eq!(
        v.counter(m::CONNECTION_ATTEMPTS_SUCCEEDED, "grpc.target=greeter"),
        2
    );
    assert_eq!(v.gauge(m::OPEN_CONNECTIONS, "grpc.target=greeter"), 2.0);
    // A66's sizes are the messages' own bytes, without gRPC's 5-byte message prefix.
    let request = HelloRequest {
        name: "test".into(),
        ..Default::default()
    };
    let reply = HelloReply {
        message: "Hello test".into(),
        server: "ok".into(),
    };
    let rcvd = v.histogram(m::ATTEMPT_RCVD_SIZE, &ended("OK"));
    assert!(
        rcvd.iter().all(|&b| b == reply.encoded_len() as f64),
        "{rcvd:?}, the reply is {} bytes",
        reply.encoded_len()
    );
    let sent = v.histogram(m::ATTEMPT_SENT_SIZE, &ended("OK"));
    assert!(
        sent.iter().all(|&b| b == request.encoded_len() as f64),
        "{sent:?}, the request is {} bytes",
        request.encoded_len()
    );

    // A client-streaming call: every message it sent counts, also those produced after the
    // call started.
    let one = HelloRequest {
        name: "n".into(),
        ..Default::default()
    };
    let messages = futures_util::stream::unfold(0, {
        let one = one.clone();
        move |i| {
            let one = one.clone();
            async move {
                if i == 3 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((one, i + 1))
            }
        }
    });
    let only_ok = Channel::builder(format!("static:///{}", ok.addr()))
        .metrics(
            MetricsConfig::new()
                .method("greeter.v1.Greeter/CollectHellos")
                .target("collect"),
        )
        .build()
        .unwrap();
    let collected = GreeterClient::new(only_ok)
        .collect_hellos(messages)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collected.message, "3");
    let v = totals.update(&snapshotter);
    let collect = "grpc.method=greeter.v1.Greeter/CollectHellos,grpc.status=OK,grpc.target=collect";
    assert_eq!(
        v.histogram(m::ATTEMPT_SENT_SIZE, collect),
        [3.0 * one.encoded_len() as f64]
    );

    // meshless's own: discovery updates, picker rebuilds, and the sampled gauges.
    assert!(v.counter(m::DISCOVERY_UPDATES, "grpc.target=greeter") >= 1);
    assert!(v.counter(m::PICKER_REBUILDS, "grpc.target=greeter") >= 1);
    let gauge_of_ok = format!("endpoint={},grpc.target=greeter", ok.addr());
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while !totals
        .update(&snapshotter)
        .gauges
        .contains_key(&(m::ENDPOINT_IN_FLIGHT.to_owned(), gauge_of_ok.clone()))
    {
        assert!(tokio::time::Instant::now() < deadline, "no sampled gauge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        totals
            .gauges
            .contains_key(&(m::ENDPOINT_COST.to_owned(), gauge_of_ok.clone()))
    );
    assert!(totals.gauges.contains_key(&(
        m::DISCOVERY_STALENESS.to_owned(),
        "grpc.target=greeter".to_owned()
    )));
    // The sampled per-endpoint counts (the calls above, at a sample after them), state
    // (one series per state name) and ejection.
    while totals
        .update(&snapshotter)
        .counters
        .get(&(m::ENDPOINT_SUCCESSES.to_owned(), gauge_of_ok.clone()))
        .is_none_or(|&n| n == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sampled success count: {:?}",
            totals.counters.keys()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        totals
            .counters
            .contains_key(&(m::ENDPOINT_FAILURES.to_owned(), gauge_of_ok.clone()))
    );
    for state in m::STATES {
        let series = (
            m::ENDPOINT_STATE.to_owned(),
            format!("endpoint={},grpc.target=greeter,state={state}", ok.addr()),
        );
        assert!(totals.gauges.contains_key(&series), "{series:?}");
    }
    assert!(
        totals
            .gauges
            .contains_key(&(m::ENDPOINT_EJECTED.to_owned(), gauge_of_ok.clone()))
    );

    // A96: retries per call, through the channel's own recorder.
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flaky = TestServer::new("flaky")
        .on_call(move |_| {
            let n = n.clone();
            async move {
                if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    .is_multiple_of(2)
                {
                    return Err(tonic::Status::unavailable("every other attempt"));
                }
                Ok(())
            }
        })
        .spawn()
        .unwrap();
    let retrying = Channel::builder(static_target(std::slice::from_ref(&flaky)))
        .metrics(
            MetricsConfig::new()
                .method("greeter.v1.Greeter/SayHello")
                .target("retrying"),
        )
        .build()
        .unwrap();
    wait_ready(&retrying, 1).await;
    let retry = meshless::RetryPolicy::default()
        .backoff(Duration::from_millis(2), Duration::from_millis(4), 2.0)
        .unwrap();
    let stack = meshless::middleware::Resilience::new()
        .default_policy(meshless::middleware::MethodPolicy::new().retry(retry))
        .metrics(retrying.metrics().expect("built with metrics"));
    let mut rc = GreeterClient::new(tower::Layer::layer(&stack, retrying.clone()));
    for _ in 0..3 {
        rc.say_hello(HelloRequest::default()).await.unwrap();
    }
    let v = totals.update(&snapshotter);
    let per_call = "grpc.method=greeter.v1.Greeter/SayHello,grpc.target=retrying";
    assert_eq!(v.histogram(m::CALL_RETRIES, per_call), [1.0, 1.0, 1.0]);
    // One call duration per call, OK, over both attempts (the stack records it, the
    // channel below only the attempts).
    let retried = |status: &str| {
        format!("grpc.method=greeter.v1.Greeter/SayHello,grpc.status={status},grpc.target=retrying")
    };
    let durations = v.histogram(m::CALL_DURATION, &retried("OK"));
    assert_eq!(durations.len(), 3, "{durations:?}");
    assert!(
        durations.iter().all(|&d| d >= 0.0016),
        "each call includes its retry's backoff: {durations:?}"
    );
    assert!(
        !v.histograms
            .contains_key(&(m::CALL_DURATION.to_owned(), retried("UNAVAILABLE"))),
        "failed attempts are not calls"
    );
    assert_eq!(
        v.histogram(m::ATTEMPT_DURATION, &retried("UNAVAILABLE"))
            .len(),
        3
    );
    let delays = v.histogram(m::CALL_RETRY_DELAY, per_call);
    assert!(
        delays.len() == 3 && delays.iter().all(|&d| d >= 0.0016),
        "{delays:?}"
    );

    // A96's transparent retries: a stream refused before processing goes to the other
    // endpoint; the call counts one transparent retry, and ends OK.
    let (refusing, _) = refusing_server().await;
    let good = TestServer::new("good").spawn().unwrap();
    let transparent = Channel::builder(format!("static:///{refusing},{}", good.addr()))
        .policy("round_robin")
        .metrics(
            MetricsConfig::new()
                .method("greeter.v1.Greeter/SayHello")
                .target("transparent"),
        )
        .build()
        .unwrap();
    wait_ready(&transparent, 2).await;
    let mut tc = GreeterClient::new(transparent.clone());
    for _ in 0..4 {
        assert_eq!(hello(&mut tc).await.unwrap(), "good");
    }
    let v = totals.update(&snapshotter);
    let per_call = "grpc.method=greeter.v1.Greeter/SayHello,grpc.target=transparent";
    let retried = v.histogram(m::CALL_TRANSPARENT_RETRIES, per_call);
    assert!(
        !retried.is_empty() && retried.iter().all(|&n| n == 1.0),
        "round robin sent some first attempts to the refusing endpoint: {retried:?}"
    );
    let ok_calls = "grpc.method=greeter.v1.Greeter/SayHello,grpc.status=OK,grpc.target=transparent";
    assert_eq!(v.histogram(m::CALL_DURATION, ok_calls).len(), 4);

    // A transparent retry counts also when the call fails in the end: the only endpoint
    // refuses the retry as well.
    let refused = Channel::builder(format!("static:///{refusing}"))
        .metrics(
            MetricsConfig::new()
                .method("greeter.v1.Greeter/SayHello")
                .target("refused"),
        )
        .build()
        .unwrap();
    wait_ready(&refused, 1).await;
    let status = hello(&mut GreeterClient::new(refused.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let v = totals.update(&snapshotter);
    assert_eq!(
        v.histogram(
            m::CALL_TRANSPARENT_RETRIES,
            "grpc.method=greeter.v1.Greeter/SayHello,grpc.target=refused"
        ),
        [1.0]
    );

    // A96's hedges: a slow server, a hedge after 5 ms to the other, through HedgeLayer.
    let slow = TestServer::new("slow")
        .latency(Duration::from_millis(300))
        .spawn()
        .unwrap();
    let mut fast = TestServer::new("fast").spawn().unwrap();
    let hedged = Channel::builder(format!("static:///{},{}", slow.addr(), fast.addr()))
        .policy("round_robin")
        .metrics(
            MetricsConfig::new()
                .method("greeter.v1.Greeter/SayHello")
                .target("hedged"),
        )
        .build()
        .unwrap();
    wait_ready(&hedged, 2).await;
    let hedging = meshless::middleware::HedgingPolicy::new(
        2,
        meshless::middleware::HedgeDelay::Fixed(Duration::from_millis(5)),
        [],
    )
    .unwrap();
    let layer = meshless::middleware::HedgeLayer::new(hedging)
        .metrics(hedged.metrics().expect("built with metrics"));
    let mut hc = GreeterClient::new(tower::Layer::layer(&layer, hedged.clone()));
    for _ in 0..4 {
        hc.say_hello(HelloRequest::default()).await.unwrap();
    }
    let v = totals.update(&snapshotter);
    let per_call = "grpc.method=greeter.v1.Greeter/SayHello,grpc.target=hedged";
    // Every call waited 5 ms for its first answer at least (the fast server answers at
    // once, but the first attempt goes to the slow one half the time): those calls hedged
    // once, the others not at all (and A96 records no zero).
    let hedges = v.histogram(m::CALL_HEDGES, per_call);
    assert!(
        !hedges.is_empty() && hedges.iter().all(|&n| n == 1.0),
        "{hedges:?}"
    );
    assert!(
        !v.histograms
            .contains_key(&(m::CALL_RETRIES.to_owned(), per_call.to_owned())),
        "hedges are not retries"
    );

    // A94's disconnect reasons: a server that stops gracefully says GOAWAY NO_ERROR.
    fast.stop_graceful().await;
    let goaway = (
        m::DISCONNECTIONS.to_owned(),
        "grpc.disconnect_error=GOAWAY NO_ERROR,grpc.target=hedged".to_owned(),
    );
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    // A counter first recorded while a snapshot is taken shows as 0 until the next one.
    while totals
        .update(&snapshotter)
        .counters
        .get(&goaway)
        .is_none_or(|&n| n == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            totals.counters.keys()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(totals.counters[&goaway], 1);

    // A94: a connection refused, then succeeding.
    let addr = dead_addr();
    let late = Channel::builder(format!("static:///{addr}"))
        .backoff(fast_backoff())
        .metrics(MetricsConfig::new().target("late"))
        .build()
        .unwrap();
    wait_until("a refused attempt", || {
        late.status()
            .endpoints
            .first()
            .is_some_and(|e| e.last_error.is_some())
    })
    .await;
    // A66: an attempt's time includes its pick. The call waits (waitForReady) for the
    // endpoint to come up; its one attempt lasted that long.
    let mut lc = GreeterClient::new(late.clone());
    let mut req = tonic::Request::new(HelloRequest::default());
    req.extensions_mut().insert(meshless::WaitForReady);
    let waiting = tokio::spawn(async move { lc.say_hello(req).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _server = TestServer::new("late").bind(addr).spawn().unwrap();
    waiting.await.unwrap().unwrap();
    wait_ready(&late, 1).await;
    let v = totals.update(&snapshotter);
    let late_ok = "grpc.method=other,grpc.status=OK,grpc.target=late";
    let attempt = v.histogram(m::ATTEMPT_DURATION, late_ok);
    assert!(
        attempt.len() == 1 && attempt[0] >= 0.2,
        "the attempt includes its wait for a ready endpoint: {attempt:?}"
    );
    assert_eq!(
        v.counter(m::ATTEMPT_STARTED, "grpc.method=other,grpc.target=late"),
        1
    );
    assert!(v.counter(m::CONNECTION_ATTEMPTS_FAILED, "grpc.target=late") >= 1);
    assert_eq!(
        v.counter(m::CONNECTION_ATTEMPTS_SUCCEEDED, "grpc.target=late"),
        1
    );

    // A91: an ejection.
    let fleet: Vec<_> = (0..3)
        .map(|i| TestServer::new(format!("f{i}")).spawn().unwrap())
        .collect();
    fleet[0].set_fail(Some(Code::Unavailable));
    let ejecting = Channel::builder(static_target(&fleet))
        .policy("round_robin")
        .outlier_detection(OutlierDetection::default().interval(Duration::from_millis(100)))
        .metrics(MetricsConfig::new().target("ejecting"))
        .build()
        .unwrap();
    wait_ready(&ejecting, 3).await;
    let mut c = GreeterClient::new(ejecting.clone());
    wait_until_async_ejected(&ejecting, &mut c).await;
    let v = totals.update(&snapshotter);
    // Five failures in a row: meshless's consecutive-failure rule found it.
    assert_eq!(
        v.counter(
            m::EJECTIONS_ENFORCED,
            "grpc.lb.outlier_detection.detection_method=consecutive_failures,grpc.target=ejecting"
        ),
        1
    );

    // A91: an outlier left in. Both endpoints fail; one is ejected, and the other stays, as
    // ejecting it would leave no endpoint (the max ejection percentage's overflow).
    let failing: Vec<_> = (0..2)
        .map(|i| {
            TestServer::new(format!("x{i}"))
                .fail_with(Code::Unavailable)
                .spawn()
                .unwrap()
        })
        .collect();
    let capped = Channel::builder(static_target(&failing))
        .policy("round_robin")
        .outlier_detection(OutlierDetection::default().interval(Duration::from_millis(100)))
        .metrics(MetricsConfig::new().target("capped"))
        .build()
        .unwrap();
    wait_ready(&capped, 2).await;
    let mut c = GreeterClient::new(capped.clone());
    let unenforced = (
        m::EJECTIONS_UNENFORCED.to_owned(),
        "grpc.lb.outlier_detection.detection_method=consecutive_failures,\
         grpc.lb.outlier_detection.unenforced_reason=max_ejection_overflow,grpc.target=capped"
            .to_owned(),
    );
    let enforced = (
        m::EJECTIONS_ENFORCED.to_owned(),
        "grpc.lb.outlier_detection.detection_method=consecutive_failures,grpc.target=capped"
            .to_owned(),
    );
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    // A counter first recorded while a snapshot is taken shows as 0 until the next one.
    let seen = |t: &Totals, k| t.counters.get(k).is_some_and(|&n| n > 0);
    while !(seen(totals.update(&snapshotter), &unenforced) && seen(&totals, &enforced)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no unenforced ejection: {:?}",
            totals.counters.keys()
        );
        let _ = hello(&mut c).await;
    }
    assert_eq!(totals.counters[&enforced], 1);

    // meshless's own: discovery errors.
    let (discovery, handle) = meshless::discovery::ManualDiscovery::new();
    let failing_discovery = Channel::with_discovery("manual", std::sync::Arc::new(discovery))
        .metrics(MetricsConfig::new().target("discovering"))
        .build()
        .unwrap();
    handle.fail(meshless::discovery::DiscoveryError::new(
        meshless::discovery::ErrorKind::Unavailable,
        "registry down",
    ));
    wait_until("discovery's error", || {
        failing_discovery.status().discovery_error.is_some()
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    let errors = (
        m::DISCOVERY_ERRORS.to_owned(),
        "grpc.target=discovering".to_owned(),
    );
    while totals.update(&snapshotter).counters.get(&errors) != Some(&1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            totals.counters.get(&errors)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A78: weighted_round_robin's endpoint weights, at each scheduler build.
    let (wrr_discovery, wrr_handle) = meshless::discovery::ManualDiscovery::new();
    let weighted = Channel::with_discovery("wrr", std::sync::Arc::new(wrr_discovery))
        .policy("weighted_round_robin")
        .metrics(MetricsConfig::new().target("wrr"))
        .build()
        .unwrap();
    let heavy = TestServer::new("heavy").spawn().unwrap();
    let light = TestServer::new("light").spawn().unwrap();
    wrr_handle.reset(vec![
        meshless::discovery::Endpoint::new(heavy.addr()).with_weight(3),
        meshless::discovery::Endpoint::new(light.addr()).with_weight(1),
    ]);
    wait_ready(&weighted, 2).await;
    let weights = |t: &Totals| -> Vec<f64> {
        t.histograms
            .get(&(
                m::WRR_ENDPOINT_WEIGHTS.to_owned(),
                "grpc.target=wrr".to_owned(),
            ))
            .cloned()
            .unwrap_or_default()
    };
    // The last build had both endpoints ready (earlier ones may have had one).
    while weights(totals.update(&snapshotter)).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no weights");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let w = weights(&totals);
    let mut last_two = w[w.len() - 2..].to_vec();
    last_two.sort_by(f64::total_cmp);
    assert_eq!(last_two, [1.0, 3.0], "{w:?}");
    assert!(
        !totals
            .histograms
            .keys()
            .any(|(name, labels)| name == m::WRR_ENDPOINT_WEIGHTS && labels != "grpc.target=wrr"),
        "only weighted_round_robin records weights"
    );

    // A94: an endpoint the channel drops is a subchannel shutdown.
    let dropped = TestServer::new("dropped").spawn().unwrap();
    handle.reset(vec![meshless::discovery::Endpoint::new(dropped.addr())]);
    wait_ready(&failing_discovery, 1).await;
    handle.reset(Vec::new());
    let shutdown = (
        m::DISCONNECTIONS.to_owned(),
        "grpc.disconnect_error=subchannel shutdown,grpc.target=discovering".to_owned(),
    );
    // A counter first recorded while a snapshot is taken shows as 0 until the next one.
    while totals
        .update(&snapshotter)
        .counters
        .get(&shutdown)
        .is_none_or(|&n| n == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            totals.counters.keys()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(totals.counters[&shutdown], 1);

    // Dropping a channel closes its connections: the gauge comes back down, and each
    // closing is counted once (the reason depends on whether our side's shutdown or the end
    // of the connection task is seen first).
    drop((client, channel));
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while totals
        .update(&snapshotter)
        .gauge(m::OPEN_CONNECTIONS, "grpc.target=greeter")
        != 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the greeter connections never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A counter first recorded while a snapshot is being taken shows in the next one.
    let closed = |t: &Totals| -> u64 {
        t.counters
            .iter()
            .filter(|((name, labels), _)| {
                name == m::DISCONNECTIONS && labels.ends_with("grpc.target=greeter")
            })
            .map(|(_, n)| n)
            .sum()
    };
    while closed(totals.update(&snapshotter)) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "disconnections not counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(closed(&totals), 2);
}

async fn wait_until_async_ejected(channel: &Channel, client: &mut GreeterClient<Channel>) {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while !channel.status().endpoints.iter().any(|e| e.ejected) {
        let _ = hello(client).await;
        assert!(tokio::time::Instant::now() < deadline, "never ejected");
    }
}
