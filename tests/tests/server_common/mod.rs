//! Shared fixtures of the server_* tests: one small GRU4Rec bundle trained once per test binary, fresh
//! in-memory stores holding it, a loopback server config, and the offline reference (the CPU backend
//! driven exactly like `trainer::eval::evaluate_model`).
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::OnceLock;
use std::time::Duration;

use lambdarec_kernels::{
    Backend, CpuBackend, Dtype, Event, ModelId, ModelWeights, ScoreQuery, Scored, TopKQuery,
};
use lambdarec_proto::bundle::{Bundle, Store};
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use lambdarec_server::{DeviceChoice, ServeConfig};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::pipeline::{EvalOptions, TrainJob, load_model, run_train};
use lambdarec_trainer::train::TrainConfig;
use tonic::transport::Channel;

pub const MODEL: &str = "srv";

/// The trained model and the test sessions it was evaluated on.
pub struct Base {
    pub bundle: Bundle,
    pub weights: ModelWeights,
    /// Item index → external id.
    pub ids: Vec<String>,
    /// Test sessions as item indices.
    pub sessions: Vec<Vec<u32>>,
}

/// Trains once per process (hidden 24, one epoch, 64 sampled negatives: a few seconds).
pub fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        // Its own thread and runtime: the caller may be inside a test's runtime.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(train_base())
        })
        .join()
        .unwrap()
    })
}

async fn train_base() -> Base {
    let dir = tempfile::tempdir().unwrap();
    let log = generate(&SyntheticOptions {
        n_items: 300,
        n_sessions: 2_000,
        seed: 7,
        ..SyntheticOptions::default()
    });
    let path = dir.path().join("synthetic.tsv");
    write_tsv(&log, &path).unwrap();
    let store = format!("memory://server-base-{}", std::process::id());
    let config = TrainConfig {
        hidden: 24,
        epochs: 1,
        n_sample: 64,
        seed: 3,
        ..TrainConfig::default()
    };
    let job = TrainJob {
        eval: EvalOptions {
            threads: Some(1),
            ..EvalOptions::default()
        },
        // No blend fit: these tests serve the GRU (the speed layer has its own, tests/speed_layer.rs).
        blend_validation: 0.0,
        ..TrainJob::new(Some(path), &store, MODEL, config)
    };
    let out = run_train(&job, |_, _, _| {}, |_| {}).await.unwrap();
    let loaded = load_model(&store, MODEL, None).await.unwrap();
    let test = &out.dataset.test;
    let sessions = (0..test.len())
        .map(|i| test.session(i).to_vec())
        .filter(|s| s.len() >= 2)
        .collect();
    Base {
        bundle: loaded.bundle,
        weights: loaded.weights,
        ids: loaded.vocab.ids.clone(),
        sessions,
    }
}

/// A new in-memory store named after `tag` holding the base bundle as its LATEST; returns (url, version).
pub async fn fresh_store(tag: &str) -> (String, String) {
    let url = format!("memory://server-{tag}-{}", std::process::id());
    let version = publish(&url, base().bundle.clone()).await;
    (url, version)
}

/// Writes `bundle` as a new version (and LATEST) of the test model.
pub async fn publish(url: &str, mut bundle: Bundle) -> String {
    Store::open(url)
        .unwrap()
        .write_bundle(MODEL, &mut bundle)
        .await
        .unwrap()
}

/// The base bundle with other weights (dims taken from `w`).
pub fn bundle_with(w: &ModelWeights) -> Bundle {
    let mut b = base().bundle.clone();
    let (e, h) = (w.embed_dim, w.hidden);
    b.tensors = lambdarec_trainer::export::weight_tensors(w);
    b.manifest.dims.hidden = h as u32;
    b.manifest.dims.embed_dim = e as u32;
    b.manifest.dims.tied_embedding = w.item_in.is_none();
    b
}

/// A loopback server on a free port, CPU backend with one thread, no polling, refusing items the
/// bundle does not know (the tests of the GRU path check that contract; tests/speed_layer.rs takes
/// new items).
pub fn config(store: &str) -> ServeConfig {
    ServeConfig {
        speed: lambdarec_server::SpeedConfig {
            new_items: lambdarec_server::NewItems::Reject,
            ..Default::default()
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.to_string(),
        model: MODEL.to_string(),
        device: DeviceChoice::Cpu,
        threads: Some(1),
        max_sessions: 1000,
        poll_interval: None,
        ..ServeConfig::default()
    }
}

pub async fn client(addr: std::net::SocketAddr) -> RecommenderClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    RecommenderClient::new(channel).max_decoding_message_size(64 << 20)
}

/// The offline evaluator's call sequence on the CPU backend: reset the slot, one `gru_step` per
/// event, `top_k` without exclusions.
pub struct Offline {
    backend: CpuBackend,
    model: ModelId,
}

impl Offline {
    pub fn new(w: &ModelWeights) -> Self {
        let mut backend = CpuBackend::new(Some(1)).unwrap();
        let model = backend.upload_model(w, Dtype::F32).unwrap();
        backend.alloc_states(1, w.hidden).unwrap();
        Offline { backend, model }
    }

    /// Feeds a session from a zero state.
    pub fn session(&mut self, items: &[u32]) {
        self.backend.reset_states(&[0]).unwrap();
        for &item in items {
            self.backend
                .gru_step(self.model, &[Event { slot: 0, item }])
                .unwrap();
        }
    }

    pub fn top_k(&mut self, k: usize) -> Vec<Scored> {
        let q = TopKQuery {
            slot: 0,
            k,
            exclude: &[],
        };
        self.backend.top_k(self.model, &[q]).unwrap().remove(0)
    }

    pub fn score(&mut self, candidates: &[u32]) -> Vec<f32> {
        let q = ScoreQuery {
            slot: 0,
            candidates,
        };
        self.backend.score(self.model, &[q]).unwrap().remove(0)
    }
}

/// Random tied-embedding weights over the base catalogue, of any hidden size.
pub fn random_weights(hidden: usize, seed: u64) -> ModelWeights {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = base().ids.len();
    let mut v = |len: usize| {
        (0..len)
            .map(|_| rng.random::<f32>() - 0.5)
            .collect::<Vec<f32>>()
    };
    ModelWeights {
        n_items: n,
        embed_dim: hidden,
        hidden,
        item_in: None,
        w_ih: v(3 * hidden * hidden),
        w_hh: v(3 * hidden * hidden),
        b_ih: v(3 * hidden),
        b_hh: v(3 * hidden),
        item_out: v(n * hidden),
        item_bias: v(n),
    }
}

/// Sends `events` on one StreamEvents call and returns their acks (one per event, in order).
pub async fn send_events(
    c: &mut RecommenderClient<Channel>,
    events: Vec<lambdarec_proto::v1::SessionEvent>,
) -> Vec<lambdarec_proto::v1::EventAck> {
    use tokio_stream::StreamExt;
    let n = events.len();
    let mut acks = c
        .stream_events(tokio_stream::iter(events))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(ack) = acks.next().await {
        out.push(ack.unwrap());
    }
    assert_eq!(out.len(), n);
    out
}

/// Within 1e-4 relative (absolute near zero).
pub fn assert_close(got: f32, want: f32, what: &str) {
    let tol = 1e-4 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

/// One HTTP/1.1 GET on a fresh connection (`Connection: close`, so the server ends the response by
/// closing); the whole response, head and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
        .await
        .expect("the HTTP response ends")
        .unwrap();
    out
}

/// What a server holds for a session: (events, recent items, top-10 (item, score)).
pub type View = (u64, Vec<String>, Vec<(String, f32)>);

pub async fn view_of(c: &mut RecommenderClient<Channel>, session: &str) -> Option<View> {
    let info = match c
        .get_session(lambdarec_proto::v1::GetSessionRequest {
            session_id: session.into(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return None,
        Err(s) => panic!("GetSession {session}: {s}"),
    };
    let rec = c
        .recommend(lambdarec_proto::v1::RecommendRequest {
            session_id: session.into(),
            k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let top = rec
        .items
        .into_iter()
        .map(|i| (i.item_id, i.score))
        .collect();
    Some((info.events, info.recent_items, top))
}

pub async fn views(
    c: &mut RecommenderClient<Channel>,
    ids: &[String],
) -> std::collections::HashMap<String, Option<View>> {
    let mut out = std::collections::HashMap::new();
    for id in ids {
        out.insert(id.clone(), view_of(c, id).await);
    }
    out
}

/// Same events and recent items; the same top-10 up to float noise (an item may trade places only
/// with one of an equal score).
pub fn assert_same(
    got: &std::collections::HashMap<String, Option<View>>,
    want: &std::collections::HashMap<String, Option<View>>,
) {
    for (id, w) in want {
        let g = &got[id];
        match (g, w) {
            (None, None) => {}
            (Some((ge, gr, gt)), Some((we, wr, wt))) => {
                assert_eq!((ge, gr), (we, wr), "session {id}: events and recent items");
                assert_eq!(gt.len(), wt.len(), "session {id}");
                for (rank, (a, b)) in gt.iter().zip(wt).enumerate() {
                    let close = (a.1 - b.1).abs() <= 1e-4 * b.1.abs().max(1.0);
                    assert!(
                        close && (a.0 == b.0 || (a.1 - b.1).abs() <= 1e-6),
                        "session {id} rank {rank}: {a:?} vs {b:?}"
                    );
                }
            }
            _ => panic!("session {id}: present on one server only: {g:?} vs {w:?}"),
        }
    }
}

/// Starts a server and waits until it is ready (model loaded, recovery done).
pub async fn start(config: ServeConfig) -> lambdarec_server::RunningServer {
    let server = lambdarec_server::start(config).await.unwrap();
    assert!(
        server.wait_ready(Duration::from_secs(30)).await,
        "server not ready: {:?}",
        server.not_serving_reason()
    );
    server
}
