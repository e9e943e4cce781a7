//! The speed layer as served: an item created after training is accepted, kept in its session,
//! recommended by session-kNN to sessions that share items with it and scored; a burst of events on
//! one item tops trending at once; `--new-items reject` and `--max-new-items` refuse with their codes;
//! and with the test sessions replayed one at a time, the served kNN, trending and blend give exactly
//! the offline evaluator's figures.

mod server_common;

use std::time::{Duration, Instant};

use lambdarec_proto::bundle::Blend;
use lambdarec_proto::v1::{self, ErrorCode, Strategy};
use lambdarec_server::load::{self, LoadOptions, Mode};
use lambdarec_server::{NewItems, SpeedConfig};
use lambdarec_trainer::data::ReadOptions;
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::pipeline::{EvalJob, EvalOptions, TrainJob, run_eval, run_train};
use lambdarec_trainer::train::TrainConfig;
use server_common::{base, client, config, fresh_store, publish, send_events as send};
use tonic::Code;

fn event(session: &str, item: &str, seq: u64) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: session.into(),
        item_id: item.into(),
        timestamp_ms: None,
        client_seq: Some(seq),
    }
}

fn recommend(session: &str, k: u32, strategy: Strategy) -> v1::RecommendRequest {
    v1::RecommendRequest {
        session_id: session.into(),
        k,
        strategy: strategy.into(),
        ..Default::default()
    }
}

fn ids(r: &v1::RecommendResponse) -> Vec<&str> {
    r.items.iter().map(|s| s.item_id.as_str()).collect()
}

fn speed_config(store: &str, speed: SpeedConfig) -> lambdarec_server::ServeConfig {
    lambdarec_server::ServeConfig {
        speed,
        ..config(store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_item_is_taken_recommended_scored_and_a_burst_trends() {
    // The test bundle with blend weights, as `train` would have fit them.
    let store = format!("memory://speed-new-item-{}", std::process::id());
    let mut bundle = base().bundle.clone();
    bundle.manifest.blend = Some(Blend {
        gru_weight: 0.5,
        trend_weight: 0.1,
        trend_half_life_s: Some(600.0),
        knn_neighbours: None,
        knn_sample: None,
        fit: serde_json::json!({}),
    });
    publish(&store, bundle.clone()).await;
    let server = lambdarec_server::start(speed_config(&store, SpeedConfig::default()))
        .await
        .unwrap();
    let mut c = client(server.local_addr()).await;
    let item = |i: usize| base().ids[i].clone();
    let new = "sku-launched-today";

    // Session a holds a known item and the new one; session b shares the known item.
    let acks = send(
        &mut c,
        vec![
            event("a", &item(3), 1),
            event("a", new, 2),
            event("b", &item(3), 3),
        ],
    )
    .await;
    assert!(
        acks.iter().all(|a| a.applied && a.code() == ErrorCode::Ok),
        "{acks:?}"
    );
    assert_eq!(acks[1].session_events, 2);
    let a = c
        .get_session(v1::GetSessionRequest {
            session_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.recent_items, [item(3), new.to_string()]);

    // kNN: b's neighbours (training sessions with item 3, and a) bring the new item in.
    let r = c
        .recommend(recommend("b", 50, Strategy::Knn))
        .await
        .unwrap()
        .into_inner();
    assert!(ids(&r).contains(&new), "{r:?}");
    // A session on the new item alone has one neighbour, a: its other item comes first.
    send(&mut c, vec![event("c", new, 4)]).await;
    let r = c
        .recommend(recommend("c", 5, Strategy::Knn))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ids(&r)[0], r.items[0].score),
        (item(3).as_str(), 1.0),
        "{r:?}"
    );
    // The blend considers kNN's candidates beyond the GRU's: the new item is among them.
    let r = c
        .recommend(recommend("b", 20, Strategy::Blend))
        .await
        .unwrap()
        .into_inner();
    assert!(ids(&r).contains(&new), "{r:?}");
    // The GRU alone cannot know it.
    let r = c
        .recommend(recommend("b", 300, Strategy::Gru))
        .await
        .unwrap()
        .into_inner();
    assert!(!ids(&r).contains(&new));

    // Score: kNN scores the new item; the GRU lists it as unknown.
    let score = |strategy: Strategy| v1::ScoreRequest {
        session_id: "b".into(),
        candidates: vec![new.into(), item(150)],
        strategy: strategy.into(),
    };
    let s = c.score(score(Strategy::Knn)).await.unwrap().into_inner();
    assert_eq!(s.scores.len(), 2, "{s:?}");
    assert_eq!(s.scores[0].item_id, new);
    assert!(s.scores[0].score > 0.0 && s.scores[0].score <= 1.0, "{s:?}");
    let s = c.score(score(Strategy::Gru)).await.unwrap().into_inner();
    assert_eq!(s.unknown_items, [new.to_string()]);
    assert_eq!(s.scores.len(), 1);

    // A burst of events on one rare item tops trending within the burst's own acks.
    let burst_item = item(base().ids.len() - 1);
    let started = Instant::now();
    let burst = (0..50)
        .map(|n| event(&format!("shopper-{n}"), &burst_item, 100 + n))
        .collect();
    send(&mut c, burst).await;
    let r = c
        .recommend(recommend("someone-new", 3, Strategy::Trending))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r)[0], burst_item, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A new version (as a continuous-training cycle publishes) keeps trending's counts: the burst
    // stays on top, and the new item keeps its count, rather than restarting from the bundle's
    // training sessions.
    let v2 = publish(&store, bundle).await;
    c.reload(v1::ReloadRequest {
        version: Some(v2.clone()),
    })
    .await
    .unwrap();
    let r = c
        .recommend(recommend("someone-else", 3, Strategy::Trending))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.model_version.as_str(), ids(&r)[0]),
        (v2.as_str(), burst_item.as_str()),
        "{r:?}"
    );
    let s = c
        .score(score(Strategy::Trending))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.scores[0].item_id, new);
    assert!(s.scores[0].score > 0.0, "{s:?}");

    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.new_items, info.max_new_items), (1, 100_000));
    assert!(info.knn_sessions >= 3 + 50, "{info:?}");
    assert_eq!(info.default_strategy(), Strategy::Blend);
    assert_eq!(
        (info.gru_weight, info.knn_weight, info.trend_weight),
        (0.45, 0.45, 0.1)
    );
    assert_eq!(info.trend_half_life_s, 600.0);

    // A strategy this server does not know is a clear INVALID_ARGUMENT.
    let mut bad = recommend("b", 5, Strategy::Knn);
    bad.strategy = 99;
    let e = c.recommend(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("strategy 99"), "{e:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_items_are_refused_when_rejected_or_over_the_limit() {
    let (store, _) = fresh_store("speed-reject").await;
    let reject = SpeedConfig {
        new_items: NewItems::Reject,
        ..SpeedConfig::default()
    };
    let server = lambdarec_server::start(speed_config(&store, reject))
        .await
        .unwrap();
    let mut c = client(server.local_addr()).await;
    let acks = send(&mut c, vec![event("a", "not-in-the-bundle", 1)]).await;
    assert_eq!(acks[0].code(), ErrorCode::UnknownItem, "{acks:?}");
    assert!(!acks[0].applied);
    server.shutdown().await.unwrap();

    let limited = SpeedConfig {
        max_new_items: 1,
        ..SpeedConfig::default()
    };
    let server = lambdarec_server::start(speed_config(&store, limited))
        .await
        .unwrap();
    let mut c = client(server.local_addr()).await;
    let acks = send(
        &mut c,
        vec![
            event("a", "new-1", 1),
            event("a", "new-2", 2),
            event("b", "new-1", 3),
            event("b", &"x".repeat(300), 4),
        ],
    )
    .await;
    let codes: Vec<ErrorCode> = acks.iter().map(|a| a.code()).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::Ok,
            ErrorCode::NewItemRejected,
            ErrorCode::Ok,
            ErrorCode::NewItemRejected
        ]
    );
    assert!(acks[1].error.contains("--max-new-items 1"), "{acks:?}");
    assert!(acks[3].error.contains("300 bytes"), "{acks:?}");
    assert_eq!(acks[1].session_events, 1, "the session is unchanged");
    server.shutdown().await.unwrap();
}

/// A bundle trained with its blend fit, its test sessions (catalogue items only) as a TSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_speed_layer_equals_the_offline_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    let log = generate(&SyntheticOptions {
        n_items: 200,
        n_sessions: 1_200,
        seed: 13,
        ..SyntheticOptions::default()
    });
    write_tsv(&log, &train_path).unwrap();
    let store = format!("memory://speed-online-offline-{}", std::process::id());
    let train_config = TrainConfig {
        hidden: 16,
        epochs: 1,
        n_sample: 64,
        seed: 5,
        ..TrainConfig::default()
    };
    // A kNN smaller than the default, so that a server which ignored the bundle's size would
    // answer otherwise than the evaluator.
    let job = TrainJob {
        eval: EvalOptions {
            threads: Some(1),
            ..EvalOptions::default()
        },
        knn_neighbours: 40,
        knn_sample: 250,
        ..TrainJob::new(Some(train_path), &store, server_common::MODEL, train_config)
    };
    let out = run_train(&job, |_, _, _| {}, |_| {}).await.unwrap();
    let test = &out.dataset.test;
    let mut tsv = String::from("SessionId\tItemId\tTime\n");
    for s in 0..test.len() {
        for (&i, &t) in test.session(s).iter().zip(test.session_times(s)) {
            tsv += &format!(
                "{}\t{}\t{t}\n",
                test.keys[s], out.dataset.vocab.ids[i as usize]
            );
        }
    }
    let test_path = dir.path().join("test.tsv");
    std::fs::write(&test_path, tsv).unwrap();
    let (_, offline, _) = run_eval(&EvalJob {
        store: store.clone(),
        model: server_common::MODEL.to_string(),
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
    let row = |prefix: &str| {
        offline
            .baselines
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} row in {:?}", offline.baselines))
            .1
            .clone()
    };
    assert!(
        out.evaluation
            .baselines
            .iter()
            .any(|(n, _)| n.starts_with("blend(")),
        "the training run fits and evaluates the blend"
    );

    for (strategy, name) in [
        (Strategy::Blend, "blend("),
        (Strategy::Knn, "knn"),
        (Strategy::Trending, "trending"),
    ] {
        // A fresh server per strategy: the speed layer starts from the bundle, as offline.
        let server = lambdarec_server::start(lambdarec_server::ServeConfig {
            max_sessions: 10_000,
            ..config(&store)
        })
        .await
        .unwrap();
        let info = client(server.local_addr())
            .await
            .model_info(v1::ModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (info.knn_neighbours, info.knn_sample),
            (40, 250),
            "the bundle's kNN size"
        );
        let report = load::run(&LoadOptions {
            target: server.local_addr().to_string(),
            data: test_path.clone(),
            connections: 1,
            mode: Mode::Closed { concurrency: 1 },
            max_time: Duration::from_secs(300),
            strategy,
            ..LoadOptions::default()
        })
        .await
        .unwrap();
        let want = row(name);
        assert!(report.errors.is_empty(), "{name}: {:?}", report.errors);
        assert_eq!(report.accuracy.events, want.events, "{name}: predictions");
        assert!(
            (report.accuracy.recall - want.recall).abs() < 1e-6
                && (report.accuracy.mrr - want.mrr).abs() < 1e-6,
            "{name}: online recall {} mrr {} vs offline {} {}",
            report.accuracy.recall,
            report.accuracy.mrr,
            want.recall,
            want.mrr
        );
        server.shutdown().await.unwrap();
    }
}

/// New items survive a restart: through the snapshot (graceful stop) and through the log's replay
/// (a crash: the server is abandoned without stopping), and the restarted speed layer knows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_items_survive_a_restart_and_a_crash() {
    let (store, _) = fresh_store("speed-restart").await;
    let log = lambdarec_eventlog::memory::MemoryStorage::default();
    let dir = tempfile::tempdir().unwrap();
    let logged = || lambdarec_server::ServeConfig {
        log: lambdarec_server::LogConfig::Memory(log.clone()),
        snapshot_dir: Some(dir.path().to_path_buf()),
        snapshot_interval: None,
        ..speed_config(&store, SpeedConfig::default())
    };
    let item = |i: usize| base().ids[i].clone();
    let start = || async {
        let s = lambdarec_server::start(logged()).await.unwrap();
        assert!(s.wait_ready(Duration::from_secs(30)).await);
        s
    };
    let recent = |c: &mut v1::recommender_client::RecommenderClient<tonic::transport::Channel>,
                  session: &str| {
        let mut c = c.clone();
        let session = session.to_string();
        async move {
            c.get_session(v1::GetSessionRequest {
                session_id: session,
            })
            .await
            .unwrap()
            .into_inner()
            .recent_items
        }
    };

    let trending_top =
        |c: &mut v1::recommender_client::RecommenderClient<tonic::transport::Channel>| {
            let mut c = c.clone();
            async move {
                let r = c
                    .recommend(recommend("nobody", 1, Strategy::Trending))
                    .await
                    .unwrap()
                    .into_inner();
                ids(&r)[0].to_string()
            }
        };

    let a = start().await;
    let mut c = client(a.local_addr()).await;
    send(
        &mut c,
        vec![event("s", &item(2), 1), event("s", "new-a", 2)],
    )
    .await;
    // A burst on a rare item tops trending.
    let burst_item = item(base().ids.len() - 2);
    let burst = (0..30)
        .map(|n| event(&format!("burst-{n}"), &burst_item, 10 + n))
        .collect();
    send(&mut c, burst).await;
    assert_eq!(trending_top(&mut c).await, burst_item);
    a.shutdown().await.unwrap();

    // Graceful stop: the snapshot holds the new item by id, and trending's counts (the log after
    // the snapshot is empty, so they can come from nowhere else).
    let b = start().await;
    let mut c = client(b.local_addr()).await;
    assert_eq!(recent(&mut c, "s").await, [item(2), "new-a".to_string()]);
    assert_eq!(trending_top(&mut c).await, burst_item);
    send(&mut c, vec![event("t", "new-a", 3), event("t", "new-b", 4)]).await;
    std::mem::forget(b);

    // Crash: the log's tail is replayed, taking the new items again in the same order.
    let c2 = start().await;
    let mut c = client(c2.local_addr()).await;
    assert_eq!(recent(&mut c, "t").await, ["new-a", "new-b"]);
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.new_items, 2);
    // Trending: the first server's snapshot, then the second's events from the log.
    assert_eq!(trending_top(&mut c).await, burst_item);
    let s = c
        .score(v1::ScoreRequest {
            session_id: "nobody".into(),
            candidates: vec!["new-a".into(), "new-b".into()],
            strategy: Strategy::Trending.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.scores.iter().all(|x| x.score > 0.0), "{s:?}");
    // A session on new-b alone finds t as its neighbour, and so new-a.
    send(&mut c, vec![event("u", "new-b", 5)]).await;
    let r = c
        .recommend(recommend("u", 3, Strategy::Knn))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r)[0], "new-a", "{r:?}");
    c2.shutdown().await.unwrap();
}
