// Paged KV cache (CPU). Pages of `page_size` tokens are handed out by an allocator and named by
// index in each request's block table; every layer has its own storage for every page.
//
// Two storage modes:
// - kFloat: K and V kept as float32 (the exact baseline; the GPU path stores bf16).
// - kInt8 (SageAttention's 8-bit cache): a page that fills up is sealed: per KV head its K is
//   stored INT8 after subtracting the page's per-channel mean (one scale per page and head) and its
//   V with one scale per channel, as FP8 e4m3 or INT8 codes (KVValueCodes, chosen by the attention
//   backend: INT8 P.V needs INT8 V); the last, partly filled page of a request stays in bf16
//   (rounded floats here) until it fills.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "kv_cache/page_allocator.h"
#include "kv_cache/page_quant.h"

namespace sagellm {

enum class KVCacheDType { kFloat, kInt8 };

std::string_view kv_cache_dtype_name(KVCacheDType t);

struct KVCacheShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 64;
  int num_pages = 0;
};

// Throws sagellm::Error unless every dimension of the shape is positive.
void validate_kv_cache_shape(const KVCacheShape& shape);

// A sealed 8-bit page of one layer and one KV head.
struct QuantizedKVPageView {
  const int8_t* k = nullptr;      // [page_size][head_dim], (k - k_mean) / k_scale rounded
  const float* k_mean = nullptr;  // [head_dim]
  float k_scale = 0.0f;
  const uint8_t* v = nullptr;      // [page_size][head_dim], codes of v / v_scale (v_codes)
  const float* v_scale = nullptr;  // [head_dim]
  KVValueCodes v_codes = KVValueCodes::kFp8E4M3;
};

class PagedKVCache {
 public:
  PagedKVCache(const KVCacheShape& shape, KVCacheDType dtype,
               KVValueCodes v_codes = KVValueCodes::kFp8E4M3);

  const KVCacheShape& shape() const { return shape_; }
  KVCacheDType dtype() const { return dtype_; }
  KVValueCodes v_codes() const { return v_codes_; }

  // Page allocator. allocate() returns nullopt when every page is in use.
  std::optional<int> allocate();
  void release(int page);
  int num_free_pages() const { return pages_.num_free(); }

  // Writes one token's K and V ([num_kv_heads * head_dim] each) into `slot` of `page` for `layer`.
  // In kInt8 mode writing the last slot seals the page (quantizes it); writing a sealed page is an
  // error until the page is released.
  void write(int layer, int page, int slot, const float* k, const float* v);

  // Float storage of a page for one head: [page_size][head_dim]. In kInt8 mode this holds the
  // bf16-rounded tail until the page is sealed.
  const float* k_float(int layer, int page, int kv_head) const;
  const float* v_float(int layer, int page, int kv_head) const;
  bool is_sealed(int layer, int page) const;
  QuantizedKVPageView quantized(int layer, int page, int kv_head) const;

  // Bytes of KV storage one token takes in this mode (all layers), as the GPU cache would hold it.
  size_t bytes_per_token() const;

 private:
  KVCacheShape shape_;
  KVCacheDType dtype_;
  KVValueCodes v_codes_;
  PageAllocator pages_;
  std::vector<float> k_, v_;     // [layer][page][kv_head][slot][dim]
  std::vector<int8_t> kq_;       // kInt8: [layer][page][kv_head][slot][dim]
  std::vector<uint8_t> vq_;      // kInt8: [layer][page][kv_head][slot][dim]
  std::vector<float> k_mean_;    // kInt8: [layer][page][kv_head][dim]
  std::vector<float> k_scale_;   // kInt8: [layer][page][kv_head]
  std::vector<float> v_scale_;   // kInt8: [layer][page][kv_head][dim]
  std::vector<uint8_t> sealed_;  // kInt8: [layer][page]
};

}  // namespace sagellm
