// Normalizers of tokenizer.json ("normalizer"): text → text before pre-tokenization. HF applies the
// normalizer to each piece of the input between added tokens separately.
#pragma once

#include <memory>
#include <string>

#include "tokenizer/json_fields.h"

namespace sagellm {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// nullptr for a null normalizer. Throws sagellm::Error naming an unsupported type.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where);

}  // namespace sagellm
