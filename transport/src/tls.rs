//! TLS and mTLS for every connection of a channel, with certificates read from files that
//! rotate without a restart.
//!
//! Only the connector is written here: tonic's own TLS types (`ClientTlsConfig` and its
//! connector) are crate-private in tonic and bound to tonic's `Endpoint`, so a channel with
//! connections of its own cannot use them. Everything else is rustls (ring provider only,
//! `ClientConfig::builder_with_provider`, so a graph that also holds aws-lc cannot make
//! rustls pick a provider at run time and panic), tokio-rustls and rustls-pki-types' PEM
//! parser.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// How often certificate and key files are read again, by default: 60 s.
pub const DEFAULT_TLS_RELOAD: Duration = Duration::from_secs(60);

/// Where PEM data comes from: bytes given once, or a file read again on every reload.
#[derive(Clone)]
enum Pem {
    Bytes(Arc<[u8]>),
    File(PathBuf),
}

impl Pem {
    fn read(&self) -> Result<Arc<[u8]>, String> {
        match self {
            Pem::Bytes(b) => Ok(b.clone()),
            Pem::File(path) => std::fs::read(path)
                .map(Into::into)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }

    fn what(&self) -> String {
        match self {
            Pem::Bytes(_) => "the PEM given".into(),
            Pem::File(path) => path.display().to_string(),
        }
    }

    fn is_file(&self) -> bool {
        matches!(self, Pem::File(_))
    }
}

#[derive(Clone)]
enum Verify {
    /// Roots from these PEM sources (and the system's, with `system_roots`).
    Roots { cas: Vec<Pem>, system: bool },
    /// The application's own verifier.
    Custom(Arc<dyn ServerCertVerifier>),
}

/// TLS settings of a channel: whom to trust, who we are, which name to verify.
///
/// ```no_run
/// use meshless_transport::{Channel, TlsConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = TlsConfig::new()
///     .ca_file("/etc/certs/ca.pem")                                // re-read every 60 s
///     .identity_files("/etc/certs/tls.crt", "/etc/certs/tls.key"); // mTLS
/// let channel = Channel::builder("dns:///greeter.prod.svc.cluster.local:50051")
///     .tls(tls)
///     .build()?;
/// # Ok(()) }
/// ```
///
/// - **Trust.** CA certificates from PEM bytes or files, or the platform's trust store
///   (feature `tls-system-roots`), or a verifier of your own ([`verifier`](Self::verifier)).
///   With none of them the channel does not build.
/// - **Identity** (mTLS): a certificate chain and its private key, PEM bytes or files. A key
///   that does not match its certificate is an error.
/// - **Server name.** By default the target's host, the same name for every endpoint, as
///   grpc-go does (`greeter.prod` for `dns:///greeter.prod:50051`); an IP address verifies
///   the certificate's IP SANs; a static list verifies each endpoint's own address. A unix
///   socket target needs [`server_name`](Self::server_name). A discovery backend that the
///   application controls (static lists, [`ManualDiscovery`]) may name an endpoint's server
///   itself (`Endpoint::tls_server_name`); names from DNS are never used, since whoever can
///   answer DNS could then choose which certificate passes.
/// - **ALPN.** Always `h2`. A server that negotiates no protocol is refused unless
///   [`assume_http2`](Self::assume_http2) says it speaks HTTP/2 anyway.
/// - **Rotation.** Files are read again every [`reload_interval`](Self::reload_interval)
///   (default 60 s). A new set is used for new connections once it parses and its key
///   matches its certificate; otherwise the last good set stays and
///   `ChannelStatus::tls_error` says what is wrong. Open connections keep the set they were
///   made with.
///
/// [`ManualDiscovery`]: meshless_discovery::ManualDiscovery
#[derive(Clone)]
#[must_use]
pub struct TlsConfig {
    verify: Option<Verify>,
    identity: Option<(Pem, Pem)>,
    server_name: Option<String>,
    assume_http2: bool,
    reload: Duration,
    whole: Option<Arc<ClientConfig>>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig::new()
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .field("assume_http2", &self.assume_http2)
            .field("reload", &self.reload)
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// No trust yet: add CA certificates, system roots or a verifier.
    pub fn new() -> Self {
        TlsConfig {
            verify: None,
            identity: None,
            server_name: None,
            assume_http2: false,
            reload: DEFAULT_TLS_RELOAD,
            whole: None,
        }
    }

    fn add_ca(mut self, pem: Pem) -> Self {
        match &mut self.verify {
            Some(Verify::Roots { cas, .. }) => cas.push(pem),
            _ => {
                self.verify = Some(Verify::Roots {
                    cas: vec![pem],
                    system: false,
                })
            }
        }
        self
    }

    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn ca_pem(self, pem: impl AsRef<[u8]>) -> Self {
        self.add_ca(Pem::Bytes(pem.as_ref().into()))
    }

    /// Trusts the CA certificates in the file at `path`, read again on every reload.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Self {
        self.add_ca(Pem::File(path.as_ref().to_path_buf()))
    }

    /// Trusts the platform's certificate store too (rustls-platform-verifier).
    #[cfg(feature = "tls-system-roots")]
    pub fn system_roots(mut self) -> Self {
        match &mut self.verify {
            Some(Verify::Roots { system, .. }) => *system = true,
            _ => {
                self.verify = Some(Verify::Roots {
                    cas: Vec::new(),
                    system: true,
                })
            }
        }
        self
    }

    /// Presents this client certificate chain and key (mTLS).
    pub fn identity_pem(mut self, cert_chain: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        self.identity = Some((
            Pem::Bytes(cert_chain.as_ref().into()),
            Pem::Bytes(key.as_ref().into()),
        ));
        self
    }

    /// Presents the client certificate chain and key in these files (mTLS), read again on
    /// every reload.
    pub fn identity_files(mut self, cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some((
            Pem::File(cert_chain.as_ref().to_path_buf()),
            Pem::File(key.as_ref().to_path_buf()),
        ));
        self
    }

    /// Verifies this name for every endpoint, whatever the target or discovery says.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Speaks HTTP/2 to servers that negotiate no ALPN protocol (default off: such a
    /// server is refused, since it may not speak HTTP/2 at all).
    pub fn assume_http2(mut self, on: bool) -> Self {
        self.assume_http2 = on;
        self
    }

    /// How often files are read again. Default [`DEFAULT_TLS_RELOAD`].
    pub fn reload_interval(mut self, every: Duration) -> Self {
        self.reload = every;
        self
    }

    /// Verifies server certificates with `verifier` instead of CA certificates (for a
    /// SPIFFE or pinning verifier of your own).
    pub fn verifier(mut self, verifier: Arc<dyn ServerCertVerifier>) -> Self {
        self.verify = Some(Verify::Custom(verifier));
        self
    }

    /// Uses this whole rustls configuration; its ALPN protocols are replaced by `h2`. Trust
    /// and identity settings above are then ignored, and nothing is reloaded.
    pub fn client_config(mut self, config: ClientConfig) -> Self {
        self.whole = Some(Arc::new(config));
        self
    }

    /// Whether any source is a file (so reloading has something to do).
    fn has_files(&self) -> bool {
        if self.whole.is_some() {
            return false;
        }
        let cas = match &self.verify {
            Some(Verify::Roots { cas, .. }) => cas.iter().any(Pem::is_file),
            _ => false,
        };
        cas || self
            .identity
            .as_ref()
            .is_some_and(|(c, k)| c.is_file() || k.is_file())
    }

    /// Reads every source and builds the rustls configuration.
    fn load(&self) -> Result<Arc<ClientConfig>, String> {
        if let Some(whole) = &self.whole {
            let mut config = (**whole).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            return Ok(Arc::new(config));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder =
            match &self.verify {
                None => {
                    return Err(
                        "TLS: nothing to trust: give CA certificates (ca_pem, ca_file), \
                            system_roots, or a verifier"
                            .into(),
                    );
                }
                Some(Verify::Custom(v)) => builder
                    .dangerous()
                    .with_custom_certificate_verifier(v.clone()),
                Some(Verify::Roots { cas, system }) => {
                    let mut ders = Vec::new();
                    for pem in cas {
                        let bytes = pem.read()?;
                        let before = ders.len();
                        for cert in CertificateDer::pem_slice_iter(&bytes) {
                            ders.push(cert.map_err(|e| {
                                format!("TLS: CA certificates in {}: {e}", pem.what())
                            })?);
                        }
                        if ders.len() == before {
                            return Err(format!(
                                "TLS: {} holds no PEM `CERTIFICATE` block",
                                pem.what()
                            ));
                        }
                    }
                    if *system {
                        system_verifier(builder, ders, provider)?
                    } else {
                        let mut roots = RootCertStore::empty();
                        for cert in ders {
                            roots
                                .add(cert)
                                .map_err(|e| format!("TLS: a CA certificate: {e}"))?;
                        }
                        builder.with_root_certificates(roots)
                    }
                }
            };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain_bytes = cert.read()?;
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&chain_bytes)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("TLS: client certificate in {}: {e}", cert.what()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "TLS: {} holds no PEM `CERTIFICATE` block",
                        cert.what()
                    ));
                }
                let key_bytes = key.read()?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
                    .map_err(|e| format!("TLS: private key in {}: {e}", key.what()))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!(
                        "TLS: client certificate {} and key {}: {e}",
                        cert.what(),
                        key.what()
                    )
                })?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

type WantsVerifier = rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>;
type WantsClientCert = rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>;

/// The platform's verifier, trusting `extra` CAs too.
#[cfg(feature = "tls-system-roots")]
fn system_verifier(
    builder: WantsVerifier,
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<WantsClientCert, String> {
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider)
        .map_err(|e| format!("TLS: the platform's trust store: {e}"))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

#[cfg(not(feature = "tls-system-roots"))]
fn system_verifier(
    _: WantsVerifier,
    _: Vec<CertificateDer<'static>>,
    _: Arc<rustls::crypto::CryptoProvider>,
) -> Result<WantsClientCert, String> {
    Err("TLS: system roots need the `tls-system-roots` feature".into())
}

/// The channel's TLS state: the configuration new connections use, and the last reload
/// error. Shared by the subchannels and the reload task.
pub(crate) struct TlsState {
    config: TlsConfig,
    current: ArcSwap<ClientConfig>,
    error: Mutex<Option<String>>,
}

impl TlsState {
    /// Loads `config` once; an error here fails the channel's build.
    pub(crate) fn new(config: TlsConfig) -> Result<Arc<Self>, String> {
        let current = config.load()?;
        Ok(Arc::new(TlsState {
            config,
            current: ArcSwap::new(current),
            error: Mutex::new(None),
        }))
    }

    /// The name to verify for every endpoint, when the configuration forces one.
    pub(crate) fn forced_name(&self) -> Option<&str> {
        self.config.server_name.as_deref()
    }

    /// How often to reload, when there are files to reload.
    pub(crate) fn reload_every(&self) -> Option<Duration> {
        self.config.has_files().then_some(self.config.reload)
    }

    /// Reads the files again; a set that loads replaces the current one, an error is kept
    /// for `status()` and the last good set stays.
    pub(crate) fn reload(&self) {
        let outcome = self.config.load();
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(config) => {
                self.current.store(config);
                if error.take().is_some() {
                    tracing::info!("TLS files load again; new connections use them");
                }
            }
            Err(e) => {
                if error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("{e}; new connections keep the last good certificates");
                }
                *error = Some(e);
            }
        }
    }

    /// The last reload error, if the last reload failed.
    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// TLS over `io`, verifying `name`, checking that the server speaks HTTP/2.
    pub(crate) async fn connect<IO>(
        &self,
        name: &str,
        io: IO,
    ) -> Result<(tokio_rustls::client::TlsStream<IO>, ClientAuth), String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("TLS server name `{name}`: {e}"))?;
        // A per-connection copy (a few reference counts) whose client-certificate resolver
        // records whether the server asked for one: in TLS 1.3 a server that refuses our
        // identity does so after the client's handshake is done, and often resets the
        // connection before its alert can be read, so this is what explains the failure.
        let mut config = ClientConfig::clone(&self.current.load());
        let asked = Arc::new(AtomicU8::new(NOT_ASKED));
        config.client_auth_cert_resolver = Arc::new(AskRecorder {
            inner: config.client_auth_cert_resolver.clone(),
            asked: asked.clone(),
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = connector
            .connect(server_name, io)
            .await
            .map_err(|e| format!("TLS handshake with `{name}`: {}", tls_error(&e, name)))?;
        let alpn = stream.get_ref().1.alpn_protocol();
        if alpn != Some(b"h2") && !self.config.assume_http2 {
            return Err(format!(
                "TLS: the server `{name}` negotiated no HTTP/2 (ALPN {}); if it speaks HTTP/2 \
                 without ALPN, set TlsConfig::assume_http2(true)",
                alpn.map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned())
            ));
        }
        let auth = match asked.load(Ordering::Relaxed) {
            NOT_ASKED => ClientAuth::NotAsked,
            ASKED_NONE => ClientAuth::AskedNone,
            _ => ClientAuth::AskedSent,
        };
        Ok((stream, auth))
    }
}

const NOT_ASKED: u8 = 0;
const ASKED_NONE: u8 = 1;
const ASKED_SENT: u8 = 2;

/// Whether the server asked for a client certificate during the handshake, and whether we
/// sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No CertificateRequest: the server does not do mTLS.
    NotAsked,
    /// The server asked and we have no identity.
    AskedNone,
    /// The server asked and we sent our certificate.
    AskedSent,
}

impl ClientAuth {
    /// Why a server closed (or reset) the connection right after the handshake, before its
    /// HTTP/2 preface, when its client-certificate request explains it.
    pub(crate) fn explain_early_close(self) -> Option<String> {
        match self {
            ClientAuth::NotAsked => None,
            ClientAuth::AskedNone => Some(
                "the server requires a client certificate (mTLS) and this channel presents \
                 none; it closed the connection after the handshake: set \
                 TlsConfig::identity_files (or identity_pem)"
                    .to_owned(),
            ),
            ClientAuth::AskedSent => Some(
                "the server asked for our client certificate and closed the connection right \
                 after the handshake, so it most likely rejected our client certificate: check \
                 that TlsConfig::identity_files holds a current certificate signed by a CA the \
                 server trusts"
                    .to_owned(),
            ),
        }
    }
}

/// A client-certificate resolver that records that the server asked (see
/// [`TlsState::connect`]).
#[derive(Debug)]
struct AskRecorder {
    inner: Arc<dyn ResolvesClientCert>,
    asked: Arc<AtomicU8>,
}

impl ResolvesClientCert for AskRecorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let key = self.inner.resolve(root_hint_subjects, sigschemes);
        let seen = if key.is_some() {
            ASKED_SENT
        } else {
            ASKED_NONE
        };
        self.asked.store(seen, Ordering::Relaxed);
        key
    }

    fn only_raw_public_keys(&self) -> bool {
        self.inner.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// Reloads `state` every `every` until the channel is gone (its last strong reference is
/// dropped, or the control task aborts this one).
pub(crate) async fn reload_loop(state: std::sync::Weak<TlsState>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        // Reading files blocks: off the runtime's workers.
        let done = tokio::task::spawn_blocking(move || state.reload()).await;
        if done.is_err() {
            return;
        }
    }
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsState")
            .field("config", &self.config)
            .field("error", &self.error())
            .finish_non_exhaustive()
    }
}

/// A handshake error explained: rustls's cause when there is one, otherwise what the
/// failure most likely means (a peer that closes or sends garbage does not speak TLS).
fn tls_error(e: &std::io::Error, name: &str) -> String {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return describe(tls, Some(name));
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
            not_tls(Some(name), &e.to_string())
        }
        _ => e.to_string(),
    }
}

fn not_tls(name: Option<&str>, detail: &str) -> String {
    let who = name.map_or("the server".to_owned(), |n| format!("`{n}`"));
    format!(
        "{who} did not answer TLS ({detail}); it may speak plaintext h2c: drop .tls() from \
         this channel, or check the port"
    )
}

/// What a rustls error means for the person reading it, with what to change.
pub(crate) fn describe(err: &rustls::Error, name: Option<&str>) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let cert = "the server's certificate";
    match err {
        E::InvalidCertificate(c) => match c {
            C::ExpiredContext { time, not_after } => format!(
                "{cert} expired at {} (clock says {}): renew it, or check this machine's clock",
                utc(not_after.as_secs()),
                utc(time.as_secs())
            ),
            C::Expired => format!("{cert} has expired: renew it, or check this machine's clock"),
            C::NotValidYetContext { time, not_before } => format!(
                "{cert} is not valid until {} (clock says {}): check the clocks here and on \
                 the issuer",
                utc(not_before.as_secs()),
                utc(time.as_secs())
            ),
            C::NotValidYet => format!("{cert} is not valid yet: check the clocks"),
            C::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "{cert} is not valid for `{}` (it names {}): set TlsConfig::server_name to a \
                 name it carries, or reissue it with that name",
                expected.to_str(),
                if presented.is_empty() {
                    "nothing".to_owned()
                } else {
                    presented.join(", ")
                }
            ),
            C::NotValidForName => format!(
                "{cert} is not valid for `{}`: set TlsConfig::server_name, or reissue it",
                name.unwrap_or("the name we asked for")
            ),
            C::UnknownIssuer => format!(
                "{cert} is signed by a CA this channel does not trust (UnknownIssuer): add \
                 that CA with TlsConfig::ca_file or ca_pem"
            ),
            C::BadSignature => format!(
                "{cert} has a bad signature (BadSignature): it does not chain to the CA it \
                 names; check the CA bundle"
            ),
            C::Revoked => format!("{cert} has been revoked"),
            other => format!("{cert} was rejected: {other:?}"),
        },
        E::AlertReceived(A::CertificateRequired) => "the server requires a client \
             certificate (mTLS) and this channel presents none: set \
             TlsConfig::identity_files (or identity_pem)"
            .to_owned(),
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::AccessDenied
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate),
        ) => format!(
            "the server rejected our client certificate (alert {a:?}): check that \
             TlsConfig::identity_files holds a current certificate signed by a CA the server \
             trusts"
        ),
        E::AlertReceived(a) => format!("the server ended the handshake (alert {a:?})"),
        E::InvalidMessage(m) => not_tls(name, &format!("{m:?}")),
        E::NoCertificatesPresented => {
            "the server presented no certificate: it is not set up for TLS".to_owned()
        }
        other => other.to_string(),
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, Howard Hinnant).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The host part of an authority, as a TLS server name: `[::1]:50051` → `::1`,
/// `greeter.prod:50051` → `greeter.prod`.
pub(crate) fn host_of(authority: &str) -> String {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
        _ => authority.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_577_923_200), "2020-01-02 00:00:00 UTC");
        assert_eq!(utc(951_782_400 + 3_661), "2000-02-29 01:01:01 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn a_garbled_handshake_says_the_peer_may_be_plaintext() {
        let err = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let text = describe(&err, Some("greeter"));
        assert!(text.contains("`greeter` did not answer TLS"), "{text}");
        assert!(text.contains("plaintext"), "{text}");
    }

    #[test]
    fn a_missing_client_certificate_names_the_setting() {
        let err = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert!(describe(&err, None).contains("identity_files"));
    }
}
