//! `lambdarec load --mode events`: the event path alone, through a server that logs every event
//! before acknowledging it. Every event is acked, each ack is timed, and the log holds them all.

mod server_common;

use std::time::Duration;

use lambdarec_eventlog::EventLog;
use lambdarec_eventlog::memory::{MemoryLog, MemoryStorage};
use lambdarec_server::load::{LoadOptions, Mode, Workload, run};
use lambdarec_server::{LogConfig, ServeConfig};
use server_common::{base, config, fresh_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_mode_times_every_ack_and_every_event_is_logged() {
    let (store, _) = fresh_store("load-events").await;
    let storage = MemoryStorage::default();
    let server = lambdarec_server::start(ServeConfig {
        log: LogConfig::Memory(storage.clone()),
        ..config(&store)
    })
    .await
    .unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);

    // The base model's test sessions as a log file.
    let b = base();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.tsv");
    let mut text = String::from("SessionId\tItemId\tTime\n");
    let mut events = 0;
    for (s, items) in b.sessions.iter().enumerate().take(200) {
        for (t, &item) in items.iter().enumerate() {
            text += &format!("{s}\t{}\t{}\n", b.ids[item as usize], 1_700_000_000 + t);
            events += 1;
        }
    }
    std::fs::write(&path, text).unwrap();

    let report = run(&LoadOptions {
        target: server.local_addr().to_string(),
        data: path,
        mode: Mode::Closed { concurrency: 32 },
        workload: Workload::Events,
        connections: 2,
        ..LoadOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(report.errors_total(), 0, "{:?}", report.errors);
    assert_eq!(report.events_sent, events);
    assert_eq!(report.requests, events, "one timed ack per event");
    assert!(report.p99_ms > 0.0 && report.throughput_rps > 0.0);
    assert_eq!(
        report.accuracy.events, 0,
        "events mode makes no predictions"
    );
    assert_eq!(report.to_json()["mode"], "events");
    let logged = MemoryLog::new(storage).bounds().unwrap().len();
    assert_eq!(
        logged, report.events_applied,
        "every applied event is in the log"
    );
    server.shutdown().await.unwrap();
}
