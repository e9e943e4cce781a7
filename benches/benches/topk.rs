//! Full-catalogue top-20 on the CPU backend (1 and 2 threads, f32 and bf16 item tables) for catalogues
//! of 10k, 100k and 1M items × 64 and 128 dims, batch 1 and 64, against a naive single-threaded
//! score-all + select baseline run in the same process. Compare with `../shared/bench/topk_peer.py`
//! beside the repository (faiss / numpy on the same sizes, standard-normal data).
//!
//! `cargo bench -p lambdarec-benches --bench topk` (criterion filters work: `-- 100000x128`);
//! `LAMBDAREC_BENCH_WAIT_IDLE=60` waits for an idle machine before each case (the bg% column shows
//! the share of the machine other processes used while a case ran);
//! `LAMBDAREC_BENCH_QUICK=1` limits the grid to the 10k and 100k catalogues.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Recorder, SAMPLES, dot8, loadavg};
use criterion::{Criterion, Throughput};
use lambdarec_kernels::conformance::TestRng;
use lambdarec_kernels::{Backend, CpuBackend, Dtype, ModelWeights, TopKQuery};

const K: usize = 20;
const BASELINE: &str = "naive-1t-f32";

/// `(n_items, dims)`: the grid, 1M × 128 included (the peer harness needs
/// `--max-n-d128 1000000` for it).
fn shapes() -> Vec<(usize, usize)> {
    let mut v = vec![
        (10_000, 64),
        (10_000, 128),
        (100_000, 64),
        (100_000, 128),
        (1_000_000, 64),
        (1_000_000, 128),
    ];
    if std::env::var_os("LAMBDAREC_BENCH_QUICK").is_some() {
        v.retain(|&(n, _)| n <= 100_000);
    }
    v
}

/// A model whose scores are plain inner products with standard-normal item vectors (the peer's data);
/// the GRU weights are irrelevant here.
fn catalogue(rng: &mut TestRng, n: usize, d: usize) -> ModelWeights {
    ModelWeights {
        n_items: n,
        embed_dim: d,
        hidden: d,
        item_in: None,
        w_ih: vec![0.0; 3 * d * d],
        w_hh: vec![0.0; 3 * d * d],
        b_ih: vec![0.0; 3 * d],
        b_hh: vec![0.0; 3 * d],
        item_out: (0..n * d).map(|_| rng.normal()).collect(),
        item_bias: vec![0.0; n],
    }
}

/// The baseline: score every item with a row-major dot product (eight partial sums, which the compiler
/// vectorises for the baseline target), then select and sort the k best. One thread.
fn naive_top_k(items: &[f32], d: usize, queries: &[f32], k: usize) -> Vec<Vec<(u32, f32)>> {
    queries
        .chunks_exact(d)
        .map(|q| {
            let mut scores: Vec<(u32, f32)> = items
                .chunks_exact(d)
                .enumerate()
                .map(|(i, row)| (i as u32, dot8(row, q)))
                .collect();
            scores.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            scores.truncate(k);
            scores.sort_by(|a, b| b.1.total_cmp(&a.1));
            scores
        })
        .collect()
}

fn bench_topk(c: &mut Criterion, rec: &Recorder) {
    let mut backends: Vec<CpuBackend> = [1, 2]
        .iter()
        .map(|&t| CpuBackend::new(Some(t)).expect("cpu backend"))
        .collect();
    for &(n, d) in &shapes() {
        let mut rng = TestRng::new(0);
        let w = catalogue(&mut rng, n, d);
        let states: Vec<f32> = (0..64 * d).map(|_| rng.normal()).collect();
        let mut models = Vec::new();
        for backend in &mut backends {
            backend.alloc_states(64, d).expect("alloc_states");
            for (slot, row) in states.chunks_exact(d).enumerate() {
                backend.write_state(slot as u32, row).expect("write_state");
            }
            let ids: Vec<_> = [Dtype::F32, Dtype::Bf16]
                .iter()
                .map(|&dt| (dt, backend.upload_model(&w, dt).expect("upload")))
                .collect();
            models.push(ids);
        }
        for batch in [1usize, 64] {
            let group = format!("topk/{n}x{d}/b{batch}");
            let mut g = c.benchmark_group(&group);
            g.throughput(Throughput::Elements(batch as u64));
            let queries: Vec<TopKQuery<'_>> = (0..batch as u32)
                .map(|slot| TopKQuery {
                    slot,
                    k: K,
                    exclude: &[],
                })
                .collect();
            common::wait_idle_if_asked();
            g.bench_function(BASELINE, |b| {
                rec.bench(b, &group, BASELINE, || {
                    black_box(naive_top_k(&w.item_out, d, &states[..batch * d], K));
                })
            });
            for (backend, ids) in backends.iter_mut().zip(&models) {
                for &(dtype, model) in ids {
                    let case = format!("cpu-{}t-{dtype}", backend.threads());
                    common::wait_idle_if_asked();
                    g.bench_function(&case, |b| {
                        rec.bench(b, &group, &case, || {
                            black_box(backend.top_k(model, &queries).expect("top_k"));
                        })
                    });
                }
            }
            g.finish();
        }
        for (backend, ids) in backends.iter_mut().zip(models) {
            for (_, model) in ids {
                backend.drop_model(model);
            }
        }
    }
    println!(
        "\n# top-{K} summary ({}; load average {})",
        backends[1].device(),
        loadavg()
    );
    println!(
        "{:<24} {:<14} {:>10} {:>10} {:>9} {:>9} {:>8} {:>5}",
        "group", "case", "median ms", "queries/s", "GB/s", "GFLOP/s", "×naive", "bg%"
    );
    for (group, case) in rec.cases() {
        let (Some(t), Some(base)) = (rec.median(&group, &case), rec.median(&group, BASELINE))
        else {
            continue;
        };
        let dims: Vec<usize> = group
            .trim_start_matches("topk/")
            .split(['x', '/', 'b'])
            .filter_map(|s| s.parse().ok())
            .collect();
        let [n, d, batch] = dims[..] else { continue };
        let bytes = (n * d * if case.ends_with("bf16") { 2 } else { 4 }) as f64;
        let s = t.as_secs_f64();
        println!(
            "{group:<24} {case:<14} {:>10.3} {:>10.0} {:>9.1} {:>9.1} {:>8.1} {:>5.0}",
            s * 1e3,
            batch as f64 / s,
            bytes / s / 1e9,
            2.0 * (n * d * batch) as f64 / s / 1e9,
            base.as_secs_f64() / s,
            100.0 * rec.background(&group, &case).unwrap_or(f64::NAN)
        );
    }
}

fn main() {
    let rec = Recorder::default();
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_topk(&mut c, &rec);
    c.final_summary();
}
