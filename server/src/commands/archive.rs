//! `lambdarec archive`: copies an event log that another process writes (a running server's) into
//! the master dataset, `<store>/events/date=…/*.parquet`, once or following the log.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lambdarec_eventlog::EventLog;
use lambdarec_proto::archive::Archive;
use lambdarec_server::archive::{ArchiveOptions, Archiver};

#[derive(Args, Debug)]
#[command(
    long_about = "Copy the events of an event log into the archive (the master dataset the batch layer \
                  trains from): Parquet files partitioned by the UTC day of each event, under \
                  <store>/events/, each event exactly once across restarts. Deletes are speed-layer \
                  operations and are not archived. The log is only read; releasing its segments stays \
                  with the server that writes it.",
    after_help = "Examples (archive what the log holds now; then keep following it):\n  \
    lambdarec archive --log file://./lambdarec-data/log --store ./lambdarec-store --once\n  \
    lambdarec archive --log nats://127.0.0.1:4222/LAMBDAREC --store s3://bucket/lambdarec\n\
    Then train on it:\n  \
    lambdarec train --data ./lambdarec-store/events --since 2026-11-20"
)]
pub struct ArchiveArgs {
    /// The event log to read: file:///path/to/log or nats://host:port/STREAM.
    #[arg(long, env = "LAMBDAREC_LOG")]
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
    let log = open_log(&a.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(archive(
        log.as_ref(),
        &a.store,
        options,
        a.once,
        termination(),
    ))
}

/// Opens the log at `url` for reading beside the process that appends to it.
///
/// Left for the event-log backends (issue 11, item 2): this is the one place to call their opener
/// (a read-only open of the file log; the JetStream log reads through its own consumer). Until
/// they land there is no log another process can share, so every URL is refused with that reason.
fn open_log(url: &str) -> anyhow::Result<Box<dyn EventLog>> {
    anyhow::bail!(
        "cannot open the event log {url:?}: this build has no file:// or nats:// log backend to read \
         it with yet (they arrive with the event-log backends)"
    )
}

/// Archives `log` into `<store>/events`: everything it holds now (`once`), or following it until
/// `shutdown` resolves, reporting progress and lag every interval.
async fn archive(
    log: &dyn EventLog,
    store: &str,
    options: ArchiveOptions,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let target = Archive::in_store(store)?;
    let url = target.url().to_owned();
    let interval = options.interval;
    let mut archiver = Archiver::recover(target, options)
        .await
        .with_context(|| format!("opening the archive at {url}"))?;
    let from = archiver.connect(&log.describe(), log.bounds()?, |from| log.reader(from))?;
    let progress = archiver.progress();
    let started = Instant::now();
    if once {
        let to_do = log.bounds()?.next.saturating_sub(from);
        let bar = ProgressBar::new(to_do).with_style(
            ProgressStyle::with_template(
                "archiving [{bar:30}] {pos}/{len} records {per_sec} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        while let Some(batch) = archiver.archive_batch().await? {
            bar.inc(batch.records as u64);
            bar.set_message(format!("{} files", progress.files()));
        }
        bar.finish_and_clear();
    } else {
        let task = archiver.spawn();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(interval) => {}
            }
            let lag = progress.lag(log.bounds()?.next);
            tracing::info!(
                archived_through = progress.archived_through(),
                events = progress.events(),
                files = progress.files(),
                lag,
                errors = progress.errors(),
                "archive progress"
            );
        }
        tracing::info!("stopping after the batch in progress");
        task.stop().await?;
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
    use lambdarec_eventlog::event_record;
    use lambdarec_eventlog::memory::MemoryLog;
    use lambdarec_proto::archive::DateRange;

    use super::*;

    fn filled_log(n: usize) -> MemoryLog {
        let mut log = MemoryLog::default();
        let records: Vec<_> = (0..n)
            .map(|i| {
                let t = 1_709_251_200_000 + i as i64 * 3_600_000;
                event_record(&format!("s{}", i % 5), &format!("i{i}"), t, t, None, "v1")
            })
            .collect();
        log.append(&records).unwrap();
        log
    }

    async fn archived_events(store: &str) -> usize {
        let a = Archive::in_store(store).unwrap();
        let mut n = 0;
        for f in a.files(DateRange::ALL).await.unwrap() {
            n += a.read_events(&f).await.unwrap().len();
        }
        n
    }

    #[tokio::test]
    async fn once_archives_everything_and_a_rerun_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().to_str().unwrap();
        let log = filled_log(100);
        let opts = ArchiveOptions {
            max_records: 30,
            ..ArchiveOptions::default()
        };
        archive(&log, store, opts.clone(), true, std::future::pending())
            .await
            .unwrap();
        assert_eq!(archived_events(store).await, 100);
        archive(&log, store, opts, true, std::future::pending())
            .await
            .unwrap();
        assert_eq!(archived_events(store).await, 100);
    }

    #[tokio::test]
    async fn following_stops_on_shutdown_with_the_log_archived() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().to_str().unwrap();
        let log = filled_log(60);
        let opts = ArchiveOptions {
            max_records: 1000,
            interval: Duration::from_millis(10),
        };
        // Shut down once the checkpoint shows everything archived (the task runs meanwhile).
        let watched = Archive::in_store(store).unwrap();
        let shutdown = async move {
            while watched
                .read_checkpoint()
                .await
                .ok()
                .flatten()
                .map(|c| c.through)
                != Some(60)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        archive(&log, store, opts, false, shutdown).await.unwrap();
        assert_eq!(archived_events(store).await, 60);
    }

    #[test]
    fn logs_without_a_backend_are_refused_with_the_reason() {
        let Err(err) = open_log("file:///tmp/log") else {
            panic!("opened a log without a backend");
        };
        let err = err.to_string();
        assert!(
            err.contains("file:///tmp/log") && err.contains("backend"),
            "{err}"
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
