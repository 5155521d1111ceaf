//! `meshless top TARGET`: `bench` with a live view instead of a final report: every second,
//! each endpoint's state, share of the calls, rate, calls in flight, failures, ejection,
//! the p50 and p99 of the calls it served (the channel reports the serving endpoint when a
//! call asks, `ReportEndpoint`) and its latency estimate, like `top`. `--json` prints one
//! object per second instead.

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use meshless::ChannelStatus;
use serde::Serialize;

use crate::bench::{self, BenchArgs};
use crate::error::CliError;
use crate::output;

/// `bench`'s options, and how often to refresh.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// How often to refresh the view.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Runs until Ctrl-C (or `--duration`).
pub async fn run(mut args: TopArgs) -> Result<(), CliError> {
    if args.interval.is_zero() {
        return Err(CliError::Usage("--interval must be above zero".into()));
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
    /// Its latency estimate (peak EWMA), for the policies that keep one.
    pub latency_ms: f64,
    /// The median and 99th percentile of the interval's successful calls it served, in
    /// milliseconds (`null` when it served none).
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
                address,
                state: format!("{:?}", e.state).to_ascii_lowercase(),
                ejected: e.ejected,
                calls,
                share: 0.0,
                rps: calls as f64 / secs,
                in_flight: e.in_flight,
                failures,
                latency_ms: e.latency_ewma.as_secs_f64() * 1000.0,
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
    for r in &frame.endpoints {
        rows.push(vec![
            format!("  {}", r.address),
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
            format!("{:.2}", r.latency_ms),
            output::bar(r.share),
        ]);
    }
    // Clear the screen and go home, as `top` does.
    output::line(&format!(
        "\x1b[2J\x1b[H{:.0} s  {:.0} calls/s",
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
