//! Reading the embedded log: a reader walks the segment files with handles of its own, frame by frame,
//! and hands out records in order. A reader of a live [`super::FileLog`] never reads past the log's
//! durable end; a read-only reader (another process's log) reads up to the last frame that validates.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Shared;
use super::frame::{self, FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN, SEGMENT_MAGIC};
use super::segments::{self, io_error};
use crate::{LogError, LogReader, LogRecord, Position, Result};

/// How far a reader may read.
enum Limit {
    /// Up to the durable end that the writing [`super::FileLog`] publishes after each sync.
    Durable(Arc<Shared>),
    /// Up to the last frame that validates: the writer is another process, so a frame that is
    /// incomplete or fails its checksum at the end may still be being written.
    Validated,
}

/// A [`LogReader`] over the segment files of a directory.
pub struct FileReader {
    dir: PathBuf,
    limit: Limit,
    /// The segment being read, its path, and the offset of the next frame in it.
    file: File,
    path: PathBuf,
    offset: u64,
    /// The position of the first record of the frame at `offset`.
    frame_pos: Position,
    /// The next position to hand out (records below it in a frame are skipped).
    next: Position,
    pending: VecDeque<(Position, LogRecord)>,
    payload: Vec<u8>,
}

impl FileReader {
    /// A reader of a live log at `from`, starting in `segment` (the one holding `from`).
    pub(super) fn live(
        dir: &Path,
        shared: Arc<Shared>,
        segment: &segments::Segment,
        from: Position,
    ) -> Result<FileReader> {
        let first = shared.first.load(Ordering::Acquire);
        let file =
            File::open(&segment.path).map_err(|e| released_or_io(e, from, first, segment))?;
        Ok(Self::at(dir, Limit::Durable(shared), file, segment, from))
    }

    /// A reader at `from` of a log that another process may be writing. It never modifies the
    /// directory (no lock, no cut); a torn tail simply reads as the end.
    pub(super) fn read_only(dir: &Path, from: Position) -> Result<FileReader> {
        let all = segments::list(dir)?;
        let Some(oldest) = all.first() else {
            let source = io::Error::new(io::ErrorKind::NotFound, "no log segments here");
            return Err(io_error(dir)(source));
        };
        let Some(segment) = all.iter().rev().find(|s| s.first <= from) else {
            return Err(LogError::Released {
                requested: from,
                first: oldest.first,
            });
        };
        let file = File::open(&segment.path).map_err(io_error(&segment.path))?;
        let mut magic = [0u8; SEGMENT_MAGIC.len()];
        let n = read_up_to(&file, &mut magic, 0).map_err(io_error(&segment.path))?;
        if n == magic.len() && magic != SEGMENT_MAGIC {
            return Err(corrupt(&segment.path, 0, "not a lambdarec log segment"));
        }
        Ok(Self::at(dir, Limit::Validated, file, segment, from))
    }

    fn at(
        dir: &Path,
        limit: Limit,
        file: File,
        segment: &segments::Segment,
        from: Position,
    ) -> FileReader {
        FileReader {
            dir: dir.to_path_buf(),
            limit,
            file,
            path: segment.path.clone(),
            offset: SEGMENT_HEADER_LEN,
            frame_pos: segment.first,
            next: from,
            pending: VecDeque::new(),
            payload: Vec::new(),
        }
    }

    /// Reads the frame at the reader's place into `pending`; false when there is none to read yet.
    fn read_frame(&mut self) -> Result<bool> {
        if let Limit::Durable(shared) = &self.limit
            && self.frame_pos >= shared.durable_next.load(Ordering::Acquire)
        {
            return Ok(false);
        }
        let mut head = [0u8; FRAME_HEADER_LEN];
        let mut got =
            read_up_to(&self.file, &mut head, self.offset).map_err(io_error(&self.path))?;
        if got == 0 {
            if !self.next_segment()? {
                return Ok(false);
            }
            got = read_up_to(&self.file, &mut head, self.offset).map_err(io_error(&self.path))?;
            if got == 0 {
                return self.damaged("segment holds no frame");
            }
        }
        let header = match FrameHeader::parse(&head) {
            Ok(h) if got == FRAME_HEADER_LEN => h,
            Ok(_) => return self.damaged("frame header cut short"),
            Err(reason) => return self.damaged(reason),
        };
        if header.base != self.frame_pos {
            let reason = format!(
                "frame holds positions from {}, expected {}",
                header.base, self.frame_pos
            );
            return Err(corrupt(&self.path, self.offset, reason));
        }
        let at = self.offset + FRAME_HEADER_LEN as u64;
        // A damaged length must not become a huge allocation (found by fuzzing): the payload has to
        // fit in what the file holds before any room is made for it.
        let file_len = self.file.metadata().map_err(io_error(&self.path))?.len();
        if at.saturating_add(u64::from(header.payload_len)) > file_len {
            return self.damaged("frame payload cut short");
        }
        self.payload.resize(header.payload_len as usize, 0);
        let got = read_up_to(&self.file, &mut self.payload, at).map_err(io_error(&self.path))?;
        if got < self.payload.len() {
            return self.damaged("frame payload cut short");
        }
        if let Err(reason) = frame::check_payload(&header, &self.payload) {
            return self.damaged(&reason);
        }
        for (i, bytes) in frame::records(&self.payload).enumerate() {
            let position = header.base + i as u64;
            if position >= self.next {
                self.pending
                    .push_back((position, crate::decode(position, bytes)?));
            }
        }
        self.offset += header.frame_len();
        self.frame_pos = header.end();
        Ok(true)
    }

    /// At the end of a segment: moves to the one named by the next position, if it exists.
    fn next_segment(&mut self) -> Result<bool> {
        if self.offset == SEGMENT_HEADER_LEN {
            // The segment holds no frame yet, so it is the one named by the next position.
            return match self.limit {
                Limit::Validated => Ok(false),
                Limit::Durable(_) => {
                    Err(corrupt(&self.path, self.offset, "segment holds no frame"))
                }
            };
        }
        let path = segments::segment_path(&self.dir, self.frame_pos);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.missing(&path),
            Err(e) => return Err(io_error(&path)(e)),
        };
        let mut magic = [0u8; SEGMENT_MAGIC.len()];
        let got = read_up_to(&file, &mut magic, 0).map_err(io_error(&path))?;
        if got < magic.len() && matches!(self.limit, Limit::Validated) {
            return Ok(false); // being created right now
        }
        if magic != SEGMENT_MAGIC {
            return Err(corrupt(&path, 0, "not a lambdarec log segment"));
        }
        (self.file, self.path, self.offset) = (file, path, SEGMENT_HEADER_LEN);
        Ok(true)
    }

    /// The segment that should hold `frame_pos` does not exist: released under a lagging reader,
    /// not created yet by another process, or lost.
    fn missing(&self, path: &Path) -> Result<bool> {
        let first = match &self.limit {
            Limit::Durable(shared) => shared.first.load(Ordering::Acquire),
            Limit::Validated => {
                let all = segments::list(&self.dir)?;
                if !all.iter().any(|s| s.first > self.frame_pos) {
                    return Ok(false); // the writer has not rolled yet
                }
                all[0].first
            }
        };
        if self.frame_pos < first {
            return Err(LogError::Released {
                requested: self.next.max(self.frame_pos),
                first,
            });
        }
        let reason = format!(
            "segment ends at position {} but {} does not exist",
            self.frame_pos,
            path.display()
        );
        Err(corrupt(&self.path, self.offset, reason))
    }

    /// A frame that does not validate. Below a live log's durable end that is corruption. For a
    /// read-only reader it is the end of what can be read for now, unless the segment is sealed
    /// (a later segment exists), when nothing more will be written to it.
    fn damaged(&self, reason: &str) -> Result<bool> {
        let sealed = match self.limit {
            Limit::Durable(_) => true,
            Limit::Validated => segments::list(&self.dir)?
                .iter()
                .any(|s| s.first > self.frame_pos),
        };
        if sealed {
            Err(corrupt(&self.path, self.offset, reason))
        } else {
            Ok(false)
        }
    }
}

impl LogReader for FileReader {
    fn next_batch(&mut self, max: usize) -> Result<Vec<(Position, LogRecord)>> {
        let mut out = Vec::with_capacity(max.min(4096));
        while out.len() < max {
            if let Some(record) = self.pending.pop_front() {
                out.push(record);
            } else if !self.read_frame()? {
                break;
            }
        }
        if let Some(&(last, _)) = out.last() {
            self.next = last + 1;
        }
        Ok(out)
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn released_or_io(
    e: io::Error,
    from: Position,
    first: Position,
    s: &segments::Segment,
) -> LogError {
    if e.kind() == io::ErrorKind::NotFound && from < first {
        LogError::Released {
            requested: from,
            first,
        }
    } else {
        io_error(&s.path)(e)
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::FileLog;

    /// Fuzzing (`fuzz/`, target `log_segments`) found a frame header whose checksum holds but whose
    /// payload length says 1.8 GB in a 64-byte file: the read-only reader made room for it first.
    /// Minimised input: the segment magic and that one header, nothing after it.
    #[test]
    fn a_payload_length_beyond_the_file_is_a_torn_tail_not_an_allocation() {
        #[rustfmt::skip]
        let mut segment = vec![
            b'L', b'R', b'E', b'C', b'L', b'O', b'G', 1, // segment magic
            b'L', b'R', b'F', b'B', 0, 0, 0, 0,          // frame magic, header CRC (below)
            0x15, 0x2e, 0x6c, 0x6f,                      // payload length 1_869_360_661
            0x67, 0x59, 0x12, 0x5d,                      // payload CRC
            1, 0, 0, 0, 0, 0, 0, 0,                      // base position 1
            1, 0, 0, 0,                                  // one record
        ];
        let crc = crc32c::crc32c(&segment[16..]);
        segment[12..16].copy_from_slice(&crc.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{:020}.log", 1)), &segment).unwrap();

        // The only segment: the frame may still be being written, so it reads as the end.
        let mut reader = FileLog::open_read_only(dir.path(), 1).unwrap();
        assert!(reader.next_batch(10).unwrap().is_empty());
        assert_eq!(reader.payload.capacity(), 0, "no room made for the payload");

        // A later segment exists, so this one is sealed and its damage is reported.
        std::fs::write(dir.path().join(format!("{:020}.log", 2)), SEGMENT_MAGIC).unwrap();
        let mut reader = FileLog::open_read_only(dir.path(), 1).unwrap();
        let err = reader.next_batch(10).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { .. }) && err.to_string().contains("cut short"),
            "{err}"
        );
    }
}
