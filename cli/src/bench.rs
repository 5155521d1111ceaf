//! `meshless bench`: send health checks through a `meshless::Channel` and report where they
//! went, how long they took and how they failed.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use meshless::balancer::ConnectivityState;
use meshless::discovery::Address;
use meshless::{BuildError, Channel, ChannelStatus};
use serde::Serialize;
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{CliError, one_line};
use crate::output::{self, Align, Counts};
use crate::percentiles::{self, LatencyMs};
use crate::resilience::ResilienceArgs;
use crate::target::TargetArgs;
use crate::tls::TlsArgs;

/// How often the progress bar and the per-endpoint counters are refreshed. Reading the
/// counters often also catches endpoints that leave the set during the run.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Upper bound of `--concurrency`: far above what one process needs to load a service.
const MAX_CONCURRENCY: i64 = 100_000;

/// Arguments of `meshless bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub resilience: ResilienceArgs,
    /// Load-balancing policy: pick_first, round_robin, weighted_round_robin, random,
    /// least_request, p2c_ewma, ring_hash or maglev. Default: round_robin, or the policy of
    /// the --config client.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Number of calls to send.
    #[arg(long, value_name = "N", default_value_t = 1000, conflicts_with = "duration",
          value_parser = at_least_one)]
    pub requests: u64,
    /// Send calls for this long (for example `10s`) instead of a number of them.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Calls in flight at once.
    #[arg(long, value_name = "C", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONCURRENCY))]
    pub concurrency: u32,
    /// The `service` field of each grpc.health.v1.Health/Check request; empty asks about
    /// the server as a whole.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,
    /// Print one JSON object instead of a progress bar and a table.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for discovery and connections before the first call.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Serve the run's metrics (gRPC's standard instruments) as Prometheus text at
    /// `http://ADDR/metrics` while it runs, such as 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `meshless top`: print a live view every this often instead of a final report.
    #[arg(skip)]
    pub live: Option<Duration>,
    /// Deadline of each call (sent as grpc-timeout).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
}

/// The `--json` output.
#[derive(Debug, Serialize)]
struct BenchJson {
    target: String,
    policy: String,
    concurrency: u32,
    /// Calls completed (successes and errors).
    requests: u64,
    /// Calls that failed.
    errors: u64,
    /// Failed calls by gRPC status code name.
    errors_by_code: Counts,
    /// From the first call to the last response.
    seconds: f64,
    rps: f64,
    endpoints: Vec<EndpointCount>,
    /// Percentiles of the successful calls; `null` when none succeeded.
    latency_ms: Option<LatencyMs>,
    /// The resilience settings of the run (retries, hedging, throttling, outlier detection,
    /// health checking, caps); empty when none.
    resilience: Vec<String>,
    /// Attempts the endpoints served per call (above 1 with retries or hedging).
    attempts_per_call: f64,
}

/// Calls an endpoint served during the run, from the channel's per-endpoint counters.
#[derive(Debug, Serialize)]
struct EndpointCount {
    address: String,
    /// Calls it completed, successful or not.
    count: u64,
    /// Of those, the ones that failed.
    failures: u64,
}

/// What one worker saw.
#[derive(Default)]
struct WorkerResult {
    calls: u64,
    ok_latencies: Vec<Duration>,
    /// Failures by code name, with the first message seen for each.
    errors: BTreeMap<&'static str, (u64, String)>,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

/// `top`'s per-endpoint latencies of the current interval (successful calls), by the
/// endpoint that served each (the channel says so when asked: `ReportEndpoint`).
pub type LiveLatencies = std::sync::Mutex<std::collections::HashMap<String, Vec<Duration>>>;

/// How many calls to send, shared by the workers.
struct Plan {
    requests: Option<u64>,
    until: Option<Instant>,
    issued: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Plan {
    /// Claims the right to send one more call.
    fn next(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match (self.requests, self.until) {
            (_, Some(until)) => Instant::now() < until,
            (Some(n), None) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            (None, None) => false,
        }
    }
}

/// Parses a count of at least 1 (clap's own range check prints `1..18446744073709551615`).
fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// Runs the command.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let target = args.target.target()?;
    let configured = args.target.configured()?;
    let builder = match &configured {
        // The client's own settings; flags given on top win.
        Some((config, name)) => {
            let b = config
                .builder(name)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            match &args.policy {
                Some(p) => b.policy(p.clone()),
                None => b,
            }
        }
        None => Channel::builder(target.clone())
            .policy(args.policy.clone().unwrap_or_else(|| "round_robin".into())),
    }
    .registry(args.target.registry()?);
    let builder = match args.metrics_addr {
        Some(addr) => {
            // Each histogram with the buckets its gRFC recommends (latency, size or count).
            let mut prometheus =
                metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(addr);
            for (name, buckets) in meshless::transport::metrics::HISTOGRAM_BUCKETS {
                prometheus = prometheus
                    .set_buckets_for_metric(
                        // The exporter matches the name as Prometheus spells it.
                        metrics_exporter_prometheus::Matcher::Full(name.replace('.', "_")),
                        buckets,
                    )
                    .map_err(|e| CliError::Usage(format!("--metrics-addr {addr}: {e}")))?;
            }
            prometheus
                .install()
                .map_err(|e| CliError::Usage(format!("--metrics-addr {addr}: {e}")))?;
            builder.metrics(
                meshless::transport::MetricsConfig::new()
                    .methods(["grpc.health.v1.Health/Check"])
                    .target(target.clone()),
            )
        }
        None => builder,
    };
    let builder = args.resilience.apply(args.tls.apply(builder)?);
    let channel = builder.build().map_err(build_error)?;
    let stack = match (args.resilience.stack()?, &configured) {
        (Some(s), _) => Some(s),
        (None, Some((config, name))) => Some((
            config
                .stack(name)
                .map_err(|e| CliError::Usage(e.to_string()))?,
            format!("the service config of client {name}"),
        )),
        (None, None) => None,
    };
    // The stack records A96's per-call instruments (retries, hedges, delays) into the
    // channel's recorder, and A66's call duration over every attempt.
    let stack = match (stack, channel.metrics()) {
        (Some((s, why)), Some(m)) => Some((s.metrics(m), why)),
        (stack, _) => stack,
    };
    wait_until_settled(&channel, &target, args.timeout).await?;

    let mut tracker = Tracker::default();
    tracker.observe(&channel.status());
    tracker.baseline = tracker.totals.clone();

    let progress = progress_bar(&args);
    let plan = Arc::new(Plan {
        requests: args.duration.is_none().then_some(args.requests),
        until: args.duration.map(|d| Instant::now() + d),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let mut workers = JoinSet::new();
    let latencies: Option<Arc<LiveLatencies>> = args.live.map(|_| Arc::default());
    for _ in 0..args.concurrency {
        let (plan, service) = (plan.clone(), args.service.clone());
        let latencies = latencies.clone();
        match &stack {
            // Without resilience options the calls go straight to the channel, so the
            // figures are the channel's own.
            None => workers.spawn(worker(
                HealthClient::new(channel.clone()),
                plan,
                service,
                args.call_timeout,
                latencies,
            )),
            Some((stack, _)) => workers.spawn(worker(
                HealthClient::new(tower_layer::Layer::layer(stack, channel.clone())),
                plan,
                service,
                args.call_timeout,
                latencies,
            )),
        };
    }

    let mut results = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut live = args.live.map(|every| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (t, channel.status(), Instant::now())
    });
    loop {
        tokio::select! {
            _ = async {
                match live.as_mut() {
                    Some((t, _, _)) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Some((_, last, at)) = live.as_mut() {
                    let now = channel.status();
                    let served = latencies
                        .as_ref()
                        .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner())))
                        .unwrap_or_default();
                    let frame = crate::top::frame(last, &now, at.elapsed(), started.elapsed(), served);
                    if args.json {
                        output::json_line(&frame)?;
                    } else {
                        crate::top::print(&frame)?;
                    }
                    *last = now;
                    *at = Instant::now();
                }
            }
            joined = workers.join_next() => match joined {
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => return Err(CliError::Internal(format!("a bench worker failed: {e}"))),
                None => break,
            },
            _ = tokio::time::sleep(PROGRESS_INTERVAL) => {
                tracker.observe(&channel.status());
                let done = plan.done.load(Ordering::Relaxed);
                match args.duration {
                    Some(_) => {
                        progress.set_position(started.elapsed().as_millis() as u64);
                        progress.set_message(format!("{done} calls"));
                    }
                    None => progress.set_position(done),
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                // Stop sending; the calls in flight finish and are reported.
                interrupted = true;
                plan.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    progress.finish_and_clear();
    // Every worker has returned, so every call's response body has ended and the channel's
    // counters hold every call (they are updated when the body ends, before the call
    // returns to its worker).
    tracker.observe(&channel.status());

    let policy = channel.status().policy;
    if args.live.is_some() {
        // `top` printed its frames; no final report.
        return Ok(());
    }
    let mut settings: Vec<String> = stack.map(|(_, d)| d).into_iter().collect();
    settings.extend(args.resilience.endpoint_settings());
    let report = summarize(&target, policy, &args, results, &tracker, settings);
    if args.json {
        output::json_line(&report.json)?;
    } else {
        print_table(&report.json)?;
    }
    match report.first_error {
        Some((code, message)) => Err(CliError::Calls(format!(
            "{} of {} calls failed; most common: {code}: {}",
            report.json.errors,
            report.json.requests,
            one_line(&message)
        ))),
        None => Ok(()),
    }
}

/// A channel that does not build: bad input (target, policy, TLS files) is a usage error.
pub fn build_error(e: BuildError) -> CliError {
    match e {
        BuildError::NoRuntime => CliError::Internal(e.to_string()),
        _ => CliError::Usage(e.to_string()),
    }
}

/// Sends calls while the plan allows.
async fn worker<T>(
    mut client: HealthClient<T>,
    plan: Arc<Plan>,
    service: String,
    call_timeout: Duration,
    latencies: Option<Arc<LiveLatencies>>,
) -> WorkerResult
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut r = WorkerResult::default();
    while plan.next() {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: service.clone(),
        });
        req.set_timeout(call_timeout);
        if latencies.is_some() {
            req.extensions_mut().insert(meshless::ReportEndpoint);
        }
        let start = Instant::now();
        let outcome = client.check(req).await;
        let end = Instant::now();
        r.first_start.get_or_insert(start);
        r.last_end = Some(end);
        r.calls += 1;
        match outcome {
            Ok(resp) => {
                r.ok_latencies.push(end - start);
                if let (Some(l), Some(meshless::ServedBy(addr))) =
                    (&latencies, resp.extensions().get::<meshless::ServedBy>())
                {
                    l.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(addr.to_string())
                        .or_default()
                        .push(end - start);
                }
            }
            Err(status) => {
                let entry = r
                    .errors
                    .entry(code_name(status.code()))
                    .or_insert_with(|| (0, status.message().to_owned()));
                entry.0 += 1;
            }
        }
        plan.done.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// Waits, at most `timeout`, until discovery has answered and every endpoint has connected
/// or failed to; returns the status then (settled or not).
pub async fn settle(channel: &Channel, timeout: Duration) -> ChannelStatus {
    let deadline = Instant::now() + timeout;
    let settled = |st: &ChannelStatus| {
        st.resolved
            && st.endpoints.iter().all(|e| {
                matches!(
                    e.state,
                    ConnectivityState::Ready | ConnectivityState::TransientFailure
                )
            })
    };
    // Subscribe first, so no change between the status read and the wait is missed.
    let mut changes = channel.status_changes();
    // The first ready endpoint, or the error a call would get.
    let _ = tokio::time::timeout_at(deadline.into(), channel.connect()).await;
    loop {
        changes.borrow_and_update();
        let status = channel.status();
        if settled(&status) {
            break status;
        }
        match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
            Ok(Ok(())) => {}
            _ => break status, // the bound, or the channel is gone
        }
    }
}

/// Waits until discovery has answered and every endpoint has connected or failed to, so
/// the run measures calls, not start-up. Fails when there is nothing to call.
async fn wait_until_settled(
    channel: &Channel,
    target: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let status = settle(channel, timeout).await;
    let waited = humantime::format_duration(timeout);
    if !status.resolved {
        return Err(CliError::Discovery(match status.discovery_error {
            Some(e) => e,
            None => format!(
                "{target}: discovery gave no endpoints within {waited} (raise --timeout, or check that the backend is reachable)"
            ),
        }));
    }
    if let Some(e) = &status.discovery_error {
        eprintln!(
            "meshless: warning: discovery is failing, calling the last known endpoints: {}",
            one_line(e)
        );
    }
    let total = status.endpoints.len();
    if total == 0 {
        return Err(CliError::Discovery(format!(
            "{target}: discovery found no endpoints, so there is nothing to call"
        )));
    }
    let not_ready: Vec<_> = status
        .endpoints
        .iter()
        .filter(|e| e.state != ConnectivityState::Ready)
        .collect();
    let why = |e: &meshless::EndpointStatus| match &e.last_error {
        Some(err) => one_line(err),
        None => format!("{} is {}", e.address, e.state),
    };
    match not_ready.first() {
        None => Ok(()),
        Some(first) if not_ready.len() == total => {
            let still_trying = not_ready
                .iter()
                .any(|e| e.state != ConnectivityState::TransientFailure);
            let outcome = if still_trying {
                format!("became ready within {waited}")
            } else {
                "accepted a connection".to_owned()
            };
            Err(CliError::Calls(format!(
                "{target}: none of its {total} endpoint{} {outcome}: {}",
                if total == 1 { "" } else { "s" },
                why(first)
            )))
        }
        Some(first) => {
            eprintln!(
                "meshless: warning: {} of {total} endpoints are not ready; calls go to the others ({})",
                not_ready.len(),
                why(first)
            );
            Ok(())
        }
    }
}

fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (len, template) = match args.duration {
        Some(d) => (
            d.as_millis() as u64,
            "{bar:40} {elapsed} of {len_duration}  {msg}",
        ),
        None => (
            args.requests,
            "{bar:40} {pos}/{len} calls  {per_sec}  eta {eta}",
        ),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "len_duration",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}s", s.len().unwrap_or(0) / 1000);
            },
        ));
    }
    bar
}

// ===== report =====

/// Per-endpoint call counts from the channel's counters, read through the run.
#[derive(Default)]
struct Tracker {
    /// Addresses in the order they were first seen.
    order: Vec<Address>,
    /// Latest (successes, failures) of each address ever seen.
    totals: HashMap<Address, (u64, u64)>,
    /// The counters before the first call.
    baseline: HashMap<Address, (u64, u64)>,
}

impl Tracker {
    fn observe(&mut self, status: &ChannelStatus) {
        for e in &status.endpoints {
            if !self.totals.contains_key(&e.address) {
                self.order.push(e.address.clone());
            }
            self.totals
                .insert(e.address.clone(), (e.successes, e.failures));
        }
    }

    fn counts(&self) -> Vec<EndpointCount> {
        self.order
            .iter()
            .map(|addr| {
                let (s, f) = self.totals.get(addr).copied().unwrap_or_default();
                let (s0, f0) = self.baseline.get(addr).copied().unwrap_or_default();
                let failures = f.saturating_sub(f0);
                EndpointCount {
                    address: addr.to_string(),
                    count: s.saturating_sub(s0) + failures,
                    failures,
                }
            })
            .collect()
    }
}

struct Report {
    json: BenchJson,
    /// The most common error code, with its first message.
    first_error: Option<(&'static str, String)>,
}

fn summarize(
    target: &str,
    policy: &str,
    args: &BenchArgs,
    results: Vec<WorkerResult>,
    tracker: &Tracker,
    resilience: Vec<String>,
) -> Report {
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<&'static str, (u64, String)> = BTreeMap::new();
    let (mut calls, mut first, mut last) = (0u64, None::<Instant>, None::<Instant>);
    for r in results {
        calls += r.calls;
        latencies.extend(r.ok_latencies);
        for (code, (n, msg)) in r.errors {
            errors.entry(code).or_insert((0, msg)).0 += n;
        }
        first = match (first, r.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(r.last_end);
    }
    let seconds = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let error_total = errors.values().map(|(n, _)| n).sum();
    let first_error = errors
        .iter()
        .max_by_key(|(_, (n, _))| *n)
        .map(|(code, (_, msg))| (*code, msg.clone()));
    Report {
        json: BenchJson {
            target: target.to_owned(),
            policy: policy.to_owned(),
            concurrency: args.concurrency,
            requests: calls,
            errors: error_total,
            errors_by_code: errors
                .iter()
                .map(|(code, (n, _))| (code.to_string(), *n))
                .collect(),
            seconds,
            rps: if seconds > 0.0 {
                (calls as f64 / seconds).round()
            } else {
                0.0
            },
            endpoints: tracker.counts(),
            latency_ms: percentiles::latency_ms(&mut latencies),
            attempts_per_call: if calls == 0 {
                0.0
            } else {
                let attempts: u64 = tracker.counts().iter().map(|e| e.count).sum();
                (attempts as f64 / calls as f64 * 1000.0).round() / 1000.0
            },
            resilience,
        },
        first_error,
    }
}

fn print_table(r: &BenchJson) -> Result<(), CliError> {
    output::line(&format!(
        "{} via {}: {} calls in {:.2} s ({:.0}/s), concurrency {}",
        r.target, r.policy, r.requests, r.seconds, r.rps, r.concurrency
    ))?;
    let served: u64 = r.endpoints.iter().map(|e| e.count).sum();
    let mut rows = vec![
        ["  endpoint", "calls", "share", "failed", ""]
            .map(String::from)
            .to_vec(),
    ];
    for e in &r.endpoints {
        let share = if served == 0 {
            0.0
        } else {
            e.count as f64 / served as f64
        };
        rows.push(vec![
            format!("  {}", e.address),
            e.count.to_string(),
            format!("{:.1}%", share * 100.0),
            e.failures.to_string(),
            output::bar(share),
        ]);
    }
    let align = [Align::Left, Align::Right, Align::Right, Align::Right];
    for l in output::table(&rows, &align) {
        output::line(&l)?;
    }
    match &r.latency_ms {
        Some(l) => output::line(&format!(
            "  latency  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
            l.p50, l.p90, l.p99, l.p999
        ))?,
        None => output::line("  latency  no successful calls")?,
    }
    let errors = if r.errors_by_code.is_empty() {
        "none".to_owned()
    } else {
        r.errors_by_code
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    output::line(&format!("  errors   {errors}"))?;
    if !r.resilience.is_empty() {
        output::line(&format!(
            "  resilience  {}; {:.3} attempts per call",
            r.resilience.join(", "),
            r.attempts_per_call
        ))?;
    }
    Ok(())
}

pub(crate) use meshless::balancer::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_by_count_issues_exactly_n() {
        let plan = Plan {
            requests: Some(3),
            until: None,
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        };
        assert_eq!((0..10).filter(|_| plan.next()).count(), 3);
    }

    #[test]
    fn every_policy_is_named_in_the_help() {
        use clap::CommandFactory;
        let help = crate::Cli::command()
            .find_subcommand_mut("bench")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        for name in meshless::balancer::POLICY_NAMES {
            assert!(
                help.contains(name),
                "bench --help does not name policy {name}"
            );
        }
    }
}
