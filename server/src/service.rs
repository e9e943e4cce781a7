//! `lambdarec.v1.Recommender`: thin handlers that convert the request, call the engine or the
//! registry, and convert the answer. Every call is counted and timed.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use lambdarec_proto::v1;
use lambdarec_proto::v1::recommender_server::Recommender;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::convert;
use crate::engine::{Engine, EngineError};
use crate::metrics::{Limit, Method, Metrics};
use crate::registry::Registry;
use crate::security::{Principal, Role};
use crate::stream::{AckStream, EventStream};

/// The name of the caller's token (None when the server has no tokens): the owner of the sessions
/// its events create.
fn owner<T>(request: &Request<T>) -> Option<Arc<str>> {
    request
        .extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
}

/// Whether the caller may see admin-only details: an admin token, or no tokens configured.
fn is_admin<T>(request: &Request<T>) -> bool {
    request
        .extensions()
        .get::<Principal>()
        .is_none_or(|p| p.role == Role::Admin)
}

pub struct RecommenderService {
    engine: Engine,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Becomes true when the server starts shutting down: event streams stop reading, answer what
    /// they have accepted and end.
    shutdown: watch::Receiver<bool>,
}

impl RecommenderService {
    pub fn new(
        engine: Engine,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        RecommenderService {
            engine,
            registry,
            metrics,
            shutdown,
        }
    }

    /// Runs a handler body, recording its code and latency (CANCELLED if tonic drops it).
    async fn observe<T>(
        &self,
        method: Method,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let mut guard = Observation {
            metrics: &self.metrics,
            method,
            started: Instant::now(),
            code: None,
        };
        let result = body.await;
        guard.code = Some(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result.map(Response::new)
    }
}

struct Observation<'a> {
    metrics: &'a Metrics,
    method: Method,
    started: Instant,
    code: Option<Code>,
}

impl Drop for Observation<'_> {
    fn drop(&mut self) {
        self.metrics.request(
            self.method,
            self.code.unwrap_or(Code::Cancelled),
            self.started.elapsed(),
        );
    }
}

#[tonic::async_trait]
impl Recommender for RecommenderService {
    type StreamEventsStream = AckStream;

    async fn stream_events(
        &self,
        request: Request<Streaming<v1::SessionEvent>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let owner = owner(&request);
        let call = EventStream {
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            owner,
        };
        Ok(Response::new(call.spawn(request.into_inner())))
    }

    async fn recommend(
        &self,
        request: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        self.observe(Method::Recommend, async {
            let deadline = convert::deadline(request.metadata());
            let owner = owner(&request);
            let mut req = convert::recommend_request(request.into_inner(), self.engine.limits())?;
            req.owner = owner;
            let answer = self
                .engine
                .recommend(req, deadline)
                .await
                .inspect_err(|e| {
                    if matches!(e, EngineError::SessionLimit { .. }) {
                        self.metrics.security.limit_hit(Limit::MaxSessionsPerToken);
                    }
                })?;
            Ok(convert::recommend_response(answer))
        })
        .await
    }

    async fn score(
        &self,
        request: Request<v1::ScoreRequest>,
    ) -> Result<Response<v1::ScoreResponse>, Status> {
        self.observe(Method::Score, async {
            let deadline = convert::deadline(request.metadata());
            let req = convert::score_request(request.into_inner())?;
            let answer = self.engine.score(req, deadline).await?;
            Ok(convert::score_response(answer))
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<v1::GetSessionRequest>,
    ) -> Result<Response<v1::SessionInfo>, Status> {
        self.observe(Method::GetSession, async {
            let deadline = convert::deadline(request.metadata());
            let id = request.into_inner().session_id;
            let snapshot = self.engine.get_session(id.clone(), deadline).await?;
            Ok(convert::session_info(id, snapshot))
        })
        .await
    }

    async fn delete_session(
        &self,
        request: Request<v1::DeleteSessionRequest>,
    ) -> Result<Response<v1::DeleteSessionResponse>, Status> {
        self.observe(Method::DeleteSession, async {
            let deadline = convert::deadline(request.metadata());
            let existed = self
                .engine
                .delete_session(request.into_inner().session_id, deadline)
                .await?;
            Ok(v1::DeleteSessionResponse { existed })
        })
        .await
    }

    async fn model_info(
        &self,
        request: Request<v1::ModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfoResponse>, Status> {
        // Load failures carry store paths and error chains: operators' business only.
        let failures = if is_admin(&request) {
            self.registry.failures()
        } else {
            Vec::new()
        };
        self.observe(Method::ModelInfo, async {
            let serving = self.registry.serving();
            let serving = serving
                .as_ref()
                .map(|(view, at)| (view.as_ref(), at.as_str()));
            let mut speed = self.engine.speed_info();
            speed.canary =
                self.registry
                    .canary()
                    .map(|(view, fraction, loaded_at)| convert::CanaryInfo {
                        version: view.version.clone(),
                        fraction,
                        sessions: speed.canary_sessions,
                        n_items: view.n_items() as u64,
                        loaded_at,
                    });
            Ok(convert::model_info(
                serving,
                self.registry.store_url(),
                failures,
                &speed,
            ))
        })
        .await
    }

    async fn reload(
        &self,
        request: Request<v1::ReloadRequest>,
    ) -> Result<Response<v1::ReloadResponse>, Status> {
        self.observe(Method::Reload, async {
            let version = request.into_inner().version;
            let outcome = self.registry.reload(version.as_deref()).await?;
            Ok(v1::ReloadResponse {
                version: outcome.version.to_string(),
                changed: outcome.changed,
            })
        })
        .await
    }

    async fn ping(
        &self,
        _request: Request<v1::PingRequest>,
    ) -> Result<Response<v1::PingResponse>, Status> {
        self.observe(Method::Ping, async { Ok(v1::PingResponse {}) })
            .await
    }
}
