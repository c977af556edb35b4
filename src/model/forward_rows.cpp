#include "model/forward_rows.h"

#include "core/error.h"

namespace sagellm {

ForwardRows plan_forward_rows(const ForwardBatch& batch, const io::ModelConfig& config,
                              int page_size, int num_pages) {
  const int rows = static_cast<int>(batch.tokens.size());
  int expected_rows = 0;
  for (const AttentionSeq& s : batch.attention.seqs) {
    SAGELLM_CHECK(s.q_start == expected_rows && s.q_len >= 0 && s.kv_len >= s.q_len,
                  "malformed forward batch");
    SAGELLM_CHECK(s.kv_len <= static_cast<int64_t>(s.pages.size()) * page_size,
                  "request of {} tokens has only {} KV pages", s.kv_len, s.pages.size());
    SAGELLM_CHECK(s.kv_len <= config.max_position_embeddings || config.max_position_embeddings <= 0,
                  "request of {} tokens exceeds the model's {} positions", s.kv_len,
                  config.max_position_embeddings);
    for (int p : s.pages) {
      SAGELLM_CHECK(p >= 0 && p < num_pages, "KV page {} is outside the cache (0..{})", p,
                    num_pages - 1);
    }
    expected_rows += s.q_len;
  }
  SAGELLM_CHECK(expected_rows == rows, "forward batch has {} tokens but its requests cover {}",
                rows, expected_rows);
  for (int32_t t : batch.tokens) {
    SAGELLM_CHECK(t >= 0 && t < config.vocab_size,
                  "token id {} is outside the vocabulary (size {})", t, config.vocab_size);
  }

  ForwardRows r;
  r.position.resize(static_cast<size_t>(rows));
  r.page.resize(static_cast<size_t>(rows));
  r.slot.resize(static_cast<size_t>(rows));
  for (const AttentionSeq& s : batch.attention.seqs) {
    for (int i = 0; i < s.q_len; ++i) {
      const int pos = s.kv_len - s.q_len + i;
      const size_t row = static_cast<size_t>(s.q_start) + static_cast<size_t>(i);
      r.position[row] = pos;
      r.page[row] = s.pages[static_cast<size_t>(pos / page_size)];
      r.slot[row] = pos % page_size;
    }
  }
  if (batch.logits_mode == LogitsMode::kAll) {
    r.logits_rows.resize(static_cast<size_t>(rows));
    for (int i = 0; i < rows; ++i) r.logits_rows[static_cast<size_t>(i)] = i;
  } else {
    for (const AttentionSeq& s : batch.attention.seqs) {
      SAGELLM_CHECK(s.q_len > 0, "a request without new tokens has no last-token logits");
      r.logits_rows.push_back(s.q_start + s.q_len - 1);
    }
  }
  return r;
}

}  // namespace sagellm
