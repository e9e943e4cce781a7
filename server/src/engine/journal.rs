//! The journal: the event log's writer thread. The batcher hands it every served batch's records and
//! the replies that acknowledge them; it appends everything that is pending in one call — group commit:
//! one fsync (or one JetStream publish batch) for as many batcher cycles as arrived while the previous
//! append ran — and only then releases those replies. The batcher never waits for the log: it serves
//! the next batch while the journal makes the previous one durable.
//!
//! Snapshots travel through the journal too, so that each is stamped with the position of the last
//! record it reflects, and is written (by a thread of its own, so a large one never delays an ack)
//! only once that record is durable. The log is released below
//! the older of the two kept snapshots (so a damaged newest snapshot still has a predecessor and the
//! log after it) and below what the archiver has copied to the object store.
//!
//! After a failed append the journal fails every held reply and refuses further work: after a failed
//! fsync the kernel may have dropped the data, so no later success can be trusted. The server then
//! reports NOT_SERVING; a restart recovers from the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lambdarec_eventlog::{EventLog, LogRecord, Position};
use tracing::{debug, error, info, warn};

use super::batcher::plan::{Held, Output};
use super::snapshot::{SnapshotImage, SnapshotStore};
use super::{EngineError, Shared};
use crate::registry::error_chain;

/// Most messages one group commit takes (it takes fewer when fewer are waiting).
const MAX_GROUP: usize = 256;

/// Where the log stands, shared with the engine handle, the server and metrics.
#[derive(Debug, Default)]
pub struct LogStatus {
    /// Set with `failed`: the hot path (every event) checks this flag, not the lock.
    has_failed: AtomicBool,
    /// Why the log stopped accepting appends, once it has.
    failed: Mutex<Option<String>>,
    /// Position of the last durable record (0: none yet).
    pub durable: AtomicU64,
    /// Position the archiver has copied the log up to (`u64::MAX` when nothing archives: the log is
    /// then released after snapshots alone).
    pub archived: Arc<AtomicU64>,
    /// Positions of the kept snapshots, oldest first.
    snapshots: Mutex<Vec<Position>>,
}

impl LogStatus {
    pub fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fail(&self, reason: String) {
        let mut f = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        f.get_or_insert(reason);
        self.has_failed.store(true, Ordering::Release);
    }

    /// Records the snapshots now kept (oldest first).
    pub fn set_snapshots(&self, kept: Vec<Position>) {
        *self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = kept;
    }

    /// The position below which no record is needed any more: it is both in a snapshot that has a
    /// newer one after it, and archived.
    fn releasable(&self) -> Option<Position> {
        let kept = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let safe = (kept.len() >= 2).then(|| kept[kept.len() - 2])?;
        Some(safe.min(self.archived.load(Ordering::Acquire)))
    }
}

pub(super) enum JournalMsg {
    /// A served batch: its records and the replies to release once they are durable.
    Commit(Output),
    /// The sessions as of everything committed before this message.
    Snapshot(Box<SnapshotImage>),
    Stop,
}

/// The batcher's handle to the journal thread.
pub(super) struct Journal {
    tx: mpsc::Sender<JournalMsg>,
    thread: Option<JoinHandle<()>>,
}

impl Journal {
    /// Starts the writer thread. `last` is the position of the last record already in the log (the
    /// state the batcher starts from reflects every record up to it, once recovery has run).
    pub(super) fn start(
        log: Box<dyn EventLog>,
        snapshots: Option<SnapshotStore>,
        shared: Arc<Shared>,
        status: Arc<LogStatus>,
        last: Position,
        confirm: Option<mpsc::Sender<Vec<Confirmed>>>,
    ) -> std::io::Result<Journal> {
        let (tx, rx) = mpsc::channel();
        let snapshots = match snapshots {
            Some(store) => Some(SnapshotWriter::start(
                store,
                shared.clone(),
                status.clone(),
            )?),
            None => None,
        };
        let thread = std::thread::Builder::new()
            .name("lambdarec-journal".into())
            .spawn(move || {
                Writer {
                    log,
                    snapshots,
                    shared,
                    status,
                    last,
                    released_below: 0,
                    size_checked: Instant::now(),
                    confirm,
                }
                .run(rx)
            })?;
        Ok(Journal {
            tx,
            thread: Some(thread),
        })
    }

    pub(super) fn commit(&self, out: Output) {
        if let Err(mpsc::SendError(JournalMsg::Commit(out))) = self.tx.send(JournalMsg::Commit(out))
        {
            fail_held(out.held, "the journal thread has stopped");
        }
    }

    pub(super) fn snapshot(&self, image: SnapshotImage) {
        let _ = self.tx.send(JournalMsg::Snapshot(Box::new(image)));
    }

    /// Makes everything sent so far durable (and writes any snapshot sent), then stops the thread.
    pub(super) fn stop(&mut self) {
        let _ = self.tx.send(JournalMsg::Stop);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("the journal thread panicked");
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fail_held(held: Vec<Held>, reason: &str) {
    for h in held {
        h.fail(EngineError::LogFailed(reason.to_string()));
    }
}

struct Writer {
    log: Box<dyn EventLog>,
    snapshots: Option<SnapshotWriter>,
    shared: Arc<Shared>,
    status: Arc<LogStatus>,
    /// Position of the last record appended.
    last: Position,
    released_below: Position,
    /// When the log-size metric was last refreshed.
    size_checked: Instant,
    /// Replicas: where the positions of this replica's records go, before their acks.
    confirm: Option<mpsc::Sender<Vec<Confirmed>>>,
}

/// Replicas: one of this replica's records is durable at `position`; `contiguous` when the log
/// confirmed it directly follows the position the batcher expected (see `Output::expected`).
pub(super) struct Confirmed {
    pub(super) session_id: String,
    pub(super) writer_seq: u64,
    pub(super) position: Position,
    pub(super) contiguous: bool,
}

/// The expectation each record carries to the log: a replica's record whose session has no other
/// record in the group (the log may append a refused one after the others).
fn expectations(records: &[LogRecord], expected: &[(u64, Position)]) -> Vec<Option<Position>> {
    if expected.is_empty() {
        return vec![None; records.len()];
    }
    let by_seq: HashMap<u64, Position> = expected.iter().copied().collect();
    let mut per_session: HashMap<&str, u32> = HashMap::new();
    for r in records {
        *per_session.entry(&r.session_id).or_default() += 1;
    }
    records
        .iter()
        .map(|r| match per_session[r.session_id.as_str()] {
            1 if !r.writer.is_empty() => by_seq.get(&r.writer_seq).copied(),
            _ => None,
        })
        .collect()
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<JournalMsg>) {
        info!(log = %self.log.describe(), last = self.last, "journal started");
        let mut group = Vec::new();
        while let Ok(first) = rx.recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            let stop = self.group_commit(std::mem::take(&mut group));
            self.release();
            if stop {
                break;
            }
        }
        if let Some(mut writer) = self.snapshots.take() {
            writer.finish();
        }
        debug!("journal stopped");
    }

    /// Appends the records of every commit in `group` at once, then releases their replies and
    /// writes the snapshots among them. True when the group held a Stop.
    fn group_commit(&mut self, group: Vec<JournalMsg>) -> bool {
        let mut records = Vec::new();
        let mut held = Vec::new();
        let mut expected = Vec::new();
        let mut images = Vec::new();
        let mut stop = false;
        for msg in group {
            match msg {
                JournalMsg::Commit(out) => {
                    records.extend(out.records);
                    held.extend(out.held);
                    expected.extend(out.expected);
                }
                // Remember how many records precede the snapshot: its position is the last of them.
                JournalMsg::Snapshot(image) => images.push((records.len(), image)),
                JournalMsg::Stop => stop = true,
            }
        }
        if let Some(reason) = self.status.failure() {
            fail_held(held, &reason);
            return stop;
        }
        let started = Instant::now();
        let expected = expectations(&records, &expected);
        let appended = match self.log.append_expecting(&records, &expected) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!(
                    "appending to the event log {} failed: {}",
                    self.log.describe(),
                    error_chain(&e)
                );
                error!(%reason, records = records.len(), "event log failed: acknowledging nothing more; restart the server to recover from the log");
                self.status.fail(reason.clone());
                fail_held(held, &reason);
                return stop;
            }
        };
        let m = &self.shared.metrics;
        if !records.is_empty() {
            m.log_append_seconds
                .observe(started.elapsed().as_secs_f64());
            m.log_batch_records.observe(records.len() as f64);
        }
        if let Some(confirm) = &self.confirm {
            // Before the acks: a client's next call, made once it has its ack, finds the batcher
            // knowing where its records are.
            let mine = records.into_iter().zip(&appended);
            let confirmed = mine
                .filter(|(r, _)| !r.writer.is_empty())
                .map(|(r, &(position, contiguous))| Confirmed {
                    session_id: r.session_id,
                    writer_seq: r.writer_seq,
                    position,
                    contiguous,
                })
                .collect();
            let _ = confirm.send(confirmed);
        }
        let positions: Vec<Position> = appended.into_iter().map(|(p, _)| p).collect();
        held.into_iter().for_each(Held::release);
        // The highest position among the first n records, at least the last before this group: a
        // log may answer a deduplicated record with its original's (older) position, and a
        // snapshot's position must never move back (a replay would apply records twice).
        let mut through = Vec::with_capacity(positions.len() + 1);
        through.push(self.last);
        for &p in &positions {
            through.push(p.max(*through.last().expect("non-empty")));
        }
        self.last = *through.last().expect("non-empty");
        self.status.durable.store(self.last, Ordering::Release);
        self.refresh_size(false);
        if let Some(writer) = &self.snapshots {
            for (n, mut image) in images {
                image.position = through[n];
                // The stop's snapshot is always written; a periodic one is skipped if the previous
                // one is still being written (the next interval takes another).
                writer.submit(*image, stop);
            }
        }
        stop
    }

    /// Updates the log-size metric: after a release, else at most once a second (asking a remote log
    /// for its size is a round trip, which must not sit on every group commit).
    fn refresh_size(&mut self, now: bool) {
        if now || self.size_checked.elapsed() >= Duration::from_secs(1) {
            self.size_checked = Instant::now();
            self.shared.metrics.log_bytes.set(self.log.stored_bytes());
        }
    }

    /// Frees log storage that neither recovery nor the archive needs any more.
    fn release(&mut self) {
        let Some(below) = self.status.releasable() else {
            return;
        };
        let below = below.saturating_add(1).min(self.last + 1);
        if below <= self.released_below || self.status.failure().is_some() {
            return;
        }
        match self.log.release_before(below) {
            Ok(first) => {
                debug!(below, first, "released log storage");
                self.released_below = below;
                self.refresh_size(true);
            }
            Err(e) => warn!(error = %error_chain(&e), below, "cannot release log storage"),
        }
    }
}

/// Writes snapshots on a thread of its own, so that writing (and fsyncing) a large one never holds up
/// the group commits and their acks.
struct SnapshotWriter {
    tx: Option<mpsc::SyncSender<SnapshotImage>>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    fn start(
        mut store: SnapshotStore,
        shared: Arc<Shared>,
        status: Arc<LogStatus>,
    ) -> std::io::Result<SnapshotWriter> {
        let (tx, rx) = mpsc::sync_channel::<SnapshotImage>(1);
        let thread = std::thread::Builder::new()
            .name("lambdarec-snapshot".into())
            .spawn(move || {
                for image in rx {
                    write_snapshot(&mut store, &image, &shared, &status);
                }
            })?;
        Ok(SnapshotWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `image`; with `wait`, even when the writer is busy (blocking until it takes it).
    fn submit(&self, image: SnapshotImage, wait: bool) {
        let Some(tx) = &self.tx else { return };
        if wait {
            let _ = tx.send(image);
        } else if let Err(mpsc::TrySendError::Full(image)) = tx.try_send(image) {
            warn!(
                position = image.position,
                "the previous snapshot is still being written; this one is skipped"
            );
        }
    }

    /// Writes what is queued, then stops the thread.
    fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("the snapshot writer panicked");
        }
    }
}

fn write_snapshot(
    store: &mut SnapshotStore,
    image: &SnapshotImage,
    shared: &Shared,
    status: &LogStatus,
) {
    let (position, sessions) = (image.position, image.sessions.len());
    let started = Instant::now();
    match store.write(image) {
        Ok(kept) => {
            let took = started.elapsed();
            info!(
                position,
                sessions,
                took_ms = took.as_millis() as u64,
                "snapshot written"
            );
            let m = &shared.metrics;
            m.snapshot_seconds.observe(took.as_secs_f64());
            m.snapshot_unix_ms.set(image.taken_ms.max(0) as u64);
            status.set_snapshots(kept);
        }
        // Not fatal: the log keeps everything after the last good snapshot.
        Err(e) => {
            warn!(error = %error_chain(&e), position, "snapshot failed; the log keeps the events since the last one")
        }
    }
}
