//! The subcommands of `lambdarec`, one module each, and the flags they share.

pub mod archive;
pub mod eval;
pub mod load;
pub mod models;
pub mod quickstart;
pub mod serve;
pub mod synthetic;
pub mod token;
pub mod train;

use std::path::PathBuf;

use clap::Args;
use lambdarec_trainer::data::ReadOptions;
use lambdarec_trainer::pipeline::EvalOptions;

/// How to read an interaction log (shared by train, eval and load).
#[derive(Args, Clone, Debug)]
pub struct ReadArgs {
    /// Session id column (default: recognised from the header: SessionId, session_id, session).
    #[arg(long, env = "LAMBDAREC_SESSION_COL")]
    pub session_col: Option<String>,
    /// Item id column (default: ItemId, item_id, item).
    #[arg(long, env = "LAMBDAREC_ITEM_COL")]
    pub item_col: Option<String>,
    /// Time column (default: Time, timestamp, time, eventdate); unix seconds or ISO dates.
    #[arg(long, env = "LAMBDAREC_TIME_COL")]
    pub time_col: Option<String>,
    /// User column, for logs keyed by user rather than session (default: UserId, user_id, user).
    #[arg(long, env = "LAMBDAREC_USER_COL")]
    pub user_col: Option<String>,
    /// Field delimiter of text logs: tab, comma, semicolon or one character (default: detected).
    #[arg(long, env = "LAMBDAREC_DELIMITER", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// Count and report malformed lines instead of stopping at the first one.
    #[arg(long, env = "LAMBDAREC_SKIP_BAD_LINES")]
    pub skip_bad_lines: bool,
    /// For user-keyed logs: seconds of inactivity that start a new session.
    #[arg(long, env = "LAMBDAREC_SESSION_GAP", default_value_t = 3600.0)]
    pub session_gap: f64,
}

impl ReadArgs {
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            session_col: self.session_col.clone(),
            item_col: self.item_col.clone(),
            time_col: self.time_col.clone(),
            user_col: self.user_col.clone(),
            delimiter: self.delimiter,
            skip_bad_lines: self.skip_bad_lines,
            session_gap: Some(self.session_gap),
        }
    }
}

fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        "comma" | "," => Ok(b','),
        "semicolon" | ";" => Ok(b';'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "delimiter must be tab, comma, semicolon or one ASCII character, got {s:?}"
        )),
    }
}

/// Evaluation flags (shared by train and eval). No argument group: `eval`'s own `EvalArgs` would
/// otherwise define a second group of the same name.
#[derive(Args, Clone, Debug)]
#[group(skip)]
pub struct EvalArgs {
    /// Cut-off of the ranking metrics.
    #[arg(long = "k", env = "LAMBDAREC_EVAL_K", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub k: u32,
    /// Test sessions evaluated in parallel.
    #[arg(long, env = "LAMBDAREC_EVAL_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_batch: u32,
    /// Compute threads (default: all cores).
    #[arg(long, env = "LAMBDAREC_THREADS")]
    pub threads: Option<usize>,
    /// Recent items per session the speed layer sees: the server's history length (50).
    #[arg(long, default_value_t = lambdarec_trainer::blend::DEFAULT_HISTORY as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub history: u64,
}

impl EvalArgs {
    pub fn options(&self) -> EvalOptions {
        EvalOptions {
            k: self.k as usize,
            batch: self.eval_batch as usize,
            threads: self.threads,
            history: self.history as usize,
        }
    }
}

/// Where models live.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Object store holding the bundles: a local directory, file://, memory://, s3://, gs:// or az://.
    #[arg(long, env = "LAMBDAREC_STORE", default_value = "./lambdarec-store")]
    pub store: String,
    /// Model name (bundles live under <store>/models/<name>/<version>/).
    #[arg(long, env = "LAMBDAREC_MODEL", default_value = "default")]
    pub model: String,
}

pub fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{s}: no such file"))
    }
}

/// A current-thread runtime for the object-store I/O of batch commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}
