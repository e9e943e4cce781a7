//! Canary rollout end to end on a real server (CPU backend): the store's CANARY version serves a
//! stable, hash-chosen 10% of new sessions beside LATEST's; each arm answers exactly as the offline
//! evaluator does with that arm's model; both arms' trending learn from every event; promotion and
//! ending keep every live session (items, events, state).

mod server_common;

use std::collections::HashMap;

use lambdarec_kernels::ModelWeights;
use lambdarec_proto::bundle::{Bundle, Store};
use lambdarec_proto::v1::{self, Strategy};
use server_common::{
    MODEL, Offline, assert_close, base, bundle_with, client, config, fresh_store, random_weights,
    send_events,
};

/// `w` with its catalogue reversed: the same model, every item numbered differently.
fn reversed_weights(w: &ModelWeights) -> ModelWeights {
    let (n, h) = (w.n_items, w.hidden);
    let rows = |m: &[f32], width: usize| -> Vec<f32> {
        (0..n)
            .rev()
            .flat_map(|i| m[i * width..(i + 1) * width].iter().copied())
            .collect()
    };
    ModelWeights {
        item_out: rows(&w.item_out, h),
        item_bias: rows(&w.item_bias, 1),
        item_in: w.item_in.as_ref().map(|m| rows(m, w.embed_dim)),
        ..w.clone()
    }
}

/// The bundle of `w`, numbered in reverse (ids, popularity, seed sessions).
fn reversed_bundle(w: &ModelWeights) -> Bundle {
    let mut b = bundle_with(&reversed_weights(w));
    let n = b.items.ids.len() as u32;
    b.items.ids.reverse();
    b.items.popularity.reverse();
    if let Some(s) = &mut b.sessions {
        s.items.iter_mut().for_each(|i| *i = n - 1 - *i);
    }
    b
}

fn event(session: &str, item: &str) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: session.into(),
        item_id: item.into(),
        ..Default::default()
    }
}

fn recommend(session: &str, strategy: Strategy) -> v1::RecommendRequest {
    v1::RecommendRequest {
        session_id: session.into(),
        k: 10,
        strategy: strategy.into(),
        // As the offline evaluator ranks: over the whole catalogue.
        exclude_seen: Some(false),
        ..Default::default()
    }
}

/// The offline evaluator's top 10 for `items` (base numbering) under `w` whose catalogue is `ids`.
fn offline_top(w: &ModelWeights, ids: &[String], items: &[&str]) -> Vec<(String, f32)> {
    let index: HashMap<&str, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect();
    let mut o = Offline::new(w);
    o.session(&items.iter().map(|id| index[id]).collect::<Vec<_>>());
    o.top_k(10)
        .into_iter()
        .map(|s| (ids[s.item as usize].clone(), s.score))
        .collect()
}

async fn model_info(
    c: &mut v1::recommender_client::RecommenderClient<tonic::transport::Channel>,
) -> v1::ModelInfoResponse {
    let info = c.model_info(v1::ModelInfoRequest {}).await.unwrap();
    info.into_inner()
}

fn assert_same_list(got: &v1::RecommendResponse, want: &[(String, f32)], what: &str) {
    let ids: Vec<&str> = got.items.iter().map(|i| i.item_id.as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, want_ids, "{what}");
    for (g, (_, s)) in got.items.iter().zip(want) {
        assert_close(g.score, *s, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_serves_a_stable_tenth_and_is_promoted_then_ended_keeping_every_session() {
    let b = base();
    let (url, v1) = fresh_store("canary").await;
    let store = Store::open(&url).unwrap();
    let w2 = random_weights(24, 11);
    let v2 = store
        .write_version(MODEL, &mut reversed_bundle(&w2), false)
        .await
        .unwrap();

    let mut cfg = config(&url);
    cfg.canary_fraction = Some(0.1);
    cfg.max_sessions = 30_000;
    let server = lambdarec_server::start(cfg).await.unwrap();
    let registry = server.registry().clone();
    let mut c = client(server.local_addr()).await;
    let item = |i: usize| b.ids[i % b.ids.len()].clone();

    // Sessions live before the canary stay with LATEST's version.
    let early: Vec<_> = (0..50)
        .map(|i| event(&format!("early-{i}"), &item(i)))
        .collect();
    let acks = send_events(&mut c, early).await;
    assert!(acks.iter().all(|a| a.applied && a.model_version == v1));

    store.set_canary(MODEL, &v2).await.unwrap();
    assert_eq!(registry.sync_canary().await.unwrap().as_deref(), Some(&*v2));
    let info = model_info(&mut c).await;
    assert_eq!(info.version, v1);
    let canary = info.canary.expect("ModelInfo describes the canary");
    assert_eq!(
        (canary.version.as_str(), canary.fraction),
        (v2.as_str(), 0.1)
    );

    // 10,000 new sessions: 10% ± 1% go to the canary, and each stays where it went.
    let n = 10_000;
    let first: Vec<_> = (0..n).map(|i| event(&format!("s{i}"), &item(i))).collect();
    let acks = send_events(&mut c, first).await;
    assert!(
        acks.iter().all(|a| a.applied),
        "{:?}",
        acks.iter().find(|a| !a.applied)
    );
    let arm: Vec<bool> = acks.iter().map(|a| a.model_version == v2).collect();
    let in_canary = arm.iter().filter(|&&x| x).count();
    assert!(
        (900..=1100).contains(&in_canary),
        "{in_canary} of {n} sessions went to the canary"
    );
    let second: Vec<_> = (0..n)
        .map(|i| event(&format!("s{i}"), &item(i * 7 + 3)))
        .collect();
    let acks = send_events(&mut c, second).await;
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a.model_version == v2, arm[i], "session s{i} changed arm");
        assert_eq!(a.session_events, 2);
    }
    let late: Vec<_> = (0..50)
        .map(|i| event(&format!("early-{i}"), &item(i + 1)))
        .collect();
    let acks = send_events(&mut c, late).await;
    assert!(
        acks.iter()
            .all(|a| a.model_version == v1 && a.session_events == 2)
    );
    let info = model_info(&mut c).await;
    assert_eq!(info.canary.unwrap().sessions, in_canary as u64);

    // Each arm answers as the offline evaluator does with its own model and numbering.
    let canary_s = (0..n).find(|&i| arm[i]).unwrap();
    let control_s = (0..n).find(|&i| !arm[i]).unwrap();
    let items_of = |i: usize| [item(i), item(i * 7 + 3)];
    for (s, w, ids, version) in [
        // w2 numbered as the base: the same model as v2's reversed bundle.
        (canary_s, &w2, &b.ids, &v2),
        (control_s, &b.weights, &b.ids, &v1),
    ] {
        let session = format!("s{s}");
        let r = c
            .recommend(recommend(&session, Strategy::Gru))
            .await
            .unwrap();
        let r = r.into_inner();
        assert_eq!(&r.model_version, version);
        let items = items_of(s);
        let want = offline_top(w, ids, &[&items[0], &items[1]]);
        assert_same_list(&r, &want, &format!("session {session} on {version}"));
    }

    // Trending learns from both arms: a burst in control sessions tops the canary's trending too.
    // (The burst is also the control session's next event, and one more the canary session's: the
    // online evaluation scores each arm's list under its own version.)
    send_events(&mut c, vec![event(&format!("s{canary_s}"), &item(42))]).await;
    let hot = item(123);
    let burst: Vec<_> = (0..200)
        .map(|i| (0..n).filter(|&j| !arm[j]).nth(i).unwrap())
        .map(|j| event(&format!("s{j}"), &hot))
        .collect();
    send_events(&mut c, burst).await;
    let info = model_info(&mut c).await;
    let online: HashMap<&str, u64> = info
        .online
        .iter()
        .map(|o| (o.model_version.as_str(), o.predictions))
        .collect();
    assert_eq!(online, HashMap::from([(v1.as_str(), 1), (v2.as_str(), 1)]));
    for s in [canary_s, control_s] {
        let r = c
            .recommend(recommend(&format!("s{s}"), Strategy::Trending))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.items[0].item_id, hot, "trending of s{s}");
    }

    // Promotion: LATEST moves to the canary's version; every session stays as it was.
    let described = |c: &mut v1::recommender_client::RecommenderClient<_>, s: String| {
        let mut c = c.clone();
        async move {
            c.get_session(v1::GetSessionRequest { session_id: s })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let control_name = format!("s{control_s}");
    let canary_name = format!("s{canary_s}");
    let control_before = described(&mut c, control_name.clone()).await;
    let canary_before = c
        .recommend(recommend(&canary_name, Strategy::Gru))
        .await
        .unwrap();
    store.set_latest(MODEL, &v2).await.unwrap();
    let outcome = registry.reload(None).await.unwrap();
    assert_eq!(&*outcome.version, v2.as_str());
    let info = model_info(&mut c).await;
    assert_eq!(info.version, v2);
    assert!(info.canary.is_none());
    assert_eq!(
        described(&mut c, control_name.clone()).await,
        control_before
    );
    let after = c
        .recommend(recommend(&canary_name, Strategy::Gru))
        .await
        .unwrap();
    let after = after.into_inner();
    let canary_before = canary_before.into_inner();
    assert_eq!(
        after.items, canary_before.items,
        "the canary's session is untouched"
    );
    let acks = send_events(&mut c, vec![event(&control_name, &item(5))]).await;
    assert_eq!(
        (acks[0].model_version.as_str(), acks[0].session_events),
        (v2.as_str(), 4)
    );

    // A new canary (v3, base numbering), then ended: its sessions return to v2 intact.
    let w3 = random_weights(24, 13);
    let v3 = store
        .write_version(MODEL, &mut bundle_with(&w3), false)
        .await
        .unwrap();
    store.set_canary(MODEL, &v3).await.unwrap();
    assert_eq!(registry.sync_canary().await.unwrap().as_deref(), Some(&*v3));
    let fresh: Vec<_> = (0..2000)
        .map(|i| event(&format!("t{i}"), &item(i)))
        .collect();
    let acks = send_events(&mut c, fresh).await;
    let t = acks
        .iter()
        .position(|a| a.model_version == v3)
        .expect("a v3 session");
    let t_name = format!("t{t}");
    let t_before = described(&mut c, t_name.clone()).await;
    assert_eq!(t_before.model_version, v3);
    let r = c
        .recommend(recommend(&t_name, Strategy::Gru))
        .await
        .unwrap();
    assert_same_list(
        &r.into_inner(),
        &offline_top(&w3, &b.ids, &[&item(t)]),
        "v3 arm",
    );
    store.clear_canary(MODEL).await.unwrap();
    assert_eq!(registry.sync_canary().await.unwrap(), None);
    assert_eq!(described(&mut c, t_name.clone()).await, t_before);
    let acks = send_events(&mut c, vec![event(&t_name, &item(9))]).await;
    assert_eq!(
        (acks[0].model_version.as_str(), acks[0].session_events),
        (v2.as_str(), 2)
    );
    let info = model_info(&mut c).await;
    assert!(info.canary.is_none());
    assert_eq!(info.version, v2);

    server.shutdown().await.unwrap();
}

/// What a client sees of a session: GetSession, and Recommend's version and list.
async fn views(
    c: &mut v1::recommender_client::RecommenderClient<tonic::transport::Channel>,
    prefix: &str,
    n: usize,
) -> Vec<(v1::SessionInfo, String, Vec<String>)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = format!("{prefix}{i}");
        let info = c.get_session(v1::GetSessionRequest {
            session_id: s.clone(),
        });
        let info = info.await.unwrap().into_inner();
        let r = c.recommend(recommend(&s, Strategy::Gru)).await.unwrap();
        let r = r.into_inner();
        let items = r.items.iter().map(|i| i.item_id.clone()).collect();
        out.push((info, r.model_version, items));
    }
    out
}

async fn started(cfg: lambdarec_server::ServeConfig) -> lambdarec_server::RunningServer {
    let server = lambdarec_server::start(cfg).await.unwrap();
    let ready = server.wait_ready(std::time::Duration::from_secs(30)).await;
    assert!(ready, "not ready: {:?}", server.not_serving_reason());
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_sessions_return_to_the_canary_after_a_graceful_restart_and_a_crash() {
    let b = base();
    let (url, v1) = fresh_store("canary-restart").await;
    let store = Store::open(&url).unwrap();
    let v2 = store
        .write_version(MODEL, &mut reversed_bundle(&random_weights(24, 17)), false)
        .await
        .unwrap();
    store.set_canary(MODEL, &v2).await.unwrap();
    let log = lambdarec_eventlog::memory::MemoryStorage::default();
    let dir = tempfile::tempdir().unwrap();
    let cfg = || lambdarec_server::ServeConfig {
        log: lambdarec_server::LogConfig::Memory(log.clone()),
        snapshot_dir: Some(dir.path().to_path_buf()),
        snapshot_interval: None,
        canary_fraction: Some(0.5),
        ..config(&url)
    };
    let item = |i: usize| b.ids[i % b.ids.len()].clone();
    let n = 60;
    let round = |prefix: &str, r: usize| -> Vec<v1::SessionEvent> {
        (0..n)
            .map(|i| event(&format!("{prefix}{i}"), &item(i * 5 + r)))
            .collect()
    };

    // A serves both arms, then stops gracefully (a final snapshot).
    let a = started(cfg()).await;
    let mut ca = client(a.local_addr()).await;
    let acks = send_events(&mut ca, round("r", 0)).await;
    let arms: Vec<String> = acks.iter().map(|a| a.model_version.clone()).collect();
    let canary = arms.iter().filter(|v| **v == v2).count();
    assert!((10..=50).contains(&canary), "{canary} of {n} in the canary");
    send_events(&mut ca, round("r", 1)).await;
    let before = views(&mut ca, "r", n).await;
    for (i, (info, version, _)) in before.iter().enumerate() {
        assert_eq!((&info.model_version, version), (&arms[i], &arms[i]));
    }
    a.shutdown().await.unwrap();

    // B restores the snapshot: every session in its arm, answering as before.
    let bs = started(cfg()).await;
    let mut cb = client(bs.local_addr()).await;
    assert_eq!(views(&mut cb, "r", n).await, before);
    let acks = send_events(&mut cb, round("r", 2)).await;
    assert!(acks.iter().zip(&arms).all(|(a, v)| a.model_version == *v));
    // Sessions that only the log holds (created after the snapshot).
    let acks = send_events(&mut cb, round("q", 0)).await;
    let q_canary = acks.iter().filter(|a| a.model_version == v2).count();
    assert!(
        (10..=50).contains(&q_canary),
        "{q_canary} of {n} in the canary"
    );
    send_events(&mut cb, round("q", 1)).await;
    let on_b = (views(&mut cb, "r", n).await, views(&mut cb, "q", n).await);
    std::mem::forget(bs);

    // C restores A's snapshot and replays B's events (B left no snapshot): the same again, the
    // log's new sessions in the arm whose version their records name.
    let cs = started(cfg()).await;
    let mut cc = client(cs.local_addr()).await;
    let on_c = (views(&mut cc, "r", n).await, views(&mut cc, "q", n).await);
    assert_eq!(on_c, on_b);
    let info = model_info(&mut cc).await;
    assert_eq!(info.version, v1);
    assert_eq!(info.canary.unwrap().sessions, (canary + q_canary) as u64);
    cs.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_of_another_hidden_size_is_refused_and_not_retried() {
    let (url, v1) = fresh_store("canary-hidden").await;
    let store = Store::open(&url).unwrap();
    let v2 = store
        .write_version(MODEL, &mut bundle_with(&random_weights(8, 5)), false)
        .await
        .unwrap();
    store.set_canary(MODEL, &v2).await.unwrap();
    let server = lambdarec_server::start(lambdarec_server::ServeConfig {
        canary_fraction: Some(0.1),
        ..config(&url)
    })
    .await
    .unwrap();
    let registry = server.registry().clone();
    let mut c = client(server.local_addr()).await;
    // Refused at start-up (the server serves LATEST alone), and not tried again for the same CANARY.
    let failures = registry.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].version, v2);
    let why = &failures[0].error;
    assert!(
        why.contains("canary refused")
            && why.contains("hidden size 8 differs")
            && why.contains("(24)"),
        "{why}"
    );
    assert_eq!(registry.sync_canary().await.unwrap(), None);
    assert_eq!(registry.failures().len(), 1);
    let info = model_info(&mut c).await;
    assert_eq!(info.version, v1);
    assert!(info.canary.is_none());
    let acks = send_events(&mut c, vec![event("s", &base().ids[0])]).await;
    assert_eq!(acks[0].model_version, v1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_starts_promotes_and_ends_canaries_as_the_pointers_move() {
    let (url, v1) = fresh_store("canary-poll").await;
    let store = Store::open(&url).unwrap();
    let server = lambdarec_server::start(lambdarec_server::ServeConfig {
        canary_fraction: Some(0.2),
        poll_interval: Some(std::time::Duration::from_millis(50)),
        ..config(&url)
    })
    .await
    .unwrap();
    let mut c = client(server.local_addr()).await;
    // Waits until ModelInfo shows `serving` and `canary`.
    let mut until = async |serving: &str, canary: Option<&str>| {
        for _ in 0..200 {
            let info = model_info(&mut c).await;
            if info.version == serving && info.canary.as_ref().map(|c| c.version.as_str()) == canary
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the server never served {serving} with canary {canary:?}");
    };
    let new = async |seed| {
        let mut b = bundle_with(&random_weights(24, seed));
        store.write_version(MODEL, &mut b, false).await.unwrap()
    };
    let (v2, v3) = (new(21).await, new(22).await);
    store.set_canary(MODEL, &v2).await.unwrap();
    until(&v1, Some(&v2)).await;
    // `models promote`: LATEST moves to the canary, then CANARY goes.
    store.set_latest(MODEL, &v2).await.unwrap();
    until(&v2, None).await;
    store.clear_canary(MODEL).await.unwrap();
    store.set_canary(MODEL, &v3).await.unwrap();
    until(&v2, Some(&v3)).await;
    // `models rollback` with a canary running: CANARY goes, LATEST stays.
    store.clear_canary(MODEL).await.unwrap();
    until(&v2, None).await;
    server.shutdown().await.unwrap();
}
