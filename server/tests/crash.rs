//! `kill -9` of a real `lambdarec serve` while clients stream events at full speed, on the embedded log
//! and on NATS JetStream: after a restart every acknowledged event is in its session (GetSession's
//! count and recent items), no event is applied twice, and Recommend equals what a server that never
//! crashed answers after the same events.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambdarec_eventlog::testing::NatsServer;
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use lambdarec_proto::v1::{GetSessionRequest, RecommendRequest, SessionEvent};
use lambdarec_server::load::synthetic::{SyntheticModel, write};
use lambdarec_server::{DeviceChoice, ServeConfig};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const SESSIONS: usize = 200;
const STREAMS: usize = 3;
const ITEMS: usize = 500;

/// A `lambdarec serve` child process; its stderr (JSON log lines) is kept for failure messages.
struct Served {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    fn start(store: &Path, data: &Path, event_log: &str) -> Served {
        // Frequent snapshots, so the kill lands between them and recovery needs snapshot + tail.
        Served::start_with(store, data, event_log, &["--snapshot-interval", "0.3"])
    }

    fn start_with(store: &Path, data: &Path, event_log: &str, extra: &[&str]) -> Served {
        let mut child = serve_command(store, data, event_log, extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start lambdarec serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v["fields"]["addr"].as_str()
                    && v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("listening"))
                {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().expect("an address"));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => panic!(
                "the server did not start:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        Served { child, addr, log }
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(40)..].join("\n")
    }

    async fn wait_serving(&self) {
        let channel = connect(self.addr).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let req = tonic_health::pb::HealthCheckRequest {
                service: "lambdarec.v1.Recommender".into(),
            };
            if let Ok(r) = health.check(req).await
                && r.into_inner().status == 1
            {
                return;
            }
            assert!(Instant::now() < until, "never SERVING:\n{}", self.tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the graceful stop.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "graceful stop failed: {status}\n{}",
            self.tail()
        );
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_command(store: &Path, data: &Path, event_log: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lambdarec"));
    c.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--device", "cpu", "--threads", "1", "--poll-interval", "0"])
        .arg("--store")
        .arg(store)
        .args(["--model", "synthetic", "--log", event_log])
        .arg("--snapshot-dir")
        .arg(data.join("snapshots"))
        .args(extra);
    c
}

async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// The item of session `s`'s `n`-th event (deterministic, so both servers see the same sequence).
fn item_of(s: usize, n: u64) -> String {
    let h = (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((h >> 33) % ITEMS as u64 + 1).to_string()
}

/// Per session: events sent and events acknowledged (always a prefix of those sent).
#[derive(Default, Clone, Copy, Debug)]
struct Progress {
    sent: u64,
    acked: u64,
}

/// Streams events on `STREAMS` concurrent calls as fast as the server acknowledges them, until the
/// server dies; returns what was sent and acknowledged per session.
async fn stream_until_killed(
    addr: SocketAddr,
    kill_after: Duration,
    server: Served,
) -> Vec<Progress> {
    let progress = Arc::new(Mutex::new(vec![Progress::default(); SESSIONS]));
    let mut tasks = Vec::new();
    for k in 0..STREAMS {
        let progress = progress.clone();
        let channel = connect(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut client = RecommenderClient::new(channel);
            let (tx, rx) = tokio::sync::mpsc::channel(512);
            let Ok(response) = client.stream_events(ReceiverStream::new(rx)).await else {
                return;
            };
            let mut acks = response.into_inner();
            let sender = {
                let progress = progress.clone();
                tokio::spawn(async move {
                    let mine: Vec<usize> = (k..SESSIONS).step_by(STREAMS).collect();
                    for round in 1u64.. {
                        for &s in &mine {
                            let event = SessionEvent {
                                session_id: format!("crash-{s}"),
                                item_id: item_of(s, round),
                                timestamp_ms: Some(1_700_000_000_000 + round as i64),
                                client_seq: Some(round),
                            };
                            progress.lock().unwrap()[s].sent = round;
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                })
            };
            while let Ok(Some(ack)) = acks.message().await {
                assert!(ack.applied && !ack.duplicate, "{ack:?}");
                let s: usize = ack.session_id["crash-".len()..].parse().unwrap();
                let seq = ack.client_seq.unwrap();
                let mut p = progress.lock().unwrap();
                assert_eq!(seq, p[s].acked + 1, "acks arrive in order per session");
                p[s].acked = seq;
            }
            sender.abort();
        }));
    }
    tokio::time::sleep(kill_after).await;
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    progress.lock().map(|p| p.clone()).unwrap()
}

/// The GRU's top 10: the session state recovery restores. (The blend's answers also depend on the
/// speed layer, which learns from every session in arrival order, and the reference below is fed the
/// sessions in another order.)
async fn top10(c: &mut RecommenderClient<Channel>, session: &str) -> Vec<(String, f32)> {
    let r = c
        .recommend(RecommendRequest {
            session_id: session.into(),
            k: 10,
            strategy: lambdarec_proto::v1::Strategy::Gru.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.items.into_iter().map(|i| (i.item_id, i.score)).collect()
}

/// A random-weight model of `ITEMS` items in `<dir>/store`; returns the store's path as a string.
async fn synthetic_store(dir: &Path) -> String {
    let store_url = dir.join("store").to_str().unwrap().to_string();
    write(&SyntheticModel {
        n_items: ITEMS,
        hidden: 32,
        embed_dim: 0,
        sessions: 10,
        seed: 5,
        store: store_url.clone(),
        model: "synthetic".into(),
        log: dir.join("synthetic.tsv"),
    })
    .await
    .unwrap();
    store_url
}

async fn crash_and_recover(event_log: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = synthetic_store(dir.path()).await;
    let store = dir.path().join("store");

    let first = Served::start(&store, dir.path(), event_log);
    first.wait_serving().await;
    let addr = first.addr;
    let progress = stream_until_killed(addr, Duration::from_millis(1500), first).await;
    let acked: u64 = progress.iter().map(|p| p.acked).sum();
    assert!(
        acked > 1000,
        "the client got only {acked} acks before the kill"
    );

    let second = Served::start(&store, dir.path(), event_log);
    second.wait_serving().await;
    let mut c = RecommenderClient::new(connect(second.addr).await);

    // A server that never crashed, fed exactly the events the recovered server holds.
    let reference = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store_url,
        model: "synthetic".into(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        poll_interval: None,
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    assert!(reference.wait_ready(Duration::from_secs(30)).await);
    let mut r = RecommenderClient::new(connect(reference.local_addr()).await);

    let mut recovered_events = HashMap::new();
    for (s, p) in progress.iter().enumerate() {
        let id = format!("crash-{s}");
        let held = match c
            .get_session(GetSessionRequest {
                session_id: id.clone(),
            })
            .await
        {
            Ok(info) => info.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound && p.acked == 0 => continue,
            Err(status) => panic!("{id}: {status} (acked {})\n{}", p.acked, second.tail()),
        };
        // Every acknowledged event is there; unacknowledged ones may be, never more than were sent.
        assert!(
            held.events >= p.acked && held.events <= p.sent,
            "{id}: holds {} events; {} were acknowledged and {} sent",
            held.events,
            p.acked,
            p.sent
        );
        let items: Vec<String> = (1..=held.events).map(|n| item_of(s, n)).collect();
        let recent = &items[items.len().saturating_sub(held.recent_items.len())..];
        assert_eq!(held.recent_items, recent, "{id}: recent items");
        assert_eq!(held.recent_items.len(), items.len().min(50), "{id}");
        recovered_events.insert(id.clone(), items);
    }
    // Feed the reference in one stream, then compare every session's recommendations.
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut acks = r
        .stream_events(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let feed = recovered_events.clone();
    let feeder = tokio::spawn(async move {
        for (id, items) in feed {
            for (n, item) in items.into_iter().enumerate() {
                let e = SessionEvent {
                    session_id: id.clone(),
                    item_id: item,
                    timestamp_ms: None,
                    client_seq: Some(n as u64 + 1),
                };
                tx.send(e).await.unwrap();
            }
        }
    });
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(ack.applied, "{ack:?}");
    }
    feeder.await.unwrap();
    for id in recovered_events.keys() {
        let (got, want) = (top10(&mut c, id).await, top10(&mut r, id).await);
        assert_eq!(got.len(), want.len(), "{id}");
        for (rank, (g, w)) in got.iter().zip(&want).enumerate() {
            let close = (g.1 - w.1).abs() <= 1e-4 * w.1.abs().max(1.0);
            assert!(
                close && (g.0 == w.0 || (g.1 - w.1).abs() <= 1e-6),
                "{id} rank {rank}: recovered {g:?}, never crashed {w:?}"
            );
        }
    }
    reference.shutdown().await.unwrap();
    eprintln!(
        "{event_log}: {acked} events acknowledged before kill -9, {} sessions recovered and equal to a server that never crashed",
        recovered_events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_embedded_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = format!("file://{}", dir.path().join("log").display());
    crash_and_recover(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_jetstream() {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    crash_and_recover(&format!("{}/CRASHTEST", nats.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_older_segment_fails_start_up_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_store(dir.path()).await;
    let store = dir.path().join("store");
    let log_dir = dir.path().join("log");
    let log = format!("file://{}", log_dir.display());
    // Small segments, and one snapshot only (at the stop): nothing is released, several segments stay.
    let small = ["--log-segment-bytes", "4096", "--snapshot-interval", "0"];
    let server = Served::start_with(&store, dir.path(), &log, &small);
    server.wait_serving().await;
    let mut c = RecommenderClient::new(connect(server.addr).await);
    let events: Vec<SessionEvent> = (0..2000u64)
        .map(|n| SessionEvent {
            session_id: format!("c-{}", n % 20),
            item_id: item_of((n % 20) as usize, n / 20 + 1),
            timestamp_ms: None,
            client_seq: Some(n / 20 + 1),
        })
        .collect();
    let mut acks = c
        .stream_events(tokio_stream::iter(events))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(ack.applied);
        n += 1;
    }
    assert_eq!(n, 2000);
    server.terminate();

    let mut segments: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = &segments[0];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[200] ^= 0x10;
    std::fs::write(victim, bytes).unwrap();

    let out = serve_command(&store, dir.path(), &log, &small)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start-up must fail:\n{stderr}");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name) && stderr.contains("offset"),
        "the error names the segment and the offset:\n{stderr}"
    );
    eprintln!("start-up refused: {}", stderr.lines().last().unwrap_or(""));
}
