//! `lambdarec synthetic`: a random-weight model of any catalogue size plus a matching session log, to
//! load-test serving at scale (see `lambdarec_server::load::synthetic`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use lambdarec_server::load::synthetic::{self, SyntheticModel};

#[derive(Args, Debug)]
#[command(
    long_about = "Write a model bundle with random weights for a catalogue of any size, and a session log \
                  over the same item ids, to load-test serving at production scale without production \
                  data. Its recommendations are meaningless (online Recall is at chance level): what a run \
                  measures is throughput, latency and memory, and whether two devices give the same answers.",
    after_help = "Example (a million items; then serve it and replay the log for 30 s):\n  \
    lambdarec synthetic --items 1000000 --hidden 128 --store ./big\n  \
    lambdarec serve --store ./big --model synthetic --device cuda &\n  \
    lambdarec load --data synthetic-sessions.tsv --duration 30"
)]
pub struct SyntheticArgs {
    /// Catalogue size.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(2..))]
    pub items: u32,
    /// GRU hidden units (the output embedding width).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub hidden: u32,
    /// Input embedding width; 0 ties the input embedding to the output embedding.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8192))]
    pub embed_dim: u32,
    /// Sessions in the log (2–20 events each, Zipf-popular items).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sessions: u64,
    /// Seed of the weights and of the log.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Object store for the bundle: a local directory, file://, memory://, s3://, gs:// or az://.
    #[arg(long, env = "LAMBDAREC_STORE", default_value = "./lambdarec-store")]
    pub store: String,
    /// Model name (the bundle becomes this model's LATEST version).
    #[arg(long, env = "LAMBDAREC_MODEL", default_value = "synthetic")]
    pub model: String,
    /// The session log to write (TSV: SessionId, ItemId, Time).
    #[arg(long, default_value = "synthetic-sessions.tsv")]
    pub log: PathBuf,
}

pub fn run(a: SyntheticArgs) -> anyhow::Result<()> {
    let spec = SyntheticModel {
        n_items: a.items as usize,
        hidden: a.hidden as usize,
        embed_dim: a.embed_dim as usize,
        sessions: a.sessions as usize,
        seed: a.seed,
        store: a.store.clone(),
        model: a.model.clone(),
        log: a.log.clone(),
    };
    let started = Instant::now();
    eprintln!(
        "writing a random-weight model ({} items, hidden {}, {}) and a {}-session log…",
        spec.n_items,
        spec.hidden,
        if spec.embed_dim == 0 {
            "tied input embedding".to_string()
        } else {
            format!("input embedding {}", spec.embed_dim)
        },
        spec.sessions
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(synthetic::write(&spec))?;
    println!(
        "wrote {}/models/{}/{} ({:.1} MB of weights) and {} ({} events) in {:.1} s",
        a.store.trim_end_matches('/'),
        a.model,
        out.version,
        out.weight_bytes as f64 / 1e6,
        a.log.display(),
        out.events,
        started.elapsed().as_secs_f64()
    );
    println!("next:");
    println!("  lambdarec serve --store {} --model {}", a.store, a.model);
    println!("  lambdarec load --data {} --duration 30", a.log.display());
    Ok(())
}
