//! [`FileLog`], the embedded event log (`--log file://./lambdarec-data/log`): a directory of segment
//! files, one CRC-checked frame per append call, one `write_all` + `fsync` per frame (group commit).
//!
//! Layout: `{first_position:020}.log` segments (format in `frame`) and a `LOCK` file that the open log
//! holds locked so that two processes never write one log. The active (last) segment is rolled when
//! the next frame would take it past `segment_bytes`; a frame is never split, and whole segments are
//! deleted by [`EventLog::release_before`] (never the active one, whose name keeps the next position
//! across a reopen even when every record has been released).
//!
//! Opening validates every retained segment (whole segments are deleted once snapshotted and archived,
//! so this is little data; CRC32C runs at many GB/s). A sealed segment that fails any check, and any
//! damaged frame followed by a frame that validates, is [`LogError::Corrupt`]: acknowledged data is
//! damaged and start-up must stop. A frame cut short at the end of the last segment, or damaged with
//! nothing valid after it, is a torn write of an append that was never acknowledged: it is cut off
//! with a warning.
//!
//! Durability: segment creation fsyncs the file and then the directory; deletion fsyncs the directory.
//! After any failed write or fsync the log refuses every later append ([`LogError::Failed`]): once an
//! fsync has failed, the kernel may have dropped the dirty pages, so a retry could report lost data as
//! durable.

mod frame;
mod reader;
mod segments;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions as FsOpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use reader::FileReader;
use segments::{Segment, io_error};

use crate::{Bounds, EventLog, LogError, LogReader, LogRecord, OpenOptions, Position, Result};

/// What a log shares with its readers on other threads.
#[derive(Debug)]
struct Shared {
    /// The position after the last fsync'd record: readers never read at or past it.
    durable_next: AtomicU64,
    /// The first retained position, for readers that find their segment released.
    first: AtomicU64,
}

/// The embedded, segmented, fsync'd event log.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Held (locked) for the life of the log.
    _lock: File,
    /// Oldest first; the last is the active segment that appends go to.
    segments: VecDeque<Segment>,
    active: File,
    next: Position,
    shared: Arc<Shared>,
    /// Why appends are refused, after a failed write or sync.
    failed: Option<String>,
    /// The frame being written, reused between appends.
    buf: Vec<u8>,
}

impl FileLog {
    /// Opens (or creates) the log in `dir`, creating the directory, taking its lock, validating
    /// its segments and cutting a torn tail.
    pub fn open(dir: impl AsRef<Path>, opts: &OpenOptions) -> Result<FileLog> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let dir = dir.canonicalize().map_err(io_error(dir))?;
        let lock = lock(&dir)?;
        let recovered = segments::recover(&dir)?;
        let segments: VecDeque<Segment> = recovered.segments.into();
        let last = segments
            .back()
            .expect("recovery leaves at least one segment");
        let active = FsOpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(io_error(&last.path))?;
        let shared = Arc::new(Shared {
            durable_next: AtomicU64::new(recovered.next),
            first: AtomicU64::new(segments[0].first),
        });
        Ok(FileLog {
            dir,
            segment_bytes: opts.segment_bytes.max(1),
            _lock: lock,
            segments,
            active,
            next: recovered.next,
            shared,
            failed: None,
            buf: Vec::new(),
        })
    }

    /// A reader at `from` of the log in `dir`, which another process may be writing: it takes no
    /// lock, cuts nothing, and reads up to the last frame that validates (a torn or in-progress
    /// frame at the end reads as the end, for now).
    pub fn open_read_only(dir: impl AsRef<Path>, from: Position) -> Result<FileReader> {
        FileReader::read_only(dir.as_ref(), from)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment files, oldest first, with their sizes.
    pub fn segment_files(&self) -> Vec<(PathBuf, u64)> {
        self.segments
            .iter()
            .map(|s| (s.path.clone(), s.len))
            .collect()
    }

    /// Remembers the first failure of a write or sync: no append is accepted after it.
    fn fail(&mut self, err: LogError) -> LogError {
        self.failed = Some(err.to_string());
        err
    }

    /// Starts a new active segment at the next position.
    fn roll(&mut self) -> Result<()> {
        let (file, segment) = segments::create(&self.dir, self.next)?;
        self.active = file;
        self.segments.push_back(segment);
        Ok(())
    }

    fn write_frame(&mut self) -> Result<()> {
        let path = &self.segments.back().expect("an active segment").path;
        self.active
            .write_all(&self.buf)
            .and_then(|()| self.active.sync_data())
            .map_err(io_error(path))
    }
}

/// Takes the directory's `LOCK` file, or says who holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = FsOpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            let msg = format!(
                "the event log in {} is open in another process or log (this lock file is held); \
                 only one writer may open a log",
                dir.display()
            );
            Err(io_error(&path)(io::Error::new(
                io::ErrorKind::WouldBlock,
                msg,
            )))
        }
        Err(TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

impl EventLog for FileLog {
    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn append(&mut self, records: &[LogRecord]) -> Result<Vec<Position>> {
        if let Some(why) = &self.failed {
            return Err(LogError::Failed(why.clone()));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        frame::encode_frame(&mut self.buf, self.next, records)?;
        let frame_len = self.buf.len() as u64;
        let active_len = self.segments.back().expect("an active segment").len;
        if active_len > frame::SEGMENT_HEADER_LEN && active_len + frame_len > self.segment_bytes {
            self.roll().map_err(|e| self.fail(e))?;
        }
        self.write_frame().map_err(|e| self.fail(e))?;
        self.segments.back_mut().expect("an active segment").len += frame_len;
        let start = self.next;
        self.next += records.len() as u64;
        self.shared.durable_next.store(self.next, Ordering::Release);
        Ok((start..self.next).collect())
    }

    fn bounds(&self) -> Result<Bounds> {
        Ok(Bounds {
            first: self.segments[0].first,
            next: self.next,
        })
    }

    fn reader(&self, from: Position) -> Result<Box<dyn LogReader>> {
        let first = self.segments[0].first;
        if from < first {
            return Err(LogError::Released {
                requested: from,
                first,
            });
        }
        let at = self.segments.partition_point(|s| s.first <= from) - 1;
        let reader = FileReader::live(&self.dir, self.shared.clone(), &self.segments[at], from)?;
        Ok(Box::new(reader))
    }

    fn release_before(&mut self, position: Position) -> Result<Position> {
        // The oldest segment may go when every record in it is below `position`, i.e. when the
        // segment after it starts at or below `position`; the active segment always stays.
        let mut deleted = Ok(false);
        while self.segments.len() > 1 && self.segments[1].first <= position {
            // Published before the unlink: a reader that then misses the file learns why.
            let old_first = self
                .shared
                .first
                .swap(self.segments[1].first, Ordering::AcqRel);
            let path = &self.segments[0].path;
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    self.shared.first.store(old_first, Ordering::Release);
                    deleted = Err(io_error(path)(e));
                    break;
                }
                _ => {}
            }
            self.segments.pop_front();
            deleted = Ok(true);
        }
        // Even after a failed unlink, the ones before it are gone: make that durable too.
        if !matches!(deleted, Ok(false)) {
            segments::sync_dir(&self.dir).map_err(|e| self.fail(e))?;
        }
        deleted?;
        Ok(self.segments[0].first)
    }

    fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}
