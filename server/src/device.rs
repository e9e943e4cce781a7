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

/// Opens the backend for `choice`. `auto` uses CUDA when this build has it and a usable GPU is present,
/// and otherwise falls back to the CPU, logging why.
pub fn open_backend(
    choice: DeviceChoice,
    threads: Option<usize>,
) -> Result<Box<dyn Backend>, DeviceError> {
    match choice {
        DeviceChoice::Cpu => cpu(threads),
        DeviceChoice::Cuda => cuda().map_err(DeviceError::Cuda),
        DeviceChoice::Auto => match cuda() {
            Ok(backend) => {
                info!(device = %backend.device(), "--device auto: serving on the GPU");
                Ok(backend)
            }
            Err(reason) => {
                info!(%reason, "--device auto: serving on the CPU");
                cpu(threads)
            }
        },
    }
}

fn cpu(threads: Option<usize>) -> Result<Box<dyn Backend>, DeviceError> {
    Ok(Box::new(
        CpuBackend::new(threads).map_err(DeviceError::Cpu)?,
    ))
}

/// Opens cuda:0, or says why it cannot (no CUDA in this build, no driver, no GPU, GPU too old).
#[cfg(feature = "cuda")]
fn cuda() -> Result<Box<dyn Backend>, String> {
    lambdarec_kernels::cuda::probe()?;
    let backend = lambdarec_kernels::cuda::CudaBackend::new(0)
        .map_err(|e| crate::registry::error_chain(&e))?;
    Ok(Box::new(backend))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Box<dyn Backend>, String> {
    Err("this binary was built without the CUDA backend (--no-default-features); rebuild with the default features".to_string())
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
