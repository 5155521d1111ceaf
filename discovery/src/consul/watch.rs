//! The watch loop: blocking queries on `/v1/health/service/<name>`, as Consul documents
//! them (`api/features/blocking`): the index comes from `X-Consul-Index`, goes back to 0
//! when it moves backwards, is never below 1, and the loop is rate-limited.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;

use super::client::{Agent, Answer, REQUEST_TIMEOUT, enc};
use super::health;
use super::{ConsulConfig, ConsulTarget, HealthFilter, QUERY_BURST};
use crate::backoff::Backoff;
use crate::lookup;
use crate::{DiscoveryError, Endpoint, ErrorKind, Update, UpdateStream};

type Item = Result<Update, DiscoveryError>;

/// Added to `wait + wait/16` for the HTTP timeout of a blocking query.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);

struct State {
    label: String,
    target: ConsulTarget,
    agent: Option<Agent>,
    index: u64,
    /// What the channel was last told.
    published: lookup::Published,
    backoff: Backoff,
    pause: Option<Duration>,
    limit: RateLimit,
}

/// A token bucket: [`QUERY_BURST`] queries back to back, then one per `every`.
#[derive(Debug)]
struct RateLimit {
    every: Duration,
    tokens: f64,
    at: Option<Instant>,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        RateLimit {
            every,
            tokens: f64::from(QUERY_BURST),
            at: None,
        }
    }

    /// Takes a token for a query starting at `now`: how long to wait first.
    fn take(&mut self, now: Instant) -> Duration {
        if self.every.is_zero() {
            return Duration::ZERO;
        }
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() / self.every.as_secs_f64();
            self.tokens = (self.tokens + earned).min(f64::from(QUERY_BURST));
        }
        self.at = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // The wait earns the missing part of the token.
            let wait = self.every.mul_f64(-self.tokens);
            self.tokens = 0.0;
            self.at = Some(now + wait);
            wait
        }
    }
}

pub(super) fn watch(label: String, target: ConsulTarget, config: ConsulConfig) -> UpdateStream {
    let backoff = Backoff::new(config.backoff.clone().max_delay(target.max_backoff));
    let limit = RateLimit::new(config.min_query_interval);
    let state = State {
        label,
        target,
        agent: None,
        index: 0,
        published: lookup::Published::default(),
        backoff,
        pause: None,
        limit,
    };
    lookup::stepped(state)
}

impl lookup::Step for State {
    fn step(&mut self) -> impl Future<Output = Vec<Result<Update, DiscoveryError>>> + Send {
        State::step(self)
    }
}

impl State {
    fn agent(&mut self) -> Result<Agent, DiscoveryError> {
        if let Some(a) = &self.agent {
            return Ok(a.clone());
        }
        let t = &self.target;
        let agent = Agent::new(
            &t.agent,
            t.token.as_deref(),
            t.user.as_deref(),
            t.password.as_deref(),
        )
        .map_err(|e| DiscoveryError::new(ErrorKind::Other, format!("{}: {e}", self.label)))?;
        self.agent = Some(agent.clone());
        Ok(agent)
    }

    fn path(&self) -> String {
        let t = &self.target;
        let mut q = format!("/v1/health/service/{}?", enc(&t.service));
        if t.health == HealthFilter::Passing {
            q.push_str("passing=1&");
        }
        for tag in &t.tags {
            q.push_str(&format!("tag={}&", enc(tag)));
        }
        if let Some(dc) = &t.dc {
            q.push_str(&format!("dc={}&", enc(dc)));
        }
        if let Some(near) = &t.near {
            q.push_str(&format!("near={}&", enc(near)));
        }
        if t.allow_stale {
            q.push_str("stale=1&");
        }
        if t.require_consistent {
            q.push_str("consistent=1&");
        }
        if self.index > 0 {
            q.push_str(&format!(
                "index={}&wait={}ms",
                self.index,
                t.wait.as_millis()
            ));
        }
        q.trim_end_matches(['&', '?']).to_owned()
    }

    fn timeout(&self) -> Duration {
        let asked = self.target.timeout.unwrap_or(REQUEST_TIMEOUT);
        if self.index > 0 {
            let w = self.target.wait;
            asked.max(w + w / 16 + BLOCKING_SLACK)
        } else {
            asked
        }
    }

    async fn step(&mut self) -> Vec<Item> {
        if let Some(d) = self.pause.take() {
            tokio::time::sleep(d).await;
        }
        // Rate limit: an agent that answers at once every time (an index that keeps
        // resetting, a proxy that ignores `wait`) must not spin the loop; but the query
        // after a change must not wait either, so a token bucket allows a short burst.
        let delay = self.limit.take(Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let agent = match self.agent() {
            Ok(a) => a,
            Err(e) => return self.fail(e),
        };
        let answer = agent
            .send(Method::GET, &self.path(), None, self.timeout())
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let e = DiscoveryError::new(e.kind(), format!("{}: {e}", self.label));
                return self.fail(e);
            }
        };
        if answer.status != StatusCode::OK {
            let e = self.status_error(&agent, &answer);
            return self.fail(e);
        }
        let Some(new_index) = answer.index else {
            let e = DiscoveryError::new(
                ErrorKind::Malformed,
                format!(
                    "{}: Consul agent {} answered without an `X-Consul-Index` header; is \
                     this a Consul agent?",
                    self.label,
                    agent.addr()
                ),
            );
            return self.fail(e);
        };
        let (found, bad) =
            match health::parse(&answer.body, &self.target.service, self.target.health) {
                Ok(p) => p,
                Err(msg) => {
                    let e =
                        DiscoveryError::new(ErrorKind::Malformed, format!("{}: {msg}", self.label));
                    return self.fail(e);
                }
            };
        // With ACLs, Consul does not refuse a health query for a service the token may not
        // read: it filters the entries away, and says so in a header (only to a caller that
        // gave a token). An empty list then means "not allowed", not "no instances".
        if answer.filtered && found.is_empty() && bad.is_empty() {
            let e = DiscoveryError::new(
                ErrorKind::Forbidden,
                format!(
                    "{}: Consul agent {} filtered every instance of `{}` out by ACLs \
                     (X-Consul-Results-Filtered-By-ACLs): the token lacks `service:read` on \
                     `{}` (or `node:read` on its nodes); grant it in the token's policy. \
                     Keeping the last known endpoints",
                    self.label,
                    agent.addr(),
                    self.target.service,
                    self.target.service
                ),
            );
            return self.fail(e);
        }
        let partly_filtered = answer.filtered;
        // Consul's rules: an index that went backwards (a server restored from a snapshot,
        // another server answering) starts over, and an index below 1 is taken as 1, so the
        // next query blocks instead of returning at once.
        self.index = if new_index < self.index { 0 } else { new_index }.max(1);
        self.backoff.reset();
        let (endpoints, mut problems) = self.resolve(found).await;
        problems.extend(bad);
        if partly_filtered {
            problems.push(
                "some instances: the agent filtered them out by ACLs (the token lacks \
                 `service:read` or `node:read` on some of them)"
                    .to_owned(),
            );
        }
        self.published.answer(&self.label, endpoints, problems)
    }

    fn fail(&mut self, e: DiscoveryError) -> Vec<Item> {
        let (pause, items) = self
            .published
            .fail(&self.label, "Consul query", &mut self.backoff, e);
        self.pause = Some(pause);
        items
    }

    fn status_error(&self, agent: &Agent, answer: &Answer) -> DiscoveryError {
        let t = &self.target;
        let code = answer.status.as_u16();
        let body = answer.text();
        let (kind, advice) = match answer.status {
            StatusCode::FORBIDDEN => (
                ErrorKind::Forbidden,
                format!(
                    "the ACL token ({}) lacks `service:read` on `{}` (and `node:read` on its \
                     nodes): grant them in the token's policy, or give another token with \
                     `token=` in the target or CONSUL_HTTP_TOKEN",
                    if t.token.is_some() {
                        "the one given"
                    } else {
                        "none given, so the anonymous token"
                    },
                    t.service
                ),
            ),
            StatusCode::UNAUTHORIZED => (
                ErrorKind::Unauthenticated,
                "the agent did not accept the user and password given in the target".to_owned(),
            ),
            StatusCode::NOT_FOUND => (
                ErrorKind::NotFound,
                "the agent has no health endpoint at this path: is this a Consul agent?".to_owned(),
            ),
            StatusCode::TOO_MANY_REQUESTS => (
                ErrorKind::Unavailable,
                "the agent is rate-limiting us; retrying with backoff".to_owned(),
            ),
            s if s.is_server_error() => (
                ErrorKind::Unavailable,
                "the agent or its servers failed; retrying with backoff".to_owned(),
            ),
            _ => (ErrorKind::Other, "check the target's parameters".to_owned()),
        };
        DiscoveryError::new(
            kind,
            format!(
                "{}: Consul agent {} answered {code} to the health query for `{}`: {body}; {advice}",
                self.label,
                agent.addr(),
                t.service
            ),
        )
    }

    /// Resolves host names, drops duplicate addresses (the first wins) and applies `limit`.
    async fn resolve(&self, found: Vec<health::Found>) -> (Vec<Endpoint>, Vec<String>) {
        let (mut out, problems) = lookup::resolve(found).await;
        if let Some(limit) = self.target.limit {
            out.truncate(limit);
        }
        (out, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_one_query_per_interval() {
        let every = Duration::from_millis(50);
        let mut limit = RateLimit::new(every);
        let t0 = Instant::now();
        for _ in 0..QUERY_BURST {
            assert_eq!(limit.take(t0), Duration::ZERO);
        }
        // Spinning: each further query waits a whole interval.
        assert_eq!(limit.take(t0), every);
        assert_eq!(limit.take(t0 + every), every);
        // After a quiet minute (a blocking query), the next change is answered at once.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..QUERY_BURST {
            assert_eq!(limit.take(later), Duration::ZERO);
        }
        assert!(limit.take(later) > Duration::ZERO);
        // Zero turns it off.
        let mut off = RateLimit::new(Duration::ZERO);
        for _ in 0..100 {
            assert_eq!(off.take(t0), Duration::ZERO);
        }
    }
}
