//! The master dataset end to end: a log's events appended to an event log as the server logs them
//! (timestamp_ms = time × 1000, interleaved sessions, deletes in between) → the archiver →
//! `train --data <store>/events` gives the same prepared data and the same bundle metrics as
//! training on the original file with the same seed and flags; `--since/--until` pick whole days.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lambdarec_eventlog::memory::MemoryLog;
use lambdarec_eventlog::{EventLog, LogRecord, delete_record, event_record};
use lambdarec_proto::archive::{Archive, Date};
use lambdarec_proto::bundle::Store;
use lambdarec_server::archive::{ArchiveOptions, Archiver};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate};
use lambdarec_trainer::data::{ArchiveSource, RawLog, ReadOptions, read_archive, read_log};
use lambdarec_trainer::pipeline::{TrainData, TrainJob, TrainOutcome, run_train};
use lambdarec_trainer::train::TrainConfig;

const MODEL: &str = "archived";

fn config() -> TrainConfig {
    TrainConfig {
        hidden: 32,
        epochs: 2,
        n_sample: 128,
        seed: 5,
        ..TrainConfig::default()
    }
}

/// The records a server would append for `log`'s events: all sessions interleaved in time order
/// (a session's own events stay in order: the sort is stable), each event's time in ms, received a
/// little later, and a session delete after every 97th event (deletes are not training data).
fn as_logged(log: &RawLog) -> Vec<LogRecord> {
    let mut order: Vec<usize> = (0..log.events.len()).collect();
    order.sort_by(|&a, &b| log.events[a].time.total_cmp(&log.events[b].time));
    let mut out = Vec::with_capacity(order.len() + order.len() / 97);
    for (n, i) in order.into_iter().enumerate() {
        let e = log.events[i];
        let session = &log.sessions[e.session as usize];
        let ms = (e.time * 1000.0).round() as i64;
        let item = &log.items[e.item as usize];
        out.push(event_record(
            session,
            item,
            ms,
            ms + 40,
            Some(n as u64),
            "v1",
        ));
        if n % 97 == 96 {
            out.push(delete_record(&format!("gone-{n}"), ms + 50, "v1"));
        }
    }
    out
}

/// Appends `records` in group commits of 1,000 and archives them in batches of 7,000 into
/// `<store>/events`; returns that directory.
async fn archive_into(records: &[LogRecord], store: &Path) -> PathBuf {
    let mut log = MemoryLog::default();
    for chunk in records.chunks(1000) {
        log.append(chunk).unwrap();
    }
    let archive = Archive::in_store(store.to_str().unwrap()).unwrap();
    let options = ArchiveOptions {
        max_records: 7000,
        ..ArchiveOptions::default()
    };
    let mut archiver = Archiver::recover(archive, options).await.unwrap();
    archiver
        .connect(&log.describe(), log.bounds().unwrap().first, |from| {
            log.reader(from)
        })
        .unwrap();
    let events = archiver.run_once().await.unwrap();
    assert_eq!(
        events as usize,
        records.iter().filter(|r| !r.item_id.is_empty()).count()
    );
    store.join("events")
}

async fn train(
    data: TrainData,
    test: Option<PathBuf>,
    store: &str,
    min_support: usize,
) -> TrainOutcome {
    let mut job = TrainJob {
        data,
        test_path: test,
        ..TrainJob::new(None, store, MODEL, config())
    };
    job.prepare.min_item_support = min_support;
    run_train(&job, |_, _, _| {}, |_| {}).await.unwrap()
}

/// The metrics the bundle of `outcome` records in its manifest.
async fn bundle_metrics(store: &str, outcome: &TrainOutcome) -> serde_json::Value {
    let store = Store::open(store).unwrap();
    store
        .read_manifest(MODEL, &outcome.version)
        .await
        .unwrap()
        .metrics
}

/// Trains on `file` (with `test`) and on the archive of its logged events; both must agree.
async fn file_and_archive_agree(
    file: &Path,
    test: Option<PathBuf>,
    dir: &Path,
    min_support: usize,
) {
    let raw = read_log(file, &ReadOptions::default()).unwrap();
    let events = archive_into(&as_logged(&raw), &dir.join("store")).await;
    let models = dir.join("models");
    let models = models.to_str().unwrap();

    let from_file = train(
        TrainData::File(file.into()),
        test.clone(),
        models,
        min_support,
    )
    .await;
    let arg = events.to_str().unwrap();
    let data = TrainData::from_arg(arg, None, None).unwrap();
    assert!(matches!(data, TrainData::Archive(_)), "{data:?}");
    let from_archive = train(data, test, models, min_support).await;

    assert_eq!(
        from_file.dataset.fingerprint(),
        from_archive.dataset.fingerprint(),
        "prepared data differ: {} vs {}",
        from_file.dataset.report,
        from_archive.dataset.report
    );
    assert!(from_file.dataset == from_archive.dataset);
    let (a, b) = (&from_file.evaluation.model, &from_archive.evaluation.model);
    println!("file:    {}", from_file.evaluation.table());
    println!("archive: {}", from_archive.evaluation.table());
    assert!(a.events > 100, "too few test events: {}", a.events);
    assert_eq!((a.recall, a.mrr), (b.recall, b.mrr));
    let (ma, mb) = (
        bundle_metrics(models, &from_file).await,
        bundle_metrics(models, &from_archive).await,
    );
    assert!(ma["recall@20"].is_number(), "{ma}");
    assert_eq!(ma, mb, "bundle metrics differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_of_the_synthetic_sample_trains_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = generate(&SyntheticOptions {
        n_items: 300,
        n_sessions: 3_000,
        seed: 7,
        ..SyntheticOptions::default()
    });
    // The generator's times are sums of whole-ms steps in f64, a hair off whole ms; a server logs
    // ms, so the original file here is the log with its times in whole ms (which then round-trip).
    for e in &mut log.events {
        e.time = (e.time * 1000.0).round() / 1000.0;
    }
    let file = dir.path().join("sample.tsv");
    lambdarec_trainer::data::synthetic::write_tsv(&log, &file).unwrap();
    file_and_archive_agree(&file, None, dir.path(), 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_of_rsc15_trains_like_the_file() {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/rsc15-yoochoose-100k"
    ));
    let train_full = root.join("yoochoose-clicks-100k_train_full.txt");
    if !train_full.is_file() {
        println!(
            "skipped: {} not found (the rsc15 sample lives in ../shared/data)",
            train_full.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The archive replaces train_full; the given test split (the last day) still applies via --test.
    let test = root.join("yoochoose-clicks-100k_test.txt");
    file_and_archive_agree(&train_full, Some(test), dir.path(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_until_select_the_days_events_happened() {
    let dir = tempfile::tempdir().unwrap();
    let log = generate(&SyntheticOptions {
        n_items: 200,
        n_sessions: 1_500,
        seed: 3,
        days: 5.0,
        ..SyntheticOptions::default()
    });
    let events = archive_into(&as_logged(&log), &dir.path().join("store")).await;
    // Expected: the original events per UTC day of their time, as (session, item, ms).
    let mut by_day: BTreeMap<Date, Vec<(String, String, i64)>> = BTreeMap::new();
    for e in &log.events {
        let ms = (e.time * 1000.0).round() as i64;
        let row = (
            log.sessions[e.session as usize].clone(),
            log.items[e.item as usize].clone(),
            ms,
        );
        by_day.entry(Date::from_unix_ms(ms)).or_default().push(row);
    }
    let days: Vec<Date> = by_day.keys().copied().collect();
    assert!(days.len() >= 5, "{days:?}");
    let rows = |log: &RawLog| {
        let mut v: Vec<_> = log
            .events
            .iter()
            .map(|e| {
                let ms = (e.time * 1000.0).round() as i64;
                (
                    log.sessions[e.session as usize].clone(),
                    log.items[e.item as usize].clone(),
                    ms,
                )
            })
            .collect();
        v.sort();
        v
    };
    let url = events.to_str().unwrap();
    for (since, until) in [(1, 2), (0, 0), (3, days.len() - 1)] {
        let data = TrainData::from_arg(url, Some(days[since]), Some(days[until])).unwrap();
        let TrainData::Archive(source) = data else {
            panic!("{url} is an archive");
        };
        let got = read_archive(&source, false).await.unwrap();
        let mut want: Vec<_> = days[since..=until]
            .iter()
            .flat_map(|d| by_day[d].iter().cloned())
            .collect();
        want.sort();
        assert_eq!(rows(&got), want, "{} to {}", days[since], days[until]);
    }
    // A range past the data says what the archive holds.
    let after = days.last().unwrap().succ();
    let source = ArchiveSource {
        url: url.to_owned(),
        range: lambdarec_proto::archive::DateRange::new(Some(after), None).unwrap(),
    };
    let err = read_archive(&source, false).await.unwrap_err().to_string();
    assert!(
        err.contains(&days[0].to_string()) && err.contains("no archived events"),
        "{err}"
    );
}
