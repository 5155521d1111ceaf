//! Policies by their gRPC-style names.

use std::sync::Arc;

use crate::{
    Balancer, LeastRequest, LeastRequestConfig, Maglev, MaglevConfig, P2cEwma, P2cEwmaConfig,
    PickFirst, PickFirstConfig, Random, RandomConfig, RingHash, RingHashConfig, RoundRobin,
    WeightedRoundRobin, WeightedRoundRobinConfig,
};

/// Every policy name [`policy`] accepts.
pub const POLICY_NAMES: &[&str] = &[
    "pick_first",
    "round_robin",
    "weighted_round_robin",
    "random",
    "least_request",
    "p2c_ewma",
    "ring_hash",
    "maglev",
];

/// The policy name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown load-balancing policy `{name}`: known policies are {}", POLICY_NAMES.join(", "))]
pub struct UnknownPolicy {
    /// The name as given.
    pub name: String,
}

/// The policy called `name`, with its default configuration. To configure one, convert
/// its config instead: `Arc::<dyn Balancer>::from(P2cEwmaConfig::kratos())`.
pub fn policy(name: &str) -> Result<Arc<dyn Balancer>, UnknownPolicy> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "pick_first" => PickFirstConfig::default().into(),
        "round_robin" => Arc::new(RoundRobin),
        "weighted_round_robin" => WeightedRoundRobinConfig::default().into(),
        "random" => RandomConfig::default().into(),
        "least_request" => LeastRequestConfig::default().into(),
        "p2c_ewma" => P2cEwmaConfig::default().into(),
        "ring_hash" => RingHashConfig::default().into(),
        "maglev" => MaglevConfig::default().into(),
        _ => {
            return Err(UnknownPolicy {
                name: name.to_owned(),
            });
        }
    })
}

/// `impl From<Config> for Arc<dyn Balancer>` for each configurable policy.
macro_rules! from_config {
    ($($config:ty => $policy:ty),* $(,)?) => {$(
        impl From<$config> for Arc<dyn Balancer> {
            fn from(config: $config) -> Self {
                Arc::new(<$policy>::new(config))
            }
        }
    )*};
}

from_config! {
    PickFirstConfig => PickFirst,
    WeightedRoundRobinConfig => WeightedRoundRobin,
    RandomConfig => Random,
    LeastRequestConfig => LeastRequest,
    P2cEwmaConfig => P2cEwma,
    RingHashConfig => RingHash,
    MaglevConfig => Maglev,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_a_policy_of_that_name() {
        for &name in POLICY_NAMES {
            let p = policy(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name(), name);
        }
        assert_eq!(
            policy(" Ring_Hash ").map(|p| p.name()).ok(),
            Some("ring_hash")
        );
        assert!(policy("nope").is_err());
        let p: Arc<dyn Balancer> = P2cEwmaConfig::kratos().into();
        assert_eq!(p.name(), "p2c_ewma");
    }
}
