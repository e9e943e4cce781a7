//! Runs the whole conformance suite on the CPU backend: 1 and 2 threads, each item-table dtype, and
//! both the run-time-dispatched SIMD path and the portable baseline path.

use lambdarec_kernels::conformance::{self, ALL};
use lambdarec_kernels::{Backend, CpuBackend, Dtype};

fn run(threads: usize, simd: bool, dtype: Dtype) {
    let mut backend = CpuBackend::with_simd(Some(threads), simd).expect("cpu backend");
    for test in ALL {
        test(&mut backend as &mut dyn Backend, dtype);
    }
}

#[test]
fn simd_one_thread_f32() {
    run(1, true, Dtype::F32);
}

#[test]
fn simd_one_thread_bf16() {
    run(1, true, Dtype::Bf16);
}

#[test]
fn simd_one_thread_f16() {
    run(1, true, Dtype::F16);
}

#[test]
fn portable_two_threads_every_dtype() {
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
        run(2, false, dtype);
    }
}

#[test]
fn simd_two_threads_run_all() {
    let mut backend = CpuBackend::new(Some(2)).expect("cpu backend");
    assert!(
        backend.device().starts_with("cpu (2 threads"),
        "{}",
        backend.device()
    );
    conformance::run_all(&mut backend);
}
