// Helpers shared by the .cu files of this folder: host-side argument checks (nvcc cannot compile
// fmt, so messages are built with streams), launch sizing, bf16 vector loads and stores, and a
// deterministic block reduction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>

#include "core/cuda_check.h"

namespace sagellm::gpu::detail {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Throws sagellm::Error with the concatenated message when `cond` is false.
#define SAGELLM_GPU_REQUIRE(cond, ...)                                                        \
  do {                                                                                        \
    if (!(cond)) ::sagellm::detail::throw_error(::sagellm::gpu::detail::concat(__VA_ARGS__)); \
  } while (0)

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Grid-stride loops cover any amount of work; more blocks than this buys nothing.
constexpr int64_t kMaxBlocks = int64_t{1} << 16;

inline unsigned blocks_for(int64_t items, int threads) {
  const int64_t b = (items + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(b, 1, kMaxBlocks));
}

inline unsigned blocks_for_rows(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, kMaxBlocks));
}

// One warp at least, one block at most, a whole number of warps.
inline int threads_for(int64_t items) {
  const int64_t t = (items + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(t, 32, 1024));
}

// ---- device side --------------------------------------------------------------------------

__device__ __forceinline__ float bf16_bits_to_float(uint32_t bits16) {
  return __uint_as_float(bits16 << 16);
}

// Loads N consecutive bf16 values as floats: one 16-byte load when kVec (N == 8, p 16-byte
// aligned), else N scalar loads. The values, and so the math that follows, are the same.
template <int N, bool kVec>
__device__ __forceinline__ void load_bf16(const __nv_bfloat16* p, float (&f)[N]) {
  if constexpr (kVec) {
    static_assert(N == 8, "vector loads are 8 x bf16");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[2 * j] = bf16_bits_to_float(w[j] & 0xFFFFu);
      f[2 * j + 1] = __uint_as_float(w[j] & 0xFFFF0000u);
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) f[j] = __bfloat162float(p[j]);
  }
}

__device__ __forceinline__ uint32_t float_to_bf16_bits(float f) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(f)));
}

// Rounds N floats to bf16 (nearest even) and stores them.
template <int N, bool kVec>
__device__ __forceinline__ void store_bf16(__nv_bfloat16* p, const float (&f)[N]) {
  if constexpr (kVec) {
    static_assert(N == 8, "vector stores are 8 x bf16");
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w[j] = float_to_bf16_bits(f[2 * j]) | (float_to_bf16_bits(f[2 * j + 1]) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) p[j] = __float2bfloat16_rn(f[j]);
  }
}

__device__ __forceinline__ float round_to_bf16(float f) {
  return __bfloat162float(__float2bfloat16_rn(f));
}

// SwiGLU's product silu(g) * u in fp32 (cpu::silu_mul's formula): expf, not __expf, the accurate
// library function as the CPU twin's std::exp; unfused, so every kernel using it gives its bits.
__device__ __forceinline__ float silu_mul(float g, float u) {
  return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// RoPE's angle for pair i at a position, and the rotation of the pair (x1, x2) = (v[i],
// v[i + head_dim/2]) (gpu::rope's formulas, ops.h): products and sum rounded explicitly so that
// the compiler cannot fuse them, giving the fp32 result sagellm::Rope computes; full-range
// sincosf, not __sincosf. Every kernel that rotates goes through these, so all give one set of
// bits.
__device__ __forceinline__ void rope_cos_sin(float inv_freq, int32_t position, float* c, float* s) {
  sincosf(__fmul_rn(inv_freq, static_cast<float>(position)), s, c);
}
__device__ __forceinline__ void rope_rotate(float x1, float x2, float c, float s, __nv_bfloat16* y1,
                                            __nv_bfloat16* y2) {
  *y1 = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(-x2, s)));
  *y2 = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}

// Sum of v over the block, returned to every thread; blockDim.x must be a multiple of 32. The
// order of additions depends only on blockDim.x, so the result is the same bits on every run.
// `scratch` is 33 floats of shared memory; calling again (e.g. for the next row) is safe.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < warps ? scratch[lane] : 0.0f;
    s = warp_sum(s);
    if (lane == 0) scratch[32] = s;
  }
  __syncthreads();
  return scratch[32];
}

}  // namespace sagellm::gpu::detail
