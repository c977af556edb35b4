// Hands out the pages of a paged KV cache by index, lowest free index first (so allocation order
// is reproducible run to run), and refuses a double release, which would hand one page to two
// requests.
#pragma once

#include <optional>
#include <vector>

namespace sagellm {

class PageAllocator {
 public:
  explicit PageAllocator(int num_pages);

  // nullopt when every page is in use.
  std::optional<int> allocate();
  // Throws sagellm::Error for an index out of range or a page that is already free.
  void release(int page);
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_pages() const { return num_pages_; }

 private:
  int num_pages_;
  std::vector<int> free_;  // descending, so pop_back() is the lowest free index
};

}  // namespace sagellm
