//! Fused output layer + sampled-softmax cross-entropy as one candle op on the hidden state:
//! `y = h · Oᵀ + c`, `loss = Σ_i (logsumexp_j y_ij − y_ii) / scale`, the positive of row i in column i.
//!
//! Why a custom op: the score matrix is `B × (B + n_sample)` (32 × 2080 with the paper settings). Built
//! from generic candle ops it costs about twenty passes over that matrix per step (bias add, log-Q shift,
//! log-softmax's max/sub/exp/sum/log, gather, their backward ops, and a zero-fill + add for every gradient
//! candle accumulates), each allocating a fresh matrix. Fused, the forward is one GEMM and one pass, the
//! backward one pass and two GEMMs, and the gradients of the gathered output rows and offsets go straight
//! to the optimiser instead of through candle's gradient store.

use std::sync::{Arc, Mutex};

use crate::simd;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

/// Gradients of the output rows and column offsets, filled by the backward pass.
#[derive(Default)]
pub struct OutputGrads {
    /// `M × H`, one row per output row.
    pub rows: Vec<f32>,
    /// `M`.
    pub offsets: Vec<f32>,
}

/// The op. `rows` are the gathered output embeddings (`M × H`, targets first, then sampled negatives),
/// `offsets` the output bias minus the log-Q correction.
pub struct SampledSoftmaxXe {
    pub rows: Arc<Vec<f32>>,
    pub offsets: Arc<Vec<f32>>,
    pub hidden: usize,
    pub scale: f32,
    /// Softmax of the forward pass per column block (`b × block` each), kept for the backward pass.
    probs: Mutex<Vec<Vec<f32>>>,
    grads: Arc<Mutex<OutputGrads>>,
}

impl SampledSoftmaxXe {
    pub fn new(
        rows: Vec<f32>,
        offsets: Vec<f32>,
        hidden: usize,
        scale: f32,
    ) -> (Self, Arc<Mutex<OutputGrads>>) {
        let grads = Arc::new(Mutex::new(OutputGrads::default()));
        let op = SampledSoftmaxXe {
            rows: Arc::new(rows),
            offsets: Arc::new(offsets),
            hidden,
            scale,
            probs: Mutex::new(Vec::new()),
            grads: grads.clone(),
        };
        (op, grads)
    }

    fn m(&self) -> usize {
        self.offsets.len()
    }
}

/// Row-major `out (m × n) = a (m × k) · b`, where `b` is given by its strides (`b_rs`, `b_cs`).
/// Single-threaded on purpose: at these sizes (≤ 32 × 2080 × 100) handing the GEMM to a second thread
/// measured 1.6× slower per epoch on the 2-core machine (wake-up and split overhead exceed the work).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    out: &mut [f32],
) {
    assert!(out.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    let run = |out: &mut [f32], parallelism: gemm::Parallelism| {
        // SAFETY: the asserts above keep every index the GEMM touches inside the slices; `out` is exclusive.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                a_cs as isize,
                a_rs as isize,
                b.as_ptr(),
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    run(out, gemm::Parallelism::None)
}

/// The columns (output rows) are processed in this many blocks, in parallel when the training pool has
/// the threads. The split is fixed, so the result is the same whatever the thread count.
const PARTS: usize = 2;

impl SampledSoftmaxXe {
    /// Column ranges of the blocks.
    fn parts(&self) -> [std::ops::Range<usize>; PARTS] {
        let m = self.m();
        let mid = m.div_ceil(PARTS);
        [0..mid, mid..m]
    }
}

/// One column block of the forward pass: `exp(h · O_blockᵀ + c − rowmax)` (`b × cols`), with the row
/// maxima and sums of the block.
fn forward_block(
    hs: &[f32],
    b: usize,
    h: usize,
    rows: &[f32],
    offsets: &[f32],
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let cols = offsets.len();
    let mut y = vec![0f32; b * cols];
    // y = h · Oᵀ: Oᵀ is O (cols × h, row-major) read with row stride 1 and column stride h.
    gemm(b, cols, h, hs, h, 1, rows, 1, h, &mut y);
    let stats = if cols == 0 {
        vec![(f32::NEG_INFINITY, 0.0); b]
    } else {
        y.chunks_exact_mut(cols)
            .map(|row| simd::exp_shift_in_place(row, offsets))
            .collect()
    };
    (y, stats)
}

/// One column block of the backward pass: turns the block's probabilities into `dY` in place, and returns
/// its partial `dh = dY · O_block`, `dO_block = dYᵀ · h` and the offsets' gradient.
fn backward_block(
    probs: &mut [f32],
    first_col: usize,
    b: usize,
    hd: usize,
    g: f32,
    rows: &[f32],
    hv: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let cols = rows.len() / hd;
    let mut d_off = vec![0f32; cols];
    if cols > 0 {
        for (i, row) in probs.chunks_exact_mut(cols).enumerate() {
            // The positive of row i sits in column i.
            if (first_col..first_col + cols).contains(&i) {
                row[i - first_col] -= 1.0;
            }
            row.iter_mut().zip(d_off.iter_mut()).for_each(|(v, d)| {
                *v *= g;
                *d += *v;
            });
        }
    }
    let mut dh = vec![0f32; b * hd];
    gemm(b, hd, cols, probs, cols, 1, rows, hd, 1, &mut dh);
    let mut d_rows = vec![0f32; cols * hd];
    gemm(cols, hd, b, probs, 1, cols, hv, hd, 1, &mut d_rows);
    (dh, d_rows, d_off)
}

impl CustomOp1 for SampledSoftmaxXe {
    fn name(&self) -> &'static str {
        "sampled-softmax-xe"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h) = l.shape().dims2()?;
        let Some((lo, hi)) = l.contiguous_offsets() else {
            bail!("sampled-softmax-xe: hidden state must be contiguous")
        };
        let hs = &s.as_slice::<f32>()?[lo..hi];
        let m = self.m();
        if h != self.hidden || self.rows.len() != m * h || b > m {
            bail!(
                "sampled-softmax-xe: hidden {b}×{h} does not fit {m} output rows of width {}",
                self.hidden
            );
        }
        let [pa, pb] = self.parts();
        let block = |p: &std::ops::Range<usize>| {
            forward_block(
                hs,
                b,
                h,
                &self.rows[p.start * h..p.end * h],
                &self.offsets[p.clone()],
            )
        };
        let ((mut ya, sa), (mut yb, sb)) = rayon::join(|| block(&pa), || block(&pb));
        // Combine the blocks' (max, sum) per row into the softmax normaliser; the loss needs the raw
        // score of the positive, recomputed as one dot product per row.
        let mut loss = 0f64;
        for i in 0..b {
            let ((ma, suma), (mb, sumb)) = (sa[i], sb[i]);
            let max = ma.max(mb);
            let (wa, wb) = (simd::exp(ma - max), simd::exp(mb - max));
            let total = suma * wa + sumb * wb;
            let pos: f32 = hs[i * h..(i + 1) * h]
                .iter()
                .zip(&self.rows[i * h..(i + 1) * h])
                .map(|(x, y)| x * y)
                .sum::<f32>()
                + self.offsets[i];
            loss += (max + total.ln() - pos) as f64;
            let (ca, cb) = (pa.len(), pb.len());
            simd::scale(&mut ya[i * ca..(i + 1) * ca], wa / total);
            simd::scale(&mut yb[i * cb..(i + 1) * cb], wb / total);
        }
        *self.probs.lock().expect("probs lock") = vec![ya, yb];
        Ok((
            CpuStorage::F32(vec![(loss / self.scale as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, hd) = h.dims2()?;
        let g = grad.to_scalar::<f32>()? / self.scale;
        let hv = h.flatten_all()?.to_vec1::<f32>()?;
        let mut probs = std::mem::take(&mut *self.probs.lock().expect("probs lock"));
        let [pa, pb] = self.parts();
        let (first, second) = probs.split_at_mut(1);
        let (ra, rb) = (
            &self.rows[pa.start * hd..pa.end * hd],
            &self.rows[pb.start * hd..pb.end * hd],
        );
        let ((mut dh, mut d_rows, mut d_off), (dh_b, d_rows_b, d_off_b)) = rayon::join(
            || backward_block(&mut first[0], pa.start, b, hd, g, ra, &hv),
            || backward_block(&mut second[0], pb.start, b, hd, g, rb, &hv),
        );
        dh.iter_mut().zip(&dh_b).for_each(|(a, b)| *a += b);
        d_rows.extend_from_slice(&d_rows_b);
        d_off.extend_from_slice(&d_off_b);
        *self.grads.lock().expect("grads lock") = OutputGrads {
            rows: d_rows,
            offsets: d_off,
        };
        Ok(Some(Tensor::from_vec(dh, (b, hd), h.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    /// The fused op must give the loss and gradients of the plain candle formulation.
    #[test]
    fn matches_unfused_candle_ops() {
        let dev = Device::Cpu;
        let (b, m, h) = (3usize, 7usize, 5usize);
        let hv: Vec<f32> = (0..b * h)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.25)
            .collect();
        let ov: Vec<f32> = (0..m * h)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let cv: Vec<f32> = (0..m).map(|j| (j as f32 - 3.0) * 0.2).collect();

        let h1 = Var::from_slice(&hv, (b, h), &dev).unwrap();
        let (op, grads) = SampledSoftmaxXe::new(ov.clone(), cv.clone(), h, 2.0);
        let fused = h1.as_tensor().apply_op1(op).unwrap();
        let g1 = fused.backward().unwrap();
        let fused_grads = grads.lock().unwrap();

        let h2 = Var::from_slice(&hv, (b, h), &dev).unwrap();
        let o2 = Var::from_slice(&ov, (m, h), &dev).unwrap();
        let c2 = Var::from_slice(&cv, m, &dev).unwrap();
        let y = h2.as_tensor().matmul(&o2.as_tensor().t().unwrap()).unwrap();
        let z = y
            .broadcast_add(&c2.as_tensor().unsqueeze(0).unwrap())
            .unwrap();
        let ls = candle_nn::ops::log_softmax(&z, D::Minus1).unwrap();
        let idx = Tensor::from_vec((0..b as u32).collect::<Vec<_>>(), (b, 1), &dev).unwrap();
        let plain = (ls
            .gather(&idx, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .neg()
            .unwrap()
            / 2.0)
            .unwrap();
        let g2 = plain.backward().unwrap();

        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
        };
        assert!(
            (fused.to_scalar::<f32>().unwrap() - plain.to_scalar::<f32>().unwrap()).abs() < 1e-5
        );
        assert!(close(
            &v(g1.get(h1.as_tensor()).unwrap()),
            &v(g2.get(h2.as_tensor()).unwrap())
        ));
        assert!(close(
            &fused_grads.rows,
            &v(g2.get(o2.as_tensor()).unwrap())
        ));
        assert!(close(
            &fused_grads.offsets,
            &v(g2.get(c2.as_tensor()).unwrap())
        ));
    }
}
