#include "eval/perplexity.h"

#include <algorithm>

#include "core/error.h"
#include "core/logging.h"

namespace sagellm::eval {

PerplexityResult run_perplexity(Engine& engine, std::span<const int32_t> text_ids,
                                const PerplexityOptions& options,
                                const std::function<void(const ScoredWindow&)>& on_window) {
  SAGELLM_CHECK(options.ctx >= 2, "--ctx must be at least 2 (got {})", options.ctx);
  SAGELLM_CHECK(options.ctx <= engine.context_length(),
                "--ctx {} exceeds the model's context length {}", options.ctx,
                engine.context_length());
  const int bos = engine.config().bos_token_id;
  const size_t piece = static_cast<size_t>(bos >= 0 ? options.ctx - 1 : options.ctx);
  const size_t vocab = static_cast<size_t>(engine.config().vocab_size);
  SAGELLM_CHECK(text_ids.size() >= (bos >= 0 ? 1u : 2u), "the text has too few tokens to score");

  size_t n_windows = (text_ids.size() + piece - 1) / piece;
  if (options.max_chunks > 0)
    n_windows = std::min(n_windows, static_cast<size_t>(options.max_chunks));
  PerplexityResult result;
  Progress progress("perplexity", n_windows);
  for (size_t w = 0; w < n_windows; ++w) {
    const size_t begin = w * piece;
    const size_t end = std::min(text_ids.size(), begin + piece);
    std::vector<int32_t> seq;
    if (bos >= 0) seq.push_back(bos);
    seq.insert(seq.end(), text_ids.begin() + static_cast<std::ptrdiff_t>(begin),
               text_ids.begin() + static_cast<std::ptrdiff_t>(end));
    if (seq.size() < 2) break;  // a model without BOS cannot score a lone trailing token
    std::vector<float> logits = engine.score(seq);
    // Row j predicts seq[j + 1].
    const size_t scored = seq.size() - 1;
    std::span<const int32_t> targets(seq.data() + 1, scored);
    for (size_t j = 0; j < scored; ++j) {
      std::vector<double> lp =
          log_softmax(std::span<const float>(logits.data() + j * vocab, vocab));
      result.nll.push_back(-lp[static_cast<size_t>(targets[j])]);
    }
    if (on_window) {
      on_window(ScoredWindow{w, targets, std::span<const float>(logits.data(), scored * vocab)});
    }
    ++result.windows;
    progress.advance();
  }
  result.stats = summarize_nll(result.nll);
  return result;
}

}  // namespace sagellm::eval
