//! DNS discovery end to end: a real DNS server (hickory-server, in process, on loopback)
//! whose records change mid-test, real greeter servers, a real channel.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meshless::Channel;
use meshless::discovery::dns::{DnsConfig, DnsDiscovery, DnsScheme, EmptyAnswer, IpFamilies};
use meshless::discovery::{
    Address, Discovery, DiscoveryError, ErrorKind, Registry, Target, Update,
};
use meshless_integration::dns::{DnsServer, Garbage, GarbageDns, Mode, Srv, loopback_ip};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};
use tokio::time::Instant;
use tonic::Code;

/// TTL of the records in these tests, in seconds.
const TTL_SECS: u32 = 1;
const TTL: Duration = Duration::from_secs(TTL_SECS as u64);
/// What a change may take beyond the TTL to reach the traffic: the bound these tests hold
/// DNS discovery to.
const PROPAGATION: Duration = Duration::from_millis(100);
/// Bound on waiting for one item of a discovery stream.
const ITEM_BOUND: Duration = Duration::from_secs(5);
/// Tries at finding one port free on several loopback addresses.
const PORT_TRIES: usize = 10;

/// Short timeouts and retries, so failures show within a test's patience. IPv4 only: the
/// backends listen on 127.0.0.x, and one query per resolution keeps query counts simple.
fn config() -> DnsConfig {
    DnsConfig::default()
        .families(IpFamilies::Ipv4Only)
        // ×2 without jitter: retry times the query counts below can rely on.
        .backoff(
            meshless::BackoffConfig::default()
                .base_delay(Duration::from_millis(100))
                .multiplier(2.0)
                .jitter(0.0)
                .max_delay(Duration::from_millis(500)),
        )
        .query_timeout(Duration::from_millis(300), 1)
}

fn registry(config: DnsConfig) -> Registry {
    let mut r = Registry::default();
    r.register(DnsScheme::new(config));
    r
}

/// A channel for `path` (`name:port` or an SRV name) asking `dns` (in the authority).
fn channel(dns: &DnsServer, scheme: &str, path: &str, policy: &str, config: DnsConfig) -> Channel {
    Channel::builder(format!("{scheme}://{}/{path}", dns.addr()))
        .registry(registry(config))
        .policy(policy)
        .backoff(fast_backoff())
        .build()
        .expect("build channel")
}

/// Greeter servers on 127.0.0.2, 127.0.0.3, ... all on one port, as the A records of one
/// name must be.
fn same_port(configs: Vec<TestServer>) -> Vec<ServerHandle> {
    'retry: for _ in 0..PORT_TRIES {
        let mut out: Vec<ServerHandle> = Vec::new();
        let mut port = 0;
        for (i, cfg) in configs.iter().enumerate() {
            let ip = loopback_ip(u8::try_from(i).expect("few servers"));
            match cfg.clone().bind(SocketAddr::new(ip, port)).spawn() {
                Ok(s) => {
                    port = s.addr().port();
                    out.push(s);
                }
                Err(_) => continue 'retry, // that port is taken on this address
            }
        }
        return out;
    }
    panic!("no port free on {} loopback addresses", configs.len());
}

fn ips(servers: &[&ServerHandle]) -> Vec<IpAddr> {
    servers.iter().map(|s| s.addr().ip()).collect()
}

fn has(channel: &Channel, server: &ServerHandle) -> bool {
    channel
        .status()
        .endpoint(&Address::Tcp(server.addr()))
        .is_some()
}

/// The next item of a discovery stream, bounded.
async fn next_item(
    stream: &mut meshless::discovery::UpdateStream,
) -> Result<Update, DiscoveryError> {
    tokio::time::timeout(ITEM_BOUND, stream.next())
        .await
        .expect("discovery yielded nothing in time")
        .expect("a DNS stream never ends")
}

fn addrs(update: &Update) -> Vec<String> {
    match update {
        Update::Reset(eps) => eps.iter().map(|e| e.addr.to_string()).collect(),
        other => panic!("expected a reset, got {other:?}"),
    }
}

fn discovery(target: &str, config: DnsConfig) -> DnsDiscovery {
    DnsDiscovery::new(&Target::parse(target).expect("target"), config).expect("discovery")
}

// ===== membership follows the records =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_record_gets_calls_within_the_ttl() {
    let s = same_port(vec![TestServer::new("s0"), TestServer::new("s1")]);
    let port = s[0].addr().port();
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(TTL_SECS);
    dns.set_a("greeter.test", &ips(&[&s[0]]));
    let ch = channel(
        &dns,
        "dns",
        &format!("greeter.test:{port}"),
        "round_robin",
        config(),
    );
    wait_ready(&ch, 1).await;
    let mut client = GreeterClient::new(ch.clone());
    assert_eq!(hello(&mut client).await.expect("call"), "s0");

    let changed = Instant::now();
    dns.set_a("greeter.test", &ips(&[&s[0], &s[1]]));
    loop {
        if hello(&mut client).await.expect("call") == "s1" {
            break;
        }
        assert!(changed.elapsed() < WAIT_BOUND, "s1 never got a call");
    }
    let took = changed.elapsed();
    eprintln!("new backend got its first call {took:?} after the record was added (TTL {TTL:?})");
    assert!(
        took <= TTL + PROPAGATION,
        "the new backend got its first call after {took:?}, more than TTL + {PROPAGATION:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_record_gets_no_calls_after_the_ttl_and_in_flight_calls_complete() {
    // s1 is slow, so calls are still running on it when its record goes.
    let slow = Duration::from_secs(2);
    let s = same_port(vec![
        TestServer::new("s0"),
        TestServer::new("s1").latency(slow),
    ]);
    let port = s[0].addr().port();
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(TTL_SECS);
    dns.set_a("greeter.test", &ips(&[&s[0], &s[1]]));
    let ch = channel(
        &dns,
        "dns",
        &format!("greeter.test:{port}"),
        "round_robin",
        config(),
    );
    wait_ready(&ch, 2).await;

    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let mut client = GreeterClient::new(ch.clone());
            tokio::spawn(async move { hello(&mut client).await })
        })
        .collect();
    wait_until("a call in flight on s1", || s[1].in_flight() > 0).await;

    let removed = Instant::now();
    dns.set_a("greeter.test", &ips(&[&s[0]]));
    wait_until("s1 leaves the channel", || !has(&ch, &s[1])).await;
    let took = removed.elapsed();
    eprintln!("removed backend left the channel {took:?} after its record went (TTL {TTL:?})");
    assert!(took <= TTL + PROPAGATION, "s1 left after {took:?}");
    assert!(
        s[1].in_flight() > 0,
        "the test needs calls still running on s1 now"
    );

    let before = s[1].calls();
    let mut client = GreeterClient::new(ch.clone());
    for _ in 0..40 {
        assert_eq!(hello(&mut client).await.expect("call"), "s0");
    }
    assert_eq!(
        s[1].calls(),
        before,
        "no new call may reach a removed backend"
    );
    for call in in_flight {
        let server = call
            .await
            .expect("task")
            .expect("an in-flight call completes");
        assert!(server == "s0" || server == "s1");
    }
}

// ===== SRV =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_3_to_1_split_calls_3_to_1_with_weighted_round_robin() {
    let s = servers(2);
    let dns = DnsServer::spawn().expect("dns");
    dns.set_a("a.greeter.test", &[s[0].addr().ip()]);
    dns.set_a("b.greeter.test", &[s[1].addr().ip()]);
    dns.set_srv(
        "_grpc._tcp.greeter.test",
        &[
            Srv::new(10, 3, s[0].addr().port(), "a.greeter.test"),
            Srv::new(10, 1, s[1].addr().port(), "b.greeter.test"),
        ],
    );
    let ch = channel(
        &dns,
        "dns+srv",
        "_grpc._tcp.greeter.test",
        "weighted_round_robin",
        config(),
    );
    wait_ready(&ch, 2).await;
    let status = ch.status();
    let weight = |s: &ServerHandle| status.endpoint(&Address::Tcp(s.addr())).map(|e| e.weight);
    assert_eq!((weight(&s[0]), weight(&s[1])), (Some(3), Some(1)));

    // n = 400 calls: the share of s0 has sd sqrt(n × 3/4 × 1/4) ≈ 8.7 calls, so a split
    // outside 300 ± 43 would be a 5-sigma event.
    const N: u64 = 400;
    let expected = N * 3 / 4;
    let bound = (5.0 * (N as f64 * 0.75 * 0.25).sqrt()).ceil() as u64;
    let mut client = GreeterClient::new(ch.clone());
    let mut to_s0 = 0;
    for _ in 0..N {
        if hello(&mut client).await.expect("call") == "s0" {
            to_s0 += 1;
        }
    }
    eprintln!("weights 3:1 → s0 {to_s0}, s1 {} of {N}", N - to_s0);
    assert!(
        to_s0.abs_diff(expected) <= bound,
        "s0 got {to_s0} of {N}, expected {expected} ± {bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lower_srv_priority_is_used_only_while_the_top_one_has_no_addresses() {
    let s = servers(2);
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(TTL_SECS);
    // Priority 10 (preferred) names a host with no addresses yet; 20 is the fallback.
    dns.set_a("b.greeter.test", &[s[1].addr().ip()]);
    dns.set_srv(
        "_grpc._tcp.greeter.test",
        &[
            Srv::new(10, 1, s[0].addr().port(), "a.greeter.test"),
            Srv::new(20, 1, s[1].addr().port(), "b.greeter.test"),
        ],
    );
    let ch = channel(
        &dns,
        "dns+srv",
        "_grpc._tcp.greeter.test",
        "round_robin",
        config(),
    );
    wait_ready(&ch, 1).await;
    let mut client = GreeterClient::new(ch.clone());
    for _ in 0..20 {
        assert_eq!(hello(&mut client).await.expect("call"), "s1");
    }
    assert_eq!(ch.status().endpoints.len(), 1);

    // The preferred host gets an address: the fallback is dropped.
    dns.set_a("a.greeter.test", &[s[0].addr().ip()]);
    wait_until("the fallback is dropped", || {
        has(&ch, &s[0]) && !has(&ch, &s[1])
    })
    .await;
    wait_ready(&ch, 1).await;
    let before = s[1].calls();
    for _ in 0..20 {
        assert_eq!(hello(&mut client).await.expect("call"), "s0");
    }
    assert_eq!(s[1].calls(), before);
}

// ===== failures =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_outage_keeps_traffic_on_the_last_backends_and_recovers() {
    let s = same_port(vec![
        TestServer::new("s0"),
        TestServer::new("s1"),
        TestServer::new("s2"),
    ]);
    let port = s[0].addr().port();
    let mut dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(TTL_SECS);
    dns.set_a("greeter.test", &ips(&[&s[0], &s[1]]));
    let ch = channel(
        &dns,
        "dns",
        &format!("greeter.test:{port}"),
        "round_robin",
        config(),
    );
    wait_ready(&ch, 2).await;
    let mut client = GreeterClient::new(ch.clone());

    dns.stop();
    let outage = Duration::from_secs(3);
    let stopped = Instant::now();
    let (mut calls, mut seen_error) = (0u64, None);
    while stopped.elapsed() < outage {
        hello(&mut client)
            .await
            .expect("calls go on during the DNS outage");
        calls += 1;
        if let Some(e) = ch.status().discovery_error {
            seen_error = Some(e);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = seen_error.expect("the outage shows in the channel status");
    eprintln!("{calls} calls during a {outage:?} DNS outage; status said: {err}");
    assert!(err.contains(&dns.addr().to_string()), "{err}");
    assert!(err.contains("keeping the last 2 endpoints"), "{err}");
    assert_eq!(ch.status().endpoints.len(), 2);

    // Back, with one more backend: the channel catches up and the error clears.
    dns.set_a("greeter.test", &ips(&[&s[0], &s[1], &s[2]]));
    dns.restart().expect("restart dns");
    wait_until("s2 joins", || has(&ch, &s[2])).await;
    wait_ready(&ch, 3).await;
    assert_eq!(ch.status().discovery_error, None);
    let before = s[2].calls();
    for _ in 0..6 {
        hello(&mut client).await.expect("call");
    }
    assert!(s[2].calls() > before, "s2 gets calls after the outage");
}

/// A failing connection brings the resolution forward (the TTL here is 30 s), but no more
/// often than the minimum interval however often connections fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_failure_triggers_a_rate_limited_re_resolution() {
    let min_interval = Duration::from_millis(300);
    let cfg = config()
        .ttl_bounds(Duration::from_secs(30), Duration::from_secs(30))
        .resolve_now_min_interval(min_interval);
    let mut s = same_port(vec![TestServer::new("s0"), TestServer::new("s1")]);
    let port = s[0].addr().port();
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(30);
    dns.set_a("greeter.test", &ips(&[&s[0]]));
    let ch = channel(
        &dns,
        "dns",
        &format!("greeter.test:{port}"),
        // round_robin keeps reconnecting to every endpoint; pick_first would let s0 go
        // once s1 is ready, and nothing would fail any more.
        "round_robin",
        cfg,
    );
    wait_ready(&ch, 1).await;

    // The record changes, but a 30 s TTL would hide that; then s0 dies.
    dns.set_a("greeter.test", &ips(&[&s[0], &s[1]]));
    let killed = Instant::now();
    s[0].kill();
    wait_until("s1 joins", || has(&ch, &s[1])).await;
    eprintln!(
        "re-resolved {:?} after the connection failed",
        killed.elapsed()
    );
    let mut client = GreeterClient::new(ch.clone());
    assert_eq!(hello(&mut client).await.expect("call"), "s1");

    // s0 stays in DNS and keeps failing (reconnect backoff ≤ 200 ms): at most one query per
    // interval.
    let q0 = dns.queries();
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let queries = dns.queries() - q0;
    let most = (window.as_millis() / min_interval.as_millis()) as u64 + 1;
    eprintln!("{queries} queries in {window:?} of failing reconnects (at most {most})");
    assert!(
        queries >= 2,
        "failures should trigger re-resolution: {queries} queries"
    );
    assert!(
        queries <= most,
        "{queries} queries in {window:?}: the rate limit failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_resolution_failure_names_the_name_and_the_server() {
    let dns = DnsServer::spawn().expect("dns");
    dns.set_exists_empty("empty.test");
    let server = dns.addr().to_string();
    for (name, needle, kind) in [
        (
            "missing.test",
            "does not exist (NXDOMAIN)",
            ErrorKind::NotFound,
        ),
        ("empty.test", "has no A records", ErrorKind::Resolve),
    ] {
        let d = discovery(&format!("dns://{server}/{name}:50051"), config());
        let err = next_item(&mut d.watch()).await.expect_err("no records");
        assert_eq!(err.kind(), kind, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains(needle) && msg.contains(&server),
            "{msg}"
        );

        // Through a channel: calls fail at once with the reason.
        let ch = channel(
            &dns,
            "dns",
            &format!("{name}:50051"),
            "round_robin",
            config(),
        );
        wait_until("the error shows", || ch.status().discovery_error.is_some()).await;
        let status = hello(&mut GreeterClient::new(ch.clone()))
            .await
            .expect_err("no endpoints");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains(name), "{}", status.message());
    }

    for (mode, needle) in [
        (Mode::ServFail, "ServFail"),
        (Mode::Refused, "Refused"),
        (Mode::Silent, "reachable?"),
    ] {
        dns.set_mode(mode);
        dns.set_a("greeter.test", &[loopback_ip(0)]);
        let d = discovery(&format!("dns://{server}/greeter.test:50051"), config());
        let err = next_item(&mut d.watch()).await.expect_err("server failure");
        let msg = err.to_string();
        eprintln!("{mode:?}: {msg}");
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{msg}");
        assert!(
            msg.contains("greeter.test") && msg.contains(&server) && msg.contains(needle),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_answers_are_errors_not_panics() {
    for kind in [
        Garbage::Noise,
        Garbage::ShortHeader,
        Garbage::Truncated,
        Garbage::LyingCounts,
    ] {
        let garbage = GarbageDns::spawn(kind).await.expect("garbage dns");
        let server = garbage.addr().to_string();
        for target in [
            format!("dns://{server}/greeter.test:50051"),
            format!("dns+srv://{server}/_grpc._tcp.greeter.test"),
        ] {
            let d = discovery(&target, config());
            let mut stream = d.watch();
            // Two items: the first failure and a retry's, so the stream goes on after one.
            for _ in 0..2 {
                let err = next_item(&mut stream)
                    .await
                    .expect_err("garbage is no answer");
                let msg = err.to_string();
                assert!(
                    msg.contains(&server) && msg.contains("greeter.test"),
                    "{msg}"
                );
                eprintln!("{kind:?}: {:?}: {msg}", err.kind());
            }
        }
        assert!(
            garbage.answered() > 0,
            "{kind:?}: the responder was never asked"
        );
    }
}

#[tokio::test]
async fn malformed_targets_are_clear_errors() {
    let r = registry(config());
    for (target, needle) in [
        ("dns:///", "no host name"),
        ("dns:///bad..name:50051", "not a valid host name"),
        ("dns:///greeter.test:0", "not a number in 1..=65535"),
        ("dns:///greeter.test:65536", "not a number in 1..=65535"),
        ("dns:///a.test:1,b.test:2", "names one host"),
        (
            "dns://ns.example/greeter.test:1",
            "must be the IP address of a DNS server",
        ),
        (
            "dns://127.0.0.1:70000/greeter.test:1",
            "not a number in 1..=65535",
        ),
        ("dns+srv:///_grpc._tcp.greeter.test:50051", "takes no port"),
        ("dns+srv:///under score.test", "not a valid host name"),
    ] {
        let err = r.parse(target).expect_err(target).to_string();
        assert!(err.contains(needle), "{target}: {err}");
        let err = Channel::builder(target)
            .registry(r.clone())
            .build()
            .expect_err(target)
            .to_string();
        assert!(err.contains(needle), "{target}: {err}");
    }
    // The default registry has the schemes too, with the documented default port.
    assert!(Target::parse("dns:///greeter.test").is_ok());
    assert!(Target::parse("dns+srv:///_grpc._tcp.greeter.test").is_ok());
}

// ===== empty answers after good ones =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_after_a_good_answer_keeps_the_set_for_a_bounded_time() {
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(TTL_SECS);
    dns.set_a("greeter.test", &[loopback_ip(0)]);
    let hold = Duration::from_millis(800);
    let target = format!("dns://{}/greeter.test:50051", dns.addr());
    let d = discovery(&target, config().on_empty(EmptyAnswer::KeepFor(hold)));
    let mut stream = d.watch();
    assert_eq!(
        addrs(&next_item(&mut stream).await.expect("set")),
        ["127.0.0.2:50051"]
    );

    dns.remove("greeter.test");
    let gone = Instant::now();
    let err = next_item(&mut stream).await.expect_err("nxdomain");
    assert!(
        err.to_string().contains("keeping the last 1 endpoints"),
        "{err}"
    );
    // Retries report the same until the hold ends; then the set is emptied.
    loop {
        match next_item(&mut stream).await {
            Err(e) => assert!(e.to_string().contains("NXDOMAIN"), "{e}"),
            Ok(update) => {
                assert!(addrs(&update).is_empty());
                break;
            }
        }
    }
    let held = gone.elapsed();
    eprintln!("held the last set {held:?} of NXDOMAIN (hold {hold:?}, TTL {TTL:?})");
    // The hold counts from the first empty answer, which came within one TTL of the change.
    assert!(held >= hold && held <= TTL + hold + PROPAGATION, "{held:?}");
    let err = next_item(&mut stream).await.expect_err("reported");
    assert!(
        err.to_string().contains("dropped the last 1 endpoints"),
        "{err}"
    );

    // The name comes back: so does the set.
    dns.set_a("greeter.test", &[loopback_ip(1)]);
    loop {
        if let Ok(update) = next_item(&mut stream).await {
            assert_eq!(addrs(&update), ["127.0.0.3:50051"]);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_clear_policy_an_empty_answer_empties_the_set_at_once() {
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(TTL_SECS);
    dns.set_a("greeter.test", &[loopback_ip(0)]);
    let target = format!("dns://{}/greeter.test:50051", dns.addr());
    let d = discovery(&target, config().on_empty(EmptyAnswer::Clear));
    let mut stream = d.watch();
    assert_eq!(addrs(&next_item(&mut stream).await.expect("set")).len(), 1);
    dns.set_exists_empty("greeter.test");
    assert!(addrs(&next_item(&mut stream).await.expect("emptied")).is_empty());
    let err = next_item(&mut stream).await.expect_err("reported");
    assert!(err.to_string().contains("has no A records"), "{err}");
}

// ===== addresses =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_families_are_interleaved_in_the_preferred_order() {
    let dns = DnsServer::spawn().expect("dns");
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    // Deliberately unsorted: the order must not depend on the server's.
    dns.set_a(
        "greeter.test",
        &[ip("127.0.0.3"), ip("::2"), ip("127.0.0.2"), ip("::1")],
    );
    let target = format!("dns://{}/greeter.test:7", dns.addr());
    for (families, want) in [
        (
            IpFamilies::Ipv6ThenIpv4,
            vec!["[::1]:7", "127.0.0.2:7", "[::2]:7", "127.0.0.3:7"],
        ),
        (
            IpFamilies::Ipv4ThenIpv6,
            vec!["127.0.0.2:7", "[::1]:7", "127.0.0.3:7", "[::2]:7"],
        ),
        (IpFamilies::Ipv4Only, vec!["127.0.0.2:7", "127.0.0.3:7"]),
        (IpFamilies::Ipv6Only, vec!["[::1]:7", "[::2]:7"]),
    ] {
        let d = discovery(&target, config().families(families));
        let got = addrs(&next_item(&mut d.watch()).await.expect("set"));
        assert_eq!(got, want, "{families:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_and_localhost_need_no_dns_server() {
    let s = servers(1);
    let ch = Channel::builder(format!("dns:///{}", s[0].addr()))
        .backoff(fast_backoff())
        .build()
        .expect("build");
    assert_eq!(
        hello(&mut GreeterClient::new(ch.clone()))
            .await
            .expect("call"),
        "s0"
    );
    // `localhost` is answered by the resolver itself (RFC 6761), even with a server given
    // that knows nothing.
    let dns = DnsServer::spawn().expect("dns");
    let d = discovery(
        &format!("dns://{}/localhost:{}", dns.addr(), s[0].addr().port()),
        config(),
    );
    let got = addrs(&next_item(&mut d.watch()).await.expect("set"));
    assert_eq!(got, [s[0].addr().to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_channel_stops_resolving() {
    let dns = DnsServer::spawn().expect("dns");
    dns.set_ttl(0); // re-resolve at the configured floor
    dns.set_a("greeter.test", &[loopback_ip(0)]);
    let cfg = config().ttl_bounds(Duration::from_millis(50), Duration::from_secs(1));
    let ch = channel(&dns, "dns", "greeter.test:50051", "round_robin", cfg);
    wait_until("a few resolutions", || dns.queries() >= 3).await;
    drop(ch);
    // Let a resolution that was under way finish, then nothing more may come.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = dns.queries();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        dns.queries(),
        after,
        "resolution went on after the channel was dropped"
    );
}
