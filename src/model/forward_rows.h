// The host-side bookkeeping of one forward step, shared by the CPU and CUDA forward passes: the
// batch is validated before anything is written (so a malformed batch leaves the KV cache as it
// was), and every new token is mapped to its position, KV page and slot.
#pragma once

#include <cstdint>
#include <vector>

#include "io/model_config.h"
#include "model/llama.h"

namespace sagellm {

struct ForwardRows {
  std::vector<int32_t> position;     // [rows]
  std::vector<int32_t> page;         // [rows] KV page the token's K/V go to
  std::vector<int32_t> slot;         // [rows] slot within that page
  std::vector<int32_t> logits_rows;  // rows whose logits the step returns, in output order
};

// Throws sagellm::Error on a malformed batch: requests not contiguous and in order, kv_len <
// q_len, too few pages for kv_len, a page outside [0, num_pages), a token id outside the
// vocabulary, or (kLastPerSeq) a request with no new token.
ForwardRows plan_forward_rows(const ForwardBatch& batch, const io::ModelConfig& config,
                              int page_size, int num_pages);

}  // namespace sagellm
