// Rotary position embedding applied in place to bf16 q and k rows.
#include <algorithm>
#include <cstdint>

#include "core/cuda_pdl.cuh"
#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 1024;

// Grid: (blocks over the row's (head, pair) items, rows); a decode step has one row, and its 40
// heads x 64 pairs (Llama-3.1-8B) spread over many blocks instead of one block's serial loop.
// Each block computes the row's cos/sin table into shared memory for its items
// (detail::rope_cos_sin and rope_rotate give the formulas' bits).
//
// kWriteCache: the row's rotated K and its V are also stored into their KV-cache slot (the
// kv_cache_write of the same rows), saving a launch per layer; the V pairs are extra items after
// the q and k pairs. The stored bits are those of rope followed by kv_cache_write.
template <bool kWriteCache>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeParams p, KVCacheWriteParams kw) {
  __shared__ float cs[kMaxHeadDim];  // [0, half): cos, [half, head_dim): sin
  cuda_pdl::pdl_wait();
  cuda_pdl::pdl_launch_dependents();
  const int half = p.head_dim / 2;
  const int heads = p.q_heads + p.k_heads;
  const int pairs = heads * half;
  const int items = kWriteCache ? pairs + kw.kv_heads * half : pairs;
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const int32_t pos = p.positions[row];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      detail::rope_cos_sin(p.inv_freq[i], pos, &cs[i], &cs[half + i]);
    }
    __syncthreads();
    if (e < items) {
      const int h = e / half;
      const int i = e - h * half;
      // The cache element of (kv head, i) in this row's slot, or -1 for a padding row or a target
      // outside the pool (skipped, as kv_cache_write does).
      auto cache_at = [&](int kv_head) -> int64_t {
        const int32_t page = kw.pages[row];
        const int32_t slot = kw.slots[row];
        if (page < 0 || page >= kw.num_pages || slot < 0 || slot >= kw.page_size) return -1;
        return ((static_cast<int64_t>(page) * kw.kv_heads + kv_head) * kw.page_size + slot) *
                   kw.head_dim +
               i;
      };
      if (h < heads) {
        bf16* v = h < p.q_heads ? p.q + row * p.q_row_stride + static_cast<int64_t>(h) * p.head_dim
                                : p.k + row * p.k_row_stride +
                                      static_cast<int64_t>(h - p.q_heads) * p.head_dim;
        const float x1 = __bfloat162float(v[i]);
        const float x2 = __bfloat162float(v[half + i]);
        bf16 y1, y2;
        detail::rope_rotate(x1, x2, cs[i], cs[half + i], &y1, &y2);
        v[i] = y1;
        v[half + i] = y2;
        if constexpr (kWriteCache) {
          const int64_t at = h >= p.q_heads ? cache_at(h - p.q_heads) : -1;
          if (at >= 0) {
            kw.k_cache[at] = y1;
            kw.k_cache[at + half] = y2;
          }
        }
      } else if constexpr (kWriteCache) {
        const int kv_head = h - heads;
        const int64_t at = cache_at(kv_head);
        if (at >= 0) {
          const bf16* src =
              kw.v + row * kw.v_row_stride + static_cast<int64_t>(kv_head) * kw.head_dim;
          kw.v_cache[at] = src[i];
          kw.v_cache[at + half] = src[half + i];
        }
      }
    }
    __syncthreads();  // the next row overwrites cs
  }
}

// Checks and normalizes p (zero strides become dense ones); false when there is nothing to do.
bool check_rope(RopeParams& p) {
  SAGELLM_GPU_REQUIRE(p.head_dim > 0 && p.head_dim % 2 == 0 && p.head_dim <= kMaxHeadDim,
                      "rope: head_dim must be even and in [2, ", kMaxHeadDim, "] (got ", p.head_dim,
                      ")");
  SAGELLM_GPU_REQUIRE(p.rows >= 0 && p.q_heads >= 0 && p.k_heads >= 0,
                      "rope: bad shape rows=", p.rows, " q_heads=", p.q_heads,
                      " k_heads=", p.k_heads);
  if (p.q_row_stride == 0) p.q_row_stride = static_cast<int64_t>(p.q_heads) * p.head_dim;
  if (p.k_row_stride == 0) p.k_row_stride = static_cast<int64_t>(p.k_heads) * p.head_dim;
  SAGELLM_GPU_REQUIRE(p.q_row_stride >= static_cast<int64_t>(p.q_heads) * p.head_dim &&
                          p.k_row_stride >= static_cast<int64_t>(p.k_heads) * p.head_dim,
                      "rope: a row stride is smaller than heads * head_dim (q ", p.q_row_stride,
                      ", k ", p.k_row_stride, ")");
  if (p.rows == 0 || p.q_heads + p.k_heads == 0) return false;
  SAGELLM_GPU_REQUIRE(p.inv_freq != nullptr && p.positions != nullptr, "rope: null table");
  SAGELLM_GPU_REQUIRE(p.q_heads == 0 || p.q != nullptr, "rope: null q");
  SAGELLM_GPU_REQUIRE(p.k_heads == 0 || p.k != nullptr, "rope: null k");
  return true;
}

template <bool kWriteCache>
void launch_rope(const RopeParams& p, const KVCacheWriteParams& kw, cudaStream_t stream) {
  const int heads = p.q_heads + p.k_heads + (kWriteCache ? kw.kv_heads : 0);
  const int64_t items = static_cast<int64_t>(heads) * (p.head_dim / 2);
  SAGELLM_GPU_REQUIRE(items <= int64_t{65535} * kThreads, "rope: too many heads (", heads, ")");
  const dim3 grid(static_cast<unsigned>((items + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(p.rows, 65535)));
  SAGELLM_CUDA_CHECK(
      cuda_pdl::launch_dependent(rope_kernel<kWriteCache>, grid, kThreads, 0, stream, p, kw));
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope(const RopeParams& params, cudaStream_t stream) {
  RopeParams p = params;
  if (!check_rope(p)) return;
  launch_rope<false>(p, KVCacheWriteParams{}, stream);
}

bool rope_kv_write_prepare(RopeParams& p, KVCacheWriteParams& kw) {
  if (!check_rope(p)) return false;
  const int64_t row_elems = static_cast<int64_t>(kw.kv_heads) * kw.head_dim;
  if (kw.k_row_stride == 0) kw.k_row_stride = row_elems;
  if (kw.v_row_stride == 0) kw.v_row_stride = row_elems;
  // The cached K is the rotated K: the same rows, heads and layout as rope's k.
  SAGELLM_GPU_REQUIRE(kw.rows == p.rows && kw.kv_heads == p.k_heads && kw.head_dim == p.head_dim &&
                          kw.k == p.k && kw.k_row_stride == p.k_row_stride,
                      "rope_kv_write: the cache's K rows must be rope's k rows (rows ", kw.rows,
                      "/", p.rows, ", heads ", kw.kv_heads, "/", p.k_heads, ", head_dim ",
                      kw.head_dim, "/", p.head_dim, ")");
  SAGELLM_GPU_REQUIRE(kw.page_size > 0 && kw.num_pages > 0 && kw.v_row_stride >= row_elems,
                      "rope_kv_write: bad cache shape page_size=", kw.page_size,
                      " num_pages=", kw.num_pages, " v_row_stride=", kw.v_row_stride);
  SAGELLM_GPU_REQUIRE(kw.v != nullptr && kw.k_cache != nullptr && kw.v_cache != nullptr &&
                          kw.pages != nullptr && kw.slots != nullptr,
                      "rope_kv_write: null pointer");
  return true;
}

void rope_kv_write(const RopeParams& params, const KVCacheWriteParams& cache, cudaStream_t stream) {
  RopeParams p = params;
  KVCacheWriteParams kw = cache;
  if (!rope_kv_write_prepare(p, kw)) return;
  launch_rope<true>(p, kw, stream);
}

}  // namespace sagellm::gpu
