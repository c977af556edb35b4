// The prefix cache's bookkeeping with a fake page allocator: matching, locking, page adoption on
// duplicates, and LRU eviction of unlocked leaves only.
#include "kv_cache/prefix_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

namespace sagellm {
namespace {

constexpr int kPage = 4;

struct FakePages {
  std::set<int> released;
  int next = 100;
  std::vector<int> take(int n) {
    std::vector<int> v;
    for (int i = 0; i < n; ++i) v.push_back(next++);
    return v;
  }
};

std::vector<int32_t> seq(int n, int32_t start = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + i;
  return v;
}

TEST(PrefixCache, MatchesWholePagesOnlyAndLocksThem) {
  FakePages fake;
  PrefixCache cache(kPage, [&](int p) { fake.released.insert(p); });
  const std::vector<int32_t> tokens = seq(11);  // 2 full pages + 3 tokens
  std::vector<int> pages = fake.take(3);
  const std::vector<int> mine = pages;
  PrefixCache::Handle h = cache.insert(tokens, pages, {});
  EXPECT_EQ(h.depth, 2);
  EXPECT_EQ(cache.cached_pages(), 2);
  EXPECT_EQ(pages, mine);                 // nothing was there: the tree adopted our pages
  EXPECT_EQ(cache.evictable_pages(), 0);  // locked by us

  std::vector<int> got;
  std::vector<int32_t> other = seq(9);
  other[5] = 999;  // differs inside the second page
  PrefixCache::Handle m = cache.match(other, 100, got);
  EXPECT_EQ(m.depth, 1);
  EXPECT_EQ(got, std::vector<int>({mine[0]}));
  PrefixCache::Handle m2 = cache.match(tokens, 1, got);  // capped by max_pages
  EXPECT_EQ(m2.depth, 1);

  cache.unlock(h);
  EXPECT_EQ(cache.evictable_pages(), 1);  // page 2 is free; page 1 is still locked twice
  EXPECT_EQ(cache.evict(10), 1);
  EXPECT_EQ(fake.released, std::set<int>({mine[1]}));
  cache.unlock(m);
  cache.unlock(m2);
  EXPECT_EQ(cache.evict(10), 1);
  EXPECT_EQ(cache.cached_pages(), 0);
  EXPECT_EQ(fake.released, std::set<int>({mine[0], mine[1]}));
}

TEST(PrefixCache, DuplicateInsertAdoptsTheTreePageAndReleasesOurs) {
  FakePages fake;
  PrefixCache cache(kPage, [&](int p) { fake.released.insert(p); });
  const std::vector<int32_t> tokens = seq(8);
  std::vector<int> first = fake.take(2);
  PrefixCache::Handle a = cache.insert(tokens, first, {});
  std::vector<int> second = fake.take(2);
  const std::vector<int> second_own = second;
  PrefixCache::Handle b = cache.insert(tokens, second, {});
  EXPECT_EQ(second, first);
  EXPECT_EQ(fake.released, std::set<int>(second_own.begin(), second_own.end()));
  EXPECT_EQ(cache.cached_pages(), 2);
  cache.unlock(a);
  EXPECT_EQ(cache.evict(5), 0);  // b still holds the path
  cache.unlock(b);
  EXPECT_EQ(cache.evict(5), 2);
}

TEST(PrefixCache, ExtendingALockedPathMovesTheLock) {
  FakePages fake;
  PrefixCache cache(kPage, [&](int p) { fake.released.insert(p); });
  const std::vector<int32_t> tokens = seq(16);
  std::vector<int> pages = fake.take(4);
  PrefixCache::Handle h =
      cache.insert(std::span<const int32_t>(tokens.data(), 5), pages, {});  // one full page
  EXPECT_EQ(h.depth, 1);
  h = cache.insert(tokens, pages, h);
  EXPECT_EQ(h.depth, 4);
  EXPECT_EQ(cache.evictable_pages(), 0);
  cache.unlock(h);
  EXPECT_EQ(cache.evictable_pages(), 4);  // the old lock was moved, not left behind
}

TEST(PrefixCache, EvictsLeastRecentlyUsedLeavesFirst) {
  FakePages fake;
  std::vector<int> order;
  PrefixCache cache(kPage, [&](int p) { order.push_back(p); });
  std::vector<std::vector<int>> owned;
  for (int b = 0; b < 3; ++b) {
    std::vector<int32_t> t = seq(8, 1000 * (b + 1));  // three unrelated 2-page prompts
    std::vector<int> pages = fake.take(2);
    owned.push_back(pages);
    cache.unlock(cache.insert(t, pages, {}));
  }
  // Touch prompt 0 again, so prompt 1 is now the least recently used.
  std::vector<int> got;
  cache.unlock(cache.match(seq(8, 1000), 2, got));
  EXPECT_EQ(cache.evict(2), 2);
  EXPECT_EQ(order, std::vector<int>({owned[1][1], owned[1][0]}));  // leaf before its parent
  EXPECT_EQ(cache.evict(1), 1);
  EXPECT_EQ(order.back(), owned[2][1]);
}

TEST(PrefixCache, RandomWorkloadNeverLosesOrDoubleReleasesAPage) {
  std::mt19937 rng(42);
  std::multiset<int> released;
  PrefixCache cache(kPage, [&](int p) { released.insert(p); });
  int next_page = 0;
  std::vector<std::pair<PrefixCache::Handle, std::vector<int>>> live;
  std::set<int> owned_by_requests;
  for (int it = 0; it < 2000; ++it) {
    const int op = static_cast<int>(rng() % 3);
    if (op == 0 || live.empty()) {
      // A request over a prompt from a small alphabet, so prefixes collide often.
      std::vector<int32_t> t(static_cast<size_t>(rng() % 20 + 1));
      for (auto& x : t) x = static_cast<int32_t>(rng() % 2);
      std::vector<int> pages;
      PrefixCache::Handle h = cache.match(t, static_cast<int>(t.size()) / kPage, pages);
      while (pages.size() < (t.size() + kPage - 1) / kPage) pages.push_back(next_page++);
      h = cache.insert(t, pages, h);
      live.emplace_back(h, pages);
    } else if (op == 1) {
      const size_t k = rng() % live.size();
      auto [h, pages] = live[k];
      cache.unlock(h);
      for (size_t j = static_cast<size_t>(h.depth); j < pages.size(); ++j)
        released.insert(pages[j]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
      cache.evict(static_cast<int>(rng() % 4));
    }
  }
  for (auto& [h, pages] : live) {
    cache.unlock(h);
    for (size_t j = static_cast<size_t>(h.depth); j < pages.size(); ++j) released.insert(pages[j]);
  }
  EXPECT_EQ(cache.evictable_pages(), cache.cached_pages());
  cache.evict(1 << 20);
  EXPECT_EQ(cache.cached_pages(), 0);
  // Every page handed out came back exactly once.
  EXPECT_EQ(static_cast<int>(released.size()), next_page);
  EXPECT_EQ(std::set<int>(released.begin(), released.end()).size(), released.size());
}

}  // namespace
}  // namespace sagellm
