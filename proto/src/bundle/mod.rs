//! The model bundle: what the trainer publishes and the server loads, and how it lies in a store.
//!
//! ```text
//! <store>/models/<name>/<version>/manifest.json       format version, dims, checksums, training, metrics
//! <store>/models/<name>/<version>/weights.safetensors named f32 tensors
//! <store>/models/<name>/<version>/items.arrow         index -> item_id (Utf8), popularity (UInt64)
//! <store>/models/<name>/<version>/sessions.arrow      optional: training sessions (speed-layer seed)
//! <store>/models/<name>/<version>/optimizer.safetensors optional: optimiser state (for warm starts)
//! <store>/models/<name>/LATEST                        the current version's name, written last
//! <store>/models/<name>/CANARY                        optional: the canary version's name
//! ```
//!
//! A version directory is complete once its manifest exists (the manifest is written after the
//! files it checksums), and LATEST is written after the manifest, so a reader following LATEST
//! never sees half a bundle. Versions are never rewritten; rollback points LATEST back.
//!
//! CANARY (TF Serving's "canary" version label) names a complete version that servers started
//! with `serve --canary-fraction F` serve to a stable, hash-chosen share F of new sessions beside
//! LATEST's version. Promoting the canary points LATEST at it and then removes CANARY, so a
//! crash between the two leaves LATEST and CANARY naming the same version, which servers treat as
//! promoted (all traffic on it). Removing CANARY ends the canary: its sessions return to LATEST's
//! version. Neither pointer can be a version's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod error;
mod items;
mod names;
mod open;
mod pointers;
mod sessions;
mod store;
pub(crate) mod time;
mod validate;
mod weights;

#[cfg(test)]
mod store_tests;

pub use error::BundleError;
pub use names::{compare_versions, validate_model_name, validate_version};
pub use pointers::Pointer;
pub use store::Store;
pub use time::{format_rfc3339_ms, format_version_stamp, now_unix_ms};
pub use validate::GRU4REC;

/// The manifest format this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// File names inside a version directory.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const ITEMS_FILE: &str = "items.arrow";
pub const SESSIONS_FILE: &str = "sessions.arrow";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// manifest.json: everything needed to trust and interpret the other files of a version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer; readers refuse any other.
    pub format_version: u32,
    /// Architecture, e.g. [`GRU4REC`]; decides which tensors must exist.
    pub model_kind: String,
    /// Model name (filled by `Store::write_bundle`).
    pub name: String,
    /// Version (assigned by `Store::write_bundle`).
    pub version: String,
    /// Creation time, Unix epoch ms (filled by `Store::write_bundle`).
    pub created_unix_ms: u64,
    /// The same time as RFC 3339 UTC, e.g. `2026-11-26T10:15:00.123Z`, for humans.
    pub created_at: String,
    pub dims: Dims,
    /// Identifies the training data (e.g. a hash of the input files and filters); free form.
    pub data_fingerprint: String,
    /// Training parameters; free form, reported as is.
    pub training: serde_json::Value,
    /// Evaluation metrics (Recall@20, MRR@20, ...); free form, reported as is.
    pub metrics: serde_json::Value,
    /// Every other file of the version, by file name (filled by `Store::write_bundle`).
    pub files: BTreeMap<String, FileEntry>,
    /// The blend of the GRU with session-kNN the trainer fit for this model; absent in bundles
    /// written before it existed or trained without a validation split (then: the GRU alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blend: Option<Blend>,
    /// Written by a continuous-training cycle (`train --follow`): how this version compared with
    /// the one serving when it was trained, and whether it was published (LATEST or CANARY moved
    /// to it) or kept for inspection only. Absent for a version trained by a plain `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

/// A continuous-training cycle's verdict on a candidate version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Gate {
    /// True when LATEST (or CANARY, see `published_as`) was moved to this version.
    pub published: bool,
    /// The pointer moved to this version when it was published. Absent when it was not, and in
    /// manifests written before canaries existed (those published to LATEST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_as: Option<Pointer>,
    /// Why, in words ("no version was serving", "not worse than … within the margin", …).
    pub reason: String,
    /// The version LATEST named when the cycle started (the one compared against).
    pub serving_version: Option<String>,
    /// The version the candidate's weights started from (a warm start), if any.
    pub warm_start_from: Option<String>,
    /// Cut-off of the metrics.
    pub k: u32,
    /// The candidate passes when neither Recall@k nor MRR@k is below the serving version's by
    /// more than this fraction of it.
    pub margin: f64,
    /// Held-out sessions and next-item predictions both versions were measured on.
    pub sessions: u64,
    pub predictions: u64,
    pub candidate: GateArm,
    /// Absent when nothing was serving.
    pub serving: Option<GateArm>,
}

/// One version's result on the gate's held-out events, under the strategy it serves by default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GateArm {
    /// `blend` or `gru`.
    pub strategy: String,
    pub recall: f64,
    pub mrr: f64,
}

/// How the GRU, session-kNN and trending scores are combined: per request, over the pooled
/// candidates, `(1 - trend_weight) · (gru_weight · exp(s - s_max) + (1 - gru_weight) · knn / knn_max)
/// + trend_weight · trending` (`lambdarec_trainer::blend`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Blend {
    pub gru_weight: f32,
    /// Trending's share (absent in bundles written before it existed: 0).
    #[serde(default)]
    pub trend_weight: f32,
    /// Trending's half-life in seconds (absent: the server's default, one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend_half_life_s: Option<f64>,
    /// V-SKNN's neighbours per request and candidate sample, as the weights were fit with (absent:
    /// session-rec's RSC15 configuration, 500 of the 5,000 most recent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_neighbours: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_sample: Option<u32>,
    /// How the weight was fit (validation split, metrics at each weight tried); free form.
    pub fit: serde_json::Value,
}

/// Sizes the server allocates for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Catalogue size N: rows of items.arrow and of the item tensors.
    pub n_items: u64,
    /// Input item embedding size E.
    pub embed_dim: u32,
    /// GRU hidden size H (the session state's length).
    pub hidden: u32,
    /// Whether the input embedding is `item_out` (then E = H and there is no `item_in`).
    pub tied_embedding: bool,
}

/// Size and checksum of one file, checked on every read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub bytes: u64,
}

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Elements the shape calls for (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The catalogue: item index i has external id `ids[i]` and training popularity `popularity[i]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemTable {
    pub ids: Vec<String>,
    pub popularity: Vec<u64>,
}

/// Sessions of item indices with event times: session `s` is `items[offsets[s]..offsets[s + 1]]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionTable {
    pub offsets: Vec<u64>,
    pub items: Vec<u32>,
    /// Unix seconds, one per item.
    pub times: Vec<f64>,
}

/// A whole model version in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub manifest: Manifest,
    pub tensors: BTreeMap<String, Tensor>,
    pub items: ItemTable,
    /// The training sessions the server seeds its speed layer with (sessions.arrow); None in bundles
    /// written without them.
    pub sessions: Option<SessionTable>,
    /// The trainer's optimiser state (optimizer.safetensors), so that a later job can warm-start
    /// from this version as if training had not stopped. Written when present; `read_bundle`
    /// never fetches it (a server has no use for it): read it with `Store::read_optimizer`.
    pub optimizer: Option<BTreeMap<String, Tensor>>,
}

/// Lower-case hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}
