// Added tokens of tokenizer.json ("added_tokens"): they are cut out of the text before
// normalization and pre-tokenization (leftmost, longest match first) and map to their ids
// directly. Ids are assigned the way HF's AddedVocabulary::add_tokens does: a token already in
// the model vocabulary keeps that id, the others get ids after the vocabulary, whatever ids the
// file lists.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/bpe_model.h"
#include "tokenizer/normalizers.h"

namespace sagellm {

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
  bool operator==(const AddedToken&) const = default;
};

// A piece of the input: either the text between added tokens or one added token.
struct TextPiece {
  std::string text;
  std::optional<int32_t> id;  // set for an added token
  bool at_input_start = false;
};

class AddedVocabulary {
 public:
  void add_tokens(const std::vector<AddedToken>& tokens, const BpeModel& model,
                  const Normalizer* normalizer);

  // HF's extract_and_normalize: split on non-normalized added tokens, normalize the rest piece by
  // piece, then split those on normalized added tokens. Empty pieces are dropped.
  std::vector<TextPiece> extract_and_normalize(std::string_view text,
                                               const Normalizer* normalizer) const;

  std::optional<int32_t> token_to_id(std::string_view content) const;
  // The token's text as decode sees it (its normalized form for normalized tokens).
  const std::string* id_to_token(int32_t id) const;
  bool is_special_content(std::string_view content) const;
  int32_t max_id() const;

 private:
  // Byte trie over token texts for leftmost-longest matching.
  class Matcher {
   public:
    void build(const std::vector<std::pair<std::string, int32_t>>& patterns);
    bool empty() const { return nodes_.empty(); }
    // Longest pattern starting at `pos`: its length and id, or length 0.
    std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const;

   private:
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
      int32_t id = -1;
    };
    std::vector<Node> nodes_;
  };

  void split(const TextPiece& piece, const Matcher& matcher, std::vector<TextPiece>& out) const;
  void refresh();

  StringMap<int32_t> content_to_id_;
  std::unordered_map<int32_t, AddedToken> tokens_;
  std::unordered_map<int32_t, std::string> normalized_text_;
  std::unordered_set<std::string, StringHash, std::equal_to<>> special_;
  Matcher raw_matcher_, normalized_matcher_;
};

}  // namespace sagellm
