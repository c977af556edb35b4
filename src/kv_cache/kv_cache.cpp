#include "kv_cache/kv_cache.h"

#include <algorithm>
#include <functional>

#include "core/dtype.h"
#include "core/error.h"
#include "kv_cache/page_quant.h"

namespace sagellm {

std::string_view kv_cache_dtype_name(KVCacheDType t) {
  switch (t) {
    case KVCacheDType::kFloat:
      return "bf16";  // float32 on the CPU; bf16 on the GPU
    case KVCacheDType::kInt8:
      return "int8";
  }
  return "?";
}

namespace {

size_t checked_product(std::initializer_list<int> dims) {
  size_t n = 1;
  for (int d : dims) {
    if (d > 0 && n > static_cast<size_t>(-1) / 8 / static_cast<size_t>(d)) {
      fail("KV cache shape is too large");
    }
    n *= static_cast<size_t>(d);
  }
  return n;
}

}  // namespace

void validate_kv_cache_shape(const KVCacheShape& shape) {
  SAGELLM_CHECK(shape.num_layers > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0 &&
                    shape.page_size > 0 && shape.num_pages > 0,
                "invalid KV cache shape: layers {}, kv heads {}, head_dim {}, page_size {}, "
                "pages {} (all must be positive)",
                shape.num_layers, shape.num_kv_heads, shape.head_dim, shape.page_size,
                shape.num_pages);
}

PagedKVCache::PagedKVCache(const KVCacheShape& shape, KVCacheDType dtype, KVValueCodes v_codes)
    : shape_(shape), dtype_(dtype), v_codes_(v_codes), pages_(std::max(shape.num_pages, 1)) {
  validate_kv_cache_shape(shape);
  SAGELLM_CHECK(dtype == KVCacheDType::kFloat || dtype == KVCacheDType::kInt8,
                "invalid KV cache dtype");
  const size_t elems = checked_product(
      {shape.num_layers, shape.num_pages, shape.num_kv_heads, shape.page_size, shape.head_dim});
  k_.assign(elems, 0.0f);
  v_.assign(elems, 0.0f);
  if (dtype == KVCacheDType::kInt8) {
    const size_t heads = checked_product({shape.num_layers, shape.num_pages, shape.num_kv_heads});
    kq_.assign(elems, 0);
    vq_.assign(elems, 0);
    k_mean_.assign(heads * static_cast<size_t>(shape.head_dim), 0.0f);
    k_scale_.assign(heads, 0.0f);
    v_scale_.assign(heads * static_cast<size_t>(shape.head_dim), 0.0f);
    sealed_.assign(static_cast<size_t>(shape.num_layers) * shape.num_pages, 0);
  }
}

std::optional<int> PagedKVCache::allocate() { return pages_.allocate(); }

void PagedKVCache::release(int page) {
  pages_.release(page);
  if (dtype_ == KVCacheDType::kInt8) {
    for (int l = 0; l < shape_.num_layers; ++l) {
      sealed_[static_cast<size_t>(l) * shape_.num_pages + page] = 0;
    }
  }
}

namespace {

void check_index(const KVCacheShape& s, int layer, int page, int kv_head) {
  SAGELLM_CHECK(layer >= 0 && layer < s.num_layers, "KV cache: layer {} out of range (0..{})",
                layer, s.num_layers - 1);
  SAGELLM_CHECK(page >= 0 && page < s.num_pages, "KV cache: page {} out of range (0..{})", page,
                s.num_pages - 1);
  SAGELLM_CHECK(kv_head >= 0 && kv_head < s.num_kv_heads,
                "KV cache: kv head {} out of range (0..{})", kv_head, s.num_kv_heads - 1);
}

// Index of (layer, page, kv_head) in the [layer][page][kv_head] grid.
size_t head_index(const KVCacheShape& s, int layer, int page, int kv_head) {
  return (static_cast<size_t>(layer) * s.num_pages + page) * s.num_kv_heads + kv_head;
}

}  // namespace

void PagedKVCache::write(int layer, int page, int slot, const float* k, const float* v) {
  check_index(shape_, layer, page, 0);
  SAGELLM_CHECK(slot >= 0 && slot < shape_.page_size, "KV cache: slot {} out of range (0..{})",
                slot, shape_.page_size - 1);
  SAGELLM_CHECK(k != nullptr && v != nullptr, "KV cache: null K or V row");
  const bool int8 = dtype_ == KVCacheDType::kInt8;
  if (int8) {
    SAGELLM_CHECK(!is_sealed(layer, page),
                  "KV cache: page {} of layer {} is sealed (full and quantized); it cannot be "
                  "written until it is released",
                  page, layer);
  }
  const int hd = shape_.head_dim;
  const size_t page_elems = static_cast<size_t>(shape_.page_size) * hd;
  for (int h = 0; h < shape_.num_kv_heads; ++h) {
    const size_t base =
        head_index(shape_, layer, page, h) * page_elems + static_cast<size_t>(slot) * hd;
    for (int d = 0; d < hd; ++d) {
      // The 8-bit cache keeps its unsealed tail in bf16, as the GPU does.
      k_[base + d] = int8 ? round_to_bf16(k[h * hd + d]) : k[h * hd + d];
      v_[base + d] = int8 ? round_to_bf16(v[h * hd + d]) : v[h * hd + d];
    }
  }
  if (int8 && slot == shape_.page_size - 1) {
    for (int h = 0; h < shape_.num_kv_heads; ++h) {
      const size_t hi = head_index(shape_, layer, page, h);
      quantize_k_page(&k_[hi * page_elems], shape_.page_size, shape_.page_size, hd,
                      &kq_[hi * page_elems], &k_mean_[hi * hd], &k_scale_[hi]);
      quantize_v_page(&v_[hi * page_elems], shape_.page_size, shape_.page_size, hd,
                      &vq_[hi * page_elems], &v_scale_[hi * hd], v_codes_);
    }
    sealed_[static_cast<size_t>(layer) * shape_.num_pages + page] = 1;
  }
}

const float* PagedKVCache::k_float(int layer, int page, int kv_head) const {
  check_index(shape_, layer, page, kv_head);
  return &k_[head_index(shape_, layer, page, kv_head) * shape_.page_size * shape_.head_dim];
}

const float* PagedKVCache::v_float(int layer, int page, int kv_head) const {
  check_index(shape_, layer, page, kv_head);
  return &v_[head_index(shape_, layer, page, kv_head) * shape_.page_size * shape_.head_dim];
}

bool PagedKVCache::is_sealed(int layer, int page) const {
  check_index(shape_, layer, page, 0);
  if (dtype_ != KVCacheDType::kInt8) return false;
  return sealed_[static_cast<size_t>(layer) * shape_.num_pages + page] != 0;
}

QuantizedKVPageView PagedKVCache::quantized(int layer, int page, int kv_head) const {
  check_index(shape_, layer, page, kv_head);
  SAGELLM_CHECK(is_sealed(layer, page), "KV cache: page {} of layer {} is not sealed", page, layer);
  const size_t hi = head_index(shape_, layer, page, kv_head);
  const size_t page_elems = static_cast<size_t>(shape_.page_size) * shape_.head_dim;
  QuantizedKVPageView view;
  view.k = &kq_[hi * page_elems];
  view.k_mean = &k_mean_[hi * shape_.head_dim];
  view.k_scale = k_scale_[hi];
  view.v = &vq_[hi * page_elems];
  view.v_scale = &v_scale_[hi * shape_.head_dim];
  view.v_codes = v_codes_;
  return view;
}

size_t PagedKVCache::bytes_per_token() const {
  const size_t heads = static_cast<size_t>(shape_.num_layers) * shape_.num_kv_heads;
  const size_t hd = static_cast<size_t>(shape_.head_dim);
  if (dtype_ == KVCacheDType::kFloat) return heads * 2 * hd * 2;  // K and V in bf16
  // K int8 and V 8-bit codes, plus per page and head: K mean (fp32 per channel), K scale (fp32),
  // V scales (bf16 per channel), spread over the page's tokens (rounded up).
  const size_t page_bytes =
      heads * (2 * hd * static_cast<size_t>(shape_.page_size) + hd * 4 + 4 + hd * 2);
  return (page_bytes + shape_.page_size - 1) / shape_.page_size;
}

}  // namespace sagellm
