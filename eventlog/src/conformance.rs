//! The conformance suite every [`EventLog`] runs (object_store's pattern): public test functions over a
//! [`Harness`] that opens the implementation under test, each on fresh storage. They panic with a
//! description on failure.
//!
//! ```no_run
//! # use lambdarec_eventlog::{EventLog, conformance::{self, Harness}, memory::*};
//! struct Mem(MemoryStorage);
//! impl Harness for Mem {
//!     fn open(&mut self) -> Box<dyn EventLog> { Box::new(MemoryLog::new(self.0.clone())) }
//! }
//! conformance::run_all(&mut || Box::new(Mem(MemoryStorage::default())) as Box<dyn Harness>);
//! ```

use std::time::{Duration, Instant};

use crate::{EventLog, LogError, LogRecord, Position, RecordKind, delete_record, event_record};

/// Opens the log under test. Every call opens the *same* storage again, as a restarted process
/// would; the previous log has been dropped before the next call.
pub trait Harness {
    fn open(&mut self) -> Box<dyn EventLog>;
}

/// Makes a harness over fresh, empty storage (one per test).
pub type MakeHarness<'a> = &'a mut dyn FnMut() -> Box<dyn Harness>;

/// Runs every test of the suite, each on fresh storage, naming the test that failed.
pub fn run_all(make: MakeHarness<'_>) {
    for (name, test) in ALL {
        let mut harness = make();
        eprintln!("eventlog conformance: {name}");
        test(harness.as_mut());
    }
}

/// One test of the suite.
pub type Test = fn(&mut dyn Harness);

/// Every test of the suite, by name.
pub const ALL: &[(&str, Test)] = &[
    (
        "append_assigns_increasing_positions",
        append_assigns_increasing_positions,
    ),
    ("records_round_trip_exactly", records_round_trip_exactly),
    ("appends_survive_a_reopen", appends_survive_a_reopen),
    (
        "reader_starts_anywhere_and_follows",
        reader_starts_anywhere_and_follows,
    ),
    ("release_keeps_what_is_needed", release_keeps_what_is_needed),
    ("large_and_many_records", large_and_many_records),
    (
        "reader_follows_appends_from_another_thread",
        reader_follows_appends_from_another_thread,
    ),
    (
        "release_of_everything_keeps_the_next_position",
        release_of_everything_keeps_the_next_position,
    ),
    (
        "reader_reads_on_through_a_release",
        reader_reads_on_through_a_release,
    ),
    (
        "an_acknowledged_append_is_readable_at_once",
        an_acknowledged_append_is_readable_at_once,
    ),
    (
        "sessions_read_back_by_id_after_a_position",
        sessions_read_back_by_id_after_a_position,
    ),
    (
        "an_expected_position_tells_whether_another_writer_came_between",
        an_expected_position_tells_whether_another_writer_came_between,
    ),
];

/// `n` varied records: events with and without client_seq, unicode ids, deletes in between.
pub fn sample_records(n: usize, salt: &str) -> Vec<LogRecord> {
    (0..n)
        .map(|i| {
            let session = format!("s{}-{salt}-ü{}", i % 7, i % 3);
            if i % 11 == 10 {
                delete_record(&session, 1_000 + i as i64, "v1")
            } else {
                let seq = (i % 2 == 0).then_some(i as u64 * 3);
                let item = format!("item-{}", i * 31 % 97);
                event_record(
                    &session,
                    &item,
                    2_000 + i as i64,
                    3_000 + i as i64,
                    seq,
                    "v1",
                )
            }
        })
        .collect()
}

fn read_all(log: &dyn EventLog, from: Position) -> Vec<(Position, LogRecord)> {
    let mut reader = log.reader(from).expect("open a reader");
    let mut out = Vec::new();
    loop {
        let batch = reader.next_batch(37).expect("read a batch");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

pub fn append_assigns_increasing_positions(h: &mut dyn Harness) {
    let mut log = h.open();
    let b = log.bounds().unwrap();
    assert!(b.is_empty(), "a new log is empty: {b:?}");
    assert!(
        log.append(&[]).unwrap().is_empty(),
        "an empty append is a no-op"
    );
    let first = log.append(&sample_records(3, "a")).unwrap();
    let second = log.append(&sample_records(2, "b")).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(second.len(), 2);
    let all: Vec<Position> = first.iter().chain(&second).copied().collect();
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {all:?}"
    );
    assert!(
        all[0] >= b.first,
        "the first position is at or after the empty log's first"
    );
    let after = log.bounds().unwrap();
    assert_eq!(after.first, b.first);
    assert_eq!(
        after.next,
        all[4] + 1,
        "next follows the last appended position"
    );
    assert!(
        log.stored_bytes() > 0,
        "stored bytes count what was appended"
    );
}

pub fn records_round_trip_exactly(h: &mut dyn Harness) {
    let mut log = h.open();
    let records = sample_records(50, "rt");
    let positions = log.append(&records).unwrap();
    let read = read_all(log.as_ref(), positions[0]);
    assert_eq!(read.len(), records.len());
    for ((p, r), (want_p, want)) in read.iter().zip(positions.iter().zip(&records)) {
        assert_eq!(p, want_p);
        assert_eq!(r, want, "record at {p} reads back as written");
    }
    assert!(read.iter().any(|(_, r)| r.kind() == RecordKind::Delete));
}

pub fn appends_survive_a_reopen(h: &mut dyn Harness) {
    let records = sample_records(20, "reopen");
    let positions = {
        let mut log = h.open();
        let mut p = log.append(&records[..10]).unwrap();
        p.extend(log.append(&records[10..]).unwrap());
        p
    };
    let mut log = h.open();
    let b = log.bounds().unwrap();
    assert_eq!(
        b.next,
        positions[19] + 1,
        "the reopened log ends where it ended"
    );
    let read = read_all(log.as_ref(), positions[0]);
    assert_eq!(
        read.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        records
    );
    // Appends continue after the old end, never reusing a position.
    let more = log.append(&sample_records(1, "after")).unwrap();
    assert!(more[0] > positions[19]);
}

pub fn reader_starts_anywhere_and_follows(h: &mut dyn Harness) {
    let mut log = h.open();
    let records = sample_records(30, "rd");
    let positions = log.append(&records).unwrap();
    let from_middle = read_all(log.as_ref(), positions[17]);
    assert_eq!(from_middle.len(), 13);
    assert_eq!(from_middle[0], (positions[17], records[17].clone()));

    // A reader at the end waits: empty now, the new records once they are appended.
    let mut tail = log.reader(log.bounds().unwrap().next).unwrap();
    assert!(tail.next_batch(10).unwrap().is_empty());
    let later = sample_records(4, "later");
    let later_positions = log.append(&later).unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(tail.next_batch(3).unwrap());
        if got.len() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        got,
        later_positions.into_iter().zip(later).collect::<Vec<_>>(),
        "a reader sees records appended after it was opened"
    );
}

pub fn release_keeps_what_is_needed(h: &mut dyn Harness) {
    let mut log = h.open();
    let records = sample_records(200, "rel");
    let mut positions = Vec::new();
    for chunk in records.chunks(10) {
        positions.extend(log.append(chunk).unwrap());
    }
    let keep_from = positions[150];
    let first = log.release_before(keep_from).unwrap();
    assert!(first <= keep_from, "release never drops a needed record");
    assert_eq!(log.bounds().unwrap().first, first);
    let read = read_all(log.as_ref(), keep_from);
    assert_eq!(read.len(), 50);
    assert_eq!(read[0].1, records[150]);
    if first > positions[0] {
        match log.reader(positions[0]) {
            Err(LogError::Released {
                requested,
                first: f,
            }) => {
                assert_eq!((requested, f), (positions[0], first));
            }
            Err(e) => panic!("reading released records: expected Released, got {e}"),
            Ok(_) => panic!("reading released records must fail"),
        }
    }
    drop(log);
    let log = h.open();
    assert_eq!(
        log.bounds().unwrap().first,
        first,
        "a release survives a reopen"
    );
    assert_eq!(read_all(log.as_ref(), keep_from).len(), 50);
}

pub fn large_and_many_records(h: &mut dyn Harness) {
    let mut log = h.open();
    let big = event_record(
        &"s".repeat(256),
        &"i".repeat(60_000),
        1,
        2,
        Some(u64::MAX),
        "v",
    );
    let many = sample_records(5_000, "many");
    let p_big = log.append(std::slice::from_ref(&big)).unwrap();
    let p_many = log.append(&many).unwrap();
    assert_eq!(p_many.len(), 5_000);
    let read = read_all(log.as_ref(), p_big[0]);
    assert_eq!(read.len(), 5_001);
    assert_eq!(read[0].1, big);
    assert_eq!(read[5_000].1, many[4_999]);
}

pub fn reader_follows_appends_from_another_thread(h: &mut dyn Harness) {
    let mut log = h.open();
    let mut reader = log.reader(log.bounds().unwrap().next).unwrap();
    let batches: Vec<Vec<LogRecord>> = (0..40)
        .map(|i| sample_records(1 + i % 7 * 9, &format!("t{i}")))
        .collect();
    let expected: Vec<LogRecord> = batches.concat();
    let n = expected.len();
    let follower = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let batch = reader
                .next_batch(25)
                .expect("read while another thread appends");
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
            got.extend(batch);
        }
        got
    });
    let mut positions = Vec::new();
    for batch in &batches {
        positions.extend(log.append(batch).unwrap());
    }
    let got = follower.join().expect("the reading thread");
    assert_eq!(got.len(), n, "the reader saw every record appended");
    assert_eq!(
        got,
        positions.into_iter().zip(expected).collect::<Vec<_>>(),
        "in order, with their positions"
    );
}

pub fn release_of_everything_keeps_the_next_position(h: &mut dyn Harness) {
    let mut log = h.open();
    for chunk in sample_records(60, "all").chunks(6) {
        log.append(chunk).unwrap();
    }
    let next = log.bounds().unwrap().next;
    let first = log.release_before(next + 100).unwrap();
    assert!(
        first <= next,
        "a release past the end keeps the end: {first} > {next}"
    );
    assert_eq!(log.bounds().unwrap(), crate::Bounds { first, next });
    drop(log);

    let mut log = h.open();
    assert_eq!(
        log.bounds().unwrap(),
        crate::Bounds { first, next },
        "the next position survives a reopen of a fully released log"
    );
    let more = sample_records(2, "again");
    let positions = log.append(&more).unwrap();
    assert_eq!(positions, [next, next + 1], "positions are never reused");
    let read = read_all(log.as_ref(), next);
    assert_eq!(read, positions.into_iter().zip(more).collect::<Vec<_>>());
}

pub fn reader_reads_on_through_a_release(h: &mut dyn Harness) {
    let mut log = h.open();
    let records = sample_records(120, "through");
    let mut positions = Vec::new();
    for chunk in records.chunks(10) {
        positions.extend(log.append(chunk).unwrap());
    }
    let mut reader = log.reader(positions[100]).unwrap();
    let head = reader.next_batch(5).unwrap();
    assert_eq!(head.len(), 5);
    log.release_before(positions[103]).unwrap();
    let later = sample_records(30, "later");
    let later_positions = log.append(&later).unwrap();
    let mut rest = Vec::new();
    for _ in 0..100 {
        let batch = reader.next_batch(16).unwrap();
        if batch.is_empty() {
            break;
        }
        rest.extend(batch);
    }
    let want: Vec<_> = positions[105..]
        .iter()
        .copied()
        .zip(records[105..].iter().cloned())
        .chain(later_positions.into_iter().zip(later))
        .collect();
    assert_eq!(rest, want, "a reader past the release point reads on");
}

/// Recovery reads until a batch comes back empty, so an empty batch must mean that nothing
/// acknowledged is left, with no grace period.
pub fn an_acknowledged_append_is_readable_at_once(h: &mut dyn Harness) {
    let mut log = h.open();
    let mut reader = log.reader(log.bounds().unwrap().next).unwrap();
    assert!(reader.next_batch(10).unwrap().is_empty());
    for i in 0..200 {
        let record = sample_records(1, &format!("now{i}"));
        let positions = log.append(&record).unwrap();
        let got = reader.next_batch(10).unwrap();
        assert_eq!(
            got,
            vec![(positions[0], record[0].clone())],
            "append {i} is read back by the very next batch"
        );
    }
}

/// A log that can be shared reads each session's records back, in order, from any position; one that
/// cannot (the embedded log) says so with None.
pub fn sessions_read_back_by_id_after_a_position(h: &mut dyn Harness) {
    let mut log = h.open();
    let Some(mut sessions) = log.session_reader() else {
        return;
    };
    let records = sample_records(60, "by-id");
    let positions = log.append(&records).unwrap();
    let written: Vec<(Position, LogRecord)> = positions.into_iter().zip(records).collect();
    let of = |id: &str, after: Position| -> Vec<(Position, LogRecord)> {
        let mine = written
            .iter()
            .filter(|(p, r)| r.session_id == id && *p > after);
        mine.cloned().collect()
    };
    let (a, b) = (
        written[0].1.session_id.clone(),
        written[1].1.session_id.clone(),
    );
    let middle = written[30].0;
    let queries = [(a.as_str(), 0), (b.as_str(), middle), ("never-seen", 0)];
    let got = sessions.records_after(&queries).unwrap();
    assert_eq!(got.len(), 3, "one answer per query");
    assert!(!got[0].is_empty() && !got[1].is_empty());
    assert_eq!(got[0], of(&a, 0), "all of a session's records, in order");
    assert_eq!(
        got[1],
        of(&b, middle),
        "only the records after the position"
    );
    assert!(got[2].is_empty(), "a session without records has none");
    // A record appended now is read by the very next call.
    let more = [event_record(
        &a,
        "item-new",
        9_000,
        9_001,
        Some(999_999),
        "v1",
    )];
    let p = log.append(&more).unwrap()[0];
    let last = got[0].last().unwrap().0;
    let again = sessions.records_after(&[(a.as_str(), last)]).unwrap();
    assert_eq!(again[0], [(p, more[0].clone())]);
}

/// `append_expecting`: every record is appended; on a log that can be shared, each one says whether
/// it directly followed the expected position among its session's records.
pub fn an_expected_position_tells_whether_another_writer_came_between(h: &mut dyn Harness) {
    let mut log = h.open();
    let shared = log.session_reader().is_some();
    let ev = |session: &str, n: i64| event_record(session, "item", n, n, None, "v1");
    let one = |log: &mut Box<dyn EventLog>, r: LogRecord, e: Option<Position>| {
        log.append_expecting(&[r], &[e]).unwrap()[0]
    };
    let (p1, c1) = one(&mut log, ev("a", 1), Some(0));
    assert_eq!(c1, shared, "the first record of a session follows 0");
    let (p2, c2) = one(&mut log, ev("a", 2), Some(p1));
    assert_eq!(c2, shared, "a record right after the expected one");
    let (p3, _) = one(&mut log, ev("a", 3), None); // another writer's record
    let (p4, c4) = one(&mut log, ev("a", 4), Some(p2));
    assert!(!c4, "another record came in between");
    assert!(p4 > p3, "the record is appended anyway, after the other");
    let (_, c5) = one(&mut log, ev("a", 5), Some(p4));
    assert_eq!(c5, shared);
    // Expecting no record (0) of a session that has one.
    one(&mut log, ev("z", 9), None);
    let (_, c0) = one(&mut log, ev("z", 10), Some(0));
    assert!(!c0, "the session had a record already");
    // Other sessions' records do not matter; expectations are per record.
    let both = log
        .append_expecting(
            &[ev("b", 6), ev("c", 7), ev("d", 8)],
            &[Some(0), None, Some(p1)],
        )
        .unwrap();
    assert_eq!(
        both.iter().map(|b| b.1).collect::<Vec<_>>(),
        [shared, false, false]
    );
    assert!(both[0].0 < both[1].0 && both[1].0 < both[2].0, "{both:?}");
    // Everything was appended once, in order.
    let all = read_all(log.as_ref(), p1);
    assert_eq!(all.len(), 10, "{all:?}");
}
