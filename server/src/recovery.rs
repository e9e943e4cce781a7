//! Start-up recovery from the event log: open the log (the embedded log cuts a torn tail and refuses
//! corrupt data here), pick the newest good snapshot, restore it, replay the log after it through the
//! normal batch path, and only then admit requests (health stays NOT_SERVING meanwhile).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lambdarec_eventlog::memory::MemoryLog;
use lambdarec_eventlog::{EventLog, LogError, LogReader, LogRecord, OpenOptions, Position};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{LogConfig, ServeConfig};
use crate::engine::snapshot::{LoadedSnapshot, SnapshotError, SnapshotStore};
use crate::engine::{Engine, EngineError, LogSetup, LogStatus, ReplayStats, RestoreStats};
use crate::metrics::Metrics;
use crate::registry::error_chain;

/// Records per replay job: large enough for one big GRU step, small enough to keep memory flat.
const REPLAY_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot open the event log {url}")]
    Open {
        url: String,
        #[source]
        source: LogError,
    },
    #[error("cannot use the snapshot directory")]
    Snapshots(#[source] SnapshotError),
    #[error("cannot read the event log at position {position}")]
    Read {
        position: Position,
        #[source]
        source: LogError,
    },
    #[error("cannot apply the event log")]
    Apply(#[source] EngineError),
    #[error(
        "--replica needs an event log the replicas share, such as nats://HOST:PORT/STREAM; {url} is \
         local to one server"
    )]
    NotShared { url: String },
}

/// What recovery will restore and replay once the engine runs.
pub struct Pending {
    snapshot: Option<LoadedSnapshot>,
    reader: Box<dyn LogReader>,
    from: Position,
    end: Position,
    /// A reader over the whole log, when it still holds everything from position 1: used instead of
    /// the snapshot if the serving model turns out to have another hidden size (its states cannot be
    /// reused, and a full replay rebuilds them exactly).
    whole: Option<Box<dyn LogReader>>,
    /// A replica's: a snapshot whose states do not fit is dropped (its sessions are rebuilt exactly
    /// from the shared log on demand) rather than rebuilt from recent items.
    replica: bool,
}

/// What recovery did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub restored: RestoreStats,
    pub replayed: ReplayStats,
    pub took: Duration,
}

/// Opens the log `config.log` names and decides where recovery starts. Blocking I/O.
pub fn prepare(config: &ServeConfig) -> Result<Option<(LogSetup, Pending)>, RecoveryError> {
    let (url, log) = match &config.log {
        LogConfig::None => {
            warn!(
                "--log none: events are applied in memory only; a crash or restart loses every session"
            );
            return Ok(None);
        }
        LogConfig::Memory(storage) => (
            "memory".to_string(),
            Box::new(MemoryLog::new(storage.clone())) as Box<dyn EventLog>,
        ),
        LogConfig::Url(url) => {
            let options = OpenOptions {
                segment_bytes: config.log_segment_bytes,
                ..OpenOptions::default()
            };
            let open = lambdarec_eventlog::open(url, &options);
            let log = open.map_err(|source| RecoveryError::Open {
                url: url.clone(),
                source,
            })?;
            let Some(log) = log else {
                warn!(
                    "--log none: events are applied in memory only; a crash or restart loses every session"
                );
                return Ok(None);
            };
            (url.clone(), log)
        }
    };
    let open_err = |source| RecoveryError::Open {
        url: url.clone(),
        source,
    };
    let bounds = log.bounds().map_err(open_err)?;
    if config.replica {
        return replica(config, url, log, bounds).map(Some);
    }
    let snapshots = match &config.snapshot_dir {
        Some(dir) => Some(SnapshotStore::open(dir).map_err(RecoveryError::Snapshots)?),
        None => None,
    };
    let snapshot = match &snapshots {
        Some(store) => newest_usable(store, bounds.first)?,
        None => None,
    };
    let from = match &snapshot {
        Some(s) if s.header.position >= bounds.next => {
            warn!(
                snapshot = %s.path.display(), snapshot_position = s.header.position, log_end = bounds.next,
                "the snapshot is ahead of the event log (was the log replaced?); restoring it and replaying nothing"
            );
            bounds.next
        }
        Some(s) => s.header.position + 1,
        None => {
            if bounds.first > 1 {
                warn!(
                    first = bounds.first,
                    "no snapshot covers the log before its first retained position: sessions older than it are not recovered"
                );
            }
            bounds.first
        }
    };
    let reader = log.reader(from).map_err(open_err)?;
    let whole = match &snapshot {
        Some(_) if bounds.first == 1 && from > 1 => Some(log.reader(1).map_err(open_err)?),
        _ => None,
    };
    info!(
        log = %log.describe(), first = bounds.first, next = bounds.next,
        snapshot = snapshot.as_ref().map(|s| s.path.display().to_string()).unwrap_or_else(|| "none".into()),
        replay_from = from, "event log opened"
    );
    let status = Arc::new(LogStatus::default());
    // Until an archiver reports progress, the log is released after snapshots alone.
    status.archived.store(u64::MAX, Ordering::Release);
    if let Some(store) = &snapshots
        && let Ok(kept) = store.positions()
    {
        status.set_snapshots(kept.into_iter().map(|(p, _)| p).collect());
    }
    let setup = LogSetup {
        log,
        snapshots,
        last: bounds.next - 1,
        status,
        replica: None,
    };
    let pending = Pending {
        snapshot,
        reader,
        from,
        end: bounds.next,
        whole,
        replica: false,
    };
    Ok(Some((setup, pending)))
}

/// A replica's start: its newest snapshot, if it has one, and no replay (each session is caught up
/// from the shared log when a request for it first arrives, from the position its snapshot holds it
/// up to). The shared log is never released by a replica: nothing archives through it.
fn replica(
    config: &ServeConfig,
    url: String,
    log: Box<dyn EventLog>,
    bounds: lambdarec_eventlog::Bounds,
) -> Result<(LogSetup, Pending), RecoveryError> {
    let Some(sessions) = log.session_reader() else {
        return Err(RecoveryError::NotShared { url });
    };
    let open_err = |source| RecoveryError::Open {
        url: url.clone(),
        source,
    };
    let snapshots = match &config.snapshot_dir {
        Some(dir) => Some(SnapshotStore::open(dir).map_err(RecoveryError::Snapshots)?),
        None => None,
    };
    let snapshot = match &snapshots {
        // A snapshot without per-session log positions (a server that was not a replica) cannot
        // say which of the log's records its sessions hold.
        Some(store) => newest_usable(store, 0)?.filter(|s| {
            let usable = s.header.writer.is_some();
            if !usable {
                warn!(snapshot = %s.path.display(), "not a replica's snapshot (no log positions); sessions are rebuilt from the log instead");
            }
            usable
        }),
        None => None,
    };
    let reader = log.reader(bounds.next).map_err(open_err)?;
    let writer = replica_name(config);
    info!(
        log = %log.describe(), first = bounds.first, next = bounds.next, writer = %writer,
        snapshot = snapshot.as_ref().map(|s| s.path.display().to_string()).unwrap_or_else(|| "none".into()),
        "event log opened as a replica: sessions are caught up from it on demand"
    );
    if config.drain_grace.is_zero() {
        warn!(
            "--replica without --drain-grace: a SIGTERM stops accepting before the proxy has taken this replica out, and calls sent meanwhile fail (clients retry them)"
        );
    }
    let setup = LogSetup {
        log,
        snapshots,
        last: bounds.next - 1,
        // `archived` stays 0: nothing archives through a replica, so the log is never released.
        status: Arc::new(LogStatus::default()),
        replica: Some((sessions, writer)),
    };
    let pending = Pending {
        snapshot,
        reader,
        from: bounds.next,
        end: bounds.next,
        whole: None,
        replica: true,
    };
    Ok((setup, pending))
}

/// This server's name in the records it writes: its listen port, process id and start time, so
/// that a restarted replica is a new writer.
fn replica_name(config: &ServeConfig) -> Arc<str> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "{}-{}-{:x}",
        config.listen.port(),
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    );
    Arc::from(name)
}

/// The newest snapshot that reads back intact and that the log continues (its position is at or
/// after the log's first retained position − 1). Damaged ones are skipped with a warning.
fn newest_usable(
    store: &SnapshotStore,
    log_first: Position,
) -> Result<Option<LoadedSnapshot>, RecoveryError> {
    let mut all = store.positions().map_err(RecoveryError::Snapshots)?;
    all.reverse();
    for (position, path) in all {
        if position + 1 < log_first {
            warn!(snapshot = %path.display(), position, log_first, "snapshot too old: the log no longer holds the events after it");
            continue;
        }
        match SnapshotStore::read(&path) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => warn!(error = %error_chain(&e), "skipping a damaged snapshot"),
        }
    }
    Ok(None)
}

/// Waits for a model, restores the snapshot, replays the log after it, then admits requests.
pub async fn run(
    engine: &Engine,
    pending: Pending,
    metrics: &Metrics,
) -> Result<RecoveryReport, RecoveryError> {
    let Pending {
        mut snapshot,
        mut reader,
        mut from,
        end,
        whole,
        replica,
    } = pending;
    let mut waited = false;
    while engine.model().is_none() {
        if !waited {
            info!("recovery waits for a model to replay the event log with");
            waited = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    let hidden = engine.model().map(|m| m.hidden);
    if let (Some(s), Some(whole)) = (&snapshot, whole)
        && Some(s.header.hidden) != hidden
    {
        info!(
            snapshot_hidden = s.header.hidden,
            serving_hidden = hidden.unwrap_or(0),
            "the snapshot's states do not fit the serving model; replaying the whole log instead"
        );
        (snapshot, reader, from) = (None, whole, 1);
    }
    if replica
        && let Some(s) = &snapshot
        && Some(s.header.hidden) != hidden
    {
        info!(
            snapshot_hidden = s.header.hidden,
            serving_hidden = hidden.unwrap_or(0),
            "the snapshot's states do not fit the serving model; sessions are rebuilt from the shared log instead"
        );
        snapshot = None;
    }
    if let Some(s) = snapshot {
        report.restored = engine.restore(s).await.map_err(RecoveryError::Apply)?;
    }
    if from >= end {
        // Nothing was in the log after the snapshot when it was opened. (On a replica, others may
        // append meanwhile: their sessions are caught up when requested, never replayed here,
        // where a session could be built from a part of its records.)
        return Ok(finish(engine, report, started, metrics, from, end));
    }
    let (tx, mut rx) = mpsc::channel(2);
    // Reading is blocking I/O (files, or JetStream through the log's own runtime): a thread of its
    // own reads ahead while the engine applies the previous batch.
    let read_thread = std::thread::Builder::new()
        .name("lambdarec-replay".into())
        .spawn(move || read_all(reader, from, tx))
        .map_err(|e| RecoveryError::Read {
            position: from,
            source: LogError::Io {
                path: "replay thread".into(),
                source: e,
            },
        })?;
    while let Some(batch) = rx.recv().await {
        let stats = engine
            .replay(batch.map_err(|(position, source)| RecoveryError::Read { position, source })?)
            .await
            .map_err(RecoveryError::Apply)?;
        let r = &mut report.replayed;
        r.events += stats.events;
        r.deletes += stats.deletes;
        r.unknown_items += stats.unknown_items;
        r.skipped += stats.skipped;
        r.last_position = stats.last_position.or(r.last_position);
    }
    let _ = read_thread.join();
    Ok(finish(engine, report, started, metrics, from, end))
}

/// Records what recovery did and admits requests.
fn finish(
    engine: &Engine,
    mut report: RecoveryReport,
    started: Instant,
    metrics: &Metrics,
    from: Position,
    end: Position,
) -> RecoveryReport {
    report.took = started.elapsed();
    metrics.replay_millis.set(report.took.as_millis() as u64);
    metrics.replay_events.set(report.replayed.events);
    engine.finish_recovery();
    info!(
        restored_sessions = report.restored.sessions,
        replayed_events = report.replayed.events,
        replayed_deletes = report.replayed.deletes,
        unknown_items = report.replayed.unknown_items,
        from,
        end,
        took_ms = report.took.as_millis() as u64,
        "recovered from the event log"
    );
    if report.replayed.unknown_items > 0 {
        warn!(
            events = report.replayed.unknown_items,
            "replayed events name items the serving model does not know; they were skipped"
        );
    }
    report
}

type Batch = Result<Vec<(Position, LogRecord)>, (Position, LogError)>;

fn read_all(mut reader: Box<dyn LogReader>, from: Position, tx: mpsc::Sender<Batch>) {
    let mut at = from;
    loop {
        match reader.next_batch(REPLAY_BATCH) {
            Ok(batch) if batch.is_empty() => return,
            Ok(batch) => {
                at = batch.last().map_or(at, |(p, _)| p + 1);
                if tx.blocking_send(Ok(batch)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err((at, e)));
                return;
            }
        }
    }
}
