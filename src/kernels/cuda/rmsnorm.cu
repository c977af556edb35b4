// RMSNorm, plain and fused with the residual add that precedes it in a decoder layer.
#include <cstdint>

#include "core/cuda_pdl.cuh"
#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

// A chunk's first pass: its kChunk values of x at `off` into v (the residual added first and
// stored back when kResidual), their squares added to ss.
template <int kChunk, bool kVec, bool kResidual>
__device__ __forceinline__ void sum_chunk(const bf16* x, bf16* residual, int64_t off,
                                          float (&v)[kChunk], float& ss) {
  detail::load_bf16<kChunk, kVec>(x + off, v);
  if constexpr (kResidual) {
    float r[kChunk];
    detail::load_bf16<kChunk, kVec>(residual + off, r);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) v[j] = detail::round_to_bf16(__fadd_rn(r[j], v[j]));
    detail::store_bf16<kChunk, kVec>(residual + off, v);  // exact: v is bf16-valued
  }
#pragma unroll
  for (int j = 0; j < kChunk; ++j) ss = fmaf(v[j], v[j], ss);
}

// A chunk's second pass: w * (v * inv), each product rounded (cpu::rmsnorm's formula), to out.
template <int kChunk, bool kVec>
__device__ __forceinline__ void scale_chunk(float (&v)[kChunk], const float (&w)[kChunk], float inv,
                                            bf16* out) {
#pragma unroll
  for (int j = 0; j < kChunk; ++j) v[j] = __fmul_rn(w[j], __fmul_rn(v[j], inv));
  detail::store_bf16<kChunk, kVec>(out, v);
}

__device__ __forceinline__ float inverse_rms(float sum_squares, int dim, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
}

// One block per row (grid-stride over rows). Thread j handles chunks j, j + blockDim, ... of
// kChunk consecutive elements; kChunk is 8 whenever dim % 8 == 0, whether or not the pointers
// allow 16-byte accesses (kVec), so the summation order depends on dim alone.
//
// kOneChunk (dim / kChunk <= blockDim, every row of a decoder up to dim 8192): each thread's
// single chunk stays in registers between the two passes, and its weights are loaded before the
// wait for the previous kernel (they are no kernel's output), so that a decode step's norm is one
// memory round trip after that wait instead of three. Same operations, same bits.
template <int kChunk, bool kVec, bool kResidual, bool kOneChunk>
__global__ void __launch_bounds__(1024)
    rmsnorm_kernel(const bf16* x, bf16* residual, const bf16* __restrict__ weight, bf16* out,
                   int rows, int dim, float eps) {
  __shared__ float scratch[33];
  const int chunks = dim / kChunk;
  if constexpr (kOneChunk) {
    const int c = threadIdx.x;
    const bool active = c < chunks;
    float w[kChunk];
    if (active) detail::load_bf16<kChunk, kVec>(weight + static_cast<int64_t>(c) * kChunk, w);
    cuda_pdl::pdl_wait();
    cuda_pdl::pdl_launch_dependents();
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
      const int64_t off = row * dim + static_cast<int64_t>(c) * kChunk;
      float v[kChunk];
      float ss = 0.0f;
      if (active) sum_chunk<kChunk, kVec, kResidual>(x, residual, off, v, ss);
      const float inv = inverse_rms(detail::block_sum(ss, scratch), dim, eps);
      if (active) scale_chunk<kChunk, kVec>(v, w, inv, out + off);
    }
    return;
  }
  cuda_pdl::pdl_wait();
  cuda_pdl::pdl_launch_dependents();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * dim;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
      float v[kChunk];
      sum_chunk<kChunk, kVec, kResidual>(x, residual, base + static_cast<int64_t>(c) * kChunk, v,
                                         ss);
    }
    const float inv = inverse_rms(detail::block_sum(ss, scratch), dim, eps);
    // Second pass re-reads what this same thread read (or wrote) in the first one.
    const bf16* src = kResidual ? residual : x;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
      const int64_t off = base + static_cast<int64_t>(c) * kChunk;
      float v[kChunk];
      float w[kChunk];
      detail::load_bf16<kChunk, kVec>(src + off, v);
      detail::load_bf16<kChunk, kVec>(weight + static_cast<int64_t>(c) * kChunk, w);
      scale_chunk<kChunk, kVec>(v, w, inv, out + off);
    }
  }
}

template <bool kResidual>
void launch(const bf16* x, bf16* residual, const bf16* weight, bf16* out, int rows, int dim,
            float eps, cudaStream_t stream) {
  const bool chunk8 = dim % 8 == 0;
  const bool vec = chunk8 && detail::aligned16(x) && detail::aligned16(weight) &&
                   detail::aligned16(out) && (!kResidual || detail::aligned16(residual));
  const int chunks = chunk8 ? dim / 8 : dim;
  const int threads = detail::threads_for(chunks);
  const unsigned blocks = detail::blocks_for_rows(rows);
  const bool one = chunks <= threads;
  auto kernel = vec      ? (one ? rmsnorm_kernel<8, true, kResidual, true>
                                : rmsnorm_kernel<8, true, kResidual, false>)
                : chunk8 ? (one ? rmsnorm_kernel<8, false, kResidual, true>
                                : rmsnorm_kernel<8, false, kResidual, false>)
                         : (one ? rmsnorm_kernel<1, false, kResidual, true>
                                : rmsnorm_kernel<1, false, kResidual, false>);
  SAGELLM_CUDA_CHECK(cuda_pdl::launch_dependent(kernel, blocks, threads, 0, stream, x, residual,
                                                weight, out, rows, dim, eps));
  SAGELLM_CUDA_CHECK_LAUNCH();
}

void check_args(const char* fn, const bf16* x, const bf16* weight, const bf16* out, int rows,
                int dim, float eps) {
  SAGELLM_GPU_REQUIRE(rows >= 0 && dim > 0, fn, ": bad shape rows=", rows, " dim=", dim);
  SAGELLM_GPU_REQUIRE(eps >= 0.0f, fn, ": eps must be >= 0 (got ", eps, ")");
  SAGELLM_GPU_REQUIRE(rows == 0 || (x != nullptr && weight != nullptr && out != nullptr), fn,
                      ": null pointer");
}

}  // namespace

void rmsnorm(const bf16* x, const bf16* weight, bf16* out, int rows, int dim, float eps,
             cudaStream_t stream) {
  check_args("rmsnorm", x, weight, out, rows, dim, eps);
  if (rows == 0) return;
  launch<false>(x, nullptr, weight, out, rows, dim, eps, stream);
}

void add_rmsnorm(bf16* residual, const bf16* x, const bf16* weight, bf16* out, int rows, int dim,
                 float eps, cudaStream_t stream) {
  check_args("add_rmsnorm", x, weight, out, rows, dim, eps);
  if (rows == 0) return;
  SAGELLM_GPU_REQUIRE(residual != nullptr, "add_rmsnorm: null residual");
  SAGELLM_GPU_REQUIRE(out != residual, "add_rmsnorm: out must not alias the residual");
  launch<true>(x, residual, weight, out, rows, dim, eps, stream);
}

}  // namespace sagellm::gpu
