#include "kv_cache/page_allocator.h"

#include <algorithm>
#include <functional>

#include "core/error.h"

namespace sagellm {

PageAllocator::PageAllocator(int num_pages) : num_pages_(num_pages) {
  SAGELLM_CHECK(num_pages > 0, "a KV cache needs at least one page (got {})", num_pages);
  free_.resize(static_cast<size_t>(num_pages));
  for (int i = 0; i < num_pages; ++i) free_[static_cast<size_t>(i)] = num_pages - 1 - i;
}

std::optional<int> PageAllocator::allocate() {
  if (free_.empty()) return std::nullopt;
  const int page = free_.back();
  free_.pop_back();
  return page;
}

void PageAllocator::release(int page) {
  SAGELLM_CHECK(page >= 0 && page < num_pages_, "KV cache: release of page {} (valid: 0..{})", page,
                num_pages_ - 1);
  auto it = std::lower_bound(free_.begin(), free_.end(), page, std::greater<int>());
  SAGELLM_CHECK(it == free_.end() || *it != page, "KV cache: page {} released twice", page);
  free_.insert(it, page);
}

}  // namespace sagellm
