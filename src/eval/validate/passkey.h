// Passkey retrieval prompts in the format of shared/models/passkey-4k: BOS, haystack text with
// " The pass key is {key}. Remember it. {key} is the pass key." inserted at a depth (moved to the
// nearest end of a sentence or, when none is close, word boundary), then
// " What is the pass key? The pass key is". The expected answer is
// " {key}." The whole prompt text is tokenized at once, as a Hugging Face evaluation does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace sagellm::eval::validate {

std::string passkey_needle(int key);
inline constexpr std::string_view kPasskeyQuestion = " What is the pass key? The pass key is";

// The *.txt files of `dir` concatenated in sorted file-name order; throws when there are none.
std::string read_haystack(const std::filesystem::path& dir);

// `count` seeded 5-digit keys (10000..99999).
std::vector<int> passkey_keys(uint64_t seed, int count);

// True when the generated text, after leading whitespace, starts with exactly the key's 5 digits.
bool passkey_matches(std::string_view generated, int key);

struct PasskeyPrompt {
  std::vector<int32_t> ids;  // BOS included
  double depth = 0;          // where the needle really starts, as a fraction of the haystack text
};

class PasskeyPromptBuilder {
 public:
  // `max_tokens`: the longest prompt that will be asked for (bounds how much text is tokenized).
  PasskeyPromptBuilder(const Tokenizer& tokenizer, std::string_view haystack, int bos_id,
                       int max_tokens);

  // The longest prompt of at most `tokens` tokens with the needle for `key` at `depth` in [0, 1].
  PasskeyPrompt build(int tokens, double depth, int key) const;

  // The prompt text for a haystack of `hay_tokens` tokens (without BOS).
  std::string text(int hay_tokens, double depth, int key, double* real_depth = nullptr) const;

 private:
  const Tokenizer& tokenizer_;
  int bos_;
  std::vector<int32_t> hay_ids_;  // tokens of a prefix of the haystack
};

}  // namespace sagellm::eval::validate
