//! The speed layer's per-request work on the RSC15 sample (or the built-in synthetic sample when
//! `../shared/data` is absent): one V-SKNN query (`KnnIndex::score_with`: candidates, neighbours,
//! item scores) and the blend's draft of a pool from the GRU's top items and those kNN scores, over
//! the test sessions' prefixes, against an index seeded with the training sessions as a served
//! bundle seeds it and grown by the test log streamed through it `KNN_BENCH_PASSES` times (3), as
//! `lambdarec load` grows a server's (frozen during the measurement, so every iteration does the
//! same work).
//!
//! `cargo bench -p lambdarec-benches --bench knn`

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambdarec_trainer::blend::{DEFAULT_HISTORY, POOL, SpeedLayer, Weights};
use lambdarec_trainer::data::{self, PrepareOptions};
use lambdarec_trainer::knn::{KnnParams, Scratch};

/// Test prefixes timed per iteration.
const QUERIES: usize = 2000;

fn dataset() -> (String, data::Dataset) {
    common::rsc15_or_synthetic(&PrepareOptions::default())
}

fn bench_knn(c: &mut Criterion) {
    let (name, ds) = dataset();
    let n_items = ds.vocab.len();
    let mut speed = SpeedLayer::new(
        &ds.train,
        n_items,
        KnnParams::default(),
        3600.0,
        Weights::new(0.5, 0.0),
    );
    // As under `lambdarec load` for a while: the test log streamed through PASSES times, each pass's
    // sessions under new owners, so the index holds live sessions beside the training ones.
    let passes: u64 = std::env::var("KNN_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for pass in 0..passes {
        for s in 0..ds.test.len() {
            let items = ds.test.session(s);
            for end in 1..=items.len() {
                let recent = &items[end.saturating_sub(DEFAULT_HISTORY)..end];
                speed.observe(pass << 32 | s as u64, recent, items[end - 1], 0);
            }
        }
    }
    eprintln!(
        "{name}: {} sessions in the index ({} training, {} test sessions streamed {passes} times)",
        speed.knn.len(),
        ds.train.len(),
        ds.test.len()
    );
    // The test sessions' prefixes (as the server keeps them: the last DEFAULT_HISTORY items).
    let mut prefixes: Vec<Vec<u32>> = Vec::new();
    'all: for s in 0..ds.test.len() {
        let items = ds.test.session(s);
        for end in 1..items.len() {
            prefixes.push(items[end.saturating_sub(DEFAULT_HISTORY)..end].to_vec());
            if prefixes.len() == QUERIES {
                break 'all;
            }
        }
    }
    // A stand-in for the GRU's top items: the most popular ones, scored in rank order.
    let gru_top: Vec<(u32, f32)> = (0..POOL.min(n_items) as u32)
        .map(|i| (i, -(i as f32) / 10.0))
        .collect();
    let knn: Vec<Vec<(u32, f32)>> = {
        let mut scratch = Scratch::default();
        prefixes
            .iter()
            .map(|p| speed.knn.score_with(p, None, &mut scratch))
            .collect()
    };

    let mut g = c.benchmark_group(format!("speed_layer/{name}"));
    g.sample_size(20)
        .throughput(Throughput::Elements(prefixes.len() as u64));
    g.bench_function("knn_query", |b| {
        let mut scratch = Scratch::default();
        b.iter(|| {
            prefixes
                .iter()
                .map(|p| speed.knn.score_with(p, None, &mut scratch).len())
                .sum::<usize>()
        })
    });
    g.bench_function("blend_draft", |b| {
        let w = speed.weights;
        b.iter(|| {
            knn.iter()
                .map(|k| {
                    let mut draft = speed.draft(&gru_top, k, &[], w);
                    draft.prune(w, 20);
                    draft.need.len()
                })
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_knn);
criterion_main!(benches);
