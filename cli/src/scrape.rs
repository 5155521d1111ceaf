//! `meshless top --scrape URL`: the live view of an application that is already running,
//! read from the Prometheus text its metrics exporter serves, with no load of its own.
//!
//! Every interval it GETs the exposition, reads the `meshless.endpoint.*` series the
//! channel samples once a second (Prometheus spells them `meshless_endpoint_*`, counters
//! perhaps with `_total`), and prints the same frame as `top` from the change of the
//! success and failure counters since the previous scrape, and each endpoint's p50 and p99
//! from `meshless.endpoint.duration` (over the interval from a histogram's buckets, or the
//! exporter's own quantiles when it renders a summary).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::error::{CliError, one_line};
use crate::output;
use crate::top::{Frame, Row};

/// The shortest bound of one scrape (connection, request and whole body): the interval,
/// but never less than this, so a short `--interval` does not fail every scrape of a large
/// exposition.
const MIN_SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest bound of one scrape, however long the interval.
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest exposition read: far above what thousands of endpoints' series take.
const MAX_BODY: usize = 64 << 20;
/// The path asked for when the URL names none (Prometheus's default `metrics_path`).
const DEFAULT_PATH: &str = "/metrics";

/// Where to scrape: an `http://` URL (a bare `HOST:PORT` means `http://HOST:PORT/metrics`).
#[derive(Debug, Clone)]
pub struct ScrapeUrl {
    /// Host and port to connect to (brackets of an IPv6 host removed).
    host: String,
    port: u16,
    /// `host[:port]`, as the `Host` header carries it.
    authority: String,
    /// Path and query.
    path: String,
    /// The URL as given, for messages.
    shown: String,
}

impl ScrapeUrl {
    /// Parses `--scrape`'s value; a malformed one is a usage error naming it.
    pub fn parse(text: &str) -> Result<Self, CliError> {
        let bad = |why: &str| CliError::Usage(format!("--scrape {text}: {why}"));
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: http::Uri = with_scheme
            .parse()
            .map_err(|e| bad(&format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; scrape the exporter's plain http:// address",
                ));
            }
            Some(other) => return Err(bad(&format!("scheme {other} is not http"))),
            None => return Err(bad("not a URL")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = match uri.path_and_query().map(http::uri::PathAndQuery::as_str) {
            None | Some("" | "/") => DEFAULT_PATH.to_owned(),
            Some(p) => p.to_owned(),
        };
        Ok(ScrapeUrl {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path,
            shown: text.to_owned(),
        })
    }

    /// The exposition text, bounded by `timeout` as a whole.
    pub async fn get(&self, timeout: Duration) -> Result<String, String> {
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn exchange(&self) -> Result<String, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // The connection is driven beside the request and ends with this scrape.
        let conn = tokio::spawn(conn);
        let _abort = AbortOnDrop(conn);
        let request = http::Request::get(self.path.as_str())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::ACCEPT, "text/plain")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {}: {e}", self.path))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {}: HTTP {status}", self.path));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body of GET {}: {e}", self.path))?
            .to_bytes();
        String::from_utf8(body.to_vec())
            .map_err(|_| format!("GET {}: the body is not UTF-8 text", self.path))
    }
}

impl std::fmt::Display for ScrapeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Aborts the connection task when the scrape ends, however it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one scrape says about one endpoint of one channel.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scraped {
    /// `meshless.endpoint.successes`.
    pub successes: Option<f64>,
    /// `meshless.endpoint.failures`.
    pub failures: Option<f64>,
    /// `meshless.endpoint.in_flight`.
    pub in_flight: Option<f64>,
    /// `meshless.endpoint.latency_ewma`, in seconds.
    pub latency: Option<f64>,
    /// `meshless.endpoint.ejected`.
    pub ejected: Option<f64>,
    /// The `state` label of the `meshless.endpoint.state` series at 1.
    pub state: Option<String>,
    /// `meshless.endpoint.duration` as a histogram: cumulative counts by upper bound
    /// (`le`, in seconds), in the order written.
    pub duration_buckets: Vec<(f64, f64)>,
    /// `meshless.endpoint.duration` as a summary (the exporter's default without buckets):
    /// its p50 and p99, in seconds.
    pub duration_quantiles: (Option<f64>, Option<f64>),
}

/// One scrape: each endpoint by (`grpc.target`, `endpoint`) label.
pub type Exposition = BTreeMap<(String, String), Scraped>;

/// The `meshless_endpoint_*` series of a Prometheus text exposition. Other series, comments
/// and lines that do not parse are skipped.
pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("meshless_endpoint_") else {
            continue;
        };
        let Some((name, labels, value)) = split_sample(rest) else {
            continue;
        };
        // Counters may carry `_total`, and OpenTelemetry's exporter adds the unit (before a
        // histogram's `_bucket`).
        let name = name.strip_suffix("_total").unwrap_or(name);
        let name = name.strip_suffix("_seconds").unwrap_or(name);
        let name = if name == "duration_seconds_bucket" {
            "duration_bucket"
        } else {
            name
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k || key.replace('.', "_") == k)
                .map(|(_, v)| v.clone())
        };
        let (Some(target), Some(endpoint)) = (label("grpc_target"), label("endpoint")) else {
            continue;
        };
        let e = out.entry((target, endpoint)).or_default();
        match name {
            "duration_bucket" => {
                let le = label("le").and_then(|v| {
                    if v == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        v.parse().ok()
                    }
                });
                if let Some(le) = le {
                    e.duration_buckets.push((le, value));
                }
            }
            "duration" => match label("quantile").as_deref() {
                Some("0.5") => e.duration_quantiles.0 = Some(value),
                Some("0.99") => e.duration_quantiles.1 = Some(value),
                _ => {}
            },
            "successes" => e.successes = Some(value),
            "failures" => e.failures = Some(value),
            "in_flight" => e.in_flight = Some(value),
            "latency_ewma" => e.latency = Some(value),
            "ejected" => e.ejected = Some(value),
            "state" if value >= 0.5 => e.state = label("state"),
            _ => {}
        }
    }
    out
}

/// A series' labels, as `(key, value)` in the order written.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value [timestamp]` into its parts (the name after the prefix).
fn split_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // Skip separators, then a key up to `=`, then a quoted value with escapes.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                break start + 1;
            }
            let mut key_end = start + c.len_utf8();
            loop {
                let (i, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key_end = i + c.len_utf8();
            }
            let key = inner[start..key_end].trim().trim_matches('"').to_owned();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        };
        rest = &inner[end..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// The change of a cumulative count between two scrapes: a count that went down means the
/// application restarted, so all of it is new. A series the previous scrape lacked counts
/// from this scrape on (its earlier calls are not in the interval).
fn delta(last: Option<f64>, now: Option<f64>) -> u64 {
    match (last, now) {
        (Some(l), Some(n)) if n >= l => (n - l).round() as u64,
        (Some(_), Some(n)) => n.round() as u64,
        _ => 0,
    }
}

/// The `q` quantile of an endpoint's call durations, in ms: over the interval, from a
/// histogram's bucket counts (linear within the bucket it falls in, as Prometheus's
/// `histogram_quantile` does), or the summary's own figure (over the exporter's window).
fn percentile(before: Option<&Scraped>, now: &Scraped, q: f64) -> Option<f64> {
    if !now.duration_buckets.is_empty() {
        let mut buckets = now.duration_buckets.clone();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let earlier = |le: f64| {
            before
                .and_then(|b| b.duration_buckets.iter().find(|(l, _)| *l == le))
                .map(|(_, c)| *c)
        };
        let counts: Vec<(f64, f64)> = buckets
            .iter()
            .map(|&(le, c)| (le, delta(earlier(le), Some(c)) as f64))
            .collect();
        let total = counts.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &counts {
            if c >= rank {
                if le.is_infinite() {
                    // Beyond the largest finite bound: that bound is all that is known.
                    return Some(lower.0 * 1000.0);
                }
                let width = c - lower.1;
                let frac = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some((lower.0 + (le - lower.0) * frac) * 1000.0);
            }
            lower = (le, c);
        }
        return None;
    }
    let (p50, p99) = now.duration_quantiles;
    let v = if q <= 0.5 { p50 } else { p99 };
    v.map(|s| s * 1000.0)
}

/// The frame between two scrapes `dt` apart, `since` after the first, of the channels whose
/// `grpc.target` is `target` (all when `None`). Each endpoint's share is of its channel's
/// calls. Endpoints that left their channel (state `shutdown`) are left out.
pub fn frame(
    last: &Exposition,
    now: &Exposition,
    dt: Duration,
    since: Duration,
    target: Option<&str>,
) -> Frame {
    let secs = dt.as_secs_f64().max(1e-9);
    let mut rows: Vec<Row> = now
        .iter()
        .filter(|((t, _), s)| {
            target.is_none_or(|want| want == t) && s.state.as_deref() != Some("shutdown")
        })
        .map(|((t, endpoint), s)| {
            let before = last.get(&(t.clone(), endpoint.clone()));
            let failures = delta(before.and_then(|b| b.failures), s.failures);
            let calls = delta(before.and_then(|b| b.successes), s.successes) + failures;
            Row {
                target: Some(t.clone()),
                address: endpoint.clone(),
                state: s.state.clone().unwrap_or_else(|| "unknown".into()),
                ejected: s.ejected.is_some_and(|v| v >= 0.5),
                calls,
                share: 0.0,
                rps: calls as f64 / secs,
                in_flight: s.in_flight.map_or(0, |v| v.max(0.0).round() as u64),
                failures,
                latency_ms: s.latency.map(|v| v * 1000.0),
                p50_ms: percentile(before, s, 0.5),
                p99_ms: percentile(before, s, 0.99),
            }
        })
        .collect();
    let mut per_target: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        *per_target
            .entry(r.target.clone().unwrap_or_default())
            .or_default() += r.calls;
    }
    for r in &mut rows {
        let total = per_target[r.target.as_deref().unwrap_or_default()];
        r.share = if total == 0 {
            0.0
        } else {
            r.calls as f64 / total as f64
        };
    }
    let total: u64 = per_target.values().sum();
    Frame {
        seconds: since.as_secs_f64(),
        rps: total as f64 / secs,
        endpoints: rows,
    }
}

/// What `top --scrape` needs from its arguments.
pub struct ScrapeRun {
    /// Where to scrape.
    pub url: ScrapeUrl,
    /// Only this `grpc.target`, when given.
    pub target: Option<String>,
    /// How often to scrape and print.
    pub interval: Duration,
    /// Stop after this long (until Ctrl-C when `None`).
    pub duration: Option<Duration>,
    /// One JSON object per frame instead of the terminal view.
    pub json: bool,
}

/// Scrapes every interval until Ctrl-C or the duration, printing a frame after every
/// successful scrape but the first. A failed scrape prints one line on stderr and the run
/// goes on; the run fails (exit code 5) when no scrape of it succeeded.
pub async fn run(args: ScrapeRun) -> Result<(), CliError> {
    let bound = args.interval.clamp(MIN_SCRAPE_TIMEOUT, MAX_SCRAPE_TIMEOUT);
    let started = Instant::now();
    let until = args.duration.map(|d| started + d);
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last: Option<(Exposition, Instant)> = None;
    let mut first_ok: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut warned_empty = false;
    loop {
        let deadline = until.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
            _ = sleep_until(deadline) => break,
        }
        let text = match args.url.get(bound).await {
            Ok(text) => text,
            Err(e) => {
                let e = one_line(&e);
                eprintln!("meshless: scrape of {} failed: {e}", args.url);
                last_error = Some(e);
                continue;
            }
        };
        let at = Instant::now();
        let now = parse(&text);
        if now.is_empty() && !warned_empty {
            warned_empty = true;
            eprintln!(
                "meshless: {} has no meshless_endpoint_* series: is the application's channel built with metrics on (ChannelBuilder::metrics), and is this exporter serving its recorder?",
                args.url
            );
        }
        let since = at - *first_ok.get_or_insert(at);
        match &last {
            Some((before, then)) => {
                let frame = frame(before, &now, at - *then, since, args.target.as_deref());
                if args.json {
                    output::json_line(&frame)?;
                } else {
                    crate::top::print(&frame)?;
                    print_targets_note(&now, args.target.as_deref())?;
                }
            }
            None if !args.json => {
                output::line(&format!(
                    "scraped {}; the first frame follows in {}",
                    args.url,
                    humantime::format_duration(args.interval)
                ))?;
            }
            None => {}
        }
        last = Some((now, at));
    }
    match (first_ok, last_error) {
        (None, Some(e)) => Err(CliError::Scrape(format!(
            "no scrape of {} succeeded: {e}",
            args.url
        ))),
        (None, None) => Err(CliError::Scrape(format!(
            "{} was never scraped (the run ended first)",
            args.url
        ))),
        _ => Ok(()),
    }
}

/// Under the terminal view: which channels the exposition holds, when the view shows none
/// of them or several.
fn print_targets_note(now: &Exposition, target: Option<&str>) -> Result<(), CliError> {
    let targets: BTreeSet<&str> = now.keys().map(|(t, _)| t.as_str()).collect();
    match target {
        Some(t) if !targets.contains(t) => output::line(&format!(
            "  no channel with grpc.target {t}; the exposition has: {}",
            targets.into_iter().collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP meshless_endpoint_state 1 for an endpoint's connectivity state
# TYPE meshless_endpoint_state gauge
meshless_endpoint_state{grpc_target="bench",endpoint="127.0.0.1:1",state="ready"} 1
meshless_endpoint_state{grpc_target="bench",endpoint="127.0.0.1:1",state="idle"} 0
meshless_endpoint_state{grpc_target="bench",endpoint="127.0.0.1:2",state="transient_failure"} 1
meshless_endpoint_state{grpc_target="bench",endpoint="127.0.0.1:3",state="shutdown"} 1
meshless_endpoint_successes_total{grpc_target="bench",endpoint="127.0.0.1:1"} 90
meshless_endpoint_successes{endpoint="127.0.0.1:2",grpc_target="bench"} 10 1700000000000
meshless_endpoint_failures{grpc_target="bench",endpoint="127.0.0.1:2"} 5
meshless_endpoint_in_flight{grpc_target="bench",endpoint="127.0.0.1:1"} 3
meshless_endpoint_ejected{grpc_target="bench",endpoint="127.0.0.1:2"} 1
meshless_endpoint_latency_ewma_seconds{grpc_target="bench",endpoint="127.0.0.1:1"} 0.002
meshless_endpoint_in_flight{grpc_target="we\"ird,{x}",endpoint="127.0.0.1:9"} 7
grpc_client_attempt_started{grpc_method="m",grpc_target="bench"} 100
"#;

    fn key(t: &str, e: &str) -> (String, String) {
        (t.to_owned(), e.to_owned())
    }

    /// An endpoint's duration histogram at two scrapes: 100 calls in the interval, 40 under
    /// 1 ms, 40 more under 2 ms, 18 more under 5 ms, 2 above 10 ms.
    #[test]
    fn percentiles_come_from_the_intervals_buckets_or_the_summary() {
        let at = |counts: [u64; 5]| {
            let les = ["0.001", "0.002", "0.005", "0.01", "+Inf"];
            let mut text = String::new();
            for (le, c) in les.iter().zip(counts) {
                text.push_str(&format!(
                    "meshless_endpoint_duration_bucket{{grpc_target=\"t\",endpoint=\"e\",le=\"{le}\"}} {c}\n"
                ));
            }
            parse(&text)
        };
        let before = at([1000, 1000, 1000, 1000, 1000]);
        let now = at([1040, 1080, 1098, 1098, 1100]);
        let (b, n) = (&before[&key("t", "e")], &now[&key("t", "e")]);
        // The 50th of 100 is the 10th of the 40 in (1 ms, 2 ms]: 1.25 ms.
        let p50 = percentile(Some(b), n, 0.5).unwrap();
        assert!((p50 - 1.25).abs() < 1e-9, "{p50}");
        // The 99th lies beyond the largest finite bound: that bound, 10 ms.
        assert_eq!(percentile(Some(b), n, 0.99), Some(10.0));
        // No calls in the interval: none.
        assert_eq!(percentile(Some(n), n, 0.5), None);
        // Rendered as a summary, with the unit in the name: its own quantiles.
        let summary = parse(
            "meshless_endpoint_duration_seconds{grpc_target=\"t\",endpoint=\"e\",quantile=\"0.5\"} 0.003\n\
             meshless_endpoint_duration_seconds{grpc_target=\"t\",endpoint=\"e\",quantile=\"0.99\"} 0.02\n",
        );
        let s = &summary[&key("t", "e")];
        assert_eq!(percentile(None, s, 0.5), Some(3.0));
        assert_eq!(percentile(None, s, 0.99), Some(20.0));
    }

    #[test]
    fn parses_the_endpoint_series_with_suffixes_timestamps_and_escapes() {
        let x = parse(TEXT);
        let one = &x[&key("bench", "127.0.0.1:1")];
        assert_eq!(one.state.as_deref(), Some("ready"));
        assert_eq!(one.successes, Some(90.0));
        assert_eq!(one.in_flight, Some(3.0));
        assert_eq!(one.latency, Some(0.002));
        let two = &x[&key("bench", "127.0.0.1:2")];
        assert_eq!(two.state.as_deref(), Some("transient_failure"));
        assert_eq!((two.successes, two.failures), (Some(10.0), Some(5.0)));
        assert_eq!(two.ejected, Some(1.0));
        assert_eq!(x[&key("we\"ird,{x}", "127.0.0.1:9")].in_flight, Some(7.0));
        assert_eq!(x.len(), 4, "{x:?}");
    }

    #[test]
    fn a_frame_shares_the_interval_by_channel_and_leaves_out_departed_endpoints() {
        let before = parse(TEXT);
        let after = parse(
            &TEXT
                .replace("} 90", "} 120")
                .replace("} 10 1700000000000", "} 16")
                .replace(
                    "failures{grpc_target=\"bench\",endpoint=\"127.0.0.1:2\"} 5",
                    "failures{grpc_target=\"bench\",endpoint=\"127.0.0.1:2\"} 9",
                ),
        );
        let f = frame(
            &before,
            &after,
            Duration::from_secs(2),
            Duration::from_secs(4),
            Some("bench"),
        );
        let rows: Vec<(&str, u64, u64)> = f
            .endpoints
            .iter()
            .map(|r| (r.address.as_str(), r.calls, r.failures))
            .collect();
        assert_eq!(rows, [("127.0.0.1:1", 30, 0), ("127.0.0.1:2", 10, 4)]);
        assert!((f.endpoints[0].share - 0.75).abs() < 1e-9);
        assert!((f.rps - 20.0).abs() < 1e-9);
        assert!(f.endpoints[1].ejected);
        assert_eq!(f.endpoints[0].latency_ms, Some(2.0));
        assert_eq!(f.endpoints[0].p50_ms, None);
    }

    #[test]
    fn a_count_that_went_down_is_a_restart() {
        assert_eq!(delta(Some(100.0), Some(7.0)), 7);
        assert_eq!(delta(None, Some(7.0)), 0);
        assert_eq!(delta(Some(3.0), Some(7.0)), 4);
    }

    #[test]
    fn urls_default_to_http_and_metrics_and_bad_ones_are_usage_errors() {
        let u = ScrapeUrl::parse("127.0.0.1:9090").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9090, "/metrics")
        );
        let u = ScrapeUrl::parse("http://[::1]:9/m?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9, "/m?x=1")
        );
        for bad in ["https://h:1/metrics", "ftp://h/x", "http://", "http://a b/"] {
            match ScrapeUrl::parse(bad) {
                Err(CliError::Usage(m)) => assert!(m.contains(bad), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
