// Scatter of new tokens' K and V rows into their slots of the paged bf16 KV cache.
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

constexpr int kThreads = 256;

template <int kVec>
__device__ __forceinline__ void copy_bits(bf16* dst, const bf16* src) {
  if constexpr (kVec == 8) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
    *dst = *src;
  }
}

// Work item = kVec consecutive elements of one (row, kv head), for both K and V.
template <int kVec>
__global__ void kv_cache_write_kernel(KVCacheWriteParams p) {
  const int chunks = p.head_dim / kVec;
  const int64_t per_row = static_cast<int64_t>(p.kv_heads) * chunks;
  const int64_t total = static_cast<int64_t>(p.rows) * per_row;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / per_row;
    const int64_t rem = e - row * per_row;
    const int64_t h = rem / chunks;
    const int64_t d = (rem - h * chunks) * kVec;
    const int32_t page = p.pages[row];
    const int32_t slot = p.slots[row];
    if (page < 0 || page >= p.num_pages || slot < 0 || slot >= p.page_size) continue;
    const int64_t dst =
        ((static_cast<int64_t>(page) * p.kv_heads + h) * p.page_size + slot) * p.head_dim + d;
    const int64_t head_off = h * p.head_dim + d;
    copy_bits<kVec>(p.k_cache + dst, p.k + row * p.k_row_stride + head_off);
    copy_bits<kVec>(p.v_cache + dst, p.v + row * p.v_row_stride + head_off);
  }
}

}  // namespace

void kv_cache_write(const KVCacheWriteParams& params, cudaStream_t stream) {
  KVCacheWriteParams p = params;
  SAGELLM_GPU_REQUIRE(
      p.rows >= 0 && p.kv_heads > 0 && p.head_dim > 0 && p.page_size > 0 && p.num_pages > 0,
      "kv_cache_write: bad shape rows=", p.rows, " kv_heads=", p.kv_heads, " head_dim=", p.head_dim,
      " page_size=", p.page_size, " num_pages=", p.num_pages);
  const int64_t row_elems = static_cast<int64_t>(p.kv_heads) * p.head_dim;
  if (p.k_row_stride == 0) p.k_row_stride = row_elems;
  if (p.v_row_stride == 0) p.v_row_stride = row_elems;
  SAGELLM_GPU_REQUIRE(p.k_row_stride >= row_elems && p.v_row_stride >= row_elems,
                      "kv_cache_write: a row stride is smaller than kv_heads * head_dim (k ",
                      p.k_row_stride, ", v ", p.v_row_stride, ", need ", row_elems, ")");
  if (p.rows == 0) return;
  SAGELLM_GPU_REQUIRE(p.k != nullptr && p.v != nullptr && p.k_cache != nullptr &&
                          p.v_cache != nullptr && p.pages != nullptr && p.slots != nullptr,
                      "kv_cache_write: null pointer");
  const bool vec = p.head_dim % 8 == 0 && p.k_row_stride % 8 == 0 && p.v_row_stride % 8 == 0 &&
                   detail::aligned16(p.k) && detail::aligned16(p.v) &&
                   detail::aligned16(p.k_cache) && detail::aligned16(p.v_cache);
  const int64_t items =
      static_cast<int64_t>(p.rows) * p.kv_heads * (vec ? p.head_dim / 8 : p.head_dim);
  const unsigned blocks = detail::blocks_for(items, kThreads);
  if (vec) {
    kv_cache_write_kernel<8><<<blocks, kThreads, 0, stream>>>(p);
  } else {
    kv_cache_write_kernel<1><<<blocks, kThreads, 0, stream>>>(p);
  }
  SAGELLM_CUDA_CHECK_LAUNCH();
}

void validate_kv_slots(std::span<const int32_t> pages, std::span<const int32_t> slots,
                       int num_pages, int page_size) {
  SAGELLM_GPU_REQUIRE(pages.size() == slots.size(), "kv cache slot mapping: ", pages.size(),
                      " pages but ", slots.size(), " slots");
  for (size_t t = 0; t < pages.size(); ++t) {
    if (pages[t] == -1) continue;  // padding row
    SAGELLM_GPU_REQUIRE(pages[t] >= 0 && pages[t] < num_pages, "kv cache slot mapping: row ", t,
                        " names page ", pages[t], ", outside [0, ", num_pages, ")");
    SAGELLM_GPU_REQUIRE(slots[t] >= 0 && slots[t] < page_size, "kv cache slot mapping: row ", t,
                        " names slot ", slots[t], ", outside [0, ", page_size, ")");
  }
}

}  // namespace sagellm::gpu
