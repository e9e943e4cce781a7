//! The blend of the GRU and session-kNN: per request, both scorers' candidates are pooled (the GRU's
//! top [`POOL`] and every item a kNN neighbour holds), each scorer's scores are normalised to its best
//! candidate in the pool (the GRU's as `exp(s - s_max)`, its probability relative to its top item;
//! kNN's over its maximum), and the final score is `w · gru + (1 − w) · knn`.
//!
//! Both normalised scores are 1 for their scorer's best item, so one weight means the same for a
//! confident and an unsure GRU and for sessions with many or few neighbours. (A softmax over the pool
//! instead made the GRU's side tiny wherever its distribution is flat, MovieLens for one, and no
//! single weight then beat the GRU's MRR there.)

use lambdarec_kernels::{Backend, BackendError, Event, ModelId, ScoreQuery, TopKQuery};

use crate::data::Sessions;
use crate::eval::{Metrics, MetricsAccumulator};
use crate::knn::KnnIndex;

/// The GRU's candidates pooled per request (its top items) beside every item kNN scores.
pub const POOL: usize = 100;

/// One request's pooled candidates with both normalised scores.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    pub items: Vec<u32>,
    pub gru: Vec<f32>,
    pub knn: Vec<f32>,
}

impl Pool {
    /// The `k` best items at GRU weight `w`, ties to the lower (more popular) item.
    pub fn top(&self, w: f32, k: usize) -> Vec<u32> {
        let mut order: Vec<(u32, f32)> = (0..self.items.len())
            .map(|c| (self.items[c], w * self.gru[c] + (1.0 - w) * self.knn[c]))
            .collect();
        let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if order.len() > k {
            order.select_nth_unstable_by(k, cmp);
            order.truncate(k);
        }
        order.sort_by(cmp);
        order.into_iter().map(|(i, _)| i).collect()
    }
}

/// Builds the pool for the session in `slot` whose items so far are `items`.
fn pool(
    backend: &mut dyn Backend,
    model: ModelId,
    index: &mut KnnIndex,
    items: &[u32],
    own: Option<u64>,
    pool_size: usize,
) -> Result<Pool, BackendError> {
    let top = backend.top_k(
        model,
        &[TopKQuery {
            slot: 0,
            k: pool_size,
            exclude: &[],
        }],
    )?;
    let mut pool = Pool::default();
    let knn = index.score(items, own);
    let mut knn_of: std::collections::HashMap<u32, f32> = knn.iter().copied().collect();
    for s in &top[0] {
        pool.items.push(s.item);
        pool.gru.push(s.score);
        pool.knn.push(knn_of.remove(&s.item).unwrap_or(0.0));
    }
    let extra: Vec<u32> = knn
        .iter()
        .map(|&(i, _)| i)
        .filter(|i| knn_of.contains_key(i))
        .collect();
    if !extra.is_empty() {
        let scores = backend.score(
            model,
            &[ScoreQuery {
                slot: 0,
                candidates: &extra,
            }],
        )?;
        for (&i, &s) in extra.iter().zip(&scores[0]) {
            pool.items.push(i);
            pool.gru.push(s);
            pool.knn.push(knn_of[&i]);
        }
    }
    // Both scorers relative to their best candidate: exp(s - s_max) is the GRU's probability of an
    // item over that of its top item; kNN's score over its maximum is session-rec's normalisation.
    let max = pool.gru.iter().copied().fold(f32::MIN, f32::max);
    pool.gru.iter_mut().for_each(|s| *s = (*s - max).exp());
    let kmax = pool.knn.iter().copied().fold(0.0, f32::max);
    if kmax > 0.0 {
        pool.knn.iter_mut().for_each(|s| *s /= kmax);
    }
    Ok(pool)
}

/// Evaluates the blend at every weight of `weights` in one pass over `test` (sessions one after the
/// other, each event folded into the GRU state and, when `live`, into the kNN index).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_blend(
    backend: &mut dyn Backend,
    model: ModelId,
    hidden: usize,
    index: &mut KnnIndex,
    live: bool,
    test: &Sessions,
    n_items: usize,
    k: usize,
    pool_size: usize,
    weights: &[f32],
) -> Result<Vec<Metrics>, BackendError> {
    backend.alloc_states(1, hidden)?;
    let mut accs: Vec<MetricsAccumulator> = weights
        .iter()
        .map(|_| MetricsAccumulator::new(k, n_items))
        .collect();
    for s in 0..test.len() {
        let items = test.session(s);
        let owner = u64::MAX - s as u64;
        let own = live.then_some(owner);
        backend.reset_states(&[0])?;
        for pos in 0..items.len() {
            backend.gru_step(
                model,
                &[Event {
                    slot: 0,
                    item: items[pos],
                }],
            )?;
            if live {
                index.upsert(owner, &items[..=pos]);
            }
            if pos + 1 == items.len() {
                break;
            }
            let p = pool(backend, model, index, &items[..=pos], own, pool_size)?;
            for (acc, &w) in accs.iter_mut().zip(weights) {
                acc.add(&p.top(w, k), items[pos + 1]);
            }
        }
    }
    Ok(accs.iter().map(|a| a.finish()).collect())
}

/// Splits `sessions` by time: those ending within the last `window` seconds of the data are the
/// validation set, the rest train (the same rule as the test split of `prepare`).
pub fn split_by_end_time(sessions: &Sessions, window: f64) -> (Sessions, Sessions) {
    let end = |s: usize| {
        sessions
            .session_times(s)
            .last()
            .copied()
            .unwrap_or(f64::MIN)
    };
    let t_max = (0..sessions.len())
        .map(end)
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut early, mut late) = (Sessions::default(), Sessions::default());
    for s in 0..sessions.len() {
        let part = if end(s) > t_max - window {
            &mut late
        } else {
            &mut early
        };
        part.items.extend_from_slice(sessions.session(s));
        part.times.extend_from_slice(sessions.session_times(s));
        part.offsets.push(part.items.len());
        part.keys.push(sessions.keys[s].clone());
    }
    (early, late)
}

/// The GRU weights a fit tries: 0, 0.05, …, 1.
pub fn weight_grid() -> Vec<f32> {
    (0..=20).map(|i| i as f32 / 20.0).collect()
}

/// The weight of `grid` whose blend has the highest Recall@k + MRR@k on `metrics` (one per weight);
/// ties go to the first, i.e. the lower GRU weight.
pub fn best_weight(grid: &[f32], metrics: &[Metrics]) -> (f32, Metrics) {
    let mut best = 0;
    for (i, m) in metrics.iter().enumerate() {
        if m.recall + m.mrr > metrics[best].recall + metrics[best].mrr {
            best = i;
        }
    }
    (grid[best], metrics[best].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ranks_by_the_weighted_sum() {
        let pool = Pool {
            items: vec![4, 7, 9],
            gru: vec![0.7, 0.2, 0.1],
            knn: vec![0.0, 1.0, 0.5],
        };
        assert_eq!(pool.top(1.0, 3), [4, 7, 9]);
        assert_eq!(pool.top(0.0, 2), [7, 9]);
        // w = 0.5: 4 → 0.35, 7 → 0.6, 9 → 0.3
        assert_eq!(pool.top(0.5, 3), [7, 4, 9]);
    }

    #[test]
    fn splits_validation_sessions_off_by_their_end() {
        let mut s = Sessions::default();
        for (items, times) in [
            ([1u32, 2], [0.0, 50.0]),
            ([3, 4], [10.0, 100.0]),
            ([5, 6], [20.0, 30.0]),
        ] {
            s.items.extend(items);
            s.times.extend(times);
            s.offsets.push(s.items.len());
            s.keys.push(format!("{}", items[0]));
        }
        let (early, late) = split_by_end_time(&s, 60.0);
        assert_eq!(early.keys, ["5"]);
        assert_eq!(late.keys, ["1", "3"]);
        assert_eq!(
            (early.session(0), late.session(1)),
            (&[5, 6][..], &[3, 4][..])
        );
    }

    #[test]
    fn best_weight_maximises_recall_plus_mrr() {
        let m = |recall, mrr| Metrics {
            k: 20,
            events: 1,
            recall,
            mrr,
            coverage: 0.0,
            pop_share: 0.0,
        };
        let grid = [0.0, 0.5, 1.0];
        assert_eq!(
            best_weight(&grid, &[m(0.5, 0.2), m(0.6, 0.2), m(0.7, 0.05)]).0,
            0.5
        );
        assert_eq!(
            best_weight(&grid, &[m(0.5, 0.2), m(0.5, 0.2), m(0.1, 0.1)]).0,
            0.0
        );
    }
}
