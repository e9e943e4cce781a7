//! The whole loop on one machine, for `lambdarec quickstart`: sample data (or a given log) → train and
//! evaluate offline → write the bundle to a local store → serve on loopback → replay the test
//! sessions through gRPC with the load harness, printing each step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate, write_tsv};
use lambdarec_trainer::data::{ReadOptions, Sessions};
use lambdarec_trainer::pipeline::{TrainJob, run_train};
use lambdarec_trainer::train::TrainConfig;

use super::{LoadOptions, LoadReport, Mode, Replay, ReplaySession};
use crate::archive::ArchiveOptions;
use crate::{DeviceChoice, LogConfig, RunningServer, ServeConfig};

/// What `quickstart` does; the defaults are the command's.
#[derive(Clone, Debug)]
pub struct QuickstartOptions {
    /// A real log; None: the built-in synthetic sample.
    pub data: Option<PathBuf>,
    pub read: ReadOptions,
    /// The sample generated when `data` is None.
    pub synthetic: SyntheticOptions,
    pub config: TrainConfig,
    /// Local directory of the model store (the sample and test sessions are written there too; the
    /// event log's archive goes to `<store>/events`).
    pub store: PathBuf,
    /// Where the embedded event log (`<dir>/log`) and session snapshots (`<dir>/snapshots`) live;
    /// None: no event log (sessions in memory only).
    pub data_dir: Option<PathBuf>,
    pub model: String,
    pub listen: SocketAddr,
    pub device: DeviceChoice,
    /// Closed-loop sessions in flight for the replay. At 1 (the default) the sessions reach the server
    /// in the evaluator's order, so the served blend's online figures equal its offline ones; more
    /// reorder what the speed layer learns from.
    pub concurrency: usize,
    /// Print the steps on stdout.
    pub verbose: bool,
}

impl Default for QuickstartOptions {
    fn default() -> Self {
        QuickstartOptions {
            data: None,
            read: ReadOptions::default(),
            synthetic: SyntheticOptions::default(),
            config: TrainConfig::default(),
            store: PathBuf::from("./lambdarec-store"),
            data_dir: Some(PathBuf::from("./lambdarec-data")),
            model: "quickstart".to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            device: DeviceChoice::Auto,
            concurrency: 1,
            verbose: true,
        }
    }
}

/// A quickstart that ran: the server is still serving.
pub struct Quickstart {
    pub server: RunningServer,
    pub version: String,
    /// The offline evaluation (model and baselines) as `lambdarec train` prints it.
    pub offline: lambdarec_trainer::pipeline::Evaluation,
    pub online: LoadReport,
    /// The test sessions replayed (TSV, known items only).
    pub test_path: PathBuf,
}

macro_rules! say {
    ($o:expr, $($t:tt)*) => { if $o.verbose { println!($($t)*) } };
}

/// Runs the four steps and returns with the server still serving.
pub async fn run(opts: &QuickstartOptions) -> anyhow::Result<Quickstart> {
    std::fs::create_dir_all(&opts.store)
        .with_context(|| format!("creating {}", opts.store.display()))?;
    let store = opts.store.canonicalize()?.to_string_lossy().into_owned();
    let data = match &opts.data {
        Some(p) => p.clone(),
        None => {
            let path = opts.store.join("sample.tsv");
            let s = &opts.synthetic;
            say!(
                opts,
                "0/4 generating the synthetic sample ({} sessions over {} items, seed {}) → {}",
                s.n_sessions,
                s.n_items,
                s.seed,
                path.display()
            );
            write_tsv(&generate(s), &path)
                .with_context(|| format!("writing {}", path.display()))?;
            path
        }
    };

    let c = &opts.config;
    say!(
        opts,
        "1/4 training GRU4Rec on {} (hidden {}, {} epochs, the last day's sessions held out as the test set)…",
        data.display(),
        c.hidden,
        c.epochs
    );
    let started = Instant::now();
    let job = TrainJob {
        read: opts.read.clone(),
        ..TrainJob::new(Some(data.clone()), &store, &opts.model, opts.config.clone())
    };
    let epochs = c.epochs;
    let verbose = opts.verbose;
    let outcome = run_train(
        &job,
        |_, _, _| {},
        |st| {
            if verbose {
                println!(
                    "    epoch {}/{epochs}: loss {:.4}, {:.0} events/s",
                    st.epoch, st.loss, st.events_per_sec
                );
            }
        },
    )
    .await
    .with_context(|| format!("training on {}", data.display()))?;
    say!(opts, "    {}", outcome.dataset.report);
    say!(
        opts,
        "    trained in {:.1} s; wrote {store}/models/{}/{}",
        started.elapsed().as_secs_f64(),
        opts.model,
        outcome.version
    );
    say!(
        opts,
        "\n2/4 offline evaluation on the held-out sessions (the GRU, the baselines, and the speed layer as served):\n{}",
        outcome.evaluation.table()
    );

    let test_path = opts.store.join("quickstart-test.tsv");
    write_sessions(
        &outcome.dataset.test,
        &outcome.dataset.vocab.ids,
        &test_path,
    )?;

    say!(
        opts,
        "3/4 starting the server on {} (store {store}, model {})…",
        opts.listen,
        opts.model
    );
    let (log, snapshot_dir, archive) = match &opts.data_dir {
        Some(dir) => (
            LogConfig::Url(format!("file://{}", dir.join("log").display())),
            Some(dir.join("snapshots")),
            Some(ArchiveOptions::default()),
        ),
        None => (LogConfig::None, None, None),
    };
    let server = crate::start(ServeConfig {
        listen: opts.listen,
        store: store.clone(),
        model: opts.model.clone(),
        device: opts.device,
        log,
        snapshot_dir,
        archive,
        ..ServeConfig::default()
    })
    .await
    .context("starting the server")?;
    if !server.wait_ready(std::time::Duration::from_secs(300)).await {
        anyhow::bail!(
            "the server did not become ready: {}",
            server.not_serving_reason().unwrap_or_default()
        );
    }
    let addr = server.local_addr();
    if let Some(dir) = &opts.data_dir {
        say!(
            opts,
            "    events are logged to {} before they are acknowledged, and archived to {store}/events",
            dir.join("log").display()
        );
    }

    let replay = Arc::new(replay_of(&outcome.dataset.test, &outcome.dataset.vocab.ids));
    say!(
        opts,
        "    serving on {addr}\n\n4/4 replaying {} test sessions ({} events) through gRPC with `lambdarec load`…",
        replay.sessions.len(),
        replay.n_events()
    );
    let load = LoadOptions {
        target: addr.to_string(),
        data: test_path.clone(),
        mode: Mode::Closed {
            concurrency: opts.concurrency,
        },
        progress: opts.verbose,
        ..LoadOptions::default()
    };
    let online = super::run_replay(&load, replay)
        .await
        .context("replaying the test sessions")?;
    let k = online.accuracy.k;
    say!(opts, "{}", online.text());
    let (row, offline) = served_row(&outcome.evaluation);
    say!(
        opts,
        "    online Recall@{k} {:.4} vs offline {row} {:.4}; MRR@{k} {:.4} vs {:.4} (same predictions, same metric code)",
        online.accuracy.recall,
        offline.recall,
        online.accuracy.mrr,
        offline.mrr
    );
    Ok(Quickstart {
        server,
        version: outcome.version,
        offline: outcome.evaluation,
        online,
        test_path,
    })
}

/// The offline row of what the server answers by default: the blend when `train` fit one, else the
/// GRU.
pub fn served_row(
    e: &lambdarec_trainer::pipeline::Evaluation,
) -> (&str, &lambdarec_trainer::eval::Metrics) {
    e.baselines
        .iter()
        .find(|(name, _)| name.starts_with("blend("))
        .map_or(("gru4rec", &e.model), |(name, m)| (name.as_str(), m))
}

/// The grpcurl line that asks the running server for a recommendation.
pub fn grpcurl_example(addr: SocketAddr, item: &str) -> String {
    format!(
        "grpcurl -plaintext -d '{{\"session_id\":\"demo\",\"k\":5,\"inline_events\":[\"{item}\"]}}' {addr} lambdarec.v1.Recommender/Recommend"
    )
}

fn replay_of(test: &Sessions, ids: &[String]) -> Replay {
    let sessions = (0..test.len())
        .map(|i| ReplaySession {
            key: test.keys[i].clone(),
            items: test.session(i).to_vec(),
            times: test.session_times(i).to_vec(),
        })
        .collect();
    Replay {
        sessions,
        item_ids: ids.to_vec(),
    }
}

/// Writes sessions as a `SessionId<TAB>ItemId<TAB>Time` log, readable by `lambdarec load`/`eval`.
fn write_sessions(s: &Sessions, ids: &[String], path: &Path) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut out = String::from("SessionId\tItemId\tTime\n");
    for i in 0..s.len() {
        for (j, &item) in s.session(i).iter().enumerate() {
            let _ = writeln!(
                out,
                "{}\t{}\t{}",
                s.keys[i],
                ids[item as usize],
                s.times[s.offsets[i] + j]
            );
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
