//! Launches of the GRU step, candidate scoring and state-table kernels (inputs already validated).

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::model::DeviceModel;
use super::ptx::dtype_index;
use super::{Gpu, ROW_ALIGN, dev};
use crate::waves::waves;
use crate::{Event, Result, ScoreQuery};

/// Events per GRU block (8 warps × 8 events; see gru.cu).
const GRU_EVENTS: usize = 64;

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block) as u32
}

impl Gpu {
    pub(crate) fn gru_step(
        &mut self,
        m: &DeviceModel,
        states: u64,
        events: &[Event],
    ) -> Result<()> {
        let (ordered, bounds) = waves(events);
        let slots: Vec<u32> = ordered.iter().map(|e| e.slot).collect();
        let items: Vec<u32> = ordered.iter().map(|e| e.item).collect();
        let addrs = self
            .upload
            .stage(&self.ctx, &self.stream, &[&slots, &items])?;
        self.timing_start()?;
        let widest = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let h_new = self.floats.get(&self.stream, widest * m.hp)?;
        let dt = dtype_index(m.dtype);
        let emb = m.item_in.as_ref().unwrap_or(&m.item_out).ptr(&self.stream);
        let s = &self.stream;
        let (w_ih, w_hh) = (m.w_ih_t.device_ptr(s).0, m.w_hh_t.device_ptr(s).0);
        let (b_ih, b_hh) = (m.b_ih.device_ptr(s).0, m.b_hh.device_ptr(s).0);
        let (ep, hp, hidden) = (m.ep as u32, m.hp as u32, m.hidden as u32);
        for w in bounds.windows(2) {
            let (first, n) = (w[0], w[1] - w[0]);
            let (wave_slots, wave_items) =
                (addrs[0] + 4 * first as u64, addrs[1] + 4 * first as u64);
            let n32 = n as u32;
            let mut b = self.stream.launch_builder(&self.kernels.gru_gates[dt]);
            b.arg(&emb)
                .arg(&ep)
                .arg(&w_ih)
                .arg(&w_hh)
                .arg(&b_ih)
                .arg(&b_hh);
            b.arg(&states)
                .arg(&hp)
                .arg(&hidden)
                .arg(&wave_slots)
                .arg(&wave_items);
            b.arg(&n32).arg(&h_new);
            let cfg = LaunchConfig {
                grid_dim: ((m.hp / ROW_ALIGN) as u32, blocks(n, GRU_EVENTS), 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match `gru_gates_*` in gru.cu; h_new holds n × hp values.
            unsafe { b.launch(cfg) }.map_err(dev("launch gru_gates"))?;
            let mut b = self.stream.launch_builder(&self.kernels.gru_scatter);
            b.arg(&h_new)
                .arg(&wave_slots)
                .arg(&n32)
                .arg(&hp)
                .arg(&states);
            // SAFETY: arguments match `gru_scatter`; one thread per value of the wave.
            unsafe { b.launch(LaunchConfig::for_num_elems(n32 * hp)) }
                .map_err(dev("launch gru_scatter"))?;
        }
        self.timing_stop()
    }

    pub(crate) fn score(
        &mut self,
        m: &DeviceModel,
        states: u64,
        queries: &[ScoreQuery<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let total: usize = queries.iter().map(|q| q.candidates.len()).sum();
        if total == 0 {
            return Ok(queries.iter().map(|_| Vec::new()).collect());
        }
        let mut items = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(total);
        for q in queries {
            items.extend_from_slice(q.candidates);
            slots.extend(std::iter::repeat_n(q.slot, q.candidates.len()));
        }
        let addrs = self
            .upload
            .stage(&self.ctx, &self.stream, &[&items, &slots])?;
        self.timing_start()?;
        let out = self.floats.get(&self.stream, total)?;
        let (table, bias) = (
            m.item_out.ptr(&self.stream),
            m.item_bias.device_ptr(&self.stream).0,
        );
        let (hp, n) = (m.hp as u32, total as u32);
        let mut b = self
            .stream
            .launch_builder(&self.kernels.score[dtype_index(m.dtype)]);
        b.arg(&table)
            .arg(&bias)
            .arg(&states)
            .arg(&hp)
            .arg(&addrs[0])
            .arg(&addrs[1]);
        b.arg(&n).arg(&out);
        let cfg = LaunchConfig {
            grid_dim: (blocks(total, 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `score_*` in score.cu; out holds `total` values.
        unsafe { b.launch(cfg) }.map_err(dev("launch score"))?;
        self.timing_stop()?;
        let flat = self.floats.read(&self.stream, total)?;
        let mut rest = flat.as_slice();
        Ok(queries
            .iter()
            .map(|q| {
                let (mine, tail) = rest.split_at(q.candidates.len());
                rest = tail;
                mine.to_vec()
            })
            .collect())
    }

    /// Every item's score for the session in `slot`.
    pub(crate) fn score_all(
        &mut self,
        m: &DeviceModel,
        states: u64,
        slot: u32,
    ) -> Result<Vec<f32>> {
        let out = self.floats.get(&self.stream, m.n_items)?;
        let (table, bias) = (
            m.item_out.ptr(&self.stream),
            m.item_bias.device_ptr(&self.stream).0,
        );
        let (hp, n) = (m.hp as u32, m.n_items as u32);
        let mut b = self
            .stream
            .launch_builder(&self.kernels.score_all[dtype_index(m.dtype)]);
        b.arg(&table)
            .arg(&bias)
            .arg(&states)
            .arg(&hp)
            .arg(&slot)
            .arg(&n)
            .arg(&out);
        let cfg = LaunchConfig {
            grid_dim: (blocks(m.n_items, 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `score_all_*` in score.cu; out holds n_items values.
        unsafe { b.launch(cfg) }.map_err(dev("launch score_all"))?;
        self.floats.read(&self.stream, m.n_items)
    }

    pub(crate) fn zero_rows(&mut self, states: u64, hp: usize, slots: &[u32]) -> Result<()> {
        let addrs = self.upload.stage(&self.ctx, &self.stream, &[slots])?;
        let (n, hp32) = (slots.len() as u32, hp as u32);
        let mut b = self.stream.launch_builder(&self.kernels.states_zero);
        b.arg(&states).arg(&addrs[0]).arg(&n).arg(&hp32);
        // SAFETY: arguments match `states_zero` in gru.cu; slots were validated.
        unsafe { b.launch(LaunchConfig::for_num_elems(n * hp32)) }
            .map_err(dev("launch states_zero"))?;
        Ok(())
    }
}
