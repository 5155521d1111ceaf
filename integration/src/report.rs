//! Latency percentiles and per-backend shares of load runs, as a text table or as JSON.
//!
//! ```
//! use meshless_integration::report::{Latencies, Report, RunReport};
//! use meshless_integration::load::LoadOutcome;
//! use std::time::Duration;
//!
//! let mut outcome = LoadOutcome::default();
//! for ms in 1..=100 {
//!     outcome.latencies.record(Duration::from_millis(ms));
//! }
//! outcome.backends.insert("a".into(), 100);
//! let run = RunReport::new("round_robin", &["a", "b"], &outcome);
//! assert_eq!(run.latency.p50, Duration::from_millis(50));
//! let mut report = Report::default();
//! report.push(run);
//! println!("{report}");
//! assert_eq!(report.to_json()["runs"]["round_robin"]["backends"]["b"], 0);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::load::LoadOutcome;

/// Width, in characters, of a 100 % share bar in the table.
const BAR_WIDTH: usize = 40;

// ===== Latencies =====

/// Latency samples of one run. Keeps every sample: runs are thousands of calls, and exact
/// percentiles beat a histogram's buckets at that size.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        self.samples.push(latency);
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Percentiles of the samples; all zero when there are none.
    pub fn summary(&self) -> LatencySummary {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        LatencySummary {
            count: sorted.len() as u64,
            min: sorted.first().copied().unwrap_or_default(),
            mean: u32::try_from(sorted.len())
                .ok()
                .filter(|&n| n > 0)
                .map_or(Duration::ZERO, |n| total / n),
            p50: nearest_rank(&sorted, 0.50),
            p90: nearest_rank(&sorted, 0.90),
            p99: nearest_rank(&sorted, 0.99),
            p999: nearest_rank(&sorted, 0.999),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// The `q` quantile (0..=1) of `sorted` by the nearest-rank method: the smallest sample with at
/// least `q` of the samples at or below it. Zero for no samples.
fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Percentiles of a run's latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// The number of samples.
    pub count: u64,
    /// The smallest sample.
    pub min: Duration,
    /// The arithmetic mean.
    pub mean: Duration,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The 99.9th percentile.
    pub p999: Duration,
    /// The largest sample.
    pub max: Duration,
}

// ===== RunReport =====

/// The results of one load run (one balancing policy), ready to print or serialize.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunReport {
    /// The run's name: the policy, such as `"round_robin"` or `"tonic via L4 proxy"`.
    pub name: String,
    /// Successful calls per backend, in the order given to [`RunReport::new`], then any other
    /// backend that answered.
    pub backends: Vec<(String, u64)>,
    /// Failed calls per status code name.
    pub errors: BTreeMap<String, u64>,
    /// Calls cut off by the run's timeout.
    pub unfinished: u64,
    /// Percentiles of the successful calls' latencies.
    pub latency: LatencySummary,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl RunReport {
    /// Builds the report of run `name`. Every backend in `backends` is listed, with zero calls
    /// if it got none, so a table shows who was left out.
    pub fn new(
        name: impl Into<String>,
        backends: &[impl AsRef<str>],
        outcome: &LoadOutcome,
    ) -> Self {
        let mut rows: Vec<(String, u64)> = backends
            .iter()
            .map(|b| {
                let b = b.as_ref();
                (b.to_owned(), outcome.backends.get(b).copied().unwrap_or(0))
            })
            .collect();
        for (backend, &calls) in &outcome.backends {
            if !rows.iter().any(|(name, _)| name == backend) {
                rows.push((backend.clone(), calls));
            }
        }
        Self {
            name: name.into(),
            backends: rows,
            errors: outcome.errors.clone(),
            unfinished: outcome.unfinished,
            latency: outcome.latencies.summary(),
            elapsed: outcome.elapsed,
        }
    }

    /// Successful calls.
    pub fn ok(&self) -> u64 {
        self.backends.iter().map(|(_, calls)| calls).sum()
    }

    /// Failed calls.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The JSON form of this run (see [`Report::to_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        let json = RunJson {
            requests: self.ok() + self.failed() + self.unfinished,
            ok: self.ok(),
            errors: &self.errors,
            unfinished: self.unfinished,
            backends: self
                .backends
                .iter()
                .map(|(b, c)| (b.as_str(), *c))
                .collect(),
            elapsed_ms: ms(self.elapsed),
            throughput_rps: throughput(self.ok(), self.elapsed),
            latency_ms: LatencyJson {
                p50: ms(self.latency.p50),
                p90: ms(self.latency.p90),
                p99: ms(self.latency.p99),
                p999: ms(self.latency.p999),
                mean: ms(self.latency.mean),
                max: ms(self.latency.max),
            },
            p50_ms: ms(self.latency.p50),
            p99_ms: ms(self.latency.p99),
        };
        serde_json::to_value(json).unwrap_or(serde_json::Value::Null)
    }
}

/// The table: a header line, one line per backend with its share as a bar, the percentiles.
impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = self.ok();
        write!(
            f,
            "== {}: {} ok in {:.2} s ({:.0}/s)",
            self.name,
            ok,
            self.elapsed.as_secs_f64(),
            throughput(ok, self.elapsed)
        )?;
        if self.failed() > 0 {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            write!(f, ", {} failed ({})", self.failed(), errors.join(", "))?;
        }
        if self.unfinished > 0 {
            write!(f, ", {} unfinished", self.unfinished)?;
        }
        writeln!(f)?;
        let width = self
            .backends
            .iter()
            .map(|(b, _)| b.len())
            .max()
            .unwrap_or(0)
            .max("backend".len());
        writeln!(f, "  {:<width$}  {:>7}  {:>6}", "backend", "calls", "share")?;
        for (backend, calls) in &self.backends {
            let share = if ok > 0 {
                *calls as f64 / ok as f64
            } else {
                0.0
            };
            let bar = "█".repeat((share * BAR_WIDTH as f64).round() as usize);
            writeln!(
                f,
                "  {backend:<width$}  {calls:>7}  {:>5.1}%  {bar}",
                share * 100.0
            )?;
        }
        let l = &self.latency;
        writeln!(
            f,
            "  latency  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn throughput(ok: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { ok as f64 / secs } else { 0.0 }
}

#[derive(Serialize)]
struct RunJson<'a> {
    requests: u64,
    ok: u64,
    errors: &'a BTreeMap<String, u64>,
    unfinished: u64,
    backends: BTreeMap<&'a str, u64>,
    elapsed_ms: f64,
    throughput_rps: f64,
    latency_ms: LatencyJson,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct LatencyJson {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    mean: f64,
    max: f64,
}

// ===== Report =====

/// The runs of one program invocation, printed one table per run or as one JSON object.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The runs, in the order they ran.
    pub runs: Vec<RunReport>,
}

impl Report {
    /// Adds a run.
    pub fn push(&mut self, run: RunReport) {
        self.runs.push(run);
    }

    /// One JSON object: `{"runs": {"<name>": {"requests", "ok", "errors": {code: n},
    /// "unfinished", "backends": {backend: calls}, "elapsed_ms", "throughput_rps",
    /// "latency_ms": {"p50", "p90", "p99", "p999", "mean", "max"}, "p50_ms", "p99_ms"}}}`.
    /// Runs with the same name: the last one wins.
    pub fn to_json(&self) -> serde_json::Value {
        let runs: serde_json::Map<String, serde_json::Value> = self
            .runs
            .iter()
            .map(|run| (run.name.clone(), run.to_json()))
            .collect();
        serde_json::json!({ "runs": runs })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, run) in self.runs.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{run}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Latencies {
        let mut l = Latencies::default();
        for &ms in v {
            l.record(Duration::from_millis(ms));
        }
        l
    }

    #[test]
    fn nearest_rank_percentiles() {
        let l = millis(&(1..=1000).rev().collect::<Vec<_>>());
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, Duration::from_millis(1));
        assert_eq!(s.p50, Duration::from_millis(500));
        assert_eq!(s.p90, Duration::from_millis(900));
        assert_eq!(s.p99, Duration::from_millis(990));
        assert_eq!(s.p999, Duration::from_millis(999));
        assert_eq!(s.max, Duration::from_millis(1000));
        assert_eq!(s.mean, Duration::from_micros(500_500));
    }

    #[test]
    fn percentiles_of_tiny_and_empty_sets() {
        assert_eq!(Latencies::default().summary(), LatencySummary::default());
        let s = millis(&[7]).summary();
        assert_eq!(
            (s.p50, s.p999),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
        let s = millis(&[1, 2]).summary();
        assert_eq!(
            (s.p50, s.p90),
            (Duration::from_millis(1), Duration::from_millis(2))
        );
    }

    #[test]
    fn report_lists_idle_backends_and_serializes() {
        let mut outcome = LoadOutcome::default();
        outcome.backends.insert("a".into(), 3);
        outcome.backends.insert("z".into(), 1);
        outcome.errors.insert("Unavailable".into(), 2);
        outcome.latencies = millis(&[1, 2, 3, 4]);
        let run = RunReport::new("pick_first", &["a", "b"], &outcome);
        assert_eq!(
            run.backends,
            vec![("a".into(), 3), ("b".into(), 0), ("z".into(), 1)]
        );
        let table = run.to_string();
        assert!(table.contains("pick_first"), "{table}");
        assert!(table.contains("75.0%"), "{table}");
        assert!(table.contains("Unavailable 2"), "{table}");

        let mut report = Report::default();
        report.push(run);
        let json = report.to_json();
        let run = &json["runs"]["pick_first"];
        assert_eq!(run["requests"], 6);
        assert_eq!(run["backends"]["b"], 0);
        assert_eq!(run["errors"]["Unavailable"], 2);
        assert_eq!(run["p50_ms"], 2.0);
        assert_eq!(run["latency_ms"]["p99"], 4.0);
    }
}
