//! `meshless top TARGET`: `bench` with a live view instead of a final report: every second,
//! each endpoint's state, share of the calls, rate, calls in flight, failures, ejection,
//! the p50 and p99 of the calls it served (the channel reports the serving endpoint when a
//! call asks, `ReportEndpoint`) and its latency estimate, like `top`. `--json` prints one
//! object per second instead.
//!
//! `meshless top --scrape URL` sends no calls: it shows an application that is already
//! running, from the metrics its exporter serves (see `scrape.rs`).

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use meshless::ChannelStatus;
use serde::Serialize;

use crate::bench::{self, BenchArgs};
use crate::error::CliError;
use crate::output;

/// `bench`'s options, how often to refresh, and where to scrape instead of sending calls.
#[derive(Debug, Args)]
// With --scrape there is no target to call.
#[command(mut_arg("target", |a| a.required_unless_present_any(["config", "scrape"])))]
pub struct TopArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// How often to refresh the view.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Send no calls: show an application that is already running, from the Prometheus
    /// text its metrics exporter serves at this URL (`http://HOST:PORT/metrics`; a bare
    /// HOST:PORT means that). Its channels need metrics on (`ChannelBuilder::metrics`).
    /// Takes --interval, --duration, --json and --target; each scrape is bounded by the
    /// interval (at least 1 s, at most 10 s).
    #[arg(long, visible_alias = "attach", value_name = "URL", conflicts_with_all = ["target", "config"])]
    pub scrape: Option<String>,
    /// With --scrape: show only the channel whose `grpc.target` label is this (default:
    /// every channel in the exposition, each endpoint's share of its own channel's calls).
    #[arg(
        long = "target",
        id = "scrape_target",
        value_name = "GRPC_TARGET",
        requires = "scrape"
    )]
    pub scrape_target: Option<String>,
}

/// Runs until Ctrl-C (or `--duration`).
pub async fn run(mut args: TopArgs) -> Result<(), CliError> {
    if args.interval.is_zero() {
        return Err(CliError::Usage("--interval must be above zero".into()));
    }
    // clap lets `requires` pass when the required flag conflicts with one given (TARGET).
    if args.scrape.is_none() && args.scrape_target.is_some() {
        return Err(CliError::Usage(
            "--target filters what --scrape reads; without --scrape give the target as TARGET"
                .into(),
        ));
    }
    if let Some(url) = &args.scrape {
        return crate::scrape::run(crate::scrape::ScrapeRun {
            url: crate::scrape::ScrapeUrl::parse(url)?,
            target: args.scrape_target.take(),
            interval: args.interval,
            duration: args.bench.duration,
            json: args.bench.json,
        })
        .await;
    }
    let mut b = args.bench;
    b.live = Some(std::mem::take(&mut args.interval));
    // Until Ctrl-C unless a duration is given.
    b.duration
        .get_or_insert(Duration::from_secs(100 * 365 * 86_400));
    bench::run(b).await
}

/// One refresh.
#[derive(Debug, Serialize)]
pub struct Frame {
    /// Seconds since the first call.
    pub seconds: f64,
    /// Calls completed per second over the last interval, all endpoints.
    pub rps: f64,
    pub endpoints: Vec<Row>,
}

/// One endpoint in a [`Frame`].
#[derive(Debug, Serialize)]
pub struct Row {
    /// The channel's `grpc.target` (`top --scrape`, which may show several channels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub address: String,
    pub state: String,
    pub ejected: bool,
    /// Calls it completed in the last interval.
    pub calls: u64,
    /// Its share of the interval's calls, 0 to 1.
    pub share: f64,
    pub rps: f64,
    pub in_flight: u64,
    /// Calls that failed in the interval.
    pub failures: u64,
    /// Its latency estimate (peak EWMA), for the policies that keep one (`top --scrape`:
    /// `null` when the application's policy keeps none).
    pub latency_ms: Option<f64>,
    /// The median and 99th percentile of the interval's successful calls it served, in
    /// milliseconds (`null` when it served none, and always with `--scrape`: the channel
    /// keeps no per-endpoint latency distribution).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The frame between two status snapshots taken `dt` apart; `served` holds the latencies
/// of the interval's successful calls by the endpoint that served them.
pub fn frame(
    last: &ChannelStatus,
    now: &ChannelStatus,
    dt: Duration,
    since: Duration,
    mut served: HashMap<String, Vec<Duration>>,
) -> Frame {
    let secs = dt.as_secs_f64().max(1e-9);
    let rows: Vec<Row> = now
        .endpoints
        .iter()
        .map(|e| {
            let (s0, f0) = last
                .endpoint(&e.address)
                .map_or((0, 0), |o| (o.successes, o.failures));
            let failures = e.failures.saturating_sub(f0);
            let calls = e.successes.saturating_sub(s0) + failures;
            let address = e.address.to_string();
            let (p50_ms, p99_ms) = match served.get_mut(&address) {
                Some(l) if !l.is_empty() => {
                    l.sort_unstable();
                    let at = |q: f64| {
                        let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
                        Some(l[i].as_secs_f64() * 1000.0)
                    };
                    (at(0.5), at(0.99))
                }
                _ => (None, None),
            };
            Row {
                target: None,
                address,
                state: e.state.to_string(),
                ejected: e.ejected,
                calls,
                share: 0.0,
                rps: calls as f64 / secs,
                in_flight: e.in_flight,
                failures,
                latency_ms: Some(e.latency_ewma.as_secs_f64() * 1000.0),
                p50_ms,
                p99_ms,
            }
        })
        .collect();
    let total: u64 = rows.iter().map(|r| r.calls).sum();
    let endpoints = rows
        .into_iter()
        .map(|mut r| {
            r.share = if total == 0 {
                0.0
            } else {
                r.calls as f64 / total as f64
            };
            r
        })
        .collect();
    Frame {
        seconds: since.as_secs_f64(),
        rps: total as f64 / secs,
        endpoints,
    }
}

/// Redraws the terminal with `frame`.
pub fn print(frame: &Frame) -> Result<(), CliError> {
    let mut rows = vec![
        [
            "  endpoint",
            "state",
            "share",
            "rps",
            "in flight",
            "failed",
            "p50 ms",
            "p99 ms",
            "ewma ms",
            "",
        ]
        .map(String::from)
        .to_vec(),
    ];
    // `top --scrape`: the channels shown; with several, each row names its own.
    let targets: std::collections::BTreeSet<&str> = frame
        .endpoints
        .iter()
        .filter_map(|r| r.target.as_deref())
        .collect();
    for r in &frame.endpoints {
        rows.push(vec![
            match &r.target {
                Some(t) if targets.len() > 1 => format!("  {t} {}", r.address),
                _ => format!("  {}", r.address),
            },
            if r.ejected {
                format!("{} (ejected)", r.state)
            } else {
                r.state.clone()
            },
            format!("{:.1}%", r.share * 100.0),
            format!("{:.0}", r.rps),
            r.in_flight.to_string(),
            r.failures.to_string(),
            r.p50_ms.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            r.p99_ms.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            r.latency_ms
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            output::bar(r.share),
        ]);
    }
    // Clear the screen and go home, as `top` does.
    let shown = if targets.is_empty() {
        String::new()
    } else {
        format!("  {}", targets.into_iter().collect::<Vec<_>>().join(", "))
    };
    output::line(&format!(
        "\x1b[2J\x1b[H{:.0} s  {:.0} calls/s{shown}",
        frame.seconds, frame.rps
    ))?;
    let align = [
        output::Align::Left,
        output::Align::Left,
        output::Align::Right,
        output::Align::Right,
        output::Align::Right,
        output::Align::Right,
        output::Align::Right,
        output::Align::Right,
        output::Align::Right,
    ];
    for l in output::table(&rows, &align) {
        output::line(&l)?;
    }
    Ok(())
}
