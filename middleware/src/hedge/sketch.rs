//! A lock-free latency histogram over a rolling window, for the adaptive hedging delay
//! ("The Tail at Scale": hedge a call once it is slower than most).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets per doubling of latency: bucket bounds grow by 2^(1/4) ≈ 1.19, so a quantile
/// is known to within 19 %.
const PER_OCTAVE: f64 = 4.0;
/// The smallest bucket's upper bound.
const FLOOR_NANOS: f64 = 1_000.0;
/// 1 µs · 2^(128/4) ≈ 71 minutes: every latency worth hedging fits.
const BUCKETS: usize = 128;
/// How long a computed quantile is reused before it is computed again.
const REFRESH: Duration = Duration::from_millis(100);

/// Latency samples of the last one or two windows, in log-spaced buckets.
pub(crate) struct Sketch {
    /// Two halves: one being written, one holding the previous window.
    halves: [Half; 2],
    /// Which half is current (its low bit) and when it became current, in nanoseconds
    /// since `epoch` (the other bits).
    current: AtomicU64,
    window: Duration,
    epoch: Instant,
    /// The cached quantile in nanoseconds (0: none) and when it was computed (0: never).
    cached: AtomicU64,
    cached_at: AtomicU64,
}

struct Half {
    counts: [AtomicU32; BUCKETS],
    total: AtomicU32,
}

impl Half {
    fn new() -> Self {
        Half {
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
            total: AtomicU32::new(0),
        }
    }

    fn clear(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.total.store(0, Ordering::Relaxed);
    }
}

fn bucket_of(d: Duration) -> usize {
    let nanos = d.as_nanos() as f64;
    if nanos <= FLOOR_NANOS {
        return 0;
    }
    (((nanos / FLOOR_NANOS).log2() * PER_OCTAVE).ceil() as usize).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> Duration {
    Duration::from_nanos((FLOOR_NANOS * 2f64.powf(bucket as f64 / PER_OCTAVE)).ceil() as u64)
}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sketch")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Sketch {
    /// Keeps samples of the last `window` (and the one before, while the current fills).
    pub(crate) fn new(window: Duration) -> Self {
        Sketch {
            halves: [Half::new(), Half::new()],
            current: AtomicU64::new(0),
            window: window.max(Duration::from_millis(1)),
            epoch: Instant::now(),
            cached: AtomicU64::new(0),
            cached_at: AtomicU64::new(0),
        }
    }

    fn now_nanos(&self) -> u64 {
        // +1 so that "0" can mean "never".
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Moves to a fresh half when the current one is a window old; returns the current one.
    fn rotate(&self, now: u64) -> usize {
        let cur = self.current.load(Ordering::Acquire);
        let (index, since) = ((cur & 1) as usize, cur >> 1);
        let window = self.window.as_nanos() as u64;
        if now.saturating_sub(since) < window {
            return index;
        }
        let next = 1 - index;
        if self
            .current
            .compare_exchange(
                cur,
                (now << 1) | next as u64,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            // What the next half held is two windows old; if the current one is too, so is
            // what it holds.
            self.halves[next].clear();
            if now.saturating_sub(since) >= 2 * window {
                self.halves[index].clear();
            }
        }
        (self.current.load(Ordering::Acquire) & 1) as usize
    }

    /// Records one latency.
    pub(crate) fn record(&self, d: Duration) {
        let half = &self.halves[self.rotate(self.now_nanos())];
        half.counts[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        half.total.fetch_add(1, Ordering::Relaxed);
    }

    /// The latency below which a share `q` of the samples of the last window or two fall
    /// (rounded up to its bucket's bound), or `None` with fewer than `min_samples`.
    /// Computed at most every 100 ms; calls in between reuse it.
    pub(crate) fn quantile(&self, q: f64, min_samples: u32) -> Option<Duration> {
        let now = self.now_nanos();
        let at = self.cached_at.load(Ordering::Acquire);
        if at != 0 && now.saturating_sub(at) < REFRESH.as_nanos() as u64 {
            let cached = self.cached.load(Ordering::Acquire);
            return (cached != 0).then(|| Duration::from_nanos(cached));
        }
        self.rotate(now);
        let total: u64 = self
            .halves
            .iter()
            .map(|h| u64::from(h.total.load(Ordering::Relaxed)))
            .sum();
        let value = if total == 0 || total < u64::from(min_samples) {
            0
        } else {
            let want = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            let mut found = BUCKETS - 1;
            for b in 0..BUCKETS {
                seen += self
                    .halves
                    .iter()
                    .map(|h| u64::from(h.counts[b].load(Ordering::Relaxed)))
                    .sum::<u64>();
                if seen >= want {
                    found = b;
                    break;
                }
            }
            upper_bound(found).as_nanos() as u64
        };
        self.cached.store(value, Ordering::Release);
        self.cached_at.store(now, Ordering::Release);
        (value != 0).then(|| Duration::from_nanos(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn p95_of_a_known_distribution_within_a_bucket() {
        let s = Sketch::new(Duration::from_secs(10));
        assert_eq!(s.quantile(0.95, 10), None, "no samples");
        tokio::time::advance(REFRESH).await;
        // 1..=1000 ms, once each: the true p95 is 950 ms.
        for ms in 1..=1000u64 {
            s.record(Duration::from_millis(ms));
        }
        let p95 = s.quantile(0.95, 100).unwrap();
        assert!(
            p95 >= Duration::from_millis(950) && p95 <= Duration::from_millis(950).mul_f64(1.19),
            "{p95:?}"
        );
        assert!(s.quantile(0.95, 5000).is_some(), "cached for 100 ms");
        tokio::time::advance(REFRESH).await;
        assert_eq!(s.quantile(0.95, 5000), None, "too few samples");
    }

    #[tokio::test(start_paused = true)]
    async fn old_windows_are_forgotten() {
        let s = Sketch::new(Duration::from_secs(1));
        for _ in 0..100 {
            s.record(Duration::from_millis(500));
        }
        tokio::time::advance(Duration::from_millis(1100)).await;
        for _ in 0..100 {
            s.record(Duration::from_millis(5));
        }
        // Both windows count while the current one fills.
        assert!(s.quantile(0.95, 1).unwrap() >= Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(1100)).await;
        for _ in 0..10 {
            s.record(Duration::from_millis(5));
        }
        tokio::time::advance(REFRESH).await;
        let q = s.quantile(0.95, 1).unwrap();
        assert!(
            q < Duration::from_millis(7),
            "the 500 ms samples are gone: {q:?}"
        );
    }

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(1_000_000)), BUCKETS - 1);
        for ms in [1u64, 7, 100, 950, 60_000] {
            let d = Duration::from_millis(ms);
            let b = bucket_of(d);
            assert!(
                upper_bound(b) >= d && (b == 0 || upper_bound(b - 1) < d),
                "{ms} ms"
            );
        }
    }
}
