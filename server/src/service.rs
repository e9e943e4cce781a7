//! `lambdarec.v1.Recommender`: thin handlers that convert the request, call the engine or the
//! registry, and convert the answer. Every call is counted and timed.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lambdarec_proto::v1;
use lambdarec_proto::v1::recommender_server::Recommender;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::convert;
use crate::engine::Engine;
use crate::metrics::{Method, Metrics};
use crate::registry::Registry;

/// Events of one stream submitted and not yet acknowledged; beyond this the stream stops reading
/// (back-pressure to the client through HTTP/2 flow control).
const MAX_IN_FLIGHT_EVENTS: usize = 1024;

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
    type StreamEventsStream = ReceiverStream<Result<v1::EventAck, Status>>;

    async fn stream_events(
        &self,
        request: Request<Streaming<v1::SessionEvent>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let (engine, metrics, mut shutdown) = (
            self.engine.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let mut pending = FuturesOrdered::new();
            let mut reading = !*shutdown.borrow();
            let mut code = Code::Ok;
            // A broken inbound stream ends the call with its status once the accepted events are
            // acknowledged (e.g. RESOURCE_EXHAUSTED for an oversize message).
            let mut failure: Option<Status> = None;
            loop {
                tokio::select! {
                    // Acks first: they free room for more events.
                    biased;
                    Some(ack) = pending.next(), if !pending.is_empty() => {
                        let ack: v1::EventAck = ack;
                        metrics.event(ack.code);
                        if tx.send(Ok(ack)).await.is_err() {
                            code = Code::Cancelled;
                            break;
                        }
                    }
                    msg = inbound.message(), if reading && pending.len() < MAX_IN_FLIGHT_EVENTS => match msg {
                        Ok(Some(event)) => {
                            let req = convert::event_request(event);
                            let (session_id, seq) = (req.session_id.clone(), req.client_seq);
                            // Submitted now, in stream order; answered in the same order.
                            let outcome = engine.event(req, None);
                            let engine = engine.clone();
                            pending.push_back(async move {
                                let outcome = outcome.await;
                                convert::event_ack(session_id, seq, outcome, engine.model().as_deref())
                            });
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            let status = crate::status::oversize(status);
                            code = status.code();
                            failure = Some(status);
                            reading = false;
                        }
                    },
                    _ = shutdown.changed(), if reading => reading = false,
                    else => break,
                }
            }
            if let Some(status) = failure {
                let _ = tx.send(Err(status)).await;
            }
            metrics.request(Method::StreamEvents, code, started.elapsed());
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn recommend(
        &self,
        request: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        self.observe(Method::Recommend, async {
            let deadline = convert::deadline(request.metadata());
            let req = convert::recommend_request(request.into_inner(), self.engine.limits())?;
            let answer = self.engine.recommend(req, deadline).await?;
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
            let answer = self
                .engine
                .score(convert::score_request(request.into_inner()), deadline)
                .await?;
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
        _request: Request<v1::ModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfoResponse>, Status> {
        self.observe(Method::ModelInfo, async {
            let serving = self.registry.serving();
            let serving = serving
                .as_ref()
                .map(|(view, at)| (view.as_ref(), at.as_str()));
            Ok(convert::model_info(
                serving,
                self.registry.store_url(),
                self.registry.failures(),
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
