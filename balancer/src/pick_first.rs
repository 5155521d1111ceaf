//! `pick_first`: everything to one endpoint, moving only when it stops being ready.

use std::sync::{Arc, Mutex};

use meshless_discovery::Address;

use crate::config::config_setters;
use crate::{Balancer, ConnectMode, Pick, PickRequest, Picker, SubchannelView, ready_indices};

/// How long pick_first waits for a connection attempt before it starts the next one too:
/// 250 ms, gRFC A61's "Connection Attempt Delay" (from RFC 8305, happy eyeballs).
pub const HAPPY_EYEBALLS_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Configuration of [`PickFirst`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PickFirstConfig {
    /// When the endpoint in use goes away, choose the next one at random instead of the
    /// first ready one in discovery order (gRPC's `shuffleAddressList`). Spreads many
    /// clients over the endpoints. Default: `false`.
    pub shuffle_address_list: bool,
}

config_setters!(PickFirstConfig {
    shuffle_address_list: bool,
});

/// Sends every request to one ready endpoint: the first in discovery order (or a random
/// one, see [`PickFirstConfig`]). It sticks to that endpoint for as long as it stays
/// ready, even when an earlier one comes back, so traffic does not flap.
#[derive(Debug, Default)]
pub struct PickFirst {
    config: PickFirstConfig,
    /// The endpoint in use. Only the channel's control task builds pickers, so this lock is
    /// never taken on the request path.
    current: Mutex<Option<Address>>,
}

impl PickFirst {
    /// A pick_first policy with `config`.
    pub fn new(config: PickFirstConfig) -> Self {
        PickFirst {
            config,
            current: Mutex::new(None),
        }
    }
}

impl Balancer for PickFirst {
    fn name(&self) -> &'static str {
        "pick_first"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let ready = ready_indices(subchannels);
        let keep = current.as_ref().and_then(|addr| {
            ready
                .iter()
                .copied()
                .find(|&i| subchannels[i].endpoint.addr == *addr)
        });
        let chosen = keep.or_else(|| {
            if ready.is_empty() {
                None
            } else if self.config.shuffle_address_list {
                Some(ready[rand::random_range(0..ready.len())])
            } else {
                Some(ready[0])
            }
        });
        *current = chosen.map(|i| subchannels[i].endpoint.addr.clone());
        Arc::new(PickFirstPicker { chosen })
    }

    fn connect_mode(&self) -> ConnectMode {
        ConnectMode::OneAtATime {
            attempt_delay: HAPPY_EYEBALLS_DELAY,
        }
    }
}

struct PickFirstPicker {
    chosen: Option<usize>,
}

impl Picker for PickFirstPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        match self.chosen {
            Some(i) => Pick::Ready(i),
            None => Pick::Queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectivityState::*;
    use crate::test_util::{pick_n, subchannels};

    #[test]
    fn first_ready_then_sticky() {
        let mut subs = subchannels(&[Connecting, Ready, Ready]);
        let pf = PickFirst::default();
        assert!(pick_n(&*pf.build(&subs), 10).iter().all(|&i| i == 1));
        // The first endpoint becomes ready: stay on the one in use.
        subs[0].state = Ready;
        assert!(pick_n(&*pf.build(&subs), 10).iter().all(|&i| i == 1));
        // The one in use fails: move to the first ready.
        subs[1].state = TransientFailure;
        assert!(pick_n(&*pf.build(&subs), 10).iter().all(|&i| i == 0));
    }
}
