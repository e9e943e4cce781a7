//! The embedded event log's segment files, as opening a log directory finds them: recovery must
//! accept a valid log, cut a torn tail, or report `Corrupt`; never panic or hang. A log it accepts
//! must then read back in full, take an append and reopen with the same positions; a read-only
//! reader (the archiver's) over the untouched files must end too.
//!
//! Input: a flags byte, then up to four segment files separated by `lambdarec_fuzz::SEP`. Flags:
//! bit 0 repairs frame checksums (and bit 1 also chains frame positions) so that mutations reach the
//! checks behind the CRCs; bits 2–3 pick the first segment's position (1, 1, 1000, near u64::MAX);
//! bit 4 names each later segment after the position where the one before it ends (otherwise one
//! past the previous name); bit 5 adds a `.log` file with a bad name; bit 6 starts the read-only
//! reader one position in.
#![no_main]

use lambdarec_eventlog::file::FileLog;
use lambdarec_eventlog::{EventLog, LogError, LogReader, OpenOptions, event_record};
use lambdarec_fuzz::repair_segment;
use libfuzzer_sys::fuzz_target;

/// More batches than any input here can hold: a reader still returning records after that loops.
const MAX_BATCHES: usize = 100_000;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("lambdarec-fuzz-log-")
        .tempdir()
        .expect("a temporary directory");
    let mut first = [1, 1, 1000, u64::MAX - 3][usize::from(flags >> 2 & 3)];
    let start = first;
    for part in lambdarec_fuzz::parts(rest, 4) {
        let mut seg = part.to_vec();
        let mut walked = seg.clone();
        let end = repair_segment(&mut walked, first, flags & 2 != 0);
        if flags & 1 != 0 {
            seg = walked;
        }
        std::fs::write(dir.path().join(format!("{first:020}.log")), &seg).expect("write a segment");
        first = if flags & 16 != 0 {
            end
        } else {
            first.wrapping_add(1)
        };
    }
    if flags & 32 != 0 {
        std::fs::write(dir.path().join("17.log"), b"").expect("write a stray file");
    }

    // A read-only reader first: it must not change the files, and must come to an end.
    let from = if flags & 64 != 0 {
        start.wrapping_add(1)
    } else {
        start
    };
    if let Ok(mut reader) = FileLog::open_read_only(dir.path(), from) {
        let mut batches = 0;
        while let Ok(batch) = reader.next_batch(64) {
            if batch.is_empty() {
                break;
            }
            batches += 1;
            assert!(batches < MAX_BATCHES, "a read-only reader does not end");
        }
    }

    let opts = OpenOptions::default();
    let log = match FileLog::open(dir.path(), &opts) {
        Ok(log) => log,
        Err(LogError::Corrupt { .. } | LogError::Io { .. }) => return,
        Err(e) => panic!("opening a log failed with an unexpected error: {e}"),
    };
    check_accepted(log, dir.path(), &opts);
});

/// A log that recovery accepted reads back in full, takes an append and reopens the same.
fn check_accepted(mut log: FileLog, dir: &std::path::Path, opts: &OpenOptions) {
    let bounds = log.bounds().expect("bounds of an open log");
    let mut reader = log
        .reader(bounds.first)
        .expect("a reader at the first position");
    let mut expected = bounds.first;
    for _ in 0..MAX_BATCHES {
        match reader.next_batch(64) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                for (position, _) in batch {
                    assert_eq!(position, expected, "positions run in order without gaps");
                    expected += 1;
                }
            }
            // Frames check out but a record inside is not a LogRecord: replay reports it.
            Err(LogError::Decode { .. } | LogError::UnspecifiedKind { .. }) => {
                expected = bounds.next;
                break;
            }
            Err(e) => panic!("recovery accepted a log that its reader rejects: {e}"),
        }
    }
    assert_eq!(
        expected, bounds.next,
        "the reader ends where the log says it ends"
    );

    let record = event_record("s", "i", 1, 2, Some(3), "v");
    match log.append(std::slice::from_ref(&record)) {
        Ok(positions) => assert_eq!(positions, vec![bounds.next]),
        Err(LogError::TooLarge { .. }) => return,
        Err(e) => panic!("appending to a recovered log failed: {e}"),
    }
    drop(log);
    let reopened = FileLog::open(dir, opts).expect("a recovered log reopens");
    let again = reopened.bounds().expect("bounds of an open log");
    assert_eq!((again.first, again.next), (bounds.first, bounds.next + 1));
}
