// Check 7, context-length accuracy: KLD and same-top-1 bucketed by token position over long
// documents scored in windows of the model's full context, and passkey retrieval over a grid of
// prompt lengths x needle depths, exact-match rate per cell for both backends.
#include <algorithm>
#include <limits>

#include "core/logging.h"
#include "eval/validate/passkey.h"
#include "eval/validate/session.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

struct Bucket {
  const char* label;
  int64_t lo, hi;  // positions [lo, hi)
};
constexpr Bucket kBuckets[] = {{"0-512", 0, 512},
                               {"512-2K", 512, 2048},
                               {"2K-8K", 2048, 8192},
                               {"8K-32K", 8192, 32768},
                               {"32K+", 32768, std::numeric_limits<int64_t>::max()}};

constexpr int kAnswerTokens = 8;  // " 12345." and room to spare

json position_buckets(Session& s) {
  std::vector<int32_t> ids;
  json files = json::array();
  for (const Corpus& c : s.long_corpora) {
    ids.insert(ids.end(), c.ids.begin(), c.ids.end());
    files.push_back(c.path.string());
  }
  const int ctx = static_cast<int>(s.context);
  const WindowedComparison w =
      compare_windows(s, ids, ctx, s.opt.long_max_windows, "the long-context text");
  json out = {{"source", files},
              {"window", ctx},
              {"windows", w.windows},
              {"tokens", w.tokens.size()},
              {"buckets", json::array()}};
  for (const Bucket& b : kBuckets) {
    std::vector<TokenComparison> in;
    for (size_t i = 0; i < w.tokens.size(); ++i) {
      if (w.positions[i] >= b.lo && w.positions[i] < b.hi) in.push_back(w.tokens[i]);
    }
    json j = {{"label", b.label}, {"from", b.lo}, {"tokens", in.size()}};
    if (b.hi != std::numeric_limits<int64_t>::max()) j["to"] = b.hi;
    if (!in.empty()) {
      const KLDSummary k = summarize_kld(in);
      j["mean_kld"] = k.kld.mean;
      j["median_kld"] = k.kld.median;
      j["p99_kld"] = k.kld.p99;
      j["max_kld"] = k.kld.max;
      j["same_top1"] = k.same_top1;
      j["rms_delta_p"] = k.rms_delta_p;
    }
    out["buckets"].push_back(j);
  }
  return out;
}

json passkey_grid(Session& s) {
  const ValidateOptions& o = s.opt;
  const int bos = s.base->config().bos_token_id;
  const int max_len = *std::max_element(o.passkey_lengths.begin(), o.passkey_lengths.end());
  const PasskeyPromptBuilder builder(s.base->tokenizer(), s.haystack, bos, max_len);
  const std::vector<int> keys = passkey_keys(o.seed, o.passkey_trials);
  json out = {{"lengths", o.passkey_lengths},
              {"depths", o.passkey_depths},
              {"trials", o.passkey_trials},
              {"answer_tokens", kAnswerTokens},
              {"keys", keys},
              {"format",
               "BOS + haystack with \" The pass key is {key}. Remember it. {key} is the pass "
               "key.\" inserted at the depth (moved to the nearest end of a sentence, or word "
               "boundary) + \"" +
                   std::string(kPasskeyQuestion) + "\"; greedy answer must start with the key"},
              {"cells", json::array()}};
  Progress progress("passkey", o.passkey_lengths.size() * o.passkey_depths.size());
  int64_t totals[2] = {0, 0};
  for (int len : o.passkey_lengths) {
    const int prompt_tokens = static_cast<int>(std::min<int64_t>(len, s.context - kAnswerTokens));
    for (double depth : o.passkey_depths) {
      std::vector<GenerationRequest> reqs;
      double real_depth = 0;
      int actual_tokens = 0;
      for (int key : keys) {
        const PasskeyPrompt p = builder.build(prompt_tokens, depth, key);
        real_depth += p.depth;
        actual_tokens = std::max(actual_tokens, static_cast<int>(p.ids.size()));
        GenerationRequest r;
        r.prompt = p.ids;
        r.sampling.temperature = 0;
        r.sampling.max_tokens = kAnswerTokens;
        reqs.push_back(std::move(r));
      }
      json cell = {{"length", len},
                   {"depth", depth},
                   {"prompt_tokens", actual_tokens},
                   {"needle_depth", real_depth / static_cast<double>(keys.size())},
                   {"trials", keys.size()}};
      int role_index = 0;
      for (Engine* e : {s.base.get(), s.cand.get()}) {
        const char* role = role_index == 0 ? "baseline" : "candidate";
        std::vector<GenerationResult> res;
        // Small batches keep the cache demand bounded whatever --passkey-trials is.
        for (size_t i = 0; i < reqs.size(); i += 8) {
          std::vector<GenerationRequest> part(
              reqs.begin() + static_cast<std::ptrdiff_t>(i),
              reqs.begin() + static_cast<std::ptrdiff_t>(std::min(reqs.size(), i + 8)));
          for (GenerationResult& g : e->generate(part)) res.push_back(std::move(g));
        }
        int matches = 0;
        json answers = json::array();
        for (size_t t = 0; t < res.size(); ++t) {
          const bool ok = passkey_matches(res[t].text, keys[t]);
          matches += ok ? 1 : 0;
          answers.push_back(res[t].text);
        }
        totals[role_index] += matches;
        cell[role] = {{"matches", matches},
                      {"rate", static_cast<double>(matches) / static_cast<double>(res.size())},
                      {"answers", answers}};
        ++role_index;
      }
      out["cells"].push_back(cell);
      progress.advance();
    }
  }
  progress.finish();
  const double n = static_cast<double>(out["cells"].size()) * static_cast<double>(keys.size());
  out["baseline_rate"] = static_cast<double>(totals[0]) / n;
  out["candidate_rate"] = static_cast<double>(totals[1]) / n;
  return out;
}

}  // namespace

json check_context(Session& s) {
  json out;
  out["position_buckets"] = position_buckets(s);
  out["passkey"] = passkey_grid(s);
  return out;
}

}  // namespace sagellm::eval::validate
