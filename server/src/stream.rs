//! The body of one StreamEvents call: reads events in order, submits each at once, and sends the
//! acks back in the same order — within the per-stream limits: at most `--max-unacked-events`
//! submitted and unacknowledged (beyond it the stream stops reading: back-pressure), and
//! `--stream-idle-timeout` for a client that sends nothing (with nothing owed to it) or reads no ack.
//! A call that ends with an error status sends it after every ack of the events it accepted.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use lambdarec_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::convert;
use crate::engine::Engine;
use crate::metrics::{Limit, Method, Metrics};

/// The response stream of StreamEvents.
pub type AckStream = Pin<Box<dyn Stream<Item = Result<v1::EventAck, Status>> + Send>>;

/// Acks buffered for the transport; beyond it sending waits for the client to read.
const ACK_BUFFER: usize = 256;

/// Everything one call needs.
pub struct EventStream {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    /// The caller's token name, for `--max-sessions-per-token`.
    pub owner: Option<Arc<str>>,
}

fn idle_status(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "event stream idle: no event for {}s (--stream-idle-timeout); open a new stream to send more",
        idle.as_secs_f64()
    ))
}

fn stalled_status(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "event stream stalled: the client read no acknowledgement for {}s (--stream-idle-timeout)",
        idle.as_secs_f64()
    ))
}

impl EventStream {
    /// Runs the call on a task of its own and returns its response stream.
    pub fn spawn(self, inbound: Streaming<v1::SessionEvent>) -> AckStream {
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        tokio::spawn(self.run(inbound, tx, end_tx));
        // The final status (if any) comes after every ack, whatever the buffer holds.
        let end = futures::stream::once(end_rx).filter_map(|s| std::future::ready(s.ok().map(Err)));
        Box::pin(ReceiverStream::new(rx).chain(end))
    }

    async fn run(
        mut self,
        mut inbound: Streaming<v1::SessionEvent>,
        tx: mpsc::Sender<Result<v1::EventAck, Status>>,
        end: oneshot::Sender<Status>,
    ) {
        let started = std::time::Instant::now();
        let limits = self.engine.limits();
        let (max_unacked, idle) = (limits.max_unacked_events, limits.stream_idle_timeout);
        let mut pending = FuturesOrdered::new();
        let mut reading = !*self.shutdown.borrow();
        let mut failure: Option<Status> = None;
        let mut cancelled = false;
        let mut full = false;
        let mut last_activity = Instant::now();
        let far = Duration::from_secs(86_400 * 365);
        loop {
            let idle_at = last_activity + idle.unwrap_or(far);
            // Idle only counts while the server owes the client nothing.
            let waiting_on_client = reading && pending.is_empty() && idle.is_some();
            tokio::select! {
                // Acks first: they free room for more events.
                biased;
                Some(ack) = pending.next(), if !pending.is_empty() => {
                    let ack: v1::EventAck = ack;
                    self.metrics.event(ack.code);
                    if ack.code == v1::ErrorCode::SessionLimit as i32 {
                        self.metrics.security.limit_hit(Limit::MaxSessionsPerToken);
                    }
                    let sent = match idle {
                        Some(d) => tokio::time::timeout(d, tx.send(Ok(ack))).await,
                        None => Ok(tx.send(Ok(ack)).await),
                    };
                    match sent {
                        Ok(Ok(())) => last_activity = Instant::now(),
                        Ok(Err(_)) => {
                            cancelled = true;
                            break;
                        }
                        Err(_) => {
                            self.metrics.security.limit_hit(Limit::StreamIdleTimeout);
                            failure = Some(stalled_status(idle.unwrap_or(far)));
                            break;
                        }
                    }
                }
                msg = inbound.message(), if reading && pending.len() < max_unacked => match msg {
                    Ok(Some(event)) => {
                        last_activity = Instant::now();
                        pending.push_back(self.submit(event));
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        failure = Some(crate::status::oversize(status));
                        reading = false;
                    }
                },
                _ = self.shutdown.changed(), if reading => reading = false,
                () = tokio::time::sleep_until(idle_at), if waiting_on_client => {
                    self.metrics.security.limit_hit(Limit::StreamIdleTimeout);
                    failure = Some(idle_status(idle.unwrap_or(far)));
                    reading = false;
                }
                else => break,
            }
            let at_limit = reading && pending.len() >= max_unacked;
            if at_limit && !full {
                self.metrics.security.limit_hit(Limit::MaxUnackedEvents);
            }
            full = at_limit;
        }
        let code = match (&failure, cancelled) {
            (Some(status), _) => status.code(),
            (None, true) => Code::Cancelled,
            (None, false) => Code::Ok,
        };
        if let Some(status) = failure {
            let _ = end.send(status);
        }
        self.metrics
            .request(Method::StreamEvents, code, started.elapsed());
    }

    /// Submits one event now (so events are applied in stream order) and returns its ack's future.
    fn submit(
        &self,
        event: v1::SessionEvent,
    ) -> impl std::future::Future<Output = v1::EventAck> + Send + 'static {
        let mut req = convert::event_request(event);
        req.owner = self.owner.clone();
        let (session_id, seq) = (req.session_id.clone(), req.client_seq);
        let outcome = self.engine.event(req, None);
        let engine = self.engine.clone();
        async move {
            let outcome = outcome.await;
            convert::event_ack(session_id, seq, outcome, engine.model().as_deref())
        }
    }
}
