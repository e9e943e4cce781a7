//! The one place where errors become gRPC statuses (and event-ack codes). Handlers never pick a code
//! themselves.

use lambdarec_proto::bundle::BundleError;
use lambdarec_proto::v1::ErrorCode;
use lambdarec_trainer::TrainError;
use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::registry::{RegistryError, error_chain};

/// Metadata key telling a shed client how long to back off.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The status code of an engine error.
fn engine_code(e: &EngineError) -> Code {
    match e {
        EngineError::EmptySessionId
        | EngineError::BadK { .. }
        | EngineError::SessionIdTooLong { .. }
        | EngineError::TooMany { .. }
        | EngineError::UnknownInlineItems { .. }
        | EngineError::UnknownItem { .. } => Code::InvalidArgument,
        EngineError::SessionNotFound(_) => Code::NotFound,
        EngineError::Overloaded { .. } => Code::ResourceExhausted,
        EngineError::DeadlineExceeded => Code::DeadlineExceeded,
        EngineError::NoModel
        | EngineError::ShuttingDown
        | EngineError::Recovering
        | EngineError::LogFailed(_) => Code::Unavailable,
        EngineError::Superseded => Code::Aborted,
        EngineError::Backend(_) => Code::Internal,
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        let mut status = Status::new(engine_code(&e), error_chain(&e));
        if let EngineError::Overloaded { retry_after_ms, .. } = e
            && let Ok(v) = retry_after_ms.to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        status
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        let code = match &e {
            RegistryError::NoLatest { .. } => Code::NotFound,
            RegistryError::Latest { source, .. } => bundle_code(source),
            RegistryError::Load { source, .. } => match source.as_ref() {
                TrainError::Bundle(b) => bundle_code(b),
                // A bundle that parses but cannot become a model (bad shapes, wrong kind).
                _ => Code::FailedPrecondition,
            },
            RegistryError::LoadCrashed { .. } => Code::Internal,
            RegistryError::Install { source, .. } => engine_code(source),
        };
        Status::new(code, error_chain(&e))
    }
}

/// NOT_FOUND for absent bundles, INVALID_ARGUMENT for unusable names, UNAVAILABLE when the store
/// cannot be reached, FAILED_PRECONDITION for a bundle that is there but cannot be trusted.
fn bundle_code(e: &BundleError) -> Code {
    match e {
        BundleError::NotFound { .. } => Code::NotFound,
        BundleError::InvalidName { .. } | BundleError::InvalidUrl { .. } => Code::InvalidArgument,
        BundleError::ObjectStore { .. } | BundleError::Io { .. } => Code::Unavailable,
        BundleError::Checksum { .. }
        | BundleError::Size { .. }
        | BundleError::Format { .. }
        | BundleError::Json { .. }
        | BundleError::Arrow { .. }
        | BundleError::Safetensors { .. } => Code::FailedPrecondition,
    }
}

/// The ack code of a rejected event.
pub fn event_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::EmptySessionId | EngineError::SessionIdTooLong { .. } => {
            ErrorCode::BadSessionId
        }
        EngineError::UnknownItem { .. } | EngineError::UnknownInlineItems { .. } => {
            ErrorCode::UnknownItem
        }
        // Retryable: the event was not applied and may be sent again later.
        EngineError::Overloaded { .. }
        | EngineError::DeadlineExceeded
        | EngineError::NoModel
        | EngineError::ShuttingDown
        | EngineError::Recovering => ErrorCode::Overloaded,
        EngineError::TooMany { .. }
        | EngineError::BadK { .. }
        | EngineError::SessionNotFound(_)
        | EngineError::Superseded
        | EngineError::LogFailed(_)
        | EngineError::Backend(_) => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_carries_retry_after() {
        let s = Status::from(EngineError::Overloaded {
            queued: 8,
            capacity: 8,
            retry_after_ms: 12,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_MS).unwrap(), "12");
    }

    #[test]
    fn codes_follow_the_proto() {
        assert_eq!(
            Status::from(EngineError::EmptySessionId).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Status::from(EngineError::SessionNotFound("s".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            Status::from(EngineError::DeadlineExceeded).code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            event_code(&EngineError::SessionIdTooLong { len: 300, max: 256 }),
            ErrorCode::BadSessionId
        );
        let missing = RegistryError::NoLatest {
            model: "m".into(),
            store: "memory://x".into(),
        };
        assert_eq!(Status::from(missing).code(), Code::NotFound);
    }
}
