//! Assembles and runs the server: engine, registry (initial load, LATEST poller), the Recommender
//! service with grpc.health.v1 and reflection behind TLS and token checks, the HTTP admin endpoint
//! (/metrics, /healthz), and a graceful shutdown that answers in-flight work before the batcher
//! stops.

use std::net::SocketAddr;
use std::sync::Arc;

use lambdarec_kernels::Backend;
use lambdarec_proto::FILE_DESCRIPTOR_SET;
use lambdarec_proto::archive::Archive;
use lambdarec_proto::v1::recommender_server::RecommenderServer;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use tracing::{error, info, warn};

use crate::archive::{ArchiveOptions, ArchiveProgress, Archiver, ArchiverError, ArchiverTask};
use crate::config::ServeConfig;
use crate::device::{DeviceError, open_backend};
use crate::engine::{Engine, LogSetup};
use crate::http;
use crate::metrics::{Listener, Metrics};
use crate::net::{self, CallsLayer, HttpListener};
use crate::readiness::Readiness;
use crate::recovery::{self, RecoveryError};
use crate::registry::{Registry, error_chain};
use crate::security::auth::GrpcAuthLayer;
use crate::security::{Security, SecurityError};
use crate::service::RecommenderService;
use crate::status;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC server task failed: {0}")]
    Task(String),
    #[error("recovery from the event log failed")]
    Recovery(#[from] RecoveryError),
    #[error("cannot start the archiver")]
    Archive(#[from] ArchiverError),
    #[error("cannot load the TLS or token files")]
    Security(#[from] SecurityError),
}

/// How long a graceful stop waits for the archive to catch up with the log.
const FINAL_ARCHIVE: Duration = Duration::from_secs(10);

/// A started server. Dropping it without `shutdown` leaves the tasks running until the runtime ends.
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    /// Recovery from the event log (None without a log); Err ends the server.
    recovery: Option<JoinHandle<Result<(), RecoveryError>>>,
    /// Copies the log into the store's archive (None without a log or with archiving off).
    archiver: Option<ArchiverTask>,
    engine: Engine,
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    security: Arc<Security>,
    /// How long a stop keeps serving after health turns NOT_SERVING (`--drain-grace`).
    drain_grace: Duration,
}

/// Starts everything on the backend `config.device` selects and returns once the gRPC port is bound.
/// A model that fails to load at startup is logged and reported (health NOT_SERVING, ModelInfo
/// failures); a later Reload or poll can fix it.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    let (device, threads) = (config.device, config.threads);
    start_with_backend(config, move || open_backend(device, threads)).await
}

/// As [`start`], with the backend made by `open` (on the batcher thread) instead of `config.device`:
/// for embedding the server with another `Backend` implementation, e.g. an instrumented one in tests.
pub async fn start_with_backend(
    config: ServeConfig,
    open: impl FnOnce() -> Result<Box<dyn Backend>, DeviceError> + Send + 'static,
) -> Result<RunningServer, ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let metrics = Arc::new(Metrics::default());
    // Before anything else starts: a bad certificate or tokens file stops the server here.
    let security = Arc::new(Security::load(config.security.clone(), metrics.clone())?);
    // Opening the log recovers its torn tail and refuses corrupt data: blocking I/O.
    let opening = config.clone();
    let prepared = tokio::task::spawn_blocking(move || recovery::prepare(&opening))
        .await
        .map_err(|e| ServeError::Task(e.to_string()))??;
    let (setup, pending) = prepared.unzip();
    let (setup, archiver) = match (setup, &config.archive) {
        (Some(setup), Some(options)) => {
            let (setup, archiver) = start_archiver(setup, &config.store, options.clone()).await?;
            (Some(setup), Some(archiver))
        }
        (setup, _) => (setup, None),
    };
    let engine = Engine::start((&config).into(), open, metrics.clone(), setup)?;
    let archiver = archiver.map(Archiver::spawn);
    info!(
        device = engine.device(),
        dtype = %config.dtype,
        max_sessions = config.max_sessions,
        max_batch = config.max_batch,
        max_wait_us = config.max_wait.as_micros() as u64,
        queue_capacity = config.queue_capacity,
        "engine started"
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = Arc::new(Readiness::new(health, pending.is_some()).await);
    let registry = Arc::new(
        Registry::new(
            config.store.clone(),
            config.model.clone(),
            config.dtype,
            config.limits.failures_kept,
            engine.clone(),
            metrics.clone(),
            readiness.clone(),
        )
        .with_canary_fraction(config.canary_fraction),
    );
    if let Err(e) = registry.reload(None).await {
        warn!(error = %error_chain(&e), "no model at startup: health is NOT_SERVING until Reload or the LATEST poller loads one");
    }
    // Before recovery, so that replayed and restored sessions return to the arm that served them.
    if let Err(e) = registry.sync_canary().await {
        warn!(error = %error_chain(&e), "no canary at startup; the poller retries when CANARY moves");
    }

    // Reflection in both versions: grpc.reflection.v1 for current tools, v1alpha for Python's
    // grpcio-reflection and older grpcurl, Postman and grpcui builds, which speak only that.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;

    let bind = |addr, source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| bind(config.listen, e))?;
    let addr = listener.local_addr().map_err(|e| bind(config.listen, e))?;

    let mut background = Vec::new();
    let scheme = if config.security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let metrics_addr = match config.metrics_listen {
        Some(at) => {
            let l = http::bind(at).await.map_err(|e| bind(at, e))?;
            let l =
                HttpListener::new(l, security.clone(), metrics.clone()).map_err(|e| bind(at, e))?;
            let bound = axum::serve::Listener::local_addr(&l).map_err(|e| bind(at, e))?;
            let routes = http::router(metrics.clone(), readiness.clone(), security.clone());
            background.push(http::spawn(l, routes));
            info!(addr = %bound, "metrics at {scheme}://{bound}/metrics, health at {scheme}://{bound}/healthz");
            Some(bound)
        }
        None => None,
    };
    warn_if_open(&config, &security);
    background.extend(security.spawn_watcher());
    if let Some(every) = config.poll_interval {
        background.push(registry.spawn_poller(every));
    }
    let recovery = pending.map(|pending| {
        let (engine, metrics, readiness) = (engine.clone(), metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            recovery::run(&engine, pending, &metrics).await?;
            readiness.recovered().await;
            Ok(())
        })
    });
    if engine.log_status().is_some() {
        let progress = archiver.as_ref().map(ArchiverTask::progress);
        background.push(watch_log(
            engine.clone(),
            readiness.clone(),
            metrics.clone(),
            progress,
        ));
    }

    let (stop, stop_rx) = watch::channel(false);
    let service = RecommenderService::new(
        engine.clone(),
        registry.clone(),
        metrics.clone(),
        stop_rx.clone(),
    );
    let recommender =
        RecommenderServer::new(service).max_decoding_message_size(config.limits.max_message_bytes);
    let mut shutdown_signal = stop_rx;
    let accepted = net::accept(listener, security.clone(), metrics.clone(), Listener::Grpc);
    let incoming = ReceiverStream::new(accepted).map(Ok::<_, std::convert::Infallible>);
    let streams = config.limits.max_concurrent_streams;
    let server = tokio::spawn(
        Server::builder()
            .max_concurrent_streams(streams)
            .layer(CallsLayer::new(streams, metrics.clone()))
            .layer(GrpcAuthLayer::new(security.clone()))
            .layer(tower::util::MapResponseLayer::new(
                status::oversize_response::<tonic::body::Body>,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(recommender)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown_signal.wait_for(|stopping| *stopping).await;
            }),
    );
    info!(
        %addr,
        tls = config.security.tls.is_some(),
        mutual_tls = config.security.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        tokens = security.tokens().map_or(0, |t| t.len()),
        "listening: lambdarec.v1.Recommender, grpc.health.v1.Health, server reflection"
    );
    Ok(RunningServer {
        addr,
        metrics_addr,
        stop,
        server,
        background,
        recovery,
        archiver,
        engine,
        registry,
        readiness,
        security,
        drain_grace: config.drain_grace,
    })
}

/// Without tokens anyone who reaches the port may call Reload or read any session: say so when
/// the port is reachable from elsewhere.
fn warn_if_open(config: &ServeConfig, security: &Security) {
    if security.tokens().is_some() {
        return;
    }
    let exposed: Vec<String> = std::iter::once(config.listen)
        .chain(config.metrics_listen)
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    if !exposed.is_empty() {
        warn!(
            addresses = %exposed.join(", "),
            "listening beyond loopback without --auth-tokens: anyone who can reach these ports may \
             call every RPC, Reload and DeleteSession included"
        );
    }
}

/// Opens the store's archive, connects it to the log after the last batch it holds, and makes its
/// progress bound what the log may release. The log calls block: they run on the blocking pool.
async fn start_archiver(
    setup: LogSetup,
    store: &str,
    options: ArchiveOptions,
) -> Result<(LogSetup, Archiver), ServeError> {
    let archive = Archive::in_store(store).map_err(ArchiverError::from)?;
    let mut archiver = Archiver::recover(archive, options).await?;
    let (setup, archiver) = tokio::task::spawn_blocking(move || {
        let connected = setup
            .log
            .bounds()
            .map_err(ArchiverError::from)
            .and_then(|b| {
                let log = &setup.log;
                archiver.connect(&log.describe(), b.first, |from| log.reader(from))
            });
        connected.map(|_| (setup, archiver))
    })
    .await
    .map_err(|e| ServeError::Task(e.to_string()))??;
    archiver
        .progress()
        .publish_through(setup.status.archived.clone());
    Ok((setup, archiver))
}

/// Turns health NOT_SERVING (with the reason) once the event log has failed, and keeps the archive's
/// metrics current (its counters live in the archiver; the lag is the log's durable end minus them).
fn watch_log(
    engine: Engine,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    archive: Option<Arc<ArchiveProgress>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let status = engine.log_status().expect("checked by the caller").clone();
        let mut failed = false;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !failed && let Some(reason) = status.failure() {
                readiness.log_failed(reason).await;
                failed = true;
            }
            if let Some(p) = &archive {
                let durable = status.durable.load(std::sync::atomic::Ordering::Acquire);
                metrics
                    .archive_lag_records
                    .set(durable.saturating_sub(p.archived_through()));
                metrics
                    .archive_events
                    .inner()
                    .store(p.events(), std::sync::atomic::Ordering::Relaxed);
                metrics
                    .archive_bytes
                    .inner()
                    .store(p.bytes(), std::sync::atomic::Ordering::Relaxed);
                metrics
                    .archive_errors
                    .inner()
                    .store(p.errors(), std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
}

impl RunningServer {
    /// The bound gRPC address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the HTTP admin endpoint (/metrics, /healthz), if it is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The registry (to reload from the embedding process, e.g. in tests).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Reads the TLS and token files again, as SIGHUP does: new connections and calls use what
    /// loads, established connections keep theirs; a part that fails keeps its previous
    /// configuration and its error is returned.
    pub fn reload_security(&self) -> Result<(), Vec<SecurityError>> {
        self.security.reload()
    }

    /// Waits until the server serves (model loaded, recovery done), at most `timeout`; false if it
    /// did not in time (or recovery failed).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        while self.readiness.not_serving_reason().is_some() {
            if tokio::time::Instant::now() >= until
                || self.recovery.as_ref().is_some_and(JoinHandle::is_finished)
                    && self.engine.recovering()
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Why the server does not serve now (None when it does).
    pub fn not_serving_reason(&self) -> Option<String> {
        self.readiness.not_serving_reason()
    }

    /// Reports NOT_SERVING, serves on for `--drain-grace` (so a proxy moves new calls away), then
    /// stops accepting, lets in-flight RPCs finish (event streams stop reading and answer what they
    /// accepted), then stops the batcher, which snapshots the sessions and makes the log durable.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.readiness.stopping().await;
        if !self.drain_grace.is_zero() {
            // A proxy that health-checks this replica takes it out within its check interval; until
            // then every call is still served, so only calls that outlast the grace see the stop.
            info!(
                grace_ms = self.drain_grace.as_millis() as u64,
                "draining: health is NOT_SERVING; serving on until the grace has passed"
            );
            tokio::time::sleep(self.drain_grace).await;
        }
        if let Some(r) = &self.recovery {
            r.abort();
        }
        let _ = self.stop.send(true);
        let served = self.server.await;
        for task in &self.background {
            task.abort();
        }
        self.engine.shutdown().await;
        if let Some(archiver) = self.archiver {
            // After the engine, whose last records are durable by now: the archive catches up with
            // them (bounded, so a large backlog does not hold the stop; the next start continues).
            let caught_up = match archiver.stop().await {
                Ok(mut archiver) => tokio::time::timeout(FINAL_ARCHIVE, archiver.run_once()).await,
                Err(e) => Ok(Err(e)),
            };
            match caught_up {
                Ok(Ok(events)) => info!(events, "archive caught up with the log"),
                Ok(Err(e)) => warn!(error = %error_chain(&e), "the archiver did not stop cleanly"),
                Err(_) => warn!(
                    "the archive did not catch up within {FINAL_ARCHIVE:?}; the next start continues it"
                ),
            }
        }
        info!("server stopped");
        served
            .map_err(|e| ServeError::Task(e.to_string()))?
            .map_err(ServeError::from)
    }

    /// Serves until ctrl-c or SIGTERM (or until the server fails), then shuts down gracefully.
    pub async fn run_until_signal(mut self) -> Result<(), ServeError> {
        let recovery = self.recovery.take();
        let hangups = reload_on_hangup(self.security.clone());
        let recovered = async {
            match recovery {
                Some(task) => task
                    .await
                    .map_err(|e| ServeError::Task(e.to_string()))?
                    .map_err(ServeError::from),
                None => Ok(()),
            }
        };
        let _hangups = AbortOnDrop(hangups);
        tokio::select! {
            () = termination() => {
                info!("shutdown signal received; draining in-flight requests");
                self.shutdown().await
            }
            Err(e) = recovered => {
                error!(error = %error_chain(&e), "recovery failed; stopping");
                let _ = self.shutdown().await;
                Err(e)
            }
            ended = &mut self.server => {
                self.engine.shutdown().await;
                ended.map_err(|e| ServeError::Task(e.to_string()))?.map_err(ServeError::from)
            }
        }
    }
}

struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Reloads the TLS and token files on every SIGHUP (None where there are no signals, or nothing
/// to reload).
fn reload_on_hangup(security: Arc<Security>) -> Option<JoinHandle<()>> {
    let c = security.config();
    if c.tls.is_none() && c.auth_tokens.is_none() {
        return None;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => Some(tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    security.reload_logged("SIGHUP");
                }
            })),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; the files are reloaded only when they change");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
