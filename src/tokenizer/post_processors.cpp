#include "tokenizer/post_processors.h"

#include <map>
#include <sstream>

namespace sagellm {

namespace {

using namespace tokjson;

// The template for one sequence: a list of special-token names and the sequence itself.
class TemplateProcessor final : public PostProcessor {
 public:
  struct Piece {
    bool is_sequence;
    std::vector<int32_t> ids;  // for a special token
  };
  explicit TemplateProcessor(std::vector<Piece> single) : single_(std::move(single)) {}

  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Piece& p : single_) {
      if (p.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), p.ids.begin(), p.ids.end());
      }
    }
    ids = std::move(out);
  }

  std::vector<int32_t> leading_ids() const override {
    std::vector<int32_t> out;
    for (const Piece& p : single_) {
      if (p.is_sequence) break;
      out.insert(out.end(), p.ids.begin(), p.ids.end());
    }
    return out;
  }

 private:
  std::vector<Piece> single_;
};

// ByteLevel as a post-processor only trims offsets; the ids stay as they are.
class IdentityProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
  std::vector<int32_t> leading_ids() const override { return {}; }
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->process(ids, add_special_tokens);
  }
  std::vector<int32_t> leading_ids() const override {
    // Later processors wrap the output of earlier ones, so their leading ids come first.
    std::vector<int32_t> out;
    for (auto it = parts_.rbegin(); it != parts_.rend(); ++it) {
      const auto ids = (*it)->leading_ids();
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

std::unique_ptr<PostProcessor> make_template(const json& j, const std::string& where) {
  // special_tokens: {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
  std::map<std::string, std::vector<int32_t>> specials;
  const std::string sw = child(where, "special_tokens");
  if (const json* st = optional(j, "special_tokens")) {
    for (const auto& [name, entry] : object(*st, sw).items()) {
      const std::string ew = child(sw, name);
      const json& ids = array_of(required(entry, "ids", ew), child(ew, "ids"));
      std::vector<int32_t> v;
      for (size_t i = 0; i < ids.size(); ++i) {
        const int64_t id = integer_of(ids[i], index(child(ew, "ids"), i));
        if (id < 0 || id > INT32_MAX) fail("{}: id {} is out of range", child(ew, "ids"), id);
        v.push_back(static_cast<int32_t>(id));
      }
      specials[name] = std::move(v);
    }
  }
  auto special = [&](const std::string& name, const std::string& w) {
    auto it = specials.find(name);
    if (it == specials.end()) {
      fail("{}: special token '{}' is missing from special_tokens", w, name);
    }
    return TemplateProcessor::Piece{false, it->second};
  };

  const std::string w = child(where, "single");
  const json& single = required(j, "single", where);
  std::vector<TemplateProcessor::Piece> pieces;
  if (single.is_string()) {
    // The short form: "<s> $A" ("$A:0", "[CLS]:0", ...).
    std::istringstream words(single.get<std::string>());
    std::string word;
    while (words >> word) {
      if (word[0] == '$') {
        pieces.push_back({true, {}});
        continue;
      }
      const size_t colon = word.rfind(':');
      if (colon != std::string::npos && colon + 1 < word.size() &&
          word.find_first_not_of("0123456789", colon + 1) == std::string::npos) {
        word.resize(colon);
      }
      pieces.push_back(special(word, w));
    }
  } else {
    const json& list = array_of(single, w);
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string pw = index(w, i);
      const json& piece = object(list[i], pw);
      if (const json* s = optional(piece, "Sequence")) {
        const std::string id = required_string(*s, "id", child(pw, "Sequence"));
        if (id != "A") fail("{}: the single-sequence template can only use sequence A", pw);
        pieces.push_back({true, {}});
      } else if (const json* t = optional(piece, "SpecialToken")) {
        const std::string tw = child(pw, "SpecialToken");
        pieces.push_back(special(required_string(*t, "id", tw), tw));
      } else {
        fail("{}: expected {{\"Sequence\": …}} or {{\"SpecialToken\": …}}", pw);
      }
    }
  }
  return std::make_unique<TemplateProcessor>(std::move(pieces));
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, where);
  if (type == "TemplateProcessing") return make_template(j, where);
  if (type == "ByteLevel") return std::make_unique<IdentityProcessor>();
  if (type == "Sequence") {
    const std::string w = child(where, "processors");
    const json& list = array_of(required(j, "processors", where), w);
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto p = make_post_processor(list[i], index(w, i));
      if (p) parts.push_back(std::move(p));
    }
    return std::make_unique<SequenceProcessor>(std::move(parts));
  }
  fail(
      "{}: post_processor type '{}' is not supported (supported: TemplateProcessing, ByteLevel, "
      "Sequence)",
      where, type);
}

}  // namespace sagellm
