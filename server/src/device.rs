//! Backend selection: the only place where the server knows which device it runs on. Everything
//! after this sees a `Box<dyn Backend>`.

use lambdarec_kernels::{Backend, BackendError, cpu::CpuBackend};
use tracing::info;

use crate::config::DeviceChoice;

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device cuda: {0}")]
    Cuda(String),
    #[error("cannot start the CPU backend: {0}")]
    Cpu(#[source] BackendError),
    #[error("cannot start the batcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Opens the backend for `choice`. `auto` falls back to the CPU and logs why.
pub fn open_backend(
    choice: DeviceChoice,
    threads: Option<usize>,
) -> Result<Box<dyn Backend>, DeviceError> {
    match choice {
        DeviceChoice::Cpu => cpu(threads),
        DeviceChoice::Cuda => Err(DeviceError::Cuda(cuda_missing().to_string())),
        DeviceChoice::Auto => {
            info!(reason = cuda_missing(), "--device auto: serving on the CPU");
            cpu(threads)
        }
    }
}

fn cpu(threads: Option<usize>) -> Result<Box<dyn Backend>, DeviceError> {
    Ok(Box::new(
        CpuBackend::new(threads).map_err(DeviceError::Cpu)?,
    ))
}

/// Why this build cannot use CUDA. The kernels crate has a `cuda` feature but no CUDA backend type
/// yet; once it has one, this is where it is opened (after checking that libcuda is present, since
/// cudarc panics without it) and where "no GPU" is reported.
fn cuda_missing() -> &'static str {
    if cfg!(feature = "cuda") {
        "lambdarec-kernels does not provide a CUDA backend yet"
    } else {
        "no CUDA backend compiled in (rebuild with `--features cuda`)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_open_and_cuda_is_a_clear_error() {
        assert!(open_backend(DeviceChoice::Cpu, Some(1)).is_ok());
        let auto = open_backend(DeviceChoice::Auto, Some(1)).unwrap();
        assert!(auto.device().starts_with("cpu"), "{}", auto.device());
        let err = open_backend(DeviceChoice::Cuda, Some(1)).err().unwrap();
        assert!(err.to_string().contains("cuda"), "{err}");
    }
}
