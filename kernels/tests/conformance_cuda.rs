//! Runs the whole conformance suite on the CUDA backend and cross-checks it against the CPU backend.
//! Built only with `--features cuda`; without a driver or device it prints why and passes, so the
//! workspace tests run on machines without a GPU.
#![cfg(feature = "cuda")]

use lambdarec_kernels::conformance;
use lambdarec_kernels::cuda::{CudaBackend, check};

#[test]
fn cuda_backend_passes_conformance_and_matches_cpu() {
    let mut backend = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    conformance::run_all(&mut backend);
    check::compare_with_cpu(&mut backend).unwrap_or_else(|e| panic!("cuda vs cpu: {e}"));
}

#[test]
fn probe_explains_itself() {
    match lambdarec_kernels::cuda::probe() {
        Ok(found) => assert!(found.contains("cuda:0"), "{found}"),
        Err(why) => {
            assert!(!why.is_empty());
            println!("skipped: no CUDA device ({why})");
        }
    }
}
