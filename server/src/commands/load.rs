//! `lambdarec load`: replays a log's sessions through a running server and reports Recommend latency,
//! throughput, errors and the online Recall/MRR (see `lambdarec_server::load`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lambdarec_server::load::{self, LoadOptions, LoadReport, Mode};

use super::{ReadArgs, existing_file};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lambdarec load --target 127.0.0.1:50051 --data test.txt                 # every session once, 16 in flight\n  \
    lambdarec load --data test.txt --rate 200 --duration 60 --plot lat.svg  # open loop, 200 sessions/s\n\n\
    Online accuracy: after each applied event the Recommend list is scored against the session's next\n\
    applied item; events acked UNKNOWN_ITEM are skipped. This scores exactly the predictions of\n\
    `lambdarec eval` on the same file (unknown items dropped, then sessions shorter than 2).")]
pub struct LoadArgs {
    /// Server address (host:port), loopback by default.
    #[arg(long, env = "LAMBDAREC_TARGET", default_value = "127.0.0.1:50051")]
    pub target: String,
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
    /// Seed of the open-loop arrivals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG of p50/p99 Recommend latency per second to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

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
        Ok(LoadOptions {
            target: self.target.clone(),
            data: self.data.clone(),
            read: self.read.options(),
            mode,
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
