//! Request conversion and validation: a fuzzed protobuf message decoded as one of the service's
//! request types, converted as the handlers do (`lambdarec_server::fuzzing`), and submitted to a
//! real engine serving a tiny model on the CPU, with the answer or error converted back.
//!
//! Input: a kind byte (which request), then optionally a `grpc-timeout` header value and
//! `lambdarec_fuzz::SEP`, then the message bytes. Kind 6 is a stream: length-delimited events.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lambdarec_kernels::Dtype;
use lambdarec_proto::bundle::Store;
use lambdarec_proto::v1;
use lambdarec_server::engine::{Engine, EngineConfig, ModelView};
use lambdarec_server::fuzzing as convert;
use lambdarec_server::metrics::Metrics;
use lambdarec_server::{DeviceChoice, Limits, SpeedConfig};
use lambdarec_trainer::blend::{SpeedLayer, Strategy, Weights};
use lambdarec_trainer::knn::KnnParams;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

const MODEL: &str = "m";
/// Events of one fuzzed stream submitted before their acks are awaited.
const MAX_STREAM_EVENTS: usize = 64;

struct Served {
    engine: Engine,
    store: Store,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| lambdarec_fuzz::runtime().block_on(start()))
}

async fn start() -> Served {
    let config = EngineConfig {
        max_sessions: 64,
        session_ttl: Duration::from_secs(3600),
        max_batch: 16,
        max_wait: Duration::from_micros(50),
        queue_capacity: 256,
        limits: Limits::default(),
        snapshot_interval: None,
        // New items are taken (up to a few, so the fuzzer meets the limit too).
        speed: SpeedConfig {
            max_new_items: 8,
            ..SpeedConfig::default()
        },
    };
    let open = || lambdarec_server::device::open_backend(DeviceChoice::Cpu, Some(1));
    let engine = Engine::start(config, open, Arc::new(Metrics::new()), None).expect("an engine");
    let url = "memory://fuzz-request";
    let store = Store::open(url).expect("a memory store");
    let mut bundle = lambdarec_fuzz::tiny_bundle();
    let version = store
        .write_bundle(MODEL, &mut bundle)
        .await
        .expect("write the bundle");
    let (weights, vocab) = lambdarec_trainer::export::from_bundle(&bundle).expect("a valid bundle");
    // The speed layer seeded with a few sessions, blended with weight on every scorer.
    let mut seeds = lambdarec_trainer::data::Sessions::default();
    for (s, items) in [[0u32, 1, 2], [2, 3, 4], [5, 0, 11]].iter().enumerate() {
        seeds.items.extend(items);
        seeds.times.extend([1.7e9 + s as f64; 3]);
        seeds.offsets.push(seeds.items.len());
        seeds.keys.push(s.to_string());
    }
    let blend = Weights::new(0.5, 0.2);
    let speed = SpeedLayer::new(&seeds, weights.n_items, KnnParams::default(), 60.0, blend);
    let view = ModelView {
        generation: 0,
        name: MODEL.to_string(),
        version: Arc::from(version.as_str()),
        store: url.to_string(),
        vocab,
        hidden: weights.hidden,
        dtype: Dtype::F32,
        device: String::new(),
        manifest_json: "{}".to_string(),
        weights: blend,
        trend_half_life_s: 60.0,
        default_strategy: Strategy::Blend,
        knn: KnnParams::default(),
    };
    engine
        .install(weights, view, speed)
        .await
        .expect("install the model");
    Served { engine, store }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let p = lambdarec_fuzz::parts(rest, 2);
    let (timeout, msg) = match p[..] {
        [timeout, msg] => (Some(timeout), msg),
        _ => (None, p[0]),
    };
    let mut metadata = MetadataMap::new();
    if let Some(value) = timeout.and_then(|t| MetadataValue::try_from(t).ok()) {
        metadata.insert("grpc-timeout", value);
    }
    let deadline = convert::deadline(&metadata);
    let s = served();
    lambdarec_fuzz::runtime().block_on(async {
        let engine = &s.engine;
        match kind % 8 {
            0 => {
                let Ok(r) = v1::RecommendRequest::decode(msg) else {
                    return;
                };
                let answer = match convert::recommend_request(r, engine.limits()) {
                    Ok(req) => engine.recommend(req, deadline).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(a) => drop(convert::recommend_response(a)),
                    Err(e) => drop(Status::from(e)),
                }
            }
            1 => {
                let Ok(r) = v1::ScoreRequest::decode(msg) else {
                    return;
                };
                let answer = match convert::score_request(r) {
                    Ok(req) => engine.score(req, deadline).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(a) => drop(convert::score_response(a)),
                    Err(e) => drop(Status::from(e)),
                }
            }
            2 => {
                let Ok(e) = v1::SessionEvent::decode(msg) else {
                    return;
                };
                let req = convert::event_request(e);
                let (id, seq) = (req.session_id.clone(), req.client_seq);
                let outcome = engine.event(req, deadline).await;
                drop(convert::event_ack(
                    id,
                    seq,
                    outcome,
                    engine.model().as_deref(),
                ));
            }
            3 => {
                let Ok(r) = v1::GetSessionRequest::decode(msg) else {
                    return;
                };
                let id = r.session_id;
                match engine.get_session(id.clone(), deadline).await {
                    Ok(snap) => drop(convert::session_info(id, snap)),
                    Err(e) => drop(Status::from(e)),
                }
            }
            4 => {
                let Ok(r) = v1::DeleteSessionRequest::decode(msg) else {
                    return;
                };
                if let Err(e) = engine.delete_session(r.session_id, deadline).await {
                    drop(Status::from(e));
                }
            }
            5 => {
                // Reload reads the named version from the store (names are validated first).
                let Ok(r) = v1::ReloadRequest::decode(msg) else {
                    return;
                };
                if let Ok(bundle) = s.store.read_bundle(MODEL, r.version.as_deref()).await {
                    lambdarec_trainer::export::from_bundle(&bundle)
                        .expect("the stored bundle converts");
                }
            }
            6 => stream(engine, msg, deadline).await,
            _ => {
                let _ = v1::ModelInfoRequest::decode(msg);
                let _ = v1::PingRequest::decode(msg);
            }
        }
    });
});

/// A StreamEvents call: events submitted in order, acks awaited in the same order.
async fn stream(engine: &Engine, mut msg: &[u8], deadline: Option<std::time::Instant>) {
    let mut pending = Vec::new();
    while !msg.is_empty() && pending.len() < MAX_STREAM_EVENTS {
        let Ok(e) = v1::SessionEvent::decode_length_delimited(&mut msg) else {
            break;
        };
        let req = convert::event_request(e);
        let (id, seq) = (req.session_id.clone(), req.client_seq);
        pending.push((id, seq, engine.event(req, deadline)));
    }
    for (id, seq, outcome) in pending {
        let outcome = outcome.await;
        drop(convert::event_ack(
            id,
            seq,
            outcome,
            engine.model().as_deref(),
        ));
    }
}
