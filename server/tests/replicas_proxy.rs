//! Three `lambdarec serve --replica` processes on one JetStream log behind HAProxy running the
//! shipped `deploy/haproxy/haproxy.cfg`, all on loopback, with `lambdarec load` replaying a log
//! through the proxy (sessions routed by `x-session-id`, failed calls retried):
//!
//! 1. one replica is `kill -9`ed halfway: no call fails for good, the retried attempts are few (the
//!    calls in flight to the killed replica), every session holds every event on whichever replica
//!    now serves it, and online Recall@20/MRR@20 equal a single server's replay of the same log;
//! 2. a rolling restart of all three under load (SIGTERM with a drain grace, restart on the same
//!    ports): again nothing fails, nothing is lost.
//!
//! It needs `nats-server` ($NATS_SERVER) and `haproxy` ($HAPROXY, else on PATH); without one it says
//! it is skipped, unless LAMBDAREC_REQUIRE_NATS / LAMBDAREC_REQUIRE_PROXY make that a failure (CI).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lambdarec_eventlog::testing::NatsServer;
use lambdarec_eventlog::{EventLog, OpenOptions};
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use lambdarec_proto::v1::{GetSessionRequest, ModelInfoRequest, SessionInfo, Strategy};
use lambdarec_server::load::synthetic::{SyntheticModel, write};
use lambdarec_server::load::{self, LoadOptions, LoadReport, Mode, Replay, SESSION_HEADER};
use lambdarec_server::{DeviceChoice, ServeConfig};
use lambdarec_trainer::data::{ReadOptions, read_log};
use support::{Proc, free_port};
use tonic::transport::Channel;

const CONCURRENCY: usize = 8;

/// `$HAPROXY`, else `haproxy` on PATH.
fn haproxy() -> Option<PathBuf> {
    support::tool("HAPROXY", "haproxy", Some("-v"), "LAMBDAREC_REQUIRE_PROXY")
}

/// One replica's addresses; the process is started (and restarted) on them.
struct Replica {
    grpc: SocketAddr,
    admin: SocketAddr,
    /// Its own snapshot directory (the drain's snapshot is restored at the restart).
    snapshots: PathBuf,
    proc: Option<Proc>,
}

impl Replica {
    fn new(dir: &Path) -> Replica {
        let at = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let grpc = at(free_port());
        Replica {
            grpc,
            admin: at(free_port()),
            snapshots: dir.join(format!("snapshots-{}", grpc.port())),
            proc: None,
        }
    }

    fn start(&mut self, store: &Path, log: &str) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lambdarec"));
        c.args(["--log-format", "json", "serve", "--replica"])
            .args(["--listen", &self.grpc.to_string()])
            .args(["--metrics-listen", &self.admin.to_string()])
            .args(["--device", "cpu", "--threads", "1", "--poll-interval", "0"])
            .args(["--drain-grace", "1.5", "--log", log, "--model", "synthetic"])
            .arg("--store")
            .arg(store)
            .arg("--snapshot-dir")
            .arg(&self.snapshots);
        self.proc = Some(Proc::spawn(c));
    }

    /// Until /healthz answers 200 (model loaded, ready).
    async fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(body) = http_get(self.admin, "/healthz").await
                && body.starts_with("HTTP/1.1 200")
            {
                return;
            }
            let tail = self.proc.as_ref().map(Proc::tail).unwrap_or_default();
            assert!(
                Instant::now() < until,
                "replica {} never ready:\n{tail}",
                self.grpc
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// HAProxy on the shipped config, in front of `replicas`.
fn start_proxy(binary: &Path, bind: SocketAddr, replicas: &[Replica]) -> Proc {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg");
    let mut c = Command::new(binary);
    c.arg("-db").arg("-f").arg(config);
    c.env("LAMBDAREC_PROXY_BIND", bind.to_string());
    for (i, r) in replicas.iter().enumerate() {
        c.env(format!("LAMBDAREC_REPLICA_{}", i + 1), r.grpc.to_string());
        c.env(
            format!("LAMBDAREC_REPLICA_{}_ADMIN", i + 1),
            r.admin.port().to_string(),
        );
    }
    Proc::spawn(c)
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// Until ModelInfo answers through the proxy and the proxy has had time to see every replica up
/// (two health checks 500 ms apart).
async fn wait_proxy(proxy: SocketAddr, proc: &mut Proc) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("haproxy exited with {status}:\n{}", proc.tail());
        }
        if let Ok(c) = Channel::from_shared(format!("http://{proxy}"))
            .unwrap()
            .connect()
            .await
            && RecommenderClient::new(c)
                .model_info(ModelInfoRequest {})
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the proxy never answered:\n{}",
            proc.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

fn load_options(target: SocketAddr, data: &Path) -> LoadOptions {
    LoadOptions {
        target: target.to_string(),
        data: data.to_path_buf(),
        mode: Mode::Closed {
            concurrency: CONCURRENCY,
        },
        connections: 2,
        // The GRU alone: a session's answers then depend on its own events only, so any
        // interleaving of sessions over any replicas gives the single server's answers.
        strategy: Strategy::Gru,
        route_sessions: true,
        retries: 8,
        request_timeout: Duration::from_secs(5),
        max_time: Duration::from_secs(300),
        ..LoadOptions::default()
    }
}

/// Records in the shared log now.
fn logged(log: &dyn EventLog) -> u64 {
    let b = log.bounds().unwrap();
    b.next - b.first
}

/// GetSession routed by the session's id; None when the session is not found.
async fn session_info(c: &mut RecommenderClient<Channel>, id: &str) -> Option<SessionInfo> {
    let mut request = tonic::Request::new(GetSessionRequest {
        session_id: id.to_string(),
    });
    request
        .metadata_mut()
        .insert(SESSION_HEADER, id.parse().unwrap());
    match c.get_session(request).await {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("GetSession {id}: {s}"),
    }
}

/// Nothing failed for good, and the retried attempts are at most a few per session in flight per
/// disruption (the calls in flight on a replica that went away).
fn check_calls(what: &str, got: &LoadReport, disruptions: u64) {
    let retried: u64 = got.retried.values().sum();
    eprintln!(
        "{what}: {} requests in {:.1} s, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, retried {:?}, errors {:?}",
        got.requests,
        got.seconds,
        got.throughput_rps,
        got.p50_ms,
        got.p99_ms,
        got.retried,
        got.errors
    );
    assert_eq!(
        got.errors_total(),
        0,
        "{what}: failed calls {:?}",
        got.errors
    );
    assert_eq!(got.failed, 0, "{what}");
    assert!(
        retried <= 3 * CONCURRENCY as u64 * disruptions,
        "{what}: {retried} retried attempts for {disruptions} disruptions: {:?}",
        got.retried
    );
}

/// Every session the run started holds, on whichever replica the proxy sends it to now, what the
/// single server holds for the same session of the log: every acknowledged event, once. Sessions
/// are started in order (`<tag>/<pass>/<key>` for session number pass * n + key's index), so the
/// first one missing ends the run's sessions. Returns how many were checked.
async fn check_sessions(
    what: &str,
    got: &LoadReport,
    want: &LoadReport,
    proxy: SocketAddr,
    reference: &mut RecommenderClient<Channel>,
    replay: &Replay,
) -> usize {
    let mut through_proxy = RecommenderClient::new(channel(proxy).await);
    let n = replay.sessions.len();
    for i in 0.. {
        let key = &replay.sessions[i % n].key;
        let id = format!("{}/{}/{key}", got.run_tag, i / n);
        let Some(held) = session_info(&mut through_proxy, &id).await else {
            assert!(i >= n, "{what}: session {id} of the first pass is missing");
            return i;
        };
        let one = session_info(reference, &format!("{}/0/{key}", want.run_tag))
            .await
            .unwrap();

        assert_eq!(
            (held.events, &held.recent_items),
            (one.events, &one.recent_items),
            "{what}: session {id} through the proxy vs the single server"
        );
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_haproxy_lose_nothing_when_one_dies_or_all_restart() {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let Some(haproxy) = haproxy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synthetic.tsv");
    let store = dir.path().join("store");
    write(&SyntheticModel {
        n_items: 2000,
        hidden: 32,
        embed_dim: 0,
        sessions: 300,
        seed: 11,
        store: store.to_str().unwrap().to_string(),
        model: "synthetic".into(),
        log: data.clone(),
    })
    .await
    .unwrap();
    let replay = Replay::from_log(&read_log(&data, &ReadOptions::default()).unwrap());
    let total = replay.n_events() as u64;

    // The reference: one server, no proxy, no log.
    let single = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.to_str().unwrap().to_string(),
        model: "synthetic".into(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        poll_interval: None,
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    assert!(single.wait_ready(Duration::from_secs(30)).await);
    let want = load::run(&load_options(single.local_addr(), &data))
        .await
        .unwrap();
    assert_eq!(want.errors_total(), 0, "{:?}", want.errors);
    assert!(
        want.accuracy.events > 500,
        "{} predictions",
        want.accuracy.events
    );
    let mut reference = RecommenderClient::new(channel(single.local_addr()).await);

    let log_url = format!("{}/REPLICAS", nats.url());
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::new(dir.path())).collect();
    for r in &mut replicas {
        r.start(&store, &log_url);
    }
    for r in &replicas {
        r.wait_ready().await;
    }
    let proxy_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut proxy = start_proxy(&haproxy, proxy_addr, &replicas);
    wait_proxy(proxy_addr, &mut proxy).await;
    let shared = lambdarec_eventlog::open(&log_url, &OpenOptions::default())
        .unwrap()
        .unwrap();

    // 1. kill -9 one replica once half the events are in the log.
    let opts = load_options(proxy_addr, &data);
    let run = tokio::spawn(async move { load::run(&opts).await.unwrap() });
    while logged(shared.as_ref()) < total / 2 && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!run.is_finished(), "the run ended before the kill");
    replicas[1].proc.as_mut().unwrap().kill9();
    let killed = run.await.unwrap();
    check_calls("kill -9", &killed, 1);
    // One pass over the log, every prediction answered: the single server's online figures.
    assert_eq!(killed.events_applied, want.events_applied, "events applied");
    assert_eq!(killed.accuracy.events, want.accuracy.events, "predictions");
    assert!(
        (killed.accuracy.recall - want.accuracy.recall).abs() < 1e-9
            && (killed.accuracy.mrr - want.accuracy.mrr).abs() < 1e-9,
        "online Recall/MRR {:.6}/{:.6}, single server {:.6}/{:.6}",
        killed.accuracy.recall,
        killed.accuracy.mrr,
        want.accuracy.recall,
        want.accuracy.mrr
    );
    let checked = check_sessions(
        "kill -9",
        &killed,
        &want,
        proxy_addr,
        &mut reference,
        &replay,
    );
    assert_eq!(checked.await, replay.sessions.len());

    // 2. a rolling restart under load: each replica in turn drains (SIGTERM), stops and comes back,
    // while the log is replayed over and over for long enough.
    replicas[1].start(&store, &log_url);
    replicas[1].wait_ready().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let opts = LoadOptions {
        duration: Some(Duration::from_secs(20)),
        ..load_options(proxy_addr, &data)
    };
    let run = tokio::spawn(async move { load::run(&opts).await.unwrap() });
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in &mut replicas {
        assert!(!run.is_finished(), "the run ended before the restarts did");
        r.proc.as_mut().unwrap().terminate();
        r.start(&store, &log_url);
        r.wait_ready().await;
        // The proxy marks it up after two good checks.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let rolled = run.await.unwrap();
    check_calls("rolling restart", &rolled, 3);
    let checked = check_sessions(
        "rolling restart",
        &rolled,
        &want,
        proxy_addr,
        &mut reference,
        &replay,
    );
    assert!(checked.await > replay.sessions.len(), "more than one pass");
    single.shutdown().await.unwrap();
}
