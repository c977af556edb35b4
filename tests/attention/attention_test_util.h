// Helpers for the attention tests: seeded random problems written into a paged cache, an exact
// fp64 reference on the unquantized inputs, and the accuracy metrics quoted in DESIGN.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "core/dtype.h"
#include "core/fp8.h"
#include "kv_cache/kv_cache.h"

namespace sagellm::attention_test {

struct Request {
  int q_len = 0;
  int kv_len = 0;
};

struct ProblemSpec {
  std::string name;
  int num_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 64;
  int page_size = 64;
  bool causal = true;
  std::vector<Request> requests;
  float k_offset_sigma = 0.0f;  // per-channel K offset ~ N(0, sigma) (the outliers of real K)
  float q_sigma = 1.0f;
  uint64_t seed = 1;
};

// Inputs as generated (fp32), the cache they were written into, and the batch.
struct Problem {
  ProblemSpec spec;
  AttentionShape shape;
  AttentionBatch batch;
  std::unique_ptr<PagedKVCache> cache;
  std::vector<float> q;                  // [total_q][num_heads * head_dim]
  std::vector<std::vector<float>> k, v;  // per request [kv_len][num_kv_heads * head_dim]
  int total_q = 0;
};

// With bf16_cache_values the cache receives bf16-rounded K and V (what a kInt8 cache keeps).
// v_codes: the V encoding of a kInt8 cache's sealed pages.
inline Problem make_problem(const ProblemSpec& spec, KVCacheDType dtype, int extra_pages = 0,
                            bool bf16_cache_values = false,
                            KVValueCodes v_codes = KVValueCodes::kFp8E4M3) {
  Problem p;
  p.spec = spec;
  p.shape = {spec.num_heads, spec.num_kv_heads, spec.head_dim,
             1.0f / std::sqrt(static_cast<float>(spec.head_dim))};
  int pages = extra_pages;
  for (const Request& r : spec.requests) pages += (r.kv_len + spec.page_size - 1) / spec.page_size;
  KVCacheShape cs;
  cs.num_layers = 1;
  cs.num_kv_heads = spec.num_kv_heads;
  cs.head_dim = spec.head_dim;
  cs.page_size = spec.page_size;
  cs.num_pages = std::max(pages, 1);
  p.cache = std::make_unique<PagedKVCache>(cs, dtype, v_codes);

  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int kv_width = spec.num_kv_heads * spec.head_dim;
  std::vector<float> offset(static_cast<size_t>(kv_width), 0.0f);
  for (float& o : offset) o = spec.k_offset_sigma * normal(rng);
  p.batch.causal = spec.causal;
  int row = 0;
  for (const Request& r : spec.requests) {
    AttentionSeq seq;
    seq.q_start = row;
    seq.q_len = r.q_len;
    seq.kv_len = r.kv_len;
    const int n_pages = (r.kv_len + spec.page_size - 1) / spec.page_size;
    for (int i = 0; i < n_pages; ++i) seq.pages.push_back(*p.cache->allocate());
    std::vector<float> k(static_cast<size_t>(r.kv_len) * kv_width);
    std::vector<float> v(k.size());
    for (size_t i = 0; i < k.size(); ++i) k[i] = normal(rng) + offset[i % kv_width];
    for (float& x : v) x = normal(rng);
    std::vector<float> kw = k, vw = v;
    if (bf16_cache_values) {
      for (float& x : kw) x = round_to_bf16(x);
      for (float& x : vw) x = round_to_bf16(x);
    }
    for (int t = 0; t < r.kv_len; ++t) {
      p.cache->write(0, seq.pages[static_cast<size_t>(t / spec.page_size)], t % spec.page_size,
                     &kw[static_cast<size_t>(t) * kv_width],
                     &vw[static_cast<size_t>(t) * kv_width]);
    }
    p.k.push_back(std::move(k));
    p.v.push_back(std::move(v));
    p.batch.seqs.push_back(seq);
    row += r.q_len;
  }
  p.total_q = row;
  p.q.resize(static_cast<size_t>(row) * spec.num_heads * spec.head_dim);
  for (float& x : p.q) x = spec.q_sigma * normal(rng);
  return p;
}

inline std::vector<float> run_backend(const AttentionBackend& b, const Problem& p) {
  std::vector<float> out(p.q.size(), std::nanf(""));
  b.forward(p.shape, p.batch, *p.cache, 0, p.q.data(), out.data());
  return out;
}

// Exact attention in fp64 on the generated (unquantized, unrounded) inputs.
inline std::vector<double> reference_attention(const Problem& p) {
  const int h = p.spec.num_heads, kvh = p.spec.num_kv_heads, hd = p.spec.head_dim;
  const int group = h / kvh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> out(p.q.size(), 0.0);
  std::vector<double> s;
  for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
    const AttentionSeq& seq = p.batch.seqs[r];
    const std::vector<float>& k = p.k[r];
    const std::vector<float>& v = p.v[r];
    for (int i = 0; i < seq.q_len; ++i) {
      const int last = p.batch.causal ? seq.kv_len - seq.q_len + i : seq.kv_len - 1;
      for (int head = 0; head < h; ++head) {
        const int kh = head / group;
        const float* qr = &p.q[(static_cast<size_t>(seq.q_start + i) * h + head) * hd];
        s.assign(static_cast<size_t>(last + 1), 0.0);
        double mx = -INFINITY;
        for (int j = 0; j <= last; ++j) {
          const float* kr = &k[(static_cast<size_t>(j) * kvh + kh) * hd];
          double dot = 0.0;
          for (int d = 0; d < hd; ++d) dot += static_cast<double>(qr[d]) * kr[d];
          s[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, s[static_cast<size_t>(j)]);
        }
        double l = 0.0;
        for (double& x : s) {
          x = std::exp(x - mx);
          l += x;
        }
        double* o = &out[(static_cast<size_t>(seq.q_start + i) * h + head) * hd];
        for (int j = 0; j <= last; ++j) {
          const float* vr = &v[(static_cast<size_t>(j) * kvh + kh) * hd];
          for (int d = 0; d < hd; ++d) o[d] += s[static_cast<size_t>(j)] * vr[d];
        }
        for (int d = 0; d < hd; ++d) o[d] /= l;
      }
    }
  }
  return out;
}

// The error floor of FP8 P.V itself: exact fp64 attention except that V is rounded to FP8 e4m3
// with per-page, per-channel scales and P (relative to the row's global max) to FP8 of P * 448,
// the denominator summing the rounded P. No other quantization.
inline std::vector<double> fp8_pv_floor_attention(const Problem& p) {
  const int h = p.spec.num_heads, kvh = p.spec.num_kv_heads, hd = p.spec.head_dim;
  const int group = h / kvh, ps = p.spec.page_size;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> out(p.q.size(), 0.0);
  for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
    const AttentionSeq& seq = p.batch.seqs[r];
    const std::vector<float>& k = p.k[r];
    std::vector<double> vq(p.v[r].size());
    for (int base = 0; base < seq.kv_len; base += ps) {
      const int n = std::min(ps, seq.kv_len - base);
      for (int c = 0; c < kvh * hd; ++c) {
        double mx = 0.0;
        for (int j = base; j < base + n; ++j)
          mx = std::max(mx, std::fabs(double(p.v[r][j * kvh * hd + c])));
        const double vs = mx / 448.0;
        for (int j = base; j < base + n; ++j) {
          const size_t i = static_cast<size_t>(j) * kvh * hd + c;
          vq[i] =
              vs > 0 ? fp8_e4m3_to_float(float_to_fp8_e4m3(static_cast<float>(p.v[r][i] / vs))) * vs
                     : 0.0;
        }
      }
    }
    for (int i = 0; i < seq.q_len; ++i) {
      const int last = p.batch.causal ? seq.kv_len - seq.q_len + i : seq.kv_len - 1;
      for (int head = 0; head < h; ++head) {
        const int kh = head / group;
        const float* qr = &p.q[(static_cast<size_t>(seq.q_start + i) * h + head) * hd];
        std::vector<double> s(static_cast<size_t>(last + 1));
        double mx = -INFINITY;
        for (int j = 0; j <= last; ++j) {
          double dot = 0.0;
          for (int d = 0; d < hd; ++d)
            dot += double(qr[d]) * k[(static_cast<size_t>(j) * kvh + kh) * hd + d];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double l = 0.0;
        double* o = &out[(static_cast<size_t>(seq.q_start + i) * h + head) * hd];
        for (int j = 0; j <= last; ++j) {
          const double pq =
              fp8_e4m3_to_float(float_to_fp8_e4m3(static_cast<float>(std::exp(s[j] - mx) * 448.0)));
          l += pq;
          for (int d = 0; d < hd; ++d)
            o[d] += pq * vq[(static_cast<size_t>(j) * kvh + kh) * hd + d];
        }
        for (int d = 0; d < hd; ++d) o[d] /= l;
      }
    }
  }
  return out;
}

struct Metrics {
  double cosine = 0.0;
  double rel_l1 = 0.0;
  double rmse = 0.0;
};

inline Metrics compare(const std::vector<float>& o, const std::vector<double>& ref) {
  double dot = 0.0, oo = 0.0, rr = 0.0, l1 = 0.0, ref_l1 = 0.0, sq = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double a = o[i], b = ref[i];
    dot += a * b;
    oo += a * a;
    rr += b * b;
    l1 += std::fabs(a - b);
    ref_l1 += std::fabs(b);
    sq += (a - b) * (a - b);
  }
  Metrics m;
  m.cosine = dot / std::sqrt(oo * rr);
  m.rel_l1 = l1 / ref_l1;
  m.rmse = std::sqrt(sq / static_cast<double>(ref.size()));
  return m;
}

inline void print_metrics(const std::string& what, const Metrics& m) {
  std::printf("[accuracy] %-58s cos %.7f  rel-L1 %.3e  RMSE %.3e\n", what.c_str(), m.cosine,
              m.rel_l1, m.rmse);
  std::fflush(stdout);
}

}  // namespace sagellm::attention_test
