//! The watch loop of one DNS target: resolve when due, yield what changed, keep the last good
//! set through failures.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::resolver::{Outcome, Resolver};
use super::schedule::Schedule;
use super::target::{DnsTarget, Query};
use super::{DnsConfig, EmptyAnswer};
use crate::{DiscoveryError, Endpoint, ErrorKind, Update};

/// The state of one watch stream. All its work happens while the stream is polled, so
/// dropping the stream stops it: there is no background task to leak.
pub(crate) struct Watcher {
    target: Arc<DnsTarget>,
    config: Arc<DnsConfig>,
    /// Built on the first resolution (it reads /etc/resolv.conf), kept afterwards.
    resolver: Option<Resolver>,
    /// Bumped by `resolve_now`; `None` once the discovery that feeds it is gone.
    resolve_now: Option<watch::Receiver<u64>>,
    schedule: Schedule,
    /// The last set yielded; `None` before the first.
    last: Option<Vec<Endpoint>>,
    /// The last item yielded was an error, so an unchanged set is yielded again to clear it.
    reported_error: bool,
    /// Since when the name has been answered empty while a set was held.
    empty_since: Option<Instant>,
    queue: VecDeque<Result<Update, DiscoveryError>>,
}

impl Watcher {
    pub(crate) fn new(
        target: Arc<DnsTarget>,
        config: Arc<DnsConfig>,
        resolve_now: watch::Receiver<u64>,
    ) -> Self {
        let schedule = Schedule::new(&config, Instant::now());
        Watcher {
            target,
            config,
            resolver: None,
            resolve_now: Some(resolve_now),
            schedule,
            last: None,
            reported_error: false,
            empty_since: None,
            queue: VecDeque::new(),
        }
    }

    /// The next item of the stream. Never ends: DNS can always change.
    pub(crate) async fn next(&mut self) -> Result<Update, DiscoveryError> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return item;
            }
            self.wait_until_due().await;
            self.resolve().await;
        }
    }

    async fn wait_until_due(&mut self) {
        loop {
            let due = self.schedule.due();
            if due <= Instant::now() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => return,
                changed = changed(&mut self.resolve_now) => {
                    if changed {
                        if self.schedule.resolve_now(Instant::now()) {
                            tracing::debug!(target = ?self.target.query, "connection failure: re-resolving early");
                        }
                    } else {
                        self.resolve_now = None;
                    }
                }
            }
        }
    }

    async fn resolve(&mut self) {
        let started = Instant::now();
        self.schedule.started(started);
        if self.resolver.is_none() {
            match Resolver::new(&self.config, self.target.server) {
                Ok(r) => self.resolver = Some(r),
                Err(e) => {
                    self.schedule.failed(started);
                    self.report_kept(e);
                    return;
                }
            }
        }
        let Some(resolver) = self.resolver.as_ref() else {
            return;
        };
        // With nothing to keep, half an answer (one family) beats none.
        let partial_ok = self.last.as_ref().is_none_or(Vec::is_empty);
        let outcome = match &self.target.query {
            Query::Host { name, port } => resolver.resolve_host(name, *port, partial_ok).await,
            Query::Srv { name } => resolver.resolve_srv(name, partial_ok).await,
            Query::Literal(sa) => Outcome::Found {
                endpoints: vec![Endpoint::new(*sa)],
                ttl: Duration::MAX,
            },
        };
        let servers = resolver.servers().to_owned();
        let now = Instant::now();
        match outcome {
            Outcome::Found { endpoints, ttl } => {
                self.schedule.succeeded(now, ttl);
                self.empty_since = None;
                self.publish(endpoints);
            }
            Outcome::Failed(e) => {
                self.schedule.failed(now);
                self.report_kept(e);
            }
            Outcome::Empty { nxdomain, what } => self.on_empty(now, nxdomain, &what, &servers),
        }
    }

    fn on_empty(&mut self, now: Instant, nxdomain: bool, what: &str, servers: &str) {
        let kind = if nxdomain {
            ErrorKind::NotFound
        } else {
            ErrorKind::Resolve
        };
        let held = self.last.as_ref().map_or(0, Vec::len);
        self.schedule.failed(now);
        if held == 0 {
            self.report(kind, &format!("{what} (asked {servers})"));
            return;
        }
        let keep = match self.config.on_empty {
            EmptyAnswer::KeepFor(d) => d,
            EmptyAnswer::Clear => Duration::ZERO,
        };
        let since = *self.empty_since.get_or_insert(now);
        let until = since.checked_add(keep);
        if until.is_some_and(|u| now >= u) {
            self.publish(Vec::new());
            self.report(
                kind,
                &format!(
                    "{what} (asked {servers}); dropped the last {held} endpoints after {:.1?} of empty answers",
                    now - since
                ),
            );
            return;
        }
        if let Some(until) = until {
            // Recheck when the hold ends, even if the backoff is longer.
            self.schedule.due_by(until);
        }
        let left = until.map_or_else(
            || "indefinitely".to_owned(),
            |u| format!("for up to {:.1?} more", u - now),
        );
        self.report(
            kind,
            &format!("{what} (asked {servers}); keeping the last {held} endpoints {left}"),
        );
    }

    fn publish(&mut self, endpoints: Vec<Endpoint>) {
        if self.last.as_ref() != Some(&endpoints) || self.reported_error {
            self.queue.push_back(Ok(Update::Reset(endpoints.clone())));
        }
        self.last = Some(endpoints);
        self.reported_error = false;
    }

    /// Yields an error; `message` already says what is kept, this adds when the retry is.
    fn report(&mut self, kind: ErrorKind, message: &str) {
        let retry_in = self
            .schedule
            .due()
            .saturating_duration_since(Instant::now());
        tracing::debug!(?retry_in, "{message}");
        self.queue.push_back(Err(DiscoveryError::new(
            kind,
            format!("{message}; retrying in {retry_in:.1?}"),
        )));
        self.reported_error = true;
    }

    /// A failure that leaves the set as it is.
    fn report_kept(&mut self, e: DiscoveryError) {
        let message = match self.last.as_ref().map_or(0, Vec::len) {
            0 => e.message().to_owned(),
            n => format!("{}; keeping the last {n} endpoints", e.message()),
        };
        self.report(e.kind(), &message);
    }
}

/// Waits for a `resolve_now` signal: `true` on one, `false` when the sender is gone (and
/// never again after that).
async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
