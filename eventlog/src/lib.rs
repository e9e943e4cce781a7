//! The event log, the spine of lambdarec: every acknowledged event and session delete is appended here
//! (durably) before its acknowledgement goes out; recovery replays it into session state and the
//! archiver copies it to the object store for the batch layer.
//!
//! One small synchronous trait, [`EventLog`], with three implementations: the embedded segmented log
//! ([`file::FileLog`], the default), NATS JetStream ([`nats::JetStreamLog`]) and an in-memory log for
//! tests ([`memory::MemoryLog`]); [`open`] picks one from a `--log` URL. One conformance suite
//! ([`conformance`]) runs against every implementation, as `object_store` does for its stores. Like `kernels::Backend`, the trait is synchronous: its writer
//! lives on a thread of its own, where one `append` call is one group commit (one fsync, or one batch
//! of JetStream publishes awaited together).

pub mod conformance;
pub mod file;
mod location;
pub mod memory;
pub mod nats;
pub mod testing;

use std::path::PathBuf;

pub use lambdarec_proto::v1::{LogRecord, RecordKind};
pub use location::{Location, OpenOptions, open};

/// Where a record sits in the log. Positions start at 1 and increase with every append; they are
/// never reused (a release frees storage, it does not renumber).
pub type Position = u64;

/// The range of positions a log holds: `first..next` (empty when `first == next`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The oldest retained position (the next one to be written when the log is empty).
    pub first: Position,
    /// The position the next appended record gets.
    pub next: Position,
}

impl Bounds {
    /// Records retained.
    pub fn len(&self) -> u64 {
        self.next - self.first
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.first
    }
}

/// Why a log operation failed. Every variant says what it concerns (file, offset, position, server).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that cannot be trusted before the tail of the log (a torn tail is cut, not reported).
    #[error("{}: corrupt log data at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("record at position {position} does not decode: {source}")]
    Decode {
        position: Position,
        #[source]
        source: prost::DecodeError,
    },
    #[error("record at position {position} has no kind (neither an event nor a delete)")]
    UnspecifiedKind { position: Position },
    #[error(
        "position {requested} is no longer in the log (the first retained position is {first})"
    )]
    Released {
        requested: Position,
        first: Position,
    },
    #[error("invalid event log {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("a record of {bytes} bytes exceeds the log's limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    /// An earlier write or sync failed: the log refuses further appends rather than risk
    /// acknowledging data whose durability is unknown (after a failed fsync the kernel may have dropped
    /// the dirty pages, so retrying it would report success for lost data).
    #[error("the log stopped accepting appends after an earlier failure: {0}")]
    Failed(String),
    #[error("{what}: {source}")]
    Remote {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// An append-only, durable, replayable sequence of [`LogRecord`]s.
pub trait EventLog: Send {
    /// Where the log lives, for log lines and metrics, e.g. `file:///srv/lambdarec/log`.
    fn describe(&self) -> String;

    /// Appends `records` in order and returns, once every one of them is durable (fsync'd, or
    /// acknowledged by the log server), the position of each. On error none of them may be reported
    /// as acknowledged: some may be durable, and replay may then bring them back (a caller that
    /// deduplicates by `(session_id, client_seq)` is unaffected). An empty slice is a no-op.
    fn append(&mut self, records: &[LogRecord]) -> Result<Vec<Position>>;

    /// As [`EventLog::append`], for replicas that share the log: `expected[i]`, when given, is the
    /// position of the last record of record i's session that the caller knows of (0: none). Every
    /// record is appended either way; the answer says, per record, whether it directly followed that
    /// position among its session's records — no other writer's record of the session came in
    /// between — so the caller knows its copy of the session is complete up to the record without
    /// reading it back. A record with an expectation must be its session's only record in the call.
    /// Logs that cannot be shared answer false throughout.
    fn append_expecting(
        &mut self,
        records: &[LogRecord],
        expected: &[Option<Position>],
    ) -> Result<Vec<(Position, bool)>> {
        debug_assert_eq!(records.len(), expected.len());
        Ok(self
            .append(records)?
            .into_iter()
            .map(|p| (p, false))
            .collect())
    }

    /// The positions the log holds now.
    fn bounds(&self) -> Result<Bounds>;

    /// A reader starting at `from` (inclusive). `from` below the first retained position is
    /// [`LogError::Released`]; `from` at or past the end gives a reader that waits for new records
    /// (its batches are empty until they arrive).
    fn reader(&self, from: Position) -> Result<Box<dyn LogReader>>;

    /// Frees the storage of records below `position`, which the caller no longer needs (they are in a
    /// snapshot and in the archive). Implementations may keep more (the embedded log deletes whole
    /// segments only); they never drop a record at or after `position`. Returns the new first position.
    fn release_before(&mut self, position: Position) -> Result<Position>;

    /// Bytes of storage the log uses now (for the log-size metric).
    fn stored_bytes(&self) -> u64;

    /// A reader of single sessions' records, for servers that share this log as replicas; None when
    /// the log cannot be shared (the embedded log lives in one machine's directory).
    fn session_reader(&self) -> Option<Box<dyn SessionReader>> {
        None
    }
}

/// Reads the records of given sessions, for replicas that share one log: a replica that receives a
/// session it does not hold (or holds from before another replica served it) catches it up from here
/// before answering (`serve --replica`).
pub trait SessionReader: Send {
    /// For each `(session_id, after)`, that session's records at positions after `after`, in order,
    /// as durable at the time of the call. Every query is answered, or the call fails as a whole.
    fn records_after(&mut self, queries: &[(&str, Position)]) -> Result<Vec<SessionRecords>>;
}

/// One session's records with their positions, oldest first.
pub type SessionRecords = Vec<(Position, LogRecord)>;

/// Reads a log in order from a position. Readers may run on other threads while the log appends.
pub trait LogReader: Send {
    /// Up to `max` records from the reader's position on, in order, each with its position. Empty
    /// when the reader has caught up with what was durable at the time of the call; a later call
    /// returns records appended since.
    fn next_batch(&mut self, max: usize) -> Result<Vec<(Position, LogRecord)>>;
}

/// An event record.
pub fn event_record(
    session_id: &str,
    item_id: &str,
    timestamp_ms: i64,
    received_ms: i64,
    client_seq: Option<u64>,
    model_version: &str,
) -> LogRecord {
    LogRecord {
        kind: RecordKind::Event.into(),
        session_id: session_id.to_string(),
        item_id: item_id.to_string(),
        timestamp_ms,
        received_ms,
        client_seq,
        model_version: model_version.to_string(),
        ..LogRecord::default()
    }
}

/// A session-delete record.
pub fn delete_record(session_id: &str, received_ms: i64, model_version: &str) -> LogRecord {
    LogRecord {
        kind: RecordKind::Delete.into(),
        session_id: session_id.to_string(),
        item_id: String::new(),
        timestamp_ms: received_ms,
        received_ms,
        client_seq: None,
        model_version: model_version.to_string(),
        ..LogRecord::default()
    }
}

/// Encodes a record (protobuf, as `lambdarec/v1/log.proto` defines it).
pub fn encode(record: &LogRecord) -> Vec<u8> {
    prost::Message::encode_to_vec(record)
}

/// Decodes the record at `position`, rejecting one whose kind is not an event or a delete.
pub fn decode(position: Position, bytes: &[u8]) -> Result<LogRecord> {
    let record: LogRecord =
        prost::Message::decode(bytes).map_err(|source| LogError::Decode { position, source })?;
    match record.kind() {
        RecordKind::Event | RecordKind::Delete => Ok(record),
        RecordKind::Unspecified => Err(LogError::UnspecifiedKind { position }),
    }
}

/// A 64-bit FNV-1a hash of a session id, as 16 lowercase hex digits: the per-session part of a
/// JetStream subject (session ids may hold any character; subjects may not). Stable across versions
/// and platforms: it names stored data.
pub fn session_hash(session_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unspecified_kinds_are_refused() {
        let r = event_record(
            "s1",
            "i9",
            1_700_000_000_123,
            1_700_000_000_456,
            Some(7),
            "v1",
        );
        assert_eq!(decode(1, &encode(&r)).unwrap(), r);
        let d = delete_record("s1", 5, "v1");
        assert_eq!(decode(2, &encode(&d)).unwrap().kind(), RecordKind::Delete);
        let bad = LogRecord::default();
        let err = decode(3, &encode(&bad)).unwrap_err();
        assert!(err.to_string().contains("position 3"), "{err}");
        assert!(decode(4, &[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn session_hash_is_fnv1a_64() {
        // Reference values of FNV-1a 64 (the empty string is the offset basis).
        assert_eq!(session_hash(""), "cbf29ce484222325");
        assert_eq!(session_hash("a"), "af63dc4c8601ec8c");
        assert_ne!(session_hash("s1"), session_hash("s2"));
    }
}
