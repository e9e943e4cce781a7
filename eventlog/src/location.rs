//! Where the log lives, as given on the command line (`--log`): `none`, a directory (`file://` URL or
//! plain path) for the embedded [`FileLog`], or `nats://host:port/STREAM` for [`JetStreamLog`].

use std::path::PathBuf;
use std::time::Duration;

use crate::file::FileLog;
use crate::nats::{JetStreamLog, NatsLocation};
use crate::{EventLog, LogError, Result};

const ACCEPTED: &str = "expected `none`, a directory (`file://./path`, `file:///abs/path` or a plain \
                        path) or `nats://host[:port]/STREAM[?replicas=N&subject=PREFIX]`";

/// Settings of the log implementations that the location does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// Embedded log: a segment is rolled when the next frame would take it past this size.
    pub segment_bytes: u64,
    /// JetStream: how long connecting to the server may take.
    pub connect_timeout: Duration,
    /// JetStream: the bound on every operation (an append's acks, a read, stream info, a purge).
    pub op_timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            segment_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
        }
    }
}

/// A parsed `--log` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// No log: nothing is durable beyond snapshots.
    None,
    /// The embedded log in this directory (relative paths are relative to the current directory).
    File(PathBuf),
    /// A JetStream stream.
    Nats(NatsLocation),
}

impl Location {
    /// Parses a `--log` value; the error names the accepted forms.
    pub fn parse(url: &str) -> Result<Location> {
        let invalid = |reason: &str| LogError::InvalidUrl {
            url: url.to_string(),
            reason: format!("{reason}; {ACCEPTED}"),
        };
        if url == "none" {
            return Ok(Location::None);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.trim().is_empty() {
                return Err(invalid("empty location"));
            }
            return Ok(Location::File(PathBuf::from(url)));
        };
        match scheme {
            "file" if rest.is_empty() => Err(invalid("no directory after file://")),
            // `file://./dir` is relative, `file:///dir` absolute: the rest is the path as written.
            "file" => Ok(Location::File(PathBuf::from(rest))),
            "nats" => NatsLocation::parse(url)
                .map(Location::Nats)
                .map_err(|reason| invalid(&reason)),
            other => Err(invalid(&format!("unknown scheme `{other}`"))),
        }
    }
}

/// Opens the log at `url` (see [`Location::parse`]); `Ok(None)` for `none`. A file log's directory is
/// created when missing.
pub fn open(url: &str, opts: &OpenOptions) -> Result<Option<Box<dyn EventLog>>> {
    Ok(match Location::parse(url)? {
        Location::None => None,
        Location::File(dir) => Some(Box::new(FileLog::open(dir, opts)?)),
        Location::Nats(at) => Some(Box::new(JetStreamLog::open(&at, opts)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_files_and_paths() {
        assert_eq!(Location::parse("none").unwrap(), Location::None);
        let rel = Location::parse("file://./lambdarec-data/log").unwrap();
        assert_eq!(rel, Location::File("./lambdarec-data/log".into()));
        let abs = Location::parse("file:///srv/lambdarec/log").unwrap();
        assert_eq!(abs, Location::File("/srv/lambdarec/log".into()));
        let plain = Location::parse("data/log").unwrap();
        assert_eq!(plain, Location::File("data/log".into()));
    }

    #[test]
    fn bad_locations_name_the_accepted_forms() {
        for bad in ["", "file://", "s3://bucket/log", "kafka://h/t", "nats://"] {
            let err = Location::parse(bad).unwrap_err();
            assert!(matches!(err, LogError::InvalidUrl { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("nats://host"), "{bad}: {err}");
        }
    }

    #[test]
    fn open_none_is_no_log_and_open_creates_a_file_log() {
        assert!(open("none", &OpenOptions::default()).unwrap().is_none());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let url = format!("file://{}", dir.display());
        let log = open(&url, &OpenOptions::default()).unwrap().unwrap();
        assert!(dir.is_dir());
        assert!(log.describe().starts_with("file:///"), "{}", log.describe());
    }
}
