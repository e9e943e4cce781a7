//! A model as the CUDA backend holds it: item tables in the upload dtype with rows padded to a
//! multiple of 32 values and the catalogue padded to whole top-k tiles (zeros, so kernels stream
//! whole chunks without bounds checks), and the GRU weights transposed so that a warp reads 32
//! consecutive hidden units of one input dimension as one coalesced row.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::{bf16, f16};

use super::{PAD_ITEMS, ROW_ALIGN, dev};
use crate::{Dtype, ModelWeights, Result};

/// An item table in device memory.
pub(crate) enum Table {
    F32(CudaSlice<f32>),
    /// bf16 or f16 bit patterns.
    Half(CudaSlice<u16>),
}

impl Table {
    fn upload(
        stream: &Arc<CudaStream>,
        src: &[f32],
        rows: usize,
        dim: usize,
        shape: (usize, usize),
        dtype: Dtype,
    ) -> Result<Self> {
        Ok(match dtype {
            Dtype::F32 => Table::F32(
                stream
                    .clone_htod(&pad(src, rows, dim, shape, |v| v))
                    .map_err(dev("upload item table"))?,
            ),
            Dtype::Bf16 => Table::Half(
                stream
                    .clone_htod(&pad(src, rows, dim, shape, |v| bf16::from_f32(v).to_bits()))
                    .map_err(dev("upload item table"))?,
            ),
            Dtype::F16 => Table::Half(
                stream
                    .clone_htod(&pad(src, rows, dim, shape, |v| f16::from_f32(v).to_bits()))
                    .map_err(dev("upload item table"))?,
            ),
        })
    }

    pub(crate) fn ptr(&self, stream: &CudaStream) -> u64 {
        match self {
            Table::F32(s) => s.device_ptr(stream).0,
            Table::Half(s) => s.device_ptr(stream).0,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            Table::F32(s) => s.len() * 4,
            Table::Half(s) => s.len() * 2,
        }
    }
}

/// Row-major `rows × dim` → `shape.0 × shape.1` (both at least as large), zero-padded, each value
/// converted by `f`.
fn pad<T: Copy + Default>(
    src: &[f32],
    rows: usize,
    dim: usize,
    shape: (usize, usize),
    f: impl Fn(f32) -> T,
) -> Vec<T> {
    let (rows_p, dim_p) = shape;
    let mut out = vec![T::default(); rows_p * dim_p];
    for (r, row) in src.chunks_exact(dim).take(rows).enumerate() {
        for (o, &v) in out[r * dim_p..][..dim].iter_mut().zip(row) {
            *o = f(v);
        }
    }
    out
}

/// `n` rounded up to a multiple of `to`.
pub(crate) fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

pub(crate) struct DeviceModel {
    pub n_items: usize,
    pub hidden: usize,
    /// Padded widths of the input embedding and of the hidden state (row strides on the device).
    pub ep: usize,
    pub hp: usize,
    pub dtype: Dtype,
    /// `rows × hp`, rows = n_items rounded up to a multiple of `PAD_ITEMS`.
    pub item_out: Table,
    /// `rows × ep`; `None` when tied (the GRU then reads `item_out`, and `ep == hp`).
    pub item_in: Option<Table>,
    /// `rows`.
    pub item_bias: CudaSlice<f32>,
    /// `ep × 3·hp` and `hp × 3·hp`: column `g·hp + j` is gate `g` (r, z, n) of unit `j`.
    pub w_ih_t: CudaSlice<f32>,
    pub w_hh_t: CudaSlice<f32>,
    /// `3·hp`, same column order.
    pub b_ih: CudaSlice<f32>,
    pub b_hh: CudaSlice<f32>,
}

impl DeviceModel {
    /// `w` must have been validated.
    pub(crate) fn upload(stream: &Arc<CudaStream>, w: &ModelWeights, dtype: Dtype) -> Result<Self> {
        let (n, e, h) = (w.n_items, w.embed_dim, w.hidden);
        let (ep, hp) = (round_up(e, ROW_ALIGN), round_up(h, ROW_ALIGN));
        let rows = round_up(n, PAD_ITEMS);
        let item_out = Table::upload(stream, &w.item_out, n, h, (rows, hp), dtype)?;
        let item_in = match &w.item_in {
            Some(t) => Some(Table::upload(stream, t, n, e, (rows, ep), dtype)?),
            None => None,
        };
        let up = |v: &[f32], what: &'static str| stream.clone_htod(v).map_err(dev(what));
        let mut bias = w.item_bias.clone();
        bias.resize(rows, 0.0);
        Ok(Self {
            n_items: n,
            hidden: h,
            ep,
            hp,
            dtype,
            item_out,
            item_in,
            item_bias: up(&bias, "upload item bias")?,
            w_ih_t: up(&transpose_gates(&w.w_ih, h, e, hp, ep), "upload W_ih")?,
            w_hh_t: up(&transpose_gates(&w.w_hh, h, h, hp, hp), "upload W_hh")?,
            b_ih: up(&pad_gates(&w.b_ih, h, hp), "upload b_ih")?,
            b_hh: up(&pad_gates(&w.b_hh, h, hp), "upload b_hh")?,
        })
    }

    /// Bytes of the item tables (what a full-catalogue scan streams is `item_out`).
    pub(crate) fn item_out_bytes(&self) -> usize {
        self.item_out.bytes()
    }
}

/// `3h × d` gate-major weights (row `g·h + j`) → `dp × 3·hp`, column `g·hp + j`, zero-padded.
fn transpose_gates(w: &[f32], h: usize, d: usize, hp: usize, dp: usize) -> Vec<f32> {
    let mut out = vec![0.0; dp * 3 * hp];
    for g in 0..3 {
        for j in 0..h {
            let row = &w[(g * h + j) * d..][..d];
            for (p, &v) in row.iter().enumerate() {
                out[p * 3 * hp + g * hp + j] = v;
            }
        }
    }
    out
}

/// `3h` gate-major biases → `3·hp`, zero-padded.
fn pad_gates(b: &[f32], h: usize, hp: usize) -> Vec<f32> {
    let mut out = vec![0.0; 3 * hp];
    for g in 0..3 {
        out[g * hp..][..h].copy_from_slice(&b[g * h..][..h]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_puts_gate_unit_columns_per_input_row() {
        // h = 2, d = 3: rows (g, j) = value 100·g + 10·j + p.
        let w: Vec<f32> = (0..3)
            .flat_map(|g| {
                (0..2).flat_map(move |j| (0..3).map(move |p| (100 * g + 10 * j + p) as f32))
            })
            .collect();
        let t = transpose_gates(&w, 2, 3, 4, 4);
        assert_eq!(t.len(), 4 * 12);
        for p in 0..3 {
            for g in 0..3 {
                for j in 0..4 {
                    let want = if j < 2 {
                        (100 * g + 10 * j + p) as f32
                    } else {
                        0.0
                    };
                    assert_eq!(t[p * 12 + g * 4 + j], want, "p {p} g {g} j {j}");
                }
            }
        }
        assert!(
            t[3 * 12..].iter().all(|&v| v == 0.0),
            "padded input rows are zero"
        );
    }

    #[test]
    fn pad_keeps_rows_and_zero_fills() {
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let out = pad(&src, 2, 3, (3, 4), |v| v);
        assert_eq!(
            out,
            [1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            pad_gates(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            [1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 5.0, 6.0, 0.0]
        );
    }
}
