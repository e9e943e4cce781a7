//! Conformance of `top_k`: agreement with the reference where scores are not tied within tolerance,
//! exclusions, k beyond the eligible items, tie order, and NaN scores.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{SHAPES, TestRng, close, random_model, setup, tolerance};
use crate::{Backend, Dtype, ModelWeights, Scored, TopKQuery, reference};

/// Checks one query's answer against the reference: length `min(k, eligible)`; in range, not excluded,
/// no repeats; each score matches the reference score of its item and the reference's score at that
/// position; ranked by score, ties to the lower index; and the item itself matches wherever the
/// reference's score there is separated from its neighbours by more than the tolerance.
pub fn check_top_k(
    w: &ModelWeights,
    h: &[f32],
    q: &TopKQuery<'_>,
    got: &[Scored],
    tol: f64,
    ctx: &str,
) {
    let exclude: HashSet<u32> = q.exclude.iter().copied().collect();
    let eligible = w.n_items
        - exclude
            .iter()
            .filter(|&&i| (i as usize) < w.n_items)
            .count();
    let want = reference::top_k(w, h, q.k.saturating_add(1), q.exclude);
    assert_eq!(
        got.len(),
        q.k.min(eligible),
        "{ctx}: k={} with {eligible} eligible items",
        q.k
    );
    let mut seen = HashSet::new();
    for (i, g) in got.iter().enumerate() {
        assert!(
            (g.item as usize) < w.n_items,
            "{ctx}: item {} out of range",
            g.item
        );
        assert!(
            !exclude.contains(&g.item),
            "{ctx}: excluded item {} returned",
            g.item
        );
        assert!(seen.insert(g.item), "{ctx}: item {} returned twice", g.item);
        let own = reference::score(w, h, g.item);
        let s = f64::from(g.score);
        assert!(
            close(s, own, tol),
            "{ctx}: item {} scored {s}, reference {own}",
            g.item
        );
        let (want_item, want_score) = want[i];
        assert!(
            close(s, want_score, tol),
            "{ctx}: position {i} scored {s}, reference {want_score}"
        );
        if i > 0 {
            let p = &got[i - 1];
            assert!(
                p.score > g.score || (p.score == g.score && p.item < g.item),
                "{ctx}: positions {} and {i} out of order: {p:?} then {g:?}",
                i - 1
            );
        }
        let margin = 2.0 * tol * want_score.abs().max(1.0);
        let apart_prev = i == 0 || want[i - 1].1 - want_score > margin;
        let apart_next = want.get(i + 1).is_none_or(|n| want_score - n.1 > margin);
        if apart_prev && apart_next {
            assert_eq!(
                g.item, want_item,
                "{ctx}: position {i} (score {s}, reference {want_score})"
            );
        }
    }
}

/// Batches of 1, 7 and 64 with k in {1, 20, 100, 2048, > eligible}, with and without exclusions;
/// `top_k_beside` gives the same answers and runs its host work once per call.
pub fn top_k_matches_reference(backend: &mut dyn Backend, dtype: Dtype) {
    let tol = tolerance(dtype);
    for (case, &(n, e, h, tied)) in SHAPES.iter().enumerate() {
        let mut rng = TestRng::new(300 + case as u64);
        let w = random_model(&mut rng, n, e, h, tied);
        let capacity = 80;
        let (model, states) = setup(backend, &w, dtype, capacity, &mut rng);
        let row = |slot: u32| &states[slot as usize * h..][..h];
        // The reference's 10 best for slot 5, to exclude items that would otherwise surely be returned.
        let best: Vec<u32> = reference::top_k(&w, row(5), 10, &[])
            .iter()
            .map(|&(i, _)| i)
            .collect();
        let mut with_dups = best.clone();
        with_dups.extend_from_slice(&best[..3]);
        let random: Vec<Vec<u32>> = (0..64)
            .map(|_| (0..rng.below(40)).map(|_| rng.below(n) as u32).collect())
            .collect();
        let q = |slot: u32, k: usize, exclude: &'static [u32]| TopKQuery { slot, k, exclude };
        let batches: Vec<Vec<TopKQuery<'_>>> = vec![
            vec![q(5, 20, &[])],
            vec![
                q(5, 1, &[]),
                TopKQuery {
                    slot: 5,
                    k: 20,
                    exclude: &with_dups,
                },
                q(9, 100, &[]),
                TopKQuery {
                    slot: 11,
                    k: 2048,
                    exclude: &random[0],
                },
                TopKQuery {
                    slot: 12,
                    k: n + 5,
                    exclude: &random[1],
                },
                q(5, 20, &[]),
                q(79, 7, &[]),
            ],
            (0..64)
                .map(|i| TopKQuery {
                    slot: rng.below(capacity) as u32,
                    k: 20,
                    exclude: &random[i],
                })
                .collect(),
        ];
        for queries in &batches {
            let got = backend.top_k(model, queries).expect("top_k");
            assert_eq!(got.len(), queries.len(), "one answer per query");
            for (i, (query, answer)) in queries.iter().zip(&got).enumerate() {
                let ctx = format!(
                    "top_k {dtype} shape {:?} batch {} query {i}",
                    SHAPES[case],
                    queries.len()
                );
                check_top_k(&w, row(query.slot), query, answer, tol, &ctx);
            }
            let (beside, runs) = top_k_beside_counting(backend, model, queries);
            assert_eq!(beside, got, "top_k_beside {dtype}: top_k's answers");
            assert_eq!(runs, 1, "top_k_beside runs the host work once");
        }
        assert!(
            backend
                .top_k(model, &[])
                .expect("empty top_k batch")
                .is_empty()
        );
        let (none, runs) = top_k_beside_counting(backend, model, &[]);
        assert!(none.is_empty() && runs == 1, "host work with no queries");
        backend.drop_model(model);
    }
}

/// `top_k_beside` with host work that counts its runs: the answers and the count.
fn top_k_beside_counting(
    backend: &mut dyn Backend,
    model: crate::ModelId,
    queries: &[TopKQuery<'_>],
) -> (Vec<Vec<Scored>>, usize) {
    let runs = AtomicUsize::new(0);
    let host = || {
        runs.fetch_add(1, Ordering::Relaxed);
    };
    let answers = backend
        .top_k_beside(model, queries, &host)
        .expect("top_k_beside");
    (answers, runs.into_inner())
}

/// Exclusions leaving fewer than k items (or none), duplicate and out-of-range exclusions (ignored),
/// and catalogues of 1 and 17 items.
pub fn top_k_exclusions_and_short_lists(backend: &mut dyn Backend, dtype: Dtype) {
    let tol = tolerance(dtype);
    for (n, h) in [(1037, 64), (1, 37), (17, 16)] {
        let mut rng = TestRng::new(400 + n as u64);
        let w = random_model(&mut rng, n, h, h, false);
        let (model, states) = setup(backend, &w, dtype, 4, &mut rng);
        let keep = 37.min(n);
        let mut most: Vec<u32> = (keep as u32..n as u32).collect();
        most.extend_from_slice(&[n as u32 + 4000, u32::MAX, n as u32 - 1]);
        let all: Vec<u32> = (0..n as u32).rev().collect();
        let queries = [
            TopKQuery {
                slot: 0,
                k: 100,
                exclude: &most,
            },
            TopKQuery {
                slot: 1,
                k: keep,
                exclude: &most,
            },
            TopKQuery {
                slot: 2,
                k: keep.max(2) - 1,
                exclude: &most,
            },
            TopKQuery {
                slot: 3,
                k: 5,
                exclude: &all,
            },
            TopKQuery {
                slot: 3,
                k: n + 1,
                exclude: &[],
            },
        ];
        let got = backend.top_k(model, &queries).expect("top_k");
        for (i, (q, answer)) in queries.iter().zip(&got).enumerate() {
            let ctx = format!("top_k short lists {dtype} n={n} query {i}");
            check_top_k(
                &w,
                &states[q.slot as usize * h..][..h],
                q,
                answer,
                tol,
                &ctx,
            );
        }
        backend.drop_model(model);
    }
}

/// Items with identical embeddings and bias score identically and come back in index order.
pub fn top_k_ties_prefer_lower_index(backend: &mut dyn Backend, dtype: Dtype) {
    let (n, h) = (1037, 64);
    let mut rng = TestRng::new(500);
    let mut w = random_model(&mut rng, n, h, h, true);
    let row: Vec<f32> = w.item_out[..h].to_vec();
    // Two groups of clones whose large biases put them above every other item.
    for (items, bias) in [(&[900u32, 100, 500][..], 10.0), (&[1030, 7][..], 9.0)] {
        for &i in items {
            w.item_out[i as usize * h..][..h].copy_from_slice(&row);
            w.item_bias[i as usize] = bias;
        }
    }
    let (model, _) = setup(backend, &w, dtype, 2, &mut rng);
    let queries = [
        TopKQuery {
            slot: 0,
            k: 5,
            exclude: &[],
        },
        TopKQuery {
            slot: 1,
            k: 4,
            exclude: &[500],
        },
    ];
    let got = backend.top_k(model, &queries).expect("top_k");
    let items = |v: &[Scored]| v.iter().map(|s| s.item).collect::<Vec<_>>();
    assert_eq!(
        items(&got[0]),
        [100, 500, 900, 7, 1030],
        "{dtype}: ties must be ordered by index"
    );
    assert_eq!(
        items(&got[1]),
        [100, 900, 7, 1030],
        "{dtype}: ties with an exclusion"
    );
    assert!(
        got[0][0].score == got[0][2].score && got[0][3].score == got[0][4].score,
        "{dtype}: clones must score alike"
    );
    backend.drop_model(model);
}

/// A NaN in the tables must not panic or shorten the answer (its rank is unspecified).
pub fn nan_scores_do_not_panic(backend: &mut dyn Backend, dtype: Dtype) {
    let (n, h) = (1037, 37);
    let mut rng = TestRng::new(600);
    let mut w = random_model(&mut rng, n, h, h, false);
    w.item_out[3 * h..][..h].fill(f32::NAN);
    w.item_bias[700] = f32::NAN;
    let (model, _) = setup(backend, &w, dtype, 2, &mut rng);
    for k in [1, 10, n] {
        let got = backend
            .top_k(
                model,
                &[TopKQuery {
                    slot: 0,
                    k,
                    exclude: &[5],
                }],
            )
            .expect("top_k with NaN scores");
        assert_eq!(got[0].len(), k.min(n - 1), "{dtype}: k={k} with NaN scores");
    }
    let s = backend
        .score(
            model,
            &[crate::ScoreQuery {
                slot: 1,
                candidates: &[3, 700, 4],
            }],
        )
        .expect("score with NaN");
    assert!(
        s[0][0].is_nan() && s[0][1].is_nan() && s[0][2].is_finite(),
        "{dtype}: NaN scores pass through score"
    );
    backend.drop_model(model);
}
