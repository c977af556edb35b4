// PCRE2 (JIT, UTF + UCP) standing in for the Oniguruma regexes of Hugging Face tokenizers.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sagellm {

class Regex {
 public:
  // `what` names the pattern's origin in error messages (e.g. "pre_tokenizer Split pattern").
  static Regex compile(std::string_view pattern, std::string_view what);
  static Regex literal(std::string_view text, std::string_view what);

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // Non-overlapping matches [start, end) from left to right, iterated as Oniguruma's find_iter
  // does in HF tokenizers: an empty match right where the previous match ended is skipped.
  // `text` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;
  // True when the pattern matches somewhere in `text` (valid UTF-8).
  bool search(std::string_view text) const;

  // Translates the Oniguruma classes whose meaning differs from PCRE2's under UCP: \s and \S
  // (White_Space in Oniguruma; PCRE2 adds U+180E) and \h/\H. Exposed for tests.
  static std::string translate_oniguruma(std::string_view pattern);

 private:
  struct Code;
  explicit Regex(std::unique_ptr<Code> code);
  std::unique_ptr<Code> code_;
};

}  // namespace sagellm
