//! `ring_hash`: consistent hashing on a ring of endpoint replicas (Karger et al.; gRPC A42).

use std::sync::{Arc, Mutex};

use meshless_discovery::Address;
use xxhash_rust::xxh64::xxh64;

use crate::hash_key::{HashKeyConfig, XXH64_SEED};
use crate::rng::PickRng;
use crate::{Balancer, Pick, PickRequest, Picker, SubchannelView};

/// Keyed by our own discovery's addresses: foldhash, not SipHash (5,000 lookups a build).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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

crate::config::config_setters!(RingHashConfig {
    key: HashKeyConfig,
    min_ring_size: usize,
    max_ring_size: usize,
} optional {
    seed: u64,
});

/// Consistent hashing: every endpoint is placed on a 64-bit ring at many points (replicas,
/// in proportion to its weight), and a request goes to the first endpoint at or after its
/// key's hash. A request's key is xxHash64 of a header or a [`RequestHashKey`]
/// (see [`HashKeyConfig`]); a request without one goes to a random point.
///
/// Replica positions are `xxh64(replica number, seed = xxh64(address))`: they depend on the
/// address only, so when an endpoint leaves only its keys move, each to the endpoint after
/// it on the ring. The ring holds every subchannel, ready or not; a point owned by one that
/// is not ready resolves to the next ready one along the ring (gRPC's ring walk). Endpoints
/// of weight 0 get no replicas unless no ready one has a weight.
///
/// Sizing: the lightest endpoint gets `max(`[`BALANCE_REPLICAS`]`, its share of
/// min_ring_size)` replicas, the others in proportion to weight; when that exceeds
/// `max_ring_size` every count is scaled down. Lookup is a bucket index on the top bits of
/// the hash plus a search of one short bucket: no lock, no allocation.
///
/// **Incremental rebuilds.** A large ring (a million points for 5,000 endpoints) takes tens
/// of milliseconds to sort, so each channel's balancer keeps its ring between pickers:
/// - a readiness change, or an endpoint leaving, reuses the ring as it is: a point of an
///   endpoint that left or is not ready walks on to the next ready one, which is where the
///   key would go on a ring without that endpoint;
/// - an endpoint that joins (or changes weight) has its points sorted and merged into the
///   ring in one pass, which also drops the points of endpoints that left;
/// - the ring is built anew when the replicas per unit of weight drift a third away from
///   what the current set calls for (the set grew or shrank a lot), when it would pass
///   `max_ring_size`, or when most of its points belong to endpoints that left.
///
/// [`RequestHashKey`]: crate::RequestHashKey
#[derive(Debug, Default)]
pub struct RingHash {
    config: RingHashConfig,
    /// The ring of the last picker and how it was placed (the control task is the only
    /// caller, so the lock is never contended).
    state: Mutex<RingState>,
}

/// An endpoint as placed on the ring.
#[derive(Debug, Clone)]
struct Member {
    addr: Address,
    addr_hash: u64,
    /// The weight its points were placed for.
    weight: u32,
    points: u64,
    /// In the set of the last build.
    live: bool,
    /// Its points are not on the ring yet: it arrived (after the first build) not ready, and
    /// is placed once it is. Until then no key can reach it (a key on its points would
    /// walk on past it anyway), and an arrival costs no hashing, sorting or merging.
    pending: bool,
}

#[derive(Debug, Default)]
struct RingState {
    ring: Option<Arc<Ring>>,
    /// Points added since the main ring was last merged, kept apart (and searched beside
    /// it) so that an arrival costs a pass over them rather than over the whole ring.
    overlay: Option<Arc<Ring>>,
    /// By member id (the owner numbers of the ring's points).
    members: Vec<Member>,
    /// Member ids without points, free for reuse.
    free: Vec<u32>,
    ids: HashMap<Address, u32>,
    /// Replicas per unit of weight the ring was placed with.
    per_weight: f64,
    /// Whether placement used the endpoints' weights (false: every weight counted as 1).
    weighted: bool,
    /// Points owned by members that are not live.
    dead_points: u64,
    /// The member id of each view of the last build, [`NOT_READY`] for a duplicate.
    view_ids: Vec<u32>,
}

/// The sorted points of a ring, shared by the pickers built from it.
#[derive(Debug)]
struct Ring {
    hashes: Vec<u64>,
    /// The member id owning each point.
    owners: Vec<u32>,
    index: BucketIndex,
}

impl Ring {
    fn new(hashes: Vec<u64>, owners: Vec<u32>) -> Self {
        Ring {
            index: BucketIndex::new(&hashes),
            hashes,
            owners,
        }
    }
}

/// Marks a member without a ready subchannel in a picker's target table.
const NOT_READY: u32 = u32::MAX;

/// The overlay is merged into the main ring once it would hold more than 1/16 of its points.
const OVERLAY_SHARE: usize = 16;

/// The points of one endpoint: `(hash, address hash, member id)`.
fn points_of(addr_hash: u64, count: u64, id: u32, out: &mut Vec<(u64, u64, u32)>) {
    out.extend((0..count).map(|r| (xxh64(&r.to_le_bytes(), addr_hash), addr_hash, id)));
}

fn addr_hash(addr: &Address) -> u64 {
    xxh64(addr.to_string().as_bytes(), XXH64_SEED)
}

impl RingHash {
    /// A ring_hash policy with `config`.
    pub fn new(config: RingHashConfig) -> Self {
        RingHash {
            config,
            state: Mutex::default(),
        }
    }

    /// Replicas per unit of weight for `weights`, and the ring size they give.
    fn placement(&self, weights: &[u32]) -> f64 {
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        let Some(min_w) = weights.iter().copied().filter(|&w| w > 0).min() else {
            return 0.0;
        };
        // Replicas of the lightest endpoint, then everyone in proportion.
        let from_min_size =
            (self.config.min_ring_size as u128 * u128::from(min_w)).div_ceil(total) as u64;
        let base = from_min_size.max(BALANCE_REPLICAS);
        let per_weight = base as f64 / f64::from(min_w);
        let sum = per_weight * total as f64;
        let max = self.config.max_ring_size.max(1) as f64;
        if sum > max {
            per_weight * max / sum
        } else {
            per_weight
        }
    }

    fn count(per_weight: f64, w: u32) -> u64 {
        if w == 0 {
            0
        } else {
            ((f64::from(w) * per_weight) as u64).max(1)
        }
    }

    fn build_ring(&self, subchannels: &[SubchannelView]) -> RingPicker {
        let weights = hash_weights(subchannels);
        let weighted = subchannels
            .iter()
            .any(|s| s.is_ready() && s.endpoint.weight > 0);
        let ideal = self.placement(&weights);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let drifted = !(st.per_weight > 0.0
            && (0.75..=4.0 / 3.0).contains(&(st.per_weight / ideal.max(f64::MIN_POSITIVE))));
        let kept = st.ring.is_some()
            && st.weighted == weighted
            && !drifted
            && st.update(subchannels, &weights, self.config.max_ring_size);
        if !kept {
            st.rebuild(subchannels, &weights, ideal, weighted);
        }
        st.picker(
            subchannels,
            self.config.key.clone(),
            PickRng::new(self.config.seed),
        )
    }
}

impl RingState {
    /// Places every endpoint anew.
    fn rebuild(
        &mut self,
        subs: &[SubchannelView],
        weights: &[u32],
        per_weight: f64,
        weighted: bool,
    ) {
        self.members.clear();
        self.free.clear();
        self.ids.clear();
        self.overlay = None;
        self.per_weight = per_weight;
        self.weighted = weighted;
        self.dead_points = 0;
        let mut points = Vec::new();
        self.view_ids.clear();
        for (s, &w) in subs.iter().zip(weights) {
            if self.ids.contains_key(&s.endpoint.addr) {
                self.view_ids.push(NOT_READY);
                continue;
            }
            let id = self.members.len() as u32;
            self.view_ids.push(id);
            let m = Member {
                addr: s.endpoint.addr.clone(),
                addr_hash: addr_hash(&s.endpoint.addr),
                weight: w,
                points: RingHash::count(per_weight, w),
                live: true,
                pending: false,
            };
            points_of(m.addr_hash, m.points, id, &mut points);
            self.members.push(m);
            self.ids.insert(s.endpoint.addr.clone(), id);
        }
        // The address hash breaks ties, so the order does not depend on discovery order.
        points.sort_unstable_by_key(|&(h, a, _)| (h, a));
        self.ring = Some(Arc::new(Ring::new(
            points.iter().map(|p| p.0).collect(),
            points.iter().map(|p| p.2).collect(),
        )));
    }

    /// Brings the ring up to date with `subs` without building it anew. False when it
    /// cannot (the ring would pass `max_ring_size`).
    fn update(&mut self, subs: &[SubchannelView], weights: &[u32], max_ring_size: usize) -> bool {
        for m in &mut self.members {
            m.live = false;
        }
        let mut added = Vec::new();
        self.view_ids.clear();
        for (s, &w) in subs.iter().zip(weights) {
            match self.ids.get(&s.endpoint.addr).copied() {
                Some(id) if self.members[id as usize].weight == w => {
                    let m = &mut self.members[id as usize];
                    // A second view of the same address (a duplicate) gets no target.
                    self.view_ids.push(if m.live { NOT_READY } else { id });
                    m.live = true;
                    if m.pending && s.is_ready() {
                        m.pending = false;
                        m.points = RingHash::count(self.per_weight, w);
                        points_of(m.addr_hash, m.points, id, &mut added);
                    }
                }
                known => {
                    if known.is_some_and(|id| self.members[id as usize].live) {
                        self.view_ids.push(NOT_READY);
                        continue; // a duplicate address in the set
                    }
                    // New, or placed for another weight: (re)placed under a new id; the
                    // old points, if any, belong to a member that is no longer live.
                    let ready = s.is_ready();
                    let m = Member {
                        addr: s.endpoint.addr.clone(),
                        addr_hash: addr_hash(&s.endpoint.addr),
                        weight: w,
                        points: if ready {
                            RingHash::count(self.per_weight, w)
                        } else {
                            0
                        },
                        live: true,
                        pending: !ready,
                    };
                    let (addr_hash, points) = (m.addr_hash, m.points);
                    let id = match self.free.pop() {
                        Some(id) => {
                            self.members[id as usize] = m;
                            id
                        }
                        None => {
                            self.members.push(m);
                            (self.members.len() - 1) as u32
                        }
                    };
                    if let Some(old) = known {
                        // Its old points die with the old id.
                        self.members[old as usize].live = false;
                    }
                    points_of(addr_hash, points, id, &mut added);
                    self.ids.insert(s.endpoint.addr.clone(), id);
                    self.view_ids.push(id);
                }
            }
        }
        // Members that left before they were ever placed own no points: free them now.
        for (id, m) in self.members.iter_mut().enumerate() {
            if m.pending && !m.live {
                m.pending = false;
                if self.ids.get(&m.addr) == Some(&(id as u32)) {
                    self.ids.remove(&m.addr);
                }
                self.free.push(id as u32);
            }
        }
        let main = self.ring.clone().expect("update follows a build");
        let overlay_len = self.overlay.as_ref().map_or(0, |o| o.owners.len());
        let ring_len = (main.owners.len() + overlay_len) as u64;
        // Live points already on the ring: those of live members, less the ones just added.
        let on_ring = self.live_points().saturating_sub(added.len() as u64);
        self.dead_points = ring_len.saturating_sub(on_ring);
        let mostly_dead = self.dead_points * 2 > ring_len;
        if added.is_empty() && !mostly_dead {
            return true; // the ring stays as it is
        }
        if on_ring + added.len() as u64 > max_ring_size.max(1) as u64 {
            return false;
        }
        added.sort_unstable_by_key(|&(h, a, _)| (h, a));
        let added = Ring::new(
            added.iter().map(|p| p.0).collect(),
            added.iter().map(|p| p.2).collect(),
        );
        if !mostly_dead && overlay_len + added.owners.len() <= main.owners.len() / OVERLAY_SHARE {
            // Few new points: they join the overlay, the main ring stays shared.
            let overlay = match &self.overlay {
                Some(o) => self.merge(o, &added, false),
                None => added,
            };
            self.overlay = Some(Arc::new(overlay));
        } else {
            self.compact(Some(&added));
        }
        true
    }

    /// Merges the overlay (and `added`) into the main ring, dropping the points of members
    /// that left, and frees their ids.
    fn compact(&mut self, added: Option<&Ring>) {
        let main = self.ring.clone().expect("compaction follows a build");
        let overlay = self.overlay.take();
        let rest = match (overlay.as_deref(), added) {
            (Some(o), Some(a)) => Some(self.merge(o, a, true)),
            (Some(o), None) => Some(self.merge(o, &Ring::new(Vec::new(), Vec::new()), true)),
            (None, Some(a)) => Some(self.merge(a, &Ring::new(Vec::new(), Vec::new()), true)),
            (None, None) => None,
        };
        let empty = Ring::new(Vec::new(), Vec::new());
        let merged = self.merge(&main, rest.as_ref().unwrap_or(&empty), true);
        // Members that were not live have no points left: their ids are free.
        self.ids.retain(|_, id| self.members[*id as usize].live);
        for (id, m) in self.members.iter_mut().enumerate() {
            if !m.live && m.points > 0 {
                m.points = 0;
                self.free.push(id as u32);
            }
        }
        self.dead_points = 0;
        self.ring = Some(Arc::new(merged));
    }

    fn live_points(&self) -> u64 {
        self.members
            .iter()
            .filter(|m| m.live)
            .map(|m| m.points)
            .sum()
    }

    /// The points of `a` and `b` in ring order (hash, then the owner's address hash), without
    /// those of members that are not live when `drop_dead`.
    fn merge(&self, a: &Ring, b: &Ring, drop_dead: bool) -> Ring {
        let keep = |o: u32| !drop_dead || self.members[o as usize].live;
        // `b`'s point at `j` goes before `a`'s point (h, o): by hash, then address hash.
        let before = |j: usize, h: u64, o: u32| {
            let bh = b.hashes[j];
            bh < h
                || (bh == h
                    && self.members[b.owners[j] as usize].addr_hash
                        < self.members[o as usize].addr_hash)
        };
        let len = a.owners.len() + b.owners.len();
        let mut hashes = Vec::with_capacity(len);
        let mut owners = Vec::with_capacity(len);
        let mut j = 0;
        for (&h, &o) in a.hashes.iter().zip(&a.owners) {
            while j < b.owners.len() && before(j, h, o) {
                if keep(b.owners[j]) {
                    hashes.push(b.hashes[j]);
                    owners.push(b.owners[j]);
                }
                j += 1;
            }
            if keep(o) {
                hashes.push(h);
                owners.push(o);
            }
        }
        for (&h, &o) in b.hashes[j..].iter().zip(&b.owners[j..]) {
            if keep(o) {
                hashes.push(h);
                owners.push(o);
            }
        }
        Ring::new(hashes, owners)
    }

    fn picker(&mut self, subs: &[SubchannelView], key: HashKeyConfig, rng: PickRng) -> RingPicker {
        let mut targets = vec![NOT_READY; self.members.len()];
        let mut ready = 0usize;
        for (i, (s, &id)) in subs.iter().zip(&self.view_ids).enumerate() {
            if id == NOT_READY || !s.is_ready() {
                continue;
            }
            if self.members[id as usize].points > 0 {
                targets[id as usize] = i as u32;
                ready += 1;
            }
        }
        // With few ready endpoints the walk past the others gets long: resolve every point
        // once instead (a pass over the ring), so a pick stays one lookup.
        let live = self.members.iter().filter(|m| m.live).count();
        let degraded = ready > 0 && ready * 8 < live.max(8);
        if degraded && self.overlay.is_some() {
            self.compact(None);
        }
        let ring = self.ring.clone().expect("a ring was built");
        let overlay = self.overlay.clone();
        let addr_hashes = match overlay {
            Some(_) => self.members.iter().map(|m| m.addr_hash).collect(),
            None => Vec::new(),
        };
        let resolved = degraded.then(|| {
            resolve_ready(&ring.owners, |o| targets[o as usize] != NOT_READY)
                .into_iter()
                .map(|o| targets[o as usize])
                .collect()
        });
        RingPicker {
            ring,
            overlay,
            addr_hashes,
            targets,
            resolved,
            any_ready: ready > 0,
            key,
            rng,
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
#[derive(Debug)]
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
    ring: Arc<Ring>,
    /// Points added since `ring` was merged (see [`RingState::overlay`]).
    overlay: Option<Arc<Ring>>,
    /// Each member's address hash, for ties between the two rings (with an overlay only).
    addr_hashes: Vec<u64>,
    /// The ready subchannel of each member id, or [`NOT_READY`].
    targets: Vec<u32>,
    /// When few members are ready: the ready subchannel each point resolves to.
    resolved: Option<Vec<u32>>,
    any_ready: bool,
    key: HashKeyConfig,
    rng: PickRng,
}

impl RingPicker {
    /// The subchannel that the point at `pos` resolves to: its owner when ready, else the
    /// next ready owner along the ring.
    #[inline]
    fn at(&self, mut pos: usize) -> usize {
        if let Some(r) = &self.resolved {
            return r[pos] as usize;
        }
        let owners = &self.ring.owners;
        loop {
            let t = self.targets[owners[pos] as usize];
            if t != NOT_READY {
                return t as usize;
            }
            pos += 1;
            if pos == owners.len() {
                pos = 0;
            }
        }
    }

    #[inline]
    fn lookup(&self, h: u64) -> usize {
        let main = &self.ring;
        let i = main.index.first_at_or_after(&main.hashes, h);
        match &self.overlay {
            None => self.at(i),
            Some(overlay) => self.walk_both(overlay, h, i),
        }
    }

    /// The ring walk over the main ring and the overlay together: points in order of their
    /// distance from `h` along the ring, until one of a ready member.
    fn walk_both(&self, overlay: &Ring, h: u64, mut i: usize) -> usize {
        let main = &self.ring;
        let mut j = overlay.index.first_at_or_after(&overlay.hashes, h);
        let (mut left_main, mut left_overlay) = (main.owners.len(), overlay.owners.len());
        let key = |hash: u64, o: u32| (hash.wrapping_sub(h), self.addr_hashes[o as usize]);
        while left_main + left_overlay > 0 {
            let from_main = left_overlay == 0
                || (left_main > 0
                    && key(main.hashes[i], main.owners[i])
                        <= key(overlay.hashes[j], overlay.owners[j]));
            let owner = if from_main {
                let o = main.owners[i];
                i = if i + 1 == main.owners.len() { 0 } else { i + 1 };
                left_main -= 1;
                o
            } else {
                let o = overlay.owners[j];
                j = if j + 1 == overlay.owners.len() {
                    0
                } else {
                    j + 1
                };
                left_overlay -= 1;
                o
            };
            let t = self.targets[owner as usize];
            if t != NOT_READY {
                return t as usize;
            }
        }
        unreachable!("a picker with a ready member has a point of it")
    }
}

impl Picker for RingPicker {
    fn pick(&self, req: &PickRequest<'_>) -> Pick {
        if !self.any_ready {
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
        let hashes = &p.ring.hashes;
        let len = hashes.len();
        for i in 0..len {
            // Point i takes the arc from the previous point (exclusive) up to itself.
            let prev = hashes[(i + len - 1) % len];
            let arc = hashes[i].wrapping_sub(prev) as f64 / 2f64.powi(64);
            s[p.at(i)] += arc;
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
            let want = p.ring.hashes.iter().position(|&x| x >= h).unwrap_or(0);
            assert_eq!(p.lookup(h), p.at(want));
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

    /// The address each key goes to.
    fn owners_of(p: &RingPicker, subs: &[SubchannelView], keys: &[u64]) -> Vec<Address> {
        keys.iter()
            .map(|&k| subs[pick_key(p, k)].endpoint.addr.clone())
            .collect()
    }

    #[test]
    fn an_updated_ring_sends_every_key_where_a_fresh_one_does() {
        // Weights 1..=3 with a weight-1 endpoint always present and a ring below its cap:
        // replicas per weight stay 256, so the incremental ring must equal a fresh one.
        let policy = RingHash::default();
        let mut subs = many(300);
        subs.truncate(200);
        let mut spare: Vec<SubchannelView> = many(300).split_off(200);
        let keys: Vec<u64> = (0..3000).map(mix64).collect();
        let mut rng = 7u64;
        for round in 0..12 {
            rng = mix64(rng);
            match round % 4 {
                // A few leave.
                0 => {
                    for _ in 0..5 {
                        let i = 1 + (mix64(rng ^ subs.len() as u64) as usize) % (subs.len() - 1);
                        spare.push(subs.remove(i));
                    }
                }
                // A few join (new to the ring, or back after leaving).
                1 => {
                    for _ in 0..5 {
                        if let Some(s) = spare.pop() {
                            subs.push(s);
                        }
                    }
                }
                // A weight changes.
                2 => {
                    let i = 1 + (rng as usize) % (subs.len() - 1);
                    subs[i].endpoint.weight = 1 + (rng >> 32) as u32 % 3;
                }
                // Readiness flips.
                _ => {
                    for (i, s) in subs.iter_mut().enumerate().skip(1) {
                        s.state = if mix64(rng ^ i as u64).is_multiple_of(5) {
                            Connecting
                        } else {
                            Ready
                        };
                    }
                }
            }
            let updated = policy.build_ring(&subs);
            let fresh = RingHash::default().build_ring(&subs);
            assert_eq!(
                owners_of(&updated, &subs, &keys),
                owners_of(&fresh, &subs, &keys),
                "round {round}"
            );
        }
    }

    #[test]
    fn readiness_and_departures_reuse_the_ring_and_arrivals_drop_dead_points() {
        let policy = RingHash::default();
        let mut subs = many(50);
        let first = policy.build_ring(&subs);
        subs[3].state = Connecting;
        let not_ready = policy.build_ring(&subs);
        assert!(Arc::ptr_eq(&first.ring, &not_ready.ring));
        let gone = subs.remove(7);
        let fewer = policy.build_ring(&subs);
        assert!(Arc::ptr_eq(&first.ring, &fewer.ring));
        // Back again: its points never left.
        subs.push(gone);
        assert!(Arc::ptr_eq(&first.ring, &policy.build_ring(&subs).ring));
        // Someone new: its points go to the overlay, the main ring stays shared.
        let gone = subs.remove(7);
        let mut extra = many(60).split_off(50);
        subs.push(extra.remove(0));
        let p = policy.build_ring(&subs);
        assert!(Arc::ptr_eq(&first.ring, &p.ring));
        assert_eq!(
            p.overlay.as_ref().unwrap().hashes.len(),
            BALANCE_REPLICAS as usize
        );
        // Every key goes where a fresh ring sends it, through both rings.
        let keys: Vec<u64> = (0..5000).map(mix64).collect();
        let fresh = RingHash::default().build_ring(&subs);
        assert_eq!(owners_of(&p, &subs, &keys), owners_of(&fresh, &subs, &keys));
        // Two more fit in 1/16 of the main ring (800 points); the next merges everything,
        // dropping the points of the one that left.
        for _ in 0..2 {
            subs.push(extra.remove(0));
            assert!(policy.build_ring(&subs).overlay.is_some());
        }
        subs.push(extra.remove(0));
        let merged = policy.build_ring(&subs);
        assert!(merged.overlay.is_none());
        assert!(!Arc::ptr_eq(&first.ring, &merged.ring));
        assert_eq!(merged.ring.hashes.len(), 53 * BALANCE_REPLICAS as usize);
        assert!(merged.ring.hashes.is_sorted());
        let fresh = RingHash::default().build_ring(&subs);
        assert_eq!(
            owners_of(&merged, &subs, &keys),
            owners_of(&fresh, &subs, &keys)
        );
        let st = policy.state.lock().unwrap();
        assert!(!st.ids.contains_key(&gone.endpoint.addr));
        assert_eq!(st.dead_points, 0);
    }

    #[test]
    fn arrivals_not_ready_are_placed_once_ready_and_freed_if_they_leave_first() {
        let policy = RingHash::default();
        let mut subs = many(50);
        let first = policy.build_ring(&subs);
        let mut extra = many(53).split_off(50);
        for e in &mut extra {
            e.state = Connecting;
        }
        subs.extend(extra.iter().cloned());
        // Not ready: nothing placed, the ring is the same, no key reaches them.
        let p = policy.build_ring(&subs);
        assert!(Arc::ptr_eq(&first.ring, &p.ring));
        assert!(p.overlay.is_none());
        let keys: Vec<u64> = (0..5000).map(mix64).collect();
        let fresh = RingHash::default().build_ring(&subs);
        assert_eq!(owners_of(&p, &subs, &keys), owners_of(&fresh, &subs, &keys));
        // Two get ready: their points join (through the overlay), and every key goes where
        // a fresh ring sends it.
        subs[50].state = Ready;
        subs[51].state = Ready;
        let p = policy.build_ring(&subs);
        assert_eq!(
            p.overlay.as_ref().unwrap().hashes.len(),
            2 * BALANCE_REPLICAS as usize
        );
        let fresh = RingHash::default().build_ring(&subs);
        let owners = owners_of(&p, &subs, &keys);
        assert_eq!(owners, owners_of(&fresh, &subs, &keys));
        assert!(owners.contains(&subs[50].endpoint.addr));
        // The third leaves before it was ever ready: freed at once, its id reused.
        let never = subs.pop().unwrap();
        policy.build_ring(&subs);
        {
            let st = policy.state.lock().unwrap();
            assert!(!st.ids.contains_key(&never.endpoint.addr));
            assert_eq!(st.free.len(), 1);
        }
        let mut another = many(54).split_off(53);
        subs.push(another.remove(0));
        policy.build_ring(&subs);
        let st = policy.state.lock().unwrap();
        assert_eq!(st.members.len(), 53, "the freed id was reused");
        assert!(st.free.is_empty());
    }

    #[test]
    fn a_grown_set_gets_a_ring_sized_anew_within_the_cap() {
        let policy = RingHash::new(RingHashConfig::default().max_ring_size(8192));
        let small = many(10);
        assert_eq!(policy.build_ring(&small).ring.hashes.len(), 2560);
        // 200 endpoints at 256 would be 51,200 points: the placement shrinks to the cap.
        let big = many(200);
        let p = policy.build_ring(&big);
        assert!(p.ring.hashes.len() <= 8192, "{}", p.ring.hashes.len());
        assert!(p.ring.hashes.len() >= 8000, "{}", p.ring.hashes.len());
        let s = shares(&p, 200);
        assert!(s.iter().all(|&x| x > 0.0));
        // Back to ten: placed anew with 256 each again.
        assert_eq!(policy.build_ring(&small).ring.hashes.len(), 2560);
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
