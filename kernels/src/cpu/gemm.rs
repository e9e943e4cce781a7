//! The dense micro-kernel shared by catalogue scoring and the GRU step: `out = bias + A·Pᵀ`, where `A`
//! is a few row-major rows (queries or events) and `P` a run of 16-row panels (see `table.rs`).
//!
//! Register blocking: each kernel call keeps an `MR × (NP·16)` tile of f32 accumulators in registers
//! (6 × 16 = 12 AVX2 registers for many rows, 1 × 64 = 8 registers for one row), so one load of a
//! panel's 16 values feeds `MR` FMAs and there are always ≥ 8 independent FMA chains to hide latency.

use super::isa::{PanelElem, Vec8};
use super::table::LANES;

/// Rows per group when `m ≥ 4` (the tall kernel's `MR`); below that every row is its own group.
const MR_TALL: usize = 6;

fn group_rows(m: usize) -> usize {
    if m < 4 { 1 } else { MR_TALL }
}

/// Packs the row-major `m × d` matrix `a` for [`gemm_panels`]: groups of [`group_rows`] rows, each
/// group stored dimension-major (`group[p][i]`), so that the kernel reads its rows' values for one
/// dimension from one place with a single moving pointer (no per-row address arithmetic).
#[inline(always)]
pub(crate) fn pack_rows(a: &[f32], m: usize, d: usize, out: &mut Vec<f32>) {
    let g = group_rows(m);
    out.clear();
    out.resize(m * d, 0.0);
    for (first, group) in (0..m).step_by(g).zip(out.chunks_mut(g * d)) {
        let w = g.min(m - first);
        for i in 0..w {
            for (p, &v) in a[(first + i) * d..][..d].iter().enumerate() {
                group[p * w + i] = v;
            }
        }
    }
}

/// The row groups [`pack_rows`] makes of `m` rows: `(first row, rows in the group)`.
pub(crate) fn row_groups(m: usize) -> impl Iterator<Item = (usize, usize)> {
    let g = group_rows(m);
    (0..m)
        .step_by(g)
        .map(move |first| (first, g.min(m - first)))
}

/// `out[i·ldo + j] = bias[j] + Σ_p a[i][p] · panels[j / 16][p][j % 16]` for `i < m`, `j < np·16`,
/// where `a` is packed by [`pack_rows`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_panels<V: Vec8>(
    a: &[f32],
    m: usize,
    d: usize,
    panels: &[f32],
    np: usize,
    bias: &[f32],
    out: &mut [f32],
    ldo: usize,
) {
    for (first, w) in row_groups(m) {
        gemm_group::<V>(
            &a[first * d..][..w * d],
            w,
            d,
            panels,
            np,
            bias,
            &mut out[first * ldo..],
            ldo,
        );
    }
}

/// [`gemm_panels`] for one packed group of `w ≤ 6` rows (`a[p][i]`, `a.len() == w·d`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_group<V: Vec8>(
    a: &[f32],
    w: usize,
    d: usize,
    panels: &[f32],
    np: usize,
    bias: &[f32],
    out: &mut [f32],
    ldo: usize,
) {
    if w == 0 || np == 0 {
        return;
    }
    assert!(w <= MR_TALL && a.len() == w * d && panels.len() >= np * d * LANES);
    assert!(
        bias.len() >= np * LANES && ldo >= np * LANES && out.len() >= (w - 1) * ldo + np * LANES
    );
    // Six rows make 12 accumulator vectors; fewer rows take more panels per call (or, for one row, split
    // the dimension loop) so that there are still ≥ 8 independent FMA chains to cover the FMA latency.
    match w {
        6 => row_group::<V, 6, 1>(a, d, panels, np, bias, out, ldo),
        5 => row_group::<V, 5, 1>(a, d, panels, np, bias, out, ldo),
        4 => row_group::<V, 4, 1>(a, d, panels, np, bias, out, ldo),
        3 => row_group::<V, 3, 2>(a, d, panels, np, bias, out, ldo),
        2 => row_group::<V, 2, 2>(a, d, panels, np, bias, out, ldo),
        _ => row_panels::<V, f32>(a, panels, np, bias, out),
    }
}

/// `MR` packed rows against all `np` panels, `NP` panels per kernel call (the rest one at a time).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_group<V: Vec8, const MR: usize, const NP: usize>(
    a: &[f32],
    d: usize,
    panels: &[f32],
    np: usize,
    bias: &[f32],
    out: &mut [f32],
    ldo: usize,
) {
    let pl = d * LANES;
    let mut n = 0;
    while n + NP <= np {
        let (p, b, o) = (
            &panels[n * pl..][..NP * pl],
            &bias[n * LANES..],
            &mut out[n * LANES..],
        );
        kernel::<V, MR, NP>(a, p, b, o, ldo);
        n += NP;
    }
    for n in n..np {
        let (p, b, o) = (
            &panels[n * pl..][..pl],
            &bias[n * LANES..],
            &mut out[n * LANES..],
        );
        kernel::<V, MR, 1>(a, p, b, o, ldo);
    }
}

/// One row `a` against `np` panels stored as `E` (f32, or bf16/f16 widened in the load), panel by
/// panel: the table is then read as one sequential stream, which the hardware prefetcher follows far
/// better than the four interleaved 4 KiB streams of a four-panel tile (measured: 1.7× at batch 1).
#[inline(always)]
pub(crate) fn row_panels<V: Vec8, E: PanelElem>(
    a: &[f32],
    panels: &[E],
    np: usize,
    bias: &[f32],
    out: &mut [f32],
) {
    let pl = a.len() * LANES;
    assert!(panels.len() >= np * pl && bias.len() >= np * LANES && out.len() >= np * LANES);
    for n in 0..np {
        let (p, b, o) = (
            &panels[n * pl..][..pl],
            &bias[n * LANES..],
            &mut out[n * LANES..],
        );
        kernel_row::<V, E>(a, p, b, o);
    }
}

/// One row against one panel, the dimension loop split four ways for 8 independent FMA chains.
#[inline(always)]
fn kernel_row<V: Vec8, E: PanelElem>(a: &[f32], panel: &[E], bias: &[f32], out: &mut [f32]) {
    let d = a.len();
    let pan = &panel.as_chunks::<8>().0[..2 * d];
    let (b, _) = bias[..LANES].as_chunks::<8>();
    let mut acc = [[V::splat(0.0); 2]; 4];
    acc[0] = [V::load(&b[0]), V::load(&b[1])];
    // Dimension p's 16 values are the eight-value chunks 2p and 2p + 1.
    let (a4, a_rest) = a.as_chunks::<4>();
    let (p4, p_rest) = pan.as_chunks::<8>();
    for (x, c) in a4.iter().zip(p4) {
        for j in 0..4 {
            let xj = V::splat(x[j]);
            acc[j][0] = V::mul_add(xj, E::load8(&c[2 * j]), acc[j][0]);
            acc[j][1] = V::mul_add(xj, E::load8(&c[2 * j + 1]), acc[j][1]);
        }
    }
    for (&x, c) in a_rest.iter().zip(p_rest.chunks_exact(2)) {
        let xj = V::splat(x);
        acc[0][0] = V::mul_add(xj, E::load8(&c[0]), acc[0][0]);
        acc[0][1] = V::mul_add(xj, E::load8(&c[1]), acc[0][1]);
    }
    let (o, _) = out[..LANES].as_chunks_mut::<8>();
    for h in 0..2 {
        V::add(V::add(acc[0][h], acc[1][h]), V::add(acc[2][h], acc[3][h])).store(&mut o[h]);
    }
}

/// One register tile: `MR` packed rows (`a[p][i]`, `a.len() == MR·d`) against `NP` consecutive panels.
#[inline(always)]
fn kernel<V: Vec8, const MR: usize, const NP: usize>(
    a: &[f32],
    panels: &[f32],
    bias: &[f32],
    out: &mut [f32],
    ldo: usize,
) {
    let (a, _) = a.as_chunks::<MR>();
    let d = a.len();
    // Every slice is exactly `d` long, so the indexing below needs no bounds checks.
    let pans: [&[[f32; LANES]]; NP] =
        std::array::from_fn(|n| &panels.as_chunks::<LANES>().0[n * d..][..d]);
    // LANES = 16 = two 8-lane vectors per panel row.
    let mut acc = [[[V::splat(0.0); 2]; NP]; MR];
    for n in 0..NP {
        let b = &bias[n * LANES..][..LANES];
        let (b, _) = b.as_chunks::<8>();
        for row in acc.iter_mut() {
            row[n] = [V::load(&b[0]), V::load(&b[1])];
        }
    }
    for (p, x) in a.iter().enumerate() {
        for n in 0..NP {
            let (c, _) = pans[n][p].as_chunks::<8>();
            let c = [V::load(&c[0]), V::load(&c[1])];
            for i in 0..MR {
                let xi = V::splat(x[i]);
                acc[i][n][0] = V::mul_add(xi, c[0], acc[i][n][0]);
                acc[i][n][1] = V::mul_add(xi, c[1], acc[i][n][1]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (n, v) in row.iter().enumerate() {
            let (o, _) = out[i * ldo + n * LANES..][..LANES].as_chunks_mut::<8>();
            v[0].store(&mut o[0]);
            v[1].store(&mut o[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::isa::{Isa, multiversion};
    use super::super::table::{PanelTable, PanelsRef};
    use super::*;
    use crate::Dtype;

    multiversion! {
        fn gemm_dispatch(a: &[f32], m: usize, d: usize, panels: &[f32], np: usize, bias: &[f32], out: &mut [f32], ldo: usize) => gemm_panels
    }

    fn matrix(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_naive_for_every_tile_shape() {
        for isa in [Isa::Portable, Isa::detect()] {
            for (m, d, n) in [
                (1, 7, 5),
                (2, 37, 70),
                (3, 16, 64),
                (4, 5, 17),
                (7, 64, 33),
                (13, 100, 129),
                (64, 128, 48),
            ] {
                let a = matrix(m, d, 1);
                let w = matrix(n, d, 2);
                let bias: Vec<f32> = matrix(1, n.div_ceil(LANES) * LANES, 3);
                let t = PanelTable::pack(&w, n, d, LANES, Dtype::F32);
                let np = t.n_panels();
                let ldo = np * LANES + 3;
                let mut out = vec![f32::NAN; m * ldo];
                let (mut scratch, mut packed) = (Vec::new(), Vec::new());
                pack_rows(&a, m, d, &mut packed);
                gemm_dispatch(
                    isa,
                    &packed,
                    m,
                    d,
                    t.panels_f32(0, np, &mut scratch),
                    np,
                    &bias,
                    &mut out,
                    ldo,
                );
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = bias[j] as f64
                            + (0..d)
                                .map(|p| a[i * d + p] as f64 * w[j * d + p] as f64)
                                .sum::<f64>();
                        let got = out[i * ldo + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{isa:?} m={m} d={d} n={n} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    multiversion! {
        fn row_dispatch(a: &[f32], t: &PanelTable, out: &mut [f32]) => row_all_dtypes
    }

    /// Scores of one row against every panel of `t`, widening bf16/f16 in the kernel's loads.
    #[inline(always)]
    fn row_all_dtypes<V: Vec8>(a: &[f32], t: &PanelTable, out: &mut [f32]) {
        let np = t.n_panels();
        let bias = vec![0.5; np * LANES];
        match t.panels_raw(0, np) {
            PanelsRef::F32(p) => row_panels::<V, f32>(a, p, np, &bias, out),
            PanelsRef::Bf16(p) => row_panels::<V, half::bf16>(a, p, np, &bias, out),
            PanelsRef::F16(p) => row_panels::<V, half::f16>(a, p, np, &bias, out),
        }
    }

    #[test]
    fn widening_loads_match_converted_panels() {
        let (n, d) = (37, 70);
        let (a, w) = (matrix(1, d, 4), matrix(n, d, 5));
        for isa in [Isa::Portable, Isa::detect()] {
            for dtype in [Dtype::Bf16, Dtype::F16] {
                let t = PanelTable::pack(&w, n, d, LANES, dtype);
                let np = t.n_panels();
                let mut scratch = Vec::new();
                let as_f32 = t.panels_f32(0, np, &mut scratch).to_vec();
                let f = PanelTable::pack(&unpack(&as_f32, n, d), n, d, LANES, Dtype::F32);
                let (mut got, mut want) = (vec![0.0; np * LANES], vec![0.0; np * LANES]);
                row_dispatch(isa, &a, &t, &mut got);
                row_dispatch(isa, &a, &f, &mut want);
                assert_eq!(got, want, "{isa:?} {dtype}");
            }
        }
    }

    /// The row-major matrix behind 16-row panels.
    fn unpack(panels: &[f32], n: usize, d: usize) -> Vec<f32> {
        let mut rows = vec![0.0; n * d];
        for r in 0..n {
            for p in 0..d {
                rows[r * d + p] = panels[(r / LANES) * d * LANES + p * LANES + r % LANES];
            }
        }
        rows
    }
}
