//! Target parameters as go-zero writes them, shared by the `consul:` and `etcd:` targets:
//! Go durations, Go booleans, percent-decoding, `host:port` checks and "did you mean"
//! suggestions for misspelt parameter names.

use std::time::Duration;

/// A Go-style duration as go-zero's `mapping` and Consul take them: `14s`, `55000ms`,
/// `1m30s`, `1.5s`, `0`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    crate::text::parse_go_duration(s)
        .map_err(|why| format!("`{s}` is not a duration such as `14s`, `500ms` or `1m30s`: {why}"))
}

/// Go's `strconv.ParseBool`, which go-zero's `mapping` uses (and an empty value is false).
pub(crate) fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(format!("`{s}` is not `true` or `false`")),
    }
}

/// Percent-decodes a query component (`+` is a space, as in Go's `url.QueryUnescape`).
pub(crate) fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The `key=value` pairs of a query string, decoded, in order.
pub(crate) fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

/// Checks a server address `host:port`; `example` is the form to suggest (`host:8500`).
pub(crate) fn check_host_port(addr: &str, example: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("has no port: write `{example}`"));
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("has port `{port}`, not a number in 1..=65535"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host".into());
    }
    if host.parse::<std::net::IpAddr>().is_err() && !crate::is_dns_name(host) {
        return Err(format!("has `{host}`, not a host name or IP address"));
    }
    Ok(())
}

/// ` (did you mean `x`?)` for a parameter one or two edits from one of `known`.
pub(crate) fn suggest(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|p| (edit_distance(key, p), p))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, p)| format!(" (did you mean `{p}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_durations() {
        for (s, ms) in [
            ("14s", 14_000),
            ("55000ms", 55_000),
            ("1m30s", 90_000),
            ("1.5s", 1_500),
            ("0", 0),
            ("2h", 7_200_000),
        ] {
            assert_eq!(duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "s", "10", "1x", "-1s", "1s2"] {
            assert!(duration(s).is_err(), "{s}");
        }
    }

    #[test]
    fn host_ports_are_checked() {
        assert!(check_host_port("127.0.0.1:2379", "host:2379").is_ok());
        assert!(check_host_port("[::1]:2379", "host:2379").is_ok());
        assert!(check_host_port("etcd-0.etcd:2379", "host:2379").is_ok());
        for (addr, want) in [
            ("h", "write `host:2379`"),
            ("h:0", "port `0`"),
            (":2379", "no host"),
            ("h!:2379", "not a host name"),
        ] {
            let e = check_host_port(addr, "host:2379").unwrap_err();
            assert!(e.contains(want), "{addr}: {e}");
        }
    }

    #[test]
    fn misspellings_get_a_suggestion() {
        assert_eq!(
            suggest("waitt", &["wait", "tag"]),
            " (did you mean `wait`?)"
        );
        assert_eq!(suggest("bogus", &["wait", "tag"]), "");
        let got: Vec<_> = pairs("a=1&b=x%2Fy&c").collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x/y".to_owned()),
                ("c".to_owned(), String::new())
            ]
        );
    }
}
