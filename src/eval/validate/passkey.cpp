#include "eval/validate/passkey.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"

namespace sagellm::eval::validate {

namespace fs = std::filesystem;

namespace {

// Where the needle goes near `at`: just after the nearest end of a sentence, when one is within 5%
// of the haystack (short prompts have few), else at the nearest word boundary (before a space),
// so the depth stays close to the one asked for.
size_t insertion_point(const std::string& hay, size_t at) {
  const size_t slack = std::max<size_t>(1, hay.size() / 20);
  size_t best = std::string::npos, best_dist = std::string::npos;
  auto consider = [&](size_t p) {
    const size_t d = p > at ? p - at : at - p;
    if (d <= slack && d < best_dist) {
      best = p;
      best_dist = d;
    }
  };
  if (const size_t dot = hay.rfind('.', at - 1); dot != std::string::npos) consider(dot + 1);
  if (const size_t dot = hay.find('.', at); dot != std::string::npos && dot + 1 < hay.size()) {
    consider(dot + 1);
  }
  if (best != std::string::npos) return best;
  const size_t before = hay.find_last_of(" \n", at);
  const size_t after = hay.find_first_of(" \n", at);
  if (before == std::string::npos) return after == std::string::npos ? at : after;
  if (after == std::string::npos) return before;
  return at - before <= after - at ? before : after;
}

}  // namespace

std::string passkey_needle(int key) {
  return fmt::format(" The pass key is {0}. Remember it. {0} is the pass key.", key);
}

std::string read_haystack(const fs::path& dir) {
  SAGELLM_CHECK(fs::is_directory(dir), "--haystack-dir {} is not a directory", dir.string());
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path());
  }
  SAGELLM_CHECK(!files.empty(), "--haystack-dir {} holds no .txt file", dir.string());
  std::sort(files.begin(), files.end());
  std::string text;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    SAGELLM_CHECK(in.good(), "cannot read {}", f.string());
    std::stringstream ss;
    ss << in.rdbuf();
    text += ss.str();
  }
  return text;
}

std::vector<int> passkey_keys(uint64_t seed, int count) {
  std::mt19937_64 rng(seed);
  std::vector<int> keys;
  for (int i = 0; i < count; ++i) keys.push_back(10000 + static_cast<int>(rng() % 90000));
  return keys;
}

bool passkey_matches(std::string_view generated, int key) {
  const size_t start = generated.find_first_not_of(" \t\n");
  if (start == std::string_view::npos) return false;
  const std::string digits = std::to_string(key);
  const std::string_view rest = generated.substr(start);
  if (rest.substr(0, digits.size()) != digits) return false;
  return rest.size() == digits.size() ||
         !std::isdigit(static_cast<unsigned char>(rest[digits.size()]));
}

PasskeyPromptBuilder::PasskeyPromptBuilder(const Tokenizer& tokenizer, std::string_view haystack,
                                           int bos_id, int max_tokens)
    : tokenizer_(tokenizer), bos_(bos_id) {
  // Tokenize only as much of the haystack as the longest prompt can use: a generous number of
  // characters per token first, more if that falls short. Cuts stay on UTF-8 character starts.
  size_t chars = static_cast<size_t>(max_tokens) * 8 + 1024;
  while (true) {
    size_t cut = std::min(chars, haystack.size());
    while (cut < haystack.size() && (static_cast<unsigned char>(haystack[cut]) & 0xC0) == 0x80) {
      ++cut;
    }
    hay_ids_ = tokenizer_.encode(haystack.substr(0, cut), false);
    if (static_cast<int>(hay_ids_.size()) >= max_tokens || cut >= haystack.size()) break;
    chars *= 2;
  }
  SAGELLM_CHECK(static_cast<int>(hay_ids_.size()) >= max_tokens / 2,
                "the haystack text has only {} tokens; passkey prompts of {} tokens need more",
                hay_ids_.size(), max_tokens);
}

std::string PasskeyPromptBuilder::text(int hay_tokens, double depth, int key,
                                       double* real_depth) const {
  hay_tokens = std::clamp(hay_tokens, 0, static_cast<int>(hay_ids_.size()));
  const std::string hay =
      tokenizer_.decode(std::span<const int32_t>(hay_ids_.data(), static_cast<size_t>(hay_tokens)));
  size_t at = static_cast<size_t>(std::llround(depth * static_cast<double>(hay.size())));
  if (at > 0 && at < hay.size()) at = insertion_point(hay, at);
  if (real_depth != nullptr) {
    *real_depth = hay.empty() ? 0.0 : static_cast<double>(at) / static_cast<double>(hay.size());
  }
  return hay.substr(0, at) + passkey_needle(key) + hay.substr(at) + std::string(kPasskeyQuestion);
}

PasskeyPrompt PasskeyPromptBuilder::build(int tokens, double depth, int key) const {
  const int bos_len = bos_ >= 0 ? 1 : 0;
  auto make = [&](int hay_tokens) {
    PasskeyPrompt p;
    const std::string t = text(hay_tokens, depth, key, &p.depth);
    if (bos_ >= 0) p.ids.push_back(bos_);
    const std::vector<int32_t> body = tokenizer_.encode(t, false);
    p.ids.insert(p.ids.end(), body.begin(), body.end());
    return p;
  };
  const int overhead = static_cast<int>(tokenizer_.encode(passkey_needle(key), false).size() +
                                        tokenizer_.encode(kPasskeyQuestion, false).size()) +
                       bos_len;
  int n = tokens - overhead;
  SAGELLM_CHECK(n > 0, "a passkey prompt of {} tokens has no room for haystack text", tokens);
  // Token counts of the joined text differ from the parts' by a few tokens at the seams: adjust
  // the haystack length until the prompt is as long as possible without exceeding `tokens`.
  PasskeyPrompt best;
  std::set<int> tried;
  for (int iter = 0; iter < 16 && tried.insert(n).second; ++iter) {
    PasskeyPrompt p = make(n);
    const int len = static_cast<int>(p.ids.size());
    if (len <= tokens && len > static_cast<int>(best.ids.size())) best = p;
    if (len == tokens) break;
    if (len > tokens) {
      n -= len - tokens;
    } else if (n >= static_cast<int>(hay_ids_.size())) {
      break;  // no more text
    } else {
      n += tokens - len;
    }
  }
  SAGELLM_CHECK(!best.ids.empty() && static_cast<int>(best.ids.size()) >= tokens * 9 / 10,
                "cannot build a passkey prompt of {} tokens from the haystack (got {})", tokens,
                best.ids.size());
  return best;
}

}  // namespace sagellm::eval::validate
