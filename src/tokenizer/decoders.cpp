#include "tokenizer/decoders.h"

#include <string_view>

#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

using namespace tokjson;

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }
  bool groups_bytes() const override {
    for (const auto& p : parts_) {
      if (p->groups_bytes()) return true;
    }
    return false;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

// Characters back to bytes; a token with a character outside the table (an added token such as
// "<|eot_id|>" is inside it, being ASCII) passes through as its raw text. Ill-formed UTF-8 in the
// result becomes U+FFFD.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    const ByteLevelTable& table = ByteLevelTable::get();
    std::string bytes;
    std::string token_bytes;
    for (const std::string& t : tokens) {
      token_bytes.clear();
      bool all_mapped = true;
      for (size_t pos = 0; pos < t.size();) {
        const int b = table.byte_of(utf8::next_code_point(t, pos));
        if (b < 0) {
          all_mapped = false;
          break;
        }
        token_bytes.push_back(static_cast<char>(b));
      }
      bytes += all_mapped ? token_bytes : t;
    }
    tokens.assign(1, utf8::lossy(bytes));
  }
};

// Runs of <0xNN> tokens become their bytes: the text when they form valid UTF-8, otherwise one
// U+FFFD per byte (HF's rule, not the lossy conversion).
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&]() {
      if (pending.empty()) return;
      if (is_valid_utf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back(utf8::kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      const int byte = byte_fallback_value(t);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
  bool groups_bytes() const override { return true; }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& t : tokens) joined += t;
    tokens.assign(1, std::move(joined));
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      const auto matches = pattern_.find_all(t);
      if (matches.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (const auto& [b, e] : matches) {
        out.append(t, prev, b - prev);
        out += content_;
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  Regex pattern_;
  std::string content_;
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t begin = 0;
      for (size_t i = 0; i < start_ && begin < t.size(); ++i) {
        size_t p = begin;
        if (utf8::next_code_point(t, p) != content_) break;
        begin = p;
      }
      size_t end = t.size();
      for (size_t i = 0; i < stop_ && end > begin; ++i) {
        size_t s = 0;
        if (utf8::previous_code_point(t, end, &s) != content_) break;
        end = s;
      }
      t = t.substr(begin, end - begin);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool strip_first)
      : replacement_(replacement), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string& t = tokens[i];
      std::string out;
      out.reserve(t.size());
      for (size_t pos = 0; pos < t.size();) {
        const size_t start = pos;
        if (utf8::next_code_point(t, pos) == replacement_) {
          if (i != 0 || !strip_first_) out += ' ';
        } else {
          out.append(t, start, pos - start);
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  bool strip_first_;
};

char32_t single_char(const json& j, std::string_view key, const std::string& where) {
  const std::string s = required_string(j, key, where);
  size_t pos = 0;
  if (s.empty() || !is_valid_utf8(s)) fail("{}: expected a single character", child(where, key));
  const char32_t cp = utf8::next_code_point(s, pos);
  if (pos != s.size()) fail("{}: expected a single character", child(where, key));
  return cp;
}

size_t count_of(const json& j, std::string_view key, const std::string& where) {
  const int64_t v = integer_or(j, key, 0, where);
  if (v < 0) fail("{}: expected a count >= 0", child(where, key));
  return static_cast<size_t>(v);
}

}  // namespace

int byte_fallback_value(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int hi = hex(token[3]), lo = hex(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const std::string w = child(where, "decoders");
    const json& list = array_of(required(j, "decoders", where), w);
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto d = make_decoder(list[i], index(w, i));
      if (d) parts.push_back(std::move(d));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    const Pattern p = pattern_of(j, "pattern", where);
    if (p.text.empty()) fail("{}: an empty Replace pattern is not supported", where);
    const std::string what = child(where, "pattern");
    return std::make_unique<ReplaceDecoder>(
        p.is_regex ? Regex::compile(p.text, what) : Regex::literal(p.text, what),
        required_string(j, "content", where));
  }
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(single_char(j, "content", where),
                                          count_of(j, "start", where), count_of(j, "stop", where));
  }
  if (type == "Metaspace") {
    const std::string scheme = optional_string(j, "prepend_scheme", where).value_or("always");
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      fail("{}: unknown prepend_scheme '{}'", child(where, "prepend_scheme"), scheme);
    }
    if (!bool_or(j, "add_prefix_space", true, where) && scheme != "never") {
      fail("{}: add_prefix_space does not match declared prepend_scheme", where);
    }
    return std::make_unique<MetaspaceDecoder>(single_char(j, "replacement", where),
                                              scheme != "never");
  }
  fail(
      "{}: decoder type '{}' is not supported (supported: Sequence, ByteLevel, ByteFallback, "
      "Fuse, Replace, Strip, Metaspace)",
      where, type);
}

}  // namespace sagellm
