// Prefix cache: a radix tree over token ids at page granularity, so requests that share a prompt
// prefix share its KV pages. Each edge is one full page of token ids (only full pages enter the
// tree, because a sealed 8-bit page cannot be written again), and each node owns the page that
// holds those tokens' K/V.
//
// Ownership: a page is either a tree node's (shared, released to the allocator only when evicted)
// or a request's own (released by the request). A request locks the path to the deepest node it
// uses; locked nodes are never evicted. Unlocked leaves are evicted least recently used first.
// Not thread-safe: the scheduler's thread is its only user.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace sagellm {

class PrefixCache {
 public:
  struct Node;
  // A locked path: the deepest node (nullptr: the root, nothing locked) and its depth in pages.
  struct Handle {
    Node* node = nullptr;
    int depth = 0;
  };

  // `release_page` gives an evicted node's page back to the page allocator.
  PrefixCache(int page_size, std::function<void(int)> release_page);
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  int page_size() const { return page_size_; }

  // Longest cached prefix of `tokens` in whole pages, at most `max_pages` pages. The path is
  // locked for the caller (release it with unlock()); `pages` receives the block table of the
  // matched prefix.
  Handle match(std::span<const int32_t> tokens, int max_pages, std::vector<int>& pages);

  // Extends the caller's locked path `h` with the full pages of `tokens` that follow it:
  // `pages[i]` holds tokens [i * page_size, (i + 1) * page_size), and pages[h.depth..full) are the
  // caller's own. Each page the tree takes becomes the tree's; where the tree already holds the
  // same tokens, the caller's duplicate is released and `pages[i]` is replaced by the tree's page
  // (the contents are the same). Returns the new locked handle (the old lock is moved onto it).
  Handle insert(std::span<const int32_t> tokens, std::vector<int>& pages, Handle h);

  void unlock(Handle h);

  // Evicts unlocked leaves, least recently used first, until `pages` pages were released or none
  // is left. Returns the number released.
  int evict(int pages);

  int cached_pages() const { return num_nodes_; }  // pages the tree holds
  int evictable_pages() const;                     // of which no request holds a lock

 private:
  void lock_path(Node* n, int delta);
  void touch(Node* n);

  int page_size_;
  std::function<void(int)> release_page_;
  std::unique_ptr<Node> root_;
  int num_nodes_ = 0;
  uint64_t clock_ = 0;
};

}  // namespace sagellm
