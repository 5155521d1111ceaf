//! `ring_hash`: consistent hashing on a ring of endpoint replicas (Karger et al.; gRPC A42).

use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::hash_key::{HashKeyConfig, XXH64_SEED};
use crate::rng::PickRng;
use crate::{Balancer, Pick, PickRequest, Picker, SubchannelView};

/// Default least ring size: 1024, gRPC's `minRingSize` default (A42).
pub const DEFAULT_MIN_RING_SIZE: usize = 1024;
/// Default greatest ring size: 1,048,576 entries (12 MiB). gRPC caps rings at 4096 by
/// default, which leaves the busiest of 1000 endpoints far above the mean; meshless sizes
/// the ring for balance (see [`BALANCE_REPLICAS`]) up to this cap.
pub const DEFAULT_MAX_RING_SIZE: usize = 1 << 20;
/// Replicas given to an endpoint of the smallest weight: 256. Each endpoint's share of the
/// ring is a sum of this many random arcs, so it deviates from the mean by about
/// `1/sqrt(256)` = 6 %; the busiest of 1000 endpoints then stays within 1.25 × the mean
/// (asserted in the tests).
pub const BALANCE_REPLICAS: u64 = 256;
/// The width in bits of the lookup index over the ring's hashes, at most: 2^20 buckets.
const MAX_INDEX_BITS: u32 = 20;

/// Configuration of [`RingHash`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingHashConfig {
    /// Where the hash key comes from. Default: only [`RequestHashKey`](crate::RequestHashKey).
    pub key: HashKeyConfig,
    /// Least number of ring entries. Default [`DEFAULT_MIN_RING_SIZE`].
    pub min_ring_size: usize,
    /// Greatest number of ring entries. Default [`DEFAULT_MAX_RING_SIZE`].
    pub max_ring_size: usize,
    /// Seeds the random choice for requests without a key. Default `None` (from the OS).
    pub seed: Option<u64>,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            key: HashKeyConfig::default(),
            min_ring_size: DEFAULT_MIN_RING_SIZE,
            max_ring_size: DEFAULT_MAX_RING_SIZE,
            seed: None,
        }
    }
}

impl RingHashConfig {
    /// Sets [`key`](Self::key).
    #[must_use]
    pub fn key(mut self, key: HashKeyConfig) -> Self {
        self.key = key;
        self
    }

    /// Sets [`min_ring_size`](Self::min_ring_size).
    #[must_use]
    pub fn min_ring_size(mut self, n: usize) -> Self {
        self.min_ring_size = n;
        self
    }

    /// Sets [`max_ring_size`](Self::max_ring_size).
    #[must_use]
    pub fn max_ring_size(mut self, n: usize) -> Self {
        self.max_ring_size = n;
        self
    }

    /// Sets [`seed`](Self::seed).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// Consistent hashing: every endpoint is placed on a 64-bit ring at many points (replicas,
/// in proportion to its weight), and a request goes to the first endpoint at or after its
/// key's hash. A request's key is xxHash64 of a header or a [`RequestHashKey`]
/// (see [`HashKeyConfig`]); a request without one goes to a random point.
///
/// Replica positions are `xxh64(replica number, seed = xxh64(address))`: they depend on the
/// address only, so when an endpoint leaves only its keys move, each to the endpoint after
/// it on the ring. The ring holds every subchannel, ready or not; a point owned by one that
/// is not ready resolves to the next ready one along the ring (the gRPC ring walk, done at
/// build time). Endpoints of weight 0 get no replicas unless no ready one has a weight.
///
/// Sizing: the lightest endpoint gets `max(`[`BALANCE_REPLICAS`]`, its share of
/// min_ring_size)` replicas, the others in proportion to weight; when that exceeds
/// `max_ring_size` every count is scaled down (then counts depend on the whole set, and a
/// change moves a few extra keys). Lookup is a bucket index on the top bits of the hash
/// plus a search of one short bucket: no lock, no allocation.
///
/// [`RequestHashKey`]: crate::RequestHashKey
#[derive(Debug, Default)]
pub struct RingHash {
    config: RingHashConfig,
}

impl RingHash {
    /// A ring_hash policy with `config`.
    pub fn new(config: RingHashConfig) -> Self {
        RingHash { config }
    }

    fn build_ring(&self, subchannels: &[SubchannelView]) -> RingPicker {
        let weights = hash_weights(subchannels);
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        let min_w = weights
            .iter()
            .copied()
            .filter(|&w| w > 0)
            .min()
            .unwrap_or(1);
        let mut counts: Vec<u64> = Vec::with_capacity(weights.len());
        if total > 0 {
            // Replicas of the lightest endpoint, then everyone in proportion.
            let from_min_size =
                (self.config.min_ring_size as u128 * u128::from(min_w)).div_ceil(total) as u64;
            let base = from_min_size.max(BALANCE_REPLICAS);
            counts.extend(weights.iter().map(|&w| {
                (u128::from(w) * u128::from(base) / u128::from(min_w)).min(u128::from(u64::MAX))
                    as u64
            }));
            let sum: u128 = counts.iter().map(|&c| u128::from(c)).sum();
            let max = self.config.max_ring_size.max(1) as u128;
            if sum > max {
                for (c, &w) in counts.iter_mut().zip(&weights) {
                    let scaled = (u128::from(*c) * max / sum) as u64;
                    *c = if w > 0 { scaled.max(1) } else { 0 };
                }
            }
        }
        let mut points: Vec<(u64, u64, u32)> =
            Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, (s, &n)) in subchannels.iter().zip(&counts).enumerate() {
            let addr_hash = xxh64(s.endpoint.addr.to_string().as_bytes(), XXH64_SEED);
            for r in 0..n {
                points.push((xxh64(&r.to_le_bytes(), addr_hash), addr_hash, i as u32));
            }
        }
        // The address hash breaks ties, so the order does not depend on discovery order.
        points.sort_unstable_by_key(|&(h, a, _)| (h, a));
        let hashes: Vec<u64> = points.iter().map(|p| p.0).collect();
        let owners: Vec<u32> = points.iter().map(|p| p.2).collect();
        let targets = resolve_ready(&owners, |i| subchannels[i as usize].is_ready());
        RingPicker {
            index: BucketIndex::new(&hashes),
            hashes,
            targets,
            key: self.config.key.clone(),
            rng: PickRng::new(self.config.seed),
        }
    }
}

/// The weights the hashing policies place endpoints by: `Endpoint.weight`, or 1 for every
/// endpoint when no ready endpoint has a weight above 0 (weight 0 means "only when nothing
/// else is left").
pub(crate) fn hash_weights(subchannels: &[SubchannelView]) -> Vec<u32> {
    if subchannels
        .iter()
        .any(|s| s.is_ready() && s.endpoint.weight > 0)
    {
        subchannels.iter().map(|s| s.endpoint.weight).collect()
    } else {
        vec![1; subchannels.len()]
    }
}

/// Maps each slot of a cyclic table of owners to the first ready owner at or after it.
/// `None` for every slot when no owner is ready.
pub(crate) fn resolve_ready(owners: &[u32], ready: impl Fn(u32) -> bool) -> Vec<u32> {
    let n = owners.len();
    let Some(last_ready) = (0..n).rev().find(|&i| ready(owners[i])) else {
        return Vec::new();
    };
    let mut targets = vec![0u32; n];
    let mut next = owners[last_ready];
    // Walk backward from the last ready slot, around the whole cycle: the slots after it
    // wrap to the first ready one, which the walk reaches last.
    for i in (0..=last_ready).rev().chain((last_ready + 1..n).rev()) {
        if ready(owners[i]) {
            next = owners[i];
        }
        targets[i] = next;
    }
    targets
}

impl Balancer for RingHash {
    fn name(&self) -> &'static str {
        "ring_hash"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        Arc::new(self.build_ring(subchannels))
    }
}

// ===== BucketIndex =====

/// For a sorted list of hashes: where each range of top bits starts, so a lookup searches
/// only the few entries that share its top bits.
struct BucketIndex {
    shift: u32,
    /// `starts[b]` is the first position whose hash has top bits ≥ `b`; one extra at the end.
    starts: Vec<u32>,
}

impl BucketIndex {
    fn new(sorted: &[u64]) -> Self {
        // About two entries per bucket.
        let bits = (usize::BITS - sorted.len().leading_zeros())
            .saturating_sub(1)
            .clamp(1, MAX_INDEX_BITS);
        let shift = u64::BITS - bits;
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut pos = 0;
        for b in 0..=buckets {
            while pos < sorted.len() && ((sorted[pos] >> shift) as usize) < b {
                pos += 1;
            }
            starts.push(pos as u32);
        }
        BucketIndex { shift, starts }
    }

    /// The first position whose hash is ≥ `h`, wrapping to 0 past the end.
    #[inline]
    fn first_at_or_after(&self, sorted: &[u64], h: u64) -> usize {
        let b = (h >> self.shift) as usize;
        let lo = self.starts[b] as usize;
        let hi = self.starts[b + 1] as usize;
        let pos = lo + sorted[lo..hi].partition_point(|&x| x < h);
        if pos == sorted.len() { 0 } else { pos }
    }
}

// ===== RingPicker =====

struct RingPicker {
    hashes: Vec<u64>,
    /// The ready subchannel each ring point resolves to; empty when none is ready.
    targets: Vec<u32>,
    index: BucketIndex,
    key: HashKeyConfig,
    rng: PickRng,
}

impl RingPicker {
    #[inline]
    fn lookup(&self, h: u64) -> usize {
        self.targets[self.index.first_at_or_after(&self.hashes, h)] as usize
    }
}

impl Picker for RingPicker {
    fn pick(&self, req: &PickRequest<'_>) -> Pick {
        if self.targets.is_empty() {
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
    use crate::test_util::{many, subchannels};
    use crate::{ConnectivityState, RequestHashKey};

    /// Each subchannel's exact share of the ring (of the 2^64 hash space).
    fn shares(p: &RingPicker, n: usize) -> Vec<f64> {
        let mut s = vec![0.0; n];
        let len = p.hashes.len();
        for i in 0..len {
            // Point i takes the arc from the previous point (exclusive) up to itself.
            let prev = p.hashes[(i + len - 1) % len];
            let arc = p.hashes[i].wrapping_sub(prev) as f64 / 2f64.powi(64);
            s[p.targets[i] as usize] += arc;
        }
        s
    }

    fn pick_key(p: &RingPicker, key: u64) -> usize {
        let mut req = http::Request::new(());
        req.extensions_mut().insert(RequestHashKey(key));
        match p.pick(&PickRequest::from_request(&req)) {
            Pick::Ready(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolve_walks_forward_and_wraps() {
        let ready = |o: u32| o == 1 || o == 3;
        assert_eq!(resolve_ready(&[0, 1, 2, 3, 2], ready), [1, 1, 3, 3, 1]);
        assert_eq!(resolve_ready(&[2, 3, 2], ready), [3, 3, 3]);
        assert!(resolve_ready(&[0, 2], ready).is_empty());
    }

    #[test]
    fn lookup_matches_linear_scan() {
        let p = RingHash::default().build_ring(&many(50));
        for k in 0..10_000u64 {
            let h = mix64(k);
            let want = p.hashes.iter().position(|&x| x >= h).unwrap_or(0);
            assert_eq!(p.lookup(h), p.targets[want] as usize);
        }
    }

    #[test]
    fn balance_at_1000_endpoints() {
        let subs = many(1000);
        let p = RingHash::default().build_ring(&subs);
        let s = shares(&p, 1000);
        let mean = 1.0 / 1000.0;
        let max = s.iter().copied().fold(0.0, f64::max);
        assert!(max / mean <= 1.25, "max/mean = {}", max / mean);
        // Weighted: an endpoint of weight 3 gets about three times the share.
        let mut subs = many(100);
        subs[0].endpoint.weight = 3;
        let s = shares(&RingHash::default().build_ring(&subs), 100);
        let ratio = s[0] / (s[1..].iter().sum::<f64>() / 99.0);
        assert!((ratio - 3.0).abs() < 0.5, "{ratio}");
    }

    #[test]
    fn same_key_same_endpoint_and_removal_moves_only_its_keys() {
        let subs = many(100);
        let policy = RingHash::default();
        let before = policy.build_ring(&subs);
        let keys: Vec<u64> = (0..20_000).map(mix64).collect();
        let owner: Vec<usize> = keys.iter().map(|&k| pick_key(&before, k)).collect();
        assert_eq!(
            owner,
            keys.iter()
                .map(|&k| pick_key(&before, k))
                .collect::<Vec<_>>()
        );
        // Remove endpoint 37; indices above it shift down by one.
        let removed = 37;
        let mut fewer = subs.clone();
        fewer.remove(removed);
        let after = policy.build_ring(&fewer);
        let mut moved = 0;
        for (&k, &was) in keys.iter().zip(&owner) {
            let now = pick_key(&after, k);
            let now = if now >= removed { now + 1 } else { now };
            if was == removed {
                assert_ne!(now, removed);
                moved += 1;
            } else {
                assert_eq!(now, was, "a key of a remaining endpoint moved");
            }
        }
        // Its keys are about 1/100 of all, and they went to several endpoints.
        assert!(moved > 100 && moved < 400, "{moved}");
    }

    #[test]
    fn not_ready_points_walk_to_the_next_ready() {
        let states: Vec<ConnectivityState> = (0..10)
            .map(|i| if i % 3 == 0 { Connecting } else { Ready })
            .collect();
        let subs = subchannels(&states);
        let policy = RingHash::default();
        let all_ready = policy.build_ring(&subchannels(&[Ready; 10]));
        let p = policy.build_ring(&subs);
        for k in 0..5000u64 {
            let h = mix64(k);
            let got = pick_key(&p, h);
            assert!(subs[got].is_ready());
            // Keys whose endpoint is ready stay where they were.
            let was = pick_key(&all_ready, h);
            if subs[was].is_ready() {
                assert_eq!(got, was);
            }
        }
        // Nothing ready: queue.
        let p = policy.build_ring(&subchannels(&[Connecting, Idle]));
        let req = http::Request::new(());
        assert!(matches!(
            p.pick(&PickRequest::from_request(&req)),
            Pick::Queue
        ));
    }

    #[test]
    fn header_key_and_keyless_random() {
        let cfg = RingHashConfig::default()
            .key(HashKeyConfig::default().request_hash_header("x-user".parse().unwrap()))
            .seed(5);
        let p = RingHash::new(cfg).build_ring(&many(20));
        let mut req = http::Request::new(());
        req.headers_mut().insert("x-user", "alice".parse().unwrap());
        let alice = pick_key(&p, xxh64(b"alice", 0));
        for _ in 0..10 {
            assert!(
                matches!(p.pick(&PickRequest::from_request(&req)), Pick::Ready(i) if i == alice)
            );
        }
        // Without the header: spread over many endpoints.
        let bare = http::Request::new(());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            if let Pick::Ready(i) = p.pick(&PickRequest::from_request(&bare)) {
                seen.insert(i);
            }
        }
        assert!(seen.len() >= 18, "{}", seen.len());
    }
}
