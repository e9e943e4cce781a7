//! Tests of `prepare` / `prepare_eval` on hand-made logs, and of the whole read+prepare path on
//! the shared sample data sets when they are present.

use std::path::PathBuf;

use super::reader::LogBuilder;
use super::{
    DataError, Dataset, PrepareOptions, RawLog, ReadOptions, Sessions, prepare, prepare_eval,
    read_log,
};

/// A log from (session, item, time) triples, in the given order.
fn log(rows: &[(&str, &str, f64)]) -> RawLog {
    let mut b = LogBuilder::new("test.tsv", false);
    for &(s, i, t) in rows {
        b.push(s, i, t);
    }
    b.finish(None)
}

/// Sessions as (key, item ids) for readable assertions.
fn named(ds_vocab: &[String], s: &Sessions) -> Vec<(String, Vec<String>)> {
    (0..s.len())
        .map(|i| {
            let items = s.session(i).iter().map(|&v| ds_vocab[v as usize].clone());
            (s.keys[i].clone(), items.collect())
        })
        .collect()
}

fn sess(key: &str, items: &[&str]) -> (String, Vec<String>) {
    (
        key.to_string(),
        items.iter().map(|s| s.to_string()).collect(),
    )
}

fn opts(min_session_len: usize, min_item_support: usize, test_window: f64) -> PrepareOptions {
    PrepareOptions {
        min_session_len,
        min_item_support,
        test_window,
        ..PrepareOptions::default()
    }
}

#[test]
fn filters_iterate_until_stable() {
    // Dropping q (support 1) shortens D, whose removal makes w rare, which shortens C, whose
    // removal makes y rare, which shortens A: three rounds remove something, the fourth nothing.
    let raw = log(&[
        ("A", "x", 1.0),
        ("A", "y", 2.0),
        ("B", "x", 3.0),
        ("B", "z", 4.0),
        ("C", "y", 5.0),
        ("C", "w", 6.0),
        ("D", "w", 7.0),
        ("D", "q", 8.0),
        ("E", "x", 9.0),
        ("E", "z", 10.0),
    ]);
    let ds = prepare(&raw, None, &opts(2, 2, 0.0)).unwrap();
    let r = &ds.report;
    assert_eq!(r.filter_rounds, 3);
    assert_eq!((r.items_dropped_support, r.events_dropped_support), (3, 3));
    assert_eq!((r.sessions_dropped_short, r.events_dropped_short), (3, 3));
    assert_eq!(
        named(&ds.vocab.ids, &ds.train),
        [sess("B", &["x", "z"]), sess("E", &["x", "z"])]
    );
    assert!(ds.test.is_empty());
    assert_eq!((r.train_events, r.train_sessions, r.train_items), (4, 2, 2));
    assert_eq!((r.raw_events, r.raw_sessions, r.raw_items), (10, 5, 5));
    let table = r.to_string();
    assert!(
        table.contains("train") && table.contains("3 round"),
        "{table}"
    );
}

#[test]
fn time_split_by_session_end_and_unseen_test_items() {
    let raw = log(&[
        ("s1", "a", 0.0),
        ("s1", "b", 10.0),
        ("s2", "b", 13_000.0), // starts before the cut but ends after it: test
        ("s2", "new", 13_500.0),
        ("s2", "a", 14_000.0),
        ("s3", "b", 50.0),
        ("s3", "c", 13_600.0), // ends exactly at the cut: train
        ("s4", "c", 99_000.0),
        ("s4", "new", 100_000.0), // only "c" is known: too short once "new" goes
    ]);
    let ds = prepare(&raw, None, &opts(2, 1, 86_400.0)).unwrap();
    assert_eq!(
        named(&ds.vocab.ids, &ds.train),
        [sess("s1", &["a", "b"]), sess("s3", &["b", "c"])]
    );
    assert_eq!(named(&ds.vocab.ids, &ds.test), [sess("s2", &["b", "a"])]);
    let r = &ds.report;
    assert_eq!(r.sessions_split_to_test, 2);
    assert_eq!(r.test_events_dropped_unseen, 2);
    assert_eq!(
        (r.test_sessions_dropped_short, r.test_events_dropped_short),
        (1, 1)
    );
    assert_eq!((r.test_events, r.test_sessions, r.test_items), (2, 1, 2));
    assert_eq!(ds.test.session_times(0), [13_000.0, 14_000.0]);
    assert_eq!(ds.test.n_predictions(), 1);
}

#[test]
fn a_test_fraction_holds_out_the_same_share_of_the_window_every_time() {
    // 400 sessions of two events on items a/b; the last 200 end within the test window.
    let keys: Vec<String> = (0..400).map(|i| format!("s{i}")).collect();
    let rows: Vec<(&str, &str, f64)> = keys
        .iter()
        .enumerate()
        .flat_map(|(i, k)| {
            let t = if i < 200 {
                i as f64
            } else {
                10_000.0 + i as f64
            };
            [(k.as_str(), "a", t), (k.as_str(), "b", t + 0.5)]
        })
        .collect();
    let base = opts(2, 1, 1_000.0);
    let all = prepare(&log(&rows), None, &base).unwrap();
    assert_eq!((all.train.len(), all.test.len()), (200, 200));
    let half = PrepareOptions {
        test_fraction: 0.5,
        ..base
    };
    let a = prepare(&log(&rows), None, &half).unwrap();
    assert!(
        (70..=130).contains(&a.test.len()),
        "{} held out",
        a.test.len()
    );
    assert_eq!(a.train.len() + a.test.len(), 400);
    // Only sessions of the window are held out, and the choice follows the key alone.
    assert!(
        a.test
            .keys
            .iter()
            .all(|k| k[1..].parse::<usize>().unwrap() >= 200)
    );
    let mut reversed = rows.clone();
    reversed.reverse();
    let b = prepare(&log(&reversed), None, &half).unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(a.test.keys.clone()), sorted(b.test.keys.clone()));
}

#[test]
fn vocab_by_popularity_then_id_and_sessions_by_start() {
    let raw = log(&[
        ("k2", "9", 5.0),
        ("k2", "b", 6.0),
        ("k1", "b", 5.0),
        ("k1", "10", 7.0),
        ("k0", "b", 9.0),
        ("k0", "9", 10.0),
        ("k0", "10", 11.0),
    ]);
    let ds = prepare(&raw, None, &opts(2, 1, 0.0)).unwrap();
    assert_eq!(ds.vocab.ids, ["b", "10", "9"]); // "10" < "9" as strings
    assert_eq!(ds.vocab.popularity, [3, 2, 2]);
    assert_eq!(ds.vocab.index("9"), Some(2));
    assert_eq!(ds.vocab.index("zz"), None);
    assert_eq!(ds.train.keys, ["k1", "k2", "k0"]); // start 5 (tie by key), 5, 9
    assert_eq!(ds.train.offsets, [0, 2, 4, 7]);
}

#[test]
fn explicit_test_log_is_restricted_to_train_vocab() {
    let train = log(&[
        ("1", "a", 1.0),
        ("1", "b", 2.0),
        ("2", "a", 3.0),
        ("2", "b", 4.0),
        ("2", "rare", 5.0),
    ]);
    let test = log(&[
        ("1", "rare", 10.0), // known to the train log, but filtered out of it
        ("1", "a", 11.0),
        ("1", "b", 12.0),
        ("3", "zzz", 13.0),
        ("3", "a", 14.0),
    ]);
    let ds = prepare(&train, Some(&test), &opts(2, 2, 86_400.0)).unwrap();
    assert_eq!(ds.vocab.ids, ["a", "b"]);
    assert_eq!(named(&ds.vocab.ids, &ds.test), [sess("1", &["a", "b"])]);
    let r = &ds.report;
    assert_eq!((r.raw_test_events, r.raw_test_sessions), (5, 2));
    assert_eq!(r.test_events_dropped_unseen, 2);
    assert_eq!(r.test_sessions_dropped_short, 1);
    assert_eq!(r.sessions_split_to_test, 0);

    let (eval, report) = prepare_eval(&test, &ds.vocab, 1);
    assert_eq!(
        named(&ds.vocab.ids, &eval),
        [sess("1", &["a", "b"]), sess("3", &["a"])]
    );
    assert_eq!(report.test_events_dropped_unseen, 2);
    assert_eq!(report.test_events, 3);
}

#[test]
fn empty_train_is_an_error_naming_the_rule() {
    let raw = log(&[("1", "a", 1.0), ("1", "b", 2.0), ("2", "c", 3.0)]);
    let rule = |o: PrepareOptions| match prepare(&raw, None, &o) {
        Err(DataError::EmptyTrain { rule }) => rule,
        other => panic!("expected EmptyTrain, got {other:?}"),
    };
    assert!(rule(opts(2, 5, 0.0)).contains("min_item_support"));
    assert!(rule(opts(3, 1, 0.0)).contains("min_session_len"));
    assert!(rule(opts(1, 1, 1e9)).contains("time split"));
    let err = prepare(&log(&[]), None, &PrepareOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no events"), "{err}");
}

#[test]
fn fingerprint_is_stable_and_sensitive() {
    let rows = [
        ("1", "a", 1.0),
        ("1", "b", 2.0),
        ("2", "b", 3.0),
        ("2", "a", 4.0),
        ("3", "a", 200_000.0),
        ("3", "b", 200_001.0),
    ];
    let o = opts(2, 1, 86_400.0);
    let ds = prepare(&log(&rows), None, &o).unwrap();
    let fp = ds.fingerprint();
    assert_eq!(fp.len(), 64);
    assert!(fp.bytes().all(|c| c.is_ascii_hexdigit()));
    // The same data in another file order prepares to the same data set.
    let mut reversed = rows;
    reversed.reverse();
    let again: Dataset = prepare(&log(&reversed), None, &o).unwrap();
    assert_eq!(again.fingerprint(), fp);
    assert_eq!(again.train, ds.train);
    let mut changed = rows;
    changed[1].2 = 2.5;
    assert_ne!(prepare(&log(&changed), None, &o).unwrap().fingerprint(), fp);
}

/// `shared/data` beside the workspace, when this checkout has it.
fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: ../shared/data not found");
        None
    }
}

#[test]
fn shared_rsc15_sample_gives_the_published_prediction_count() {
    let Some(dir) = shared_data() else { return };
    let d = dir.join("rsc15-yoochoose-100k");
    let ro = ReadOptions::default();
    let train = read_log(&d.join("yoochoose-clicks-100k_train_full.txt"), &ro).unwrap();
    let test = read_log(&d.join("yoochoose-clicks-100k_test.txt"), &ro).unwrap();
    assert_eq!((train.events.len(), train.sessions.len()), (70_278, 17_794));
    assert_eq!((test.events.len(), test.sessions.len()), (13_568, 3_416));
    let ds = prepare(&train, Some(&test), &opts(2, 1, 86_400.0)).unwrap();
    println!("{}", ds.report);
    assert_eq!(ds.test.n_predictions(), 10_152);
    assert_eq!(ds.vocab.len(), 2_933);
}

#[test]
fn shared_movielens_and_diginetica_samples_read() {
    let Some(dir) = shared_data() else { return };
    let ml = read_log(&dir.join("ml-100k/ml-100k.inter"), &ReadOptions::default()).unwrap();
    assert_eq!(
        (ml.events.len(), ml.items.len(), ml.bad_lines),
        (100_000, 1_682, 0)
    );
    assert!(
        ml.sessions.len() > 943,
        "user-keyed: {} sessions",
        ml.sessions.len()
    );
    assert!(ml.sessions.iter().all(|s| s.contains('#')));

    let digi_path = dir.join("diginetica-sample/sample_train-item-views.csv");
    let digi = read_log(&digi_path, &ReadOptions::default()).unwrap();
    assert_eq!(
        (digi.events.len(), digi.sessions.len(), digi.items.len()),
        (12_391, 2_986, 7_139)
    );
    let ds = prepare(&digi, None, &opts(2, 1, 7.0 * 86_400.0)).unwrap();
    assert!(!ds.train.is_empty() && !ds.test.is_empty(), "{}", ds.report);
}
