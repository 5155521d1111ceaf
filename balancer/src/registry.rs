//! Policies by their gRPC-style names.

use std::sync::Arc;

use crate::{Balancer, PickFirst, RoundRobin};

/// Every policy name [`policy`] accepts.
pub const POLICY_NAMES: &[&str] = &["pick_first", "round_robin"];

/// The policy name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown load-balancing policy `{name}`: known policies are {}", POLICY_NAMES.join(", "))]
pub struct UnknownPolicy {
    /// The name as given.
    pub name: String,
}

/// The policy called `name`, with its default configuration.
pub fn policy(name: &str) -> Result<Arc<dyn Balancer>, UnknownPolicy> {
    match name.trim().to_ascii_lowercase().as_str() {
        "pick_first" => Ok(Arc::new(PickFirst::default())),
        "round_robin" => Ok(Arc::new(RoundRobin)),
        _ => Err(UnknownPolicy {
            name: name.to_owned(),
        }),
    }
}
