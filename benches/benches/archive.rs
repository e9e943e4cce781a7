//! Archive throughput (log records/s): the archiver copying 200,000 logged records (2% deletes,
//! events over two days, server-shaped ids) from an in-memory event log into the archive, in
//! batches of 100,000 (the default), to
//! - `encode-only`: reading the log, splitting by day and encoding Parquet, nothing stored — the
//!   baseline, the CPU floor of any store;
//! - `memory-store`: the whole archiver into `memory://` (object-store overhead, no disk);
//! - `local-dir`: the whole archiver into a local directory, each file and the checkpoint fsync'd.
//!
//! `cargo bench -p lambdarec-benches --bench archive`; figures print as records/s and as a ratio to
//! the baseline measured in the same process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use lambdarec_eventlog::memory::{MemoryLog, MemoryStorage};
use lambdarec_eventlog::{EventLog, LogRecord, delete_record, event_record};
use lambdarec_proto::archive::{Archive, ArchivedEvent, Date, encode};
use lambdarec_server::archive::{ArchiveOptions, Archiver};

const RECORDS: usize = 200_000;
const BASELINE: &str = "encode-only";

/// Server-shaped records: load-harness session ids, 9-digit item ids, a version stamp, times over
/// two days in log order, client_seq set, a delete every 50th record.
fn records() -> Vec<LogRecord> {
    let start = 1_709_251_200_000i64;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..RECORDS)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let session = format!("load-1f2e-18c0a1b2c3d/0/{}", (x >> 40) % 40_000);
            let t = start + (i as i64) * 864; // 200,000 × 0.864 s = two days
            if i % 50 == 49 {
                delete_record(&session, t, "20261128T101500123Z")
            } else {
                let item = format!("2145{:05}", (x >> 20) % 30_000);
                event_record(
                    &session,
                    &item,
                    t,
                    t + 3,
                    Some(i as u64),
                    "20261128T101500123Z",
                )
            }
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Everything the archiver does without a store: read, split by day, encode.
fn encode_only(storage: &MemoryStorage) -> u64 {
    let log = MemoryLog::new(storage.clone());
    let mut reader = log.reader(1).expect("reader");
    let mut bytes = 0;
    loop {
        let batch = reader.next_batch(100_000).expect("read");
        if batch.is_empty() {
            return bytes;
        }
        let mut days: BTreeMap<Date, Vec<ArchivedEvent>> = BTreeMap::new();
        for (p, r) in batch {
            if let Some(e) = ArchivedEvent::from_record(p, r) {
                days.entry(Date::from_unix_ms(e.timestamp_ms))
                    .or_default()
                    .push(e);
            }
        }
        for rows in days.values() {
            bytes += encode(rows, "bench").expect("encode").len() as u64;
        }
    }
}

/// The archiver end to end into `url`'s events directory; returns the events archived.
fn archive_all(rt: &tokio::runtime::Runtime, storage: &MemoryStorage, url: &str) -> u64 {
    let log = MemoryLog::new(storage.clone());
    rt.block_on(async {
        let archive = Archive::in_store(url).expect("archive");
        let mut a = Archiver::recover(archive, ArchiveOptions::default())
            .await
            .expect("recover");
        a.connect(&log.describe(), log.bounds().expect("bounds").first, |f| {
            log.reader(f)
        })
        .expect("connect");
        a.run_once().await.expect("archive")
    })
}

fn main() {
    let storage = MemoryStorage::default();
    MemoryLog::new(storage.clone())
        .append(&records())
        .expect("fill the log");
    let rt = runtime();
    let times: Mutex<BTreeMap<&str, Vec<Duration>>> = Mutex::default();
    let record = |case, d| {
        times
            .lock()
            .expect("times")
            .entry(case)
            .or_default()
            .push(d)
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15))
        .configure_from_args();
    let mut g = c.benchmark_group("archive");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function(BASELINE, |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(encode_only(&storage));
            }
            let d = t0.elapsed();
            record(BASELINE, d / iters as u32);
            d
        })
    });
    let mut n = 0;
    g.bench_function("memory-store", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let t0 = Instant::now();
                archive_all(&rt, &storage, &format!("memory://bench-archive-{n}"));
                d += t0.elapsed();
            }
            record("memory-store", d / iters as u32);
            d
        })
    });
    g.bench_function("local-dir", |b| {
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let t0 = Instant::now();
                archive_all(&rt, &storage, dir.path().to_str().expect("utf-8 path"));
                d += t0.elapsed();
            }
            record("local-dir", d / iters as u32);
            d
        })
    });
    g.finish();

    let times = times.into_inner().expect("times");
    let median = |case: &str| {
        let mut v = times.get(case)?.clone();
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let bytes = encode_only(&storage);
    println!(
        "\narchive throughput, {RECORDS} log records, {:.1} MB of Parquet ({:.1} bytes/record; load average {})",
        bytes as f64 / 1e6,
        bytes as f64 / RECORDS as f64,
        load.trim()
    );
    let base = median(BASELINE);
    for case in [BASELINE, "memory-store", "local-dir"] {
        if let (Some(m), Some(b)) = (median(case), base) {
            println!(
                "  {case:<13} {:>9.0} records/s  {:>7.1} ms  {:.2}x of {BASELINE}",
                RECORDS as f64 / m.as_secs_f64(),
                m.as_secs_f64() * 1e3,
                b.as_secs_f64() / m.as_secs_f64()
            );
        }
    }
}
