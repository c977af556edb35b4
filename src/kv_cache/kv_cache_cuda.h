// Paged KV cache in GPU memory: pages handed out by a PageAllocator and named in each request's
// block table, as in the CPU cache (kv_cache.h), in one of two storages:
// - kFloat (the `flash` cache): per layer, K and V pools of bf16 [page][kv_head][slot][head_dim].
// - kInt8 (sage_attn's cache): per layer, a pool of 8-bit blocks [page][kv_head] in the layout of
//   attention/sage/sage_params.h, plus a bf16 tail pool [tail_slot][kv_head][slot][head_dim] that
//   holds the tokens of pages not yet full. A page is sealed (quantized into its block) in the
//   step that writes its last slot; kv_cache_step.h plans each step's seals and tail writes and
//   keeps the tail slots' bookkeeping.
#pragma once

#include <cstdint>
#include <optional>

#include "attention/cuda_attention.h"
#include "core/device_buffer.h"
#include "kv_cache/kv_cache.h"
#include "kv_cache/kv_cache_step.h"
#include "kv_cache/page_allocator.h"

namespace sagellm {

class GpuKVCache {
 public:
  // Allocates the whole pool up front; throws sagellm::Error when it does not fit. kInt8 needs
  // page_size == sage_cuda::kSagePageSize, a head_dim the sage kernels support and
  // num_tail_slots > 0 (pages that can be partly filled at once: one per running request).
  explicit GpuKVCache(const KVCacheShape& shape, KVCacheDType dtype = KVCacheDType::kFloat,
                      int num_tail_slots = 0);

  const KVCacheShape& shape() const { return shape_; }
  KVCacheDType dtype() const { return dtype_; }
  std::optional<int> allocate() { return pages_.allocate(); }
  // Gives the page back; in kInt8 mode also frees its tail slot.
  void release(int page);
  int num_free_pages() const { return pages_.num_free(); }

  CudaKVLayer layer(int layer) const;
  CudaKVCacheView view() const;
  // kFloat: the layer's bf16 pages. kInt8: the layer's bf16 tail pool, indexed by tail slot.
  uint16_t* k_layer(int layer);  // bf16 bits
  uint16_t* v_layer(int layer);
  // Stride of a page (kFloat) or tail slot (kInt8) and of a KV head within it, in elements.
  int64_t page_stride() const {
    return static_cast<int64_t>(shape_.num_kv_heads) * kv_head_stride();
  }
  int64_t kv_head_stride() const {
    return static_cast<int64_t>(shape_.page_size) * shape_.head_dim;
  }

  // kInt8 only: the layer's 8-bit blocks, at page * page8_stride() + kv_head * head8_stride().
  uint8_t* pages8_layer(int layer);
  int head_dim_padded() const { return head_dim_padded_; }
  int64_t head8_stride() const { return head8_stride_; }
  int64_t page8_stride() const { return head8_stride_ * shape_.num_kv_heads; }
  int num_tail_slots() const { return num_tail_slots_; }
  // kInt8 only: which pages have a tail slot (plan_kv_step reads it, the forward pass applies the
  // step's plan to it).
  KVTailSlots& tails() { return tails_; }
  const KVTailSlots& tails() const { return tails_; }

  // Everything the cache allocated on the GPU (kInt8: 8-bit pool and tail pool).
  size_t bytes() const { return k_.bytes() + v_.bytes() + pages8_.bytes(); }
  // kInt8: the bf16 tail pool alone (included in bytes()); 0 for kFloat.
  size_t tail_pool_bytes() const {
    return dtype_ == KVCacheDType::kInt8 ? k_.bytes() + v_.bytes() : 0;
  }
  // K and V of one token in all layers, as the page pool stores them (kInt8: the 8-bit blocks,
  // their means and scales spread over the page's tokens; the tail pool is not counted).
  size_t bytes_per_token() const;
  // The same before allocating (for sizing the pool); throws for a head_dim kInt8 cannot store.
  static size_t bytes_per_token(const KVCacheShape& shape, KVCacheDType dtype);
  // Bytes of a kInt8 cache's tail pool of `num_tail_slots` slots.
  static size_t tail_pool_bytes(const KVCacheShape& shape, int num_tail_slots);

 private:
  // Pages (kFloat) or tail slots (kInt8) of the bf16 pools, per layer.
  int bf16_slots() const;
  int64_t layer_elems() const { return static_cast<int64_t>(bf16_slots()) * page_stride(); }
  KVCacheShape shape_;
  KVCacheDType dtype_;
  PageAllocator pages_;
  DeviceBuffer<uint16_t> k_, v_;  // [layer][page or tail slot][kv_head][slot][dim]
  DeviceBuffer<uint8_t> pages8_;  // kInt8: [layer][page][kv_head] blocks
  int head_dim_padded_ = 0;
  int64_t head8_stride_ = 0;  // bytes of one block
  int num_tail_slots_ = 0;
  KVTailSlots tails_;
};

}  // namespace sagellm
