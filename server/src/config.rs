//! The one typed configuration of the serving layer (the CLI's `serve` flags map onto it) and the
//! request limits that `recommender.proto` documents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lambdarec_eventlog::memory::MemoryStorage;
use lambdarec_kernels::Dtype;

use crate::security::SecurityConfig;

/// Request limits. The defaults are the numbers `lambdarec/v1/recommender.proto` promises clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest session id, in bytes.
    pub max_session_id_bytes: usize,
    /// The `k` a model is warmed up with before it serves (the typical request's k). Requests always
    /// name their own k: 0 is INVALID_ARGUMENT, as recommender.proto says.
    pub default_k: usize,
    /// Largest `k`; a request over it is INVALID_ARGUMENT (never silently capped).
    pub max_k: usize,
    /// Most candidates in one Score request, and most exclude_items in one Recommend request.
    pub max_candidates: usize,
    /// Most inline_events in one Recommend request; each one is a GRU step on the batcher thread, so
    /// an unbounded list would let one caller stall everybody.
    pub max_inline_events: usize,
    /// Recent items kept per session (for exclude_seen and GetSession).
    pub history: usize,
    /// `client_seq`s remembered per session for exactly-once events: a re-sent event is recognised
    /// while it is among its session's last `dedup_window` applied events that carried one.
    pub dedup_window: usize,
    /// Most load failures ModelInfo reports.
    pub failures_kept: usize,
    /// Largest request message tonic decodes (larger ones are refused before a handler runs).
    pub max_message_bytes: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls one connection may have open at once (further
    /// ones wait in the client, or are refused with REFUSED_STREAM if it ignores the setting).
    /// None: no limit.
    pub max_concurrent_streams: Option<u32>,
    /// Events one StreamEvents call may have submitted and not yet acknowledged; beyond it the
    /// stream stops reading (back-pressure through HTTP/2 flow control) until acks go out.
    pub max_unacked_events: usize,
    /// A StreamEvents call that receives no message (with nothing left to acknowledge), or whose
    /// client reads no acknowledgement, for this long is ended with DEADLINE_EXCEEDED. None: never.
    pub stream_idle_timeout: Option<Duration>,
    /// Most live sessions one token may have created (sessions created without a token, and those
    /// recovered at start-up, count against nobody). None: no limit.
    pub max_sessions_per_token: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_session_id_bytes: 256,
            default_k: 20,
            max_k: 1000,
            max_candidates: 10_000,
            max_inline_events: 1000,
            history: 50,
            dedup_window: 64,
            failures_kept: 10,
            max_message_bytes: 4 << 20,
            max_concurrent_streams: Some(1024),
            max_unacked_events: 1024,
            stream_idle_timeout: Some(Duration::from_secs(300)),
            max_sessions_per_token: None,
        }
    }
}

/// What an event on an item the serving bundle does not know does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NewItems {
    /// Taken as a new item (up to `--max-new-items`): kept in the session, learnt by session-kNN and
    /// trending, and recommendable by them until a bundle that knows it is served.
    #[default]
    Accept,
    /// Rejected with ERROR_CODE_UNKNOWN_ITEM; the session is unchanged.
    Reject,
}

impl std::str::FromStr for NewItems {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "accept" => Ok(NewItems::Accept),
            "reject" => Ok(NewItems::Reject),
            other => Err(format!(
                "unknown --new-items {other:?} (expected accept or reject)"
            )),
        }
    }
}

/// The speed layer beside the GRU: live session-kNN, trending counts and items new since the bundle.
#[derive(Clone, Debug)]
pub struct SpeedConfig {
    /// The kNN index: sessions kept (the bundle's training sessions first, then live ones; the
    /// least recently updated is evicted first), and V-SKNN's neighbours and sample where they
    /// override the bundle's.
    pub knn: lambdarec_trainer::pipeline::KnnServing,
    /// Trending's half-life; None: the bundle's (one hour in bundles without one).
    pub trend_half_life: Option<Duration>,
    pub new_items: NewItems,
    /// Most new items held; events on further new items are rejected (ERROR_CODE_NEW_ITEM_REJECTED).
    pub max_new_items: usize,
    /// Longest new item id, in bytes (longer ones are rejected the same way).
    pub max_item_id_bytes: usize,
    /// The strategy of requests that name none; None: the blend when the bundle has one, else the GRU.
    pub default_strategy: Option<lambdarec_trainer::blend::Strategy>,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            knn: lambdarec_trainer::pipeline::KnnServing::default(),
            trend_half_life: None,
            new_items: NewItems::Accept,
            max_new_items: 100_000,
            max_item_id_bytes: 256,
            default_strategy: None,
        }
    }
}

/// Which compute device serves the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a GPU is present, otherwise the CPU (and a log line says why).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            other => Err(format!(
                "unknown device {other:?} (expected auto, cpu or cuda)"
            )),
        }
    }
}

/// The event log the server appends every acknowledged change to.
#[derive(Clone, Debug, Default)]
pub enum LogConfig {
    /// `--log none`: events live in memory only and are lost on a crash (the behaviour before the
    /// event log; said at start-up).
    #[default]
    None,
    /// `file://DIR`, a plain directory path, or `nats://HOST:PORT/STREAM`.
    Url(String),
    /// An in-memory log that outlives the server (tests that restart a server in-process).
    Memory(MemoryStorage),
}

/// Everything `lambdarec serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC address; port 0 picks a free port (see `RunningServer::local_addr`).
    pub listen: SocketAddr,
    /// Bundle store URL (local path, file://, memory://, s3://, gs://, az://).
    pub store: String,
    /// Model name in the store.
    pub model: String,
    pub device: DeviceChoice,
    /// Storage type of the item tables on the device.
    pub dtype: Dtype,
    /// CPU backend threads (None: one per core).
    pub threads: Option<usize>,
    /// Session capacity: the state table's slots; the least recently used session is evicted beyond it.
    pub max_sessions: usize,
    /// A session unused for this long is forgotten.
    pub session_ttl: Duration,
    /// Most requests the batcher serves with one set of backend calls.
    pub max_batch: usize,
    /// How long the batcher waits for more requests after the first of a batch.
    pub max_wait: Duration,
    /// Requests waiting for the batcher beyond which new ones get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// How often LATEST is checked for a new version; None: never (Reload only).
    pub poll_interval: Option<Duration>,
    /// Share of new sessions served by the version the store's CANARY names, beside LATEST's; None:
    /// no canary is served (CANARY is ignored).
    pub canary_fraction: Option<f64>,
    /// Where the HTTP endpoint listens: Prometheus metrics (`GET /metrics`) and health (`GET /healthz`);
    /// None: not served.
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    /// The event log (the library default is none; `lambdarec serve` defaults to an embedded log).
    pub log: LogConfig,
    /// Embedded log: a segment is rolled past this size (whole segments are deleted once
    /// snapshotted and archived).
    pub log_segment_bytes: u64,
    /// Directory of session snapshots (with a log); None: recovery replays the whole retained log.
    pub snapshot_dir: Option<PathBuf>,
    /// One of several replicas sharing the event log: sessions are caught up from the log before
    /// they are served, nothing is replayed at start-up, and the log is never released (see
    /// `docs/replicas.md`). Needs a log that can be shared (JetStream, or memory in tests).
    pub replica: bool,
    /// On a graceful stop, how long the server keeps serving after its health turns NOT_SERVING,
    /// so that a proxy's health checks take it out before it stops accepting.
    pub drain_grace: Duration,
    /// How often the sessions are snapshotted; None: only at a graceful stop.
    pub snapshot_interval: Option<Duration>,
    /// Copy the log's events into `<store>/events` (the master dataset the trainer reads); None:
    /// no archive (the log is then released after snapshots alone).
    pub archive: Option<crate::archive::ArchiveOptions>,
    /// TLS and tokens (default: plaintext, no tokens).
    pub security: SecurityConfig,
    /// Session-kNN, trending and new items.
    pub speed: SpeedConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            store: "./lambdarec-store".to_string(),
            model: "default".to_string(),
            device: DeviceChoice::Auto,
            dtype: Dtype::F32,
            threads: None,
            max_sessions: 100_000,
            session_ttl: Duration::from_secs(1800),
            max_batch: 64,
            max_wait: Duration::from_micros(200),
            queue_capacity: 4096,
            poll_interval: Some(Duration::from_secs(30)),
            canary_fraction: None,
            metrics_listen: None,
            limits: Limits::default(),
            log: LogConfig::None,
            log_segment_bytes: 64 << 20,
            snapshot_dir: None,
            replica: false,
            drain_grace: Duration::ZERO,
            snapshot_interval: Some(Duration::from_secs(60)),
            archive: None,
            security: SecurityConfig::default(),
            speed: SpeedConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Rejects settings the engine cannot run with, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let positive = [
            ("--max-sessions", self.max_sessions),
            ("--max-batch", self.max_batch),
            ("--queue-capacity", self.queue_capacity),
            ("--max-unacked-events", l.max_unacked_events),
            (
                "--max-concurrent-streams",
                l.max_concurrent_streams.map_or(1, |n| n as usize),
            ),
            (
                "--max-sessions-per-token",
                l.max_sessions_per_token.unwrap_or(1),
            ),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        // Slot indices are u32 and one extra slot is the zero state of unknown sessions.
        if self.max_sessions >= u32::MAX as usize {
            return Err(format!("--max-sessions must be below {}", u32::MAX));
        }
        if self.speed.trend_half_life.is_some_and(|d| d.is_zero()) {
            return Err("--trend-half-life must be positive".to_string());
        }
        for (flag, n) in [
            ("--knn-neighbours", self.speed.knn.neighbours),
            ("--knn-sample", self.speed.knn.sample),
        ] {
            if n == Some(0) {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.speed.max_item_id_bytes == 0 {
            return Err("the longest item id must be at least 1 byte".to_string());
        }
        if self.session_ttl.is_zero() {
            return Err("--session-ttl must be positive".to_string());
        }
        if l.stream_idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(
                "--stream-idle-timeout must be positive (0 on the command line: none)".into(),
            );
        }
        if self.limits.default_k == 0 || self.limits.default_k > self.limits.max_k {
            return Err("the warm-up k must be within 1..=max k".to_string());
        }
        Ok(())
    }
}
