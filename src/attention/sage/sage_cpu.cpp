// CPU twin of sage_attn: implements sage_numerics.h step by step (see there for the
// specification). Work is split as in the flash backend (cpu_plan.h): a work item holds whole Q
// scale blocks (kQueryBlockRows tokens, aligned to the request's first new token) of every head of
// a GQA group, so quantization blocks never depend on the thread count or on the other requests.
// Float pages are quantized once per call, before the parallel loop, by the cache's own sealing
// function (kv_cache/page_quant.h).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/cpu_kernels.h"
#include "attention/cpu_plan.h"
#include "attention/sage/sage_backend.h"
#include "attention/sage/sage_numerics.h"
#include "core/error.h"
#include "kv_cache/page_quant.h"

namespace sagellm {

namespace {

using attention_cpu::kTileCols;
using attention_cpu::kTileRows;
using attention_cpu::round_up;
using attention_cpu::Vec4;

enum class PvDType { kFp8, kInt8, kFp16 };

// The V encoding the P.V product of a mode reads.
KVValueCodes v_codes_of(PvDType pv) {
  return pv == PvDType::kInt8 ? KVValueCodes::kInt8 : KVValueCodes::kFp8E4M3;
}

// Pages of this call that are not sealed, quantized on the fly: one slot per (request, page
// index) that needs it, every KV head.
struct OnTheFlyPages {
  int kv_heads = 0, page_size = 0, head_dim = 0;
  std::vector<std::vector<int>> slot;  // [seq][page index] -> slot or -1 (sealed)
  std::vector<int8_t> k;
  std::vector<uint8_t> v;
  std::vector<float> k_mean, k_scale, v_scale;

  size_t head(int s, int kv_head) const { return static_cast<size_t>(s) * kv_heads + kv_head; }
};

// The page of a request as the kernel sees it. v8 (codes in the mode's encoding) is null for a
// float page in fp16 mode (the kernel then reads vf).
struct PageView {
  const int8_t* k8 = nullptr;
  const float* k_mean = nullptr;
  float k_scale = 0.0f;
  const uint8_t* v8 = nullptr;
  const float* v_scale = nullptr;
  const float* vf = nullptr;
};

OnTheFlyPages quantize_float_pages(const AttentionBatch& batch, const PagedKVCache& cache,
                                   int layer, PvDType pv) {
  const KVCacheShape& cs = cache.shape();
  OnTheFlyPages o;
  o.kv_heads = cs.num_kv_heads;
  o.page_size = cs.page_size;
  o.head_dim = cs.head_dim;
  o.slot.resize(batch.seqs.size());
  std::vector<std::pair<int, int>> jobs;  // (seq, page index)
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const AttentionSeq& seq = batch.seqs[s];
    if (seq.q_len == 0) continue;
    const int num_pages = (seq.kv_len + cs.page_size - 1) / cs.page_size;
    o.slot[s].assign(static_cast<size_t>(num_pages), -1);
    for (int pi = 0; pi < num_pages; ++pi) {
      if (cache.is_sealed(layer, seq.pages[static_cast<size_t>(pi)])) continue;
      o.slot[s][static_cast<size_t>(pi)] = static_cast<int>(jobs.size());
      jobs.emplace_back(static_cast<int>(s), pi);
    }
  }
  const size_t heads = jobs.size() * static_cast<size_t>(o.kv_heads);
  const size_t page_elems = static_cast<size_t>(cs.page_size) * cs.head_dim;
  o.k.resize(heads * page_elems);
  o.k_mean.resize(heads * cs.head_dim);
  o.k_scale.resize(heads);
  if (pv != PvDType::kFp16) {
    o.v.resize(heads * page_elems);
    o.v_scale.resize(heads * cs.head_dim);
  }
  const int n_jobs = static_cast<int>(jobs.size());
  const bool parallel = static_cast<double>(n_jobs) * o.kv_heads * page_elems * 8.0 >=
                        attention_cpu::kMinParallelWork;
#pragma omp parallel for schedule(static) if (parallel && n_jobs > 1)
  for (int jb = 0; jb < n_jobs; ++jb) {
    const AttentionSeq& seq = batch.seqs[static_cast<size_t>(jobs[static_cast<size_t>(jb)].first)];
    const int pi = jobs[static_cast<size_t>(jb)].second;
    const int page = seq.pages[static_cast<size_t>(pi)];
    const int n = std::min(cs.page_size, seq.kv_len - pi * cs.page_size);
    for (int h = 0; h < o.kv_heads; ++h) {
      const size_t hi = o.head(jb, h);
      quantize_k_page(cache.k_float(layer, page, h), n, cs.page_size, cs.head_dim,
                      &o.k[hi * page_elems], &o.k_mean[hi * cs.head_dim], &o.k_scale[hi]);
      if (pv != PvDType::kFp16) {
        quantize_v_page(cache.v_float(layer, page, h), n, cs.page_size, cs.head_dim,
                        &o.v[hi * page_elems], &o.v_scale[hi * cs.head_dim], v_codes_of(pv));
      }
    }
  }
  return o;
}

PageView page_view(const PagedKVCache& cache, const OnTheFlyPages& otf, int layer, int seq,
                   int page_index, int page, int kv_head) {
  PageView pv;
  const int slot = otf.slot[static_cast<size_t>(seq)][static_cast<size_t>(page_index)];
  if (slot < 0) {
    const QuantizedKVPageView q = cache.quantized(layer, page, kv_head);
    pv.k8 = q.k;
    pv.k_mean = q.k_mean;
    pv.k_scale = q.k_scale;
    pv.v8 = q.v;
    pv.v_scale = q.v_scale;
    return pv;
  }
  const size_t hi = otf.head(slot, kv_head);
  const size_t page_elems = static_cast<size_t>(otf.page_size) * otf.head_dim;
  pv.k8 = &otf.k[hi * page_elems];
  pv.k_mean = &otf.k_mean[hi * otf.head_dim];
  pv.k_scale = otf.k_scale[hi];
  if (!otf.v.empty()) {
    pv.v8 = &otf.v[hi * page_elems];
    pv.v_scale = &otf.v_scale[hi * otf.head_dim];
  } else {
    pv.vf = cache.v_float(layer, page, kv_head);
  }
  return pv;
}

struct SageScratch {
  int d8 = 0, ps8 = 0, r4 = 0;
  std::vector<float> q8, q_scaled, q_scaled_t, s, p, kt, v, partial, acc, m, l, alpha, beta, qm, f,
      q_scale;
  std::vector<int8_t> codes;
  SageScratch(int head_dim, int page_size, int max_rows)
      : d8(round_up(head_dim, kTileCols)),
        ps8(round_up(page_size, kTileCols)),
        r4(round_up(max_rows, kTileRows)),
        q8(static_cast<size_t>(r4) * d8),
        q_scaled(static_cast<size_t>(r4) * head_dim),
        q_scaled_t(static_cast<size_t>(head_dim) * r4),
        s(static_cast<size_t>(r4) * ps8),
        p(static_cast<size_t>(r4) * ps8),
        kt(static_cast<size_t>(d8) * ps8),
        v(static_cast<size_t>(ps8) * d8),
        partial(static_cast<size_t>(r4) * d8),
        acc(static_cast<size_t>(r4) * d8),
        m(static_cast<size_t>(r4)),
        l(static_cast<size_t>(r4)),
        alpha(static_cast<size_t>(r4)),
        beta(static_cast<size_t>(r4)),
        qm(static_cast<size_t>(r4)),
        f(static_cast<size_t>(d8)),
        q_scale(static_cast<size_t>(r4)),
        codes(static_cast<size_t>(attention_cpu::kQueryBlockRows) * head_dim) {}
};

// Step 4 and the P of step 5 in int8 mode for one row of one page (sage_numerics.h): the running
// max update, P as UINT8 codes against the row's own page max, and the page factor beta.
float softmax_page_row_u8(const float* s, int visible, int n8, float& m, float& l, float* p,
                          float& beta) {
  float page_max = s[0];
  for (int j = 1; j < visible; ++j) page_max = s[j] > page_max ? s[j] : page_max;
  const float m_new = m > page_max ? m : page_max;
  const float alpha = attention_cpu::exp2_nonpositive(m - m_new);
  beta = attention_cpu::exp2_nonpositive(page_max - m_new);
  m = m_new;
  float sum = 0.0f;  // of integers <= 255 * page size: exact
  const Vec4 mv = attention_cpu::splat4(page_max);
  for (int j = 0; j < visible; j += 4) {
    const Vec4 pe = attention_cpu::exp2_nonpositive(attention_cpu::load4(s + j) - mv);
    for (int k = 0; k < 4 && j + k < visible; ++k) {
      p[j + k] = sage::round_p_u8(pe[k]);
      sum += p[j + k];
    }
  }
  std::fill(p + visible, p + n8, 0.0f);
  l = l * alpha + sum * beta;
  return alpha;
}

struct SageParams {
  PvDType pv = PvDType::kFp8;
  SageRowSum row_sum = SageRowSum::kQuantizedP;
};

void run_item(const AttentionShape& shape, const AttentionBatch& batch, const PagedKVCache& cache,
              const OnTheFlyPages& otf, int layer, const float* q, float* out,
              const attention_cpu::WorkItem& it, const SageParams& prm, SageScratch& w) {
  const AttentionSeq& seq = batch.seqs[static_cast<size_t>(it.seq)];
  const int hd = shape.head_dim, group = shape.num_heads / shape.num_kv_heads;
  const int nb = it.q_end - it.q_begin, rows = nb * group, r4 = round_up(rows, kTileRows);
  const int ps = cache.shape().page_size;
  const int row_stride = shape.num_heads * hd;
  const float factor = sage::q_factor(shape.sm_scale);

  // Step 1: Q blocks of kQueryBlockRows tokens per head of the group; rows r = hh * nb + ii.
  // q_scale is kept per row (the scale of the row's block).
  std::fill_n(w.q8.begin(), static_cast<size_t>(r4) * w.d8, 0.0f);
  std::fill_n(w.p.begin(), static_cast<size_t>(r4) * w.ps8, 0.0f);
  std::fill_n(w.acc.begin(), static_cast<size_t>(r4) * w.d8, 0.0f);
  std::fill(w.v.begin(), w.v.end(), 0.0f);
  for (int hh = 0; hh < group; ++hh) {
    const int head = it.kv_head * group + hh;
    for (int b0 = 0; b0 < nb; b0 += attention_cpu::kQueryBlockRows) {
      const int bn = std::min(attention_cpu::kQueryBlockRows, nb - b0);
      const int r0 = hh * nb + b0;
      const float* src = q + static_cast<size_t>(seq.q_start + it.q_begin + b0) * row_stride +
                         static_cast<size_t>(head) * hd;
      const float scale =
          sage::quantize_q_block(src, bn, row_stride, hd, factor,
                                 &w.q_scaled[static_cast<size_t>(r0) * hd], w.codes.data());
      for (int ii = 0; ii < bn; ++ii) {
        w.q_scale[static_cast<size_t>(r0) + static_cast<size_t>(ii)] = scale;
        for (int d = 0; d < hd; ++d) {
          w.q8[(static_cast<size_t>(r0) + static_cast<size_t>(ii)) * w.d8 + d] =
              w.codes[static_cast<size_t>(ii) * hd + d];
        }
      }
    }
  }
  // q' transposed [hd][r4], so that the smoothing dots of four rows are one vector loop.
  std::fill(w.q_scaled_t.begin(), w.q_scaled_t.end(), 0.0f);
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < hd; ++d) {
      w.q_scaled_t[static_cast<size_t>(d) * w.r4 + r] = w.q_scaled[static_cast<size_t>(r) * hd + d];
    }
    w.m[r] = -std::numeric_limits<float>::infinity();
    w.l[r] = 0.0f;
  }

  const bool fp8 = prm.pv == PvDType::kFp8;
  const bool int8 = prm.pv == PvDType::kInt8;
  const bool sum_quantized = prm.row_sum == SageRowSum::kQuantizedP;
  const auto round_p8 = [](Vec4 p) { return sage::round_p_fp8(p); };
  const auto round_p16 = [](Vec4 p) { return sage::round_p_fp16(p); };
  const auto sum_q = [](Vec4, Vec4 pq) { return pq; };
  const auto sum_f8 = [](Vec4 pe, Vec4) { return pe * sage::kPScaleFp8; };
  const auto sum_f16 = [](Vec4 pe, Vec4) { return pe; };
  const int tile_last_key = attention_cpu::last_visible_key(seq, it.q_end - 1, batch.causal);
  const int num_pages = (seq.kv_len + ps - 1) / ps;
  for (int pi = 0; pi < num_pages; ++pi) {
    const int base = pi * ps;
    if (base > tile_last_key) break;
    const int n = std::min(ps, seq.kv_len - base), n8 = round_up(n, kTileCols);
    const int page = seq.pages[static_cast<size_t>(pi)];
    const PageView pg = page_view(cache, otf, layer, it.seq, pi, page, it.kv_head);

    // Steps 2-3: integer scores (exact in fp32), then scales and the smoothing term.
    for (int j = 0; j < n; ++j) {
      for (int d = 0; d < hd; ++d) w.kt[static_cast<size_t>(d) * w.ps8 + j] = pg.k8[j * hd + d];
    }
    for (int d = 0; d < hd; ++d) {
      std::fill(&w.kt[static_cast<size_t>(d) * w.ps8 + n],
                &w.kt[static_cast<size_t>(d) * w.ps8 + n8], 0.0f);
    }
    attention_cpu::matmul_sequential(w.q8.data(), w.d8, w.kt.data(), w.ps8, hd, w.s.data(), w.ps8,
                                     r4, n8);
    // qm[r] = sum_d q'[r][d] * k_mean[d], in order of d, four rows per vector.
    for (int r = 0; r < r4; r += 4) {
      Vec4 dot = {};
      for (int d = 0; d < hd; ++d) {
        dot +=
            attention_cpu::load4(&w.q_scaled_t[static_cast<size_t>(d) * w.r4 + r]) * pg.k_mean[d];
      }
      attention_cpu::store4(&w.qm[static_cast<size_t>(r)], dot);
    }

    // Steps 4-5: online softmax with P rounded to the P.V dtype.
    for (int r = 0; r < rows; ++r) {
      const int i = it.q_begin + r % nb;
      const int visible =
          std::clamp(attention_cpu::last_visible_key(seq, i, batch.causal) - base + 1, 0, n);
      float* pr = &w.p[static_cast<size_t>(r) * w.ps8];
      float* sr = &w.s[static_cast<size_t>(r) * w.ps8];
      if (visible == 0) {
        w.alpha[r] = 1.0f;
        w.beta[r] = 0.0f;
        std::fill(pr, pr + n8, 0.0f);
        continue;
      }
      const float qm = w.qm[static_cast<size_t>(r)];
      const float sc = w.q_scale[static_cast<size_t>(r)] * pg.k_scale;
      for (int j = 0; j < visible; j += 4) {
        attention_cpu::store4(sr + j, attention_cpu::load4(sr + j) * sc + qm);
      }
      float& m = w.m[r];
      float& l = w.l[r];
      if (int8) {
        w.alpha[r] = softmax_page_row_u8(sr, visible, n8, m, l, pr, w.beta[r]);
      } else if (fp8) {
        w.alpha[r] =
            sum_quantized
                ? attention_cpu::softmax_page_row(sr, visible, n8, m, l, pr, round_p8, sum_q)
                : attention_cpu::softmax_page_row(sr, visible, n8, m, l, pr, round_p8, sum_f8);
      } else {
        w.alpha[r] =
            sum_quantized
                ? attention_cpu::softmax_page_row(sr, visible, n8, m, l, pr, round_p16, sum_q)
                : attention_cpu::softmax_page_row(sr, visible, n8, m, l, pr, round_p16, sum_f16);
      }
    }

    // Step 5: V in the P.V dtype, the page's partial, then its per-channel factor.
    if (pg.v8 != nullptr) {
      const KVValueCodes codes = v_codes_of(prm.pv);
      for (int j = 0; j < n; ++j) {
        float* vr = &w.v[static_cast<size_t>(j) * w.d8];
        for (int d = 0; d < hd; ++d) vr[d] = v_code_value(pg.v8[j * hd + d], codes);
      }
      for (int d = 0; d < hd; ++d) w.f[d] = pg.v_scale[d];
    } else {
      for (int j = 0; j < n; ++j) {
        float* vr = &w.v[static_cast<size_t>(j) * w.d8];
        for (int d = 0; d < hd; ++d) vr[d] = sage::round_fp16(pg.vf[j * hd + d]);
      }
      for (int d = 0; d < hd; ++d) w.f[d] = 1.0f;
    }
    attention_cpu::matmul_sequential(w.p.data(), w.ps8, w.v.data(), w.d8, n, w.partial.data(), w.d8,
                                     r4, w.d8);
    for (int r = 0; r < rows; ++r) {
      float* ar = &w.acc[static_cast<size_t>(r) * w.d8];
      const float* pr = &w.partial[static_cast<size_t>(r) * w.d8];
      const float a = w.alpha[r];
      if (int8) {
        const float b = w.beta[r];
        for (int d = 0; d < hd; ++d) ar[d] = ar[d] * a + pr[d] * (w.f[d] * b);
      } else {
        for (int d = 0; d < hd; ++d) ar[d] = ar[d] * a + pr[d] * w.f[d];
      }
    }
  }

  // Step 6.
  for (int r = 0; r < rows; ++r) {
    const int head = it.kv_head * group + r / nb, i = it.q_begin + r % nb;
    float* dst =
        out + static_cast<size_t>(seq.q_start + i) * row_stride + static_cast<size_t>(head) * hd;
    const float* ar = &w.acc[static_cast<size_t>(r) * w.d8];
    const float l = w.l[r];
    for (int d = 0; d < hd; ++d) dst[d] = l > 0.0f ? ar[d] / l : 0.0f;
  }
}

class SageBackend final : public AttentionBackend {
 public:
  explicit SageBackend(SageParams params) : params_(params) {}
  std::string_view name() const override { return "sage_attn"; }
  KVCacheDType default_kv_cache_dtype() const override { return KVCacheDType::kInt8; }
  KVValueCodes kv_value_codes() const override { return v_codes_of(params_.pv); }

  void forward(const AttentionShape& shape, const AttentionBatch& batch, const PagedKVCache& cache,
               int layer, const float* q, float* out) const override {
    attention_cpu::validate_batch(shape, batch, cache, layer, q, out);
    SAGELLM_CHECK(shape.head_dim <= 1024,
                  "sage_attn: head_dim {} is larger than 1024 (INT8 dot products would leave the "
                  "exact fp32 integer range)",
                  shape.head_dim);
    SAGELLM_CHECK(cache.dtype() != KVCacheDType::kInt8 || cache.v_codes() == kv_value_codes(),
                  "sage_attn: the 8-bit KV cache stores V as {} codes, but this --sage-pv-dtype "
                  "reads {} codes (create the cache for the backend that uses it)",
                  kv_value_codes_name(cache.v_codes()), kv_value_codes_name(kv_value_codes()));
    const std::vector<attention_cpu::WorkItem> items = attention_cpu::plan_work(shape, batch);
    if (items.empty()) return;
    const OnTheFlyPages otf = quantize_float_pages(batch, cache, layer, params_.pv);
    attention_cpu::run_work_items<SageScratch>(
        shape, batch, items, cache.shape().page_size,
        [&](const attention_cpu::WorkItem& item, SageScratch& w) {
          run_item(shape, batch, cache, otf, layer, q, out, item, params_, w);
        });
  }

 private:
  SageParams params_;
};

}  // namespace

std::unique_ptr<AttentionBackend> make_sage_backend(const AttentionOptions& options,
                                                    SageRowSum row_sum) {
  SageParams p;
  if (options.sage_pv_dtype == "fp8") {
    p.pv = PvDType::kFp8;
  } else if (options.sage_pv_dtype == "int8") {
    p.pv = PvDType::kInt8;
  } else if (options.sage_pv_dtype == "fp16") {
    p.pv = PvDType::kFp16;
  } else {
    fail("unknown --sage-pv-dtype '{}' (choose one of: fp8, int8, fp16)", options.sage_pv_dtype);
  }
  p.row_sum = row_sum;
  return std::make_unique<SageBackend>(p);
}

}  // namespace sagellm
