//! `lambdarec`: the one binary of the system — train (batch layer) and evaluate models; serving and load
//! testing join it as subcommands.

use std::io::IsTerminal;

use clap::{Parser, Subcommand, ValueEnum};

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
                  Logging goes to stderr: --log-format text (colours only on a terminal; NO_COLOR turns \
                  them off) or json (one object per line, for log shippers). The filter is LAMBDAREC_LOG \
                  (or RUST_LOG), e.g. LAMBDAREC_LOG=debug or LAMBDAREC_LOG=info,lambdarec_server=debug; \
                  default info."
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, env = "LAMBDAREC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// Logs to stderr with the filter from LAMBDAREC_LOG (else RUST_LOG, else `info`).
fn init_logging(format: LogFormat) -> Result<(), String> {
    let spec = std::env::var("LAMBDAREC_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .map_err(|e| format!("LAMBDAREC_LOG={spec:?} is not a valid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
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
    /// Copy an event log's events into the archive (<store>/events, Parquet by day) that `train --data` reads.
    Archive(Box<commands::archive::ArchiveArgs>),
    /// List a model's versions (with their gate verdicts), promote one to LATEST, roll LATEST back,
    /// or start, promote and stop a canary (CANARY).
    Models(Box<commands::models::ModelsArgs>),
    /// Make a bearer token and its line of the `serve --auth-tokens` file (which holds only its SHA-256).
    Token(commands::token::TokenArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(*args),
        Command::Serve(args) => commands::serve::run(*args),
        Command::Load(args) => commands::load::run(*args),
        Command::Quickstart(args) => commands::quickstart::run(*args),
        Command::Synthetic(args) => commands::synthetic::run(*args),
        Command::Archive(args) => commands::archive::run(*args),
        Command::Models(args) => commands::models::run(*args),
        Command::Token(args) => commands::token::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (with the global --log-format, clap builds
    /// them all at parse time, so a mistake here would panic any invocation of a debug build).
    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
