//! The CPU backend: models and session states in host memory, ops on a private rayon pool, hot loops
//! compiled for AVX2+FMA when the CPU has it (see `isa.rs`) and for the baseline target otherwise.

mod gemm;
mod gru;
pub(crate) mod isa;
mod table;
mod topk;

use std::collections::HashMap;

use rayon::prelude::*;

use self::isa::Isa;
use self::table::{LANES, PanelTable};
use crate::{
    Backend, BackendError, Dtype, Event, ModelId, ModelWeights, Result, ScoreQuery, Scored,
    TopKQuery, validate,
};

/// A model as the CPU backend stores it.
pub(crate) struct CpuModel {
    n_items: usize,
    embed: usize,
    hidden: usize,
    /// `n_items × hidden` in 16-row panels, in the upload dtype.
    item_out: PanelTable,
    /// `n_items × embed` row-major in the upload dtype: the input embeddings, or for a tied model a
    /// row-major copy of `item_out`. The GRU step gathers one row per event, and a row of a panel
    /// table spans `hidden` cache lines (one per dimension) where a plain row spans `hidden / 16`:
    /// 4,096 random gathers from 100k × 128 f32 take 2.6 ms from panels and 1.0 ms from rows, a sixth
    /// of the whole step. The copy costs one more table's worth of host memory (reported in
    /// `item_table_bytes`).
    item_in: PanelTable,
    /// `item_bias` padded with zeros to whole panels.
    item_bias: Vec<f32>,
    /// `W_ih` (`3·hidden` rows of `embed`) and `W_hh` (`3·hidden` rows of `hidden`) as f32 panels, so the
    /// GRU's input and hidden projections run on the same micro-kernel as scoring.
    w_ih: PanelTable,
    w_hh: PanelTable,
    /// `b_ih`, `b_hh` padded to whole panels.
    b_ih: Vec<f32>,
    b_hh: Vec<f32>,
}

impl CpuModel {
    fn new(w: &ModelWeights, dtype: Dtype) -> Self {
        let (n, e, h) = (w.n_items, w.embed_dim, w.hidden);
        let pad = |v: &[f32], rows: usize| {
            let mut v = v.to_vec();
            v.resize(rows.div_ceil(LANES) * LANES, 0.0);
            v
        };
        Self {
            n_items: n,
            embed: e,
            hidden: h,
            item_out: PanelTable::pack(&w.item_out, n, h, LANES, dtype),
            item_in: PanelTable::pack(w.input_table(), n, e, 1, dtype),
            item_bias: pad(&w.item_bias, n),
            w_ih: PanelTable::pack(&w.w_ih, 3 * h, e, LANES, Dtype::F32),
            w_hh: PanelTable::pack(&w.w_hh, 3 * h, h, LANES, Dtype::F32),
            b_ih: pad(&w.b_ih, 3 * h),
            b_hh: pad(&w.b_hh, 3 * h),
        }
    }

    /// The input embeddings of `items` (from `item_out` when tied), row-major into `out`.
    fn input_rows(&self, items: &[usize], out: &mut [f32]) {
        self.item_in.gather_rows(items, out);
    }
}

/// The session state table: `capacity` slots of `hidden` f32 values.
struct States {
    capacity: usize,
    hidden: usize,
    data: Vec<f32>,
}

impl States {
    fn row(&self, slot: usize) -> &[f32] {
        &self.data[slot * self.hidden..][..self.hidden]
    }
}

/// Below this many multiply-adds an op runs on the calling thread: waking the pool costs more.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Backend on the host CPU. Owns a rayon pool so that its threads never compete with the caller's
/// global pool (the server's async runtime, other models).
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    isa: Isa,
    models: HashMap<ModelId, CpuModel>,
    next_id: u64,
    states: States,
}

impl CpuBackend {
    /// A backend running ops on `threads` threads (`None` or `Some(0)`: one per core), with the
    /// fastest instruction set this CPU supports.
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Self::with_simd(threads, true)
    }

    /// As [`CpuBackend::new`]; `simd == false` forces the baseline-target code path (for tests and
    /// comparisons).
    pub fn with_simd(threads: Option<usize>, simd: bool) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(0))
            .thread_name(|i| format!("lambdarec-cpu-{i}"))
            .build()
            .map_err(|e| BackendError::device_caused("cannot start CPU thread pool", e))?;
        let isa = if simd { Isa::detect() } else { Isa::Portable };
        Ok(Self {
            pool,
            isa,
            models: HashMap::new(),
            next_id: 1,
            states: States {
                capacity: 0,
                hidden: 0,
                data: Vec::new(),
            },
        })
    }

    /// Number of threads in this backend's pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Bytes the backend holds for `model`'s item tables: the panel table a full-catalogue scan streams
    /// plus the row-major input table the GRU step gathers from.
    pub fn item_table_bytes(&self, model: ModelId) -> Option<usize> {
        let m = self.models.get(&model)?;
        Some(m.item_out.bytes() + m.item_in.bytes())
    }
}

/// The model, with the state table's width checked against it. (A free function so that callers can
/// borrow the model and the state table separately.)
fn model_for<'a>(
    models: &'a HashMap<ModelId, CpuModel>,
    states: &States,
    id: ModelId,
) -> Result<&'a CpuModel> {
    let m = models.get(&id).ok_or(BackendError::UnknownModel(id))?;
    if states.hidden != m.hidden {
        return Err(BackendError::HiddenMismatch {
            got: states.hidden,
            want: m.hidden,
        });
    }
    Ok(m)
}

impl Backend for CpuBackend {
    fn device(&self) -> String {
        format!("cpu ({} threads, {})", self.threads(), self.isa.name())
    }

    fn upload_model(&mut self, weights: &ModelWeights, dtype: Dtype) -> Result<ModelId> {
        weights.validate()?;
        if weights.n_items > u32::MAX as usize {
            return Err(BackendError::BadModel(format!(
                "{} items do not fit u32 indices",
                weights.n_items
            )));
        }
        let id = ModelId(self.next_id);
        self.next_id += 1;
        self.models.insert(id, CpuModel::new(weights, dtype));
        Ok(id)
    }

    fn drop_model(&mut self, model: ModelId) {
        self.models.remove(&model);
    }

    fn alloc_states(&mut self, capacity: usize, hidden: usize) -> Result<()> {
        let len = capacity.checked_mul(hidden).ok_or_else(|| {
            BackendError::device(format!("state table {capacity}×{hidden} overflows"))
        })?;
        self.states = States {
            capacity,
            hidden,
            data: vec![0.0; len],
        };
        Ok(())
    }

    fn states_shape(&self) -> (usize, usize) {
        (self.states.capacity, self.states.hidden)
    }

    fn reset_states(&mut self, slots: &[u32]) -> Result<()> {
        validate::slots(slots, self.states.capacity)?;
        let h = self.states.hidden;
        for &s in slots {
            self.states.data[s as usize * h..][..h].fill(0.0);
        }
        Ok(())
    }

    fn read_state(&mut self, slot: u32) -> Result<Vec<f32>> {
        let s = validate::slot(slot, self.states.capacity)?;
        Ok(self.states.row(s).to_vec())
    }

    fn write_state(&mut self, slot: u32, state: &[f32]) -> Result<()> {
        let h = self.states.hidden;
        let s = validate::state_write(slot, state.len(), self.states.capacity, h)?;
        self.states.data[s * h..][..h].copy_from_slice(state);
        Ok(())
    }

    fn gru_step(&mut self, model: ModelId, events: &[Event]) -> Result<()> {
        let m = model_for(&self.models, &self.states, model)?;
        validate::events(events, self.states.capacity, m.n_items)?;
        gru::step(&self.pool, self.isa, m, &mut self.states.data, events);
        Ok(())
    }

    fn score(&mut self, model: ModelId, queries: &[ScoreQuery<'_>]) -> Result<Vec<Vec<f32>>> {
        let m = model_for(&self.models, &self.states, model)?;
        validate::score_queries(queries, self.states.capacity, m.n_items)?;
        let work: usize = queries.iter().map(|q| q.candidates.len() * m.hidden).sum();
        let states = &self.states;
        let one = |q: &ScoreQuery<'_>| -> Vec<f32> {
            let h = states.row(q.slot as usize);
            q.candidates
                .iter()
                .map(|&c| m.item_out.dot_row(c as usize, h) + m.item_bias[c as usize])
                .collect()
        };
        Ok(if work >= PARALLEL_MIN_WORK {
            self.pool.install(|| queries.par_iter().map(one).collect())
        } else {
            queries.iter().map(one).collect()
        })
    }

    fn top_k(&mut self, model: ModelId, queries: &[TopKQuery<'_>]) -> Result<Vec<Vec<Scored>>> {
        self.ranked(model, queries)
    }

    fn top_k_beside(
        &mut self,
        model: ModelId,
        queries: &[TopKQuery<'_>],
        host: &(dyn Fn() + Sync),
    ) -> Result<Vec<Vec<Scored>>> {
        let this = &*self;
        // One parallel region for both: the pool's threads take whichever work is left.
        let (ranked, ()) = this
            .pool
            .install(|| rayon::join(|| this.ranked(model, queries), host));
        ranked
    }
}

impl CpuBackend {
    /// [`Backend::top_k`], which reads the backend only.
    fn ranked(&self, model: ModelId, queries: &[TopKQuery<'_>]) -> Result<Vec<Vec<Scored>>> {
        let m = model_for(&self.models, &self.states, model)?;
        validate::top_k_queries(queries, self.states.capacity)?;
        Ok(topk::top_k(&self.pool, self.isa, m, &self.states, queries))
    }
}
