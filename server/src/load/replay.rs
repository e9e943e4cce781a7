//! Replaying one session through the server: events on a shared, multiplexed `StreamEvents` stream
//! (acks matched by `client_seq`) or, routed by session, on a stream of the session's own, a
//! `Recommend` (or `Score`) after each applied event, and the unknown-item rule. Every call carries
//! the session id as `x-session-id` metadata, which a proxy routes by (deploy/haproxy); a failed call
//! is retried (`--retries`), an event with its client_seq, so the server applies it once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lambdarec_proto::v1::{
    ErrorCode, EventAck, RecommendRequest, ScoreRequest, ScoredItem, SessionEvent,
};
use lambdarec_trainer::data::RawLog;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::candidates::{self, Catalogue};
use super::connect::Client;
use super::report::Collector;

/// One session of the log: its key and its items (indices into [`Replay::item_ids`]) in time order.
#[derive(Clone, Debug)]
pub struct ReplaySession {
    pub key: String,
    pub items: Vec<u32>,
    /// Unix seconds of each item's event, sent as the event's `timestamp_ms` so that the log (and
    /// its archive) keep the original event times. Empty: the server's receive time is used.
    pub times: Vec<f64>,
}

/// The sessions of a log, ready to replay.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub sessions: Vec<ReplaySession>,
    /// External id per item index.
    pub item_ids: Vec<String>,
}

impl Replay {
    /// Every session of the log with all its events (unknown items are the server's to reject).
    pub fn from_log(log: &RawLog) -> Self {
        // RawLog events are grouped by session and time-ordered within one (see `RawLog`).
        let mut by_session: Vec<(Vec<u32>, Vec<f64>)> =
            vec![Default::default(); log.sessions.len()];
        for e in &log.events {
            let (items, times) = &mut by_session[e.session as usize];
            items.push(e.item);
            times.push(e.time);
        }
        let mut sessions: Vec<ReplaySession> = by_session
            .into_iter()
            .zip(&log.sessions)
            .filter(|((items, _), _)| !items.is_empty())
            .map(|((items, times), key)| ReplaySession {
                key: key.clone(),
                items,
                times,
            })
            .collect();
        // The offline evaluator's order (`prepare_eval`): by first event time, then key.
        sessions.sort_by(|a, b| {
            let first = |s: &ReplaySession| s.times.first().copied().unwrap_or(f64::MIN);
            first(a)
                .total_cmp(&first(b))
                .then_with(|| a.key.cmp(&b.key))
        });
        Replay {
            sessions,
            item_ids: log.items.clone(),
        }
    }

    pub fn n_events(&self) -> usize {
        self.sessions.iter().map(|s| s.items.len()).sum()
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<EventAck>>>>;

/// The metadata key a proxy routes calls by: every call of one session goes to the same replica.
pub const SESSION_HEADER: &str = "x-session-id";

/// `message` as a request routed by `session_id` (a session id that is not valid metadata, e.g.
/// one with non-ASCII characters, is sent without the header: the proxy then picks any replica).
pub(crate) fn routed<T>(message: T, session_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = session_id.parse() {
        request.metadata_mut().insert(SESSION_HEADER, value);
    }
    request
}

/// A `StreamEvents` call: one long-lived call shared by many sessions, as a product service would
/// hold it, or one session's own (routed by its id).
pub(crate) struct EventStream {
    tx: Mutex<Option<mpsc::Sender<SessionEvent>>>,
    waiters: Waiters,
}

impl EventStream {
    /// Opens the stream (routed by `session`, when given); if that fails every send reports the
    /// failure's code.
    pub(crate) async fn open(mut client: Client, session: Option<&str>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let waiters: Waiters = Arc::default();
        let stream = EventStream {
            tx: Mutex::new(Some(tx)),
            waiters: waiters.clone(),
        };
        let events = ReceiverStream::new(rx);
        let request = match session {
            Some(id) => routed(events, id),
            None => tonic::Request::new(events),
        };
        match client.stream_events(request).await {
            Ok(response) => {
                let mut inbound = response.into_inner();
                tokio::spawn(async move {
                    while let Ok(Some(ack)) = inbound.message().await {
                        let waiter = ack.client_seq.and_then(|s| lock(&waiters).remove(&s));
                        if let Some(w) = waiter {
                            let _ = w.send(ack);
                        }
                    }
                    // The stream ended: dropping the waiters fails their sends at once.
                    lock(&waiters).clear();
                });
            }
            Err(status) => {
                tracing::warn!(%status, "cannot open StreamEvents");
                stream.close();
            }
        }
        stream
    }

    /// Sends one event with client_seq `seq` and waits (at most `timeout`) for its ack.
    pub(crate) async fn send(
        &self,
        seq: u64,
        session_id: &str,
        item_id: &str,
        timestamp_ms: Option<i64>,
        timeout: Duration,
    ) -> Result<EventAck, Code> {
        let (ack_tx, ack_rx) = oneshot::channel();
        lock(&self.waiters).insert(seq, ack_tx);
        let tx = lock(&self.tx).clone().ok_or(Code::Unavailable)?;
        let event = SessionEvent {
            session_id: session_id.to_string(),
            item_id: item_id.to_string(),
            timestamp_ms,
            client_seq: Some(seq),
        };
        let outcome = tokio::time::timeout(timeout, async {
            tx.send(event).await.map_err(|_| Code::Unavailable)?;
            ack_rx.await.map_err(|_| Code::Unavailable)
        })
        .await
        .unwrap_or(Err(Code::DeadlineExceeded));
        if outcome.is_err() {
            lock(&self.waiters).remove(&seq);
        }
        outcome
    }

    /// Ends the stream (the server answers what it accepted, then the reader task ends).
    pub(crate) fn close(&self) {
        lock(&self.tx).take();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The call made after each applied event, with what it needs.
pub(crate) enum Call {
    Recommend,
    /// Nothing after the event: the event's own ack latency is what is measured.
    Events,
    Score {
        candidates: usize,
        catalogue: Catalogue,
    },
}

/// What a call returned: a ranked list (Recommend) or scores in candidate order (Score).
enum Answer {
    List(Vec<String>),
    Scores(Vec<ScoredItem>),
}

/// A Score request of `n` candidates by popularity with the true next item among them: the first of
/// the session's `later` items that the catalogue knows, as that is the next one the server will
/// apply. None known: popular items only (the list will not be scored).
fn score_request<'a>(
    catalogue: &Catalogue,
    n: usize,
    session_id: &str,
    mut later: impl Iterator<Item = &'a str>,
    rng: &mut SmallRng,
    strategy: i32,
) -> ScoreRequest {
    let target = later.find_map(|id| catalogue.index(id));
    ScoreRequest {
        session_id: session_id.to_string(),
        strategy,
        candidates: catalogue
            .draw(target, n, rng)
            .into_iter()
            .map(|i| catalogue.id(i).to_string())
            .collect(),
    }
}

/// Whether an event acked with `code` is skipped, as the offline evaluator drops it: an item the
/// model does not know (`--new-items reject`) or a new item the server would not take.
pub(crate) fn skipped(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::UnknownItem | ErrorCode::NewItemRejected)
}

/// What every session task shares.
pub(crate) struct Ctx {
    pub(crate) clients: Vec<Client>,
    pub(crate) streams: Vec<EventStream>,
    pub(crate) collector: Arc<Collector>,
    pub(crate) k: usize,
    pub(crate) call: Call,
    /// The strategy asked for (`lambdarec.v1.Strategy`; 0: the server's default).
    pub(crate) strategy: i32,
    /// Seeds each session's candidate draws (with the session's number), so a run repeats.
    pub(crate) seed: u64,
    pub(crate) timeout: Duration,
    /// Makes session ids unique to this run (and `/pass/` to each pass over the log).
    pub(crate) run_tag: String,
    /// The next client_seq. It starts at the time in µs, so that a later replay of the same session
    /// ids is not taken for re-sent events by the server's exactly-once check.
    pub(crate) seq: AtomicU64,
    /// Each session's events on a `StreamEvents` call of its own (routed by its id) instead of the
    /// connection's shared one.
    pub(crate) route_sessions: bool,
    /// Times a failed call is retried (an event with the same client_seq).
    pub(crate) retries: u32,
}

/// Status codes after which a call is retried: the server (or the replica behind a proxy) went away
/// or could not take it; any other failure is the request's own.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}

/// Pause before retry `attempt` (1, 2, …): 25 ms doubling, at most 400 ms.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(25 << attempt.min(5).saturating_sub(1)).min(Duration::from_millis(400))
}

impl Ctx {
    /// Replays session `i % n` (pass `i / n`). `late`: how much later than intended it started.
    pub(crate) async fn replay_session(&self, replay: &Replay, i: usize, late: Duration) {
        let n = replay.sessions.len();
        let session = &replay.sessions[i % n];
        let session_id = format!("{}/{}/{}", self.run_tag, i / n, session.key);
        let conn = i % self.clients.len();
        let mut client = self.clients[conn].clone();
        let mut own = match self.route_sessions {
            true => Some(EventStream::open(client.clone(), Some(&session_id)).await),
            false => None,
        };
        let mut rng =
            SmallRng::seed_from_u64(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut late = Some(late);
        // The list recommended after the last applied event, waiting for the next applied item.
        let mut pending: Option<Vec<String>> = None;
        for (pos, &item) in session.items.iter().enumerate() {
            let item_id = replay.item_ids[item as usize].as_str();
            let time_ms = session.times.get(pos).map(|t| (t * 1000.0).round() as i64);
            let sent = Instant::now();
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let mut attempt = 0;
            let ack = loop {
                let stream = match &own {
                    Some(own) => own,
                    None => &self.streams[conn],
                };
                let ack = stream
                    .send(seq, &session_id, item_id, time_ms, self.timeout)
                    .await;
                match ack {
                    // A shared stream that failed is gone for every session on it: not retried.
                    Err(code) if own.is_some() && attempt < self.retries && retryable(code) => {
                        attempt += 1;
                        self.collector.retried(&format!("event:{code:?}"));
                        tokio::time::sleep(backoff(attempt)).await;
                        if let Some(old) =
                            own.replace(EventStream::open(client.clone(), Some(&session_id)).await)
                        {
                            old.close();
                        }
                    }
                    ack => break ack,
                }
            };
            self.collector
                .event(ack.as_ref().map(|a| a.code()).map_err(|c| *c));
            if let Call::Events = self.call {
                let latency = sent.elapsed() + late.take().unwrap_or_default();
                let outcome = match &ack {
                    Ok(a) if a.applied || skipped(a.code()) => Ok(()),
                    Ok(_) => Err(Code::Unavailable),
                    Err(c) => Err(*c),
                };
                self.collector.request(latency, outcome);
                if ack.is_err() {
                    return;
                }
                continue;
            }
            match ack {
                Ok(a) if a.applied => {}
                // Unknown (or rejected) item: the session is unchanged; skip it (see the module docs).
                Ok(_) => continue,
                // The stream failed: the rest of the session cannot be replayed faithfully.
                Err(_) => return,
            }
            if let Some(list) = pending.take() {
                self.collector.prediction(&list, item_id);
            }
            if pos + 1 == session.items.len() {
                break;
            }
            // Candidates are drawn before the clock starts and ranked after it stops: client work.
            let later = session.items[pos + 1..].iter();
            let later = later.map(|&it| replay.item_ids[it as usize].as_str());
            let score_request = match &self.call {
                Call::Recommend | Call::Events => None,
                Call::Score {
                    candidates,
                    catalogue,
                } => Some(score_request(
                    catalogue,
                    *candidates,
                    &session_id,
                    later,
                    &mut rng,
                    self.strategy,
                )),
            };
            let sent = Instant::now();
            let mut attempt = 0;
            let answer = loop {
                let answer = match &score_request {
                    None => self.recommend(&mut client, &session_id).await,
                    Some(request) => self.score(&mut client, request.clone()).await,
                };
                match answer {
                    Err(code) if attempt < self.retries && retryable(code) => {
                        attempt += 1;
                        let call = if score_request.is_some() {
                            "score"
                        } else {
                            "recommend"
                        };
                        self.collector.retried(&format!("{call}:{code:?}"));
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    answer => break answer,
                }
            };
            let latency = sent.elapsed() + late.take().unwrap_or_default();
            self.collector
                .request(latency, answer.as_ref().map(|_| ()).map_err(|c| *c));
            pending = answer.ok().map(|a| match a {
                Answer::List(list) => list,
                Answer::Scores(scores) => candidates::top_k(scores, self.k),
            });
        }
        if let Some(stream) = own {
            stream.close();
        }
    }

    /// The top k of the whole catalogue.
    async fn recommend(&self, client: &mut Client, session_id: &str) -> Result<Answer, Code> {
        let request = RecommendRequest {
            session_id: session_id.to_string(),
            k: self.k as u32,
            exclude_items: Vec::new(),
            exclude_seen: Some(false),
            inline_events: Vec::new(),
            strategy: self.strategy,
        };
        let request = routed(request, session_id);
        match tokio::time::timeout(self.timeout, client.recommend(request)).await {
            Ok(Ok(r)) => Ok(Answer::List(
                r.into_inner()
                    .items
                    .into_iter()
                    .map(|s| s.item_id)
                    .collect(),
            )),
            Ok(Err(status)) => Err(status.code()),
            Err(_) => Err(Code::DeadlineExceeded),
        }
    }

    /// The candidates' scores. A candidate the server does not know means the catalogue read is not
    /// the one served (a model swap mid-run): it is reported.
    async fn score(&self, client: &mut Client, request: ScoreRequest) -> Result<Answer, Code> {
        let request = routed(request.clone(), &request.session_id);
        match tokio::time::timeout(self.timeout, client.score(request)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if !r.unknown_items.is_empty() {
                    self.collector.error("score:unknown-candidates");
                }
                Ok(Answer::Scores(r.scores))
            }
            Ok(Err(status)) => Err(status.code()),
            Err(_) => Err(Code::DeadlineExceeded),
        }
    }
}

/// Whether an event outcome is an error worth reporting (unknown items are part of the replay).
pub(crate) fn event_error(outcome: Result<ErrorCode, Code>) -> Option<String> {
    match outcome {
        Ok(ErrorCode::Ok) => None,
        Ok(c) if skipped(c) => None,
        Ok(code) => Some(format!("event:{}", code.as_str_name())),
        Err(code) => Some(format!("event-stream:{code:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambdarec_trainer::data::RawEvent;

    #[test]
    fn sessions_keep_time_order_and_skip_empty_ones() {
        let ev = |session, item, time| RawEvent {
            session,
            item,
            time,
        };
        let log = RawLog {
            events: vec![ev(0, 1, 1.0), ev(0, 0, 2.0), ev(2, 1, 5.0)],
            sessions: vec!["a".into(), "empty".into(), "c".into()],
            items: vec!["x".into(), "y".into()],
            ..RawLog::default()
        };
        let r = Replay::from_log(&log);
        let keys: Vec<&str> = r.sessions.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(r.sessions[0].items, [1, 0]);
        assert_eq!(r.sessions[0].times, [1.0, 2.0]);
        assert_eq!(r.n_events(), 3);
    }

    #[test]
    fn unknown_items_are_not_errors() {
        assert_eq!(event_error(Ok(ErrorCode::Ok)), None);
        assert_eq!(event_error(Ok(ErrorCode::UnknownItem)), None);
        assert_eq!(
            event_error(Ok(ErrorCode::Overloaded)).as_deref(),
            Some("event:ERROR_CODE_OVERLOADED")
        );
        assert_eq!(
            event_error(Err(Code::Unavailable)).as_deref(),
            Some("event-stream:Unavailable")
        );
    }
}
