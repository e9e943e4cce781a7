//! `lambdarec quickstart --exit` on a tiny sample: every step runs, and the online replay reproduces
//! the offline evaluation printed in step 2.

use lambdarec_proto::archive::{Archive, DateRange};
use lambdarec_server::DeviceChoice;
use lambdarec_server::load::quickstart::{self, QuickstartOptions};
use lambdarec_trainer::data::synthetic::SyntheticOptions;
use lambdarec_trainer::train::TrainConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_end_to_end_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let opts = QuickstartOptions {
        synthetic: SyntheticOptions {
            n_items: 150,
            n_sessions: 800,
            seed: 3,
            ..SyntheticOptions::default()
        },
        config: TrainConfig {
            hidden: 16,
            epochs: 1,
            n_sample: 32,
            ..TrainConfig::default()
        },
        store: dir.path().join("store"),
        data_dir: Some(dir.path().join("data")),
        listen: "127.0.0.1:0".parse().unwrap(),
        device: DeviceChoice::Cpu,
        concurrency: 1,
        verbose: false,
        ..QuickstartOptions::default()
    };
    let done = quickstart::run(&opts).await.unwrap();
    assert!(dir.path().join("store/sample.tsv").is_file());
    assert!(done.test_path.is_file());
    assert!(done.server.local_addr().ip().is_loopback());
    let names: Vec<&str> = done
        .offline
        .baselines
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    // The blend row names the weights `train` fit on the sample's held-out last day.
    assert_eq!(names[..5], ["pop", "item-knn", "sknn", "knn", "trending"]);
    assert!(
        names.len() == 6 && names[5].starts_with("blend("),
        "{names:?}"
    );
    // Served by default: the blend, its sessions replayed one at a time as the evaluator does.
    let (row, off) = quickstart::served_row(&done.offline);
    assert!(row.starts_with("blend("), "{row}");
    let on = &done.online.accuracy;
    assert!(done.online.errors.is_empty(), "{:?}", done.online.errors);
    assert_eq!(on.events, off.events);
    assert!((on.recall - off.recall).abs() < 1e-6 && (on.mrr - off.mrr).abs() < 1e-6);
    assert!(
        quickstart::grpcurl_example(done.server.local_addr(), "42")
            .contains("lambdarec.v1.Recommender/Recommend")
    );
    let applied = done.online.events_applied;
    done.server.shutdown().await.unwrap();

    // Every applied event went through the embedded log into the archive (a graceful stop lets the
    // archive catch up), and a snapshot of the sessions was left for the next start.
    assert!(dir.path().join("data/log").is_dir());
    assert!(
        std::fs::read_dir(dir.path().join("data/snapshots"))
            .unwrap()
            .count()
            >= 1
    );
    let archive = Archive::in_store(dir.path().join("store").to_str().unwrap()).unwrap();
    let mut archived = 0;
    for file in archive.files(DateRange::ALL).await.unwrap() {
        archived += archive.read_events(&file).await.unwrap().len() as u64;
    }
    assert_eq!(
        archived, applied,
        "archived events = events the server applied"
    );
}
