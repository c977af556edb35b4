// Instances and launcher of the sage_attn prefill kernel (head dims 64 and 128, fp8, int8 and fp16
// P.V).
#include <atomic>

#include "attention/flash/flash_smem_config.cuh"
#include "attention/sage/sage_attn_sm80.cuh"
#include "attention/sage/sage_launch_sm80.cuh"

namespace sagellm::sage_cuda::sm80 {

template <int kHeadDim, SagePv kPv>
cudaError_t launch_prefill(const SageParams& p, int max_q_len, cudaStream_t stream) {
  using T = SageTraits<kHeadDim, kSagePrefillBlockM / 16, kPv>;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err =
      flash_cuda::sm80::ensure_dynamic_smem(sage_attn_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(sage_ceil_div(max_q_len, T::kRows), p.num_heads, p.num_seqs);
  sage_attn_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_prefill<64, SagePv::kFp8>(const SageParams&, int, cudaStream_t);
template cudaError_t launch_prefill<128, SagePv::kFp8>(const SageParams&, int, cudaStream_t);
template cudaError_t launch_prefill<64, SagePv::kInt8>(const SageParams&, int, cudaStream_t);
template cudaError_t launch_prefill<128, SagePv::kInt8>(const SageParams&, int, cudaStream_t);
template cudaError_t launch_prefill<64, SagePv::kFp16>(const SageParams&, int, cudaStream_t);
template cudaError_t launch_prefill<128, SagePv::kFp16>(const SageParams&, int, cudaStream_t);

}  // namespace sagellm::sage_cuda::sm80
