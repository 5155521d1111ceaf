//! The endpoints the attempts of one call were sent to, so that a retry or a hedge can go
//! somewhere else (what Envoy's `previous_hosts` retry predicate does; gRPC A6 does not).

use std::sync::{Arc, Mutex, PoisonError};

use meshless_discovery::Address;

/// The endpoints the attempts of one call were sent to, shared by those attempts.
///
/// A retry or hedging layer puts one in the request's extensions; the [`Channel`] then
/// records in it the endpoint each attempt goes to, and its pick avoids the recorded ones
/// while another endpoint is ready: it asks the policy again, a few times, for an endpoint
/// not tried yet, and if the policy keeps choosing tried ones (ring_hash and maglev choose
/// by the request, pick_first by order, p2c_ewma may remember the tried one as best) it
/// takes a ready untried endpoint itself, looked for from a random place in the list.
///
/// Cloning shares the record. A request without one costs the channel one extension lookup.
///
/// [`Channel`]: crate::Channel
#[derive(Clone, Default)]
pub struct TriedEndpoints {
    inner: Arc<Mutex<Vec<Address>>>,
}

impl TriedEndpoints {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an attempt of this call went to `addr`.
    pub fn contains(&self, addr: &Address) -> bool {
        self.lock().contains(addr)
    }

    /// The endpoints tried so far, in the order the attempts went to them (an endpoint that
    /// took two attempts appears twice).
    pub fn addresses(&self) -> Vec<Address> {
        self.lock().clone()
    }

    /// How many attempts were sent.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no attempt was sent yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many distinct endpoints were tried.
    pub(crate) fn distinct(&self) -> usize {
        let tried = self.lock();
        tried
            .iter()
            .enumerate()
            .filter(|(i, a)| !tried[..*i].contains(a))
            .count()
    }

    pub(crate) fn record(&self, addr: &Address) {
        self.lock().push(addr.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Address>> {
        // The list stays consistent even if a holder panicked: every change is one push.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for TriedEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_counts_distinct() {
        let t = TriedEndpoints::new();
        assert!(t.is_empty());
        let a: Address = Address::Tcp("127.0.0.1:1".parse().unwrap());
        let b: Address = Address::Tcp("127.0.0.1:2".parse().unwrap());
        t.record(&a);
        t.clone().record(&b);
        t.record(&a);
        assert_eq!(t.addresses(), vec![a.clone(), b.clone(), a.clone()]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.distinct(), 2);
        assert!(t.contains(&b));
        assert!(!t.contains(&Address::Tcp("127.0.0.1:3".parse().unwrap())));
    }
}
