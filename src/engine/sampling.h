// Token sampling over float32 logits: greedy, temperature, top-k, top-p, min-p, seeded.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/cuda/sampling_select.h"

namespace sagellm {

struct SamplingParams {
  float temperature = 1.0f;      // 0 means greedy (argmax, lowest id wins ties)
  int top_k = 0;                 // 0 or negative: disabled
  float top_p = 1.0f;            // 1: disabled
  float min_p = 0.0f;            // 0: disabled
  std::optional<uint64_t> seed;  // same seed and logits -> same tokens
  int max_tokens = 128;
  std::vector<std::string> stop;        // stop strings (not included in the output)
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS ids
  bool ignore_eos = false;

  // Throws sagellm::Error naming the first invalid field.
  void validate() const;
};

// Buffers of the CPU draw, kept between calls so that a draw does not allocate.
struct SamplingScratch {
  std::vector<std::pair<float, int32_t>> candidates;
  // Unnormalized probability by token id (the top token has weight 1); only candidates are valid.
  std::vector<double> weights;
};

// The draw without its random number: the token that the uniform `d.uniform` in [0, 1) picks
// from the distribution `d`'s filters leave of `logits` (temperature 0: the argmax, the uniform
// unused), or -1 when every logit is -inf or NaN. Sampler::sample is exactly this with the
// request's next uniform (Sampler::next_uniform), and gpu::sample_rows evaluates the same
// definition on the device (kernels/cuda/sampling_select.h). Throws only for empty logits or more
// than 2^31 - 1 of them.
int32_t sample_with_uniform(std::span<const float> logits, const sampling::DrawParams& d,
                            SamplingScratch& scratch);

// The filters of `p` with the uniform `u`.
sampling::DrawParams draw_params(const SamplingParams& p, double u);

// Throws the error Sampler::sample throws for a row in which no token can be drawn (every logit
// -inf or NaN), for a caller that drew it elsewhere (sample_with_uniform or the GPU gave -1).
[[noreturn]] void fail_no_token(float temperature, size_t vocab);

// Holds the per-request RNG so a request's samples do not depend on other requests.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Filters are applied in the order temperature -> top-k -> top-p -> min-p on the softmax.
  int32_t sample(std::span<const float> logits);
  // For a draw made elsewhere (sample_with_uniform, the GPU): the uniform sample() would use next,
  // taken from the RNG now. One generator call when the temperature is above 0; greedy draws
  // take none and get 0. So sample_with_uniform(logits, draw_params(params(), next_uniform()))
  // gives the token, and leaves the RNG, as sample(logits) would.
  double next_uniform();
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  SamplingScratch scratch_;
};

int32_t argmax(std::span<const float> logits);

// Watches generated text for stop strings across token boundaries. feed() returns the text that
// is safe to emit (a suffix that could still become a stop string is held back); once a stop
// string is found, stopped() is true and the text from the stop string on is dropped.
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);
  std::string feed(std::string_view text);
  std::string flush();  // at the end of generation: what was held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace sagellm
