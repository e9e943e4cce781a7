//! One table of bad inputs to every RPC of the real server (in-process, embedded event log): each
//! gets its expected status (or event-ack code) and a fragment of its message, and after each one
//! the server's state is what it was before: a probe session (GetSession), the serving model
//! (ModelInfo), the live-session count (/metrics) and the event log's records. Raw HTTP/2 requests
//! carry what no well-behaved client sends: undecodable protobuf, cut-short and flagged frames.
//! The CLI's bad inputs are in `server/tests/cli_bad_inputs.rs` (it needs the binary).

mod server_common;

use std::net::SocketAddr;
use std::time::Duration;

use lambdarec_eventlog::LogReader;
use lambdarec_eventlog::file::FileLog;
use lambdarec_proto::v1;
use lambdarec_proto::v1::ErrorCode;
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use server_common::{base, client, config, fresh_store};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// What one case sends.
enum Call {
    Recommend(v1::RecommendRequest),
    Score(v1::ScoreRequest),
    GetSession(String),
    DeleteSession(String),
    Reload(Option<String>),
    /// One StreamEvents call; every event must be refused with the expected ack code.
    Events(Vec<v1::SessionEvent>),
    /// A raw HTTP/2 request: path, content-type and body bytes (gRPC frames or not).
    Raw(&'static str, &'static str, Vec<u8>),
}

enum Expect {
    Status(Code, &'static str),
    Ack(ErrorCode, &'static str),
}

struct Case {
    name: &'static str,
    call: Call,
    expect: Expect,
}

/// The server's observable state; every bad call must leave it as it was.
#[derive(Debug, PartialEq)]
struct State {
    probe: v1::SessionInfo,
    model: (String, String, u64),
    live_sessions: String,
    log: Vec<(u64, String, String)>,
}

const PROBE: &str = "probe-session";
const RECOMMEND: &str = "/lambdarec.v1.Recommender/Recommend";
const STREAM_EVENTS: &str = "/lambdarec.v1.Recommender/StreamEvents";
/// A corrupt version written beside the good one: its manifest is not JSON.
const CORRUPT_VERSION: &str = "20990101T000000000Z";

fn recommend(session: &str, k: u32) -> v1::RecommendRequest {
    v1::RecommendRequest {
        session_id: session.into(),
        k,
        ..Default::default()
    }
}

fn event(session: &str, item: &str) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: session.into(),
        item_id: item.into(),
        ..Default::default()
    }
}

/// A gRPC length-prefixed frame: compressed flag, big-endian length, payload.
fn frame(compressed: bool, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[rustfmt::skip]
fn cases(item: &str) -> Vec<Case> {
    use Call::*;
    use Expect::*;
    let long = "s".repeat(257);
    let many = |n: usize| (0..n).map(|i| format!("x{i}")).collect::<Vec<_>>();
    let garbage = [0xff_u8; 8];
    let case = |name, call, expect| Case { name, call, expect };
    vec![
        case("recommend: empty session id", Recommend(recommend("", 5)), Status(Code::InvalidArgument, "session_id is empty")),
        case("recommend: 257-byte session id", Recommend(recommend(&long, 5)), Status(Code::InvalidArgument, "256")),
        case("recommend: k = 0", Recommend(recommend(PROBE, 0)), Status(Code::InvalidArgument, "k")),
        case("recommend: k over the limit", Recommend(recommend(PROBE, 1001)), Status(Code::InvalidArgument, "1000")),
        case("recommend: k = u32::MAX", Recommend(recommend(PROBE, u32::MAX)), Status(Code::InvalidArgument, "1000")),
        case(
            "recommend: unknown item in inline_events",
            Recommend(v1::RecommendRequest { inline_events: vec![item.into(), "no-such-item".into()], ..recommend(PROBE, 5) }),
            Status(Code::InvalidArgument, "no-such-item"),
        ),
        case(
            "recommend: too many inline_events",
            Recommend(v1::RecommendRequest { inline_events: vec![item.to_string(); 1001], ..recommend(PROBE, 5) }),
            Status(Code::InvalidArgument, "inline_events"),
        ),
        case(
            "recommend: too many exclude_items",
            Recommend(v1::RecommendRequest { exclude_items: many(10_001), ..recommend(PROBE, 5) }),
            Status(Code::InvalidArgument, "exclude_items"),
        ),
        case("recommend: a message over --max-message-bytes", Recommend(recommend(&"s".repeat(5 << 20), 5)), Status(Code::ResourceExhausted, "--max-message-bytes")),
        case("score: empty session id", Score(v1::ScoreRequest { session_id: String::new(), candidates: vec![item.into()], ..Default::default() }), Status(Code::InvalidArgument, "session_id is empty")),
        case("score: 257-byte session id", Score(v1::ScoreRequest { session_id: long.clone(), candidates: vec![item.into()], ..Default::default() }), Status(Code::InvalidArgument, "256")),
        case("score: too many candidates", Score(v1::ScoreRequest { session_id: PROBE.into(), candidates: many(10_001), ..Default::default() }), Status(Code::InvalidArgument, "candidates")),
        case("get_session: empty session id", GetSession(String::new()), Status(Code::InvalidArgument, "session_id is empty")),
        case("get_session: 257-byte session id", GetSession(long.clone()), Status(Code::InvalidArgument, "256")),
        case("get_session: unknown session", GetSession("never-seen".into()), Status(Code::NotFound, "never-seen")),
        case("delete_session: empty session id", DeleteSession(String::new()), Status(Code::InvalidArgument, "session_id is empty")),
        case("delete_session: 257-byte session id", DeleteSession(long.clone()), Status(Code::InvalidArgument, "256")),
        case("reload: a version that does not exist", Reload(Some("20000101T000000000Z".into())), Status(Code::NotFound, "20000101T000000000Z")),
        case("reload: a version climbing out of the model", Reload(Some("../other".into())), Status(Code::InvalidArgument, "version")),
        case("reload: LATEST as a version", Reload(Some("LATEST".into())), Status(Code::InvalidArgument, "LATEST")),
        case("reload: an empty version", Reload(Some(String::new())), Status(Code::InvalidArgument, "empty")),
        case("reload: a corrupt bundle", Reload(Some(CORRUPT_VERSION.into())), Status(Code::FailedPrecondition, "manifest.json")),
        case("events: empty session id", Events(vec![event("", item)]), Ack(ErrorCode::BadSessionId, "session_id is empty")),
        case("events: 257-byte session id", Events(vec![event(&long, item)]), Ack(ErrorCode::BadSessionId, "256")),
        case("events: unknown item", Events(vec![event(PROBE, "no-such-item")]), Ack(ErrorCode::UnknownItem, "no-such-item")),
        case("events: empty item id", Events(vec![event(PROBE, "")]), Ack(ErrorCode::UnknownItem, "")),
        case("raw: undecodable protobuf", Raw(RECOMMEND, "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: frame cut short", Raw(RECOMMEND, "application/grpc", frame(false, 100, &garbage)), Status(Code::Internal, "")),
        case("raw: compressed flag without grpc-encoding", Raw(RECOMMEND, "application/grpc", frame(true, 8, &garbage)), Status(Code::Internal, "compress")),
        case("raw: empty body", Raw(RECOMMEND, "application/grpc", Vec::new()), Status(Code::Internal, "")),
        case("raw: unknown method", Raw("/lambdarec.v1.Recommender/Nope", "application/grpc", frame(false, 0, &[])), Status(Code::Unimplemented, "")),
        case("raw: unknown service", Raw("/evil.v1.Admin/Shutdown", "application/grpc", frame(false, 0, &[])), Status(Code::Unimplemented, "")),
        case("raw: undecodable event in a stream", Raw(STREAM_EVENTS, "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: a stream frame over the size limit", Raw(STREAM_EVENTS, "application/grpc", frame(false, 64 << 20, &garbage)), Status(Code::ResourceExhausted, "--max-message-bytes")),
        case("recommend: empty item id in inline_events", Recommend(v1::RecommendRequest { inline_events: vec![String::new()], ..recommend(PROBE, 5) }), Status(Code::InvalidArgument, "does not know")),
        case("events: a stream of unknown items", Events(vec![event(PROBE, "nope-1"), event(PROBE, "nope-2"), event(PROBE, "nope-3")]), Ack(ErrorCode::UnknownItem, "nope-")),
        case("reload: a version with a slash", Reload(Some("a/b".into())), Status(Code::InvalidArgument, "'/'")),
        case("reload: a version with a space", Reload(Some("v 1".into())), Status(Code::InvalidArgument, "allowed characters")),
        case("raw: Recommend's k with the wrong wire type", Raw(RECOMMEND, "application/grpc", frame(false, 3, &[0x12, 0x01, 0x00])), Status(Code::Internal, "decode")),
        case("raw: a varint cut short", Raw(RECOMMEND, "application/grpc", frame(false, 2, &[0x10, 0xff])), Status(Code::Internal, "decode")),
        case("raw: undecodable Score", Raw("/lambdarec.v1.Recommender/Score", "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: undecodable GetSession", Raw("/lambdarec.v1.Recommender/GetSession", "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: undecodable DeleteSession", Raw("/lambdarec.v1.Recommender/DeleteSession", "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: undecodable Reload", Raw("/lambdarec.v1.Recommender/Reload", "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: undecodable ModelInfo", Raw("/lambdarec.v1.Recommender/ModelInfo", "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
        case("raw: undecodable Ping", Raw("/lambdarec.v1.Recommender/Ping", "application/grpc", frame(false, 8, &garbage)), Status(Code::Internal, "decode")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors_and_change_nothing() {
    let (store, _version) = fresh_store("bad-inputs").await;
    write_corrupt_version(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let mut cfg = config(&store);
    cfg.log = lambdarec_server::LogConfig::Url(log_dir.display().to_string());
    cfg.snapshot_dir = Some(dir.path().join("snapshots"));
    cfg.snapshot_interval = None;
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = lambdarec_server::start(cfg).await.unwrap();
    assert!(
        server.wait_ready(Duration::from_secs(30)).await,
        "{:?}",
        server.not_serving_reason()
    );
    let addr = server.local_addr();
    let metrics = server.metrics_addr().unwrap();
    let mut c = client(addr).await.max_encoding_message_size(usize::MAX);

    // A probe session with a few events, so that "unchanged" covers real state.
    let item = base().ids[0].clone();
    let events = base().ids[..3].iter().map(|i| event(PROBE, i)).collect();
    let acks = stream(&mut c, events).await;
    assert!(acks.iter().all(|a| a.applied), "{acks:?}");

    let table = cases(&item);
    assert!(table.len() >= 40, "{} cases", table.len());
    let mut before = state(&mut c, metrics, &log_dir).await;
    assert_eq!(before.probe.events, 3);
    let (n, mut failures) = (table.len(), Vec::new());
    for case in table {
        let outcome = tokio::time::timeout(Duration::from_secs(30), run(&mut c, addr, case.call))
            .await
            .unwrap_or_else(|_| panic!("{}: no answer within 30 s", case.name));
        failures.extend(check(case.name, &case.expect, outcome).err());
        let after = state(&mut c, metrics, &log_dir).await;
        if after != before {
            failures.push(format!(
                "{}: the server's state changed from {before:?} to {after:?}",
                case.name
            ));
        }
        before = after;
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    server.shutdown().await.unwrap();
}

/// What a call came back with: a status, or the acks of a stream.
enum Outcome {
    Status(Code, String),
    Acks(Vec<v1::EventAck>),
}

fn check(name: &str, expect: &Expect, outcome: Outcome) -> Result<(), String> {
    let fail = |what: String| Err(format!("{name}: {what}"));
    match (expect, outcome) {
        (Expect::Status(code, fragment), Outcome::Status(got, message)) => {
            if got != *code || !message.contains(fragment) {
                return fail(format!(
                    "expected {code:?} with {fragment:?}, got {got:?} {message:?}"
                ));
            }
        }
        (Expect::Ack(code, fragment), Outcome::Acks(acks)) => {
            if acks.is_empty() {
                return fail("no ack".into());
            }
            for ack in acks {
                if ack.applied || ack.code() != *code || !ack.error.contains(fragment) {
                    return fail(format!(
                        "expected a refusal {code:?} with {fragment:?}, got {ack:?}"
                    ));
                }
            }
        }
        (_, Outcome::Status(code, message)) => return fail(format!("got {code:?} {message:?}")),
        (_, Outcome::Acks(acks)) => return fail(format!("got acks {acks:?}")),
    }
    Ok(())
}

async fn run(c: &mut RecommenderClient<Channel>, addr: SocketAddr, call: Call) -> Outcome {
    let status = |s: tonic::Status| Outcome::Status(s.code(), s.message().to_string());
    let ok = || Outcome::Status(Code::Ok, String::new());
    match call {
        Call::Recommend(r) => c.recommend(r).await.map_or_else(status, |_| ok()),
        Call::Score(r) => c.score(r).await.map_or_else(status, |_| ok()),
        Call::GetSession(session_id) => c
            .get_session(v1::GetSessionRequest { session_id })
            .await
            .map_or_else(status, |_| ok()),
        Call::DeleteSession(session_id) => c
            .delete_session(v1::DeleteSessionRequest { session_id })
            .await
            .map_or_else(status, |_| ok()),
        Call::Reload(version) => c
            .reload(v1::ReloadRequest { version })
            .await
            .map_or_else(status, |_| ok()),
        Call::Events(events) => Outcome::Acks(stream(c, events).await),
        Call::Raw(path, content_type, body) => {
            let (code, message) = raw_grpc(addr, path, content_type, body).await;
            Outcome::Status(code, message)
        }
    }
}

/// Streams `events` on one StreamEvents call and returns their acks.
async fn stream(
    c: &mut RecommenderClient<Channel>,
    events: Vec<v1::SessionEvent>,
) -> Vec<v1::EventAck> {
    let (tx, rx) = tokio::sync::mpsc::channel(events.len().max(1));
    for e in events {
        tx.send(e).await.unwrap();
    }
    drop(tx);
    let mut acks = c
        .stream_events(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        out.push(ack);
    }
    out
}

/// One HTTP/2 request on a fresh connection; the gRPC status from the trailers (or from the
/// headers of a trailers-only answer).
async fn raw_grpc(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (Code, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = h2.send_request(request, false).unwrap();
    send.send_data(body.into(), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200, "{path}: HTTP status");
    let status_of = |h: &http::HeaderMap| {
        let code = h.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
        let message = h
            .get("grpc-message")
            .map(|m| m.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        Some((Code::from_i32(code), message))
    };
    if let Some(status) = status_of(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("gRPC trailers");
    let (code, message) = status_of(&trailers).expect("a grpc-status trailer");
    // grpc-message is percent-encoded.
    (code, percent_decode(&message))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn state(
    c: &mut RecommenderClient<Channel>,
    metrics: SocketAddr,
    log_dir: &std::path::Path,
) -> State {
    let probe = c
        .get_session(v1::GetSessionRequest {
            session_id: PROBE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let page = server_common::http_get(metrics, "/metrics").await;
    let live_sessions = page
        .lines()
        .find(|l| l.starts_with("lambdarec_live_sessions "))
        .expect("the live-sessions gauge")
        .to_string();
    let mut reader = FileLog::open_read_only(log_dir, 1).unwrap();
    let mut log = Vec::new();
    loop {
        let batch = reader.next_batch(1024).unwrap();
        if batch.is_empty() {
            break;
        }
        log.extend(batch.into_iter().map(|(p, r)| (p, r.session_id, r.item_id)));
    }
    State {
        probe,
        model: (info.name, info.version, info.n_items),
        live_sessions,
        log,
    }
}

/// Writes a version whose manifest is not JSON beside the good one (LATEST still names the good one).
async fn write_corrupt_version(store: &str) {
    use object_store::{ObjectStoreExt, PutPayload};
    let s = lambdarec_proto::bundle::Store::open(store).unwrap();
    let path = s
        .prefix()
        .clone()
        .join("models")
        .join(server_common::MODEL)
        .join(CORRUPT_VERSION)
        .join("manifest.json");
    s.object_store()
        .put(&path, PutPayload::from_static(b"{ not json"))
        .await
        .unwrap();
}
