// Checks 2 and 3: logits of the candidate against the baseline, and the perplexity of both, from
// one pass over each corpus: every perplexity window is scored by both backends and compared row
// by row, so each backend runs the model once per window.
#include <algorithm>

#include "core/error.h"
#include "core/logging.h"
#include "eval/perplexity.h"
#include "eval/validate/session.h"

namespace sagellm::eval::validate {

using nlohmann::json;

WindowedComparison compare_windows(Session& s, std::span<const int32_t> ids, int ctx,
                                   int max_windows, const std::string& label) {
  WindowedComparison out;
  const int bos = s.base->config().bos_token_id;
  const size_t vocab = static_cast<size_t>(s.base->config().vocab_size);
  const size_t piece = static_cast<size_t>(bos >= 0 ? ctx - 1 : ctx);
  PerplexityOptions popt;
  popt.ctx = ctx;
  popt.max_chunks = max_windows;
  spdlog::info("validate: comparing {} in windows of {} tokens", label, ctx);
  auto on_window = [&](const ScoredWindow& w) {
    // The window run_perplexity scored: BOS (or the piece's first token) then the targets.
    std::vector<int32_t> seq;
    seq.push_back(bos >= 0 ? bos : ids[w.index * piece]);
    seq.insert(seq.end(), w.targets.begin(), w.targets.end());
    const std::vector<float> cand = s.cand->score(seq);
    SAGELLM_CHECK(cand.size() >= w.logits.size(), "candidate returned too few logits");
    for (size_t j = 0; j < w.targets.size(); ++j) {
      out.tokens.push_back(compare_token(w.logits.subspan(j * vocab, vocab),
                                         std::span<const float>(cand.data() + j * vocab, vocab),
                                         w.targets[j]));
      out.positions.push_back(static_cast<int>(j));
    }
  };
  const PerplexityResult r = run_perplexity(*s.base, ids, popt, on_window);
  out.windows = r.windows;
  return out;
}

namespace {

json perplexity_json(const PerplexityStats& p) {
  return {{"tokens", p.n},
          {"ppl", p.ppl},
          {"ppl_stderr", p.ppl_stderr},
          {"mean_nll", p.mean_nll},
          {"nll_stderr", p.nll_stderr}};
}

// Greedy continuations of prompts cut from the corpora, by both backends: how many leading tokens
// agree before the first difference.
json greedy_agreement(Session& s) {
  const ValidateOptions& o = s.opt;
  const int bos = s.base->config().bos_token_id;
  std::vector<GenerationRequest> reqs;
  json prompts = json::array();
  for (const Corpus& c : s.corpora) {
    const int64_t n = static_cast<int64_t>(c.ids.size());
    const int64_t len = std::min<int64_t>(o.greedy_prompt_tokens, n);
    for (int i = 0; i < o.greedy_prompts; ++i) {
      const int64_t offset = (n - len) * i / o.greedy_prompts;
      GenerationRequest r;
      if (bos >= 0) r.prompt.push_back(bos);
      r.prompt.insert(r.prompt.end(), c.ids.begin() + offset, c.ids.begin() + offset + len);
      r.sampling.temperature = 0;
      r.sampling.max_tokens = o.greedy_tokens;
      r.sampling.ignore_eos = true;
      reqs.push_back(std::move(r));
      prompts.push_back({{"corpus", c.path.string()}, {"offset", offset}, {"prompt_tokens", len}});
    }
  }
  Progress progress("greedy agreement", 2);
  const std::vector<GenerationResult> a = s.base->generate(reqs);
  progress.advance();
  const std::vector<GenerationResult> b = s.cand->generate(reqs);
  progress.advance();
  progress.finish();
  double sum = 0;
  int min_agree = o.greedy_tokens, full = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const size_t n = std::min(a[i].tokens.size(), b[i].tokens.size());
    size_t k = 0;
    while (k < n && a[i].tokens[k] == b[i].tokens[k]) ++k;
    const bool same_length = a[i].tokens.size() == b[i].tokens.size();
    prompts[i]["agree"] = k;
    prompts[i]["baseline_tokens"] = a[i].tokens.size();
    prompts[i]["candidate_tokens"] = b[i].tokens.size();
    sum += static_cast<double>(k);
    min_agree = std::min(min_agree, static_cast<int>(k));
    full += (k == n && same_length) ? 1 : 0;
  }
  return {{"tokens_per_prompt", o.greedy_tokens},
          {"prompts", prompts},
          {"mean_agree", reqs.empty() ? 0.0 : sum / static_cast<double>(reqs.size())},
          {"min_agree", min_agree},
          {"fully_equal", full}};
}

}  // namespace

std::pair<json, json> check_logits_and_perplexity(Session& s) {
  const ValidateOptions& o = s.opt;
  json logits, perplexity;
  logits["ctx"] = o.ctx;
  perplexity["ctx"] = o.ctx;
  logits["corpora"] = json::array();
  perplexity["corpora"] = json::array();
  std::vector<TokenComparison> all;
  for (const Corpus& c : s.corpora) {
    const WindowedComparison w = compare_windows(s, c.ids, o.ctx, o.max_windows, c.path.string());
    const KLDSummary k = summarize_kld(w.tokens);
    json lj = kld_summary_json(k);
    lj["file"] = c.path.string();
    lj["windows"] = w.windows;
    logits["corpora"].push_back(lj);

    std::vector<double> nll_base, nll_cand;
    for (const TokenComparison& t : w.tokens) {
      nll_base.push_back(t.nll_base);
      nll_cand.push_back(t.nll_test);
    }
    const PerplexityStats pb = summarize_nll(nll_base), pc = summarize_nll(nll_cand);
    // Relative delta from the paired per-token differences: exp(mean(nll_c - nll_b)) - 1, with
    // the delta-method error of the paired mean (much tighter than the two PPLs' own errors).
    const double rel = std::exp(k.ln_ppl_ratio) - 1.0;
    perplexity["corpora"].push_back(
        {{"file", c.path.string()},
         {"windows", w.windows},
         {"tokens", pb.n},
         {"baseline", perplexity_json(pb)},
         {"candidate", perplexity_json(pc)},
         {"relative_delta", rel},
         {"relative_delta_stderr", std::exp(k.ln_ppl_ratio) * k.ln_ppl_ratio_stderr},
         {"ln_ppl_ratio", k.ln_ppl_ratio},
         {"ln_ppl_ratio_stderr", k.ln_ppl_ratio_stderr}});
    all.insert(all.end(), w.tokens.begin(), w.tokens.end());
  }
  logits["all"] = kld_summary_json(summarize_kld(all));
  logits["greedy"] = greedy_agreement(s);
  return {logits, perplexity};
}

}  // namespace sagellm::eval::validate
