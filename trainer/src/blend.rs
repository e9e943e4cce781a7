//! The speed layer and the blend: live session-kNN ([`KnnIndex`]) and trending counts ([`Trending`])
//! fed by every event, and the blend of both with the GRU, computed by the same code for the server
//! (`lambdarec serve`) and the offline evaluator, so the two give the same answers.
//!
//! Per request, the scorers' candidates are pooled: the GRU's top [`POOL`] items, every item a kNN
//! neighbour holds, and (when trending has weight) the top [`POOL`] trending items. Each scorer is
//! normalised to its best item: the GRU as `exp(s - s_max)` (its probability relative to its top
//! item's), kNN over its maximum, trending relative to the top trending item. The final score is
//! `w_gru · gru + w_knn · knn + w_trend · trend` with weights summing to 1.
//!
//! Every normalised score is 1 for its scorer's best item, so one weight means the same for a
//! confident and an unsure GRU and for sessions with many or few neighbours. (A softmax over the pool
//! instead made the GRU's side tiny wherever its distribution is flat, MovieLens for one, and no
//! single weight then beat the GRU's MRR there.)
//!
//! Items new since the bundle (indices at or above the catalogue size) have no GRU score: they take
//! part through kNN and trending only.

use lambdarec_kernels::{Backend, BackendError, Event, ModelId, ScoreQuery, TopKQuery};

use crate::data::Sessions;
use crate::eval::{Metrics, MetricsAccumulator, fill_popular, top_k};
use crate::knn::{KnnIndex, KnnParams, Owner, Scratch};
use crate::trending::Trending;

/// The GRU's candidates pooled per request (its top items), and the trending ones.
pub const POOL: usize = 100;

/// The session length the speed layer sees: the server keeps this many recent items per session
/// (`--history`), and the evaluator cuts sessions the same way.
pub const DEFAULT_HISTORY: usize = 50;

/// Sessions the kNN index keeps by default (`--knn-sessions`).
pub const DEFAULT_KNN_SESSIONS: usize = 1_000_000;

/// Trending's half-life when the bundle names none (`--trend-half-life`).
pub const DEFAULT_TREND_HALF_LIFE_S: f64 = 3600.0;

/// Which scorer ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    Gru,
    Knn,
    Trending,
    Blend,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Gru => "gru",
            Strategy::Knn => "knn",
            Strategy::Trending => "trending",
            Strategy::Blend => "blend",
        }
    }
}

/// The blend's weights; they sum to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub gru: f32,
    pub knn: f32,
    pub trend: f32,
}

impl Weights {
    /// The GRU alone (a bundle without a blend).
    pub const GRU: Weights = Weights {
        gru: 1.0,
        knn: 0.0,
        trend: 0.0,
    };

    /// `gru_weight` of the GRU-vs-kNN mix, scaled by `1 - trend` to leave `trend` for trending.
    pub fn new(gru_weight: f32, trend: f32) -> Self {
        Weights {
            gru: (1.0 - trend) * gru_weight,
            knn: (1.0 - trend) * (1.0 - gru_weight),
            trend,
        }
    }
}

/// One request's pooled candidates with the three normalised scores.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    pub items: Vec<u32>,
    pub gru: Vec<f32>,
    pub knn: Vec<f32>,
    pub trend: Vec<f32>,
}

impl Pool {
    /// The `k` best items and their blended scores, ties to the lower (more popular) item.
    pub fn top(&self, w: Weights, k: usize) -> Vec<(u32, f32)> {
        let mut order: Vec<(u32, f32)> = (0..self.items.len())
            .map(|c| {
                let s = w.gru * self.gru[c] + w.knn * self.knn[c] + w.trend * self.trend[c];
                (self.items[c], s)
            })
            .collect();
        top_k(&mut order, k);
        order
    }
}

/// A pool whose GRU scores are known for the GRU's own top items only: the other catalogue items
/// in it (`need`) are scored by the caller, batched with other requests, then [`Draft::complete`].
#[derive(Debug, Default, Clone)]
pub struct Draft {
    pool: Pool,
    /// Catalogue items whose GRU score is still missing, and their places in the pool.
    pub need: Vec<u32>,
    need_at: Vec<usize>,
}

/// How far (in raw GRU score, relative to its size plus one) an item outside the GRU's top list is
/// allowed to score above the lowest of that list when [`Draft::prune`] bounds it: the top-k and
/// the score kernels sum in different orders, so they may disagree in the last bits.
const KERNEL_SLACK: f32 = 1e-3;

/// What a pruned item's bound must stay below the threshold by (in blended score, which is at
/// most 1).
const PRUNE_MARGIN: f32 = 1e-4;

impl Draft {
    /// Drops from `need` the items that cannot reach the `k` best of the pool under `w`, whatever
    /// their GRU scores turn out to be, so that fewer are scored: [`Pool::top`] at `(w, k)` then
    /// gives the same items with the same scores as without pruning.
    ///
    /// An item in `need` is a catalogue item that the GRU's top list (every eligible catalogue
    /// item considered, as [`SpeedLayer::draft`] requires) ranked below its lowest, so its
    /// normalised GRU score is at most `exp(low - high)`. With its kNN and trending scores, which
    /// are already known, that bounds its blended score; it is dropped when the bound is below the
    /// `k`-th best exact score of the items whose scores are all known. Its GRU score then stays
    /// missing (0 once completed), which keeps it below that threshold too.
    pub fn prune(&mut self, w: Weights, k: usize) {
        let p = &self.pool;
        // The GRU's top items are the pool's only items with a raw GRU score yet.
        let top = p.gru.iter().copied().filter(|s| *s != f32::NEG_INFINITY);
        let (low, high) = top.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(s), hi.max(s))
        });
        let bound_raw = low + KERNEL_SLACK * (1.0 + low.abs());
        if self.need.is_empty() || k == 0 || bound_raw >= high {
            return;
        }
        let kmax = p.knn.iter().copied().fold(0.0, f32::max);
        let knn = |c: usize| {
            if kmax > 0.0 {
                p.knn[c] / kmax
            } else {
                p.knn[c]
            }
        };
        let gru = |s: f32| {
            if s == f32::NEG_INFINITY {
                0.0
            } else {
                (s - high).exp()
            }
        };
        // The pool's exact scores where every part is known (the need items' GRU scores are not).
        let blended = |c: usize, g: f32| w.gru * g + w.knn * knn(c) + w.trend * p.trend[c];
        let mut pending = vec![false; p.items.len()];
        self.need_at.iter().for_each(|&c| pending[c] = true);
        let mut known: Vec<f32> = (0..p.items.len())
            .filter(|&c| !pending[c])
            .map(|c| blended(c, gru(p.gru[c])))
            .collect();
        if known.len() < k {
            return;
        }
        let (_, &mut threshold, _) = known.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let ceiling = gru(bound_raw);
        let (mut need, mut need_at) = (Vec::new(), Vec::new());
        for (&item, &c) in self.need.iter().zip(&self.need_at) {
            if blended(c, ceiling) + PRUNE_MARGIN >= threshold {
                need.push(item);
                need_at.push(c);
            }
        }
        self.need = need;
        self.need_at = need_at;
    }

    /// Fills in the GRU scores of `need` (same order) and normalises every scorer.
    pub fn complete(mut self, scores: &[f32]) -> Pool {
        for (&at, &s) in self.need_at.iter().zip(scores) {
            self.pool.gru[at] = s;
        }
        let p = &mut self.pool;
        let max = p.gru.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        p.gru.iter_mut().for_each(|s| {
            *s = if *s == f32::NEG_INFINITY {
                0.0
            } else {
                (*s - max).exp()
            }
        });
        let kmax = p.knn.iter().copied().fold(0.0, f32::max);
        if kmax > 0.0 {
            p.knn.iter_mut().for_each(|s| *s /= kmax);
        }
        self.pool
    }
}

/// The live scorers beside the GRU: what the server's batcher thread holds, and what the evaluator
/// replays test sessions through.
#[derive(Clone)]
pub struct SpeedLayer {
    pub knn: KnnIndex,
    pub trend: Trending,
    pub weights: Weights,
    /// The catalogue size: items below it have GRU scores and are ordered by popularity.
    n_items: u32,
}

impl SpeedLayer {
    /// A speed layer seeded with `train` (the bundle's training sessions): each session joins the
    /// kNN index (oldest first, by end time) and each event counts for trending at its time.
    pub fn new(
        train: &Sessions,
        n_items: usize,
        knn: KnnParams,
        trend_half_life_s: f64,
        weights: Weights,
    ) -> Self {
        let mut trend = Trending::new(trend_half_life_s);
        for (&item, &t) in train.items.iter().zip(&train.times) {
            trend.observe(item, secs_to_ms(t));
        }
        SpeedLayer {
            knn: KnnIndex::fit(train, n_items, knn),
            trend,
            weights,
            n_items: n_items as u32,
        }
    }

    pub fn n_items(&self) -> u32 {
        self.n_items
    }

    /// Folds in one event on `item` at `at_ms`: `session` is the session's items with it (its recent
    /// items as the server keeps them), `owner` identifies the session in the kNN index.
    pub fn observe(&mut self, owner: Owner, session: &[u32], item: u32, at_ms: i64) {
        self.knn.upsert(owner, session);
        self.trend.observe(item, at_ms);
    }

    /// Forgets a deleted session's kNN entry (its trending counts stay: the events happened).
    pub fn forget(&mut self, owner: Owner) {
        self.knn.remove(owner);
    }

    /// kNN scores of many sessions at once (`(items, owner)` each), in parallel on the current rayon
    /// pool ([`lambdarec_kernels::run_parallel`]; the server calls it beside the GRU's ranking,
    /// [`Backend::top_k_beside`], on the backend's threads).
    pub fn knn_scores(&self, queries: &[(&[u32], Option<Owner>)]) -> Vec<Vec<(u32, f32)>> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
        }
        let out: Vec<std::sync::OnceLock<Vec<(u32, f32)>>> =
            queries.iter().map(|_| std::sync::OnceLock::new()).collect();
        lambdarec_kernels::run_parallel(queries.len(), &|q| {
            let (items, own) = queries[q];
            let scores = SCRATCH.with(|s| self.knn.score_with(items, own, &mut s.borrow_mut()));
            let _ = out[q].set(scores);
        });
        out.into_iter()
            .map(|o| o.into_inner().expect("every query ran"))
            .collect()
    }

    /// The pool for a session given the GRU's top items (`gru_top`, raw scores: its best over every
    /// catalogue item not in `exclude`) and its kNN scores (`knn`, from
    /// [`SpeedLayer::knn_scores`]; empty when kNN has no weight); `exclude` is sorted. Trending
    /// candidates join when `w` gives trending weight.
    pub fn draft(
        &self,
        gru_top: &[(u32, f32)],
        knn: &[(u32, f32)],
        exclude: &[u32],
        w: Weights,
    ) -> Draft {
        thread_local! {
            /// Per item, its place in the pool being drafted (`u32::MAX`: not in it); reset after
            /// each draft.
            static PLACE: std::cell::RefCell<Vec<u32>> = std::cell::RefCell::default();
        }
        PLACE.with(|place| {
            let place = &mut *place.borrow_mut();
            let mut d = Draft::default();
            let push = |d: &mut Draft, place: &mut Vec<u32>, item: u32| {
                let i = item as usize;
                if i >= place.len() {
                    place.resize(i + 1, u32::MAX);
                }
                if place[i] == u32::MAX {
                    let p = &mut d.pool;
                    place[i] = p.items.len() as u32;
                    p.items.push(item);
                    p.gru.push(f32::NEG_INFINITY);
                    p.knn.push(0.0);
                    p.trend.push(0.0);
                }
                place[i] as usize
            };
            for &(item, s) in gru_top {
                let c = push(&mut d, place, item);
                d.pool.gru[c] = s;
            }
            let excluded = |i: &u32| exclude.binary_search(i).is_ok();
            if w.knn > 0.0 {
                for &(item, s) in knn {
                    if !excluded(&item) {
                        let c = push(&mut d, place, item);
                        d.pool.knn[c] = s;
                    }
                }
            }
            if w.trend > 0.0 {
                for (item, _) in self.trend.top(POOL, exclude) {
                    push(&mut d, place, item);
                }
                for c in 0..d.pool.items.len() {
                    d.pool.trend[c] = self.trend.score(d.pool.items[c]);
                }
            }
            for &item in &d.pool.items {
                place[item as usize] = u32::MAX;
            }
            for (c, &item) in d.pool.items.iter().enumerate() {
                if item < self.n_items && d.pool.gru[c] == f32::NEG_INFINITY {
                    d.need.push(item);
                    d.need_at.push(c);
                }
            }
            d
        })
    }

    /// kNN alone: the best `k` items by normalised kNN score (`knn`, from
    /// [`SpeedLayer::knn_scores`]), filled with popular items (score 0).
    pub fn recommend_knn(
        &self,
        knn: Vec<(u32, f32)>,
        k: usize,
        exclude: &[u32],
    ) -> Vec<(u32, f32)> {
        let mut scored: Vec<(u32, f32)> = knn
            .into_iter()
            .filter(|(i, _)| exclude.binary_search(i).is_err())
            .collect();
        let kmax = scored.iter().map(|s| s.1).fold(0.0, f32::max);
        if kmax > 0.0 {
            scored.iter_mut().for_each(|s| s.1 /= kmax);
        }
        top_k(&mut scored, k);
        with_fill(scored, k, self.n_items, exclude)
    }

    /// Trending alone: the top `k` trending items, filled with popular items (score 0).
    pub fn recommend_trending(&self, k: usize, exclude: &[u32]) -> Vec<(u32, f32)> {
        with_fill(self.trend.top(k, exclude), k, self.n_items, exclude)
    }
}

fn with_fill(ranked: Vec<(u32, f32)>, k: usize, n_items: u32, exclude: &[u32]) -> Vec<(u32, f32)> {
    let scores: std::collections::HashMap<u32, f32> = ranked.iter().copied().collect();
    fill_popular(ranked.into_iter().map(|p| p.0), k, n_items, exclude)
        .into_iter()
        .map(|i| (i, scores.get(&i).copied().unwrap_or(0.0)))
        .collect()
}

/// Event times as the server sees them: Unix seconds to ms, as `lambdarec load` sends them.
pub fn secs_to_ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

/// What [`evaluate_speed`] scores: a strategy, or the blend at each of several weights.
pub enum Scored<'a> {
    Knn,
    Trending,
    Blend(&'a [Weights]),
}

/// Evaluates the speed layer as served, over `test` one session after the other: each event goes
/// through the GRU and into the speed layer (sessions cut to their last `history` items, as the
/// server keeps them), then the next item is predicted. Returns one [`Metrics`] per weight for a
/// blend, else one.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_speed(
    backend: &mut dyn Backend,
    model: ModelId,
    hidden: usize,
    speed: &mut SpeedLayer,
    test: &Sessions,
    k: usize,
    history: usize,
    what: Scored<'_>,
) -> Result<Vec<Metrics>, BackendError> {
    let n_items = speed.n_items() as usize;
    let n_acc = match &what {
        Scored::Blend(w) => w.len(),
        _ => 1,
    };
    let mut accs: Vec<MetricsAccumulator> = (0..n_acc)
        .map(|_| MetricsAccumulator::new(k, n_items))
        .collect();
    let gru = matches!(what, Scored::Blend(_));
    if gru {
        backend.alloc_states(1, hidden)?;
    }
    let history = history.max(1);
    let mut recent: Vec<u32> = Vec::with_capacity(history);
    for s in 0..test.len() {
        let items = test.session(s);
        let times = test.session_times(s);
        let owner = u64::MAX - s as u64;
        recent.clear();
        if gru {
            backend.reset_states(&[0])?;
        }
        for pos in 0..items.len() {
            if gru {
                backend.gru_step(
                    model,
                    &[Event {
                        slot: 0,
                        item: items[pos],
                    }],
                )?;
            }
            if recent.len() == history {
                recent.remove(0);
            }
            recent.push(items[pos]);
            speed.observe(owner, &recent, items[pos], secs_to_ms(times[pos]));
            if pos + 1 == items.len() {
                break;
            }
            let target = items[pos + 1];
            match &what {
                Scored::Knn => {
                    let knn = speed.knn.score(&recent, Some(owner));
                    let list = speed.recommend_knn(knn, k, &[]);
                    accs[0].add(&list.iter().map(|p| p.0).collect::<Vec<_>>(), target);
                }
                Scored::Trending => {
                    let list = speed.recommend_trending(k, &[]);
                    accs[0].add(&list.iter().map(|p| p.0).collect::<Vec<_>>(), target);
                }
                Scored::Blend(weights) => {
                    let parts = Weights {
                        gru: 1.0,
                        knn: weights.iter().map(|w| w.knn).fold(0.0, f32::max),
                        trend: weights.iter().map(|w| w.trend).fold(0.0, f32::max),
                    };
                    let pool = blend_pool(backend, model, speed, &recent, owner, k, parts)?;
                    for (acc, &w) in accs.iter_mut().zip(weights.iter()) {
                        let list: Vec<u32> = pool.top(w, k).into_iter().map(|p| p.0).collect();
                        acc.add(&list, target);
                    }
                }
            }
        }
    }
    Ok(accs.iter().map(|a| a.finish()).collect())
}

/// The pool of the session in slot 0, as the server builds it for one request.
fn blend_pool(
    backend: &mut dyn Backend,
    model: ModelId,
    speed: &mut SpeedLayer,
    recent: &[u32],
    owner: Owner,
    k: usize,
    parts: Weights,
) -> Result<Pool, BackendError> {
    let top = backend.top_k(
        model,
        &[TopKQuery {
            slot: 0,
            k: POOL.max(k),
            exclude: &[],
        }],
    )?;
    let gru_top: Vec<(u32, f32)> = top[0].iter().map(|s| (s.item, s.score)).collect();
    let knn = if parts.knn > 0.0 {
        speed.knn.score(recent, Some(owner))
    } else {
        Vec::new()
    };
    let draft = speed.draft(&gru_top, &knn, &[], parts);
    let scores = if draft.need.is_empty() {
        Vec::new()
    } else {
        backend
            .score(
                model,
                &[ScoreQuery {
                    slot: 0,
                    candidates: &draft.need,
                }],
            )?
            .remove(0)
    };
    Ok(draft.complete(&scores))
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

/// The trending weights a fit tries (beside each GRU weight).
pub fn trend_grid() -> Vec<f32> {
    vec![0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
}

/// The weights to serve, from `metrics` measured at each (GRU weight, trending weight) of `grid`:
/// the one-standard-error rule of model selection. The objective is Recall@k + MRR@k; every entry
/// within one standard error of the best (that of the best's recall, `sqrt(R (1 − R) / n)` over its
/// n predictions) is as good as the validation set can tell, and of those the one with the least
/// trending weight is taken (the scorer that reacts to the validation window's own events, the most
/// likely to fit its noise), then the best objective. Ties go to the first entry.
pub fn choose_weights(grid: &[(f32, f32)], metrics: &[Metrics]) -> ((f32, f32), Metrics) {
    let objective = |m: &Metrics| m.recall + m.mrr;
    let mut best = 0;
    for (i, m) in metrics.iter().enumerate() {
        if objective(m) > objective(&metrics[best]) {
            best = i;
        }
    }
    let b = &metrics[best];
    let se = (b.recall * (1.0 - b.recall) / b.events.max(1) as f64).sqrt();
    let mut pick = best;
    for (i, m) in metrics.iter().enumerate() {
        if objective(m) < objective(b) - se {
            continue;
        }
        let (t, p) = (grid[i].1, grid[pick].1);
        if t < p || (t == p && objective(m) > objective(&metrics[pick])) {
            pick = i;
        }
    }
    (grid[pick], metrics[pick].clone())
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
            trend: vec![0.0, 0.0, 1.0],
        };
        let items = |w, k| pool.top(w, k).into_iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(items(Weights::new(1.0, 0.0), 3), [4, 7, 9]);
        assert_eq!(items(Weights::new(0.0, 0.0), 2), [7, 9]);
        // w = 0.5: 4 → 0.35, 7 → 0.6, 9 → 0.3
        assert_eq!(items(Weights::new(0.5, 0.0), 3), [7, 4, 9]);
        // Half of it trending: 9 → 0.15 + 0.5
        assert_eq!(items(Weights::new(0.5, 0.5), 1), [9]);
    }

    #[test]
    fn pruning_a_draft_keeps_the_top_items_and_their_scores() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let n_items = 600u32;
        let mut speed = SpeedLayer::new(
            &Sessions::default(),
            n_items as usize,
            KnnParams::default(),
            60.0,
            Weights::GRU,
        );
        for t in 0..2000 {
            speed.trend.observe(next(n_items as u64) as u32, 1000 * t);
        }
        let (mut scored, mut pruned) = (0, 0);
        for round in 0..300 {
            // The GRU's raw scores of every item; its top POOL are `gru_top`.
            let spread = [0.5f32, 3.0, 12.0][round % 3];
            let raw: Vec<f32> = (0..n_items)
                .map(|_| (next(1_000_000) as f32 / 1e6 - 0.5) * spread)
                .collect();
            let exclude: Vec<u32> = (0..next(5)).map(|i| i as u32 * 7).collect();
            let mut order: Vec<(u32, f32)> = (0..n_items)
                .filter(|i| exclude.binary_search(i).is_err())
                .map(|i| (i, raw[i as usize]))
                .collect();
            crate::eval::top_k(&mut order, POOL);
            let knn: Vec<(u32, f32)> = (0..next(400))
                .map(|_| (next(n_items as u64 + 20) as u32, next(1000) as f32 / 7.0))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let w = Weights::new(next(21) as f32 / 20.0, [0.0, 0.01, 0.2][next(3) as usize]);
            let k = [1usize, 5, 20, 100][next(4) as usize];
            let full = speed.draft(&order, &knn, &exclude, w);
            let mut cut = full.clone();
            cut.prune(w, k);
            scored += full.need.len();
            pruned += full.need.len() - cut.need.len();
            let scores_of = |d: &Draft| d.need.iter().map(|&i| raw[i as usize]).collect::<Vec<_>>();
            let (a, b) = (scores_of(&full), scores_of(&cut));
            let want = full.complete(&a).top(w, k);
            let got = cut.complete(&b).top(w, k);
            let bits =
                |l: &[(u32, f32)]| l.iter().map(|p| (p.0, p.1.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "round {round}, w {w:?}, k {k}");
        }
        // The check is not vacuous: most of the scoring is saved.
        assert!(pruned * 2 > scored, "pruned {pruned} of {scored}");
    }

    #[test]
    fn draft_pools_knn_and_trending_items_and_normalises_each_scorer() {
        let mut train = Sessions::default();
        for (items, t) in [([1u32, 2], 10.0), ([2, 3], 20.0)] {
            train.items.extend(items);
            train.times.extend([t, t]);
            train.offsets.push(train.items.len());
            train.keys.push(format!("{t}"));
        }
        let knn = KnnParams {
            idf_weight: 0.0,
            ..KnnParams::default()
        };
        let w = Weights::new(0.5, 0.2);
        let mut speed = SpeedLayer::new(&train, 5, knn, 60.0, w);
        // A new item (index 5, past the catalogue) trends hard.
        for n in 0..5 {
            speed.trend.observe(5, 30_000 + n);
        }
        // The GRU only offered item 4; kNN adds 1, 2, 3; trending adds 5 (and 2, 3, 1).
        let knn = speed.knn.score(&[2], None);
        // Several sessions at once, in parallel: each as scored alone.
        let queries: [(&[u32], Option<Owner>); 3] = [(&[2], None), (&[1, 3], None), (&[3], None)];
        let many = speed.knn_scores(&queries);
        for ((items, own), got) in queries.iter().zip(&many) {
            assert_eq!(got, &speed.knn.clone().score(items, *own));
        }
        let draft = speed.draft(&[(4, 2.0)], &knn, &[1], w);
        assert_eq!(
            draft.need,
            [2, 3],
            "catalogue items without a GRU score; 1 excluded"
        );
        let pool = draft.complete(&[1.0, 0.0]);
        assert_eq!(pool.items, [4, 2, 3, 5]);
        let e = |x: f32| x.exp();
        assert_eq!(pool.gru, [1.0, e(-1.0), e(-2.0), 0.0]);
        assert_eq!(pool.knn, [0.0, 1.0, 0.5, 0.0]);
        assert_eq!(pool.trend[3], 1.0);
        assert!(
            pool.trend[1] > 0.3 && pool.trend[1] < 0.35,
            "{:?}",
            pool.trend
        );
        // kNN alone fills with popular items; trending alone ranks the new item first.
        let knn_list = speed.recommend_knn(knn, 4, &[]);
        assert_eq!(knn_list, [(2, 1.0), (1, 0.5), (3, 0.5), (0, 0.0)]);
        assert_eq!(speed.recommend_trending(2, &[])[0], (5, 1.0));
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
    fn choose_weights_takes_the_least_trending_within_one_standard_error() {
        let m = |events, recall, mrr| Metrics {
            k: 20,
            events,
            recall,
            mrr,
            coverage: 0.0,
            pop_share: 0.0,
        };
        let grid = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.1), (1.0, 0.1)];
        // 10,000 predictions: SE of recall 0.7 is 0.0046; the trending point's gain (0.01) is beyond
        // it and wins.
        let big = [
            m(10_000, 0.60, 0.3),
            m(10_000, 0.70, 0.3),
            m(10_000, 0.71, 0.3),
            m(10_000, 0.5, 0.1),
        ];
        assert_eq!(choose_weights(&grid, &big).0, (0.5, 0.1));
        // 100 predictions: SE 0.045; the same gain is noise, so no trending weight is taken.
        let small = big.map(|x| Metrics { events: 100, ..x });
        assert_eq!(choose_weights(&grid, &small).0, (0.5, 0.0));
        // Ties go to the first entry.
        let flat: Vec<Metrics> = (0..4).map(|_| m(100, 0.5, 0.2)).collect();
        assert_eq!(choose_weights(&grid, &flat).0, (0.0, 0.0));
    }
}
