// Conversions between fp32 and bf16 arrays.
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

constexpr int kThreads = 256;

// Work items [0, n / 8) convert 8 elements with 16-byte accesses when kVec; the remaining items
// convert the tail one element each. Without kVec every item is one element.
template <bool kVec>
__global__ void bf16_to_f32_kernel(const bf16* __restrict__ in, float* __restrict__ out,
                                   int64_t n) {
  const int64_t vec_items = kVec ? n / 8 : 0;
  const int64_t items = vec_items + (n - vec_items * 8);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < items;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (e < vec_items) {
      float f[8];
      detail::load_bf16<8, true>(in + e * 8, f);
      float4* o = reinterpret_cast<float4*>(out + e * 8);
      o[0] = make_float4(f[0], f[1], f[2], f[3]);
      o[1] = make_float4(f[4], f[5], f[6], f[7]);
    } else {
      const int64_t i = vec_items * 8 + (e - vec_items);
      out[i] = __bfloat162float(in[i]);
    }
  }
}

template <bool kVec>
__global__ void f32_to_bf16_kernel(const float* __restrict__ in, bf16* __restrict__ out,
                                   int64_t n) {
  const int64_t vec_items = kVec ? n / 8 : 0;
  const int64_t items = vec_items + (n - vec_items * 8);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < items;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (e < vec_items) {
      const float4* src = reinterpret_cast<const float4*>(in + e * 8);
      const float4 a = src[0];
      const float4 b = src[1];
      const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      detail::store_bf16<8, true>(out + e * 8, f);
    } else {
      const int64_t i = vec_items * 8 + (e - vec_items);
      out[i] = __float2bfloat16_rn(in[i]);
    }
  }
}

}  // namespace

void bf16_to_f32(const bf16* in, float* out, int64_t n, cudaStream_t stream) {
  SAGELLM_GPU_REQUIRE(n >= 0, "bf16_to_f32: negative length ", n);
  if (n == 0) return;
  SAGELLM_GPU_REQUIRE(in != nullptr && out != nullptr, "bf16_to_f32: null pointer");
  const bool vec = detail::aligned16(in) && detail::aligned16(out);
  const int64_t items = vec ? n / 8 + n % 8 : n;
  const unsigned blocks = detail::blocks_for(items, kThreads);
  if (vec) {
    bf16_to_f32_kernel<true><<<blocks, kThreads, 0, stream>>>(in, out, n);
  } else {
    bf16_to_f32_kernel<false><<<blocks, kThreads, 0, stream>>>(in, out, n);
  }
  SAGELLM_CUDA_CHECK_LAUNCH();
}

void f32_to_bf16(const float* in, bf16* out, int64_t n, cudaStream_t stream) {
  SAGELLM_GPU_REQUIRE(n >= 0, "f32_to_bf16: negative length ", n);
  if (n == 0) return;
  SAGELLM_GPU_REQUIRE(in != nullptr && out != nullptr, "f32_to_bf16: null pointer");
  const bool vec = detail::aligned16(in) && detail::aligned16(out);
  const int64_t items = vec ? n / 8 + n % 8 : n;
  const unsigned blocks = detail::blocks_for(items, kThreads);
  if (vec) {
    f32_to_bf16_kernel<true><<<blocks, kThreads, 0, stream>>>(in, out, n);
  } else {
    f32_to_bf16_kernel<false><<<blocks, kThreads, 0, stream>>>(in, out, n);
  }
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace sagellm::gpu
