//! Replicas sharing one event log, in-process (`serve --replica` over a shared memory log): a
//! session whose calls move from one replica to another, and back, is caught up from the log before
//! it is answered, so every replica that serves it holds every acknowledged event exactly once and
//! answers as one server that saw them all. The test through a real proxy, with JetStream and a
//! replica killed mid-run, is `replicas_proxy.rs`.

mod server_common;

use std::time::Duration;

use lambdarec_eventlog::memory::MemoryStorage;
use lambdarec_proto::v1::{DeleteSessionRequest, GetSessionRequest, SessionEvent};
use lambdarec_server::{LogConfig, ServeConfig};
use server_common::{
    assert_same, base, client, config, fresh_store, http_get, send_events, start, views,
};

fn replica(store: &str, log: &MemoryStorage) -> ServeConfig {
    ServeConfig {
        log: LogConfig::Memory(log.clone()),
        replica: true,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..config(store)
    }
}

/// The events of `n` test sessions in three legs: the first third of each session, the second,
/// the rest. Half the sessions send client_seqs, half do not (a replica must tell its own records
/// from others' without them).
fn legs(n: usize) -> [Vec<SessionEvent>; 3] {
    let b = base();
    let mut out: [Vec<SessionEvent>; 3] = Default::default();
    for (i, s) in b
        .sessions
        .iter()
        .filter(|s| s.len() >= 3)
        .take(n)
        .enumerate()
    {
        let cut = [s.len() / 3, 2 * s.len() / 3];
        for (step, &item) in s.iter().enumerate() {
            let leg = cut.iter().filter(|&&c| step >= c).count();
            out[leg].push(SessionEvent {
                session_id: format!("r-{i}"),
                item_id: b.ids[item as usize].clone(),
                timestamp_ms: Some(1_700_000_000_000 + step as i64),
                client_seq: (i % 2 == 0).then_some(step as u64 + 1),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_moves_between_replicas_is_caught_up_before_it_is_answered() {
    let (store, _) = fresh_store("replicas").await;
    let log = MemoryStorage::default();
    let a = start(replica(&store, &log)).await;
    let b = start(replica(&store, &log)).await;
    // The reference: one server (no log) that sees every event.
    let one = start(config(&store)).await;
    let (mut ca, mut cb, mut c1) = (
        client(a.local_addr()).await,
        client(b.local_addr()).await,
        client(one.local_addr()).await,
    );
    let [first, second, third] = legs(24);
    let ids: Vec<String> = (0..24).map(|i| format!("r-{i}")).collect();

    // Leg 1 on A, leg 2 on B (every session moved there), leg 3 back on A (behind B's records).
    for (leg, on_a) in [(&first, true), (&second, false), (&third, true)] {
        let on = if on_a { &mut ca } else { &mut cb };
        let acks = send_events(on, leg.clone()).await;
        assert!(acks.iter().all(|a| a.applied && !a.duplicate));
        send_events(&mut c1, leg.clone()).await;
    }
    let want = views(&mut c1, &ids).await;
    assert_same(&views(&mut ca, &ids).await, &want);
    // B has not seen leg 3: its next answers catch up first.
    assert_same(&views(&mut cb, &ids).await, &want);

    // An event acknowledged by A and re-sent to B (a client retrying after losing A's ack) is a
    // duplicate there, not applied twice.
    let resent: Vec<SessionEvent> = third
        .iter()
        .filter(|e| e.client_seq.is_some())
        .cloned()
        .collect();
    assert!(!resent.is_empty());
    let acks = send_events(&mut cb, resent).await;
    assert!(
        acks.iter().all(|a| a.duplicate),
        "re-sent events are duplicates"
    );
    assert_same(&views(&mut cb, &ids).await, &want);

    // A delete on B is seen by A.
    cb.delete_session(DeleteSessionRequest {
        session_id: "r-0".into(),
    })
    .await
    .unwrap();
    let gone = ca
        .get_session(GetSessionRequest {
            session_id: "r-0".into(),
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);

    // Each replica applied every other replica's record exactly once, and none of its own: A caught
    // each session up once after B's leg (and r-0 once more for B's delete), B each session once
    // when it moved there and once more after A's third leg.
    let metrics_a = http_get(a.metrics_addr().unwrap(), "/metrics").await;
    let metrics_b = http_get(b.metrics_addr().unwrap(), "/metrics").await;
    let expect = [
        (&metrics_a, "handoff_sessions_total{why=\"behind\"}", 25),
        (&metrics_a, "handoff_sessions_total{why=\"moved\"}", 0),
        (&metrics_a, "handoff_records_total", second.len() + 1),
        (&metrics_b, "handoff_sessions_total{why=\"moved\"}", 24),
        (&metrics_b, "handoff_sessions_total{why=\"behind\"}", 24),
        (
            &metrics_b,
            "handoff_records_total",
            first.len() + third.len(),
        ),
    ];
    for (text, series, want) in expect {
        assert_series(text, series, want);
    }
    for s in [a, b, one] {
        s.shutdown().await.unwrap();
    }
}

/// A replica stopped gracefully leaves a snapshot holding each session's log position. Restarted, it
/// restores it, replays nothing, and catches each session up with only what another replica wrote
/// meanwhile: its own records before the snapshot are in the restored states and are not applied
/// again (half the sessions send no client_seq, so only that rule keeps them from counting twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_restores_its_snapshot_and_catches_up_the_rest() {
    let (store, _) = fresh_store("replica-restart").await;
    let log = MemoryStorage::default();
    let dir = tempfile::tempdir().unwrap();
    let with_snapshots = ServeConfig {
        snapshot_dir: Some(dir.path().join("a")),
        snapshot_interval: None,
        ..replica(&store, &log)
    };
    let a = start(with_snapshots.clone()).await;
    let b = start(replica(&store, &log)).await;
    let one = start(config(&store)).await;
    let (mut ca, mut cb, mut c1) = (
        client(a.local_addr()).await,
        client(b.local_addr()).await,
        client(one.local_addr()).await,
    );
    let [first, second, third] = legs(24);
    let ids: Vec<String> = (0..24).map(|i| format!("r-{i}")).collect();
    send_events(&mut ca, first.clone()).await;
    send_events(&mut c1, first).await;
    a.shutdown().await.unwrap();
    send_events(&mut cb, second.clone()).await;
    send_events(&mut c1, second.clone()).await;

    let a = start(with_snapshots).await;
    let mut ca = client(a.local_addr()).await;
    send_events(&mut ca, third.clone()).await;
    send_events(&mut c1, third).await;
    let want = views(&mut c1, &ids).await;
    assert_same(&views(&mut ca, &ids).await, &want);
    assert_same(&views(&mut cb, &ids).await, &want);
    // Every session came back from the snapshot ("behind": held, and B had written to it), none
    // had to be rebuilt ("moved"), and only B's records were applied.
    let metrics = http_get(a.metrics_addr().unwrap(), "/metrics").await;
    for (series, want) in [
        ("handoff_sessions_total{why=\"behind\"}", 24),
        ("handoff_sessions_total{why=\"moved\"}", 0),
        ("handoff_records_total", second.len()),
    ] {
        assert_series(&metrics, series, want);
    }
    for s in [a, b, one] {
        s.shutdown().await.unwrap();
    }
}

/// A client that waits for each ack before its next event (as `lambdarec load` does) gets each record
/// confirmed by the log as directly following the last one the replica knew, so the replica never
/// reads its own records back: every later check of the session costs one empty read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_does_not_read_back_what_the_log_confirmed() {
    let (store, _) = fresh_store("replica-confirm").await;
    let log = MemoryStorage::default();
    let a = start(replica(&store, &log)).await;
    let mut ca = client(a.local_addr()).await;
    let [first, second, third] = legs(6);
    for event in first.into_iter().chain(second).chain(third) {
        let session = event.session_id.clone();
        let ack = send_events(&mut ca, vec![event]).await;
        assert!(ack[0].applied);
        views(&mut ca, &[session]).await;
    }
    let metrics = http_get(a.metrics_addr().unwrap(), "/metrics").await;
    for series in ["handoff_own_reads_total", "handoff_records_total"] {
        assert_series(&metrics, series, 0);
    }
    a.shutdown().await.unwrap();
}

/// That the Prometheus text `metrics` has the line `lambdarec_<series> <want>`; otherwise fails,
/// showing the handoff series it has.
fn assert_series(metrics: &str, series: &str, want: usize) {
    let line = format!("lambdarec_{series} {want}");
    let handoff: Vec<&str> = metrics.lines().filter(|l| l.contains("handoff")).collect();
    assert!(
        metrics.lines().any(|l| l == line),
        "want {line}:\n{}",
        handoff.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_needs_a_log_it_can_share() {
    let (store, _) = fresh_store("replica-file").await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("log").display());
    let config = ServeConfig {
        log: LogConfig::Url(url),
        replica: true,
        ..config(&store)
    };
    let err = match lambdarec_server::start(config).await {
        Ok(server) => {
            // Start-up errors of the log may surface as a failed recovery instead.
            let ready = server.wait_ready(Duration::from_secs(5)).await;
            let reason = server.not_serving_reason();
            server.shutdown().await.ok();
            assert!(!ready, "a replica on a local log must not serve");
            reason.unwrap_or_default()
        }
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain += &format!(": {s}");
                source = s.source();
            }
            chain
        }
    };
    assert!(err.contains("--replica needs an event log"), "{err}");
}
