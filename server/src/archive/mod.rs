//! The archiver: copies the event log's events into the archive (the master dataset, see
//! [`lambdarec_proto::archive`]) as day-partitioned Parquet, exactly once across restarts.
//!
//! ```text
//! let mut archiver = Archiver::recover(Archive::in_store(url)?, ArchiveOptions::default()).await?;
//! archiver.connect(&log.describe(), log.bounds()?.first, |from| log.reader(from))?;  // start-up
//! archiver.progress().publish_through(status.archived.clone());   // bounds log release
//! archiver.run_once().await?;          // everything durable now, or:
//! let task = archiver.spawn();         // poll every `interval`; task.stop().await on shutdown
//! ```
//!
//! Archive lag in records is `progress.lag(log_next)` (or the server's durable position minus
//! `archived_through()`).
//!
//! One batch: up to `max_records` log records (or what the log has), split by the UTC day of each
//! event's time, one file per day (each an atomic put), then the checkpoint. `recover` deletes the
//! files of a batch that crashed before its checkpoint, so no event is written twice and none is
//! skipped. The log reader is synchronous (a file read, or a wait on JetStream), so reading and
//! Parquet encoding run on tokio's blocking pool and only the object-store I/O is async.

mod progress;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lambdarec_eventlog::{LogError, LogReader, LogRecord, Position};
use lambdarec_proto::archive::{
    Archive, ArchiveError, ArchiveFile, ArchivedEvent, Checkpoint, Date, DateRange, encode, file_of,
};
use lambdarec_proto::bundle::{format_rfc3339_ms, now_unix_ms};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use progress::ArchiveProgress;

/// How the archiver batches and polls.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveOptions {
    /// Most log records per batch (one file per day of the batch's events).
    pub max_records: usize,
    /// Time between polls of the log once caught up (and between retries after a failure).
    pub interval: Duration,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            max_records: 100_000,
            interval: Duration::from_secs(10),
        }
    }
}

/// Why the archiver could not start or archive a batch.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("reading the event log: {0}")]
    Log(#[from] LogError),
    #[error(
        "the archive at {archive} continues log {checkpoint_log:?}, not {log:?}: its positions \
         would not match (archive this log into another store)"
    )]
    OtherLog {
        archive: String,
        checkpoint_log: String,
        log: String,
    },
    #[error(
        "the archive at {archive} is through position {through}, but log {log:?} does not reach \
         it: was the log replaced? (archive the new log into another store)"
    )]
    AheadOfLog {
        archive: String,
        log: String,
        through: Position,
    },
    #[error("the archiver has no log reader: call connect first")]
    NotConnected,
    #[error("the archiver's {what} task failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// What one batch did.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchReport {
    /// Log records read (events and deletes).
    pub records: usize,
    /// Events written (deletes are not archived).
    pub events: usize,
    pub files: Vec<ArchiveFile>,
    pub bytes: u64,
    /// The checkpoint after the batch.
    pub through: Position,
    /// The batch filled `max_records`, so more is probably waiting.
    pub full: bool,
    pub seconds: f64,
}

/// A batch read and encoded but not yet stored: kept until its files and checkpoint are written,
/// so that a failed put is retried with the same records (and the same file names).
struct Encoded {
    records: usize,
    events: usize,
    through: Position,
    full: bool,
    files: Vec<(ArchiveFile, Bytes)>,
    started: Instant,
}

/// Copies a log into an archive. See the module docs.
pub struct Archiver {
    archive: Archive,
    options: ArchiveOptions,
    /// The last position archived (0: none).
    through: Position,
    log: Option<String>,
    reader: Option<Box<dyn LogReader>>,
    pending: Option<Encoded>,
    progress: std::sync::Arc<ArchiveProgress>,
}

impl Archiver {
    /// Opens the archive for appending: reads its checkpoint and deletes the orphans of a batch
    /// that crashed before its checkpoint (files whose first position is past it).
    pub async fn recover(
        archive: Archive,
        options: ArchiveOptions,
    ) -> Result<Archiver, ArchiverError> {
        let checkpoint = archive.read_checkpoint().await?;
        let through = checkpoint.as_ref().map_or(0, |c| c.through);
        let orphans: Vec<ArchiveFile> = archive
            .files(DateRange::ALL)
            .await?
            .into_iter()
            .filter(|f| f.first > through)
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(
                archive = archive.url(),
                through,
                files = orphans.len(),
                "deleting files of an archive batch that did not reach its checkpoint"
            );
        }
        for f in &orphans {
            archive.delete_file(f).await?;
        }
        let progress = std::sync::Arc::new(ArchiveProgress::default());
        progress.set_through(through);
        Ok(Archiver {
            archive,
            // max_records 0 would read nothing forever.
            options: ArchiveOptions {
                max_records: options.max_records.max(1),
                ..options
            },
            through,
            log: checkpoint.map(|c| c.log),
            reader: None,
            pending: None,
            progress,
        })
    }

    /// The last log position archived (0: nothing yet).
    pub fn archived_through(&self) -> Position {
        self.through
    }

    /// Counters and the archived-through position, shared with metrics and log release.
    pub fn progress(&self) -> std::sync::Arc<ArchiveProgress> {
        self.progress.clone()
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Attaches the log: `log` is its `describe()` (recorded in the checkpoint, and checked against
    /// it), `first` its first retained position, and `open` opens a reader at a position (e.g.
    /// `|from| log.reader(from)`). Reading starts after the checkpoint, or at `first` for a new
    /// archive; returns that position. A log that does not reach the checkpoint (replaced under the
    /// same name) is refused. Log calls block: call this where blocking is allowed (not on an async
    /// worker; a JetStream log runs its own runtime).
    pub fn connect(
        &mut self,
        log: &str,
        first: Position,
        mut open: impl FnMut(Position) -> Result<Box<dyn LogReader>, LogError>,
    ) -> Result<Position, ArchiverError> {
        if let Some(previous) = &self.log
            && previous != log
        {
            return Err(ArchiverError::OtherLog {
                archive: self.archive.url().to_owned(),
                checkpoint_log: previous.clone(),
                log: log.to_owned(),
            });
        }
        let from = if self.through == 0 {
            first
        } else if self.through + 1 < first {
            let lost = first - self.through - 1;
            tracing::error!(
                archive = self.archive.url(),
                log,
                through = self.through,
                first,
                lost,
                "the log released records that were never archived; continuing from its first position"
            );
            self.progress.add_lost(lost);
            first
        } else {
            self.check_log_reaches_checkpoint(log, &mut open)?;
            self.through + 1
        };
        self.reader = Some(open(from)?);
        self.log = Some(log.to_owned());
        tracing::info!(
            archive = self.archive.url(),
            log,
            from,
            "archiving the event log"
        );
        Ok(from)
    }

    /// The record at the checkpoint must still be readable (or released): a log that ends before
    /// it was replaced, and continuing would skip its records up to the old position.
    fn check_log_reaches_checkpoint(
        &self,
        log: &str,
        open: &mut impl FnMut(Position) -> Result<Box<dyn LogReader>, LogError>,
    ) -> Result<(), ArchiverError> {
        let last = match open(self.through) {
            Ok(mut reader) => reader.next_batch(1)?.first().map(|(p, _)| *p),
            // Released right up to the checkpoint: archived, then freed, as intended.
            Err(LogError::Released { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if last == Some(self.through) {
            return Ok(());
        }
        Err(ArchiverError::AheadOfLog {
            archive: self.archive.url().to_owned(),
            log: log.to_owned(),
            through: self.through,
        })
    }

    /// Archives everything the log holds now, batch by batch; returns the events written.
    pub async fn run_once(&mut self) -> Result<u64, ArchiverError> {
        let mut events = 0;
        while let Some(report) = self.archive_batch().await? {
            events += report.events as u64;
        }
        Ok(events)
    }

    /// Archives one batch (or retries the last one that failed). `None`: the log had nothing new.
    pub async fn archive_batch(&mut self) -> Result<Option<BatchReport>, ArchiverError> {
        let batch = match self.pending.take() {
            Some(batch) => batch,
            None => match self.read_and_encode().await? {
                Some(batch) => batch,
                None => return Ok(None),
            },
        };
        // Borrow fields, not `&self`: the reader is Send but not Sync, and this future must be Send.
        let log = self.log.as_deref().unwrap_or_default();
        let stored = store(&self.archive, log, &batch).await;
        if let Err(e) = stored {
            self.pending = Some(batch);
            return Err(e);
        }
        let report = BatchReport {
            records: batch.records,
            events: batch.events,
            bytes: batch.files.iter().map(|(_, b)| b.len() as u64).sum(),
            files: batch.files.into_iter().map(|(f, _)| f).collect(),
            through: batch.through,
            full: batch.full,
            seconds: batch.started.elapsed().as_secs_f64(),
        };
        self.through = report.through;
        self.progress.record_batch(&report);
        if !report.files.is_empty() {
            tracing::info!(
                archive = self.archive.url(),
                events = report.events,
                files = report.files.len(),
                bytes = report.bytes,
                through = report.through,
                ms = format!("{:.1}", report.seconds * 1e3),
                "archived a batch"
            );
        }
        Ok(Some(report))
    }

    /// Reads the next batch and encodes its files on the blocking pool (the reader may block, and
    /// encoding is CPU work). `None` when the log has nothing after the checkpoint.
    async fn read_and_encode(&mut self) -> Result<Option<Encoded>, ArchiverError> {
        let mut reader = self.reader.take().ok_or(ArchiverError::NotConnected)?;
        let (max, through, archive) =
            (self.options.max_records, self.through, self.archive.clone());
        let progress = self.progress.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = reader
                .next_batch(max)
                .map_err(ArchiverError::from)
                .and_then(|records| {
                    let full = records.len() >= max;
                    encode_batch(records, through, &archive, &progress, full, started)
                });
            (reader, out)
        })
        .await;
        match joined {
            Ok((reader, out)) => {
                self.reader = Some(reader);
                out
            }
            // The reader panicked (or the runtime is shutting down): it is gone with its position.
            Err(source) => Err(ArchiverError::Task {
                what: "log reading",
                source,
            }),
        }
    }

    /// Runs the archiver as a task: a batch whenever the log has records, a poll every
    /// `interval` once caught up; a failed batch is logged, counted and retried after `interval`.
    pub fn spawn(mut self) -> ArchiverTask {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let progress = self.progress.clone();
        let handle = tokio::spawn(async move {
            loop {
                let more = match self.archive_batch().await {
                    Ok(report) => report.is_some_and(|r| r.full),
                    Err(e) => {
                        self.progress.add_error();
                        tracing::warn!(archive = self.archive.url(), error = %e, "archive batch failed; retrying");
                        false
                    }
                };
                if *stop_rx.borrow() {
                    break;
                }
                if !more {
                    tokio::select! {
                        _ = tokio::time::sleep(self.options.interval) => {}
                        _ = stop_rx.changed() => break,
                    }
                }
            }
            self
        });
        ArchiverTask {
            stop: stop_tx,
            handle,
            progress,
        }
    }
}

/// An archiver running as a task.
pub struct ArchiverTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Archiver>,
    progress: std::sync::Arc<ArchiveProgress>,
}

impl ArchiverTask {
    pub fn progress(&self) -> std::sync::Arc<ArchiveProgress> {
        self.progress.clone()
    }

    /// Stops after the batch in progress (if any) and returns the archiver.
    pub async fn stop(self) -> Result<Archiver, ArchiverError> {
        let _ = self.stop.send(true);
        self.handle.await.map_err(|source| ArchiverError::Task {
            what: "archiver",
            source,
        })
    }
}

/// Writes a batch's files (concurrently: each is one atomic put), then its checkpoint.
async fn store(archive: &Archive, log: &str, batch: &Encoded) -> Result<(), ArchiverError> {
    let puts = batch
        .files
        .iter()
        .map(|(f, bytes)| archive.put_file(f, bytes.clone()));
    futures::future::try_join_all(puts).await?;
    let checkpoint = Checkpoint {
        through: batch.through,
        log: log.to_owned(),
        updated: format_rfc3339_ms(now_unix_ms()),
    };
    archive.write_checkpoint(&checkpoint).await?;
    Ok(())
}

/// Splits records by day and encodes one file per day. Records at or below `through` (already
/// archived; a reader should not return them) are skipped, so nothing is written twice.
fn encode_batch(
    records: Vec<(Position, LogRecord)>,
    through: Position,
    archive: &Archive,
    progress: &ArchiveProgress,
    full: bool,
    started: Instant,
) -> Result<Option<Encoded>, ArchiverError> {
    let Some(&(last, _)) = records.last() else {
        return Ok(None);
    };
    let n = records.len();
    let mut days: BTreeMap<Date, Vec<ArchivedEvent>> = BTreeMap::new();
    let mut seen = through;
    for (position, record) in records {
        if position <= seen {
            tracing::warn!(
                position,
                through = seen,
                "the log reader repeated a position; skipped"
            );
            continue;
        }
        if position > seen + 1 && seen != 0 {
            progress.add_lost(position - seen - 1);
            tracing::warn!(after = seen, next = position, "the log skipped positions");
        }
        seen = position;
        if let Some(event) = ArchivedEvent::from_record(position, record) {
            days.entry(Date::from_unix_ms(event.timestamp_ms))
                .or_default()
                .push(event);
        }
    }
    let mut files = Vec::with_capacity(days.len());
    let mut events = 0;
    for (date, rows) in days {
        let file = file_of(date, &rows);
        let bytes = encode(&rows, &archive.display(&file.relative_path()))?;
        events += rows.len();
        files.push((file, Bytes::from(bytes)));
    }
    Ok(Some(Encoded {
        records: n,
        events,
        through: last.max(through),
        full,
        files,
        started,
    }))
}

#[cfg(test)]
mod tests;
