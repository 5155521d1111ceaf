//! TLS for the test kit: a throwaway certificate authority (rcgen) and the server side of a
//! TLS connection (tokio-rustls, ring), so greeter servers can require TLS or mTLS.
//!
//! ```no_run
//! use meshless_integration::server::TestServer;
//! use meshless_integration::tls::{ServerTls, TestCa};
//!
//! let ca = TestCa::new("test ca");
//! let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
//! let server = TestServer::new("secure").tls(ServerTls::new(cert, key)).spawn()?;
//! // A client trusting `ca.cert_pem()` reaches `localhost:{port}` over TLS.
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, and its key:
    /// `(certificate PEM, private key PEM)`. Good for servers and clients alike.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_with(names, |_| {})
    }

    /// Like [`issue`](Self::issue), for a certificate that expired on 2020-01-02.
    pub fn issue_expired(&self, names: &[&str]) -> (String, String) {
        self.issue_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 2);
        })
    }

    fn issue_with(
        &self,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        edit(&mut params);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leaf");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }
}

/// The server side of TLS for a [`TestServer`](crate::server::TestServer).
#[derive(Clone, Debug)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: String,
    client_ca_pem: Option<String>,
    alpn: bool,
}

impl ServerTls {
    /// Serves `cert_pem` with `key_pem`, offering ALPN `h2`, without asking for a client
    /// certificate.
    pub fn new(cert_pem: String, key_pem: String) -> Self {
        ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem: None,
            alpn: true,
        }
    }

    /// Requires a client certificate signed by `ca_pem` (mTLS).
    pub fn require_client_cert(mut self, ca_pem: String) -> Self {
        self.client_ca_pem = Some(ca_pem);
        self
    }

    /// Offers no ALPN protocol, as some HTTP/2 servers do.
    pub fn without_alpn(mut self) -> Self {
        self.alpn = false;
        self
    }

    /// The acceptor for these settings.
    pub(crate) fn acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(io::Error::other)?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(io::Error::other)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots
                        .add(cert.map_err(io::Error::other)?)
                        .map_err(io::Error::other)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(io::Error::other)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?;
        if self.alpn {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// A server-side TLS connection, as tonic's server takes it.
pub struct TlsIo<S = TcpStream>(pub(crate) tokio_rustls::server::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tonic::transport::server::Connected
    for TlsIo<S>
{
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// TLS connections accepted on a unix socket, for `Server::serve_with_incoming`: each
/// handshake runs on its own task, and a failed one is dropped.
pub fn unix_incoming(
    listener: tokio::net::UnixListener,
    tls: &ServerTls,
) -> io::Result<tokio_stream::wrappers::ReceiverStream<io::Result<TlsIo<tokio::net::UnixStream>>>> {
    let acceptor = tls.acceptor()?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, sender) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(stream),
                );
                if let Ok(Ok(tls)) = accepted.await {
                    let _ = sender.send(Ok(TlsIo(tls))).await;
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
