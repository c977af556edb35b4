// Instances and launcher of the Hopper prefill kernel (head dims 64 and 128), and the check that
// the current GPU runs it.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "attention/flash/flash_launch_sm90.cuh"
#include "attention/flash/flash_prefill_sm90.cuh"
#include "attention/flash/flash_smem_config.cuh"

namespace sagellm::flash_cuda::sm90 {

namespace {

using Default128 = PrefillTraits<128, true>;

bool portable_forced() {
  // SAGELLM_PREFILL_KERNEL=sm80 keeps the portable kernels on Hopper (A/B measurements).
  static const bool forced = [] {
    const char* v = std::getenv("SAGELLM_PREFILL_KERNEL");
    return v != nullptr && std::strcmp(v, "sm80") == 0;
  }();
  return forced;
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  // The driver entry point through the runtime, so that nothing links libcuda directly.
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

bool encode_pool_map(CUtensorMap* map, const void* pool, const FlashParams& p, int num_pages,
                     int box_rows, PFN_cuTensorMapEncodeTiled_v12000 encode) {
  const cuuint64_t dims[4] = {
      static_cast<cuuint64_t>(p.head_dim), static_cast<cuuint64_t>(p.page_size),
      static_cast<cuuint64_t>(p.num_kv_heads), static_cast<cuuint64_t>(num_pages)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(p.head_dim) * 2,
                                 static_cast<cuuint64_t>(p.kv_head_stride) * 2,
                                 static_cast<cuuint64_t>(p.page_stride) * 2};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  // Columns past head_dim (padded head dims) come back as zeros.
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(pool), dims, strides,
                box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Tensor maps for the page pools, or false when the pages cannot be copied in boxes (page size
// neither dividing 128 nor a multiple of it, strides the copy engine does not take).
bool kv_tensor_maps(const FlashParams& p, int num_pages, KvTensorMaps* maps) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || num_pages <= 0) return false;
  const int ps = p.page_size;
  if (!(ps > 0 && (128 % ps == 0 || ps % 128 == 0))) return false;
  maps->box_rows = ps < 128 ? ps : 128;
  return encode_pool_map(&maps->k, p.k_pages, p, num_pages, maps->box_rows, encode) &&
         encode_pool_map(&maps->v, p.v_pages, p, num_pages, maps->box_rows, encode);
}

}  // namespace

bool kernel_runs_here(const void* kernel, std::array<std::atomic<int>, 64>& device_state) {
  if (portable_forced()) return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (device < 0 || device >= static_cast<int>(device_state.size())) return false;
  std::atomic<int>& state = device_state[static_cast<size_t>(device)];
  int known = state.load(std::memory_order_acquire);
  if (known == 0) {
    // The sm_90a machine code exists only for compute capability 9.0, and only when the build
    // included that architecture: the kernel's binary version says which code the driver chose.
    int major = 0, minor = 0;
    cudaFuncAttributes attr{};
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
        major == 9 && minor == 0 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
        attr.binaryVersion == 90;
    (void)cudaGetLastError();
    known = ok ? 1 : 2;
    state.store(known, std::memory_order_release);
  }
  return known == 1;
}

bool prefill_available() {
  static std::array<std::atomic<int>, 64> device_state{};
  return kernel_runs_here(reinterpret_cast<const void*>(flash_prefill_kernel<Default128>),
                          device_state);
}

template <class T>
cudaError_t launch_prefill_variant(const FlashParams& p, int max_q_len, int num_pages,
                                   cudaStream_t stream) {
  static std::atomic<uint64_t> smem_set{0};
  const cudaError_t err =
      sm80::ensure_dynamic_smem(flash_prefill_kernel<T>, T::kSmemBytes, smem_set);
  if (err != cudaSuccess) return err;
  KvTensorMaps maps{};
  if constexpr (T::kTma) {
    if (!kv_tensor_maps(p, num_pages, &maps)) return cudaErrorNotSupported;
  } else {
    (void)num_pages;
  }
  const dim3 grid(flash_ceil_div(max_q_len, T::kBlockM), p.num_heads, p.num_seqs);
  flash_prefill_kernel<T><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p, maps);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t launch_prefill(const FlashParams& p, int max_q_len, int num_pages,
                           cudaStream_t stream) {
  const cudaError_t err =
      launch_prefill_variant<PrefillTraits<kHeadDim, true>>(p, max_q_len, num_pages, stream);
  if (err != cudaErrorNotSupported) return err;
  return launch_prefill_variant<PrefillTraits<kHeadDim, false>>(p, max_q_len, num_pages, stream);
}

template cudaError_t launch_prefill<64>(const FlashParams&, int, int, cudaStream_t);
template cudaError_t launch_prefill<128>(const FlashParams&, int, int, cudaStream_t);
#define SAGELLM_PREFILL_VARIANT(D, TMA)                                                            \
  template cudaError_t launch_prefill_variant<PrefillTraits<D, TMA>>(const FlashParams&, int, int, \
                                                                     cudaStream_t);
SAGELLM_PREFILL_VARIANT(64, false)
SAGELLM_PREFILL_VARIANT(128, false)
SAGELLM_PREFILL_VARIANT(64, true)
SAGELLM_PREFILL_VARIANT(128, true)
#undef SAGELLM_PREFILL_VARIANT

}  // namespace sagellm::flash_cuda::sm90
