//! Full-catalogue top-k on the CPU without a batch × n_items score matrix. Each task scans a range of
//! item panels for a block of queries; a tile of panels is scored for every query of the block at once
//! (loaded once, used by all), and each query keeps only the candidates that beat its current k-th
//! score, in a buffer of 2k that is cut back to k with `select_nth_unstable` when full. The survivors
//! of the tasks that split a query's catalogue are merged at the end.

use std::cmp::Ordering;

use rayon::prelude::*;

use half::{bf16, f16};

use super::gemm::{gemm_group, pack_rows, row_groups, row_panels};
use super::isa::{Isa, Vec8, multiversion};
use super::table::{LANES, PanelsRef};
use super::{CpuModel, PARALLEL_MIN_WORK, States};
use crate::{Scored, TopKQuery};

/// A block of the batch as the scan reads it.
struct QuerySet<'a> {
    /// `rows × d` query vectors (the sessions' hidden states), packed by `pack_rows`.
    q: Vec<f32>,
    d: usize,
    /// Per query: k, capped at the catalogue size.
    ks: &'a [usize],
    /// Per query: excluded items, sorted and deduplicated.
    excludes: &'a [Vec<u32>],
}

/// Fewest item panels per task (4,096 items): below this the per-task candidate warm-up costs more
/// than the parallelism gains.
const MIN_PANELS_PER_TASK: usize = 256;

/// Ranking order: score descending, ties to the lower item index.
fn rank(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// All slots have been validated and every k is ≥ 1.
pub(super) fn top_k(
    pool: &rayon::ThreadPool,
    isa: Isa,
    m: &CpuModel,
    states: &States,
    queries: &[TopKQuery<'_>],
) -> Vec<Vec<Scored>> {
    let (d, b) = (m.hidden, queries.len());
    if b == 0 {
        return Vec::new();
    }
    let ks: Vec<usize> = queries.iter().map(|q| q.k.min(m.n_items)).collect();
    let excludes: Vec<Vec<u32>> = queries
        .iter()
        .map(|q| {
            let mut e = q.exclude.to_vec();
            e.sort_unstable();
            e.dedup();
            e
        })
        .collect();

    // Tasks form a grid of item ranges × query blocks, about two per thread (they absorb uneven
    // progress, e.g. other load on the box). Item ranges come first, so that each task scores its
    // tiles for the whole batch; only a catalogue too small to give every task 4,096 items is also
    // split by queries (blocks of whole 6-row kernel groups), which rescans it once per block.
    let threads = pool.current_num_threads();
    let np = m.item_out.n_panels();
    let work = m.n_items * d * b;
    let target = if threads == 1 {
        1
    } else {
        (2 * threads).min((work / PARALLEL_MIN_WORK).max(1))
    };
    let ranges = (np / MIN_PANELS_PER_TASK).clamp(1, target);
    let n_blocks = (target / ranges).clamp(1, b.div_ceil(6));
    let per_block = b.div_ceil(n_blocks).div_ceil(6) * 6;
    let blocks: Vec<(usize, usize)> = (0..b)
        .step_by(per_block)
        .map(|s| (s, (s + per_block).min(b)))
        .collect();
    let sets: Vec<QuerySet> = blocks
        .iter()
        .map(|&(s, e)| {
            let mut rows = Vec::with_capacity((e - s) * d);
            for q in &queries[s..e] {
                rows.extend_from_slice(states.row(q.slot as usize));
            }
            let mut packed = Vec::new();
            pack_rows(&rows, e - s, d, &mut packed);
            QuerySet {
                q: packed,
                d,
                ks: &ks[s..e],
                excludes: &excludes[s..e],
            }
        })
        .collect();
    // Range-major order: neighbouring tasks belong to different blocks, so splitting the list in halves
    // (as rayon does first) splits the work evenly even when the last block is short.
    let n_sets = sets.len();
    let tasks: Vec<(usize, usize, usize)> = (0..ranges)
        .flat_map(|r| (0..n_sets).map(move |s| (s, np * r / ranges, np * (r + 1) / ranges)))
        .collect();
    let run = |&(s, first, end): &(usize, usize, usize)| scan(isa, m, &sets[s], first, end);
    let mut parts: Vec<Vec<Vec<(f32, u32)>>> = if tasks.len() > 1 {
        pool.install(|| tasks.par_iter().map(run).collect())
    } else {
        tasks.iter().map(run).collect()
    };

    let mut answers = Vec::with_capacity(b);
    for (s, &(first, end)) in blocks.iter().enumerate() {
        for i in 0..end - first {
            let mut all: Vec<(f32, u32)> = Vec::new();
            for r in 0..ranges {
                all.append(&mut parts[r * n_sets + s][i]);
            }
            keep_best(&mut all, ks[first + i]);
            all.sort_unstable_by(rank);
            answers.push(
                all.into_iter()
                    .map(|(score, item)| Scored { item, score })
                    .collect(),
            );
        }
    }
    answers
}

/// Cuts `v` down to its `k` best (unordered).
fn keep_best(v: &mut Vec<(f32, u32)>, k: usize) {
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, rank);
        v.truncate(k);
    }
}

multiversion! {
    /// Each query's ≤ k best items among panels `first..end`.
    fn scan(m: &CpuModel, set: &QuerySet<'_>, first: usize, end: usize) -> Vec<Vec<(f32, u32)>> => scan_generic
}

#[inline(always)]
fn scan_generic<V: Vec8>(
    m: &CpuModel,
    set: &QuerySet<'_>,
    first: usize,
    end: usize,
) -> Vec<Vec<(f32, u32)>> {
    let (b, d) = (set.ks.len(), set.d);
    // Four panels per pass: what the one-row kernel takes per call, and at most 32 KiB of f32 (d = 128)
    // that L1/L2 keep while every row group passes over it (measured: smaller tiles are no faster).
    let tile = 4;
    let ldo = tile * LANES;
    // Scores of one row group for one tile: small, so it stays in L1 between the kernel and the filter.
    let mut out = vec![0f32; 6 * ldo];
    let mut scratch = Vec::new();
    let mut bufs: Vec<TopBuf> = set.ks.iter().map(|&k| TopBuf::new(k)).collect();
    let mut t0 = first;
    while t0 < end {
        let np = tile.min(end - t0);
        let bias = &m.item_bias[t0 * LANES..];
        let base = t0 * LANES;
        let valid = (np * LANES).min(m.n_items - base);
        if b == 1 {
            // One query: widen bf16/f16 in the kernel's loads, the table is read once either way and
            // a converted copy would only add traffic.
            match m.item_out.panels_raw(t0, np) {
                PanelsRef::F32(p) => row_panels::<V, f32>(&set.q, p, np, bias, &mut out),
                PanelsRef::Bf16(p) => row_panels::<V, bf16>(&set.q, p, np, bias, &mut out),
                PanelsRef::F16(p) => row_panels::<V, f16>(&set.q, p, np, bias, &mut out),
            }
            bufs[0].offer(&out[..valid], base as u32, &set.excludes[0]);
            t0 += np;
            continue;
        }
        let panels = m.item_out.panels_f32(t0, np, &mut scratch);
        for (first, w) in row_groups(b) {
            let a = &set.q[first * d..][..w * d];
            gemm_group::<V>(a, w, d, panels, np, bias, &mut out, ldo);
            for (i, row) in out.chunks_exact(ldo).take(w).enumerate() {
                let q = first + i;
                bufs[q].offer(&row[..valid], base as u32, &set.excludes[q]);
            }
        }
        t0 += np;
    }
    bufs.into_iter().map(TopBuf::finish).collect()
}

/// Bit `l` set where `chunk[l] > thr` (`chunk.len() ≤ 16`); a whole chunk compiles to a vector
/// compare and a mask move.
#[inline(always)]
fn above(chunk: &[f32], thr: f32) -> u32 {
    if let Ok(c) = <&[f32; LANES]>::try_from(chunk) {
        let mut m = 0u32;
        for (l, &s) in c.iter().enumerate() {
            m |= u32::from(s > thr) << l;
        }
        return m;
    }
    chunk
        .iter()
        .enumerate()
        .fold(0, |m, (l, &s)| m | (u32::from(s > thr) << l))
}

/// One query's candidates within one task.
struct TopBuf {
    k: usize,
    cap: usize,
    /// Once `full`, only scores above `thr` (the k-th best seen so far) can enter.
    full: bool,
    thr: f32,
    items: Vec<(f32, u32)>,
}

impl TopBuf {
    fn new(k: usize) -> Self {
        Self {
            k,
            cap: (2 * k).max(32),
            full: false,
            thr: f32::NEG_INFINITY,
            items: Vec::new(),
        }
    }

    /// Considers the scores of items `base..base + scores.len()`, in increasing item order: an item
    /// that only ties the threshold loses to the earlier, lower-indexed one.
    #[inline(always)]
    fn offer(&mut self, scores: &[f32], base: u32, exclude: &[u32]) {
        for (c, chunk) in scores.chunks(LANES).enumerate() {
            // One vector compare per chunk gives the lanes above the threshold (none, once warmed up,
            // for almost every chunk); only those are visited. A push may raise the threshold mid-chunk,
            // so each visited lane is checked again (lanes outside the mask stay below it).
            let mut lanes = if self.full {
                above(chunk, self.thr)
            } else {
                u32::MAX >> (32 - chunk.len())
            };
            while lanes != 0 {
                let l = lanes.trailing_zeros() as usize;
                lanes &= lanes - 1;
                let s = chunk[l];
                if !self.full || s > self.thr {
                    let item = base + (c * LANES + l) as u32;
                    if exclude.binary_search(&item).is_err() {
                        self.push(s, item);
                    }
                }
            }
        }
    }

    fn push(&mut self, score: f32, item: u32) {
        // `+ 0.0` folds −0 into +0, so that `total_cmp` ranks them as the tie they are.
        self.items.push((score + 0.0, item));
        if self.items.len() >= self.cap {
            // cap > k, so this selects: position k − 1 now holds the k-th best.
            keep_best(&mut self.items, self.k);
            self.thr = self.items[self.k - 1].0;
            self.full = true;
        }
    }

    fn finish(mut self) -> Vec<(f32, u32)> {
        keep_best(&mut self.items, self.k);
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::TestRng;

    /// The buffer against a full sort, on scores with many ties (multiples of 1/8), exclusions, chunks
    /// cut at odd lengths and k from 1 to past the item count.
    #[test]
    fn buffer_keeps_the_k_best_with_ties_to_the_lower_index() {
        let mut rng = TestRng::new(7);
        for (n, k) in [
            (1, 1),
            (15, 3),
            (100, 1),
            (257, 20),
            (1000, 40),
            (1000, 1000),
            (37, 50),
        ] {
            let scores: Vec<f32> = (0..n).map(|_| (rng.normal() * 8.0).round() / 8.0).collect();
            let mut exclude: Vec<u32> = (0..n as u32).filter(|_| rng.below(5) == 0).collect();
            exclude.dedup();
            let mut buf = TopBuf::new(k);
            // Offer in runs of 1..=40 scores, as tiles at the end of a range are cut.
            let mut at = 0;
            while at < n {
                let len = (1 + rng.below(40)).min(n - at);
                buf.offer(&scores[at..at + len], at as u32, &exclude);
                at += len;
            }
            let mut got = buf.finish();
            got.sort_unstable_by(rank);
            let mut want: Vec<(f32, u32)> = (0..n as u32)
                .filter(|i| exclude.binary_search(i).is_err())
                // −0 and +0 are one score (the buffer folds them).
                .map(|i| (scores[i as usize] + 0.0, i))
                .collect();
            want.sort_unstable_by(rank);
            want.truncate(k);
            assert_eq!(got, want, "n={n} k={k}");
        }
    }
}
