#include "eval/attention_accuracy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <unordered_set>

#include "core/error.h"

namespace sagellm::eval {

namespace {

void check_requests(const AttentionShape& shape, std::span<const float> q,
                    std::span<const ReferenceRequest> requests) {
  SAGELLM_CHECK(shape.num_heads > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0 &&
                    shape.num_heads % shape.num_kv_heads == 0,
                "reference attention: bad shape ({} heads, {} KV heads, head_dim {})",
                shape.num_heads, shape.num_kv_heads, shape.head_dim);
  const size_t q_width = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
  for (size_t r = 0; r < requests.size(); ++r) {
    const ReferenceRequest& req = requests[r];
    SAGELLM_CHECK(req.q_len >= 0 && req.q_start >= 0 && req.kv_len >= req.q_len,
                  "reference attention: request {} has q_len {} > kv_len {}", r, req.q_len,
                  req.kv_len);
    SAGELLM_CHECK(static_cast<size_t>(req.q_start + req.q_len) * q_width <= q.size(),
                  "reference attention: request {}'s q rows run past q", r);
    SAGELLM_CHECK(req.k.size() >= static_cast<size_t>(req.kv_len) * kv_width &&
                      req.v.size() >= static_cast<size_t>(req.kv_len) * kv_width,
                  "reference attention: request {} has fewer K/V values than kv_len {}", r,
                  req.kv_len);
  }
}

void check_row(const AttentionShape& shape, std::span<const ReferenceRequest> requests,
               const AttentionRow& row) {
  SAGELLM_CHECK(row.request >= 0 && static_cast<size_t>(row.request) < requests.size() &&
                    row.token >= 0 && row.token < requests[row.request].q_len && row.head >= 0 &&
                    row.head < shape.num_heads,
                "reference attention: row (request {}, token {}, head {}) is not in the batch",
                row.request, row.token, row.head);
}

size_t q_offset(const AttentionShape& shape, const ReferenceRequest& req, const AttentionRow& row) {
  return (static_cast<size_t>(req.q_start + row.token) * shape.num_heads + row.head) *
         shape.head_dim;
}

}  // namespace

std::vector<AttentionRow> select_attention_rows(std::span<const ReferenceRequest> requests,
                                                int num_heads, int64_t max_rows, uint64_t seed) {
  int64_t total = 0;
  for (const ReferenceRequest& r : requests) total += static_cast<int64_t>(r.q_len) * num_heads;
  std::vector<int64_t> picks;
  if (max_rows <= 0 || total <= max_rows) {
    picks.resize(static_cast<size_t>(total));
    for (int64_t i = 0; i < total; ++i) picks[static_cast<size_t>(i)] = i;
  } else {
    // Floyd's sampling: max_rows distinct indices in [0, total) with max_rows draws.
    std::mt19937_64 rng(seed);
    std::unordered_set<int64_t> chosen;
    for (int64_t j = total - max_rows; j < total; ++j) {
      const int64_t t = std::uniform_int_distribution<int64_t>(0, j)(rng);
      chosen.insert(chosen.count(t) ? j : t);
    }
    picks.assign(chosen.begin(), chosen.end());
    std::sort(picks.begin(), picks.end());
  }
  std::vector<AttentionRow> rows;
  rows.reserve(picks.size());
  size_t req = 0;
  int64_t base = 0;  // flat index of the request's first row
  for (int64_t i : picks) {
    while (i >= base + static_cast<int64_t>(requests[req].q_len) * num_heads) {
      base += static_cast<int64_t>(requests[req].q_len) * num_heads;
      ++req;
    }
    const int64_t local = i - base;
    rows.push_back({static_cast<int>(req), static_cast<int>(local / num_heads),
                    static_cast<int>(local % num_heads)});
  }
  return rows;
}

std::vector<double> reference_attention(const AttentionShape& shape, bool causal,
                                        std::span<const float> q,
                                        std::span<const ReferenceRequest> requests,
                                        std::span<const AttentionRow> rows) {
  check_requests(shape, q, requests);
  for (const AttentionRow& row : rows) check_row(shape, requests, row);
  const int hd = shape.head_dim, kvh = shape.num_kv_heads;
  const int group = shape.num_heads / kvh;
  const double scale = shape.sm_scale;
  std::vector<double> out(rows.size() * static_cast<size_t>(hd), 0.0);
  const auto n = static_cast<int64_t>(rows.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < n; ++i) {
    const AttentionRow& row = rows[static_cast<size_t>(i)];
    const ReferenceRequest& req = requests[static_cast<size_t>(row.request)];
    const int last = causal ? req.kv_len - req.q_len + row.token : req.kv_len - 1;
    const int kh = row.head / group;
    const float* qr = q.data() + q_offset(shape, req, row);
    std::vector<double> s(static_cast<size_t>(last + 1));
    double mx = -std::numeric_limits<double>::infinity();
    for (int j = 0; j <= last; ++j) {
      const float* kr = req.k.data() + (static_cast<size_t>(j) * kvh + kh) * hd;
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
    double* o = out.data() + static_cast<size_t>(i) * hd;
    for (int j = 0; j <= last; ++j) {
      const float* vr = req.v.data() + (static_cast<size_t>(j) * kvh + kh) * hd;
      const double p = s[static_cast<size_t>(j)];
      for (int d = 0; d < hd; ++d) o[d] += p * vr[d];
    }
    for (int d = 0; d < hd; ++d) o[d] /= l;
  }
  return out;
}

std::vector<float> gather_attention_rows(const AttentionShape& shape, std::span<const float> out,
                                         std::span<const ReferenceRequest> requests,
                                         std::span<const AttentionRow> rows) {
  check_requests(shape, out, requests);
  std::vector<float> g;
  g.reserve(rows.size() * static_cast<size_t>(shape.head_dim));
  for (const AttentionRow& row : rows) {
    check_row(shape, requests, row);
    const float* o = out.data() + q_offset(shape, requests[row.request], row);
    g.insert(g.end(), o, o + shape.head_dim);
  }
  return g;
}

AccuracyMetrics compare_to_reference(std::span<const float> out,
                                     std::span<const double> reference) {
  SAGELLM_CHECK(out.size() == reference.size(),
                "accuracy: {} output values against {} reference values", out.size(),
                reference.size());
  double dot = 0.0, oo = 0.0, rr = 0.0, l1 = 0.0, ref_l1 = 0.0, sq = 0.0;
  AccuracyMetrics m;
  for (size_t i = 0; i < out.size(); ++i) {
    const double a = out[i], b = reference[i];
    if (!std::isfinite(a)) ++m.non_finite;
    dot += a * b;
    oo += a * a;
    rr += b * b;
    l1 += std::fabs(a - b);
    ref_l1 += std::fabs(b);
    sq += (a - b) * (a - b);
    m.max_abs_error = std::max(m.max_abs_error, std::fabs(a - b));
  }
  m.values = static_cast<int64_t>(out.size());
  if (m.values == 0) return m;
  // Both all zero counts as identical; one zero against a non-zero other as orthogonal.
  m.cosine = oo > 0.0 && rr > 0.0 ? dot / std::sqrt(oo * rr) : (oo == rr ? 1.0 : 0.0);
  m.rel_l1 = ref_l1 > 0.0 ? l1 / ref_l1 : l1;
  m.rmse = std::sqrt(sq / static_cast<double>(m.values));
  if (m.non_finite > 0) {
    // A NaN compares false everywhere, so max() above would have skipped it.
    m.max_abs_error = std::numeric_limits<double>::infinity();
  }
  return m;
}

}  // namespace sagellm::eval
