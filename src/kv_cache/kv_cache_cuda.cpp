#include "kv_cache/kv_cache_cuda.h"

#include "core/error.h"

namespace sagellm {

size_t GpuKVCache::bytes_per_token(const KVCacheShape& s) {
  return static_cast<size_t>(s.num_layers) * s.num_kv_heads * s.head_dim * 2 * sizeof(uint16_t);
}

GpuKVCache::GpuKVCache(const KVCacheShape& shape)
    : shape_(shape), pages_(std::max(shape.num_pages, 1)) {
  validate_kv_cache_shape(shape);
  const auto elems = static_cast<size_t>(shape.num_layers) * static_cast<size_t>(layer_elems());
  k_ = DeviceBuffer<uint16_t>(elems);
  v_ = DeviceBuffer<uint16_t>(elems);
  // Unwritten slots are never read (kv_len bounds every read), but zeros keep a stray read from
  // turning into NaN and make memory checkers quiet.
  k_.zero();
  v_.zero();
}

size_t GpuKVCache::bytes_per_token() const { return bytes_per_token(shape_); }

uint16_t* GpuKVCache::k_layer(int layer) {
  SAGELLM_CHECK(layer >= 0 && layer < shape_.num_layers, "KV cache layer {} out of range", layer);
  return k_.data() + static_cast<int64_t>(layer) * layer_elems();
}

uint16_t* GpuKVCache::v_layer(int layer) {
  SAGELLM_CHECK(layer >= 0 && layer < shape_.num_layers, "KV cache layer {} out of range", layer);
  return v_.data() + static_cast<int64_t>(layer) * layer_elems();
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
  return l;
}

}  // namespace sagellm
