// Instances and launcher of the sm_80 prefill kernel (head dims 64 and 128).
//
// Tile shapes, measured on an H200 (B=4, H=32, N=8192, an earlier bench/flash_attention_bench
// --variants; every shape gives bitwise the same output, only the speed differs):
//   head_dim 128: 128 rows per CTA, 4 warps of 32 rows: 268 TFLOP/s full, 255 causal
//     (64 rows / 4 warps of 16: 193 / 191; 128 / 8 warps of 16: 233 / 226; 256 / 8 warps of 32:
//     287 / 271, but a 256-row CTA wastes most of its work on short extends);
//   head_dim 64: 128 rows per CTA, 8 warps of 16 rows: 251 / 241 (4 warps of 32: 230 / 222).
#include <atomic>

#include "attention/flash/flash_launch_sm80.cuh"
#include "attention/flash/flash_prefill_sm80.cuh"
#include "attention/flash/flash_smem_config.cuh"

namespace sagellm::flash_cuda::sm80 {

namespace {

template <int kHeadDim>
struct PrefillConfig;
template <>
struct PrefillConfig<64> {
  using Traits = PrefillTraits<64, 128, 1>;
};
template <>
struct PrefillConfig<128> {
  using Traits = PrefillTraits<128, 128, 2>;
};

}  // namespace

template <int kHeadDim>
cudaError_t launch_prefill(const FlashParams& p, int max_q_len, cudaStream_t stream) {
  using T = typename PrefillConfig<kHeadDim>::Traits;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err = ensure_dynamic_smem(flash_prefill_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(flash_ceil_div(max_q_len, T::kBlockM), p.num_heads, p.num_seqs);
  flash_prefill_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_prefill<64>(const FlashParams&, int, cudaStream_t);
template cudaError_t launch_prefill<128>(const FlashParams&, int, cudaStream_t);

}  // namespace sagellm::flash_cuda::sm80
