//! lambdarec batch layer: read interaction logs, prepare sessions the GRU4Rec way, train GRU4Rec with
//! candle, evaluate against baselines through the same `kernels::Backend` the server uses, and write
//! versioned model bundles.

pub mod baselines;
pub mod blend;
pub mod continuous;
pub mod data;
pub mod eval;
pub mod export;
mod gru_op;
pub mod knn;
pub mod model;
pub mod pipeline;
mod simd;
pub mod train;
pub mod trending;
mod xe_op;

/// Seeded xorshift64 draws for the randomised tests: `next(m)` is uniform-ish in `0..m`.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |m| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    }
}

/// Errors of the training pipeline.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A request about stored versions that cannot be carried out as asked (nothing to roll back).
    #[error("{0}")]
    Refused(String),
    #[error(
        "training diverged (non-finite loss) in epoch {epoch} at step {step}; try a lower learning rate"
    )]
    Diverged { epoch: usize, step: u64 },
    // Wrapped errors are transparent: their own message is the useful one, and repeating it in ours
    // would print it twice in a cause chain (`{:#}`).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Backend(#[from] lambdarec_kernels::BackendError),
    #[error(transparent)]
    Bundle(#[from] lambdarec_proto::bundle::BundleError),
}
