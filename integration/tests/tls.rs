//! TLS and mTLS against real TLS servers on loopback (rustls on ring, certificates made by a
//! throwaway CA for each test), and certificate rotation through files.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fast_backoff;
use meshless::discovery::{Endpoint, ManualDiscovery};
use meshless::transport::TlsConfig;
use meshless::{BuildError, Channel};
use meshless_integration::greeter::HelloRequest;
use meshless_integration::greeter::greeter_client::GreeterClient;
use meshless_integration::server::{ServerHandle, TestServer};
use meshless_integration::tls::{ServerTls, TestCa};

/// Every wait for a connection or a reload: generous, so a loaded machine does not fail
/// a test that is right.
const BOUND: Duration = Duration::from_secs(15);

fn tls_server(name: &str, tls: ServerTls) -> ServerHandle {
    TestServer::new(name).tls(tls).spawn().expect("tls server")
}

async fn hello(channel: &Channel) -> Result<String, tonic::Status> {
    let mut client = GreeterClient::new(channel.clone());
    let reply = client.say_hello(HelloRequest::default()).await?;
    Ok(reply.into_inner().server)
}

fn channel(target: String, tls: TlsConfig) -> Channel {
    Channel::builder(target)
        .tls(tls)
        .backoff(fast_backoff())
        .build()
        .expect("channel")
}

/// The error of the channel's first connection attempts, as `connect()` reports it.
async fn connect_error(channel: &Channel) -> String {
    tokio::time::timeout(BOUND, channel.connect())
        .await
        .expect("connect answers within the bound")
        .expect_err("the connection must fail")
        .message()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_host_is_verified_and_ip_targets_verify_ip_sans() {
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&["greeter.test", "127.0.0.1"]);
    let server = tls_server("secure", ServerTls::new(cert, key));
    let port = server.addr().port();

    // An IP target verifies the certificate's IP SAN.
    let ch = channel(
        format!("static:///127.0.0.1:{port}"),
        TlsConfig::new().ca_pem(ca.cert_pem()),
    );
    assert_eq!(hello(&ch).await.unwrap(), "secure");

    // A name the certificate does not hold fails, saying why.
    let ch = channel(
        format!("static:///127.0.0.1:{port}"),
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .server_name("other.test"),
    );
    let err = connect_error(&ch).await;
    assert!(err.contains("other.test"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // The target's host is the default name: a certificate for `localhost` only passes for
    // `static:///localhost:PORT` (it would fail for the address 127.0.0.1).
    let (cert, key) = ca.issue(&["localhost"]);
    let by_name = tls_server("by-name", ServerTls::new(cert, key));
    let ch = channel(
        format!("static:///localhost:{}", by_name.addr().port()),
        TlsConfig::new().ca_pem(ca.cert_pem()),
    );
    assert_eq!(hello(&ch).await.unwrap(), "by-name");
    let ch = channel(
        format!("static:///{}", by_name.addr()),
        TlsConfig::new().ca_pem(ca.cert_pem()),
    );
    assert!(connect_error(&ch).await.contains("127.0.0.1"));

    // A configured name is verified on every endpoint.
    let ch = channel(
        format!("static:///127.0.0.1:{port}"),
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .server_name("greeter.test"),
    );
    assert_eq!(hello(&ch).await.unwrap(), "secure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_issuer_fails_with_a_clear_error() {
    let ca = TestCa::new("ca");
    let other = TestCa::new("someone else");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let server = tls_server("secure", ServerTls::new(cert, key));
    let ch = channel(
        format!("static:///{}", server.addr()),
        TlsConfig::new().ca_pem(other.cert_pem()),
    );
    let err = connect_error(&ch).await;
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_presents_the_identity_the_server_requires() {
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let server = tls_server(
        "mtls",
        ServerTls::new(cert, key).require_client_cert(ca.cert_pem()),
    );
    let target = format!("static:///{}", server.addr());
    // Without a client certificate the server refuses the handshake.
    let ch = channel(target.clone(), TlsConfig::new().ca_pem(ca.cert_pem()));
    assert!(hello(&ch).await.is_err());
    // With one signed by the CA it answers.
    let (client_cert, client_key) = ca.issue(&["client"]);
    let ch = channel(
        target,
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .identity_pem(client_cert, client_key),
    );
    assert_eq!(hello(&ch).await.unwrap(), "mtls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_alpn_needs_assume_http2() {
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let server = tls_server("no-alpn", ServerTls::new(cert, key).without_alpn());
    let target = format!("static:///{}", server.addr());
    let ch = channel(target.clone(), TlsConfig::new().ca_pem(ca.cert_pem()));
    let err = connect_error(&ch).await;
    assert!(err.contains("assume_http2"), "{err}");
    let ch = channel(
        target,
        TlsConfig::new().ca_pem(ca.cert_pem()).assume_http2(true),
    );
    assert_eq!(hello(&ch).await.unwrap(), "no-alpn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_fail_the_build_with_what_is_wrong() {
    let ca = TestCa::new("ca");
    let err = |tls: TlsConfig, target: &str| match Channel::builder(target).tls(tls).build() {
        Err(BuildError::Tls(msg)) => msg,
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("expected a TLS error"),
    };
    let msg = err(TlsConfig::new(), "static:///127.0.0.1:1");
    assert!(msg.contains("nothing to trust"), "{msg}");
    let msg = err(TlsConfig::new().ca_pem("garbage"), "static:///127.0.0.1:1");
    assert!(msg.contains("no PEM `CERTIFICATE` block"), "{msg}");
    let msg = err(
        TlsConfig::new().ca_file("/nonexistent/ca.pem"),
        "static:///127.0.0.1:1",
    );
    assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    // A key that is not the certificate's.
    let (cert, _) = ca.issue(&["client"]);
    let (_, other_key) = ca.issue(&["client"]);
    let msg = err(
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .identity_pem(cert, other_key),
        "static:///127.0.0.1:1",
    );
    assert!(msg.contains("client certificate"), "{msg}");
    assert!(msg.to_lowercase().contains("key"), "{msg}");
    // A unix socket has no host to verify.
    let msg = err(TlsConfig::new().ca_pem(ca.cert_pem()), "unix:/tmp/x.sock");
    assert!(msg.contains("server_name"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_discovery_names_each_endpoints_server() {
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&["pod-0.greeter.test"]);
    let server = tls_server("named", ServerTls::new(cert, key));
    let (discovery, handle) = ManualDiscovery::new();
    let ch = Channel::with_discovery("named", Arc::new(discovery))
        .tls(TlsConfig::new().ca_pem(ca.cert_pem()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    handle.reset(vec![
        Endpoint::new(server.addr()).with_tls_server_name("pod-0.greeter.test"),
    ]);
    assert_eq!(hello(&ch).await.unwrap(), "named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_are_used_once_they_load_and_bad_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    std::fs::write(&ca_path, old_ca.cert_pem()).unwrap();
    // The server's certificate is from the new CA: the channel cannot connect yet.
    let (cert, key) = new_ca.issue(&["127.0.0.1"]);
    let server = tls_server("rotated", ServerTls::new(cert, key));
    let ch = channel(
        format!("static:///{}", server.addr()),
        TlsConfig::new()
            .ca_file(&ca_path)
            .reload_interval(Duration::from_millis(100)),
    );
    assert!(connect_error(&ch).await.contains("UnknownIssuer"));

    // A half-written file: reported, nothing else changes.
    std::fs::write(&ca_path, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    let reported = wait_for(|| ch.status().tls_error).await;
    assert!(
        reported.contains(&ca_path.display().to_string()),
        "{reported}"
    );

    // The new CA: the next connection attempt verifies against it.
    std::fs::write(&ca_path, new_ca.cert_pem()).unwrap();
    wait_for(|| ch.status().tls_error.is_none().then_some(())).await;
    let reply = tokio::time::timeout(BOUND, async {
        loop {
            if let Ok(server) = hello(&ch).await {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("connected with the rotated CA within the bound");
    assert_eq!(reply, "rotated");
}

/// Polls `f` until it gives a value, up to [`BOUND`].
async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(BOUND, async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("within the bound")
}
