//! Online evaluation: what users actually do next. Each `Recommend` answer is remembered in its
//! session (its first [`ONLINE_K`] items); the session's next applied event is looked up in it, and
//! the hit and reciprocal rank are counted per model version and strategy. This is the production twin
//! of the offline Recall@20 and MRR@20, scored by the rule `lambdarec load` uses: a list counts against
//! the session's next *applied* event (a refused event leaves it waiting), and a list with no later
//! event is never scored.
//!
//! Totals go to Prometheus (`lambdarec_online_predictions_total`, `…_hits_total`,
//! `…_reciprocal_rank_total`, labelled `version` and `strategy`), and with a window of the last
//! [`WINDOW`] predictions to `ModelInfo`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use lambdarec_trainer::blend::Strategy;

/// The cut-off: a hit is the next item among the first 20 items returned (all of them when fewer
/// were asked for).
pub const ONLINE_K: usize = 20;

/// Predictions in the rolling window.
pub const WINDOW: usize = 10_000;

/// One (version, strategy)'s figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnlineFigures {
    pub predictions: u64,
    pub hits: u64,
    /// Sum of reciprocal ranks (0 for a miss).
    pub rr_sum: f64,
    pub window_predictions: u64,
    pub window_hits: u64,
    pub window_rr_sum: f64,
}

#[derive(Default)]
struct Tally {
    figures: OnlineFigures,
    /// Reciprocal rank of each prediction in the window, oldest first.
    window: VecDeque<f64>,
}

/// The figures per (model version, strategy), shared by the batcher (which records) and the
/// handlers (which read).
#[derive(Default)]
pub struct OnlineEval {
    tallies: Mutex<BTreeMap<(Arc<str>, Strategy), Tally>>,
}

/// Where `item` is in `list` (1-based), if it is.
pub fn rank(list: &[u32], item: u32) -> Option<usize> {
    list.iter().position(|&i| i == item).map(|p| p + 1)
}

impl OnlineEval {
    /// Records one prediction; returns its reciprocal rank.
    pub fn record(&self, version: &Arc<str>, strategy: Strategy, rank: Option<usize>) -> f64 {
        let rr = rank.map_or(0.0, |r| 1.0 / r as f64);
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let t = tallies.entry((version.clone(), strategy)).or_default();
        let f = &mut t.figures;
        f.predictions += 1;
        f.hits += u64::from(rank.is_some());
        f.rr_sum += rr;
        t.window.push_back(rr);
        f.window_predictions += 1;
        f.window_hits += u64::from(rank.is_some());
        f.window_rr_sum += rr;
        if t.window.len() > WINDOW
            && let Some(old) = t.window.pop_front()
        {
            f.window_predictions -= 1;
            f.window_hits -= u64::from(old > 0.0);
            f.window_rr_sum -= old;
        }
        rr
    }

    /// Every (version, strategy) with its figures, in version then strategy order.
    pub fn figures(&self) -> Vec<(Arc<str>, Strategy, OnlineFigures)> {
        let tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        tallies
            .iter()
            .map(|((v, s), t)| (v.clone(), *s, t.figures.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hits_and_reciprocal_ranks_per_version_and_strategy_with_a_window() {
        let e = OnlineEval::default();
        let (v1, v2): (Arc<str>, Arc<str>) = (Arc::from("v1"), Arc::from("v2"));
        assert_eq!(rank(&[4, 7, 9], 9), Some(3));
        assert_eq!(rank(&[4, 7, 9], 5), None);
        e.record(&v1, Strategy::Blend, Some(1));
        e.record(&v1, Strategy::Blend, None);
        e.record(&v1, Strategy::Blend, Some(4));
        e.record(&v2, Strategy::Gru, Some(2));
        let f = e.figures();
        assert_eq!(f.len(), 2);
        let (v, s, blend) = &f[0];
        assert_eq!((&**v, *s), ("v1", Strategy::Blend));
        assert_eq!((blend.predictions, blend.hits), (3, 2));
        assert!((blend.rr_sum - 1.25).abs() < 1e-12);
        assert_eq!(f[1].2.rr_sum, 0.5);
        // The window keeps the last WINDOW predictions.
        for _ in 0..WINDOW {
            e.record(&v2, Strategy::Gru, None);
        }
        let gru = &e.figures()[1].2;
        assert_eq!((gru.predictions, gru.hits), (WINDOW as u64 + 1, 1));
        assert_eq!(
            (gru.window_predictions, gru.window_hits),
            (WINDOW as u64, 0)
        );
        assert_eq!(gru.window_rr_sum, 0.0);
    }
}
