//! When to resolve next: on TTL expiry (clamped), on a fixed interval, after a failure with
//! the shared [`Backoff`], and early on `resolve_now` no more often than the configured
//! minimum interval.

use std::time::Duration;

use tokio::time::Instant;

use super::DnsConfig;
use crate::backoff::Backoff;

/// The resolution schedule of one watch. Pure bookkeeping over [`Instant`]s, so it is tested
/// with paused time.
#[derive(Debug)]
pub(crate) struct Schedule {
    min_ttl: Duration,
    max_ttl: Duration,
    refresh_interval: Option<Duration>,
    resolve_now_min_interval: Duration,
    /// The retry delays after consecutive failures; reset by a success.
    backoff: Backoff,
    /// When the next resolution is due.
    next: Instant,
    /// When the last resolution started (`None` before the first).
    last_started: Option<Instant>,
}

impl Schedule {
    /// A schedule whose first resolution is due now.
    pub(crate) fn new(config: &DnsConfig, now: Instant) -> Self {
        Schedule {
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl.max(config.min_ttl),
            refresh_interval: config.refresh_interval,
            resolve_now_min_interval: config.resolve_now_min_interval,
            backoff: Backoff::new(config.backoff.clone()),
            next: now,
            last_started: None,
        }
    }

    /// When the next resolution is due.
    pub(crate) fn due(&self) -> Instant {
        self.next
    }

    /// Records that a resolution starts now.
    pub(crate) fn started(&mut self, now: Instant) {
        self.last_started = Some(now);
    }

    /// A good answer with this TTL arrived: the next resolution is when it expires (clamped
    /// to `[min_ttl, max_ttl]`), or after the fixed refresh interval when one is configured.
    pub(crate) fn succeeded(&mut self, now: Instant, ttl: Duration) {
        self.backoff.reset();
        let wait = self
            .refresh_interval
            .unwrap_or_else(|| ttl.clamp(self.min_ttl, self.max_ttl));
        self.next = now + wait;
    }

    /// The resolution failed: retry after the backoff's next delay. Returns the wait.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff.next_delay();
        // A configured delay near `Duration::MAX` must not overflow the instant.
        self.next = now.checked_add(wait).unwrap_or(now + FAR_FUTURE);
        wait
    }

    /// Makes the next resolution due no later than `at` (used to recheck a held set).
    pub(crate) fn due_by(&mut self, at: Instant) {
        self.next = self.next.min(at);
    }

    /// A consumer asked for fresh data (a connection failed). Brings the next resolution
    /// forward, but never closer than `resolve_now_min_interval` after the last one started.
    /// Returns whether it moved.
    pub(crate) fn resolve_now(&mut self, now: Instant) -> bool {
        let earliest = match self.last_started {
            Some(last) => (last + self.resolve_now_min_interval).max(now),
            None => now,
        };
        if earliest < self.next {
            self.next = earliest;
            true
        } else {
            false
        }
    }
}

/// Where a retry delay too long for an [`Instant`] lands instead: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::BackoffConfig;

    fn config() -> DnsConfig {
        DnsConfig::default()
            .ttl_bounds(Duration::from_secs(1), Duration::from_secs(30))
            .resolve_now_min_interval(Duration::from_secs(5))
            // No jitter and ×2, so the retry delays are exact.
            .backoff(
                BackoffConfig::default()
                    .base_delay(Duration::from_millis(500))
                    .multiplier(2.0)
                    .jitter(0.0)
                    .max_delay(Duration::from_secs(4)),
            )
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_is_clamped() {
        let now = Instant::now();
        let mut s = Schedule::new(&config(), now);
        assert_eq!(s.due(), now);
        s.succeeded(now, Duration::from_secs(0));
        assert_eq!(s.due() - now, Duration::from_secs(1));
        s.succeeded(now, Duration::from_secs(7));
        assert_eq!(s.due() - now, Duration::from_secs(7));
        s.succeeded(now, Duration::from_secs(86_400));
        assert_eq!(s.due() - now, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_refresh_interval_replaces_the_ttl() {
        let now = Instant::now();
        let mut s = Schedule::new(
            &config().refresh_interval(Some(Duration::from_secs(2))),
            now,
        );
        s.succeeded(now, Duration::from_secs(300));
        assert_eq!(s.due() - now, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_success_resets() {
        let now = Instant::now();
        let mut s = Schedule::new(&config(), now);
        let waits: Vec<u64> = (0..6).map(|_| s.failed(now).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000]);
        s.succeeded(now, Duration::from_secs(10));
        assert_eq!(s.failed(now), Duration::from_millis(500));
        for _ in 0..100 {
            s.failed(now); // no overflow however long the outage
        }
        assert_eq!(s.due() - now, Duration::from_secs(4));
    }

    /// A subchannel failure brings the resolution forward, but the minimum interval holds:
    /// a burst of failures causes one early resolution per interval, not one per failure.
    #[tokio::test(start_paused = true)]
    async fn resolve_now_respects_the_minimum_interval() {
        let start = Instant::now();
        let mut s = Schedule::new(&config(), start);
        s.started(start);
        s.succeeded(start, Duration::from_secs(30));

        // 1 s later: the last resolution started 1 s ago, so the earliest is at 5 s.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.resolve_now(Instant::now()));
        assert_eq!(s.due() - start, Duration::from_secs(5));
        // More failures before then change nothing.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!s.resolve_now(Instant::now()));
        assert_eq!(s.due() - start, Duration::from_secs(5));

        // The early resolution runs at 5 s.
        tokio::time::advance(Duration::from_secs(2)).await;
        let t5 = Instant::now();
        assert_eq!(s.due(), t5);
        s.started(t5);
        s.succeeded(t5, Duration::from_secs(30));
        // A failure right after: held off until 10 s.
        assert!(s.resolve_now(t5));
        assert_eq!(s.due() - start, Duration::from_secs(10));
        // Long after the interval, a failure resolves at once.
        tokio::time::advance(Duration::from_secs(20)).await;
        let t25 = Instant::now();
        let mut s2 = Schedule::new(&config(), start);
        s2.started(t5);
        s2.succeeded(t5, Duration::from_secs(30));
        assert!(s2.resolve_now(t25));
        assert_eq!(s2.due(), t25);
    }

    #[tokio::test(start_paused = true)]
    async fn resolve_now_never_delays() {
        let now = Instant::now();
        let mut s = Schedule::new(&config(), now);
        s.started(now);
        s.failed(now); // due in 500 ms, sooner than the 5 s interval
        assert!(!s.resolve_now(now));
        assert_eq!(s.due() - now, Duration::from_millis(500));
    }
}
