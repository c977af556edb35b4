#include "tokenizer/bpe_model.h"

#include <fmt/format.h>

#include <mutex>
#include <queue>

#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

using namespace tokjson;

// Ids far beyond the number of entries would make the id → token table huge.
constexpr int64_t kMaxSparseIds = 1 << 20;

}  // namespace

void BpeModel::MergeMap::reserve(size_t n) {
  size_t capacity = 16;
  shift_ = 60;
  while (capacity < n * 2) {
    capacity *= 2;
    --shift_;
  }
  entries_.assign(capacity, Entry{0, Merge{kEmpty, 0}});
  size_ = 0;
}

void BpeModel::MergeMap::insert_or_assign(int32_t a, int32_t b, Merge m) {
  if ((size_ + 1) * 2 > entries_.size()) {
    std::vector<Entry> old = std::move(entries_);
    reserve(std::max<size_t>(16, old.size()));
    for (const Entry& e : old) {
      if (e.merge.rank != kEmpty) {
        insert_or_assign(static_cast<int32_t>(e.key >> 32), static_cast<int32_t>(e.key), e.merge);
      }
    }
  }
  const uint64_t key = key_of(a, b);
  const size_t mask = entries_.size() - 1;
  for (size_t i = slot_of(key);; i = (i + 1) & mask) {
    Entry& e = entries_[i];
    if (e.merge.rank == kEmpty) {
      e = {key, m};
      ++size_;
      return;
    }
    if (e.key == key) {
      e.merge = m;
      return;
    }
  }
}

const BpeModel::Merge* BpeModel::MergeMap::find(int32_t a, int32_t b) const {
  if (entries_.empty()) return nullptr;
  const uint64_t key = key_of(a, b);
  const size_t mask = entries_.size() - 1;
  for (size_t i = slot_of(key);; i = (i + 1) & mask) {
    const Entry& e = entries_[i];
    if (e.merge.rank == kEmpty) return nullptr;
    if (e.key == key) return &e.merge;
  }
}

namespace {

// The tables when they were not streamed: from the DOM, with the same checks.
void tables_from_dom(const json& model, TokenizerJson& tables, const std::string& where) {
  if (!tables.has_vocab) {
    const std::string vw = child(where, "vocab");
    const json& vocab = object(required(model, "vocab", where), vw);
    for (const auto& [token, id] : vocab.items()) {
      tables.vocab.emplace_back(token, integer_of(id, child(vw, token)));
    }
    tables.has_vocab = true;
  }
  if (!tables.has_merges) {
    const std::string mw = child(where, "merges");
    const json& merges = array_of(required(model, "merges", where), mw);
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& e = merges[i];
      if (e.is_string()) {
        tables.merges.push_back({e.get<std::string>(), {}, true});
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        tables.merges.push_back({e[0].get<std::string>(), e[1].get<std::string>(), false});
      } else {
        fail("{}: expected \"a b\" or [\"a\", \"b\"]", index(mw, i));
      }
    }
    tables.has_merges = true;
  }
}

}  // namespace

std::unique_ptr<BpeModel> BpeModel::from_json(const json& model, TokenizerJson& tables,
                                              const std::string& where) {
  object(model, where);
  std::unique_ptr<BpeModel> m(new BpeModel());
  if (const json* d = optional(model, "dropout")) {
    if (!d->is_number()) fail("{}: expected a number", child(where, "dropout"));
    if (d->get<double>() != 0.0) {
      fail("{}: BPE dropout is not supported (it makes encoding random)", child(where, "dropout"));
    }
  }
  m->unk_token_ = optional_string(model, "unk_token", where);
  m->continuing_subword_prefix_ =
      optional_string(model, "continuing_subword_prefix", where).value_or("");
  m->end_of_word_suffix_ = optional_string(model, "end_of_word_suffix", where).value_or("");
  m->fuse_unk_ = bool_or(model, "fuse_unk", false, where);
  m->byte_fallback_ = bool_or(model, "byte_fallback", false, where);
  m->ignore_merges_ = bool_or(model, "ignore_merges", false, where);

  // Vocabulary.
  tables_from_dom(model, tables, where);
  const std::string vw = child(where, "vocab");
  m->vocab_.reserve(tables.vocab.size());
  int64_t max_id = -1;
  for (auto& [token, id] : tables.vocab) {
    if (id < 0 || id > INT32_MAX) fail("{}: id {} is out of range", child(vw, token), id);
    max_id = std::max(max_id, id);
    m->vocab_.insert_or_assign(token, static_cast<int32_t>(id));
  }
  tables.vocab = {};
  if (max_id >= static_cast<int64_t>(m->vocab_.size()) + kMaxSparseIds) {
    fail("{}: ids are too sparse (largest id {} for {} entries)", vw, max_id, m->vocab_.size());
  }
  m->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  m->id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (size_t i = 0; i < m->vocab_.size(); ++i) {
    const std::string& token = m->vocab_.key_at(i);
    const int32_t id = m->vocab_.value_at(i);
    if (!m->id_present_[id]) {
      m->id_to_token_[id] = token;
      m->id_present_[id] = true;
    }
  }
  for (int b = 0; b < 256; ++b) {
    m->byte_ids_[b] = m->vocab_.find(fmt::format("<0x{:02X}>", b)).value_or(-1);
  }
  if (m->unk_token_) m->unk_id_ = m->token_to_id(*m->unk_token_);

  // Merges, either "a b" strings or ["a", "b"] pairs; the position is the rank.
  const std::string mw = child(where, "merges");
  m->merges_.reserve(tables.merges.size());
  const size_t prefix_len = m->continuing_subword_prefix_.size();
  std::string joined;
  auto lookup = [&](std::string_view token, size_t i) {
    const auto id = m->vocab_.find(token);
    if (!id) fail("{}: token '{}' is not in the vocabulary", index(mw, i), token);
    return *id;
  };
  for (size_t i = 0; i < tables.merges.size(); ++i) {
    const TokenizerJson::Merge& entry = tables.merges[i];
    std::string_view a = entry.first, b = entry.second;
    if (entry.legacy) {
      const std::string_view s = entry.first;
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        fail("{}: expected two tokens separated by one space, found '{}'", index(mw, i), s);
      }
      a = s.substr(0, space);
      b = s.substr(space + 1);
    }
    const int32_t a_id = lookup(a, i);
    const int32_t b_id = lookup(b, i);
    if (b.size() < prefix_len) {
      fail("{}: '{}' is shorter than the continuing_subword_prefix", index(mw, i), b);
    }
    joined.assign(a);
    joined.append(b.substr(prefix_len));
    const int32_t new_id = lookup(joined, i);
    // A pair listed twice keeps its last rank, as HF's map does.
    m->merges_.insert_or_assign(a_id, b_id, Merge{static_cast<uint32_t>(i), new_id});
  }
  tables.merges = {};
  return m;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  return vocab_.find(token);
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.try_emplace(std::string(word), out.begin() + static_cast<ptrdiff_t>(first), out.end());
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    uint32_t len;  // bytes of the word it covers; 0 once merged into its left neighbour
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id, size_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, static_cast<uint32_t>(len)});
  };

  // Initial symbols, one per character (HF's BPE::merge_word).
  bool unk_pending = false;  // an unknown run not yet added: unk_id_ over unk_bytes bytes
  size_t unk_bytes = 0;
  std::string piece;
  for (size_t pos = 0; pos < word.size();) {
    const size_t start = pos;
    pos += std::min(utf8::char_len(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const std::string_view ch = word.substr(start, pos - start);
    piece.clear();
    if (start != 0) piece += continuing_subword_prefix_;
    piece += ch;
    if (pos == word.size()) piece += end_of_word_suffix_;

    if (auto id = vocab_.find(piece)) {
      if (unk_pending) {
        add(*unk_id_, unk_bytes);
        unk_pending = false;
      }
      add(*id, ch.size());
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : piece) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : piece) add(byte_ids_[b], 1);
        continue;
      }
    }
    if (unk_token_) {
      if (!unk_id_) fail("the unk_token '{}' is not in the vocabulary", *unk_token_);
      if (unk_pending && fuse_unk_) {
        unk_bytes += ch.size();
      } else {
        if (unk_pending) add(*unk_id_, unk_bytes);
        unk_pending = true;
        unk_bytes = ch.size();
      }
    }
    // Without an unk_token HF drops the character; so do we.
  }
  if (unk_pending) add(*unk_id_, unk_bytes);

  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto find_merge = [&](int32_t a, int32_t b) -> const Merge* { return merges_.find(a, b); };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next == -1) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    // Skip entries made stale by earlier merges.
    const Merge* now = find_merge(left.id, right.id);
    if (now == nullptr || now->new_id != top.new_id) continue;

    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    symbols[right_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;

    if (left.prev >= 0) {
      if (const Merge* m = find_merge(symbols[left.prev].id, left.id)) {
        queue.push({m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const Merge* m = find_merge(left.id, symbols[left.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) out.push_back(s.id);
  }
}

}  // namespace sagellm
