// The batch layout every GPU attention kernel assumes, checked once for all backends: q rows of the
// requests contiguous and in order from the first request's q_start, kv_len >= q_len >= 0, a page
// (>= 0) named for every cached token, and sizes that fit the kernels' 32-bit row indices.
#pragma once

#include <string>

#include "attention/backend.h"

namespace sagellm {

// Empty when the batch has that layout; otherwise why not, naming the request.
std::string attention_batch_layout_error(const AttentionBatch& batch, int page_size,
                                         int max_requests);

}  // namespace sagellm
