//! The GRU4Rec training loop: session-parallel mini-batches, popularity-sampled negatives, and row-sparse
//! Adagrad/Adam updates (only the item rows a step touched are updated, as in the official GRU4Rec).

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

use crate::data::Sessions;
use crate::model::{Gru4Rec, Loss, ParamId, StepInput, train_step};
use crate::{TrainError, simd};

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
            _ => Err(format!(
                "unknown optimizer {s:?} (expected adagrad or adam)"
            )),
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
    /// Threads of the training loop (None = up to 2). Does not change the result, only the speed.
    #[serde(skip)]
    pub threads: Option<usize>,
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
            threads: None,
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
            return bad(format!(
                "learning rate must be positive, got {}",
                self.learning_rate
            ));
        }
        for (what, p) in [
            ("dropout-hidden", self.dropout_hidden),
            ("dropout-embed", self.dropout_embed),
        ] {
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
    /// The GRU's Recall@k and MRR@k on the test set after this epoch (`train --eval-every-epoch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_recall: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_mrr: Option<f64>,
}

/// Draws negatives with probability ∝ popularity^alpha.
pub struct Sampler {
    cumulative: Vec<f64>,
    /// `ln popularity(item)`, for the log-Q correction.
    pub log_pop: Vec<f32>,
}

impl Sampler {
    pub fn new(popularity: &[u64], alpha: f32) -> Sampler {
        let w: Vec<f64> = popularity
            .iter()
            .map(|&c| (c.max(1) as f64).powf(alpha as f64))
            .collect();
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
        Sampler {
            cumulative,
            log_pop,
        }
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

/// Optimiser state for one parameter, with updates restricted to the rows a step touched (a dense
/// parameter is one row).
struct OptState {
    id: ParamId,
    acc: Vec<f32>,
    /// Momentum (Adagrad) or first moment (Adam).
    mom: Vec<f32>,
    /// Width of one row: the table's columns, or the whole parameter when dense.
    cols: usize,
    /// Step at which each row was last seen, and where its summed gradient lives (source, row).
    stamp: Vec<u64>,
    first: Vec<(u32, u32)>,
    touched: Vec<(u32, u32)>,
}

/// The optimiser's state where training stopped, so that a warm start continues it: the step
/// count (Adam's bias correction) and, per parameter, the accumulators in the parameter's layout
/// (`acc`: Adagrad's sum of squared gradients or Adam's second moment; `mom`: momentum or Adam's
/// first moment, empty when unused).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    pub params: Vec<ParamState>,
}

/// One parameter's optimiser state.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamState {
    pub id: ParamId,
    pub acc: Vec<f32>,
    pub mom: Vec<f32>,
}

impl OptimizerState {
    /// The state for a catalogue whose item `r` was item `rows[r]` before (None: a new item,
    /// whose accumulators start at zero); dense parameters are kept as they are.
    pub fn remap_items(&self, old_items: usize, rows: &[Option<usize>]) -> OptimizerState {
        let remap = |v: &[f32]| -> Vec<f32> {
            if v.is_empty() || old_items == 0 {
                return Vec::new();
            }
            let cols = v.len() / old_items;
            let mut out = vec![0.0; rows.len() * cols];
            for (r, old) in rows.iter().enumerate() {
                if let Some(o) = old {
                    out[r * cols..(r + 1) * cols].copy_from_slice(&v[o * cols..(o + 1) * cols]);
                }
            }
            out
        };
        let params = self
            .params
            .iter()
            .map(|p| match p.id {
                ParamId::ItemIn | ParamId::ItemOut | ParamId::ItemBias => ParamState {
                    id: p.id,
                    acc: remap(&p.acc),
                    mom: remap(&p.mom),
                },
                _ => p.clone(),
            })
            .collect();
        OptimizerState {
            step: self.step,
            params,
        }
    }

    fn take(&mut self, id: ParamId) -> Option<ParamState> {
        let i = self.params.iter().position(|p| p.id == id)?;
        Some(self.params.swap_remove(i))
    }
}

/// A step's gradient rows for one parameter: row indices and their gradients, row-major.
type GradRows<'a> = (&'a [u32], &'a mut [f32]);

impl OptState {
    /// Fresh state, or `init`'s where it fits this parameter.
    fn new(
        id: ParamId,
        model: &Gru4Rec,
        cfg: &TrainConfig,
        dense: bool,
        init: Option<ParamState>,
    ) -> OptState {
        let p = model.param(id);
        let n = p.data.len();
        let (rows, cols) = if dense { (1, n) } else { (p.rows, p.cols) };
        let uses_mom = cfg.momentum > 0.0 || cfg.optimizer == Optimizer::Adam;
        let (acc, mom) = match init {
            Some(s) if s.acc.len() == n && (!uses_mom || s.mom.len() == n) => (s.acc, s.mom),
            _ => (
                vec![0.0; n],
                if uses_mom { vec![0.0; n] } else { Vec::new() },
            ),
        };
        OptState {
            id,
            acc,
            mom: if uses_mom { mom } else { Vec::new() },
            cols,
            stamp: vec![u64::MAX; rows],
            first: vec![(0, 0); rows],
            touched: Vec::new(),
        }
    }

    /// Updates the rows named by `sources`. A row that appears several times (a popular item sampled
    /// twice, a target that is also an input) has its gradients summed first: the update is non-linear.
    /// The sums are made in place in the first occurrence's buffer, so no scratch copy of the gradient.
    fn update(
        &mut self,
        model: &mut Gru4Rec,
        cfg: &TrainConfig,
        step: u64,
        sources: &mut [GradRows<'_>],
    ) {
        let cols = self.cols;
        self.touched.clear();
        for s in 0..sources.len() {
            let (done, rest) = sources.split_at_mut(s);
            let (rows, grads) = &mut rest[0];
            for (k, &r) in rows.iter().enumerate() {
                let r = r as usize;
                if self.stamp[r] != step {
                    self.stamp[r] = step;
                    self.first[r] = (s as u32, k as u32);
                    self.touched.push((s as u32, k as u32));
                    continue;
                }
                let (s0, k0) = (self.first[r].0 as usize, self.first[r].1 as usize);
                if s0 == s {
                    for i in 0..cols {
                        grads[k0 * cols + i] += grads[k * cols + i];
                    }
                } else {
                    let dst = &mut done[s0].1[k0 * cols..(k0 + 1) * cols];
                    dst.iter_mut()
                        .zip(&grads[k * cols..(k + 1) * cols])
                        .for_each(|(d, g)| *d += g);
                }
            }
        }
        let p = model.param_mut(self.id);
        let lr = cfg.learning_rate;
        for &(s, k) in &self.touched {
            let (rows, grads) = &sources[s as usize];
            let r = rows[k as usize] as usize;
            let range = r * cols..(r + 1) * cols;
            let g = &grads[k as usize * cols..(k as usize + 1) * cols];
            let (w, acc) = (&mut p.data[range.clone()], &mut self.acc[range.clone()]);
            match cfg.optimizer {
                Optimizer::Adagrad if cfg.momentum > 0.0 => {
                    simd::adagrad_momentum(w, g, acc, &mut self.mom[range], lr, cfg.momentum)
                }
                Optimizer::Adagrad => simd::adagrad(w, g, acc, lr),
                Optimizer::Adam => {
                    let t = (step + 1) as i32;
                    let (c1, c2) = (1.0 - 0.9f32.powi(t), 1.0 - 0.999f32.powi(t));
                    simd::adam(w, g, &mut self.mom[range], acc, lr, c1, c2)
                }
            }
        }
    }
}

/// Trains a GRU4Rec model on `train` (item indices `< n_items`, popularity from the vocabulary).
/// `on_epoch` sees each epoch's statistics as it ends; `on_progress(events_done, loss_so_far)` is called
/// every few hundred steps for a progress bar.
pub fn train(
    train: &Sessions,
    popularity: &[u64],
    cfg: &TrainConfig,
    on_progress: impl FnMut(usize, u64, f64) + Send,
    mut on_epoch: impl FnMut(&EpochStats) + Send,
) -> Result<(Gru4Rec, Vec<EpochStats>), TrainError> {
    let (model, epochs, _) = train_from(None, train, popularity, cfg, on_progress, |st, _| {
        on_epoch(st);
        Ok(())
    })?;
    Ok((model, epochs))
}

/// Where [`train_from`] starts: a model (see [`Gru4Rec::warm_start`]) and, if it was saved, the
/// optimiser's state for it.
pub struct Init {
    pub model: Gru4Rec,
    pub optimizer: Option<OptimizerState>,
}

/// [`train`] from `init` (a warm start; None: freshly drawn weights and an empty optimiser
/// state), also returning the optimiser's state at the end. `on_epoch` also sees the model as
/// the epoch left it, may add to the epoch's statistics (a learning curve's point), and stops
/// training with its error.
pub fn train_from(
    init: Option<Init>,
    train: &Sessions,
    popularity: &[u64],
    cfg: &TrainConfig,
    on_progress: impl FnMut(usize, u64, f64) + Send,
    on_epoch: impl FnMut(&mut EpochStats, &Gru4Rec) -> Result<(), TrainError> + Send,
) -> Result<(Gru4Rec, Vec<EpochStats>, OptimizerState), TrainError> {
    cfg.validate()?;
    if let Some(Init { model: m, .. }) = &init
        && (m.n_items != popularity.len() || m.hidden != cfg.hidden)
    {
        return Err(TrainError::Config(format!(
            "the initial model has {} items and {} hidden units; training asks for {} and {}",
            m.n_items,
            m.hidden,
            popularity.len(),
            cfg.hidden
        )));
    }
    // One step is about a millisecond of small GEMMs. The output layer splits its columns over two
    // threads (a fixed split, so the result does not depend on the thread count): on an idle 2-core
    // machine that is ~1.2× faster than one thread (benches/RESULTS.md); more threads would cost more in
    // wake-ups than they save at 32 × 2080 × 100. Candle's own (small) ops run in this pool too.
    let threads = cfg
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)))
        .max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lambdarec-train-{i}"))
        .build()
        .map_err(|e| TrainError::Config(format!("cannot start the training thread: {e}")))?;
    pool.install(|| train_loop(init, train, popularity, cfg, on_progress, on_epoch))
}

fn train_loop(
    init: Option<Init>,
    train: &Sessions,
    popularity: &[u64],
    cfg: &TrainConfig,
    mut on_progress: impl FnMut(usize, u64, f64) + Send,
    mut on_epoch: impl FnMut(&mut EpochStats, &Gru4Rec) -> Result<(), TrainError> + Send,
) -> Result<(Gru4Rec, Vec<EpochStats>, OptimizerState), TrainError> {
    let n_items = popularity.len();
    if train.is_empty() || n_items == 0 {
        return Err(TrainError::Config("the training set is empty".into()));
    }
    let (mut model, mut saved) = match init {
        Some(i) => (i.model, i.optimizer.unwrap_or_default()),
        None => (
            Gru4Rec::new(n_items, cfg.embed_dim, cfg.hidden, cfg.seed),
            OptimizerState::default(),
        ),
    };
    let sampler = Sampler::new(popularity, cfg.sample_alpha);
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let table_ids = [ParamId::ItemOut, ParamId::ItemBias]
        .into_iter()
        .chain((!model.tied()).then_some(ParamId::ItemIn));
    let mut tables: Vec<OptState> = table_ids
        .map(|id| OptState::new(id, &model, cfg, false, saved.take(id)))
        .collect();
    let mut dense: Vec<OptState> = [ParamId::WIh, ParamId::WHh, ParamId::BIh, ParamId::BHh]
        .into_iter()
        .map(|id| OptState::new(id, &model, cfg, true, saved.take(id)))
        .collect();
    let h = cfg.hidden;
    let mut stats = Vec::with_capacity(cfg.epochs);
    let mut step: u64 = saved.step;
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
            let mut g = g;
            for t in tables.iter_mut() {
                match t.id {
                    ParamId::ItemOut if model.tied() => t.update(
                        &mut model,
                        cfg,
                        step,
                        &mut [(&out_rows, &mut g.item_out), (&inputs, &mut g.item_in)],
                    ),
                    ParamId::ItemOut => {
                        t.update(&mut model, cfg, step, &mut [(&out_rows, &mut g.item_out)])
                    }
                    ParamId::ItemBias => {
                        t.update(&mut model, cfg, step, &mut [(&out_rows, &mut g.item_bias)])
                    }
                    ParamId::ItemIn => {
                        t.update(&mut model, cfg, step, &mut [(&inputs, &mut g.item_in)])
                    }
                    _ => unreachable!("only item tables are row-sparse"),
                }
            }
            for (d, grad) in
                dense
                    .iter_mut()
                    .zip([&mut g.w_ih, &mut g.w_hh, &mut g.b_ih, &mut g.b_hh])
            {
                d.update(&mut model, cfg, step, &mut [(&[0], grad)]);
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
            if step.is_multiple_of(64) {
                on_progress(epoch, events, loss_sum / events as f64);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let mut st = EpochStats {
            epoch,
            loss: loss_sum / events.max(1) as f64,
            events,
            seconds,
            events_per_sec: events as f64 / seconds.max(1e-9),
            test_recall: None,
            test_mrr: None,
        };
        on_epoch(&mut st, &model)?;
        stats.push(st);
    }
    let params = tables
        .into_iter()
        .chain(dense)
        .map(|o| ParamState {
            id: o.id,
            acc: o.acc,
            mom: o.mom,
        })
        .collect();
    Ok((model, stats, OptimizerState { step, params }))
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
    fn duplicate_rows_are_summed_before_the_update() {
        let cfg = TrainConfig {
            hidden: 2,
            learning_rate: 0.5,
            ..TrainConfig::default()
        };
        let mut model = Gru4Rec::new(4, 0, 2, 1);
        let before = model.item_out.data.clone();
        let mut st = OptState::new(ParamId::ItemOut, &model, &cfg, false, None);
        // row 1 appears twice in the first source and once in the second; row 3 once
        let mut g1 = vec![1.0, 2.0, 0.5, 0.5, 3.0, 0.0];
        let mut g2 = vec![0.5, -1.0];
        st.update(
            &mut model,
            &cfg,
            0,
            &mut [(&[1, 3, 1], &mut g1), (&[1], &mut g2)],
        );
        let want_g = [1.0f32 + 3.0 + 0.5, 2.0 + 0.0 - 1.0];
        for c in 0..2 {
            let want = before[2 + c] - 0.5 * want_g[c] / (want_g[c] * want_g[c] + 1e-6).sqrt();
            assert!((model.item_out.data[2 + c] - want).abs() < 1e-6);
            assert!(
                (model.item_out.data[6 + c]
                    - (before[6 + c] - 0.5 * 0.5 / (0.25f32 + 1e-6).sqrt()))
                .abs()
                    < 1e-6
            );
        }
        assert_eq!(
            model.item_out.data[0..2],
            before[0..2],
            "untouched rows stay"
        );
    }

    #[test]
    fn training_continues_from_a_saved_optimiser_state() {
        use crate::data::Sessions;
        let sessions = Sessions {
            offsets: vec![0, 3, 5, 9],
            items: vec![0, 1, 2, 3, 1, 0, 2, 3, 1],
            times: (0..9).map(f64::from).collect(),
            keys: ["a", "b", "c"].map(String::from).to_vec(),
        };
        let cfg = TrainConfig {
            hidden: 4,
            epochs: 2,
            batch_size: 2,
            n_sample: 3,
            threads: Some(1),
            ..TrainConfig::default()
        };
        let pop = [3, 3, 2, 2];
        let (full, _, _) =
            train_from(None, &sessions, &pop, &cfg, |_, _, _| {}, |_, _| Ok(())).unwrap();
        // One epoch, then one more from its model and optimiser state: the same as two at once,
        // but for the random draws, which restart from the seed. So compare the state's shape and
        // that it carries on (non-zero accumulators, the step count).
        let one = TrainConfig {
            epochs: 1,
            ..cfg.clone()
        };
        let (m1, _, o1) =
            train_from(None, &sessions, &pop, &one, |_, _, _| {}, |_, _| Ok(())).unwrap();
        assert!(o1.step > 0);
        assert!(o1.params.iter().all(|p| p.acc.iter().any(|&a| a > 0.0)));
        let tensors = crate::export::optimizer_tensors(&o1, &m1);
        let back = crate::export::optimizer_of(&tensors);
        let sorted = |mut o: OptimizerState| {
            o.params.sort_by_key(|p| p.id.name());
            o
        };
        assert_eq!(sorted(back.clone()), sorted(o1.clone()));
        let (m2, _, o2) = train_from(
            Some(Init {
                model: m1.clone(),
                optimizer: Some(back),
            }),
            &sessions,
            &pop,
            &one,
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(o2.step, 2 * o1.step);
        let acc = |o: &OptimizerState| {
            o.params
                .iter()
                .map(|p| p.acc.iter().sum::<f32>())
                .sum::<f32>()
        };
        assert!(acc(&o2) > acc(&o1), "the accumulators grow on");
        assert_ne!(m2.item_out.data, m1.item_out.data);
        assert_eq!(m2.item_out.data.len(), full.item_out.data.len());

        // A remap keeps known rows and zeroes new ones.
        let r = o1.remap_items(4, &[Some(3), None]);
        let out = |o: &OptimizerState| {
            o.params
                .iter()
                .find(|p| p.id == ParamId::ItemOut)
                .unwrap()
                .acc
                .clone()
        };
        assert_eq!(out(&r)[..4], out(&o1)[12..16]);
        assert_eq!(out(&r)[4..], [0.0; 4]);
    }

    #[test]
    fn bad_config_is_rejected() {
        let cfg = TrainConfig {
            dropout_hidden: 1.0,
            ..TrainConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = TrainConfig {
            learning_rate: 0.0,
            ..TrainConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
