// SwiGLU activation: silu(gate) * up over rows laid out [gate | up].
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

constexpr int kThreads = 256;

// Work item = kVec consecutive outputs of one row; elementwise, so the vector width does not
// change the results.
template <int kVec>
__global__ void silu_mul_kernel(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int rows,
                                int inter) {
  const int chunks = inter / kVec;
  const int64_t total = static_cast<int64_t>(rows) * chunks;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / chunks;
    const int64_t i = (e - t * chunks) * kVec;
    const bf16* g_ptr = gate_up + t * 2 * inter + i;
    float g[kVec];
    float u[kVec];
    detail::load_bf16<kVec, kVec == 8>(g_ptr, g);
    detail::load_bf16<kVec, kVec == 8>(g_ptr + inter, u);
#pragma unroll
    for (int j = 0; j < kVec; ++j) g[j] = detail::silu_mul(g[j], u[j]);
    detail::store_bf16<kVec, kVec == 8>(out + t * inter + i, g);
  }
}

}  // namespace

void silu_mul(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t stream) {
  SAGELLM_GPU_REQUIRE(rows >= 0 && inter > 0, "silu_mul: bad shape rows=", rows, " inter=", inter);
  if (rows == 0) return;
  SAGELLM_GPU_REQUIRE(gate_up != nullptr && out != nullptr, "silu_mul: null pointer");
  const bool vec = inter % 8 == 0 && detail::aligned16(gate_up) && detail::aligned16(out);
  const int64_t items = static_cast<int64_t>(rows) * (vec ? inter / 8 : inter);
  const unsigned blocks = detail::blocks_for(items, kThreads);
  if (vec) {
    silu_mul_kernel<8><<<blocks, kThreads, 0, stream>>>(gate_up, out, rows, inter);
  } else {
    silu_mul_kernel<1><<<blocks, kThreads, 0, stream>>>(gate_up, out, rows, inter);
  }
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace sagellm::gpu
