// CPU twin of `flash`: exact attention in fp32 over the paged cache.
//
// Numerics, per output row (one query token of one head):
// - q' = q * (sm_scale * log2(e)) in fp32 (the constant is one fp32 product), so scores are in
//   base 2: s_j = sum_d q'[d] * k_j[d], fp32, summed in order of d.
// - Online softmax over the request's pages in order (the max is updated once per page):
//   m_new = max(m, max over visible keys of the page of s_j), alpha = exp2(m - m_new),
//   p_j = exp2(s_j - m_new), l = l * alpha + sum_j p_j, acc[d] = acc[d] * alpha + partial[d] with
//   partial[d] = sum_j p_j * v_j[d] in order of j (cpu_kernels.h gives the exact orders and the
//   exp2). out = acc / l. The relative error against fp64 is ~1e-6 (fp32 rounding).
// - Masked keys (bottom-right causal mask, and slots past kv_len) contribute nothing.
// - kInt8 cache: sealed pages are dequantized (k = code * k_scale + k_mean[d],
//   v = v_code_value(code) * v_scale[d]); the unsealed tail holds bf16-rounded floats and is used
//   as is. `--kv-cache-dtype auto` gives flash the float cache, so this is only an explicit choice.
// Parallelism: OpenMP over work items (cpu_plan.h); each output row is computed by one thread in
// a fixed order, so results are bitwise independent of the thread count and of the batch.
#include <omp.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "attention/cpu_kernels.h"
#include "attention/cpu_plan.h"
#include "attention/flash/flash_backend.h"
#include "core/fp8.h"

namespace sagellm {

namespace {

using attention_cpu::kTileCols;
using attention_cpu::kTileRows;
using attention_cpu::round_up;
using attention_cpu::Vec4;

constexpr float kLog2e = 1.4426950408889634f;

// Per-thread scratch for one work item; sized once for the largest item.
struct FlashScratch {
  int d8 = 0, ps8 = 0, r4 = 0;
  std::vector<float> q, s, p, kt, v, partial, acc, m, l, alpha;
  FlashScratch(int head_dim, int page_size, int max_rows)
      : d8(round_up(head_dim, kTileCols)),
        ps8(round_up(page_size, kTileCols)),
        r4(round_up(max_rows, kTileRows)),
        q(static_cast<size_t>(r4) * d8),
        s(static_cast<size_t>(r4) * ps8),
        p(static_cast<size_t>(r4) * ps8),
        kt(static_cast<size_t>(d8) * ps8),
        v(static_cast<size_t>(ps8) * d8),
        partial(static_cast<size_t>(r4) * d8),
        acc(static_cast<size_t>(r4) * d8),
        m(static_cast<size_t>(r4)),
        l(static_cast<size_t>(r4)),
        alpha(static_cast<size_t>(r4)) {}
};

// K of one page transposed into kt [hd][ps8], zero-padded to n8 keys. Returns V as [n][ldv]
// with ldv % kTileCols == 0 and zero padding columns: the cache's own rows when they qualify,
// else a dequantized or padded copy in w.v.
const float* load_page(const PagedKVCache& cache, int layer, int page, int kv_head, int n, int n8,
                       FlashScratch& w, int& ldv) {
  const int hd = cache.shape().head_dim;
  const float* v_out = w.v.data();
  ldv = w.d8;
  if (cache.is_sealed(layer, page)) {
    const QuantizedKVPageView qv = cache.quantized(layer, page, kv_head);
    for (int j = 0; j < n; ++j) {
      float* vr = &w.v[static_cast<size_t>(j) * w.d8];
      for (int d = 0; d < hd; ++d) {
        w.kt[static_cast<size_t>(d) * w.ps8 + j] =
            static_cast<float>(qv.k[j * hd + d]) * qv.k_scale + qv.k_mean[d];
        vr[d] = v_code_value(qv.v[j * hd + d], qv.v_codes) * qv.v_scale[d];
      }
    }
  } else {
    const float* k = cache.k_float(layer, page, kv_head);
    const float* v = cache.v_float(layer, page, kv_head);
    for (int j = 0; j < n; ++j) {
      for (int d = 0; d < hd; ++d) w.kt[static_cast<size_t>(d) * w.ps8 + j] = k[j * hd + d];
    }
    if (hd == w.d8) {
      v_out = v;
      ldv = hd;
    } else {
      for (int j = 0; j < n; ++j) {
        std::copy(v + j * hd, v + (j + 1) * hd, &w.v[static_cast<size_t>(j) * w.d8]);
      }
    }
  }
  for (int d = 0; d < hd; ++d) {
    std::fill(&w.kt[static_cast<size_t>(d) * w.ps8 + n], &w.kt[static_cast<size_t>(d) * w.ps8 + n8],
              0.0f);
  }
  return v_out;
}

void run_item(const AttentionShape& shape, const AttentionBatch& batch, const PagedKVCache& cache,
              int layer, const float* q, float* out, const attention_cpu::WorkItem& it,
              FlashScratch& w) {
  const AttentionSeq& seq = batch.seqs[static_cast<size_t>(it.seq)];
  const int hd = shape.head_dim, group = shape.num_heads / shape.num_kv_heads;
  const int nb = it.q_end - it.q_begin, rows = nb * group, r4 = round_up(rows, kTileRows);
  const int ps = cache.shape().page_size;
  const size_t row_stride = static_cast<size_t>(shape.num_heads) * hd;
  const float c = shape.sm_scale * kLog2e;

  // Rows r = hh * nb + ii: head kv_head * group + hh, new token q_begin + ii. Padding rows stay 0.
  std::fill_n(w.q.begin(), static_cast<size_t>(r4) * w.d8, 0.0f);
  std::fill_n(w.p.begin(), static_cast<size_t>(r4) * w.ps8, 0.0f);
  std::fill_n(w.acc.begin(), static_cast<size_t>(r4) * w.d8, 0.0f);
  std::fill(w.v.begin(), w.v.end(), 0.0f);
  for (int r = 0; r < rows; ++r) {
    const int head = it.kv_head * group + r / nb, i = it.q_begin + r % nb;
    const float* src = q + static_cast<size_t>(seq.q_start + i) * row_stride + head * hd;
    for (int d = 0; d < hd; ++d) w.q[static_cast<size_t>(r) * w.d8 + d] = src[d] * c;
    w.m[r] = -std::numeric_limits<float>::infinity();
    w.l[r] = 0.0f;
  }

  const int tile_last_key = attention_cpu::last_visible_key(seq, it.q_end - 1, batch.causal);
  const int num_pages = (seq.kv_len + ps - 1) / ps;
  const auto identity = [](Vec4 x) { return x; };
  const auto exact_p = [](Vec4 pe, Vec4) { return pe; };
  for (int pi = 0; pi < num_pages; ++pi) {
    const int base = pi * ps;
    if (base > tile_last_key) break;  // every row of the item is masked from here on
    const int n = std::min(ps, seq.kv_len - base), n8 = round_up(n, kTileCols);
    int ldv = 0;
    const float* v =
        load_page(cache, layer, seq.pages[static_cast<size_t>(pi)], it.kv_head, n, n8, w, ldv);
    attention_cpu::matmul_sequential(w.q.data(), w.d8, w.kt.data(), w.ps8, hd, w.s.data(), w.ps8,
                                     r4, n8);
    for (int r = 0; r < rows; ++r) {
      const int i = it.q_begin + r % nb;
      const int visible =
          std::clamp(attention_cpu::last_visible_key(seq, i, batch.causal) - base + 1, 0, n);
      float* pr = &w.p[static_cast<size_t>(r) * w.ps8];
      if (visible == 0) {
        w.alpha[r] = 1.0f;
        std::fill(pr, pr + n8, 0.0f);
        continue;
      }
      w.alpha[r] = attention_cpu::softmax_page_row(&w.s[static_cast<size_t>(r) * w.ps8], visible,
                                                   n8, w.m[r], w.l[r], pr, identity, exact_p);
    }
    attention_cpu::matmul_sequential(w.p.data(), w.ps8, v, ldv, n, w.partial.data(), w.d8, r4,
                                     w.d8);
    for (int r = 0; r < rows; ++r) {
      float* ar = &w.acc[static_cast<size_t>(r) * w.d8];
      const float* pr = &w.partial[static_cast<size_t>(r) * w.d8];
      const float a = w.alpha[r];
      for (int d = 0; d < hd; ++d) ar[d] = ar[d] * a + pr[d];
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int head = it.kv_head * group + r / nb, i = it.q_begin + r % nb;
    float* dst = out + static_cast<size_t>(seq.q_start + i) * row_stride + head * hd;
    const float* ar = &w.acc[static_cast<size_t>(r) * w.d8];
    const float l = w.l[r];
    for (int d = 0; d < hd; ++d) dst[d] = l > 0.0f ? ar[d] / l : 0.0f;
  }
}

class FlashBackend final : public AttentionBackend {
 public:
  std::string_view name() const override { return "flash"; }
  KVCacheDType default_kv_cache_dtype() const override { return KVCacheDType::kFloat; }

  void forward(const AttentionShape& shape, const AttentionBatch& batch, const PagedKVCache& cache,
               int layer, const float* q, float* out) const override {
    attention_cpu::validate_batch(shape, batch, cache, layer, q, out);
    const std::vector<attention_cpu::WorkItem> items = attention_cpu::plan_work(shape, batch);
    attention_cpu::run_work_items<FlashScratch>(
        shape, batch, items, cache.shape().page_size,
        [&](const attention_cpu::WorkItem& item, FlashScratch& w) {
          run_item(shape, batch, cache, layer, q, out, item, w);
        });
  }
};

}  // namespace

std::unique_ptr<AttentionBackend> make_flash_backend(const AttentionOptions& /*options*/) {
  return std::make_unique<FlashBackend>();
}

}  // namespace sagellm
