//! The Lambda loop through a real server: a log replayed with `lambdarec load` into a server with the
//! embedded event log lands in `<store>/events` through the archiver, and `train --data
//! <store>/events` gives the same bundle metrics as training on the original file.

use std::path::Path;
use std::time::Duration;

use lambdarec_eventlog::file::FileLog;
use lambdarec_eventlog::{EventLog, OpenOptions};
use lambdarec_proto::archive::Archive;
use lambdarec_proto::bundle::Store;
use lambdarec_server::archive::{ArchiveOptions, Archiver};
use lambdarec_server::load::{LoadOptions, Mode, run};
use lambdarec_server::{DeviceChoice, LogConfig, ServeConfig};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::pipeline::{TrainData, TrainJob, TrainOutcome, run_train};
use lambdarec_trainer::train::TrainConfig;

const SERVED: &str = "served";
const FROM_FILE: &str = "from-file";
const FROM_ARCHIVE: &str = "from-archive";

async fn train(data: TrainData, store: &str, model: &str, min_support: usize) -> TrainOutcome {
    let config = TrainConfig {
        hidden: 32,
        epochs: 2,
        n_sample: 128,
        seed: 5,
        ..TrainConfig::default()
    };
    let mut job = TrainJob {
        data,
        ..TrainJob::new(None, store, model, config)
    };
    job.prepare.min_item_support = min_support;
    run_train(&job, |_, _, _| {}, |_| {}).await.unwrap()
}

async fn metrics(store: &str, model: &str, outcome: &TrainOutcome) -> serde_json::Value {
    Store::open(store)
        .unwrap()
        .read_manifest(model, &outcome.version)
        .await
        .unwrap()
        .metrics
}

/// Archives whatever the server's archiver had not copied yet when it stopped (its last batch).
async fn archive_rest(log_dir: &Path, store: &str) {
    let log = FileLog::open(log_dir, &OpenOptions::default()).unwrap();
    let archive = Archive::in_store(store).unwrap();
    let mut archiver = Archiver::recover(archive, ArchiveOptions::default())
        .await
        .unwrap();
    let first = log.bounds().unwrap().first;
    archiver
        .connect(&log.describe(), first, |from| log.reader(from))
        .unwrap();
    archiver.run_once().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_replayed_through_the_server_trains_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = generate(&SyntheticOptions {
        n_items: 200,
        n_sessions: 1_500,
        seed: 11,
        ..SyntheticOptions::default()
    });
    // The server logs event times in whole ms; so does this file.
    for e in &mut log.events {
        e.time = (e.time * 1000.0).round() / 1000.0;
    }
    let file = dir.path().join("sample.tsv");
    write_tsv(&log, &file).unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap().to_string();

    // The served model knows every item of the file, so that no replayed event is refused.
    train(TrainData::File(file.clone()), &store, SERVED, 1).await;

    let log_dir = dir.path().join("log");
    let server = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.clone(),
        model: SERVED.to_string(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        max_sessions: 10_000,
        poll_interval: None,
        log: LogConfig::Url(format!("file://{}", log_dir.display())),
        snapshot_dir: Some(dir.path().join("snapshots")),
        archive: Some(ArchiveOptions {
            max_records: 5_000,
            interval: Duration::from_millis(200),
        }),
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);
    let report = run(&LoadOptions {
        target: server.local_addr().to_string(),
        data: file.clone(),
        mode: Mode::Closed { concurrency: 8 },
        connections: 2,
        max_time: Duration::from_secs(300),
        ..LoadOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(report.errors_total(), 0, "{:?}", report.errors);
    // Events on items the served model does not know are refused and never logged; they are the
    // ones preparation drops anyway (test events on items unseen in training).
    println!(
        "replayed: {} applied, {} unknown items",
        report.events_applied, report.unknown_items
    );
    assert!(report.events_applied > 1000, "{}", report.events_applied);
    server.shutdown().await.unwrap();
    archive_rest(&log_dir, &store).await;

    let events = format!("{store}/events");
    let from_file = train(TrainData::File(file), &store, FROM_FILE, 5).await;
    let data = TrainData::from_arg(&events, None, None).unwrap();
    let from_archive = train(data, &store, FROM_ARCHIVE, 5).await;
    println!("file:    {}", from_file.evaluation.table());
    println!("archive: {}", from_archive.evaluation.table());
    let (a, b) = (&from_file.evaluation.model, &from_archive.evaluation.model);
    assert!(a.events > 100, "too few test events: {}", a.events);
    assert_eq!(
        (a.events, a.recall, a.mrr),
        (b.events, b.recall, b.mrr),
        "prepared: {} vs {}",
        from_file.dataset.report,
        from_archive.dataset.report
    );
    let (ma, mb) = (
        metrics(&store, FROM_FILE, &from_file).await,
        metrics(&store, FROM_ARCHIVE, &from_archive).await,
    );
    assert!(ma["recall@20"].is_number(), "{ma}");
    assert_eq!(ma, mb, "bundle metrics differ");
}
