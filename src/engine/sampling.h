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

// Holds the per-request RNG so a request's samples do not depend on other requests.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Filters are applied in the order temperature -> top-k -> top-p -> min-p on the softmax.
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> scratch_;
  // Unnormalized probability by token id (the top token has weight 1); only candidates are valid.
  std::vector<double> weights_;
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
