//! Trending items: exponentially decayed event counts. An event on item `i` at time `t` adds
//! `2^(-(now - t) / half_life)` to `i`'s count at time `now`, so a burst of events on one item lifts it
//! to the top within those events, and it fades by half every half-life.
//!
//! Counts are kept in the log domain against a fixed origin, `key(i) = ln Σ_e 2^(t_e / half_life)`, so
//! that no count ever needs decaying (every count decays by the same factor, which changes no order and
//! no ratio) and no exponent overflows however long the server runs. Scores are relative to the top
//! item: `score(i) = exp(key(i) - key(top))`, 1 for the top item. They depend on the events' own times
//! only, never on the clock, so replaying a log gives the same state as living through it.

use std::cmp::Ordering;
use std::collections::BTreeSet;

/// A total order on the keys (no NaN ever enters: times are finite).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Key(f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Decayed counts per item index, with the items in key order.
#[derive(Clone, Debug)]
pub struct Trending {
    /// ln 2 / half-life in ms.
    rate: f64,
    half_life_s: f64,
    /// Per item, its key (`NEG_INFINITY`: no event yet).
    keys: Vec<f64>,
    /// (key, item) of every item with an event; the greatest key is the top item. Ties: the lower
    /// item first, as everywhere else (see [`Trending::top`]).
    order: BTreeSet<(Key, std::cmp::Reverse<u32>)>,
}

impl Trending {
    /// `half_life_s` must be positive and finite (callers check what users give).
    pub fn new(half_life_s: f64) -> Self {
        assert!(half_life_s > 0.0 && half_life_s.is_finite());
        Trending {
            rate: std::f64::consts::LN_2 / (half_life_s * 1000.0),
            half_life_s,
            keys: Vec::new(),
            order: BTreeSet::new(),
        }
    }

    pub fn half_life_s(&self) -> f64 {
        self.half_life_s
    }

    /// Items with at least one event.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Counts one event on `item` at `at_ms` (Unix epoch ms; any order of times is fine).
    pub fn observe(&mut self, item: u32, at_ms: i64) {
        self.add_key(item, at_ms as f64 * self.rate);
    }

    /// Adds `key` (a count in the log domain, see the module's documentation) to `item`'s.
    fn add_key(&mut self, item: u32, add: f64) {
        let i = item as usize;
        if i >= self.keys.len() {
            self.keys.resize(i + 1, f64::NEG_INFINITY);
        }
        let old = self.keys[i];
        let new = if old == f64::NEG_INFINITY {
            add
        } else {
            self.order.remove(&(Key(old), std::cmp::Reverse(item)));
            // ln(e^old + e^add), computed from the larger side.
            let (hi, lo) = if old > add { (old, add) } else { (add, old) };
            hi + (lo - hi).exp().ln_1p()
        };
        self.keys[i] = new;
        self.order.insert((Key(new), std::cmp::Reverse(item)));
    }

    /// Every item with a count, and its count in the log domain (what [`Trending::from_entries`]
    /// takes back: a snapshot of the counts that survives a restart, however long ago the origin).
    pub fn entries(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.order
            .iter()
            .map(|&(Key(k), std::cmp::Reverse(i))| (i, k))
    }

    /// Counts from [`Trending::entries`] (an item listed twice has its counts added).
    pub fn from_entries(half_life_s: f64, entries: impl IntoIterator<Item = (u32, f64)>) -> Self {
        let mut t = Trending::new(half_life_s);
        for (item, key) in entries {
            if key.is_finite() {
                t.add_key(item, key);
            }
        }
        t
    }

    /// The same counts under another numbering of the items: item `i` becomes `map(i)`, or is
    /// dropped when that is None (two items mapped to one have their counts added).
    pub fn remapped(&self, map: impl Fn(u32) -> Option<u32>) -> Trending {
        let entries = self.entries().filter_map(|(i, k)| Some((map(i)?, k)));
        Trending::from_entries(self.half_life_s, entries.collect::<Vec<_>>())
    }

    fn top_key(&self) -> Option<f64> {
        self.order.last().map(|(k, _)| k.0)
    }

    /// `item`'s count relative to the top item's (0 for an item without events).
    pub fn score(&self, item: u32) -> f32 {
        match (self.keys.get(item as usize), self.top_key()) {
            (Some(&k), Some(top)) if k > f64::NEG_INFINITY => (k - top).exp() as f32,
            _ => 0.0,
        }
    }

    /// The up to `k` items with the highest counts, best first (ties to the lower item), with their
    /// relative scores, skipping `exclude` (sorted).
    pub fn top(&self, k: usize, exclude: &[u32]) -> Vec<(u32, f32)> {
        let Some(top) = self.top_key() else {
            return Vec::new();
        };
        self.order
            .iter()
            .rev()
            .filter(|(_, i)| exclude.binary_search(&i.0).is_err())
            .take(k)
            .map(|(key, i)| (i.0, (key.0 - top).exp() as f32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remapping_keeps_counts_under_new_numbers() {
        let mut t = Trending::new(10.0);
        t.observe(0, 0);
        t.observe(1, 10_000);
        t.observe(2, 10_000);
        t.observe(2, 10_000);
        // 2 → 0, 1 → 5, 0 dropped.
        let r = t.remapped(|i| [None, Some(5), Some(0)][i as usize]);
        assert_eq!(r.top(5, &[]), [(0, 1.0), (5, 0.5)]);
        assert_eq!(r.half_life_s(), 10.0);
        // Merged: 1 and 2 both → 3 (one plus two events at the same time).
        let m = t.remapped(|i| (i > 0).then_some(3));
        let mut want = Trending::new(10.0);
        (0..3).for_each(|_| want.observe(3, 10_000));
        assert!((m.keys[3] - want.keys[3]).abs() < 1e-12);
        assert_eq!(m.len(), 1);
        // Entries give the same counts back.
        let back = Trending::from_entries(10.0, t.entries().collect::<Vec<_>>());
        assert_eq!(back.keys, t.keys);
        assert_eq!(back.top(5, &[]), t.top(5, &[]));
    }

    #[test]
    fn decays_by_half_every_half_life() {
        let mut t = Trending::new(10.0);
        t.observe(1, 0);
        t.observe(2, 10_000); // one half-life later: worth twice item 1's event
        assert_eq!(
            t.top(5, &[]).iter().map(|p| p.0).collect::<Vec<_>>(),
            [2, 1]
        );
        assert!((t.score(1) - 0.5).abs() < 1e-6 && t.score(2) == 1.0);
        // Two more events on 1 at time 10 s: 0.5 + 2 = 2.5 against 1.
        t.observe(1, 10_000);
        t.observe(1, 10_000);
        assert_eq!(t.top(1, &[]), [(1, 1.0)]);
        assert!((t.score(2) - 0.4).abs() < 1e-6, "{}", t.score(2));
        assert_eq!(t.score(7), 0.0);
        assert_eq!(t.top(5, &[1]), [(2, 0.4)]);
    }

    #[test]
    fn a_burst_overtakes_a_long_history_and_times_far_from_the_origin_stay_finite() {
        let mut t = Trending::new(60.0);
        let start = 1_800_000_000_000; // 2027, ~10^9 half-lives from the origin
        for s in 0..600 {
            t.observe(0, start + s * 1000); // one event a second for ten minutes
        }
        // Item 0's count is now Σ_{j=1..600} 2^(-j/60) = 85.9: the 86th event of a burst on item 9
        // (all within 86 ms) overtakes it.
        let burst = start + 600_000;
        let mut n = 0;
        while t.top(1, &[])[0].0 != 9 {
            t.observe(9, burst + n);
            n += 1;
        }
        assert_eq!(n, 86);
        assert!(t.top(2, &[]).iter().all(|p| p.1.is_finite() && p.1 > 0.0));
        // Out-of-order times are fine: the count is a sum.
        let mut a = Trending::new(60.0);
        let mut b = Trending::new(60.0);
        for (i, at) in [(1, 5_000), (2, 1_000), (1, 3_000)] {
            a.observe(i, at);
        }
        for (i, at) in [(1, 3_000), (1, 5_000), (2, 1_000)] {
            b.observe(i, at);
        }
        let (a, b) = (a.top(2, &[]), b.top(2, &[]));
        assert_eq!((a[0].0, a[1].0), (b[0].0, b[1].0));
        assert!((a[1].1 - b[1].1).abs() < 1e-6, "{a:?} {b:?}");
    }

    #[test]
    fn ties_go_to_the_lower_item() {
        let mut t = Trending::new(1.0);
        t.observe(5, 0);
        t.observe(3, 0);
        assert_eq!(t.top(2, &[]), [(3, 1.0), (5, 1.0)]);
    }
}
