//! Reading the positioned tree: maps whose keys are checked (unknown keys are errors, with a
//! "did you mean"), scalars with `${VAR}` and `${VAR:-default}` filled in from the
//! environment, gRPC and Go durations. Every problem keeps the path of its key and its
//! position, and reading goes on after a problem, so one pass reports them all.

use std::time::Duration;

use crate::tree::{Kind, Node, Pos};
use crate::{ConfigError, Problem};

/// What a read collects.
pub(crate) struct Cx<'e> {
    pub problems: Vec<Problem>,
    pub env: &'e dyn Fn(&str) -> Option<String>,
    /// Policies registered in code, selectable by name in `loadBalancingConfig`.
    pub policies: Option<&'e meshless_balancer::PolicyRegistry>,
}

impl Cx<'_> {
    pub fn err(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            pos,
            message: message.into(),
        });
    }

    pub fn finish<T>(self, file: Option<std::path::PathBuf>, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            let mut problems = self.problems;
            problems.sort_by_key(|p| p.pos);
            Err(ConfigError { file, problems })
        }
    }
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A map of the document whose keys were checked against what is allowed.
pub(crate) struct Obj<'a> {
    pub path: String,
    pub pos: Pos,
    entries: &'a [(String, Pos, Node)],
}

impl<'a> Obj<'a> {
    /// Reads `node` as a map with keys among `allowed`; reports unknown and duplicate keys.
    /// `None` (reported) when it is not a map; a null is an empty map.
    pub fn new(cx: &mut Cx<'_>, node: &'a Node, path: &str, allowed: &[&str]) -> Option<Self> {
        Self::read(cx, node, path, "a map", "key", |cx, key, pos| {
            if !allowed.contains(&key) {
                cx.err(&join(path, key), pos, unknown_key(key, allowed));
            }
        })
    }

    /// Reads `node` as a map whose keys are names the user chooses (the `clients` map): only
    /// duplicates are reported.
    pub fn names(cx: &mut Cx<'_>, node: &'a Node, path: &str) -> Option<Self> {
        Self::read(cx, node, path, "a map of names", "name", |cx, key, pos| {
            if key.starts_with('<') && key.ends_with('>') {
                cx.err(
                    path,
                    pos,
                    format!("{key} is not a name: give each entry a name"),
                );
            }
        })
    }

    /// Reads `node` as a map (`expected` says what, in the error when it is not one),
    /// reports keys given twice (each a `what`), and hands every other key to `check`.
    fn read(
        cx: &mut Cx<'_>,
        node: &'a Node,
        path: &str,
        expected: &str,
        what: &str,
        mut check: impl FnMut(&mut Cx<'_>, &str, Pos),
    ) -> Option<Self> {
        let entries: &'a [(String, Pos, Node)] = match &node.kind {
            Kind::Map(m) => m,
            Kind::Null => &[],
            other => {
                cx.err(
                    path,
                    node.pos,
                    format!("expected {expected}, found {}", other.describe()),
                );
                return None;
            }
        };
        for (i, (key, pos, _)) in entries.iter().enumerate() {
            if entries[..i].iter().any(|(k, _, _)| k == key) {
                cx.err(
                    &join(path, key),
                    *pos,
                    format!("duplicate {what}: it is given twice"),
                );
            } else {
                check(cx, key, *pos);
            }
        }
        Some(Obj {
            path: path.to_owned(),
            pos: node.pos,
            entries,
        })
    }

    /// The value of `key`, with its path, if present (and not null).
    pub fn get(&self, key: &str) -> Option<(&'a Node, String)> {
        self.entries
            .iter()
            .find(|(k, _, n)| k == key && !matches!(n.kind, Kind::Null))
            .map(|(k, _, n)| (n, join(&self.path, k)))
    }

    /// Every entry, for maps whose keys are names (the `clients` map).
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, Pos, &'a Node)> {
        self.entries.iter().map(|(k, p, n)| (k.as_str(), *p, n))
    }
}

/// "unknown key `x`", with the closest allowed key when one is close.
pub(crate) fn unknown_key(key: &str, allowed: &[&str]) -> String {
    let mut msg = format!("unknown key `{key}`");
    if let Some(s) = suggest(key, allowed) {
        msg.push_str(&format!("; did you mean `{s}`?"));
    } else if !allowed.is_empty() {
        msg.push_str(&format!("; expected one of {}", allowed.join(", ")));
    }
    msg
}

/// The allowed name closest to `got`, if close enough to be a likely typo (or a different
/// spelling: `MaxAttempts` for `maxAttempts`, `max_attempts` for `maxAttempts`).
pub(crate) fn suggest<'a>(got: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let flat = |s: &str| s.replace(['_', '-'], "").to_ascii_lowercase();
    let g = flat(got);
    if let Some(exact) = allowed.iter().find(|a| flat(a) == g) {
        return Some(exact);
    }
    allowed
        .iter()
        .map(|a| (strsim::jaro_winkler(&g, &flat(a)), *a))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}

/// Fills `${VAR}` and `${VAR:-default}` from the environment; `$${` is a literal `${`.
pub(crate) fn interpolate(cx: &mut Cx<'_>, text: &str, path: &str, pos: Pos) -> Option<String> {
    if !text.contains('$') {
        return Some(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            cx.err(
                path,
                pos,
                format!("`{after}`: a `${{` without its closing `}}`"),
            );
            return None;
        };
        let spec = &body[..end];
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            cx.err(
                path,
                pos,
                format!("`${{{spec}}}`: not a variable name (letters, digits and _)"),
            );
            return None;
        }
        match ((cx.env)(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                cx.err(
                    path,
                    pos,
                    format!(
                        "environment variable {name} is not set (set it, or give a default: ${{{name}:-value}})"
                    ),
                );
                return None;
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A string value (variables filled in).
pub(crate) fn string(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    match &node.kind {
        Kind::Str(s) => interpolate(cx, s, path, node.pos),
        other => {
            cx.err(
                path,
                node.pos,
                format!("expected a string, found {}", other.describe()),
            );
            None
        }
    }
}

/// A scalar as text, for numbers and booleans that may come from `${VAR}`.
fn scalar_text(cx: &mut Cx<'_>, node: &Node, path: &str, what: &str) -> Option<String> {
    match &node.kind {
        Kind::Str(s) => interpolate(cx, s, path, node.pos),
        Kind::Int(i) => Some(i.to_string()),
        Kind::Float(f) => Some(f.to_string()),
        Kind::Bool(b) => Some(b.to_string()),
        other => {
            cx.err(
                path,
                node.pos,
                format!("expected {what}, found {}", other.describe()),
            );
            None
        }
    }
}

/// A whole number in `lo..=hi`.
pub(crate) fn int(cx: &mut Cx<'_>, node: &Node, path: &str, lo: i128, hi: i128) -> Option<i128> {
    let text = scalar_text(cx, node, path, "a whole number")?;
    match text.trim().parse::<i128>() {
        Ok(n) if (lo..=hi).contains(&n) => Some(n),
        Ok(n) => {
            cx.err(
                path,
                node.pos,
                format!("{n} is out of range: must be {lo} to {hi}"),
            );
            None
        }
        Err(_) => {
            cx.err(
                path,
                node.pos,
                format!("expected a whole number, found `{text}`"),
            );
            None
        }
    }
}

/// A number.
pub(crate) fn number(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<f64> {
    let text = scalar_text(cx, node, path, "a number")?;
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() => Some(n),
        _ => {
            cx.err(path, node.pos, format!("expected a number, found `{text}`"));
            None
        }
    }
}

/// A boolean (`true`/`false`).
pub(crate) fn boolean(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<bool> {
    let text = scalar_text(cx, node, path, "true or false")?;
    match text.trim() {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            cx.err(
                path,
                node.pos,
                format!("expected true or false, found `{other}`"),
            );
            None
        }
    }
}

/// A duration: gRPC's `"1.5s"` or Go's `"100ms"`, `"1m30s"`, `"2h"`.
pub(crate) fn duration(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Duration> {
    let text = match &node.kind {
        Kind::Int(_) | Kind::Float(_) => {
            cx.err(
                path,
                node.pos,
                "a duration needs a unit: write \"100ms\", \"1.5s\" or \"1m30s\"",
            );
            return None;
        }
        _ => string(cx, node, path)?,
    };
    match parse_duration(&text) {
        Ok(d) => Some(d),
        Err(why) => {
            cx.err(path, node.pos, format!("`{text}`: {why}"));
            None
        }
    }
}

/// Parses a Go duration (which includes gRPC's `"1.5s"`).
pub use meshless_discovery::text::parse_go_duration as parse_duration;

/// A list; a single value where a list is expected is an error.
pub(crate) fn list<'a>(cx: &mut Cx<'_>, node: &'a Node, path: &str) -> &'a [Node] {
    match &node.kind {
        Kind::Seq(v) => v,
        Kind::Null => &[],
        other => {
            cx.err(
                path,
                node.pos,
                format!("expected a list, found {}", other.describe()),
            );
            &[]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_grpc_and_go() {
        for (s, d) in [
            ("1.5s", Duration::from_millis(1500)),
            ("100ms", Duration::from_millis(100)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("10ns", Duration::from_nanos(10)),
            ("0", Duration::ZERO),
            (".5s", Duration::from_millis(500)),
        ] {
            assert_eq!(parse_duration(s).unwrap(), d, "{s}");
        }
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", "1ms2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        let keys = ["maxAttempts", "initialBackoff", "maxBackoff"];
        assert_eq!(suggest("maxAtempts", &keys), Some("maxAttempts"));
        assert_eq!(suggest("MaxAttempts", &keys), Some("maxAttempts"));
        assert_eq!(suggest("max_attempts", &keys), Some("maxAttempts"));
        assert_eq!(suggest("colour", &keys), None);
    }

    #[test]
    fn interpolation() {
        let env = |k: &str| (k == "HOST").then(|| "db".to_owned());
        let mut cx = Cx {
            problems: Vec::new(),
            env: &env,
            policies: None,
        };
        let p = Pos::default();
        assert_eq!(
            interpolate(&mut cx, "${HOST}:5432", "x", p).unwrap(),
            "db:5432"
        );
        assert_eq!(interpolate(&mut cx, "${PORT:-80}", "x", p).unwrap(), "80");
        assert_eq!(
            interpolate(&mut cx, "$${HOST} $5", "x", p).unwrap(),
            "${HOST} $5"
        );
        assert!(interpolate(&mut cx, "${MISSING}", "x", p).is_none());
        assert!(cx.problems[0].message.contains("MISSING is not set"));
        assert!(interpolate(&mut cx, "${HOST", "x", p).is_none());
        assert!(interpolate(&mut cx, "${A B}", "x", p).is_none());
        assert_eq!(cx.problems.len(), 3);
    }
}
