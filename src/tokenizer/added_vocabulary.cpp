#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "tokenizer/regex.h"
#include "tokenizer/unicode_space.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

// Rust's regex \w (Unicode), which HF uses for single_word tokens.
bool is_word_char(std::string_view text, size_t begin, size_t end) {
  static const Regex word = Regex::compile(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])",
                                           "added token word check");
  return word.search(text.substr(begin, end - begin));
}

bool ends_with_word(std::string_view text) {
  if (text.empty()) return false;
  size_t start = 0;
  utf8::previous_code_point(text, text.size(), &start);
  return is_word_char(text, start, text.size());
}

bool starts_with_word(std::string_view text) {
  if (text.empty()) return false;
  return is_word_char(text, 0, utf8::char_len(static_cast<unsigned char>(text[0])));
}

}  // namespace

void AddedVocabulary::Matcher::build(const std::vector<std::pair<std::string, int32_t>>& patterns) {
  nodes_.clear();
  if (patterns.empty()) return;
  nodes_.emplace_back();
  for (const auto& [text, id] : patterns) {
    size_t node = 0;
    for (unsigned char b : text) {
      auto& ch = nodes_[node].children;
      auto it = std::lower_bound(ch.begin(), ch.end(), b,
                                 [](const auto& e, unsigned char v) { return e.first < v; });
      if (it != ch.end() && it->first == b) {
        node = static_cast<size_t>(it->second);
      } else {
        const auto next = static_cast<int32_t>(nodes_.size());
        ch.insert(it, {b, next});
        nodes_.emplace_back();  // may reallocate: `ch` is not used after this
        node = static_cast<size_t>(next);
      }
    }
    nodes_[node].id = id;
  }
}

std::pair<size_t, int32_t> AddedVocabulary::Matcher::longest_at(std::string_view text,
                                                                size_t pos) const {
  std::pair<size_t, int32_t> best{0, -1};
  size_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& ch = nodes_[node].children;
    const auto b = static_cast<unsigned char>(text[i]);
    auto it = std::lower_bound(ch.begin(), ch.end(), b,
                               [](const auto& e, unsigned char v) { return e.first < v; });
    if (it == ch.end() || it->first != b) break;
    node = static_cast<size_t>(it->second);
    if (nodes_[node].id >= 0) best = {i + 1 - pos, nodes_[node].id};
  }
  return best;
}

void AddedVocabulary::add_tokens(const std::vector<AddedToken>& tokens, const BpeModel& model,
                                 const Normalizer* normalizer) {
  const auto vocab = static_cast<int64_t>(model.vocab_entries());
  int64_t next_id = vocab;
  if (!tokens_.empty()) {
    const int64_t max = max_id();
    next_id = (max >= vocab || vocab == 0) ? max + 1 : vocab;
  }
  for (const AddedToken& token : tokens) {
    if (token.content.empty()) continue;
    if (auto it = content_to_id_.find(token.content); it != content_to_id_.end()) {
      if (auto t = tokens_.find(it->second); t != tokens_.end() && t->second == token) continue;
    }
    int32_t id;
    if (auto existing = token_to_id(token.content)) {
      id = *existing;
    } else if (auto in_model = model.token_to_id(token.content)) {
      id = *in_model;
    } else {
      if (next_id > INT32_MAX) fail("too many added tokens");
      id = static_cast<int32_t>(next_id++);
    }
    if (token.normalized && normalizer != nullptr) {
      std::string normed = token.content;
      normalizer->normalize(normed);
      if (normed != token.content) normalized_text_[id] = std::move(normed);
    }
    content_to_id_.insert_or_assign(token.content, id);
    if (token.special) special_.insert(token.content);
    tokens_.insert_or_assign(id, token);
  }
  refresh();
}

void AddedVocabulary::refresh() {
  std::vector<std::pair<std::string, int32_t>> raw, normalized;
  for (const auto& [id, token] : tokens_) {
    if (token.normalized) {
      auto it = normalized_text_.find(id);
      normalized.emplace_back(it != normalized_text_.end() ? it->second : token.content, id);
    } else {
      raw.emplace_back(token.content, id);
    }
  }
  // A fixed order keeps the result independent of hash-map iteration if two patterns collide.
  std::sort(raw.begin(), raw.end());
  std::sort(normalized.begin(), normalized.end());
  raw_matcher_.build(raw);
  normalized_matcher_.build(normalized);
}

void AddedVocabulary::split(const TextPiece& piece, const Matcher& matcher,
                            std::vector<TextPiece>& out) const {
  const std::string_view s = piece.text;
  if (s.empty()) return;
  if (matcher.empty()) {
    out.push_back(piece);
    return;
  }
  auto push_text = [&](size_t b, size_t e) {
    if (b >= e) return;
    out.push_back({std::string(s.substr(b, e - b)), std::nullopt, piece.at_input_start && b == 0});
  };
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    const auto [len, id] = matcher.longest_at(s, pos);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the scan resumes after the match even when the token is rejected below
    const AddedToken& token = tokens_.at(id);
    if (token.single_word) {
      const bool start_space = start == 0 || !ends_with_word(s.substr(0, start));
      const bool stop_space = stop == s.size() || !starts_with_word(s.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t prev = 0;
        if (!is_white_space(utf8::previous_code_point(s, new_start, &prev))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < s.size()) {
        size_t next = stop;
        if (!is_white_space(utf8::next_code_point(s, next))) break;
        stop = next;
      }
    }
    if (start_offset < start) push_text(start_offset, start);
    out.push_back({std::string(s.substr(start, stop - start)), id, false});
    start_offset = stop;
  }
  if (start_offset < s.size()) push_text(start_offset, s.size());
}

std::vector<TextPiece> AddedVocabulary::extract_and_normalize(std::string_view text,
                                                              const Normalizer* normalizer) const {
  std::vector<TextPiece> first;
  split({std::string(text), std::nullopt, true}, raw_matcher_, first);
  std::vector<TextPiece> out;
  out.reserve(first.size());
  for (TextPiece& p : first) {
    if (p.id) {
      out.push_back(std::move(p));
      continue;
    }
    if (normalizer != nullptr) normalizer->normalize(p.text);
    split(p, normalized_matcher_, out);
  }
  return out;
}

std::optional<int32_t> AddedVocabulary::token_to_id(std::string_view content) const {
  auto it = content_to_id_.find(content);
  if (it == content_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string* AddedVocabulary::id_to_token(int32_t id) const {
  auto t = tokens_.find(id);
  if (t == tokens_.end()) return nullptr;
  auto n = normalized_text_.find(id);
  return n != normalized_text_.end() ? &n->second : &t->second.content;
}

bool AddedVocabulary::is_special_content(std::string_view content) const {
  return special_.find(content) != special_.end();
}

int32_t AddedVocabulary::max_id() const {
  int32_t m = -1;
  for (const auto& [id, token] : tokens_) m = std::max(m, id);
  return m;
}

}  // namespace sagellm
