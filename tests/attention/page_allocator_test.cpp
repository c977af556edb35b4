// The KV page allocator shared by the CPU and GPU caches.
#include "kv_cache/page_allocator.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace sagellm {
namespace {

TEST(PageAllocator, LowestFreeFirstAndRefusesDoubleRelease) {
  PageAllocator a(4);
  EXPECT_EQ(a.allocate(), 0);
  EXPECT_EQ(a.allocate(), 1);
  EXPECT_EQ(a.allocate(), 2);
  a.release(1);
  EXPECT_EQ(a.num_free(), 2);
  EXPECT_EQ(a.allocate(), 1);  // the lowest free index again
  EXPECT_EQ(a.allocate(), 3);
  EXPECT_EQ(a.allocate(), std::nullopt);
  a.release(2);
  EXPECT_THROW(a.release(2), Error);
  EXPECT_THROW(a.release(4), Error);
  EXPECT_THROW(a.release(-1), Error);
  EXPECT_EQ(a.num_free(), 1);
  EXPECT_THROW(PageAllocator(0), Error);
}

}  // namespace
}  // namespace sagellm
