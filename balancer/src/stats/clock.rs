//! The coarse clock and call counts shared by the statistics of one balancer's endpoints.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

#[cfg(doc)]
use super::EndpointStats;
use crate::rng::Padded;

/// How far a [`LoadClock`] must move before it is written again: 1 ms. Costs decay over
/// seconds, so a millisecond of staleness changes nothing, and the shared cache line is
/// written at most a thousand times a second whatever the request rate.
pub(super) const CLOCK_RESOLUTION_NANOS: u64 = 1_000_000;

/// A coarse clock shared by the statistics of one balancer's endpoints, advanced by every
/// completed call (which reads the real clock anyway), and the count of their calls in
/// flight.
///
/// Pickers read it instead of the real clock: reading `Instant::now()` costs 20–50 ns (more
/// under tokio's test clock), as much as the whole pick budget, while this is one relaxed
/// load. It lags real time only while no call completes anywhere, and then no estimate
/// changes either.
#[derive(Debug)]
pub struct LoadClock {
    origin: Instant,
    now_nanos: AtomicU64,
    /// `1 / n` for the `n` endpoints a balancer picks among (see
    /// [`set_endpoints`](Self::set_endpoints)), as `f64` bits, so that the pick path
    /// multiplies instead of divides.
    inv_endpoints_bits: AtomicU64,
    /// Calls started and completed (or abandoned) over every endpoint sharing this clock.
    /// On a cache line of their own: every call writes them, while every pick reads
    /// `now_nanos`.
    pub(super) calls: Padded<CallCounts>,
}

#[derive(Debug, Default)]
pub(super) struct CallCounts {
    pub(super) started: AtomicU64,
    pub(super) completed: AtomicU64,
}

impl Default for LoadClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadClock {
    /// A clock that starts now.
    pub fn new() -> Self {
        LoadClock {
            origin: Instant::now(),
            now_nanos: AtomicU64::new(0),
            inv_endpoints_bits: AtomicU64::new(1f64.to_bits()),
            calls: Padded(CallCounts::default()),
        }
    }

    /// Calls in flight over every endpoint whose statistics share this clock (see
    /// [`EndpointStats::with_clock`]).
    #[inline]
    pub fn in_flight(&self) -> u64 {
        // Completed first: a call that completes in between then reads as still in flight,
        // never the count as negative.
        let completed = self.completed();
        self.calls
            .0
            .started
            .load(Ordering::Relaxed)
            .saturating_sub(completed)
    }

    /// Calls completed or abandoned over every endpoint sharing this clock: the clock the
    /// estimates' [sample window](EndpointStats::with_sample_window) counts in.
    #[inline]
    pub fn completed(&self) -> u64 {
        self.calls.0.completed.load(Ordering::Relaxed)
    }

    /// Tells the endpoints sharing this clock how many of them the balancer picks among
    /// (at least 1), which scales their [sample window](EndpointStats::with_sample_window).
    /// Balancers set it when they build a picker.
    pub fn set_endpoints(&self, n: usize) {
        let n = n.max(1);
        self.inv_endpoints_bits
            .store((1.0 / n as f64).to_bits(), Ordering::Relaxed);
    }

    /// `1 / n`, as [`set_endpoints`](Self::set_endpoints) stored it.
    #[inline]
    pub(super) fn inv_endpoints(&self) -> f64 {
        f64::from_bits(self.inv_endpoints_bits.load(Ordering::Relaxed))
    }

    /// As last set by [`set_endpoints`](Self::set_endpoints); 1 before.
    pub fn endpoints(&self) -> u64 {
        (1.0 / self.inv_endpoints()).round() as u64
    }

    /// The last time observed, in nanoseconds since the clock started.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.now_nanos.load(Ordering::Relaxed)
    }

    /// Moves the clock forward to `t` (never backward) and returns `t` in its nanoseconds.
    pub fn observe(&self, t: Instant) -> u64 {
        let nanos = self.nanos_at(t);
        if nanos >= self.now_nanos().saturating_add(CLOCK_RESOLUTION_NANOS) {
            self.now_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
        nanos
    }

    pub(super) fn nanos_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::stats::EndpointStats;

    #[test]
    fn clock_counts_calls_in_flight_over_its_endpoints() {
        let clock = Arc::new(LoadClock::new());
        let a = EndpointStats::default().with_clock(clock.clone());
        // A call started before the stats joined the clock moves with them.
        let early = EndpointStats::default();
        let pending = early.start();
        let b = early.with_clock(clock.clone());
        let (x, y) = (a.start(), a.start());
        assert_eq!(clock.in_flight(), 3);
        a.finish(x, true);
        a.abandon(y);
        b.finish(pending, true);
        assert_eq!((clock.in_flight(), clock.completed()), (0, 3));
    }
}
