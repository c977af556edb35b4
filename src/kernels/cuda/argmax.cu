// Greedy sampling: argmax of each row of fp32 logits, lowest index on ties.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

// A candidate (value, index); index -1 means none yet. Only values > -inf are ever candidates
// (NaN compares false), so "better" is a total order on candidates and the result does not
// depend on the order in which threads and warps are merged.
struct Best {
  float value;
  int32_t index;
};

__device__ __forceinline__ bool better(const Best& a, const Best& b) {
  if (a.index < 0) return false;
  if (b.index < 0) return true;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ void consider(Best& best, float v, int32_t i) {
  if (v > -INFINITY && (best.index < 0 || v > best.value || (v == best.value && i < best.index))) {
    best.value = v;
    best.index = i;
  }
}

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Best o;
    o.value = __shfl_xor_sync(0xFFFFFFFFu, b.value, offset);
    o.index = __shfl_xor_sync(0xFFFFFFFFu, b.index, offset);
    if (better(o, b)) b = o;
  }
  return b;
}

// One block per row (grid-stride over rows); 16-byte loads when kVec (row starts 16-byte aligned).
template <bool kVec>
__global__ void __launch_bounds__(1024)
    argmax_kernel(const float* __restrict__ logits, int rows, int vocab, int64_t row_stride,
                  int32_t* __restrict__ ids, float* __restrict__ values) {
  __shared__ float s_value[32];
  __shared__ int32_t s_index[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* r = logits + row * row_stride;
    Best best{-INFINITY, -1};
    int tail_start = 0;
    if constexpr (kVec) {
      const int n4 = vocab / 4;
      const float4* r4 = reinterpret_cast<const float4*>(r);
      for (int c = threadIdx.x; c < n4; c += blockDim.x) {
        const float4 f = r4[c];
        consider(best, f.x, 4 * c);
        consider(best, f.y, 4 * c + 1);
        consider(best, f.z, 4 * c + 2);
        consider(best, f.w, 4 * c + 3);
      }
      tail_start = n4 * 4;
    }
    for (int i = tail_start + threadIdx.x; i < vocab; i += blockDim.x) consider(best, r[i], i);
    best = warp_best(best);
    if (lane == 0) {
      s_value[warp] = best.value;
      s_index[warp] = best.index;
    }
    __syncthreads();
    if (warp == 0) {
      Best b{-INFINITY, -1};
      if (lane < warps) b = Best{s_value[lane], s_index[lane]};
      b = warp_best(b);
      if (lane == 0) {
        ids[row] = b.index;
        if (values != nullptr) values[row] = b.index < 0 ? -INFINITY : b.value;
      }
    }
    __syncthreads();  // the next row overwrites s_value / s_index
  }
}

}  // namespace

void argmax_rows(const float* logits, int rows, int vocab, int64_t row_stride, int32_t* ids,
                 float* values, cudaStream_t stream) {
  SAGELLM_GPU_REQUIRE(rows >= 0 && vocab > 0, "argmax_rows: bad shape rows=", rows,
                      " vocab=", vocab);
  if (row_stride == 0) row_stride = vocab;
  SAGELLM_GPU_REQUIRE(row_stride >= vocab, "argmax_rows: row stride ", row_stride,
                      " is smaller than the vocabulary ", vocab);
  if (rows == 0) return;
  SAGELLM_GPU_REQUIRE(logits != nullptr && ids != nullptr, "argmax_rows: null pointer");
  const bool vec = detail::aligned16(logits) && row_stride % 4 == 0;
  const int threads = detail::threads_for((vocab + 7) / 8);
  const unsigned blocks = detail::blocks_for_rows(rows);
  if (vec) {
    argmax_kernel<true>
        <<<blocks, threads, 0, stream>>>(logits, rows, vocab, row_stride, ids, values);
  } else {
    argmax_kernel<false>
        <<<blocks, threads, 0, stream>>>(logits, rows, vocab, row_stride, ids, values);
  }
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace sagellm::gpu
