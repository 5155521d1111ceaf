//! Latency percentiles of a bench run.

use std::time::Duration;

use serde::Serialize;

/// The percentiles a bench run reports, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Nearest-rank percentiles of `samples` (sorted in place); `None` when there are none.
pub fn latency_ms(samples: &mut [Duration]) -> Option<LatencyMs> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |per_mille: usize| {
        // Nearest rank: the smallest sample with at least that share of the samples at or
        // below it. Integer arithmetic, so 99.9% of 1000 is rank 999, not 1000.
        let rank = (per_mille * n).div_ceil(1000);
        round_to_micros(samples[rank.clamp(1, n) - 1].as_secs_f64() * 1e3)
    };
    Some(LatencyMs {
        p50: at(500),
        p90: at(900),
        p99: at(990),
        p999: at(999),
    })
}

/// Milliseconds rounded to whole microseconds: finer digits are timer noise, and they make
/// JSON output hard to read (`0.6902539999999999`).
pub fn round_to_micros(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let l = latency_ms(&mut s).unwrap();
        assert_eq!((l.p50, l.p90, l.p99, l.p999), (500.0, 900.0, 990.0, 999.0));
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(latency_ms(&mut one).unwrap().p999, 7.0);
        assert_eq!(latency_ms(&mut []), None);
        assert_eq!(round_to_micros(0.690_253_999_999_999_9), 0.69);
    }
}
