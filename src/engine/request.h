// What a client hands the scheduler, and what the scheduler reports back as tokens are generated.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/sampling.h"

namespace sagellm {

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;  // natural log of the model's probability (raw logits, no sampling filters)
};

struct TokenLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;  // the most likely tokens, most likely first
};

// One report to the client. Tokens arrive in order, each exactly once; the last report has
// `finished` set and the totals.
struct RequestOutput {
  std::string text;                     // newly emitted text (stop strings removed)
  std::vector<int32_t> tokens;          // tokens accepted with this report
  std::vector<TokenLogprobs> logprobs;  // one per token, when requested
  bool finished = false;
  std::string finish_reason;  // stop | length | abort | error (set when finished)
  std::string error;          // finish_reason == error: what went wrong
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;       // prompt tokens served from the prefix cache
  double queue_seconds = 0.0;  // from submission to the first scheduled step (when finished)
};

using RequestCallback = std::function<void(const RequestOutput&)>;

struct RequestSpec {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int top_logprobs = -1;  // < 0: no logprobs; 0: the chosen token's; k: also the k most likely
  // Called on the scheduler's thread; it must be quick and must not call back into the scheduler
  // except cancel().
  RequestCallback on_output;
};

}  // namespace sagellm
