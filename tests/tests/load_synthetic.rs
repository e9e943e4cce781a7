//! `lambdarec synthetic`: the random-weight bundle loads into the real server, every item of its session
//! log is in the served catalogue, and the load harness replays the log without a failed call.

use lambdarec_server::load::synthetic::{self, SyntheticModel};
use lambdarec_server::load::{self, LoadOptions, Mode};
use lambdarec_server::{DeviceChoice, ServeConfig};
use lambdarec_trainer::pipeline::load_model;

fn spec(dir: &std::path::Path, n_items: usize, embed_dim: usize) -> SyntheticModel {
    SyntheticModel {
        n_items,
        hidden: 16,
        embed_dim,
        sessions: 300,
        seed: 9,
        store: dir.join("store").to_string_lossy().into_owned(),
        model: "syn".to_string(),
        log: dir.join("sessions.tsv"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_model_serves_its_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), 3_000, 0);
    let out = synthetic::write(&s).await.unwrap();
    let stored = load_model(&s.store, "syn", None).await.unwrap();
    assert_eq!(stored.bundle.manifest.version, out.version);
    assert_eq!(stored.weights.n_items, 3_000);
    assert!(
        stored.weights.item_in.is_none(),
        "embed_dim 0 ties the input embedding"
    );
    // item_out + item_bias, W_ih + W_hh, b_ih + b_hh (tied: no item_in), f32.
    let (n, h) = (3_000, 16);
    assert_eq!(
        out.weight_bytes,
        4 * (n * h + n + 2 * 3 * h * h + 2 * 3 * h)
    );
    let logged: u64 = stored.vocab.popularity.iter().sum();
    assert_eq!(logged as usize, out.events);

    let server = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: s.store.clone(),
        model: "syn".to_string(),
        device: DeviceChoice::Cpu,
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let report = load::run(&LoadOptions {
        target: server.local_addr().to_string(),
        data: s.log.clone(),
        mode: Mode::Closed { concurrency: 8 },
        ..LoadOptions::default()
    })
    .await
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.failed, 0);
    assert_eq!(report.unknown_items, 0);
    assert_eq!(report.events_applied as usize, out.events);
    assert_eq!(report.model_version, out.version);
    assert!(report.requests > 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn separate_input_embedding_and_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), 500, 8);
    synthetic::write(&s).await.unwrap();
    let stored = load_model(&s.store, "syn", None).await.unwrap();
    assert_eq!(stored.weights.embed_dim, 8);
    assert_eq!(stored.weights.item_in.as_ref().map(Vec::len), Some(500 * 8));

    let err = synthetic::write(&spec(dir.path(), 1, 0)).await.unwrap_err();
    assert!(err.to_string().contains("at least 2 items"), "{err}");
}
