//! Who may call what: the role each call needs, the check of the `authorization: Bearer` header
//! against the token table, and the tower layer that applies it to every gRPC call before any
//! service runs (so a refused call never reaches a handler, and reflection and health are covered
//! too).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::codegen::http;

use super::Security;
use super::tokens::{Principal, Role, TokenTable};
use crate::metrics::Method;

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token (health and reflection by default).
    Open,
    /// Any valid token, whatever its role.
    AnyToken,
    /// A valid token with one of these roles.
    Roles(&'static [Role]),
}

/// Which of the optional checks are on (`--auth-health`, `--auth-reflection`, `--auth-metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub health: bool,
    pub reflection: bool,
    pub metrics: bool,
}

const DATA: &[Role] = &[Role::Client, Role::Admin];
const ADMIN: &[Role] = &[Role::Admin];
const SCRAPE: &[Role] = &[Role::Monitor, Role::Admin];

/// The access each Recommender RPC needs. No catch-all: a new RPC does not compile until its role
/// is chosen here (and documented in recommender.proto and the README).
pub fn rpc_access(method: Method) -> Access {
    match method {
        Method::StreamEvents
        | Method::Recommend
        | Method::Score
        | Method::GetSession
        | Method::DeleteSession
        // Everyone with data access sees the model; the failure list only admins (handler).
        | Method::ModelInfo => Access::Roles(DATA),
        Method::Reload => Access::Roles(ADMIN),
        Method::Ping => Access::AnyToken,
    }
}

/// The access a gRPC path (`/package.Service/Method`) needs.
pub fn grpc_access(path: &str, policy: Policy) -> Access {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    let optional = |required: bool| {
        if required {
            Access::AnyToken
        } else {
            Access::Open
        }
    };
    match service {
        "lambdarec.v1.Recommender" => match Method::from_name(method) {
            Some(m) => rpc_access(m),
            // Unknown methods get UNIMPLEMENTED, but only after an admin token: nothing is learnt
            // about the service without one.
            None => Access::Roles(ADMIN),
        },
        "grpc.health.v1.Health" => optional(policy.health),
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            optional(policy.reflection)
        }
        _ => Access::AnyToken,
    }
}

/// The access `/metrics` needs.
pub fn metrics_access(policy: Policy) -> Access {
    if policy.metrics {
        Access::Roles(SCRAPE)
    } else {
        Access::Open
    }
}

/// The access `/healthz` needs.
pub fn healthz_access(policy: Policy) -> Access {
    if policy.health {
        Access::AnyToken
    } else {
        Access::Open
    }
}

/// Why a call was refused. Mapped to UNAUTHENTICATED / PERMISSION_DENIED in `status.rs` only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{call} needs a bearer token: send the metadata `authorization: Bearer <token>`")]
    Missing { call: String },
    #[error("the authorization metadata must be `Bearer <token>` (one token, printable ASCII)")]
    Malformed,
    #[error("the bearer token is not one this server accepts")]
    Unknown,
    #[error("token {name:?} has role {role}; {call} needs role {needed}")]
    Forbidden {
        name: Arc<str>,
        role: Role,
        call: String,
        needed: String,
    },
}

impl AuthError {
    /// The `reason` label of `lambdarec_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing { .. } => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }
}

/// A client-chosen name echoed in an error, cut short.
fn short(call: &str) -> String {
    let mut end = call.len().min(120);
    while !call.is_char_boundary(end) {
        end -= 1;
    }
    call[..end].to_string()
}

/// Checks the `authorization` header for `access`. Ok(None): no token needed or none configured.
pub fn check(
    tokens: Option<&TokenTable>,
    access: Access,
    authorization: Option<&http::HeaderValue>,
    call: &str,
) -> Result<Option<Principal>, AuthError> {
    let Some(tokens) = tokens else {
        return Ok(None);
    };
    if access == Access::Open {
        return Ok(None);
    }
    let Some(value) = authorization else {
        return Err(AuthError::Missing { call: short(call) });
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthError::Malformed),
    };
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed);
    }
    let principal = tokens.authenticate(token).ok_or(AuthError::Unknown)?;
    match access {
        Access::Roles(roles) if !roles.contains(&principal.role) => Err(AuthError::Forbidden {
            call: short(call),
            needed: roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            name: principal.name,
            role: principal.role,
        }),
        _ => Ok(Some(principal)),
    }
}

/// The tower layer of the gRPC server: refuses calls that fail [`check`] with a trailers-only
/// status, and puts the caller's [`Principal`] in the request's extensions for the handlers.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    security: Arc<Security>,
}

impl GrpcAuthLayer {
    pub fn new(security: Arc<Security>) -> Self {
        GrpcAuthLayer { security }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            security: self.security.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    security: Arc<Security>,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let access = grpc_access(path, self.security.policy());
        let tokens = self.security.tokens();
        let header = req.headers().get(http::header::AUTHORIZATION);
        let call = path.trim_start_matches('/');
        match check(tokens.as_deref(), access, header, call) {
            Ok(principal) => {
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                Either::Left(self.inner.call(req))
            }
            Err(e) => {
                self.security.metrics().security.auth_failure(e.reason());
                tracing::debug!(error = %e, "call refused");
                let status = tonic::Status::from(e);
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tokens::file_line;

    fn table() -> TokenTable {
        let text = [
            file_line(Role::Client, "c", Some("shop")),
            file_line(Role::Admin, "a", Some("ops")),
            file_line(Role::Monitor, "m", Some("prom")),
        ]
        .join("\n");
        TokenTable::parse(&text).unwrap()
    }

    fn bearer(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn roles_per_rpc() {
        let p = Policy::default();
        let path = |m: &str| format!("/lambdarec.v1.Recommender/{m}");
        assert_eq!(grpc_access(&path("Reload"), p), Access::Roles(ADMIN));
        assert_eq!(grpc_access(&path("Recommend"), p), Access::Roles(DATA));
        assert_eq!(grpc_access(&path("Ping"), p), Access::AnyToken);
        assert_eq!(grpc_access(&path("Nope"), p), Access::Roles(ADMIN));
        assert_eq!(grpc_access("/grpc.health.v1.Health/Check", p), Access::Open);
        let reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
        assert_eq!(grpc_access(reflection, p), Access::Open);
        let strict = Policy {
            health: true,
            reflection: true,
            metrics: true,
        };
        assert_eq!(
            grpc_access("/grpc.health.v1.Health/Watch", strict),
            Access::AnyToken
        );
        assert_eq!(grpc_access(reflection, strict), Access::AnyToken);
        assert_eq!(grpc_access("/other.Svc/X", p), Access::AnyToken);
        assert_eq!(grpc_access("garbage", p), Access::AnyToken);
        assert_eq!(metrics_access(p), Access::Open);
        assert_eq!(metrics_access(strict), Access::Roles(SCRAPE));
    }

    #[test]
    fn check_distinguishes_missing_bad_unknown_and_forbidden() {
        let t = table();
        let data = Access::Roles(DATA);
        let call = "lambdarec.v1.Recommender/Recommend";
        assert!(check(None, data, None, call).unwrap().is_none(), "auth off");
        assert!(check(Some(&t), Access::Open, None, call).unwrap().is_none());
        let e = check(Some(&t), data, None, call).unwrap_err();
        assert!(matches!(e, AuthError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("authorization: Bearer"), "{e}");
        for bad in ["Basic c", "Bearer", "Bearer ", "c", "Bearer c d"] {
            let e = check(Some(&t), data, Some(&bearer(bad)), call).unwrap_err();
            assert!(matches!(e, AuthError::Malformed), "{bad:?}: {e}");
        }
        let e = check(Some(&t), data, Some(&bearer("Bearer x")), call).unwrap_err();
        assert!(matches!(e, AuthError::Unknown), "{e}");
        let ok = check(Some(&t), data, Some(&bearer("bearer c")), call).unwrap();
        assert_eq!(ok.unwrap().role, Role::Client);
        let e = check(Some(&t), data, Some(&bearer("Bearer m")), call).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token \"prom\" has role monitor; lambdarec.v1.Recommender/Recommend needs role \
             client or admin"
        );
        let admin = Access::Roles(ADMIN);
        let e = check(Some(&t), admin, Some(&bearer("Bearer c")), "x").unwrap_err();
        assert!(matches!(
            e,
            AuthError::Forbidden {
                role: Role::Client,
                ..
            }
        ));
        assert!(check(Some(&t), admin, Some(&bearer("Bearer a")), "x").is_ok());
        let long = "é".repeat(200);
        let AuthError::Missing { call } = check(Some(&t), data, None, &long).unwrap_err() else {
            panic!("missing");
        };
        assert!(call.len() <= 120);
    }
}
