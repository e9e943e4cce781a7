//! `lambdarec serve`: the gRPC serving layer (speed layer + recommendations) over a model bundle.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lambdarec_kernels::Dtype;
use lambdarec_server::archive::ArchiveOptions;
use lambdarec_server::security::{Policy, SecurityConfig, TlsFiles};
use lambdarec_server::{DeviceChoice, Limits, LogConfig, NewItems, ServeConfig, SpeedConfig};
use lambdarec_trainer::blend::Strategy;

use super::StoreArgs;

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  lambdarec serve --store ./lambdarec-store --model rsc15 --metrics-listen 127.0.0.1:9090"
)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "LAMBDAREC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Compute device: auto (CUDA if built in and present, else CPU), cpu, or cuda (fails if unavailable).
    #[arg(long, env = "LAMBDAREC_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Storage type of the item embedding tables: f32, bf16 or f16 (arithmetic is always f32).
    #[arg(long, env = "LAMBDAREC_DTYPE", default_value = "f32")]
    pub dtype: Dtype,
    /// CPU backend threads (default: one per core).
    #[arg(long, env = "LAMBDAREC_THREADS")]
    pub threads: Option<usize>,
    /// Session capacity (state-table slots); the least recently used session is evicted beyond it.
    #[arg(long, env = "LAMBDAREC_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,
    /// Seconds after its last use at which a session is forgotten.
    #[arg(long, env = "LAMBDAREC_SESSION_TTL", default_value_t = 1800.0)]
    pub session_ttl: f64,
    /// Most requests served by one batch of backend calls.
    #[arg(long, env = "LAMBDAREC_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// Microseconds the batcher waits for more requests after the first one of a batch.
    #[arg(long, env = "LAMBDAREC_MAX_WAIT_US", default_value_t = 200)]
    pub max_wait_us: u64,
    /// Requests queued for the batcher beyond which new ones get RESOURCE_EXHAUSTED (with retry-after-ms).
    #[arg(long, env = "LAMBDAREC_QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,
    /// Seconds between checks of the store's LATEST for a new version; 0 turns polling off.
    #[arg(long, env = "LAMBDAREC_POLL_INTERVAL", default_value_t = 30.0)]
    pub poll_interval: f64,
    /// Canary rollout: serve the version the store's CANARY pointer names (`lambdarec models
    /// canary VERSION`) to this share of new sessions, chosen by a hash of the session id, beside
    /// LATEST's version; each session stays with its version for its whole life. Promote it with
    /// `lambdarec models promote` (or Reload naming it), end it with `lambdarec models rollback`.
    /// The canary must have the serving model's hidden size. Unset: CANARY is ignored.
    #[arg(long, env = "LAMBDAREC_CANARY_FRACTION", value_name = "SHARE")]
    pub canary_fraction: Option<f64>,
    /// Address of the HTTP admin endpoint: Prometheus metrics (GET /metrics) and health (GET
    /// /healthz); not served when unset.
    #[arg(long, env = "LAMBDAREC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "LAMBDAREC_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,
    /// The event log every applied event and session delete is appended to before it is acknowledged:
    /// a directory (`file://DIR` or a path: the embedded, segmented, CRC-checked log),
    /// `nats://HOST:PORT/STREAM` (NATS JetStream, file storage), or `none` (sessions live in memory
    /// only: a crash or restart loses them).
    #[arg(
        long = "log",
        env = "LAMBDAREC_EVENT_LOG",
        default_value = "file://./lambdarec-data/log"
    )]
    pub event_log: String,
    /// Embedded log: bytes after which a segment is rolled (whole segments are deleted once they are
    /// snapshotted and archived).
    #[arg(long, env = "LAMBDAREC_LOG_SEGMENT_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_segment_bytes: u64,
    /// Directory of session snapshots; recovery restores the newest and replays only the log after
    /// it. Default: `snapshots` beside a file log's directory (./lambdarec-data/snapshots for the
    /// default log and for NATS).
    #[arg(long, env = "LAMBDAREC_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Seconds between session snapshots (taken only when events arrived since the last); 0: only at
    /// a graceful stop.
    #[arg(long, env = "LAMBDAREC_SNAPSHOT_INTERVAL", default_value_t = 60.0)]
    pub snapshot_interval: f64,
    /// Seconds between archive batches once caught up: the log's events are copied as day-partitioned
    /// Parquet into `<store>/events` (the master dataset `lambdarec train --data <store>/events`
    /// reads), and log segments are deleted only once archived. 0 turns archiving off (the log is
    /// then deleted after snapshots alone, and the batch layer never sees these events).
    #[arg(long, env = "LAMBDAREC_ARCHIVE_INTERVAL", default_value_t = 10.0)]
    pub archive_interval: f64,
    /// Most log records per archive batch (one Parquet file per day of the batch's events).
    #[arg(long, env = "LAMBDAREC_ARCHIVE_MAX_RECORDS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub archive_max_records: u64,
    /// Run as one of several replicas behind a proxy that routes calls by their `x-session-id`
    /// header (deploy/haproxy): the replicas share one event log (`--log nats://...`), and a session
    /// that moves between them (a replica dies, is drained, or joins) is caught up from that log
    /// before it is served. Replicas replay nothing at start-up, take no snapshots and do not
    /// archive (run one `lambdarec archive` for the shared log); see docs/replicas.md.
    #[arg(long, env = "LAMBDAREC_REPLICA")]
    pub replica: bool,
    /// Seconds a graceful stop (SIGTERM, ctrl-c) keeps serving after health turns NOT_SERVING,
    /// before it stops accepting calls: at least the proxy's time to mark a replica down (two
    /// health checks; 1 s with deploy/haproxy), so that no new call reaches a stopping replica.
    #[arg(long, env = "LAMBDAREC_DRAIN_GRACE", default_value_t = 0.0)]
    pub drain_grace: f64,
    /// Exactly-once window: the client_seqs remembered per session; an event re-sent with one of them
    /// is acknowledged again (duplicate = true) and not applied twice.
    #[arg(long, env = "LAMBDAREC_DEDUP_WINDOW", default_value_t = 64)]
    pub dedup_window: usize,
    #[command(flatten)]
    pub security: SecurityArgs,
    #[command(flatten)]
    pub abuse: AbuseArgs,
    #[command(flatten)]
    pub speed: SpeedArgs,
}

/// The speed layer: session-kNN, trending and new items (README, "The speed layer").
#[derive(Args, Debug)]
pub struct SpeedArgs {
    /// Sessions the live session-kNN index keeps: the bundle's training sessions, then every live
    /// session; the least recently updated one is evicted first.
    #[arg(long, env = "LAMBDAREC_KNN_SESSIONS", default_value_t = lambdarec_trainer::blend::DEFAULT_KNN_SESSIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub knn_sessions: u64,
    /// V-SKNN's neighbours: the most similar candidate sessions whose items are scored per request.
    /// Default: the bundle's (`train --knn-neighbours`; 500 if it names none). Fewer is faster and
    /// changes the answers: `lambdarec eval` then no longer predicts what is served.
    #[arg(long, env = "LAMBDAREC_KNN_NEIGHBOURS", value_parser = clap::value_parser!(u32).range(1..))]
    pub knn_neighbours: Option<u32>,
    /// V-SKNN's sample: the most recent sessions sharing an item with the request's session whose
    /// similarity is computed. Default: the bundle's (`train --knn-sample`; 5,000 if it names none).
    #[arg(long, env = "LAMBDAREC_KNN_SAMPLE", value_parser = clap::value_parser!(u32).range(1..))]
    pub knn_sample: Option<u32>,
    /// Seconds in which a trending count halves. Default: the bundle's (one hour if it names none).
    #[arg(long, env = "LAMBDAREC_TREND_HALF_LIFE")]
    pub trend_half_life: Option<f64>,
    /// What an event on an item the bundle does not know does: accept (keep it in the session,
    /// learn it in session-kNN and trending, recommend it through them) or reject (ack UNKNOWN_ITEM).
    #[arg(long, env = "LAMBDAREC_NEW_ITEMS", default_value = "accept")]
    pub new_items: NewItems,
    /// Most new items held at once (until a bundle that knows them is served); events on further
    /// ones are acked NEW_ITEM_REJECTED.
    #[arg(long, env = "LAMBDAREC_MAX_NEW_ITEMS", default_value_t = 100_000)]
    pub max_new_items: usize,
    /// The strategy of requests that name none: gru, knn, trending or blend. Default: blend when the
    /// bundle has blend weights, else gru.
    #[arg(long, env = "LAMBDAREC_STRATEGY", value_parser = parse_strategy)]
    pub strategy: Option<Strategy>,
}

/// `gru`, `knn`, `trending` or `blend`.
pub fn parse_strategy(s: &str) -> Result<Strategy, String> {
    match s.to_ascii_lowercase().as_str() {
        "gru" => Ok(Strategy::Gru),
        "knn" => Ok(Strategy::Knn),
        "trending" => Ok(Strategy::Trending),
        "blend" => Ok(Strategy::Blend),
        other => Err(format!(
            "unknown strategy {other:?} (expected gru, knn, trending or blend)"
        )),
    }
}

impl SpeedArgs {
    pub fn config(&self) -> anyhow::Result<SpeedConfig> {
        let half_life = match self.trend_half_life {
            Some(h) if h > 0.0 => Some(seconds("--trend-half-life", h)?),
            Some(h) => {
                anyhow::bail!("--trend-half-life must be a positive number of seconds, got {h}")
            }
            None => None,
        };
        Ok(SpeedConfig {
            knn: lambdarec_trainer::pipeline::KnnServing {
                sessions: self.knn_sessions as usize,
                neighbours: self.knn_neighbours.map(|n| n as usize),
                sample: self.knn_sample.map(|n| n as usize),
            },
            trend_half_life: half_life,
            new_items: self.new_items,
            max_new_items: self.max_new_items,
            default_strategy: self.strategy,
            ..SpeedConfig::default()
        })
    }
}

/// TLS and tokens (README, "Security").
#[derive(Args, Debug)]
pub struct SecurityArgs {
    /// PEM certificate chain (leaf first) for TLS on the gRPC port and the metrics endpoint;
    /// with --tls-key. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "LAMBDAREC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LAMBDAREC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate issued by one (mutual TLS, on both
    /// listeners).
    #[arg(long, env = "LAMBDAREC_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens file: one `<role> <sha256-hex of the token> [name]` line per token, roles
    /// client, admin, monitor (`lambdarec token` makes lines). Without it every call is allowed.
    #[arg(long, env = "LAMBDAREC_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// grpc.health.v1 and GET /healthz need a token (any role) too.
    #[arg(long, env = "LAMBDAREC_AUTH_HEALTH", requires = "auth_tokens")]
    pub auth_health: bool,
    /// Server reflection needs a token (any role) too.
    #[arg(long, env = "LAMBDAREC_AUTH_REFLECTION", requires = "auth_tokens")]
    pub auth_reflection: bool,
    /// GET /metrics needs a monitor or admin token.
    #[arg(long, env = "LAMBDAREC_AUTH_METRICS", requires = "auth_tokens")]
    pub auth_metrics: bool,
    /// Seconds between checks of the TLS and token files for changes (reloaded when changed); 0:
    /// only on SIGHUP.
    #[arg(
        long,
        env = "LAMBDAREC_SECURITY_WATCH_INTERVAL",
        default_value_t = 10.0
    )]
    pub security_watch_interval: f64,
}

/// Resource limits that hold against a misbehaving or hostile client (README, "Security").
#[derive(Args, Debug)]
pub struct AbuseArgs {
    /// Calls one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// further calls wait in the client. 0: no limit.
    #[arg(long, env = "LAMBDAREC_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,
    /// Events one StreamEvents call may have unacknowledged; beyond it the server stops reading the
    /// stream until acks go out (back-pressure).
    #[arg(long, env = "LAMBDAREC_MAX_UNACKED_EVENTS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unacked_events: u64,
    /// Seconds a StreamEvents call may go without a message (or without reading its acks) before it
    /// is ended with DEADLINE_EXCEEDED. 0: never.
    #[arg(long, env = "LAMBDAREC_STREAM_IDLE_TIMEOUT", default_value_t = 300.0)]
    pub stream_idle_timeout: f64,
    /// Live sessions one token may have created; an event that would create one more is refused
    /// (ack SESSION_LIMIT; Recommend with inline events: RESOURCE_EXHAUSTED). 0: no limit.
    #[arg(long, env = "LAMBDAREC_MAX_SESSIONS_PER_TOKEN", default_value_t = 0)]
    pub max_sessions_per_token: usize,
}

impl SecurityArgs {
    pub fn config(&self) -> anyhow::Result<SecurityConfig> {
        let watch = seconds("--security-watch-interval", self.security_watch_interval)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        Ok(SecurityConfig {
            tls,
            auth_tokens: self.auth_tokens.clone(),
            policy: Policy {
                health: self.auth_health,
                reflection: self.auth_reflection,
                metrics: self.auth_metrics,
            },
            watch_interval: (!watch.is_zero()).then_some(watch),
        })
    }
}

/// Where snapshots go when `--snapshot-dir` is not given: beside a file log, else the data directory.
fn default_snapshot_dir(log: &str) -> PathBuf {
    let dir = log.strip_prefix("file://").unwrap_or(log);
    let is_file_log = !log.contains("://") || log.starts_with("file://");
    match Path::new(dir).parent() {
        Some(parent) if is_file_log && !parent.as_os_str().is_empty() => parent.join("snapshots"),
        _ => PathBuf::from("./lambdarec-data/snapshots"),
    }
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{flag} must be a non-negative number of seconds, got {s}"))
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<ServeConfig> {
        let poll = seconds("--poll-interval", self.poll_interval)?;
        if let Some(f) = self.canary_fraction
            && !(f > 0.0 && f < 1.0)
        {
            anyhow::bail!(
                "--canary-fraction is the share of new sessions the canary serves: above 0 and \
                 below 1 (e.g. 0.1), got {f}"
            );
        }
        let snapshot_every = seconds("--snapshot-interval", self.snapshot_interval)?;
        let archive_every = seconds("--archive-interval", self.archive_interval)?;
        let a = &self.abuse;
        let idle = seconds("--stream-idle-timeout", a.stream_idle_timeout)?;
        if a.max_sessions_per_token > 0 && self.security.auth_tokens.is_none() {
            anyhow::bail!(
                "--max-sessions-per-token counts sessions per bearer token: it needs --auth-tokens"
            );
        }
        let log = match self.event_log.as_str() {
            "none" => LogConfig::None,
            url => LogConfig::Url(url.to_string()),
        };
        if self.replica && !self.event_log.starts_with("nats://") {
            anyhow::bail!(
                "--replica needs the event log the replicas share: --log nats://HOST:PORT/STREAM, \
                 not {:?}",
                self.event_log
            );
        }
        let snapshot_dir = match &log {
            LogConfig::None => None,
            _ => Some(
                self.snapshot_dir
                    .clone()
                    .unwrap_or_else(|| default_snapshot_dir(&self.event_log)),
            ),
        };
        Ok(ServeConfig {
            listen: self.listen,
            store: self.store.store.clone(),
            model: self.store.model.clone(),
            device: self.device,
            dtype: self.dtype,
            threads: self.threads,
            max_sessions: self.max_sessions,
            session_ttl: seconds("--session-ttl", self.session_ttl)?,
            max_batch: self.max_batch,
            max_wait: Duration::from_micros(self.max_wait_us),
            queue_capacity: self.queue_capacity,
            poll_interval: (!poll.is_zero()).then_some(poll),
            canary_fraction: self.canary_fraction,
            metrics_listen: self.metrics_listen,
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                dedup_window: self.dedup_window,
                max_concurrent_streams: (a.max_concurrent_streams > 0)
                    .then_some(a.max_concurrent_streams),
                max_unacked_events: a.max_unacked_events as usize,
                stream_idle_timeout: (!idle.is_zero()).then_some(idle),
                max_sessions_per_token: (a.max_sessions_per_token > 0)
                    .then_some(a.max_sessions_per_token),
                ..Limits::default()
            },
            log,
            log_segment_bytes: self.log_segment_bytes,
            snapshot_dir,
            replica: self.replica,
            drain_grace: seconds("--drain-grace", self.drain_grace)?,
            snapshot_interval: (!snapshot_every.is_zero()).then_some(snapshot_every),
            archive: (!archive_every.is_zero() && !self.replica).then_some(ArchiveOptions {
                max_records: self.archive_max_records as usize,
                interval: archive_every,
            }),
            security: self.security.config()?,
            speed: self.speed.config()?,
        })
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let config = a.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = lambdarec_server::start(config)
            .await
            .context("starting the server")?;
        server.run_until_signal().await.context("serving")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_default_beside_a_file_log() {
        let d = |log| default_snapshot_dir(log);
        assert_eq!(
            d("file://./lambdarec-data/log"),
            PathBuf::from("./lambdarec-data/snapshots")
        );
        assert_eq!(d("/srv/lr/log"), PathBuf::from("/srv/lr/snapshots"));
        assert_eq!(
            d("nats://h:4222/S"),
            PathBuf::from("./lambdarec-data/snapshots")
        );
        assert_eq!(d("log"), PathBuf::from("./lambdarec-data/snapshots"));
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| c.serve)
    }

    #[test]
    fn security_and_limit_flags_reach_the_config() {
        let a = parse(&[
            "--auth-tokens",
            "tokens",
            "--auth-metrics",
            "--max-sessions-per-token",
            "5",
            "--stream-idle-timeout",
            "0",
            "--max-concurrent-streams",
            "0",
            "--max-unacked-events",
            "7",
        ])
        .unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.security.auth_tokens, Some(PathBuf::from("tokens")));
        assert!(c.security.policy.metrics && !c.security.policy.health);
        let l = &c.limits;
        assert_eq!(l.max_sessions_per_token, Some(5));
        assert_eq!(
            (l.stream_idle_timeout, l.max_concurrent_streams),
            (None, None)
        );
        assert_eq!(l.max_unacked_events, 7);
        let defaults = parse(&[]).unwrap().config().unwrap();
        assert!(defaults.security.tls.is_none() && defaults.security.auth_tokens.is_none());
        assert_eq!(defaults.limits.max_concurrent_streams, Some(1024));

        let e = parse(&["--max-sessions-per-token", "5"])
            .unwrap()
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("needs --auth-tokens"), "{e}");
        for bad in [
            &["--auth-metrics"][..],
            &["--tls-cert", "c.pem"],
            &["--tls-client-ca", "ca.pem"],
            &["--max-unacked-events", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
