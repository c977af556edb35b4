// Instances and launchers of the sm_80 split-KV kernel (head dims 64 and 128) and its combine.
#include <atomic>

#include "attention/flash/flash_decode_sm80.cuh"
#include "attention/flash/flash_launch_sm80.cuh"
#include "attention/flash/flash_smem_config.cuh"
#include "attention/split_kv_combine.cuh"

namespace sagellm::flash_cuda::sm80 {

template <int kHeadDim>
cudaError_t launch_decode(const FlashParams& p, int m_blocks, int max_splits, cudaStream_t stream) {
  using T = DecodeTraits<kHeadDim>;
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err = ensure_dynamic_smem(flash_decode_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  const dim3 grid(max_splits, p.num_kv_heads * m_blocks, p.num_seqs);
  return cuda_pdl::launch_dependent(flash_decode_kernel<T>, grid, T::kThreads, T::kSmemBytes,
                                    stream, p);
}

namespace {

struct FlashSplits {
  __device__ static bool uses_split_kernel(int q_len, int group) {
    return flash_uses_split_kernel(q_len, group);
  }
  __device__ static int num_splits(int kv_len) { return flash_num_splits(kv_len); }
};

}  // namespace

cudaError_t launch_split_combine(const FlashParams& p, int max_q_len, cudaStream_t stream) {
  return attention_cuda::launch_split_combine<kFlashMaxSplits, FlashSplits>(p, max_q_len, stream);
}

template cudaError_t launch_decode<64>(const FlashParams&, int, int, cudaStream_t);
template cudaError_t launch_decode<128>(const FlashParams&, int, int, cudaStream_t);

}  // namespace sagellm::flash_cuda::sm80
