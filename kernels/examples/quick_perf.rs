//! Temporary: quick timing of top_k / gru_step while developing.
use lambdarec_kernels::conformance::TestRng;
use lambdarec_kernels::*;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (n, d, b, t, dt) = (args[0], args[1], args[2], args[3], args[4]);
    let dtype = [Dtype::F32, Dtype::Bf16, Dtype::F16][dt];
    let mut rng = TestRng::new(0);
    let w = ModelWeights {
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
    };
    let mut be = CpuBackend::new(Some(t)).unwrap();
    let m = be.upload_model(&w, dtype).unwrap();
    be.alloc_states(b, d).unwrap();
    for s in 0..b {
        be.write_state(s as u32, &(0..d).map(|_| rng.normal()).collect::<Vec<_>>())
            .unwrap();
    }
    let qs: Vec<TopKQuery> = (0..b as u32)
        .map(|slot| TopKQuery {
            slot,
            k: 20,
            exclude: &[],
        })
        .collect();
    let mut best = f64::MAX;
    for _ in 0..15 {
        let t0 = Instant::now();
        std::hint::black_box(be.top_k(m, &qs).unwrap());
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{} n={n} d={d} b={b} {dtype}: best {:.3} ms, {:.1} GFLOP/s, {:.1} GB/s",
        be.device(),
        best * 1e3,
        2.0 * (n * d * b) as f64 / best / 1e9,
        (n * d * dtype.size_bytes()) as f64 / best / 1e9
    );
}
