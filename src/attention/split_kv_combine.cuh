// The fixed-order combine of split-KV partial results, shared by the flash and sage_attn decode
// kernels: both write, per (new token, query head, split), the unnormalized accumulator and the
// (max in log2 units, sum) pair into the same workspace layout (attention/flash/flash_params.h),
// and differ only in how a request's keys are cut into splits.
//
// One CTA per (new token, query head, request) of the requests with more than one split:
// out = sum_s acc_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M), summed in split order (no atomics:
// bitwise reproducible, batch independent). The splits' (max, sum) pairs are fetched in parallel
// and the accumulator loads are unrolled, so a small batch waits for a few memory round trips, not
// one per split.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/flash/flash_mma_sm80.cuh"
#include "core/cuda_pdl.cuh"

namespace sagellm::attention_cuda {

inline constexpr int kCombineThreads = 128;

// Params: FlashParams or SageParams (the same split-workspace and output fields). Splits: the
// backend's rule, with static uses_split_kernel(q_len, group) and num_splits(kv_len).
template <int kMaxSplits, class Splits, class Params>
__global__ void __launch_bounds__(kCombineThreads) split_combine_kernel(const Params p) {
  static_assert(kMaxSplits <= kCombineThreads, "one thread per split");
  __shared__ float split_max[kMaxSplits];
  __shared__ float weight[kMaxSplits];
  __shared__ float weighted_sum[kMaxSplits];
  __shared__ float total;
  cuda_pdl::pdl_wait();
  cuda_pdl::pdl_launch_dependents();
  const int seq = blockIdx.z, head = blockIdx.y, t = blockIdx.x;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int group = p.num_heads / p.num_kv_heads;
  if (!Splits::uses_split_kernel(q_len, group) || t >= q_len) return;
  const int num_splits = Splits::num_splits(p.kv_lens[seq]);
  if (num_splits <= 1) return;
  const int64_t slot0 = static_cast<int64_t>(p.split_offsets[seq]) +
                        (static_cast<int64_t>(t) * p.num_heads + head) * num_splits;
  float sum_s = 0.0f;
  if (threadIdx.x < num_splits) {
    split_max[threadIdx.x] = p.split_ml[(slot0 + threadIdx.x) * 2];
    sum_s = p.split_ml[(slot0 + threadIdx.x) * 2 + 1];
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, split_max[s]);
  const float ref = mx == -INFINITY ? 0.0f : mx;
  if (threadIdx.x < num_splits) {
    const float wt = flash_cuda::sm80::fast_exp2(split_max[threadIdx.x] - ref);
    weight[threadIdx.x] = wt;
    weighted_sum[threadIdx.x] = sum_s * wt;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int s = 0; s < num_splits; ++s) sum += weighted_sum[s];
    total = sum;
  }
  __syncthreads();
  const float sum = total;
  __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.o) +
                       static_cast<int64_t>(q_begin + t) * p.o_row_stride +
                       static_cast<int64_t>(head) * p.o_head_stride;
  const float* acc = p.split_acc + slot0 * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += kCombineThreads) {
    float a = 0.0f;
#pragma unroll 8
    for (int s = 0; s < num_splits; ++s)
      a += acc[static_cast<int64_t>(s) * p.head_dim + d] * weight[s];
    dst[d] = __float2bfloat16_rn(sum > 0.0f ? a / sum : 0.0f);
  }
}

// Grid: (new tokens of the longest request, query heads, requests).
template <int kMaxSplits, class Splits, class Params>
cudaError_t launch_split_combine(const Params& p, int max_q_len, cudaStream_t stream) {
  const dim3 grid(max_q_len, p.num_heads, p.num_seqs);
  return cuda_pdl::launch_dependent(split_combine_kernel<kMaxSplits, Splits, Params>, grid,
                                    kCombineThreads, 0, stream, p);
}

}  // namespace sagellm::attention_cuda
