//! What limits retries across calls: a retry budget (Finagle, Linkerd, tower) and gRPC A6's
//! `retryThrottling` token bucket. A retry needs both to allow it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::retry::budget::{Budget as _, TpsBudget};

use super::policy::PolicyError;

/// A cap on retries as a share of calls, over a sliding window: at most `ratio` of the calls
/// of the last `ttl`, plus a reserve of `min_per_sec` retries per second so that a quiet
/// client can still retry. Always on when retries are on.
///
/// The default, [`RetryBudget::default`], is Finagle's, Linkerd's and tower's: 20 % of calls
/// plus 10 retries per second, over 10 s. Under a total outage a client then sends about
/// 1.2 attempts per call (plus the reserve) instead of `maxAttempts` per call, so retries
/// cannot multiply the load on a fleet that is already failing.
///
/// It is tower's [`TpsBudget`]; this type checks the values first (tower's constructor
/// panics on values out of range) and says what was wrong.
#[derive(Debug)]
pub struct RetryBudget {
    inner: TpsBudget,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            inner: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
        }
    }
}

impl RetryBudget {
    /// A budget of `ratio` retries per call (0.0 to 10.0; 0.2 is 20 %) plus `min_per_sec`
    /// retries per second, over `ttl` (1 s to 60 s).
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Result<Self, PolicyError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(PolicyError::new(
                "retryBudget.ttl",
                format!("must be between 1s and 60s, got {ttl:?}"),
            ));
        }
        if !(ratio.is_finite() && (0.0..=10.0).contains(&ratio)) {
            return Err(PolicyError::new(
                "retryBudget.retryRatio",
                format!(
                    "must be between 0.0 and 10.0 (0.2 allows retries of 20 % of calls), got {ratio}"
                ),
            ));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(PolicyError::new(
                "retryBudget.minRetriesPerSecond",
                format!("must be below {}, got {min_per_sec}", i32::MAX),
            ));
        }
        Ok(RetryBudget {
            inner: TpsBudget::new(ttl, min_per_sec, ratio),
        })
    }

    /// Records a call (not a retry), which earns the budget `ratio` of a retry.
    pub(crate) fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

/// gRPC A6 `retryThrottling`: a token bucket shared by the calls of a channel. It starts
/// full at `maxTokens`; every call that fails with a retryable code takes one token, every
/// call that succeeds gives back `tokenRatio`; retries (and hedges) are allowed only while
/// more than half the tokens are left. Off unless configured.
#[derive(Debug)]
pub struct RetryThrottle {
    /// Tokens in thousandths, as A6 asks (`tokenRatio` has at most 3 decimals).
    milli: AtomicU64,
    max_milli: u64,
    ratio_milli: u64,
}

impl RetryThrottle {
    /// A6's `maxTokens` (above 0, at most 1000) and `tokenRatio` (above 0; decimals past the
    /// third are dropped, as A6 says).
    pub fn new(max_tokens: u32, token_ratio: f64) -> Result<Self, PolicyError> {
        if max_tokens == 0 || max_tokens > 1000 {
            return Err(PolicyError::new(
                "retryThrottling.maxTokens",
                format!("must be between 1 and 1000, got {max_tokens}"),
            ));
        }
        let ratio_milli = (token_ratio * 1000.0).floor();
        if !(token_ratio.is_finite() && ratio_milli >= 1.0) {
            return Err(PolicyError::new(
                "retryThrottling.tokenRatio",
                format!("must be a number of at least 0.001, such as 0.1, got {token_ratio}"),
            ));
        }
        let max_milli = u64::from(max_tokens) * 1000;
        Ok(RetryThrottle {
            milli: AtomicU64::new(max_milli),
            max_milli,
            // At most the whole bucket per success; more would change nothing.
            ratio_milli: (ratio_milli as u64).min(max_milli),
        })
    }

    /// Records a call that failed with a retryable code; returns whether a retry is still
    /// allowed (more than half the tokens left after taking this one).
    pub(crate) fn failure_allows_retry(&self) -> bool {
        let after = self
            .milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(1000))
            })
            .map_or(0, |before| before.saturating_sub(1000));
        after > self.max_milli / 2
    }

    /// Whether retries and hedges are allowed now, without recording anything.
    pub(crate) fn allows(&self) -> bool {
        self.milli.load(Ordering::Acquire) > self.max_milli / 2
    }

    /// Records a call that succeeded.
    pub(crate) fn success(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + self.ratio_milli).min(self.max_milli))
            });
    }

    /// Tokens left, in thousandths.
    #[cfg(test)]
    fn tokens_milli(&self) -> u64 {
        self.milli.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_errors_not_panics() {
        assert!(RetryBudget::new(Duration::ZERO, 10, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(61), 10, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 10, f32::NAN).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 10, 11.0).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), u32::MAX, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 0, 0.0).is_ok());
        assert!(RetryThrottle::new(0, 0.1).is_err());
        assert!(RetryThrottle::new(1001, 0.1).is_err());
        let e = RetryThrottle::new(10, 0.0001).unwrap_err();
        assert_eq!(e.field(), "retryThrottling.tokenRatio");
        assert!(RetryThrottle::new(10, f64::NAN).is_err());
    }

    /// A budget with no reserve allows one retry per five calls.
    #[tokio::test(start_paused = true)]
    async fn budget_allows_its_ratio_of_calls() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        assert!(!b.withdraw(), "nothing deposited yet");
        for _ in 0..50 {
            b.deposit();
        }
        let allowed = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(allowed, 10);
    }

    /// A6's example: maxTokens 10, tokenRatio 0.1. Five failures leave 5 tokens, which is not
    /// more than half, so the fifth failure is throttled; each success gives back 0.1.
    #[test]
    fn throttle_follows_a6() {
        let t = RetryThrottle::new(10, 0.1).unwrap();
        let allowed: Vec<bool> = (0..5).map(|_| t.failure_allows_retry()).collect();
        assert_eq!(allowed, [true, true, true, true, false]);
        assert_eq!(t.tokens_milli(), 5000);
        t.success();
        assert_eq!(t.tokens_milli(), 5100);
        assert!(!t.failure_allows_retry() && t.tokens_milli() == 4100);
        t.success();
        for _ in 0..100 {
            t.success();
        }
        assert_eq!(t.tokens_milli(), 10_000, "never above maxTokens");
        for _ in 0..20 {
            t.failure_allows_retry();
        }
        assert_eq!(t.tokens_milli(), 0, "never below zero");
    }
}
