//! The CUDA backend (feature `cuda`): model tables and the session state table in device memory, one
//! stream, kernels from `kernels/cuda/*.cu` (see build.rs). cudarc loads libcuda at run time, so a
//! build with this feature still runs (and reports why CUDA is unavailable) on a machine without a GPU.
//!
//! Every method validates its whole input exactly as [`CpuBackend`](crate::CpuBackend) does before it
//! launches anything, so a bad request leaves the device state untouched.

pub mod check;
mod model;
mod ops;
mod ptx;
mod staging;
mod topk;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError};

use self::model::{DeviceModel, round_up};
use self::ptx::Kernels;
pub use self::ptx::{KernelCode, PTX_GRU, PTX_SCORE, PTX_TOPK};
use self::staging::{Scratch, Upload};
use self::topk::Limits;
pub use self::topk::MAX_FUSED_K;
use crate::{
    Backend, BackendError, Dtype, Event, ModelId, ModelWeights, Result, ScoreQuery, Scored,
    TopKQuery, validate,
};

/// Device rows (item tables, GRU weights, states) are padded to a multiple of this many values.
pub(crate) const ROW_ALIGN: usize = 32;
/// Catalogues are padded with zero rows to a multiple of this many items: whole tiles of the top-k
/// scan (256 or 512 items), so that it streams without bounds checks.
pub(crate) const PAD_ITEMS: usize = 512;

/// Maps a driver error to [`BackendError::Device`] with what was being done.
pub(crate) fn dev(what: &'static str) -> impl Fn(DriverError) -> BackendError {
    move |e| BackendError::device_caused(what, e)
}

/// Whether libcuda can be loaded (cudarc panics on first use when it cannot).
fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Says whether this build can use CUDA here, for the server's `--device auto` log line: `Ok` names the
/// device, `Err` says why not (no driver, no device, unsupported GPU).
pub fn probe() -> std::result::Result<String, String> {
    if !driver_present() {
        return Err("no CUDA driver found: libcuda.so could not be loaded".into());
    }
    let found = catch_unwind(|| -> std::result::Result<String, String> {
        use cudarc::driver::result::device;
        let n = CudaContext::device_count().map_err(|e| format!("CUDA driver unusable: {e}"))?;
        if n == 0 {
            return Err("CUDA driver found but no CUDA device".into());
        }
        let d = device::get(0).map_err(|e| format!("cuda:0: {e}"))?;
        let name = device::get_name(d).map_err(|e| format!("cuda:0: {e}"))?;
        // SAFETY: `d` is a valid device handle.
        let major = unsafe {
            device::get_attribute(
                d,
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
        }
        .map_err(|e| format!("cuda:0: {e}"))?;
        if major < 9 {
            return Err(format!(
                "cuda:0 {name} has compute capability {major}.x; the kernels need 9.0 or newer"
            ));
        }
        Ok(format!("{n} CUDA device(s), cuda:0 is {name}"))
    });
    found.unwrap_or_else(|_| Err("the CUDA driver is too old for this build (CUDA 13.0)".into()))
}

/// The device, its stream and kernels, and per-call buffers. Separate from the model and state
/// tables so that an op can borrow a model while it uses the buffers.
pub(crate) struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    limits: Limits,
    name: String,
    upload: Upload,
    /// Ping-pong buffers of top-k keys, and f32 results (new states, scores).
    keys_a: Scratch<u64>,
    keys_b: Scratch<u64>,
    floats: Scratch<f32>,
    /// Per top-k call: the best key seen so far of each query, shared by the scan's blocks.
    bounds: Scratch<u64>,
    /// When timing is on: events around the device work of the last op.
    timer: Option<Timer>,
}

/// Events at the start, a midpoint (top-k: between scan and merge) and the end of an op's kernels.
struct Timer {
    start: CudaEvent,
    mid: CudaEvent,
    end: CudaEvent,
}

impl Gpu {
    fn record(&self, pick: impl Fn(&Timer) -> &CudaEvent) -> Result<()> {
        if let Some(t) = &self.timer {
            pick(t).record(&self.stream).map_err(dev("record event"))?;
        }
        Ok(())
    }

    fn timing_start(&self) -> Result<()> {
        self.record(|t| &t.start)?;
        // An op without a midpoint reports it at its start.
        self.record(|t| &t.mid)
    }

    fn timing_mark(&self) -> Result<()> {
        self.record(|t| &t.mid)
    }

    fn timing_stop(&self) -> Result<()> {
        self.record(|t| &t.end)
    }
}

/// The session state table: `capacity` rows of `hp` f32 (the first `hidden` used, the rest zero).
struct States {
    capacity: usize,
    hidden: usize,
    hp: usize,
    data: Option<CudaSlice<f32>>,
}

impl States {
    fn ptr(&self, stream: &CudaStream) -> u64 {
        self.data.as_ref().map_or(0, |d| d.device_ptr(stream).0)
    }
}

/// Backend on one CUDA device.
pub struct CudaBackend {
    gpu: Gpu,
    models: HashMap<ModelId, DeviceModel>,
    next_id: u64,
    states: States,
}

impl CudaBackend {
    /// Opens device `ordinal`: checks for the driver first (cudarc panics without one), then creates a
    /// context and a stream and loads the kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(BackendError::device(
                "no CUDA driver found: libcuda.so could not be loaded",
            ));
        }
        catch_unwind(AssertUnwindSafe(|| Self::open(ordinal))).unwrap_or_else(|_| {
            Err(BackendError::device(
                "the CUDA driver is too old for this build (CUDA 13.0)",
            ))
        })
    }

    fn open(ordinal: usize) -> Result<Self> {
        let count = CudaContext::device_count().map_err(dev("CUDA driver unusable"))?;
        if ordinal >= count.max(0) as usize {
            return Err(BackendError::device(format!(
                "no CUDA device {ordinal} ({count} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev("create CUDA context"))?;
        let attr = |a: CUdevice_attribute| -> Result<usize> {
            Ok(ctx.attribute(a).map_err(dev("query device"))?.max(0) as usize)
        };
        let name = ctx.name().map_err(dev("query device"))?;
        let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        if major < 9 {
            return Err(BackendError::device(format!(
                "cuda:{ordinal} {name} has compute capability {major}.x; the kernels need 9.0 or newer"
            )));
        }
        let optin =
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let limits = Limits {
            sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            // Less room for the kernels' static shared memory (≤ 1 KiB), so that plans always fit.
            smem_per_block: optin.saturating_sub(2048),
            smem_per_sm: attr(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            )?,
        };
        // SAFETY: all of this backend's work runs on its one stream, so cudarc's per-buffer events
        // (cross-stream synchronisation) are not needed; buffers are freed in stream order.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(dev("create stream"))?;
        let kernels = Kernels::load(&ctx, optin as u32)?;
        let upload = Upload::new(&ctx)?;
        Ok(Self {
            gpu: Gpu {
                ctx,
                stream,
                kernels,
                limits,
                name: format!("cuda:{ordinal} {name}"),
                upload,
                keys_a: Scratch::new(),
                keys_b: Scratch::new(),
                floats: Scratch::new(),
                bounds: Scratch::new(),
                timer: None,
            },
            models: HashMap::new(),
            next_id: 1,
            states: States {
                capacity: 0,
                hidden: 0,
                hp: 0,
                data: None,
            },
        })
    }

    /// Records the device time of every following op's kernels (not the copies of its inputs and
    /// results), read with [`CudaBackend::last_device_ms`].
    pub fn set_timing(&mut self, on: bool) -> Result<()> {
        self.gpu.timer = if on {
            let ev = || {
                self.gpu
                    .ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(dev("create event"))
            };
            Some(Timer {
                start: ev()?,
                mid: ev()?,
                end: ev()?,
            })
        } else {
            None
        };
        Ok(())
    }

    /// Device milliseconds of the last op's kernels, when timing is on.
    pub fn last_device_ms(&self) -> Result<Option<f32>> {
        Ok(self.last_device_split_ms()?.map(|(a, b)| a + b))
    }

    /// The last op's device milliseconds split at its midpoint (top-k: scan, merge), when timing is on.
    pub fn last_device_split_ms(&self) -> Result<Option<(f32, f32)>> {
        let Some(t) = &self.gpu.timer else {
            return Ok(None);
        };
        t.end.synchronize().map_err(dev("wait for event"))?;
        let first = t.start.elapsed_ms(&t.mid).map_err(dev("read event"))?;
        let second = t.mid.elapsed_ms(&t.end).map_err(dev("read event"))?;
        Ok(Some((first, second)))
    }

    /// Bytes of a model's output item table on the device (what a full-catalogue scan streams).
    pub fn item_table_bytes(&self, model: ModelId) -> Option<usize> {
        self.models.get(&model).map(DeviceModel::item_out_bytes)
    }

    /// Device-to-device copy bandwidth over `bytes` (read + write counted), in GB/s: the memory
    /// floor the kernels are compared against.
    pub fn copy_bandwidth_gbs(&mut self, bytes: usize, reps: usize) -> Result<f64> {
        let stream = &self.gpu.stream;
        let n = bytes / 4;
        let src = stream.alloc_zeros::<f32>(n).map_err(dev("alloc"))?;
        let mut dst = stream.alloc_zeros::<f32>(n).map_err(dev("alloc"))?;
        let ev = || {
            self.gpu
                .ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(dev("create event"))
        };
        let (start, end) = (ev()?, ev()?);
        stream.memcpy_dtod(&src, &mut dst).map_err(dev("copy"))?;
        start.record(stream).map_err(dev("record event"))?;
        for _ in 0..reps {
            stream.memcpy_dtod(&src, &mut dst).map_err(dev("copy"))?;
        }
        end.record(stream).map_err(dev("record event"))?;
        end.synchronize().map_err(dev("wait for event"))?;
        let ms = f64::from(start.elapsed_ms(&end).map_err(dev("read event"))?);
        Ok((2 * n * 4 * reps) as f64 / (ms * 1e-3) / 1e9)
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> usize {
        self.gpu.limits.sm_count
    }

    fn model(&self, id: ModelId) -> Result<&DeviceModel> {
        let m = self.models.get(&id).ok_or(BackendError::UnknownModel(id))?;
        if self.states.hidden != m.hidden {
            return Err(BackendError::HiddenMismatch {
                got: self.states.hidden,
                want: m.hidden,
            });
        }
        Ok(m)
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> String {
        self.gpu.name.clone()
    }

    fn upload_model(&mut self, weights: &ModelWeights, dtype: Dtype) -> Result<ModelId> {
        weights.validate()?;
        // Item indices and tile offsets are u32 on the device.
        if weights.n_items > (u32::MAX as usize) - PAD_ITEMS {
            return Err(BackendError::BadModel(format!(
                "{} items do not fit u32 indices",
                weights.n_items
            )));
        }
        let model = DeviceModel::upload(&self.gpu.stream, weights, dtype)?;
        let id = ModelId(self.next_id);
        self.next_id += 1;
        self.models.insert(id, model);
        Ok(id)
    }

    fn drop_model(&mut self, model: ModelId) {
        // Freed in stream order: kernels already queued still see the tables.
        self.models.remove(&model);
    }

    fn alloc_states(&mut self, capacity: usize, hidden: usize) -> Result<()> {
        let hp = round_up(hidden, ROW_ALIGN);
        let len = capacity.checked_mul(hp).ok_or_else(|| {
            BackendError::device(format!("state table {capacity}×{hidden} overflows"))
        })?;
        if capacity > u32::MAX as usize {
            return Err(BackendError::device(format!(
                "state table of {capacity} slots exceeds u32 slot indices"
            )));
        }
        self.states.data = None;
        let data = if len == 0 {
            None
        } else {
            Some(
                self.gpu
                    .stream
                    .alloc_zeros::<f32>(len)
                    .map_err(dev("alloc states"))?,
            )
        };
        self.states = States {
            capacity,
            hidden,
            hp,
            data,
        };
        Ok(())
    }

    fn states_shape(&self) -> (usize, usize) {
        (self.states.capacity, self.states.hidden)
    }

    fn reset_states(&mut self, slots: &[u32]) -> Result<()> {
        validate::slots(slots, self.states.capacity)?;
        if slots.is_empty() || self.states.hp == 0 {
            return Ok(());
        }
        let states = self.states.ptr(&self.gpu.stream);
        self.gpu.zero_rows(states, self.states.hp, slots)
    }

    fn read_state(&mut self, slot: u32) -> Result<Vec<f32>> {
        let s = validate::slot(slot, self.states.capacity)?;
        let (h, hp) = (self.states.hidden, self.states.hp);
        let Some(data) = &self.states.data else {
            return Ok(Vec::new());
        };
        self.gpu
            .stream
            .clone_dtoh(&data.slice(s * hp..s * hp + h))
            .map_err(dev("read state"))
    }

    fn write_state(&mut self, slot: u32, state: &[f32]) -> Result<()> {
        let (h, hp) = (self.states.hidden, self.states.hp);
        let s = validate::state_write(slot, state.len(), self.states.capacity, h)?;
        let Some(data) = &mut self.states.data else {
            return Ok(());
        };
        self.gpu
            .stream
            .memcpy_htod(state, &mut data.slice_mut(s * hp..s * hp + h))
            .map_err(dev("write state"))
    }

    fn gru_step(&mut self, model: ModelId, events: &[Event]) -> Result<()> {
        let m = self.model(model)?;
        validate::events(events, self.states.capacity, m.n_items)?;
        if events.is_empty() {
            return Ok(());
        }
        let states = self.states.ptr(&self.gpu.stream);
        let m = &self.models[&model];
        self.gpu.gru_step(m, states, events)
    }

    fn score(&mut self, model: ModelId, queries: &[ScoreQuery<'_>]) -> Result<Vec<Vec<f32>>> {
        let m = self.model(model)?;
        validate::score_queries(queries, self.states.capacity, m.n_items)?;
        let states = self.states.ptr(&self.gpu.stream);
        let m = &self.models[&model];
        self.gpu.score(m, states, queries)
    }

    fn top_k(&mut self, model: ModelId, queries: &[TopKQuery<'_>]) -> Result<Vec<Vec<Scored>>> {
        self.top_k_beside(model, queries, &|| {})
    }

    /// The fused kernels are queued first and `host` runs while the card ranks; the rare queries
    /// whose k is beyond the fused kernel's follow it.
    fn top_k_beside(
        &mut self,
        model: ModelId,
        queries: &[TopKQuery<'_>],
        host: &(dyn Fn() + Sync),
    ) -> Result<Vec<Vec<Scored>>> {
        self.model(model)?;
        validate::top_k_queries(queries, self.states.capacity)?;
        if queries.is_empty() {
            host();
            return Ok(Vec::new());
        }
        let states = self.states.ptr(&self.gpu.stream);
        let m = &self.models[&model];
        let ks: Vec<usize> = queries.iter().map(|q| q.k.min(m.n_items)).collect();
        let fused: Vec<usize> = (0..queries.len())
            .filter(|&i| ks[i] <= MAX_FUSED_K)
            .collect();
        let queued = if fused.is_empty() {
            None
        } else {
            let qs: Vec<&TopKQuery<'_>> = fused.iter().map(|&i| &queries[i]).collect();
            let fks: Vec<usize> = fused.iter().map(|&i| ks[i]).collect();
            Some(self.gpu.top_k_fused_launch(m, states, &qs, &fks))
        };
        host();
        let mut answers: Vec<Vec<Scored>> = vec![Vec::new(); queries.len()];
        if let Some(queued) = queued {
            let got = self.gpu.top_k_fused_read(queued?)?;
            for (&i, a) in fused.iter().zip(got) {
                answers[i] = a;
            }
        }
        for (i, q) in queries.iter().enumerate() {
            if ks[i] > MAX_FUSED_K {
                answers[i] = self.gpu.top_k_full(m, states, q, ks[i])?;
            }
        }
        Ok(answers)
    }
}
