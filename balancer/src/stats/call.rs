//! One call's life on an endpoint: [`CallStart`] when it starts, its response headers, and
//! its [`Outcome`] when it ends; and the [`Signals`] a policy asks its statistics to keep.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::EndpointStats;
use super::in_flight::PENDING_ONE;

/// One call in flight on an endpoint, from [`EndpointStats::start`]: when it started, so
/// that [`EndpointStats::finish`] can measure it and take it off the pending calls' age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a call that is never finished or abandoned counts as in flight forever"]
pub struct CallStart {
    /// The start, in nanoseconds of the stats' clock (0 when latency is not tracked).
    pub(super) nanos: u64,
    /// Still waiting for its response headers: counted in the pending calls' age.
    pub(super) pending: bool,
}

/// Which load signals an endpoint's statistics keep. Calls in flight and the success and
/// failure counts are always kept; the rest costs work on every call, so each policy asks
/// only for what its picker reads (see [`Balancer::new_stats`](crate::Balancer::new_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Signals {
    /// The peak-EWMA latency estimate and the age of calls waiting for their response
    /// headers (`p2c_ewma`). Reads the clock twice per call.
    pub latency: bool,
    /// The decaying failure ratio (`p2c_ewma`, `least_request`).
    pub failure_ratio: bool,
}

impl Signals {
    /// Every signal: what [`EndpointStats::default`] keeps.
    pub const ALL: Signals = Signals {
        latency: true,
        failure_ratio: true,
    };
    /// Only calls in flight and outcome counts: what policies that read no load keep.
    pub const COUNTS: Signals = Signals {
        latency: false,
        failure_ratio: false,
    };

    pub(super) fn bits(self) -> u8 {
        u8::from(self.latency) | (u8::from(self.failure_ratio) << 1)
    }
}

/// How a call ended, as far as its endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It succeeded, or failed in a way that says nothing about the endpoint (the
    /// application rejected the request: NOT_FOUND, INVALID_ARGUMENT, ...).
    Success,
    /// It failed in a way that counts against the endpoint: a transport error, an
    /// UNAVAILABLE, or our own deadline expiring while it waited for the endpoint.
    Failure,
    /// The caller gave it up with no deadline involved: neither success nor failure.
    Cancelled,
}

pub(super) const SIGNAL_LATENCY: u8 = 1;
pub(super) const SIGNAL_FAILURE_RATIO: u8 = 2;
/// Failures since the last success (outlier detection), kept only when asked for.
pub(super) const SIGNAL_CONSECUTIVE: u8 = 4;

impl EndpointStats {
    /// The response headers of `call` arrived: its latency is sampled now, as tower's
    /// `CompleteOnResponse` and Finagle do, so a stream that stays open for minutes reads as
    /// the time its server took to answer, not as its lifetime. gRPC servers send a unary
    /// call's headers only once the handler has answered. `failed` is true for a
    /// Trailers-Only response whose status counts against the endpoint; the sample is then
    /// at least the failure penalty. The call stays in flight until [`end`](Self::end).
    /// Returns the latency (zero when latency is not tracked, or already sampled).
    pub fn respond(&self, call: &mut CallStart, failed: bool) -> Duration {
        if !call.pending {
            return Duration::ZERO;
        }
        call.pending = false;
        let mut removed = false;
        let _ = self
            .in_flight
            .fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
                removed = w >> 32 > 0;
                removed.then(|| w - PENDING_ONE)
            });
        if removed {
            self.pending_start_sum
                .fetch_sub(call.nanos, Ordering::Release);
        }
        let now_nanos = self.clock.observe(Instant::now());
        let latency = Duration::from_nanos(now_nanos.saturating_sub(call.nanos));
        let sample = if failed {
            latency.max(self.failure_penalty)
        } else {
            latency
        };
        // The call sampled counts as one of the balancer's calls since this endpoint's
        // previous sample, as it would if it were sampled when it completes.
        self.observe_at(sample, now_nanos, self.clock.completed().wrapping_add(1));
        latency
    }

    /// Marks the end of a call started with [`start`](Self::start): its response body
    /// ended, failed or was dropped. `outcome` counts toward the success and failure counts
    /// and the failure ratio ([`Outcome::Cancelled`] toward neither). A call that ends
    /// before its headers arrived (a connection lost, our deadline) is sampled now, a
    /// failure as at least the failure penalty; a cancelled one is not sampled.
    pub fn end(&self, call: CallStart, outcome: Outcome) {
        let calls = self.end_in_flight(&call);
        let ok = match outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                if self.tracks(SIGNAL_CONSECUTIVE) {
                    let failures = self.failures.load(Ordering::Relaxed);
                    self.last_success_failures
                        .store(failures, Ordering::Relaxed);
                }
                true
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                false
            }
            Outcome::Cancelled => return,
        };
        let sample_now = call.pending && self.tracks(SIGNAL_LATENCY);
        // With a failure ratio the clock moves on every completion, healthy ones too: the
        // ratio of an endpoint that gets no calls decays by the time its peers see.
        let ratio = self.tracks(SIGNAL_FAILURE_RATIO);
        if !sample_now && !ratio {
            return;
        }
        let now_nanos = self.clock.observe(Instant::now());
        if sample_now {
            let latency = Duration::from_nanos(now_nanos.saturating_sub(call.nanos));
            let sample = if ok {
                latency
            } else {
                latency.max(self.failure_penalty)
            };
            self.observe_at(sample, now_nanos, calls);
        }
        if ratio {
            self.record_outcome(ok, now_nanos);
        }
    }

    /// A whole call at once: [`respond`](Self::respond) then [`end`](Self::end), as a unary
    /// call that answered now. `ok` is false for failures that count against the endpoint;
    /// such a call counts as at least the failure penalty (see
    /// [`with_failure_penalty`](Self::with_failure_penalty)). Returns the latency.
    pub fn finish(&self, mut call: CallStart, ok: bool) -> Duration {
        let latency = self.respond(&mut call, !ok);
        self.end(
            call,
            if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        );
        latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DEFAULT_RTT;

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_sampled_at_its_headers_and_in_flight_until_it_ends() {
        let s = EndpointStats::default();
        let ms = Duration::from_millis;
        let mut call = s.start();
        tokio::time::advance(ms(4)).await;
        assert_eq!(s.respond(&mut call, false), ms(4));
        assert_eq!((s.in_flight(), s.pending()), (1, 0));
        assert_eq!(s.latency_ewma(), ms(4));
        // Ten minutes of streaming: no pending age, and the end takes no second sample.
        tokio::time::advance(Duration::from_secs(600)).await;
        s.observe(ms(4), Instant::now());
        assert_eq!(s.pending_age(), Duration::ZERO);
        s.end(call, Outcome::Success);
        assert_eq!((s.in_flight(), s.successes()), (0, 1));
        assert_eq!(s.latency_ewma(), ms(4));
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_without_headers() {
        let s = EndpointStats::default().with_failure_penalty(Duration::from_millis(500));
        // Cancelled by the caller before any answer: neither counted nor sampled.
        let call = s.start();
        tokio::time::advance(Duration::from_secs(3)).await;
        s.end(call, Outcome::Cancelled);
        assert_eq!((s.in_flight(), s.successes(), s.failures()), (0, 0, 0));
        assert_eq!(s.latency_ewma(), DEFAULT_RTT);
        assert_eq!(s.failure_ratio(), 0.0);
        // Our deadline (a failure) after 2 s without headers: a 2 s sample, and a failure.
        let call = s.start();
        tokio::time::advance(Duration::from_secs(2)).await;
        s.end(call, Outcome::Failure);
        assert_eq!((s.in_flight(), s.pending(), s.failures()), (0, 0, 1));
        assert_eq!(s.latency_ewma(), Duration::from_secs(2));
        assert!(s.failure_ratio() > 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_only_keeps_no_latency() {
        let s = EndpointStats::default().with_signals(Signals::COUNTS);
        let mut call = s.start();
        assert_eq!((s.in_flight(), s.pending()), (1, 0));
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(s.respond(&mut call, false), Duration::ZERO);
        s.end(call, Outcome::Failure);
        assert_eq!((s.in_flight(), s.failures()), (0, 1));
        assert_eq!(s.latency_ewma(), DEFAULT_RTT);
        assert_eq!(s.failure_ratio(), 0.0);
        assert_eq!(s.signals(), Signals::COUNTS);
    }
}
