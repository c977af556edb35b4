// Post-processors of tokenizer.json ("post_processor"): what encode(add_special_tokens=true) adds
// around the ids of one sequence (BOS for Llama models).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_fields.h"

namespace sagellm {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
  // The ids the processor puts in front of a single sequence (empty when none).
  virtual std::vector<int32_t> leading_ids() const = 0;
};

// nullptr for a null post-processor. Throws sagellm::Error naming an unsupported type.
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j,
                                                   const std::string& where);

}  // namespace sagellm
