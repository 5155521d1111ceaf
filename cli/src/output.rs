//! How endpoints and tables are printed, shared by the commands.

use std::collections::BTreeMap;
use std::io::Write;

use meshless::discovery::{Endpoint, Metadata};

/// The metadata as printed: a sorted map.
type MetadataMap = BTreeMap<String, String>;
use serde::Serialize;

use crate::error::CliError;

/// Metadata keys that carry an endpoint's readiness as discovery sees it, in the vocabulary
/// of Kubernetes EndpointSlice conditions (`ready`, `serving`, `terminating`), the only
/// backend family with such a notion.
const READY_KEY: &str = "ready";
const SERVING_KEY: &str = "serving";
const TERMINATING_KEY: &str = "terminating";

/// What is printed when a backend has no notion of readiness.
pub const NOT_APPLICABLE: &str = "n/a";

/// Width of a 100% share bar, in characters.
pub const BAR_WIDTH: f64 = 40.0;

/// One endpoint as the commands print it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// `ip:port`, `[ip6]:port` or `unix:/path`.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Zone, when the backend knows it.
    pub zone: Option<String>,
    /// Readiness as discovery reports it; `None` when the backend has no notion of it.
    pub readiness: Option<String>,
    /// Everything else the backend reported.
    pub metadata: MetadataMap,
}

impl From<&Endpoint> for EndpointView {
    fn from(ep: &Endpoint) -> Self {
        EndpointView {
            address: ep.addr.to_string(),
            weight: ep.weight,
            zone: ep.zone.clone(),
            readiness: readiness(&ep.metadata),
            metadata: MetadataMap::clone(&ep.metadata),
        }
    }
}

impl EndpointView {
    /// `weight=1 zone=a ready=ready k=v ...`: the facts after the address, on one line.
    pub fn facts(&self) -> String {
        let mut out = format!("weight={}", self.weight);
        if let Some(zone) = &self.zone {
            out.push_str(&format!(" zone={zone}"));
        }
        out.push_str(&format!(
            " readiness={}",
            self.readiness.as_deref().unwrap_or(NOT_APPLICABLE)
        ));
        if !self.metadata.is_empty() {
            out.push(' ');
            out.push_str(&self.metadata_text());
        }
        out
    }

    /// The metadata as `k=v,k=v`, or `-` when there is none.
    pub fn metadata_text(&self) -> String {
        if self.metadata.is_empty() {
            return "-".to_owned();
        }
        self.metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The endpoint's readiness from its metadata: `ready`, `not ready`, `serving`,
/// `not serving`, with `, terminating` added when it is; `None` when the backend reports
/// none of these.
pub fn readiness(md: &Metadata) -> Option<String> {
    let flag = |key: &str| md.get(key).map(|v| v.eq_ignore_ascii_case("true"));
    let (ready, serving, terminating) = (flag(READY_KEY), flag(SERVING_KEY), flag(TERMINATING_KEY));
    let mut out = match (ready, serving) {
        (Some(true), _) => "ready".to_owned(),
        (Some(false), Some(true)) => "not ready, serving".to_owned(),
        (Some(false), _) => "not ready".to_owned(),
        (None, Some(true)) => "serving".to_owned(),
        (None, Some(false)) => "not serving".to_owned(),
        (None, None) if terminating.is_some() => String::new(),
        (None, None) => return None,
    };
    if terminating == Some(true) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str("terminating");
    }
    if out.is_empty() {
        out.push_str("not terminating");
    }
    Some(out)
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// Columns separated by two spaces, aligned as `align` says (left for columns it does
/// not cover); the last column is not padded.
pub fn table(rows: &[Vec<String>], align: &[Align]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let w = widths[c];
                let right = align.get(c) == Some(&Align::Right);
                let last = c + 1 == row.len();
                if right {
                    line.push_str(&format!("{cell:>w$}"));
                } else if last {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}"));
                }
                if !last {
                    line.push_str("  ");
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// A bar of `share` (0..=1) of [`BAR_WIDTH`] characters.
pub fn bar(share: f64) -> String {
    let n = (share.clamp(0.0, 1.0) * BAR_WIDTH).round() as usize;
    "█".repeat(n)
}

/// Writes one line to stdout and flushes it, so streamed output (watch) is seen at once.
pub fn line(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Writes `value` as one line of JSON to stdout.
pub fn json_line(value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CliError::Internal(format!("cannot encode JSON output: {e}")))?;
    line(&text)
}

/// The current time as RFC 3339 UTC with milliseconds, for timestamps.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Sorted counts by name, for JSON maps that read the same on every run.
pub type Counts = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn readiness_from_conditions() {
        assert_eq!(readiness(&md(&[])), None);
        assert_eq!(readiness(&md(&[("nodeName", "n1")])), None);
        assert_eq!(
            readiness(&md(&[("ready", "true")])).as_deref(),
            Some("ready")
        );
        assert_eq!(
            readiness(&md(&[
                ("ready", "false"),
                ("serving", "true"),
                ("terminating", "true")
            ]))
            .as_deref(),
            Some("not ready, serving, terminating")
        );
        assert_eq!(
            readiness(&md(&[("serving", "false")])).as_deref(),
            Some("not serving")
        );
        assert_eq!(
            readiness(&md(&[("terminating", "false")])).as_deref(),
            Some("not terminating")
        );
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["long".into(), "x".into(), "y".into()],
        ];
        assert_eq!(table(&rows, &[]), vec!["A     BB  C", "long  x   y"]);
        let right = [Align::Left, Align::Right, Align::Right];
        assert_eq!(table(&rows, &right), vec!["A     BB  C", "long   x  y"]);
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0.0), "");
        assert_eq!(bar(0.25).chars().count(), 10);
        assert_eq!(bar(2.0).chars().count(), 40);
    }
}
