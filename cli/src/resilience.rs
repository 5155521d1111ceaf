//! The resilience options of `meshless bench`, so that an operator can try a retry, hedging,
//! throttling or outlier-detection setting against a live fleet before writing it into code
//! or a config file. The flags use gRPC's service-config names where they have one.

use std::time::Duration;

use clap::Args;
use meshless::middleware::{
    HedgeDelay, HedgingPolicy, MethodPolicy, PolicyError, Resilience, ThrottleConfig,
};
use meshless::{ChannelBuilder, OutlierDetection, RetryPolicy};
use tonic::Code;

use crate::error::CliError;

/// Retries, hedging, adaptive throttling, outlier detection, health checking and caps.
#[derive(Debug, Clone, Default, Args)]
pub struct ResilienceArgs {
    /// Retry failed calls: maxAttempts, the first call included (2 to 5).
    #[arg(long, value_name = "N", conflicts_with = "hedge_attempts")]
    pub retry_attempts: Option<u32>,
    /// Status codes worth a retry or a further hedge (retryableStatusCodes,
    /// nonFatalStatusCodes), comma-separated names such as UNAVAILABLE,RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "CODES", default_value = "UNAVAILABLE", value_parser = parse_codes)]
    pub retry_codes: CodeList,
    /// Retry backoff: initialBackoff (25ms by default).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "retry_attempts")]
    pub retry_initial_backoff: Option<Duration>,
    /// Retry backoff: maxBackoff (250ms by default).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "retry_attempts")]
    pub retry_max_backoff: Option<Duration>,
    /// Hedge calls: maxAttempts in flight at most (2 to 5).
    #[arg(long, value_name = "N")]
    pub hedge_attempts: Option<u32>,
    /// Hedging delay: a duration such as 20ms, or `p95` (the observed 95th percentile).
    #[arg(
        long,
        value_name = "DURATION|p95",
        default_value = "p95",
        requires = "hedge_attempts"
    )]
    pub hedge_delay: String,
    /// Adaptive client-side throttling, by preset: sre, go-zero or kratos.
    #[arg(long, value_name = "PRESET")]
    pub throttle: Option<String>,
    /// Outlier detection (gRPC A50 and consecutive failures) with this interval.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub outlier_interval: Option<Duration>,
    /// Client health checking (gRPC A17) of this service ("" for the whole server).
    #[arg(long, value_name = "SERVICE")]
    pub health_check: Option<String>,
    /// Cap calls in flight per endpoint (max_requests).
    #[arg(long, value_name = "N")]
    pub max_requests_per_endpoint: Option<u32>,
}

/// Status codes given on the command line.
#[derive(Debug, Clone, Default)]
pub struct CodeList(pub Vec<Code>);

fn parse_codes(s: &str) -> Result<CodeList, String> {
    s.split(',')
        .map(|name| {
            let name = name.trim().to_ascii_uppercase();
            meshless::balancer::code_from_name(&name)
                .ok_or_else(|| {
                    format!(
                        "unknown status code `{name}` (use gRPC names such as UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED)"
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(CodeList)
}

fn usage(flag: &str, e: PolicyError) -> CliError {
    CliError::Usage(format!("{flag}: {e}"))
}

impl ResilienceArgs {
    /// Gives `builder` the per-endpoint settings (outlier detection, health checking, caps).
    pub fn apply(&self, mut builder: ChannelBuilder) -> ChannelBuilder {
        if let Some(interval) = self.outlier_interval {
            builder = builder.outlier_detection(OutlierDetection::default().interval(interval));
        }
        if let Some(service) = &self.health_check {
            builder = builder.health_check(service.clone());
        }
        if let Some(n) = self.max_requests_per_endpoint {
            builder = builder.max_requests_per_endpoint(n);
        }
        builder
    }

    /// The per-call stack these options ask for, or `None` when they ask for none (calls
    /// then go straight to the channel).
    pub fn stack(&self) -> Result<Option<(Resilience, String)>, CliError> {
        let mut parts = Vec::new();
        let mut policy = MethodPolicy::new();
        if let Some(n) = self.retry_attempts {
            let mut retry = RetryPolicy::new(self.retry_codes.0.iter().copied())
                .map_err(|e| usage("--retry-codes", e))?
                .max_attempts(n)
                .map_err(|e| usage("--retry-attempts", e))?;
            if self.retry_initial_backoff.is_some() || self.retry_max_backoff.is_some() {
                let initial = self
                    .retry_initial_backoff
                    .unwrap_or(Duration::from_millis(25));
                let max = self.retry_max_backoff.unwrap_or(Duration::from_millis(250));
                retry = retry
                    .backoff(initial, max, 2.0)
                    .map_err(|e| usage("--retry-initial-backoff/--retry-max-backoff", e))?;
            }
            parts.push(format!("retry {}", retry.attempts()));
            policy = policy.retry(retry);
        }
        if let Some(n) = self.hedge_attempts {
            let delay = match self.hedge_delay.trim() {
                "p95" => HedgeDelay::p95(Duration::from_millis(50)),
                d => HedgeDelay::Fixed(humantime::parse_duration(d).map_err(|e| {
                    CliError::Usage(format!(
                        "--hedge-delay {d}: {e} (give a duration such as 20ms, or p95)"
                    ))
                })?),
            };
            let hedge = HedgingPolicy::new(n, delay, self.retry_codes.0.iter().copied())
                .map_err(|e| usage("--hedge-attempts", e))?;
            parts.push(format!(
                "hedge {} after {}",
                hedge.attempts(),
                self.hedge_delay
            ));
            policy = policy.hedge(hedge);
        }
        let mut stack = Resilience::new().default_policy(policy);
        if let Some(preset) = &self.throttle {
            let config = match preset.as_str() {
                "sre" => ThrottleConfig::sre(),
                "go-zero" | "go_zero" => ThrottleConfig::go_zero(),
                "kratos" => ThrottleConfig::kratos(),
                other => {
                    return Err(CliError::Usage(format!(
                        "--throttle {other}: unknown preset (use sre, go-zero or kratos)"
                    )));
                }
            };
            parts.push(format!("throttle {preset}"));
            stack = stack.adaptive_throttle(config);
        }
        Ok((!parts.is_empty()).then(|| (stack, parts.join(", "))))
    }

    /// What the per-endpoint options turn on, for the report.
    pub fn endpoint_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(i) = self.outlier_interval {
            out.push(format!(
                "outlier detection every {}",
                humantime::format_duration(i)
            ));
        }
        if let Some(s) = &self.health_check {
            out.push(format!("health check {s:?}"));
        }
        if let Some(n) = self.max_requests_per_endpoint {
            out.push(format!("max {n} calls per endpoint"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_by_grpc_name() {
        let c = parse_codes("unavailable, RESOURCE_EXHAUSTED").unwrap();
        assert_eq!(c.0, [Code::Unavailable, Code::ResourceExhausted]);
        let e = parse_codes("UNAVAILABLE,BUSY").unwrap_err();
        assert!(e.contains("BUSY"), "{e}");
    }
}
