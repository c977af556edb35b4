// Reads tokenizer.json with nlohmann's SAX interface: the two big tables (model.vocab, 10⁵
// entries, and model.merges, up to 3·10⁵) stream straight into vectors, everything else becomes
// an ordinary JSON value. Building a DOM for the tables costs more than the rest of loading.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace sagellm {

struct TokenizerJson {
  nlohmann::json root;  // without model.vocab and model.merges when those were streamed
  bool has_vocab = false;
  std::vector<std::pair<std::string, int64_t>> vocab;  // in file order
  bool has_merges = false;
  // Each merge as written: "a b" (second empty, legacy form) or ["a", "b"].
  struct Merge {
    std::string first, second;
    bool legacy = false;
  };
  std::vector<Merge> merges;
};

// `file` names the file in error messages. Throws sagellm::Error on malformed JSON or on a
// malformed vocab/merges entry.
TokenizerJson read_tokenizer_json(const std::string& text, const std::string& file);

}  // namespace sagellm
