//! A client built from a config file, against real servers: its service config's policy,
//! method timeouts and retries apply, per method.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::StreamExt;
use meshless::config::{Config, Format};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::TestServer;
use tonic::{Code, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_client_applies_its_service_config_per_method() {
    // Every other attempt fails UNAVAILABLE; the server records each attempt's deadline.
    let deadlines: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let n = Arc::new(AtomicU64::new(0));
    let record = deadlines.clone();
    let servers: Vec<_> = (0..2)
        .map(|i| {
            let (record, n) = (record.clone(), n.clone());
            TestServer::new(format!("s{i}"))
                .on_call(move |info| {
                    let (record, n) = (record.clone(), n.clone());
                    async move {
                        let t = info
                            .metadata
                            .get("grpc-timeout")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        record.lock().unwrap().push(t);
                        if n.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                            return Err(Status::unavailable("every other attempt"));
                        }
                        Ok(())
                    }
                })
                .spawn()
                .unwrap()
        })
        .collect();
    let text = format!(
        r#"
defaults:
  connectTimeout: ${{CONNECT:-2s}}
clients:
  greeter:
    target: {target}
    serviceConfig:
      loadBalancingConfig: [{{round_robin: {{}}}}]
      methodConfig:
        - name: [{{service: greeter.v1.Greeter, method: SayHello}}]
          timeout: 3s
          retryPolicy:
            maxAttempts: 3
            initialBackoff: 1ms
            maxBackoff: 5ms
            backoffMultiplier: 2
            retryableStatusCodes: [UNAVAILABLE]
"#,
        target = static_target(&servers)
    );
    let config = Config::from_str(&text, Format::Yaml).unwrap();
    assert_eq!(config.policy("greeter"), Some("round_robin"));
    let client = config.client("greeter").unwrap();
    wait_ready(client.channel(), 2).await;
    let mut greeter = GreeterClient::new(client.clone());

    // SayHello: retried, with the method's 3 s deadline.
    for _ in 0..4 {
        greeter.say_hello(HelloRequest::default()).await.unwrap();
    }
    {
        let seen = deadlines.lock().unwrap();
        assert_eq!(seen.len(), 8, "each call took two attempts: {seen:?}");
        for t in seen.iter() {
            let t = micros(t.as_deref().expect("a deadline"));
            assert!(
                t > 2_000_000 && t <= 3_000_000,
                "the method's 3 s: {seen:?}"
            );
        }
    }
    // StreamReplies has no entry: one attempt, no deadline.
    let before = deadlines.lock().unwrap().len();
    let req = HelloRequest {
        name: "x".into(),
        count: 1,
        interval_ms: 0,
    };
    let err = match greeter.stream_replies(req).await {
        Err(e) => e,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(err.code(), Code::Unavailable);
    let seen = deadlines.lock().unwrap();
    assert_eq!(seen.len(), before + 1, "not retried");
    assert_eq!(seen[before], None, "no timeout configured for it");
    assert!(
        config
            .client("nope")
            .unwrap_err()
            .to_string()
            .contains("no client `nope` in the config (it has: greeter)")
    );
}

/// A `grpc-timeout` value in microseconds (the encodings a 3 s deadline can take).
fn micros(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "S" => n * 1_000_000,
        "m" => n * 1_000,
        "u" => n,
        "n" => n / 1_000,
        other => panic!("unit {other} in {v}"),
    }
}

/// A directory laid out as Kubernetes mounts a ConfigMap: `clients.yaml` -> `..data/clients.yaml`,
/// `..data` -> `..N`; `swap` writes a new version the way the kubelet does (a new `..N`, a
/// new `..data` symlink renamed over the old one).
struct ConfigMapDir {
    dir: std::path::PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "meshless-reload-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = ConfigMapDir { dir, version: 0 };
        d.swap(text);
        std::os::unix::fs::symlink("..data/clients.yaml", d.file()).unwrap();
        d
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.join("clients.yaml")
    }

    fn swap(&mut self, text: &str) {
        self.version += 1;
        let v = format!("..{}", self.version);
        std::fs::create_dir_all(self.dir.join(&v)).unwrap();
        std::fs::write(self.dir.join(&v).join("clients.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn reload_yaml(target: &str, policy: &str, timeout: &str) -> String {
    format!(
        "clients:\n  greeter:\n    target: {target}\n    serviceConfig:\n      loadBalancingConfig: [{{{policy}: {{}}}}]\n      methodConfig:\n        - name: [{{service: greeter.v1.Greeter}}]\n          timeout: {timeout}\n"
    )
}

/// Live reload under load, through ConfigMap-style symlink swaps: a method timeout changes
/// on the live channel (no new connection); a policy change and a target change build a new
/// channel and move calls to it; an invalid file changes nothing and says why. No call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_call() {
    use meshless::config::ConfigWatch;
    use std::time::Duration;

    let last_timeout: Arc<Mutex<Option<String>>> = Arc::default();
    let server = |name: &str| {
        let last = last_timeout.clone();
        TestServer::new(name)
            .on_call(move |info| {
                let last = last.clone();
                async move {
                    *last.lock().unwrap() = info
                        .metadata
                        .get("grpc-timeout")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    Ok(())
                }
            })
            .spawn()
            .unwrap()
    };
    let a = server("a");
    let b = server("b");
    let target_a = static_target(std::slice::from_ref(&a));
    let target_b = static_target(std::slice::from_ref(&b));
    let mut dir = ConfigMapDir::new(&reload_yaml(&target_a, "round_robin", "3s"));
    let watch = ConfigWatch::with_debounce(dir.file(), Duration::from_millis(50)).unwrap();
    let client = watch.client("greeter").unwrap();
    wait_ready(&client.channel(), 1).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut g = GreeterClient::new(client.clone());
        let (stop, failures, calls) = (stop.clone(), failures.clone(), calls.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = g.say_hello(HelloRequest::default()).await {
                    failures.lock().unwrap().push(e.to_string());
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut changes = watch.changes();
    let next = |dir: &mut ConfigMapDir, text: String| {
        dir.swap(&text);
    };
    async fn changed(rx: &mut tokio::sync::watch::Receiver<u64>) {
        tokio::time::timeout(WAIT_BOUND, rx.changed())
            .await
            .expect("the change is seen")
            .unwrap();
    }

    // 1. A method timeout: applied on the live channel.
    let connections = a.connections();
    next(&mut dir, reload_yaml(&target_a, "round_robin", "7s"));
    changed(&mut changes).await;
    wait_until("the new timeout is sent", || {
        last_timeout
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|t| micros(t) > 6_000_000)
    })
    .await;
    assert_eq!(
        a.connections(),
        connections,
        "no new connection for a method change"
    );

    // 2. An invalid file: nothing changes, and the error says where.
    next(&mut dir, reload_yaml(&target_a, "round_robbin", "7s"));
    changed(&mut changes).await;
    let err = watch
        .last_error()
        .expect("the invalid file is reported")
        .to_string();
    assert!(
        err.contains("unknown policy `round_robbin`; did you mean `round_robin`?"),
        "{err}"
    );
    assert_eq!(watch.config().policy("greeter"), Some("round_robin"));

    // 3. A new policy: switched in place, connections and load statistics kept.
    let connections = a.connections();
    let served = client.channel().status().endpoints[0].successes;
    next(&mut dir, reload_yaml(&target_a, "p2c_ewma", "7s"));
    changed(&mut changes).await;
    assert!(watch.last_error().is_none());
    wait_until("the channel runs p2c_ewma", || {
        client.channel().status().policy == "p2c_ewma"
    })
    .await;
    assert_eq!(
        a.connections(),
        connections,
        "no new connection for a policy switch"
    );
    assert!(
        client.channel().status().endpoints[0].successes >= served,
        "the load statistics carried over"
    );

    // 4. A new target: calls move to server b, and the old channel goes away once its
    // calls are done (its status stream ends when its control task stops and its
    // connections close).
    let mut old_events = Box::pin(client.channel().watch_status());
    let b_before = b.calls();
    next(&mut dir, reload_yaml(&target_b, "p2c_ewma", "7s"));
    changed(&mut changes).await;
    wait_until("b takes calls", || b.calls() > b_before + 50).await;
    let a_now = a.calls();
    let total = calls.load(Ordering::Relaxed);
    wait_until("more calls", || calls.load(Ordering::Relaxed) > total + 200).await;
    assert!(
        a.calls() <= a_now + 8,
        "a gets nothing new beyond calls already in flight"
    );

    let drained = tokio::time::timeout(WAIT_BOUND, async {
        while old_events.next().await.is_some() {}
    })
    .await;
    assert!(
        drained.is_ok(),
        "the old channel was dropped after the move"
    );

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// A go-zero `EtcdConf` block gives an etcd target that the etcd scheme reads back as the
/// same cluster, key and credentials (values percent-encoded on the way).
#[test]
fn a_go_zero_etcd_block_reads_back_as_the_same_cluster() {
    use meshless::discovery::etcd::EtcdTarget;
    let text = "clients:\n  user:\n    discovery:\n      etcd:\n        Hosts: [etcd-0:2379, etcd-1:2379]\n        Key: user.rpc\n        User: root\n        Pass: \"a&b=c d\"\n";
    let config = Config::from_str(text, Format::Yaml).unwrap();
    let target = meshless::Target::parse(config.target("user").unwrap()).unwrap();
    let etcd = EtcdTarget::parse(&target).unwrap();
    assert_eq!(etcd.cluster.hosts, ["etcd-0:2379", "etcd-1:2379"]);
    assert_eq!(etcd.key, "user.rpc");
    assert_eq!(etcd.cluster.user.as_deref(), Some("root"));
    assert_eq!(etcd.cluster.password.as_deref(), Some("a&b=c d"));
}
