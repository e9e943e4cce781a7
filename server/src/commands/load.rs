//! `lambdarec load`: replays a log's sessions through a running server and reports Recommend (or Score)
//! latency, throughput, errors and the online Recall/MRR (see `lambdarec_server::load`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lambdarec_proto::v1::Strategy;
use lambdarec_server::load::{
    self, ClientTls, LoadOptions, LoadReport, MAX_CANDIDATES, Mode, Workload,
};
use lambdarec_trainer::blend;

use super::{ReadArgs, existing_file};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lambdarec load --target 127.0.0.1:50051 --data test.txt                 # every session once, 16 in flight\n  \
    lambdarec load --data test.txt --rate 200 --duration 60 --plot lat.svg  # open loop, 200 sessions/s\n  \
    lambdarec load --data test.txt --mode score --candidates 1000 --duration 30  # candidate scoring\n  \
    lambdarec load --data test.txt --mode events --concurrency 256              # event ingestion only\n\n\
    Online accuracy: after each applied event the Recommend list is scored against the session's next\n\
    applied item; events acked UNKNOWN_ITEM are skipped. This scores exactly the predictions of\n\
    `lambdarec eval` on the same file (unknown items dropped, then sessions shorter than 2).\n\n\
    Score mode: after each applied event, Score with N candidates drawn from the served bundle's\n\
    catalogue by training popularity, without repeats, the session's next known item among them at a\n\
    random place. The top k by score (ties in candidate order) is scored like a Recommend list, so\n\
    Recall/MRR are over the candidates; with N at least the catalogue size they equal Recommend's.")]
pub struct LoadArgs {
    /// Server address: host:port (plaintext, or TLS with --tls-ca), http://host:port or
    /// https://host:port; loopback by default.
    #[arg(long, env = "LAMBDAREC_TARGET", default_value = "127.0.0.1:50051")]
    pub target: String,
    /// PEM CA certificate the server's certificate must chain to (turns TLS on; an https:// target
    /// without it trusts the system's roots).
    #[arg(long, env = "LAMBDAREC_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server with mutual TLS (`serve --tls-client-ca`); with --tls-key.
    #[arg(long, env = "LAMBDAREC_TLS_CLIENT_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LAMBDAREC_TLS_CLIENT_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must hold (default: the target's host).
    #[arg(long, env = "LAMBDAREC_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Bearer token sent with every call (`serve --auth-tokens`; a client or admin token).
    #[arg(long, env = "LAMBDAREC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Log whose sessions are replayed (same formats and flags as `train`/`eval`).
    #[arg(long, env = "LAMBDAREC_DATA", value_parser = existing_file)]
    pub data: PathBuf,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Open loop: new sessions per second (Poisson arrivals); latency counts from the intended send time.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: sessions in flight (the default mode, 16).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds to run, looping over the log; without it every session is replayed once.
    #[arg(long)]
    pub duration: Option<f64>,
    /// The call after each applied event: Recommend (top k of the catalogue) or Score (candidates).
    #[arg(long, value_enum, default_value_t = CallMode::Recommend)]
    pub mode: CallMode,
    /// Score mode: candidates per Score request (the next item plus items drawn by popularity).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_CANDIDATES as i64))]
    pub candidates: Option<u32>,
    /// Score mode: store to read the served bundle's catalogue from (default: the store the server
    /// reports in ModelInfo, which may be a path on the server's machine).
    #[arg(long)]
    pub store: Option<String>,
    /// Recommendation list length and metric cut-off.
    #[arg(long = "k", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub k: u32,
    /// HTTP/2 connections to the server (each carries one StreamEvents stream).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Hard limit of the whole run in seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub max_time: f64,
    /// Seed of the open-loop arrivals and of score mode's candidate draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The strategy Recommend and Score ask for: gru, knn, trending or blend. Default: the server's.
    /// The speed layer learns from every session, so online equals `eval` for knn, trending and
    /// blend only with sessions replayed one at a time: --concurrency 1 --connections 1.
    #[arg(long, value_parser = super::serve::parse_strategy)]
    pub strategy: Option<blend::Strategy>,
    /// Send each session's events on a StreamEvents call of its own instead of sharing one per
    /// connection, so that a proxy routing by session (x-session-id, sent on every call) sends all
    /// of a session's calls to one replica; see deploy/haproxy.
    #[arg(long)]
    pub route_sessions: bool,
    /// Retry a call that failed because the server (or the replica behind a proxy) went away, up to
    /// this many times with backoff; an event is re-sent with its client_seq, so it is applied once.
    /// Retried attempts are reported apart from errors. Events are retried only with
    /// --route-sessions (a shared stream that broke is gone for all its sessions).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: u32,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG of p50/p99 Recommend (or Score) latency per second to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CallMode {
    Recommend,
    Score,
    /// Events only: each event's ack latency and acks/s (the event path and its log append).
    Events,
}

/// Score mode's default candidate count.
const DEFAULT_CANDIDATES: u32 = 100;

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, got {s}"))
}

impl LoadArgs {
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        let mode = match self.rate {
            Some(rate) => Mode::Open { rate },
            None => Mode::Closed {
                concurrency: self.concurrency.unwrap_or(16),
            },
        };
        let workload = match self.mode {
            CallMode::Recommend => {
                if self.candidates.is_some() || self.store.is_some() {
                    anyhow::bail!("--candidates and --store apply to --mode score");
                }
                Workload::Recommend
            }
            CallMode::Score => Workload::Score {
                candidates: self.candidates.unwrap_or(DEFAULT_CANDIDATES) as usize,
            },
            CallMode::Events => {
                if self.candidates.is_some() || self.store.is_some() {
                    anyhow::bail!("--candidates and --store apply to --mode score");
                }
                Workload::Events
            }
        };
        let any_tls = self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_domain.is_some();
        let tls = any_tls.then(|| ClientTls {
            ca: self.tls_ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            domain: self.tls_domain.clone(),
        });
        Ok(LoadOptions {
            target: self.target.clone(),
            tls,
            token: self.token.clone(),
            data: self.data.clone(),
            read: self.read.options(),
            mode,
            workload,
            store: self.store.clone(),
            duration: self
                .duration
                .map(|d| seconds("--duration", d))
                .transpose()?,
            k: self.k as usize,
            connections: self.connections as usize,
            request_timeout: seconds("--timeout", self.timeout)?,
            max_time: seconds("--max-time", self.max_time)?,
            seed: self.seed,
            progress: true,
            strategy: match self.strategy {
                None => Strategy::Unspecified,
                Some(blend::Strategy::Gru) => Strategy::Gru,
                Some(blend::Strategy::Knn) => Strategy::Knn,
                Some(blend::Strategy::Trending) => Strategy::Trending,
                Some(blend::Strategy::Blend) => Strategy::Blend,
            },
            route_sessions: self.route_sessions,
            retries: self.retries,
            ..LoadOptions::default()
        })
    }
}

/// Prints the report as text or JSON and writes the plot if asked.
pub fn print(
    report: &LoadReport,
    json: bool,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&report.to_json())?);
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = plot {
        std::fs::write(path, load::latency_svg(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        if !json {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let opts = a.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime
        .block_on(load::run(&opts))
        .with_context(|| format!("load test of {}", opts.target))?;
    print(&report, a.json, a.plot.as_deref())
}
