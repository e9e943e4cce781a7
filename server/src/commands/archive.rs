//! `lambdarec archive`: copies an event log that another process writes (a running server's) into
//! the master dataset, `<store>/events/date=…/*.parquet`, once or following the log.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lambdarec_eventlog::file::FileLog;
use lambdarec_eventlog::{EventLog, Location, LogError, LogReader, OpenOptions, Position};
use lambdarec_proto::archive::Archive;
use lambdarec_server::archive::{ArchiveOptions, Archiver};
use tokio::runtime::Runtime;

#[derive(Args, Debug)]
#[command(
    long_about = "Copy the events of an event log into the archive (the master dataset the batch layer \
                  trains from): Parquet files partitioned by the UTC day of each event, under \
                  <store>/events/, each event exactly once across restarts. Deletes are speed-layer \
                  operations and are not archived. The log is only read; releasing its segments stays \
                  with the server that writes it.\n\n\
                  One archiver per archive: `lambdarec serve` archives its own log by default, so run \
                  this command for a log whose server runs with --archive-interval 0 (or for a log no \
                  server writes any more). Two archivers on one store are not detected.",
    after_help = "Examples (archive what the log holds now; then keep following it):\n  \
    lambdarec archive --log file://./lambdarec-data/log --store ./lambdarec-store --once\n  \
    lambdarec archive --log nats://127.0.0.1:4222/LAMBDAREC --store s3://bucket/lambdarec\n\
    Then train on it:\n  \
    lambdarec train --data ./lambdarec-store/events --since 2026-11-20"
)]
pub struct ArchiveArgs {
    /// The event log to read: file:///path/to/log or nats://host:port/STREAM.
    #[arg(long, env = "LAMBDAREC_EVENT_LOG")]
    pub log: String,
    /// Object store to archive into (a local directory, file://, memory://, s3://, gs:// or az://);
    /// the archive is its events/ directory.
    #[arg(long, env = "LAMBDAREC_STORE", default_value = "./lambdarec-store")]
    pub store: String,
    /// Archive what the log holds now, then exit (default: keep following the log until ctrl-c).
    #[arg(long)]
    pub once: bool,
    /// Most log records per batch (each batch writes one file per day, then the checkpoint).
    #[arg(long, env = "LAMBDAREC_ARCHIVE_MAX_RECORDS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_records: u64,
    /// Seconds between polls of the log once caught up.
    #[arg(long, env = "LAMBDAREC_ARCHIVE_INTERVAL", default_value_t = 10.0)]
    pub interval: f64,
}

impl ArchiveArgs {
    fn options(&self) -> anyhow::Result<ArchiveOptions> {
        let interval = Duration::try_from_secs_f64(self.interval)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "--interval must be a positive number of seconds, got {}",
                    self.interval
                )
            })?;
        Ok(ArchiveOptions {
            max_records: usize::try_from(self.max_records).unwrap_or(usize::MAX),
            interval,
        })
    }
}

pub fn run(a: ArchiveArgs) -> anyhow::Result<()> {
    let options = a.options()?;
    let log = SourceLog::open(&a.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = mpsc::channel();
    runtime.spawn(async move {
        termination().await;
        let _ = stop_tx.send(());
    });
    archive(&runtime, &log, &a.store, options, a.once, &stop_rx)
}

/// A log that another process writes, as this command reads it. Its calls block (a JetStream log
/// runs a runtime of its own), so they are made on this thread, never inside the async runtime.
enum SourceLog {
    /// A log opened through its backend (JetStream: any number of clients share a stream).
    Shared(Box<dyn EventLog>),
    /// The embedded log's directory, read without taking its lock (its server holds it).
    FileReadOnly { dir: PathBuf, name: String },
}

impl SourceLog {
    fn open(url: &str) -> anyhow::Result<SourceLog> {
        match Location::parse(url)? {
            Location::None => anyhow::bail!("--log none: there is no event log to archive"),
            Location::File(dir) => {
                let canonical = dir.canonicalize().with_context(|| {
                    format!("opening the event log directory {}", dir.display())
                })?;
                // The name the writing FileLog gives itself, so the checkpoint matches whichever
                // of the two (this command or an archiver in the server) continues the archive.
                let name = format!("file://{}", canonical.display());
                Ok(SourceLog::FileReadOnly {
                    dir: canonical,
                    name,
                })
            }
            Location::Nats(_) => {
                let log = lambdarec_eventlog::open(url, &OpenOptions::default())?;
                Ok(SourceLog::Shared(
                    log.context("a NATS location opens a log")?,
                ))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            SourceLog::Shared(log) => log.describe(),
            SourceLog::FileReadOnly { name, .. } => name.clone(),
        }
    }

    /// The first position the log holds.
    fn first(&self) -> Result<Position, LogError> {
        match self {
            SourceLog::Shared(log) => Ok(log.bounds()?.first),
            SourceLog::FileReadOnly { dir, .. } => match FileLog::open_read_only(dir, 1) {
                Ok(_) => Ok(1),
                Err(LogError::Released { first, .. }) => Ok(first),
                Err(e) => Err(e),
            },
        }
    }

    /// The position the next record will get, where the log can tell (not a read-only file log).
    fn next(&self) -> Option<Position> {
        match self {
            SourceLog::Shared(log) => log.bounds().ok().map(|b| b.next),
            SourceLog::FileReadOnly { .. } => None,
        }
    }

    fn reader(&self, from: Position) -> Result<Box<dyn LogReader>, LogError> {
        match self {
            SourceLog::Shared(log) => log.reader(from),
            SourceLog::FileReadOnly { dir, .. } => {
                Ok(Box::new(FileLog::open_read_only(dir, from)?))
            }
        }
    }
}

/// Archives `log` into `<store>/events`: everything it holds now (`once`), or following it until
/// `stop` receives (or its sender is gone), reporting progress and lag every interval.
fn archive(
    rt: &Runtime,
    log: &SourceLog,
    store: &str,
    options: ArchiveOptions,
    once: bool,
    stop: &mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let target = Archive::in_store(store)?;
    let url = target.url().to_owned();
    let interval = options.interval;
    let mut archiver = rt
        .block_on(Archiver::recover(target, options))
        .with_context(|| format!("opening the archive at {url}"))?;
    let from = archiver.connect(&log.describe(), log.first()?, |from| log.reader(from))?;
    let progress = archiver.progress();
    let started = Instant::now();
    if once {
        let bar = match log.next() {
            Some(next) => ProgressBar::new(next.saturating_sub(from)),
            None => ProgressBar::no_length(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "archiving [{bar:30}] {pos}/{len} records {per_sec} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        while let Some(batch) = rt.block_on(archiver.archive_batch())? {
            bar.inc(batch.records as u64);
            bar.set_message(format!("{} files", progress.files()));
        }
        bar.finish_and_clear();
    } else {
        let task = rt.block_on(async { archiver.spawn() });
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
            let lag = log.next().map(|next| progress.lag(next));
            tracing::info!(
                archived_through = progress.archived_through(),
                events = progress.events(),
                files = progress.files(),
                lag = lag.map_or_else(
                    || "unknown (read-only file log)".to_owned(),
                    |l| l.to_string()
                ),
                errors = progress.errors(),
                "archive progress"
            );
        }
        tracing::info!("stopping after the batch in progress");
        rt.block_on(task.stop())?;
    }
    println!(
        "archived {} events ({} log records, {} files, {:.1} MB) into {url} in {:.1} s; through position {}",
        progress.events(),
        progress.records(),
        progress.files(),
        progress.bytes() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        progress.archived_through()
    );
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use lambdarec_eventlog::memory::MemoryLog;
    use lambdarec_eventlog::{LogRecord, delete_record, event_record};
    use lambdarec_proto::archive::DateRange;

    use super::*;

    fn records(n: usize) -> Vec<LogRecord> {
        (0..n)
            .map(|i| {
                let t = 1_709_251_200_000 + i as i64 * 3_600_000;
                if i % 10 == 9 {
                    delete_record(&format!("s{}", i % 5), t, "v1")
                } else {
                    event_record(&format!("s{}", i % 5), &format!("i{i}"), t, t, None, "v1")
                }
            })
            .collect()
    }

    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn archived_events(rt: &Runtime, store: &str) -> usize {
        rt.block_on(async {
            let a = Archive::in_store(store).unwrap();
            let mut n = 0;
            for f in a.files(DateRange::ALL).await.unwrap() {
                n += a.read_events(&f).await.unwrap().len();
            }
            n
        })
    }

    /// A stop channel whose sender fires once the store's checkpoint reaches `through`.
    fn stop_when_archived(store: &std::path::Path, through: u64) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        let checkpoint = store.join("events/_archive/checkpoint.json");
        // A deadline, so that a failing archiver fails the test instead of hanging it.
        let deadline = Instant::now() + Duration::from_secs(30);
        std::thread::spawn(move || {
            while Instant::now() < deadline {
                let json = std::fs::read(&checkpoint).unwrap_or_default();
                let value: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
                if value["through"] == through {
                    let _ = tx.send(());
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = tx.send(());
        });
        rx
    }

    #[test]
    fn once_archives_a_shared_log_and_a_rerun_adds_nothing() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().to_str().unwrap();
        let mut log = MemoryLog::default();
        log.append(&records(100)).unwrap();
        let log = SourceLog::Shared(Box::new(log));
        let opts = ArchiveOptions {
            max_records: 30,
            ..ArchiveOptions::default()
        };
        let (_tx, never) = mpsc::channel();
        archive(&rt, &log, store, opts.clone(), true, &never).unwrap();
        assert_eq!(archived_events(&rt, store), 90);
        archive(&rt, &log, store, opts, true, &never).unwrap();
        assert_eq!(archived_events(&rt, store), 90);
    }

    #[test]
    fn follows_a_file_log_that_its_server_holds_open() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        // The writer keeps the log (and its lock) open, as a running server does.
        let mut writer = FileLog::open(&log_dir, &OpenOptions::default()).unwrap();
        writer.append(&records(40)).unwrap();
        let url = format!("file://{}", log_dir.display());
        let source = SourceLog::open(&url).unwrap();
        assert_eq!(
            source.describe(),
            writer.describe(),
            "checkpoints must name the log alike"
        );
        let store = dir.path().join("store");
        let opts = ArchiveOptions {
            max_records: 1000,
            interval: Duration::from_millis(10),
        };
        let stop = stop_when_archived(&store, 40);
        archive(
            &rt,
            &source,
            store.to_str().unwrap(),
            opts.clone(),
            false,
            &stop,
        )
        .unwrap();
        assert_eq!(archived_events(&rt, store.to_str().unwrap()), 36);

        // Later appends are archived by the next run, after the checkpoint.
        writer.append(&records(20)).unwrap();
        let stop = stop_when_archived(&store, 60);
        archive(&rt, &source, store.to_str().unwrap(), opts, false, &stop).unwrap();
        assert_eq!(archived_events(&rt, store.to_str().unwrap()), 54);
    }

    #[test]
    fn unusable_logs_are_refused_with_the_reason() {
        let err = |url: &str| match SourceLog::open(url) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err("none").contains("no event log"), "{}", err("none"));
        let missing = err("file:///nonexistent/lambdarec/log");
        assert!(missing.contains("/nonexistent/lambdarec/log"), "{missing}");
        assert!(
            err("kafka://h/t").contains("unknown scheme"),
            "{}",
            err("kafka://h/t")
        );
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let args = ArchiveArgs {
            log: "x".into(),
            store: "y".into(),
            once: false,
            max_records: 1,
            interval: 0.0,
        };
        assert!(
            args.options()
                .unwrap_err()
                .to_string()
                .contains("--interval")
        );
    }
}
