//! The load harness scores online exactly what the offline evaluator scores: a bundle trained on
//! synthetic data, its test sessions (plus events on unknown items) replayed through the real server on
//! a loopback port, must give `run_eval`'s Recall@20, MRR@20 and event count — with Recommend, and
//! with Score when every catalogue item is a candidate (a check of score mode's targets and ranking).
//! With fewer candidates, score mode scores the same predictions and finds the target at least as
//! high as in the whole catalogue.

use std::time::Duration;

use lambdarec_server::load::{self, LoadOptions, Mode, Workload};
use lambdarec_server::{DeviceChoice, ServeConfig};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::data::{ReadOptions, Sessions};
use lambdarec_trainer::pipeline::{EvalJob, EvalOptions, TrainJob, run_eval, run_train};
use lambdarec_trainer::train::TrainConfig;

const MODEL: &str = "load";

/// Test sessions as a TSV, with unknown items mixed in so that the skip rule is exercised: one inside
/// every third session, one at the end of every fifth, and two sessions that offline drops entirely.
fn write_with_unknowns(s: &Sessions, ids: &[String], path: &std::path::Path) -> usize {
    let mut out = String::from("SessionId\tItemId\tTime\n");
    let mut unknown = 0;
    for i in 0..s.len() {
        let items = s.session(i);
        for (j, &item) in items.iter().enumerate() {
            let t = s.times[s.offsets[i] + j];
            if i % 3 == 0 && j == items.len() / 2 {
                out += &format!("{}\tno-such-item-{i}\t{t}\n", s.keys[i]);
                unknown += 1;
            }
            out += &format!("{}\t{}\t{t}\n", s.keys[i], ids[item as usize]);
        }
        if i % 5 == 0 {
            out += &format!(
                "{}\tno-such-item-end\t{}\n",
                s.keys[i],
                s.times[s.offsets[i + 1] - 1]
            );
            unknown += 1;
        }
    }
    // One known item among unknowns (shorter than 2 after the drop), and only unknowns.
    out += &format!(
        "lonely\tno-such-a\t1\nlonely\t{}\t2\nlonely\tno-such-b\t3\n",
        ids[0]
    );
    out += "ghost\tno-such-c\t1\nghost\tno-such-d\t2\n";
    std::fs::write(path, out).unwrap();
    unknown + 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_metrics_equal_offline_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    let log = generate(&SyntheticOptions {
        n_items: 200,
        n_sessions: 1_200,
        seed: 11,
        ..SyntheticOptions::default()
    });
    write_tsv(&log, &train_path).unwrap();
    let store = format!("memory://load-online-offline-{}", std::process::id());
    let config = TrainConfig {
        hidden: 16,
        epochs: 1,
        n_sample: 64,
        seed: 5,
        ..TrainConfig::default()
    };
    let job = TrainJob {
        eval: EvalOptions {
            threads: Some(1),
            ..EvalOptions::default()
        },
        ..TrainJob::new(Some(train_path), &store, MODEL, config)
    };
    let out = run_train(&job, |_, _, _| {}, |_| {}).await.unwrap();
    let test_path = dir.path().join("test.tsv");
    let unknown = write_with_unknowns(&out.dataset.test, &out.dataset.vocab.ids, &test_path);
    let n_items = out.dataset.vocab.ids.len();

    let (_, offline, _) = run_eval(&EvalJob {
        store: store.clone(),
        model: MODEL.to_string(),
        version: None,
        test_path: test_path.clone(),
        train_path: None,
        read: ReadOptions::default(),
        min_session_len: 2,
        eval: EvalOptions {
            threads: Some(1),
            ..EvalOptions::default()
        },
    })
    .await
    .unwrap();
    assert!(
        offline.model.events > 100,
        "too few test events: {}",
        offline.model.events
    );

    let server = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store,
        model: MODEL.to_string(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        max_sessions: 10_000,
        poll_interval: None,
        // The GRU's figures, and the unknown-item rule they rest on (see `load`'s module docs).
        speed: lambdarec_server::SpeedConfig {
            new_items: lambdarec_server::NewItems::Reject,
            default_strategy: Some(lambdarec_trainer::blend::Strategy::Gru),
            ..Default::default()
        },
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let mut client = lambdarec_proto::v1::recommender_client::RecommenderClient::connect(format!(
        "http://{}",
        server.local_addr()
    ))
    .await
    .unwrap();
    let base = LoadOptions {
        target: server.local_addr().to_string(),
        data: test_path,
        connections: 2,
        max_time: Duration::from_secs(120),
        ..LoadOptions::default()
    };
    let runs = [
        (
            "closed loop",
            LoadOptions {
                mode: Mode::Closed { concurrency: 8 },
                ..base.clone()
            },
        ),
        (
            "open loop",
            LoadOptions {
                mode: Mode::Open { rate: 3_000.0 },
                ..base.clone()
            },
        ),
        (
            "score, every item a candidate",
            LoadOptions {
                mode: Mode::Closed { concurrency: 8 },
                workload: Workload::Score {
                    candidates: n_items,
                },
                ..base.clone()
            },
        ),
    ];
    let mut recommend_requests = None;
    for (name, opts) in runs {
        let report = load::run(&opts).await.unwrap();
        check_run(name, &report, unknown, offline.model.events);
        // Every pass makes one call per applied event but a session's last, whatever the call.
        assert_eq!(
            *recommend_requests.get_or_insert(report.requests),
            report.requests,
            "{name}: calls"
        );
        assert!(
            (report.accuracy.recall - offline.model.recall).abs() < 1e-6,
            "{name}: recall {} vs {}",
            report.accuracy.recall,
            offline.model.recall
        );
        assert!(
            (report.accuracy.mrr - offline.model.mrr).abs() < 1e-6,
            "{name}: mrr {} vs {}",
            report.accuracy.mrr,
            offline.model.mrr
        );
        assert!(
            (report.accuracy.coverage - offline.model.coverage).abs() < 1e-6,
            "{name}: coverage"
        );
        if name == "closed loop" {
            // The server's own online evaluation scored the same lists against the same events.
            let info = client
                .model_info(lambdarec_proto::v1::ModelInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            let [online] = &info.online[..] else {
                panic!("one (version, strategy): {:?}", info.online);
            };
            assert_eq!(online.strategy(), lambdarec_proto::v1::Strategy::Gru);
            assert_eq!(online.predictions, report.accuracy.events);
            assert!(
                (online.hit_rate - report.accuracy.recall).abs() < 1e-9
                    && (online.mrr - report.accuracy.mrr).abs() < 1e-9,
                "server online {online:?} vs harness {:?}",
                report.accuracy
            );
            assert_eq!(online.window_predictions, online.predictions.min(10_000));
        }
        // One Recommend per applied event but the last of each session; at least one per prediction.
        assert!(report.requests >= report.accuracy.events);
        assert!(
            report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms
        );
        let json = report.to_json();
        for key in [
            "requests",
            "throughput_rps",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "errors",
            "recall@20",
            "mrr@20",
        ] {
            assert!(json.get(key).is_some(), "{name}: JSON lacks {key}");
        }
        let svg = load::latency_svg(&report).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("polyline")
                && svg.trim_end().ends_with("</svg>")
        );
    }

    // 50 of the 200 items: the same predictions, each target ranked among fewer items.
    let opts = LoadOptions {
        workload: Workload::Score { candidates: 50 },
        seed: 3,
        ..base.clone()
    };
    let report = load::run(&opts).await.unwrap();
    check_run(
        "score, 50 candidates",
        &report,
        unknown,
        offline.model.events,
    );
    assert!(
        report.accuracy.recall > offline.model.recall && report.accuracy.mrr > offline.model.mrr,
        "recall {} mrr {} over 50 candidates vs {} {} over the catalogue",
        report.accuracy.recall,
        report.accuracy.mrr,
        offline.model.recall,
        offline.model.mrr
    );
    let json = report.to_json();
    assert_eq!(
        (json["mode"].as_str(), json["candidates"].as_u64()),
        (Some("score"), Some(50))
    );
    assert!(report.text().contains("Score (50 candidates): "));
    // Sessions finish in a different order each run, so sums may differ in the last bit.
    let again = load::run(&opts).await.unwrap();
    assert!(
        (again.accuracy.recall - report.accuracy.recall).abs() < 1e-9
            && (again.accuracy.mrr - report.accuracy.mrr).abs() < 1e-9,
        "a seeded run repeats its candidate draws: {:?} vs {:?}",
        again.accuracy,
        report.accuracy
    );

    // A catalogue that cannot be read is a clear error before any load.
    let e = load::run(&LoadOptions {
        workload: Workload::Score { candidates: 10 },
        store: Some("memory://no-such-store".to_string()),
        ..base.clone()
    })
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("score mode needs the served catalogue"),
        "{e}"
    );
    server.shutdown().await.unwrap();
}

/// What every run must show: no errors, the unknown items skipped, every offline prediction scored.
fn check_run(name: &str, report: &load::LoadReport, unknown: usize, events: u64) {
    assert!(
        report.errors.is_empty(),
        "{name}: errors {:?}",
        report.errors
    );
    assert_eq!(
        report.unknown_items as usize, unknown,
        "{name}: unknown-item acks"
    );
    assert_eq!(report.accuracy.events, events, "{name}: predictions scored");
}
