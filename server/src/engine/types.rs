//! The engine's vocabulary: the served model's view, requests and answers, errors, and the messages
//! the handle sends to the batcher thread.

use std::sync::Arc;
use std::time::Instant;

use lambdarec_eventlog::{LogRecord, Position};

use super::snapshot::LoadedSnapshot;
use lambdarec_kernels::{BackendError, Dtype, ModelWeights, Scored};
use lambdarec_trainer::blend::{SpeedLayer, Strategy, Weights};
use lambdarec_trainer::data::ItemVocab;
use tokio::sync::oneshot;

/// A model version as the engine serves it: what handlers need to resolve and name items.
#[derive(Debug)]
pub struct ModelView {
    /// Increases with every install; item indices resolved under one generation are valid only in it.
    pub generation: u64,
    pub name: String,
    pub version: Arc<str>,
    pub store: String,
    pub vocab: ItemVocab,
    pub hidden: usize,
    pub dtype: Dtype,
    pub device: String,
    /// The bundle's manifest as JSON.
    pub manifest_json: String,
    /// The blend's weights (the GRU alone when the bundle has no blend).
    pub weights: Weights,
    /// Trending's half-life in seconds, as served.
    pub trend_half_life_s: f64,
    /// What a request naming no strategy gets: the blend when the bundle has one, else the GRU
    /// (`--strategy` overrides it).
    pub default_strategy: Strategy,
    /// The kNN index as served: its bound (`--knn-sessions`), V-SKNN's neighbours and sample.
    pub knn: lambdarec_trainer::knn::KnnParams,
}

impl ModelView {
    pub fn n_items(&self) -> usize {
        self.vocab.len()
    }

    /// External id of item index `i`.
    pub fn item_id(&self, i: u32) -> &str {
        &self.vocab.ids[i as usize]
    }

    pub(super) fn resolve(&self, ids: &[String]) -> Resolved {
        Resolved {
            generation: self.generation,
            items: ids.iter().map(|id| self.vocab.index(id)).collect(),
        }
    }
}

/// Item ids resolved to indices under one model generation (None: unknown to that model). The
/// batcher resolves again if a different model is serving when the request is executed.
#[derive(Debug)]
pub(super) struct Resolved {
    pub(super) generation: u64,
    pub(super) items: Vec<Option<u32>>,
}

impl Resolved {
    pub(super) fn under(self, view: &ModelView, ids: &[String]) -> Vec<Option<u32>> {
        if self.generation == view.generation {
            self.items
        } else {
            view.resolve(ids).items
        }
    }
}

/// Why a request was not served. Mapped to gRPC codes in `status.rs` only. Cloneable (sources are
/// shared) so that one failure can answer every request it affects.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    #[error("session_id is empty")]
    EmptySessionId,
    #[error("strategy {0} is not one this server knows (unset, GRU, KNN, TRENDING or BLEND)")]
    BadStrategy(i32),
    #[error("k must be between 1 and {max}, got {got}")]
    BadK { got: usize, max: usize },
    #[error("session_id is {len} bytes long; the limit is {max}")]
    SessionIdTooLong { len: usize, max: usize },
    #[error("{what}: {got} given; the limit is {max}")]
    TooMany {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error(
        "inline_events has item ids the model {version} does not know: {ids:?}; nothing was applied"
    )]
    UnknownInlineItems { ids: Vec<String>, version: Arc<str> },
    #[error("item {id:?} is not in the catalogue of model {version}")]
    UnknownItem { id: String, version: Arc<str> },
    #[error("new item {id:?} not taken: {reason}")]
    NewItemRejected { id: String, reason: String },
    #[error("session {0:?} not found (never seen, expired or deleted)")]
    SessionNotFound(String),
    #[error(
        "token {owner:?} already has {limit} live sessions, the server's --max-sessions-per-token; \
         delete sessions it no longer needs (DeleteSession) or wait for them to expire"
    )]
    SessionLimit { owner: Arc<str>, limit: usize },
    #[error(
        "overloaded: {queued} requests are queued (capacity {capacity}); retry in {retry_after_ms} ms"
    )]
    Overloaded {
        queued: usize,
        capacity: usize,
        retry_after_ms: u64,
    },
    #[error("deadline exceeded before the request was served")]
    DeadlineExceeded,
    #[error("no model is loaded yet")]
    NoModel,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the server is recovering its sessions from the event log; retry shortly")]
    Recovering,
    /// The event log failed; nothing more is acknowledged until a restart recovers from the log.
    #[error("not acknowledged: {0}")]
    LogFailed(String),
    #[error("model install superseded by a newer one")]
    Superseded,
    #[error("canary refused: {0}")]
    Canary(String),
    /// Shared so that one device failure can fail every request of its batch with its cause kept.
    #[error("compute backend failed")]
    Backend(#[source] Arc<BackendError>),
}

impl From<BackendError> for EngineError {
    fn from(e: BackendError) -> Self {
        EngineError::Backend(Arc::new(e))
    }
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// One click to apply.
#[derive(Clone, Debug)]
pub struct EventRequest {
    pub session_id: String,
    pub item_id: String,
    pub timestamp_ms: Option<i64>,
    /// The client's sequence number: (session_id, client_seq) identifies the event for exactly-once
    /// application.
    pub client_seq: Option<u64>,
    /// The name of the token that sent it: a session it creates counts against that token's
    /// `--max-sessions-per-token`. None: no token (counted against nobody).
    pub owner: Option<Arc<str>>,
}

/// The outcome of one event: `applied` is `Err` for a rejected event (the session is unchanged).
#[derive(Debug)]
pub struct EventOutcome {
    pub applied: Result<(), EngineError>,
    /// The event was a re-send of one already applied (same session and client_seq): acknowledged
    /// again, not applied twice.
    pub duplicate: bool,
    /// Events applied to the session so far (0 for a rejected event on a missing session).
    pub session_events: u64,
    pub model_version: Arc<str>,
}

#[derive(Clone, Debug)]
pub struct RecommendRequest {
    pub session_id: String,
    /// Within 1..=max_k (checked by the caller's conversion, see `Limits`).
    pub k: usize,
    pub exclude_items: Vec<String>,
    pub exclude_seen: bool,
    pub inline_events: Vec<String>,
    /// As [`EventRequest::owner`], for a session the inline events create.
    pub owner: Option<Arc<str>>,
    /// None: the server's default.
    pub strategy: Option<Strategy>,
}

#[derive(Debug)]
pub struct Recommendation {
    pub items: Vec<Scored>,
    /// Ids of the new items (indices past the catalogue) among `items`.
    pub new_items: Vec<(u32, String)>,
    pub model: Arc<ModelView>,
    pub session_events: u64,
}

impl Recommendation {
    /// The external id of one of its items.
    pub fn item_id(&self, i: u32) -> &str {
        if (i as usize) < self.model.n_items() {
            self.model.item_id(i)
        } else {
            self.new_items
                .iter()
                .find(|(j, _)| *j == i)
                .map_or("", |(_, id)| id.as_str())
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScoreRequest {
    pub session_id: String,
    pub candidates: Vec<String>,
    /// None: the server's default.
    pub strategy: Option<Strategy>,
}

#[derive(Debug)]
pub struct ScoreOutcome {
    /// The request's candidates, handed back so the caller can name unknown ones without a copy.
    pub candidates: Vec<String>,
    /// Per candidate, its index (None: unknown).
    pub items: Vec<Option<u32>>,
    /// Scores of the known candidates, in request order.
    pub scores: Vec<f32>,
    pub model: Arc<ModelView>,
}

/// What a replay of logged records did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Events applied to sessions.
    pub events: u64,
    /// Session deletes applied.
    pub deletes: u64,
    /// Events whose item the serving model does not know (skipped).
    pub unknown_items: u64,
    /// Records of no known kind (skipped).
    pub skipped: u64,
    /// Position of the last record replayed.
    pub last_position: Option<Position>,
}

#[derive(Debug)]
pub struct SessionSnapshot {
    pub events: u64,
    /// Item ids, oldest first.
    pub recent: Vec<String>,
    pub last_seen_ms: i64,
    pub state_version: Option<Arc<str>>,
    pub model: Arc<ModelView>,
}

pub(super) enum Job {
    Event {
        req: EventRequest,
        item: Resolved,
        reply: Reply<EventOutcome>,
    },
    Recommend {
        req: RecommendRequest,
        exclude: Resolved,
        inline: Resolved,
        reply: Reply<Recommendation>,
    },
    Score {
        req: ScoreRequest,
        candidates: Resolved,
        reply: Reply<ScoreOutcome>,
    },
    GetSession {
        session_id: String,
        reply: Reply<SessionSnapshot>,
    },
    DeleteSession {
        session_id: String,
        reply: Reply<bool>,
    },
    /// Logged records applied again at recovery (not logged again, no acks).
    Replay {
        records: Vec<(Position, LogRecord)>,
        reply: Reply<ReplayStats>,
    },
}

pub(super) struct Envelope {
    pub(super) deadline: Option<Instant>,
    pub(super) job: Job,
}

/// A model to upload, warm up and swap in.
pub(super) struct Install {
    pub(super) weights: ModelWeights,
    pub(super) view: ModelView,
    /// Seeded from the bundle's training sessions (built off the batcher thread).
    pub(super) speed: Box<SpeedLayer>,
    /// Served as the canary to this share of new sessions, beside the serving model (None: it
    /// replaces the serving model).
    pub(super) canary: Option<f64>,
    pub(super) reply: Reply<Arc<ModelView>>,
}

/// Ends the canary: promoted to serve every session, or dropped (its sessions return to the control
/// version). The reply names the version that serves everything (None: there was no canary).
pub(super) struct EndCanary {
    pub(super) promote: bool,
    pub(super) reply: Reply<Option<Arc<ModelView>>>,
}

/// A snapshot to restore at start-up.
pub(super) struct Restore {
    pub(super) snapshot: LoadedSnapshot,
    pub(super) reply: Reply<RestoreStats>,
}

/// What restoring a snapshot did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Sessions restored.
    pub sessions: u64,
    /// Of those, sessions whose state was rebuilt from their recent items (another hidden size).
    pub rebuilt: u64,
    /// Sessions that had expired by the time of the restore (not restored).
    pub expired: u64,
    /// Recent items the serving model does not know (dropped from their sessions).
    pub dropped_items: u64,
    /// Items whose trending counts came back from the snapshot.
    pub trending_items: u64,
    /// Of the sessions restored, those the canary version serves again.
    pub canary: u64,
}

pub(super) enum Msg {
    /// A request, counted against the queue capacity.
    Job(Envelope),
    /// Work of the server itself (recovery's replay), never shed.
    Internal(Envelope),
    Install(Box<Install>),
    EndCanary(EndCanary),
    Restore(Box<Restore>),
    Stop,
}
