//! The master dataset: the event log's events as Parquet on an object store, partitioned by day. The
//! server's archiver writes it, the trainer reads it; this module is the contract between them.
//!
//! ```text
//! <store>/events/date=YYYY-MM-DD/<first:020>-<last:020>.parquet   events of that UTC day (event time)
//! <store>/events/_archive/checkpoint.json                         {"through": P, "log": ..., "updated": ...}
//! ```
//!
//! - The day is the UTC day of the event's `timestamp_ms` (when it happened, which for a replayed
//!   historical log is the original time), so `--since/--until` select the days events happened.
//! - `first`/`last` are the smallest and largest log positions in the file. Positions are unique, so
//!   files never collide, and a file's name says which log records it holds.
//! - Columns: `session_id` utf8, `item_id` utf8, `timestamp_ms` int64, `received_ms` int64,
//!   `model_version` utf8, `client_seq` uint64 (nullable), `position` uint64; rows in log order.
//! - **Events only.** A DELETE record is a speed-layer state operation (forget this session's live
//!   state); it is not applied to the archive, which keeps every event that happened. Erasing a
//!   user's data from the master dataset is a separate, deliberate job.
//! - **Exactly once.** A batch of the log becomes one file per day, each written with one atomic
//!   `put`; only then does the checkpoint move to the batch's last position. After a crash, every
//!   file whose `first` is above the checkpoint's `through` is an orphan of the unfinished batch:
//!   the archiver deletes those and archives the batch again.

mod date;
mod error;
mod names;
mod pages;
mod schema;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::bundle::Store;

pub use date::{Date, DateRange};
pub use error::ArchiveError;
pub use names::{ArchiveFile, CHECKPOINT_FILE, META_DIR, parse_partition, partition_name};
pub use pages::{MAX_EXPANSION, MIN_ALLOWANCE, check_pages};
pub use schema::{
    ArchivedEvent, CLIENT_SEQ, FORMAT_KEY, FORMAT_VERSION, ITEM_ID, MODEL_VERSION, POSITION,
    RECEIVED_MS, SESSION_ID, TIMESTAMP_MS, check_chunk_ranges, decode, encode, guard_parquet, rows,
    schema,
};

/// The directory of the archive inside a store.
pub const EVENTS_DIR: &str = "events";

/// `_archive/checkpoint.json`: every log record up to `through` is archived (or was a delete).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last log position archived.
    pub through: u64,
    /// The log the positions belong to (`EventLog::describe()`), so that an archive is not
    /// continued from another log's positions.
    pub log: String,
    /// When the checkpoint was written, RFC 3339 UTC.
    pub updated: String,
}

/// An archive: an object store and the path of its `events` directory.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    /// The root's URL, without a trailing '/'.
    url: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// The archive whose root (the `events` directory) is `url`: a local path, `file://`,
    /// `memory://`, `s3://`, `gs://`, `az://` (as [`Store::open`]). A local directory is created
    /// if missing, and its writes are fsync'd before they count as done.
    pub fn open(url: &str) -> Result<Archive, ArchiveError> {
        let store = Store::open_with(url, true).map_err(|source| ArchiveError::Open {
            url: url.to_owned(),
            source: Box::new(source),
        })?;
        Ok(Archive::from_object_store(
            store.object_store().clone(),
            store.prefix().clone(),
            store.url(),
        ))
    }

    /// The archive of a store: `<store_url>/events`.
    pub fn in_store(store_url: &str) -> Result<Archive, ArchiveError> {
        Ok(Archive::open(store_url)?.child(EVENTS_DIR))
    }

    /// The archive rooted at `root` in `store`; `url` is what messages show for the root.
    pub fn from_object_store(store: Arc<dyn ObjectStore>, root: Path, url: &str) -> Archive {
        Archive {
            inner: store,
            root,
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    /// The archive a reader most likely means by `url`: `url` itself when it holds partitions, else
    /// `url/events` when that does (a store's root was given), else `url` (empty).
    pub async fn find(url: &str) -> Result<Archive, ArchiveError> {
        let here = Archive::open(url)?;
        if !here.partitions(DateRange::ALL).await?.is_empty() {
            return Ok(here);
        }
        let below = here.child(EVENTS_DIR);
        if !below.partitions(DateRange::ALL).await?.is_empty() {
            return Ok(below);
        }
        Ok(here)
    }

    fn child(&self, name: &str) -> Archive {
        Archive {
            inner: self.inner.clone(),
            root: self.root.clone().join(name),
            url: format!("{}/{name}", self.url),
        }
    }

    /// The root's URL (the `events` directory).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL-like name of an object below the root, for messages.
    pub fn display(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The days with a partition directory in `range`, ascending.
    pub async fn partitions(&self, range: DateRange) -> Result<Vec<Date>, ArchiveError> {
        let listed = match self.inner.list_with_delimiter(Some(&self.root)).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(source) => return Err(ArchiveError::store(&self.url, source)),
        };
        let mut dates: Vec<Date> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| parse_partition(p.filename()?))
            .filter(|d| range.contains(*d))
            .collect();
        dates.sort_unstable();
        Ok(dates)
    }

    /// The data files of the partitions in `range`, by day and then by first position (the order
    /// that keeps each day's events in log order). Other objects in a partition are ignored.
    pub async fn files(&self, range: DateRange) -> Result<Vec<ArchiveFile>, ArchiveError> {
        let mut files = Vec::new();
        for date in self.partitions(range).await? {
            let dir = partition_name(date);
            let listed = self
                .inner
                .list_with_delimiter(Some(&self.path(&dir)))
                .await
                .map_err(|source| ArchiveError::store(self.display(&dir), source))?;
            let before = files.len();
            files.extend(
                listed
                    .objects
                    .iter()
                    .filter_map(|m| ArchiveFile::parse(date, m.location.filename()?)),
            );
            files[before..].sort_unstable();
        }
        Ok(files)
    }

    /// The bytes of one data file.
    pub async fn fetch(&self, file: &ArchiveFile) -> Result<Bytes, ArchiveError> {
        let rel = file.relative_path();
        let got = self
            .inner
            .get(&self.path(&rel))
            .await
            .map_err(|source| ArchiveError::store(self.display(&rel), source))?;
        got.bytes()
            .await
            .map_err(|source| ArchiveError::store(self.display(&rel), source))
    }

    /// Every row of one data file, in file (log) order.
    pub async fn read_events(
        &self,
        file: &ArchiveFile,
    ) -> Result<Vec<ArchivedEvent>, ArchiveError> {
        let shown = self.display(&file.relative_path());
        let batches = decode(self.fetch(file).await?, None, &shown)?;
        rows(&batches, &shown)
    }

    /// Stores one encoded data file (one atomic put); returns its size in bytes.
    pub async fn put_file(&self, file: &ArchiveFile, parquet: Bytes) -> Result<u64, ArchiveError> {
        let rel = file.relative_path();
        let size = parquet.len() as u64;
        self.inner
            .put(&self.path(&rel), PutPayload::from(parquet))
            .await
            .map_err(|source| ArchiveError::store(self.display(&rel), source))?;
        Ok(size)
    }

    /// Encodes and stores the events of one day (non-empty, all of that day, in log order).
    pub async fn write_file(
        &self,
        date: Date,
        events: &[ArchivedEvent],
    ) -> Result<ArchiveFile, ArchiveError> {
        let file = file_of(date, events);
        let bytes = encode(events, &self.display(&file.relative_path()))?;
        self.put_file(&file, Bytes::from(bytes)).await?;
        Ok(file)
    }

    /// Deletes one data file (an orphan of an unfinished batch). Deleting a missing file succeeds.
    pub async fn delete_file(&self, file: &ArchiveFile) -> Result<(), ArchiveError> {
        let rel = file.relative_path();
        match self.inner.delete(&self.path(&rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(ArchiveError::store(self.display(&rel), source)),
        }
    }

    fn checkpoint_rel() -> String {
        format!("{META_DIR}/{CHECKPOINT_FILE}")
    }

    /// The checkpoint, or `None` for an archive never written to.
    pub async fn read_checkpoint(&self) -> Result<Option<Checkpoint>, ArchiveError> {
        let rel = Archive::checkpoint_rel();
        let shown = self.display(&rel);
        let bytes = match self.inner.get(&self.path(&rel)).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(ArchiveError::store(shown, source)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ArchiveError::Json {
                path: shown,
                source,
            })
    }

    /// Replaces the checkpoint (one atomic put).
    pub async fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), ArchiveError> {
        let rel = Archive::checkpoint_rel();
        let shown = self.display(&rel);
        let json = serde_json::to_vec_pretty(checkpoint).map_err(|source| ArchiveError::Json {
            path: shown.clone(),
            source,
        })?;
        self.inner
            .put(&self.path(&rel), PutPayload::from(json))
            .await
            .map(drop)
            .map_err(|source| ArchiveError::store(shown, source))
    }

    /// Every object under the root, for tests and tools (`(relative path, size)`), sorted.
    pub async fn list_all(&self) -> Result<Vec<(String, u64)>, ArchiveError> {
        let objects: Vec<_> = match self.inner.list(Some(&self.root)).try_collect().await {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => return Err(ArchiveError::store(&self.url, source)),
        };
        let mut out: Vec<(String, u64)> = objects
            .iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.prefix_match(&self.root)?.collect();
                let rel = parts
                    .iter()
                    .map(|p| p.as_ref())
                    .collect::<Vec<_>>()
                    .join("/");
                Some((rel, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The file that holds `events` (non-empty) of `date`: named by their smallest and largest position.
pub fn file_of(date: Date, events: &[ArchivedEvent]) -> ArchiveFile {
    let first = events.iter().map(|e| e.position).min().unwrap_or_default();
    let last = events.iter().map(|e| e.position).max().unwrap_or_default();
    ArchiveFile { date, first, last }
}

#[cfg(test)]
mod tests;
