//! Calls in flight and calls pending (waiting for their response headers), packed in one
//! atomic word, with the sum of the pending calls' start times for their age.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::EndpointStats;
use super::call::{CallStart, SIGNAL_LATENCY};
use super::peak_ewma::{UNPROBED, UNSAMPLED};

/// The in-flight word: calls in flight in the low half, calls still waiting for their
/// response headers (pending) in the high half. One word, so a pick reads both in one load
/// and the stats keep their one-cache-line layout.
///
/// The packing pays where picks are cache misses: `cargo bench -p meshless-balancer --bench
/// pick`, `pick/p2c_ewma/1000` and `pick/least_request/1000` (1,000 endpoints), where a
/// second word would put what a pick reads on a second cache line.
pub(super) const PENDING_ONE: u64 = 1 << 32;
pub(super) const IN_FLIGHT_MASK: u64 = u32::MAX as u64;

impl EndpointStats {
    /// Calls sent and not yet completed (a streaming call until its response body ends).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) & IN_FLIGHT_MASK
    }

    /// Calls sent that have not received their response headers yet.
    pub fn pending(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) >> 32
    }

    /// The calls in flight and the mean age of those still waiting for their response
    /// headers at `now` (nanoseconds of the clock); the age is 0 when none is pending or the
    /// counters were caught mid-update.
    ///
    /// `start` adds to the sum before it raises the count (release); `respond` and `finish`
    /// lower the count before they take from the sum (release). Reading the count, the sum
    /// (acquire) and the count again, equal counts mean the sum holds at least the calls
    /// counted: the only mismatch left is a sum with extra calls, which reads as a smaller age
    /// (clamped at 0), never as a spurious huge one.
    #[inline]
    pub(super) fn pending_age_nanos(&self, now: u64) -> (u64, f64) {
        let word = self.in_flight.load(Ordering::Acquire);
        let sum = self.pending_start_sum.load(Ordering::Acquire);
        let in_flight = word & IN_FLIGHT_MASK;
        if self.in_flight.load(Ordering::Relaxed) != word {
            return (in_flight, 0.0);
        }
        let n = word >> 32;
        // Wrapping: the sum may wrap, the total age does not (see `pending_start_sum`).
        // With nothing pending the sum is 0, or a call's start caught mid-update, which
        // reads as negative and is clamped: the age is 0 without a branch on `n`.
        let total = n.wrapping_mul(now).wrapping_sub(sum) as i64;
        (in_flight, total.max(0) as f64 / n.max(1) as f64)
    }

    /// The mean age of the calls waiting for their response headers, by the shared clock
    /// (which may lag real time by up to about a millisecond while calls complete); zero
    /// when none is pending.
    pub fn pending_age(&self) -> Duration {
        Duration::from_nanos(self.pending_age_nanos(self.clock.now_nanos()).1 as u64)
    }

    /// Marks the start of a call, reading the clock once when latency is tracked; pass the
    /// returned [`CallStart`] to [`respond`](Self::respond) when the response headers
    /// arrive, and to [`end`](Self::end) (or [`abandon`](Self::abandon)) when the call is
    /// over. Until its headers arrive the call's age counts in
    /// [`load_cost`](Self::load_cost); until it ends it counts in
    /// [`in_flight`](Self::in_flight).
    pub fn start(&self) -> CallStart {
        match self.start_below(u64::MAX) {
            Some(call) => call,
            None => unreachable!("no limit to be at"),
        }
    }

    /// As [`start`](Self::start), but only while fewer than `max_in_flight` calls are in
    /// flight, checked and counted in one atomic step: a server that allows `n` concurrent
    /// streams gets at most `n` calls from callers racing for its last stream.
    pub fn try_start(&self, max_in_flight: u64) -> Option<CallStart> {
        self.start_below(max_in_flight)
    }

    /// [`start`](Self::start) while fewer than `limit` calls are in flight.
    #[inline]
    pub(super) fn start_below(&self, limit: u64) -> Option<CallStart> {
        let raise = |add: u64, order: Ordering| -> bool {
            if limit >= IN_FLIGHT_MASK {
                self.in_flight.fetch_add(add, order);
                return true;
            }
            self.in_flight
                .fetch_update(order, Ordering::Relaxed, |w| {
                    (w & IN_FLIGHT_MASK < limit).then_some(w + add)
                })
                .is_ok()
        };
        if !self.tracks(SIGNAL_LATENCY) {
            return raise(1, Ordering::Relaxed).then_some(CallStart {
                nanos: 0,
                pending: false,
            });
        }
        let nanos = self.clock.observe(Instant::now());
        // The sum before the count (see `pending_age_nanos`); taken back if the limit is
        // reached, which meanwhile reads as a smaller age, never a larger one.
        self.pending_start_sum.fetch_add(nanos, Ordering::Relaxed);
        if !raise(1 | PENDING_ONE, Ordering::Release) {
            self.pending_start_sum.fetch_sub(nanos, Ordering::Relaxed);
            return None;
        }
        self.clock.calls.0.started.fetch_add(1, Ordering::Relaxed);
        // An endpoint is free to try only until its first call starts: one whose calls are
        // all abandoned (refused streams) must not stay free, or it would take every pick.
        if self.base_and_calls.load(Ordering::Relaxed) == UNPROBED {
            let _ = self.base_and_calls.compare_exchange(
                UNPROBED,
                UNSAMPLED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Some(CallStart {
            nanos,
            pending: true,
        })
    }

    /// Takes a call off the in-flight count (and the pending one, if its headers never
    /// came); returns the clock's [completed](LoadClock::completed) calls after it.
    pub(super) fn end_in_flight(&self, call: &CallStart) -> u64 {
        let dec = if call.pending { 1 | PENDING_ONE } else { 1 };
        // Checked: a `CallStart` of other stats, or one ended twice, must not wrap the
        // count to 2^32.
        let ended = self
            .in_flight
            .fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
                let ok = w & IN_FLIGHT_MASK > 0 && (!call.pending || w >> 32 > 0);
                ok.then(|| w - dec)
            })
            .is_ok();
        if !ended || !self.tracks(SIGNAL_LATENCY) {
            return self.clock.completed();
        }
        if call.pending {
            self.pending_start_sum
                .fetch_sub(call.nanos, Ordering::Release);
        }
        self.clock.calls.0.completed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Undoes a [`start`](Self::start) for a call that never reached the endpoint (its
    /// connection closed first): nothing is learned about the endpoint from it.
    pub fn abandon(&self, call: CallStart) {
        let _ = self.end_in_flight(&call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Signals;

    #[test]
    fn counts() {
        let s = EndpointStats::default();
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        s.finish(a, true);
        s.finish(b, false);
        assert_eq!((s.in_flight(), s.successes(), s.failures()), (0, 1, 1));
        // A stray finish (of a call finished already) does not wrap.
        s.finish(a, true);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.pending_age(), Duration::ZERO);
    }

    #[test]
    fn try_start_stops_at_the_limit() {
        for s in [
            EndpointStats::default(),
            EndpointStats::default().with_signals(Signals::COUNTS),
        ] {
            let a = s.try_start(2).expect("first");
            let _b = s.try_start(2).expect("second");
            assert!(s.try_start(2).is_none());
            assert_eq!(s.in_flight(), 2);
            s.finish(a, true);
            assert!(s.try_start(2).is_some());
            assert_eq!(s.pending_age(), Duration::ZERO);
        }
    }
}
