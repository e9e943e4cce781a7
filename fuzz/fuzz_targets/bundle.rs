//! A model bundle as the server loads it: `manifest.json`, `weights.safetensors` and `items.arrow`
//! read and verified by `Store::read_bundle`, converted to backend weights, uploaded to the CPU
//! backend and run for one step (the registry's load and warm-up).
//!
//! Input: a flags byte, then the three files separated by `lambdarec_fuzz::SEP`. Flags bit 0 makes
//! the manifest (when it is a JSON object) name this model and version and list the true sizes and
//! SHA-256 of the other two files, so that mutations reach the decoders behind the checksums; bits
//! 1–2 choose the dtype the weights are uploaded as.
#![no_main]

use std::sync::Arc;

use lambdarec_kernels::{Backend, CpuBackend, Dtype, Event, ModelWeights, ScoreQuery, TopKQuery};
use lambdarec_proto::bundle::{ITEMS_FILE, MANIFEST_FILE, Store, WEIGHTS_FILE};
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::Digest;

const MODEL: &str = "m";
const VERSION: &str = "v1";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let p = lambdarec_fuzz::parts(rest, 3);
    let (weights, items) = (
        p.get(1).copied().unwrap_or(&[]),
        p.get(2).copied().unwrap_or(&[]),
    );
    let manifest = if flags & 1 != 0 {
        fix_manifest(p[0], weights, items)
    } else {
        p[0].to_vec()
    };
    let dtype = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::F32][usize::from(flags >> 1 & 3)];

    let loaded = lambdarec_fuzz::runtime().block_on(async {
        let memory = Arc::new(InMemory::new());
        for (file, bytes) in [
            (MANIFEST_FILE, manifest),
            (WEIGHTS_FILE, weights.to_vec()),
            (ITEMS_FILE, items.to_vec()),
        ] {
            let path = Path::from(format!("models/{MODEL}/{VERSION}/{file}"));
            memory
                .put(&path, PutPayload::from(bytes))
                .await
                .expect("put into memory");
        }
        let latest = Path::from(format!("models/{MODEL}/LATEST"));
        memory
            .put(&latest, PutPayload::from(VERSION))
            .await
            .expect("put into memory");
        let store = Store::from_object_store(memory, "", "memory://fuzz");
        store.read_bundle(MODEL, None).await
    });
    let Ok(bundle) = loaded else {
        return;
    };
    if let Ok((weights, _vocab)) = lambdarec_trainer::export::from_bundle(&bundle) {
        run(&weights, dtype);
    }
});

fn fix_manifest(manifest: &[u8], weights: &[u8], items: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(manifest) else {
        return manifest.to_vec();
    };
    let entry = |bytes: &[u8]| {
        let sha: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({ "sha256": sha, "bytes": bytes.len() })
    };
    m.insert("name".into(), MODEL.into());
    m.insert("version".into(), VERSION.into());
    m.insert(
        "files".into(),
        serde_json::json!({ WEIGHTS_FILE: entry(weights), ITEMS_FILE: entry(items) }),
    );
    serde_json::to_vec(&m).expect("a JSON object serialises")
}

/// What loading and warming up a model does on the backend; errors are fine, panics are not.
fn run(weights: &ModelWeights, dtype: Dtype) {
    let mut backend = CpuBackend::new(Some(1)).expect("the CPU backend");
    let Ok(model) = backend.upload_model(weights, dtype) else {
        return;
    };
    if backend.alloc_states(2, weights.hidden).is_err() || weights.n_items == 0 {
        return;
    }
    let _ = backend.gru_step(
        model,
        &[
            Event { slot: 0, item: 0 },
            Event {
                slot: 1,
                item: (weights.n_items - 1) as u32,
            },
        ],
    );
    let _ = backend.top_k(
        model,
        &[TopKQuery {
            slot: 0,
            k: weights.n_items.min(5),
            exclude: &[0],
        }],
    );
    let _ = backend.score(
        model,
        &[ScoreQuery {
            slot: 1,
            candidates: &[0, (weights.n_items - 1) as u32],
        }],
    );
}
