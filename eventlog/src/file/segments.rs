//! Segment files of the embedded log: naming, listing, creating (durably), and the validation that
//! runs when a log is opened, including cutting a torn tail off the last segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::frame::{self, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, Stop};
use crate::{LogError, Position, Result};

/// A segment: the position of its first record (its name) and its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first: Position,
    pub path: PathBuf,
    pub len: u64,
}

pub fn segment_path(dir: &Path, first: Position) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

pub fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Makes a directory entry change (a created or deleted segment) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// The `*.log` files of `dir`, oldest first. A `.log` file whose name is not a 20-digit position is
/// corruption (someone put it there, or a name was damaged); other files are not the log's.
pub fn list(dir: &Path) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        let first = (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .then(|| stem.parse::<Position>().ok())
            .flatten()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                corrupt(
                    &path,
                    0,
                    "segment file name is not a 20-digit first position",
                )
            })?;
        let len = entry.metadata().map_err(io_error(&path))?.len();
        segments.push(Segment { first, path, len });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// Creates the segment whose first record will be `first`: header written and fsync'd, then the
/// directory fsync'd, so that a segment that exists after a crash always has its header. Returns the
/// file, positioned after the header.
pub fn create(dir: &Path, first: Position) -> Result<(File, Segment)> {
    let path = segment_path(dir, first);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all(&SEGMENT_MAGIC)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    sync_dir(dir)?;
    let len = SEGMENT_HEADER_LEN;
    Ok((file, Segment { first, path, len }))
}

/// What opening a log found: its segments (sizes after any cut) and the next position.
pub struct Recovered {
    pub segments: Vec<Segment>,
    pub next: Position,
}

/// Validates every segment of `dir` and cuts a torn tail off the last one (see the module doc of
/// `file`). Creates the first segment of a new log.
pub fn recover(dir: &Path) -> Result<Recovered> {
    let mut segments = list(dir)?;
    if segments.is_empty() {
        let (_, segment) = create(dir, 1)?;
        return Ok(Recovered {
            segments: vec![segment],
            next: 1,
        });
    }
    let last = segments.len() - 1;
    let mut next = segments[0].first;
    for (i, segment) in segments.iter_mut().enumerate() {
        if segment.first != next {
            let reason = format!(
                "segment starts at position {} but the one before it ends before {next}",
                segment.first
            );
            return Err(corrupt(&segment.path, 0, reason));
        }
        next = if i == last {
            recover_last(segment)?
        } else {
            check_sealed(segment)?
        };
    }
    Ok(Recovered { segments, next })
}

/// A sealed segment must validate completely: it was fsync'd before the next one was created.
fn check_sealed(segment: &Segment) -> Result<Position> {
    let data = fs::read(&segment.path).map_err(io_error(&segment.path))?;
    check_header(&segment.path, &data)?;
    let scan = frame::scan_segment(&data, segment.first);
    match scan.stop {
        None => Ok(scan.next),
        Some(Stop::Incomplete { offset }) => Err(corrupt(
            &segment.path,
            offset,
            "frame cut short in a sealed segment",
        )),
        Some(Stop::Invalid { offset, reason } | Stop::Gap { offset, reason }) => {
            Err(corrupt(&segment.path, offset, reason))
        }
    }
}

fn check_header(path: &Path, data: &[u8]) -> Result<()> {
    if data.len() < SEGMENT_MAGIC.len() || data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Err(corrupt(
            path,
            0,
            "not a lambdarec log segment (wrong magic or version)",
        ));
    }
    Ok(())
}

/// The last segment may end in a torn write: cut it (and say so), unless valid frames follow the
/// damage, which makes it corruption of acknowledged data.
fn recover_last(segment: &mut Segment) -> Result<Position> {
    let path = segment.path.clone();
    let data = fs::read(&path).map_err(io_error(&path))?;
    if data.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(&data) {
        // A crash while the segment was being created: nothing was ever written to it.
        warn!(path = %path.display(), bytes = data.len(), "event log: rewriting the header of a segment whose creation was cut short");
        rewrite(&path, &SEGMENT_MAGIC)?;
        segment.len = SEGMENT_HEADER_LEN;
        return Ok(segment.first);
    }
    check_header(&path, &data)?;
    let scan = frame::scan_segment(&data, segment.first);
    let (offset, why) = match scan.stop {
        None => return Ok(scan.next),
        Some(Stop::Gap { offset, reason }) => return Err(corrupt(&path, offset, reason)),
        Some(Stop::Incomplete { offset }) => (offset, "frame cut short at the end of the file"),
        Some(Stop::Invalid { offset, reason }) => {
            if let Some(later) = frame::find_valid_header(&data, offset as usize + 1) {
                let reason = format!(
                    "{reason}, and a valid frame follows at byte offset {later}: acknowledged data is damaged"
                );
                return Err(corrupt(&path, offset, reason));
            }
            (offset, "damaged frame with no valid frame after it")
        }
    };
    let cut = data.len() as u64 - offset;
    warn!(path = %path.display(), offset, bytes_cut = cut, why, "event log: cutting a torn tail (an append that was never acknowledged)");
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    segment.len = offset;
    Ok(scan.next)
}

fn rewrite(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_position_and_bad_names_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        for first in [12, 3, 100] {
            create(dir.path(), first).unwrap();
        }
        fs::write(dir.path().join("LOCK"), b"").unwrap();
        let firsts: Vec<_> = list(dir.path()).unwrap().iter().map(|s| s.first).collect();
        assert_eq!(firsts, [3, 12, 100]);
        assert!(segment_path(dir.path(), 3).ends_with("00000000000000000003.log"));

        fs::write(dir.path().join("17.log"), b"").unwrap();
        let err = list(dir.path()).unwrap_err();
        assert!(err.to_string().contains("17.log"), "{err}");
    }

    #[test]
    fn a_segment_cut_during_creation_gets_its_header_back() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), &SEGMENT_MAGIC[..3]).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.next, 1);
        assert_eq!(
            fs::read(segment_path(dir.path(), 1)).unwrap(),
            SEGMENT_MAGIC
        );
    }

    #[test]
    fn a_wrong_magic_is_corruption_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), b"NOTALOG!and more").unwrap();
        let err = recover(dir.path()).err().expect("wrong magic fails");
        assert!(matches!(&err, LogError::Corrupt { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("00000000000000000001.log"));
    }
}
