//! Temporary: quick timing of gru_step while developing.
use lambdarec_kernels::conformance::{TestRng, random_model};
use lambdarec_kernels::*;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (h, t, simd) = (args[0], args[1], args[2] == 1);
    let mut rng = TestRng::new(0);
    let w = random_model(&mut rng, 100_000, h, h, true);
    let mut be = CpuBackend::with_simd(Some(t), simd).unwrap();
    let m = be.upload_model(&w, Dtype::F32).unwrap();
    be.alloc_states(4096, h).unwrap();
    let ev: Vec<Event> = (0..4096u32)
        .map(|slot| Event {
            slot,
            item: rng.below(100_000) as u32,
        })
        .collect();
    let mut best = f64::MAX;
    for _ in 0..15 {
        let t0 = Instant::now();
        be.gru_step(m, &ev).unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{} h={h}: best {:.3} ms, {:.0} events/s, {:.1} GFLOP/s",
        be.device(),
        best * 1e3,
        4096.0 / best,
        4.0 * (3 * h * h * 4096) as f64 / best / 1e9
    );
}
