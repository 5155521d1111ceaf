//! Per-endpoint load statistics, shared lock-free between the request path and pickers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The default time constant of the latency EWMA: 10 s, Finagle's and go-zero's value.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Load statistics of one endpoint, kept by address: they outlive picker rebuilds and
/// endpoint set changes, so a policy never forgets what it learned about an endpoint that
/// stays.
///
/// Latency is a *peak* EWMA (Finagle's): a sample above the current estimate replaces it at
/// once, a sample below it is blended in with weight `1 - e^(-Δt/τ)`. Everything is an
/// atomic; recording and reading never take a lock.
#[derive(Debug)]
pub struct EndpointStats {
    in_flight: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    /// The latency estimate in nanoseconds, as `f64` bits.
    ewma_bits: AtomicU64,
    /// When the estimate was last updated, in nanoseconds since `origin`.
    stamp_nanos: AtomicU64,
    origin: Instant,
    decay_nanos: f64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self::new(DEFAULT_DECAY, Duration::ZERO)
    }
}

impl EndpointStats {
    /// Stats with EWMA time constant `decay`, starting from the latency estimate `initial`.
    pub fn new(decay: Duration, initial: Duration) -> Self {
        EndpointStats {
            in_flight: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ewma_bits: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            stamp_nanos: AtomicU64::new(0),
            origin: Instant::now(),
            decay_nanos: decay.as_nanos().max(1) as f64,
        }
    }

    /// Calls sent and not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls completed successfully.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Calls that failed in a way that counts against the endpoint.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The stored latency estimate, without decay for the time since it was updated.
    pub fn latency_ewma(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ewma_bits.load(Ordering::Relaxed)) as u64)
    }

    /// The latency estimate decayed toward zero for the time since its last update, as
    /// tower's `PeakEwma` reads it: an endpoint that stopped receiving calls is retried
    /// eventually instead of being shunned forever.
    pub fn latency_ewma_at(&self, now: Instant) -> Duration {
        let est = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = self.since_stamp(now);
        Duration::from_nanos((est * (-elapsed / self.decay_nanos).exp()) as u64)
    }

    /// Marks the start of a call. Pair with [`finish`](Self::finish).
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the end of a call started with [`start`](Self::start) that took `latency`.
    /// `ok` is false for failures that count against the endpoint.
    pub fn finish(&self, latency: Duration, ok: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if ok {
            self.successes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.observe(latency, Instant::now());
    }

    /// Undoes a [`start`](Self::start) for a call that never reached the endpoint (its
    /// connection closed first): nothing is learned about the endpoint from it.
    pub fn abandon(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Folds one latency sample taken at `now` into the peak EWMA.
    pub fn observe(&self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        let now_nanos = now.saturating_duration_since(self.origin).as_nanos() as u64;
        let prev_stamp = self.stamp_nanos.swap(now_nanos, Ordering::Relaxed);
        let elapsed = now_nanos.saturating_sub(prev_stamp) as f64;
        let w = (-elapsed / self.decay_nanos).exp();
        let mut cur = self.ewma_bits.load(Ordering::Relaxed);
        loop {
            let est = f64::from_bits(cur);
            let next = if sample > est {
                sample
            } else {
                est * w + sample * (1.0 - w)
            };
            match self.ewma_bits.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    fn since_stamp(&self, now: Instant) -> f64 {
        let now_nanos = now.saturating_duration_since(self.origin).as_nanos() as u64;
        now_nanos.saturating_sub(self.stamp_nanos.load(Ordering::Relaxed)) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_then_decay() {
        let s = EndpointStats::new(Duration::from_secs(10), Duration::ZERO);
        s.observe(Duration::from_millis(100), Instant::now());
        assert_eq!(s.latency_ewma(), Duration::from_millis(100));
        // A lower sample 10 s (one τ) later is blended with weight 1 - 1/e.
        tokio::time::advance(Duration::from_secs(10)).await;
        s.observe(Duration::from_millis(0), Instant::now());
        let expect = 100.0 * (-1.0f64).exp();
        let got = s.latency_ewma().as_secs_f64() * 1e3;
        assert!((got - expect).abs() < 1e-3, "{got} vs {expect}");
        // Reading decays too, without a sample.
        tokio::time::advance(Duration::from_secs(10)).await;
        let read = s.latency_ewma_at(Instant::now()).as_secs_f64() * 1e3;
        assert!((read - expect * (-1.0f64).exp()).abs() < 1e-3);
    }

    #[test]
    fn counts() {
        let s = EndpointStats::default();
        s.start();
        s.start();
        assert_eq!(s.in_flight(), 2);
        s.finish(Duration::from_millis(1), true);
        s.finish(Duration::from_millis(1), false);
        assert_eq!((s.in_flight(), s.successes(), s.failures()), (0, 1, 1));
    }
}
