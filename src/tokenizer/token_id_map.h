// String → id hash map with open addressing. Vocabularies have 10⁵ entries that are looked up
// about a million times while merges load; a flat table keeps that well under a second where a
// node-based std::unordered_map spends most of its time on cache misses.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sagellm {

class TokenIdMap {
 public:
  void reserve(size_t n) {
    keys_.reserve(n);
    values_.reserve(n);
    rehash(capacity_for(n));
  }

  // Sets the id of `key`, replacing an earlier one.
  void insert_or_assign(std::string_view key, int32_t value) {
    if ((keys_.size() + 1) * 2 > slots_.size()) rehash(capacity_for(keys_.size() + 1));
    const uint64_t h = hash(key);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.index == 0) {
        keys_.emplace_back(key);
        values_.push_back(value);
        s = {static_cast<uint32_t>(h), static_cast<uint32_t>(keys_.size())};
        return;
      }
      if (s.hash == static_cast<uint32_t>(h) && keys_[s.index - 1] == key) {
        values_[s.index - 1] = value;
        return;
      }
    }
  }

  std::optional<int32_t> find(std::string_view key) const {
    if (slots_.empty()) return std::nullopt;
    const uint64_t h = hash(key);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.index == 0) return std::nullopt;
      if (s.hash == static_cast<uint32_t>(h) && keys_[s.index - 1] == key) {
        return values_[s.index - 1];
      }
    }
  }

  size_t size() const { return keys_.size(); }
  const std::string& key_at(size_t i) const { return keys_[i]; }
  int32_t value_at(size_t i) const { return values_[i]; }

 private:
  struct Slot {
    uint32_t hash;
    uint32_t index;  // 1 + position in keys_, 0 for an empty slot
  };
  static uint64_t hash(std::string_view s) { return std::hash<std::string_view>{}(s); }
  static size_t capacity_for(size_t n) {
    size_t c = 16;
    while (c < n * 2) c *= 2;
    return c;
  }
  void rehash(size_t capacity) {
    if (capacity <= slots_.size()) return;
    slots_.assign(capacity, Slot{0, 0});
    mask_ = capacity - 1;
    for (size_t k = 0; k < keys_.size(); ++k) {
      const uint64_t h = hash(keys_[k]);
      size_t i = h & mask_;
      while (slots_[i].index != 0) i = (i + 1) & mask_;
      slots_[i] = {static_cast<uint32_t>(h), static_cast<uint32_t>(k + 1)};
    }
  }

  std::vector<std::string> keys_;
  std::vector<int32_t> values_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

}  // namespace sagellm
