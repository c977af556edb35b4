#include "tokenizer/normalizers.h"

#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/unicode_space.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

using namespace tokjson;

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    for (const auto& p : parts_) p->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// Adds its text in front of non-empty text only (HF: "if !normalized.is_empty()").
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    const auto matches = pattern_.find_all(text);
    if (matches.empty()) return;
    std::string out;
    out.reserve(text.size() + matches.size() * content_.size());
    size_t prev = 0;
    for (const auto& [b, e] : matches) {
      out.append(text, prev, b - prev);
      out += content_;
      prev = e;
    }
    out.append(text, prev, std::string::npos);
    text = std::move(out);
  }

 private:
  Regex pattern_;
  std::string content_;
};

// Removes leading and/or trailing Unicode White_Space.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t p = begin;
        if (!is_white_space(utf8::next_code_point(text, p))) break;
        begin = p;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t s = 0;
        if (!is_white_space(utf8::previous_code_point(text, end, &s))) break;
        end = s;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const std::string w = child(where, "normalizers");
    const json& list = array_of(required(j, "normalizers", where), w);
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto n = make_normalizer(list[i], index(w, i));
      if (n) parts.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(required_string(j, "prepend", where));
  }
  if (type == "Replace") {
    const Pattern p = pattern_of(j, "pattern", where);
    if (p.text.empty()) fail("{}: an empty Replace pattern is not supported", where);
    const std::string what = child(where, "pattern");
    return std::make_unique<ReplaceNormalizer>(
        p.is_regex ? Regex::compile(p.text, what) : Regex::literal(p.text, what),
        required_string(j, "content", where));
  }
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(bool_or(j, "strip_left", true, where),
                                             bool_or(j, "strip_right", true, where));
  }
  fail("{}: normalizer type '{}' is not supported (supported: Sequence, Prepend, Replace, Strip)",
       where, type);
}

}  // namespace sagellm
