//! `lambdarec models`: the versions of a model in the store, and moving LATEST by hand (promote a
//! version, roll back). Servers following LATEST (`serve --poll-interval`) load the new one within a
//! poll interval; `Reload` loads it at once.

use clap::{Args, Subcommand};
use lambdarec_proto::bundle::Store;
use lambdarec_trainer::continuous::{list_versions, promote, rollback};

use super::StoreArgs;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lambdarec models list --store s3://bucket/lambdarec --model shop\n  \
    lambdarec models promote 20261129T084250938Z --model shop   # e.g. a candidate its gate rejected\n  \
    lambdarec models rollback --model shop                      # back to the previous published version")]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Every version, oldest first: size, test figures, warm start, gate verdict; `*` marks LATEST.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Point LATEST at a version (read whole and checked first).
    Promote {
        /// The version to serve.
        version: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Point LATEST back: at --to, or at the newest version older than LATEST that was published
    /// (candidates their gate rejected are skipped).
    Rollback {
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    match a.action {
        Action::List { store, json } => {
            let versions = rt.block_on(list_versions(&Store::open(&store.store)?, &store.model))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
                return Ok(());
            }
            if versions.is_empty() {
                println!("model {:?} has no versions in {}", store.model, store.store);
                return Ok(());
            }
            println!(
                "  {:<22} {:<24} {:>8} {:>6} {:>9} {:>8}  {:<22} gate",
                "version", "created", "items", "hidden", "Recall@20", "MRR@20", "warm start from"
            );
            let num = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
            for v in &versions {
                let gate = match &v.gate {
                    None => "-".to_string(),
                    Some(g) => format!(
                        "{}: {}",
                        if g.published { "published" } else { "rejected" },
                        g.reason
                    ),
                };
                println!(
                    "{} {:<22} {:<24} {:>8} {:>6} {:>9} {:>8}  {:<22} {gate}",
                    if v.latest { '*' } else { ' ' },
                    v.version,
                    v.created_at,
                    v.n_items,
                    v.hidden,
                    num(v.recall),
                    num(v.mrr),
                    v.warm_start_from.as_deref().unwrap_or("-"),
                );
            }
        }
        Action::Promote { version, store } => {
            let before =
                rt.block_on(promote(&Store::open(&store.store)?, &store.model, &version))?;
            println!(
                "LATEST of {}: {} -> {version}",
                store.model,
                before.as_deref().unwrap_or("(none)")
            );
        }
        Action::Rollback { to, store } => {
            let (from, to) = rt.block_on(rollback(
                &Store::open(&store.store)?,
                &store.model,
                to.as_deref(),
            ))?;
            println!("LATEST of {}: {from} -> {to}", store.model);
        }
    }
    Ok(())
}
