//! The gRPC server on loopback with a small GRU4Rec model (synthetic sample, 1000 items, hidden 64,
//! CPU backend): Recommend (k = 20, exclude_seen) throughput and p50/p99 at 1 and 16 concurrent
//! callers, each as a ratio to an empty unary Ping measured in the same process at the same
//! concurrency (Ping is the framework's own ceiling: HTTP/2 + protobuf + tonic, no engine).
//!
//! `cargo bench -p lambdarec-benches --bench server`; `LAMBDAREC_BENCH_MAX_WAIT_US` sets the
//! batcher's --max-wait-us (default 200), `LAMBDAREC_BENCH_REQUESTS` the requests per percentile
//! pass (default 4000). Client and server share the machine (and its cores).

mod common;

use std::time::{Duration, Instant};

use common::loadavg;
use criterion::{Criterion, Throughput};
use lambdarec_proto::v1;
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use lambdarec_server::{DeviceChoice, ServeConfig};
use lambdarec_trainer::pipeline::{EvalOptions, TrainJob, run_train};
use lambdarec_trainer::train::TrainConfig;
use tonic::transport::Channel;

const SESSIONS: usize = 256;
const CONCURRENCY: [usize; 2] = [1, 16];

#[derive(Clone, Copy, PartialEq)]
enum Call {
    Ping,
    Recommend,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::Recommend => "recommend-k20",
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Trains the small model into an in-memory store and starts the server on a free loopback port.
async fn setup() -> (lambdarec_server::RunningServer, RecommenderClient<Channel>) {
    let store = format!("memory://bench-server-{}", std::process::id());
    let config = TrainConfig {
        hidden: 64,
        epochs: 1,
        n_sample: 64,
        ..TrainConfig::default()
    };
    let job = TrainJob {
        eval: EvalOptions {
            threads: Some(1),
            ..EvalOptions::default()
        },
        ..TrainJob::new(None, &store, "bench", config)
    };
    let trained = run_train(&job, |_, _, _| {}, |_| {})
        .await
        .expect("training the bench model");
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store,
        model: "bench".to_string(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        max_wait: Duration::from_micros(env_or("LAMBDAREC_BENCH_MAX_WAIT_US", 200)),
        poll_interval: None,
        ..ServeConfig::default()
    };
    let server = lambdarec_server::start(config)
        .await
        .expect("starting the server");
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RecommenderClient::new(channel);
    // Sessions with five events each, so Recommend runs a real state and exclusion list.
    let ids = &trained.dataset.vocab.ids;
    let events: Vec<v1::SessionEvent> = (0..SESSIONS * 5)
        .map(|i| v1::SessionEvent {
            session_id: format!("bench-{}", i % SESSIONS),
            item_id: ids[(i * 31) % ids.len()].clone(),
            ..Default::default()
        })
        .collect();
    let mut acks = client
        .stream_events(futures::stream::iter(events))
        .await
        .unwrap()
        .into_inner();
    while let Some(ack) = acks.message().await.unwrap() {
        assert!(ack.applied, "{ack:?}");
    }
    (server, client)
}

async fn one(client: &mut RecommenderClient<Channel>, call: Call, i: usize) {
    match call {
        Call::Ping => {
            client.ping(v1::PingRequest {}).await.unwrap();
        }
        Call::Recommend => {
            let req = v1::RecommendRequest {
                session_id: format!("bench-{}", i % SESSIONS),
                k: 20,
                ..Default::default()
            };
            let r = client.recommend(req).await.unwrap().into_inner();
            assert_eq!(r.items.len(), 20);
        }
    }
}

/// `n` calls spread over `concurrency` callers; returns the wall time and every call's latency.
async fn run(
    client: &RecommenderClient<Channel>,
    call: Call,
    concurrency: usize,
    n: usize,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut c = client.clone();
        let share = n / concurrency + usize::from(t < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(share);
            for i in 0..share {
                let t0 = Instant::now();
                one(&mut c, call, t * 7919 + i).await;
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (started.elapsed(), all)
}

struct Row {
    call: Call,
    concurrency: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(setup());
    let device = "cpu";

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group(format!("server/{device}"));
    for concurrency in CONCURRENCY {
        group.throughput(Throughput::Elements(1));
        for call in [Call::Ping, Call::Recommend] {
            group.bench_function(format!("{}/c{concurrency}", call.name()), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(run(&client, call, concurrency, iters as usize))
                        .0
                });
            });
        }
    }
    group.finish();

    // Percentiles need every call's latency, which criterion does not keep: one more pass per case.
    let n = env_or("LAMBDAREC_BENCH_REQUESTS", 4000usize);
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        for call in [Call::Ping, Call::Recommend] {
            let (wall, mut lat) = rt.block_on(run(&client, call, concurrency, n));
            lat.sort();
            let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
            rows.push(Row {
                call,
                concurrency,
                per_sec: n as f64 / wall.as_secs_f64(),
                p50: pct(0.50),
                p99: pct(0.99),
            });
        }
    }
    println!(
        "\nserver/{device} loopback, {n} requests per case, load average {}",
        loadavg()
    );
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>14} {:>12}",
        "case", "req/s", "p50 µs", "p99 µs", "req/s vs ping", "p50 vs ping"
    );
    for r in &rows {
        let ping = rows
            .iter()
            .find(|p| p.call == Call::Ping && p.concurrency == r.concurrency)
            .unwrap();
        println!(
            "{:<22} {:>12.0} {:>10.0} {:>10.0} {:>14.2} {:>12.2}",
            format!("{}/c{}", r.call.name(), r.concurrency),
            r.per_sec,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.per_sec / ping.per_sec,
            r.p50.as_secs_f64() / ping.p50.as_secs_f64(),
        );
    }
    rt.block_on(server.shutdown()).unwrap();
}
