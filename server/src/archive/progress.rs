//! The archiver's counters, shared lock-free with whoever reports them (metrics) or acts on them
//! (releasing log segments below min(snapshot, archived)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use lambdarec_eventlog::Position;

use super::BatchReport;

/// Counters since the archiver started, and the archived-through position.
#[derive(Debug, Default)]
pub struct ArchiveProgress {
    through: AtomicU64,
    /// Another place the archived-through position is stored to (the server's log status).
    publish: OnceLock<Arc<AtomicU64>>,
    records: AtomicU64,
    events: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    last_batch_micros: AtomicU64,
}

impl ArchiveProgress {
    /// The last log position archived (0: nothing yet). Everything at or below it is in the
    /// archive, so the log may release it once snapshots no longer need it.
    pub fn archived_through(&self) -> Position {
        self.through.load(Ordering::Acquire)
    }

    /// Log records not yet archived, given the log's next position (`Bounds::next`): the
    /// positions after the archived one up to the log's last.
    pub fn lag(&self, log_next: Position) -> u64 {
        log_next
            .saturating_sub(1)
            .saturating_sub(self.archived_through())
    }

    /// Log records read and checkpointed (events and deletes).
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Events written to the archive.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// Parquet bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Batches that failed (and were retried).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Positions the log no longer had (or skipped) when the archiver reached them.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Seconds the last stored batch took from reading to checkpoint.
    pub fn last_batch_seconds(&self) -> f64 {
        self.last_batch_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Stores the archived-through position into `sink` too, from now on (e.g. the server's
    /// `LogStatus::archived`, which bounds what the log may release). Only the first sink is kept.
    pub fn publish_through(&self, sink: Arc<AtomicU64>) {
        sink.store(self.archived_through(), Ordering::Release);
        let _ = self.publish.set(sink);
    }

    pub(super) fn set_through(&self, through: Position) {
        self.through.store(through, Ordering::Release);
        if let Some(sink) = self.publish.get() {
            sink.store(through, Ordering::Release);
        }
    }

    pub(super) fn record_batch(&self, r: &BatchReport) {
        self.records.fetch_add(r.records as u64, Ordering::Relaxed);
        self.events.fetch_add(r.events as u64, Ordering::Relaxed);
        self.files
            .fetch_add(r.files.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(r.bytes, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_batch_micros
            .store((r.seconds * 1e6) as u64, Ordering::Relaxed);
        self.set_through(r.through);
    }

    pub(super) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }
}
