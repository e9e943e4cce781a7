//! Reading the event archive (the master dataset that `lambdarec archive` writes, see
//! [`lambdarec_proto::archive`]) into the same [`RawLog`] the file readers produce, so preparation,
//! the time split, training and evaluation do not know where the events came from.

use std::fmt;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use futures::{StreamExt, TryStreamExt};
use lambdarec_proto::archive::{
    Archive, ArchiveFile, Date, DateRange, ITEM_ID, SESSION_ID, TIMESTAMP_MS, decode,
};

use super::reader::LogBuilder;
use super::{DataError, Location, RawLog};

/// Files fetched ahead of the one being decoded (overlaps network latency with decoding).
const PREFETCH: usize = 8;

/// An archive and the days of it to read.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveSource {
    /// The archive's `events` directory (or the store above it): a local path or an object-store
    /// URL.
    pub url: String,
    /// Inclusive UTC days of event time.
    pub range: DateRange,
}

impl fmt::Display for ArchiveSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the archive {} ({})", self.url, self.range)
    }
}

/// The archive's events in `source.range` as a [`RawLog`]: sessions keyed by `session_id`, times
/// in seconds (`timestamp_ms / 1000`, exact for whole-millisecond times, so a text log of the same
/// events gives identical prepared data). Files are read day by day in log order, so equal times
/// in a session keep the order the server logged them in.
pub async fn read_archive(source: &ArchiveSource, skip_bad: bool) -> Result<RawLog, DataError> {
    // Opening a local store creates its directory; a reader must not leave one behind a typo.
    let local = std::path::Path::new(&source.url);
    if !source.url.contains("://") && !local.is_dir() {
        return Err(DataError::Io {
            path: source.url.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let archive = Archive::find(&source.url).await?;
    let files = archive.files(source.range).await?;
    if files.is_empty() {
        return Err(nothing_in_range(&archive, source).await?);
    }
    tracing::info!(
        archive = archive.url(),
        range = %source.range,
        files = files.len(),
        "reading the event archive"
    );
    let mut log = LogBuilder::new(archive.url(), skip_bad);
    let archive_ref = &archive;
    let mut fetched = futures::stream::iter(&files)
        .map(|f| async move { archive_ref.fetch(f).await.map(|bytes| (f, bytes)) })
        .buffered(PREFETCH);
    while let Some((file, bytes)) = fetched.try_next().await? {
        push_file(&mut log, &archive, file, bytes)?;
    }
    Ok(log.finish(None))
}

fn push_file(
    log: &mut LogBuilder,
    archive: &Archive,
    file: &ArchiveFile,
    bytes: bytes::Bytes,
) -> Result<(), DataError> {
    let shown = archive.display(&file.relative_path());
    let batches = decode(bytes, Some(&[SESSION_ID, ITEM_ID, TIMESTAMP_MS]), &shown)?;
    let mut row = 0;
    for batch in batches {
        // decode returns the columns in schema order, cast to the schema's types.
        let session = batch.column(0).as_string::<i32>();
        let item = batch.column(1).as_string::<i32>();
        let time = batch.column(2).as_primitive::<Int64Type>();
        for r in 0..batch.num_rows() {
            row += 1;
            let missing = [(session, SESSION_ID), (item, ITEM_ID)]
                .into_iter()
                .find(|(a, _)| a.is_null(r) || a.value(r).is_empty());
            if let Some((_, column)) = missing {
                let message = format!(
                    "{}: column \"{column}\": null or empty",
                    file.relative_path()
                );
                log.bad(Location::Row(row), message)?;
            } else if time.is_null(r) {
                let message = format!("{}: column \"{TIMESTAMP_MS}\": null", file.relative_path());
                log.bad(Location::Row(row), message)?;
            } else {
                log.push(
                    session.value(r),
                    item.value(r),
                    time.value(r) as f64 / 1000.0,
                );
            }
        }
    }
    Ok(())
}

/// The error for a range with no data, saying what the archive does hold.
async fn nothing_in_range(
    archive: &Archive,
    source: &ArchiveSource,
) -> Result<DataError, DataError> {
    let all = archive.partitions(DateRange::ALL).await?;
    let holds = match (all.first(), all.last()) {
        (Some(first), Some(last)) if source.range != DateRange::ALL => {
            format!("it holds {} days, {first} to {last}", all.len())
        }
        (Some(_), Some(_)) => "its partitions hold no data files".to_owned(),
        _ => format!(
            "it has no date=YYYY-MM-DD partitions at all (expected <store>/{} as `lambdarec \
             archive` writes it)",
            lambdarec_proto::archive::EVENTS_DIR
        ),
    };
    Ok(DataError::EmptyArchive {
        url: archive.url().to_owned(),
        range: source.range.to_string(),
        holds,
    })
}

/// Parses a `--since`/`--until` day.
pub fn parse_date(s: &str) -> Result<Date, String> {
    s.parse()
        .map_err(|e: lambdarec_proto::archive::ArchiveError| e.to_string())
}

#[cfg(test)]
mod tests {
    use lambdarec_proto::archive::ArchivedEvent;

    use super::*;
    use crate::data::{PrepareOptions, ReadOptions, prepare, read_log};

    /// 2024-03-01T00:00:00Z in seconds.
    const START: i64 = 1_709_251_200;

    /// (session, item, time in ms) over three days; times whole ms, some whole seconds, and
    /// equal times inside a session (their order must survive).
    fn sample() -> Vec<(String, String, i64)> {
        let mut out = Vec::new();
        for s in 0..60i64 {
            let t0 = (START + s * 3_600) * 1000 + (s % 3) * 137;
            for k in 0..(2 + s % 5) {
                let t = t0 + k * 61_001 * i64::from(k != 2);
                out.push((format!("s{s}"), format!("i{}", (s * 7 + k * 3) % 23), t));
            }
        }
        out
    }

    fn write_tsv(rows: &[(String, String, i64)], path: &std::path::Path) {
        use std::fmt::Write;
        let mut text = String::from("SessionId\tItemId\tTime\n");
        for (s, i, ms) in rows {
            let _ = writeln!(text, "{s}\t{i}\t{}.{:03}", ms / 1000, ms % 1000);
        }
        std::fs::write(path, text).unwrap();
    }

    /// Archives rows as the archiver would: log order, one file per day of each batch.
    async fn write_archive(rows: &[(String, String, i64)], url: &str, batch: usize) {
        let archive = Archive::in_store(url).unwrap();
        let events: Vec<ArchivedEvent> = rows
            .iter()
            .enumerate()
            .map(|(p, (s, i, ms))| ArchivedEvent {
                position: p as u64 + 1,
                session_id: s.clone(),
                item_id: i.clone(),
                timestamp_ms: *ms,
                received_ms: *ms + 5,
                client_seq: None,
                model_version: "v1".into(),
            })
            .collect();
        for chunk in events.chunks(batch) {
            let mut days: std::collections::BTreeMap<Date, Vec<ArchivedEvent>> = Default::default();
            for e in chunk {
                let day = Date::from_unix_ms(e.timestamp_ms);
                days.entry(day).or_default().push(e.clone());
            }
            for (day, rows) in days {
                archive.write_file(day, &rows).await.unwrap();
            }
        }
    }

    fn source(url: String, since: Option<&str>, until: Option<&str>) -> ArchiveSource {
        let d = |s: Option<&str>| s.map(|s| s.parse().unwrap());
        ArchiveSource {
            url,
            range: DateRange::new(d(since), d(until)).unwrap(),
        }
    }

    #[tokio::test]
    async fn an_archive_prepares_exactly_like_the_text_log_of_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample();
        let tsv = dir.path().join("log.tsv");
        write_tsv(&rows, &tsv);
        let store = dir.path().join("store");
        write_archive(&rows, store.to_str().unwrap(), 50).await;

        let from_text = read_log(&tsv, &ReadOptions::default()).unwrap();
        let events_url = store.join("events").to_str().unwrap().to_owned();
        let from_archive = read_archive(&source(events_url, None, None), false)
            .await
            .unwrap();
        assert_eq!(from_archive.events.len(), rows.len());
        let opts = PrepareOptions {
            min_item_support: 1,
            test_window: 86_400.0,
            ..PrepareOptions::default()
        };
        let a = prepare(&from_text, None, &opts).unwrap();
        let b = prepare(&from_archive, None, &opts).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[tokio::test]
    async fn since_and_until_select_whole_utc_days() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample();
        let store = dir.path().to_str().unwrap().to_owned();
        write_archive(&rows, &store, 1000).await;
        let day_of = |ms: i64| Date::from_unix_ms(ms).to_string();
        let count = |since: Option<&str>, until: Option<&str>| {
            rows.iter()
                .filter(|r| {
                    let d = day_of(r.2);
                    since.is_none_or(|s| d.as_str() >= s) && until.is_none_or(|u| d.as_str() <= u)
                })
                .count()
        };
        // The store's root works as well as its events directory.
        for (since, until) in [
            (Some("2024-03-02"), Some("2024-03-02")),
            (Some("2024-03-02"), None),
            (None, Some("2024-03-01")),
            (None, None),
        ] {
            let log = read_archive(&source(store.clone(), since, until), false)
                .await
                .unwrap();
            assert_eq!(
                log.events.len(),
                count(since, until),
                "{since:?}..{until:?}"
            );
            assert!(!log.events.is_empty());
        }
        let err = read_archive(&source(store.clone(), Some("2025-01-01"), None), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dates from 2025-01-01")
                && err.contains("3 days, 2024-03-01 to 2024-03-03"),
            "{err}"
        );
        let typo = dir.path().join("typo");
        let err = read_archive(&source(typo.to_str().unwrap().into(), None, None), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such directory"), "{err}");
        assert!(!typo.exists(), "reading must not create the directory");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = read_archive(&source(empty.to_str().unwrap().into(), None, None), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no date=YYYY-MM-DD partitions"), "{err}");
    }

    #[test]
    fn dates_parse_for_the_command_line() {
        assert_eq!(parse_date("2024-03-01").unwrap().to_string(), "2024-03-01");
        assert!(parse_date("2024-3-1").unwrap_err().contains("YYYY-MM-DD"));
    }
}
