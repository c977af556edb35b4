// Rotary position embedding applied in place to bf16 q and k rows.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 1024;

// Grid: (blocks over the row's (head, pair) items, rows); a decode step has one row, and its 40
// heads x 64 pairs (Llama-3.1-8B) spread over many blocks instead of one block's serial loop.
// Each block computes the row's cos/sin table into shared memory for its items. Products and the
// sum are rounded explicitly (__fmul_rn/__fadd_rn) so the compiler cannot fuse them: the fp32
// result is then the one sagellm::Rope computes from the same cos/sin.
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p) {
  __shared__ float cs[kMaxHeadDim];  // [0, half): cos, [half, head_dim): sin
  const int half = p.head_dim / 2;
  const int heads = p.q_heads + p.k_heads;
  const int pairs = heads * half;
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const float pos = static_cast<float>(p.positions[row]);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      const float angle = __fmul_rn(p.inv_freq[i], pos);
      float s;
      float c;
      sincosf(angle, &s, &c);  // full-range argument reduction; not __sincosf
      cs[i] = c;
      cs[half + i] = s;
    }
    __syncthreads();
    if (e < pairs) {
      const int h = e / half;
      const int i = e - h * half;
      bf16* v = h < p.q_heads
                    ? p.q + row * p.q_row_stride + static_cast<int64_t>(h) * p.head_dim
                    : p.k + row * p.k_row_stride + static_cast<int64_t>(h - p.q_heads) * p.head_dim;
      const float x1 = __bfloat162float(v[i]);
      const float x2 = __bfloat162float(v[half + i]);
      const float c = cs[i];
      const float s = cs[half + i];
      v[i] = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(-x2, s)));
      v[half + i] = __float2bfloat16_rn(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
    __syncthreads();  // the next row overwrites cs
  }
}

}  // namespace

void rope(const RopeParams& params, cudaStream_t stream) {
  RopeParams p = params;
  SAGELLM_GPU_REQUIRE(p.head_dim > 0 && p.head_dim % 2 == 0 && p.head_dim <= kMaxHeadDim,
                      "rope: head_dim must be even and in [2, ", kMaxHeadDim, "] (got ", p.head_dim,
                      ")");
  SAGELLM_GPU_REQUIRE(p.rows >= 0 && p.q_heads >= 0 && p.k_heads >= 0,
                      "rope: bad shape rows=", p.rows, " q_heads=", p.q_heads,
                      " k_heads=", p.k_heads);
  if (p.q_row_stride == 0) p.q_row_stride = static_cast<int64_t>(p.q_heads) * p.head_dim;
  if (p.k_row_stride == 0) p.k_row_stride = static_cast<int64_t>(p.k_heads) * p.head_dim;
  SAGELLM_GPU_REQUIRE(p.q_row_stride >= static_cast<int64_t>(p.q_heads) * p.head_dim &&
                          p.k_row_stride >= static_cast<int64_t>(p.k_heads) * p.head_dim,
                      "rope: a row stride is smaller than heads * head_dim (q ", p.q_row_stride,
                      ", k ", p.k_row_stride, ")");
  if (p.rows == 0 || p.q_heads + p.k_heads == 0) return;
  SAGELLM_GPU_REQUIRE(p.inv_freq != nullptr && p.positions != nullptr, "rope: null table");
  SAGELLM_GPU_REQUIRE(p.q_heads == 0 || p.q != nullptr, "rope: null q");
  SAGELLM_GPU_REQUIRE(p.k_heads == 0 || p.k != nullptr, "rope: null k");
  const int64_t pairs = static_cast<int64_t>(p.q_heads + p.k_heads) * (p.head_dim / 2);
  SAGELLM_GPU_REQUIRE(pairs <= int64_t{65535} * kThreads, "rope: too many heads (",
                      p.q_heads + p.k_heads, ")");
  const dim3 grid(static_cast<unsigned>((pairs + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(p.rows, 65535)));
  rope_kernel<<<grid, kThreads, 0, stream>>>(p);
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace sagellm::gpu
