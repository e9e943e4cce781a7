//! The GRU4Rec model: parameters on the host and one training step (forward + loss) built from candle
//! ops, so that candle's autograd gives the gradients.
//!
//! Why the parameters live in plain `Vec<f32>`s rather than candle `Var`s: a step touches only the rows of
//! the item tables that appear in the mini-batch (inputs, targets, sampled negatives). Gathering those rows
//! into small leaf tensors and applying the optimiser to the touched rows only (as the official GRU4Rec's
//! `IndexedAdagradM` does) keeps the cost of a step independent of the catalogue size; a dense candle
//! gradient of an `n_items × hidden` table would not.
//!
//! The GRU cell is PyTorch's `GRUCell` (gate order r, z, n), the equations `kernels::Backend` serves.

use candle_core::{D, DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::TrainError;
use crate::gru_op::{GruGrads, GruStep, GruStepOp};
use crate::xe_op::{OutputGrads, SampledSoftmaxXe};

/// Loss functions of GRU4Rec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Softmax cross-entropy over the target and the sampled negatives (with log-Q correction).
    CrossEntropy,
    /// BPR-max (Hidasi & Karatzoglou, 2018) with score regularisation `bpreg`.
    BprMax,
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cross-entropy" | "xe" | "ce" => Ok(Loss::CrossEntropy),
            "bpr-max" | "bprmax" => Ok(Loss::BprMax),
            _ => Err(format!(
                "unknown loss {s:?} (expected cross-entropy or bpr-max)"
            )),
        }
    }
}

/// For each item of the catalogue `ids`, its index in the catalogue `prev_ids` (None: new).
pub fn item_rows(prev_ids: &[String], ids: &[String]) -> Vec<Option<usize>> {
    let old: std::collections::HashMap<&str, usize> = prev_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    ids.iter().map(|id| old.get(id.as_str()).copied()).collect()
}

impl WarmStart {
    /// Counts of a mapping made by [`item_rows`] from a catalogue of `prev_items` items.
    pub fn of(rows: &[Option<usize>], prev_items: usize) -> WarmStart {
        let reused = rows.iter().filter(|r| r.is_some()).count();
        WarmStart {
            reused,
            new: rows.len() - reused,
            retired: prev_items.saturating_sub(reused),
        }
    }
}

/// How a warm start mapped the previous catalogue onto the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WarmStart {
    /// Items of the new catalogue that kept their trained rows.
    pub reused: usize,
    /// Items new to the catalogue (fresh rows).
    pub new: usize,
    /// Items of the previous catalogue that are not in the new one.
    pub retired: usize,
}

/// A dense row-major matrix of parameters.
#[derive(Clone, Debug)]
pub struct Param {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Param {
    /// Uniform in ±sqrt(6 / (fan.0 + fan.1)) (Glorot), as the official GRU4Rec initialises (in its
    /// default "compatibility mode", each GRU gate block as a separate `in × H` matrix).
    fn glorot(rows: usize, cols: usize, fan: (usize, usize), rng: &mut SmallRng) -> Param {
        let bound = (6.0 / (fan.0 + fan.1) as f64).sqrt() as f32;
        let data = (0..rows * cols)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Param { rows, cols, data }
    }

    fn zeros(rows: usize, cols: usize) -> Param {
        Param {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Copies the given rows into a new `len(idx) × cols` leaf variable.
    fn gather(&self, idx: &[u32], dev: &Device) -> candle_core::Result<Var> {
        let mut out = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            out.extend_from_slice(self.row(i as usize));
        }
        Var::from_vec(out, (idx.len(), self.cols), dev)
    }
}

/// Indices of the parameters, used by the optimiser's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamId {
    ItemIn,
    ItemOut,
    ItemBias,
    WIh,
    WHh,
    BIh,
    BHh,
}

impl ParamId {
    pub const ALL: [ParamId; 7] = [
        ParamId::ItemIn,
        ParamId::ItemOut,
        ParamId::ItemBias,
        ParamId::WIh,
        ParamId::WHh,
        ParamId::BIh,
        ParamId::BHh,
    ];

    /// The parameter's name in a saved optimiser state (the GRU matrices in the model's `in × 3H`
    /// layout, hence `_t`).
    pub fn name(self) -> &'static str {
        match self {
            ParamId::ItemIn => "item_in",
            ParamId::ItemOut => "item_out",
            ParamId::ItemBias => "item_bias",
            ParamId::WIh => "gru.w_ih_t",
            ParamId::WHh => "gru.w_hh_t",
            ParamId::BIh => "gru.b_ih",
            ParamId::BHh => "gru.b_hh",
        }
    }
}

/// GRU4Rec parameters. GRU matrices are stored transposed (`in × 3H`) so the step is `x · W`.
#[derive(Clone, Debug)]
pub struct Gru4Rec {
    pub n_items: usize,
    pub embed_dim: usize,
    pub hidden: usize,
    /// `None` = input embedding tied to `item_out` (GRU4Rec's "constrained embedding").
    pub item_in: Option<Param>,
    pub item_out: Param,
    /// `n_items × 1`.
    pub item_bias: Param,
    /// `embed_dim × 3H`, gate blocks r, z, n.
    pub w_ih_t: Param,
    /// `H × 3H`, gate blocks r, z, n.
    pub w_hh_t: Param,
    pub b_ih: Param,
    pub b_hh: Param,
}

impl Gru4Rec {
    /// `embed_dim == 0` ties the input embedding to the output embedding.
    pub fn new(n_items: usize, embed_dim: usize, hidden: usize, seed: u64) -> Gru4Rec {
        let mut rng = SmallRng::seed_from_u64(seed);
        let tied = embed_dim == 0;
        let e = if tied { hidden } else { embed_dim };
        let item_out = Param::glorot(n_items, hidden, (n_items, hidden), &mut rng);
        let item_in = (!tied).then(|| Param::glorot(n_items, e, (n_items, e), &mut rng));
        // Each gate block gets the Glorot bound of a separate `in × H` matrix.
        let w_ih_t = Param::glorot(e, 3 * hidden, (e, hidden), &mut rng);
        let w_hh_t = Param::glorot(hidden, 3 * hidden, (hidden, hidden), &mut rng);
        Gru4Rec {
            n_items,
            embed_dim: e,
            hidden,
            item_in,
            item_out,
            item_bias: Param::zeros(n_items, 1),
            w_ih_t,
            w_hh_t,
            b_ih: Param::zeros(1, 3 * hidden),
            b_hh: Param::zeros(1, 3 * hidden),
        }
    }

    /// A model for a new catalogue that starts where `prev` left off: the GRU's matrices and
    /// biases are copied; item `r` of the new catalogue takes `prev`'s rows `rows[r]` (see
    /// [`item_rows`]) or, when that is None (a new item), fresh rows drawn as [`Gru4Rec::new`]
    /// draws them. `prev` must have this model's hidden size and embedding layout, which the caller
    /// checks.
    pub fn warm_start(
        prev: &lambdarec_kernels::ModelWeights,
        rows: &[Option<usize>],
        seed: u64,
    ) -> Gru4Rec {
        let (h, tied) = (prev.hidden, prev.item_in.is_none());
        let mut model = Gru4Rec::new(rows.len(), if tied { 0 } else { prev.embed_dim }, h, seed);
        let e = model.embed_dim;
        for (r, &old) in rows.iter().enumerate() {
            let Some(o) = old else { continue };
            model.item_out.data[r * h..(r + 1) * h]
                .copy_from_slice(&prev.item_out[o * h..(o + 1) * h]);
            model.item_bias.data[r] = prev.item_bias[o];
            if let (Some(dst), Some(src)) = (model.item_in.as_mut(), prev.item_in.as_ref()) {
                dst.data[r * e..(r + 1) * e].copy_from_slice(&src[o * e..(o + 1) * e]);
            }
        }
        // The bundle stores the GRU matrices `3H × in`; the model keeps them `in × 3H`.
        let untranspose = |w: &[f32], rows: usize, cols: usize| Param {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|i| w[(i % cols) * rows + i / cols])
                .collect(),
        };
        model.w_ih_t = untranspose(&prev.w_ih, e, 3 * h);
        model.w_hh_t = untranspose(&prev.w_hh, h, 3 * h);
        model.b_ih.data.copy_from_slice(&prev.b_ih);
        model.b_hh.data.copy_from_slice(&prev.b_hh);
        model
    }

    /// Multiplies every parameter by `by`: the "shrink" of Ash & Adams' shrink-and-perturb
    /// (NeurIPS 2020), which lets a warm-started network train on as well as a fresh one.
    pub fn shrink(&mut self, by: f32) {
        let params = [
            &mut self.item_out,
            &mut self.item_bias,
            &mut self.w_ih_t,
            &mut self.w_hh_t,
            &mut self.b_ih,
            &mut self.b_hh,
        ];
        for p in params.into_iter().chain(self.item_in.as_mut()) {
            p.data.iter_mut().for_each(|w| *w *= by);
        }
    }

    pub fn tied(&self) -> bool {
        self.item_in.is_none()
    }

    pub fn param(&self, id: ParamId) -> &Param {
        match id {
            ParamId::ItemIn => self.item_in.as_ref().unwrap_or(&self.item_out),
            ParamId::ItemOut => &self.item_out,
            ParamId::ItemBias => &self.item_bias,
            ParamId::WIh => &self.w_ih_t,
            ParamId::WHh => &self.w_hh_t,
            ParamId::BIh => &self.b_ih,
            ParamId::BHh => &self.b_hh,
        }
    }

    pub fn param_mut(&mut self, id: ParamId) -> &mut Param {
        match id {
            ParamId::ItemIn => self.item_in.as_mut().unwrap_or(&mut self.item_out),
            ParamId::ItemOut => &mut self.item_out,
            ParamId::ItemBias => &mut self.item_bias,
            ParamId::WIh => &mut self.w_ih_t,
            ParamId::WHh => &mut self.w_hh_t,
            ParamId::BIh => &mut self.b_ih,
            ParamId::BHh => &mut self.b_hh,
        }
    }

    /// Exports the weights in the layout `kernels::Backend` serves (GRU matrices `3H × in`).
    pub fn to_weights(&self) -> lambdarec_kernels::ModelWeights {
        lambdarec_kernels::ModelWeights {
            n_items: self.n_items,
            embed_dim: self.embed_dim,
            hidden: self.hidden,
            item_in: self.item_in.as_ref().map(|p| p.data.clone()),
            w_ih: transpose(&self.w_ih_t),
            w_hh: transpose(&self.w_hh_t),
            b_ih: self.b_ih.data.clone(),
            b_hh: self.b_hh.data.clone(),
            item_out: self.item_out.data.clone(),
            item_bias: self.item_bias.data.clone(),
        }
    }
}

fn transpose(p: &Param) -> Vec<f32> {
    let mut out = vec![0.0; p.data.len()];
    for r in 0..p.rows {
        for c in 0..p.cols {
            out[c * p.rows + r] = p.data[r * p.cols + c];
        }
    }
    out
}

/// What one training step needs besides the parameters.
pub struct StepInput<'a> {
    /// Current item of each active session (the GRU input), length B.
    pub inputs: &'a [u32],
    /// Next item of each session (the positive), length B.
    pub targets: &'a [u32],
    /// Shared sampled negatives, length S (may be empty).
    pub negatives: &'a [u32],
    /// Hidden state of each session before the step, `B × H` row-major.
    pub hidden: &'a [f32],
    /// `ln popularity(item)` for the log-Q correction, indexed by item (empty when off). As in the official
    /// GRU4Rec, in-batch columns are corrected by `ln pop` and sampled ones by `alpha · ln pop`.
    pub log_pop: &'a [f32],
    pub sample_alpha: f32,
    pub logq_weight: f32,
    pub loss: Loss,
    pub bpreg: f32,
    pub dropout_embed: f32,
    pub dropout_hidden: f32,
    /// The summed loss is divided by this (the configured batch size).
    pub loss_scale: usize,
}

/// Gradients of one step, for the rows that took part in it.
pub struct StepGrads {
    pub loss: f32,
    /// New hidden state (`B × H`), to carry to the next step. As in the official GRU4Rec, this is the
    /// state after hidden dropout, so training sees the same noisy state it scored with.
    pub hidden: Vec<f32>,
    /// Rows of the input table (indexed like `StepInput::inputs`) and their gradients `B × E`.
    pub item_in: Vec<f32>,
    /// Gradients of the output rows, indexed like `targets ++ negatives`.
    pub item_out: Vec<f32>,
    pub item_bias: Vec<f32>,
    pub w_ih: Vec<f32>,
    pub w_hh: Vec<f32>,
    pub b_ih: Vec<f32>,
    pub b_hh: Vec<f32>,
}

/// Forward + backward of one session-parallel step (truncated BPTT of one step, like GRU4Rec: the
/// incoming hidden state is a constant).
pub fn train_step(
    model: &Gru4Rec,
    s: &StepInput<'_>,
    rng: &mut SmallRng,
) -> Result<StepGrads, TrainError> {
    let dev = Device::Cpu;
    let b = s.inputs.len();
    let hdim = model.hidden;
    let out_idx: Vec<u32> = s.targets.iter().chain(s.negatives).copied().collect();

    let x = model.param(ParamId::ItemIn).gather(s.inputs, &dev)?;
    let xin = dropout(x.as_tensor(), s.dropout_embed, rng)?;
    let (gru, gru_grads) = GruStepOp::new(GruStep {
        w_ih_t: &model.w_ih_t.data,
        w_hh_t: &model.w_hh_t.data,
        b_ih: &model.b_ih.data,
        b_hh: &model.b_hh.data,
        h: s.hidden,
        hidden: hdim,
    });
    let h_new = xin.apply_op1(gru)?;
    let h_out = dropout(&h_new, s.dropout_hidden, rng)?;

    // Output layer over the targets (in-batch negatives of each other) and the sampled negatives.
    let (loss, grads, out_grads) = match s.loss {
        Loss::CrossEntropy => {
            let mut rows = Vec::with_capacity(out_idx.len() * hdim);
            out_idx
                .iter()
                .for_each(|&i| rows.extend_from_slice(model.item_out.row(i as usize)));
            // Column offsets: output bias minus the log-Q correction.
            let use_logq = !s.log_pop.is_empty() && s.logq_weight != 0.0;
            let offsets = out_idx
                .iter()
                .enumerate()
                .map(|(c, &i)| {
                    let power = if c < b { 1.0 } else { s.sample_alpha };
                    let lq = if use_logq {
                        s.logq_weight * power * s.log_pop[i as usize]
                    } else {
                        0.0
                    };
                    model.item_bias.data[i as usize] - lq
                })
                .collect();
            // The official GRU4Rec divides the summed loss by the nominal batch size.
            let (op, out) = SampledSoftmaxXe::new(rows, offsets, hdim, s.loss_scale as f32);
            let loss = h_out.apply_op1(op)?;
            let grads = loss.backward()?;
            let OutputGrads { rows, offsets } =
                std::mem::take(&mut *out.lock().expect("output grads lock"));
            (loss, grads, (rows, offsets))
        }
        Loss::BprMax => {
            let o = model.item_out.gather(&out_idx, &dev)?;
            let ob = model.item_bias.gather(&out_idx, &dev)?;
            let y = h_out
                .matmul(&o.as_tensor().t()?)?
                .broadcast_add(&ob.as_tensor().t()?)?;
            let loss = (bpr_max(&y, b, s.bpreg, &dev)? / s.loss_scale as f64)?;
            let grads = loss.backward()?;
            let take = |v: &Var, len: usize| -> Result<Vec<f32>, TrainError> {
                Ok(match grads.get(v.as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0; len],
                })
            };
            let out_grads = (take(&o, out_idx.len() * hdim)?, take(&ob, out_idx.len())?);
            (loss, grads, out_grads)
        }
    };
    let item_in = match grads.get(x.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; b * model.embed_dim],
    };
    let GruGrads {
        w_ih_t,
        w_hh_t,
        b_ih,
        b_hh,
    } = std::mem::take(&mut *gru_grads.lock().expect("gru grads lock"));
    Ok(StepGrads {
        loss: loss.to_scalar::<f32>()?,
        hidden: h_out.flatten_all()?.to_vec1::<f32>()?,
        item_in,
        item_out: out_grads.0,
        item_bias: out_grads.1,
        w_ih: w_ih_t,
        w_hh: w_hh_t,
        b_ih,
        b_hh,
    })
}

/// One GRU step over a batch: `x` is `B × E`, `h` is `B × H`, weights transposed (`in × 3H`), in plain
/// candle ops: the autograd reference the fused `gru_op` is tested against (training uses the fused op).
#[cfg(test)]
pub(crate) fn gru_cell(
    x: &Tensor,
    h: &Tensor,
    w_ih_t: &Tensor,
    w_hh_t: &Tensor,
    b_ih: &Tensor,
    b_hh: &Tensor,
) -> candle_core::Result<Tensor> {
    let hd = h.dim(1)?;
    let gi = x.matmul(w_ih_t)?.broadcast_add(b_ih)?;
    let gh = h.matmul(w_hh_t)?.broadcast_add(b_hh)?;
    let rz = candle_nn::ops::sigmoid(&(gi.narrow(1, 0, 2 * hd)? + gh.narrow(1, 0, 2 * hd)?)?)?;
    let r = rz.narrow(1, 0, hd)?;
    let z = rz.narrow(1, hd, hd)?;
    let n = (gi.narrow(1, 2 * hd, hd)? + (r * gh.narrow(1, 2 * hd, hd)?)?)?.tanh()?;
    // h' = (1 − z) ⊙ n + z ⊙ h = n + z ⊙ (h − n)
    n.clone() + (z * (h - n)?)?
}

/// BPR-max: −log Σ_j softmax_j(neg) σ(r_i − r_j) + bpreg Σ_j softmax_j r_j², negatives = every column but
/// the row's own positive.
fn bpr_max(y: &Tensor, b: usize, bpreg: f32, dev: &Device) -> candle_core::Result<Tensor> {
    let m = y.dim(1)?;
    let mut mask = vec![0f32; b * m];
    for i in 0..b {
        mask[i * m + i] = 1.0;
    }
    let mask = Tensor::from_vec(mask, (b, m), dev)?;
    let pos = (y * &mask)?.sum_keepdim(1)?; // B × 1
    // Softmax over negatives only: push the positive's logit to −∞-ish.
    let sm = candle_nn::ops::softmax(&(y - (&mask * 1e9)?)?, D::Minus1)?;
    let diff = candle_nn::ops::sigmoid(&pos.broadcast_sub(y)?)?;
    let p = (&sm * diff)?.sum_keepdim(1)?;
    let nll = (p + 1e-24)?.log()?.sum_all()?.neg()?;
    if bpreg == 0.0 {
        return Ok(nll);
    }
    let reg = (sm * y.sqr()?)?.sum_all()?.affine(bpreg as f64, 0.0)?;
    nll + reg
}

/// Inverted dropout with our own seeded RNG so that a fixed `--seed` gives the same model twice.
fn dropout(x: &Tensor, p: f32, rng: &mut SmallRng) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(DType::F32)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_start_keeps_every_trained_number_and_draws_new_rows() {
        for embed in [0, 5] {
            let prev = Gru4Rec::new(4, embed, 3, 7);
            let w = prev.to_weights();
            let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            // Same catalogue: the very same model.
            let same = ids(&["a", "b", "c", "d"]);
            let rows = item_rows(&same, &same);
            let again = Gru4Rec::warm_start(&w, &rows, 99).to_weights();
            assert_eq!(again, w, "embed {embed}");
            // d retired, c and a reordered, e new.
            let next = ids(&["c", "e", "a"]);
            let rows = item_rows(&same, &next);
            assert_eq!(rows, [Some(2), None, Some(0)]);
            assert_eq!(
                WarmStart::of(&rows, 4),
                WarmStart {
                    reused: 2,
                    new: 1,
                    retired: 2
                }
            );
            let m = Gru4Rec::warm_start(&w, &rows, 99);
            assert_eq!(m.item_out.row(0), prev.item_out.row(2));
            assert_eq!(m.item_out.row(2), prev.item_out.row(0));
            assert!(
                m.item_out.row(1).iter().any(|&x| x != 0.0),
                "a new item gets drawn rows"
            );
            assert_eq!(m.item_bias.data[1], 0.0);
            if let (Some(a), Some(b)) = (&m.item_in, &prev.item_in) {
                assert_eq!(a.row(0), b.row(2));
            }
            assert_eq!(m.w_ih_t.data, prev.w_ih_t.data);
            assert_eq!(m.w_hh_t.data, prev.w_hh_t.data);
            let mut half = m.clone();
            half.shrink(0.5);
            let (a, b) = (half.to_weights(), m.to_weights());
            let pairs = [
                (&a.item_out, &b.item_out),
                (&a.w_ih, &b.w_ih),
                (&a.w_hh, &b.w_hh),
            ];
            for (x, y) in pairs
                .into_iter()
                .chain(a.item_in.iter().zip(b.item_in.iter()))
            {
                assert!(x.iter().zip(y).all(|(x, y)| *x == 0.5 * y));
            }
        }
    }

    /// The candle cell must be the kernels' cell: check it against the f64 reference formula.
    #[test]
    fn gru_cell_matches_pytorch_equations() {
        let m = Gru4Rec::new(13, 5, 7, 3);
        let mut rng = SmallRng::seed_from_u64(9);
        let xs: Vec<f32> = (0..2 * 5).map(|_| rng.random_range(-1.0..1.0)).collect();
        let hs: Vec<f32> = (0..2 * 7).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dev = Device::Cpu;
        let t = |p: &Param| Tensor::from_slice(&p.data, (p.rows, p.cols), &dev).unwrap();
        let out = gru_cell(
            &Tensor::from_slice(&xs, (2, 5), &dev).unwrap(),
            &Tensor::from_slice(&hs, (2, 7), &dev).unwrap(),
            &t(&m.w_ih_t),
            &t(&m.w_hh_t),
            &t(&m.b_ih),
            &t(&m.b_hh),
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let w = m.to_weights();
        let h = 7;
        for bi in 0..2 {
            let x = &xs[bi * 5..bi * 5 + 5];
            let hp = &hs[bi * 7..bi * 7 + 7];
            let lin = |wm: &[f32], v: &[f32], row: usize, bias: f32| -> f64 {
                let n = v.len();
                bias as f64
                    + (0..n)
                        .map(|k| wm[row * n + k] as f64 * v[k] as f64)
                        .sum::<f64>()
            };
            for j in 0..h {
                let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
                let r = sig(lin(&w.w_ih, x, j, w.b_ih[j]) + lin(&w.w_hh, hp, j, w.b_hh[j]));
                let z =
                    sig(lin(&w.w_ih, x, h + j, w.b_ih[h + j])
                        + lin(&w.w_hh, hp, h + j, w.b_hh[h + j]));
                let n = (lin(&w.w_ih, x, 2 * h + j, w.b_ih[2 * h + j])
                    + r * lin(&w.w_hh, hp, 2 * h + j, w.b_hh[2 * h + j]))
                .tanh();
                let want = (1.0 - z) * n + z * hp[j] as f64;
                assert!(
                    (out[bi * h + j] as f64 - want).abs() < 1e-5,
                    "{} vs {want}",
                    out[bi * h + j]
                );
            }
        }
    }

    #[test]
    fn cross_entropy_step_gives_finite_gradients_for_touched_rows() {
        let m = Gru4Rec::new(50, 0, 8, 1);
        let mut rng = SmallRng::seed_from_u64(2);
        let hidden = vec![0.1f32; 3 * 8];
        for loss in [Loss::CrossEntropy, Loss::BprMax] {
            let g = train_step(
                &m,
                &StepInput {
                    inputs: &[1, 2, 3],
                    targets: &[4, 5, 6],
                    negatives: &[7, 8, 9, 10],
                    hidden: &hidden,
                    log_pop: &[],
                    sample_alpha: 0.5,
                    logq_weight: 0.0,
                    loss_scale: 3,
                    loss,
                    bpreg: 0.5,
                    dropout_embed: 0.0,
                    dropout_hidden: 0.2,
                },
                &mut rng,
            )
            .unwrap();
            assert!(g.loss.is_finite() && g.loss > 0.0);
            assert_eq!(g.item_out.len(), 7 * 8);
            assert_eq!(g.item_in.len(), 3 * 8);
            assert!(g.item_out.iter().any(|v| *v != 0.0));
            assert!(g.w_hh.iter().all(|v| v.is_finite()));
        }
    }
}
