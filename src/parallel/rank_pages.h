// KV pages of a tensor-parallel group: every rank's cache holds its KV heads of the same pages,
// so one page index names them all. The ranks' page allocators see the same calls in the same
// order and so hand out the same index; a mismatch is reported, never papered over.
#pragma once

#include <optional>

#include "core/error.h"

namespace sagellm {

// cache_of(r) is rank r's KV cache (anything with allocate() -> std::optional<int>).
template <typename CacheOf>
std::optional<int> allocate_page_on_every_rank(int ranks, CacheOf&& cache_of) {
  const std::optional<int> page = cache_of(0).allocate();
  for (int r = 1; r < ranks; ++r) {
    const std::optional<int> same = cache_of(r).allocate();
    SAGELLM_CHECK(same == page, "tensor-parallel rank {}'s KV pages diverged from rank 0's", r);
  }
  return page;
}

}  // namespace sagellm
