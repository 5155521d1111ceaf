//! `weighted_round_robin`: endpoints in turn, each as often as its weight, smoothly spread.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshless_discovery::Address;

use crate::config::config_setters;
use crate::rng::{Padded, PickRng};
use crate::{Balancer, Pick, PickRequest, Picker, SubchannelView, ready_weighted};

/// The longest schedule a picker precomputes: 65,536 slots (256 KiB of `u32`). One cycle of
/// the schedule has `sum of weights / their GCD` slots; when that is longer, the weights are
/// scaled down to fit (see [`WeightedRoundRobin`]).
pub const MAX_SCHEDULE_LEN: usize = 1 << 16;

/// One period of an endpoint's deadlines in fixed point: a phase of `PHASE_ONE` is a whole
/// step `1 / weight`.
const PHASE_ONE: u64 = 1 << 32;
/// Where a new endpoint's first deadline sits: half a step in. Gives the smooth order
/// a,a,b,a for weights 3:1 (a deadline at 0 would give a,b,a,a or a,a,a,b with ties).
const NEW_PHASE: u64 = PHASE_ONE / 2;

/// Configuration of [`WeightedRoundRobin`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WeightedRoundRobinConfig {
    /// Start the first picker at a random point of its schedule, so that many clients
    /// started together do not all send their first requests to the same endpoint (as
    /// `round_robin` does). Later pickers continue where the previous one stopped.
    /// Default `true`.
    pub random_start: bool,
    /// Seeds the random start, for reproducible tests. Default `None` (from the OS).
    pub seed: Option<u64>,
}

impl Default for WeightedRoundRobinConfig {
    fn default() -> Self {
        WeightedRoundRobinConfig {
            random_start: true,
            seed: None,
        }
    }
}

config_setters!(WeightedRoundRobinConfig {
    random_start: bool,
} optional {
    seed: u64,
});

/// Static-weight round robin with an earliest-deadline-first scheduler (as Envoy's): an
/// endpoint of weight `w` is due every `1/w` of a period, and each pick takes the endpoint
/// due first, so weights 3:1 give a,a,b,a rather than a,a,a,b.
///
/// Weights come from `Endpoint.weight`. Weight 0 means "only when nothing else is left":
/// such endpoints are skipped while another ready one has a weight, and all get weight 1
/// when none has. Weights are divided by their GCD; when the sum is still above
/// [`MAX_SCHEDULE_LEN`] (very large or very uneven weights) they are scaled down to fit,
/// each keeping at least one slot, so an endpoint's share is off by at most half a slot
/// (`sum / (2 × 65536 × weight)` relative).
///
/// The picker walks a schedule table precomputed at build with one atomic counter: no lock,
/// no allocation, O(1). The balancer remembers each address's phase (how far it is toward
/// its next turn) across rebuilds, so adding, removing or re-weighting one endpoint leaves
/// the others' place in the rotation as it was.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    config: WeightedRoundRobinConfig,
    /// Taken only by `build`, on the channel's control task; never on the request path.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each known address's phase in `[0, PHASE_ONE)`.
    phases: HashMap<Address, u64>,
    /// The picker built last, to learn where its rotation stopped.
    last: Option<Arc<WrrPicker>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("phases", &self.phases.len())
            .finish_non_exhaustive()
    }
}

impl WeightedRoundRobin {
    /// A weighted_round_robin policy with `config`.
    pub fn new(config: WeightedRoundRobinConfig) -> Self {
        WeightedRoundRobin {
            config,
            state: Mutex::new(State::default()),
        }
    }
}

impl Balancer for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn build(&self, subchannels: &[SubchannelView]) -> Arc<dyn Picker> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let first = state.last.is_none();
        if let Some(last) = state.last.take() {
            last.save_phases(&mut state.phases);
        }
        let present: HashSet<&Address> = subchannels.iter().map(|s| &s.endpoint.addr).collect();
        state.phases.retain(|addr, _| present.contains(addr));

        let ready = ready_weighted(subchannels);
        let weights = fit_weights(ready.iter().map(|&(_, w)| u64::from(w)).collect());
        let entries: Vec<Entry> = ready
            .iter()
            .zip(weights)
            .map(|(&(index, _), weight)| {
                let addr = subchannels[index].endpoint.addr.clone();
                let phase = state.phases.get(&addr).copied().unwrap_or(NEW_PHASE);
                Entry {
                    index,
                    addr,
                    weight,
                    phase,
                }
            })
            .collect();
        let table = schedule(&entries);
        let start = if first && self.config.random_start && !table.is_empty() {
            PickRng::new(self.config.seed).below(table.len())
        } else {
            0
        };
        let picker = Arc::new(WrrPicker {
            table,
            entries,
            next: Padded(AtomicUsize::new(start)),
        });
        state.last = Some(picker.clone());
        picker
    }
}

// ===== schedule =====

struct Entry {
    /// Index in the subchannel slice.
    index: usize,
    addr: Address,
    /// Scheduling weight, after GCD reduction and fitting.
    weight: u64,
    /// The first deadline is `phase / PHASE_ONE / weight` of a period.
    phase: u64,
}

/// Divides by the GCD and, when the sum is still above [`MAX_SCHEDULE_LEN`], scales down
/// (rounding, at least 1 each).
fn fit_weights(mut w: Vec<u64>) -> Vec<u64> {
    let reduce = |w: &mut Vec<u64>| {
        let g = w.iter().fold(0, |g, &x| gcd(g, x)).max(1);
        w.iter_mut().for_each(|x| *x /= g);
    };
    reduce(&mut w);
    let sum: u64 = w.iter().sum();
    if sum as usize > MAX_SCHEDULE_LEN {
        let target = MAX_SCHEDULE_LEN.saturating_sub(w.len()).max(w.len()) as u128;
        for x in &mut w {
            let scaled = (u128::from(*x) * target + u128::from(sum) / 2) / u128::from(sum);
            *x = (scaled as u64).max(1);
        }
        reduce(&mut w);
    }
    w
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of the EDF schedule: the `sum(weight)` earliest deadlines, in order (ties to
/// the earlier entry). Deadlines are compared exactly, as fractions, so every entry gets
/// exactly `weight` slots per period.
fn schedule(entries: &[Entry]) -> Vec<u32> {
    /// The `k`-th deadline of entry `pos`: `(phase + k·ONE) / weight`, ordered earliest
    /// first in a max-heap.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u128,
        weight: u128,
        pos: usize,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (o.num * self.weight)
                .cmp(&(self.num * o.weight))
                .then(o.pos.cmp(&self.pos))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let len: u64 = entries.iter().map(|e| e.weight).sum();
    let mut heap: BinaryHeap<Due> = entries
        .iter()
        .enumerate()
        .map(|(pos, e)| Due {
            num: u128::from(e.phase),
            weight: u128::from(e.weight),
            pos,
        })
        .collect();
    let mut table = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let Some(mut due) = heap.pop() else { break };
        table.push(entries[due.pos].index as u32);
        due.num += u128::from(PHASE_ONE);
        heap.push(due);
    }
    table
}

// ===== WrrPicker =====

struct WrrPicker {
    /// Subchannel indices, one period of the schedule.
    table: Vec<u32>,
    entries: Vec<Entry>,
    next: Padded<AtomicUsize>,
}

impl WrrPicker {
    /// Records each entry's phase as of the picks made so far, so the next picker
    /// continues the rotation instead of restarting it.
    fn save_phases(&self, phases: &mut HashMap<Address, u64>) {
        if self.table.is_empty() {
            return;
        }
        let done = self.next.0.load(Ordering::Relaxed) % self.table.len();
        let mut pos_of = HashMap::with_capacity(self.entries.len());
        for (pos, e) in self.entries.iter().enumerate() {
            pos_of.insert(e.index as u32, pos);
        }
        let mut taken = vec![0u64; self.entries.len()];
        for slot in &self.table[..done] {
            if let Some(&pos) = pos_of.get(slot) {
                taken[pos] += 1;
            }
        }
        // V, the deadline of the last pick made, as num_l / w_l.
        let last = done
            .checked_sub(1)
            .and_then(|i| pos_of.get(&self.table[i]).copied());
        for (pos, e) in self.entries.iter().enumerate() {
            let next_num = i128::from(e.phase) + i128::from(taken[pos]) * i128::from(PHASE_ONE);
            let phase = match last {
                None => e.phase,
                Some(l) => {
                    let le = &self.entries[l];
                    let v_num =
                        i128::from(le.phase) + (i128::from(taken[l]) - 1) * i128::from(PHASE_ONE);
                    // (d_e − V) · w_e with d_e = next_num / w_e and V = v_num / w_l.
                    let num = next_num * i128::from(le.weight) - v_num * i128::from(e.weight);
                    let phase = num / i128::from(le.weight);
                    phase.clamp(0, i128::from(PHASE_ONE - 1)) as u64
                }
            };
            phases.insert(e.addr.clone(), phase);
        }
    }
}

impl Picker for WrrPicker {
    fn pick(&self, _req: &PickRequest<'_>) -> Pick {
        if self.table.is_empty() {
            return Pick::Queue;
        }
        let n = self.next.0.fetch_add(1, Ordering::Relaxed);
        Pick::Ready(self.table[n % self.table.len()] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectivityState::*;
    use crate::test_util::{counts, five_sigma_samples, pick_n, subchannels, weighted};

    fn fixed() -> WeightedRoundRobin {
        WeightedRoundRobin::new(WeightedRoundRobinConfig::default().random_start(false))
    }

    #[test]
    fn smooth_order() {
        let picker = fixed().build(&weighted(&[3, 1]));
        assert_eq!(pick_n(&*picker, 8), [0, 0, 1, 0, 0, 0, 1, 0]);
        let picker = fixed().build(&weighted(&[2, 1, 1]));
        assert_eq!(pick_n(&*picker, 4), [0, 1, 2, 0]);
    }

    #[test]
    fn ratios_within_5_percent() {
        const TOL: f64 = 0.05;
        for (seed, weights) in [(1u64, vec![5u32, 3, 1, 1]), (2, vec![1, 2, 3, 4, 100])] {
            let subs = weighted(&weights);
            let policy = WeightedRoundRobin::new(WeightedRoundRobinConfig::default().seed(seed));
            let picker = policy.build(&subs);
            let total: u32 = weights.iter().sum();
            let pmin = f64::from(*weights.iter().min().unwrap_or(&1)) / f64::from(total);
            let n = five_sigma_samples(pmin, TOL * pmin);
            let c = counts(&pick_n(&*picker, n), weights.len());
            for (i, &w) in weights.iter().enumerate() {
                let want = f64::from(w) / f64::from(total);
                let got = c[i] as f64 / n as f64;
                assert!(
                    (got - want).abs() <= TOL * want,
                    "{i}: {got} vs {want} {c:?}"
                );
            }
        }
    }

    #[test]
    fn zero_and_huge_weights() {
        let c = counts(&pick_n(&*fixed().build(&weighted(&[0, 2, 1])), 300), 3);
        assert_eq!(c, [0, 200, 100]);
        let c = counts(&pick_n(&*fixed().build(&weighted(&[0, 0])), 100), 2);
        assert_eq!(c, [50, 50]);
        // Equal huge weights reduce to 1:1.
        let c = counts(&pick_n(&*fixed().build(&weighted(&[u32::MAX; 2])), 100), 2);
        assert_eq!(c, [50, 50]);
        // Very uneven weights are scaled to fit the table; the small one keeps a slot.
        let picker = fixed().build(&weighted(&[u32::MAX, 1, 7]));
        let n = MAX_SCHEDULE_LEN * 2;
        let c = counts(&pick_n(&*picker, n), 3);
        assert!(c[1] >= 2 && c[1] <= c[2] && c[0] > n - 16, "{c:?}");
    }

    #[test]
    fn skips_not_ready() {
        let subs = subchannels(&[Ready, Connecting, Ready]);
        let c = counts(&pick_n(&*fixed().build(&subs), 10), 3);
        assert_eq!(c, [5, 0, 5]);
    }

    #[test]
    fn position_survives_rebuild_and_reweight() {
        let policy = fixed();
        let mut subs = weighted(&[1, 1, 1]);
        assert_eq!(pick_n(&*policy.build(&subs), 1), [0]);
        // Endpoint 2 is re-weighted: 1 and 2 are still due before 0 comes again.
        subs[2].endpoint.weight = 2;
        assert_eq!(pick_n(&*policy.build(&subs), 5), [1, 2, 2, 0, 1]);
        // After those 5 (one whole period of 1+1+2 plus one), a new endpoint joins; the
        // rotation continues with 2, 2 rather than restarting at 0.
        let mut more = weighted(&[1, 1, 2, 1]);
        more[..3].clone_from_slice(&subs);
        let picks = pick_n(&*policy.build(&more), 5);
        assert_eq!(&picks[..2], [2, 2], "{picks:?}");
        assert_eq!(counts(&picks, 4)[3], 1, "{picks:?}");
    }
}
