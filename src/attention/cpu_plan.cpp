#include "attention/cpu_plan.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sagellm::attention_cpu {

void validate_batch(const AttentionShape& shape, const AttentionBatch& batch,
                    const PagedKVCache& cache, int layer, const float* q, const float* out) {
  const KVCacheShape& cs = cache.shape();
  SAGELLM_CHECK(
      shape.num_heads > 0 && shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0,
      "attention: {} query heads cannot share {} KV heads", shape.num_heads, shape.num_kv_heads);
  SAGELLM_CHECK(shape.num_kv_heads == cs.num_kv_heads && shape.head_dim == cs.head_dim,
                "attention: shape (kv heads {}, head_dim {}) does not match the KV cache "
                "(kv heads {}, head_dim {})",
                shape.num_kv_heads, shape.head_dim, cs.num_kv_heads, cs.head_dim);
  SAGELLM_CHECK(std::isfinite(shape.sm_scale) && shape.sm_scale > 0.0f,
                "attention: sm_scale must be positive and finite (got {})", shape.sm_scale);
  SAGELLM_CHECK(layer >= 0 && layer < cs.num_layers, "attention: layer {} out of range (0..{})",
                layer, cs.num_layers - 1);
  int next_row = 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const AttentionSeq& seq = batch.seqs[s];
    SAGELLM_CHECK(seq.q_start >= next_row && seq.q_len >= 0 && seq.kv_len >= seq.q_len,
                  "attention: request {} has q_start {}, q_len {}, kv_len {} (requests must be in "
                  "row order, without overlap, with kv_len >= q_len >= 0)",
                  s, seq.q_start, seq.q_len, seq.kv_len);
    next_row = seq.q_start + seq.q_len;
    const size_t need = static_cast<size_t>((seq.kv_len + cs.page_size - 1) / cs.page_size);
    SAGELLM_CHECK(seq.pages.size() >= need,
                  "attention: request {} has {} tokens but only {} pages of {} tokens", s,
                  seq.kv_len, seq.pages.size(), cs.page_size);
    for (size_t p = 0; p < need; ++p) {
      SAGELLM_CHECK(seq.pages[p] >= 0 && seq.pages[p] < cs.num_pages,
                    "attention: request {} names page {} (valid: 0..{})", s, seq.pages[p],
                    cs.num_pages - 1);
    }
  }
  if (next_row > 0) {
    SAGELLM_CHECK(q != nullptr && out != nullptr, "attention: null q or out");
  }
}

std::vector<WorkItem> plan_work(const AttentionShape& shape, const AttentionBatch& batch) {
  std::vector<WorkItem> items;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const AttentionSeq& seq = batch.seqs[s];
    for (int kvh = 0; kvh < shape.num_kv_heads; ++kvh) {
      for (int b = 0; b < seq.q_len; b += kItemTokens) {
        items.push_back({static_cast<int>(s), kvh, b, std::min(seq.q_len, b + kItemTokens)});
      }
    }
  }
  return items;
}

double estimate_work(const AttentionShape& shape, const AttentionBatch& batch,
                     const std::vector<WorkItem>& items) {
  const int group = shape.num_heads / shape.num_kv_heads;
  double work = 0.0;
  for (const WorkItem& it : items) {
    work += 2.0 * (it.q_end - it.q_begin) * group * batch.seqs[static_cast<size_t>(it.seq)].kv_len *
            shape.head_dim;
  }
  return work;
}

}  // namespace sagellm::attention_cpu
