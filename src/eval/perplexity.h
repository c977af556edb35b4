// Perplexity over a token stream, windowed the way the golden figures were computed: the text
// (tokenized without BOS) is cut into consecutive pieces of ctx-1 tokens, each piece gets BOS in
// front, and every token of every piece is scored exactly once (the first from BOS alone). A
// model without a BOS token uses pieces of ctx tokens and scores all but each piece's first.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/engine.h"
#include "eval/kl_divergence.h"

namespace sagellm::eval {

struct PerplexityOptions {
  int ctx = 512;
  int max_chunks = 0;  // 0: all
};

// One scored window: `targets[j]` is predicted by row j of `logits` ([targets.size()][vocab]).
struct ScoredWindow {
  size_t index = 0;
  std::span<const int32_t> targets;
  std::span<const float> logits;
};

struct PerplexityResult {
  std::vector<double> nll;  // per scored token, in text order
  PerplexityStats stats;
  size_t windows = 0;
};

PerplexityResult run_perplexity(Engine& engine, std::span<const int32_t> text_ids,
                                const PerplexityOptions& options,
                                const std::function<void(const ScoredWindow&)>& on_window = {});

}  // namespace sagellm::eval
