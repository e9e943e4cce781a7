// Helpers shared by the lambdarec kernels: table storage types and their conversion to f32, the
// top-k ranking key, and warp-aggregated shared-memory counters. It includes no CUDA header, so the
// same text compiles with nvcc and with NVRTC (build.rs inlines it for the NVRTC path).
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Item tables are stored as f32, bf16 or f16; arithmetic is always f32. The 2-byte types are plain
// bit containers: conversion is one shift (bf16) or one cvt (f16), no header needed.
struct bf16_t {
    u16 bits;
};
struct f16_t {
    u16 bits;
};

__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ float f16_bits_to_f32(u32 h) {
    float f;
    asm("{ .reg .b16 t; cvt.u16.u32 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "r"(h));
    return f;
}
__device__ __forceinline__ float f16_lo(u32 w) { return f16_bits_to_f32(w & 0xffffu); }
__device__ __forceinline__ float f16_hi(u32 w) { return f16_bits_to_f32(w >> 16); }

// Per storage type: how many elements one 16-byte vector holds, and how to unpack 4 or 8 of them.
// Callers guarantee 16-byte (load8) or 8/16-byte (load4) alignment: every table row is padded to a
// multiple of 32 elements.
template <typename T>
struct Storage;

template <>
struct Storage<float> {
    static constexpr int PER_16B = 4;
    __device__ __forceinline__ static void unpack(uint4 v, float* o) {
        o[0] = __uint_as_float(v.x);
        o[1] = __uint_as_float(v.y);
        o[2] = __uint_as_float(v.z);
        o[3] = __uint_as_float(v.w);
    }
    __device__ __forceinline__ static void load4(const float* p, float* o) {
        unpack(*reinterpret_cast<const uint4*>(p), o);
    }
};

template <>
struct Storage<bf16_t> {
    static constexpr int PER_16B = 8;
    __device__ __forceinline__ static void unpack(uint4 v, float* o) {
        o[0] = bf16_lo(v.x);
        o[1] = bf16_hi(v.x);
        o[2] = bf16_lo(v.y);
        o[3] = bf16_hi(v.y);
        o[4] = bf16_lo(v.z);
        o[5] = bf16_hi(v.z);
        o[6] = bf16_lo(v.w);
        o[7] = bf16_hi(v.w);
    }
    __device__ __forceinline__ static void load4(const bf16_t* p, float* o) {
        uint2 v = *reinterpret_cast<const uint2*>(p);
        o[0] = bf16_lo(v.x);
        o[1] = bf16_hi(v.x);
        o[2] = bf16_lo(v.y);
        o[3] = bf16_hi(v.y);
    }
};

template <>
struct Storage<f16_t> {
    static constexpr int PER_16B = 8;
    __device__ __forceinline__ static void unpack(uint4 v, float* o) {
        o[0] = f16_lo(v.x);
        o[1] = f16_hi(v.x);
        o[2] = f16_lo(v.y);
        o[3] = f16_hi(v.y);
        o[4] = f16_lo(v.z);
        o[5] = f16_hi(v.z);
        o[6] = f16_lo(v.w);
        o[7] = f16_hi(v.w);
    }
    __device__ __forceinline__ static void load4(const f16_t* p, float* o) {
        uint2 v = *reinterpret_cast<const uint2*>(p);
        o[0] = f16_lo(v.x);
        o[1] = f16_hi(v.x);
        o[2] = f16_lo(v.y);
        o[3] = f16_hi(v.y);
    }
};

// Eight consecutive elements starting at a 16-byte-aligned address, as f32.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* o) {
    const uint4* v = reinterpret_cast<const uint4*>(p);
    if (Storage<T>::PER_16B == 8) {
        Storage<T>::unpack(v[0], o);
    } else {
        Storage<T>::unpack(v[0], o);
        Storage<T>::unpack(v[1], o + 4);
    }
}

// Ranking key of (score, item): larger is better. The high word maps the f32 score to an unsigned
// integer of the same order; the low word is ~item, so equal scores rank the lower index first. Every
// item has a distinct key, which makes "the k best" a well-defined set of keys, and key 0 can mean
// "empty". −0 is folded into +0 (they tie, as on the CPU); NaN maps to the lowest key of all, below
// −inf, so a NaN score never displaces a number but still fills the answer when nothing else can.
__device__ __forceinline__ u64 rank_key(float s, u32 item) {
    u32 b = __float_as_uint(s);
    if (s != s) {
        b = 0xffffffffu;
    } else if (s == 0.0f) {
        b = 0u;
    }
    const u32 o = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((u64)o << 32) | (u64)(~item);
}

// Position for a lane's entry in a shared list when the lanes with `take` set append together: one
// atomic per warp instead of one per lane (the counters are hot while top-k buffers warm up).
// Every lane of the warp must call it.
__device__ __forceinline__ u32 warp_append(u32* counter, bool take) {
    const u32 lane = threadIdx.x & 31u;
    const u32 mask = __ballot_sync(0xffffffffu, take);
    if (mask == 0u) {
        return 0u;
    }
    const u32 leader = __ffs(mask) - 1u;
    u32 base = 0u;
    if (lane == leader) {
        base = atomicAdd(counter, (u32)__popc(mask));
    }
    base = __shfl_sync(0xffffffffu, base, leader);
    return base + (u32)__popc(mask & ((1u << lane) - 1u));
}

// Block-wide bitonic sort, descending, of `n_seg` independent segments of `len` keys (a power of two
// ≥ 2) at `seg_base(seg)`. All threads of the block must call it; it ends with a barrier.
template <typename SegBase>
__device__ __forceinline__ void bitonic_sort_desc(SegBase seg_base, u32 n_seg, u32 len) {
    const u32 half = len >> 1;
    const u32 half_shift = (u32)__ffs(half) - 1u;  // len is a power of two: shifts, not divisions
    const u32 total = n_seg * half;
    for (u32 size = 2; size <= len; size <<= 1) {
        for (u32 stride = size >> 1; stride > 0; stride >>= 1) {
            for (u32 i = threadIdx.x; i < total; i += blockDim.x) {
                const u32 j = i & (half - 1u);
                const u32 lo = ((j & ~(stride - 1u)) << 1) | (j & (stride - 1u));
                const u32 hi = lo + stride;
                u64* s = seg_base(i >> half_shift);
                const u64 a = s[lo];
                const u64 b = s[hi];
                const bool desc = (lo & size) == 0u;
                if ((a < b) == desc) {
                    s[lo] = b;
                    s[hi] = a;
                }
            }
            __syncthreads();
        }
    }
}
