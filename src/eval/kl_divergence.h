// Per-token comparison of two models' (or backends') next-token distributions, with the summary
// statistics of llama.cpp's `perplexity --kl-divergence`.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sagellm::eval {

// Log-softmax in double precision.
std::vector<double> log_softmax(std::span<const float> logits);

struct TokenComparison {
  double kld = 0.0;        // KL(base || test) = sum p_base (log p_base - log p_test)
  bool same_top1 = false;  // argmax equal
  double delta_p = 0.0;    // p_test(actual token) - p_base(actual token)
  double nll_base = 0.0;   // -log p_base(actual token)
  double nll_test = 0.0;
};

TokenComparison compare_token(std::span<const float> base_logits,
                              std::span<const float> test_logits, int32_t actual_token);

struct ValueStats {
  double mean = 0, stderr_mean = 0, median = 0, p01 = 0, p05 = 0, p10 = 0, p90 = 0, p95 = 0,
         p99 = 0, p999 = 0, min = 0, max = 0;
};
ValueStats summarize(std::vector<double> values);  // quantiles by linear interpolation

struct KLDSummary {
  size_t n = 0;
  ValueStats kld;
  double same_top1 = 0, same_top1_stderr = 0;  // fractions
  double rms_delta_p = 0;                      // sqrt(mean(delta_p^2))
  ValueStats delta_p;
  double ppl_base = 0, ppl_test = 0;                 // exp(mean nll)
  double ln_ppl_ratio = 0, ln_ppl_ratio_stderr = 0;  // mean(nll_test - nll_base) and its stderr
};
KLDSummary summarize_kld(std::span<const TokenComparison> tokens);

struct PerplexityStats {
  size_t n = 0;
  double mean_nll = 0, nll_stderr = 0;
  double ppl = 0, ppl_stderr = 0;  // stderr by the delta method: ppl * nll_stderr
};
PerplexityStats summarize_nll(std::span<const double> nll);

}  // namespace sagellm::eval
