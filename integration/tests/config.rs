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
