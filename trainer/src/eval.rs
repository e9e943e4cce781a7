//! Next-item evaluation: for every test event after a session's first, rank the whole catalogue given
//! the session so far and check where the true next item lands.
//!
//! Ranking and ties: a recommender's answer is its top-k list ordered by score descending with ties
//! broken by the lower item index — exactly what `kernels::Backend::top_k` (and so the server) returns.
//! The rank of the true item is its position in that list, so an item tied with others is counted
//! as ranked where the served list puts it. Item indices are ordered by training popularity, so a tie
//! favours the more popular item. With float GRU scores ties practically never happen; POP and
//! item-kNN break their (frequent) ties the same way.
//!
//! Metrics: Recall@k (share of events whose next item is in the list), MRR@k (mean of 1/rank, 0 outside
//! the list), item coverage@k (share of the catalogue that appears in at least one list) and the share
//! of recommended items that are among the 1% most popular (popularity bias).

use serde::{Deserialize, Serialize};

use lambdarec_kernels::{Backend, Event, ModelId, TopKQuery};

use crate::data::Sessions;

/// Keeps the `k` best of `scored`, sorted best first, ties to the lower item (the served order).
pub fn top_k(scored: &mut Vec<(u32, f32)>, k: usize) {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > k {
        scored.select_nth_unstable_by(k, cmp);
        scored.truncate(k);
    }
    scored.sort_by(cmp);
}

/// `ranked` then the most popular items (indices 0, 1, … below `n_items`) not in it and not in
/// `exclude` (sorted), up to `k` in all.
pub fn fill_popular(
    ranked: impl IntoIterator<Item = u32>,
    k: usize,
    n_items: u32,
    exclude: &[u32],
) -> Vec<u32> {
    let mut out: Vec<u32> = ranked.into_iter().take(k).collect();
    let mut next = 0u32;
    while out.len() < k && next < n_items {
        if !out.contains(&next) && exclude.binary_search(&next).is_err() {
            out.push(next);
        }
        next += 1;
    }
    out
}

/// Evaluation results at cut-off `k`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub k: usize,
    pub events: u64,
    pub recall: f64,
    pub mrr: f64,
    pub coverage: f64,
    pub pop_share: f64,
}

impl Metrics {
    /// The JSON shape `lambdarec eval --json` prints: `recall@20`, `mrr@20`, ….
    pub fn to_json(&self) -> serde_json::Value {
        let k = self.k;
        serde_json::json!({
            format!("recall@{k}"): self.recall,
            format!("mrr@{k}"): self.mrr,
            format!("coverage@{k}"): self.coverage,
            format!("pop_share@{k}"): self.pop_share,
            "events": self.events,
        })
    }
}

/// Accumulates metrics one recommendation list at a time.
pub struct MetricsAccumulator {
    k: usize,
    events: u64,
    hits: u64,
    rr_sum: f64,
    seen: Vec<bool>,
    covered: usize,
    /// Items with an index below this are the 1% most popular (indices are ordered by popularity).
    pop_cut: u32,
    pop_recs: u64,
    recs: u64,
    /// The catalogue size (coverage's denominator).
    n_items: usize,
}

impl MetricsAccumulator {
    pub fn new(k: usize, n_items: usize) -> Self {
        MetricsAccumulator {
            k,
            events: 0,
            hits: 0,
            rr_sum: 0.0,
            seen: vec![false; n_items],
            covered: 0,
            pop_cut: n_items.div_ceil(100) as u32,
            pop_recs: 0,
            recs: 0,
            n_items,
        }
    }

    /// Records one prediction: `list` is the recommender's answer, best first (only the first k count).
    /// Indices past the catalogue (items new since the model, as a server that takes them answers)
    /// are counted like any other; coverage stays relative to the catalogue.
    pub fn add(&mut self, list: &[u32], target: u32) {
        let list = &list[..list.len().min(self.k)];
        self.events += 1;
        if let Some(pos) = list.iter().position(|&i| i == target) {
            self.hits += 1;
            self.rr_sum += 1.0 / (pos + 1) as f64;
        }
        for &i in list {
            if i as usize >= self.seen.len() {
                self.seen.resize(i as usize + 1, false);
            }
            let seen = &mut self.seen[i as usize];
            if !*seen {
                *seen = true;
                self.covered += 1;
            }
            self.pop_recs += u64::from(i < self.pop_cut);
        }
        self.recs += list.len() as u64;
    }

    pub fn finish(&self) -> Metrics {
        let n = self.events.max(1) as f64;
        Metrics {
            k: self.k,
            events: self.events,
            recall: self.hits as f64 / n,
            mrr: self.rr_sum / n,
            coverage: self.covered as f64 / self.n_items.max(1) as f64,
            pop_share: self.pop_recs as f64 / self.recs.max(1) as f64,
        }
    }
}

/// Evaluates a model resident on `backend`: sessions are processed `batch` at a time, one GRU step and
/// one top-k per position, exactly the calls the server makes per event and per request.
pub fn evaluate_model(
    backend: &mut dyn Backend,
    model: ModelId,
    hidden: usize,
    test: &Sessions,
    n_items: usize,
    k: usize,
    batch: usize,
) -> Result<Metrics, lambdarec_kernels::BackendError> {
    let batch = batch.max(1);
    backend.alloc_states(batch, hidden)?;
    let mut acc = MetricsAccumulator::new(k, n_items);
    let mut events = Vec::with_capacity(batch);
    let mut targets = Vec::with_capacity(batch);
    let all_slots: Vec<u32> = (0..batch as u32).collect();
    for first in (0..test.len()).step_by(batch) {
        let sessions: Vec<&[u32]> = (first..(first + batch).min(test.len()))
            .map(|s| test.session(s))
            .collect();
        backend.reset_states(&all_slots[..sessions.len()])?;
        let longest = sessions.iter().map(|s| s.len()).max().unwrap_or(0);
        for pos in 0..longest.saturating_sub(1) {
            events.clear();
            targets.clear();
            for (slot, items) in sessions.iter().enumerate() {
                if pos + 1 < items.len() {
                    events.push(Event {
                        slot: slot as u32,
                        item: items[pos],
                    });
                    targets.push(items[pos + 1]);
                }
            }
            backend.gru_step(model, &events)?;
            let queries: Vec<TopKQuery<'_>> = events
                .iter()
                .map(|e| TopKQuery {
                    slot: e.slot,
                    k,
                    exclude: &[],
                })
                .collect();
            for (list, &target) in backend.top_k(model, &queries)?.iter().zip(&targets) {
                let items: Vec<u32> = list.iter().map(|s| s.item).collect();
                acc.add(&items, target);
            }
        }
    }
    Ok(acc.finish())
}

/// A recommender that sees a session one item at a time (the baselines).
pub trait SessionRecommender {
    fn name(&self) -> &str;
    /// Starts a new session.
    fn reset(&mut self);
    fn observe(&mut self, item: u32);
    /// The `k` best items given the session so far, best first.
    fn recommend(&mut self, k: usize) -> Vec<u32>;
}

/// Evaluates a [`SessionRecommender`] on the same events and with the same metrics as a model.
pub fn evaluate_recommender(
    rec: &mut dyn SessionRecommender,
    test: &Sessions,
    n_items: usize,
    k: usize,
) -> Metrics {
    let mut acc = MetricsAccumulator::new(k, n_items);
    for s in 0..test.len() {
        let items = test.session(s);
        rec.reset();
        for pos in 0..items.len().saturating_sub(1) {
            rec.observe(items[pos]);
            acc.add(&rec.recommend(k), items[pos + 1]);
        }
        // The server sees every event, the last one too: a recommender that learns from the stream
        // (live session-kNN) learns it here as well.
        if let Some(&last) = items.last() {
            rec.observe(last);
        }
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_a_hand_computed_case() {
        // 10 items, k = 3, pop_cut = 1 (item 0 is the top 1%).
        let mut acc = MetricsAccumulator::new(3, 10);
        acc.add(&[5, 0, 7], 5); // rank 1
        acc.add(&[1, 2, 3], 3); // rank 3
        acc.add(&[0, 8, 9, 4], 4); // rank 4 > k: a miss
        acc.add(&[6, 5, 0], 2); // miss
        let m = acc.finish();
        assert_eq!(m.events, 4);
        assert!((m.recall - 0.5).abs() < 1e-12);
        assert!((m.mrr - (1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-12);
        // lists (first 3): {5,0,7} {1,2,3} {0,8,9} {6,5,0} → 9 distinct of 10
        assert!((m.coverage - 0.9).abs() < 1e-12);
        // item 0 appears 3 times among 12 recommendations
        assert!((m.pop_share - 0.25).abs() < 1e-12);
    }

    #[test]
    fn top_k_orders_ties_to_the_lower_item_and_fill_skips_what_is_taken() {
        let mut s = vec![(7, 0.5), (2, 0.9), (4, 0.5), (1, 0.1)];
        top_k(&mut s, 3);
        assert_eq!(s, [(2, 0.9), (4, 0.5), (7, 0.5)]);
        assert_eq!(fill_popular([3, 5], 4, 10, &[]), [3, 5, 0, 1]);
        assert_eq!(fill_popular([3], 3, 10, &[0, 2]), [3, 1, 4]);
        assert_eq!(fill_popular([], 3, 2, &[]), [0, 1]);
    }

    #[test]
    fn empty_evaluation_is_zero_not_nan() {
        let m = MetricsAccumulator::new(20, 5).finish();
        assert_eq!((m.events, m.recall, m.mrr), (0, 0.0, 0.0));
    }
}
