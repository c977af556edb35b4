// Paged KV cache in GPU memory (bf16, the `flash` cache): per layer, K and V pools of
// [page][kv_head][slot][head_dim], pages handed out by a PageAllocator and named in each
// request's block table, as in the CPU cache.
#pragma once

#include <cstdint>
#include <optional>

#include "attention/cuda_attention.h"
#include "core/device_buffer.h"
#include "kv_cache/kv_cache.h"
#include "kv_cache/page_allocator.h"

namespace sagellm {

class GpuKVCache {
 public:
  // Allocates the whole pool up front; throws sagellm::Error when it does not fit.
  explicit GpuKVCache(const KVCacheShape& shape);

  const KVCacheShape& shape() const { return shape_; }
  std::optional<int> allocate() { return pages_.allocate(); }
  void release(int page) { pages_.release(page); }
  int num_free_pages() const { return pages_.num_free(); }

  CudaKVLayer layer(int layer) const;
  uint16_t* k_layer(int layer);  // bf16 bits
  uint16_t* v_layer(int layer);
  int64_t page_stride() const {
    return static_cast<int64_t>(shape_.num_kv_heads) * kv_head_stride();
  }
  int64_t kv_head_stride() const {
    return static_cast<int64_t>(shape_.page_size) * shape_.head_dim;
  }

  size_t bytes() const { return k_.bytes() + v_.bytes(); }
  // K and V of one token in all layers.
  size_t bytes_per_token() const;
  // Bytes one token takes for a shape, before allocating (for sizing the pool).
  static size_t bytes_per_token(const KVCacheShape& shape);

 private:
  int64_t layer_elems() const { return static_cast<int64_t>(shape_.num_pages) * page_stride(); }
  KVCacheShape shape_;
  PageAllocator pages_;
  DeviceBuffer<uint16_t> k_, v_;  // [layer][page][kv_head][slot][dim]
};

}  // namespace sagellm
