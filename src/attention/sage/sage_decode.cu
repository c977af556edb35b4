// Instances and launcher of the sage_attn split-KV kernel, and the fixed-order combine of splits.
#include <atomic>

#include "attention/flash/flash_smem_config.cuh"
#include "attention/sage/sage_attn_sm80.cuh"
#include "attention/sage/sage_launch_sm80.cuh"

namespace sagellm::sage_cuda::sm80 {

namespace {

// One CTA per (new token, query head, request) with more than one split:
// out = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M), summed in split order.
constexpr int kCombineThreads = 128;

__global__ void __launch_bounds__(kCombineThreads) sage_split_combine_kernel(const SageParams p) {
  static_assert(kSageMaxSplits <= kCombineThreads, "one thread per split");
  __shared__ float weight[kSageMaxSplits];
  __shared__ float weighted_sum[kSageMaxSplits];
  __shared__ float split_max[kSageMaxSplits];
  __shared__ float total;
  const int seq = blockIdx.z, head = blockIdx.y, t = blockIdx.x;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int group = p.num_heads / p.num_kv_heads;
  if (!sage_uses_split_kernel(q_len, group) || t >= q_len) return;
  const int num_splits = sage_num_splits(p.kv_lens[seq]);
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
    const float wt = fast_exp2(split_max[threadIdx.x] - ref);
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
  bf16* dst = static_cast<bf16*>(p.o) + static_cast<int64_t>(q_begin + t) * p.o_row_stride +
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

}  // namespace

template <int kHeadDim, bool kPvFp8>
cudaError_t launch_decode(const SageParams& p, int m_blocks, int max_splits, cudaStream_t stream) {
  using T = SageTraits<kHeadDim, 1, true, kPvFp8>;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err =
      flash_cuda::sm80::ensure_dynamic_smem(sage_attn_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(max_splits, p.num_kv_heads * m_blocks, p.num_seqs);
  sage_attn_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_decode<64, true>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<128, true>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<64, false>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<128, false>(const SageParams&, int, int, cudaStream_t);

cudaError_t fp8_kernel_binary_version(int* version) {
  cudaFuncAttributes attr{};
  const cudaError_t err =
      cudaFuncGetAttributes(&attr, sage_attn_kernel<SageTraits<128, 1, true, true>>);
  if (err == cudaSuccess) *version = attr.binaryVersion;
  return err;
}

cudaError_t launch_split_combine(const SageParams& p, int max_q_len, cudaStream_t stream) {
  const dim3 grid(max_q_len, p.num_heads, p.num_seqs);
  sage_split_combine_kernel<<<grid, kCombineThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sagellm::sage_cuda::sm80
