// Decoders of tokenizer.json ("decoder"): token strings → text. Like HF, each decoder rewrites the
// list of token strings (decode_chain) and the final text is their concatenation.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/json_fields.h"

namespace sagellm {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Whether runs of <0xNN> tokens are decoded together (ByteFallback), which makes the text of a
  // run depend on the tokens after it.
  virtual bool groups_bytes() const { return false; }
};

// The byte a "<0xNN>" token stands for, or -1 for any other token.
int byte_fallback_value(std::string_view token);

// nullptr for a null decoder. Throws sagellm::Error naming an unsupported type.
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where);

}  // namespace sagellm
