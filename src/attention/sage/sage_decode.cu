// Instances and launcher of the sage_attn split-KV kernel, and of the fixed-order combine of its
// splits (attention/split_kv_combine.cuh).
#include <atomic>

#include "attention/flash/flash_smem_config.cuh"
#include "attention/sage/sage_decode_sm80.cuh"
#include "attention/sage/sage_launch_sm80.cuh"
#include "attention/split_kv_combine.cuh"

namespace sagellm::sage_cuda::sm80 {

namespace {

struct SageSplits {
  __device__ static bool uses_split_kernel(int q_len, int group) {
    return sage_uses_split_kernel(q_len, group);
  }
  __device__ static int num_splits(int kv_len) { return sage_num_splits(kv_len); }
};

}  // namespace

template <int kHeadDim, SagePv kPv>
cudaError_t launch_decode(const SageParams& p, int m_blocks, int max_splits, cudaStream_t stream) {
  using T = SageDecodeTraits<kHeadDim, kPv>;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err =
      flash_cuda::sm80::ensure_dynamic_smem(sage_decode_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(max_splits, p.num_kv_heads * m_blocks, p.num_seqs);
  sage_decode_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_decode<64, SagePv::kFp8>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<128, SagePv::kFp8>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<64, SagePv::kInt8>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<128, SagePv::kInt8>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<64, SagePv::kFp16>(const SageParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<128, SagePv::kFp16>(const SageParams&, int, int, cudaStream_t);

cudaError_t fp8_kernel_binary_version(int* version) {
  cudaFuncAttributes attr{};
  const cudaError_t err =
      cudaFuncGetAttributes(&attr, sage_decode_kernel<SageDecodeTraits<128, SagePv::kFp8>>);
  if (err == cudaSuccess) *version = attr.binaryVersion;
  return err;
}

cudaError_t launch_split_combine(const SageParams& p, int max_q_len, cudaStream_t stream) {
  return attention_cuda::launch_split_combine<kSageMaxSplits, SageSplits>(p, max_q_len, stream);
}

}  // namespace sagellm::sage_cuda::sm80
