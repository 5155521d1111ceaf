//! `consul:` target syntax: go-zero's (zero-contrib `zrpc/registry/consul/target.go`), with
//! the same parameter names, plus `health=`.

use std::time::Duration;

pub(crate) use crate::params::duration;
use crate::params::{boolean, check_host_port, decode, pairs, suggest};
use crate::{Target, TargetError};

/// Which instances a Consul target returns, by the state of their checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthFilter {
    /// Only instances whose checks all pass (`?passing` on the health endpoint). The
    /// default, and `healthy=true`.
    #[default]
    Passing,
    /// Instances with no critical check: passing ones with `Weights.Passing`, warning ones
    /// with `Weights.Warning` (`health=warning`).
    Warning,
    /// Every registered instance, critical ones too (`healthy=false`, go-zero's default;
    /// `health=any`).
    Any,
}

/// Default `wait` of a blocking query: kratos's 55 s, below the 60 s idle timeout that
/// many proxies and NATs apply. Consul's own default is 5 minutes.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(55);
/// Consul caps `wait` at 10 minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Default longest delay between retries after a failed query.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A parsed `consul:` target.
///
/// ```text
/// consul://[user:password@]agent-host:8500/service?wait=14s&tag=grpc&healthy=true&token=..
///          &dc=dc1&near=_agent&limit=10&timeout=5s&max-backoff=1s&allow-stale=true
///          &require-consistent=false&insecure=false&health=passing|warning|any
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsulTarget {
    /// The agent's `host:port`, spoken to over plain HTTP.
    pub agent: String,
    /// HTTP basic-auth user (`user:password@`).
    pub user: Option<String>,
    /// HTTP basic-auth password.
    pub password: Option<String>,
    /// The service name.
    pub service: String,
    /// `wait` of each blocking query.
    pub wait: Duration,
    /// `timeout`: the HTTP timeout of a request. A blocking query always gets at least
    /// `wait + wait/16` (Consul's jitter) plus 5 s.
    pub timeout: Option<Duration>,
    /// `max-backoff`: the longest delay between retries after a failure.
    pub max_backoff: Duration,
    /// `tag`: only instances with every one of these tags (repeat `tag=` for several).
    pub tags: Vec<String>,
    /// `near`: sort by round-trip time from this node (`_agent`: the agent's own).
    pub near: Option<String>,
    /// `limit`: keep at most this many instances (after sorting).
    pub limit: Option<usize>,
    /// `healthy` / `health`: which instances are returned.
    pub health: HealthFilter,
    /// `token`: the ACL token (default: the `CONSUL_HTTP_TOKEN` environment variable).
    pub token: Option<String>,
    /// `dc`: the datacenter (default: the agent's).
    pub dc: Option<String>,
    /// `allow-stale`: any server may answer, not only the leader.
    pub allow_stale: bool,
    /// `require-consistent`: the leader confirms its leadership before answering.
    pub require_consistent: bool,
}

/// The query parameters a target may have.
const PARAMS: &[&str] = &[
    "wait",
    "timeout",
    "max-backoff",
    "tag",
    "near",
    "limit",
    "healthy",
    "health",
    "insecure",
    "token",
    "dc",
    "allow-stale",
    "require-consistent",
];

impl ConsulTarget {
    /// Parses a `consul:` target, naming the bad part when it is not well formed.
    pub fn parse(target: &Target) -> Result<ConsulTarget, TargetError> {
        let input = target.as_str();
        let bad = |reason: String| TargetError::Invalid {
            input: input.to_owned(),
            reason,
        };
        const FORM: &str = "write `consul://agent-host:8500/service?param=value`";
        let Some(authority) = target.authority() else {
            return Err(bad(format!("no Consul agent address: {FORM}")));
        };
        if authority.contains('?') {
            return Err(bad(format!("no service name: {FORM}")));
        }
        let (userinfo, agent) = match authority.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (
                    Some(decode(user)).filter(|u| !u.is_empty()),
                    Some(decode(pass)).filter(|p| !p.is_empty()),
                )
            }
        };
        check_agent(agent).map_err(|why| bad(format!("agent address `{agent}` {why}")))?;
        let (path, query) = target
            .endpoint()
            .split_once('?')
            .unwrap_or((target.endpoint(), ""));
        let service = decode(path.trim_matches('/'));
        if service.is_empty() {
            return Err(bad(format!("no service name: {FORM}")));
        }
        if service.contains('/') {
            return Err(bad(format!(
                "`{service}` is not a Consul service name (it has a `/`)"
            )));
        }
        let mut t = ConsulTarget {
            agent: agent.to_owned(),
            user,
            password,
            service,
            wait: DEFAULT_WAIT,
            timeout: None,
            max_backoff: DEFAULT_MAX_BACKOFF,
            tags: Vec::new(),
            near: None,
            limit: None,
            health: HealthFilter::Passing,
            token: None,
            dc: None,
            allow_stale: false,
            require_consistent: false,
        };
        let mut healthy: Option<bool> = None;
        let mut health: Option<HealthFilter> = None;
        for (key, value) in pairs(query) {
            let param = |what: &str| bad(format!("parameter `{key}={value}`: {what}"));
            match key.as_str() {
                "wait" => {
                    let w = duration(&value).map_err(|e| param(&e))?;
                    if w > MAX_WAIT {
                        return Err(param("Consul caps `wait` at 10m"));
                    }
                    if !w.is_zero() {
                        t.wait = w;
                    }
                }
                "timeout" => {
                    t.timeout =
                        Some(duration(&value).map_err(|e| param(&e))?).filter(|d| !d.is_zero());
                }
                "max-backoff" => {
                    let d = duration(&value).map_err(|e| param(&e))?;
                    if !d.is_zero() {
                        t.max_backoff = d;
                    }
                }
                "tag" => {
                    if !value.is_empty() {
                        t.tags.push(value.clone());
                    }
                }
                "near" => t.near = Some(value.clone()).filter(|v| !v.is_empty()),
                "limit" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| param("expected a whole number, 0 for no limit"))?;
                    t.limit = Some(n).filter(|n| *n > 0);
                }
                "healthy" => healthy = Some(boolean(&value).map_err(|e| param(&e))?),
                "health" => {
                    health = Some(match value.as_str() {
                        "passing" => HealthFilter::Passing,
                        "warning" => HealthFilter::Warning,
                        "any" => HealthFilter::Any,
                        _ => return Err(param("expected `passing`, `warning` or `any`")),
                    })
                }
                // go-zero's TLS switch for an HTTPS agent; meshless speaks plain HTTP to
                // the agent (see the module docs), so only `false` means anything.
                "insecure" => {
                    if boolean(&value).map_err(|e| param(&e))? {
                        return Err(param(
                            "meshless talks to the Consul agent over plain HTTP, so there is no \
                             TLS to skip verifying; remove it",
                        ));
                    }
                }
                "token" => t.token = Some(value.clone()).filter(|v| !v.is_empty()),
                "dc" => t.dc = Some(value.clone()).filter(|v| !v.is_empty()),
                "allow-stale" => t.allow_stale = boolean(&value).map_err(|e| param(&e))?,
                "require-consistent" => {
                    t.require_consistent = boolean(&value).map_err(|e| param(&e))?;
                }
                _ => {
                    return Err(bad(format!(
                        "unknown parameter `{key}`{}; known: {}",
                        suggest(&key, PARAMS),
                        PARAMS.join(", ")
                    )));
                }
            }
        }
        t.health = match (healthy, health) {
            (None | Some(true), None) => HealthFilter::Passing,
            (Some(false), None) => HealthFilter::Any,
            (None, Some(h)) => h,
            (Some(true), Some(HealthFilter::Passing)) => HealthFilter::Passing,
            (Some(false), Some(HealthFilter::Any)) => HealthFilter::Any,
            (Some(_), Some(_)) => {
                return Err(bad(
                    "`healthy` and `health` disagree: give only one of them".into(),
                ));
            }
        };
        if t.allow_stale && t.require_consistent {
            return Err(bad(
                "`allow-stale` and `require-consistent` exclude each other: give one".into(),
            ));
        }
        if t.token.is_none() {
            t.token = std::env::var("CONSUL_HTTP_TOKEN")
                .ok()
                .filter(|v| !v.is_empty());
        }
        Ok(t)
    }
}

/// `input` with the password and the `token=` value replaced by `***`, for messages and
/// logs.
pub(crate) fn redact(input: &str) -> String {
    crate::redact_target(input)
}

/// Checks an agent address `host:port`.
pub(crate) fn check_agent(agent: &str) -> Result<(), String> {
    check_host_port(agent, "host:8500")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ConsulTarget, String> {
        let t = Target::split(s).map_err(|e| e.to_string())?;
        ConsulTarget::parse(&t).map_err(|e| e.to_string())
    }

    #[test]
    fn go_zero_targets_parse() {
        let t = parse(
            "consul://bob:s%40cret@127.0.0.1:8500/user.rpc?wait=14s&tag=grpc&tag=v2&healthy=true\
             &token=abc&dc=dc2&near=_agent&limit=3&timeout=5s&max-backoff=2s&insecure=false\
             &allow-stale=true",
        )
        .unwrap();
        assert_eq!(t.agent, "127.0.0.1:8500");
        assert_eq!(t.user.as_deref(), Some("bob"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.service, "user.rpc");
        assert_eq!(t.wait, Duration::from_secs(14));
        assert_eq!(t.tags, ["grpc", "v2"]);
        assert_eq!(t.health, HealthFilter::Passing);
        assert_eq!(t.token.as_deref(), Some("abc"));
        assert_eq!(t.dc.as_deref(), Some("dc2"));
        assert_eq!(t.near.as_deref(), Some("_agent"));
        assert_eq!(t.limit, Some(3));
        assert_eq!(t.timeout, Some(Duration::from_secs(5)));
        assert_eq!(t.max_backoff, Duration::from_secs(2));
        assert!(t.allow_stale && !t.require_consistent);

        let t = parse("consul://localhost:8500/greeter").unwrap();
        assert_eq!(t.wait, DEFAULT_WAIT);
        assert_eq!(t.health, HealthFilter::Passing);
        assert_eq!(
            parse("consul://h:8500/s?healthy=false").unwrap().health,
            HealthFilter::Any
        );
        assert_eq!(
            parse("consul://h:8500/s?health=warning").unwrap().health,
            HealthFilter::Warning
        );
        assert_eq!(
            parse("consul://h:8500/s?healthy=false&health=any")
                .unwrap()
                .health,
            HealthFilter::Any
        );
        assert_eq!(
            parse("consul://h:8500/s?wait=55000ms").unwrap().wait,
            Duration::from_secs(55)
        );
    }

    #[test]
    fn bad_targets_name_the_bad_part() {
        for (input, want) in [
            ("consul:///svc", "no Consul agent address"),
            ("consul://h:8500", "no service name"),
            ("consul://h:8500/", "no service name"),
            ("consul://h:8500?wait=1s", "no service name"),
            ("consul://h/svc", "`h` has no port"),
            ("consul://h:99999/svc", "port `99999`"),
            ("consul://h_x!:8500/svc", "not a host name"),
            ("consul://h:8500/a/b", "has a `/`"),
            ("consul://h:8500/s?wait=fast", "`wait=fast`"),
            ("consul://h:8500/s?wait=11m", "10m"),
            ("consul://h:8500/s?limit=-1", "`limit=-1`"),
            ("consul://h:8500/s?healthy=maybe", "`healthy=maybe`"),
            (
                "consul://h:8500/s?health=sick",
                "`passing`, `warning` or `any`",
            ),
            ("consul://h:8500/s?healthy=true&health=any", "disagree"),
            ("consul://h:8500/s?waitt=1s", "did you mean `wait`"),
            ("consul://h:8500/s?bogus=1", "unknown parameter `bogus`"),
            ("consul://h:8500/s?insecure=true", "plain HTTP"),
            (
                "consul://h:8500/s?allow-stale=true&require-consistent=true",
                "exclude",
            ),
        ] {
            let e = parse(input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact("consul://bob:pw@h:8500/s?wait=1s&token=abc&tag=x"),
            "consul://bob:***@h:8500/s?wait=1s&token=***&tag=x"
        );
        assert_eq!(redact("consul://h:8500/s"), "consul://h:8500/s");
    }
}
