// An AttentionBackend that forwards to another and adds up the wall time spent inside it, so
// attention's share of a forward step is measured instead of estimated (the CPU engine's
// attention timing, validate's step-level throughput check).
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "attention/backend.h"

namespace sagellm {

class TimedAttention final : public AttentionBackend {
 public:
  explicit TimedAttention(const AttentionBackend& inner) : inner_(inner) {}

  std::string_view name() const override { return inner_.name(); }
  KVCacheDType default_kv_cache_dtype() const override { return inner_.default_kv_cache_dtype(); }
  void forward(const AttentionShape& shape, const AttentionBatch& batch, const PagedKVCache& cache,
               int layer, const float* q, float* out) const override {
    const auto t0 = std::chrono::steady_clock::now();
    inner_.forward(shape, batch, cache, layer, q, out);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++calls_;
  }

  double seconds() const { return seconds_; }
  int64_t calls() const { return calls_; }
  void reset() {
    seconds_ = 0;
    calls_ = 0;
  }

 private:
  const AttentionBackend& inner_;
  // forward() is const in the interface; the totals are bookkeeping, not backend state.
  mutable double seconds_ = 0;
  mutable int64_t calls_ = 0;
};

}  // namespace sagellm
