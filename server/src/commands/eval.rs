//! `lambdarec eval`: the offline evaluation of a stored bundle, the same numbers `train` reports.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use lambdarec_trainer::pipeline::{EvalJob, run_eval};

use super::{ReadArgs, StoreArgs, existing_file};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Test log (same formats as `train`); events on items the model does not know are dropped.
    #[arg(long, env = "LAMBDAREC_DATA", value_parser = existing_file)]
    pub data: PathBuf,
    /// Training log, to also report the item-kNN baseline (POP comes from the bundle).
    #[arg(long, value_parser = existing_file)]
    pub train: Option<PathBuf>,
    /// Bundle version (default: the one LATEST names).
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Sessions shorter than this (after dropping unknown items) are skipped.
    #[arg(long, default_value_t = 2)]
    pub min_session_len: usize,
    #[command(flatten)]
    pub eval: super::EvalArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let job = EvalJob {
        store: a.store.store.clone(),
        model: a.store.model.clone(),
        version: a.version.clone(),
        test_path: a.data.clone(),
        train_path: a.train.clone(),
        read: a.read.options(),
        min_session_len: a.min_session_len,
        eval: a.eval.options(),
    };
    let (loaded, ev, report) = super::runtime()?
        .block_on(run_eval(&job))
        .with_context(|| format!("evaluating model {:?} of {}", job.model, job.store))?;
    let m = &loaded.bundle.manifest;
    if a.json {
        let mut v = ev.to_json();
        v["model"] = m.name.clone().into();
        v["version"] = m.version.clone().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{report}");
        println!(
            "model {} version {} ({} items, hidden {})",
            m.name, m.version, m.dims.n_items, m.dims.hidden
        );
        print!("{}", ev.table());
    }
    Ok(())
}
