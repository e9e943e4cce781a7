//! What serving as a replica costs (`serve --replica`, docs/replicas.md), in-process on loopback with
//! a real nats-server (JetStream) and a synthetic model (10k items, hidden 64, CPU backend):
//!
//! - `held/single`: Recommend for a session the server holds, a plain server on its own JetStream
//!   log (the baseline);
//! - `held/replica`: the same on a replica, which first asks the shared log whether another replica
//!   wrote to the session (one round trip);
//! - `moved/L`: the first Recommend on replica B for a session whose L events went to replica A:
//!   B reads the L records from the log and steps them before it answers (a failover's cost per
//!   session).
//!
//! One caller at a time, so each figure is one call's latency. Every figure is printed beside its
//! ratio to `held/single`, measured in the same process.
//!
//! `NATS_SERVER=... cargo bench -p lambdarec-benches --bench handoff` (skipped without nats-server).

use std::time::{Duration, Instant};

use lambdarec_eventlog::testing::NatsServer;
use lambdarec_proto::v1;
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use lambdarec_server::load::synthetic::{SyntheticModel, write};
use lambdarec_server::{DeviceChoice, LogConfig, RunningServer, ServeConfig};
use tonic::transport::Channel;

const ITEMS: usize = 10_000;
const MOVED: [usize; 3] = [1, 10, 50];

async fn start(
    store: &str,
    log: String,
    replica: bool,
) -> (RunningServer, RecommenderClient<Channel>) {
    let server = lambdarec_server::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.to_string(),
        model: "synthetic".into(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        poll_interval: None,
        log: LogConfig::Url(log),
        replica,
        snapshot_dir: None,
        ..ServeConfig::default()
    })
    .await
    .expect("start a server");
    assert!(server.wait_ready(Duration::from_secs(60)).await);
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (server, RecommenderClient::new(channel))
}

async fn events(c: &mut RecommenderClient<Channel>, session: &str, n: usize, salt: usize) {
    let events: Vec<v1::SessionEvent> = (0..n)
        .map(|i| v1::SessionEvent {
            session_id: session.to_string(),
            item_id: ((salt * 7919 + i * 31) % ITEMS + 1).to_string(),
            client_seq: Some(i as u64 + 1),
            ..Default::default()
        })
        .collect();
    let mut acks = c
        .stream_events(futures::stream::iter(events))
        .await
        .unwrap()
        .into_inner();
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(ack.applied, "{ack:?}");
    }
}

async fn recommend(c: &mut RecommenderClient<Channel>, session: &str) -> Duration {
    let t0 = Instant::now();
    let r = c
        .recommend(v1::RecommendRequest {
            session_id: session.to_string(),
            k: 20,
            strategy: v1::Strategy::Gru.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let took = t0.elapsed();
    assert_eq!(r.items.len(), 20);
    took
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99))
}

fn main() {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("memory://bench-handoff-{}", std::process::id());
    rt.block_on(write(&SyntheticModel {
        n_items: ITEMS,
        hidden: 64,
        embed_dim: 0,
        sessions: 10,
        seed: 3,
        store: store.clone(),
        model: "synthetic".into(),
        log: dir.path().join("synthetic.tsv"),
    }))
    .unwrap();
    let shared = format!("{}/HANDOFF", nats.url());
    let (single, mut cs) = rt.block_on(start(&store, format!("{}/SINGLE", nats.url()), false));
    let (a, mut ca) = rt.block_on(start(&store, shared.clone(), true));
    let (b, mut cb) = rt.block_on(start(&store, shared, true));

    let n: usize = std::env::var("LAMBDAREC_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    println!(
        "handoff: {n} calls per case, one at a time; load {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut rows: Vec<(String, Duration, Duration)> = Vec::new();
    rt.block_on(async {
        // Sessions held, with ten events each, on the plain server and on replica B.
        for s in 0..16 {
            events(&mut cs, &format!("held-{s}"), 10, s).await;
            events(&mut cb, &format!("held-{s}"), 10, s).await;
        }
        for (name, c) in [("held/single", &mut cs), ("held/replica", &mut cb)] {
            for i in 0..n / 10 {
                recommend(c, &format!("held-{}", i % 16)).await; // warm-up
            }
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                lat.push(recommend(c, &format!("held-{}", i % 16)).await);
            }
            let (p50, p99) = percentiles(lat);
            rows.push((name.to_string(), p50, p99));
        }
        for len in MOVED {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let session = format!("moved-{len}-{i}");
                events(&mut ca, &session, len, i).await;
                lat.push(recommend(&mut cb, &session).await);
            }
            let (p50, p99) = percentiles(lat);
            rows.push((format!("moved/{len}"), p50, p99));
        }
    });
    let (base50, base99) = (rows[0].1, rows[0].2);
    for (name, p50, p99) in &rows {
        println!(
            "{name:<14} p50 {:>8.3} ms ({:>5.2}x)  p99 {:>8.3} ms ({:>5.2}x)",
            p50.as_secs_f64() * 1e3,
            p50.as_secs_f64() / base50.as_secs_f64(),
            p99.as_secs_f64() * 1e3,
            p99.as_secs_f64() / base99.as_secs_f64()
        );
    }
    rt.block_on(async {
        for s in [single, a, b] {
            s.shutdown().await.unwrap();
        }
    });
}
