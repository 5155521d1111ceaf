//! The watch loop: list the prefix, then watch it from the list's revision + 1, applying
//! events as they come; resume from the last revision seen after a broken stream; relist
//! (one snapshot) when that revision was compacted away.
//!
//! Where go-zero and kratos go wrong, and what this loop does instead:
//! - go-zero (`core/discov/internal/registry.go`, `watch`) re-watches from a compacted
//!   revision in a loop; here a compaction cancels the watch, the prefix is listed again
//!   and the list replaces the set in one [`Update::Reset`].
//! - kratos (`contrib/registry/etcd/watcher.go`) lists again on every change and fails
//!   the whole list on one bad value; here events are applied one key at a time and a bad
//!   value is skipped and reported.
//! - Neither notices a member that is cut off from its cluster: every request here
//!   requires a leader, and a watch that has been silent for `progress_interval` asks for
//!   progress and is abandoned when the answer does not come within the request timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream};
use tokio::time::Instant;

use super::client::{self, Failure, Need, bounded};
use super::{EtcdConfig, EtcdTarget, value};
use crate::backoff::Backoff;
use crate::lookup::{self, Found};
use crate::{DiscoveryError, ErrorKind, Update, UpdateStream};

type Item = Result<Update, DiscoveryError>;

struct State {
    label: String,
    target: EtcdTarget,
    prefix: String,
    config: EtcdConfig,
    client: Option<Client>,
    watch: Option<WatchStream>,
    /// The prefix must be listed before the next watch: at the start and after a
    /// compaction.
    needs_list: bool,
    /// Every event up to this revision has been applied.
    rev: i64,
    /// The usable entries, by key.
    entries: BTreeMap<String, Found>,
    /// What the channel was last told.
    published: lookup::Published,
    backoff: Backoff,
    pause: Option<Duration>,
    /// When the watch last said anything.
    heard: Instant,
    /// When we asked for progress, still unanswered.
    asked: Option<Instant>,
}

pub(super) fn watch(label: String, target: EtcdTarget, config: EtcdConfig) -> UpdateStream {
    let backoff = Backoff::new(config.backoff.clone().max_delay(target.max_backoff));
    let state = State {
        label,
        prefix: target.prefix(),
        target,
        config,
        client: None,
        watch: None,
        needs_list: true,
        rev: 0,
        entries: BTreeMap::new(),
        published: lookup::Published::default(),
        backoff,
        pause: None,
        heard: Instant::now(),
        asked: None,
    };
    lookup::stepped(state)
}

impl lookup::Step for State {
    fn step(&mut self) -> impl Future<Output = Vec<Result<Update, DiscoveryError>>> + Send {
        State::step(self)
    }
}

impl State {
    fn error(&self, f: Failure, what: &str) -> DiscoveryError {
        let e = f.into_error(&self.target.cluster, what, &self.prefix, Need::Read);
        DiscoveryError::new(e.kind(), format!("{}: {e}", self.label))
    }

    async fn step(&mut self) -> Vec<Item> {
        if let Some(d) = self.pause.take() {
            tokio::time::sleep(d).await;
        }
        let client = match &self.client {
            Some(c) => c.clone(),
            None => match client::connect(&self.target.cluster, &self.prefix).await {
                Ok(c) => {
                    self.client = Some(c.clone());
                    c
                }
                Err(e) => {
                    let e = DiscoveryError::new(e.kind(), format!("{}: {e}", self.label));
                    return self.fail(e);
                }
            },
        };
        if self.watch.is_none() {
            return self.start(client).await;
        }
        self.next().await
    }

    /// Lists when needed, then starts the watch.
    async fn start(&mut self, client: Client) -> Vec<Item> {
        let mut out = Vec::new();
        if !self.needs_list && self.published.failed {
            match self.resumable(&client).await {
                Ok(true) => {}
                Ok(false) => self.needs_list = true,
                Err(e) => return self.fail(e),
            }
        }
        if self.needs_list {
            match self.list(&client).await {
                Ok(items) => out.extend(items),
                Err(e) => return self.fail(e),
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.rev + 1)
            .with_progress_notify();
        let mut watch_client = client.watch_client();
        let started = bounded(
            self.target.cluster.timeout,
            watch_client.watch(self.prefix.clone(), Some(options)),
        )
        .await;
        match started {
            Ok(w) => {
                self.watch = Some(w);
                self.heard = Instant::now();
                self.asked = None;
                // Resumed without a list (the history from our revision is still there,
                // `resumable` checked): the set is what it was, and discovery works again.
                if !out.iter().any(Result::is_ok)
                    && let Some(update) = self.published.recovered()
                {
                    out.push(Ok(update));
                }
            }
            Err(f) => {
                let e = self.error(f, "watch");
                self.client = None;
                out.extend(self.fail(e));
            }
        }
        out
    }

    /// Whether the history since our revision is still there to resume from: a read at
    /// that revision fails once etcd has compacted it away. (A watch created there is
    /// canceled too, but only after its creation, so the answer would come too late to
    /// know whether the set we kept is still good.)
    async fn resumable(&mut self, client: &Client) -> Result<bool, DiscoveryError> {
        let mut kv = client.kv_client();
        let options = GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_revision(self.rev);
        match bounded(
            self.target.cluster.timeout,
            kv.get(self.prefix.clone(), Some(options)),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(f)
                if f.status()
                    .is_some_and(|s| s.message().contains("compacted")) =>
            {
                tracing::info!(
                    target = %self.label,
                    resume = self.rev + 1,
                    "etcd compacted the revision the watch would resume from; listing again"
                );
                Ok(false)
            }
            // Our revision is in etcd's future: the cluster was rebuilt or restored from a
            // snapshot, and its history is not the one we saw.
            Err(f)
                if f.status()
                    .is_some_and(|s| s.message().contains("future revision")) =>
            {
                tracing::info!(
                    target = %self.label,
                    ours = self.rev,
                    "etcd's revision went backwards (rebuilt or restored); listing again"
                );
                Ok(false)
            }
            Err(f) => {
                self.client = None;
                Err(self.error(f, "read"))
            }
        }
    }

    /// Lists the prefix and replaces the set with what etcd holds, in one snapshot.
    async fn list(&mut self, client: &Client) -> Result<Vec<Item>, DiscoveryError> {
        let mut kv = client.kv_client();
        let resp = bounded(
            self.target.cluster.timeout,
            kv.get(self.prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let resp = match resp {
            Ok(r) => r,
            Err(f) => {
                self.client = None;
                return Err(self.error(f, "list"));
            }
        };
        let Some(rev) = resp.header().map(|h| h.revision()) else {
            return Err(DiscoveryError::new(
                ErrorKind::Malformed,
                format!(
                    "{}: etcd answered the list of `{}` without a header revision",
                    self.label, self.prefix
                ),
            ));
        };
        self.entries.clear();
        let mut problems = Vec::new();
        for kv in resp.kvs() {
            self.apply_put(kv.key(), kv.value(), &mut problems);
        }
        self.rev = rev;
        self.needs_list = false;
        self.backoff.reset();
        Ok(self.publish(problems).await)
    }

    /// Waits for the next watch response, at most until a progress request is due or
    /// overdue.
    async fn next(&mut self) -> Vec<Item> {
        let timeout = self.target.cluster.timeout;
        let deadline = match self.asked {
            Some(at) => at + timeout,
            None => self.heard + self.config.progress_interval,
        };
        let Some(watch) = self.watch.as_mut() else {
            return Vec::new();
        };
        let got = tokio::time::timeout_at(deadline, watch.message()).await;
        match got {
            Err(_) if self.asked.is_none() => {
                self.asked = Some(Instant::now());
                let asked = bounded(timeout, watch.request_progress()).await;
                if let Err(f) = asked {
                    return self.broken(f);
                }
                Vec::new()
            }
            Err(_) => {
                let e = DiscoveryError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{}: etcd {} did not answer a progress request on the watch of `{}` \
                         within {timeout:?}; reconnecting, and resuming from revision {}",
                        self.label,
                        self.target.cluster.hosts.join(","),
                        self.prefix,
                        self.rev + 1
                    ),
                );
                self.drop_connection();
                self.fail(e)
            }
            Ok(Err(e)) => self.broken(Failure::Etcd(e)),
            Ok(Ok(None)) => {
                let e = DiscoveryError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{}: etcd ended the watch of `{}`; resuming from revision {}",
                        self.label,
                        self.prefix,
                        self.rev + 1
                    ),
                );
                self.drop_connection();
                self.fail(e)
            }
            Ok(Ok(Some(resp))) => {
                self.heard = Instant::now();
                self.asked = None;
                self.handle(resp).await
            }
        }
    }

    fn drop_connection(&mut self) {
        self.watch = None;
        self.client = None;
    }

    /// The stream broke: report it and resume from the last revision on a new connection.
    fn broken(&mut self, f: Failure) -> Vec<Item> {
        let e = self.error(f, "watch");
        self.drop_connection();
        self.fail(e)
    }

    async fn handle(&mut self, resp: WatchResponse) -> Vec<Item> {
        if resp.canceled() {
            self.watch = None;
            if resp.compact_revision() > 0 {
                tracing::info!(
                    target = %self.label,
                    compacted = resp.compact_revision(),
                    resume = self.rev + 1,
                    "etcd compacted the revision the watch resumes from; listing again"
                );
                self.needs_list = true;
                return Vec::new();
            }
            let reason = resp.cancel_reason().to_owned();
            let status = if reason.contains("permission denied") {
                tonic::Status::permission_denied(reason.clone())
            } else {
                tonic::Status::unavailable(reason.clone())
            };
            let (kind, detail) = client::status_detail(
                &status,
                self.target.cluster.user.as_deref(),
                &self.prefix,
                Need::Read,
            );
            let e = DiscoveryError::new(
                kind,
                format!(
                    "{}: etcd {} canceled the watch of `{}`: {detail}",
                    self.label,
                    self.target.cluster.hosts.join(","),
                    self.prefix
                ),
            );
            return self.fail(e);
        }
        let header_rev = resp.header().map(|h| h.revision());
        if let Some(rev) = header_rev
            && rev < self.rev
        {
            // etcd's revision went backwards: the cluster was rebuilt or restored from a
            // snapshot, and the history we would resume from is not this one.
            tracing::info!(
                target = %self.label,
                etcd = rev,
                ours = self.rev,
                "etcd's revision went backwards; listing again"
            );
            self.watch = None;
            self.needs_list = true;
            return Vec::new();
        }
        if resp.events().is_empty() {
            // Created, or a progress notification. The latter says the member is alive;
            // its revision is not used to resume from, because etcd before 3.4.25 and
            // 3.5.8 may send it ahead of events still to come (etcd#15220), and resuming
            // from it would lose them. Only events' revisions count.
            self.backoff.reset();
            return Vec::new();
        }
        let mut problems = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            self.rev = self.rev.max(kv.mod_revision());
            match ev.event_type() {
                EventType::Put => self.apply_put(kv.key(), kv.value(), &mut problems),
                EventType::Delete => {
                    self.entries
                        .remove(String::from_utf8_lossy(kv.key()).as_ref());
                }
            }
        }
        self.backoff.reset();
        self.publish(problems).await
    }

    fn apply_put(&mut self, key: &[u8], value: &[u8], problems: &mut Vec<String>) {
        let key = String::from_utf8_lossy(key).into_owned();
        match value::parse(&self.target, &key, value) {
            Ok(Some(found)) => {
                self.entries.insert(key, found);
            }
            Ok(None) => {
                self.entries.remove(&key);
            }
            Err(why) => {
                self.entries.remove(&key);
                problems.push(why);
            }
        }
    }

    /// Sends the set when it changed (or discovery recovered), then the problems.
    async fn publish(&mut self, mut problems: Vec<String>) -> Vec<Item> {
        let (endpoints, unresolved) =
            lookup::resolve(self.entries.values().cloned().collect()).await;
        problems.extend(unresolved);
        self.published.answer(&self.label, endpoints, problems)
    }

    fn fail(&mut self, e: DiscoveryError) -> Vec<Item> {
        let (pause, items) =
            self.published
                .fail(&self.label, "etcd discovery", &mut self.backoff, e);
        self.pause = Some(pause);
        items
    }
}
