//! Transport security and access control of a real server on loopback: bearer tokens and roles,
//! TLS and mutual TLS on both listeners (certificates made here with rcgen), certificate and token
//! reload without dropping an open stream, and the resource limits' statuses and metrics.

mod server_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lambdarec_proto::v1;
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use lambdarec_server::load::{Bearer, Client};
use lambdarec_server::security::tokens::file_line;
use lambdarec_server::security::{Policy, Role, SecurityConfig, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use server_common::{base, config, fresh_store, http_get};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const CLIENT: &str = "client-token-1";
const ADMIN: &str = "admin-token-1";
const MONITOR: &str = "monitor-token-1";

fn write_tokens(path: &Path, tokens: &[(Role, &str, &str)]) {
    let lines: Vec<String> = tokens
        .iter()
        .map(|(role, token, name)| file_line(*role, token, Some(name)))
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn standard_tokens(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    write_tokens(
        &path,
        &[
            (Role::Client, CLIENT, "shop"),
            (Role::Admin, ADMIN, "ops"),
            (Role::Monitor, MONITOR, "prom"),
        ],
    );
    path
}

fn item(i: usize) -> String {
    base().ids[i].clone()
}

fn recommend(session: &str, inline: &[usize]) -> v1::RecommendRequest {
    v1::RecommendRequest {
        session_id: session.into(),
        k: 5,
        inline_events: inline.iter().map(|&i| item(i)).collect(),
        ..Default::default()
    }
}

fn event(session: &str, i: usize, seq: u64) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: session.into(),
        item_id: item(i),
        timestamp_ms: None,
        client_seq: Some(seq),
    }
}

fn with_token(channel: Channel, token: Option<&str>) -> Client {
    RecommenderClient::with_interceptor(channel, Bearer::new(token).unwrap())
}

async fn plain_channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// An open StreamEvents call: events go in through `tx`, acks come out of `acks`.
struct OpenStream {
    tx: mpsc::Sender<v1::SessionEvent>,
    acks: tonic::Streaming<v1::EventAck>,
}

impl OpenStream {
    async fn open(client: &mut Client) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let acks = client
            .stream_events(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(OpenStream { tx, acks })
    }

    async fn send(&mut self, e: v1::SessionEvent) -> v1::EventAck {
        self.tx.send(e).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(10), self.acks.message());
        ack.await.expect("an ack in time").unwrap().expect("an ack")
    }
}

/// The value of one sample line of the metrics text (`name{labels}`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = standard_tokens(dir.path());
    let (store, _) = fresh_store("sec-tokens").await;
    let mut cfg = config(&store);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.security = SecurityConfig {
        auth_tokens: Some(tokens.clone()),
        ..SecurityConfig::default()
    };
    let server = lambdarec_server::start(cfg).await.unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);
    let channel = plain_channel(server.local_addr()).await;

    // No token, a wrong token, a malformed header: UNAUTHENTICATED, before any handler runs.
    for token in [None, Some("wrong")] {
        let mut c = with_token(channel.clone(), token);
        let e = c.recommend(recommend("a", &[1])).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
        let e = OpenStream::open(&mut c).await.err().expect("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let mut raw = RecommenderClient::new(channel.clone());
    let mut req = tonic::Request::new(v1::PingRequest {});
    req.metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let e = raw.ping(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("Bearer"), "{e:?}");

    // A client token serves traffic but may not Reload; an admin token may.
    let mut client = with_token(channel.clone(), Some(CLIENT));
    let got = client.recommend(recommend("a", &[1, 2])).await.unwrap();
    assert_eq!(got.into_inner().items.len(), 5);
    let mut stream = OpenStream::open(&mut client).await.unwrap();
    assert!(stream.send(event("a", 3, 1)).await.applied);
    let e = client
        .reload(v1::ReloadRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("\"shop\" has role client"), "{e:?}");
    let mut admin = with_token(channel.clone(), Some(ADMIN));
    admin.reload(v1::ReloadRequest::default()).await.unwrap();
    // A monitor token reads no session data.
    let mut monitor = with_token(channel.clone(), Some(MONITOR));
    let e = monitor
        .get_session(v1::GetSessionRequest {
            session_id: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    monitor.ping(v1::PingRequest {}).await.unwrap();

    // Health stays open by default.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(check).await.unwrap();

    // The tokens file is reloaded: a new token works at once, a removed one stops working, and
    // an open stream of a token still listed carries on.
    write_tokens(
        &tokens,
        &[
            (Role::Client, CLIENT, "shop"),
            (Role::Client, "client-token-2", "shop2"),
        ],
    );
    server.reload_security().unwrap();
    let mut second = with_token(channel.clone(), Some("client-token-2"));
    second.ping(v1::PingRequest {}).await.unwrap();
    let e = admin.ping(v1::PingRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(stream.send(event("a", 4, 2)).await.applied);
    // A broken file keeps the previous tokens and names the file and line.
    std::fs::write(&tokens, "client not-a-hash\n").unwrap();
    let errors = server.reload_security().unwrap_err();
    let text = errors[0].to_string();
    assert!(
        text.contains(&tokens.display().to_string()) && text.contains("line 1"),
        "{text}"
    );
    second.ping(v1::PingRequest {}).await.unwrap();

    let metrics = http_get(server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        sample(
            &metrics,
            "lambdarec_auth_failures_total{reason=\"missing\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "lambdarec_auth_failures_total{reason=\"forbidden\"}"
        ) >= 2.0
    );
    assert!(
        sample(
            &metrics,
            "lambdarec_security_reloads_total{part=\"tokens\",outcome=\"error\"}"
        ) >= 1.0
    );
    drop(stream);
    server.shutdown().await.unwrap();
}

/// A CA and what it issues.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// A leaf for `names`, as (certificate PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

fn tls_endpoint(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: Option<&(String, String)>,
    domain: &str,
) -> Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.issuer.pem()))
        .domain_name(domain);
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .unwrap()
}

/// Connects and pings with `token`: the status of the first failing step, if any. Never hangs.
async fn try_ping(endpoint: Endpoint, token: Option<&str>) -> Result<(), String> {
    let attempt = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut c = with_token(channel, token);
        c.ping(v1::PingRequest {})
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .map_err(|_| "hung".to_string())?
}

/// One HTTPS GET to `host` with an optional client certificate and token: the whole response.
async fn https_get(
    (addr, host): (std::net::SocketAddr, &str),
    ca: &Ca,
    client: Option<&(String, String)>,
    path: &str,
    token: Option<&str>,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_string()).unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        tls.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .map_err(|_| "hung".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mutual_tls_and_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = standard_tokens(dir.path());
    let (ours, theirs) = (Ca::new("lambdarec test CA"), Ca::new("another CA"));
    let (cert, key) = ours.write(dir.path(), "server", &["localhost"]);
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ours.issuer.pem()).unwrap();
    let good_client = ours.issue(&["client.test"]);
    let foreign_client = theirs.issue(&["client.test"]);

    let (store, _) = fresh_store("sec-tls").await;
    let mut cfg = config(&store);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.security = SecurityConfig {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(ca_file),
        }),
        auth_tokens: Some(tokens),
        policy: Policy {
            metrics: true,
            ..Policy::default()
        },
        // File changes are picked up without a signal.
        watch_interval: Some(Duration::from_millis(100)),
    };
    let server = lambdarec_server::start(cfg).await.unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);
    let addr = server.local_addr();

    // Plaintext to the TLS port: an error, not a hang.
    let plain = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let e = try_ping(plain, Some(CLIENT)).await.unwrap_err();
    assert_ne!(e, "hung");
    // Mutual TLS: no client certificate, or one from another CA, is refused.
    let e = try_ping(tls_endpoint(addr, &ours, None, "localhost"), Some(CLIENT)).await;
    assert!(e.as_ref().is_err_and(|e| e != "hung"), "{e:?}");
    let e = try_ping(
        tls_endpoint(addr, &ours, Some(&foreign_client), "localhost"),
        Some(CLIENT),
    )
    .await;
    assert!(e.as_ref().is_err_and(|e| e != "hung"), "{e:?}");
    // A server certificate checked against another CA is refused by the client.
    let e = try_ping(
        tls_endpoint(addr, &theirs, Some(&good_client), "localhost"),
        Some(CLIENT),
    )
    .await;
    assert!(e.as_ref().is_err_and(|e| e != "hung"), "{e:?}");
    // The right certificate: tokens still apply on top.
    let good = tls_endpoint(addr, &ours, Some(&good_client), "localhost");
    try_ping(good.clone(), Some(CLIENT)).await.unwrap();
    let e = try_ping(good.clone(), None).await.unwrap_err();
    assert!(e.starts_with("Unauthenticated"), "{e}");

    // The metrics endpoint: TLS with the same client certificates, and a monitor or admin token.
    let maddr = server.metrics_addr().unwrap();
    let r = https_get(
        (maddr, "localhost"),
        &ours,
        Some(&good_client),
        "/metrics",
        None,
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    let r = https_get(
        (maddr, "localhost"),
        &ours,
        Some(&good_client),
        "/metrics",
        Some(CLIENT),
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 403 "), "{r}");
    let r = https_get(
        (maddr, "localhost"),
        &ours,
        Some(&good_client),
        "/metrics",
        Some(MONITOR),
    )
    .await
    .unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200 ") && r.contains("lambdarec_connections"),
        "{r}"
    );
    let r = https_get(
        (maddr, "localhost"),
        &ours,
        Some(&good_client),
        "/healthz",
        None,
    )
    .await
    .unwrap();
    assert!(
        r.starts_with("HTTP/1.1 200 "),
        "health is open by default: {r}"
    );
    let r = https_get(
        (maddr, "localhost"),
        &ours,
        Some(&foreign_client),
        "/healthz",
        None,
    )
    .await;
    assert!(r.as_ref().is_err_and(|e| e != "hung"), "{r:?}");
    assert!(
        http_get_fails(maddr).await,
        "plaintext HTTP to the TLS metrics port"
    );

    // An open stream on the old certificate.
    let channel = good.connect().await.unwrap();
    let mut client = with_token(channel, Some(CLIENT));
    let mut stream = OpenStream::open(&mut client).await.unwrap();
    assert!(stream.send(event("tls", 1, 1)).await.applied);

    // A new certificate (another name) is written over the files: new connections get it.
    let (new_cert, new_key) = ours.issue(&["reloaded.test"]);
    std::fs::write(&key, new_key).unwrap();
    std::fs::write(&cert, new_cert).unwrap();
    let reloaded = tls_endpoint(addr, &ours, Some(&good_client), "reloaded.test");
    let mut served = Err(String::new());
    for _ in 0..100 {
        served = try_ping(reloaded.clone(), Some(CLIENT)).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.expect("the reloaded certificate is served to new connections");
    let e = try_ping(good.clone(), Some(CLIENT)).await;
    assert!(e.is_err(), "the old certificate is no longer served");
    // The stream opened before the reload carries on.
    assert!(stream.send(event("tls", 2, 2)).await.applied);

    // A broken certificate file: the reload fails naming it, the current certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    let errors = server.reload_security().unwrap_err();
    let text = errors[0].to_string();
    assert!(text.contains(&cert.display().to_string()), "{text}");
    try_ping(reloaded, Some(CLIENT)).await.unwrap();

    let r = https_get(
        (maddr, "reloaded.test"),
        &ours,
        Some(&good_client),
        "/metrics",
        Some(ADMIN),
    )
    .await
    .unwrap();
    assert!(
        sample(
            &r,
            "lambdarec_tls_handshake_failures_total{listener=\"grpc\"}"
        ) >= 3.0,
        "{r}"
    );
    assert!(
        sample(
            &r,
            "lambdarec_tls_handshake_failures_total{listener=\"http\"}"
        ) >= 1.0,
        "{r}"
    );
    drop(stream);
    server.shutdown().await.unwrap();
}

/// Whether a plaintext HTTP GET gets no HTTP response (in time).
async fn http_get_fails(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.ok()?;
        Some(out)
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Some(out)) => !out.starts_with(b"HTTP/1.1"),
        Ok(None) => true,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = standard_tokens(dir.path());
    let (store, _) = fresh_store("sec-limits").await;
    let mut cfg = config(&store);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.security = SecurityConfig {
        auth_tokens: Some(tokens),
        ..SecurityConfig::default()
    };
    cfg.limits.max_sessions_per_token = Some(2);
    cfg.limits.stream_idle_timeout = Some(Duration::from_millis(1500));
    cfg.limits.max_unacked_events = 1;
    cfg.limits.max_concurrent_streams = Some(2);
    let server = lambdarec_server::start(cfg).await.unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);
    let channel = plain_channel(server.local_addr()).await;
    let mut shop = with_token(channel.clone(), Some(CLIENT));

    // --max-sessions-per-token: the third session of a token is refused, by ack and by status.
    let mut stream = OpenStream::open(&mut shop).await.unwrap();
    assert!(stream.send(event("s1", 1, 1)).await.applied);
    assert!(stream.send(event("s2", 1, 2)).await.applied);
    assert!(
        stream.send(event("s1", 2, 3)).await.applied,
        "an existing session is no new one"
    );
    let refused = stream.send(event("s3", 1, 4)).await;
    assert!(!refused.applied);
    assert_eq!(refused.code(), v1::ErrorCode::SessionLimit);
    assert!(
        refused.error.contains("--max-sessions-per-token"),
        "{refused:?}"
    );
    let e = shop.recommend(recommend("s4", &[1])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-sessions-per-token"), "{e:?}");
    // A Recommend without inline events creates nothing, so it is not limited.
    shop.recommend(recommend("s5", &[])).await.unwrap();
    // Another token has its own count; a deleted session frees a place.
    let mut ops = with_token(channel.clone(), Some(ADMIN));
    ops.recommend(recommend("o1", &[1])).await.unwrap();
    let deleted = shop
        .delete_session(v1::DeleteSessionRequest {
            session_id: "s1".into(),
        })
        .await
        .unwrap();
    assert!(deleted.into_inner().existed);
    assert!(stream.send(event("s3", 1, 5)).await.applied);

    // --max-unacked-events 1: the stream still acknowledges every event, in order (it paused
    // reading while one was pending).
    for seq in 6..16 {
        let ack = stream.send(event("s2", (seq % 5) as usize, seq)).await;
        assert_eq!((ack.applied, ack.client_seq), (true, Some(seq)));
    }

    // --max-concurrent-streams 2: with two calls open on a connection a third waits for one to end.
    let mut second = OpenStream::open(&mut shop).await.unwrap();
    assert!(second.send(event("s2", 1, 100)).await.applied);
    let mut third = shop.clone();
    let waiting = tokio::spawn(async move { third.ping(v1::PingRequest {}).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a third call ran beside two open streams"
    );
    drop(second);
    let done = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    done.expect("the waiting call runs once a stream ends")
        .unwrap()
        .unwrap();

    // --stream-idle-timeout: a stream that sends nothing is ended with DEADLINE_EXCEEDED.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.acks.message()).await;
    let e = end.expect("the idle stream ends in time").unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("--stream-idle-timeout"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let metrics = http_get(server.metrics_addr().unwrap(), "/metrics").await;
    for limit in [
        "max_sessions_per_token",
        "max_unacked_events",
        "max_concurrent_streams",
        "stream_idle_timeout",
    ] {
        let series = format!("lambdarec_limit_hits_total{{limit=\"{limit}\"}}");
        assert!(sample(&metrics, &series) >= 1.0, "{series}: {metrics}");
    }
    assert!(sample(&metrics, "lambdarec_events_total{code=\"SESSION_LIMIT\"}") >= 1.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_can_require_a_token() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_response};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = fresh_store("sec-health").await;
    let mut cfg = config(&store);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.security = SecurityConfig {
        auth_tokens: Some(standard_tokens(dir.path())),
        policy: Policy {
            health: true,
            reflection: true,
            metrics: false,
        },
        ..SecurityConfig::default()
    };
    let server = lambdarec_server::start(cfg).await.unwrap();
    assert!(server.wait_ready(Duration::from_secs(30)).await);
    let channel = plain_channel(server.local_addr()).await;
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let e = health.check(check()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut authed = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(MONITOR)).unwrap(),
    );
    authed.check(check()).await.unwrap();

    let list = || {
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        tokio_stream::iter([req])
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let e = reflection.server_reflection_info(list()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut reflection =
        ServerReflectionClient::with_interceptor(channel, Bearer::new(Some(CLIENT)).unwrap());
    let mut answers = reflection
        .server_reflection_info(list())
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert!(matches!(
        answer.message_response,
        Some(server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));

    let maddr = server.metrics_addr().unwrap();
    let healthz = http_get(maddr, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 401 "), "{healthz}");
    let metrics = http_get(maddr, "/metrics").await;
    assert!(
        metrics.starts_with("HTTP/1.1 200 "),
        "metrics stay open: {metrics}"
    );
    server.shutdown().await.unwrap();
}
