// Drives LlamaModel::forward directly over a private paged KV cache, for the measurements the
// Engine API does not expose: attention time inside a step (with a TimedAttention backend) and
// logits of a request inside a varlen batch of others. CPU model only.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/backend.h"
#include "kv_cache/kv_cache.h"
#include "model/llama.h"

namespace sagellm::eval::validate {

class StepRunner {
 public:
  // A cache of `capacity_tokens` tokens (rounded up to pages) in `dtype`.
  StepRunner(const LlamaModel& model, const AttentionBackend& attention, KVCacheDType dtype,
             int page_size, int64_t capacity_tokens);

  int add_request();  // an empty request; returns its index

  // New tokens of several requests in one forward step (in the order given).
  struct Part {
    int request = 0;
    std::span<const int32_t> tokens;
  };
  // Logits: [total new tokens][vocab] for kAll, [parts][vocab] for kLastPerSeq.
  std::vector<float> step(const std::vector<Part>& parts, LogitsMode mode);

  // Writes `tokens` positions of seeded random K/V for `request` straight into the cache (every
  // layer), so decode steps can be timed at a long context without prefilling it first.
  void fill_random(int request, int64_t tokens, uint64_t seed);

  int64_t kv_len(int request) const { return requests_.at(static_cast<size_t>(request)).kv_len; }
  const PagedKVCache& cache() const { return cache_; }

 private:
  struct Request {
    std::vector<int> pages;
    int kv_len = 0;
  };
  void reserve(Request& r, int64_t tokens);

  const LlamaModel& model_;
  const AttentionBackend& attention_;
  PagedKVCache cache_;
  std::vector<Request> requests_;
};

}  // namespace sagellm::eval::validate
