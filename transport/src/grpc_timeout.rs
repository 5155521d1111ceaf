//! The `grpc-timeout` header: a call's deadline as gRPC over HTTP/2 carries it.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The header's name, parsed once (a lookup by `&str` parses it on every call).
pub(crate) static HEADER: HeaderName = HeaderName::from_static("grpc-timeout");
/// gRPC allows at most 8 digits in a `grpc-timeout` value.
const MAX_DIGITS: u64 = 99_999_999;

/// The deadline in `headers`, if it has a well-formed one (1 to 8 digits and a unit).
pub(crate) fn parse(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(&HEADER)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `d` in the finest unit that fits gRPC's 8 digits (rounding up, so a deadline is
/// never made shorter than asked).
pub(crate) fn encode(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (unit, suffix) in units {
        let v = nanos.div_ceil(unit);
        if v <= u128::from(MAX_DIGITS)
            && let Ok(h) = HeaderValue::from_str(&format!("{v}{suffix}"))
        {
            return h;
        }
    }
    HeaderValue::from_static("99999999H")
}

/// A call deadline as the `grpc-timeout` request header carries it, encoded once (in the
/// finest unit that fits gRPC's 8 digits, rounded up): what a layer that gives calls a
/// default deadline sets on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTimeout(HeaderValue);

impl GrpcTimeout {
    /// The header value for a deadline `timeout` from when the call starts.
    pub fn new(timeout: Duration) -> Self {
        GrpcTimeout(encode(timeout))
    }

    /// The deadline a request's `headers` carry in `grpc-timeout`, if well formed (1 to 8
    /// digits and a unit, as gRPC over HTTP/2 defines it).
    pub fn parse(headers: &http::HeaderMap) -> Option<Duration> {
        parse(headers)
    }

    /// Sets this deadline on a request's `headers`, replacing any it had.
    pub fn set(&self, headers: &mut http::HeaderMap) {
        headers.insert(HEADER.clone(), self.0.clone());
    }

    /// Sets this deadline on a request's `headers` unless the call has one already (a
    /// caller's own deadline wins). Returns whether it was set.
    pub fn set_if_absent(&self, headers: &mut http::HeaderMap) -> bool {
        if headers.contains_key(&HEADER) {
            return false;
        }
        headers.insert(HEADER.clone(), self.0.clone());
        true
    }

    /// The encoded header value, such as `1000000u` for one second.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        let mut h = http::HeaderMap::new();
        for (v, d) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
        ] {
            h.insert(HEADER.clone(), v.parse().unwrap());
            assert_eq!(parse(&h), Some(d), "{v}");
        }
        for bad in ["", "S", "12x", "123456789S", "-1S"] {
            h.insert(HEADER.clone(), HeaderValue::from_str(bad).unwrap());
            assert_eq!(parse(&h), None, "{bad}");
        }
    }

    #[test]
    fn encodes_in_the_finest_unit_that_fits() {
        assert_eq!(encode(Duration::from_millis(250)), "250000u");
        assert_eq!(encode(Duration::from_secs(2)), "2000000u");
        assert_eq!(encode(Duration::from_secs(200)), "200000m");
        assert_eq!(encode(Duration::from_secs(86_400 * 365)), "31536000S");
        assert_eq!(encode(Duration::from_secs(86_400 * 365 * 4)), "2102400M");
        assert_eq!(encode(Duration::MAX), "99999999H");
        let mut h = http::HeaderMap::new();
        h.insert(HEADER.clone(), encode(Duration::from_millis(1234)));
        assert_eq!(parse(&h), Some(Duration::from_millis(1234)));
    }
}
