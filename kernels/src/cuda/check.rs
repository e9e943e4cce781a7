//! Cross-check of a backend against the CPU backend on the same seeded inputs, beyond the shared
//! conformance suite (which checks each backend against the f64 reference): GRU states and scores
//! agree within the dtype's tolerance, and top-k answers agree item for item wherever scores are not
//! tied within that tolerance. Used by `tests/conformance_cuda.rs` and the `gpu-check` binary.

use crate::conformance::{TestRng, random_model, tolerance};
use crate::{Backend, CpuBackend, Dtype, Event, ScoreQuery, Scored, TopKQuery};

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1.0)
}

/// Runs the comparison for every dtype; `Err` describes the first disagreement.
pub fn compare_with_cpu(backend: &mut dyn Backend) -> Result<(), String> {
    let mut cpu = CpuBackend::new(Some(2)).map_err(|e| e.to_string())?;
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
        // (n_items, embed, hidden, tied): odd widths, untied, and a catalogue of many tiles.
        for (case, &(n, e, h, tied)) in [
            (1037, 37, 37, true),
            (5000, 48, 64, false),
            (70_001, 128, 128, true),
        ]
        .iter()
        .enumerate()
        {
            let ctx = format!("{dtype} n={n} e={e} h={h} tied={tied}");
            compare_case(backend, &mut cpu, dtype, 900 + case as u64, (n, e, h, tied))
                .map_err(|m| format!("{ctx}: {m}"))?;
        }
        ties_in_large_batches(backend, dtype).map_err(|m| format!("{dtype}: {m}"))?;
    }
    Ok(())
}

/// Clones (same embedding and bias) must tie exactly and come back in index order for batches large
/// enough to take the grouped (and, for bf16, tensor-core) scan, which the conformance tie test with
/// its two queries does not reach.
fn ties_in_large_batches(gpu: &mut dyn Backend, dtype: Dtype) -> Result<(), String> {
    let err = |e: crate::BackendError| e.to_string();
    let (n, h) = (3000, 64);
    let mut rng = TestRng::new(950);
    let mut w = random_model(&mut rng, n, h, h, true);
    let row: Vec<f32> = w.item_out[..h].to_vec();
    for &i in &[2900usize, 100, 1500] {
        w.item_out[i * h..][..h].copy_from_slice(&row);
        w.item_bias[i] = 10.0;
    }
    let model = gpu.upload_model(&w, dtype).map_err(err)?;
    gpu.alloc_states(16, h).map_err(err)?;
    for slot in 0..16 {
        gpu.write_state(slot, &rng.vec(h, 0.9)).map_err(err)?;
    }
    for batch in [8u32, 16] {
        let queries: Vec<TopKQuery<'_>> = (0..batch)
            .map(|slot| TopKQuery {
                slot,
                k: 3,
                exclude: &[],
            })
            .collect();
        let got = gpu.top_k(model, &queries).map_err(err)?;
        for (q, answer) in got.iter().enumerate() {
            let items: Vec<u32> = answer.iter().map(|s| s.item).collect();
            if items != [100, 1500, 2900] || answer[0].score != answer[2].score {
                return Err(format!("batch {batch} query {q}: clones {answer:?}"));
            }
        }
    }
    gpu.drop_model(model);
    Ok(())
}

fn compare_case(
    gpu: &mut dyn Backend,
    cpu: &mut CpuBackend,
    dtype: Dtype,
    seed: u64,
    (n, e, h, tied): (usize, usize, usize, bool),
) -> Result<(), String> {
    let tol = tolerance(dtype);
    let err = |e: crate::BackendError| e.to_string();
    let mut rng = TestRng::new(seed);
    let w = random_model(&mut rng, n, e, h, tied);
    let capacity = 300;
    let (gm, cm) = (
        gpu.upload_model(&w, dtype).map_err(err)?,
        cpu.upload_model(&w, dtype).map_err(err)?,
    );
    gpu.alloc_states(capacity, h).map_err(err)?;
    cpu.alloc_states(capacity, h).map_err(err)?;
    for slot in 0..capacity as u32 {
        let row = rng.vec(h, 0.9);
        gpu.write_state(slot, &row).map_err(err)?;
        cpu.write_state(slot, &row).map_err(err)?;
    }

    // 1,000 events over 250 slots (each slot ~4 times, so several waves), then compare every state.
    let events: Vec<Event> = (0..1000)
        .map(|_| Event {
            slot: rng.below(250) as u32,
            item: rng.below(n) as u32,
        })
        .collect();
    gpu.gru_step(gm, &events).map_err(err)?;
    cpu.gru_step(cm, &events).map_err(err)?;
    for slot in 0..capacity as u32 {
        let (g, c) = (
            gpu.read_state(slot).map_err(err)?,
            cpu.read_state(slot).map_err(err)?,
        );
        if let Some(i) = (0..h).find(|&i| !close(f64::from(g[i]), f64::from(c[i]), tol)) {
            return Err(format!(
                "gru_step slot {slot} dim {i}: cuda {} cpu {}",
                g[i], c[i]
            ));
        }
    }

    let cands: Vec<Vec<u32>> = (0..64)
        .map(|_| {
            (0..1 + rng.below(200))
                .map(|_| rng.below(n) as u32)
                .collect()
        })
        .collect();
    let queries: Vec<ScoreQuery<'_>> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| ScoreQuery {
            slot: (i * 3) as u32,
            candidates: c,
        })
        .collect();
    let (g, c) = (
        gpu.score(gm, &queries).map_err(err)?,
        cpu.score(cm, &queries).map_err(err)?,
    );
    for (q, (gs, cs)) in g.iter().zip(&c).enumerate() {
        if let Some(i) = (0..cs.len()).find(|&i| !close(f64::from(gs[i]), f64::from(cs[i]), tol)) {
            return Err(format!(
                "score query {q} candidate {i}: cuda {} cpu {}",
                gs[i], cs[i]
            ));
        }
    }

    let excludes: Vec<Vec<u32>> = (0..40)
        .map(|_| (0..rng.below(60)).map(|_| rng.below(n) as u32).collect())
        .collect();
    for (batch, k) in [(1, 20), (16, 100), (40, 1), (5, 2048), (3, 3000)] {
        let queries: Vec<TopKQuery<'_>> = (0..batch)
            .map(|i| TopKQuery {
                slot: rng.below(capacity) as u32,
                k,
                exclude: &excludes[i],
            })
            .collect();
        let (g, c) = (
            gpu.top_k(gm, &queries).map_err(err)?,
            cpu.top_k(cm, &queries).map_err(err)?,
        );
        for (q, (ga, ca)) in g.iter().zip(&c).enumerate() {
            same_top_k(ga, ca, tol)
                .map_err(|m| format!("top_k batch {batch} k {k} query {q}: {m}"))?;
        }
    }
    gpu.drop_model(gm);
    cpu.drop_model(cm);
    Ok(())
}

/// Same length; scores agree position by position; items agree wherever the CPU's score at that
/// position is more than twice the tolerance from its neighbours (otherwise the order is a tie). At the
/// last position the next item is unknown, so there only the score must agree.
fn same_top_k(got: &[Scored], want: &[Scored], tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} items, cpu {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (gs, ws) = (f64::from(g.score), f64::from(w.score));
        if !close(gs, ws, tol) {
            return Err(format!("position {i}: cuda {g:?}, cpu {w:?}"));
        }
        let margin = 2.0 * tol * ws.abs().max(1.0);
        let apart = |j: usize| {
            want.get(j)
                .is_none_or(|o| (f64::from(o.score) - ws).abs() > margin)
        };
        if g.item != w.item && (i == 0 || apart(i - 1)) && i + 1 < want.len() && apart(i + 1) {
            return Err(format!("position {i}: cuda {g:?}, cpu {w:?} (not a tie)"));
        }
    }
    Ok(())
}
