//! Text every crate reads or writes the same way: Go durations (go-zero's targets, Consul's
//! fields, config files) and one-line error chains.

use std::time::Duration;

/// Parses a Go duration (which includes gRPC's `"1.5s"`): a sequence of decimal numbers,
/// each with a unit among `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration: write \"100ms\", \"1.5s\" or \"1m30s\"".into());
    }
    if s.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err("expected a number before each unit, as in \"1m30s\"".into());
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{}` is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit: write \"100ms\", \"1.5s\" or \"1m30s\"".into()),
            other => {
                return Err(format!(
                    "unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| "duration too large".into())
}

/// An error and its causes on one line, `outer: inner: innermost`, each cause left out when
/// the text before already says it. hyper's and tonic's errors print only their kind ("http2
/// error", "transport error"); what went wrong (a keepalive timeout, a GOAWAY's reason, a
/// refused connection) is in the chain.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        let inner = E("connection refused", None);
        let mid = E(
            "tcp connect error: connection refused",
            Some(Box::new(inner)),
        );
        let outer = E("transport error", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&outer),
            "transport error: tcp connect error: connection refused"
        );
    }
}
