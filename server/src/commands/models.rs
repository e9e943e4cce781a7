//! `lambdarec models`: the versions of a model in the store, and moving its pointers by hand:
//! promote a version to LATEST, roll back, and start, promote or stop a canary (CANARY, served
//! beside LATEST's version to a share of new sessions by servers started with
//! `serve --canary-fraction F`). Servers following the pointers (`serve --poll-interval`) see a
//! move within a poll interval; `Reload` makes them look at once.

use clap::{ArgGroup, Args, Subcommand};
use lambdarec_proto::bundle::{Pointer, Store};
use lambdarec_trainer::continuous::{
    Promotion, Rollback, list_versions, promote, rollback, start_canary, stop_canary,
};

use super::StoreArgs;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lambdarec models list --store s3://bucket/lambdarec --model shop\n  \
    lambdarec models promote 20261129T084250938Z --model shop   # e.g. a candidate its gate rejected\n  \
    lambdarec models rollback --model shop                      # back to the previous published version\n\n\
    A canary: serve a version to 5% of new sessions, then promote it or stop it:\n  \
    lambdarec serve --model shop --canary-fraction 0.05 --poll-interval 30\n  \
    lambdarec models canary 20261130T084250938Z --model shop\n  \
    lambdarec models promote --model shop                       # the canary becomes LATEST\n  \
    lambdarec models canary --stop --model shop                 # or: back to LATEST for all")]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Every version, oldest first: size, test figures, warm start, gate verdict; `*` marks
    /// LATEST and `~` the canary (CANARY).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON array on stdout (each version with "latest" and "canary" flags).
        #[arg(long)]
        json: bool,
    },
    /// Point LATEST at a version (read whole and checked first); without VERSION, at the canary,
    /// which then ends (CANARY is removed).
    Promote {
        /// The version to serve (default: the one CANARY names).
        version: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Point LATEST back: at --to, or at the newest version older than LATEST that was published
    /// (candidates their gate rejected are skipped). Without --to, a running canary is stopped
    /// instead and LATEST stays.
    Rollback {
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start or replace the canary: point CANARY at VERSION (read whole and checked first; not
    /// LATEST's), which servers started with `serve --canary-fraction F` serve to a share F of new
    /// sessions. `--stop` ends it (removes CANARY; with none running it says so and succeeds).
    #[command(group(ArgGroup::new("what").required(true).args(["version", "stop"])))]
    Canary {
        /// The version to try on a share of new sessions.
        version: Option<String>,
        /// End the canary: its sessions return to LATEST's version.
        #[arg(long)]
        stop: bool,
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
                "   {:<22} {:<24} {:>8} {:>6} {:>9} {:>8}  {:<22} gate",
                "version", "created", "items", "hidden", "Recall@20", "MRR@20", "warm start from"
            );
            let num = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
            for v in &versions {
                let gate = match &v.gate {
                    None => "-".to_string(),
                    Some(g) => format!(
                        "{}: {}",
                        match (g.published, g.published_as) {
                            (false, _) => "rejected",
                            (true, Some(Pointer::Canary)) => "published as CANARY",
                            (true, _) => "published",
                        },
                        g.reason
                    ),
                };
                println!(
                    "{}{} {:<22} {:<24} {:>8} {:>6} {:>9} {:>8}  {:<22} {gate}",
                    if v.latest { '*' } else { ' ' },
                    if v.canary { '~' } else { ' ' },
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
            let p = rt.block_on(promote(
                &Store::open(&store.store)?,
                &store.model,
                version.as_deref(),
            ))?;
            print_promotion(&store.model, &p);
        }
        Action::Rollback { to, store } => {
            match rt.block_on(rollback(
                &Store::open(&store.store)?,
                &store.model,
                to.as_deref(),
            ))? {
                Rollback::CanaryStopped { version, latest } => println!(
                    "CANARY of {}: {version} -> (none) (canary stopped; LATEST stays {})",
                    store.model,
                    latest.as_deref().unwrap_or("(none)")
                ),
                Rollback::LatestMoved(p) => print_promotion(&store.model, &p),
            }
        }
        Action::Canary {
            version: Some(version),
            store,
            ..
        } => {
            let before = rt.block_on(start_canary(
                &Store::open(&store.store)?,
                &store.model,
                &version,
            ))?;
            println!(
                "CANARY of {}: {} -> {version}",
                store.model,
                before.as_deref().unwrap_or("(none)")
            );
            println!(
                "servers serve it only if started with `serve --canary-fraction F` (a share F of \
                 new sessions); `models promote` makes it LATEST, `models canary --stop` ends it"
            );
        }
        Action::Canary {
            version: None,
            store,
            ..
        } => match rt.block_on(stop_canary(&Store::open(&store.store)?, &store.model))? {
            Some(version) => println!("CANARY of {}: {version} -> (none)", store.model),
            None => println!("model {:?} has no CANARY: nothing to stop", store.model),
        },
    }
    Ok(())
}

fn print_promotion(model: &str, p: &Promotion) {
    println!(
        "LATEST of {model}: {} -> {}",
        p.from.as_deref().unwrap_or("(none)"),
        p.to
    );
    if p.canary_ended {
        println!("CANARY of {model}: {} -> (none) (promoted)", p.to);
    }
}
