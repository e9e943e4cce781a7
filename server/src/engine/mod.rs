//! The serving engine: one batcher thread owns the backend and the session store (TEI style: requests
//! in over a channel, answers out over oneshots); [`Engine`] is the cheap, cloneable async handle that
//! validates requests and submits them.

mod batcher;
mod journal;
pub mod online;
mod sessions;
pub mod snapshot;
mod speed;
mod types;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lambdarec_eventlog::{EventLog, LogRecord, Position, SessionReader};
use lambdarec_kernels::{Backend, ModelWeights};
use lambdarec_trainer::blend::SpeedLayer;
use tokio::sync::oneshot;

use crate::config::{Limits, ServeConfig, SpeedConfig};
use crate::device::DeviceError;
use crate::metrics::Metrics;

use journal::Journal;
pub use journal::LogStatus;
pub use sessions::Eviction;
use snapshot::{LoadedSnapshot, SnapshotStore};
use types::{EndCanary, Envelope, Install, Job, Msg, Reply, Restore};
pub use types::{
    EngineError, EventOutcome, EventRequest, ModelView, RecommendRequest, Recommendation,
    ReplayStats, RestoreStats, ScoreOutcome, ScoreRequest, SessionSnapshot,
};

/// State shared between the handle and the batcher thread.
struct Shared {
    /// The model handlers resolve items against; the batcher replaces it at each swap.
    model: RwLock<Option<Arc<ModelView>>>,
    /// The canary version and its share of new sessions, while one is served.
    canary: RwLock<Option<(Arc<ModelView>, f64)>>,
    /// Recent batch wall time (µs), for the retry-after hint.
    batch_micros: AtomicU64,
    next_generation: AtomicU64,
    metrics: Arc<Metrics>,
    /// True from the start of an engine with an event log until recovery has replayed it: requests
    /// are refused meanwhile, so that none is served from (or applied to) half-recovered sessions.
    recovering: AtomicBool,
    /// The event log's state; None with `--log none`.
    log: Option<Arc<LogStatus>>,
}

/// The event log an engine writes to, with what recovery found in it.
pub struct LogSetup {
    pub log: Box<dyn EventLog>,
    pub snapshots: Option<SnapshotStore>,
    /// Position of the last record in the log (recovery replays up to it before anything is appended).
    pub last: Position,
    /// Shared with the archiver (its `archived` position) and the server.
    pub status: Arc<LogStatus>,
    /// Replicas (`serve --replica`): the shared log's per-session reader and this server's name in
    /// the records it writes.
    pub replica: Option<(Box<dyn SessionReader>, Arc<str>)>,
}

/// Settings of the engine (a subset of [`ServeConfig`]).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_sessions: usize,
    pub session_ttl: Duration,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
    pub limits: Limits,
    /// How often the sessions are snapshotted (with an event log); None: only at a graceful stop.
    pub snapshot_interval: Option<Duration>,
    pub speed: SpeedConfig,
}

impl From<&ServeConfig> for EngineConfig {
    fn from(c: &ServeConfig) -> Self {
        EngineConfig {
            max_sessions: c.max_sessions,
            session_ttl: c.session_ttl,
            max_batch: c.max_batch,
            max_wait: c.max_wait,
            queue_capacity: c.queue_capacity,
            limits: c.limits.clone(),
            snapshot_interval: c.snapshot_interval,
            speed: c.speed.clone(),
        }
    }
}

/// Handle to the engine; clones share one batcher.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    config: EngineConfig,
    device: String,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A future answering one submitted request.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send>>;

impl Engine {
    /// Opens the backend with `open` on a new batcher thread (a backend may be bound to the thread
    /// that created it, so it is created where it will live and never leaves).
    /// With `log`, every change is appended to the event log before it is acknowledged, and the
    /// engine refuses requests until [`Engine::finish_recovery`] (after any restore and replay).
    pub fn start(
        config: EngineConfig,
        open: impl FnOnce() -> Result<Box<dyn Backend>, DeviceError> + Send + 'static,
        metrics: Arc<Metrics>,
        log: Option<LogSetup>,
    ) -> Result<Engine, DeviceError> {
        let shared = Arc::new(Shared {
            model: RwLock::new(None),
            canary: RwLock::new(None),
            batch_micros: AtomicU64::new(0),
            next_generation: AtomicU64::new(1),
            metrics,
            recovering: AtomicBool::new(log.is_some()),
            log: log.as_ref().map(|l| l.status.clone()),
        });
        let (journal, handoff) = match log {
            Some(l) => {
                let (confirm_tx, confirm_rx) = match l.replica.is_some() {
                    true => {
                        let (tx, rx) = mpsc::channel();
                        (Some(tx), Some(rx))
                    }
                    false => (None, None),
                };
                let handoff = l
                    .replica
                    .zip(confirm_rx)
                    .map(|((reader, writer), confirmed)| batcher::handoff::Handoff {
                        reader,
                        writer,
                        confirmed,
                    });
                let journal = Journal::start(
                    l.log,
                    l.snapshots,
                    shared.clone(),
                    l.status,
                    l.last,
                    confirm_tx,
                )
                .map_err(DeviceError::Thread)?;
                (Some(journal), handoff)
            }
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel();
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let thread_shared = shared.clone();
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("lambdarec-batcher".to_string())
            .spawn(move || match open() {
                Ok(backend) => {
                    let _ = opened_tx.send(Ok(backend.device()));
                    batcher::Batcher::new(backend, thread_config, thread_shared, journal, handoff)
                        .run(rx);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(DeviceError::Thread)?;
        let device = match opened_rx.recv() {
            Ok(Ok(device)) => device,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let died = "the batcher thread ended while opening the backend";
                return Err(DeviceError::Thread(std::io::Error::other(died)));
            }
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                shared,
                config,
                device,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The device the backend runs on, e.g. `cpu (2 threads, avx2)`.
    pub fn device(&self) -> &str {
        &self.inner.device
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// The model serving now, if any.
    pub fn model(&self) -> Option<Arc<ModelView>> {
        self.inner
            .shared
            .model
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The canary version served beside [`Engine::model`] and its share of new sessions, if any.
    pub fn canary(&self) -> Option<(Arc<ModelView>, f64)> {
        self.inner
            .shared
            .canary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The speed layer's and the online evaluation's figures, for ModelInfo.
    pub fn speed_info(&self) -> crate::convert::SpeedInfo {
        let m = &self.inner.shared.metrics;
        let s = &self.inner.config.speed;
        crate::convert::SpeedInfo {
            knn_sessions: m.knn_sessions.get(),
            new_items: m.new_items.get(),
            max_new_items: match s.new_items {
                crate::config::NewItems::Accept => s.max_new_items as u64,
                crate::config::NewItems::Reject => 0,
            },
            online: m.online_eval.figures(),
            canary_sessions: m.canary_sessions.get(),
            canary: None,
        }
    }

    /// The settings the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The event log's state, when the engine has one.
    pub fn log_status(&self) -> Option<&Arc<LogStatus>> {
        self.inner.shared.log.as_ref()
    }

    /// Whether recovery is still running (requests are refused meanwhile).
    pub fn recovering(&self) -> bool {
        self.inner.shared.recovering.load(Ordering::Acquire)
    }

    /// Refuses requests while recovering, and changes once the event log has failed.
    fn admit(&self, changes: bool) -> Result<(), EngineError> {
        if self.recovering() {
            return Err(EngineError::Recovering);
        }
        if changes && let Some(reason) = self.inner.shared.log.as_ref().and_then(|l| l.failure()) {
            return Err(EngineError::LogFailed(reason));
        }
        Ok(())
    }

    /// Restores the sessions of a snapshot (recovery, before [`Engine::replay`]).
    pub async fn restore(&self, snapshot: LoadedSnapshot) -> Result<RestoreStats, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Restore(Box::new(Restore { snapshot, reply })))
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    /// Applies logged records again, through the normal batch path, without logging them again.
    pub async fn replay(
        &self,
        records: Vec<(Position, LogRecord)>,
    ) -> Result<ReplayStats, EngineError> {
        let (reply, rx) = oneshot::channel();
        let env = Envelope {
            deadline: None,
            job: Job::Replay { records, reply },
        };
        self.inner
            .tx
            .send(Msg::Internal(env))
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    /// Ends recovery: requests are admitted from now on.
    pub fn finish_recovery(&self) {
        self.inner.shared.recovering.store(false, Ordering::Release);
    }

    /// Checks a session id against the proto's limits.
    pub fn validate_session_id(&self, id: &str) -> Result<(), EngineError> {
        let max = self.limits().max_session_id_bytes;
        if id.is_empty() {
            Err(EngineError::EmptySessionId)
        } else if id.len() > max {
            Err(EngineError::SessionIdTooLong { len: id.len(), max })
        } else {
            Ok(())
        }
    }

    /// Submits one event now (so events submitted in order are applied in order) and returns the
    /// future of its outcome.
    pub fn event(&self, req: EventRequest, deadline: Option<Instant>) -> Pending<EventOutcome> {
        let submitted = (|| {
            self.admit(true)?;
            self.validate_session_id(&req.session_id)?;
            let model = self.model().ok_or(EngineError::NoModel)?;
            let item = model.resolve(std::slice::from_ref(&req.item_id));
            self.submit(deadline, |reply| Job::Event { req, item, reply })
        })();
        match submitted {
            Ok(rx) => Box::pin(async move { rx.await.unwrap_or(Err(EngineError::ShuttingDown)) }),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    pub async fn recommend(
        &self,
        req: RecommendRequest,
        deadline: Option<Instant>,
    ) -> Result<Recommendation, EngineError> {
        self.admit(!req.inline_events.is_empty())?;
        self.validate_session_id(&req.session_id)?;
        let l = self.limits();
        check_count("exclude_items", req.exclude_items.len(), l.max_candidates)?;
        check_count(
            "inline_events",
            req.inline_events.len(),
            l.max_inline_events,
        )?;
        let model = self.model().ok_or(EngineError::NoModel)?;
        let inline = model.resolve(&req.inline_events);
        if inline.items.iter().any(Option::is_none) && self.canary().is_none() {
            // Rejected here, before it queues; the batcher checks again if the model changed since
            // (and, while a canary runs, against the session's own arm).
            return Err(unknown_inline(&model, &req.inline_events, &inline.items));
        }
        let exclude = model.resolve(&req.exclude_items);
        let rx = self.submit(deadline, |reply| Job::Recommend {
            req,
            exclude,
            inline,
            reply,
        })?;
        wait(rx, deadline).await
    }

    pub async fn score(
        &self,
        req: ScoreRequest,
        deadline: Option<Instant>,
    ) -> Result<ScoreOutcome, EngineError> {
        self.admit(false)?;
        self.validate_session_id(&req.session_id)?;
        check_count(
            "candidates",
            req.candidates.len(),
            self.limits().max_candidates,
        )?;
        let model = self.model().ok_or(EngineError::NoModel)?;
        let candidates = model.resolve(&req.candidates);
        let rx = self.submit(deadline, |reply| Job::Score {
            req,
            candidates,
            reply,
        })?;
        wait(rx, deadline).await
    }

    pub async fn get_session(
        &self,
        session_id: String,
        deadline: Option<Instant>,
    ) -> Result<SessionSnapshot, EngineError> {
        self.admit(false)?;
        self.validate_session_id(&session_id)?;
        let rx = self.submit(deadline, |reply| Job::GetSession { session_id, reply })?;
        wait(rx, deadline).await
    }

    /// Forgets a session; Ok(true) if it existed.
    pub async fn delete_session(
        &self,
        session_id: String,
        deadline: Option<Instant>,
    ) -> Result<bool, EngineError> {
        self.admit(true)?;
        self.validate_session_id(&session_id)?;
        let rx = self.submit(deadline, |reply| Job::DeleteSession { session_id, reply })?;
        wait(rx, deadline).await
    }

    /// Uploads a model, warms up every batch shape and swaps it in; requests keep being served by
    /// the old model meanwhile. Control messages bypass the queue bound: a reload must not be shed.
    /// A canary running beside the old model ends first (its sessions return to the old model, then
    /// move to the new one like every other session).
    pub async fn install(
        &self,
        weights: ModelWeights,
        view: ModelView,
        speed: SpeedLayer,
    ) -> Result<Arc<ModelView>, EngineError> {
        self.upload(weights, view, speed, None).await
    }

    /// Uploads a model and, once warmed up, serves it as the canary to `fraction` of the sessions
    /// created from now on, beside the serving model (which keeps every other session). Replaces any
    /// canary before it. Refused without a serving model, or when the hidden sizes differ (the arms
    /// share the session state table).
    pub async fn install_canary(
        &self,
        weights: ModelWeights,
        view: ModelView,
        speed: SpeedLayer,
        fraction: f64,
    ) -> Result<Arc<ModelView>, EngineError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(EngineError::Canary(format!(
                "the canary fraction must be above 0 and below 1, got {fraction}"
            )));
        }
        self.upload(weights, view, speed, Some(fraction)).await
    }

    /// Ends the canary: `promote` makes it serve every session (the serving model is dropped, its
    /// sessions keep their states and move to the canary's catalogue); otherwise the canary is
    /// dropped and its sessions return to the serving model. Returns the version serving everything
    /// now, or None when no canary was running.
    pub async fn end_canary(&self, promote: bool) -> Result<Option<Arc<ModelView>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::EndCanary(EndCanary { promote, reply }))
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    async fn upload(
        &self,
        weights: ModelWeights,
        mut view: ModelView,
        speed: SpeedLayer,
        canary: Option<f64>,
    ) -> Result<Arc<ModelView>, EngineError> {
        view.generation = self
            .inner
            .shared
            .next_generation
            .fetch_add(1, Ordering::Relaxed);
        view.device = self.inner.device.clone();
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Install(Box::new(Install {
                weights,
                view,
                speed: Box::new(speed),
                canary,
                reply,
            })))
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    /// Answers every request already queued, then stops the batcher thread and waits for it.
    pub async fn shutdown(&self) {
        let _ = self.inner.tx.send(Msg::Stop);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    fn submit<T>(
        &self,
        deadline: Option<Instant>,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, EngineError>>, EngineError> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(EngineError::DeadlineExceeded);
        }
        let shared = &self.inner.shared;
        let capacity = self.inner.config.queue_capacity;
        // The queue-depth gauge is the admission counter itself, so the metric is never stale.
        let queued = shared.metrics.queue_depth.inc() as usize;
        if queued >= capacity {
            shared.metrics.queue_depth.dec();
            return Err(EngineError::Overloaded {
                queued,
                capacity,
                retry_after_ms: self.retry_after_ms(),
            });
        }
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Job(Envelope {
            deadline,
            job: job(reply),
        });
        if self.inner.tx.send(msg).is_err() {
            shared.metrics.queue_depth.dec();
            return Err(EngineError::ShuttingDown);
        }
        Ok(rx)
    }

    /// About the time the batcher needs to drain a full queue.
    fn retry_after_ms(&self) -> u64 {
        let c = &self.inner.config;
        let per_batch = self
            .inner
            .shared
            .batch_micros
            .load(Ordering::Relaxed)
            .max(c.max_wait.as_micros() as u64)
            .max(100);
        let batches = c.queue_capacity.div_ceil(c.max_batch) as u64;
        (batches * per_batch / 1000).clamp(1, 10_000)
    }
}

fn check_count(what: &'static str, got: usize, max: usize) -> Result<(), EngineError> {
    if got > max {
        Err(EngineError::TooMany { what, got, max })
    } else {
        Ok(())
    }
}

fn unknown_inline(model: &ModelView, ids: &[String], items: &[Option<u32>]) -> EngineError {
    let ids = ids
        .iter()
        .zip(items)
        .filter(|(_, i)| i.is_none())
        .map(|(id, _)| id.clone())
        .take(10)
        .collect();
    EngineError::UnknownInlineItems {
        ids,
        version: model.version.clone(),
    }
}

async fn wait<T>(
    rx: oneshot::Receiver<Result<T, EngineError>>,
    deadline: Option<Instant>,
) -> Result<T, EngineError> {
    let answer = match deadline {
        // Dropping `rx` on timeout closes the oneshot, so the batcher skips the job if not yet run.
        Some(d) => tokio::time::timeout_at(d.into(), rx)
            .await
            .map_err(|_| EngineError::DeadlineExceeded)?,
        None => rx.await,
    };
    answer.unwrap_or(Err(EngineError::ShuttingDown))
}
