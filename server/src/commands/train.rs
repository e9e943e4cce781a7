//! `lambdarec train`: the batch layer from a log file to a model bundle in the store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lambdarec_proto::archive::Date;
use lambdarec_trainer::data::parse_date;

use lambdarec_trainer::data::PrepareOptions;
use lambdarec_trainer::model::Loss;
use lambdarec_trainer::pipeline::{TrainData, TrainJob, run_train};
use lambdarec_trainer::train::{Optimizer, TrainConfig};

use super::{EvalArgs, ReadArgs, StoreArgs, existing_file};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples (the RSC15 sample split, paper settings are the defaults; then the event \
    archive a server wrote, one week of it):\n  \
    lambdarec train --data train_full.txt --test test.txt --store ./lambdarec-store --model rsc15\n  \
    lambdarec train --data s3://bucket/lambdarec/events --since 2026-11-20 --until 2026-11-26"
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
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
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
    let job = TrainJob {
        data,
        test_path: a.test.clone(),
        read: a.read.options(),
        prepare: PrepareOptions {
            min_session_len: a.min_session_len,
            min_item_support,
            test_window: a.test_window,
        },
        config,
        eval: a.eval.options(),
        store: a.store.store.clone(),
        model_name: a.store.model.clone(),
        blend_validation: a.blend_validation.unwrap_or(a.test_window),
        trend_half_life_s: a.trend_half_life,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} events {per_sec} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let mut current_epoch = 0;
    let outcome = super::runtime()?
        .block_on(run_train(
            &job,
            |epoch, done, loss| {
                if epoch != current_epoch {
                    current_epoch = epoch;
                    bar.reset();
                    bar.set_prefix(format!("{epoch}/{}", job.config.epochs));
                }
                bar.set_position(done);
                bar.set_message(format!("loss {loss:.4}"));
            },
            |st| {
                bar.set_length(st.events);
                bar.set_position(st.events);
                bar.suspend(|| {
                    tracing::info!(
                        epoch = st.epoch,
                        loss = format!("{:.5}", st.loss),
                        events = st.events,
                        seconds = format!("{:.1}", st.seconds),
                        events_per_sec = format!("{:.0}", st.events_per_sec),
                        "epoch done"
                    )
                });
            },
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
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let eps = outcome.epochs.iter().map(|e| e.events_per_sec).sum::<f64>()
            / outcome.epochs.len() as f64;
        println!("{}", outcome.dataset.report);
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
