//! Conversion between trained weights and the model bundle (the trainer→server contract): tensor names,
//! shapes and the manifest's training parameters and metrics.

use std::collections::BTreeMap;

use lambdarec_kernels::ModelWeights;
use lambdarec_proto::bundle::{
    Bundle, BundleError, Dims, FORMAT_VERSION, ItemTable, Manifest, Tensor,
};

use crate::data::ItemVocab;
use crate::pipeline::Evaluation;
use crate::train::{EpochStats, TrainConfig};

pub const MODEL_KIND: &str = "gru4rec";

/// The bundle's tensors for these weights: names and shapes as the server reads them.
pub fn weight_tensors(w: &ModelWeights) -> BTreeMap<String, Tensor> {
    let (n, e, h) = (w.n_items, w.embed_dim, w.hidden);
    let mut tensors = BTreeMap::new();
    let mut put = |name: &str, shape: Vec<usize>, data: &[f32]| {
        tensors.insert(
            name.to_string(),
            Tensor {
                shape,
                data: data.to_vec(),
            },
        );
    };
    put("gru.w_ih", vec![3 * h, e], &w.w_ih);
    put("gru.w_hh", vec![3 * h, h], &w.w_hh);
    put("gru.b_ih", vec![3 * h], &w.b_ih);
    put("gru.b_hh", vec![3 * h], &w.b_hh);
    put("item_out", vec![n, h], &w.item_out);
    put("item_bias", vec![n], &w.item_bias);
    if let Some(item_in) = &w.item_in {
        put("item_in", vec![n, e], item_in);
    }
    tensors
}

/// Builds a bundle; the store fills in name, version, time and checksums when it writes it.
pub fn to_bundle(
    w: &ModelWeights,
    vocab: &ItemVocab,
    fingerprint: &str,
    config: &TrainConfig,
    epochs: &[EpochStats],
    evaluation: &Evaluation,
) -> Bundle {
    bundle_of(
        w,
        vocab,
        fingerprint,
        serde_json::json!({ "config": config, "epochs": epochs }),
        evaluation.to_json(),
    )
}

/// A bundle of these weights with free-form `training` and `metrics` sections in its manifest.
pub fn bundle_of(
    w: &ModelWeights,
    vocab: &ItemVocab,
    fingerprint: &str,
    training: serde_json::Value,
    metrics: serde_json::Value,
) -> Bundle {
    let (n, e, h) = (w.n_items, w.embed_dim, w.hidden);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_kind: MODEL_KIND.to_string(),
        name: String::new(),
        version: String::new(),
        created_unix_ms: 0,
        created_at: String::new(),
        dims: Dims {
            n_items: n as u64,
            embed_dim: e as u32,
            hidden: h as u32,
            tied_embedding: w.item_in.is_none(),
        },
        data_fingerprint: fingerprint.to_string(),
        training,
        metrics,
        files: BTreeMap::new(),
        blend: None,
        gate: None,
    };
    let items = ItemTable {
        ids: vocab.ids.clone(),
        popularity: vocab.popularity.clone(),
    };
    Bundle {
        manifest,
        tensors: weight_tensors(w),
        items,
        sessions: None,
        optimizer: None,
    }
}

/// Reads weights and the item vocabulary back from a bundle, checking every shape.
pub fn from_bundle(b: &Bundle) -> Result<(ModelWeights, ItemVocab), BundleError> {
    let m = &b.manifest;
    let format = |reason: String| BundleError::Format {
        path: format!(
            "models/{}/{}/{}",
            m.name,
            m.version,
            lambdarec_proto::bundle::WEIGHTS_FILE
        ),
        reason,
    };
    if m.model_kind != MODEL_KIND {
        return Err(format(format!(
            "model kind {:?} is not {MODEL_KIND:?}",
            m.model_kind
        )));
    }
    let (n, e, h) = (
        m.dims.n_items as usize,
        m.dims.embed_dim as usize,
        m.dims.hidden as usize,
    );
    let take = |name: &str, shape: &[usize]| -> Result<Vec<f32>, BundleError> {
        let t = b
            .tensors
            .get(name)
            .ok_or_else(|| format(format!("tensor {name:?} is missing")))?;
        if t.shape != shape {
            return Err(format(format!(
                "tensor {name:?} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(t.data.clone())
    };
    let item_in = if m.dims.tied_embedding {
        None
    } else {
        Some(take("item_in", &[n, e])?)
    };
    let weights = ModelWeights {
        n_items: n,
        embed_dim: e,
        hidden: h,
        item_in,
        w_ih: take("gru.w_ih", &[3 * h, e])?,
        w_hh: take("gru.w_hh", &[3 * h, h])?,
        b_ih: take("gru.b_ih", &[3 * h])?,
        b_hh: take("gru.b_hh", &[3 * h])?,
        item_out: take("item_out", &[n, h])?,
        item_bias: take("item_bias", &[n])?,
    };
    weights.validate().map_err(|e| format(e.to_string()))?;
    if b.items.ids.len() != n || b.items.popularity.len() != n {
        return Err(format(format!(
            "items.arrow has {} ids and {} popularity values for {n} items",
            b.items.ids.len(),
            b.items.popularity.len()
        )));
    }
    let vocab = ItemVocab::new(b.items.ids.clone(), b.items.popularity.clone());
    Ok((weights, vocab))
}

/// Sessions as a bundle's sessions.arrow holds them.
pub fn session_table(s: &crate::data::Sessions) -> lambdarec_proto::bundle::SessionTable {
    lambdarec_proto::bundle::SessionTable {
        offsets: s.offsets.iter().map(|&o| o as u64).collect(),
        items: s.items.clone(),
        times: s.times.clone(),
    }
}

/// A bundle's sessions.arrow as sessions (keyed by their position).
pub fn sessions_of(t: &lambdarec_proto::bundle::SessionTable) -> crate::data::Sessions {
    crate::data::Sessions {
        offsets: t.offsets.iter().map(|&o| o as usize).collect(),
        items: t.items.clone(),
        times: t.times.clone(),
        keys: (1..t.offsets.len()).map(|s| s.to_string()).collect(),
    }
}

/// The optimiser's state as the tensors of optimizer.safetensors: `<param>.acc` and `<param>.mom`
/// (when used), each `rows × cols` of the parameter as the trainer holds it (`ParamId::name`),
/// and `step` (one value; exact up to 2^24 steps, beyond which Adam's bias correction is 1).
pub fn optimizer_tensors(
    state: &crate::train::OptimizerState,
    model: &crate::model::Gru4Rec,
) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for p in &state.params {
        let param = model.param(p.id);
        let shape = vec![param.rows, param.cols];
        for (slot, data) in [("acc", &p.acc), ("mom", &p.mom)] {
            if !data.is_empty() {
                out.insert(
                    format!("{}.{slot}", p.id.name()),
                    Tensor {
                        shape: shape.clone(),
                        data: data.clone(),
                    },
                );
            }
        }
    }
    out.insert(
        "step".to_string(),
        Tensor {
            shape: vec![1],
            data: vec![state.step.min(1 << 24) as f32],
        },
    );
    out
}

/// Reads back what [`optimizer_tensors`] wrote; a parameter whose tensors are missing starts
/// fresh.
pub fn optimizer_of(tensors: &BTreeMap<String, Tensor>) -> crate::train::OptimizerState {
    use crate::model::ParamId;
    let get = |name: String| tensors.get(&name).map(|t| t.data.clone());
    let params = ParamId::ALL
        .into_iter()
        .filter_map(|id| {
            Some(crate::train::ParamState {
                id,
                acc: get(format!("{}.acc", id.name()))?,
                mom: get(format!("{}.mom", id.name())).unwrap_or_default(),
            })
        })
        .collect();
    let step = tensors
        .get("step")
        .and_then(|t| t.data.first())
        .map_or(0, |&s| s.max(0.0) as u64);
    crate::train::OptimizerState { step, params }
}
