//! Unit tests of the batcher's planning and serving with a fake [`Backend`] that records every call and
//! folds each session's items into its one-number state, so an answer shows exactly which events it saw.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lambdarec_kernels::{
    Backend, BackendError, Dtype, Event, ModelId, ModelWeights, ScoreQuery, Scored, TopKQuery,
};
use lambdarec_trainer::data::ItemVocab;
use tokio::sync::oneshot;

use lambdarec_eventlog::memory::MemoryLog;
use lambdarec_eventlog::{Bounds, EventLog, LogError, LogReader, LogRecord, Position, RecordKind};

use super::Batcher;
use crate::config::Limits;
use crate::engine::journal::{Journal, LogStatus};
use crate::engine::types::{Envelope, Install, Job};
use crate::engine::{
    EngineConfig, EngineError, EventOutcome, EventRequest, ModelView, RecommendRequest,
    Recommendation, Shared,
};
use crate::metrics::Metrics;

/// What the fake backend was asked to do, in order.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Reset(Vec<u32>),
    Step(Vec<(u32, u32)>),
    TopK(Vec<u32>),
    Score(Vec<u32>),
}

/// A one-wide state per slot: each event folds its item in as `state * 10 + item + 1`, so a state
/// spells the items a session saw. Top-k and score answer with the state itself.
struct Fake {
    states: Vec<f32>,
    calls: Arc<Mutex<Vec<Call>>>,
    fail_next_step: Arc<Mutex<bool>>,
}

impl Backend for Fake {
    fn device(&self) -> String {
        "fake".into()
    }
    fn upload_model(&mut self, _: &ModelWeights, _: Dtype) -> lambdarec_kernels::Result<ModelId> {
        Ok(ModelId(1))
    }
    fn drop_model(&mut self, _: ModelId) {}
    fn alloc_states(&mut self, capacity: usize, _: usize) -> lambdarec_kernels::Result<()> {
        self.states = vec![0.0; capacity];
        Ok(())
    }
    fn states_shape(&self) -> (usize, usize) {
        (self.states.len(), 1)
    }
    fn reset_states(&mut self, slots: &[u32]) -> lambdarec_kernels::Result<()> {
        if !slots.is_empty() {
            self.calls.lock().unwrap().push(Call::Reset(slots.to_vec()));
        }
        slots.iter().for_each(|&s| self.states[s as usize] = 0.0);
        Ok(())
    }
    fn read_state(&mut self, slot: u32) -> lambdarec_kernels::Result<Vec<f32>> {
        Ok(vec![self.states[slot as usize]])
    }
    fn write_state(&mut self, slot: u32, state: &[f32]) -> lambdarec_kernels::Result<()> {
        self.states[slot as usize] = state[0];
        Ok(())
    }
    fn gru_step(&mut self, _: ModelId, events: &[Event]) -> lambdarec_kernels::Result<()> {
        if std::mem::take(&mut *self.fail_next_step.lock().unwrap()) {
            return Err(BackendError::device("the fake device fell over"));
        }
        let pairs = events.iter().map(|e| (e.slot, e.item)).collect();
        self.calls.lock().unwrap().push(Call::Step(pairs));
        for e in events {
            let s = &mut self.states[e.slot as usize];
            *s = *s * 10.0 + e.item as f32 + 1.0;
        }
        Ok(())
    }
    fn score(
        &mut self,
        _: ModelId,
        queries: &[ScoreQuery<'_>],
    ) -> lambdarec_kernels::Result<Vec<Vec<f32>>> {
        let slots = queries.iter().map(|q| q.slot).collect();
        self.calls.lock().unwrap().push(Call::Score(slots));
        let answer = |q: &ScoreQuery<'_>| vec![self.states[q.slot as usize]; q.candidates.len()];
        Ok(queries.iter().map(answer).collect())
    }
    fn top_k(
        &mut self,
        _: ModelId,
        queries: &[TopKQuery<'_>],
    ) -> lambdarec_kernels::Result<Vec<Vec<Scored>>> {
        let slots = queries.iter().map(|q| q.slot).collect();
        self.calls.lock().unwrap().push(Call::TopK(slots));
        let answer = |q: &TopKQuery<'_>| {
            vec![Scored {
                item: 0,
                score: self.states[q.slot as usize],
            }]
        };
        Ok(queries.iter().map(answer).collect())
    }
}

struct Rig {
    batcher: Batcher,
    calls: Arc<Mutex<Vec<Call>>>,
    fail_next_step: Arc<Mutex<bool>>,
    shared: Arc<Shared>,
    view: Arc<ModelView>,
}

/// A batcher on the fake backend with a 5-item model installed and the warm-up calls forgotten.
fn rig() -> Rig {
    rig_with(None)
}

/// As [`rig`], appending to `log` through a journal.
fn rig_with(log: Option<Box<dyn EventLog>>) -> Rig {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let fail_next_step = Arc::new(Mutex::new(false));
    let fake = Fake {
        states: Vec::new(),
        calls: calls.clone(),
        fail_next_step: fail_next_step.clone(),
    };
    let config = EngineConfig {
        max_sessions: 4,
        session_ttl: Duration::from_secs(60),
        max_batch: 8,
        max_wait: Duration::from_micros(100),
        queue_capacity: 64,
        limits: Limits::default(),
        snapshot_interval: None,
        // These tests check the GRU path; new items have their own tests (tests/speed_layer.rs).
        speed: crate::config::SpeedConfig {
            new_items: crate::config::NewItems::Reject,
            ..Default::default()
        },
    };
    let shared = Arc::new(Shared {
        model: RwLock::new(None),
        canary: RwLock::new(None),
        batch_micros: AtomicU64::new(0),
        next_generation: AtomicU64::new(1),
        metrics: Arc::new(Metrics::default()),
        recovering: AtomicBool::new(false),
        log: None,
    });
    let journal = log.map(|log| {
        let status = Arc::new(LogStatus::default());
        Journal::start(log, None, shared.clone(), status, 0, None).unwrap()
    });
    let mut batcher = Batcher::new(Box::new(fake), config, shared.clone(), journal, None);
    let ids: Vec<String> = (0..5).map(|i| format!("i{i}")).collect();
    let view = ModelView {
        generation: 1,
        name: "m".into(),
        version: Arc::from("v1"),
        store: "memory://".into(),
        vocab: ItemVocab::new(ids, vec![1; 5]),
        hidden: 1,
        dtype: Dtype::F32,
        device: "fake".into(),
        manifest_json: "{}".into(),
        weights: lambdarec_trainer::blend::Weights::GRU,
        trend_half_life_s: 3600.0,
        default_strategy: lambdarec_trainer::blend::Strategy::Gru,
        knn: lambdarec_trainer::knn::KnnParams {
            capacity: 1000,
            ..Default::default()
        },
    };
    let weights = ModelWeights {
        n_items: 5,
        embed_dim: 1,
        hidden: 1,
        item_in: None,
        w_ih: vec![0.0; 3],
        w_hh: vec![0.0; 3],
        b_ih: vec![0.0; 3],
        b_hh: vec![0.0; 3],
        item_out: vec![0.0; 5],
        item_bias: vec![0.0; 5],
    };
    let (reply, mut rx) = oneshot::channel();
    let speed = lambdarec_trainer::blend::SpeedLayer::new(
        &Default::default(),
        5,
        Default::default(),
        3600.0,
        lambdarec_trainer::blend::Weights::GRU,
    );
    batcher.begin_install(Install {
        weights,
        view,
        speed: Box::new(speed),
        canary: None,
        reply,
    });
    let view = rx.try_recv().expect("installed").expect("install succeeds");
    calls.lock().unwrap().clear();
    Rig {
        batcher,
        calls,
        fail_next_step,
        shared,
        view,
    }
}

type Rx<T> = oneshot::Receiver<Result<T, EngineError>>;

impl Rig {
    fn event(&self, session: &str, item: &str, seq: Option<u64>) -> (Envelope, Rx<EventOutcome>) {
        let (reply, rx) = oneshot::channel();
        let req = EventRequest {
            session_id: session.into(),
            item_id: item.into(),
            timestamp_ms: Some(1_000),
            client_seq: seq,
            owner: None,
        };
        let item = self.view.resolve(std::slice::from_ref(&req.item_id));
        let job = Job::Event { req, item, reply };
        (
            Envelope {
                deadline: None,
                job,
            },
            rx,
        )
    }

    fn recommend(&self, session: &str) -> (Envelope, Rx<Recommendation>) {
        let (reply, rx) = oneshot::channel();
        let req = RecommendRequest {
            session_id: session.into(),
            k: 1,
            exclude_items: Vec::new(),
            exclude_seen: false,
            inline_events: Vec::new(),
            owner: None,
            strategy: None,
        };
        let job = Job::Recommend {
            exclude: self.view.resolve(&[]),
            inline: self.view.resolve(&[]),
            req,
            reply,
        };
        (
            Envelope {
                deadline: None,
                job,
            },
            rx,
        )
    }

    fn serve(&mut self, batch: Vec<Envelope>) {
        let mut batch = batch;
        self.batcher.serve(&mut batch);
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

fn answer<T>(mut rx: Rx<T>) -> Result<T, EngineError> {
    rx.try_recv().expect("answered")
}

fn state_seen(rx: Rx<Recommendation>) -> f32 {
    answer(rx).expect("recommendation").items[0].score
}

#[test]
fn event_query_event_on_one_session_in_one_batch_runs_in_order() {
    let mut r = rig();
    let (e1, a1) = r.event("a", "i1", None);
    let (q, rec) = r.recommend("a");
    let (e2, a2) = r.event("a", "i2", None);
    r.serve(vec![e1, q, e2]);
    // The query sees the first event only: the second forced a flush between them.
    assert_eq!(state_seen(rec), 2.0);
    assert_eq!(
        r.calls(),
        vec![
            Call::Reset(vec![0]),
            Call::Step(vec![(0, 1)]),
            Call::TopK(vec![0]),
            Call::Step(vec![(0, 2)]),
        ]
    );
    let (a1, a2) = (answer(a1).unwrap(), answer(a2).unwrap());
    assert_eq!((a1.session_events, a2.session_events), (1, 2));
    let (q, rec) = r.recommend("a");
    r.serve(vec![q]);
    assert_eq!(state_seen(rec), 23.0, "both events applied, in order");
}

#[test]
fn independent_sessions_share_one_step_and_one_top_k() {
    let mut r = rig();
    let (e1, _a1) = r.event("a", "i1", None);
    let (e2, _a2) = r.event("b", "i3", None);
    let (q1, rec_a) = r.recommend("a");
    let (q2, rec_b) = r.recommend("b");
    r.serve(vec![e1, e2, q1, q2]);
    assert_eq!(
        r.calls(),
        vec![
            Call::Reset(vec![0, 1]),
            Call::Step(vec![(0, 1), (1, 3)]),
            Call::TopK(vec![0, 1]),
        ]
    );
    assert_eq!((state_seen(rec_a), state_seen(rec_b)), (2.0, 4.0));
}

#[test]
fn a_deadline_that_expires_while_the_batch_gathers_is_not_served() {
    let mut r = rig();
    let (e1, a1) = r.event("a", "i1", None);
    let (mut q, rec) = r.recommend("a");
    q.deadline = Some(Instant::now() + Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(5));
    r.serve(vec![e1, q]);
    assert!(matches!(answer(rec), Err(EngineError::DeadlineExceeded)));
    assert!(
        answer(a1).unwrap().applied.is_ok(),
        "the rest of the batch is served"
    );
    assert_eq!(
        r.calls(),
        vec![Call::Reset(vec![0]), Call::Step(vec![(0, 1)])],
        "no top-k was computed for the expired query"
    );
}

#[test]
fn a_cancelled_caller_costs_no_backend_work() {
    let mut r = rig();
    let (e1, a1) = r.event("a", "i1", None);
    let (q, rec) = r.recommend("a");
    drop(rec);
    drop(a1);
    r.serve(vec![e1, q]);
    assert_eq!(r.calls(), vec![], "neither the event nor the query ran");
    let dropped = r.shared.metrics.dropped_requests.get();
    assert_eq!(dropped, 2);
    let (q, rec) = r.recommend("a");
    r.serve(vec![q]);
    assert_eq!(state_seen(rec), 0.0, "the session was never created");
}

#[test]
fn a_resent_client_seq_is_acknowledged_again_and_applied_once() {
    let mut r = rig();
    let (e1, a1) = r.event("a", "i1", Some(7));
    let (e2, a2) = r.event("a", "i1", Some(7));
    r.serve(vec![e1, e2]);
    let (e3, a3) = r.event("a", "i1", Some(7));
    let (e4, a4) = r.event("a", "i2", Some(8));
    r.serve(vec![e3, e4]);
    let flags: Vec<(bool, u64)> = [a1, a2, a3, a4]
        .into_iter()
        .map(|a| answer(a).unwrap())
        .map(|o| (o.duplicate, o.session_events))
        .collect();
    assert_eq!(flags, vec![(false, 1), (true, 1), (true, 1), (false, 2)]);
    assert_eq!(
        r.calls(),
        vec![
            Call::Reset(vec![0]),
            Call::Step(vec![(0, 1)]),
            Call::Step(vec![(0, 2)]),
        ]
    );
}

#[test]
fn a_failed_state_update_fails_its_acks_and_forgets_the_session() {
    let mut r = rig();
    let (e1, a1) = r.event("a", "i1", None);
    *r.fail_next_step.lock().unwrap() = true;
    r.serve(vec![e1]);
    match answer(a1) {
        Err(e @ EngineError::Backend(_)) => {
            let chain = crate::registry::error_chain(&e);
            assert!(chain.contains("the fake device fell over"), "{chain}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    let (q, rec) = r.recommend("a");
    r.serve(vec![q]);
    assert_eq!(state_seen(rec), 0.0, "the session was dropped");
}

#[test]
fn an_unknown_item_is_rejected_without_touching_the_session() {
    let mut r = rig();
    let (e1, a1) = r.event("a", "nope", None);
    r.serve(vec![e1]);
    let outcome = answer(a1).unwrap();
    assert!(matches!(
        outcome.applied,
        Err(EngineError::UnknownItem { .. })
    ));
    assert_eq!(outcome.session_events, 0);
    assert_eq!(r.calls(), vec![]);
}

/// A memory log whose appends fail once `broken` is set (as a disk whose fsync fails would).
struct Breakable {
    inner: MemoryLog,
    broken: Arc<Mutex<bool>>,
}

impl EventLog for Breakable {
    fn describe(&self) -> String {
        "breakable".into()
    }
    fn append(&mut self, records: &[LogRecord]) -> lambdarec_eventlog::Result<Vec<Position>> {
        if *self.broken.lock().unwrap() {
            return Err(LogError::Io {
                path: "breakable".into(),
                source: std::io::Error::other("fsync failed"),
            });
        }
        self.inner.append(records)
    }
    fn bounds(&self) -> lambdarec_eventlog::Result<Bounds> {
        self.inner.bounds()
    }
    fn reader(&self, from: Position) -> lambdarec_eventlog::Result<Box<dyn LogReader>> {
        self.inner.reader(from)
    }
    fn release_before(&mut self, position: Position) -> lambdarec_eventlog::Result<Position> {
        self.inner.release_before(position)
    }
    fn stored_bytes(&self) -> u64 {
        self.inner.stored_bytes()
    }
}

/// Waits for a held reply (the journal thread releases it).
fn wait<T>(rx: Rx<T>) -> Result<T, EngineError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(rx).expect("answered")
}

#[test]
fn acks_wait_for_the_log_and_a_failed_append_acknowledges_nothing_more() {
    let memory = MemoryLog::default();
    let storage = memory.shared();
    let broken = Arc::new(Mutex::new(false));
    let log = Breakable {
        inner: memory,
        broken: broken.clone(),
    };
    let mut r = rig_with(Some(Box::new(log)));
    let (e1, a1) = r.event("a", "i1", Some(1));
    let (q, rec) = r.recommend("a");
    r.serve(vec![e1, q]);
    // The query is answered at once; the ack only once the record is in the log.
    assert_eq!(state_seen(rec), 2.0);
    let ack = wait(a1).unwrap();
    assert!(ack.applied.is_ok());
    let logged = MemoryLog::new(storage.clone());
    let read = logged.reader(1).unwrap().next_batch(10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].1.kind(), RecordKind::Event);
    assert_eq!(
        (read[0].1.session_id.as_str(), read[0].1.item_id.as_str()),
        ("a", "i1")
    );
    assert_eq!(read[0].1.client_seq, Some(1));

    *broken.lock().unwrap() = true;
    let (e2, a2) = r.event("a", "i2", Some(2));
    r.serve(vec![e2]);
    match wait(a2) {
        Err(EngineError::LogFailed(why)) => assert!(why.contains("fsync failed"), "{why}"),
        other => panic!("expected LogFailed, got {other:?}"),
    }
    // Healed or not, the log is never trusted again: later changes fail too.
    *broken.lock().unwrap() = false;
    let (e3, a3) = r.event("b", "i3", Some(1));
    r.serve(vec![e3]);
    assert!(matches!(wait(a3), Err(EngineError::LogFailed(_))));
    assert_eq!(
        logged.bounds().unwrap().len(),
        1,
        "nothing after the failure was logged"
    );
}
