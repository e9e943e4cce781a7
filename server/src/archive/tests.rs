//! The archiver over an in-memory log and a local-directory archive: every event once, in the
//! right day's file, across incremental runs, a failed checkpoint and a crash before it.

use std::collections::BTreeMap;

use lambdarec_eventlog::memory::MemoryLog;
use lambdarec_eventlog::{EventLog, delete_record, event_record};

use super::*;

const DAY_MS: i64 = 86_400_000;
/// 2024-03-01T00:00:00Z.
const START_MS: i64 = 1_709_251_200_000;

/// `n` records over `days` days: mostly events (some without client_seq), every 9th a delete.
fn records(n: usize, days: i64, salt: u64) -> Vec<LogRecord> {
    (0..n)
        .map(|i| {
            let session = format!("s{}-{salt}", i % 13);
            let ts = START_MS + (i as i64 * 7_919 * 60_000) % (days * DAY_MS);
            if i % 9 == 8 {
                delete_record(&session, ts + 5, "v1")
            } else {
                let item = format!("item-{}", (i * 31 + salt as usize) % 101);
                let seq = (i % 4 != 0).then_some(i as u64);
                event_record(&session, &item, ts, ts + 250, seq, "v1")
            }
        })
        .collect()
}

fn options(max_records: usize) -> ArchiveOptions {
    ArchiveOptions {
        max_records,
        interval: Duration::from_millis(20),
    }
}

async fn connected(archive: &Archive, log: &MemoryLog, max: usize) -> Archiver {
    let mut a = Archiver::recover(archive.clone(), options(max))
        .await
        .unwrap();
    a.connect(&log.describe(), log.bounds().unwrap().first, |from| {
        log.reader(from)
    })
    .unwrap();
    a
}

/// The archive as (position → row), checking on the way that every file holds rows of its own
/// day only, in position order, named by its smallest and largest position, and that no
/// position appears twice.
async fn archived(archive: &Archive) -> BTreeMap<Position, ArchivedEvent> {
    let mut out = BTreeMap::new();
    for f in archive.files(DateRange::ALL).await.unwrap() {
        let rows = archive.read_events(&f).await.unwrap();
        assert!(!rows.is_empty(), "{f}: empty file");
        assert!(
            rows.windows(2).all(|w| w[0].position < w[1].position),
            "{f}: order"
        );
        assert_eq!(rows[0].position, f.first, "{f}");
        assert_eq!(rows.last().unwrap().position, f.last, "{f}");
        for r in rows {
            assert_eq!(
                Date::from_unix_ms(r.timestamp_ms),
                f.date,
                "{f}: row of another day"
            );
            let p = r.position;
            assert!(out.insert(p, r).is_none(), "position {p} archived twice");
        }
    }
    out
}

/// What the archive should hold for a log: its events, by position.
fn expected(log: &MemoryLog) -> BTreeMap<Position, ArchivedEvent> {
    let bounds = log.bounds().unwrap();
    let mut r = log.reader(bounds.first).unwrap();
    r.next_batch(usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|(p, rec)| ArchivedEvent::from_record(p, rec))
        .map(|e| (e.position, e))
        .collect()
}

fn local_archive() -> (tempfile::TempDir, Archive) {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::in_store(dir.path().to_str().unwrap()).unwrap();
    (dir, archive)
}

#[tokio::test]
async fn events_land_once_in_their_days_files_and_deletes_are_absent() {
    let (_dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(500, 3, 1)).unwrap();
    let mut a = connected(&archive, &log, 200).await;
    let events = a.run_once().await.unwrap();
    let want = expected(&log);
    assert_eq!(events, want.len() as u64);
    assert!(want.len() < 500, "the sample has deletes");
    assert_eq!(archived(&archive).await, want);
    // Three batches (200, 200, 100 records) over three days: up to three files each.
    let files = archive.files(DateRange::ALL).await.unwrap();
    let days: std::collections::BTreeSet<_> = files.iter().map(|f| f.date.to_string()).collect();
    assert_eq!(
        days.into_iter().collect::<Vec<_>>(),
        ["2024-03-01", "2024-03-02", "2024-03-03"]
    );
    assert!(files.len() > 3 && files.len() <= 9, "{}", files.len());
    let cp = archive.read_checkpoint().await.unwrap().unwrap();
    assert_eq!((cp.through, cp.log.as_str()), (500, "memory"));
    let p = a.progress();
    assert_eq!(
        (p.archived_through(), p.records(), p.events()),
        (500, 500, events)
    );
    assert_eq!(
        (p.files(), p.batches(), p.lag(501)),
        (files.len() as u64, 3, 0)
    );
    assert!(p.bytes() > 0);
}

#[tokio::test]
async fn incremental_runs_append_and_keep_earlier_files() {
    let (_dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(120, 2, 2)).unwrap();
    let mut a = connected(&archive, &log, 1000).await;
    // The server's log status learns the archived position (it bounds what the log releases).
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    a.progress().publish_through(published.clone());
    assert_eq!(published.load(std::sync::atomic::Ordering::Acquire), 0);
    a.run_once().await.unwrap();
    assert_eq!(published.load(std::sync::atomic::Ordering::Acquire), 120);
    let first_files = archive.files(DateRange::ALL).await.unwrap();
    assert_eq!(a.run_once().await.unwrap(), 0, "nothing new");
    log.append(&records(80, 2, 3)).unwrap();
    assert_eq!(a.progress().lag(log.bounds().unwrap().next), 80);
    a.run_once().await.unwrap();
    let all = archive.files(DateRange::ALL).await.unwrap();
    assert!(first_files.iter().all(|f| all.contains(f)));
    assert!(all.len() > first_files.len());
    assert_eq!(archived(&archive).await, expected(&log));

    // A restart continues after the checkpoint instead of starting over.
    log.append(&records(30, 1, 4)).unwrap();
    drop(a);
    let mut b = connected(&archive, &log, 1000).await;
    assert_eq!(b.archived_through(), 200);
    b.run_once().await.unwrap();
    assert_eq!(archived(&archive).await, expected(&log));
}

/// A file where the checkpoint's directory should be: the files of a batch are written, its
/// checkpoint put fails — the state a crash between the two leaves.
fn block_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    let meta = dir.join("events").join("_archive");
    std::fs::create_dir_all(dir.join("events")).unwrap();
    let _ = std::fs::remove_dir_all(&meta);
    std::fs::write(&meta, b"in the way").unwrap();
    meta
}

#[tokio::test]
async fn a_failed_checkpoint_is_retried_without_duplicates() {
    let (dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(300, 3, 5)).unwrap();
    let mut a = connected(&archive, &log, 100).await;
    a.archive_batch().await.unwrap().unwrap();
    let meta = block_checkpoint(dir.path());
    let err = a.archive_batch().await.unwrap_err();
    assert!(err.to_string().contains("checkpoint.json"), "{err}");
    assert_eq!(a.archived_through(), 100);
    std::fs::remove_file(&meta).unwrap();
    // The pending batch is retried (same records, same file names), then the rest follows.
    a.run_once().await.unwrap();
    assert_eq!(a.archived_through(), 300);
    assert_eq!(archived(&archive).await, expected(&log));
}

#[tokio::test]
async fn a_crash_before_the_checkpoint_is_redone_exactly_once() {
    let (dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(400, 3, 6)).unwrap();
    let mut a = connected(&archive, &log, 150).await;
    a.archive_batch().await.unwrap().unwrap();
    let checkpoint = archive.read_checkpoint().await.unwrap().unwrap();
    // The second batch writes its files, then the process dies before the checkpoint.
    let meta = block_checkpoint(dir.path());
    a.archive_batch().await.unwrap_err();
    drop(a);
    std::fs::remove_file(&meta).unwrap();
    archive.write_checkpoint(&checkpoint).await.unwrap();
    let orphans: Vec<_> = archive
        .files(DateRange::ALL)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.first > 150)
        .collect();
    assert!(!orphans.is_empty(), "the crashed batch left files");

    // Restarted with another batch size, so the redone batch's files have other names: without
    // the orphans' removal its events would be archived twice.
    log.append(&records(50, 1, 7)).unwrap();
    let mut b = connected(&archive, &log, 1000).await;
    let remaining = archive.files(DateRange::ALL).await.unwrap();
    assert!(orphans.iter().all(|f| !remaining.contains(f)));
    b.run_once().await.unwrap();
    assert_eq!(archived(&archive).await, expected(&log));
    assert_eq!(b.archived_through(), 450);
}

#[tokio::test]
async fn a_crash_in_the_first_batch_leaves_nothing_behind() {
    let (dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(100, 2, 8)).unwrap();
    // A smaller batch than after the restart: the redone batch's files get other names.
    let mut a = connected(&archive, &log, 60).await;
    let meta = block_checkpoint(dir.path());
    a.archive_batch().await.unwrap_err();
    drop(a);
    std::fs::remove_file(&meta).unwrap();
    assert!(!archive.files(DateRange::ALL).await.unwrap().is_empty());
    let mut b = connected(&archive, &log, 1000).await;
    b.run_once().await.unwrap();
    assert_eq!(archived(&archive).await, expected(&log));
}

#[tokio::test]
async fn connect_refuses_another_log_and_a_log_behind_the_archive() {
    let (_dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(20, 1, 9)).unwrap();
    connected(&archive, &log, 1000)
        .await
        .run_once()
        .await
        .unwrap();

    let mut a = Archiver::recover(archive.clone(), options(10))
        .await
        .unwrap();
    let err = a
        .connect("file:///elsewhere", 1, |f| log.reader(f))
        .unwrap_err();
    assert!(matches!(err, ArchiverError::OtherLog { .. }), "{err}");
    // A log of the same name that holds only 10 records: replaced, not continued.
    let mut replaced = MemoryLog::default();
    replaced.append(&records(10, 1, 9)).unwrap();
    let err = a.connect("memory", 1, |f| replaced.reader(f)).unwrap_err();
    assert!(err.to_string().contains("through position 20"), "{err}");
    assert!(matches!(
        a.run_once().await,
        Err(ArchiverError::NotConnected)
    ));
}

#[tokio::test]
async fn released_records_are_counted_as_lost_and_archiving_goes_on() {
    let (_dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(20, 1, 10)).unwrap();
    connected(&archive, &log, 1000)
        .await
        .run_once()
        .await
        .unwrap();
    log.append(&records(20, 1, 11)).unwrap();
    log.release_before(31).unwrap();
    let mut a = connected(&archive, &log, 1000).await;
    assert_eq!(a.progress().lost(), 10);
    a.run_once().await.unwrap();
    assert_eq!(a.archived_through(), 40);
    let have = archived(&archive).await;
    assert!(have.keys().all(|&p| p <= 20 || p >= 31));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_follows_the_log_and_stops_cleanly() {
    let (_dir, archive) = local_archive();
    let mut log = MemoryLog::default();
    log.append(&records(50, 2, 12)).unwrap();
    let task = connected(&archive, &log, 30).await.spawn();
    let progress = task.progress();
    log.append(&records(50, 2, 13)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.archived_through() < 100 {
        assert!(Instant::now() < deadline, "the task did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let archiver = task.stop().await.unwrap();
    assert_eq!(archiver.archived_through(), 100);
    assert_eq!(archived(&archive).await, expected(&log));
}
