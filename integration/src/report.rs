//! Latency percentiles and per-backend shares of load runs, as a text table or as JSON.
//! [`ScaleUpReport`] covers a run sent in two halves with a backend added between them.
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

/// Width of a 100 % share bar in a [`ScaleUpReport`] table, which shows two bars a line.
const HALF_BAR_WIDTH: usize = 20;

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

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.samples.extend_from_slice(&other.samples);
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

// ===== ScaleUpReport =====

/// Calls one backend received in each half of a [`ScaleUpReport`]'s run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HalfCalls {
    /// The backend's name.
    pub backend: String,
    /// Calls it received before the scale-up.
    pub before: u64,
    /// Calls it received after the scale-up.
    pub after: u64,
}

/// The results of one load run sent in two halves with a scale-up between them: a backend
/// starts after the first half, and the table shows who received the second half, so a
/// client that never sends the new backend anything is plain to see.
///
/// The calls per backend are given by the caller ([`calls`](Self::calls)), typically counted
/// by the servers themselves; errors, latencies and elapsed time come from the two halves'
/// [`LoadOutcome`]s.
///
/// ```
/// use meshless_integration::load::LoadOutcome;
/// use meshless_integration::report::ScaleUpReport;
///
/// let run = ScaleUpReport::new("round_robin", "new", &LoadOutcome::default(), &LoadOutcome::default())
///     .calls("old", 10, 5)
///     .calls("new", 0, 5);
/// assert_eq!(run.added_share(), (0.0, 0.5));
/// assert_eq!(run.to_json()["backends"]["new"]["after"], 5);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScaleUpReport {
    /// The run's name, such as `"round_robin"` or `"tonic_via_l4_proxy"`.
    pub name: String,
    /// Calls per backend in each half, in the order they were added.
    pub backends: Vec<HalfCalls>,
    /// The backend the scale-up started.
    pub added: String,
    /// The backend each connection the client holds for the whole run landed on, in the order
    /// they were opened, for a client that pins connections (a plain tonic channel, a pool)
    /// behind an L4 proxy; empty otherwise.
    pub connections: Vec<String>,
    /// How long after the scale-up the client had a connection to the added backend ready,
    /// for a client that learns of it; the second half started after that.
    pub added_ready: Option<Duration>,
    /// Lines printed under the added backend's share, saying how the client took the
    /// scale-up.
    pub notes: Vec<String>,
    /// Failed calls per status code name, over both halves.
    pub errors: BTreeMap<String, u64>,
    /// Calls cut off by a half's timeout, over both halves.
    pub unfinished: u64,
    /// Percentiles of the successful calls' latencies, over both halves.
    pub latency: LatencySummary,
    /// Wall-clock time of the two halves (the scale-up between them not included).
    pub elapsed: Duration,
    /// Successful calls, over both halves.
    ok: u64,
}

impl ScaleUpReport {
    /// The report of run `name`, whose scale-up started backend `added`, from the outcomes
    /// of the halves `before` and `after` it. Add each backend's calls with
    /// [`calls`](Self::calls).
    pub fn new(
        name: impl Into<String>,
        added: impl Into<String>,
        before: &LoadOutcome,
        after: &LoadOutcome,
    ) -> Self {
        let mut latencies = before.latencies.clone();
        latencies
            .samples
            .extend_from_slice(&after.latencies.samples);
        let mut errors = before.errors.clone();
        for (code, n) in &after.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
        Self {
            name: name.into(),
            backends: Vec::new(),
            added: added.into(),
            connections: Vec::new(),
            added_ready: None,
            notes: Vec::new(),
            errors,
            unfinished: before.unfinished + after.unfinished,
            latency: latencies.summary(),
            elapsed: before.elapsed + after.elapsed,
            ok: before.ok() + after.ok(),
        }
    }

    /// Adds a backend's calls before and after the scale-up.
    #[must_use]
    pub fn calls(mut self, backend: impl Into<String>, before: u64, after: u64) -> Self {
        self.backends.push(HalfCalls {
            backend: backend.into(),
            before,
            after,
        });
        self
    }

    /// Sets [`connections`](Self::connections).
    #[must_use]
    pub fn connections(mut self, landed: Vec<String>) -> Self {
        self.connections = landed;
        self
    }

    /// Sets [`added_ready`](Self::added_ready).
    #[must_use]
    pub fn added_ready(mut self, after: Duration) -> Self {
        self.added_ready = Some(after);
        self
    }

    /// Adds a line to [`notes`](Self::notes).
    #[must_use]
    pub fn note(mut self, line: impl Into<String>) -> Self {
        self.notes.push(line.into());
        self
    }

    /// Successful calls, over both halves.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// Failed calls, over both halves.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The share (0 to 1) of each half's calls, as the backends counted them, that went to
    /// the added backend: `(before, after)`.
    pub fn added_share(&self) -> (f64, f64) {
        self.backends
            .iter()
            .find(|b| b.backend == self.added)
            .map_or((0.0, 0.0), |b| {
                let (before, after) = self.totals();
                (fraction(b.before, before), fraction(b.after, after))
            })
    }

    /// Calls in each half over every backend.
    fn totals(&self) -> (u64, u64) {
        self.backends
            .iter()
            .fold((0, 0), |(b, a), row| (b + row.before, a + row.after))
    }

    /// The JSON form of this run: `{"requests", "ok", "errors": {code: n}, "unfinished",
    /// "backends": {backend: {"before", "after"}}, "added", "added_share": {"before",
    /// "after"} (fractions), "added_ready_ms" (or null), "connections": [backend], "notes": [line],
    /// "elapsed_ms", "throughput_rps", "latency_ms": {"p50", "p90", "p99", "p999", "mean",
    /// "max"}, "p50_ms", "p99_ms"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (before, after) = self.added_share();
        let backends: serde_json::Map<String, serde_json::Value> = self
            .backends
            .iter()
            .map(|b| {
                (
                    b.backend.clone(),
                    serde_json::json!({ "before": b.before, "after": b.after }),
                )
            })
            .collect();
        let l = &self.latency;
        serde_json::json!({
            "requests": self.ok + self.failed() + self.unfinished,
            "ok": self.ok,
            "errors": self.errors,
            "unfinished": self.unfinished,
            "backends": backends,
            "added": self.added,
            "added_share": { "before": before, "after": after },
            "added_ready_ms": self.added_ready.map(ms),
            "connections": self.connections,
            "notes": self.notes,
            "elapsed_ms": ms(self.elapsed),
            "throughput_rps": throughput(self.ok, self.elapsed),
            "latency_ms": {
                "p50": ms(l.p50),
                "p90": ms(l.p90),
                "p99": ms(l.p99),
                "p999": ms(l.p999),
                "mean": ms(l.mean),
                "max": ms(l.max),
            },
            "p50_ms": ms(l.p50),
            "p99_ms": ms(l.p99),
        })
    }
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

/// `calls  share  bar` of one half, the bar padded to its full width.
fn half_cell(calls: u64, total: u64) -> String {
    let share = fraction(calls, total);
    let bar = "█".repeat((share * HALF_BAR_WIDTH as f64).round() as usize);
    format!("{calls:>6} {:>5.1}%  {bar:<HALF_BAR_WIDTH$}", share * 100.0)
}

/// The table: a header line, where the client's connections landed (if it pins them), one
/// line per backend with its calls and share in each half, the added backend's share before
/// and after, the percentiles.
impl fmt::Display for ScaleUpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "== {}: {} ok in {:.2} s ({:.0}/s)",
            self.name,
            self.ok,
            self.elapsed.as_secs_f64(),
            throughput(self.ok, self.elapsed)
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
        if !self.connections.is_empty() {
            writeln!(
                f,
                "  connections held for the whole run landed on: {}",
                self.connections.join(", ")
            )?;
        }
        let width = self
            .backends
            .iter()
            .map(|b| b.backend.len())
            .max()
            .unwrap_or(0)
            .max("backend".len());
        let cell = 6 + 1 + 6 + 2 + HALF_BAR_WIDTH;
        writeln!(
            f,
            "  {:<width$}  {:<cell$}    after the scale-up",
            "backend", "  before the scale-up"
        )?;
        let (before, after) = self.totals();
        for b in &self.backends {
            writeln!(
                f,
                "  {:<width$}  {}  {}",
                b.backend,
                half_cell(b.before, before),
                half_cell(b.after, after).trim_end()
            )?;
        }
        let (share_before, share_after) = self.added_share();
        write!(
            f,
            "  {}: {:.1}% of the calls before the scale-up, {:.1}% after",
            self.added,
            share_before * 100.0,
            share_after * 100.0
        )?;
        match self.added_ready {
            Some(d) => writeln!(f, " (ready after {:.1} ms)", ms(d))?,
            None => writeln!(f)?,
        }
        for line in &self.notes {
            writeln!(f, "  {line}")?;
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
    fn scale_up_report_merges_halves_and_shows_the_added_share() {
        let mut before = LoadOutcome::default();
        before.backends.insert("a".into(), 4);
        before.latencies = millis(&[1, 2, 3, 4]);
        let mut after = LoadOutcome::default();
        after.backends.insert("a".into(), 2);
        after.errors.insert("Unavailable".into(), 1);
        after.latencies = millis(&[5, 6]);
        let run = ScaleUpReport::new("round_robin", "new", &before, &after)
            .calls("a", 4, 2)
            .calls("new", 0, 2)
            .added_ready(Duration::from_millis(3))
            .note("discovery added it");
        assert_eq!((run.ok(), run.failed()), (6, 1));
        assert_eq!(run.latency.count, 6);
        assert_eq!(run.latency.max, Duration::from_millis(6));
        assert_eq!(run.added_share(), (0.0, 0.5));

        let table = run.to_string();
        assert!(
            table.contains("new: 0.0% of the calls before the scale-up, 50.0% after"),
            "{table}"
        );
        assert!(table.contains("Unavailable 1"), "{table}");
        assert!(
            table.contains("(ready after 3.0 ms)\n  discovery added it\n"),
            "{table}"
        );
        assert!(!table.contains("connections held"), "{table}");

        let json = run.to_json();
        assert_eq!(json["requests"], 7);
        assert_eq!(json["backends"]["a"]["before"], 4);
        assert_eq!(json["backends"]["new"]["after"], 2);
        assert_eq!(json["added_share"]["after"], 0.5);
        assert_eq!(json["added_ready_ms"], 3.0);
        assert_eq!(json["notes"][0], "discovery added it");

        let pinned = ScaleUpReport::new("pool", "new", &before, &after)
            .calls("a", 4, 4)
            .calls("new", 0, 0)
            .connections(vec!["a".into(), "a".into()]);
        assert_eq!(pinned.added_share(), (0.0, 0.0));
        assert!(pinned.to_string().contains("landed on: a, a"));
        assert!(pinned.to_json()["added_ready_ms"].is_null());
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
