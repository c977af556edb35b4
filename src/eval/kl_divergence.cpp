// KL divergence, top-1 agreement, probability shift and perplexity statistics between a base and a
// test distribution, summarized the way llama.cpp's `perplexity --kl-divergence` reports them.
#include "eval/kl_divergence.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace sagellm::eval {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log softmax(x)_i = (x_i - max_logit) - log_sum.
struct LogNormalizer {
  double max_logit = 0.0;
  double log_sum = 0.0;
};

LogNormalizer log_normalizer(std::span<const float> logits) {
  SAGELLM_CHECK(!logits.empty(), "log_softmax: the logits are empty");
  double max_logit = -kInf;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double v = logits[i];
    SAGELLM_CHECK(!std::isnan(v), "log_softmax: logit {} of {} is NaN", i, logits.size());
    SAGELLM_CHECK(v != kInf, "log_softmax: logit {} of {} is +inf", i, logits.size());
    max_logit = std::max(max_logit, v);
  }
  SAGELLM_CHECK(max_logit > -kInf, "log_softmax: all {} logits are -inf", logits.size());
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - max_logit);
  return {max_logit, std::log(sum)};
}

std::vector<double> log_probs(std::span<const float> logits, const LogNormalizer& n) {
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    out[i] = (static_cast<double>(logits[i]) - n.max_logit) - n.log_sum;
  }
  return out;
}

size_t argmax_lowest_id(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

// One token's share of KL(p || q), written p·(d + e^-d - 1) with d = log p - log q. The added
// terms sum to sum(q) - sum(p) = 0, but they make every term non-negative and cancel, to first
// order, any error common to all d (such as the difference of the two log-normalizers), so
// near-identical distributions (the usual case when comparing backends) keep their accuracy.
double kl_term(double log_p, double log_q, double d) {
  if (log_p == -kInf) return std::exp(log_q);  // p = 0: only the +q part remains
  if (log_q == -kInf) return kInf;             // q = 0 where p > 0
  const double p = std::exp(log_p);
  const double term = std::abs(d) < 0.5 ? p * (d + std::expm1(-d)) : p * d + (std::exp(log_q) - p);
  return std::max(term, 0.0);
}

double mean_of(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

// Standard error of the mean: sqrt(population variance / (n - 1)), i.e. sample std / sqrt(n).
double stderr_of_mean(const std::vector<double>& v, double mean) {
  if (v.size() < 2) return 0.0;
  double ss = 0.0;
  for (double x : v) ss += (x - mean) * (x - mean);
  const double n = static_cast<double>(v.size());
  return std::sqrt(ss / n / (n - 1.0));
}

// Linear interpolation between the order statistics around position q·(n-1).
double quantile_sorted(const std::vector<double>& sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  if (frac == 0.0 || sorted[lo] == sorted[hi]) return sorted[lo];
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

}  // namespace

std::vector<double> log_softmax(std::span<const float> logits) {
  return log_probs(logits, log_normalizer(logits));
}

TokenComparison compare_token(std::span<const float> base_logits,
                              std::span<const float> test_logits, int32_t actual_token) {
  SAGELLM_CHECK(base_logits.size() == test_logits.size(),
                "compare_token: base has {} logits but test has {}", base_logits.size(),
                test_logits.size());
  SAGELLM_CHECK(actual_token >= 0 && static_cast<size_t>(actual_token) < base_logits.size(),
                "compare_token: token id {} is outside the vocabulary of {}", actual_token,
                base_logits.size());
  const LogNormalizer nb = log_normalizer(base_logits);
  const LogNormalizer nt = log_normalizer(test_logits);
  const std::vector<double> base = log_probs(base_logits, nb);
  const std::vector<double> test = log_probs(test_logits, nt);
  // d_i = log p_i - log q_i from the raw logits: float differences are exact in double, so d
  // carries one rounding instead of the two log-softmax roundings of magnitude |log p|.
  const double shift = (nb.max_logit - nt.max_logit) + (nb.log_sum - nt.log_sum);
  TokenComparison r;
  for (size_t i = 0; i < base.size(); ++i) {
    const double d =
        (static_cast<double>(base_logits[i]) - static_cast<double>(test_logits[i])) - shift;
    r.kld += kl_term(base[i], test[i], d);
  }
  r.same_top1 = argmax_lowest_id(base) == argmax_lowest_id(test);
  const auto a = static_cast<size_t>(actual_token);
  r.delta_p = std::exp(test[a]) - std::exp(base[a]);
  r.nll_base = -base[a];
  r.nll_test = -test[a];
  return r;
}

ValueStats summarize(std::vector<double> values) {
  ValueStats s;
  if (values.empty()) return s;
  for (size_t i = 0; i < values.size(); ++i) {
    SAGELLM_CHECK(!std::isnan(values[i]), "summarize: value {} of {} is NaN", i, values.size());
  }
  std::sort(values.begin(), values.end());
  s.mean = mean_of(values);
  s.stderr_mean = stderr_of_mean(values, s.mean);
  s.min = values.front();
  s.max = values.back();
  s.p01 = quantile_sorted(values, 0.01);
  s.p05 = quantile_sorted(values, 0.05);
  s.p10 = quantile_sorted(values, 0.10);
  s.median = quantile_sorted(values, 0.50);
  s.p90 = quantile_sorted(values, 0.90);
  s.p95 = quantile_sorted(values, 0.95);
  s.p99 = quantile_sorted(values, 0.99);
  s.p999 = quantile_sorted(values, 0.999);
  return s;
}

KLDSummary summarize_kld(std::span<const TokenComparison> tokens) {
  KLDSummary r;
  r.n = tokens.size();
  if (tokens.empty()) return r;
  std::vector<double> kld, delta_p, nll_base, nll_test, nll_diff;
  kld.reserve(r.n);
  delta_p.reserve(r.n);
  nll_base.reserve(r.n);
  nll_test.reserve(r.n);
  nll_diff.reserve(r.n);
  size_t same = 0;
  double sum_dp2 = 0.0;
  for (const TokenComparison& t : tokens) {
    kld.push_back(t.kld);
    delta_p.push_back(t.delta_p);
    nll_base.push_back(t.nll_base);
    nll_test.push_back(t.nll_test);
    nll_diff.push_back(t.nll_test - t.nll_base);
    same += t.same_top1 ? 1 : 0;
    sum_dp2 += t.delta_p * t.delta_p;
  }
  const double n = static_cast<double>(r.n);
  r.kld = summarize(std::move(kld));
  r.delta_p = summarize(std::move(delta_p));
  r.same_top1 = static_cast<double>(same) / n;
  r.same_top1_stderr = r.n > 1 ? std::sqrt(r.same_top1 * (1.0 - r.same_top1) / (n - 1.0)) : 0.0;
  r.rms_delta_p = std::sqrt(sum_dp2 / n);
  r.ppl_base = std::exp(mean_of(nll_base));
  r.ppl_test = std::exp(mean_of(nll_test));
  r.ln_ppl_ratio = mean_of(nll_diff);
  r.ln_ppl_ratio_stderr = stderr_of_mean(nll_diff, r.ln_ppl_ratio);
  return r;
}

PerplexityStats summarize_nll(std::span<const double> nll) {
  PerplexityStats s;
  s.n = nll.size();
  if (nll.empty()) return s;
  const std::vector<double> v(nll.begin(), nll.end());
  s.mean_nll = mean_of(v);
  s.nll_stderr = stderr_of_mean(v, s.mean_nll);
  s.ppl = std::exp(s.mean_nll);
  s.ppl_stderr = s.ppl * s.nll_stderr;
  return s;
}

}  // namespace sagellm::eval
