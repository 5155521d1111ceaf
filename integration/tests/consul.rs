//! Consul discovery and registration end to end: real tonic servers, `meshless::Channel` on
//! `consul:` targets, and the loopback Consul agent double (integration/src/consul.rs).
//!
//! Set `MESHLESS_TEST_CONSUL=http://127.0.0.1:8500` (a dev agent: `consul agent -dev`) to
//! run the tests that need no fault injection against a real agent; the others print that
//! they need the double and pass. The registered addresses are on this machine's loopback,
//! so the agent must run here too (TCP and gRPC checks connect to them).

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use http::Method;
use meshless::Channel;
use meshless::discovery::consul::{ConsulFormat, ConsulRegistrar, GrpcCheck};
use meshless::discovery::{
    Address, DiscoveryError, Endpoint, Instance, Registrar, RegistrationState, Registry, Target,
    Update,
};
use meshless_integration::consul::{Acl, AclToken, ConsulAgent, Fault, request};
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::ServerHandle;
use serde_json::{Value, json};

/// The double, or a real agent from `MESHLESS_TEST_CONSUL`.
enum Consul {
    Double(ConsulAgent),
    Real(String),
}

impl Consul {
    async fn start() -> Consul {
        match std::env::var("MESHLESS_TEST_CONSUL") {
            Ok(url) if !url.is_empty() => {
                let addr = url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned();
                Consul::Real(addr)
            }
            _ => Consul::Double(ConsulAgent::start_new().await.expect("start the double")),
        }
    }

    /// The double, or `None` (and a note) on a real agent.
    fn double(&self, test: &str) -> Option<&ConsulAgent> {
        match self {
            Consul::Double(d) => Some(d),
            Consul::Real(_) => {
                eprintln!("{test}: needs the Consul double (fault injection); skipped");
                None
            }
        }
    }

    fn addr(&self) -> String {
        match self {
            Consul::Double(d) => d.addr().to_string(),
            Consul::Real(a) => a.clone(),
        }
    }

    /// A unique service name, so runs against a shared real agent do not collide.
    fn service(&self, base: &str) -> String {
        format!("{base}-{}", std::process::id())
    }

    async fn put(&self, path: &str, body: Value) {
        let (code, _, text) = request(&self.addr(), Method::PUT, path, Some(body), None)
            .await
            .expect("agent request");
        assert_eq!(code, 200, "PUT {path}: {}", String::from_utf8_lossy(&text));
    }

    async fn get(&self, path: &str) -> Value {
        let (code, _, text) = request(&self.addr(), Method::GET, path, None, None)
            .await
            .expect("agent request");
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&text));
        serde_json::from_slice(&text).expect("JSON")
    }

    async fn deregister(&self, id: &str) {
        let _ = request(
            &self.addr(),
            Method::PUT,
            &format!("/v1/agent/service/deregister/{id}"),
            None,
            None,
        )
        .await;
    }

    fn channel(&self, service: &str, params: &str) -> Channel {
        Channel::builder(format!("consul://{}/{service}?{params}", self.addr()))
            .policy("round_robin")
            .backoff(fast_backoff())
            .queue_timeout(Duration::from_secs(3))
            .build()
            .expect("channel")
    }
}

/// What go-zero's zero-contrib `zrpc/registry/consul/register.go` writes: ID
/// `<key>-<host>-<port>`, one TTL check with the service id as CheckID.
fn go_zero_record(service: &str, s: &ServerHandle, ttl: &str) -> Value {
    let a = s.addr();
    json!({
        "ID": format!("{service}-{}-{}", a.ip(), a.port()),
        "Name": service,
        "Tags": ["grpc", "team=payments"],
        "Meta": {"region": "eu-1"},
        "Address": a.ip().to_string(),
        "Port": a.port(),
        "Weights": {"Passing": 3, "Warning": 1},
        "Check": {
            "CheckID": format!("{service}-{}-{}", a.ip(), a.port()),
            "TTL": ttl,
            "Status": "passing",
            "DeregisterCriticalServiceAfter": "1m",
        },
    })
}

/// What kratos's `contrib/registry/consul/client.go` writes: the instance's ID and name,
/// `version=<v>` tag, the metadata as Meta, the gRPC endpoint in TaggedAddresses, a TCP
/// check and a TTL check `service:<id>` (passed right after).
fn kratos_record(service: &str, id: &str, s: &ServerHandle) -> Value {
    let a = s.addr();
    json!({
        "ID": id,
        "Name": service,
        "Tags": ["version=v2"],
        "Meta": {"weight": "5", "app": "helloworld"},
        "Address": a.ip().to_string(),
        "Port": a.port(),
        "TaggedAddresses": {"grpc": {"Address": format!("grpc://{a}"), "Port": a.port()}},
        "Checks": [
            {"TCP": a.to_string(), "Interval": "1s", "Timeout": "5s",
             "DeregisterCriticalServiceAfter": "600s"},
            {"CheckID": format!("service:{id}"), "TTL": "30s",
             "DeregisterCriticalServiceAfter": "600s"},
        ],
    })
}

/// The next endpoint set a discovery of `target` sends, skipping errors, bounded.
async fn next_set(
    updates: &mut meshless::discovery::UpdateStream,
    errors: &mut Vec<DiscoveryError>,
) -> Vec<Endpoint> {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let item = tokio::time::timeout_at(deadline, updates.next())
            .await
            .expect("an update within the bound")
            .expect("the stream does not end");
        match item {
            Ok(Update::Reset(eps)) => return eps,
            Ok(other) => panic!("Consul discovery sends whole sets, got {other:?}"),
            Err(e) => errors.push(e),
        }
    }
}

fn watch(target: &str) -> meshless::discovery::UpdateStream {
    let target = Target::parse(target).expect("target");
    Registry::default()
        .build(&target)
        .expect("discovery")
        .watch()
}

async fn calls_succeed(channel: &Channel, n: usize) {
    let mut client = GreeterClient::new(channel.clone());
    for i in 0..n {
        if let Err(e) = hello(&mut client).await {
            panic!("call {i} failed: {e}; status {:?}", channel.status());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_zero_and_kratos_registrations_are_discovered_with_weights_tags_and_meta() {
    let c = Consul::start().await;
    let svc = c.service("mixed");
    let s = servers(2);
    c.put(
        "/v1/agent/service/register",
        go_zero_record(&svc, &s[0], "30s"),
    )
    .await;
    let kratos_id = format!("{svc}-kratos-1");
    c.put(
        "/v1/agent/service/register",
        kratos_record(&svc, &kratos_id, &s[1]),
    )
    .await;
    // kratos passes its TTL check right after registering (client.go, Register).
    c.put(
        &format!("/v1/agent/check/pass/service:{kratos_id}"),
        json!(null),
    )
    .await;

    let mut updates = watch(&format!("consul://{}/{svc}?wait=2s", c.addr()));
    let mut errors = Vec::new();
    let mut set = next_set(&mut updates, &mut errors).await;
    // The kratos instance passes once its TCP check has run.
    while set.len() < 2 {
        set = next_set(&mut updates, &mut errors).await;
    }
    assert!(errors.is_empty(), "{errors:?}");
    let by = |s: &ServerHandle| {
        set.iter()
            .find(|e| e.addr == Address::from(s.addr()))
            .cloned()
            .unwrap_or_else(|| panic!("{} not discovered in {set:?}", s.addr()))
    };
    let gz = by(&s[0]);
    assert_eq!(gz.weight, 3, "Weights.Passing");
    assert_eq!(
        gz.metadata.get("meta.region").map(String::as_str),
        Some("eu-1")
    );
    assert_eq!(
        gz.metadata.get("consul.tags").map(String::as_str),
        Some("grpc,team=payments")
    );
    assert!(
        gz.metadata
            .get("consul.dc")
            .is_some_and(|dc| !dc.is_empty()),
        "{gz:?}"
    );
    assert!(
        gz.metadata
            .get("consul.node")
            .is_some_and(|n| !n.is_empty()),
        "{gz:?}"
    );
    let kr = by(&s[1]);
    assert_eq!(kr.weight, 5, "kratos Meta.weight overrides Weights.Passing");
    assert_eq!(kr.metadata.get("version").map(String::as_str), Some("v2"));
    assert_eq!(
        kr.metadata.get("meta.app").map(String::as_str),
        Some("helloworld")
    );
    assert_eq!(
        kr.metadata.get("consul.id").map(String::as_str),
        Some(kratos_id.as_str())
    );

    // And a channel calls both.
    let channel = c.channel(&svc, "wait=2s");
    wait_ready(&channel, 2).await;
    calls_succeed(&channel, 20).await;
    assert!(s[0].calls() > 0 && s[1].calls() > 0);
    c.deregister(&kratos_id).await;
    c.deregister(&format!(
        "{svc}-{}-{}",
        s[0].addr().ip(),
        s[0].addr().port()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_that_stops_passing_removes_the_endpoint_and_passing_restores_it() {
    let c = Consul::start().await;
    let svc = c.service("ttl");
    let s = servers(2);
    let ids: Vec<String> = s
        .iter()
        .map(|s| format!("{svc}-{}-{}", s.addr().ip(), s.addr().port()))
        .collect();
    for srv in &s {
        c.put(
            "/v1/agent/service/register",
            go_zero_record(&svc, srv, "1s"),
        )
        .await;
    }
    let channel = c.channel(&svc, "wait=5s");
    wait_ready(&channel, 2).await;
    let gone = Address::from(s[1].addr());
    // s0 keeps passing; s1 stops, and its TTL expires.
    let keep = ids[0].clone();
    let addr = c.addr();
    let passer = tokio::spawn(async move {
        loop {
            let _ = request(
                &addr,
                Method::PUT,
                &format!("/v1/agent/check/pass/{keep}"),
                None,
                None,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    wait_until("s1 removed after its TTL expired", || {
        channel.status().endpoint(&gone).is_none()
    })
    .await;
    let before = s[1].calls();
    calls_succeed(&channel, 20).await;
    assert_eq!(s[1].calls(), before, "an expired instance got calls");
    // Passing again restores it.
    c.put(&format!("/v1/agent/check/pass/{}", ids[1]), json!(null))
        .await;
    wait_ready(&channel, 2).await;
    passer.abort();
    for id in &ids {
        c.deregister(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_passing_set_after_a_good_one_is_applied() {
    let c = Consul::start().await;
    let svc = c.service("empty");
    let s = servers(1);
    let id = format!("{svc}-{}-{}", s[0].addr().ip(), s[0].addr().port());
    c.put(
        "/v1/agent/service/register",
        go_zero_record(&svc, &s[0], "30s"),
    )
    .await;
    let channel = c.channel(&svc, "wait=5s");
    wait_ready(&channel, 1).await;
    c.put(&format!("/v1/agent/check/fail/{id}"), json!(null))
        .await;
    wait_until("the endpoint removed", || {
        channel.status().endpoints.is_empty()
    })
    .await;
    let status = channel.status();
    assert!(
        status.discovery_error.is_none(),
        "Consul said no instance passes; that is not an error: {status:?}"
    );
    let mut client = GreeterClient::new(channel.clone());
    let err = hello(&mut client).await.expect_err("no endpoints");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    c.deregister(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_going_backwards_resets_it() {
    let c = Consul::start().await;
    let Some(agent) = c.double("the_index_going_backwards_resets_it") else {
        return;
    };
    let svc = "restored";
    let s = servers(2);
    for _ in 0..20 {
        // Move the index well up.
        c.put(
            "/v1/agent/service/register",
            go_zero_record(svc, &s[0], "30s"),
        )
        .await;
    }
    let channel = c.channel(svc, "wait=60s");
    wait_ready(&channel, 1).await;
    let high = agent.index_of(svc);
    assert!(high > 20);
    // Once the client blocks on that index, a server restored from an older snapshot
    // moves every index below it (a query that arrives later blocks for its whole wait,
    // on Consul too, before it sees the lower index).
    let blocking = format!("index={high}&");
    wait_until("the client blocks on the high index", || {
        agent.requests().iter().any(|r| r.contains(&blocking))
    })
    .await;
    agent.restore_index(3);
    // A change after the restore has index 4, still below what the client holds; a client
    // that kept its index would block for the whole minute.
    c.put(
        "/v1/agent/service/register",
        go_zero_record(svc, &s[1], "30s"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    while channel.status().ready_count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change after the restore was not seen: {:?}\nrequests: {:#?}",
            channel.status(),
            agent.requests()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reqs = agent.requests();
    assert!(
        reqs.iter().any(|r| r.contains("index=1&")),
        "the client never restarted from index 1: {reqs:?}"
    );
    assert!(
        !reqs.iter().any(|r| r.contains("index=0")),
        "an index below 1 was used: {reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_that_forgets_makes_the_registration_come_back() {
    let mut c = Consul::start().await;
    let Consul::Double(agent) = &mut c else {
        eprintln!("needs the Consul double; skipped");
        return;
    };
    let s = servers(1);
    let registrar = ConsulRegistrar::new(agent.addr().to_string())
        .ttl(Duration::from_secs(1))
        .backoff(fast_backoff());
    let registration = registrar
        .register(Instance::new("phoenix", s[0].addr().to_string()).with_version("v1"))
        .unwrap();
    registration
        .wait_registered(WAIT_BOUND)
        .await
        .expect("registered");
    let channel = Channel::builder(format!("consul://{}/phoenix?wait=5s", agent.addr()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;
    agent.restart_forgetting().await.unwrap();
    assert!(agent.service_ids().is_empty());
    // The next TTL pass gets 404: the registrar registers again, by itself.
    wait_until("the service registered again", || {
        !agent.service_ids().is_empty()
    })
    .await;
    wait_until("two registrations counted", || {
        registration.status().registrations >= 2
    })
    .await;
    assert_eq!(registration.status().state, RegistrationState::Registered);
    wait_ready(&channel, 1).await;
    calls_succeed(&channel, 5).await;
    // Deregistering removes it from the agent.
    registration.deregister().await;
    assert!(agent.service_ids().is_empty(), "{:?}", agent.service_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_gives_a_clear_error_and_fixing_the_token_heals_without_a_restart() {
    let c = Consul::start().await;
    let Some(agent) = c.double("forbidden") else {
        return;
    };
    let s = servers(1);
    c.put(
        "/v1/agent/service/register",
        go_zero_record("billing", &s[0], "30s"),
    )
    .await;
    let channel = c.channel("billing", "wait=2s&token=s3cr3t-token&max-backoff=200ms");
    wait_ready(&channel, 1).await;

    // ACLs turn on and the token does not exist (yet): 403 "ACL not found".
    agent.set_acl(Some(Acl::default()));
    let e = wait_error(&channel, "403", &["403", "service:read", "billing"]).await;
    assert!(e.contains("ACL not found"), "{e}");
    assert!(
        !e.contains("s3cr3t"),
        "the token leaked into the error: {e}"
    );
    // The last known set keeps serving.
    calls_succeed(&channel, 5).await;

    // The token exists but lacks service:read: Consul filters the instances away.
    agent.set_acl(Some(Acl {
        tokens: vec![AclToken::new("s3cr3t-token").read("other")],
        ..Default::default()
    }));
    wait_error(
        &channel,
        "ACL filtering",
        &["filtered", "service:read", "billing"],
    )
    .await;
    assert_eq!(
        channel.status().ready_count(),
        1,
        "an ACL-filtered empty list was applied"
    );
    calls_succeed(&channel, 5).await;

    // The operator grants it: discovery heals by itself.
    agent.set_acl(Some(Acl {
        tokens: vec![AclToken::new("s3cr3t-token").read("billing")],
        ..Default::default()
    }));
    wait_until("the error clears", || {
        channel.status().discovery_error.is_none()
    })
    .await;
    assert_eq!(channel.status().ready_count(), 1);

    // A registrar whose token lacks service:write says so.
    let registration = ConsulRegistrar::new(agent.addr().to_string())
        .token("s3cr3t-token")
        .backoff(fast_backoff())
        .register(Instance::new("billing", s[0].addr().to_string()))
        .unwrap();
    wait_until("the registration fails", || {
        registration.status().last_error.is_some()
    })
    .await;
    let e = registration.status().last_error.unwrap().to_string();
    assert!(e.contains("service:write") && e.contains("billing"), "{e}");
    // Never registered yet: still `Registering`, with the error to read.
    assert_eq!(registration.status().state, RegistrationState::Registering);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_is_survived() {
    let c = Consul::start().await;
    let Some(agent) = c.double("malformed") else {
        return;
    };
    let s = servers(2);
    c.put(
        "/v1/agent/service/register",
        go_zero_record("shaky", &s[0], "30s"),
    )
    .await;
    let channel = c.channel("shaky", "wait=2s&max-backoff=200ms");
    wait_ready(&channel, 1).await;
    // Not JSON.
    agent.set_health_body(Some("<html>502 Bad Gateway</html>"));
    wait_error(&channel, "a malformed body", &["shaky"]).await;
    assert_eq!(channel.status().ready_count(), 1);
    calls_succeed(&channel, 5).await;
    // A list with one garbage entry and one good one: the good one serves.
    let good = json!({
        "Node": {"Node": "n", "Address": "127.0.0.1", "Datacenter": "dc1"},
        "Service": {"ID": "b", "Service": "shaky", "Address": "127.0.0.1",
                    "Port": s[1].addr().port(), "Tags": [], "Meta": {}},
        "Checks": [],
    });
    let garbage = json!({"Service": {"ID": "x", "Port": 99999999}, "Node": 7});
    agent.set_health_body(Some(&json!([garbage, good, "what"]).to_string()));
    let b = Address::from(s[1].addr());
    wait_until("the good entry applied", || {
        channel.status().endpoint(&b).is_some()
    })
    .await;
    wait_ready(&channel, 1).await;
    let e = wait_error(&channel, "the garbage entry reported", &["skipped"]).await;
    assert!(e.contains("shaky"), "{e}");
    agent.set_health_body(None);
    wait_until("the real list back", || {
        channel
            .status()
            .endpoint(&Address::from(s[0].addr()))
            .is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_is_down_or_failing_keeps_the_last_set_serving() {
    let mut c = Consul::start().await;
    let Consul::Double(agent) = &mut c else {
        eprintln!("needs the Consul double; skipped");
        return;
    };
    let s = servers(1);
    let body = go_zero_record("steady", &s[0], "30s");
    let addr = agent.addr().to_string();
    let (code, _, _) = request(
        &addr,
        Method::PUT,
        "/v1/agent/service/register",
        Some(body),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    let channel = Channel::builder(format!("consul://{addr}/steady?wait=2s&max-backoff=200ms"))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    wait_ready(&channel, 1).await;

    // Connections dropped mid-query: the loop retries.
    agent.drop_connections();
    calls_succeed(&channel, 5).await;

    // 5xx.
    agent.set_fault(Some(Fault {
        code: 500,
        body: "rpc error making call: No cluster leader".into(),
    }));
    let e = wait_error(&channel, "the 500", &["500", "No cluster leader"]).await;
    assert!(e.contains("steady"), "{e}");
    calls_succeed(&channel, 5).await;
    agent.set_fault(None);
    wait_until("healed after the 500s", || {
        channel.status().discovery_error.is_none()
    })
    .await;

    // Down.
    agent.stop();
    wait_error(&channel, "the outage", &["reachable"]).await;
    calls_succeed(&channel, 5).await;
    assert_eq!(channel.status().ready_count(), 1);
    agent.start().await.unwrap();
    wait_until("healed after the outage", || {
        channel.status().discovery_error.is_none()
    })
    .await;
    calls_succeed(&channel, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_gives_go_zero_and_kratos_readers_what_they_need() {
    let c = Consul::start().await;
    let s = servers(2);
    let gz_name = c.service("rt-gozero");
    let kr_name = c.service("rt-kratos");
    let gz = ConsulRegistrar::new(c.addr())
        .backoff(fast_backoff())
        .register(
            Instance::new(&gz_name, s[0].addr().to_string())
                .with_metadata("region", "eu-1")
                .with_weight(4),
        )
        .unwrap();
    let kr = ConsulRegistrar::new(c.addr())
        .format(ConsulFormat::Kratos)
        .backoff(fast_backoff())
        .register(
            Instance::new(&kr_name, s[1].addr().to_string())
                .with_id("kr-1")
                .with_version("v1.2.0")
                .with_metadata("app", "hello")
                .with_weight(7),
        )
        .unwrap();
    gz.wait_registered(WAIT_BOUND).await.unwrap();
    kr.wait_registered(WAIT_BOUND).await.unwrap();

    // go-zero's reader (zero-contrib zrpc/resolver/internal/consul, watch.go): the
    // passing health entries, `Service.Address` (else `Node.Address`) and `Service.Port`.
    let a0 = s[0].addr();
    let list = c
        .get(&format!("/v1/health/service/{gz_name}?passing=1"))
        .await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let svc = &list[0]["Service"];
    assert_eq!(svc["ID"], format!("{gz_name}-{}-{}", a0.ip(), a0.port()));
    assert_eq!(svc["Service"], gz_name.as_str());
    assert_eq!(svc["Address"], a0.ip().to_string());
    assert_eq!(svc["Port"], a0.port());
    assert_eq!(svc["Meta"]["region"], "eu-1");
    assert_eq!(svc["Weights"]["Passing"], 4);
    let checks = list[0]["Checks"].as_array().unwrap();
    assert!(
        checks.iter().all(|c| c["Status"] == "passing"),
        "{checks:?}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["CheckID"] == svc["ID"] && c["Type"] == "ttl"),
        "go-zero's TTL check has the service id as CheckID: {checks:?}"
    );

    // kratos's reader (contrib/registry/consul/client.go, Service): `version` from the
    // `version=` tag, metadata from Meta, endpoints from TaggedAddresses other than the
    // lan/wan ones; the gRPC client takes the `grpc://` endpoint.
    let a1 = s[1].addr();
    let list = c
        .get(&format!("/v1/health/service/{kr_name}?passing=1"))
        .await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let svc = &list[0]["Service"];
    assert_eq!(svc["ID"], "kr-1");
    assert_eq!(svc["Service"], kr_name.as_str());
    let tags: Vec<&str> = svc["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let version = tags
        .iter()
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| *k == "version")
        .map(|(_, v)| v);
    assert_eq!(version, Some("v1.2.0"));
    assert_eq!(svc["Meta"]["app"], "hello");
    assert_eq!(svc["Meta"]["weight"], "7");
    let endpoints: Vec<&str> = svc["TaggedAddresses"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !["lan_ipv4", "wan_ipv4", "lan_ipv6", "wan_ipv6"].contains(&k.as_str()))
        .filter_map(|(_, v)| v["Address"].as_str())
        .collect();
    assert_eq!(endpoints, vec![format!("grpc://{a1}").as_str()]);
    let checks = list[0]["Checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["CheckID"] == "service:kr-1" && c["Type"] == "ttl"),
        "kratos's TTL check is service:<id>: {checks:?}"
    );
    assert!(
        checks.iter().any(|c| c["Type"] == "tcp"),
        "kratos registers a TCP check: {checks:?}"
    );

    // And meshless reads both back.
    let mut updates = watch(&format!("consul://{}/{kr_name}", c.addr()));
    let set = next_set(&mut updates, &mut Vec::new()).await;
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].addr, Address::from(a1));
    assert_eq!(set[0].weight, 7);
    assert_eq!(
        set[0].metadata.get("version").map(String::as_str),
        Some("v1.2.0")
    );

    gz.deregister().await;
    kr.deregister().await;
    let left = c.get("/v1/agent/services").await;
    assert!(
        left.get(format!("{gz_name}-{}-{}", a0.ip(), a0.port()))
            .is_none()
            && left.get("kr-1").is_none(),
        "deregistered services remain: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_check_run_by_the_agent_follows_the_server() {
    let c = Consul::start().await;
    let Some(agent) = c.double("grpc check") else {
        return;
    };
    let mut s = servers(1);
    let registration = ConsulRegistrar::new(c.addr())
        .grpc_check(GrpcCheck {
            interval: Duration::from_millis(100),
            service: String::new(),
            tls: false,
        })
        .backoff(fast_backoff())
        .register(Instance::new("checked", s[0].addr().to_string()))
        .unwrap();
    registration.wait_registered(WAIT_BOUND).await.unwrap();
    let id = ConsulRegistrar::new(c.addr())
        .service_id(&Instance::new("checked", s[0].addr().to_string()));
    let grpc = format!("{id}:grpc");
    wait_until("the gRPC check passes", || {
        agent.check_status(&grpc).as_deref() == Some("passing")
    })
    .await;
    let channel = c.channel("checked", "wait=5s");
    wait_ready(&channel, 1).await;
    // The server goes away (its TTL is still passed): the agent's gRPC check fails and
    // the instance leaves the passing set.
    s[0].kill();
    wait_until("the gRPC check fails", || {
        agent.check_status(&grpc).as_deref() == Some("critical")
    })
    .await;
    wait_until("the endpoint removed", || {
        channel.status().endpoints.is_empty()
    })
    .await;
    registration.deregister().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_and_registrations_get_errors_that_name_the_bad_part() {
    for (target, needle) in [
        ("consul://127.0.0.1:8500", "service"),
        ("consul://127.0.0.1:8500/svc?wiat=1s", "wiat"),
        ("consul://127.0.0.1:8500/svc?wait=forever", "wait"),
        ("consul://127.0.0.1:99999/svc", "99999"),
        ("consul://127.0.0.1:8500/svc?health=sick", "health"),
    ] {
        let e = Channel::builder(target).build().expect_err(target);
        assert!(
            e.to_string().contains(needle),
            "{target}: the error does not name `{needle}`: {e}"
        );
    }
    let registrar = ConsulRegistrar::new("127.0.0.1:8500");
    for (instance, needle) in [
        (Instance::new("", "127.0.0.1:1"), "name"),
        (Instance::new("svc", "127.0.0.1"), "port"),
        (Instance::new("svc", "0.0.0.0:80"), "0.0.0.0"),
    ] {
        let e = registrar
            .register(instance.clone())
            .expect_err("bad instance");
        assert!(
            e.to_string().contains(needle),
            "{instance:?}: the error does not name `{needle}`: {e}"
        );
    }
    let e = ConsulRegistrar::from_target("consul://127.0.0.1:8500?format=grpc-go").unwrap_err();
    assert!(e.to_string().contains("grpc-go"), "{e}");
}
