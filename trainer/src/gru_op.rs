//! One GRU step (PyTorch `GRUCell` equations, gate order r, z, n) as a fused candle op on the input
//! embeddings, with a hand-written backward pass.
//!
//! Why fused: the step is ~25 small candle ops (two matmuls, narrows, sigmoids, tanh, products) and as many
//! backward ops, each allocating, and candle fans every matmul out over all cores, which costs more than it
//! gains at 32 × 100. Fused, a training step is three small GEMMs and two passes over `B × 3H`. The hidden
//! state entering the step is a constant (GRU4Rec's one-step truncated BPTT), so the op differentiates with
//! respect to its input `x` (returned to candle) and the weights (handed to the optimiser directly).
//! The test checks both directions against candle's own ops on the same equations.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};

use crate::xe_op::gemm;

/// Weight gradients of one step, filled by the backward pass (layouts as in `Gru4Rec`).
#[derive(Default)]
pub struct GruGrads {
    pub w_ih_t: Vec<f32>,
    pub w_hh_t: Vec<f32>,
    pub b_ih: Vec<f32>,
    pub b_hh: Vec<f32>,
}

/// The op's saved activations.
#[derive(Default)]
struct Saved {
    x: Vec<f32>,
    r: Vec<f32>,
    z: Vec<f32>,
    n: Vec<f32>,
    gh_n: Vec<f32>,
}

pub struct GruStep<'a> {
    /// `E × 3H`, `H × 3H`, `3H`, `3H`.
    pub w_ih_t: &'a [f32],
    pub w_hh_t: &'a [f32],
    pub b_ih: &'a [f32],
    pub b_hh: &'a [f32],
    /// Incoming hidden state `B × H` (a constant).
    pub h: &'a [f32],
    pub hidden: usize,
}

/// The candle op; owns copies of what the backward pass needs.
pub struct GruStepOp {
    w_ih_t: Arc<Vec<f32>>,
    h: Vec<f32>,
    hidden: usize,
    w_hh_t: Vec<f32>,
    b_ih: Vec<f32>,
    b_hh: Vec<f32>,
    saved: Mutex<Saved>,
    grads: Arc<Mutex<GruGrads>>,
}

impl GruStepOp {
    pub fn new(s: GruStep<'_>) -> (Self, Arc<Mutex<GruGrads>>) {
        let grads = Arc::new(Mutex::new(GruGrads::default()));
        let op = GruStepOp {
            w_ih_t: Arc::new(s.w_ih_t.to_vec()),
            h: s.h.to_vec(),
            hidden: s.hidden,
            w_hh_t: s.w_hh_t.to_vec(),
            b_ih: s.b_ih.to_vec(),
            b_hh: s.b_hh.to_vec(),
            saved: Mutex::new(Saved::default()),
            grads: grads.clone(),
        };
        (op, grads)
    }
}

#[inline]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + crate::simd::exp(-v))
}

/// `tanh(v) = 2σ(2v) − 1`: through the polynomial `exp` instead of libm's `tanhf` (absolute error ~1e-7).
#[inline]
fn tanh(v: f32) -> f32 {
    2.0 * sigmoid(2.0 * v) - 1.0
}

impl CustomOp1 for GruStepOp {
    fn name(&self) -> &'static str {
        "gru-step"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, e) = l.shape().dims2()?;
        let Some((lo, hi)) = l.contiguous_offsets() else {
            bail!("gru-step: input must be contiguous")
        };
        let x = &s.as_slice::<f32>()?[lo..hi];
        let h = self.hidden;
        let g3 = 3 * h;
        if self.w_ih_t.len() != e * g3 || self.h.len() != b * h {
            bail!(
                "gru-step: input {b}×{e} does not fit W_ih {} or state {}",
                self.w_ih_t.len(),
                self.h.len()
            );
        }
        let mut gi = vec![0f32; b * g3];
        gemm(b, g3, e, x, e, 1, &self.w_ih_t, g3, 1, &mut gi);
        let mut gh = vec![0f32; b * g3];
        gemm(b, g3, h, &self.h, h, 1, &self.w_hh_t, g3, 1, &mut gh);
        let mut saved = Saved {
            x: x.to_vec(),
            r: vec![0.0; b * h],
            z: vec![0.0; b * h],
            n: vec![0.0; b * h],
            gh_n: vec![0.0; b * h],
        };
        let mut out = vec![0f32; b * h];
        for i in 0..b {
            let (gi, gh) = (&gi[i * g3..(i + 1) * g3], &gh[i * g3..(i + 1) * g3]);
            for j in 0..h {
                let r = sigmoid(gi[j] + self.b_ih[j] + gh[j] + self.b_hh[j]);
                let z = sigmoid(gi[h + j] + self.b_ih[h + j] + gh[h + j] + self.b_hh[h + j]);
                let ghn = gh[2 * h + j] + self.b_hh[2 * h + j];
                let n = tanh(gi[2 * h + j] + self.b_ih[2 * h + j] + r * ghn);
                let k = i * h + j;
                out[k] = n + z * (self.h[k] - n);
                (saved.r[k], saved.z[k], saved.n[k], saved.gh_n[k]) = (r, z, n, ghn);
            }
        }
        *self.saved.lock().expect("saved lock") = saved;
        Ok((CpuStorage::F32(out), Shape::from((b, h))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, e) = x.dims2()?;
        let h = self.hidden;
        let g3 = 3 * h;
        let dout = grad.flatten_all()?.to_vec1::<f32>()?;
        let sv = std::mem::take(&mut *self.saved.lock().expect("saved lock"));
        // Gate gradients: dgi = [dr', dz', dn'], dgh = [dr', dz', dn' ⊙ r] (pre-activation).
        let mut dgi = vec![0f32; b * g3];
        let mut dgh = vec![0f32; b * g3];
        for i in 0..b {
            for j in 0..h {
                let k = i * h + j;
                let (r, z, n, d) = (sv.r[k], sv.z[k], sv.n[k], dout[k]);
                let dn = d * (1.0 - z) * (1.0 - n * n);
                let dz = d * (self.h[k] - n) * z * (1.0 - z);
                let dr = dn * sv.gh_n[k] * r * (1.0 - r);
                let (gi, gh) = (
                    &mut dgi[i * g3..(i + 1) * g3],
                    &mut dgh[i * g3..(i + 1) * g3],
                );
                (gi[j], gi[h + j], gi[2 * h + j]) = (dr, dz, dn);
                (gh[j], gh[h + j], gh[2 * h + j]) = (dr, dz, dn * r);
            }
        }
        // dW_ih_t = xᵀ · dgi, dW_hh_t = hᵀ · dgh, biases = column sums, dx = dgi · W_ih_tᵀ.
        let mut w_ih_t = vec![0f32; e * g3];
        gemm(e, g3, b, &sv.x, 1, e, &dgi, g3, 1, &mut w_ih_t);
        let mut w_hh_t = vec![0f32; h * g3];
        gemm(h, g3, b, &self.h, 1, h, &dgh, g3, 1, &mut w_hh_t);
        let colsum = |m: &[f32]| {
            let mut s = vec![0f32; g3];
            m.chunks_exact(g3)
                .for_each(|row| s.iter_mut().zip(row).for_each(|(a, v)| *a += v));
            s
        };
        let mut dx = vec![0f32; b * e];
        gemm(b, e, g3, &dgi, g3, 1, &self.w_ih_t, 1, g3, &mut dx);
        *self.grads.lock().expect("grads lock") = GruGrads {
            w_ih_t,
            w_hh_t,
            b_ih: colsum(&dgi),
            b_hh: colsum(&dgh),
        };
        Ok(Some(Tensor::from_vec(dx, (b, e), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gru_cell;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    #[test]
    fn forward_and_backward_match_candle_autograd() {
        let dev = Device::Cpu;
        let (b, e, h) = (3usize, 5usize, 4usize);
        let mut rng = SmallRng::seed_from_u64(4);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (x, hs, wi, wh, bi, bh, dout) = (
            rand(b * e),
            rand(b * h),
            rand(e * 3 * h),
            rand(h * 3 * h),
            rand(3 * h),
            rand(3 * h),
            rand(b * h),
        );

        let xv = Var::from_slice(&x, (b, e), &dev).unwrap();
        let (op, grads) = GruStepOp::new(GruStep {
            w_ih_t: &wi,
            w_hh_t: &wh,
            b_ih: &bi,
            b_hh: &bh,
            h: &hs,
            hidden: h,
        });
        let fused = xv.as_tensor().apply_op1(op).unwrap();
        let upstream = Tensor::from_slice(&dout, (b, h), &dev).unwrap();
        let g1 = (&fused * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let x2 = Var::from_slice(&x, (b, e), &dev).unwrap();
        let vars = [
            Var::from_slice(&wi, (e, 3 * h), &dev).unwrap(),
            Var::from_slice(&wh, (h, 3 * h), &dev).unwrap(),
            Var::from_slice(&bi, (1, 3 * h), &dev).unwrap(),
            Var::from_slice(&bh, (1, 3 * h), &dev).unwrap(),
        ];
        let hprev = Tensor::from_slice(&hs, (b, h), &dev).unwrap();
        let plain = gru_cell(
            x2.as_tensor(),
            &hprev,
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            vars[3].as_tensor(),
        )
        .unwrap();
        let g2 = (&plain * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-5, "{what}: {p} vs {q}");
            }
        };
        close(&v(&fused), &v(&plain), "forward");
        close(
            &v(g1.get(xv.as_tensor()).unwrap()),
            &v(g2.get(x2.as_tensor()).unwrap()),
            "dx",
        );
        let g = grads.lock().unwrap();
        close(&g.w_ih_t, &v(g2.get(vars[0].as_tensor()).unwrap()), "dW_ih");
        close(&g.w_hh_t, &v(g2.get(vars[1].as_tensor()).unwrap()), "dW_hh");
        close(&g.b_ih, &v(g2.get(vars[2].as_tensor()).unwrap()), "db_ih");
        close(&g.b_hh, &v(g2.get(vars[3].as_tensor()).unwrap()), "db_hh");
    }
}
