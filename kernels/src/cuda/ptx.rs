//! The CUDA kernels embedded in the crate (PTX from nvcc, or `.cu` text for NVRTC when the build had
//! no nvcc; see build.rs) and their loading into a context, once per backend.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::{BackendError, Dtype, Result};

/// A kernel file as embedded: PTX ready to load, or CUDA C++ to compile with NVRTC first.
#[derive(Clone, Copy, Debug)]
pub enum KernelCode {
    Ptx(&'static str),
    Source(&'static str),
}

impl KernelCode {
    /// `true` when the crate was built with nvcc (PTX embedded, no NVRTC needed at run time).
    pub fn is_ptx(self) -> bool {
        matches!(self, KernelCode::Ptx(_))
    }
}

include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));

/// Query-group sizes of the fused top-k scan, one kernel instance each (`topk_scan_q{QG}_{dtype}`).
pub(crate) const SCAN_GROUPS: [usize; 5] = [1, 2, 4, 8, 16];

/// Every kernel the backend launches, loaded from the three modules.
pub(crate) struct Kernels {
    /// Indexed by [`dtype_index`].
    pub gru_gates: [CudaFunction; 3],
    pub gru_scatter: CudaFunction,
    pub states_zero: CudaFunction,
    pub score: [CudaFunction; 3],
    pub score_all: [CudaFunction; 3],
    /// `[dtype][group]`, groups as in [`SCAN_GROUPS`].
    pub topk_scan: [[CudaFunction; 5]; 3],
    /// The tensor-core scan of bf16 tables for groups of 8 and 16.
    pub topk_scan_mma: [CudaFunction; 2],
    pub topk_merge: CudaFunction,
}

pub(crate) fn dtype_index(dtype: Dtype) -> usize {
    match dtype {
        Dtype::F32 => 0,
        Dtype::Bf16 => 1,
        Dtype::F16 => 2,
    }
}

const SUFFIXES: [&str; 3] = ["f32", "bf16", "f16"];

impl Kernels {
    /// Loads the modules into `ctx` and looks up every kernel; the top-k kernels may then use up to
    /// `max_dynamic_smem` bytes of shared memory (the device's opt-in limit), static included.
    pub(crate) fn load(ctx: &Arc<CudaContext>, max_dynamic_smem: u32) -> Result<Self> {
        let gru = load_module(ctx, "gru", PTX_GRU)?;
        let score = load_module(ctx, "score", PTX_SCORE)?;
        let topk = load_module(ctx, "topk", PTX_TOPK)?;
        let f = |m: &Arc<CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(|e| BackendError::device_caused(format!("kernel {name} not found"), e))
        };
        let per_dtype = |m: &Arc<CudaModule>, prefix: &str| -> Result<[CudaFunction; 3]> {
            Ok([
                f(m, &format!("{prefix}_{}", SUFFIXES[0]))?,
                f(m, &format!("{prefix}_{}", SUFFIXES[1]))?,
                f(m, &format!("{prefix}_{}", SUFFIXES[2]))?,
            ])
        };
        let scan = |d: usize| -> Result<[CudaFunction; 5]> {
            let g = |qg: usize| f(&topk, &format!("topk_scan_q{qg}_{}", SUFFIXES[d]));
            Ok([g(1)?, g(2)?, g(4)?, g(8)?, g(16)?])
        };
        let kernels = Self {
            gru_gates: per_dtype(&gru, "gru_gates")?,
            gru_scatter: f(&gru, "gru_scatter")?,
            states_zero: f(&gru, "states_zero")?,
            score: per_dtype(&score, "score")?,
            score_all: per_dtype(&score, "score_all")?,
            topk_scan: [scan(0)?, scan(1)?, scan(2)?],
            topk_scan_mma: [
                f(&topk, "topk_scan_mma_q8_bf16")?,
                f(&topk, "topk_scan_mma_q16_bf16")?,
            ],
            topk_merge: f(&topk, "topk_merge")?,
        };
        let big_smem = kernels
            .topk_scan
            .iter()
            .flatten()
            .chain(&kernels.topk_scan_mma)
            .chain([&kernels.topk_merge]);
        for func in big_smem {
            let err = |e| BackendError::device_caused("cannot raise shared-memory limit", e);
            // The opt-in limit covers static and dynamic shared memory together.
            let fixed = func.shared_size_bytes().map_err(err)?;
            func.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                max_dynamic_smem as i32 - fixed,
            )
            .map_err(err)?;
        }
        Ok(kernels)
    }
}

fn load_module(ctx: &Arc<CudaContext>, name: &str, code: KernelCode) -> Result<Arc<CudaModule>> {
    let ptx = match code {
        KernelCode::Ptx(text) => Ptx::from_src(text),
        KernelCode::Source(src) => compile_with_nvrtc(name, src)?,
    };
    ctx.load_module(ptx).map_err(|e| {
        BackendError::device_caused(
            format!(
                "cannot load the {name} kernels (the driver may be older than the PTX: built for \
                 PTX ISA 9.0 / CUDA 13.0 drivers and compute capability 9.0+)"
            ),
            e,
        )
    })
}

fn compile_with_nvrtc(name: &str, src: &str) -> Result<Ptx> {
    // SAFETY: only tries to open the NVRTC library; cudarc panics on first use when it is missing.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(BackendError::device(format!(
            "the {name} kernels were embedded as source (built without nvcc) and libnvrtc is not \
             available to compile them; rebuild with nvcc 13.0 on PATH or install nvidia-cuda-nvrtc"
        )));
    }
    let opts = CompileOptions {
        arch: Some("compute_90"),
        options: vec!["-std=c++17".into()],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let compiled = catch_unwind(AssertUnwindSafe(|| {
        cudarc::nvrtc::compile_ptx_with_opts(src, opts)
    }))
    .map_err(|_| BackendError::device(format!("NVRTC panicked compiling the {name} kernels")))?;
    compiled.map_err(|e| BackendError::device_caused(format!("NVRTC cannot compile {name}.cu"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NVRTC fallback compiles the same `.cu` text (with `common.cuh` inlined, as build.rs does).
    /// NVRTC needs no GPU, so this runs wherever libnvrtc is found.
    #[test]
    fn sources_compile_with_nvrtc_when_available() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            println!("skipped: libnvrtc not found");
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
        let common = std::fs::read_to_string(dir.join("common.cuh")).expect("common.cuh");
        for name in ["gru", "score", "topk"] {
            let src = std::fs::read_to_string(dir.join(format!("{name}.cu"))).expect("source");
            let src = src.replace("#include \"common.cuh\"", &common);
            let ptx = compile_with_nvrtc(name, &src).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                ptx.to_src().contains(".entry"),
                "{name}: no kernels in the PTX"
            );
        }
    }
}
