//! [`JetStreamLog`], the event log on a NATS JetStream stream (`--log nats://host:4222/STREAM`), for
//! replicated deployments: the stream (file storage, `?replicas=N`) is the durable, shared log.
//!
//! Each record is one message on `<prefix>.<session_hash>` (prefix `<stream lowercased>.events`
//! unless `?subject=` says otherwise), so one session can be replayed by subject filter; its payload
//! is [`crate::encode`]d, and its position is the stream sequence.
//!
//! Deduplication: every message carries a `Nats-Msg-Id`: `<session_hash>:<client_seq>` for an event
//! with a client sequence number, else `<writer id>:<counter>` (a random id per opened log). The
//! server drops a message whose id it has seen within the stream's `duplicate_window` (2 minutes,
//! set on the stream) and acknowledges it with the original's sequence, so an append retried after a
//! lost ack stores nothing twice. Beyond the window a resent event is stored again (readers that
//! apply events exactly once per `(session_id, client_seq)` are unaffected); within it, a session
//! that restarts its client_seq numbering under the same id has those events treated as duplicates.
//!
//! Durability is the server's: an append returns once every message is acknowledged (stored on a
//! quorum of the stream's replicas). By default nats-server fsyncs its files every 2 minutes
//! (`sync_interval`), so a single replica survives a server process crash but not a power loss; use
//! 3 replicas or `sync_interval: always` where that matters.
//!
//! The client is async; this log owns a one-worker tokio runtime and waits on it. Every wait is
//! bounded ([`OpenOptions`]: connect and operation timeouts), never a hang: while the server is down
//! an append fails with [`LogError::Remote`] after the operation timeout (the client keeps
//! reconnecting in the background, so a later append can succeed).

mod reader;
mod runtime;
mod sessions;

use std::collections::VecDeque;
use std::error::Error;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;

use crate::SessionReader;
use crate::{Bounds, EventLog, LogError, LogReader, LogRecord, OpenOptions, Position, RecordKind};
use crate::{Result, encode, session_hash};
use runtime::Runtime;

/// The server's deduplication window for `Nats-Msg-Id`s, set on the stream.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Publishes awaiting their ack at once within one append (the client refuses more than twice this).
const ACK_WINDOW: usize = 2048;

/// A parsed `nats://host[:port]/STREAM[?replicas=N&subject=PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsLocation {
    pub host: String,
    pub port: u16,
    pub stream: String,
    /// Records go to `<subject_prefix>.<session_hash>`.
    pub subject_prefix: String,
    pub replicas: usize,
}

impl NatsLocation {
    /// Parses the URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<NatsLocation, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        if parsed.scheme() != "nats" {
            return Err(format!("scheme `{}` is not nats", parsed.scheme()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("credentials in the URL are not supported".to_string());
        }
        let host = match parsed.host_str() {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => return Err("no server host".to_string()),
        };
        let stream = parsed.path().trim_start_matches('/').to_string();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if stream.is_empty() || !stream.chars().all(valid_char) {
            return Err(format!(
                "the path must be one stream name of letters, digits, `-` and `_`, not {stream:?}"
            ));
        }
        let mut at = NatsLocation {
            host,
            port: parsed.port().unwrap_or(4222),
            subject_prefix: format!("{}.events", stream.to_lowercase()),
            stream,
            replicas: 1,
        };
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "replicas" => {
                    at.replicas = value
                        .parse()
                        .ok()
                        .filter(|r| (1..=5).contains(r))
                        .ok_or_else(|| format!("replicas must be 1 to 5, not {value:?}"))?;
                }
                "subject" => at.subject_prefix = check_subject_prefix(&value)?,
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        Ok(at)
    }

    /// The server address, for connecting and for messages.
    pub fn server(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The URL again, without defaults.
    pub fn describe(&self) -> String {
        let mut out = format!("{}/{}", self.server(), self.stream);
        let mut sep = '?';
        if self.replicas != 1 {
            out += &format!("{sep}replicas={}", self.replicas);
            sep = '&';
        }
        if self.subject_prefix != format!("{}.events", self.stream.to_lowercase()) {
            out += &format!("{sep}subject={}", self.subject_prefix);
        }
        out
    }

    /// The subject of a session's records.
    pub fn subject(&self, session_id: &str) -> String {
        format!("{}.{}", self.subject_prefix, session_hash(session_id))
    }

    /// The filter that matches every record of the log.
    pub fn all_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

fn check_subject_prefix(prefix: &str) -> Result<String, String> {
    let bad_token = |t: &str| {
        t.is_empty()
            || t.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>')
    };
    if prefix.split('.').any(bad_token) {
        return Err(format!(
            "subject prefix {prefix:?} must be dot-separated tokens without spaces or wildcards"
        ));
    }
    Ok(prefix.to_string())
}

/// The event log on a JetStream stream.
pub struct JetStreamLog {
    at: NatsLocation,
    op_timeout: Duration,
    js: jetstream::Context,
    stream: stream::Stream,
    /// Tags the ids of records without a client sequence number: unique per opened log.
    writer_id: String,
    counter: u64,
    /// The stream's size from the last stream info.
    bytes: AtomicU64,
    /// Last: dropped after the client handles above.
    rt: Arc<Runtime>,
}

impl JetStreamLog {
    /// Connects, and creates the stream (or updates its configuration).
    pub fn open(at: &NatsLocation, opts: &OpenOptions) -> Result<JetStreamLog> {
        let rt = Runtime::new().map_err(|e| remote(at, "starting the client runtime for", e))?;
        let (js, stream) = rt.block_on(connect(at, opts))?;
        let bytes = AtomicU64::new(stream.cached_info().state.bytes);
        Ok(JetStreamLog {
            at: at.clone(),
            op_timeout: opts.op_timeout,
            js,
            stream,
            writer_id: writer_id(),
            counter: 0,
            bytes,
            rt: Arc::new(rt),
        })
    }

    /// The stream's state now.
    fn info(&self, bound: Duration) -> Result<stream::State> {
        let stream = &self.stream;
        let state = self.run(bound, "reading the state of", async move {
            Ok(stream.get_info().await?.state)
        })?;
        self.bytes.store(state.bytes, Ordering::Relaxed);
        Ok(state)
    }

    /// Runs `fut` on the log's runtime, bounded by `bound`; errors name the server and stream.
    fn run<T: Send>(
        &self,
        bound: Duration,
        doing: &str,
        fut: impl Future<Output = Result<T, async_nats::Error>> + Send,
    ) -> Result<T> {
        run_bounded(&self.rt, &self.at, bound, doing, fut)
    }

    /// Subject, payload and message id of each record.
    fn messages(&mut self, records: &[LogRecord]) -> Vec<(String, Bytes, String)> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let hash = session_hash(&r.session_id);
            let id = match (r.kind(), r.client_seq) {
                (RecordKind::Event, Some(seq)) => format!("{hash}:{seq}"),
                _ => {
                    self.counter += 1;
                    format!("{}:{}", self.writer_id, self.counter)
                }
            };
            let subject = format!("{}.{hash}", self.at.subject_prefix);
            out.push((subject, Bytes::from(encode(r)), id));
        }
        out
    }
}

impl EventLog for JetStreamLog {
    fn describe(&self) -> String {
        self.at.describe()
    }

    fn append(&mut self, records: &[LogRecord]) -> Result<Vec<Position>> {
        let expected = vec![None; records.len()];
        let appended = self.append_expecting(records, &expected)?;
        Ok(appended.into_iter().map(|(p, _)| p).collect())
    }

    /// An expectation is the `Nats-Expected-Last-Subject-Sequence` header: the stream refuses the
    /// message when another is on the subject after that sequence, and the message is then published
    /// again without it (after the others: it is its session's only record in the call).
    fn append_expecting(
        &mut self,
        records: &[LogRecord],
        expected: &[Option<Position>],
    ) -> Result<Vec<(Position, bool)>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let messages = self.messages(records);
        // Refused here as what it is, rather than as a publish error from the client.
        let max = self.js.client().server_info().max_payload;
        if let Some((_, payload, _)) = messages.iter().find(|m| m.1.len() > max) {
            return Err(LogError::TooLarge {
                bytes: payload.len(),
                max,
            });
        }
        let js = &self.js;
        let messages = messages.into_iter().zip(expected.iter().copied()).collect();
        self.run(self.op_timeout, "appending to", publish_all(js, messages))
    }

    fn bounds(&self) -> Result<Bounds> {
        Ok(bounds_of(&self.info(self.op_timeout)?))
    }

    fn reader(&self, from: Position) -> Result<Box<dyn LogReader>> {
        let first = self.bounds()?.first;
        if from < first {
            return Err(LogError::Released {
                requested: from,
                first,
            });
        }
        Ok(Box::new(reader::JetStreamReader::new(
            self.rt.clone(),
            self.at.clone(),
            self.stream.clone(),
            from,
            self.op_timeout,
        )))
    }

    fn release_before(&mut self, position: Position) -> Result<Position> {
        let b = self.bounds()?;
        let cut = position.clamp(b.first, b.next);
        if cut > b.first {
            let stream = &self.stream;
            self.run(self.op_timeout, "purging", async move {
                stream.purge().sequence(cut).await?;
                Ok(())
            })?;
        }
        Ok(self.bounds()?.first)
    }

    /// Fresh when the server answers within a second, else from the last stream info.
    fn stored_bytes(&self) -> u64 {
        let _ = self.info(self.op_timeout.min(Duration::from_secs(1)));
        self.bytes.load(Ordering::Relaxed)
    }

    fn session_reader(&self) -> Option<Box<dyn SessionReader>> {
        Some(Box::new(sessions::JetStreamSessions {
            at: self.at.clone(),
            stream: self.stream.clone(),
            op_timeout: self.op_timeout,
            rt: self.rt.clone(),
        }))
    }
}

/// A message to publish: subject, payload, message id, and the subject's expected last sequence.
type Message = ((String, Bytes, String), Option<Position>);

/// Publishes every message without waiting for each ack (up to [`ACK_WINDOW`] in flight), then
/// collects the acks' stream sequences in order. A duplicate's ack carries the original's sequence.
/// A message the stream refused because its subject's last sequence was not the expected one is
/// published again, without the expectation, once the others are acknowledged; its answer is
/// `(position, false)`.
async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<Message>,
) -> Result<Vec<(Position, bool)>, async_nats::Error> {
    let n = messages.len();
    let mut in_flight = VecDeque::with_capacity(n.min(ACK_WINDOW));
    let mut out = vec![(0, false); n];
    let mut refused = Vec::new();
    let mut settle =
        |i: usize,
         fenced: bool,
         ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>| {
            match ack {
                Ok(ack) => {
                    out[i] = (ack.sequence, fenced);
                    Ok(())
                }
                Err(e) if fenced && e.kind() == PublishErrorKind::WrongLastSequence => {
                    refused.push(i);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
    let mut unfenced = Vec::new();
    for (i, ((subject, payload, id), expected)) in messages.into_iter().enumerate() {
        if in_flight.len() == ACK_WINDOW {
            let (j, fenced, ack): (usize, bool, jetstream::context::PublishAckFuture) =
                in_flight.pop_front().expect("window is full");
            settle(j, fenced, ack.await)?;
        }
        let mut publish = PublishMessage::build()
            .payload(payload.clone())
            .message_id(id.clone());
        if let Some(e) = expected {
            publish = publish.expected_last_subject_sequence(e);
            unfenced.push((i, subject.clone(), payload, id));
        }
        in_flight.push_back((
            i,
            expected.is_some(),
            js.send_publish(subject, publish).await?,
        ));
    }
    for (j, fenced, ack) in in_flight {
        settle(j, fenced, ack.await)?;
    }
    for (i, subject, payload, id) in unfenced {
        if refused.contains(&i) {
            let publish = PublishMessage::build().payload(payload).message_id(id);
            out[i] = (
                js.send_publish(subject, publish).await?.await?.sequence,
                false,
            );
        }
    }
    Ok(out)
}

/// `first..next` of a stream: an empty stream has `first == next == last_sequence + 1`.
fn bounds_of(state: &stream::State) -> Bounds {
    let next = state.last_sequence + 1;
    let first = if state.messages == 0 {
        next
    } else {
        state.first_sequence
    };
    Bounds { first, next }
}

async fn connect(
    at: &NatsLocation,
    opts: &OpenOptions,
) -> Result<(jetstream::Context, stream::Stream)> {
    let connecting = async_nats::ConnectOptions::new()
        .name("lambdarec")
        .connection_timeout(opts.connect_timeout)
        .request_timeout(Some(opts.op_timeout))
        .connect(at.server());
    let client = tokio::time::timeout(opts.connect_timeout, connecting)
        .await
        .map_err(|_| {
            remote(
                at,
                "connecting (timed out) for",
                TimedOut(opts.connect_timeout),
            )
        })?
        .map_err(|e| remote(at, "connecting for", e))?;
    let js = jetstream::context::ContextBuilder::new()
        .timeout(opts.op_timeout)
        .ack_timeout(opts.op_timeout)
        .max_ack_inflight(2 * ACK_WINDOW)
        .backpressure_on_inflight(false)
        .build(client);
    let config = stream::Config {
        name: at.stream.clone(),
        subjects: vec![at.all_subjects()],
        storage: stream::StorageType::File,
        num_replicas: at.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        // Replicas read single sessions by direct get when the stream has one replica.
        allow_direct: true,
        ..Default::default()
    };
    let setup = async {
        js.create_or_update_stream(config).await?;
        Ok::<_, async_nats::Error>(js.get_stream(&at.stream).await?)
    };
    let stream = tokio::time::timeout(2 * opts.op_timeout, setup)
        .await
        .map_err(|_| remote(at, "creating (timed out)", TimedOut(2 * opts.op_timeout)))?
        .map_err(|e| remote(at, "creating or updating", e))?;
    Ok((js, stream))
}

/// Runs `fut` on `rt` within `bound`, naming the server and stream in any error.
fn run_bounded<T: Send>(
    rt: &Runtime,
    at: &NatsLocation,
    bound: Duration,
    doing: &str,
    fut: impl Future<Output = Result<T, async_nats::Error>> + Send,
) -> Result<T> {
    match rt.block_on(async move { tokio::time::timeout(bound, fut).await }) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(remote(at, doing, e)),
        Err(_) => Err(remote(at, doing, TimedOut(bound))),
    }
}

fn remote(at: &NatsLocation, doing: &str, e: impl Into<Box<dyn Error + Send + Sync>>) -> LogError {
    LogError::Remote {
        what: format!("{doing} stream {} on {}", at.stream, at.server()),
        source: e.into(),
    }
}

/// An operation that did not finish within its bound.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
struct TimedOut(Duration);

/// A random id for this opened log's message ids: std's randomly keyed hasher, the process id and
/// the time, so that two logs (in one process or two) do not share one.
fn writer_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    format!("w{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults() {
        let at = NatsLocation::parse("nats://h/LAMBDAREC").unwrap();
        assert_eq!(
            (at.host.as_str(), at.port, at.stream.as_str(), at.replicas),
            ("h", 4222, "LAMBDAREC", 1)
        );
        assert_eq!(
            at.subject("s1"),
            format!("lambdarec.events.{}", session_hash("s1"))
        );
        assert_eq!(at.all_subjects(), "lambdarec.events.>");
        assert_eq!(at.describe(), "nats://h:4222/LAMBDAREC");
        let full = "nats://10.0.0.2:4333/EV-1?replicas=3&subject=prod.ev";
        let at = NatsLocation::parse(full).unwrap();
        assert_eq!((at.port, at.replicas), (4333, 3));
        assert_eq!(at.subject_prefix, "prod.ev");
        assert_eq!(
            at.describe(),
            "nats://10.0.0.2:4333/EV-1?replicas=3&subject=prod.ev"
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("nats://h", "stream name"),
            ("nats://h/A/B", "stream name"),
            ("nats://h/A.B", "stream name"),
            ("nats://h/A?replicas=0", "replicas"),
            ("nats://h/A?replicas=x", "replicas"),
            ("nats://h/A?subject=a.*", "subject prefix"),
            ("nats://h/A?subject=a..b", "subject prefix"),
            ("nats://h/A?color=red", "unknown option"),
            ("nats://u:p@h/A", "credentials"),
        ] {
            let err = NatsLocation::parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn empty_and_purged_streams_have_first_equal_next() {
        let mut state: stream::State = serde_json::from_str(
            r#"{"messages":0,"bytes":0,"first_seq":0,"first_ts":"1970-01-01T00:00:00Z",
                "last_seq":0,"last_ts":"1970-01-01T00:00:00Z","consumer_count":0}"#,
        )
        .unwrap();
        assert_eq!(bounds_of(&state), Bounds { first: 1, next: 1 });
        (state.first_sequence, state.last_sequence) = (11, 10);
        assert_eq!(
            bounds_of(&state),
            Bounds {
                first: 11,
                next: 11
            }
        );
        (state.messages, state.first_sequence, state.last_sequence) = (3, 8, 10);
        assert_eq!(bounds_of(&state), Bounds { first: 8, next: 11 });
    }

    #[test]
    fn writer_ids_differ() {
        assert_ne!(writer_id(), writer_id());
    }
}
