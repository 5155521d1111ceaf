//! Live reload (feature `watch`): the file's directory is watched, so that editors' and
//! Kubernetes ConfigMaps' replacements (a rename, a `..data` symlink swap) are seen; changes
//! are debounced, and a new file is applied only once it is entirely valid.
//!
//! - A change to a client's per-method policies or retry throttling only is applied to its
//!   live channel: no connection is made or lost.
//! - A change of the load-balancing policy switches the live channel to it
//!   ([`Channel::set_policy`](meshless_transport::Channel::set_policy)): connections and
//!   per-endpoint load statistics stay.
//! - A change to anything else that decides the channel (the target, connection settings,
//!   TLS, outlier detection, health checking) builds a new channel;
//!   calls move to it once it has a ready endpoint, and the old one drains (its in-flight
//!   calls finish, then its connections close).
//! - An invalid file changes nothing: the last good config stays, and the errors are in
//!   [`ConfigWatch::last_error`] and announced on [`ConfigWatch::changes`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use meshless_transport::Channel;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::{Client, ClientError, Config, ConfigError};

/// How long a burst of file events is let settle before the file is read (editors write in
/// steps; a ConfigMap update is several renames).
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// How long a new channel may take to get a ready endpoint before it replaces the old one;
/// past it the old channel stays and the failure is reported.
const NEW_CHANNEL_READY: Duration = Duration::from_secs(10);

struct Shared {
    path: PathBuf,
    /// Policies registered in code that the file may name.
    policies: Option<meshless_balancer::PolicyRegistry>,
    current: RwLock<Arc<Config>>,
    text: Mutex<String>,
    last_error: Mutex<Option<ConfigError>>,
    changes: watch::Sender<u64>,
    clients: Mutex<Vec<Weak<Slot>>>,
}

/// One live client.
struct Slot {
    name: String,
    current: RwLock<Client>,
    /// What decides the channel, and what decides its policy, as last applied.
    key: Mutex<(String, String)>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(PoisonError::into_inner) = v;
}

/// The file, with the registered policies when there are some.
fn read_file(
    path: &Path,
    policies: Option<&meshless_balancer::PolicyRegistry>,
) -> Result<Config, ConfigError> {
    match policies {
        Some(p) => Config::from_file_with_policies(path, p),
        None => Config::from_file(path),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A config file kept current while the program runs. Dropping it stops the watching; the
/// clients made from it keep their last settings.
pub struct ConfigWatch {
    shared: Arc<Shared>,
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigWatch {
    /// Reads `path` (it must be valid now) and starts watching its directory, on the
    /// current tokio runtime.
    pub fn new(path: impl AsRef<Path>) -> Result<ConfigWatch, ConfigError> {
        Self::with_debounce(path, DEFAULT_DEBOUNCE)
    }

    /// [`new`](Self::new) with another debounce delay.
    pub fn with_debounce(
        path: impl AsRef<Path>,
        debounce: Duration,
    ) -> Result<ConfigWatch, ConfigError> {
        Self::start(path.as_ref(), debounce, None)
    }

    /// [`new`](Self::new) where the file may name the policies of `policies` as well as the
    /// built-in ones, as [`Config::from_file_with_policies`] reads it.
    pub fn with_policies(
        path: impl AsRef<Path>,
        policies: meshless_balancer::PolicyRegistry,
    ) -> Result<ConfigWatch, ConfigError> {
        Self::start(path.as_ref(), DEFAULT_DEBOUNCE, Some(policies))
    }

    fn start(
        path: &Path,
        debounce: Duration,
        policies: Option<meshless_balancer::PolicyRegistry>,
    ) -> Result<ConfigWatch, ConfigError> {
        let path = path.to_path_buf();
        let config = read_file(&path, policies.as_ref())?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let fail =
            |msg: String| ConfigError::one(Some(path.clone()), "", crate::Pos::default(), msg);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Any event in the directory may be a replacement of the file (a rename, a
                // symlink swap): the file is read again and compared.
                if event.is_ok() {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| fail(format!("cannot watch the file: {e}")))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| fail(format!("cannot watch {}: {e}", dir.display())))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| fail("ConfigWatch needs a tokio runtime".into()))?;
        let shared = Arc::new(Shared {
            path,
            policies,
            current: RwLock::new(Arc::new(config)),
            text: Mutex::new(text),
            last_error: Mutex::new(None),
            changes: watch::channel(0).0,
            clients: Mutex::new(Vec::new()),
        });
        let task = runtime.spawn(run(Arc::downgrade(&shared), rx, debounce));
        Ok(ConfigWatch {
            shared,
            _watcher: watcher,
            task,
        })
    }

    /// The config as last read successfully.
    pub fn config(&self) -> Arc<Config> {
        read(&self.shared.current)
    }

    /// Why the last change of the file was not applied, while the file stays invalid.
    pub fn last_error(&self) -> Option<ConfigError> {
        lock(&self.shared.last_error).clone()
    }

    /// Bumped after every change of the file, applied or rejected.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Client `name`, kept current with the file.
    pub fn client(&self, name: &str) -> Result<ReloadingClient, ClientError> {
        let config = self.config();
        let client = config.client(name)?;
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            current: RwLock::new(client),
            key: Mutex::new((
                config.channel_key(name).unwrap_or_default(),
                config.policy_key(name),
            )),
        });
        lock(&self.shared.clients).push(Arc::downgrade(&slot));
        Ok(ReloadingClient { slot })
    }
}

async fn run(shared: Weak<Shared>, mut rx: mpsc::UnboundedReceiver<()>, debounce: Duration) {
    while rx.recv().await.is_some() {
        tokio::time::sleep(debounce).await;
        while rx.try_recv().is_ok() {}
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&shared.path) else {
            // Mid-replacement (the file is briefly absent): the next event reads it.
            continue;
        };
        if *lock(&shared.text) == text {
            continue;
        }
        *lock(&shared.text) = text;
        match read_file(&shared.path, shared.policies.as_ref()) {
            Err(e) => {
                tracing::warn!(path = %shared.path.display(), "config file is invalid; keeping the last good one:\n{e}");
                *lock(&shared.last_error) = Some(e);
            }
            Ok(config) => {
                tracing::info!(path = %shared.path.display(), "config file changed; applying it");
                let config = Arc::new(config);
                *lock(&shared.last_error) = None;
                write(&shared.current, config.clone());
                let slots: Vec<Arc<Slot>> = {
                    let mut clients = lock(&shared.clients);
                    clients.retain(|w| w.strong_count() > 0);
                    clients.iter().filter_map(Weak::upgrade).collect()
                };
                for slot in slots {
                    apply(&shared, &config, slot);
                }
            }
        }
        shared.changes.send_modify(|v| *v += 1);
    }
}

/// Brings one client up to `config`.
fn apply(shared: &Arc<Shared>, config: &Arc<Config>, slot: Arc<Slot>) {
    let Some(key) = config.channel_key(&slot.name) else {
        tracing::warn!(client = %slot.name, "client removed from the config file; it keeps its last settings");
        return;
    };
    let policy_key = config.policy_key(&slot.name);
    let (old_key, old_policy) = lock(&slot.key).clone();
    if old_key == key {
        // Same channel: a new policy is switched to in place (connections and load
        // statistics stay), and the per-method policies get a new stack.
        let channel = read(&slot.current).channel().clone();
        if old_policy != policy_key {
            channel.set_policy(config.policy_of(&slot.name));
            lock(&slot.key).1 = policy_key;
        }
        write(&slot.current, config.client_on(&slot.name, channel));
        return;
    }
    let client = match config.client(&slot.name) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(client = %slot.name, "the changed client does not build; keeping the old one: {e}");
            return;
        }
    };
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        match tokio::time::timeout(NEW_CHANNEL_READY, client.channel().connect()).await {
            Ok(Ok(())) => {
                *lock(&slot.key) = (key, policy_key);
                // The old client drops once its in-flight calls hold no clone of it.
                write(&slot.current, client);
                tracing::info!(client = %slot.name, "calls moved to the new channel");
            }
            other => {
                let why = match other {
                    Ok(Err(status)) => status.message().to_owned(),
                    _ => format!("no endpoint became ready within {NEW_CHANNEL_READY:?}"),
                };
                tracing::warn!(client = %slot.name, "the changed client's channel is not ready ({why}); keeping the old one");
                if let Some(shared) = weak.upgrade() {
                    *lock(&shared.last_error) = Some(ConfigError::one(
                        Some(shared.path.clone()),
                        &format!("clients.{}", slot.name),
                        crate::Pos::default(),
                        format!(
                            "the new settings give no ready endpoint ({why}); the old channel stays"
                        ),
                    ));
                    shared.changes.send_modify(|v| *v += 1);
                }
            }
        }
    });
}

/// A configured client that follows its config file; the transport of any tonic client.
#[derive(Clone)]
pub struct ReloadingClient {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for ReloadingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClient")
            .field("name", &self.slot.name)
            .finish_non_exhaustive()
    }
}

impl ReloadingClient {
    /// The channel calls go to now.
    pub fn channel(&self) -> Channel {
        read(&self.slot.current).channel().clone()
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for ReloadingClient {
    type Response = http::Response<tonic::body::Body>;
    type Error = Status;
    type Future = meshless_middleware::ResilientFuture<tonic::body::Body>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // The channel is always ready to take a call (it waits inside, bounded); the
        // client that takes it is chosen in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut client = read(&self.slot.current);
        tower_service::Service::call(&mut client, req)
    }
}
