// Candidate scoring: `dot(h, item_out[c]) + item_bias[c]` for ragged per-session candidate lists,
// flattened by the host into (candidate, slot) pairs. One warp per candidate: the lanes read one item
// row with 8- or 16-byte loads (rows are padded to a multiple of 32 values) and reduce by shuffles.
// `score_all_*` scores the whole catalogue for one session (the host's path for k beyond the fused
// top-k kernel's limit).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ float warp_dot(const T* __restrict__ row, const float* __restrict__ h, u32 hp) {
    const u32 lane = threadIdx.x & 31u;
    float acc = 0.0f;
    for (u32 p = lane * 4u; p < hp; p += 128u) {
        float t[4];
        Storage<T>::load4(row + p, t);
        const float4 hv = *reinterpret_cast<const float4*>(h + p);
        acc = fmaf(t[0], hv.x, acc);
        acc = fmaf(t[1], hv.y, acc);
        acc = fmaf(t[2], hv.z, acc);
        acc = fmaf(t[3], hv.w, acc);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}

// Grid: ceil(n / 8) blocks of 256 threads.
template <typename T>
__device__ void score_candidates(
    const T* __restrict__ table, const float* __restrict__ bias, const float* __restrict__ states,
    u32 hp, const u32* __restrict__ cand_items, const u32* __restrict__ cand_slots, u32 n,
    float* __restrict__ out) {
    const u32 c = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (c >= n) return;  // whole warps leave together
    const u32 item = cand_items[c];
    const float s = warp_dot(table + (u64)item * hp, states + (u64)cand_slots[c] * hp, hp);
    if ((threadIdx.x & 31u) == 0u) out[c] = s + bias[item];
}

// Grid: ceil(n_items / 8) blocks of 256 threads.
template <typename T>
__device__ void score_all(
    const T* __restrict__ table, const float* __restrict__ bias, const float* __restrict__ states,
    u32 hp, u32 slot, u32 n_items, float* __restrict__ out) {
    const u32 item = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (item >= n_items) return;
    const float s = warp_dot(table + (u64)item * hp, states + (u64)slot * hp, hp);
    if ((threadIdx.x & 31u) == 0u) out[item] = s + bias[item];
}

#define SCORE(SUFFIX, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(256) score_##SUFFIX(                             \
        const T* __restrict__ table, const float* __restrict__ bias,                               \
        const float* __restrict__ states, u32 hp, const u32* __restrict__ cand_items,              \
        const u32* __restrict__ cand_slots, u32 n, float* __restrict__ out) {                      \
        score_candidates<T>(table, bias, states, hp, cand_items, cand_slots, n, out);              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) score_all_##SUFFIX(                         \
        const T* __restrict__ table, const float* __restrict__ bias,                               \
        const float* __restrict__ states, u32 hp, u32 slot, u32 n_items, float* __restrict__ out) { \
        score_all<T>(table, bias, states, hp, slot, n_items, out);                                 \
    }

SCORE(f32, float)
SCORE(bf16, bf16_t)
SCORE(f16, f16_t)
