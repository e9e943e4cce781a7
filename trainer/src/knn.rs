//! Session-kNN, the V-SKNN variant of Ludewig & Jannach ("Evaluation of session-based recommendation
//! algorithms", 2018; session-rec's `VMContextKNN`), over an index that can learn from a live stream.
//!
//! For a session `s = (i_1 … i_n)` (repeats kept):
//! 1. **Candidates**: the `sample_size` most recently indexed sessions that share an item with `s`.
//! 2. **Similarity** of a candidate `c`: `Σ_{i ∈ set(s) ∩ c} w(i) / |set(s)|`, where `w(i) = (p/n)²` and
//!    `p` is the 1-based position of `i`'s last occurrence in `s` (quadratic position weighting: what
//!    the user did last counts most).
//! 3. **Neighbours**: the `k` most similar candidates (ties: the more recent first).
//! 4. **Item scores**: every item `j` of every neighbour `c` gains `sim(c) · (1 + idf_weight · idf(j)) /
//!    d(c)`, where `d(c)` is the distance from the end of `s` to the latest item of `s` found in `c`
//!    (1 = the current item; "div" score weighting) and `idf(j) = ln(training sessions / training
//!    events on j)`.
//!
//! The index keeps each session's distinct items and an ordering by recency: every insert or update
//! gets the next sequence number, so "most recent" is "highest sequence number" and each item's posting
//! list is already sorted. A session that is updated (a live session's next event) gets a new number
//! and its old postings are taken out of their lists then and there (they sit near the lists' ends,
//! since live sessions are recent), so every posting names a live session and a query never walks
//! past stale ones. At most `capacity` sessions are kept: the least recently updated one is evicted
//! first.

use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::data::Sessions;

/// V-SKNN's parameters. The defaults are the configuration session-rec's authors found best on RSC15
/// (k = 500 neighbours from the 5,000 most recent candidate sessions, idf weighting 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnParams {
    /// Neighbours whose items are scored.
    pub k: usize,
    /// Most recent candidate sessions whose similarity is computed.
    pub sample_size: usize,
    /// Weight of the idf term in an item's score (0 turns it off).
    pub idf_weight: f64,
    /// Sessions the index keeps (the least recently updated one is evicted first).
    pub capacity: usize,
}

impl Default for KnnParams {
    fn default() -> Self {
        KnnParams {
            k: 500,
            sample_size: 5000,
            idf_weight: 5.0,
            capacity: usize::MAX,
        }
    }
}

/// Who a session in the index belongs to: a live session can be updated; a training one cannot.
pub type Owner = u64;

#[derive(Clone)]
struct Entry {
    /// Distinct items, sorted.
    items: Box<[u32]>,
    owner: Option<Owner>,
}

/// Sessions by recency and, per item, the sessions holding it.
#[derive(Clone)]
pub struct KnnIndex {
    params: KnnParams,
    /// `entries[seq - base]`; `None` once the session was updated under a newer sequence number.
    entries: VecDeque<Option<Entry>>,
    base: u64,
    live: usize,
    /// Per item, the ascending sequence numbers of the live sessions holding it.
    postings: Vec<VecDeque<u64>>,
    owners: HashMap<Owner, u64>,
    /// Per item, `1 + idf_weight · idf`: the factor of its score (see the module's step 4).
    item_factor: Vec<f64>,
    /// The factor of an item the training sessions never held (a new item).
    unseen_factor: f64,
    scratch: Scratch,
}

/// Working memory of [`KnnIndex::score_with`]: a dense score per item, reset after each use. One per
/// thread that scores.
#[derive(Default, Clone)]
pub struct Scratch {
    scores: Vec<f64>,
    touched: Vec<u32>,
}

/// One distinct item of a query session: the weight and the position (0-based) of its last
/// occurrence.
#[derive(Clone, Copy, Debug)]
struct Weighted {
    item: u32,
    weight: f64,
    last: usize,
}

/// The distinct items of `items` (oldest first, repeats kept), ascending, each weighted by the
/// position of its last occurrence: `((p + 1) / n)²`.
fn weigh(items: &[u32]) -> Vec<Weighted> {
    let n = items.len();
    let mut weighted: Vec<Weighted> = items
        .iter()
        .enumerate()
        .map(|(p, &item)| Weighted {
            item,
            weight: ((p + 1) as f64 / n as f64).powi(2),
            last: p,
        })
        .collect();
    weighted.reverse();
    weighted.sort_by_key(|w| w.item); // stable: the last occurrence stays first per item
    weighted.dedup_by_key(|w| w.item);
    weighted
}

/// How many neighbours ahead of the one being scored its item list is prefetched.
const PREFETCH_AHEAD: usize = 4;

/// Asks the cache for the line at `p` ahead of its use (a hint: it never faults, and does nothing
/// where the target has no such instruction).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing architecturally and cannot fault, whatever the address;
    // SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A candidate neighbour: its sequence number, similarity, and the latest position (0-based) in
/// the query session of an item it shares.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    seq: u64,
    sim: f64,
    latest: usize,
}

/// Keeps the `k` most similar of `candidates` (most recent first, as [`KnnIndex::candidates`]
/// gives them), ties to the more recent, in their order: the `k`-th highest similarity is found
/// among the bare similarities, then one pass keeps what is above it and the first ties.
fn keep_most_similar(candidates: &mut Vec<Candidate>, k: usize) {
    if candidates.len() <= k {
        return;
    }
    if k == 0 {
        candidates.clear();
        return;
    }
    let mut sims: Vec<f64> = candidates.iter().map(|c| c.sim).collect();
    let (_, &mut kth, _) = sims.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let mut ties = k - candidates.iter().filter(|c| c.sim > kth).count();
    candidates.retain(|c| {
        let tie = c.sim == kth && ties > 0;
        ties -= usize::from(tie);
        c.sim > kth || tie
    });
}

/// The candidates of [`KnnIndex::candidates`] as its merge finds them.
struct Sample {
    out: Vec<Candidate>,
    size: usize,
    /// The querying session's own sequence number (`u64::MAX`: none), left out.
    own: u64,
    norm: f64,
    /// The session whose pairs are being summed (`seq` `u64::MAX`: none yet).
    current: Candidate,
    /// The sum of a candidate that shares every item, as the merge sums it (descending item
    /// order), and how many of those are wanted before the rest cannot matter.
    full: f64,
    enough: usize,
    full_seen: usize,
}

impl Sample {
    /// Takes the pair (session `seq`, shared item `w`); true once the sample is complete.
    #[inline]
    fn take(&mut self, seq: u64, w: &Weighted) -> bool {
        if seq != self.current.seq {
            if self.finish() {
                return true;
            }
            self.current = Candidate {
                seq,
                sim: 0.0,
                latest: 0,
            };
        }
        self.current.sim += w.weight;
        self.current.latest = self.current.latest.max(w.last);
        false
    }

    /// Ends the session being summed; true once the sample is complete.
    fn finish(&mut self) -> bool {
        let c = self.current;
        if c.seq != u64::MAX && c.seq != self.own {
            self.full_seen += usize::from(c.sim == self.full);
            self.out.push(Candidate {
                sim: c.sim / self.norm,
                ..c
            });
        }
        self.out.len() == self.size || self.full_seen == self.enough
    }
}

impl KnnIndex {
    /// An index of the training sessions, oldest first by their last event's time (ties keep their
    /// order), with idf from the training events. `n_items` is the catalogue size (items are indices).
    pub fn fit(train: &Sessions, n_items: usize, params: KnnParams) -> Self {
        let mut counts = vec![0u64; n_items];
        for &i in &train.items {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        }
        let n_sessions = train.len().max(1) as f64;
        let factor = |idf: f64| 1.0 + params.idf_weight * idf;
        let item_factor = counts
            .iter()
            .map(|&c| factor((n_sessions / c.max(1) as f64).ln()))
            .collect();
        let mut index = KnnIndex {
            params,
            entries: VecDeque::new(),
            base: 0,
            live: 0,
            postings: vec![VecDeque::new(); n_items],
            owners: HashMap::new(),
            item_factor,
            unseen_factor: factor(n_sessions.ln()),
            scratch: Scratch::default(),
        };
        let mut order: Vec<usize> = (0..train.len()).collect();
        let end = |s: usize| train.session_times(s).last().copied().unwrap_or(f64::MIN);
        order.sort_by(|&a, &b| end(a).total_cmp(&end(b)));
        for s in order {
            index.insert(train.session(s), None);
        }
        index
    }

    pub fn params(&self) -> &KnnParams {
        &self.params
    }

    /// Sessions held (training and live).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Makes `owner`'s session hold `items` (its whole history so far) and the most recent one.
    pub fn upsert(&mut self, owner: Owner, items: &[u32]) {
        if let Some(seq) = self.owners.remove(&owner) {
            self.retire(seq);
        }
        if let Some(seq) = self.insert(items, Some(owner)) {
            self.owners.insert(owner, seq);
        }
        self.compact_if_stale();
    }

    /// Slots held, retired ones included (what memory is proportional to, with the postings).
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// Every update retires a session's previous entry, which leaves a hole in `entries` until
    /// eviction reaches it, and eviction only runs at capacity: a long-running server below
    /// capacity would keep every event's hole. Once the holes outnumber the live
    /// sessions (and a few thousand), the index is renumbered without them: O(entries + postings),
    /// at most once per as many updates as there are live sessions, so O(1) amortised per update.
    /// Renumbering keeps the order, so no answer changes.
    fn compact_if_stale(&mut self) {
        let stale = self.entries.len() - self.live;
        if stale <= self.live.max(4096) {
            return;
        }
        // Old slot → new sequence number (u64::MAX: a hole).
        let mut renumber = Vec::with_capacity(self.entries.len());
        let mut next = 0u64;
        for e in &self.entries {
            renumber.push(if e.is_some() {
                next += 1;
                next - 1
            } else {
                u64::MAX
            });
        }
        let base = self.base;
        let map = |seq: u64| renumber[(seq - base) as usize];
        // Every posting names a live session (see `retire`), so none maps to a hole.
        for list in &mut self.postings {
            list.iter_mut().for_each(|seq| *seq = map(*seq));
        }
        for seq in self.owners.values_mut() {
            *seq = map(*seq);
        }
        self.entries.retain(Option::is_some);
        self.base = 0;
    }

    /// Forgets `owner`'s session (a deleted session).
    pub fn remove(&mut self, owner: Owner) {
        if let Some(seq) = self.owners.remove(&owner) {
            self.retire(seq);
        }
    }

    /// Takes a session's entry out, and its postings with it.
    fn retire(&mut self, seq: u64) {
        let at = (seq - self.base) as usize;
        let Some(entry) = self.entries.get_mut(at).and_then(Option::take) else {
            return;
        };
        self.live -= 1;
        for &i in entry.items.iter() {
            let list = &mut self.postings[i as usize];
            if let Ok(p) = list.binary_search(&seq) {
                list.remove(p);
            }
        }
    }

    fn insert(&mut self, items: &[u32], owner: Option<Owner>) -> Option<u64> {
        let mut set: Vec<u32> = items.to_vec();
        set.sort_unstable();
        set.dedup();
        if set.is_empty() || self.params.capacity == 0 {
            return None;
        }
        let seq = self.base + self.entries.len() as u64;
        for &i in &set {
            if i as usize >= self.postings.len() {
                self.postings.resize(i as usize + 1, VecDeque::new());
            }
            self.postings[i as usize].push_back(seq);
        }
        self.entries.push_back(Some(Entry {
            items: set.into_boxed_slice(),
            owner,
        }));
        self.live += 1;
        while self.live > self.params.capacity {
            self.evict_oldest();
        }
        Some(seq)
    }

    fn evict_oldest(&mut self) {
        let Some(front) = self.entries.pop_front() else {
            return;
        };
        let seq = self.base;
        self.base += 1;
        if let Some(entry) = front {
            self.live -= 1;
            if let Some(owner) = entry.owner {
                self.owners.remove(&owner);
            }
            // Postings are ascending and live, so `seq` is at the front of each of its items' lists.
            for &i in entry.items.iter() {
                let list = &mut self.postings[i as usize];
                debug_assert_eq!(list.front(), Some(&seq));
                list.pop_front();
            }
        }
    }

    #[cfg(test)]
    fn entry(&self, seq: u64) -> Option<&Entry> {
        let at = seq.checked_sub(self.base)? as usize;
        self.entries.get(at)?.as_ref()
    }

    /// The up to `sample_size` most recent sessions sharing an item with the session (descending
    /// sequence numbers), leaving out `own` (the querying session's entry), each with its
    /// similarity: the weights in `weighted` (items ascending, with their position weight) of the
    /// items it shares, over `weighted.len()`.
    ///
    /// The merge stops early once `enough` of them share every item of the session: no older
    /// candidate can be more similar than those, and at equal similarity the more recent are the
    /// neighbours, so the `enough` most similar of this shorter sample are those of the whole one
    /// (always so for a session of one distinct item, whose candidates are all equally similar).
    ///
    /// A k-way merge from the back of each shared item's posting list visits the newest sequence
    /// number first, and each (item, session) pair once: the shared weights are summed as the pairs
    /// come, so no candidate's items are read. A session's pairs come together (the heap orders by
    /// sequence number), in descending item order, which is the order they are summed in.
    fn candidates(&self, weighted: &[Weighted], own: Option<u64>, enough: usize) -> Vec<Candidate> {
        // Per shared item, the place in its posting list of the pair the heap holds for it.
        let mut at: Vec<usize> = Vec::with_capacity(weighted.len());
        let mut heap: BinaryHeap<(u64, usize)> = BinaryHeap::with_capacity(weighted.len());
        for (n, &Weighted { item: i, .. }) in weighted.iter().enumerate() {
            let list = self.postings.get(i as usize);
            at.push(list.map_or(0, |l| l.len().saturating_sub(1)));
            if let Some(&last) = list.and_then(VecDeque::back) {
                heap.push((last, n));
            }
        }
        let mut sample = Sample {
            out: Vec::with_capacity(self.params.sample_size.min(1 << 16)),
            size: self.params.sample_size,
            own: own.unwrap_or(u64::MAX),
            norm: weighted.len() as f64,
            current: Candidate {
                seq: u64::MAX,
                sim: 0.0,
                latest: 0,
            },
            full: weighted.iter().rev().fold(0.0, |sum, w| sum + w.weight),
            enough,
            full_seen: 0,
        };
        loop {
            if heap.len() <= 1 {
                // The last list left (often the only one): walk it without the heap.
                if let Some((_, n)) = heap.pop() {
                    let list = &self.postings[weighted[n].item as usize];
                    for &seq in list.range(..=at[n]).rev() {
                        if sample.take(seq, &weighted[n]) {
                            return sample.out;
                        }
                    }
                }
                break;
            }
            let mut top = heap.peek_mut().expect("two lists or more");
            let (seq, n) = *top;
            if sample.take(seq, &weighted[n]) {
                return sample.out;
            }
            if at[n] == 0 {
                PeekMut::pop(top);
            } else {
                at[n] -= 1;
                // Replaced in place: one sift down instead of a pop and a push.
                *top = (self.postings[weighted[n].item as usize][at[n]], n);
            }
        }
        sample.finish();
        sample.out
    }

    /// Scores for the session `items` (oldest first, repeats kept); `own` is its live owner, left out
    /// of its own neighbours. Returns `(item, score)` for every item any neighbour holds.
    pub fn score(&mut self, items: &[u32], own: Option<Owner>) -> Vec<(u32, f32)> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let out = self.score_with(items, own, &mut scratch);
        self.scratch = scratch;
        out
    }

    /// [`KnnIndex::score`] with the caller's working memory, so that several threads can score at
    /// once.
    pub fn score_with(
        &self,
        items: &[u32],
        own: Option<Owner>,
        scratch: &mut Scratch,
    ) -> Vec<(u32, f32)> {
        let n = items.len();
        // Distinct items with the weight of their last occurrence.
        let weighted = weigh(items);
        let own_seq = own.and_then(|o| self.owners.get(&o).copied());

        let mut neighbours = self.candidates(&weighted, own_seq, self.params.k);
        keep_most_similar(&mut neighbours, self.params.k);

        // The neighbours' item lists, gathered first: their entries are scattered over the index,
        // and loads that do not wait on each other overlap their cache misses.
        let lists: Vec<(&[u32], f64, f64)> = neighbours
            .iter()
            .filter_map(|c| {
                let entry = self.entries[(c.seq - self.base) as usize].as_ref()?;
                // Steps back from the session's end to the latest item the neighbour shares (1:
                // its last item).
                let decay = 1.0 / (n - c.latest) as f64;
                Some((&entry.items[..], c.sim, decay))
            })
            .collect();
        let Scratch { scores, touched } = scratch;
        for (at, &(other, sim, decay)) in lists.iter().enumerate() {
            if let Some(ahead) = lists.get(at + PREFETCH_AHEAD) {
                prefetch(ahead.0.as_ptr());
            }
            for &j in other {
                let factor = self
                    .item_factor
                    .get(j as usize)
                    .copied()
                    .unwrap_or(self.unseen_factor);
                let j = j as usize;
                if j >= scores.len() {
                    scores.resize(j + 1, 0.0);
                }
                if scores[j] == 0.0 {
                    touched.push(j as u32);
                }
                scores[j] += sim * factor * decay;
            }
        }
        let out = touched
            .iter()
            .map(|&j| (j, scores[j as usize] as f32))
            .collect();
        for &j in touched.iter() {
            scores[j as usize] = 0.0;
        }
        touched.clear();
        out
    }

    /// The `k` best items for the session (score descending, ties to the lower, i.e. more popular,
    /// index), filled with the most popular items when the neighbours hold fewer than `k`.
    pub fn recommend(&mut self, items: &[u32], own: Option<Owner>, k: usize) -> Vec<u32> {
        let mut scored = self.score(items, own);
        crate::eval::top_k(&mut scored, k);
        let ranked = scored.into_iter().map(|(i, _)| i);
        crate::eval::fill_popular(ranked, k, self.postings.len() as u32, &[])
    }
}

/// `Σ w(i)` over the items of `weighted` (sorted by item) that are in `other` (sorted), summed from
/// the highest item down: what [`KnnIndex::candidates`] sums as the posting lists merge (checked
/// against this in the tests).
#[cfg(test)]
fn intersect_weight(weighted: &[Weighted], other: &[u32]) -> f64 {
    weighted
        .iter()
        .rev()
        .filter(|w| other.binary_search(&w.item).is_ok())
        .fold(0.0, |sum, w| sum + w.weight)
}

/// V-SKNN as an evaluation recommender. Frozen, it answers from the training sessions only; live, every
/// observed event also updates the session's own entry in the index (as the server's speed layer
/// does), so later sessions find the earlier test sessions as neighbours.
pub struct SessionKnn {
    index: KnnIndex,
    live: bool,
    owner: Owner,
    session: Vec<u32>,
}

impl SessionKnn {
    pub fn new(index: KnnIndex, live: bool) -> Self {
        SessionKnn {
            index,
            live,
            owner: 0,
            session: Vec::new(),
        }
    }
}

impl crate::eval::SessionRecommender for SessionKnn {
    fn name(&self) -> &str {
        if self.live { "sknn-live" } else { "sknn" }
    }
    fn reset(&mut self) {
        self.session.clear();
        self.owner += 1;
    }
    fn observe(&mut self, item: u32) {
        self.session.push(item);
        if self.live {
            self.index.upsert(self.owner, &self.session);
        }
    }
    fn recommend(&mut self, k: usize) -> Vec<u32> {
        let own = self.live.then_some(self.owner);
        self.index.recommend(&self.session, own, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions ending at times 10, 20, 30 (given out of order, to check the recency order).
    fn train() -> Sessions {
        let list: [(&[u32], f64); 3] = [(&[2, 3], 20.0), (&[4, 5], 30.0), (&[1, 2], 10.0)];
        let mut s = Sessions::default();
        for (items, end) in list {
            s.items.extend_from_slice(items);
            s.times.extend(items.iter().map(|_| end));
            s.offsets.push(s.items.len());
            s.keys.push(format!("{end}"));
        }
        s
    }

    fn params(k: usize, sample_size: usize, idf_weight: f64) -> KnnParams {
        KnnParams {
            k,
            sample_size,
            idf_weight,
            capacity: usize::MAX,
        }
    }

    fn scores(index: &mut KnnIndex, items: &[u32], own: Option<Owner>) -> Vec<(u32, f32)> {
        let mut s = index.score(items, own);
        s.sort_by_key(|&(i, _)| i);
        s
    }

    #[test]
    fn scores_by_co_occurrence_and_idf() {
        // [2] → both sessions holding 2, similarity 1 each, decay 1.
        let mut index = KnnIndex::fit(&train(), 6, params(500, 5000, 0.0));
        assert_eq!(
            scores(&mut index, &[2], None),
            [(1, 1.0), (2, 2.0), (3, 1.0)]
        );
        assert_eq!(index.recommend(&[2], None, 3), [2, 1, 3]);
        // idf = ln(3 sessions / events): items 1 and 3 are rarer than 2 and overtake it.
        let mut index = KnnIndex::fit(&train(), 6, params(500, 5000, 5.0));
        let (rare, common) = (1.0 + 5.0 * 3f64.ln(), 2.0 * (1.0 + 5.0 * 1.5f64.ln()));
        let got = scores(&mut index, &[2], None);
        assert!((got[0].1 as f64 - rare).abs() < 1e-5 && (got[1].1 as f64 - common).abs() < 1e-5);
        assert_eq!(index.recommend(&[2], None, 3), [1, 3, 2]);
    }

    #[test]
    fn weights_positions_quadratically_and_decays_by_distance() {
        // [1, 3]: w(1) = (1/2)² = 0.25, w(3) = 1, over 2 distinct items. {1,2} has sim 0.125 and is
        // reached through item 1, two steps from the end (decay 1/2); {2,3} has sim 0.5, decay 1.
        let mut index = KnnIndex::fit(&train(), 6, params(2, 5000, 0.0));
        assert_eq!(
            scores(&mut index, &[1, 3], None),
            [(1, 0.0625), (2, 0.5625), (3, 0.5)]
        );
        // k = 1 keeps only the most similar neighbour.
        let mut index = KnnIndex::fit(&train(), 6, params(1, 5000, 0.0));
        assert_eq!(scores(&mut index, &[1, 3], None), [(2, 0.5), (3, 0.5)]);
        // A repeated item counts at its last position: [3, 1, 3] weighs 3 fully, 1 by (2/3)².
        let mut index = KnnIndex::fit(&train(), 6, params(2, 5000, 0.0));
        let got = scores(&mut index, &[3, 1, 3], None);
        let w1 = (2.0f64 / 3.0).powi(2) / 2.0;
        assert!((got[0].1 as f64 - w1 / 2.0).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn samples_the_most_recent_candidates_and_fills_with_popular_items() {
        // sample_size 1: only {2,3} (ended at 20) of the two sessions holding 2.
        let mut index = KnnIndex::fit(&train(), 6, params(500, 1, 0.0));
        assert_eq!(scores(&mut index, &[2], None), [(2, 1.0), (3, 1.0)]);
        assert_eq!(index.recommend(&[2], None, 4), [2, 3, 0, 1]);
        // An item nobody holds: popular items only.
        assert_eq!(index.recommend(&[0], None, 2), [0, 1]);
    }

    #[test]
    fn live_sessions_join_update_and_never_neighbour_themselves() {
        let mut index = KnnIndex::fit(&train(), 6, params(500, 5000, 0.0));
        index.upsert(7, &[4]);
        index.upsert(7, &[4, 9]); // an item newer than the catalogue
        assert_eq!(index.len(), 4);
        // Another session on item 9 finds session 7 (once, despite its stale first entry).
        assert_eq!(scores(&mut index, &[9], None), [(4, 1.0), (9, 1.0)]);
        // Session 7 itself only finds {4,5}: sim (1/2)²/2 through item 4, two steps back (decay 1/2).
        assert_eq!(
            scores(&mut index, &[4, 9], Some(7)),
            [(4, 0.0625), (5, 0.0625)]
        );
        index.remove(7);
        assert_eq!(index.len(), 3);
        assert!(scores(&mut index, &[9], None).is_empty());
    }

    #[test]
    fn merged_similarities_equal_the_intersection_sums_bit_for_bit() {
        // A random index: 300 sessions over 40 items, some updated (stale postings), one evicted.
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1du64);
        let p = KnnParams {
            capacity: 250,
            ..params(50, 120, 0.0)
        };
        let mut index = KnnIndex::fit(&Sessions::default(), 40, p);
        for s in 0..300u64 {
            let items: Vec<u32> = (0..1 + next(8)).map(|_| next(40) as u32).collect();
            index.upsert(s % 220, &items);
        }
        // Every posting names a live session holding the item: retired entries took theirs along.
        for (item, list) in index.postings.iter().enumerate() {
            for &seq in list {
                let entry = index.entry(seq).expect("a posting names a live session");
                assert!(entry.items.contains(&(item as u32)));
            }
        }
        for q in 0..50 {
            let session: Vec<u32> = (0..1 + next(10)).map(|_| next(40) as u32).collect();
            let weighted = weigh(&session);
            let own = (q % 3 == 0).then(|| index.owners[&(q % 220)]);
            let got = index.candidates(&weighted, own, usize::MAX);
            // The reference: every live session sharing an item, newest first, then the sums.
            let mut want: Vec<u64> = weighted
                .iter()
                .flat_map(|w| index.postings[w.item as usize].iter().copied())
                .filter(|&seq| Some(seq) != own && index.entry(seq).is_some())
                .collect();
            want.sort_unstable_by(|a, b| b.cmp(a));
            want.dedup();
            want.truncate(120);
            assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), want);
            for c in &got {
                let items = &index.entry(c.seq).unwrap().items;
                let reference = intersect_weight(&weighted, items) / weighted.len() as f64;
                assert_eq!(c.sim.to_bits(), reference.to_bits());
                // The latest shared position, as a scan from the session's end finds it.
                let from_end = session
                    .iter()
                    .rev()
                    .position(|i| items.binary_search(i).is_ok());
                assert_eq!(Some(session.len() - 1 - c.latest), from_end);
            }
        }
    }

    #[test]
    fn stopping_at_enough_full_matches_keeps_the_same_neighbours() {
        // Few items, so that many sessions share all of a query's: the merge stops early often.
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut index = KnnIndex::fit(&Sessions::default(), 6, params(50, 400, 0.0));
        for s in 0..2000u64 {
            let items: Vec<u32> = (0..1 + next(5)).map(|_| next(6) as u32).collect();
            index.upsert(s % 1500, &items);
        }
        let mut early = 0;
        for q in 0..300 {
            let session: Vec<u32> = (0..1 + next(4)).map(|_| next(6) as u32).collect();
            let weighted = weigh(&session);
            let own = (q % 2 == 0).then(|| index.owners[&(q % 1500)]);
            let k = [1, 7, 50, 120][q as usize % 4];
            let mut whole = index.candidates(&weighted, own, usize::MAX);
            let mut short = index.candidates(&weighted, own, k);
            early += usize::from(short.len() < whole.len());
            keep_most_similar(&mut whole, k);
            keep_most_similar(&mut short, k);
            let key = |c: &[Candidate]| {
                c.iter()
                    .map(|c| (c.seq, c.sim.to_bits(), c.latest))
                    .collect::<Vec<_>>()
            };
            assert_eq!(key(&short), key(&whole), "query {q}: {session:?}, k {k}");
        }
        assert!(
            early > 150,
            "the merge stopped early in {early} of 300 queries"
        );
    }

    #[test]
    fn keeps_the_most_similar_candidates_ties_to_the_more_recent() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for round in 0..200 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = (rng % 60) as usize;
            // Newest first, similarities from a few values so that ties are common.
            let mut candidates: Vec<Candidate> = (0..n)
                .map(|i| Candidate {
                    seq: (n - i) as u64,
                    sim: ((rng >> (i % 48)) % 5) as f64 / 4.0,
                    latest: i,
                })
                .collect();
            let k = round % 25;
            let mut want = candidates.clone();
            want.sort_by(|a, b| b.sim.total_cmp(&a.sim).then(b.seq.cmp(&a.seq)));
            want.truncate(k);
            keep_most_similar(&mut candidates, k);
            let seqs = |c: &[Candidate]| {
                let mut s: Vec<u64> = c.iter().map(|c| c.seq).collect();
                s.sort_unstable();
                s
            };
            assert_eq!(seqs(&candidates), seqs(&want), "round {round}, k {k}");
            assert!(
                candidates.windows(2).all(|w| w[0].seq > w[1].seq),
                "order kept"
            );
        }
    }

    #[test]
    fn updates_below_capacity_do_not_grow_the_index_without_bound() {
        let mut index = KnnIndex::fit(&train(), 6, params(500, 5000, 0.0));
        let mut grown = KnnIndex::fit(&train(), 6, params(500, 5000, 0.0));
        // 3 training sessions stay in front; 10 live sessions each updated 2,000 times.
        for round in 0..2_000u32 {
            for owner in 0..10u64 {
                let items = [(owner % 5) as u32 + 1, round % 6];
                index.upsert(owner, &items);
                grown.retire_only_for_test(owner, &items);
            }
        }
        assert_eq!(index.len(), 13);
        assert!(index.slots() <= 13 + 4096 + 1, "{} slots", index.slots());
        assert!(index.postings.iter().map(VecDeque::len).sum::<usize>() <= 2 * (13 + 4097));
        // The same answers as an index that never compacted.
        for q in [[1u32, 2], [3, 0], [5, 4]] {
            assert_eq!(
                scores(&mut index, &q, Some(3)),
                scores(&mut grown, &q, Some(3))
            );
        }
    }

    impl KnnIndex {
        /// `upsert` without compaction, for comparison.
        fn retire_only_for_test(&mut self, owner: Owner, items: &[u32]) {
            if let Some(seq) = self.owners.remove(&owner) {
                self.retire(seq);
            }
            if let Some(seq) = self.insert(items, Some(owner)) {
                self.owners.insert(owner, seq);
            }
        }
    }

    #[test]
    fn evicts_the_least_recently_updated_session_at_capacity() {
        let p = KnnParams {
            capacity: 2,
            ..params(500, 5000, 0.0)
        };
        // {1,2} ended first and is evicted while fitting.
        let mut index = KnnIndex::fit(&train(), 6, p);
        assert_eq!(index.len(), 2);
        assert!(scores(&mut index, &[1], None).is_empty());
        index.upsert(1, &[5]); // {2,3} goes
        index.upsert(1, &[5, 3]); // the update retires its own older entry, evicting nothing
        assert_eq!(index.len(), 2);
        assert_eq!(scores(&mut index, &[3], None), [(3, 1.0), (5, 1.0)]);
        assert_eq!(scores(&mut index, &[4], None), [(4, 1.0), (5, 1.0)]);
        index.upsert(2, &[0]); // now {4,5} goes
        assert_eq!(index.len(), 2);
        assert!(scores(&mut index, &[4], None).is_empty());
        assert_eq!(scores(&mut index, &[3], None), [(3, 1.0), (5, 1.0)]);
        assert!(
            index.postings.iter().all(|p| p.len() <= 2),
            "stale postings are dropped"
        );
    }
}
