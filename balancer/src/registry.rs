//! Policies by name: the built-in ones under their gRPC-style names, and your own.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{
    Balancer, LeastRequest, LeastRequestConfig, Maglev, MaglevConfig, P2cEwma, P2cEwmaConfig,
    PickFirst, PickFirstConfig, Policy, Random, RandomConfig, RingHash, RingHashConfig, RoundRobin,
    WeightedRoundRobin, WeightedRoundRobinConfig,
};

/// Every built-in policy name, as [`PolicyRegistry::default`] holds them.
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
#[error("unknown load-balancing policy `{name}`: known policies are {known}")]
pub struct UnknownPolicy {
    /// The name as given.
    pub name: String,
    /// The names the registry knows, comma separated.
    pub known: String,
}

/// Maps policy names to [`Policy`] instances, as the scheme registry maps target schemes to
/// discovery backends. [`PolicyRegistry::default`] holds the built-in policies with their
/// default configurations; [`register`](Self::register) adds your own (or replaces a
/// built-in one, for example with another configuration), which `.policy(name)` on the
/// channel builder then selects.
///
/// ```
/// use meshless_balancer::{P2cEwmaConfig, PolicyRegistry};
/// let mut policies = PolicyRegistry::default();
/// policies.register("p2c_kratos", P2cEwmaConfig::kratos());
/// assert_eq!(policies.get("p2c_kratos").unwrap().name(), "p2c_ewma");
/// ```
#[derive(Clone)]
pub struct PolicyRegistry {
    policies: BTreeMap<String, Arc<dyn Policy>>,
}

impl Default for PolicyRegistry {
    fn default() -> Self {
        let mut r = PolicyRegistry::empty();
        r.register("pick_first", PickFirstConfig::default())
            .register("round_robin", RoundRobin)
            .register("weighted_round_robin", WeightedRoundRobinConfig::default())
            .register("random", RandomConfig::default())
            .register("least_request", LeastRequestConfig::default())
            .register("p2c_ewma", P2cEwmaConfig::default())
            .register("ring_hash", RingHashConfig::default())
            .register("maglev", MaglevConfig::default());
        r
    }
}

impl PolicyRegistry {
    /// A registry with no policies.
    pub fn empty() -> Self {
        PolicyRegistry {
            policies: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) the policy selected by `name` (matched case-insensitively,
    /// surrounding spaces ignored).
    pub fn register(&mut self, name: &str, policy: impl Into<Arc<dyn Policy>>) -> &mut Self {
        self.policies.insert(normalize(name), policy.into());
        self
    }

    /// The policy registered as `name`.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Policy>, UnknownPolicy> {
        self.policies
            .get(&normalize(name))
            .cloned()
            .ok_or_else(|| UnknownPolicy {
                name: name.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for PolicyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

/// The built-in policy called `name`, with its default configuration. To configure one,
/// pass its config instead (`P2cEwmaConfig::kratos()` converts into an `Arc<dyn Policy>`).
pub fn policy(name: &str) -> Result<Arc<dyn Policy>, UnknownPolicy> {
    PolicyRegistry::default().get(name)
}

/// `impl Policy for Config` and `From<Config> for Arc<dyn Policy>` for each configurable
/// policy: every channel gets a balancer of its own, made from a copy of the config.
macro_rules! policy_of_config {
    ($($config:ty => $balancer:ty: $name:literal),* $(,)?) => {$(
        impl Policy for $config {
            fn name(&self) -> &'static str {
                $name
            }
            fn new_balancer(&self) -> Box<dyn Balancer> {
                Box::new(<$balancer>::new(self.clone()))
            }
        }
        impl From<$config> for Arc<dyn Policy> {
            fn from(config: $config) -> Self {
                Arc::new(config)
            }
        }
    )*};
}

policy_of_config! {
    PickFirstConfig => PickFirst: "pick_first",
    WeightedRoundRobinConfig => WeightedRoundRobin: "weighted_round_robin",
    RandomConfig => Random: "random",
    LeastRequestConfig => LeastRequest: "least_request",
    P2cEwmaConfig => P2cEwma: "p2c_ewma",
    RingHashConfig => RingHash: "ring_hash",
    MaglevConfig => Maglev: "maglev",
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }
    fn new_balancer(&self) -> Box<dyn Balancer> {
        Box::new(RoundRobin)
    }
}

impl From<RoundRobin> for Arc<dyn Policy> {
    fn from(policy: RoundRobin) -> Self {
        Arc::new(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each built-in policy keeps only the signals its picker reads: a policy that reads no
    /// latency pays for no clock reads or EWMA updates on its calls.
    #[test]
    fn each_policy_keeps_only_the_signals_it_reads() {
        use crate::Signals;
        for &name in POLICY_NAMES {
            let stats = policy(name).unwrap().new_balancer().new_stats();
            let want = match name {
                "p2c_ewma" => Signals::ALL,
                "least_request" => Signals {
                    latency: false,
                    failure_ratio: true,
                },
                _ => Signals::COUNTS,
            };
            assert_eq!(stats.signals(), want, "{name}");
        }
    }

    #[test]
    fn every_name_builds_a_policy_of_that_name() {
        for &name in POLICY_NAMES {
            let p = policy(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name(), name);
            assert_eq!(p.new_balancer().name(), name);
        }
        assert_eq!(
            policy(" Ring_Hash ").map(|p| p.name()).ok(),
            Some("ring_hash")
        );
        let err = policy("nope").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "unknown load-balancing policy `nope`: known policies are least_request, \
                 maglev, p2c_ewma, pick_first, random, ring_hash, round_robin, \
                 weighted_round_robin"
            )
        );
        let p: Arc<dyn Policy> = P2cEwmaConfig::kratos().into();
        assert_eq!(p.name(), "p2c_ewma");
    }

    #[test]
    fn a_custom_policy_is_found_by_its_name() {
        let mut r = PolicyRegistry::default();
        r.register("Fastest", P2cEwmaConfig::kratos());
        assert_eq!(r.get("fastest").map(|p| p.name()).ok(), Some("p2c_ewma"));
        assert!(r.names().any(|n| n == "fastest"));
    }
}
