//! The one place where errors become gRPC statuses (and event-ack codes). Handlers never pick a code
//! themselves.

use lambdarec_proto::bundle::BundleError;
use lambdarec_proto::v1::ErrorCode;
use lambdarec_trainer::TrainError;
use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::registry::{RegistryError, error_chain};
use crate::security::AuthError;

/// Metadata key telling a shed client how long to back off.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// tonic's text for a request message over `max_decoding_message_size` (it answers OUT_OF_RANGE).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// A request message over the size limit is RESOURCE_EXHAUSTED, as grpc-go and grpc-java answer (tonic
/// says OUT_OF_RANGE), with a message naming the limit and the flag that raises it. Other statuses
/// are returned unchanged.
pub fn oversize(status: Status) -> Status {
    if status.code() != Code::OutOfRange {
        return status;
    }
    let Some(rest) = status.message().strip_prefix(TONIC_TOO_LARGE) else {
        return status;
    };
    // "<found> bytes, the limit is: <limit> bytes"
    let numbers: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    let (found, limit) = match numbers.as_slice() {
        [found, limit, ..] => (*found, *limit),
        _ => ("?", "?"),
    };
    Status::resource_exhausted(format!(
        "request message of {found} bytes exceeds the server's limit of {limit} bytes; the server \
         operator can raise it with --max-message-bytes (LAMBDAREC_MAX_MESSAGE_BYTES)"
    ))
}

/// [`oversize`] for the trailers-only response tonic sends when a unary request is too large (the
/// handler never runs, so the status exists only as response headers).
pub fn oversize_response<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let too_large = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if too_large
        && let Some(status) = Status::from_header_map(response.headers())
        && status.message().starts_with(TONIC_TOO_LARGE)
    {
        let headers = response.headers_mut();
        headers.remove("grpc-message");
        let _ = oversize(status).add_header(headers);
    }
    response
}

/// The status code of an engine error.
fn engine_code(e: &EngineError) -> Code {
    match e {
        EngineError::EmptySessionId
        | EngineError::BadK { .. }
        | EngineError::BadStrategy(_)
        | EngineError::SessionIdTooLong { .. }
        | EngineError::TooMany { .. }
        | EngineError::UnknownInlineItems { .. }
        | EngineError::UnknownItem { .. } => Code::InvalidArgument,
        EngineError::NewItemRejected { .. } => Code::ResourceExhausted,
        EngineError::SessionNotFound(_) => Code::NotFound,
        EngineError::Overloaded { .. } | EngineError::SessionLimit { .. } => {
            Code::ResourceExhausted
        }
        EngineError::DeadlineExceeded => Code::DeadlineExceeded,
        EngineError::NoModel
        | EngineError::ShuttingDown
        | EngineError::Recovering
        | EngineError::LogFailed(_) => Code::Unavailable,
        EngineError::Superseded => Code::Aborted,
        EngineError::Canary(_) => Code::FailedPrecondition,
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
            RegistryError::Latest { source, .. } | RegistryError::Canary { source, .. } => {
                bundle_code(source)
            }
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

/// UNAUTHENTICATED when the caller is not known (no, malformed or unknown token), PERMISSION_DENIED
/// when it is known and its role does not allow the call.
fn auth_code(e: &AuthError) -> Code {
    match e {
        AuthError::Missing { .. } | AuthError::Malformed | AuthError::Unknown => {
            Code::Unauthenticated
        }
        AuthError::Forbidden { .. } => Code::PermissionDenied,
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        Status::new(auth_code(&e), e.to_string())
    }
}

/// The HTTP status of a refused request to the admin endpoint: 401 or 403, as the gRPC code.
pub fn auth_http_status(e: &AuthError) -> u16 {
    match auth_code(e) {
        Code::Unauthenticated => 401,
        _ => 403,
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
        EngineError::SessionLimit { .. } => ErrorCode::SessionLimit,
        EngineError::NewItemRejected { .. } => ErrorCode::NewItemRejected,
        // Retryable: the event was not applied and may be sent again later.
        EngineError::Overloaded { .. }
        | EngineError::DeadlineExceeded
        | EngineError::NoModel
        | EngineError::ShuttingDown
        | EngineError::Recovering => ErrorCode::Overloaded,
        EngineError::TooMany { .. }
        | EngineError::BadK { .. }
        | EngineError::BadStrategy(_)
        | EngineError::SessionNotFound(_)
        | EngineError::Superseded
        | EngineError::Canary(_)
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
    fn oversize_requests_are_resource_exhausted_with_the_limit_and_the_flag() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 20971525 bytes, the limit is: 4194304 bytes",
        );
        let s = oversize(tonic.clone());
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("20971525") && s.message().contains("4194304"));
        assert!(
            s.message().contains("--max-message-bytes"),
            "{}",
            s.message()
        );
        // Anything else passes unchanged.
        let other = Status::out_of_range("k too large");
        assert_eq!(oversize(other.clone()).message(), other.message());

        let response = oversize_response(tonic.into_http::<()>());
        let remapped = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(remapped.code(), Code::ResourceExhausted);
        assert!(remapped.message().contains("4194304"));
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
