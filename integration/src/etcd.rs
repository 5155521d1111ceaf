//! A real etcd for tests: Debian's `etcd` binary (package `etcd-server`, which
//! `scripts/test.sh` installs), spawned on free loopback ports with its own data directory,
//! that a test can kill (SIGKILL), stop (SIGSTOP), restart on the same data, restart empty,
//! compact and put behind auth; `etcdctl` (package `etcd-client`) drives it. And a TCP
//! [`Gate`] to put in front of it, which cuts every connection through it on demand.
//!
//! Nothing here talks gRPC itself, so the kit needs no `protoc`: tests that want a client
//! use the etcd-client that meshless re-exports.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long etcd may take to start answering.
const START_BOUND: Duration = Duration::from_secs(20);
/// How long one `etcdctl` run may take.
const ETCDCTL_BOUND: Duration = Duration::from_secs(10);

/// Whether the `etcd` and `etcdctl` binaries are installed.
pub fn available() -> bool {
    [("etcd", "--version"), ("etcdctl", "version")]
        .iter()
        .all(|(bin, arg)| {
            std::process::Command::new(bin)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

fn free_port() -> io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A single-member etcd cluster on loopback. Killed, and its data removed, on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// `user:password` for `etcdctl` once auth is on.
    root: Option<String>,
    /// With TLS: the files in `dir` (CA, server/client certificate and key).
    tls: Option<EtcdTlsFiles>,
}

/// The PEM files of an etcd started with [`EtcdServer::start_tls`]: one CA, and one
/// certificate (for `127.0.0.1` and `localhost`) that etcd serves and clients present.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers.
    pub async fn start() -> io::Result<EtcdServer> {
        Self::start_with(None).await
    }

    /// Starts etcd serving TLS with a certificate from `ca`, requiring client certificates
    /// from `ca` too (`--client-cert-auth`).
    pub async fn start_tls(ca: &crate::tls::TestCa) -> io::Result<EtcdServer> {
        let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
        Self::start_with(Some((ca.cert_pem(), cert, key))).await
    }

    async fn start_with(pems: Option<(String, String, String)>) -> io::Result<EtcdServer> {
        let dir = std::env::temp_dir().join(format!(
            "meshless-etcd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut server = EtcdServer {
            child: None,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            root: None,
            tls: None,
        };
        if let Some((ca, cert, key)) = pems {
            let files = EtcdTlsFiles {
                ca: server.dir.join("ca.pem"),
                cert: server.dir.join("cert.pem"),
                key: server.dir.join("key.pem"),
            };
            std::fs::write(&files.ca, ca)?;
            std::fs::write(&files.cert, cert)?;
            std::fs::write(&files.key, key)?;
            server.tls = Some(files);
        }
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + START_BOUND;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "etcd exited at start ({status}); its log: {}",
                    self.log()
                )));
            }
            if self.healthy().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "etcd did not answer /health within {START_BOUND:?}; its log: {}",
                    self.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `GET /health` answers `"health":"true"` (with TLS: `etcdctl endpoint health`).
    async fn healthy(&self) -> bool {
        if self.tls.is_some() {
            return self.etcdctl(&["endpoint", "health"]).await.is_ok();
        }
        let ask = async {
            let mut s = TcpStream::connect(self.addr()).await?;
            s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await?;
            io::Result::Ok(String::from_utf8_lossy(&body).contains("\"health\":\"true\""))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ask).await,
            Ok(Ok(true))
        )
    }

    /// The last lines of etcd's log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The TLS files, for an etcd started with [`start_tls`](Self::start_tls).
    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Kills etcd with SIGKILL (no clean shutdown) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// Starts etcd again on the same ports with no data: every lease and key is gone, as
    /// after a cluster rebuilt from scratch.
    pub async fn restart_empty(&mut self) -> io::Result<()> {
        self.kill().await;
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
        self.root = None;
        self.spawn().await
    }

    /// Stops the process (SIGSTOP): its sockets stay open and nothing answers.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("STOP")
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) -> io::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, sig: &str) -> io::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| io::Error::other("etcd is not running"))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{sig} {pid}: {status}")))
        }
    }

    /// Runs `etcdctl` against this server (as root once auth is on) and returns its
    /// standard output; a failure carries its standard error.
    pub async fn etcdctl(&self, args: &[&str]) -> io::Result<String> {
        self.etcdctl_as(self.root.as_deref(), args).await
    }

    /// Runs `etcdctl` as `user` (`name:password`), or with no user.
    pub async fn etcdctl_as(&self, user: Option<&str>, args: &[&str]) -> io::Result<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.addr()))
            .arg("--dial-timeout=3s")
            .arg("--command-timeout=5s");
        if let Some(u) = user {
            cmd.arg(format!("--user={u}"));
        }
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.cert)
                .arg("--key")
                .arg(&t.key);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(ETCDCTL_BOUND, cmd.output())
            .await
            .map_err(|_| io::Error::other(format!("etcdctl {args:?}: no answer in time")))??;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Puts `key` = `value`.
    pub async fn put(&self, key: &str, value: &str) -> io::Result<()> {
        // `--` so that a key starting with `/` or `-` is not read as a flag.
        self.etcdctl(&["put", "--", key, value]).await.map(drop)
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        self.etcdctl(&["del", "--", key]).await.map(drop)
    }

    /// Every key and value under `prefix`, in key order, bytes as etcd holds them.
    pub async fn get_prefix(&self, prefix: &str) -> io::Result<Vec<(String, String)>> {
        let out = self
            .etcdctl(&["get", "--prefix", "--write-out=json", "--", prefix])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| io::Error::other(format!("etcdctl get: {e}: {out}")))?;
        let b64 = |s: &serde_json::Value| -> io::Result<String> {
            let s = s.as_str().unwrap_or_default();
            decode_base64(s).ok_or_else(|| io::Error::other(format!("not base64: {s}")))
        };
        let mut kvs = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            kvs.push((b64(&kv["key"])?, b64(&kv["value"])?));
        }
        Ok(kvs)
    }

    /// The lease a key is attached to (0 for none).
    pub async fn lease_of(&self, key: &str) -> io::Result<i64> {
        let out = self
            .etcdctl(&["get", "--write-out=json", "--", key])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| io::Error::other(format!("etcdctl get: {e}: {out}")))?;
        Ok(v["kvs"][0]["lease"].as_i64().unwrap_or(0))
    }

    /// The TTL a lease was granted with, in seconds (`etcdctl lease timetolive`).
    pub async fn granted_ttl(&self, lease: i64) -> io::Result<i64> {
        let out = self
            .etcdctl(&[
                "lease",
                "timetolive",
                &format!("{lease:x}"),
                "--write-out=json",
            ])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| io::Error::other(format!("etcdctl lease timetolive: {e}: {out}")))?;
        Ok(v["granted-ttl"].as_i64().unwrap_or(-1))
    }

    /// Revokes a lease, deleting its keys.
    pub async fn revoke(&self, lease: i64) -> io::Result<()> {
        self.etcdctl(&["lease", "revoke", &format!("{lease:x}")])
            .await
            .map(drop)
    }

    /// The store's current revision.
    pub async fn revision(&self) -> io::Result<i64> {
        let out = self
            .etcdctl(&["endpoint", "status", "--write-out=json"])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| io::Error::other(format!("etcdctl endpoint status: {e}: {out}")))?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .ok_or_else(|| io::Error::other(format!("no revision in {out}")))
    }

    /// Compacts the history up to the current revision, so no watch can resume from an
    /// earlier one.
    pub async fn compact_all(&self) -> io::Result<i64> {
        let rev = self.revision().await?;
        self.etcdctl(&["compaction", "--physical", &rev.to_string()])
            .await?;
        Ok(rev)
    }

    /// Turns on auth with a `root` user, and adds `reader` (password `reader-pw`) who may
    /// read `read_prefix`, `writer` (`writer-pw`) who may read and write it, and
    /// `nobody` (`nobody-pw`) who may do nothing.
    pub async fn enable_auth(&mut self, read_prefix: &str) -> io::Result<()> {
        let steps: &[&[&str]] = &[
            &["user", "add", "root:root-pw"],
            &["user", "grant-role", "root", "root"],
            &["role", "add", "readers"],
            &[
                "role",
                "grant-permission",
                "readers",
                "read",
                "--prefix=true",
                read_prefix,
            ],
            &["role", "add", "writers"],
            &[
                "role",
                "grant-permission",
                "writers",
                "readwrite",
                "--prefix=true",
                read_prefix,
            ],
            &["user", "add", "reader:reader-pw"],
            &["user", "grant-role", "reader", "readers"],
            &["user", "add", "writer:writer-pw"],
            &["user", "grant-role", "writer", "writers"],
            &["user", "add", "nobody:nobody-pw"],
            &["auth", "enable"],
        ];
        for step in steps {
            self.etcdctl(step).await?;
        }
        self.root = Some("root:root-pw".to_owned());
        Ok(())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn decode_base64(s: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}

/// A TCP forwarder in front of one address that can [`cut`](Gate::cut) every connection
/// through it and refuse new ones until [`open`](Gate::open): a network partition between
/// a client and a server that both keep running.
#[derive(Debug)]
pub struct Gate {
    addr: SocketAddr,
    closed: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Gate {
    /// A gate to `target`, listening on a free loopback port.
    pub async fn start(target: SocketAddr) -> io::Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let closed = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let closed = closed.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if closed.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|t| !t.is_finished());
                    conns.push(task);
                }
            })
        };
        Ok(Gate {
            addr,
            closed,
            conns,
            accept,
        })
    }

    /// The address to connect to instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection through the gate and refuses new ones.
    pub fn cut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Lets connections through again.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}
