//! The error type of the archive format: every variant names the object (or value) it is about and
//! keeps its underlying cause as `source`.

use super::Date;
use crate::bundle::BundleError;

/// Why the archive could not be opened, listed, read or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive's URL could not be opened as an object store.
    #[error("cannot open the archive at {url:?}: {source}")]
    Open {
        url: String,
        // Boxed: the store's error is large and this one is rare.
        #[source]
        source: Box<BundleError>,
    },

    /// Listing, reading, writing or deleting an object failed.
    #[error("object store error at {path}: {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A data file is not readable Parquet (or could not be written as such).
    #[error("Parquet error in {path}: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// Record batches could not be built or converted.
    #[error("Arrow error in {path}: {source}")]
    Arrow {
        path: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A data file lacks a column of the archive schema or holds it with another type.
    #[error("{path} does not have the archive's schema: {reason}")]
    Schema { path: String, reason: String },

    /// The checkpoint does not parse (or could not be serialised).
    #[error("JSON error in {path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    /// A value given as a date is not one.
    #[error("invalid date {value:?}: {reason}")]
    InvalidDate { value: String, reason: String },

    /// `since` after `until`.
    #[error("the date range is empty: since {since} is after until {until}")]
    InvalidRange { since: Date, until: Date },
}

impl ArchiveError {
    pub(crate) fn store(path: impl ToString, source: object_store::Error) -> ArchiveError {
        ArchiveError::ObjectStore {
            path: path.to_string(),
            source,
        }
    }
}
