//! Recovery from the event log, in-process: a server that stops gracefully (final snapshot) or is
//! abandoned without stopping (a crash, as far as the log is concerned: no final snapshot) is followed by
//! a new server on the same log and snapshot directory, which must hold every acknowledged event in
//! its session and answer as the old server did. The kill -9 test of a real process is
//! `server_crash.rs`.

mod server_common;

use std::collections::HashMap;

use lambdarec_eventlog::memory::MemoryStorage;
use lambdarec_proto::v1::{DeleteSessionRequest, SessionEvent};
use lambdarec_server::{LogConfig, ServeConfig};
use server_common::{
    View, assert_same, base, client, config, fresh_store, random_weights, send_events, start, views,
};

fn logged(store: &str, log: &MemoryStorage, snapshots: &std::path::Path) -> ServeConfig {
    ServeConfig {
        log: LogConfig::Memory(log.clone()),
        snapshot_dir: Some(snapshots.to_path_buf()),
        snapshot_interval: None,
        ..config(store)
    }
}

/// Events of the first `n` test sessions, each with a client_seq, interleaved across sessions.
fn workload(n: usize, tag: &str) -> Vec<SessionEvent> {
    let b = base();
    let sessions: Vec<&Vec<u32>> = b.sessions.iter().take(n).collect();
    let longest = sessions.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for step in 0..longest {
        for (i, s) in sessions.iter().enumerate() {
            if let Some(&item) = s.get(step) {
                out.push(SessionEvent {
                    session_id: format!("{tag}-{i}"),
                    item_id: b.ids[item as usize].clone(),
                    timestamp_ms: Some(1_700_000_000_000 + step as i64),
                    client_seq: Some(step as u64 + 1),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_graceful_restart_and_a_crash() {
    let (store, _) = fresh_store("recovery").await;
    let log = MemoryStorage::default();
    let dir = tempfile::tempdir().unwrap();

    // A: events for 40 sessions, one deleted, then a graceful stop (final snapshot).
    let a = start(logged(&store, &log, dir.path())).await;
    let mut ca = client(a.local_addr()).await;
    let events = workload(40, "s");
    let ids: Vec<String> = (0..40).map(|i| format!("s-{i}")).collect();
    let acks = send_events(&mut ca, events.clone()).await;
    assert!(
        acks.iter().all(|a| a.applied && !a.duplicate),
        "every event applied once"
    );
    ca.delete_session(DeleteSessionRequest {
        session_id: "s-3".into(),
    })
    .await
    .unwrap();
    let before = views(&mut ca, &ids).await;
    assert!(before["s-3"].is_none());
    a.shutdown().await.unwrap();
    let snapshots = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(snapshots >= 1, "a graceful stop writes a snapshot");

    // B restores the snapshot (nothing to replay) and holds the same sessions.
    let b = start(logged(&store, &log, dir.path())).await;
    let mut cb = client(b.local_addr()).await;
    assert_same(&views(&mut cb, &ids).await, &before);

    // More events on B, then B is abandoned without stopping: no final snapshot, so C must replay
    // them from the log after A's snapshot.
    let more = workload(60, "s");
    let fresh: Vec<SessionEvent> = more
        .into_iter()
        .map(|mut e| {
            e.client_seq = e.client_seq.map(|s| s + 1000);
            e
        })
        .collect();
    let acks = send_events(&mut cb, fresh.clone()).await;
    assert!(acks.iter().all(|a| a.applied && !a.duplicate));
    let ids: Vec<String> = (0..60).map(|i| format!("s-{i}")).collect();
    let on_b = views(&mut cb, &ids).await;
    std::mem::forget(b);

    let c = start(logged(&store, &log, dir.path())).await;
    let mut cc = client(c.local_addr()).await;
    assert_same(&views(&mut cc, &ids).await, &on_b);

    // Exactly once across the crash: re-sent events are acknowledged as duplicates, not applied.
    let again = send_events(&mut cc, fresh[..50].to_vec()).await;
    assert!(again.iter().all(|a| a.applied && a.duplicate), "{again:?}");
    assert_same(&views(&mut cc, &ids).await, &on_b);
    c.shutdown().await.unwrap();
}

/// A server that never stopped, on the store's LATEST, fed `events`; its views of `ids`.
async fn reference_views(
    store: &str,
    events: Vec<SessionEvent>,
    ids: &[String],
    history: usize,
) -> HashMap<String, Option<View>> {
    let mut cfg = config(store);
    cfg.limits.history = history;
    let r = start(cfg).await;
    let mut c = client(r.local_addr()).await;
    let acks = send_events(&mut c, events).await;
    assert!(acks.iter().all(|a| a.applied));
    let v = views(&mut c, ids).await;
    r.shutdown().await.unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_another_hidden_size_is_replayed_from_the_log_or_rebuilt_from_recent_items() {
    // A short history makes the two ways of rebuilding a session differ: the whole log versus the
    // last three items.
    const HISTORY: usize = 3;
    let (store, _) = fresh_store("hidden-change").await;
    let log = MemoryStorage::default();
    let dir = tempfile::tempdir().unwrap();
    let logged_with = |store: &str| {
        let mut c = logged(store, &log, dir.path());
        c.limits.history = HISTORY;
        c
    };
    let a = start(logged_with(&store)).await;
    let mut ca = client(a.local_addr()).await;
    let events = workload(30, "h");
    let ids: Vec<String> = (0..30).map(|i| format!("h-{i}")).collect();
    assert!(
        send_events(&mut ca, events.clone())
            .await
            .iter()
            .all(|a| a.applied)
    );
    a.shutdown().await.unwrap(); // snapshot at hidden 24

    server_common::publish(&store, server_common::bundle_with(&random_weights(16, 7))).await;
    let want = reference_views(&store, events.clone(), &ids, HISTORY).await;

    // The log still holds everything: the snapshot is set aside and the whole log replayed.
    let b = start(logged_with(&store)).await;
    let mut cb = client(b.local_addr()).await;
    assert_same(&views(&mut cb, &ids).await, &want);
    b.shutdown().await.unwrap();

    // Once the log's start is released, the sessions are rebuilt from their recent items instead:
    // the same counts and recent items, states from the last HISTORY items only.
    let (store2, _) = fresh_store("hidden-change-2").await;
    let log2 = MemoryStorage::default();
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = logged(&store2, &log2, dir2.path());
    cfg.limits.history = HISTORY;
    let a = start(cfg.clone()).await;
    let mut ca = client(a.local_addr()).await;
    assert!(
        send_events(&mut ca, events.clone())
            .await
            .iter()
            .all(|a| a.applied)
    );
    a.shutdown().await.unwrap();
    let mut l = lambdarec_eventlog::memory::MemoryLog::new(log2.clone());
    let next = lambdarec_eventlog::EventLog::bounds(&l).unwrap().next;
    lambdarec_eventlog::EventLog::release_before(&mut l, next).unwrap();
    server_common::publish(&store2, server_common::bundle_with(&random_weights(16, 7))).await;
    let b = start(cfg).await;
    let mut cb = client(b.local_addr()).await;
    let got = views(&mut cb, &ids).await;
    // Reference: each session fed only its last HISTORY items.
    let mut tail: Vec<SessionEvent> = Vec::new();
    for id in &ids {
        let mine: Vec<&SessionEvent> = events.iter().filter(|e| &e.session_id == id).collect();
        tail.extend(
            mine[mine.len().saturating_sub(HISTORY)..]
                .iter()
                .map(|e| (*e).clone()),
        );
    }
    let rebuilt = reference_views(&store2, tail, &ids, HISTORY).await;
    for id in &ids {
        let (g, full, r) = (&got[id], &want[id], &rebuilt[id]);
        let (g, full, r) = (
            g.as_ref().unwrap(),
            full.as_ref().unwrap(),
            r.as_ref().unwrap(),
        );
        assert_eq!(
            (g.0, &g.1),
            (full.0, &full.1),
            "{id}: counts and recent items are kept"
        );
        assert_eq!(
            g.2.iter().map(|x| &x.0).collect::<Vec<_>>(),
            r.2.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "{id}: state rebuilt from the recent items"
        );
    }
    b.shutdown().await.unwrap();
}
