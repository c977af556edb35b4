// Shared by the CPU backends: validation of a batch against the shape and the cache, and its
// split into independent work items. A work item is up to kItemTokens consecutive new tokens of
// one request (aligned to the request's first new token) times all query heads that read one KV
// head (the GQA group), so K and V of a page are loaded once for all of them. Every output row
// belongs to exactly one item and an item is computed start to end by one thread in a fixed
// order, so results do not depend on the thread count, on the schedule, or on the other requests
// in the batch.
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "attention/backend.h"

namespace sagellm::attention_cpu {

// The block of rows that shares one Q scale in sage_attn: one row (each new token of each head has
// its own scale; sage_numerics.h says why).
inline constexpr int kQueryBlockRows = 1;
// New tokens per work item: many rows, so that each page's K and V are prepared once for all.
inline constexpr int kItemTokens = 64;

struct WorkItem {
  int seq = 0;      // index into batch.seqs
  int kv_head = 0;  // query heads kv_head * group .. (kv_head + 1) * group - 1
  int q_begin = 0;  // rows q_begin .. q_end - 1 of the request's new tokens
  int q_end = 0;
};

// Throws sagellm::Error when the batch does not fit the shape or the cache.
void validate_batch(const AttentionShape& shape, const AttentionBatch& batch,
                    const PagedKVCache& cache, int layer, const float* q, const float* out);

// Work items in a fixed order (request, KV head, row block).
std::vector<WorkItem> plan_work(const AttentionShape& shape, const AttentionBatch& batch);

// Floating-point operations of the items (an upper bound: causal masking is ignored). Below
// kMinParallelWork the work runs on the calling thread: a parallel region costs more than it
// saves there, and much more when the machine is oversubscribed (a spinning barrier then waits
// for a descheduled thread). Results do not depend on this choice.
double estimate_work(const AttentionShape& shape, const AttentionBatch& batch,
                     const std::vector<WorkItem>& items);
inline constexpr double kMinParallelWork = 1 << 18;

// Last key (inclusive, request-relative) that new token `i` of `seq` may see.
inline int last_visible_key(const AttentionSeq& seq, int i, bool causal) {
  return causal ? seq.kv_len - seq.q_len + i : seq.kv_len - 1;
}

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Runs `run(item, scratch)` for every item, on OpenMP threads when the work is large enough, each
// thread with its own Scratch(head_dim, page_size, max_rows). The scratch is allocated before the
// parallel region, so that running out of memory is an exception here rather than a termination
// inside a worker. Each item is computed by exactly one thread, so results do not depend on the
// thread count.
template <typename Scratch, typename Run>
void run_work_items(const AttentionShape& shape, const AttentionBatch& batch,
                    const std::vector<WorkItem>& items, int page_size, Run&& run) {
  if (items.empty()) return;
  const int group = shape.num_heads / shape.num_kv_heads;
  const int n_items = static_cast<int>(items.size());
  const bool parallel = estimate_work(shape, batch, items) >= kMinParallelWork;
  const int threads = parallel ? std::max(1, std::min(omp_get_max_threads(), n_items)) : 1;
  int max_rows = 0;
  for (const WorkItem& it : items) max_rows = std::max(max_rows, (it.q_end - it.q_begin) * group);
  std::vector<Scratch> scratch;
  scratch.reserve(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) scratch.emplace_back(shape.head_dim, page_size, max_rows);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    Scratch& w = scratch[static_cast<size_t>(omp_get_thread_num())];
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n_items; ++i) run(items[static_cast<size_t>(i)], w);
  }
}

}  // namespace sagellm::attention_cpu
