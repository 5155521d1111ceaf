//! `round_robin`: every ready endpoint in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::rng::Padded;
use crate::{Balancer, Pick, PickRequest, Picker, SubchannelView, ready_indices};

/// Sends each request to the next ready endpoint in turn. Every new picker starts at a
/// random position, as grpc-go's does, so that many clients do not all start on the first
/// endpoint after each change.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin;

impl Balancer for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let ready = ready_indices(subchannels);
        let start = if ready.is_empty() {
            0
        } else {
            rand::random_range(0..ready.len())
        };
        Arc::new(RoundRobinPicker {
            ready,
            next: Padded(AtomicUsize::new(start)),
        })
    }
}

struct RoundRobinPicker {
    ready: Vec<usize>,
    /// On its own cache line, away from the read-only index list.
    next: Padded<AtomicUsize>,
}

impl Picker for RoundRobinPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        if self.ready.is_empty() {
            return Pick::Queue;
        }
        let n = self.next.0.fetch_add(1, Ordering::Relaxed);
        Pick::Ready(self.ready[n % self.ready.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectivityState::*;
    use crate::test_util::{pick_n, subchannels};

    #[test]
    fn cycles_through_ready_only() {
        let subs = subchannels(&[Ready, TransientFailure, Ready, Connecting, Ready]);
        let picker = RoundRobin.build(&subs);
        let picks = pick_n(&*picker, 300);
        let mut counts = [0; 5];
        for p in &picks {
            counts[*p] += 1;
        }
        assert_eq!(counts, [100, 0, 100, 0, 100]);
        // Strict rotation: no endpoint twice in a row.
        assert!(picks.windows(2).all(|w| w[0] != w[1]));
    }
}
