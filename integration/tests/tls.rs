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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_three_tls_backends() {
    let ca = TestCa::new("ca");
    let servers: Vec<ServerHandle> = (0..3)
        .map(|i| {
            let (cert, key) = ca.issue(&["127.0.0.1"]);
            tls_server(&format!("s{i}"), ServerTls::new(cert, key))
        })
        .collect();
    let ch = Channel::builder(common::static_target(&servers))
        .policy("round_robin")
        .tls(TlsConfig::new().ca_pem(ca.cert_pem()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    common::wait_ready(&ch, 3).await;
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for _ in 0..300 {
        *seen.entry(hello(&ch).await.unwrap()).or_default() += 1;
    }
    // Round robin over three ready endpoints: exactly a third each, over three TLS
    // connections (one per server).
    for s in &servers {
        assert_eq!(seen.get(s.name()), Some(&100), "{seen:?}");
        assert_eq!(s.connections(), 1, "{}", s.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails_with_when_it_expired() {
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue_expired(&["127.0.0.1"]);
    let server = tls_server("expired", ServerTls::new(cert, key));
    let ch = channel(
        format!("static:///{}", server.addr()),
        TlsConfig::new().ca_pem(ca.cert_pem()),
    );
    let err = connect_error(&ch).await;
    assert!(err.contains("expired"), "{err}");
    assert!(err.contains("2020-01-02"), "{err}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_errors_say_whether_the_identity_is_missing_or_untrusted() {
    let ca = TestCa::new("ca");
    let other = TestCa::new("someone else");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let server = tls_server(
        "mtls",
        ServerTls::new(cert, key).require_client_cert(ca.cert_pem()),
    );
    let target = format!("static:///{}", server.addr());
    // No identity configured: the server asked for one.
    let ch = channel(target.clone(), TlsConfig::new().ca_pem(ca.cert_pem()));
    let err = connect_error(&ch).await;
    assert!(err.contains("requires a client certificate"), "{err}");
    assert!(err.contains("identity_files"), "{err}");
    // An identity from a CA the server does not trust.
    let (client_cert, client_key) = other.issue(&["client"]);
    let ch = channel(
        target,
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .identity_pem(client_cert, client_key),
    );
    let err = connect_error(&ch).await;
    assert!(err.contains("rejected our client certificate"), "{err}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_meeting_tls_and_tls_meeting_plaintext_say_so() {
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let secure = tls_server("secure", ServerTls::new(cert, key));
    let plain = TestServer::new("plain").spawn().unwrap();

    // A plaintext channel to a TLS port.
    let ch = Channel::builder(format!("static:///{}", secure.addr()))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let err = connect_error(&ch).await;
    assert!(err.contains("answered with TLS"), "{err}");
    assert!(err.contains("tls("), "{err}");

    // A TLS channel to a plaintext (h2c) port.
    let ch = channel(
        format!("static:///{}", plain.addr()),
        TlsConfig::new().ca_pem(ca.cert_pem()),
    );
    let err = connect_error(&ch).await;
    assert!(err.contains("did not answer TLS"), "{err}");
    assert!(err.contains("plaintext"), "{err}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_speaks_tls_with_an_explicit_server_name() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let ca = TestCa::new("ca");
    let (cert, key) = ca.issue(&["greeter.local"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let incoming =
        meshless_integration::tls::unix_incoming(listener, &ServerTls::new(cert, key)).unwrap();
    let (_reporter, service) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    let check = |ch: Channel| async move {
        let reply = tokio::time::timeout(
            BOUND,
            HealthClient::new(ch).check(HealthCheckRequest::default()),
        )
        .await
        .expect("within the bound")?;
        Ok::<_, tonic::Status>(reply.into_inner().status())
    };
    let target = format!("unix:{}", path.display());
    let ch = channel(
        target.clone(),
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .server_name("greeter.local"),
    );
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving);
    // The name is verified on a socket as on TCP.
    let ch = channel(
        target,
        TlsConfig::new()
            .ca_pem(ca.cert_pem())
            .server_name("other.local"),
    );
    let err = connect_error(&ch).await;
    assert!(err.contains("other.local"), "{err}");
    server.abort();
}

/// Writes one set of files the way the kubelet updates a Secret volume: into a new
/// timestamped directory, then `..data` is re-pointed to it by an atomic rename, and the
/// old directory is removed. `ca.pem`, `tls.crt` and `tls.key` are symlinks through
/// `..data` that never change.
fn kubelet_write(dir: &std::path::Path, version: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let fresh = dir.join(format!("..{version}"));
    std::fs::create_dir(&fresh).unwrap();
    for (name, body) in files {
        std::fs::write(fresh.join(name), body).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_swap_rotates_new_connections_and_keeps_open_ones() {
    let name = "greeter.test";
    let (ca1, ca2) = (TestCa::new("ca one"), TestCa::new("ca two"));
    // Each server trusts only clients of its own CA.
    let serve = |id: &str, ca: &TestCa| {
        let (cert, key) = ca.issue(&[name]);
        tls_server(
            id,
            ServerTls::new(cert, key).require_client_cert(ca.cert_pem()),
        )
    };
    let (a, b, c) = (serve("a", &ca1), serve("b", &ca2), serve("c", &ca2));
    let dir = tempfile::tempdir().unwrap();
    let set = |ca: &TestCa, (cert, key): (String, String)| {
        vec![
            ("ca.pem", ca.cert_pem()),
            ("tls.crt", cert),
            ("tls.key", key),
        ]
    };
    let write = |version: &str, files: &[(&str, String)]| {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, b)| (*n, b.as_str())).collect();
        kubelet_write(dir.path(), version, &files);
    };
    write("2026_12_01", &set(&ca1, ca1.issue(&["client"])));

    let (discovery, handle) = ManualDiscovery::new();
    let ch = Channel::with_discovery("secret", Arc::new(discovery))
        .policy("round_robin")
        .tls(
            TlsConfig::new()
                .ca_file(dir.path().join("ca.pem"))
                .identity_files(dir.path().join("tls.crt"), dir.path().join("tls.key"))
                .server_name(name)
                .reload_interval(Duration::from_millis(100)),
        )
        .backoff(fast_backoff())
        .build()
        .unwrap();
    handle.reset(vec![Endpoint::new(a.addr()), Endpoint::new(b.addr())]);
    assert_eq!(hello(&ch).await.unwrap(), "a");
    // b's certificate is from the second CA: not trusted yet.
    let b_addr = meshless::discovery::Address::from(b.addr());
    let err = wait_for(|| {
        let status = ch.status();
        let e = status.endpoint(&b_addr)?.last_error.clone()?;
        e.contains("UnknownIssuer").then_some(e)
    })
    .await;
    assert!(err.contains(name), "{err}");

    // The Secret is rotated to the second CA and an identity it signed.
    write("2026_12_02", &set(&ca2, ca2.issue(&["client"])));
    let mut reached = std::collections::HashSet::new();
    tokio::time::timeout(BOUND, async {
        while reached.len() < 2 {
            if let Ok(server) = hello(&ch).await {
                reached.insert(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("b is reached after a reload tick, and a still answers");
    // a still answers on its first connection: a new one would now fail (the channel
    // trusts only the second CA), so these calls are the old connection's.
    for _ in 0..10 {
        hello(&ch).await.unwrap();
    }
    assert_eq!(a.connections(), 1);
    assert!(ch.status().tls_error.is_none());

    // A rotation caught half-way: the new certificate with a key that is not its own.
    let (cert, _) = ca2.issue(&["client"]);
    let (_, wrong_key) = ca2.issue(&["client"]);
    write("2026_12_03", &set(&ca2, (cert, wrong_key)));
    let reported = wait_for(|| ch.status().tls_error).await;
    assert!(reported.contains("tls.crt"), "{reported}");
    assert!(reported.contains("key"), "{reported}");
    // New connections use the last good set: c (second CA) is reached.
    handle.reset(vec![Endpoint::new(c.addr())]);
    let reply = tokio::time::timeout(BOUND, async {
        loop {
            match hello(&ch).await {
                Ok(s) if s == "c" => return s,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("c is reached with the last good identity");
    assert_eq!(reply, "c");
    assert!(ch.status().tls_error.is_some());
}
