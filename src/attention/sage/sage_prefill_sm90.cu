// Launcher of the Hopper sage_attn prefill kernel (fp8 and int8 P.V, head dim 128), and the check
// that the current GPU runs it.
#include <array>
#include <atomic>

#include "attention/flash/flash_launch_sm90.cuh"
#include "attention/flash/flash_smem_config.cuh"
#include "attention/sage/sage_launch_sm90.cuh"
#include "attention/sage/sage_prefill_sm90.cuh"

namespace sagellm::sage_cuda::sm90 {

bool prefill_available() {
  static std::array<std::atomic<int>, 64> device_state{};
  return flash_cuda::sm90::kernel_runs_here(
      reinterpret_cast<const void*>(sage_prefill_kernel<PrefillTraits<SagePv::kFp8>>),
      device_state);
}

template <SagePv kPv>
cudaError_t launch_prefill(const SageParams& p, int max_q_len, cudaStream_t stream) {
  using T = PrefillTraits<kPv>;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err =
      flash_cuda::sm80::ensure_dynamic_smem(sage_prefill_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(sage_ceil_div(max_q_len, T::kRows), p.num_heads, p.num_seqs);
  sage_prefill_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_prefill<SagePv::kFp8>(const SageParams&, int, cudaStream_t);
template cudaError_t launch_prefill<SagePv::kInt8>(const SageParams&, int, cudaStream_t);

}  // namespace sagellm::sage_cuda::sm90
