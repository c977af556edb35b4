// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): cut normalized text into the words that the
// model tokenizes one by one (and, for byte-level BPE, map bytes to vocabulary symbols).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_fields.h"

namespace sagellm {

struct PreToken {
  std::string text;
  // The piece begins at offset 0 of the original input (Metaspace's prepend_scheme "first").
  bool at_input_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces each split by its parts; empty parts are dropped, as HF does.
  virtual void pre_tokenize(std::vector<PreToken>& splits) const = 0;
};

// nullptr for a null pre-tokenizer. Throws sagellm::Error naming an unsupported type.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& where);

}  // namespace sagellm
