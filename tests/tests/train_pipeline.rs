//! The batch layer end to end: synthetic log with a planted sequential pattern → train → evaluate →
//! bundle in a store → `eval` of the stored bundle gives the same numbers → same seed, same bundle.

use lambdarec_trainer::data::ReadOptions;
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::pipeline::{
    EvalJob, EvalOptions, TrainJob, load_model, run_eval, run_train,
};
use lambdarec_trainer::train::TrainConfig;

fn small_config(seed: u64) -> TrainConfig {
    TrainConfig {
        hidden: 32,
        epochs: 3,
        n_sample: 128,
        seed,
        ..TrainConfig::default()
    }
}

fn job(dir: &std::path::Path, store: &str, seed: u64) -> TrainJob {
    let log = generate(&SyntheticOptions {
        n_items: 300,
        n_sessions: 3_000,
        seed: 7,
        ..SyntheticOptions::default()
    });
    let path = dir.join("synthetic.tsv");
    write_tsv(&log, &path).unwrap();
    TrainJob::new(Some(path), store, "synthetic", small_config(seed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn trained_model_beats_pop_and_eval_of_the_bundle_matches_training() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("memory://train-pipeline-{}", std::process::id());
    let job = job(dir.path(), &store, 11);
    let out = run_train(&job, |_, _, _| {}, |_| {}).await.unwrap();
    let ev = &out.evaluation;
    let pop = &ev.baselines.iter().find(|(n, _)| n == "pop").unwrap().1;
    println!("{}", ev.table());
    assert!(
        ev.model.events > 500,
        "too few test events: {}",
        ev.model.events
    );
    assert!(
        ev.model.recall > pop.recall + 0.1 && ev.model.mrr > pop.mrr + 0.05,
        "GRU4Rec should learn the planted successor pattern: model {:?} vs pop {:?}",
        ev.model,
        pop
    );
    assert!(
        out.epochs.windows(2).all(|w| w[1].loss < w[0].loss),
        "loss must fall: {:?}",
        out.epochs
    );

    // The stored bundle evaluated by `eval` on the same test sessions gives the same numbers.
    let test_path = dir.path().join("test.tsv");
    write_sessions(&out.dataset.test, &out.dataset.vocab.ids, &test_path);
    let (loaded, again, _) = run_eval(&EvalJob {
        store: store.clone(),
        model: "synthetic".to_string(),
        version: None,
        test_path,
        train_path: None,
        read: ReadOptions::default(),
        min_session_len: 2,
        eval: EvalOptions::default(),
    })
    .await
    .unwrap();
    assert_eq!(loaded.bundle.manifest.version, out.version);
    assert_eq!(
        again.model, ev.model,
        "offline eval of the stored bundle must equal the training-time eval"
    );
    assert_eq!(loaded.weights, out.weights);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_same_seed_gives_the_same_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut j1 = job(dir.path(), a.path().to_str().unwrap(), 5);
    j1.config.epochs = 1;
    let mut j2 = job(dir.path(), b.path().to_str().unwrap(), 5);
    j2.config.epochs = 1;
    run_train(&j1, |_, _, _| {}, |_| {}).await.unwrap();
    run_train(&j2, |_, _, _| {}, |_| {}).await.unwrap();
    let m1 = load_model(j1.store.as_str(), "synthetic", None)
        .await
        .unwrap();
    let m2 = load_model(j2.store.as_str(), "synthetic", None)
        .await
        .unwrap();
    assert_eq!(m1.weights, m2.weights);
    assert_eq!(
        m1.bundle.manifest.files["weights.safetensors"].sha256,
        m2.bundle.manifest.files["weights.safetensors"].sha256
    );
}

fn write_sessions(s: &lambdarec_trainer::data::Sessions, ids: &[String], path: &std::path::Path) {
    let mut out = String::from("SessionId\tItemId\tTime\n");
    for i in 0..s.len() {
        for (j, &item) in s.session(i).iter().enumerate() {
            out += &format!(
                "{}\t{}\t{}\n",
                s.keys[i],
                ids[item as usize],
                s.times[s.offsets[i] + j]
            );
        }
    }
    std::fs::write(path, out).unwrap();
}
