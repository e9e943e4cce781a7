//! The embedded log against the conformance suite and its failure modes: torn tails, corruption in
//! sealed and active segments, the directory lock, rolling, readers across segments.

use std::fs::{self, OpenOptions as FsOpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lambdarec_eventlog::conformance::{self, Harness, sample_records};
use lambdarec_eventlog::file::FileLog;
use lambdarec_eventlog::{EventLog, LogError, LogReader, OpenOptions, Position};

const SMALL_SEGMENTS: u64 = 4 << 10;

fn small() -> OpenOptions {
    OpenOptions {
        segment_bytes: SMALL_SEGMENTS,
        ..OpenOptions::default()
    }
}

struct Files {
    dir: tempfile::TempDir,
    opts: OpenOptions,
}

impl Harness for Files {
    fn open(&mut self) -> Box<dyn EventLog> {
        Box::new(FileLog::open(self.dir.path(), &self.opts).expect("open the file log"))
    }
}

#[test]
fn file_log_passes_the_conformance_suite_with_small_segments() {
    conformance::run_all(&mut || {
        Box::new(Files {
            dir: tempfile::tempdir().unwrap(),
            opts: small(),
        }) as Box<dyn Harness>
    });
}

#[test]
fn file_log_passes_the_conformance_suite_with_default_segments() {
    conformance::run_all(&mut || {
        Box::new(Files {
            dir: tempfile::tempdir().unwrap(),
            opts: OpenOptions::default(),
        }) as Box<dyn Harness>
    });
}

fn read_all(log: &dyn EventLog, from: Position) -> Vec<(Position, lambdarec_eventlog::LogRecord)> {
    drain(log.reader(from).unwrap().as_mut())
}

fn drain(reader: &mut dyn LogReader) -> Vec<(Position, lambdarec_eventlog::LogRecord)> {
    let mut out = Vec::new();
    loop {
        let batch = reader.next_batch(100).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    all.sort();
    all
}

/// A log of `batches` appends of 5 records each in one segment; returns that segment and the byte
/// offset where each frame starts.
fn write_batches(dir: &Path, batches: usize) -> (PathBuf, Vec<u64>) {
    let mut log = FileLog::open(dir, &OpenOptions::default()).unwrap();
    let mut starts = Vec::new();
    for i in 0..batches {
        starts.push(log.segment_files()[0].1);
        log.append(&sample_records(5, &format!("b{i}"))).unwrap();
    }
    assert_eq!(log.segment_files().len(), 1);
    (log.segment_files()[0].0.clone(), starts)
}

#[test]
fn a_record_cut_mid_frame_loses_only_that_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = write_batches(dir.path(), 3);
    let len = fs::metadata(&path).unwrap().len();
    // Cut in the middle of the last frame's payload: a crash during the third append.
    FsOpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let mut log = FileLog::open(dir.path(), &OpenOptions::default()).unwrap();
    assert_eq!(
        log.bounds().unwrap().next,
        11,
        "two whole frames of 5 remain"
    );
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        starts[2],
        "cut at the frame's start"
    );
    assert_eq!(log.append(&sample_records(1, "after")).unwrap(), [11]);
    let read = read_all(&log, 1);
    assert_eq!(read.len(), 11);
    assert_eq!(read[10].1, sample_records(1, "after")[0]);
    drop(log);
    assert_eq!(
        FileLog::open(dir.path(), &OpenOptions::default())
            .unwrap()
            .bounds()
            .unwrap()
            .next,
        12
    );
}

#[test]
fn a_cut_frame_header_is_a_torn_tail_too() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = write_batches(dir.path(), 2);
    FsOpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(starts[1] + 10)
        .unwrap();
    let log = FileLog::open(dir.path(), &OpenOptions::default()).unwrap();
    assert_eq!(log.bounds().unwrap().next, 6);
    assert_eq!(fs::metadata(&path).unwrap().len(), starts[1]);
}

#[test]
fn zeros_after_the_last_frame_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_batches(dir.path(), 2);
    let len = fs::metadata(&path).unwrap().len();
    let mut f = FsOpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let mut log = FileLog::open(dir.path(), &OpenOptions::default()).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
    assert_eq!(log.append(&sample_records(2, "z")).unwrap(), [11, 12]);
    assert_eq!(read_all(&log, 1).len(), 12);
}

#[test]
fn a_damaged_last_frame_with_nothing_after_it_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = write_batches(dir.path(), 3);
    flip(&path, starts[2] + 40);
    let log = FileLog::open(dir.path(), &OpenOptions::default()).unwrap();
    assert_eq!(log.bounds().unwrap().next, 11);
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn expect_corrupt(dir: &Path, file: &Path, offset: u64) {
    let err = FileLog::open(dir, &small()).expect_err("a damaged log must not open");
    let LogError::Corrupt {
        path, offset: at, ..
    } = &err
    else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!((path.as_path(), *at), (file, offset), "{err}");
    let msg = err.to_string();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "the message names the file: {msg}");
    assert!(
        msg.contains(&offset.to_string()),
        "the message names the offset: {msg}"
    );
}

#[test]
fn a_flipped_byte_in_an_older_segment_fails_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = FileLog::open(dir.path(), &small()).unwrap();
        for i in 0..40 {
            log.append(&sample_records(8, &format!("o{i}"))).unwrap();
        }
    }
    let files = segments(dir.path());
    assert!(files.len() >= 3, "small segments roll: {files:?}");
    let before = fs::read(&files[0]).unwrap();
    // Damage a payload byte of the second frame of the oldest segment.
    let second_frame = 8 + frame_len_at(&before, 8);
    flip(&files[0], second_frame + 30);
    expect_corrupt(dir.path(), &files[0], second_frame);
    // Nothing was cut.
    assert_eq!(fs::metadata(&files[0]).unwrap().len(), before.len() as u64);
}

/// The length of the frame whose header starts at `offset`.
fn frame_len_at(bytes: &[u8], offset: u64) -> u64 {
    let o = offset as usize;
    28 + u64::from(u32::from_le_bytes(bytes[o + 8..o + 12].try_into().unwrap()))
}

#[test]
fn a_damaged_middle_frame_of_the_last_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (path, starts) = write_batches(dir.path(), 3);
    let len = fs::metadata(&path).unwrap().len();
    flip(&path, starts[1] + 40); // payload of the second frame; a valid third frame follows
    expect_corrupt_default(dir.path(), &path, starts[1]);
    flip(&path, starts[1] + 40);
    flip(&path, starts[1] + 9); // now the length field: the header CRC catches it
    expect_corrupt_default(dir.path(), &path, starts[1]);
    assert_eq!(fs::metadata(&path).unwrap().len(), len, "nothing was cut");
}

fn expect_corrupt_default(dir: &Path, file: &Path, offset: u64) {
    match FileLog::open(dir, &OpenOptions::default()) {
        Err(LogError::Corrupt {
            path,
            offset: at,
            reason,
        }) => {
            assert_eq!((path.as_path(), at), (file, offset), "{reason}");
            assert!(reason.contains("valid frame follows"), "{reason}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a damaged middle frame must not open"),
    }
}

#[test]
fn a_missing_segment_or_a_stray_name_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = FileLog::open(dir.path(), &small()).unwrap();
        for i in 0..40 {
            log.append(&sample_records(8, &format!("g{i}"))).unwrap();
        }
    }
    let files = segments(dir.path());
    let moved = dir.path().join("aside");
    fs::rename(&files[1], &moved).unwrap();
    let err = FileLog::open(dir.path(), &small()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { path, .. } if path == &files[2]),
        "{err}"
    );
    fs::rename(&moved, &files[1]).unwrap();
    FileLog::open(dir.path(), &small()).expect("whole again");

    fs::write(dir.path().join("notes.log"), b"hello").unwrap();
    let err = FileLog::open(dir.path(), &small()).unwrap_err();
    assert!(err.to_string().contains("notes.log"), "{err}");
}

#[test]
fn a_second_writer_gets_a_lock_error_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileLog::open(dir.path(), &OpenOptions::default()).unwrap();
    let err = FileLog::open(dir.path(), &OpenOptions::default()).unwrap_err();
    let msg = err.to_string();
    let canonical = dir.path().canonicalize().unwrap();
    assert!(msg.contains(&*canonical.to_string_lossy()), "{msg}");
    assert!(msg.contains("another"), "{msg}");
    drop(first);
    FileLog::open(dir.path(), &OpenOptions::default()).expect("the lock is released on drop");
}

#[test]
fn segments_roll_at_the_size_limit_and_never_split_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(dir.path(), &small()).unwrap();
    let mut positions = Vec::new();
    for i in 0..60 {
        positions.extend(
            log.append(&sample_records(1 + i % 9, &format!("r{i}")))
                .unwrap(),
        );
    }
    let files = log.segment_files();
    assert!(files.len() >= 4, "{files:?}");
    for (path, len) in &files {
        assert!(*len <= SMALL_SEGMENTS, "{} is {len} bytes", path.display());
        assert_eq!(fs::metadata(path).unwrap().len(), *len);
    }
    // Each segment is named by its first position and every record reads back across them.
    let read = read_all(&log, positions[0]);
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), positions);
    let mut expected_first = 1;
    for (path, _) in &files {
        let name = path.file_stem().unwrap().to_str().unwrap();
        let first: Position = name.parse().unwrap();
        assert!(first >= expected_first);
        expected_first = first;
    }
    assert_eq!(log.stored_bytes(), files.iter().map(|f| f.1).sum::<u64>());

    // A frame larger than a segment gets a segment of its own.
    let big = sample_records(200, "big");
    let p = log.append(&big).unwrap();
    let (last, len) = log.segment_files().pop().unwrap();
    assert!(len > SMALL_SEGMENTS);
    assert!(
        last.ends_with(format!("{:020}.log", p[0])),
        "{}",
        last.display()
    );
}

#[test]
fn release_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(dir.path(), &small()).unwrap();
    for i in 0..60 {
        log.append(&sample_records(8, &format!("d{i}"))).unwrap();
    }
    let before = log.segment_files();
    let third_first: Position = before[2]
        .0
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let first = log.release_before(third_first + 1).unwrap();
    assert_eq!(first, third_first, "the segment holding the position stays");
    assert_eq!(log.segment_files(), before[2..].to_vec());
    assert!(!before[0].0.exists() && !before[1].0.exists());
}

#[test]
fn a_reader_crosses_segments_while_another_thread_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(dir.path(), &small()).unwrap();
    let mut reader = log.reader(1).unwrap();
    let total = 3_000;
    let follower = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < total && Instant::now() < deadline {
            let batch = reader.next_batch(64).unwrap();
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
            got.extend(batch);
        }
        got
    });
    let records = sample_records(total, "x");
    for chunk in records.chunks(37) {
        log.append(chunk).unwrap();
    }
    let got = follower.join().unwrap();
    assert!(log.segment_files().len() > 10, "many rolls happened");
    assert_eq!(got.len(), total);
    for (i, (p, r)) in got.iter().enumerate() {
        assert_eq!((*p, r), (i as Position + 1, &records[i]));
    }
}

#[test]
fn a_read_only_reader_reads_another_writers_log_without_cutting() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(dir.path(), &small()).unwrap();
    for i in 0..30 {
        log.append(&sample_records(8, &format!("ro{i}"))).unwrap();
    }
    // The writer still holds the lock: a read-only reader does not need it.
    let mut ro = FileLog::open_read_only(dir.path(), 1).unwrap();
    assert_eq!(drain(&mut ro).len(), 240);
    log.append(&sample_records(3, "more")).unwrap();
    assert_eq!(drain(&mut ro).len(), 3, "it follows the writer");
    let (last, len) = log.segment_files().pop().unwrap();
    drop(log);

    // A torn tail reads as the end and is left in place.
    let mut f = FsOpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&[0x4c, 0x52, 0x46, 0x42, 1, 2, 3]).unwrap();
    drop(f);
    let mut ro = FileLog::open_read_only(dir.path(), 200).unwrap();
    assert_eq!(drain(&mut ro).len(), 44, "positions 200 to 243");
    assert_eq!(fs::metadata(&last).unwrap().len(), len + 7, "never cut");
    assert!(matches!(
        FileLog::open_read_only(dir.path(), 0),
        Err(LogError::Released { .. })
    ));
}

#[test]
fn a_reader_left_behind_by_a_release_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = FileLog::open(dir.path(), &small()).unwrap();
    for i in 0..40 {
        log.append(&sample_records(8, &format!("lag{i}"))).unwrap();
    }
    let mut live = log.reader(1).unwrap();
    let mut read_only = FileLog::open_read_only(dir.path(), 1).unwrap();
    assert_eq!(live.next_batch(3).unwrap().len(), 3);
    assert_eq!(read_only.next_batch(3).unwrap().len(), 3);
    let next = log.bounds().unwrap().next;
    let first = log.release_before(next).unwrap();
    assert!(first > 50, "several segments went: {first}");
    // Each reader finishes the segment it has open, then learns that the rest is gone.
    let readers: [&mut dyn LogReader; 2] = [live.as_mut(), &mut read_only];
    for reader in readers {
        let err = loop {
            match reader.next_batch(50) {
                Ok(batch) => assert!(!batch.is_empty(), "never a silent end"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, LogError::Released { first: f, .. } if f == first),
            "{err}"
        );
    }
}

#[test]
fn appends_fail_for_good_after_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    // One-byte segments: every append after the first rolls to a new segment.
    let opts = OpenOptions {
        segment_bytes: 1,
        ..OpenOptions::default()
    };
    let mut log = FileLog::open(dir.path(), &opts).unwrap();
    assert_eq!(log.append(&sample_records(4, "ok")).unwrap(), [1, 2, 3, 4]);
    // Make the roll fail: a directory squats on the name of the segment it must create.
    fs::create_dir(dir.path().join(format!("{:020}.log", 5))).unwrap();
    let first = log.append(&sample_records(8, "f")).unwrap_err();
    assert!(matches!(first, LogError::Io { .. }), "{first}");
    fs::remove_dir(dir.path().join(format!("{:020}.log", 5))).unwrap();
    let later = log.append(&sample_records(1, "later")).unwrap_err();
    assert!(
        matches!(later, LogError::Failed(_)),
        "even once the cause is gone: {later}"
    );
    assert!(
        later.to_string().contains("00000000000000000005.log"),
        "{later}"
    );
}
