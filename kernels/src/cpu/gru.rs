//! The batched GRU session step on the CPU. Events are split into waves in which each slot appears at
//! most once (a slot's later events go to later waves, so they apply in order); each wave runs as two
//! small GEMMs on the shared micro-kernel (`x·W_ihᵀ`, `h·W_hhᵀ`) followed by the gate nonlinearity,
//! in parallel over row blocks when the wave is large.

use rayon::prelude::*;

use super::gemm::{gemm_panels, pack_rows};
use super::isa::{Isa, Vec8, multiversion};
use super::table::LANES;
use super::{CpuModel, PARALLEL_MIN_WORK};
use crate::Event;
use crate::waves::waves;

/// Rows per block (and parallel task): a multiple of the micro-kernel's 6 rows, small enough that a
/// block's activations stay in L1/L2 and a 4,096-event wave splits into ~85 tasks.
const CHUNK_ROWS: usize = 48;

/// Applies `events` to the row-major state table `states` (`hidden` wide). All slots and items have
/// been validated by the caller.
pub(super) fn step(
    pool: &rayon::ThreadPool,
    isa: Isa,
    m: &CpuModel,
    states: &mut [f32],
    events: &[Event],
) {
    let (ordered, bounds) = waves(events);
    for w in bounds.windows(2) {
        run_wave(pool, isa, m, states, &ordered[w[0]..w[1]]);
    }
}

fn run_wave(pool: &rayon::ThreadPool, isa: Isa, m: &CpuModel, states: &mut [f32], wave: &[Event]) {
    let h = m.hidden;
    let mut next = vec![0f32; wave.len() * h];
    let work = wave.len() * 3 * h * (m.embed + h);
    let prev: &[f32] = states;
    if work >= PARALLEL_MIN_WORK && wave.len() > CHUNK_ROWS {
        pool.install(|| {
            next.par_chunks_mut(CHUNK_ROWS * h)
                .zip(wave.par_chunks(CHUNK_ROWS))
                .for_each(|(out, evs)| step_rows(isa, m, prev, evs, out));
        });
    } else {
        for (out, evs) in next.chunks_mut(CHUNK_ROWS * h).zip(wave.chunks(CHUNK_ROWS)) {
            step_rows(isa, m, prev, evs, out);
        }
    }
    // Slots are distinct within a wave, so the scatter order does not matter.
    for (e, row) in wave.iter().zip(next.chunks_exact(h)) {
        states[e.slot as usize * h..][..h].copy_from_slice(row);
    }
}

multiversion! {
    /// New hidden states of `events` (distinct slots) into `out` (`events.len() × hidden`).
    fn step_rows(m: &CpuModel, states: &[f32], events: &[Event], out: &mut [f32]) => step_rows_generic
}

#[inline(always)]
fn step_rows_generic<V: Vec8>(m: &CpuModel, states: &[f32], events: &[Event], out: &mut [f32]) {
    let (e, h, rows) = (m.embed, m.hidden, events.len());
    let np = m.w_ih.n_panels();
    let g = np * LANES;
    let mut x = vec![0f32; rows * e];
    let mut hs = vec![0f32; rows * h];
    let items: Vec<usize> = events.iter().map(|ev| ev.item as usize).collect();
    m.input_rows(&items, &mut x);
    for (ev, hs) in events.iter().zip(hs.chunks_exact_mut(h)) {
        hs.copy_from_slice(&states[ev.slot as usize * h..][..h]);
    }
    let mut gi = vec![0f32; rows * g];
    let mut gh = vec![0f32; rows * g];
    let (mut scratch, mut packed) = (Vec::new(), Vec::new());
    pack_rows(&x, rows, e, &mut packed);
    gemm_panels::<V>(
        &packed,
        rows,
        e,
        m.w_ih.panels_f32(0, np, &mut scratch),
        np,
        &m.b_ih,
        &mut gi,
        g,
    );
    pack_rows(&hs, rows, h, &mut packed);
    gemm_panels::<V>(
        &packed,
        rows,
        h,
        m.w_hh.panels_f32(0, np, &mut scratch),
        np,
        &m.b_hh,
        &mut gh,
        g,
    );
    for (((gi, gh), hp), out) in gi
        .chunks_exact(g)
        .zip(gh.chunks_exact(g))
        .zip(hs.chunks_exact(h))
        .zip(out.chunks_exact_mut(h))
    {
        gates(&gi[..3 * h], &gh[..3 * h], hp, out);
    }
}

/// `nn.GRUCell` gates (order r, z, n) from the two projections; `h' = (1 − z)·n + z·h`.
///
/// Eight units at a time through fixed-size arrays, so that every line becomes one vector operation
/// whatever `hidden` is. Left to the plain loop, LLVM's vectoriser still ran part of each row as
/// scalar code at hidden 128 (perf: a third of the gate loop's samples).
#[inline(always)]
fn gates(gi: &[f32], gh: &[f32], h_prev: &[f32], out: &mut [f32]) {
    let h = out.len();
    let (gi_r, gi_z, gi_n) = (&gi[..h], &gi[h..2 * h], &gi[2 * h..3 * h]);
    let (gh_r, gh_z, gh_n) = (&gh[..h], &gh[h..2 * h], &gh[2 * h..3 * h]);
    let h_prev = &h_prev[..h];
    let body = h / 8 * 8;
    let [ir, iz, inn, hr, hz, hn, hp] =
        [gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, h_prev].map(|v| v[..body].as_chunks::<8>().0);
    let (o8, _) = out[..body].as_chunks_mut::<8>();
    for (c, o) in o8.iter_mut().enumerate() {
        for l in 0..8 {
            o[l] = unit(
                ir[c][l], iz[c][l], inn[c][l], hr[c][l], hz[c][l], hn[c][l], hp[c][l],
            );
        }
    }
    for j in body..h {
        out[j] = unit(
            gi_r[j], gi_z[j], gi_n[j], gh_r[j], gh_z[j], gh_n[j], h_prev[j],
        );
    }
}

/// One hidden unit of the GRU cell.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn unit(ir: f32, iz: f32, inn: f32, hr: f32, hz: f32, hn: f32, hp: f32) -> f32 {
    let r = sigmoid(ir + hr);
    let z = sigmoid(iz + hz);
    let n = 2.0 * sigmoid(2.0 * (inn + r * hn)) - 1.0; // tanh
    n + z * (hp - n)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `e^x` to ~2 ulp, branch-free so that the gate loop vectorises (the libm call does not): 2^n from
/// the exponent bits times a Cephes minimax polynomial on the reduced argument.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let pow2 = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    y * pow2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert!(sigmoid(f32::NEG_INFINITY) >= 0.0 && sigmoid(f32::INFINITY) == 1.0);
    }
}
