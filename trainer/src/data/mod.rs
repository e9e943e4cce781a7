//! Interaction logs in, GRU4Rec-ready sessions out: the types shared by the reader, the preparation
//! step and the synthetic generator, and the one error type they all return.
//!
//! The flow is `read_log` (any supported file → [`RawLog`]; or `read_archive` for the event
//! archive) then [`prepare`] (filters, time split,
//! item vocabulary → [`Dataset`]). [`prepare_eval`] maps a further log onto an existing vocabulary,
//! which is what evaluating a stored model needs.

mod archive_reader;
mod parquet_reader;
mod prepare;
mod reader;
pub mod synthetic;
mod timefmt;

#[cfg(test)]
mod prepare_tests;
#[cfg(test)]
mod reader_tests;

use std::fmt;

pub use archive_reader::{ArchiveSource, parse_date, read_archive};
pub use prepare::{
    Dataset, ItemVocab, PrepareOptions, PrepareReport, Sessions, prepare, prepare_eval,
};
pub use reader::{ReadOptions, read_log};

/// A log as read from one file: events with session and item ids interned to dense indices.
///
/// Events are grouped by session (in order of session index) and, within a session, ordered by
/// time; events with equal times keep their order in the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawLog {
    /// The file the log came from, as given (used in messages).
    pub path: String,
    pub events: Vec<RawEvent>,
    /// Lines (or parquet rows) skipped because they could not be parsed (only with `skip_bad_lines`).
    pub bad_lines: usize,
    /// The message of the first skipped line, so a user can see what went wrong.
    pub first_bad: Option<String>,
    /// Session key per session index. For user-keyed logs: `"{user}#{n}"`.
    pub sessions: Vec<String>,
    /// External item id per local item index.
    pub items: Vec<String>,
}

/// One interaction: indices into [`RawLog::sessions`] and [`RawLog::items`], time in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawEvent {
    pub session: u32,
    pub item: u32,
    pub time: f64,
}

/// Where in a file a bad record sits: a 1-based text line, or a 1-based parquet data row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Line(usize),
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "{n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Everything that can go wrong reading or preparing a log.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One record that cannot be used; `message` names the column where one is at fault.
    #[error("{path}:{at}: {message}")]
    BadLine {
        path: String,
        at: Location,
        message: String,
    },
    #[error("{path}: {message}")]
    Header { path: String, message: String },
    #[error("{path}: {role} column \"{name}\" is not in the header; columns are: {}", .columns.join(", "))]
    UnknownColumn {
        path: String,
        role: &'static str,
        name: String,
        columns: Vec<String>,
    },
    #[error("{path}: no {what} column found; columns are: {}", .columns.join(", "))]
    MissingColumn {
        path: String,
        what: &'static str,
        columns: Vec<String>,
    },
    #[error("{path}: column \"{column}\" has type {data_type}, which cannot be used as {role}")]
    UnsupportedType {
        path: String,
        column: String,
        role: &'static str,
        data_type: String,
    },
    #[error("{path}: reading parquet: {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// `context` says what was being done, e.g. `converting column "ItemId"`.
    #[error("{path}: {context}: {source}")]
    Arrow {
        path: String,
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The event archive could not be listed or read (the error names the object).
    #[error(transparent)]
    Archive(#[from] lambdarec_proto::archive::ArchiveError),
    /// The archive has no data files in the requested days; `holds` says what it does have.
    #[error("{url}: no archived events for {range}: {holds}")]
    EmptyArchive {
        url: String,
        range: String,
        holds: String,
    },
    /// The training set has no events left; `rule` says which step removed the last of them.
    #[error("the training set is empty after {rule}")]
    EmptyTrain { rule: String },
}
