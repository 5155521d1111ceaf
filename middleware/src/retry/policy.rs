//! gRPC A6 `retryPolicy`: how many attempts, how long between them, and which status codes
//! are worth another attempt.

use std::fmt;
use std::time::Duration;

use meshless_balancer::CodeSet;
use meshless_transport::BackoffConfig;
use tonic::Code;

/// A6 caps `maxAttempts` at 5 whatever the configuration asks for.
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// When and how often a failed call is sent again: gRPC A6's `retryPolicy`.
///
/// - `maxAttempts` counts the original call; it must be 2 or more, and values above 5 are
///   taken as 5 (A6).
/// - The n-th retry waits `initialBackoff · backoffMultiplier^(n−1)`, capped at
///   `maxBackoff`, spread by a uniform factor in [0.8, 1.2]. This is meshless's one backoff
///   ([`BackoffConfig`], gRPC's `connection-backoff.md` jitter) rather than A6's
///   `random(0, current)`, whose near-zero draws make retries arrive in bursts. A server
///   pushback restarts the sequence at `initialBackoff`, as grpc-go does.
/// - Only calls that end with one of `retryableStatusCodes` before any response headers
///   arrive (a Trailers-Only response, or a failure to reach the server) are retried.
///
/// The default, [`RetryPolicy::default`], is Envoy's default retry policy: 2 attempts (one
/// retry), 25 ms initial backoff, 250 ms maximum, multiplier 2, on `UNAVAILABLE`.
///
/// ```
/// use std::time::Duration;
/// use meshless_middleware::RetryPolicy;
/// use tonic::Code;
///
/// let policy = RetryPolicy::new([Code::Unavailable, Code::ResourceExhausted])?
///     .max_attempts(4)?
///     .backoff(Duration::from_millis(50), Duration::from_secs(1), 2.0)?;
/// assert_eq!(policy.attempts(), 4);
/// assert!(RetryPolicy::default().max_attempts(1).is_err());
/// assert_eq!(RetryPolicy::default().max_attempts(10)?.attempts(), 5);
/// # Ok::<(), meshless_middleware::PolicyError>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    retryable: CodeSet,
}

/// A retry or hedging setting that gRPC's service config would reject; the message names
/// the field (A6's name) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PolicyError {
    field: &'static str,
    problem: String,
}

impl PolicyError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        PolicyError {
            field,
            problem: problem.into(),
        }
    }

    /// The A6 name of the field that is wrong, such as `retryPolicy.maxAttempts`.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// The status codes of a policy's list `field`; `OK` in it is an error.
pub(crate) fn code_set(
    field: &'static str,
    codes: impl IntoIterator<Item = Code>,
) -> Result<CodeSet, PolicyError> {
    let mut set = CodeSet::EMPTY;
    for code in codes {
        if code == Code::Ok {
            return Err(PolicyError::new(
                field,
                "OK is not a failure; list failure codes such as UNAVAILABLE",
            ));
        }
        set = set.with(code);
    }
    Ok(set)
}

/// `attempts` as A6's `maxAttempts` of `field`: 2 or more, and above 5 taken as 5.
pub(crate) fn max_attempts(field: &'static str, attempts: u32) -> Result<u32, PolicyError> {
    if attempts < 2 {
        return Err(PolicyError::new(
            field,
            format!("must be 2 or more (it counts the original call), got {attempts}"),
        ));
    }
    Ok(attempts.min(MAX_ATTEMPTS_CAP))
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            multiplier: 2.0,
            retryable: CodeSet::of(&[Code::Unavailable]),
        }
    }
}

impl RetryPolicy {
    /// The default policy retrying on `codes` instead of `UNAVAILABLE` alone. The list must
    /// be non-empty and must not hold `OK`.
    pub fn new(codes: impl IntoIterator<Item = Code>) -> Result<Self, PolicyError> {
        let retryable = code_set("retryPolicy.retryableStatusCodes", codes)?;
        if retryable.is_empty() {
            return Err(PolicyError::new(
                "retryPolicy.retryableStatusCodes",
                "must list at least one status code, such as UNAVAILABLE",
            ));
        }
        Ok(RetryPolicy {
            retryable,
            ..RetryPolicy::default()
        })
    }

    /// Sets `maxAttempts`, the original call included: 2 or more; above 5 is taken as 5.
    pub fn max_attempts(mut self, n: u32) -> Result<Self, PolicyError> {
        self.max_attempts = max_attempts("retryPolicy.maxAttempts", n)?;
        Ok(self)
    }

    /// Sets `initialBackoff`, `maxBackoff` and `backoffMultiplier`. Both delays must be
    /// above zero and the multiplier a finite number above zero (below 1 is taken as 1).
    pub fn backoff(
        mut self,
        initial: Duration,
        max: Duration,
        multiplier: f64,
    ) -> Result<Self, PolicyError> {
        if initial.is_zero() {
            return Err(PolicyError::new(
                "retryPolicy.initialBackoff",
                "must be above zero, such as \"0.1s\"",
            ));
        }
        if max.is_zero() {
            return Err(PolicyError::new(
                "retryPolicy.maxBackoff",
                "must be above zero, such as \"1s\"",
            ));
        }
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(PolicyError::new(
                "retryPolicy.backoffMultiplier",
                format!("must be a number above zero, such as 2, got {multiplier}"),
            ));
        }
        self.initial_backoff = initial;
        self.max_backoff = max;
        self.multiplier = multiplier;
        Ok(self)
    }

    /// How many attempts a call may take in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a call that ended with `code` may be retried.
    pub fn is_retryable(&self, code: Code) -> bool {
        self.retryable.contains(code)
    }

    /// The backoff between attempts, as meshless's shared [`BackoffConfig`].
    pub fn backoff_config(&self) -> BackoffConfig {
        BackoffConfig::default()
            .base_delay(self.initial_backoff)
            .max_delay(self.max_backoff)
            .multiplier(self.multiplier)
            .jitter(0.2)
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<Code> = self.retryable.iter().collect();
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("multiplier", &self.multiplier)
            .field("retryable_status_codes", &codes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshless_transport::Backoff;

    #[test]
    fn validation_names_the_field() {
        let e = RetryPolicy::new([]).unwrap_err();
        assert_eq!(e.field(), "retryPolicy.retryableStatusCodes");
        assert!(RetryPolicy::new([Code::Ok]).is_err());
        let e = RetryPolicy::default().max_attempts(1).unwrap_err();
        assert!(
            e.to_string().contains("maxAttempts: must be 2 or more"),
            "{e}"
        );
        assert_eq!(
            RetryPolicy::default().max_attempts(10).unwrap().attempts(),
            5
        );
        for (i, m, x) in [
            (Duration::ZERO, Duration::from_secs(1), 2.0),
            (Duration::from_secs(1), Duration::ZERO, 2.0),
            (Duration::from_secs(1), Duration::from_secs(1), 0.0),
            (Duration::from_secs(1), Duration::from_secs(1), f64::NAN),
            (
                Duration::from_secs(1),
                Duration::from_secs(1),
                f64::INFINITY,
            ),
        ] {
            assert!(
                RetryPolicy::default().backoff(i, m, x).is_err(),
                "{i:?} {m:?} {x}"
            );
        }
        let p = RetryPolicy::new([Code::Unavailable, Code::Aborted]).unwrap();
        assert!(p.is_retryable(Code::Aborted) && !p.is_retryable(Code::Internal));
    }

    /// The n-th retry waits initial · multiplier^(n−1), capped, times U(0.8, 1.2): every draw
    /// of 2,000 sequences falls in its bounds, and the draws spread over most of the range
    /// (a jitter that never moved would fail the second check).
    #[test]
    fn nth_backoff_falls_within_its_jitter_bounds() {
        let p = RetryPolicy::default()
            .backoff(Duration::from_millis(100), Duration::from_millis(1000), 3.0)
            .unwrap();
        let nominal = [100.0, 300.0, 900.0, 1000.0, 1000.0];
        let mut lo = [f64::MAX; 5];
        let mut hi = [0.0f64; 5];
        for _ in 0..2000 {
            let mut b = Backoff::new(p.backoff_config());
            for (n, want) in nominal.iter().enumerate() {
                let got = b.next_delay().as_secs_f64() * 1000.0;
                assert!(
                    got >= want * 0.8 - 1e-6 && got <= want * 1.2 + 1e-6,
                    "retry {}: {got} ms outside {want}·[0.8, 1.2]",
                    n + 1
                );
                lo[n] = lo[n].min(got / want);
                hi[n] = hi[n].max(got / want);
            }
        }
        for n in 0..5 {
            // With 2,000 uniform draws the extremes lie within 0.002 of the ends with
            // probability 1 − 2·(1 − 0.005)^2000 ≈ 1 − 1e-4 each; 0.01 is far safer.
            assert!(
                lo[n] < 0.81 && hi[n] > 1.19,
                "retry {}: [{}, {}]",
                n + 1,
                lo[n],
                hi[n]
            );
        }
    }
}
