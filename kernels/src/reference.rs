//! Plain f64 reference of the [`Backend`](crate::Backend) ops over [`ModelWeights`]: the executable
//! spec that every backend is checked against (see `conformance.rs`), written for clarity, not speed.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::{Event, ModelWeights};

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `Σ a[p]·b[p]` in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// One `nn.GRUCell` step (gate order r, z, n) from state `h` on input item `item`.
pub fn gru_cell(w: &ModelWeights, h: &[f32], item: u32) -> Vec<f32> {
    let (e, hd) = (w.embed_dim, w.hidden);
    let x = &w.input_table()[item as usize * e..][..e];
    // gi[j] = W_ih[j]·x + b_ih[j], gh[j] = W_hh[j]·h + b_hh[j] for the 3·hidden gate rows.
    let gi: Vec<f64> = (0..3 * hd)
        .map(|j| dot(&w.w_ih[j * e..][..e], x) + f64::from(w.b_ih[j]))
        .collect();
    let gh: Vec<f64> = (0..3 * hd)
        .map(|j| dot(&w.w_hh[j * hd..][..hd], h) + f64::from(w.b_hh[j]))
        .collect();
    (0..hd)
        .map(|j| {
            let r = sigmoid(gi[j] + gh[j]);
            let z = sigmoid(gi[hd + j] + gh[hd + j]);
            let n = (gi[2 * hd + j] + r * gh[2 * hd + j]).tanh();
            ((1.0 - z) * n + z * f64::from(h[j])) as f32
        })
        .collect()
}

/// Applies `events` in order to the row-major state table `states` (`w.hidden` wide).
pub fn gru_step(w: &ModelWeights, states: &mut [f32], events: &[Event]) {
    let hd = w.hidden;
    for ev in events {
        let row = &mut states[ev.slot as usize * hd..][..hd];
        let next = gru_cell(w, row, ev.item);
        row.copy_from_slice(&next);
    }
}

/// `dot(h, item_out[item]) + item_bias[item]`.
pub fn score(w: &ModelWeights, h: &[f32], item: u32) -> f64 {
    let i = item as usize;
    dot(h, &w.item_out[i * w.hidden..][..w.hidden]) + f64::from(w.item_bias[i])
}

/// Every item's score.
pub fn score_all(w: &ModelWeights, h: &[f32]) -> Vec<f64> {
    (0..w.n_items as u32).map(|i| score(w, h, i)).collect()
}

/// All items not in `exclude`, best first (score descending, ties to the lower index), cut to `k`.
pub fn top_k(w: &ModelWeights, h: &[f32], k: usize, exclude: &[u32]) -> Vec<(u32, f64)> {
    let exclude: HashSet<u32> = exclude.iter().copied().collect();
    let mut all: Vec<(u32, f64)> = score_all(w, h)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as u32, s))
        .filter(|(i, _)| !exclude.contains(i))
        .collect();
    all.sort_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    all.truncate(k);
    all
}
