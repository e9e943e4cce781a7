//! The HTTP admin endpoint, on axum: `GET /metrics` (Prometheus text format) and `GET /healthz` (200
//! `SERVING`, or 503 with the reason). TLS comes with the listener (`net::HttpListener`); the token
//! checks (`--auth-metrics`, `--auth-health`) are the same as the gRPC side's, answered 401/403.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::readiness::Readiness;
use crate::security::{Access, Security, auth};

const TEXT: &str = "text/plain; charset=utf-8";

#[derive(Clone)]
struct Admin {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    security: Arc<Security>,
}

impl Admin {
    /// Checks the request's `Authorization` header for `access`: None when allowed, else the
    /// refusal to answer with.
    fn refusal(&self, access: Access, headers: &HeaderMap, what: &str) -> Option<Response> {
        let tokens = self.security.tokens();
        let header = headers.get(header::AUTHORIZATION);
        match auth::check(tokens.as_deref(), access, header, what) {
            Ok(_) => None,
            Err(e) => {
                self.metrics.security.auth_failure(e.reason());
                let status = StatusCode::from_u16(crate::status::auth_http_status(&e))
                    .unwrap_or(StatusCode::FORBIDDEN);
                let mut response =
                    (status, [(header::CONTENT_TYPE, TEXT)], format!("{e}\n")).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    let challenge = header::HeaderValue::from_static("Bearer");
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge);
                }
                Some(response)
            }
        }
    }
}

/// The routes: `/metrics`, `/healthz` (the same readiness `grpc.health.v1` reports), and a 404 that
/// names them.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>, security: Arc<Security>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(Admin {
            metrics,
            readiness,
            security,
        })
}

/// Binds the endpoint's address (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `router` on `listener` until the task is aborted.
pub fn spawn<L>(listener: L, router: Router) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        // axum retries failed accepts itself; an error here means the listener is unusable.
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the HTTP admin endpoint stopped");
        }
    })
}

async fn metrics_text(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let access = auth::metrics_access(admin.security.policy());
    if let Some(refused) = admin.refusal(access, &headers, "GET /metrics") {
        return refused;
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        admin.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let access = auth::healthz_access(admin.security.policy());
    if let Some(refused) = admin.refusal(access, &headers, "GET /healthz") {
        return refused;
    }
    match admin.readiness.not_serving_reason() {
        None => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT)], "SERVING\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("NOT_SERVING: {reason}\n"),
        )
            .into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        format!(
            "no route for {}; this endpoint serves GET /metrics and GET /healthz\n",
            uri.path()
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 GET on a fresh connection; the whole response, head and body.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_a_helpful_404() {
        let metrics = Arc::new(Metrics::default());
        metrics.set_model_version("v7");
        let (reporter, _) = tonic_health::server::health_reporter();
        let readiness = Arc::new(Readiness::new(reporter, false).await);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let security = Security::load(Default::default(), metrics.clone()).unwrap();
        let task = spawn(
            listener,
            router(metrics, readiness.clone(), Arc::new(security)),
        );

        let text = get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\nlambdarec_model_info{version=\"v7\"} 1\n"),
            "{text}"
        );

        let text = get(addr, "/healthz").await;
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(
            text.ends_with("\r\n\r\nNOT_SERVING: no model is loaded yet\n"),
            "{text}"
        );
        readiness.model_loaded().await;
        let text = get(addr, "/healthz").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nSERVING\n"), "{text}");

        let text = get(addr, "/metrics/x").await;
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("GET /metrics and GET /healthz"), "{text}");
        task.abort();
    }
}
