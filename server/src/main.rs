//! `lambdarec`: the one binary of the system — train (batch layer) and evaluate models; serving and load
//! testing join it as subcommands.

use clap::{Parser, Subcommand};

mod commands;

// Training and scoring allocate many short-lived buffers of a few hundred KiB; glibc's malloc serves those
// with fresh mmap'd pages (page faults on every step), mimalloc recycles them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lambdarec",
    version,
    about = "Real-time session-based recommendation: train GRU4Rec on interaction logs, evaluate, serve",
    long_about = "lambdarec trains a GRU4Rec session model from interaction logs (the batch layer), writes \
                  versioned model bundles to object storage, and evaluates them against POP and item-kNN \
                  baselines with the same compute backend the server uses.\n\n\
                  Logging: set RUST_LOG (e.g. RUST_LOG=debug); default is info."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GRU4Rec model on an interaction log, evaluate it and write a bundle.
    Train(Box<commands::train::TrainArgs>),
    /// Evaluate a stored model bundle on a test log (next-item Recall@k, MRR@k, coverage, popularity).
    Eval(Box<commands::eval::EvalArgs>),
    /// Serve recommendations over gRPC: session events in, top-k and scores out, with hot model reload.
    Serve(Box<commands::serve::ServeArgs>),
    /// Load-test a server: replay a log's sessions over gRPC; latency, throughput, online Recall/MRR.
    Load(Box<commands::load::LoadArgs>),
    /// The whole loop in one command: sample data, train, evaluate, serve on loopback, replay, keep serving.
    Quickstart(Box<commands::quickstart::QuickstartArgs>),
    /// Write a random-weight model of any catalogue size and a matching session log, to load-test serving at scale.
    Synthetic(Box<commands::synthetic::SyntheticArgs>),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(*args),
        Command::Serve(args) => commands::serve::run(*args),
        Command::Load(args) => commands::load::run(*args),
        Command::Quickstart(args) => commands::quickstart::run(*args),
        Command::Synthetic(args) => commands::synthetic::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
