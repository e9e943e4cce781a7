//! Per-call buffers of the CUDA backend, grown on demand and reused: one pinned host buffer through
//! which all of a call's small inputs (slots, items, k, exclusions) travel to the device in a single
//! copy, and device scratch for intermediate results.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceRepr, PinnedHostSlice,
    ValidAsZeroBits,
};

use super::dev;
use crate::Result;

/// Inputs staged in page-locked memory and copied asynchronously; the copy must finish reading the
/// host buffer before the next call rewrites it, which `copied` tracks.
pub(crate) struct Upload {
    host: Option<PinnedHostSlice<u32>>,
    device: Option<CudaSlice<u32>>,
    copied: CudaEvent,
}

impl Upload {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        Ok(Self {
            host: None,
            device: None,
            copied: ctx.new_event(None).map_err(dev("create event"))?,
        })
    }

    /// Copies `parts`, back to back, to device memory on `stream`; returns each part's device address.
    pub(crate) fn stage(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        parts: &[&[u32]],
    ) -> Result<Vec<u64>> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.copied.synchronize().map_err(dev("wait for staging"))?;
        if self.host.as_ref().is_none_or(|h| h.len() < total) {
            let len = total.next_power_of_two().max(4096);
            // Drop the old buffers first: their copies are complete (synchronized above).
            self.host = None;
            self.device = None;
            // SAFETY: the buffer is only written (below) before it is read by a copy.
            self.host = Some(unsafe { ctx.alloc_pinned::<u32>(len) }.map_err(dev("alloc pinned"))?);
            // SAFETY: every staged value is written by the copy before a kernel reads it.
            self.device = Some(unsafe { stream.alloc::<u32>(len) }.map_err(dev("alloc staging"))?);
        }
        let (Some(host), Some(device)) = (self.host.as_mut(), self.device.as_ref()) else {
            unreachable!("staging buffers were just allocated");
        };
        let base = device.device_ptr(stream).0;
        let host = host.as_mut_slice().map_err(dev("map pinned"))?;
        let mut addrs = Vec::with_capacity(parts.len());
        let mut at = 0;
        for p in parts {
            host[at..at + p.len()].copy_from_slice(p);
            addrs.push(base + 4 * at as u64);
            at += p.len();
        }
        if total > 0 {
            // SAFETY: `host[..total]` is page-locked and stays untouched until `copied` completes;
            // the device buffer holds at least `total` values.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(base, &host[..total], stream.cu_stream())
            }
            .map_err(dev("copy inputs"))?;
            self.copied.record(stream).map_err(dev("record event"))?;
        }
        Ok(addrs)
    }
}

/// A device buffer that only grows.
pub(crate) struct Scratch<T> {
    buf: Option<CudaSlice<T>>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Scratch<T> {
    pub(crate) fn new() -> Self {
        Self { buf: None }
    }

    /// Address of a buffer of at least `len` values (contents unspecified).
    pub(crate) fn get(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<u64> {
        if self.buf.as_ref().is_none_or(|b| b.len() < len) {
            self.buf = None; // freed in stream order, after the kernels that used it
            let len = len.next_power_of_two().max(1024);
            // SAFETY: scratch is always written by a kernel before it is read.
            self.buf = Some(unsafe { stream.alloc::<T>(len) }.map_err(dev("alloc scratch"))?);
        }
        let buf = self.buf.as_ref().expect("allocated above");
        Ok(buf.device_ptr(stream).0)
    }

    /// Address of a buffer of at least `len` values, set to zero (in stream order).
    pub(crate) fn zeroed(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<u64> {
        let ptr = self.get(stream, len)?;
        let bytes = len * std::mem::size_of::<T>();
        // SAFETY: `ptr` addresses at least `len` values of this buffer.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, stream.cu_stream()) }
            .map_err(dev("clear scratch"))?;
        Ok(ptr)
    }

    /// Copies the first `len` values to the host (waits for the stream).
    pub(crate) fn read(&self, stream: &Arc<CudaStream>, len: usize) -> Result<Vec<T>>
    where
        T: Default + Clone,
    {
        let mut out = vec![T::default(); len];
        if len > 0 {
            let buf = self
                .buf
                .as_ref()
                .expect("scratch read before it was written");
            stream
                .memcpy_dtoh(&buf.slice(..len), &mut out)
                .map_err(dev("copy results"))?;
        }
        Ok(out)
    }
}
