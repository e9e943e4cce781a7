// Fused full-catalogue scoring + top-k, without a batch × n_items score matrix.
//
// `topk_scan_q{QG}_*`: block (g, c) scores item chunk c for query group g (QG sessions). The group's
// hidden states sit in shared memory; item rows stream through a shared tile in 8192-value steps (the
// next step's loads are in flight while the current one is multiplied), so each item row is read once
// per group. Each thread owns one or two items of a tile and keeps QG running f32 dot products.
// `topk_scan_mma_q{8,16}_bf16` does the same for bf16 tables with tensor-core products.
// After a tile, every score above its query's threshold (and not excluded) is appended to that query's
// candidate buffer; a buffer that could overflow in the next round is sorted and cut to its k best, and
// its threshold becomes the k-th best key, which is also shared with the query's other blocks through
// global memory. At the end of the chunk each query writes its ≤ k best keys.
//
// `topk_merge`: one block per (query, group of chunk lists) radix-selects the k best keys of its lists
// and writes them (sorted on the last round). The host repeats it until one list per query remains.
//
// Keys are `rank_key(score, item)`: distinct per item, larger is better, 0 means empty.
#include "common.cuh"

#define TK_THREADS 256
#define TK_VALUES 8192  // values (rows × dims) staged per step, whatever the tile shape
// Scan blocks per SM (the __launch_bounds__ occupancy hint) and items per thread, by group size:
//   QG 1:     3 blocks, 1 item  (memory-bound: occupancy hides latency)
//   QG 2:     2 blocks, 1 item  (3 would spill with f32 tables)
//   QG 4:     3 blocks, 2 items (each query value read from shared memory feeds two items)
//   QG 8, 16: 2 blocks, 2 items (more registers; QG 16's shared memory fits only twice)
// bf16 tables with 8 or 16 queries per group use the tensor-core scan instead (2 blocks, 1 item).
// Without a hint ptxas caps some instances at 64-80 registers and spills. The host plans with the same
// numbers (`scan_shape` in src/cuda/topk.rs).

struct TopkQueries {
    const u32* slot;      // [n_queries] state-table slot
    const u32* k;         // [n_queries] 1 ≤ k ≤ kstride
    const u32* ex_start;  // [n_queries + 1] offsets into ex_items
    const u32* ex_items;  // per query: excluded items, sorted, no repeats
};

__device__ __forceinline__ bool is_excluded(const u32* __restrict__ ex, u32 lo, u32 hi, u32 item) {
    while (lo < hi) {
        const u32 mid = (lo + hi) >> 1;
        const u32 v = ex[mid];
        if (v == item) return true;
        if (v < item) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return false;
}

// Tile shape for IPT items per thread: 256·IPT rows of KC values each (8192 values per step), rows
// padded to STRIDE floats so that float4 reads by consecutive rows hit distinct banks.
template <int IPT>
struct Tile {
    static constexpr int ROWS = TK_THREADS * IPT;
    static constexpr int KC = TK_VALUES / ROWS;
    static constexpr int STRIDE = KC + 4;
};

// Loads of one staged step (Tile::ROWS rows × Tile::KC values of T) held in registers.
template <typename T, int IPT>
struct StepRegs {
    typedef Tile<IPT> S;
    static constexpr int VEC = S::KC * (int)sizeof(T) / 16;  // 16-byte vectors per row
    static constexpr int PER_THREAD = S::ROWS * VEC / TK_THREADS;
    uint4 v[PER_THREAD];

    __device__ __forceinline__ void load(const T* __restrict__ table, u32 hp, u32 tile, u32 pc) {
        const u64 base = (u64)tile * S::ROWS * hp + (u64)pc * S::KC;
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const u32 idx = threadIdx.x + (u32)i * TK_THREADS;
            const u32 row = idx / VEC, col = idx % VEC;
            v[i] = __ldg(reinterpret_cast<const uint4*>(
                table + base + (u64)row * hp + (u64)col * Storage<T>::PER_16B));
        }
    }

    __device__ __forceinline__ void store(float* tile) const {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const u32 idx = threadIdx.x + (u32)i * TK_THREADS;
            const u32 row = idx / VEC, col = idx % VEC;
            float f[Storage<T>::PER_16B];
            Storage<T>::unpack(v[i], f);
            float4* dst = reinterpret_cast<float4*>(tile + row * S::STRIDE + col * Storage<T>::PER_16B);
#pragma unroll
            for (int q = 0; q < Storage<T>::PER_16B / 4; ++q) {
                dst[q] = make_float4(f[4 * q], f[4 * q + 1], f[4 * q + 2], f[4 * q + 3]);
            }
        }
    }
};

// Sorts the flagged buffers and cuts each to its k best. Only the first `len` entries are sorted: a
// power of two ≥ every flagged count (entries past a count are zero). Raises each threshold to the
// k-th best key and publishes it in `bound[query]`, which every block of that query reads: the k-th
// best of any subset of the catalogue is a lower bound on the k-th best of all of it, so blocks
// starting later skip most items without ever sorting. All threads call it.
__device__ __forceinline__ void compact(
    u64* buf, u32 cap, u32 len, const u32* list, u32 n_list, u32* cnt, u64* thr, const u32* qk,
    u64* bound, u32 g0) {
    bitonic_sort_desc([&](u32 seg) { return buf + list[seg] * cap; }, n_list, len);
    const u32 len_shift = (u32)__ffs(len) - 1u;
    for (u32 i = threadIdx.x; i < n_list * len; i += blockDim.x) {
        const u32 q = list[i >> len_shift], j = i & (len - 1u);
        if (j >= qk[q] && j < cnt[q]) buf[q * cap + j] = 0ull;
        if (j + 1u == qk[q] && j < cnt[q]) {
            const u64 t = buf[q * cap + j];
            if (t > thr[q]) {
                thr[q] = t;
                atomicMax(bound + g0 + q, t);
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < n_list) {
        const u32 q = list[threadIdx.x];
        cnt[q] = min(cnt[q], qk[q]);
    }
    __syncthreads();
}

// Sort length for counts up to `n`: the next power of two, at least 2.
__device__ __forceinline__ u32 sort_len(u32 n) { return n <= 2u ? 2u : 1u << (32 - __clz(n - 1u)); }

// Per-query selection state of a scan block, in shared memory.
template <int QG>
struct SelState {
    u32 cnt[QG], qk[QG], ex_lo[QG], ex_hi[QG], list[QG];
    u64 thr[QG];
    u32 n_list, max_cnt;
};

// The candidate buffers of a scan block (shared by the SIMT and tensor-core scans): `buf` holds QG
// buffers of `cap` keys (a power of two ≥ k + 256).
template <int QG>
struct Selector {
    SelState<QG>* st;
    u64* buf;
    u32 cap, g0, n_queries;
    const u32* ex_items;
    u64* bound;

    // Empty buffers. Visible to all threads after the caller's next barrier.
    __device__ __forceinline__ void init(const TopkQueries& qs) {
        const u32 tid = threadIdx.x;
        for (u32 i = tid; i < QG * cap; i += blockDim.x) buf[i] = 0ull;
        if (tid < QG) {
            const u32 g = g0 + tid;
            st->cnt[tid] = 0u;
            st->thr[tid] = 0ull;
            st->qk[tid] = g < n_queries ? qs.k[g] : 0u;
            st->ex_lo[tid] = g < n_queries ? qs.ex_start[g] : 0u;
            st->ex_hi[tid] = g < n_queries ? qs.ex_start[g + 1u] : 0u;
        }
        if (tid == 0) {
            st->n_list = 0u;
            st->max_cnt = 0u;
        }
    }

    // Adopts better bounds found by other blocks. Racing with readers of thr is benign: any value
    // between the old and the new threshold is a valid bound.
    __device__ __forceinline__ void refresh() {
        const u32 tid = threadIdx.x;
        if (tid < QG && g0 + tid < n_queries) {
            const u64 b = *reinterpret_cast<volatile u64*>(bound + g0 + tid);
            if (b > st->thr[tid]) st->thr[tid] = b;
        }
    }

    // One selection round: each thread offers `score[q] + bias` of one item for every query. Counts
    // and thresholds change only inside `compact`, between barriers. Invariant: before a round every
    // count is ≤ cap − 256, so a round (≤ 256 new keys per query) cannot overflow a buffer. All
    // threads call it; it ends with a barrier.
    __device__ __forceinline__ void round(const float* score, u32 item, bool valid, float b) {
        const u32 tid = threadIdx.x;
#pragma unroll
        for (int q = 0; q < QG; ++q) {
            if (g0 + q >= n_queries) break;  // uniform across the block
            const u64 key = rank_key(score[q] + b, item);
            bool take = valid && key > st->thr[q];
            if (take && st->ex_hi[q] > st->ex_lo[q]) {
                take = !is_excluded(ex_items, st->ex_lo[q], st->ex_hi[q], item);
            }
            const u32 pos = warp_append(&st->cnt[q], take);
            if (take) buf[q * cap + pos] = key;
        }
        __syncthreads();
        if (tid < QG && st->cnt[tid] > cap - TK_THREADS) flag(tid);
        cut();
    }

    __device__ __forceinline__ void flag(u32 q) {
        st->list[atomicAdd(&st->n_list, 1u)] = q;
        atomicMax(&st->max_cnt, st->cnt[q]);
    }

    // Compacts the flagged buffers, if any. Starts and ends with a barrier.
    __device__ __forceinline__ void cut() {
        __syncthreads();
        const u32 n_flagged = st->n_list;
        if (n_flagged > 0u) {
            compact(buf, cap, sort_len(st->max_cnt), st->list, n_flagged, st->cnt, st->thr, st->qk,
                    bound, g0);
            if (threadIdx.x == 0) {
                st->n_list = 0u;
                st->max_cnt = 0u;
            }
        }
        __syncthreads();
    }

    // Cuts buffers holding more than k keys and writes every query's ≤ k keys (zero-filled) to
    // out[(query · n_chunks + chunk) · kstride].
    __device__ __forceinline__ void finish(u64* __restrict__ out, u32 kstride) {
        const u32 tid = threadIdx.x;
        __syncthreads();
        if (tid < QG && st->cnt[tid] > st->qk[tid]) flag(tid);
        cut();
        for (u32 i = tid; i < QG * kstride; i += blockDim.x) {
            const u32 q = i / kstride, j = i - q * kstride;
            const u32 g = g0 + q;
            if (g >= n_queries) break;  // later i only map to later queries
            out[((u64)g * gridDim.y + blockIdx.y) * kstride + j] =
                j < st->cnt[q] ? buf[q * cap + j] : 0ull;
        }
    }
};

// SIMT scan. Grid: (ceil(n_queries / QG), n_chunks); block: 256 threads; dynamic shared memory:
// hp·QG·4 (states) + 256·IPT·(32/IPT + 4)·4 (tile) + QG·cap·8 (buffers). A tile is 256·IPT items
// (the host pads the catalogue to 512); thread t owns items t + 256·u of each tile. `bound` (one key
// per query, zeroed by the host) collects the blocks' thresholds.
template <typename T, int QG, int IPT>
__device__ void topk_scan(
    const T* __restrict__ table, const float* __restrict__ bias, u32 n_items, u32 hp,
    const float* __restrict__ states, TopkQueries qs_in, u32 n_queries, u32 tiles_per_chunk,
    u32 cap, u32 kstride, u64* __restrict__ out, u64* bound) {
    typedef Tile<IPT> S;
    extern __shared__ __align__(16) unsigned char scan_smem[];
    float* qs = reinterpret_cast<float*>(scan_smem);  // [hp][QG]
    float* tile = qs + hp * QG;                        // [S::ROWS][S::STRIDE]
    u64* buf = reinterpret_cast<u64*>(tile + S::ROWS * S::STRIDE);  // [QG][cap]
    __shared__ SelState<QG> st;
    const u32 tid = threadIdx.x;
    const u32 g0 = blockIdx.x * QG;
    Selector<QG> sel = {&st, buf, cap, g0, n_queries, qs_in.ex_items, bound};
    const u32 n_tiles = (n_items + S::ROWS - 1u) / S::ROWS;
    const u32 t_begin = blockIdx.y * tiles_per_chunk;
    const u32 t_end = min(n_tiles, t_begin + tiles_per_chunk);
    const u32 n_kc = hp / S::KC;

    for (u32 i = tid; i < hp * QG; i += blockDim.x) {
        const u32 p = i / QG, q = i - p * QG;
        qs[i] = g0 + q < n_queries ? states[(u64)qs_in.slot[g0 + q] * hp + p] : 0.0f;
    }
    sel.init(qs_in);

    StepRegs<T, IPT> regs;
    if (t_begin < t_end) regs.load(table, hp, t_begin, 0u);
    for (u32 t = t_begin; t < t_end; ++t) {
        float acc[IPT][QG];
#pragma unroll
        for (int u = 0; u < IPT; ++u) {
#pragma unroll
            for (int q = 0; q < QG; ++q) acc[u][q] = 0.0f;
        }
        for (u32 pc = 0; pc < n_kc; ++pc) {
            __syncthreads();  // the previous step's readers of `tile` are done
            regs.store(tile);
            __syncthreads();
            if (pc == 0u) sel.refresh();
            // Issue the next step's loads now, so they fly while this step is multiplied.
            if (pc + 1u < n_kc) {
                regs.load(table, hp, t, pc + 1u);
            } else if (t + 1u < t_end) {
                regs.load(table, hp, t + 1u, 0u);
            }
            const float* qrow = qs + pc * S::KC * QG;
#pragma unroll
            for (int p = 0; p < S::KC; p += 4) {
                float a[IPT][4];
#pragma unroll
                for (int u = 0; u < IPT; ++u) {
                    const float4 a4 = *reinterpret_cast<const float4*>(
                        tile + (tid + u * TK_THREADS) * S::STRIDE + p);
                    a[u][0] = a4.x;
                    a[u][1] = a4.y;
                    a[u][2] = a4.z;
                    a[u][3] = a4.w;
                }
#pragma unroll
                for (int d = 0; d < 4; ++d) {
                    // The QG query values of one dimension are contiguous: float4 loads.
#pragma unroll
                    for (int v = 0; v < (QG + 3) / 4; ++v) {
                        float qv[4];
                        if (QG >= 4) {
                            const float4 t4 =
                                *reinterpret_cast<const float4*>(qrow + (p + d) * QG + 4 * v);
                            qv[0] = t4.x;
                            qv[1] = t4.y;
                            qv[2] = t4.z;
                            qv[3] = t4.w;
                        } else {
#pragma unroll
                            for (int q = 0; q < QG; ++q) qv[q] = qrow[(p + d) * QG + q];
                        }
#pragma unroll
                        for (int w = 0; w < 4 && 4 * v + w < QG; ++w) {
#pragma unroll
                            for (int u = 0; u < IPT; ++u) {
                                acc[u][4 * v + w] = fmaf(a[u][d], qv[w], acc[u][4 * v + w]);
                            }
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < IPT; ++u) {
            const u32 item = t * S::ROWS + u * TK_THREADS + tid;
            const bool valid = item < n_items;
            sel.round(acc[u], item, valid, valid ? bias[item] : 0.0f);
        }
    }
    sel.finish(out, kstride);
}

// ---- Tensor-core scan for bf16 tables (groups of 8 or 16 queries) ----
//
// Scores are `mma.sync m16n8k16` products of 16 items × 8 queries × 16 dimensions, fp32 accumulate.
// The item rows are bf16 already; each query value q is split into bf16 hi + lo (q − hi), and both
// halves are multiplied, which keeps ~16 significant bits of q (f32 SIMT keeps 24; bf16 items carry
// 8). Warp w owns items 32w … 32w + 31 of a 256-item tile (two m16 tiles); the products go through
// shared memory to the same per-item selection as the SIMT scan.

#define MMA_KC 32      // dimensions staged per step
#define MMA_STRIDE 40  // bf16 per staged row (80 B): ldmatrix row addresses hit distinct banks

__device__ __forceinline__ u32 bf16_rn(float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}

__device__ __forceinline__ void mma_bf16(float* c, const u32* a, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Grid and output as `topk_scan`; dynamic shared memory: hp·QG·4 (query fragments) + 256·40·2
// (tile) + 256·(QG + 1)·4 (scores) + QG·cap·8 (buffers).
template <int QG>
__device__ void topk_scan_mma(
    const bf16_t* __restrict__ table, const float* __restrict__ bias, u32 n_items, u32 hp,
    const float* __restrict__ states, TopkQueries qs_in, u32 n_queries, u32 tiles_per_chunk,
    u32 cap, u32 kstride, u64* __restrict__ out, u64* bound) {
    constexpr int NT = QG / 8;  // n8 tiles
    constexpr int SS = QG + 1;  // score row stride
    extern __shared__ __align__(16) unsigned char scan_smem[];
    // B fragments, [k16 step][n tile][hi, lo][lane] → (b0, b1), as mma wants them per lane.
    uint2* bfrag = reinterpret_cast<uint2*>(scan_smem);
    unsigned short* tile = reinterpret_cast<unsigned short*>(bfrag + (hp / 16) * NT * 2 * 32);
    float* scores = reinterpret_cast<float*>(tile + TK_THREADS * MMA_STRIDE);  // [256][SS]
    u64* buf = reinterpret_cast<u64*>(scores + TK_THREADS * SS);             // [QG][cap]
    __shared__ SelState<QG> st;
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 g0 = blockIdx.x * QG;
    Selector<QG> sel = {&st, buf, cap, g0, n_queries, qs_in.ex_items, bound};
    const u32 n_tiles = (n_items + TK_THREADS - 1u) / TK_THREADS;
    const u32 t_begin = blockIdx.y * tiles_per_chunk;
    const u32 t_end = min(n_tiles, t_begin + tiles_per_chunk);
    const u32 n_kc = hp / MMA_KC;

    // Query fragments: lane (g = lane/4, t = lane%4) of n tile nt holds query nt·8 + g at dimensions
    // 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of each k16 step, low half first.
    for (u32 i = tid; i < (hp / 16) * NT * 32; i += blockDim.x) {
        const u32 l = i & 31u, f = i >> 5, nt = f % NT, ks = f / NT;
        const u32 qi = g0 + nt * 8 + (l >> 2);
        const u32 k = ks * 16 + 2 * (l & 3u);
        const float* h = qi < n_queries ? states + (u64)qs_in.slot[qi] * hp : nullptr;
        u32 hi[4], lo[4];
        const u32 dims[4] = {k, k + 1, k + 8, k + 9};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float v = h != nullptr ? h[dims[j]] : 0.0f;
            hi[j] = bf16_rn(v);
            lo[j] = bf16_rn(v - __uint_as_float(hi[j] << 16));
        }
        bfrag[(f * 2 + 0) * 32 + l] = make_uint2(hi[0] | (hi[1] << 16), hi[2] | (hi[3] << 16));
        bfrag[(f * 2 + 1) * 32 + l] = make_uint2(lo[0] | (lo[1] << 16), lo[2] | (lo[3] << 16));
    }
    sel.init(qs_in);

    // Staging: 256 rows × 32 bf16 = 4 × 16 B per row, one vector per thread per 256.
    uint4 regs[4];
    auto load = [&](u32 t, u32 pc) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 idx = tid + (u32)i * TK_THREADS, row = idx >> 2, col = idx & 3u;
            regs[i] = __ldg(reinterpret_cast<const uint4*>(
                table + ((u64)t * TK_THREADS + row) * hp + pc * MMA_KC + col * 8u));
        }
    };
    if (t_begin < t_end) load(t_begin, 0u);
    // ldmatrix.x4 row addresses: lanes 0-7 rows 0-7 (k 0-7), 8-15 rows 8-15 (k 0-7), 16-23 rows
    // 0-7 (k 8-15), 24-31 rows 8-15 (k 8-15): the a0..a3 order of the m16k16 A fragment.
    const u32 a_row = warp * 32u + (lane & 7u) + ((lane >> 3) & 1u) * 8u;
    const u32 a_col = (lane >> 4) * 8u;
    for (u32 t = t_begin; t < t_end; ++t) {
        float c[2][NT][4];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int j = 0; j < 4; ++j) c[m][n][j] = 0.0f;
            }
        }
        for (u32 pc = 0; pc < n_kc; ++pc) {
            __syncthreads();  // the previous step's readers of `tile` are done
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const u32 idx = tid + (u32)i * TK_THREADS, row = idx >> 2, col = idx & 3u;
                *reinterpret_cast<uint4*>(tile + row * MMA_STRIDE + col * 8u) = regs[i];
            }
            __syncthreads();
            if (pc == 0u) sel.refresh();
            if (pc + 1u < n_kc) {
                load(t, pc + 1u);
            } else if (t + 1u < t_end) {
                load(t + 1u, 0u);
            }
#pragma unroll
            for (int kk = 0; kk < MMA_KC / 16; ++kk) {
                const u32 ks = pc * (MMA_KC / 16) + kk;
                uint2 bh[NT], bl[NT];
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    bh[n] = bfrag[((ks * NT + n) * 2 + 0) * 32 + lane];
                    bl[n] = bfrag[((ks * NT + n) * 2 + 1) * 32 + lane];
                }
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    u32 a[4];
                    const u32 addr = smem_u32(tile + (a_row + m * 16u) * MMA_STRIDE + kk * 16 + a_col);
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                                 : "r"(addr));
#pragma unroll
                    for (int n = 0; n < NT; ++n) {
                        mma_bf16(c[m][n], a, bh[n].x, bh[n].y);
                        mma_bf16(c[m][n], a, bl[n].x, bl[n].y);
                    }
                }
            }
        }
        // Accumulator layout: c0, c1 at row g, columns 2t, 2t+1; c2, c3 at row g + 8.
        const u32 g = lane >> 2, t2 = (lane & 3u) * 2u;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                float* s = scores + (warp * 32u + m * 16u + g) * SS + n * 8 + t2;
                s[0] = c[m][n][0];
                s[1] = c[m][n][1];
                s[8 * SS] = c[m][n][2];
                s[8 * SS + 1] = c[m][n][3];
            }
        }
        __syncthreads();
        float mine[QG];
#pragma unroll
        for (int q = 0; q < QG; ++q) mine[q] = scores[tid * SS + q];
        const u32 item = t * TK_THREADS + tid;
        const bool valid = item < n_items;
        sel.round(mine, item, valid, valid ? bias[item] : 0.0f);
    }
    sel.finish(out, kstride);
}

#define TOPK_SCAN(QG, MIN_BLOCKS, IPT, SUFFIX, T)                                                       \
    extern "C" __global__ void __launch_bounds__(TK_THREADS, MIN_BLOCKS) topk_scan_q##QG##_##SUFFIX( \
        const T* __restrict__ table, const float* __restrict__ bias, u32 n_items, u32 hp,          \
        const float* __restrict__ states, const u32* __restrict__ q_slot,                          \
        const u32* __restrict__ q_k, const u32* __restrict__ ex_start,                             \
        const u32* __restrict__ ex_items, u32 n_queries, u32 tiles_per_chunk, u32 cap,             \
        u32 kstride, u64* __restrict__ out, u64* bound) {                                           \
        const TopkQueries qs = {q_slot, q_k, ex_start, ex_items};                                  \
        topk_scan<T, QG, IPT>(table, bias, n_items, hp, states, qs, n_queries, tiles_per_chunk, cap,\
                         kstride, out, bound);                                                     \
    }

#define TOPK_SCAN_ALL_QG(SUFFIX, T) \
    TOPK_SCAN(1, 3, 1, SUFFIX, T)   \
    TOPK_SCAN(2, 2, 1, SUFFIX, T)   \
    TOPK_SCAN(4, 3, 2, SUFFIX, T)   \
    TOPK_SCAN(8, 2, 2, SUFFIX, T)   \
    TOPK_SCAN(16, 2, 2, SUFFIX, T)

TOPK_SCAN_ALL_QG(f32, float)
TOPK_SCAN_ALL_QG(bf16, bf16_t)
TOPK_SCAN_ALL_QG(f16, f16_t)

#define TOPK_SCAN_MMA(QG)                                                                          \
    extern "C" __global__ void __launch_bounds__(TK_THREADS, 2) topk_scan_mma_q##QG##_bf16(       \
        const bf16_t* __restrict__ table, const float* __restrict__ bias, u32 n_items, u32 hp,     \
        const float* __restrict__ states, const u32* __restrict__ q_slot,                          \
        const u32* __restrict__ q_k, const u32* __restrict__ ex_start,                             \
        const u32* __restrict__ ex_items, u32 n_queries, u32 tiles_per_chunk, u32 cap,             \
        u32 kstride, u64* __restrict__ out, u64* bound) {                                          \
        const TopkQueries qs = {q_slot, q_k, ex_start, ex_items};                                  \
        topk_scan_mma<QG>(table, bias, n_items, hp, states, qs, n_queries, tiles_per_chunk, cap,    \
                          kstride, out, bound);                                                    \
    }

TOPK_SCAN_MMA(8)
TOPK_SCAN_MMA(16)

#define MG_THREADS 512

// Grid: (n_queries, lists_out); block: 512 threads; dynamic shared memory: (group·kstride + kpad)·8
// with kpad the power of two ≥ kstride. Reads lists [lo·group, lo·group + group) of query q from
// `in` ([n_queries][lists_in][kstride]) and writes the k best keys to out[(q·lists_out + lo)·kstride],
// zero-filled, sorted best first when `sorted` is set. Keys below `bound[q]` (the scan's best lower
// bound on the k-th best key) are dropped on load: the k best are all at or above it, and usually
// little else is, so the selection runs over a few k keys instead of every chunk's list.
extern "C" __global__ void __launch_bounds__(MG_THREADS) topk_merge(
    const u64* __restrict__ in, u32 lists_in, u32 kstride, const u32* __restrict__ q_k, u32 group,
    u32 kpad, u64* __restrict__ out, u32 lists_out, u32 sorted, const u64* __restrict__ bound) {
    extern __shared__ __align__(16) unsigned char merge_smem[];
    u64* keys = reinterpret_cast<u64*>(merge_smem);
    __shared__ u32 hist[256];
    __shared__ u32 n_valid, n_sel, remaining, done;
    __shared__ u64 prefix, cut_mask;

    const u32 q = blockIdx.x, lo = blockIdx.y, tid = threadIdx.x, lane = tid & 31u;
    const u32 first = lo * group;
    const u32 n_lists = min(group, lists_in - first);
    const u32 m_in = n_lists * kstride;
    u64* sel = keys + (u64)group * kstride;  // [kpad]
    const u64* src = in + ((u64)q * lists_in + first) * kstride;

    if (tid == 0) {
        n_valid = 0u;
        n_sel = 0u;
        done = 0u;
        prefix = 0ull;
        cut_mask = ~0ull;
    }
    __syncthreads();
    const u64 lb = bound[q];
    // Four loads in flight per thread before their keys are appended (the appends serialise).
    for (u32 base = 0; base < m_in; base += 4u * blockDim.x) {
        u64 k4[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const u32 i = base + (u32)r * blockDim.x + tid;
            k4[r] = i < m_in ? src[i] : 0ull;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const bool keep = k4[r] != 0ull && k4[r] >= lb;
            const u32 pos = warp_append(&n_valid, keep);
            if (keep) keys[pos] = k4[r];
        }
    }
    for (u32 i = tid; i < kpad; i += blockDim.x) sel[i] = 0ull;
    __syncthreads();
    const u32 m = n_valid;
    const u32 kk = min(q_k[q], m);
    if (tid == 0) remaining = kk;

    // Radix select of the kk-th largest key, 8 bits at a time from the top. Keys are distinct, so
    // after the last digit `prefix` is exactly that key. It stops early at a digit whose bin holds
    // exactly the keys still wanted: then the answer is every key whose digits so far are ≥ prefix.
    if (kk > 0u) {
        for (int shift = 56; shift >= 0; shift -= 8) {
            for (u32 i = tid; i < 256u; i += blockDim.x) hist[i] = 0u;
            __syncthreads();
            const u64 hi_mask = shift == 56 ? 0ull : (~0ull << (shift + 8));
            const u64 want = prefix & hi_mask;
            for (u32 base = 0; base < m; base += blockDim.x) {
                const u32 i = base + tid;
                u32 bin = 256u;  // no bin
                if (i < m) {
                    const u64 k = keys[i];
                    if ((k & hi_mask) == want) bin = (u32)(k >> shift) & 255u;
                }
                // Scores cluster, so many lanes hit the same bin: one atomic per distinct bin.
                const u32 peers = __match_any_sync(0xffffffffu, bin);
                if (bin < 256u && lane == (u32)(__ffs(peers) - 1)) atomicAdd(&hist[bin], (u32)__popc(peers));
            }
            __syncthreads();
            if (tid < 32u) {
                // Lane l holds bins 255 − 8l … 248 − 8l (best first); find the bin holding the
                // remaining-th best key with a warp prefix sum.
                u32 c[8], s = 0u;
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    c[t] = hist[255u - 8u * lane - (u32)t];
                    s += c[t];
                }
                u32 incl = s;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const u32 v = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= (u32)o) incl += v;
                }
                const u32 excl = incl - s;
                const u32 rem = remaining;
                if (excl < rem && rem <= incl) {
                    u32 acc = excl;
#pragma unroll
                    for (int t = 0; t < 8; ++t) {
                        if (acc + c[t] >= rem) {
                            prefix |= (u64)(255u - 8u * lane - (u32)t) << shift;
                            remaining = rem - acc;
                            if (acc + c[t] == rem) {
                                cut_mask = ~0ull << shift;
                                done = 1u;
                            }
                            break;
                        }
                        acc += c[t];
                    }
                }
            }
            __syncthreads();
            if (done) break;
        }
        const u64 cut = prefix, mask = cut_mask;
        for (u32 base = 0; base < m; base += blockDim.x) {
            const u32 i = base + tid;
            const bool take = i < m && (keys[i] & mask) >= cut;
            const u32 pos = warp_append(&n_sel, take);
            // Exactly kk keys qualify (keys are distinct); the bound only guards memory.
            if (take && pos < kpad) sel[pos] = keys[i];
        }
        __syncthreads();
        if (sorted) bitonic_sort_desc([&](u32) { return sel; }, 1u, kpad);
    }
    u64* dst = out + ((u64)q * lists_out + lo) * kstride;
    for (u32 i = tid; i < kstride; i += blockDim.x) dst[i] = i < kk ? sel[i] : 0ull;
}
