//! Pure compute for lambdarec: one small synchronous [`Backend`] trait over device-resident model and
//! session tables, a CPU implementation that is always built, and a CUDA one behind feature `cuda`.
//!
//! The GRU cell is PyTorch's `nn.GRUCell` (gate order r, z, n), the same equations the trainer's candle
//! model uses:
//! ```text
//! r  = σ(W_ir x + b_ir + W_hr h + b_hr)
//! z  = σ(W_iz x + b_iz + W_hz h + b_hz)
//! n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//! and an item's score for a session is `dot(h, item_out[item]) + item_bias[item]`.

use std::fmt;

pub mod conformance;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod reference;
mod validate;
mod waves;

pub use cpu::CpuBackend;

/// Storage type of the item tables (input and output embeddings). Arithmetic is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        })
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            other => Err(format!(
                "unknown dtype {other:?} (expected f32, bf16 or f16)"
            )),
        }
    }
}

/// A GRU4Rec-style model in host memory, every matrix row-major f32, exactly as the trainer writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    pub n_items: usize,
    /// Width of the GRU input (the item input embedding).
    pub embed_dim: usize,
    /// Width of the GRU hidden state (= width of the output item embedding).
    pub hidden: usize,
    /// `n_items × embed_dim` input embeddings; `None` when tied to `item_out` (then `embed_dim == hidden`).
    pub item_in: Option<Vec<f32>>,
    /// `3·hidden × embed_dim`, gate blocks in order r, z, n.
    pub w_ih: Vec<f32>,
    /// `3·hidden × hidden`, gate blocks in order r, z, n.
    pub w_hh: Vec<f32>,
    /// `3·hidden`.
    pub b_ih: Vec<f32>,
    /// `3·hidden`.
    pub b_hh: Vec<f32>,
    /// `n_items × hidden` output embeddings.
    pub item_out: Vec<f32>,
    /// `n_items` output bias.
    pub item_bias: Vec<f32>,
}

impl ModelWeights {
    /// Checks that every table has the length its dimensions imply.
    pub fn validate(&self) -> Result<(), BackendError> {
        let (n, e, h) = (self.n_items, self.embed_dim, self.hidden);
        let bad = |what: &str, got: usize, want: usize| {
            Err(BackendError::BadModel(format!(
                "{what} has {got} values, expected {want}"
            )))
        };
        if n == 0 || e == 0 || h == 0 {
            return Err(BackendError::BadModel(format!(
                "empty dimension: n_items={n}, embed_dim={e}, hidden={h}"
            )));
        }
        match &self.item_in {
            Some(t) if t.len() != n * e => return bad("item_in", t.len(), n * e),
            None if e != h => {
                return Err(BackendError::BadModel(format!(
                    "tied input embedding needs embed_dim == hidden, got {e} != {h}"
                )));
            }
            _ => {}
        }
        for (what, got, want) in [
            ("w_ih", self.w_ih.len(), 3 * h * e),
            ("w_hh", self.w_hh.len(), 3 * h * h),
            ("b_ih", self.b_ih.len(), 3 * h),
            ("b_hh", self.b_hh.len(), 3 * h),
            ("item_out", self.item_out.len(), n * h),
            ("item_bias", self.item_bias.len(), n),
        ] {
            if got != want {
                return bad(what, got, want);
            }
        }
        Ok(())
    }

    /// The input embedding table (the output table when tied).
    pub fn input_table(&self) -> &[f32] {
        self.item_in.as_deref().unwrap_or(&self.item_out)
    }
}

/// Handle of a model uploaded to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelId(pub u64);

/// One event: the session in state-table slot `slot` saw item `item`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub slot: u32,
    pub item: u32,
}

/// Score the given candidates for the session in `slot`.
#[derive(Clone, Copy, Debug)]
pub struct ScoreQuery<'a> {
    pub slot: u32,
    pub candidates: &'a [u32],
}

/// The `k` best items of the whole catalogue for the session in `slot`, never returning an item of
/// `exclude` (any order, duplicates allowed).
#[derive(Clone, Copy, Debug)]
pub struct TopKQuery<'a> {
    pub slot: u32,
    pub k: usize,
    pub exclude: &'a [u32],
}

/// An item and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub item: u32,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid model: {0}")]
    BadModel(String),
    #[error("unknown model id {0:?}")]
    UnknownModel(ModelId),
    #[error("item index {item} out of range (catalogue has {n_items} items)")]
    ItemOutOfRange { item: u32, n_items: usize },
    #[error("session slot {slot} out of range (state table has {capacity} slots)")]
    SlotOutOfRange { slot: u32, capacity: usize },
    #[error("state width {got} does not match the model's hidden size {want}")]
    HiddenMismatch { got: usize, want: usize },
    #[error("k must be at least 1")]
    ZeroK,
    /// The device (or the CPU thread pool) failed; `source` is the driver's or runtime's own error.
    #[error("device error: {what}")]
    Device {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl BackendError {
    /// A device failure described by `what` alone.
    pub fn device(what: impl Into<String>) -> Self {
        BackendError::Device {
            what: what.into(),
            source: None,
        }
    }

    /// A device failure while doing `what`, caused by `source` (kept, not flattened into the text).
    pub fn device_caused(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError::Device {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// The compute contract shared by the CPU and CUDA backends. Synchronous and owned by one thread: async
/// callers reach it through the server's batcher. Every method validates all of its input before it
/// changes anything, so a bad request never leaves a session half-updated.
pub trait Backend: Send {
    /// Human-readable device name, e.g. `cpu (2 threads, avx512)` or `cuda:0 NVIDIA H100`.
    fn device(&self) -> String;

    /// Copies a model to the device with item tables stored in `dtype`. Several models may be resident
    /// at once (hot reload keeps the old one until requests in flight finish).
    fn upload_model(&mut self, weights: &ModelWeights, dtype: Dtype) -> Result<ModelId>;

    /// Frees a model. Unknown ids are ignored.
    fn drop_model(&mut self, model: ModelId);

    /// (Re)allocates the session state table: `capacity` slots of `hidden` f32 values, all zero.
    fn alloc_states(&mut self, capacity: usize, hidden: usize) -> Result<()>;

    /// Number of slots and width of the state table.
    fn states_shape(&self) -> (usize, usize);

    /// Sets the given slots' hidden state to zero (a new session).
    fn reset_states(&mut self, slots: &[u32]) -> Result<()>;

    /// Copies one slot's hidden state to the host.
    fn read_state(&mut self, slot: u32) -> Result<Vec<f32>>;

    /// Overwrites one slot's hidden state.
    fn write_state(&mut self, slot: u32, state: &[f32]) -> Result<()>;

    /// One GRU step per event; several events of the same slot apply in the order given.
    fn gru_step(&mut self, model: ModelId, events: &[Event]) -> Result<()>;

    /// Scores each query's candidates: `dot(h, item_out[c]) + item_bias[c]`, in the order given.
    fn score(&mut self, model: ModelId, queries: &[ScoreQuery<'_>]) -> Result<Vec<Vec<f32>>>;

    /// For each query, the `k` best non-excluded items, by score descending, ties broken by the lower
    /// item index. Fewer than `k` are returned only when the catalogue has fewer eligible items.
    fn top_k(&mut self, model: ModelId, queries: &[TopKQuery<'_>]) -> Result<Vec<Vec<Scored>>>;

    /// [`Backend::top_k`], with `host` run meanwhile: host work that the same answers need (the
    /// speed layer's kNN queries), so that the two overlap instead of following each other. On the
    /// CPU both share this backend's threads, and `host` may spread its work over them with
    /// [`run_parallel`]. A device backend may run `host` while the device ranks (the CUDA backend
    /// queues its kernels, runs `host`, then waits for them); by default it runs after. Either way
    /// `host` runs on the caller's thread, where [`run_parallel`] uses rayon's global pool. `host`
    /// runs once, whether or not ranking fails.
    fn top_k_beside(
        &mut self,
        model: ModelId,
        queries: &[TopKQuery<'_>],
        host: &(dyn Fn() + Sync),
    ) -> Result<Vec<Vec<Scored>>> {
        let ranked = self.top_k(model, queries);
        host();
        ranked
    }
}

/// `task(0)`, …, `task(n - 1)` on the current rayon pool, one index per job (each task is a sizable
/// piece of work); one task runs on the caller's thread.
pub fn run_parallel(n: usize, task: &(dyn Fn(usize) + Sync)) {
    use rayon::prelude::*;
    if n < 2 {
        (0..n).for_each(task);
    } else {
        (0..n).into_par_iter().with_max_len(1).for_each(task);
    }
}
