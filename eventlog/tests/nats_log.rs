//! The JetStream log against a real nats-server (skipped, saying so, when none is installed; see
//! `lambdarec_eventlog::testing`): the conformance suite, a server crash and restart, appends while
//! the server is down, and deduplication by (session, client_seq).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lambdarec_eventlog::conformance::{self, Harness, sample_records};
use lambdarec_eventlog::nats::{JetStreamLog, NatsLocation};
use lambdarec_eventlog::testing::NatsServer;
use lambdarec_eventlog::{EventLog, LogError, OpenOptions, event_record};

fn opts() -> OpenOptions {
    OpenOptions {
        connect_timeout: Duration::from_secs(3),
        op_timeout: Duration::from_secs(3),
        ..OpenOptions::default()
    }
}

/// A stream name no other test in this process uses.
fn fresh_stream(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "T{}_{tag}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn location(server: &NatsServer, stream: &str) -> NatsLocation {
    NatsLocation::parse(&format!("{}/{stream}", server.url())).unwrap()
}

struct Stream {
    at: NatsLocation,
}

impl Harness for Stream {
    fn open(&mut self) -> Box<dyn EventLog> {
        Box::new(JetStreamLog::open(&self.at, &opts()).expect("open the JetStream log"))
    }
}

#[test]
fn jetstream_log_passes_the_conformance_suite() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    conformance::run_all(&mut || {
        Box::new(Stream {
            at: location(&server, &fresh_stream("conf")),
        }) as Box<dyn Harness>
    });
}

#[test]
fn records_go_to_per_session_subjects_under_the_prefix() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let url = format!(
        "{}/{}?subject=custom.ev",
        server.url(),
        fresh_stream("subj")
    );
    let mut log = lambdarec_eventlog::open(&url, &opts()).unwrap().unwrap();
    assert!(
        log.describe().ends_with("subject=custom.ev"),
        "{}",
        log.describe()
    );
    let records = sample_records(5, "subj");
    let positions = log.append(&records).unwrap();
    let mut reader = log.reader(positions[0]).unwrap();
    assert_eq!(reader.next_batch(10).unwrap().len(), 5);
    // The subject of each message is checked through the client directly.
    let at = NatsLocation::parse(&url).unwrap();
    let subject = at.subject(&records[0].session_id);
    assert!(subject.starts_with("custom.ev.") && subject.len() == "custom.ev.".len() + 16);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = rt.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&at.stream).await.unwrap();
        stream.get_raw_message(positions[0]).await.unwrap()
    });
    assert_eq!(&*stored.subject, subject);
    assert_eq!(
        lambdarec_eventlog::decode(positions[0], &stored.payload).unwrap(),
        records[0]
    );
}

#[test]
fn a_killed_and_restarted_server_keeps_the_stream() {
    let Some(mut server) = NatsServer::start_or_skip() else {
        return;
    };
    let at = location(&server, &fresh_stream("crash"));
    let records = sample_records(300, "crash");
    let positions = {
        let mut log = JetStreamLog::open(&at, &opts()).unwrap();
        log.append(&records).unwrap()
    };
    server.kill();
    server.restart().expect("restart nats-server on its store");
    let mut log = JetStreamLog::open(&at, &opts()).unwrap();
    assert_eq!(log.bounds().unwrap().next, positions[299] + 1);
    let mut reader = log.reader(positions[0]).unwrap();
    let mut read = Vec::new();
    loop {
        let batch = reader.next_batch(128).unwrap();
        if batch.is_empty() {
            break;
        }
        read.extend(batch);
    }
    assert_eq!(read, positions.into_iter().zip(records).collect::<Vec<_>>());
    assert_eq!(log.append(&sample_records(1, "after")).unwrap(), [301]);
}

#[test]
fn an_append_while_the_server_is_down_fails_within_the_timeout_and_later_ones_succeed() {
    let Some(mut server) = NatsServer::start_or_skip() else {
        return;
    };
    let at = location(&server, &fresh_stream("down"));
    let mut log = JetStreamLog::open(&at, &opts()).unwrap();
    log.append(&sample_records(3, "up")).unwrap();
    server.kill();

    let started = Instant::now();
    let err = log.append(&sample_records(3, "down")).unwrap_err();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "bounded by the 3 s timeout: {took:?}"
    );
    assert!(matches!(err, LogError::Remote { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&at.stream) && msg.contains(&server.url()),
        "{msg}"
    );
    let started = Instant::now();
    assert!(log.bounds().is_err());
    assert!(log.reader(1).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "reads are bounded too"
    );

    server.restart().unwrap();
    // The client reconnects in the background; appends succeed again once it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    let positions = loop {
        match log.append(&sample_records(2, "back")) {
            Ok(p) => break p,
            Err(e) if Instant::now() < deadline => eprintln!("not yet: {e}"),
            Err(e) => panic!("no reconnect within 20 s: {e}"),
        }
    };
    assert!(positions[0] >= 4, "{positions:?}");
}

#[test]
fn opening_without_a_server_fails_within_the_connect_timeout() {
    let Some(mut server) = NatsServer::start_or_skip() else {
        return;
    };
    let at = location(&server, "NOPE");
    server.kill();
    let started = Instant::now();
    let err = JetStreamLog::open(&at, &opts()).err().expect("no server");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&server.url()), "{err}");
}

#[test]
fn the_same_session_and_client_seq_is_stored_once() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let at = location(&server, &fresh_stream("dedup"));
    let mut log = JetStreamLog::open(&at, &opts()).unwrap();
    let event = event_record("s-dup", "item-1", 10, 11, Some(7), "v1");
    let first = log.append(std::slice::from_ref(&event)).unwrap();
    let other = event_record("s-dup", "item-2", 12, 13, Some(8), "v1");
    // Resent alone and within a batch (a retry after a lost ack): the original's position.
    assert_eq!(log.append(std::slice::from_ref(&event)).unwrap(), first);
    let batch = log.append(&[other.clone(), event.clone()]).unwrap();
    assert_eq!(batch[1], first[0]);
    // A reopened log (a restarted server process) is deduplicated as well.
    drop(log);
    let mut log = JetStreamLog::open(&at, &opts()).unwrap();
    assert_eq!(log.append(std::slice::from_ref(&event)).unwrap(), first);
    assert_eq!(
        log.bounds().unwrap().len(),
        2,
        "one message per (session, client_seq)"
    );
    // Records without a client_seq are never taken for duplicates.
    let unseq = event_record("s-dup", "item-3", 14, 15, None, "v1");
    let p = log.append(&[unseq.clone(), unseq]).unwrap();
    assert_ne!(p[0], p[1]);
    assert_eq!(log.bounds().unwrap().len(), 4);
}

#[test]
fn a_record_beyond_the_servers_max_payload_is_too_large() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let at = location(&server, &fresh_stream("big"));
    let mut log = JetStreamLog::open(&at, &opts()).unwrap();
    let big = event_record("s", &"i".repeat(2 << 20), 1, 2, None, "v");
    let err = log.append(&[big]).unwrap_err();
    assert!(
        matches!(err, LogError::TooLarge { max: 1_048_576, .. }),
        "{err}"
    );
    assert!(
        log.bounds().unwrap().is_empty(),
        "nothing of the batch was published"
    );
}

#[tokio::test]
async fn the_log_works_and_drops_inside_an_async_runtime() {
    let Some(server) = NatsServer::start_or_skip() else {
        return;
    };
    let at = location(&server, &fresh_stream("async"));
    let mut log = JetStreamLog::open(&at, &opts()).unwrap();
    let p = log.append(&sample_records(3, "async")).unwrap();
    let mut reader = log.reader(p[0]).unwrap();
    assert_eq!(reader.next_batch(10).unwrap().len(), 3);
    drop(log);
    assert!(reader.next_batch(10).unwrap().is_empty());
    drop(reader);
}
