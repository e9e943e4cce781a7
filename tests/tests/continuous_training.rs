//! Continuous training end to end (issue 13): v1 is trained on day 1 of a log and served; days 1
//! and 2 are streamed through the server, whose archiver writes them to `<store>/events`; one
//! continuous-training cycle trains v2 on the archive, warm-started from v1, gates it against v1
//! on held-out sessions of day 2 and publishes it; the server picks it up and
//! - (a) v2 knows the items first seen on day 2 and its GRU recommends them after their usual
//!   predecessors;
//! - (b) v2 is no worse than v1 on day 3, offline, by the gate's own comparison;
//! - (c) every live session kept its state across the swap: `GetSession` is unchanged, the GRU state is the session's (not a reset), and the session goes on.
//!
//! Then the cycles that must not publish: one on unchanged data is skipped; one whose candidate
//! is worse (trained from scratch at a learning rate that learns nothing) is rejected, written for
//! inspection, and LATEST and the server stay on v2; the same cycle again is skipped.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lambdarec_proto::bundle::{Pointer, Store};
use lambdarec_proto::v1::{self, Strategy, recommender_client::RecommenderClient};
use lambdarec_server::archive::ArchiveOptions;
use lambdarec_server::{DeviceChoice, LogConfig, ServeConfig};
use lambdarec_trainer::continuous::{CycleOptions, Decision, compare, run_cycle};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::data::{ArchiveSource, RawLog, read_archive};
use lambdarec_trainer::pipeline::{
    EvalOptions, TrainData, TrainJob, WarmStartFrom, load_model, run_train,
};
use lambdarec_trainer::train::TrainConfig;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const MODEL: &str = "live";
const DAY: f64 = 86_400.0;
/// A UTC midnight, so that the archive's day partitions are the log's days.
const START: f64 = 1_699_920_000.0;

fn config() -> TrainConfig {
    TrainConfig {
        hidden: 32,
        epochs: 4,
        n_sample: 128,
        seed: 3,
        ..TrainConfig::default()
    }
}

/// The log's events of the sessions `keep` accepts, as a log of their own.
fn subset(log: &RawLog, keep: impl Fn(u32) -> bool) -> RawLog {
    let mut out = RawLog {
        path: log.path.clone(),
        sessions: log.sessions.clone(),
        items: log.items.clone(),
        ..RawLog::default()
    };
    out.events = log
        .events
        .iter()
        .filter(|e| keep(e.session))
        .copied()
        .collect();
    out
}

/// Three days of sessions in which the items of `new` never occur on day 1 (its sessions that
/// touch them are dropped), so they are first seen on day 2.
fn three_days() -> (RawLog, Vec<RawLog>, HashSet<String>) {
    let log = generate(&SyntheticOptions {
        n_items: 240,
        n_sessions: 6_000,
        days: 3.0,
        start_time: START,
        seed: 17,
        ..SyntheticOptions::default()
    });
    let mut start = vec![f64::INFINITY; log.sessions.len()];
    let mut count = vec![0usize; log.items.len()];
    for e in &log.events {
        let s = &mut start[e.session as usize];
        *s = s.min(e.time);
        count[e.item as usize] += 1;
    }
    let day_of = |s: u32| ((start[s as usize] - START) / DAY).floor().clamp(0.0, 2.0) as usize;
    // Items of middling popularity: frequent enough to be learnt from one day.
    let mut by_count: Vec<usize> = (0..log.items.len()).collect();
    by_count.sort_by_key(|&i| std::cmp::Reverse(count[i]));
    let new: HashSet<u32> = by_count[30..42].iter().map(|&i| i as u32).collect();
    let mut touches_new = vec![false; log.sessions.len()];
    for e in &log.events {
        touches_new[e.session as usize] |= new.contains(&e.item);
    }
    let days = (0..3)
        .map(|d| {
            subset(&log, |s| {
                day_of(s) == d && !(d == 0 && touches_new[s as usize])
            })
        })
        .collect();
    let names = new.iter().map(|&i| log.items[i as usize].clone()).collect();
    (log, days, names)
}

fn event(log: &RawLog, e: &lambdarec_trainer::data::RawEvent) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: log.sessions[e.session as usize].clone(),
        item_id: log.items[e.item as usize].clone(),
        timestamp_ms: Some((e.time * 1000.0).round() as i64),
        client_seq: None,
    }
}

/// Streams `log`'s events in time order, 500 per call; every one must be applied.
async fn replay(c: &mut RecommenderClient<Channel>, log: &RawLog) -> usize {
    let mut events: Vec<_> = log.events.clone();
    events.sort_by(|a, b| a.time.total_cmp(&b.time));
    for chunk in events.chunks(500) {
        let batch: Vec<_> = chunk.iter().map(|e| event(log, e)).collect();
        let mut acks = c
            .stream_events(tokio_stream::iter(batch))
            .await
            .unwrap()
            .into_inner();
        while let Some(ack) = acks.next().await {
            let ack = ack.unwrap();
            assert!(ack.applied, "{ack:?}");
        }
    }
    events.len()
}

async fn archived_events(events: &str) -> usize {
    let source = ArchiveSource {
        url: events.to_string(),
        range: Default::default(),
    };
    match read_archive(&source, false).await {
        Ok(log) => log.events.len(),
        Err(_) => 0,
    }
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serving_version(c: &mut RecommenderClient<Channel>) -> String {
    c.model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .version
}

async fn session(c: &mut RecommenderClient<Channel>, id: &str) -> v1::SessionInfo {
    c.get_session(v1::GetSessionRequest {
        session_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

async fn recommend(
    c: &mut RecommenderClient<Channel>,
    id: &str,
    strategy: Strategy,
) -> Vec<String> {
    let r = c
        .recommend(v1::RecommendRequest {
            session_id: id.into(),
            k: 20,
            strategy: strategy.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.items.into_iter().map(|s| s.item_id).collect()
}

async fn scores(c: &mut RecommenderClient<Channel>, id: &str, items: &[String]) -> Vec<f32> {
    let r = c
        .score(v1::ScoreRequest {
            session_id: id.into(),
            candidates: items.to_vec(),
            strategy: Strategy::Gru.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.scores.into_iter().map(|s| s.score).collect()
}

/// For each item of `targets`, the item that most often comes right before it in `log`.
fn predecessors(log: &RawLog, targets: &HashSet<String>) -> HashMap<String, String> {
    let mut by_session: HashMap<u32, Vec<(f64, u32)>> = HashMap::new();
    for e in &log.events {
        by_session
            .entry(e.session)
            .or_default()
            .push((e.time, e.item));
    }
    let mut pairs: HashMap<(u32, u32), usize> = HashMap::new();
    for events in by_session.values_mut() {
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in events.windows(2) {
            *pairs.entry((w[0].1, w[1].1)).or_default() += 1;
        }
    }
    let mut best: HashMap<String, (usize, String)> = HashMap::new();
    for ((a, b), n) in pairs {
        let (a, b) = (&log.items[a as usize], &log.items[b as usize]);
        if a == b || !targets.contains(b) {
            continue;
        }
        let e = best.entry(b.clone()).or_insert((0, String::new()));
        if (n, a) > (e.0, &e.1) {
            *e = (n, a.clone());
        }
    }
    best.into_iter().map(|(b, (_, a))| (b, a)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_trains_gates_and_publishes_and_the_server_keeps_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (_, days, new_items) = three_days();
    let store = dir.path().join("store").to_str().unwrap().to_string();
    let events_url = format!("{store}/events");

    // v1: day 1 only (a quarter of it held out for its own test figures).
    let day1 = dir.path().join("day1.tsv");
    write_tsv(&days[0], &day1).unwrap();
    let mut job = TrainJob {
        data: TrainData::File(day1),
        ..TrainJob::new(None, &store, MODEL, config())
    };
    job.prepare.test_window = DAY / 4.0;
    job.blend_validation = DAY / 4.0;
    let v1 = run_train(&job, |_, _, _| {}, |_| {}).await.unwrap().version;
    let blend1 = load_model(&store, MODEL, Some(&v1))
        .await
        .unwrap()
        .bundle
        .manifest
        .blend;
    assert!(blend1.is_some(), "v1 has blend weights");

    let server = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.clone(),
        model: MODEL.to_string(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        max_sessions: 50_000,
        poll_interval: Some(Duration::from_millis(200)),
        log: LogConfig::Url(format!("file://{}", dir.path().join("log").display())),
        archive: Some(ArchiveOptions {
            max_records: 4_000,
            interval: Duration::from_millis(200),
        }),
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);
    let mut c = server_client(server.local_addr()).await;
    assert_eq!(serving_version(&mut c).await, v1);

    let mut sent = replay(&mut c, &days[0]).await + replay(&mut c, &days[1]).await;
    wait_for("the archive to hold every event", async || {
        archived_events(&events_url).await == sent
    })
    .await;

    // The sessions live at the swap: day 2's last ones.
    let mut live: Vec<&String> = {
        let mut last: HashMap<u32, f64> = HashMap::new();
        for e in &days[1].events {
            let t = last.entry(e.session).or_insert(0.0);
            *t = t.max(e.time);
        }
        let mut by_end: Vec<(f64, u32)> = last.into_iter().map(|(s, t)| (t, s)).collect();
        by_end.sort_by(|a, b| b.0.total_cmp(&a.0));
        by_end
            .iter()
            .take(20)
            .map(|&(_, s)| &days[1].sessions[s as usize])
            .collect()
    };
    live.sort();
    let mut before = Vec::new();
    for id in &live {
        before.push(session(&mut c, id).await);
    }

    let mut cycle = CycleOptions {
        job: TrainJob {
            data: TrainData::from_arg(&events_url, None, None).unwrap(),
            warm_start: WarmStartFrom::Latest,
            ..TrainJob::new(None, &store, MODEL, config())
        },
        window_days: 30,
        margin: 0.02,
        publish: Pointer::Latest,
    };
    cycle.job.prepare.test_fraction = 0.5;
    let report = run_cycle(&cycle, |_, _, _| {}, |_| {}).await.unwrap();
    let gate = report.gate.clone().unwrap();
    println!("cycle 1: {report:?}");
    assert_eq!(report.decision, Decision::Published, "{}", report.reason);
    let v2 = report.version.clone().unwrap();
    assert_eq!(gate.serving_version.as_deref(), Some(v1.as_str()));
    assert_eq!(gate.warm_start_from.as_deref(), Some(v1.as_str()));
    assert!(gate.predictions > 100, "{gate:?}");
    let manifest = Store::open(&store)
        .unwrap()
        .read_manifest(MODEL, &v2)
        .await
        .unwrap();
    // (serde_json reads floats back to within the last digit)
    let written = manifest.gate.as_ref().unwrap();
    assert_eq!(
        (written.published, &written.reason, &written.serving_version),
        (gate.published, &gate.reason, &gate.serving_version)
    );
    assert!((written.candidate.recall - gate.candidate.recall).abs() < 1e-12);
    assert_eq!(manifest.training["warm_start"]["from"], v1.as_str());
    // The warm start kept v1's blend, and the gate compared the blends as served.
    let blend2 = manifest.blend.as_ref().unwrap();
    assert_eq!(blend2.fit["inherited_from"], v1.as_str());
    assert_eq!(blend2.gru_weight, blend1.as_ref().unwrap().gru_weight);
    assert_eq!(gate.candidate.strategy, "blend");
    assert_eq!(gate.serving.as_ref().unwrap().strategy, "blend");

    wait_for("the server to load v2", async || {
        serving_version(&mut c).await == v2
    })
    .await;

    // (c) Sessions kept across the swap: GetSession unchanged (its model_version names the
    // version whose GRU made the state, v1, until the session's next event).
    for (id, was) in live.iter().zip(&before) {
        assert_eq!(&session(&mut c, id).await, was, "session {id}");
    }
    let (id, _) = live
        .iter()
        .zip(&before)
        .find(|(_, was)| was.events >= 2)
        .expect("a live session with two events");
    let info = session(&mut c, id).await;
    let last = info.recent_items.last().unwrap().clone();
    let probe: Vec<String> = days[1].items.iter().take(30).cloned().collect();
    let fresh = format!("{id}-fresh");
    sent += replay_one(&mut c, &fresh, &last).await;
    assert_ne!(
        scores(&mut c, id, &probe).await,
        scores(&mut c, &fresh, &probe).await,
        "session {id} scores as a fresh session on its last item: its state was reset"
    );
    let next = recommend(&mut c, id, Strategy::Gru).await;
    assert_eq!(next.len(), 20);
    sent += replay_one(&mut c, id, &next[0]).await;
    let after = session(&mut c, id).await;
    assert_eq!(after.events, info.events + 1);
    assert_eq!(after.model_version, v2);

    // (a) v2 knows day 2's new items, and its GRU recommends each after its usual predecessor.
    let m1 = load_model(&store, MODEL, Some(&v1)).await.unwrap();
    let m2 = load_model(&store, MODEL, Some(&v2)).await.unwrap();
    for item in &new_items {
        assert!(m1.vocab.index(item).is_none(), "{item} was known on day 1");
        assert!(m2.vocab.index(item).is_some(), "v2 does not know {item}");
    }
    let before_new = predecessors(&days[1], &new_items);
    let mut hits = 0;
    for (n, (item, pred)) in before_new.iter().enumerate() {
        let probe = format!("probe-{n}");
        sent += replay_one(&mut c, &probe, pred).await;
        hits += recommend(&mut c, &probe, Strategy::Gru)
            .await
            .contains(item) as usize;
    }
    println!(
        "new items recommended after their predecessor: {hits} of {}",
        before_new.len()
    );
    assert!(
        hits * 2 >= before_new.len(),
        "{hits} of {}",
        before_new.len()
    );

    // (b) No worse than v1 on day 3.
    let eval = EvalOptions::default();
    let day3 = compare(&m2, &m1, &days[2], &eval, 0.02).unwrap();
    println!("day 3: {day3:?}");
    assert!(day3.published, "{}", day3.reason);
    assert!(day3.predictions > 1000, "{day3:?}");

    // Day 3 arrives; a candidate that learns nothing is rejected, kept, and not served.
    sent += replay(&mut c, &days[2]).await;
    wait_for("the archive to hold day 3", async || {
        archived_events(&events_url).await == sent
    })
    .await;
    let mut bad = cycle.clone();
    bad.job.warm_start = WarmStartFrom::Cold;
    bad.job.config.learning_rate = 1e-6;
    bad.job.config.epochs = 1;
    bad.job.blend_validation = 0.0;
    let report = run_cycle(&bad, |_, _, _| {}, |_| {}).await.unwrap();
    println!("bad cycle: {report:?}");
    assert_eq!(report.decision, Decision::Rejected, "{}", report.reason);
    let rejected = report.version.clone().unwrap();
    let st = Store::open(&store).unwrap();
    assert_eq!(
        st.latest_version(MODEL).await.unwrap().as_deref(),
        Some(v2.as_str())
    );
    let kept = st.read_manifest(MODEL, &rejected).await.unwrap();
    assert!(!kept.gate.unwrap().published);
    assert!(
        st.read_bundle(MODEL, Some(&rejected)).await.is_ok(),
        "a rejected version stays readable"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(serving_version(&mut c).await, v2);
    let report = run_cycle(&bad, |_, _, _| {}, |_| {}).await.unwrap();
    assert_eq!(report.decision, Decision::Skipped, "{report:?}");
    assert!(report.reason.contains("rejected"), "{}", report.reason);

    server.shutdown().await.unwrap();
}

/// Sends one event (applied; timed at the end of day 2, where the replay stands, so that the
/// archive's newest day stays the log's) and returns 1, the count of events it adds to the archive.
async fn replay_one(c: &mut RecommenderClient<Channel>, session: &str, item: &str) -> usize {
    let e = v1::SessionEvent {
        session_id: session.into(),
        item_id: item.into(),
        timestamp_ms: Some(((START + 2.0 * DAY - 60.0) * 1000.0) as i64),
        client_seq: None,
    };
    let mut acks = c
        .stream_events(tokio_stream::iter(vec![e]))
        .await
        .unwrap()
        .into_inner();
    let ack = acks.next().await.unwrap().unwrap();
    assert!(ack.applied, "{ack:?}");
    1
}

async fn server_client(addr: std::net::SocketAddr) -> RecommenderClient<Channel> {
    RecommenderClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}
