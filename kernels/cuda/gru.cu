// Batched GRU4Rec session step (PyTorch nn.GRUCell, gate order r, z, n) and the state-table helpers.
//
// The host splits a batch into waves in which every slot appears once (events of one slot apply in
// order, one wave after another). Per wave, `gru_gates_*` computes the new state of every event into a
// dense buffer and `gru_scatter` writes it back: a block reads the whole state row of its events while
// other blocks compute other units of the same rows, so writing in place would race.
//
// Layouts (every width padded with zeros to a multiple of 32, so chunks need no bounds checks):
//   emb     [rows][ep]     input embeddings (or the output table when tied, then ep == hp), T storage
//   w_ih_t  [ep][3·hp]     W_ih transposed, column g·hp + j is gate g of unit j; zeros beyond the model
//   w_hh_t  [hp][3·hp]     W_hh transposed, same columns
//   b_ih, b_hh [3·hp]
//   states  [capacity][hp] f32
#include "common.cuh"

#define GRU_UNITS 32          // hidden units per block: one per lane
#define GRU_WARPS 8
#define GRU_EVENTS_PER_WARP 8
#define GRU_EVENTS (GRU_WARPS * GRU_EVENTS_PER_WARP)
#define GRU_KC 32             // reduction values staged per step
#define GRU_XS_STRIDE 36      // row stride of staged inputs: float4 reads without bank conflicts

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.0f / (1.0f + expf(-x)); }

// Adds one GRU_KC-wide chunk of `W·v` to the accumulators: r and z take both projections, the n gate
// keeps them apart (`acc_n` is W_in·x in the input pass and W_hn·h in the hidden pass).
__device__ __forceinline__ void gru_chunk(
    const float (*xs)[GRU_XS_STRIDE], const float (*ws)[3][GRU_UNITS], u32 lane, u32 warp,
    float* acc_r, float* acc_z, float* acc_n) {
#pragma unroll
    for (int p = 0; p < GRU_KC; p += 4) {
        float wr[4], wz[4], wn[4];
#pragma unroll
        for (int d = 0; d < 4; ++d) {
            wr[d] = ws[p + d][0][lane];
            wz[d] = ws[p + d][1][lane];
            wn[d] = ws[p + d][2][lane];
        }
#pragma unroll
        for (int i = 0; i < GRU_EVENTS_PER_WARP; ++i) {
            const float4 x4 = *reinterpret_cast<const float4*>(&xs[warp * GRU_EVENTS_PER_WARP + i][p]);
            const float x[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
            for (int d = 0; d < 4; ++d) {
                acc_r[i] = fmaf(wr[d], x[d], acc_r[i]);
                acc_z[i] = fmaf(wz[d], x[d], acc_z[i]);
                acc_n[i] = fmaf(wn[d], x[d], acc_n[i]);
            }
        }
    }
}

// One projection pass over `width` reduction values. Rows come from `src` (T storage, stride
// `width`) at row index `rows[e]` for each event of the block; weights from `wt` ([width][3·hp]).
template <typename T>
__device__ __forceinline__ void gru_pass(
    const T* __restrict__ src, const u32* __restrict__ rows, u32 width, const float* __restrict__ wt,
    u32 hp, u32 j0, u32 e0, u32 n_events, float (*xs)[GRU_XS_STRIDE], float (*ws)[3][GRU_UNITS],
    float* acc_r, float* acc_z, float* acc_n) {
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    // Staging map: 64 event rows × 4 parts of 8 values = one part per thread.
    const u32 row = tid >> 2, part = tid & 3u;
    const u32 e = e0 + row;
    const T* src_row = e < n_events ? src + (u64)rows[e] * width : nullptr;
    for (u32 p0 = 0; p0 < width; p0 += GRU_KC) {
        float v[8];
        if (src_row != nullptr) {
            load8(src_row + p0 + part * 8u, v);
        } else {
#pragma unroll
            for (int d = 0; d < 8; ++d) v[d] = 0.0f;
        }
        float4* dst = reinterpret_cast<float4*>(&xs[row][part * 8u]);
        dst[0] = make_float4(v[0], v[1], v[2], v[3]);
        dst[1] = make_float4(v[4], v[5], v[6], v[7]);
        // Weights: GRU_KC rows × 3 gates × 32 units = 12 values per thread, 128-byte coalesced rows.
        for (u32 idx = tid; idx < GRU_KC * 3u * GRU_UNITS; idx += blockDim.x) {
            const u32 p = idx / (3u * GRU_UNITS);
            const u32 c = idx - p * (3u * GRU_UNITS);
            const u32 g = c / GRU_UNITS, u = c - g * GRU_UNITS;
            ws[p][g][u] = wt[(u64)(p0 + p) * (3u * hp) + g * hp + j0 + u];
        }
        __syncthreads();
        gru_chunk(xs, ws, lane, warp, acc_r, acc_z, acc_n);
        __syncthreads();
    }
}

// Grid: (hp / 32, ceil(n_events / 64)); block: 256 threads. Writes h_new[e][j] for every event of the
// wave and every padded unit (zero beyond `hidden`, so the padding of the state table stays zero).
template <typename T>
__device__ void gru_gates(
    const T* __restrict__ emb, u32 ep, const float* __restrict__ w_ih_t,
    const float* __restrict__ w_hh_t, const float* __restrict__ b_ih, const float* __restrict__ b_hh,
    const float* __restrict__ states, u32 hp, u32 hidden, const u32* __restrict__ slots,
    const u32* __restrict__ items, u32 n_events, float* __restrict__ h_new) {
    __shared__ __align__(16) float xs[GRU_EVENTS][GRU_XS_STRIDE];
    __shared__ __align__(16) float ws[GRU_KC][3][GRU_UNITS];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 j0 = blockIdx.x * GRU_UNITS, e0 = blockIdx.y * GRU_EVENTS;
    float acc_r[GRU_EVENTS_PER_WARP], acc_z[GRU_EVENTS_PER_WARP];
    float acc_in[GRU_EVENTS_PER_WARP], acc_hn[GRU_EVENTS_PER_WARP];
#pragma unroll
    for (int i = 0; i < GRU_EVENTS_PER_WARP; ++i) {
        acc_r[i] = 0.0f;
        acc_z[i] = 0.0f;
        acc_in[i] = 0.0f;
        acc_hn[i] = 0.0f;
    }
    gru_pass<T>(emb, items, ep, w_ih_t, hp, j0, e0, n_events, xs, ws, acc_r, acc_z, acc_in);
    gru_pass<float>(states, slots, hp, w_hh_t, hp, j0, e0, n_events, xs, ws, acc_r, acc_z, acc_hn);

    const u32 j = j0 + lane;
#pragma unroll
    for (int i = 0; i < GRU_EVENTS_PER_WARP; ++i) {
        const u32 e = e0 + warp * GRU_EVENTS_PER_WARP + i;
        if (e >= n_events) continue;
        float out = 0.0f;
        if (j < hidden) {
            const float r = sigmoid_f32(acc_r[i] + b_ih[j] + b_hh[j]);
            const float z = sigmoid_f32(acc_z[i] + b_ih[hp + j] + b_hh[hp + j]);
            const float n = tanhf(acc_in[i] + b_ih[2u * hp + j] + r * (acc_hn[i] + b_hh[2u * hp + j]));
            const float h = states[(u64)slots[e] * hp + j];
            out = (1.0f - z) * n + z * h;
        }
        h_new[(u64)e * hp + j] = out;
    }
}

#define GRU_GATES(NAME, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                        \
        const T* __restrict__ emb, u32 ep, const float* __restrict__ w_ih_t,                        \
        const float* __restrict__ w_hh_t, const float* __restrict__ b_ih,                           \
        const float* __restrict__ b_hh, const float* __restrict__ states, u32 hp, u32 hidden,       \
        const u32* __restrict__ slots, const u32* __restrict__ items, u32 n_events,                 \
        float* __restrict__ h_new) {                                                                \
        gru_gates<T>(emb, ep, w_ih_t, w_hh_t, b_ih, b_hh, states, hp, hidden, slots, items,         \
                     n_events, h_new);                                                              \
    }

GRU_GATES(gru_gates_f32, float)
GRU_GATES(gru_gates_bf16, bf16_t)
GRU_GATES(gru_gates_f16, f16_t)

// Copies each event's new state row into its slot. One thread per value; slots of a wave are distinct.
extern "C" __global__ void gru_scatter(
    const float* __restrict__ h_new, const u32* __restrict__ slots, u32 n_events, u32 hp,
    float* __restrict__ states) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_events * hp) return;
    const u32 e = (u32)(idx / hp), j = (u32)(idx - (u64)e * hp);
    states[(u64)slots[e] * hp + j] = h_new[idx];
}

// Zeroes the state rows of the given slots (new sessions). One thread per value; repeats are harmless.
extern "C" __global__ void states_zero(
    float* __restrict__ states, const u32* __restrict__ slots, u32 n_slots, u32 hp) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_slots * hp) return;
    const u32 s = (u32)(idx / hp), j = (u32)(idx - (u64)s * hp);
    states[(u64)slots[s] * hp + j] = 0.0f;
}
