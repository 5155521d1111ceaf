//! `maglev`: Google's Maglev consistent hashing, an O(1) lookup table (Eisenbud et al., NSDI 2016).

use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::config::config_setters;
use crate::hash_key::{HashKeyConfig, XXH64_SEED};
use crate::ring_hash::{hash_weights, resolve_ready};
use crate::rng::{PickRng, below};
use crate::{Balancer, Pick, PickRequest, Picker, SubchannelView};

/// The least table size: 65,537, Envoy's default and a prime.
pub const DEFAULT_MIN_TABLE_SIZE: u64 = 65_537;
/// Table slots per endpoint: 1024. The Maglev paper asks for at least 100× the backends
/// for balance, but how many keys move when one backend leaves also shrinks with the table:
/// removing 1 of 500 endpoints moves 5.9× its own share of keys at 65,537 slots, 2.9× at
/// 262,147 and 2.2× at 512,009 (1024 per endpoint, measured with this code), so meshless
/// uses 1024 per endpoint to stay within 2.5×.
pub const SLOTS_PER_ENDPOINT: u64 = 1024;
/// The size above which the table stops growing by [`SLOTS_PER_ENDPOINT`]: 2^20 slots
/// (4 MiB; the table is then the prime 1,048,583). Reached at 1,024 endpoints; beyond it the
/// table keeps the paper's minimum of 100 slots per endpoint, so a build at 10,000 endpoints
/// fills 1 M slots rather than 10 M (the fill costs about `M·ln M` random probes). With
/// fewer slots per endpoint a change of one endpoint moves more keys (up to about 6× its
/// share at 100 per endpoint); raise it when that matters more than build time and memory.
pub const DEFAULT_MAX_TABLE_SIZE: u64 = 1 << 20;
/// The fewest slots per endpoint whatever the cap: 100, the Maglev paper's minimum.
const MIN_SLOTS_PER_ENDPOINT: u64 = 100;
/// The seed of the second address hash (the permutation's skip), as in Envoy.
const SKIP_SEED: u64 = 1;

/// Configuration of [`Maglev`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaglevConfig {
    /// Where the hash key comes from. Default: only [`RequestHashKey`](crate::RequestHashKey).
    pub key: HashKeyConfig,
    /// The least table size; the table is the smallest prime at least this and at least
    /// [`SLOTS_PER_ENDPOINT`] × the endpoints (up to
    /// [`max_table_size`](Self::max_table_size)). Default [`DEFAULT_MIN_TABLE_SIZE`].
    pub min_table_size: u64,
    /// Where the table stops growing by [`SLOTS_PER_ENDPOINT`]; it still keeps 100 slots
    /// per endpoint and [`min_table_size`](Self::min_table_size). Default
    /// [`DEFAULT_MAX_TABLE_SIZE`].
    pub max_table_size: u64,
    /// Seeds the random choice for requests without a key. Default `None` (from the OS).
    pub seed: Option<u64>,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            key: HashKeyConfig::default(),
            min_table_size: DEFAULT_MIN_TABLE_SIZE,
            max_table_size: DEFAULT_MAX_TABLE_SIZE,
            seed: None,
        }
    }
}

config_setters!(MaglevConfig {
    key: HashKeyConfig,
    min_table_size: u64,
    max_table_size: u64,
} optional {
    seed: u64,
});

/// Maglev hashing: a table of prime size `M` (the first prime after 1024 × the endpoints
/// rounded up to a power of two, at least 65,537 and 100 × the endpoints; see
/// [`SLOTS_PER_ENDPOINT`] and [`DEFAULT_MAX_TABLE_SIZE`]) in
/// which every endpoint claims slots in the order of its own permutation
/// `(offset + j·skip) mod M`, taking turns (an endpoint of half the largest weight every
/// other turn, as Envoy's weighted Maglev). A key's endpoint is one table lookup.
///
/// Offsets and skips are xxHash64 of the address (seeds 0 and 1), so the table depends
/// only on the set of addresses, and a removed endpoint's slots are taken over by the
/// others with few other slots changing hands. The table covers every subchannel, ready or
/// not; a slot owned by one that is not ready resolves to the owner of the next slot that
/// is, which spreads its keys over the others. Keys come from [`HashKeyConfig`]; a request
/// without one goes to a random slot. Endpoints of weight 0 get no slots unless no ready
/// one has a weight.
#[derive(Debug, Default)]
pub struct Maglev {
    config: MaglevConfig,
}

impl Maglev {
    /// A maglev policy with `config`.
    pub fn new(config: MaglevConfig) -> Self {
        Maglev { config }
    }

    fn build_table(&self, subchannels: &[SubchannelView]) -> MaglevPicker {
        let weights = hash_weights(subchannels);
        let members: Vec<usize> = (0..subchannels.len()).filter(|&i| weights[i] > 0).collect();
        // Rounded up to a power of two: the size, and so every key's slot, stays the same
        // while the endpoint count moves within a factor of two.
        let wanted = SLOTS_PER_ENDPOINT
            .saturating_mul(members.len() as u64)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .min(self.config.max_table_size);
        let floor = MIN_SLOTS_PER_ENDPOINT.saturating_mul(members.len() as u64);
        let size = next_prime(self.config.min_table_size.max(floor).max(wanted).max(2));
        let owners = populate(subchannels, &weights, &members, size);
        let table = resolve_ready(&owners, |i| subchannels[i as usize].is_ready());
        MaglevPicker {
            table,
            key: self.config.key.clone(),
            rng: PickRng::new(self.config.seed),
        }
    }
}

/// Fills a table of `size` slots with subchannel indices from `members` (the Maglev
/// population loop, weighted as Envoy's).
fn populate(
    subchannels: &[SubchannelView],
    weights: &[u32],
    members: &[usize],
    size: u64,
) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    struct Perm {
        index: u32,
        /// The next slot of this endpoint's permutation, `(offset + j·skip) mod size`.
        pos: u64,
        skip: u64,
        weight: u128,
        /// Takes a turn once `round × weight` reaches this.
        target: u128,
    }
    let max_w = members.iter().map(|&i| u128::from(weights[i])).max();
    let Some(max_w) = max_w else {
        return Vec::new();
    };
    let mut perms: Vec<Perm> = members
        .iter()
        .map(|&i| {
            let addr = subchannels[i].endpoint.addr.to_string();
            Perm {
                index: i as u32,
                pos: xxh64(addr.as_bytes(), XXH64_SEED) % size,
                skip: xxh64(addr.as_bytes(), SKIP_SEED) % (size - 1) + 1,
                weight: u128::from(weights[i]),
                target: max_w,
            }
        })
        .collect();
    // The same table whatever the discovery order.
    perms.sort_unstable_by_key(|p| (p.pos, p.skip));
    let mut table = vec![EMPTY; size as usize];
    let mut filled = 0u64;
    let mut round: u128 = 1;
    while filled < size {
        for p in perms.iter_mut() {
            if filled == size {
                break;
            }
            if round * p.weight < p.target {
                continue;
            }
            p.target += max_w;
            loop {
                let slot = p.pos as usize;
                // Step without a division: pos and skip are both below size.
                p.pos += p.skip;
                if p.pos >= size {
                    p.pos -= size;
                }
                if table[slot] == EMPTY {
                    table[slot] = p.index;
                    filled += 1;
                    break;
                }
            }
        }
        round += 1;
    }
    table
}

/// The smallest prime ≥ `n` (trial division; build time only, n ≈ 10^6 at most).
fn next_prime(n: u64) -> u64 {
    let is_prime = |x: u64| {
        if x < 2 {
            return false;
        }
        let mut d = 2;
        while d * d <= x {
            if x.is_multiple_of(d) {
                return false;
            }
            d += 1;
        }
        true
    };
    (n..).find(|&x| is_prime(x)).unwrap_or(n)
}

impl Balancer for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        Arc::new(self.build_table(subchannels))
    }
}

struct MaglevPicker {
    /// The ready subchannel of each slot; empty when none is ready.
    table: Vec<u32>,
    key: HashKeyConfig,
    rng: PickRng,
}

impl MaglevPicker {
    #[inline]
    fn lookup(&self, h: u64) -> usize {
        // Multiply-shift instead of `h % M`: the same uniform spread without a division.
        self.table[below(h, self.table.len())] as usize
    }
}

impl Picker for MaglevPicker {
    fn pick(&self, req: &PickRequest<'_>) -> Pick {
        if self.table.is_empty() {
            return Pick::Queue;
        }
        let h = self.key.hash(req).unwrap_or_else(|| self.rng.next_u64());
        Pick::Ready(self.lookup(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectivityState::*;
    use crate::rng::mix64;
    use crate::test_util::{counts, many, subchannels};

    #[test]
    fn table_size_is_prime_and_large_enough() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100_000), 100_003);
        assert_eq!(Maglev::default().build_table(&many(10)).table.len(), 65_537);
        assert_eq!(
            Maglev::default().build_table(&many(100)).table.len(),
            131_101
        );
        assert_eq!(
            Maglev::default().build_table(&many(65)).table.len(),
            131_101
        );
        let capped = Maglev::new(MaglevConfig::default().max_table_size(100_000));
        assert_eq!(capped.build_table(&many(900)).table.len(), 100_003);
        // The cap never goes below 100 slots per endpoint.
        assert_eq!(capped.build_table(&many(1500)).table.len(), 150_001);
    }

    #[test]
    fn balance_at_1000_endpoints() {
        let p = Maglev::default().build_table(&many(1000));
        let c = counts(
            &p.table.iter().map(|&i| i as usize).collect::<Vec<_>>(),
            1000,
        );
        let mean = p.table.len() as f64 / 1000.0;
        let max = *c.iter().max().unwrap_or(&0) as f64;
        assert!(max / mean <= 1.25, "max/mean = {}", max / mean);
        // Weighted: weight 2 gets twice the slots.
        let mut subs = many(10);
        subs[0].endpoint.weight = 2;
        let p = Maglev::default().build_table(&subs);
        let c = counts(&p.table.iter().map(|&i| i as usize).collect::<Vec<_>>(), 10);
        let ratio = c[0] as f64 / (c[1..].iter().sum::<usize>() as f64 / 9.0);
        assert!((ratio - 2.0).abs() < 0.05, "{ratio}");
    }

    #[test]
    fn removing_one_of_500_moves_little_more_than_its_share() {
        let subs = many(500);
        let policy = Maglev::default();
        let before = policy.build_table(&subs);
        let removed = 123;
        let mut fewer = subs.clone();
        fewer.remove(removed);
        let after = policy.build_table(&fewer);
        assert_eq!(before.table.len(), after.table.len());
        for k in 0..10_000u64 {
            let h = mix64(k);
            assert_eq!(before.lookup(h), before.lookup(h));
        }
        // Keys map to slots uniformly, so the share of keys that move is the share of
        // slots whose endpoint changed: count them exactly.
        let mut moved = 0usize;
        for (&was, &now) in before.table.iter().zip(&after.table) {
            let now = if now as usize >= removed {
                now + 1
            } else {
                now
            };
            if was as usize == removed {
                assert_ne!(now as usize, removed);
            }
            if now != was {
                moved += 1;
            }
        }
        let ideal = before.table.len() as f64 / 500.0;
        let ratio = moved as f64 / ideal;
        assert!(ratio <= 2.5, "moved {ratio} × the ideal share");
    }

    #[test]
    fn not_ready_slots_resolve_to_ready() {
        let subs = subchannels(&[Ready, Connecting, Ready, TransientFailure]);
        let p = Maglev::default().build_table(&subs);
        let c = counts(&p.table.iter().map(|&i| i as usize).collect::<Vec<_>>(), 4);
        assert_eq!((c[1], c[3]), (0, 0));
        let share = c[0] as f64 / p.table.len() as f64;
        assert!((share - 0.5).abs() < 0.05, "{c:?}");
        let p = Maglev::default().build_table(&subchannels(&[Idle]));
        let req = http::Request::new(());
        assert!(matches!(
            p.pick(&PickRequest::from_request(&req)),
            Pick::Queue
        ));
    }
}
