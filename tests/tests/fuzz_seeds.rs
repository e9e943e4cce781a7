//! The seed corpora of the fuzz targets (`fuzz/seeds/<target>/`), made by the code itself: logs in
//! each supported layout, an archive file, bundles, log records, segment files and snapshots written
//! by the real writers, and one encoded request of every kind. Each seed is framed as its target
//! reads it (a flags byte, parts separated by `SEP`; see `fuzz/src/lib.rs`).
//!
//! `seeds_reach_the_decoders` checks on every run that each seed is a valid input (so the fuzzer
//! starts deep in the code, not at the first checksum); regenerate the committed files with
//! `cargo test -p lambdarec-tests --test fuzz_seeds -- --ignored`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lambdarec_eventlog::file::FileLog;
use lambdarec_eventlog::{EventLog, LogReader, OpenOptions, delete_record, event_record};
use lambdarec_kernels::Dtype;
use lambdarec_proto::archive::{ArchivedEvent, decode as decode_archive};
use lambdarec_proto::bundle::{ITEMS_FILE, MANIFEST_FILE, Store, WEIGHTS_FILE};
use lambdarec_proto::v1;
use lambdarec_server::engine::ModelView;
use lambdarec_server::engine::snapshot::{SessionImage, SnapshotImage, SnapshotStore, TrendImage};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::data::{ItemVocab, ReadOptions, read_log};
use prost::Message;

/// `lambdarec_fuzz::SEP` (the fuzz crate is outside the workspace).
const SEP: &[u8] = b"\0LRFUZZ\0";

type Seeds = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

fn framed(flags: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        out.extend_from_slice(part);
    }
    out
}

fn text_logs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let log = generate(&SyntheticOptions {
        n_items: 40,
        n_sessions: 25,
        seed: 11,
        ..SyntheticOptions::default()
    });
    let path = dir.join("synthetic.tsv");
    write_tsv(&log, &path).unwrap();
    let synthetic = std::fs::read(&path).unwrap();
    // The shared data sets' layouts with made-up values (their rows may not be redistributed).
    let rsc15 = b"SessionId\tItemId\tTime\n5\t214000101\t1396400000.5\n5\t214000202\t1396400060.25\n8\t214000101\t1396500000.125\n";
    let diginetica = b"session_id;user_id;item_id;timeframe;eventdate\n1;NA;1001;500000;2016-05-09\n1;NA;1002;900000;2016-05-09\n2;7;1003;70000;2016-05-10\n";
    let recbole = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n10\t20\t3\t880000000\n10\t21\t3\t880001000\n11\t22\t1\t879000000\n";
    let quoted = b"\"SessionId\",\"ItemId\",\"Time\"\n\"s,1\",\"a \"\"b\"\"\",2014-04-07T10:51:09.277Z\ns2,c,2014-04-07 10:51:10\n";
    vec![
        ("synthetic".into(), framed(0, &[&synthetic])),
        ("rsc15".into(), framed(0, &[rsc15])),
        ("rsc15-named".into(), framed(1 << 3, &[rsc15])),
        ("diginetica".into(), framed(0, &[diginetica])),
        ("recbole-user-keyed".into(), framed(2 << 3 | 1, &[recbole])),
        ("quoted-csv".into(), framed(1, &[quoted])),
    ]
}

fn archived(n: u64) -> Vec<ArchivedEvent> {
    (1..=n)
        .map(|p| ArchivedEvent {
            position: p,
            session_id: format!("s{}", p % 3),
            item_id: format!("i{}", p % 5),
            timestamp_ms: 1_700_000_000_000 + p as i64 * 1000,
            received_ms: 1_700_000_000_000 + p as i64 * 1000 + 7,
            client_seq: (p % 2 == 0).then_some(p),
            model_version: "v1".into(),
        })
        .collect()
}

/// The archive's own Parquet (for both the archive target and the Parquet log reader, whose flags
/// option 3 names the archive's columns), and one with the RSC15 column names.
fn parquet_files() -> (Vec<u8>, Vec<u8>) {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    let archive = lambdarec_proto::archive::encode(&archived(12), "seed").unwrap();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("SessionId", Arc::new(Int64Array::from(vec![1, 1, 2, 2, 2]))),
        (
            "ItemId",
            Arc::new(StringArray::from(vec!["a", "b", "a", "c", "b"])),
        ),
        (
            "Time",
            Arc::new(Float64Array::from(vec![
                1.0e9,
                1.0e9 + 5.0,
                1.1e9,
                1.1e9 + 1.0,
                1.1e9 + 2.0,
            ])),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut rsc15 = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut rsc15, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    (archive, rsc15)
}

/// A tiny bundle's three files, as `Store::write_bundle` writes them.
async fn bundle_files(tied: bool) -> [Vec<u8>; 3] {
    use object_store::ObjectStoreExt;
    let n = 6;
    let weights = lambdarec_kernels::ModelWeights {
        n_items: n,
        embed_dim: 3,
        hidden: 3,
        item_in: (!tied).then(|| (0..n * 3).map(|i| i as f32 * 0.01).collect()),
        w_ih: (0..27).map(|i| i as f32 * -0.02).collect(),
        w_hh: (0..27).map(|i| i as f32 * 0.03).collect(),
        b_ih: vec![0.1; 9],
        b_hh: vec![-0.1; 9],
        item_out: (0..n * 3).map(|i| (i as f32).sin()).collect(),
        item_bias: vec![0.0; n],
    };
    let vocab = ItemVocab::new(
        (0..n).map(|i| format!("i{i}")).collect(),
        vec![5, 4, 3, 2, 1, 0],
    );
    let mut bundle = lambdarec_trainer::export::bundle_of(
        &weights,
        &vocab,
        "seed",
        serde_json::json!({}),
        serde_json::json!({}),
    );
    let url = format!("memory://fuzz-seeds-{tied}-{}", std::process::id());
    let store = Store::open(&url).unwrap();
    let version = store.write_bundle("m", &mut bundle).await.unwrap();
    let mut files = Vec::new();
    for file in [MANIFEST_FILE, WEIGHTS_FILE, ITEMS_FILE] {
        let path = store
            .prefix()
            .clone()
            .join("models")
            .join("m")
            .join(version.as_str())
            .join(file);
        let got = store
            .object_store()
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        files.push(got.to_vec());
    }
    files.try_into().unwrap()
}

/// Segment files written by the embedded log itself: two segments (a small roll size) and one.
fn segment_files(dir: &Path) -> (Vec<Vec<u8>>, Vec<u8>) {
    let two = dir.join("two");
    let opts = OpenOptions {
        segment_bytes: 400,
        ..OpenOptions::default()
    };
    let mut log = FileLog::open(&two, &opts).unwrap();
    for i in 0..6 {
        let records = [
            event_record(
                &format!("s{i}"),
                "i1",
                1_700_000_000_000,
                1_700_000_000_001,
                Some(i),
                "v1",
            ),
            event_record(
                &format!("s{i}"),
                "i2",
                1_700_000_000_002,
                1_700_000_000_003,
                None,
                "v1",
            ),
        ];
        log.append(&records).unwrap();
    }
    log.append(&[delete_record("s0", 1_700_000_000_010, "v1")])
        .unwrap();
    let files: Vec<Vec<u8>> = log
        .segment_files()
        .iter()
        .map(|(p, _)| std::fs::read(p).unwrap())
        .collect();
    assert!(files.len() >= 2, "the log rolled");
    let one = dir.join("one");
    let mut log = FileLog::open(&one, &OpenOptions::default()).unwrap();
    log.append(&[event_record("a", "b", 1, 2, Some(3), "v")])
        .unwrap();
    let single = std::fs::read(&log.segment_files()[0].0).unwrap();
    (files, single)
}

fn snapshot_file(dir: &Path) -> Vec<u8> {
    let ids = (0..6).map(|i| format!("item-{i}")).collect();
    let view = Arc::new(ModelView {
        generation: 1,
        name: "m".into(),
        version: Arc::from("v7"),
        store: "memory://".into(),
        vocab: ItemVocab::new(ids, vec![1; 6]),
        hidden: 3,
        dtype: Dtype::F32,
        device: "cpu".into(),
        manifest_json: "{}".into(),
        weights: lambdarec_trainer::blend::Weights::GRU,
        trend_half_life_s: 3600.0,
        default_strategy: lambdarec_trainer::blend::Strategy::Gru,
        knn: lambdarec_trainer::knn::KnnParams {
            capacity: 1000,
            ..Default::default()
        },
    });
    let session = |id: &str, recent: Vec<u32>| SessionImage {
        id: Arc::from(id),
        events: recent.len() as u64 + 1,
        seqs: vec![5, 9],
        last_seen_ms: 1_700_000_000_000,
        idle_ms: 1234,
        state_version: Some(Arc::from("v7")),
        hidden: vec![0.25, -1.5, 3.0e-7],
        recent,
        log_floor: 7,
        own_from: 2,
    };
    let image = SnapshotImage {
        position: 42,
        taken_ms: 1_700_000_000_500,
        view,
        new_items: Vec::new(),
        sessions: vec![session("a", vec![4, 1, 4]), session("bé", vec![])],
        trending: Some(TrendImage {
            half_life_s: 3600.0,
            entries: vec![(1, 12.5), (5, 9.0)],
        }),
        // A replica's snapshot (format 3 with its per-session log positions): the longest form.
        writer: Some((Arc::from("seed-writer"), 9)),
    };
    let mut store = SnapshotStore::open(dir.join("snapshots")).unwrap();
    store.write(&image).unwrap();
    std::fs::read(&store.positions().unwrap()[0].1).unwrap()
}

fn requests() -> Vec<(String, Vec<u8>)> {
    let recommend = v1::RecommendRequest {
        session_id: "s1".into(),
        k: 5,
        exclude_items: vec!["i3".into()],
        exclude_seen: Some(false),
        inline_events: vec!["i1".into(), "i2".into()],
        strategy: v1::Strategy::Blend.into(),
    };
    let score = v1::ScoreRequest {
        session_id: "s1".into(),
        candidates: vec!["i0".into(), "i4".into(), "nope".into()],
        strategy: v1::Strategy::Knn.into(),
    };
    let event = |s: &str, i: &str, seq| v1::SessionEvent {
        session_id: s.into(),
        item_id: i.into(),
        timestamp_ms: Some(1_700_000_000_000),
        client_seq: seq,
    };
    let mut stream = Vec::new();
    for (i, item) in ["i1", "i2", "i1", "zz"].iter().enumerate() {
        event("s2", item, Some(i as u64))
            .encode_length_delimited(&mut stream)
            .unwrap();
    }
    vec![
        ("recommend".into(), framed(0, &[&recommend.encode_to_vec()])),
        (
            "recommend-timeout".into(),
            framed(0, &[b"100m", &recommend.encode_to_vec()]),
        ),
        ("score".into(), framed(1, &[&score.encode_to_vec()])),
        (
            "event".into(),
            framed(2, &[&event("s1", "i5", Some(1)).encode_to_vec()]),
        ),
        (
            "get-session".into(),
            framed(
                3,
                &[&v1::GetSessionRequest {
                    session_id: "s1".into(),
                }
                .encode_to_vec()],
            ),
        ),
        (
            "delete-session".into(),
            framed(
                4,
                &[&v1::DeleteSessionRequest {
                    session_id: "s2".into(),
                }
                .encode_to_vec()],
            ),
        ),
        (
            "reload".into(),
            framed(
                5,
                &[&v1::ReloadRequest {
                    version: Some("20990101T000000000Z".into()),
                }
                .encode_to_vec()],
            ),
        ),
        ("stream".into(), framed(6, &[&stream])),
    ]
}

async fn all_seeds(dir: &Path) -> Seeds {
    let mut seeds = Seeds::new();
    seeds.insert("log_text", text_logs(dir));
    let (archive, rsc15) = parquet_files();
    seeds.insert(
        "log_parquet",
        vec![
            ("rsc15".into(), framed(0, &[&rsc15])),
            ("archive".into(), framed(3 << 3, &[&archive])),
        ],
    );
    seeds.insert(
        "archive_file",
        vec![("archive".into(), framed(0, &[&archive]))],
    );
    let [m, w, i] = bundle_files(false).await;
    let [tm, tw, ti] = bundle_files(true).await;
    seeds.insert(
        "bundle",
        vec![
            ("untied".into(), framed(1, &[&m, &w, &i])),
            ("tied-f16".into(), framed(1 | 2 << 1, &[&tm, &tw, &ti])),
        ],
    );
    let records = [
        event_record(
            "s1",
            "i1",
            1_700_000_000_000,
            1_700_000_000_001,
            Some(7),
            "v1",
        ),
        delete_record("s1", 1_700_000_000_002, "v1"),
    ];
    seeds.insert(
        "log_record",
        records
            .iter()
            .enumerate()
            .map(|(n, r)| (format!("record-{n}"), lambdarec_eventlog::encode(r)))
            .collect(),
    );
    let (two, single) = segment_files(dir);
    let two: Vec<&[u8]> = two.iter().map(Vec::as_slice).collect();
    // A whole frame, then the first 20 bytes of another: recovery cuts the second.
    let torn = [single.as_slice(), &single[8..28]].concat();
    seeds.insert(
        "log_segments",
        vec![
            ("two-segments".into(), framed(16, &two)),
            ("one-segment".into(), framed(0, &[&single])),
            ("torn-tail-repaired".into(), framed(1, &[&torn])),
        ],
    );
    let snapshot = snapshot_file(dir);
    let body = &snapshot[..snapshot.len() - 4];
    seeds.insert(
        "snapshot",
        vec![
            ("whole".into(), framed(0, &[&snapshot])),
            ("body".into(), framed(1, &[body])),
        ],
    );
    seeds.insert("request", requests());
    seeds
}

/// Each seed gets past the first checks of its target (the parts the targets read are valid).
#[tokio::test]
async fn seeds_reach_the_decoders() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = all_seeds(dir.path()).await;
    assert_eq!(seeds.len(), 8, "one corpus per fuzz target");
    for (name, seed) in &seeds["log_text"] {
        let path = dir.path().join(format!("{name}.tsv"));
        std::fs::write(&path, &seed[1..]).unwrap();
        let log = read_log(&path, &read_options(seed[0])).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !log.events.is_empty() && log.bad_lines == 0,
            "{name}: {log:?}"
        );
    }
    for (name, seed) in &seeds["log_parquet"] {
        let path = dir.path().join(format!("{name}.parquet"));
        std::fs::write(&path, &seed[1..]).unwrap();
        let log = read_log(&path, &read_options(seed[0])).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(log.events.len() >= 5, "{name}: {log:?}");
    }
    let archive = &seeds["archive_file"][0].1;
    assert_eq!(
        decode_archive(archive[1..].to_vec().into(), None, "seed").unwrap()[0].num_rows(),
        12
    );
    for (_, seed) in &seeds["log_record"] {
        lambdarec_eventlog::decode(1, seed).unwrap();
    }
    for (name, seed) in &seeds["log_segments"] {
        let log_dir = dir.path().join(format!("check-{name}"));
        std::fs::create_dir(&log_dir).unwrap();
        let mut first = 1;
        for part in split(&seed[1..]) {
            std::fs::write(log_dir.join(format!("{first:020}.log")), part).unwrap();
            let mut reader = FileLog::open_read_only(&log_dir, first).unwrap();
            first += reader.next_batch(1000).unwrap().len() as u64;
        }
        let log = FileLog::open(&log_dir, &OpenOptions::default()).unwrap();
        assert!(!log.bounds().unwrap().is_empty(), "{name}");
    }
    let snapshot = &seeds["snapshot"][0].1;
    let path = dir.path().join("snapshot.bin");
    std::fs::write(&path, &snapshot[1..]).unwrap();
    assert_eq!(SnapshotStore::read(&path).unwrap().sessions.len(), 2);
    assert_eq!(
        seeds["request"].len(),
        8,
        "one request of every kind the target decodes"
    );
}

/// Writes `fuzz/seeds/` afresh (run by hand after a format changes).
#[tokio::test]
#[ignore = "writes the committed seed corpora; run by hand"]
async fn write_fuzz_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for (target, seeds) in all_seeds(dir.path()).await {
        let out = root.join(target);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(out.join(name), bytes).unwrap();
        }
    }
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&rest[..at]);
        rest = &rest[at + SEP.len()..];
    }
    out.push(rest);
    out
}

/// The reader options of a flags byte, as `lambdarec_fuzz::read_options` picks them (the subset
/// the seeds use: skip bad lines, and the column namings).
fn read_options(flags: u8) -> ReadOptions {
    let s = |v: &str| Some(v.to_string());
    let mut opts = ReadOptions {
        skip_bad_lines: flags & 1 != 0,
        ..ReadOptions::default()
    };
    match flags >> 3 & 3 {
        1 => {
            (opts.session_col, opts.item_col, opts.time_col) =
                (s("SessionId"), s("ItemId"), s("Time"))
        }
        2 => {
            (opts.user_col, opts.item_col, opts.time_col) =
                (s("user_id"), s("item_id"), s("timestamp"))
        }
        3 => {
            (opts.session_col, opts.item_col, opts.time_col) =
                (s("session_id"), s("item_id"), s("timestamp_ms"))
        }
        _ => {}
    }
    opts
}
