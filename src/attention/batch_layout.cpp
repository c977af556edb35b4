#include "attention/batch_layout.h"

#include <fmt/format.h>

#include <cstdint>
#include <limits>

namespace sagellm {

std::string attention_batch_layout_error(const AttentionBatch& batch, int page_size,
                                         int max_requests) {
  if (batch.seqs.size() > static_cast<size_t>(max_requests)) {
    return fmt::format("{} requests in one batch (at most {})", batch.seqs.size(), max_requests);
  }
  if (page_size <= 0) return fmt::format("page size {}", page_size);
  const int64_t first = batch.seqs.empty() ? 0 : batch.seqs.front().q_start;
  if (first < 0) return fmt::format("request 0 has q_start {}", first);
  int64_t next_row = first;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const AttentionSeq& seq = batch.seqs[s];
    if (seq.q_start != next_row) {
      return fmt::format(
          "request {} starts at q row {} but the previous one ends at row {} (the q rows of a "
          "batch must be contiguous and in order)",
          s, seq.q_start, next_row);
    }
    if (seq.q_len < 0 || seq.kv_len < seq.q_len) {
      return fmt::format("request {} has q_len {} and kv_len {} (need kv_len >= q_len >= 0)", s,
                         seq.q_len, seq.kv_len);
    }
    const int64_t need = (static_cast<int64_t>(seq.kv_len) + page_size - 1) / page_size;
    if (static_cast<int64_t>(seq.pages.size()) < need) {
      return fmt::format("request {} has {} tokens but only {} pages of {} tokens", s, seq.kv_len,
                         seq.pages.size(), page_size);
    }
    for (int64_t i = 0; i < need; ++i) {
      if (seq.pages[static_cast<size_t>(i)] < 0) {
        return fmt::format("request {} names page {}", s, seq.pages[static_cast<size_t>(i)]);
      }
    }
    next_row += seq.q_len;
    if (next_row > std::numeric_limits<int32_t>::max()) return "too many q rows";
  }
  return {};
}

}  // namespace sagellm
