//! A model of any catalogue size with random weights, and a session log over the same item ids, for
//! `lambdarec synthetic`: serving can then be load-tested at production scale (a million items, say)
//! without production data, on the CPU or the GPU. The model's recommendations are meaningless (online
//! Recall is at chance level); what such a run measures is the serving path: throughput, latency,
//! memory, and whether two devices give the same answers.

use std::path::PathBuf;

use anyhow::Context;
use lambdarec_kernels::conformance::{TestRng, random_model};
use lambdarec_proto::bundle::{Blend, SessionTable, Store};
use lambdarec_trainer::data::ItemVocab;
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::export::bundle_of;

/// What to write.
#[derive(Clone, Debug)]
pub struct SyntheticModel {
    pub n_items: usize,
    pub hidden: usize,
    /// Input embedding width; 0 ties the input embedding to the output embedding (as trained models
    /// do by default).
    pub embed_dim: usize,
    /// Sessions in the log (Zipf-popular items, with the clusters and successors of the built-in
    /// sample, so that the item mix and session lengths look like real traffic).
    pub sessions: usize,
    pub seed: u64,
    /// Object store URL or local directory.
    pub store: String,
    pub model: String,
    /// The session log to write (TSV).
    pub log: PathBuf,
}

/// What was written.
#[derive(Debug)]
pub struct SyntheticOutcome {
    pub version: String,
    pub events: usize,
    /// Bytes of weights in the bundle.
    pub weight_bytes: usize,
}

/// The log's sessions as model indices (item id `i` is index `i - 1`), each in its time order.
fn session_table(log: &lambdarec_trainer::data::RawLog) -> SessionTable {
    let mut by_session: Vec<Vec<(u32, f64)>> = vec![Vec::new(); log.sessions.len()];
    for e in &log.events {
        let id: u32 = log.items[e.item as usize]
            .parse()
            .expect("synthetic item ids are integers");
        by_session[e.session as usize].push((id - 1, e.time));
    }
    let mut t = SessionTable {
        offsets: vec![0],
        ..SessionTable::default()
    };
    for events in by_session.into_iter().filter(|e| !e.is_empty()) {
        for (item, time) in events {
            t.items.push(item);
            t.times.push(time);
        }
        t.offsets.push(t.items.len() as u64);
    }
    t
}

/// Writes the session log, then the bundle (as the store's LATEST of `model`).
pub async fn write(s: &SyntheticModel) -> anyhow::Result<SyntheticOutcome> {
    if s.n_items < 2 || s.hidden == 0 || s.sessions == 0 {
        anyhow::bail!(
            "a synthetic model needs at least 2 items, 1 hidden unit and 1 session (got {} items, hidden {}, {} sessions)",
            s.n_items,
            s.hidden,
            s.sessions
        );
    }
    if u32::try_from(s.n_items).is_err() {
        anyhow::bail!("{} items do not fit u32 item indices", s.n_items);
    }
    let store = Store::open(&s.store).with_context(|| format!("opening store {}", s.store))?;

    let log = generate(&SyntheticOptions {
        n_items: s.n_items,
        n_sessions: s.sessions,
        seed: s.seed,
        ..SyntheticOptions::default()
    });
    write_tsv(&log, &s.log).with_context(|| format!("writing {}", s.log.display()))?;
    // The log's item ids are 1..=n_items; the model's item index i is id i + 1, and its popularity
    // is the id's event count in the log.
    let mut popularity = vec![0u64; s.n_items];
    for e in &log.events {
        let id: usize = log.items[e.item as usize]
            .parse()
            .expect("synthetic item ids are integers");
        popularity[id - 1] += 1;
    }
    let ids: Vec<String> = (1..=s.n_items).map(|i| i.to_string()).collect();
    let vocab = ItemVocab::new(ids, popularity);

    let tied = s.embed_dim == 0;
    let embed = if tied { s.hidden } else { s.embed_dim };
    let weights = random_model(&mut TestRng::new(s.seed), s.n_items, embed, s.hidden, tied);
    let fingerprint = format!(
        "synthetic: {} items, hidden {}, embed {}, seed {}",
        s.n_items, s.hidden, s.embed_dim, s.seed
    );
    let training = serde_json::json!({
        "synthetic": {
            "random_weights": true,
            "note": "written by `lambdarec synthetic` for load tests; recommendations are meaningless",
            "n_items": s.n_items,
            "hidden": s.hidden,
            "embed_dim": s.embed_dim,
            "seed": s.seed,
            "log": s.log.display().to_string(),
            "log_sessions": s.sessions,
            "log_events": log.events.len(),
        }
    });
    let mut bundle = bundle_of(
        &weights,
        &vocab,
        &fingerprint,
        training,
        serde_json::json!({}),
    );
    drop(weights);
    // The log's sessions seed the speed layer, and fixed (not fit) blend weights make the default
    // strategy the blend, so that a load test exercises the whole serving path.
    bundle.sessions = Some(session_table(&log));
    bundle.manifest.blend = Some(Blend {
        gru_weight: 0.5,
        trend_weight: 0.1,
        trend_half_life_s: None,
        knn_neighbours: None,
        knn_sample: None,
        fit: serde_json::json!({"synthetic": "fixed weights, not fit on data"}),
    });
    let weight_bytes = bundle.tensors.values().map(|t| 4 * t.data.len()).sum();
    let version = store
        .write_bundle(&s.model, &mut bundle)
        .await
        .with_context(|| format!("writing the bundle to {}", s.store))?;
    Ok(SyntheticOutcome {
        version,
        events: log.events.len(),
        weight_bytes,
    })
}
