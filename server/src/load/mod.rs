//! The load-test harness behind `lambdarec load`: replays the sessions of an interaction log through a
//! running server the way a product service would, and reports Recommend (or Score) latency,
//! throughput, errors and the *online* accuracy, scored with the trainer's own `MetricsAccumulator`.
//!
//! Per session, per event in order: send the event on a `StreamEvents` stream and wait for its ack,
//! then call `Recommend` (k, `exclude_seen = false`, like the offline evaluator) — except after the
//! session's last event. The list is scored against the session's next *applied* event.
//!
//! Score mode (`Workload::Score`) calls `Score` instead, with N candidates drawn from the served
//! model's catalogue by popularity and the session's next known item among them (see `candidates`);
//! the candidates ranked by score, ties in candidate order, make the top-k list that is scored the
//! same way. With N at least the catalogue size this ranks the whole catalogue, as Recommend does.
//!
//! Unknown items (the rule that makes online = offline): an event acked `UNKNOWN_ITEM` (a server run
//! with `--new-items reject`) or `NEW_ITEM_REJECTED` leaves the session unchanged and is skipped: it is not a prediction target, and the list pending from the
//! previous applied event waits for the next applied one (the state did not change, so it is the same
//! list). A list pending when the session ends is not scored. The scored (list, target) pairs are thus
//! exactly those of `prepare_eval` (drop unknown items, then sessions shorter than 2) + `evaluate_model`.
//! A server that takes new items (`--new-items accept`, its default) applies them, so the log's new
//! items become prediction targets online that offline drops: compare with `eval` on logs of catalogue
//! items, or against a server run with `--new-items reject`.
//!
//! The speed layer (session-kNN, trending, the blend) learns from every session, so its answers depend
//! on the order sessions reach the server: online equals offline for them when the sessions are
//! replayed one at a time (`--concurrency 1`, closed loop, one connection) in the evaluator's order —
//! by first event time, then session key — which is the order this harness starts them in.
//!
//! Events mode (`Workload::Events`) makes no call after the events: it measures the event path alone
//! — each event's ack latency (which includes the server's event-log append) and acks per second — and
//! has no accuracy to report.
//!
//! Loads: closed loop (`Mode::Closed`, C sessions in flight, each starting when one ends) or open loop
//! (`Mode::Open`, sessions arriving as a Poisson process of `rate` sessions per second; a session that
//! starts late — the in-flight cap was reached — charges its delay to its first Recommend, so the
//! latency is measured from the intended send time and coordinated omission is not hidden).

mod candidates;
mod connect;
mod plot;
pub mod quickstart;
mod replay;
mod report;
pub mod synthetic;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lambdarec_proto::v1::ModelInfoRequest;
use lambdarec_trainer::data::{self, ReadOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use candidates::CatalogueError;
pub use connect::{Bearer, Client, ClientTls};
pub use plot::{PlotError, latency_svg};
pub use replay::{Replay, ReplaySession, SESSION_HEADER};
pub use report::{LoadReport, TimelinePoint};

use candidates::Catalogue;
use replay::{Call, Ctx, EventStream};
use report::Collector;

/// How sessions are offered to the server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// `concurrency` sessions in flight; a new one starts as soon as one ends.
    Closed { concurrency: usize },
    /// Sessions start as a Poisson process of `rate` sessions per second, whatever the server does.
    Open { rate: f64 },
}

/// Which call follows each applied event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `Recommend`: the top k of the whole catalogue.
    Recommend,
    /// `Score` of `candidates` items: the session's next item and items drawn by popularity.
    Score { candidates: usize },
    /// No call: the events alone, timed from send to ack.
    Events,
}

impl Workload {
    /// The RPC's name, for reports.
    pub fn call(self) -> &'static str {
        match self {
            Workload::Recommend => "Recommend",
            Workload::Score { .. } => "Score",
            Workload::Events => "events",
        }
    }
}

/// The server's limit on candidates per Score request.
pub const MAX_CANDIDATES: usize = 10_000;

/// Everything one load run needs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Server address, `host:port`, `http://host:port` or `https://host:port`.
    pub target: String,
    /// TLS settings (a bare `host:port` target is then reached over `https://`); None: plaintext
    /// unless the target is `https://`.
    pub tls: Option<ClientTls>,
    /// Bearer token sent with every call (`--token`).
    pub token: Option<String>,
    /// The log to replay.
    pub data: PathBuf,
    pub read: ReadOptions,
    pub mode: Mode,
    pub workload: Workload,
    /// Score mode: the store to read the served bundle's catalogue from; None: the store the server
    /// names in ModelInfo.
    pub store: Option<String>,
    /// None: replay every session once. Some: loop over the log until it has passed.
    pub duration: Option<Duration>,
    /// Recommendation list length and metric cut-off.
    pub k: usize,
    /// HTTP/2 connections (each with its own StreamEvents stream); sessions are spread over them.
    pub connections: usize,
    /// Per-call limit; a call over it counts as DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Hard limit of the whole run (sessions still in flight then are abandoned).
    pub max_time: Duration,
    /// Open loop: most sessions in flight; beyond it arrivals wait (and their delay is charged).
    pub max_in_flight: usize,
    /// Seed of the open-loop arrival process and of score mode's candidate draws.
    pub seed: u64,
    /// A live progress line on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// The strategy Recommend and Score ask for (`Unspecified`: the server's default).
    pub strategy: lambdarec_proto::v1::Strategy,
    /// Each session's events on a `StreamEvents` call of its own, routed by its `x-session-id`
    /// (needed behind a proxy that routes by session: it routes a whole call to one replica).
    pub route_sessions: bool,
    /// Times a call that failed because the server went away is retried (events with their
    /// client_seq, so they are applied once); needs `route_sessions` for events.
    pub retries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            target: "127.0.0.1:50051".to_string(),
            tls: None,
            token: None,
            data: PathBuf::new(),
            read: ReadOptions::default(),
            mode: Mode::Closed { concurrency: 16 },
            workload: Workload::Recommend,
            store: None,
            duration: None,
            k: 20,
            connections: 4,
            request_timeout: Duration::from_secs(10),
            max_time: Duration::from_secs(3600),
            max_in_flight: 10_000,
            seed: 1,
            progress: false,
            strategy: lambdarec_proto::v1::Strategy::Unspecified,
            route_sessions: false,
            retries: 0,
        }
    }
}

/// Why a load run could not run (failed requests during a run are counted, not raised).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{0}")]
    Options(String),
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("ModelInfo on {target} failed: {status}")]
    ModelInfo {
        target: String,
        status: tonic::Status,
    },
    #[error("score mode needs the served catalogue: {0} (--store names a store to read it from)")]
    Catalogue(#[from] CatalogueError),
}

/// Reads `opts.data` and replays it (see the module docs).
pub async fn run(opts: &LoadOptions) -> Result<LoadReport, LoadError> {
    let log = data::read_log(&opts.data, &opts.read)?;
    if log.bad_lines > 0 {
        tracing::warn!(file = %log.path, skipped = log.bad_lines, "skipped bad lines");
    }
    run_replay(opts, Arc::new(Replay::from_log(&log))).await
}

/// Replays already-read sessions.
pub async fn run_replay(opts: &LoadOptions, replay: Arc<Replay>) -> Result<LoadReport, LoadError> {
    validate(opts)?;
    let (target, clients) = connect::connect(
        &opts.target,
        opts.tls.as_ref(),
        opts.token.as_deref(),
        opts.connections,
    )
    .await?;
    let info = clients[0]
        .clone()
        .model_info(ModelInfoRequest {})
        .await
        .map_err(|status| LoadError::ModelInfo {
            target: target.clone(),
            status,
        })?
        .into_inner();
    let call = match opts.workload {
        Workload::Recommend => Call::Recommend,
        Workload::Events => Call::Events,
        Workload::Score { candidates } => {
            let store = opts.store.as_deref().unwrap_or(&info.store);
            let catalogue = Catalogue::load(store, &info.name, &info.version).await?;
            Call::Score {
                candidates,
                catalogue,
            }
        }
    };
    let mut streams = Vec::with_capacity(clients.len());
    if !opts.route_sessions {
        for c in &clients {
            streams.push(EventStream::open(c.clone(), None).await);
        }
    }
    let started = Instant::now();
    let collector = Arc::new(Collector::new(opts.k, info.n_items as usize, started));
    let ctx = Arc::new(Ctx {
        clients,
        streams,
        collector: collector.clone(),
        k: opts.k,
        call,
        strategy: opts.strategy.into(),
        seed: opts.seed,
        timeout: opts.request_timeout,
        run_tag: format!("load-{:x}-{:x}", std::process::id(), epoch_millis()),
        seq: AtomicU64::new(epoch_millis() as u64 * 1000),
        route_sessions: opts.route_sessions,
        retries: opts.retries,
    });

    let progress = opts
        .progress
        .then(|| report::Progress::start(collector.clone()));
    let deadline = started + opts.duration.unwrap_or(opts.max_time).min(opts.max_time);
    let hard_deadline = started + opts.max_time;
    let n = replay.sessions.len();
    // One pass: n sessions. With a duration: until the deadline, at most max_time's worth of passes.
    let total = if opts.duration.is_some() {
        usize::MAX
    } else {
        n
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    if n > 0 {
        match opts.mode {
            Mode::Closed { concurrency } => {
                let next = Arc::new(AtomicUsize::new(0));
                for _ in 0..concurrency {
                    let (ctx, replay, next, stop) =
                        (ctx.clone(), replay.clone(), next.clone(), stop.clone());
                    tasks.spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= total
                                || Instant::now() >= deadline
                                || stop.load(Ordering::Relaxed)
                            {
                                break;
                            }
                            ctx.replay_session(&replay, i, Duration::ZERO).await;
                        }
                    });
                }
            }
            Mode::Open { rate } => {
                let limit = Arc::new(Semaphore::new(opts.max_in_flight));
                let mut rng = SmallRng::seed_from_u64(opts.seed);
                let mut due = tokio::time::Instant::now();
                for i in 0..total {
                    // Exponential inter-arrival times: a Poisson process of `rate` sessions per second.
                    let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
                    due += Duration::from_secs_f64(gap.min(3600.0));
                    if due.into_std() >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        break;
                    };
                    let late = tokio::time::Instant::now().saturating_duration_since(due);
                    let (ctx, replay) = (ctx.clone(), replay.clone());
                    tasks.spawn(async move {
                        ctx.replay_session(&replay, i, late).await;
                        drop(permit);
                    });
                    // Reap finished tasks so the set stays as small as the sessions in flight.
                    while tasks.try_join_next().is_some() {}
                }
            }
        }
    }
    // Sessions in flight at the deadline finish, within the hard limit.
    let grace = hard_deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        stop.store(true, Ordering::Relaxed);
        tasks.abort_all();
        tracing::warn!("max time reached: sessions still in flight were abandoned");
    }
    let elapsed = started.elapsed();
    if let Some(p) = progress {
        p.finish();
    }
    for s in &ctx.streams {
        s.close();
    }
    let mut report = collector.report(elapsed, opts, &info.version, &info.name, n);
    report.run_tag = ctx.run_tag.clone();
    Ok(report)
}

fn validate(opts: &LoadOptions) -> Result<(), LoadError> {
    let bad = |m: &str| Err(LoadError::Options(m.to_string()));
    match opts.mode {
        Mode::Closed { concurrency: 0 } => {
            return bad("--concurrency must be at least 1");
        }
        Mode::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
            return bad("--rate must be a positive number");
        }
        _ => {}
    }
    if opts.k == 0 || opts.connections == 0 || opts.max_in_flight == 0 {
        return bad("--k, --connections and the in-flight limit must be at least 1");
    }
    if let Workload::Score { candidates } = opts.workload
        && !(1..=MAX_CANDIDATES).contains(&candidates)
    {
        return bad(&format!(
            "--candidates must be 1 to {MAX_CANDIDATES} (the server's limit), got {candidates}"
        ));
    }
    Ok(())
}

fn epoch_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
