//! The GRU4Rec training loop: session-parallel mini-batches, popularity-sampled negatives, and row-sparse
//! Adagrad/Adam updates (only the item rows a step touched are updated, as in the official GRU4Rec).

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::data::Sessions;
use crate::model::{Gru4Rec, Loss, ParamId, StepInput, train_step};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Adagrad,
    Adam,
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "adagrad" => Ok(Optimizer::Adagrad),
            "adam" => Ok(Optimizer::Adam),
            _ => Err(format!("unknown optimizer {s:?} (expected adagrad or adam)")),
        }
    }
}

/// Training hyper-parameters. The defaults are the GRU4Rec paper settings for RSC15 with cross-entropy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub hidden: usize,
    /// Width of a separate input embedding; 0 ties the input to the output embedding.
    pub embed_dim: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub momentum: f32,
    pub optimizer: Optimizer,
    pub loss: Loss,
    pub dropout_hidden: f32,
    pub dropout_embed: f32,
    /// Extra negatives per mini-batch, drawn with probability ∝ popularity^sample_alpha.
    pub n_sample: usize,
    pub sample_alpha: f32,
    /// Weight of the log-Q correction (cross-entropy only).
    pub logq: f32,
    /// Score regularisation of BPR-max.
    pub bpreg: f32,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: 100,
            embed_dim: 0,
            epochs: 10,
            batch_size: 32,
            learning_rate: 0.2,
            momentum: 0.0,
            optimizer: Optimizer::Adagrad,
            loss: Loss::CrossEntropy,
            dropout_hidden: 0.4,
            dropout_embed: 0.0,
            n_sample: 2048,
            sample_alpha: 0.5,
            logq: 1.0,
            bpreg: 0.0,
            seed: 42,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.hidden == 0 || self.batch_size == 0 || self.epochs == 0 {
            return bad("hidden, batch size and epochs must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!("learning rate must be positive, got {}", self.learning_rate));
        }
        for (what, p) in [("dropout-hidden", self.dropout_hidden), ("dropout-embed", self.dropout_embed)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{what} must be in [0, 1), got {p}"));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        Ok(())
    }
}

/// What happened in one epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// Mean of the step losses weighted by active sessions (as the official GRU4Rec reports it).
    pub loss: f64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
}

/// Draws negatives with probability ∝ popularity^alpha.
pub struct Sampler {
    cumulative: Vec<f64>,
    /// `ln popularity(item)`, for the log-Q correction.
    pub log_pop: Vec<f32>,
}

impl Sampler {
    pub fn new(popularity: &[u64], alpha: f32) -> Sampler {
        let w: Vec<f64> = popularity.iter().map(|&c| (c.max(1) as f64).powf(alpha as f64)).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let cumulative = w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect();
        let log_pop = popularity.iter().map(|&c| (c.max(1) as f32).ln()).collect();
        Sampler { cumulative, log_pop }
    }

    pub fn sample(&self, n: usize, rng: &mut SmallRng, out: &mut Vec<u32>) {
        out.clear();
        let last = self.cumulative.len() - 1;
        out.extend((0..n).map(|_| {
            let u: f64 = rng.random();
            self.cumulative.partition_point(|&c| c < u).min(last) as u32
        }));
    }
}

/// Optimiser state for one parameter, with updates restricted to given rows.
struct OptState {
    id: ParamId,
    acc: Vec<f32>,
    /// Momentum (Adagrad) or first moment (Adam).
    mom: Vec<f32>,
    /// Pending gradient of the touched rows (a dense parameter is one row).
    grad: Vec<f32>,
    /// Width of one row: the table's columns, or the whole parameter when dense.
    cols: usize,
    touched: Vec<u32>,
    stamp: Vec<u64>,
}

impl OptState {
    fn new(id: ParamId, model: &Gru4Rec, cfg: &TrainConfig, dense: bool) -> OptState {
        let p = model.param(id);
        let n = p.data.len();
        let (rows, cols) = if dense { (1, n) } else { (p.rows, p.cols) };
        OptState {
            id,
            acc: vec![0.0; n],
            mom: if cfg.momentum > 0.0 || cfg.optimizer == Optimizer::Adam { vec![0.0; n] } else { Vec::new() },
            grad: vec![0.0; n],
            cols,
            touched: Vec::new(),
            stamp: vec![u64::MAX; rows],
        }
    }

    /// Adds `g` (one row per index) to the pending gradient.
    fn add_rows(&mut self, rows: &[u32], g: &[f32], step: u64) {
        let cols = self.cols;
        for (k, &r) in rows.iter().enumerate() {
            let r = r as usize;
            let dst = &mut self.grad[r * cols..(r + 1) * cols];
            if self.stamp[r] != step {
                self.stamp[r] = step;
                self.touched.push(r as u32);
                dst.copy_from_slice(&g[k * cols..(k + 1) * cols]);
            } else {
                dst.iter_mut().zip(&g[k * cols..(k + 1) * cols]).for_each(|(d, s)| *d += s);
            }
        }
    }

    fn add_dense(&mut self, g: &[f32], step: u64) {
        self.touched.clear();
        self.touched.push(0);
        self.stamp[0] = step;
        self.grad.copy_from_slice(g);
    }

    fn apply(&mut self, model: &mut Gru4Rec, cfg: &TrainConfig, step: u64) {
        let p = model.param_mut(self.id);
        let cols = self.cols;
        let lr = cfg.learning_rate;
        for &r in &self.touched {
            let range = r as usize * cols..(r as usize + 1) * cols;
            let (w, g, acc) = (&mut p.data[range.clone()], &self.grad[range.clone()], &mut self.acc[range.clone()]);
            match cfg.optimizer {
                Optimizer::Adagrad if cfg.momentum > 0.0 => {
                    let v = &mut self.mom[range];
                    for i in 0..w.len() {
                        acc[i] += g[i] * g[i];
                        v[i] = cfg.momentum * v[i] - lr * g[i] / (acc[i] + 1e-6).sqrt();
                        w[i] += v[i];
                    }
                }
                Optimizer::Adagrad => {
                    for i in 0..w.len() {
                        acc[i] += g[i] * g[i];
                        w[i] -= lr * g[i] / (acc[i] + 1e-6).sqrt();
                    }
                }
                Optimizer::Adam => {
                    let (b1, b2) = (0.9f32, 0.999f32);
                    let t = (step + 1) as i32;
                    let c1 = 1.0 - b1.powi(t);
                    let c2 = 1.0 - b2.powi(t);
                    let m = &mut self.mom[range];
                    for i in 0..w.len() {
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        acc[i] = b2 * acc[i] + (1.0 - b2) * g[i] * g[i];
                        w[i] -= lr * (m[i] / c1) / ((acc[i] / c2).sqrt() + 1e-8);
                    }
                }
            }
        }
        self.touched.clear();
    }
}

/// Trains a GRU4Rec model on `train` (item indices `< n_items`, popularity from the vocabulary).
/// `on_epoch` sees each epoch's statistics as it ends; `on_progress(events_done, loss_so_far)` is called
/// every few hundred steps for a progress bar.
pub fn train(
    train: &Sessions,
    popularity: &[u64],
    cfg: &TrainConfig,
    mut on_progress: impl FnMut(usize, u64, f64),
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<(Gru4Rec, Vec<EpochStats>), TrainError> {
    cfg.validate()?;
    let n_items = popularity.len();
    if train.len() == 0 || n_items == 0 {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let mut model = Gru4Rec::new(n_items, cfg.embed_dim, cfg.hidden, cfg.seed);
    let sampler = Sampler::new(popularity, cfg.sample_alpha);
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let table_ids = [ParamId::ItemOut, ParamId::ItemBias]
        .into_iter()
        .chain((!model.tied()).then_some(ParamId::ItemIn));
    let mut tables: Vec<OptState> = table_ids.map(|id| OptState::new(id, &model, cfg, false)).collect();
    let mut dense: Vec<OptState> = [ParamId::WIh, ParamId::WHh, ParamId::BIh, ParamId::BHh]
        .into_iter()
        .map(|id| OptState::new(id, &model, cfg, true))
        .collect();
    let h = cfg.hidden;
    let mut stats = Vec::with_capacity(cfg.epochs);
    let mut step: u64 = 0;
    let mut negatives = Vec::with_capacity(cfg.n_sample);
    for epoch in 1..=cfg.epochs {
        let started = Instant::now();
        let (mut loss_sum, mut events) = (0.0f64, 0u64);
        // Session-parallel mini-batches: each slot walks one session; a finished session's slot takes the
        // next session with a zero hidden state; slots are dropped once no session is left.
        let mut slots: Vec<(usize, usize)> = Vec::with_capacity(cfg.batch_size);
        let mut next = 0;
        while slots.len() < cfg.batch_size && next < train.len() {
            slots.push((next, 0));
            next += 1;
        }
        let mut hidden = vec![0f32; slots.len() * h];
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        while !slots.is_empty() {
            inputs.clear();
            targets.clear();
            for &(s, pos) in &slots {
                let items = train.session(s);
                inputs.push(items[pos]);
                targets.push(items[pos + 1]);
            }
            sampler.sample(cfg.n_sample, &mut rng, &mut negatives);
            let g = train_step(
                &model,
                &StepInput {
                    inputs: &inputs,
                    targets: &targets,
                    negatives: &negatives,
                    hidden: &hidden,
                    log_pop: &sampler.log_pop,
                    sample_alpha: cfg.sample_alpha,
                    loss_scale: cfg.batch_size,
                    logq_weight: cfg.logq,
                    loss: cfg.loss,
                    bpreg: cfg.bpreg,
                    dropout_embed: cfg.dropout_embed,
                    dropout_hidden: cfg.dropout_hidden,
                },
                &mut rng,
            )?;
            if !g.loss.is_finite() {
                return Err(TrainError::Diverged { epoch, step });
            }
            loss_sum += g.loss as f64 * slots.len() as f64;
            events += slots.len() as u64;

            let out_rows: Vec<u32> = targets.iter().chain(&negatives).copied().collect();
            for t in tables.iter_mut() {
                match t.id {
                    ParamId::ItemOut => {
                        t.add_rows(&out_rows, &g.item_out, step);
                        if model.tied() {
                            t.add_rows(&inputs, &g.item_in, step);
                        }
                    }
                    ParamId::ItemBias => t.add_rows(&out_rows, &g.item_bias, step),
                    ParamId::ItemIn => t.add_rows(&inputs, &g.item_in, step),
                    _ => unreachable!("only item tables are row-sparse"),
                }
                t.apply(&mut model, cfg, step);
            }
            for (d, grad) in dense.iter_mut().zip([&g.w_ih, &g.w_hh, &g.b_ih, &g.b_hh]) {
                d.add_dense(grad, step);
                d.apply(&mut model, cfg, step);
            }
            step += 1;

            hidden = g.hidden;
            let mut k = 0;
            while k < slots.len() {
                let (s, pos) = &mut slots[k];
                *pos += 1;
                if *pos + 1 < train.session(*s).len() {
                    k += 1;
                    continue;
                }
                if next < train.len() {
                    slots[k] = (next, 0);
                    next += 1;
                    hidden[k * h..(k + 1) * h].fill(0.0);
                    k += 1;
                } else {
                    slots.remove(k);
                    hidden.drain(k * h..(k + 1) * h);
                }
            }
            if step % 64 == 0 {
                on_progress(epoch, events, loss_sum / events as f64);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let st = EpochStats {
            epoch,
            loss: loss_sum / events.max(1) as f64,
            events,
            seconds,
            events_per_sec: events as f64 / seconds.max(1e-9),
        };
        on_epoch(&st);
        stats.push(st);
    }
    Ok((model, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_follows_popularity_power() {
        let s = Sampler::new(&[100, 1, 0, 25], 0.5);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut out = Vec::new();
        s.sample(200_000, &mut rng, &mut out);
        let mut counts = [0usize; 4];
        out.iter().for_each(|&i| counts[i as usize] += 1);
        // weights 10 : 1 : 1 : 5 (zero counts as one so every item can be drawn)
        let f = |i: usize| counts[i] as f64 / 200_000.0;
        assert!((f(0) - 10.0 / 17.0).abs() < 0.01, "{counts:?}");
        assert!((f(3) - 5.0 / 17.0).abs() < 0.01, "{counts:?}");
        assert!((s.log_pop[0] as f64 - 100f64.ln()).abs() < 1e-5);
    }

    #[test]
    fn bad_config_is_rejected() {
        let cfg = TrainConfig { dropout_hidden: 1.0, ..TrainConfig::default() };
        assert!(cfg.validate().is_err());
        let cfg = TrainConfig { learning_rate: 0.0, ..TrainConfig::default() };
        assert!(cfg.validate().is_err());
    }
}
