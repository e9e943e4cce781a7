//! Training throughput (events/s) of the GRU4Rec trainer with the paper settings (cross-entropy, 100 units,
//! batch 32, 2048 sampled negatives), one epoch per iteration, on the RSC15 sample split when
//! `../shared/data` is present and on the built-in synthetic sample otherwise.
//!
//! The same-run baseline is the PyTorch implementation of the same loop, `benches/peers/torch_gru4rec.py`,
//! run right after this bench on the idle machine (see benches/RESULTS.md for the commands).

mod common;

// The same allocator as the `lambdarec` binary, so the bench measures what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambdarec_trainer::data::{self, PrepareOptions};
use lambdarec_trainer::train::{TrainConfig, train};

fn dataset() -> (String, data::Dataset) {
    common::rsc15_or_synthetic(&PrepareOptions {
        min_item_support: 1,
        ..PrepareOptions::default()
    })
}

fn bench_train(c: &mut Criterion) {
    let (name, ds) = dataset();
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let events = (ds.train.n_events() - ds.train.len()) as u64;
    let mut g = c.benchmark_group("train_epoch");
    g.sample_size(10).throughput(Throughput::Elements(events));
    // One and two training threads (the default uses up to two); the result is the same either way.
    for threads in [1usize, 2] {
        let cfg = TrainConfig {
            threads: Some(threads),
            ..cfg.clone()
        };
        g.bench_function(
            format!("gru4rec_xe_h100_b32_s2048/{name}/cpu-{threads}t"),
            |b| {
                b.iter(|| {
                    train(&ds.train, &ds.vocab.popularity, &cfg, |_, _, _| {}, |_| {})
                        .expect("train")
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_train);
criterion_main!(benches);
