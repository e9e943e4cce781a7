//! `lambdarec train`: the batch layer from a log file to a model bundle in the store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lambdarec_proto::archive::Date;
use lambdarec_proto::bundle::Pointer;
use lambdarec_trainer::data::parse_date;

use lambdarec_trainer::continuous::{
    CycleOptions, CycleReport, Decision, parse_duration, run_cycle,
};
use lambdarec_trainer::data::PrepareOptions;
use lambdarec_trainer::model::Loss;
use lambdarec_trainer::pipeline::{TrainData, TrainJob, WarmStartFrom, run_train};
use lambdarec_trainer::train::EpochStats;
use lambdarec_trainer::train::{Optimizer, TrainConfig};

use super::{EvalArgs, ReadArgs, StoreArgs, existing_file};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples (the RSC15 sample split, paper settings are the defaults; then the event \
    archive a server wrote, one week of it):\n  \
    lambdarec train --data train_full.txt --test test.txt --store ./lambdarec-store --model rsc15\n  \
    lambdarec train --data s3://bucket/lambdarec/events --since 2026-11-20 --until 2026-11-26\n\n\
    Continuous training: every hour, retrain on the archive's last 30 days, warm-started from \
    LATEST, and publish only a candidate that is not worse than the serving version on held-out \
    sessions of the most recent day (a rejected candidate is kept under its version, LATEST \
    stays); the second publishes as the canary instead, for `lambdarec models promote` later:\n  \
    lambdarec train --data ./lambdarec-store/events --follow --every 1h --window 30d\n  \
    lambdarec train --data ./lambdarec-store/events --follow --every 1h --publish canary"
)]
pub struct TrainArgs {
    /// What to train on: an interaction log file (TSV/CSV/semicolon text with a header row, or
    /// Parquet), or the event archive `lambdarec archive` writes (`<store>/events`: a local
    /// directory or an object-store URL such as s3://bucket/prefix/events).
    /// Default: the built-in synthetic sample, so that `lambdarec train` alone shows the whole loop.
    #[arg(long, env = "LAMBDAREC_DATA")]
    pub data: Option<String>,
    /// First UTC day (YYYY-MM-DD, inclusive) of the archive to train on (by event time).
    #[arg(long, env = "LAMBDAREC_SINCE", value_parser = parse_date, requires = "data")]
    pub since: Option<Date>,
    /// Last UTC day (YYYY-MM-DD, inclusive) of the archive to train on.
    #[arg(long, env = "LAMBDAREC_UNTIL", value_parser = parse_date, requires = "data")]
    pub until: Option<Date>,
    /// Explicit test log; without it the sessions ending in the last --test-window seconds are the test set.
    #[arg(long, env = "LAMBDAREC_TEST", value_parser = existing_file, requires = "data")]
    pub test: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Sessions shorter than this are dropped.
    #[arg(long, default_value_t = 2)]
    pub min_session_len: usize,
    /// Items with fewer training events are dropped (repeated with the session rule until stable).
    /// Default: 5, or 1 with --test (a given split is taken as already prepared).
    #[arg(long)]
    pub min_item_support: Option<usize>,
    /// Seconds at the end of the log whose sessions form the test set (without --test).
    #[arg(long, default_value_t = 86_400.0)]
    pub test_window: f64,
    /// Seconds at the end of the training data held out to fit the weight of the GRU/session-kNN
    /// blend the server uses (a second GRU is trained without them first, so training takes about
    /// twice as long). Default: --test-window's value, so validation mirrors the test split. 0 skips
    /// the fit, and the bundle serves the GRU alone.
    #[arg(long, value_name = "SECONDS")]
    pub blend_validation: Option<f64>,
    /// Seconds in which a trending count halves; stored in the bundle for the server (which
    /// --trend-half-life on `serve` overrides) and used by the blend fit.
    #[arg(long, value_name = "SECONDS", default_value_t = lambdarec_trainer::blend::DEFAULT_TREND_HALF_LIFE_S)]
    pub trend_half_life: f64,
    /// V-SKNN's neighbours: the most similar candidate sessions whose items are scored per request.
    /// The blend is fit with it and the bundle records it for the server. The default is
    /// session-rec's RSC15 optimum; fewer serve faster (benches/RESULTS.md has the trade-off).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub knn_neighbours: u32,
    /// V-SKNN's sample: the most recent sessions sharing an item with the session whose similarity
    /// is computed. Recorded in the bundle like --knn-neighbours.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub knn_sample: u32,
    /// GRU hidden units.
    #[arg(long, default_value_t = 100)]
    pub hidden: usize,
    /// Input embedding width; 0 ties the input embedding to the output embedding.
    #[arg(long, default_value_t = 0)]
    pub embed_dim: usize,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Sessions trained in parallel (session-parallel mini-batch).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long = "lr", default_value_t = 0.2)]
    pub learning_rate: f32,
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    /// adagrad or adam.
    #[arg(long, default_value = "adagrad")]
    pub optimizer: Optimizer,
    /// cross-entropy or bpr-max.
    #[arg(long, default_value = "cross-entropy")]
    pub loss: Loss,
    #[arg(long, default_value_t = 0.4)]
    pub dropout_hidden: f32,
    #[arg(long, default_value_t = 0.0)]
    pub dropout_embed: f32,
    /// Extra negatives per mini-batch, sampled ∝ popularity^sample-alpha (besides the in-batch ones).
    #[arg(long, default_value_t = 2048)]
    pub n_sample: usize,
    #[arg(long, default_value_t = 0.5)]
    pub sample_alpha: f32,
    /// Weight of the log-Q correction of the sampled softmax (cross-entropy).
    #[arg(long, default_value_t = 1.0)]
    pub logq: f32,
    /// Score regularisation of BPR-max.
    #[arg(long, default_value_t = 0.0)]
    pub bpreg: f32,
    /// Random seed: the same seed, data and flags give the same bundle.
    #[arg(long, env = "LAMBDAREC_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Threads of the training loop (default: up to 2, which splits the output layer over two cores;
    /// on a busy machine 1 can be faster). The result does not depend on it.
    #[arg(long, env = "LAMBDAREC_TRAIN_THREADS")]
    pub train_threads: Option<usize>,
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Print the result as one JSON object on stdout (with --follow: one line per cycle).
    #[arg(long)]
    pub json: bool,
    /// Where the weights start: `latest` (the version LATEST names; from scratch if there is
    /// none), a version, or `none`. A warm start keeps the trained rows of items still in the
    /// catalogue, gives new items fresh rows, drops retired ones, and keeps the blend weights
    /// (see --refit-blend); it needs the same --hidden and --embed-dim. Default: none, or latest
    /// with --follow.
    #[arg(long, env = "LAMBDAREC_WARM_START", value_name = "latest|VERSION|none")]
    pub warm_start: Option<WarmStartFrom>,
    /// With a warm start: fit the blend weights again instead of keeping the previous version's.
    #[arg(long)]
    pub refit_blend: bool,
    /// With a warm start: multiply the previous weights by this before training on (the shrink
    /// of shrink-and-perturb; 1 keeps them as they are). Halving them lets the warm model learn
    /// on rather than stay where the previous training settled.
    #[arg(long, default_value_t = lambdarec_trainer::pipeline::DEFAULT_WARM_SHRINK)]
    pub warm_shrink: f32,
    /// Evaluate the GRU on the test set after every epoch (a learning curve, in the log and in
    /// the manifest's training.epochs).
    #[arg(long)]
    pub eval_every_epoch: bool,
    /// Share of the sessions ending in the test window that are held out for testing (chosen by
    /// a hash of the session id; the rest train). Default: 1, or 0.5 with --follow, so that a
    /// published model knows the items first seen on the most recent day.
    #[arg(long, value_name = "FRACTION")]
    pub holdout_fraction: Option<f64>,
    /// Continuous training: run a cycle now and then every --every: read the last --window of
    /// the archive --data names, train warm-started from LATEST, and publish (move LATEST) only
    /// if the candidate passes the gate. Stop with Ctrl-C (between cycles) or --cycles.
    #[arg(long, requires = "data", conflicts_with_all = ["test", "until"])]
    pub follow: bool,
    /// Time from the start of one cycle to the start of the next: 30d, 1h, 15m, 90s.
    #[arg(long, default_value = "1h", value_parser = parse_duration, requires = "follow")]
    pub every: f64,
    /// Days of the archive each cycle trains on, ending with the newest day it holds (30d; a
    /// duration is rounded up to whole days, the archive's partitions).
    #[arg(long, default_value = "30d", value_parser = parse_duration, requires = "follow")]
    pub window: f64,
    /// Stop after this many cycles (default: run until stopped).
    #[arg(long, requires = "follow", value_parser = clap::value_parser!(u64).range(1..))]
    pub cycles: Option<u64>,
    /// The gate: a candidate whose Recall@k or MRR@k on the held-out sessions is below the
    /// serving version's by more than this fraction of it is rejected (0.01 = 1% worse).
    #[arg(long, default_value_t = 0.01, requires = "follow")]
    pub gate_margin: f64,
    /// Where a candidate that passes the gate goes: `latest` (every server serves it) or `canary`
    /// (CANARY: servers started with `serve --canary-fraction F` serve it to a share F of new
    /// sessions beside LATEST's version, until `lambdarec models promote` or
    /// `models canary --stop`; a later passing candidate replaces it). With nothing serving yet,
    /// a passing candidate becomes LATEST either way.
    #[arg(
        long,
        value_name = "latest|canary",
        default_value = "latest",
        requires = "follow"
    )]
    pub publish: Pointer,
}

/// `--data` as a training source, refusing flags that do not apply to it.
fn train_data(a: &TrainArgs) -> anyhow::Result<TrainData> {
    let Some(arg) = &a.data else {
        return Ok(TrainData::Synthetic);
    };
    let data = TrainData::from_arg(arg, a.since, a.until).map_err(anyhow::Error::msg)?;
    let r = &a.read;
    let file_flags = [&r.session_col, &r.item_col, &r.time_col, &r.user_col];
    if matches!(data, TrainData::Archive(_))
        && (file_flags.iter().any(|f| f.is_some()) || r.delimiter.is_some())
    {
        anyhow::bail!(
            "--session-col, --item-col, --time-col, --user-col and --delimiter describe a log \
             file; {arg} is read as an event archive, whose columns are fixed"
        );
    }
    Ok(data)
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let data = train_data(&a)?;
    if !(a.trend_half_life > 0.0 && a.trend_half_life.is_finite()) {
        anyhow::bail!(
            "--trend-half-life {}: give a positive number of seconds",
            a.trend_half_life
        );
    }
    if !(a.warm_shrink > 0.0 && a.warm_shrink <= 1.0) {
        anyhow::bail!(
            "--warm-shrink {}: give a factor in (0, 1] (1 keeps the previous weights as they are)",
            a.warm_shrink
        );
    }
    if let Some(w) = a.blend_validation
        && !(w.is_finite() && w >= 0.0)
    {
        anyhow::bail!("--blend-validation {w}: give a number of seconds, 0 or more");
    }
    let config = TrainConfig {
        hidden: a.hidden,
        embed_dim: a.embed_dim,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.learning_rate,
        momentum: a.momentum,
        optimizer: a.optimizer,
        loss: a.loss,
        dropout_hidden: a.dropout_hidden,
        dropout_embed: a.dropout_embed,
        n_sample: a.n_sample,
        sample_alpha: a.sample_alpha,
        logq: a.logq,
        bpreg: a.bpreg,
        seed: a.seed,
        threads: a.train_threads,
    };
    let min_item_support = a
        .min_item_support
        .unwrap_or(if a.test.is_some() { 1 } else { 5 });
    let test_fraction = a
        .holdout_fraction
        .unwrap_or(if a.follow { 0.5 } else { 1.0 });
    if !(test_fraction > 0.0 && test_fraction <= 1.0) {
        anyhow::bail!("--holdout-fraction {test_fraction}: give a fraction in (0, 1]");
    }
    if a.holdout_fraction.is_some() && a.test.is_some() {
        anyhow::bail!(
            "--holdout-fraction splits the test window of --data; --test gives the test set"
        );
    }
    let job = TrainJob {
        data,
        test_path: a.test.clone(),
        read: a.read.options(),
        prepare: PrepareOptions {
            min_session_len: a.min_session_len,
            min_item_support,
            test_window: a.test_window,
            test_fraction,
        },
        config,
        eval: a.eval.options(),
        store: a.store.store.clone(),
        model_name: a.store.model.clone(),
        blend_validation: a.blend_validation.unwrap_or(a.test_window),
        trend_half_life_s: a.trend_half_life,
        knn_neighbours: a.knn_neighbours,
        knn_sample: a.knn_sample,
        warm_start: a.warm_start.clone().unwrap_or(if a.follow {
            WarmStartFrom::Latest
        } else {
            WarmStartFrom::Cold
        }),
        refit_blend: a.refit_blend,
        warm_shrink: a.warm_shrink,
        eval_each_epoch: a.eval_every_epoch,
    };
    if a.follow {
        return follow(&a, job);
    }
    let bar = epoch_bar();
    let mut current_epoch = 0;
    let outcome = super::runtime()?
        .block_on(run_train(
            &job,
            |epoch, done, loss| {
                show_progress(
                    &bar,
                    &mut current_epoch,
                    job.config.epochs,
                    epoch,
                    done,
                    loss,
                )
            },
            |st| show_epoch(&bar, st),
        ))
        .with_context(|| format!("training on {}", job.data))?;
    bar.finish_and_clear();
    let ev = &outcome.evaluation;
    if a.json {
        let mut v = ev.to_json();
        v["version"] = outcome.version.clone().into();
        v["model"] = job.model_name.clone().into();
        v["store"] = job.store.clone().into();
        v["data_fingerprint"] = outcome.dataset.fingerprint().into();
        v["epochs"] = serde_json::to_value(&outcome.epochs)?;
        if let Some((from, how)) = &outcome.warm_start {
            v["warm_start"] = serde_json::json!({ "from": from, "items": how });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let eps = outcome.epochs.iter().map(|e| e.events_per_sec).sum::<f64>()
            / outcome.epochs.len() as f64;
        println!("{}", outcome.dataset.report);
        if let Some((from, how)) = &outcome.warm_start {
            println!(
                "warm start from {from}: {} items kept their weights, {} new, {} retired",
                how.reused, how.new, how.retired
            );
        }
        println!(
            "trained {} epochs, {:.0} events/s on average",
            outcome.epochs.len(),
            eps
        );
        print!("{}", ev.table());
        println!(
            "wrote {}/models/{}/{} (LATEST)",
            job.store, job.model_name, outcome.version
        );
    }
    Ok(())
}

fn epoch_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} events {per_sec} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

fn show_progress(
    bar: &ProgressBar,
    current_epoch: &mut usize,
    epochs: usize,
    epoch: usize,
    done: u64,
    loss: f64,
) {
    if epoch != *current_epoch {
        *current_epoch = epoch;
        bar.reset();
        bar.set_prefix(format!("{epoch}/{epochs}"));
    }
    bar.set_position(done);
    bar.set_message(format!("loss {loss:.4}"));
}

fn show_epoch(bar: &ProgressBar, st: &EpochStats) {
    bar.set_length(st.events);
    bar.set_position(st.events);
    bar.suspend(|| {
        tracing::info!(
            epoch = st.epoch,
            loss = format!("{:.5}", st.loss),
            events = st.events,
            seconds = format!("{:.1}", st.seconds),
            events_per_sec = format!("{:.0}", st.events_per_sec),
            test_recall = st.test_recall.map(|r| format!("{r:.4}")),
            test_mrr = st.test_mrr.map(|r| format!("{r:.4}")),
            "epoch done"
        )
    });
}

/// `train --follow`: cycles until Ctrl-C or --cycles. A failed cycle is logged and retried at the
/// next one (the archive or store may be briefly unreachable), except a configuration error.
fn follow(a: &TrainArgs, job: TrainJob) -> anyhow::Result<()> {
    if !(a.gate_margin.is_finite() && (0.0..1.0).contains(&a.gate_margin)) {
        anyhow::bail!(
            "--gate-margin {}: give a fraction in [0, 1) (0.01 = 1% worse)",
            a.gate_margin
        );
    }
    if !matches!(job.data, TrainData::Archive(_)) {
        anyhow::bail!(
            "--follow trains on the event archive (<store>/events); {} is a log file",
            job.data
        );
    }
    let opts = CycleOptions {
        window_days: (a.window / 86_400.0).ceil() as u32,
        margin: a.gate_margin,
        publish: a.publish,
        job,
    };
    let rt = super::runtime()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop.clone();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let waker = wake.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("stopping after this cycle (Ctrl-C again to stop now)");
            stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            waker.notify_one();
            if tokio::signal::ctrl_c().await.is_ok() {
                // A bundle is visible only once complete, so stopping mid-cycle loses nothing.
                std::process::exit(130);
            }
        }
    });
    let every = std::time::Duration::from_secs_f64(a.every);
    let mut cycle = 0u64;
    tracing::info!(
        data = %opts.job.data,
        every_s = a.every,
        window_days = opts.window_days,
        margin = opts.margin,
        publish = %opts.publish,
        "continuous training: a cycle now, then every {every:?}"
    );
    loop {
        cycle += 1;
        let started = std::time::Instant::now();
        let bar = epoch_bar();
        let mut current_epoch = 0;
        let epochs = opts.job.config.epochs;
        let result = rt.block_on(run_cycle(
            &opts,
            |epoch, done, loss| show_progress(&bar, &mut current_epoch, epochs, epoch, done, loss),
            |st| show_epoch(&bar, st),
        ));
        bar.finish_and_clear();
        match result {
            Ok(report) => print_cycle(cycle, &report, a.json)?,
            Err(e @ lambdarec_trainer::TrainError::Config(_)) => {
                return Err(anyhow::Error::new(e).context(format!("cycle {cycle}")));
            }
            Err(e) => tracing::error!(
                cycle,
                error = format!("{e:#}"),
                "cycle failed; trying again at the next one"
            ),
        }
        if a.cycles.is_some_and(|n| cycle >= n) || stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let next = started + every;
        tracing::info!(
            in_s = format!(
                "{:.0}",
                next.saturating_duration_since(std::time::Instant::now())
                    .as_secs_f64()
            ),
            "next cycle"
        );
        rt.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = wake.notified() => {}
            }
        });
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
    }
}

fn print_cycle(cycle: u64, r: &CycleReport, json: bool) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(r)?;
        v["cycle"] = cycle.into();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let what = match r.decision {
        Decision::Published => match r.gate.as_ref().and_then(|g| g.published_as) {
            Some(Pointer::Canary) => "published as CANARY",
            _ => "published",
        },
        Decision::Rejected => "rejected",
        Decision::Skipped => "skipped",
    };
    println!(
        "cycle {cycle} ({}, {:.0} s): {what}{}: {}",
        r.range,
        r.seconds,
        r.version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        r.reason
    );
    if let Some(g) = &r.gate {
        let row = |name: &str, arm: &lambdarec_proto::bundle::GateArm| {
            println!(
                "  {name:<28} {:<6} Recall@{k} {:.4}  MRR@{k} {:.4}",
                arm.strategy,
                arm.recall,
                arm.mrr,
                k = g.k
            )
        };
        row(
            &format!("candidate {}", r.version.as_deref().unwrap_or("")),
            &g.candidate,
        );
        if let (Some(s), Some(v)) = (&g.serving, &g.serving_version) {
            row(&format!("serving {v}"), s);
        }
    }
    Ok(())
}
