#include "kv_cache/kv_cache_cuda.h"

#include <algorithm>

#include "attention/sage/sage_cuda.h"
#include "attention/sage/sage_params.h"
#include "core/error.h"

namespace sagellm {

namespace {

// Dp of the 8-bit blocks; throws when the cache cannot be 8-bit.
int int8_head_dim_padded(const KVCacheShape& s) {
  SAGELLM_CHECK(s.page_size == sage_cuda::kSagePageSize,
                "the 8-bit KV cache needs --page-size {} (the sage_attn kernels' key tile), not {}",
                sage_cuda::kSagePageSize, s.page_size);
  const int dp = sage_cuda::sage_padded_head_dim(s.head_dim);
  SAGELLM_CHECK(dp > 0, "the 8-bit KV cache cannot store head_dim {}", s.head_dim);
  return dp;
}

}  // namespace

size_t GpuKVCache::bytes_per_token(const KVCacheShape& s, KVCacheDType dtype) {
  const size_t heads = static_cast<size_t>(s.num_layers) * static_cast<size_t>(s.num_kv_heads);
  if (dtype == KVCacheDType::kFloat) {
    return heads * static_cast<size_t>(s.head_dim) * 2 * sizeof(uint16_t);
  }
  const auto block = static_cast<size_t>(sage_cuda::sage_page_block_bytes(int8_head_dim_padded(s)));
  const auto page = static_cast<size_t>(s.page_size);
  return (heads * block + page - 1) / page;
}

size_t GpuKVCache::tail_pool_bytes(const KVCacheShape& s, int num_tail_slots) {
  return static_cast<size_t>(s.num_layers) * static_cast<size_t>(std::max(num_tail_slots, 0)) *
         static_cast<size_t>(s.num_kv_heads) * static_cast<size_t>(s.page_size) *
         static_cast<size_t>(s.head_dim) * 2 * sizeof(uint16_t);
}

GpuKVCache::GpuKVCache(const KVCacheShape& shape, KVCacheDType dtype, int num_tail_slots)
    : shape_(shape), dtype_(dtype), pages_(std::max(shape.num_pages, 1)) {
  validate_kv_cache_shape(shape);
  SAGELLM_CHECK(dtype == KVCacheDType::kFloat || dtype == KVCacheDType::kInt8,
                "invalid KV cache dtype");
  if (dtype == KVCacheDType::kInt8) {
    head_dim_padded_ = int8_head_dim_padded(shape);
    SAGELLM_CHECK(num_tail_slots > 0, "the 8-bit KV cache needs bf16 tail slots (got {})",
                  num_tail_slots);
    num_tail_slots_ = num_tail_slots;
    tails_ = KVTailSlots(shape.num_pages, num_tail_slots);
    head8_stride_ = sage_cuda::sage_page_block_bytes(head_dim_padded_);
    pages8_ = DeviceBuffer<uint8_t>(static_cast<size_t>(shape.num_layers) *
                                    static_cast<size_t>(shape.num_pages) *
                                    static_cast<size_t>(page8_stride()));
    // Padding columns of a block must read as code 0, mean 0 and scale 0; the seal kernel writes
    // only what the page holds.
    pages8_.zero();
  }
  const auto elems = static_cast<size_t>(shape.num_layers) * static_cast<size_t>(layer_elems());
  k_ = DeviceBuffer<uint16_t>(elems);
  v_ = DeviceBuffer<uint16_t>(elems);
  // Unwritten slots are never read (kv_len bounds every read), but zeros keep a stray read from
  // turning into NaN and make memory checkers quiet.
  k_.zero();
  v_.zero();
}

int GpuKVCache::bf16_slots() const {
  return dtype_ == KVCacheDType::kInt8 ? num_tail_slots_ : shape_.num_pages;
}

void GpuKVCache::release(int page) {
  pages_.release(page);
  if (dtype_ == KVCacheDType::kInt8) tails_.release_page(page);
}

size_t GpuKVCache::bytes_per_token() const { return bytes_per_token(shape_, dtype_); }

uint16_t* GpuKVCache::k_layer(int layer) {
  SAGELLM_CHECK(layer >= 0 && layer < shape_.num_layers, "KV cache layer {} out of range", layer);
  return k_.data() + static_cast<int64_t>(layer) * layer_elems();
}

uint16_t* GpuKVCache::v_layer(int layer) {
  SAGELLM_CHECK(layer >= 0 && layer < shape_.num_layers, "KV cache layer {} out of range", layer);
  return v_.data() + static_cast<int64_t>(layer) * layer_elems();
}

uint8_t* GpuKVCache::pages8_layer(int layer) {
  SAGELLM_CHECK(dtype_ == KVCacheDType::kInt8, "the bf16 KV cache has no 8-bit pages");
  SAGELLM_CHECK(layer >= 0 && layer < shape_.num_layers, "KV cache layer {} out of range", layer);
  return pages8_.data() + static_cast<int64_t>(layer) * shape_.num_pages * page8_stride();
}

CudaKVLayer GpuKVCache::layer(int layer) const {
  SAGELLM_CHECK(layer >= 0 && layer < shape_.num_layers, "KV cache layer {} out of range", layer);
  CudaKVLayer l;
  l.k_pages = k_.data() + static_cast<int64_t>(layer) * layer_elems();
  l.v_pages = v_.data() + static_cast<int64_t>(layer) * layer_elems();
  l.page_stride = page_stride();
  l.kv_head_stride = kv_head_stride();
  l.page_size = shape_.page_size;
  l.num_pages = shape_.num_pages;
  l.dtype = dtype_;
  if (dtype_ == KVCacheDType::kInt8) {
    l.pages8 = pages8_.data() + static_cast<int64_t>(layer) * shape_.num_pages * page8_stride();
    l.page8_stride = page8_stride();
    l.head8_stride = head8_stride_;
  }
  return l;
}

CudaKVCacheView GpuKVCache::view() const {
  CudaKVCacheView v;
  v.page_size = shape_.page_size;
  v.dtype = dtype_;
  if (dtype_ == KVCacheDType::kInt8) v.tail_slot_of_page = &tails_.slot_of_page();
  return v;
}

}  // namespace sagellm
