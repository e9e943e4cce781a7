//! Host side of the CUDA top-k: plans the fused scan (query-group size, catalogue chunks, buffer
//! capacity) for a batch, launches the scan and the merge rounds, and decodes the ranking keys.
//! Queries whose k exceeds [`MAX_FUSED_K`] are answered from a full score vector instead.

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::model::DeviceModel;
use super::ptx::{SCAN_GROUPS, dtype_index};
use super::{Gpu, dev};
use crate::{BackendError, Result, Scored, TopKQuery};

/// Largest k the fused kernel answers; its per-query buffers (8 bytes × the power of two ≥ k + 256)
/// must fit shared memory several times over.
pub const MAX_FUSED_K: usize = 2048;
/// Keys one merge block selects from (128 KiB of shared memory).
const MERGE_KEYS: usize = 16_384;
/// Threads of a scan block: a selection round adds at most this many keys per query.
const SCAN_THREADS: usize = 256;
/// Values (rows × dims) of one staged step of the scan.
const STEP_VALUES: usize = 8192;
/// Bound on the scan's candidate output, in bytes (queries × chunks × k keys).
const MAX_CANDIDATE_BYTES: usize = 256 << 20;

/// The ranking key of `topk.cu`'s `rank_key`: larger is better, ties to the lower item, NaN lowest.
pub(crate) fn rank_key(score: f32, item: u32) -> u64 {
    let b = if score.is_nan() {
        u32::MAX
    } else if score == 0.0 {
        0
    } else {
        score.to_bits()
    };
    let o = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    (u64::from(o) << 32) | u64::from(!item)
}

/// Inverse of [`rank_key`] (a NaN score comes back as a NaN, −0 as +0).
pub(crate) fn decode_key(key: u64) -> Scored {
    let o = (key >> 32) as u32;
    let bits = if o & 0x8000_0000 != 0 {
        o & 0x7fff_ffff
    } else {
        !o
    };
    Scored {
        item: !(key as u32),
        score: f32::from_bits(bits),
    }
}

/// How one batch of fused queries is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScanPlan {
    /// Index into [`SCAN_GROUPS`] and the group size itself.
    pub group_index: usize,
    pub group: usize,
    /// Candidate buffer per query: a power of two ≥ kmax + 256.
    pub cap: usize,
    pub smem: usize,
    /// The tensor-core scan (`topk_scan_mma_*`, bf16 tables, 8 or 16 queries) instead of the SIMT one.
    pub mma: bool,
    /// Items per tile: 256 × items per thread.
    pub tile_items: usize,
    pub chunks: usize,
    pub tiles_per_chunk: usize,
}

/// Device limits the plan depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub sm_count: usize,
    pub smem_per_block: usize,
    pub smem_per_sm: usize,
}

/// The scan kernel instance for a group size, as topk.cu compiles it (`TOPK_SCAN_ALL_QG`,
/// `TOPK_SCAN_MMA`): resident blocks per SM (its `__launch_bounds__`), items per thread, and bytes
/// of shared memory besides the candidate buffers. `mma`: the tensor-core scan (bf16 tables).
fn scan_shape(group: usize, hp: usize, mma: bool) -> (usize, usize, usize) {
    if mma {
        // Query fragments (hp·QG·4), a 256 × 40 bf16 tile, 256 × (QG + 1) f32 scores.
        return (
            2,
            1,
            hp * group * 4 + SCAN_THREADS * 40 * 2 + SCAN_THREADS * (group + 1) * 4,
        );
    }
    let (blocks, ipt) = match group {
        1 => (3, 1),
        2 => (2, 1),
        4 => (3, 2),
        _ => (2, 2),
    };
    // Query values (hp·QG·4) and the staged f32 tile (see `Tile` in topk.cu).
    let rows = SCAN_THREADS * ipt;
    (
        blocks,
        ipt,
        hp * group * 4 + rows * (STEP_VALUES / rows + 4) * 4,
    )
}

/// Whether a group of this size over tables of this dtype runs on the tensor-core scan.
pub(crate) fn use_mma(group: usize, bf16: bool) -> bool {
    bf16 && group >= 8
}

pub(crate) fn plan_scan(
    n_queries: usize,
    kmax: usize,
    hp: usize,
    n_items: usize,
    bf16: bool,
    lim: Limits,
) -> Option<ScanPlan> {
    let cap = (kmax + SCAN_THREADS).next_power_of_two();
    let smem = |g: usize| scan_shape(g, hp, use_mma(g, bf16)).2 + g * cap * 8;
    let want = n_queries
        .next_power_of_two()
        .min(SCAN_GROUPS[SCAN_GROUPS.len() - 1]);
    let group_index = (0..SCAN_GROUPS.len())
        .rev()
        .find(|&i| SCAN_GROUPS[i] <= want && smem(SCAN_GROUPS[i]) <= lim.smem_per_block)?;
    let group = SCAN_GROUPS[group_index];
    let mma = use_mma(group, bf16);
    let (blocks, ipt, _) = scan_shape(group, hp, mma);
    let smem = smem(group);
    let groups = n_queries.div_ceil(group);
    // Two waves of blocks keep every SM busy while chunks finish unevenly.
    let per_sm = (lim.smem_per_sm / (smem + 1024)).clamp(1, blocks);
    let target = 2 * lim.sm_count * per_sm;
    let tile_items = SCAN_THREADS * ipt;
    let n_tiles = n_items.div_ceil(tile_items);
    // A chunk of fewer than ~4k items would hand the merge nearly all of its items.
    let min_tiles = (4 * kmax).div_ceil(tile_items).max(1);
    let max_chunks = (MAX_CANDIDATE_BYTES / (8 * kmax * n_queries)).max(1);
    let chunks = target
        .div_ceil(groups)
        .min(n_tiles.div_ceil(min_tiles))
        .min(max_chunks)
        .clamp(1, 65_535);
    let tiles_per_chunk = n_tiles.div_ceil(chunks);
    Some(ScanPlan {
        group_index,
        group,
        cap,
        smem,
        mma,
        tile_items,
        chunks: n_tiles.div_ceil(tiles_per_chunk),
        tiles_per_chunk,
    })
}

/// Lists merged per block in one round, for keys `kstride` wide.
pub(crate) fn merge_group(kstride: usize, kpad: usize, smem_per_block: usize) -> usize {
    let fit = smem_per_block.saturating_sub(kpad * 8 + 2048) / (kstride * 8);
    (MERGE_KEYS / kstride).min(fit).max(2)
}

/// A fused top-k whose kernels are queued on the stream: [`Gpu::top_k_fused_read`] waits for them
/// and decodes the answers.
pub(crate) struct FusedTopK {
    in_a: bool,
    kstride: usize,
    ks: Vec<usize>,
}

impl Gpu {
    /// Queues the fused top-k of `queries` against the state table at `states` (slots validated;
    /// `ks` holds each query's k, 1 ≤ k ≤ min(MAX_FUSED_K, n_items)) and returns without waiting
    /// for the card, so the host can work meanwhile.
    pub(crate) fn top_k_fused_launch(
        &mut self,
        m: &DeviceModel,
        states: u64,
        queries: &[&TopKQuery<'_>],
        ks: &[usize],
    ) -> Result<FusedTopK> {
        let nq = queries.len();
        let kmax = *ks.iter().max().expect("at least one query");
        let (n_items, hp, dt) = (m.n_items, m.hp, dtype_index(m.dtype));
        let bf16 = m.dtype == crate::Dtype::Bf16;
        let plan = plan_scan(nq, kmax, hp, n_items, bf16, self.limits).ok_or_else(|| {
            BackendError::device(format!(
                "top-k for hidden size {hp} and k {kmax} does not fit shared memory"
            ))
        })?;

        // Inputs: slots, k, exclusion offsets and the sorted, deduplicated exclusions.
        let slots: Vec<u32> = queries.iter().map(|q| q.slot).collect();
        let k32: Vec<u32> = ks.iter().map(|&k| k as u32).collect();
        let mut ex_start = Vec::with_capacity(nq + 1);
        let mut ex_items: Vec<u32> = Vec::new();
        for q in queries {
            ex_start.push(ex_items.len() as u32);
            let first = ex_items.len();
            ex_items.extend(
                q.exclude
                    .iter()
                    .copied()
                    .filter(|&i| (i as usize) < n_items),
            );
            ex_items[first..].sort_unstable();
            let mut kept = first;
            for i in first..ex_items.len() {
                if i == first || ex_items[i] != ex_items[kept - 1] {
                    ex_items[kept] = ex_items[i];
                    kept += 1;
                }
            }
            ex_items.truncate(kept);
        }
        ex_start.push(ex_items.len() as u32);
        let addrs = self.upload.stage(
            &self.ctx,
            &self.stream,
            &[&slots, &k32, &ex_start, &ex_items],
        )?;
        self.timing_start()?;

        let kstride = kmax;
        let lists = plan.chunks;
        let cand = self.keys_a.get(&self.stream, nq * lists * kstride)?;
        let bounds = self.bounds.zeroed(&self.stream, nq)?;
        {
            let func = if plan.mma {
                &self.kernels.topk_scan_mma[usize::from(plan.group == 16)]
            } else {
                &self.kernels.topk_scan[dt][plan.group_index]
            };
            let (table, bias) = (
                m.item_out.ptr(&self.stream),
                m.item_bias.device_ptr(&self.stream).0,
            );
            let (n_items32, hp32, nq32) = (n_items as u32, hp as u32, nq as u32);
            let (tpc, cap32, ks32) = (plan.tiles_per_chunk as u32, plan.cap as u32, kstride as u32);
            let mut b = self.stream.launch_builder(func);
            b.arg(&table)
                .arg(&bias)
                .arg(&n_items32)
                .arg(&hp32)
                .arg(&states);
            b.arg(&addrs[0])
                .arg(&addrs[1])
                .arg(&addrs[2])
                .arg(&addrs[3]);
            b.arg(&nq32)
                .arg(&tpc)
                .arg(&cap32)
                .arg(&ks32)
                .arg(&cand)
                .arg(&bounds);
            let cfg = LaunchConfig {
                grid_dim: (nq.div_ceil(plan.group) as u32, plan.chunks as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: plan.smem as u32,
            };
            // SAFETY: argument list matches `topk_scan_q*` in topk.cu; every buffer is sized per plan.
            unsafe { b.launch(cfg) }.map_err(dev("launch topk_scan"))?;
        }
        self.timing_mark()?;

        // Merge rounds until one list per query is left; the last round sorts.
        let kpad = kstride.next_power_of_two();
        let group = merge_group(kstride, kpad, self.limits.smem_per_block);
        let (mut src_is_a, mut lists_in) = (true, lists);
        loop {
            let lists_out = lists_in.div_ceil(group);
            let (src, dst) = if src_is_a {
                (
                    cand,
                    self.keys_b.get(&self.stream, nq * lists_out * kstride)?,
                )
            } else {
                (
                    self.keys_b.get(&self.stream, 0)?,
                    self.keys_a.get(&self.stream, nq * lists_out * kstride)?,
                )
            };
            let sorted = u32::from(lists_out == 1);
            // With a single output list the block reads all lists_in (≤ group) lists.
            let g = group.min(lists_in);
            let (li, ks32, g32, kp32, lo32) = (
                lists_in as u32,
                kstride as u32,
                g as u32,
                kpad as u32,
                lists_out as u32,
            );
            let mut b = self.stream.launch_builder(&self.kernels.topk_merge);
            b.arg(&src)
                .arg(&li)
                .arg(&ks32)
                .arg(&addrs[1])
                .arg(&g32)
                .arg(&kp32);
            b.arg(&dst).arg(&lo32).arg(&sorted).arg(&bounds);
            let cfg = LaunchConfig {
                grid_dim: (nq as u32, lists_out as u32, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: ((g * kstride + kpad) * 8) as u32,
            };
            // SAFETY: argument list matches `topk_merge`; src holds nq × lists_in × kstride keys and
            // dst room for nq × lists_out × kstride.
            unsafe { b.launch(cfg) }.map_err(dev("launch topk_merge"))?;
            src_is_a = !src_is_a;
            lists_in = lists_out;
            if lists_out == 1 {
                break;
            }
        }
        self.timing_stop()?;
        Ok(FusedTopK {
            in_a: src_is_a,
            kstride,
            ks: ks.to_vec(),
        })
    }

    /// Waits for a queued fused top-k and decodes its answers (per query, best first).
    pub(crate) fn top_k_fused_read(&self, t: FusedTopK) -> Result<Vec<Vec<Scored>>> {
        let FusedTopK { in_a, kstride, ks } = t;
        let keys = if in_a { &self.keys_a } else { &self.keys_b }
            .read(&self.stream, ks.len() * kstride)?;
        Ok(keys
            .chunks_exact(kstride)
            .zip(&ks)
            .map(|(row, &k)| {
                row[..k]
                    .iter()
                    .take_while(|&&key| key != 0)
                    .map(|&key| decode_key(key))
                    .collect()
            })
            .collect())
    }

    /// Top-k from the full score vector, for k beyond the fused kernel.
    pub(crate) fn top_k_full(
        &mut self,
        m: &DeviceModel,
        states: u64,
        q: &TopKQuery<'_>,
        k: usize,
    ) -> Result<Vec<Scored>> {
        let scores = self.score_all(m, states, q.slot)?;
        let exclude: std::collections::HashSet<u32> = q.exclude.iter().copied().collect();
        let mut keys: Vec<u64> = scores
            .iter()
            .enumerate()
            .filter(|&(i, _)| !exclude.contains(&(i as u32)))
            .map(|(i, &s)| rank_key(s, i as u32))
            .collect();
        if keys.len() > k {
            keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
            keys.truncate(k);
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        Ok(keys.into_iter().map(decode_key).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::PAD_ITEMS;
    use super::*;

    #[test]
    fn keys_rank_scores_then_lower_items() {
        let order = [
            rank_key(f32::INFINITY, 9),
            rank_key(2.0, 3),
            rank_key(2.0, 4),
            rank_key(0.0, 1),
            rank_key(-0.0, 2),
            rank_key(-1e-30, 0),
            rank_key(-5.0, 0),
            rank_key(f32::NEG_INFINITY, 0),
            rank_key(f32::NAN, 0),
            rank_key(f32::NAN, 7),
        ];
        assert!(order.windows(2).all(|w| w[0] > w[1]), "{order:x?}");
        assert!(order.iter().all(|&k| k != 0), "0 means empty");
        for (s, i) in [
            (1.5f32, 3u32),
            (-2.25, 0),
            (0.0, u32::MAX - 1),
            (f32::INFINITY, 5),
        ] {
            assert_eq!(decode_key(rank_key(s, i)), Scored { item: i, score: s });
        }
        let neg_zero = decode_key(rank_key(-0.0, 1));
        assert!(neg_zero.score == 0.0 && neg_zero.score.is_sign_positive());
        assert!(decode_key(rank_key(f32::NAN, 1)).score.is_nan());
    }

    fn h100() -> Limits {
        Limits {
            sm_count: 132,
            smem_per_block: 227 * 1024,
            smem_per_sm: 228 * 1024,
        }
    }

    #[test]
    fn plans_fit_shared_memory_and_cover_the_catalogue() {
        for (nq, k, hp, n) in [
            (1usize, 20usize, 128usize, 1_000_000usize),
            (16, 20, 128, 1_000_000),
            (256, 100, 128, 1_000_000),
            (7, 2048, 128, 10_007),
            (1, 2048, 64, 1_000_000),
            (64, 20, 4096, 1037),
            (3, 1, 32, 1),
        ] {
            for bf16 in [false, true] {
                let p = plan_scan(nq, k, hp, n, bf16, h100()).expect("plan");
                let n_tiles = n.div_ceil(p.tile_items);
                assert!(
                    PAD_ITEMS.is_multiple_of(p.tile_items),
                    "tables are padded to whole tiles"
                );
                assert!(p.smem <= 227 * 1024, "{p:?}");
                assert!(p.cap >= k + SCAN_THREADS && p.cap.is_power_of_two());
                assert!(p.chunks * p.tiles_per_chunk >= n_tiles);
                assert!(
                    (p.chunks - 1) * p.tiles_per_chunk < n_tiles,
                    "no empty chunk: {p:?}"
                );
                assert!(p.group <= nq.next_power_of_two());
            }
        }
        // Large batches use whole groups of 16; one session scans many chunks.
        assert_eq!(
            plan_scan(256, 20, 128, 1_000_000, true, h100())
                .unwrap()
                .group,
            16
        );
        assert!(
            plan_scan(1, 20, 128, 1_000_000, false, h100())
                .unwrap()
                .chunks
                >= 264
        );
    }

    #[test]
    fn merge_groups_fit() {
        for k in [1usize, 20, 100, 2048] {
            let kpad = k.next_power_of_two();
            let g = merge_group(k, kpad, 227 * 1024);
            assert!(g >= 2 && (g * k + kpad) * 8 <= 227 * 1024, "k {k}: {g}");
        }
    }
}
