#include "eval/validate/validate_options.h"

#include <algorithm>

#include "core/error.h"

namespace sagellm::eval::validate {

namespace {

std::string all_check_names() {
  std::string s;
  for (std::string_view c : kCheckNames) {
    if (!s.empty()) s += ",";
    s += c;
  }
  return s;
}

// The sizes of `wanted` that fit in `context`; when some do not, `context` itself takes their
// place so the grid still reaches the model's maximum.
std::vector<int> fit_to_context(const std::vector<int>& wanted, int64_t context) {
  std::vector<int> out;
  bool dropped = false;
  for (int v : wanted) {
    if (v <= context) {
      out.push_back(v);
    } else {
      dropped = true;
    }
  }
  if (dropped && std::find(out.begin(), out.end(), context) == out.end()) {
    out.push_back(static_cast<int>(context));
  }
  return out;
}

}  // namespace

std::set<std::string> parse_checks(std::string_view list) {
  std::set<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    std::string name(list.substr(start, comma - start));
    name.erase(0, name.find_first_not_of(' '));
    name.erase(name.find_last_not_of(' ') + 1);
    if (name == "all") {
      for (std::string_view c : kCheckNames) out.emplace(c);
    } else if (!name.empty()) {
      const bool known =
          std::find(std::begin(kCheckNames), std::end(kCheckNames), name) != std::end(kCheckNames);
      SAGELLM_CHECK(known, "--checks: unknown check '{}' (choose from: {}, or all)", name,
                    all_check_names());
      out.insert(name);
    }
    start = comma + 1;
  }
  SAGELLM_CHECK(!out.empty(), "--checks names no check (choose from: {}, or all)",
                all_check_names());
  return out;
}

std::vector<ThresholdInfo> Thresholds::describe() const {
  return {
      {"--max-mean-kld", max_mean_kld,
       "logits: fail when the mean per-token KL(baseline||candidate) is above (nats)"},
      {"--max-p99-kld", max_p99_kld,
       "logits: fail when the 99th-percentile per-token KLD is above (nats)"},
      {"--min-same-top1", min_same_top1,
       "logits: fail when the fraction of tokens whose top-1 agrees is below"},
      {"--max-ppl-delta", max_ppl_delta,
       "perplexity: fail when |PPL(candidate)/PPL(baseline) - 1| is above"},
      {"--min-drift-cosine", min_drift_cosine,
       "drift: fail when any layer's hidden-state cosine similarity is below"},
      {"--max-drift-rel-l2", max_drift_rel_l2,
       "drift: fail when any layer's hidden-state relative L2 error is above"},
      {"--max-bucket-kld", max_bucket_kld,
       "context: fail when any position bucket's mean KLD is above (nats)"},
      {"--min-passkey", min_passkey,
       "context: fail when the candidate's passkey exact-match rate is below (judged only when the "
       "baseline reaches it)"},
      {"--max-passkey-drop", max_passkey_drop,
       "context: fail when any passkey cell of the candidate is this much below the baseline's"},
      {"--min-speedup", min_speedup,
       "throughput: warn when candidate/baseline decode tokens/s at the largest context is below "
       "(GPU only)"},
  };
}

bool ValidateOptions::runs(std::string_view check) const {
  return checks.empty() || checks.count(std::string(check)) > 0;
}

void resolve_defaults(ValidateOptions& o, int64_t context) {
  SAGELLM_CHECK(context >= 16, "the model's context length {} is too short to validate", context);
  const bool cuda = o.engine.device == "cuda";
  if (o.ctx == 0) o.ctx = static_cast<int>(std::min<int64_t>(context, o.quick ? 512 : 2048));
  SAGELLM_CHECK(o.ctx >= 2 && o.ctx <= context, "--ctx must be in [2, {}] (got {})", context,
                o.ctx);
  if (o.max_windows < 0) o.max_windows = o.quick ? 8 : 0;
  if (o.greedy_prompts == 0) o.greedy_prompts = o.quick ? 2 : 4;
  SAGELLM_CHECK(o.greedy_prompts >= 1, "--greedy-prompts must be at least 1");
  SAGELLM_CHECK(o.greedy_prompt_tokens >= 1 && o.greedy_tokens >= 1 &&
                    o.greedy_prompt_tokens + 1 + o.greedy_tokens <= context,
                "--greedy-prompt-tokens ({}) + BOS + --greedy-tokens ({}) must fit in the context "
                "length {}",
                o.greedy_prompt_tokens, o.greedy_tokens, context);

  if (o.batch_sizes.empty()) {
    o.batch_sizes = cuda ? std::vector<int>{1, 8, 64}
                         : (o.quick ? std::vector<int>{1, 2} : std::vector<int>{1, 4});
  }
  for (int b : o.batch_sizes) {
    SAGELLM_CHECK(b >= 1 && b <= 4096, "--batch-sizes: {} is not in [1, 4096]", b);
  }
  if (o.output_len == 0) o.output_len = o.quick ? 16 : 32;
  SAGELLM_CHECK(o.output_len >= 2 && o.output_len < context,
                "--output-len must be in [2, {}) (got {})", context, o.output_len);
  if (o.context_lengths.empty()) {
    const std::vector<int> wanted = cuda      ? std::vector<int>{128, 4096, 32768}
                                    : o.quick ? std::vector<int>{128, 512}
                                              : std::vector<int>{128, 512, 2048, 8192};
    o.context_lengths = fit_to_context(wanted, context);
  }
  for (int c : o.context_lengths) {
    SAGELLM_CHECK(c >= 2 && c <= context, "--context-lengths: {} is not in [2, {}]", c, context);
  }

  SAGELLM_CHECK(o.kv_budget_gib > 0, "--kv-budget-gib must be positive (got {})", o.kv_budget_gib);
  if (o.drift_tokens == 0) {
    o.drift_tokens = static_cast<int>(std::min<int64_t>(context, o.quick ? 256 : 512));
  }
  SAGELLM_CHECK(o.drift_tokens >= 2 && o.drift_tokens <= context,
                "--drift-tokens must be in [2, {}] (got {})", context, o.drift_tokens);
  SAGELLM_CHECK(o.determinism_runs >= 2 && o.determinism_runs <= 100,
                "--determinism-runs must be in [2, 100] (got {})", o.determinism_runs);

  if (o.long_max_windows < 0) o.long_max_windows = o.quick ? 1 : 4;
  if (o.passkey_lengths.empty()) {
    if (context < 1024) {
      o.passkey_lengths = {static_cast<int>(context / 2), static_cast<int>(context)};
    } else {
      for (int64_t l = 1024; l <= context; l *= 2) o.passkey_lengths.push_back(static_cast<int>(l));
      if (o.passkey_lengths.back() != context)
        o.passkey_lengths.push_back(static_cast<int>(context));
    }
    if (o.quick && o.passkey_lengths.size() > 2) {
      o.passkey_lengths = {o.passkey_lengths.front(), o.passkey_lengths.back()};
    }
  }
  for (int l : o.passkey_lengths) {
    SAGELLM_CHECK(l >= 64 && l <= context, "--passkey-lengths: {} is not in [64, {}]", l, context);
  }
  SAGELLM_CHECK(!o.passkey_depths.empty(), "--passkey-depths is empty");
  for (double d : o.passkey_depths) {
    SAGELLM_CHECK(d >= 0.0 && d <= 1.0, "--passkey-depths: {} is not in [0, 1]", d);
  }
  SAGELLM_CHECK(o.passkey_trials >= 1 && o.passkey_trials <= 1000,
                "--passkey-trials must be in [1, 1000] (got {})", o.passkey_trials);
}

}  // namespace sagellm::eval::validate
