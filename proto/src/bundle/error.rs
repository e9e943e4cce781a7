//! The error type of the bundle format: every variant names the object (or URL) it is about and keeps
//! its underlying cause as `source`.

/// Why a bundle could not be written, found, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A model name, version or file name that cannot be used as one path segment.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A store URL that cannot be parsed or is of an unsupported kind.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        url: String,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// No LATEST pointer, no such version, or a file the manifest lists is missing.
    #[error("not found: {what} (at {path})")]
    NotFound {
        what: String,
        path: String,
        #[source]
        source: Option<object_store::Error>,
    },

    /// A file's content does not match the sha256 the manifest records for it.
    #[error("checksum mismatch in {path}: manifest says sha256 {expected}, object has {got}")]
    Checksum {
        path: String,
        expected: String,
        got: String,
    },

    /// A file's size does not match the size the manifest records for it (truncated or replaced).
    #[error("size mismatch in {path}: manifest says {expected} bytes, object has {got}")]
    Size {
        path: String,
        expected: u64,
        got: u64,
    },

    /// Content that parses but breaks the format: wrong format version, shapes that disagree with
    /// the manifest's dims, missing tensors or columns, duplicate item ids...
    #[error("bad bundle content in {path}: {reason}")]
    Format { path: String, reason: String },

    /// Any other failure of the object store (network, permissions, ...).
    #[error("object store error at {path}: {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A local file system operation (creating or resolving a local store directory).
    #[error("I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// manifest.json does not parse as a manifest (or could not be serialised).
    #[error("JSON error in {path}: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },

    /// items.arrow is not a valid Arrow IPC file (or could not be written).
    #[error("Arrow error in {path}: {source}")]
    Arrow {
        path: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// weights.safetensors is not a valid safetensors file (or could not be written).
    #[error("safetensors error in {path}: {source}")]
    Safetensors {
        path: String,
        #[source]
        source: safetensors::SafeTensorError,
    },
}

impl BundleError {
    pub(crate) fn format(path: impl ToString, reason: impl Into<String>) -> Self {
        BundleError::Format {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// Maps an object store failure, turning its "not found" into [`BundleError::NotFound`] so that
    /// callers can tell "absent" from "unreachable".
    pub(crate) fn from_store(
        path: impl ToString,
        what: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        let path = path.to_string();
        match source {
            object_store::Error::NotFound { .. } => BundleError::NotFound {
                what: what.into(),
                path,
                source: Some(source),
            },
            source => BundleError::ObjectStore { path, source },
        }
    }

    /// True for [`BundleError::NotFound`]: the thing asked for is absent (as opposed to unreadable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BundleError::NotFound { .. })
    }
}
