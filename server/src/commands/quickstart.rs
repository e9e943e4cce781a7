//! `lambdarec quickstart`: the whole loop on one machine in one command — sample data, training,
//! offline evaluation, a local store, the gRPC server on loopback, an online replay — then keeps serving.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lambdarec_server::DeviceChoice;
use lambdarec_server::load::quickstart::{self, QuickstartOptions};
use lambdarec_trainer::train::TrainConfig;

use super::{ReadArgs, existing_file};

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  lambdarec quickstart            # synthetic sample, serves on 127.0.0.1:50051 until ctrl-c\n  \
    lambdarec quickstart --data clicks.tsv --exit"
)]
pub struct QuickstartArgs {
    /// A real interaction log (its last day is held out as the test set); default: the built-in sample.
    #[arg(long, env = "LAMBDAREC_DATA", value_parser = existing_file)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub read: ReadArgs,
    /// Local directory for the model store (and the sample and test files).
    #[arg(long, env = "LAMBDAREC_STORE", default_value = "./lambdarec-store")]
    pub store: PathBuf,
    /// gRPC listen address (port 0 picks a free one).
    #[arg(long, env = "LAMBDAREC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Training epochs (the `train` default; about 10 s on the built-in sample).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Compute device for serving: auto, cpu or cuda.
    #[arg(long, env = "LAMBDAREC_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Stop after the replay instead of serving until ctrl-c.
    #[arg(long)]
    pub exit: bool,
    /// Directory of the embedded event log (`<dir>/log`) and session snapshots; the events are
    /// archived to `<store>/events`. `none`: no event log (sessions in memory only).
    #[arg(long, env = "LAMBDAREC_DATA_DIR", default_value = "./lambdarec-data")]
    pub data_dir: String,
}

pub fn run(a: QuickstartArgs) -> anyhow::Result<()> {
    let opts = QuickstartOptions {
        data: a.data.clone(),
        read: a.read.options(),
        config: TrainConfig {
            epochs: a.epochs,
            ..TrainConfig::default()
        },
        store: a.store.clone(),
        data_dir: (a.data_dir != "none").then(|| PathBuf::from(&a.data_dir)),
        listen: a.listen,
        device: a.device,
        ..QuickstartOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let done = quickstart::run(&opts).await?;
        let addr = done.server.local_addr();
        if a.exit {
            return done.server.shutdown().await.context("stopping the server");
        }
        let item = first_item(&done.test_path).unwrap_or_else(|| "ITEM_ID".to_string());
        println!(
            "\nserving model {} on {addr} — ctrl-c to stop. Try:",
            done.version
        );
        println!("  {}", quickstart::grpcurl_example(addr, &item));
        println!(
            "  lambdarec load --target {addr} --data {}",
            done.test_path.display()
        );
        done.server.run_until_signal().await.context("serving")
    })
}

/// An item id from the test file, for the example line.
fn first_item(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().nth(1)?.split('\t').nth(1)?.to_string())
}
