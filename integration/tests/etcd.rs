//! etcd discovery and registration end to end: real tonic servers, `meshless::Channel` on
//! `etcd:` targets, and a real etcd (Debian's `etcd-server`, which scripts/test.sh
//! installs) spawned on free loopback ports by each test (integration/src/etcd.rs).
//!
//! Keys and values are written by hand in the exact formats go-zero (`core/discov`) and
//! kratos (`contrib/registry/etcd`) write, and read back with `etcdctl`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use meshless::Channel;
use meshless::discovery::etcd::{EtcdConfig, EtcdFormat, EtcdRegistrar, EtcdScheme};
use meshless::discovery::{
    Address, DiscoveryError, Endpoint, ErrorKind, Instance, Registrar, Registration,
    RegistrationState, Registry, Target, Update, UpdateStream,
};
use meshless_integration::etcd::{EtcdServer, Gate};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::ServerHandle;

/// A started etcd. Where the binaries are missing the test fails (scripts/test.sh installs
/// them), unless `MESHLESS_SKIP_ETCD=1` says to skip it.
async fn etcd(test: &str) -> Option<EtcdServer> {
    if !meshless_integration::etcd::available() {
        assert!(
            std::env::var_os("MESHLESS_SKIP_ETCD").is_some(),
            "{test}: etcd is not installed; scripts/test.sh installs etcd-server and \
             etcd-client (MESHLESS_SKIP_ETCD=1 skips these tests)"
        );
        eprintln!("{test}: etcd/etcdctl not installed; skipped (MESHLESS_SKIP_ETCD)");
        return None;
    }
    Some(EtcdServer::start().await.expect("start etcd"))
}

fn channel(target: &str) -> Channel {
    Channel::builder(target)
        .policy("round_robin")
        .backoff(fast_backoff())
        .queue_timeout(Duration::from_secs(3))
        .build()
        .expect("channel")
}

/// What kratos's `registry.ServiceInstance` marshals to (`contrib/registry/etcd/service.go`).
fn kratos_json(id: &str, name: &str, s: &ServerHandle, metadata: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"{name}","version":"v1.0.0","metadata":{metadata},"endpoints":["http://127.0.0.1:1","grpc://{}"]}}"#,
        s.addr()
    )
}

/// A discovery of `target` with a short progress interval and fast backoff.
fn watch(target: &str) -> UpdateStream {
    let mut registry = Registry::default();
    registry.register(EtcdScheme::new(
        EtcdConfig::default()
            .backoff(fast_backoff())
            .progress_interval(Duration::from_millis(500)),
    ));
    let target = Target::parse_with(target, &registry).expect("target");
    registry.build(&target).expect("discovery").watch()
}

/// The next set the stream sends, collecting errors, bounded.
async fn next_set(updates: &mut UpdateStream, errors: &mut Vec<DiscoveryError>) -> Vec<Endpoint> {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let item = tokio::time::timeout_at(deadline, updates.next())
            .await
            .expect("an update within the bound")
            .expect("the stream does not end");
        match item {
            Ok(Update::Reset(eps)) => return eps,
            Ok(other) => panic!("etcd discovery sends whole sets, got {other:?}"),
            Err(e) => errors.push(e),
        }
    }
}

/// Waits for a set with exactly these addresses; returns it.
async fn wait_set(updates: &mut UpdateStream, want: &[&ServerHandle]) -> Vec<Endpoint> {
    let want: BTreeSet<Address> = want.iter().map(|s| Address::from(s.addr())).collect();
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no set {want:?}; errors: {errors:?}"
        );
        let set = next_set(updates, &mut errors).await;
        let got: BTreeSet<Address> = set.iter().map(|e| e.addr.clone()).collect();
        assert_eq!(got.len(), set.len(), "duplicate addresses in {set:?}");
        if got == want {
            return set;
        }
    }
}

/// Calls until each of `servers` answered at least once (bounded), then checks that
/// nobody else answered.
async fn reaches_exactly(channel: &Channel, servers: &[&ServerHandle]) {
    // First the channel applies the set (a call sent before that may still reach an
    // endpoint just removed), then every call must reach only these servers.
    let addrs: BTreeSet<Address> = servers.iter().map(|s| Address::from(s.addr())).collect();
    wait_until("the channel holds exactly these endpoints", || {
        let now: BTreeSet<Address> = channel
            .status()
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect();
        now == addrs
    })
    .await;
    let mut client = GreeterClient::new(channel.clone());
    let want: BTreeSet<String> = servers.iter().map(|s| s.name().to_owned()).collect();
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while seen != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reached {seen:?}, want {want:?}; status {:?}",
            channel.status()
        );
        if let Ok(name) = hello(&mut client).await {
            assert!(
                want.contains(&name),
                "`{name}` answered; want only {want:?}"
            );
            seen.insert(name);
        }
    }
    // And a few more: still only these.
    for _ in 0..20 {
        let name = hello(&mut client).await.expect("call");
        assert!(
            want.contains(&name),
            "`{name}` answered; want only {want:?}"
        );
    }
}

async fn wait_registered(r: &Registration, after: u64) {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let s = r.status();
        if s.registrations > after && s.state == RegistrationState::Registered {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not registered again: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// 1. go-zero keys and kratos keys, written by hand, are discovered.
#[tokio::test]
async fn go_zero_and_kratos_keys_written_by_hand_are_discovered() {
    let Some(etcd) = etcd("go_zero_and_kratos").await else {
        return;
    };
    let s = servers(4);
    let a = etcd.addr();
    // go-zero: `<Key>/<lease id in decimal>` = `host:port`.
    etcd.put("user.rpc/7587869234128001234", &s[0].addr().to_string())
        .await
        .unwrap();
    etcd.put("user.rpc/7587869234128001299", &s[1].addr().to_string())
        .await
        .unwrap();
    // Not under the prefix `user.rpc/`: another service.
    etcd.put("user.rpcx/1", &s[3].addr().to_string())
        .await
        .unwrap();
    // Both go-zero target forms.
    for target in [
        format!("etcd:///{a}?key=user.rpc"),
        format!("etcd://{a}/user.rpc"),
    ] {
        let ch = channel(&target);
        reaches_exactly(&ch, &[&s[0], &s[1]]).await;
    }
    // kratos: `/microservices/<name>/<id>` = its JSON; a weight in metadata; `null` metadata;
    // a `helloworldfoo` instance that kratos's own prefix would match.
    etcd.put(
        "/microservices/helloworld/a1",
        &kratos_json("a1", "helloworld", &s[2], r#"{"weight":"4","zone":"z1"}"#),
    )
    .await
    .unwrap();
    etcd.put(
        "/microservices/helloworld/a2",
        &kratos_json("a2", "helloworld", &s[1], "null"),
    )
    .await
    .unwrap();
    etcd.put(
        "/microservices/helloworldfoo/b1",
        &kratos_json("b1", "helloworldfoo", &s[3], "null"),
    )
    .await
    .unwrap();
    let target = format!("etcd:///{a}?key=helloworld&format=kratos");
    let ch = channel(&target);
    reaches_exactly(&ch, &[&s[1], &s[2]]).await;
    let mut updates = watch(&target);
    let set = wait_set(&mut updates, &[&s[1], &s[2]]).await;
    let ep = set
        .iter()
        .find(|e| e.addr == Address::from(s[2].addr()))
        .unwrap();
    assert_eq!(ep.weight, 4);
    assert_eq!(ep.metadata["version"], "v1.0.0");
    assert_eq!(ep.metadata["meta.zone"], "z1");
    assert_eq!(ep.metadata["kratos.id"], "a1");
    assert_eq!(ep.metadata["etcd.key"], "/microservices/helloworld/a1");
}

// 2. An endpoint added and removed is seen within the watch latency; an empty prefix is
//    an empty set.
#[tokio::test]
async fn endpoints_added_and_removed_are_seen() {
    let Some(etcd) = etcd("added_and_removed").await else {
        return;
    };
    let s = servers(2);
    etcd.put("greeter/1", &s[0].addr().to_string())
        .await
        .unwrap();
    let target = format!("etcd:///{}?key=greeter", etcd.addr());
    let mut updates = watch(&target);
    wait_set(&mut updates, &[&s[0]]).await;
    let ch = channel(&target);
    reaches_exactly(&ch, &[&s[0]]).await;

    etcd.put("greeter/2", &s[1].addr().to_string())
        .await
        .unwrap();
    wait_set(&mut updates, &[&s[0], &s[1]]).await;
    reaches_exactly(&ch, &[&s[0], &s[1]]).await;

    etcd.delete("greeter/1").await.unwrap();
    wait_set(&mut updates, &[&s[1]]).await;
    reaches_exactly(&ch, &[&s[1]]).await;

    // The same address under a second key is one endpoint; deleting one key keeps it.
    etcd.put("greeter/3", &s[1].addr().to_string())
        .await
        .unwrap();
    etcd.delete("greeter/2").await.unwrap();
    etcd.put("greeter/4", &s[0].addr().to_string())
        .await
        .unwrap();
    wait_set(&mut updates, &[&s[0], &s[1]]).await;

    // etcd says the prefix is empty: the set is empty.
    etcd.delete("greeter/3").await.unwrap();
    etcd.delete("greeter/4").await.unwrap();
    wait_set(&mut updates, &[]).await;
}

// 3. Compaction past the watch's revision: the watch relists, nothing lost or doubled.
#[tokio::test]
async fn a_compacted_revision_makes_the_watch_relist_as_one_snapshot() {
    let Some(etcd) = etcd("compaction").await else {
        return;
    };
    let s = servers(4);
    let gate = Gate::start(etcd.addr()).await.unwrap();
    etcd.put("svc/a", &s[0].addr().to_string()).await.unwrap();
    etcd.put("svc/b", &s[1].addr().to_string()).await.unwrap();
    let mut updates = watch(&format!("etcd:///{}?key=svc&timeout=1s", gate.addr()));
    wait_set(&mut updates, &[&s[0], &s[1]]).await;

    // Cut the watcher off; meanwhile the set changes and the history is compacted away.
    gate.cut();
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while errors.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut was not noticed"
        );
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(50), updates.next()).await
        {
            match item {
                Err(e) => errors.push(e),
                Ok(u) => panic!("an update while etcd is unreachable: {u:?}"),
            }
        }
    }
    assert_eq!(errors[0].kind(), ErrorKind::Unavailable, "{errors:?}");
    etcd.delete("svc/a").await.unwrap();
    etcd.put("svc/c", &s[2].addr().to_string()).await.unwrap();
    etcd.put("svc/d", &s[3].addr().to_string()).await.unwrap();
    etcd.put("svc/d", &s[3].addr().to_string()).await.unwrap(); // a second revision of d
    etcd.compact_all().await.unwrap();
    gate.open();

    // The resumed watch meets the compaction and lists again: the set is exactly b, c, d
    // (no `a`, no duplicate `d`), in one snapshot.
    let mut errors = Vec::new();
    let set = next_set(&mut updates, &mut errors).await;
    let got: Vec<Address> = set.iter().map(|e| e.addr.clone()).collect();
    let want: Vec<Address> = [&s[1], &s[2], &s[3]]
        .iter()
        .map(|s| Address::from(s.addr()))
        .collect();
    assert_eq!(
        got, want,
        "the first set after the compaction; errors {errors:?}"
    );
    // And the watch goes on from the list's revision.
    etcd.put("svc/a", &s[0].addr().to_string()).await.unwrap();
    wait_set(&mut updates, &[&s[0], &s[1], &s[2], &s[3]]).await;
}

// 4. SIGKILL etcd mid-run: calls keep flowing, status shows it, and after a restart on
//    the same data dir discovery resumes and the registration is back by itself.
#[tokio::test]
async fn killing_etcd_keeps_calls_flowing_and_a_restart_heals_everything() {
    let Some(mut etcd) = etcd("kill").await else {
        return;
    };
    let s = servers(3);
    let a = etcd.addr().to_string();
    etcd.put("svc/hand", &s[0].addr().to_string())
        .await
        .unwrap();
    let registrar = EtcdRegistrar::new([a.clone()])
        .ttl(Duration::from_secs(2))
        .backoff(fast_backoff());
    let registration = registrar
        .register(Instance::new("svc", s[1].addr().to_string()))
        .unwrap();
    registration.wait_registered(WAIT_BOUND).await.unwrap();
    let ch = channel(&format!("etcd:///{a}?key=svc&max-backoff=200ms&timeout=1s"));
    reaches_exactly(&ch, &[&s[0], &s[1]]).await;

    let load = Load::start(&ch, 4);
    etcd.kill().await;
    wait_error(&ch, "the outage in status", &["cannot"]).await;
    // Longer than the lease's TTL: the lease would expire if etcd were running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (calls, failures, errors) = load.finish().await;
    assert!(calls > 100, "only {calls} calls in 3 s");
    assert_eq!(failures, 0, "calls failed while etcd was down: {errors:?}");
    assert_ne!(registration.status().state, RegistrationState::Registered);

    etcd.restart().await.unwrap();
    // The registration is back, and discovery follows a change again.
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while registration.status().state != RegistrationState::Registered {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registration did not come back: {:?}",
            registration.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = registration.status().key;
    let kvs = etcd.get_prefix("svc/").await.unwrap();
    assert!(
        kvs.iter()
            .any(|(k, v)| *k == key && *v == s[1].addr().to_string()),
        "{key} not in {kvs:?}"
    );
    etcd.put("svc/new", &s[2].addr().to_string()).await.unwrap();
    reaches_exactly(&ch, &[&s[0], &s[1], &s[2]]).await;

    // etcd rebuilt with no data: every lease is gone, and the registration comes back by
    // itself with a new lease (and so a new go-zero key).
    etcd.restart_empty().await.unwrap();
    let before = registration.status().registrations;
    wait_registered(&registration, before).await;
    let key2 = registration.status().key;
    assert_ne!(key, key2, "a new lease gives a new go-zero key");
    let kvs = etcd.get_prefix("svc/").await.unwrap();
    assert_eq!(kvs, [(key2, s[1].addr().to_string())]);
    reaches_exactly(&ch, &[&s[1]]).await;
    registration.deregister().await;
}

// 5. Revoke the lease, and delete the key: back within one keepalive period.
#[tokio::test]
async fn a_revoked_lease_or_a_deleted_key_is_back_within_one_keepalive_period() {
    let Some(etcd) = etcd("revoke").await else {
        return;
    };
    let s = servers(1);
    let keepalive = Duration::from_secs(1);
    let registrar = EtcdRegistrar::new([etcd.addr().to_string()])
        .format(EtcdFormat::Kratos)
        .ttl(Duration::from_secs(3))
        .keepalive_interval(keepalive)
        .backoff(fast_backoff());
    let registration = registrar
        .register(Instance::new("helloworld", s[0].addr().to_string()).with_id("i1"))
        .unwrap();
    registration.wait_registered(WAIT_BOUND).await.unwrap();
    let key = "/microservices/helloworld/i1";
    let value = etcd.get_prefix(key).await.unwrap();
    assert_eq!(value.len(), 1);
    let lease = etcd.lease_of(key).await.unwrap();
    assert_ne!(lease, 0);

    // An operator revokes the lease: the key goes with it, and comes back on a new lease.
    let before = registration.status().registrations;
    let t0 = tokio::time::Instant::now();
    etcd.revoke(lease).await.unwrap();
    wait_registered(&registration, before).await;
    assert!(t0.elapsed() <= keepalive, "took {:?}", t0.elapsed());
    assert_eq!(etcd.get_prefix(key).await.unwrap(), value);
    let lease2 = etcd.lease_of(key).await.unwrap();
    assert!(lease2 != 0 && lease2 != lease);

    // Someone deletes the key: it is put back on the same lease.
    let before = registration.status().registrations;
    let t0 = tokio::time::Instant::now();
    etcd.delete(key).await.unwrap();
    wait_registered(&registration, before).await;
    assert!(t0.elapsed() <= keepalive, "took {:?}", t0.elapsed());
    assert_eq!(etcd.get_prefix(key).await.unwrap(), value);
    assert_eq!(etcd.lease_of(key).await.unwrap(), lease2);

    // Someone overwrites it without the lease: ours is put back.
    etcd.put(key, "garbage").await.unwrap();
    let deadline = tokio::time::Instant::now() + keepalive;
    while etcd.get_prefix(key).await.unwrap() != value {
        assert!(tokio::time::Instant::now() < deadline, "not put back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Deregistration revokes the lease: the key is gone.
    registration.deregister().await;
    assert!(etcd.get_prefix(key).await.unwrap().is_empty());
}

// 6. A malformed value among good ones: the good ones serve, the bad one is reported.
#[tokio::test]
async fn malformed_values_are_skipped_and_reported() {
    let Some(etcd) = etcd("malformed").await else {
        return;
    };
    let s = servers(2);
    etcd.put("svc/good", &s[0].addr().to_string())
        .await
        .unwrap();
    etcd.put("svc/bad", "not an address").await.unwrap();
    let target = format!("etcd:///{}?key=svc", etcd.addr());
    let ch = channel(&target);
    reaches_exactly(&ch, &[&s[0]]).await;
    let e = wait_error(&ch, "the bad value", &["svc/bad", "not an address"]).await;
    assert!(e.contains("host:port"), "{e}");

    // kratos: one value is not JSON, one has no gRPC endpoint; the good one serves.
    etcd.put(
        "/microservices/hw/ok",
        &kratos_json("ok", "hw", &s[1], "null"),
    )
    .await
    .unwrap();
    etcd.put("/microservices/hw/junk", "{not json")
        .await
        .unwrap();
    etcd.put(
        "/microservices/hw/http",
        r#"{"id":"http","name":"hw","endpoints":["http://127.0.0.1:1"]}"#,
    )
    .await
    .unwrap();
    let target = format!("etcd:///{}?key=hw&format=kratos", etcd.addr());
    let ch = channel(&target);
    reaches_exactly(&ch, &[&s[1]]).await;
    let mut updates = watch(&target);
    let mut errors = Vec::new();
    let set = next_set(&mut updates, &mut errors).await;
    assert_eq!(set.len(), 1);
    // The problems follow the set.
    while errors.len() < 2 {
        match tokio::time::timeout(WAIT_BOUND, updates.next()).await {
            Ok(Some(Err(e))) => errors.push(e),
            other => panic!("expected the two problems, got {other:?}"),
        }
    }
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("/microservices/hw/junk")
                && e.contains("not a kratos service instance")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("/microservices/hw/http") && e.contains("no `grpc://` endpoint")),
        "{text:?}"
    );
    assert!(errors.iter().all(|e| e.kind() == ErrorKind::Malformed));
}

// 7. Auth: a wrong password and a role without read permission get clear errors.
#[tokio::test]
async fn auth_errors_name_the_user_and_the_prefix() {
    let Some(mut etcd) = etcd("auth").await else {
        return;
    };
    let s = servers(1);
    etcd.put("svc/1", &s[0].addr().to_string()).await.unwrap();
    etcd.enable_auth("svc/").await.unwrap();
    let a = etcd.addr();

    let ch = channel(&format!("etcd:///{a}?key=svc&user=reader&password=wrong"));
    let e = wait_error(&ch, "a wrong password", &["reader", "password"]).await;
    assert!(!e.contains("wrong"), "the password leaks: {e}");

    let ch = channel(&format!(
        "etcd:///{a}?key=svc&user=nobody&password=nobody-pw"
    ));
    let e = wait_error(
        &ch,
        "no read permission",
        &["nobody", "svc/", "permission denied"],
    )
    .await;
    assert!(e.contains("grant-permission"), "{e}");

    let ch = channel(&format!("etcd:///{a}?key=svc"));
    wait_error(&ch, "no user", &["auth enabled"]).await;

    // The reader may read: discovery works.
    let ch = channel(&format!(
        "etcd:///{a}?key=svc&user=reader&password=reader-pw"
    ));
    reaches_exactly(&ch, &[&s[0]]).await;

    // Registration needs write permission: the reader's fails with the advice, the
    // writer's succeeds.
    let reg = EtcdRegistrar::new([a.to_string()])
        .user("reader", "reader-pw")
        .backoff(fast_backoff())
        .register(Instance::new("svc", s[0].addr().to_string()))
        .unwrap();
    let e = reg
        .wait_registered(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Forbidden, "{e}");
    assert!(
        e.message().contains("readwrite") && e.message().contains("reader"),
        "{e}"
    );
    let reg = EtcdRegistrar::new([a.to_string()])
        .user("writer", "writer-pw")
        .register(Instance::new("svc", s[0].addr().to_string()))
        .unwrap();
    reg.wait_registered(WAIT_BOUND).await.unwrap();
}

// 8. Round trip: what meshless registers reads back byte for byte as go-zero and kratos
//    write it, with their TTLs.
#[tokio::test]
async fn registrations_read_back_in_the_go_zero_and_kratos_formats() {
    let Some(etcd) = etcd("round_trip").await else {
        return;
    };
    let s = servers(1);
    let a = etcd.addr().to_string();
    let addr = s[0].addr().to_string();

    let go_zero = EtcdRegistrar::new([a.clone()])
        .register(Instance::new("user.rpc", addr.clone()))
        .unwrap();
    go_zero.wait_registered(WAIT_BOUND).await.unwrap();
    let kvs = etcd.get_prefix("user.rpc/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    let lease = etcd.lease_of(&kvs[0].0).await.unwrap();
    assert_eq!(kvs[0], (format!("user.rpc/{lease}"), addr.clone()));
    assert_eq!(etcd.granted_ttl(lease).await.unwrap(), 10);

    let with_id = EtcdRegistrar::new([a.clone()])
        .register(Instance::new("order.rpc", addr.clone()).with_id("42"))
        .unwrap();
    with_id.wait_registered(WAIT_BOUND).await.unwrap();
    assert_eq!(
        etcd.get_prefix("order.rpc/").await.unwrap(),
        [("order.rpc/42".to_owned(), addr.clone())]
    );

    let kratos = EtcdRegistrar::new([a.clone()])
        .format(EtcdFormat::Kratos)
        .register(
            Instance::new("helloworld", addr.clone())
                .with_id("7c0e3b9a-1f2d-11ef-9a4b-0242ac120002")
                .with_version("v1.2.0")
                .with_metadata("region", "eu<1>")
                .with_weight(3),
        )
        .unwrap();
    kratos.wait_registered(WAIT_BOUND).await.unwrap();
    let kvs = etcd.get_prefix("/microservices/helloworld/").await.unwrap();
    assert_eq!(
        kvs,
        [(
            "/microservices/helloworld/7c0e3b9a-1f2d-11ef-9a4b-0242ac120002".to_owned(),
            format!(
                r#"{{"id":"7c0e3b9a-1f2d-11ef-9a4b-0242ac120002","name":"helloworld","version":"v1.2.0","metadata":{{"region":"eu\u003c1\u003e","weight":"3"}},"endpoints":["grpc://{addr}"]}}"#
            )
        )]
    );
    let lease = etcd.lease_of(&kvs[0].0).await.unwrap();
    assert_eq!(etcd.granted_ttl(lease).await.unwrap(), 15);

    // And meshless reads both back.
    let ch = channel(&format!("etcd:///{a}?key=helloworld&format=kratos"));
    reaches_exactly(&ch, &[&s[0]]).await;
    let ch = channel(&format!("etcd:///{a}?key=user.rpc"));
    reaches_exactly(&ch, &[&s[0]]).await;

    // Deregistration revokes: the keys are gone.
    go_zero.deregister().await;
    kratos.deregister().await;
    with_id.deregister().await;
    assert!(etcd.get_prefix("user.rpc/").await.unwrap().is_empty());
    assert!(etcd.get_prefix("/microservices/").await.unwrap().is_empty());
}

// An etcd that is down from the start: a clear error, no endpoints, no hang; it heals
// when etcd comes up. And a paused member (SIGSTOP: its TCP connection stays open) is
// noticed by the progress check.
#[tokio::test]
async fn a_down_or_silent_etcd_gets_a_clear_error_and_heals() {
    let Some(etcd) = etcd("down").await else {
        return;
    };
    let s = servers(1);
    let dead = dead_addr();
    let ch = channel(&format!(
        "etcd:///{dead}?key=svc&dial-timeout=200ms&timeout=300ms"
    ));
    let e = wait_error(&ch, "etcd down", &[&dead.to_string(), "cannot"]).await;
    assert!(e.contains("svc/"), "{e}");
    assert!(ch.status().endpoints.is_empty());

    etcd.put("svc/1", &s[0].addr().to_string()).await.unwrap();
    let mut updates = watch(&format!("etcd:///{}?key=svc&timeout=500ms", etcd.addr()));
    wait_set(&mut updates, &[&s[0]]).await;
    etcd.pause().unwrap();
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while !errors
        .iter()
        .any(|e: &DiscoveryError| e.message().contains("progress"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent member was not noticed: {errors:?}"
        );
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(100), updates.next()).await
        {
            match item {
                Err(e) => errors.push(e),
                Ok(u) => panic!("an update from a paused etcd: {u:?}"),
            }
        }
    }
    etcd.resume().unwrap();
    // After it comes back, the set is confirmed (sent again) and changes flow.
    wait_set(&mut updates, &[&s[0]]).await;
    etcd.delete("svc/1").await.unwrap();
    wait_set(&mut updates, &[]).await;
}

#[tokio::test]
async fn bad_targets_get_errors_that_name_the_bad_part() {
    for (target, want) in [
        ("etcd:///127.0.0.1:2379", "no key"),
        ("etcd:///127.0.0.1?key=a", "has no port"),
        (
            "etcd:///127.0.0.1:2379?key=a&format=zookeeper",
            "unknown format",
        ),
        (
            "etcd:///127.0.0.1:2379?key=a&passwd=x",
            "unknown parameter `passwd`",
        ),
        ("etcd:///127.0.0.1:2379?key=a&user=u", "without `password`"),
    ] {
        let e = Channel::builder(target).build().unwrap_err().to_string();
        assert!(e.contains(want), "{target}: {e}");
    }
    let e = EtcdRegistrar::new(["127.0.0.1:2379"])
        .register(Instance::new("svc", "0.0.0.0:80"))
        .unwrap_err();
    assert!(e.to_string().contains("unspecified"), "{e}");
}

// TLS to etcd with a client certificate (`--client-cert-auth`), from go-zero's file options:
// discovery and registration work; without the client certificate, or without the CA,
// the error says what failed.
#[tokio::test]
async fn tls_to_etcd_with_a_client_certificate() {
    if !meshless_integration::etcd::available() {
        let _ = etcd("tls").await;
        return;
    }
    let ca = meshless_integration::tls::TestCa::new("etcd-ca");
    let etcd = EtcdServer::start_tls(&ca)
        .await
        .expect("start etcd with TLS");
    let f = etcd.tls_files().unwrap().clone();
    let s = servers(1);
    let a = etcd.addr();
    let files = format!(
        "ca-file={}&cert-file={}&key-file={}",
        f.ca.display(),
        f.cert.display(),
        f.key.display()
    );
    let registration = EtcdRegistrar::from_target(&format!("etcd://{a}?{files}"))
        .unwrap()
        .register(Instance::new("svc", s[0].addr().to_string()))
        .unwrap();
    registration.wait_registered(WAIT_BOUND).await.unwrap();
    let kvs = etcd.get_prefix("svc/").await.unwrap();
    assert_eq!(kvs.len(), 1, "{kvs:?}");
    let ch = channel(&format!("etcd:///{a}?key=svc&{files}"));
    reaches_exactly(&ch, &[&s[0]]).await;

    // Plain h2c to a TLS etcd, and TLS without our certificate: clear errors, no endpoints.
    let ch = channel(&format!(
        "etcd:///{a}?key=svc&timeout=500ms&dial-timeout=500ms"
    ));
    wait_error(
        &ch,
        "h2c to a TLS etcd",
        &["cannot", "svc/", "give `ca-file=`"],
    )
    .await;
    assert!(ch.status().endpoints.is_empty());
    let ch = channel(&format!(
        "etcd:///{a}?key=svc&ca-file={}&timeout=500ms&dial-timeout=500ms",
        f.ca.display()
    ));
    wait_error(
        &ch,
        "no client certificate",
        &[
            "cannot",
            "svc/",
            "--client-cert-auth also needs `cert-file=`",
        ],
    )
    .await;
    let ch = channel(&format!("etcd:///{a}?key=svc&ca-file=/nonexistent/ca.pem"));
    wait_error(
        &ch,
        "a missing CA file",
        &["/nonexistent/ca.pem", "ca-file"],
    )
    .await;
    registration.deregister().await;
    assert!(etcd.get_prefix("svc/").await.unwrap().is_empty());
}
