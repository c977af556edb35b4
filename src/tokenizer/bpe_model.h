// The BPE model of tokenizer.json ("model": {"type": "BPE"}): vocabulary, merges by rank, byte
// fallback, unknown-token handling and ignore_merges, with the merge order of HF's Word::merge_all
// (lowest rank first, leftmost first among equal ranks).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/json_fields.h"
#include "tokenizer/token_id_map.h"
#include "tokenizer/tokenizer_json_reader.h"

namespace sagellm {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `model` is the "model" object; its vocab and merges come from `tables` when the reader
  // streamed them there (they are moved out), else from `model` itself.
  static std::unique_ptr<BpeModel> from_json(const nlohmann::json& model, TokenizerJson& tables,
                                             const std::string& where);

  // Appends the ids of one pre-tokenized word (non-empty).
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr when the id is not in the vocabulary
  size_t vocab_entries() const { return vocab_.size(); }
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  BpeModel() = default;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  // (left id, right id) → merge, open addressing on the packed pair.
  class MergeMap {
   public:
    void reserve(size_t n);
    void insert_or_assign(int32_t a, int32_t b, Merge m);
    const Merge* find(int32_t a, int32_t b) const;

   private:
    struct Entry {
      uint64_t key;
      Merge merge;  // rank kEmpty marks a free slot
    };
    static constexpr uint32_t kEmpty = UINT32_MAX;
    static uint64_t key_of(int32_t a, int32_t b) {
      return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    size_t slot_of(uint64_t key) const {
      return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
    }
    std::vector<Entry> entries_;
    size_t size_ = 0;
    int shift_ = 64;
  };

  TokenIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  MergeMap merges_;
  std::optional<std::string> unk_token_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256] = {};  // <0xNN> tokens for byte fallback, -1 when absent

  // Results per word (HF keeps a cache too); words are short and repeat a lot in real text.
  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace sagellm
