//! Tables of the CPU backend (item embeddings, GRU weights) in a panel layout, stored as f32, bf16 or f16.
//!
//! A panel holds `width` consecutive rows stored dimension-major (`panel[p][lane]`), so the scoring
//! micro-kernel reads the same dimension of 16 rows as one contiguous vector and never needs a
//! horizontal sum. `width == 1` is plain row-major, used for tables that are only ever gathered by row.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::Dtype;

/// Rows per panel of the tables the micro-kernel scans (two AVX2 vectors, one AVX-512 vector).
pub(crate) const LANES: usize = 16;

enum Storage {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

/// A run of panels in their storage type.
pub(crate) enum PanelsRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

pub(crate) struct PanelTable {
    rows: usize,
    dim: usize,
    width: usize,
    data: Storage,
}

impl PanelTable {
    /// Packs the row-major `rows × dim` matrix `src`; the last panel is padded with zero rows.
    pub(crate) fn pack(src: &[f32], rows: usize, dim: usize, width: usize, dtype: Dtype) -> Self {
        assert_eq!(src.len(), rows * dim, "table shape");
        let padded = rows.div_ceil(width) * width;
        let mut packed = vec![0f32; padded * dim];
        for (r, row) in src.chunks_exact(dim).enumerate() {
            let panel = &mut packed[(r / width) * dim * width..][..dim * width];
            for (p, &v) in row.iter().enumerate() {
                panel[p * width + r % width] = v;
            }
        }
        let data = match dtype {
            Dtype::F32 => Storage::F32(packed),
            Dtype::Bf16 => Storage::Bf16(packed.iter().map(|&v| bf16::from_f32(v)).collect()),
            Dtype::F16 => Storage::F16(packed.iter().map(|&v| f16::from_f32(v)).collect()),
        };
        Self {
            rows,
            dim,
            width,
            data,
        }
    }

    pub(crate) fn n_panels(&self) -> usize {
        self.rows.div_ceil(self.width)
    }

    /// Bytes of table data (what a full scan streams from memory).
    pub(crate) fn bytes(&self) -> usize {
        match &self.data {
            Storage::F32(v) => v.len() * 4,
            Storage::Bf16(v) => v.len() * 2,
            Storage::F16(v) => v.len() * 2,
        }
    }

    /// Panels `first..first + count` as f32: borrowed when stored as f32, otherwise converted into
    /// `scratch`. Converting a few panels at a time keeps the f32 copy in L1 while the bf16/f16 table
    /// streams from memory at half the bytes.
    #[inline(always)]
    pub(crate) fn panels_f32<'a>(
        &'a self,
        first: usize,
        count: usize,
        scratch: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        let len = self.dim * self.width;
        let range = first * len..(first + count) * len;
        match &self.data {
            Storage::F32(v) => &v[range],
            Storage::Bf16(v) => {
                scratch.resize(range.len(), 0.0);
                bf16_to_f32(&v[range], scratch);
                scratch
            }
            Storage::F16(v) => {
                scratch.resize(range.len(), 0.0);
                v[range].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }

    /// Panels `first..first + count` as stored, for kernels that widen bf16/f16 as they load.
    pub(crate) fn panels_raw(&self, first: usize, count: usize) -> PanelsRef<'_> {
        let len = self.dim * self.width;
        let range = first * len..(first + count) * len;
        match &self.data {
            Storage::F32(v) => PanelsRef::F32(&v[range]),
            Storage::Bf16(v) => PanelsRef::Bf16(&v[range]),
            Storage::F16(v) => PanelsRef::F16(&v[range]),
        }
    }

    /// Copies row `row` into `out` (`dim` values).
    pub(crate) fn row_into(&self, row: usize, out: &mut [f32]) {
        let (w, d) = (self.width, self.dim);
        let base = (row / w) * d * w + row % w;
        let out = &mut out[..d];
        if w == 1 {
            match &self.data {
                Storage::F32(v) => out.copy_from_slice(&v[base..][..d]),
                Storage::Bf16(v) => bf16_to_f32(&v[base..][..d], out),
                Storage::F16(v) => v[base..][..d].convert_to_f32_slice(out),
            }
            return;
        }
        match &self.data {
            Storage::F32(v) => out
                .iter_mut()
                .enumerate()
                .for_each(|(p, o)| *o = v[base + p * w]),
            Storage::Bf16(v) => out
                .iter_mut()
                .enumerate()
                .for_each(|(p, o)| *o = v[base + p * w].to_f32()),
            Storage::F16(v) => out
                .iter_mut()
                .enumerate()
                .for_each(|(p, o)| *o = v[base + p * w].to_f32()),
        }
    }

    /// Copies rows `rows` into `out` (row-major, `rows.len() × dim`).
    pub(crate) fn gather_rows(&self, rows: &[usize], out: &mut [f32]) {
        for (&r, o) in rows.iter().zip(out.chunks_exact_mut(self.dim)) {
            self.row_into(r, o);
        }
    }

    /// `dot(row, x)` accumulated in f32 in dimension order.
    pub(crate) fn dot_row(&self, row: usize, x: &[f32]) -> f32 {
        let (w, d) = (self.width, self.dim);
        let base = (row / w) * d * w + row % w;
        let x = &x[..d];
        match &self.data {
            Storage::F32(v) => x
                .iter()
                .enumerate()
                .map(|(p, &a)| a * v[base + p * w])
                .sum(),
            Storage::Bf16(v) => x
                .iter()
                .enumerate()
                .map(|(p, &a)| a * v[base + p * w].to_f32())
                .sum(),
            Storage::F16(v) => x
                .iter()
                .enumerate()
                .map(|(p, &a)| a * v[base + p * w].to_f32())
                .sum(),
        }
    }
}

/// bf16 is the top half of an f32, so widening is a 16-bit shift; written as a plain loop that the
/// compiler vectorises.
#[inline(always)]
fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, dim: usize) -> Vec<f32> {
        (0..rows * dim).map(|i| i as f32 * 0.25 - 7.0).collect()
    }

    #[test]
    fn rows_round_trip_in_every_layout() {
        let (rows, dim) = (37, 5);
        let src = sample(rows, dim);
        for width in [1, LANES] {
            for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
                let t = PanelTable::pack(&src, rows, dim, width, dtype);
                let mut row = vec![0.0; dim];
                for r in 0..rows {
                    t.row_into(r, &mut row);
                    // Small multiples of 1/4 are exact in all three dtypes.
                    assert_eq!(row, src[r * dim..][..dim], "{dtype} width {width} row {r}");
                }
            }
        }
    }

    #[test]
    fn panels_are_dimension_major_and_padded() {
        let (rows, dim) = (20, 3);
        let src = sample(rows, dim);
        let t = PanelTable::pack(&src, rows, dim, LANES, Dtype::Bf16);
        assert_eq!(t.n_panels(), 2);
        let mut scratch = Vec::new();
        let p = t.panels_f32(1, 1, &mut scratch);
        assert_eq!(p.len(), dim * LANES);
        // Row 17 is lane 1 of panel 1; lanes past row 19 are padding.
        assert_eq!(p[2 * LANES + 1], src[17 * dim + 2]);
        assert_eq!(p[LANES - 1], 0.0);
    }
}
