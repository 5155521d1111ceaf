//! The registration contract: a server announces itself in a registry (etcd, Consul) so
//! that clients, meshless or Go, find it, and keeps the announcement alive until it stops.
//!
//! A [`Registrar`] starts a [`Registration`]: a background task that registers the
//! [`Instance`], keeps it alive (lease keepalive, TTL check passes), puts it back whenever
//! the registry loses it (a lease that expired, a key deleted by someone else, an agent
//! that restarted), forever, with jittered backoff, and removes it when the registration
//! is dropped or [`deregister`](Registration::deregister)ed. Its state can be read at any
//! time ([`Registration::status`]).
//!
//! ```
//! use std::time::Duration;
//! use meshless_discovery::{Instance, Registration, RegistrationState};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A backend's task reports through the Reporter and stops when told to.
//! let registration = Registration::spawn("demo/10.0.0.1:50051", |reporter, mut stop| async move {
//!     reporter.registered();
//!     stop.wait().await; // ... keep alive until told to stop, then remove the entry
//! });
//! registration.wait_registered(Duration::from_secs(1)).await.unwrap();
//! assert_eq!(registration.status().state, RegistrationState::Registered);
//! registration.deregister().await;
//! # let _ = Instance::new("greeter", "10.0.0.1:50051");
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{DiscoveryError, ErrorKind, Metadata};

/// What a server announces about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Instance {
    /// The service name clients look up (go-zero's `Key`, kratos's `Name`).
    pub name: String,
    /// The `host:port` clients connect to. Announce an address clients can reach: an
    /// unspecified address (`0.0.0.0`, `[::]`) is refused.
    pub addr: String,
    /// A unique instance id. Backends derive one when it is empty (go-zero: the lease id
    /// in etcd, `<name>-<host>-<port>` in Consul).
    pub id: String,
    /// The version of the server (kratos's `version`; Consul tag `version=<v>`).
    pub version: String,
    /// Free-form metadata (kratos `metadata`, Consul `Meta`).
    pub metadata: Metadata,
    /// The relative weight, written where each format keeps it (kratos `metadata.weight`,
    /// Consul `Weights.Passing`). `None` writes none.
    pub weight: Option<u32>,
}

impl Instance {
    /// An instance of service `name` listening on `addr` (`host:port`).
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> Self {
        Instance {
            name: name.into(),
            addr: addr.into(),
            id: String::new(),
            version: String::new(),
            metadata: Metadata::new(),
            weight: None,
        }
    }

    /// Sets the instance id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the version.
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key, value);
        self
    }

    /// Sets the weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Checks what every format needs: a name, and an `addr` of the form `host:port` with
    /// a host clients can dial.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        let bad = |why: String| {
            Err(DiscoveryError::new(
                ErrorKind::Other,
                format!(
                    "cannot register instance `{}` at `{}`: {why}",
                    self.name, self.addr
                ),
            ))
        };
        if self.name.trim().is_empty() {
            return bad("the service name is empty".into());
        }
        let Some((host, port)) = self.addr.rsplit_once(':') else {
            return bad("the address has no port: write `host:port`".into());
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return bad(format!("port `{port}` is not a number in 1..=65535")),
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return bad("the host is empty".into());
        }
        if let Ok(ip) = host.parse::<std::net::IpAddr>()
            && ip.is_unspecified()
        {
            return bad(format!(
                "`{host}` is the unspecified address, which clients cannot dial: announce the \
                 pod or host IP instead"
            ));
        }
        Ok(())
    }
}

/// Where a registration is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// The first registration has not succeeded yet.
    Registering,
    /// The registry holds the instance and it is being kept alive.
    Registered,
    /// The registry lost the instance or cannot be reached; the task is putting it back,
    /// with backoff, and never gives up.
    Retrying,
    /// Deregistered (dropped or [`Registration::deregister`]): the task has ended.
    Deregistered,
}

/// A registration's state, as [`Registration::status`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistrationStatus {
    /// What the registration names in its registry (an etcd key, a Consul service id).
    pub key: String,
    /// Where the registration is in its life.
    pub state: RegistrationState,
    /// The last failure, kept after recovery so that it can be read; cleared never.
    pub last_error: Option<DiscoveryError>,
    /// When the last failure happened.
    pub last_error_at: Option<Instant>,
    /// How many times the instance was (re-)registered.
    pub registrations: u64,
    /// When the registry last confirmed the instance (a registration, a keepalive answer,
    /// a TTL pass).
    pub last_renewal: Option<Instant>,
}

/// The handle a backend's registration task reports through.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: Arc<watch::Sender<RegistrationStatus>>,
}

impl Reporter {
    /// The instance was (re-)registered.
    pub fn registered(&self) {
        self.tx.send_modify(|s| {
            s.state = RegistrationState::Registered;
            s.registrations += 1;
            s.last_renewal = Some(Instant::now());
        });
    }

    /// The registry confirmed the registration is alive (a keepalive answer, a TTL pass).
    /// After failures that did not lose the registration (the registry was unreachable
    /// for a while), this makes it [`Registered`](RegistrationState::Registered) again.
    pub fn renewed(&self) {
        self.tx.send_if_modified(|s| {
            s.last_renewal = Some(Instant::now());
            // A renewal is news for watchers of the state only when it changes the state.
            if s.state == RegistrationState::Retrying {
                s.state = RegistrationState::Registered;
                return true;
            }
            false
        });
    }

    /// The registration failed or was lost: the task retries. `error` says why.
    pub fn failed(&self, error: DiscoveryError) {
        tracing::warn!(key = %self.tx.borrow().key, %error, "registration failed, retrying");
        self.tx.send_modify(|s| {
            if s.state != RegistrationState::Registering {
                s.state = RegistrationState::Retrying;
            }
            s.last_error = Some(error);
            s.last_error_at = Some(Instant::now());
        });
    }

    /// Changes what the registration names (a go-zero etcd key carries the lease id, which
    /// changes with every new lease).
    pub fn set_key(&self, key: impl Into<String>) {
        let key = key.into();
        self.tx.send_if_modified(|s| {
            if s.key == key {
                return false;
            }
            s.key = key;
            true
        });
    }
}

/// The signal a registration task receives when it must deregister and end.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// Resolves once the registration is dropped or deregistered.
    pub async fn wait(&mut self) {
        // An error means the handle is gone, which is a stop too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether the registration was told to stop.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

/// How long a deregistration may take before the task is abandoned.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A live registration. Dropping it deregisters in the background (bounded by
/// [`DEREGISTER_TIMEOUT`]); [`deregister`](Registration::deregister) does so and waits.
#[derive(Debug)]
pub struct Registration {
    status: watch::Receiver<RegistrationStatus>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// Runs `task` on the current Tokio runtime as the registration of `key`. The task
    /// reports through the [`Reporter`], and when [`Stop`] fires it removes the instance
    /// from the registry and returns. Backends use this; applications call a
    /// [`Registrar`].
    pub fn spawn<F, Fut>(key: impl Into<String>, task: F) -> Self
    where
        F: FnOnce(Reporter, Stop) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, status) = watch::channel(RegistrationStatus {
            key: key.into(),
            state: RegistrationState::Registering,
            last_error: None,
            last_error_at: None,
            registrations: 0,
            last_renewal: None,
        });
        let tx = Arc::new(tx);
        let (stop, stop_rx) = watch::channel(false);
        let reporter = Reporter { tx: tx.clone() };
        let fut = task(reporter, Stop { rx: stop_rx });
        let task = tokio::spawn(async move {
            fut.await;
            tx.send_modify(|s| s.state = RegistrationState::Deregistered);
        });
        Registration {
            status,
            stop,
            task: Some(task),
        }
    }

    /// The registration's current state.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// A watch that changes whenever the state, the key or the last error does.
    pub fn status_changes(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Waits until the instance is registered, at most `timeout`. On timeout the error
    /// carries the last failure, if any.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<(), DiscoveryError> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.registrations > 0 || s.state == RegistrationState::Deregistered),
        )
        .await;
        let status = self.status();
        match waited {
            Ok(Ok(_)) if status.registrations > 0 => Ok(()),
            _ => Err(DiscoveryError::new(
                status
                    .last_error
                    .as_ref()
                    .map_or(ErrorKind::Unavailable, DiscoveryError::kind),
                format!(
                    "`{}` was not registered within {timeout:?}{}",
                    status.key,
                    status
                        .last_error
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            )),
        }
    }

    /// Removes the instance from the registry and waits for it, at most
    /// [`DEREGISTER_TIMEOUT`].
    pub async fn deregister(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(DEREGISTER_TIMEOUT, task)
                .await
                .is_err()
            {
                tracing::warn!(key = %self.status.borrow().key, "deregistration timed out");
                abort.abort();
            }
        }
    }

    /// Runs `server` (a tonic server future, say `Server::builder()...serve_with_shutdown(..)`)
    /// with this registration alive, and deregisters when it ends, before returning its
    /// result. Start the server's listener before registering, so no client is sent to a
    /// port that is not open yet.
    pub async fn serve<F, T>(self, server: F) -> T
    where
        F: Future<Output = T>,
    {
        let out = server.await;
        self.deregister().await;
        out
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // Let the task deregister, but not forever; outside a runtime it is aborted
            // with the runtime itself.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let abort = task.abort_handle();
                handle.spawn(async move {
                    if tokio::time::timeout(DEREGISTER_TIMEOUT, task)
                        .await
                        .is_err()
                    {
                        abort.abort();
                    }
                });
            }
        }
    }
}

/// A registry a server can announce itself in (etcd, Consul).
pub trait Registrar: Send + Sync + 'static {
    /// Validates `instance` and starts its registration. Fails at once only for an
    /// instance that can never be registered (no name, a bad address); registry outages
    /// are retried by the registration and show in its status.
    fn register(&self, instance: Instance) -> Result<Registration, DiscoveryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_validated() {
        for (addr, want) in [
            ("10.0.0.1:50051", None),
            ("[::1]:50051", None),
            ("pod.example:50051", None),
            ("10.0.0.1", Some("no port")),
            ("10.0.0.1:0", Some("1..=65535")),
            ("10.0.0.1:http", Some("1..=65535")),
            (":50051", Some("host is empty")),
            ("0.0.0.0:50051", Some("unspecified")),
            ("[::]:50051", Some("unspecified")),
        ] {
            let r = Instance::new("greeter", addr).validate();
            match want {
                None => assert!(r.is_ok(), "{addr}: {r:?}"),
                Some(w) => {
                    let e = r.unwrap_err().to_string();
                    assert!(e.contains(w) && e.contains(addr), "{addr}: {e}");
                }
            }
        }
        let e = Instance::new(" ", "10.0.0.1:1").validate().unwrap_err();
        assert!(e.to_string().contains("name is empty"));
    }

    #[tokio::test]
    async fn a_registration_reports_and_deregisters() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let registration = Registration::spawn("k", |reporter, mut stop| async move {
            reporter.failed(DiscoveryError::new(ErrorKind::Unavailable, "down"));
            reporter.registered();
            reporter.set_key("k2");
            stop.wait().await;
            let _ = done_tx.send(());
        });
        registration
            .wait_registered(Duration::from_secs(5))
            .await
            .unwrap();
        let s = registration.status();
        assert_eq!(s.state, RegistrationState::Registered);
        assert_eq!(s.key, "k2");
        assert_eq!(s.registrations, 1);
        assert_eq!(s.last_error.unwrap().message(), "down");
        let mut changes = registration.status_changes();
        registration.deregister().await;
        done_rx.await.unwrap();
        changes
            .wait_for(|s| s.state == RegistrationState::Deregistered)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn dropping_stops_the_task() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let registration = Registration::spawn("k", |_, mut stop| async move {
            stop.wait().await;
            let _ = done_tx.send(());
        });
        drop(registration);
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded_and_names_the_last_error() {
        let registration = Registration::spawn("svc/1", |reporter, mut stop| async move {
            reporter.failed(DiscoveryError::new(
                ErrorKind::Forbidden,
                "permission denied",
            ));
            stop.wait().await;
        });
        let e = registration
            .wait_registered(Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        assert!(e.message().contains("svc/1") && e.message().contains("permission denied"));
        assert_eq!(registration.status().state, RegistrationState::Registering);
    }
}
