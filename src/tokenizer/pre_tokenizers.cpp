#include "tokenizer/pre_tokenizers.h"

#include <algorithm>
#include <string_view>

#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

using namespace tokjson;

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior behavior_of(const json& j, const std::string& where) {
  const std::string b = required_string(j, "behavior", where);
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  fail("{}: unknown split behavior '{}'", child(where, "behavior"), b);
}

struct Segment {
  size_t begin, end;
  bool is_match;
};

// The whole string as alternating pattern matches and gaps (HF's Pattern::find_matches).
std::vector<Segment> segments(const Regex& re, bool invert, std::string_view s) {
  std::vector<Segment> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  size_t prev = 0;
  for (const auto& [b, e] : re.find_all(s)) {
    if (prev != b) out.push_back({prev, b, false});
    out.push_back({b, e, true});
    prev = e;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  if (invert) {
    for (Segment& seg : out) seg.is_match = !seg.is_match;
  }
  return out;
}

// HF's NormalizedString::split: which ranges survive under each delimiter behavior.
std::vector<std::pair<size_t, size_t>> apply_behavior(const std::vector<Segment>& segs,
                                                      Behavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Segment& s : segs) out.emplace_back(s.begin, s.end);
      break;
    case Behavior::kRemoved:
      for (const Segment& s : segs) {
        if (!s.is_match) out.emplace_back(s.begin, s.end);
      }
      break;
    case Behavior::kContiguous:
      for (const Segment& s : segs) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Segment& s : segs) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
  }
  return out;
}

void split_into(const PreToken& piece, const Regex& re, bool invert, Behavior behavior,
                std::vector<PreToken>& out) {
  for (const auto& [b, e] : apply_behavior(segments(re, invert, piece.text), behavior)) {
    if (b == e) continue;
    out.push_back({piece.text.substr(b, e - b), piece.at_input_start && b == 0});
  }
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex re, Behavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<PreToken>& splits) const override {
    std::vector<PreToken> out;
    out.reserve(splits.size() * 2);
    for (const PreToken& p : splits) split_into(p, re_, invert_, behavior_, out);
    splits = std::move(out);
  }

 private:
  Regex re_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pre-tokenization regex, which ByteLevel applies when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) re_ = std::make_unique<Regex>(Regex::compile(kGpt2Pattern, "ByteLevel"));
  }
  void pre_tokenize(std::vector<PreToken>& splits) const override {
    std::vector<PreToken> cut;
    cut.reserve(splits.size());
    for (PreToken& p : splits) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text = " " + p.text;
      if (use_regex_) {
        split_into(p, *re_, false, Behavior::kIsolated, cut);
      } else if (!p.text.empty()) {
        cut.push_back(std::move(p));
      }
    }
    const ByteLevelTable& table = ByteLevelTable::get();
    for (PreToken& p : cut) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += table.char_of(b);
      p.text = std::move(mapped);
    }
    splits = std::move(cut);
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
  std::unique_ptr<Regex> re_;
};

// Sentencepiece-style whitespace: spaces become the replacement character (▁), which may be
// prepended, and words are split in front of each replacement character.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)),
        prepend_(prepend),
        split_(split),
        re_(Regex::literal(replacement_, "Metaspace")) {}
  void pre_tokenize(std::vector<PreToken>& splits) const override {
    std::vector<PreToken> out;
    out.reserve(splits.size());
    for (PreToken& p : splits) {
      std::string replaced;
      replaced.reserve(p.text.size() + replacement_.size());
      for (char c : p.text) {
        if (c == ' ') {
          replaced += replacement_;
        } else {
          replaced += c;
        }
      }
      p.text = std::move(replaced);
      const bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_input_start))) {
        p.text.insert(0, replacement_);
      }
      if (split_) {
        split_into(p, re_, false, Behavior::kMergedWithNext, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    }
    splits = std::move(out);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
  Regex re_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<PreToken>& splits) const override {
    for (const auto& p : parts_) p->pre_tokenize(splits);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

std::string single_char(const json& j, std::string_view key, const std::string& where) {
  std::string s = required_string(j, key, where);
  size_t pos = 0;
  if (s.empty() || !is_valid_utf8(s) || (utf8::next_code_point(s, pos), pos != s.size())) {
    fail("{}: expected a single character", child(where, key));
  }
  return s;
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const std::string w = child(where, "pretokenizers");
    const json& list = array_of(required(j, "pretokenizers", where), w);
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto p = make_pre_tokenizer(list[i], index(w, i));
      if (p) parts.push_back(std::move(p));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "Split") {
    const Pattern p = pattern_of(j, "pattern", where);
    const std::string what = child(where, "pattern");
    return std::make_unique<SplitPreTokenizer>(
        p.is_regex ? Regex::compile(p.text, what) : Regex::literal(p.text, what),
        behavior_of(j, where), bool_or(j, "invert", false, where));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(bool_or(j, "add_prefix_space", true, where),
                                                   bool_or(j, "use_regex", true, where));
  }
  if (type == "Metaspace") {
    using Prepend = MetaspacePreTokenizer::Prepend;
    Prepend prepend = Prepend::kAlways;
    if (auto scheme = optional_string(j, "prepend_scheme", where)) {
      if (*scheme == "always") {
        prepend = Prepend::kAlways;
      } else if (*scheme == "first") {
        prepend = Prepend::kFirst;
      } else if (*scheme == "never") {
        prepend = Prepend::kNever;
      } else {
        fail("{}: unknown prepend_scheme '{}'", child(where, "prepend_scheme"), *scheme);
      }
    }
    // Older files say add_prefix_space: false; HF then requires prepend_scheme "never" too.
    if (!bool_or(j, "add_prefix_space", true, where) && prepend != Prepend::kNever) {
      fail("{}: add_prefix_space does not match declared prepend_scheme", where);
    }
    return std::make_unique<MetaspacePreTokenizer>(single_char(j, "replacement", where), prepend,
                                                   bool_or(j, "split", true, where));
  }
  fail(
      "{}: pre_tokenizer type '{}' is not supported (supported: Sequence, Split, ByteLevel, "
      "Metaspace)",
      where, type);
}

}  // namespace sagellm
