#include "kv_cache/prefix_cache.h"

#include <algorithm>
#include <map>
#include <queue>
#include <utility>

#include "core/error.h"

namespace sagellm {

struct PrefixCache::Node {
  Node* parent = nullptr;
  std::vector<int32_t> key;  // the page's token ids (empty for the root)
  int page = -1;
  int locks = 0;  // requests whose locked path runs through this node
  uint64_t last_use = 0;
  // Ordered by key so eviction and traversal never depend on hashing or addresses.
  std::map<std::vector<int32_t>, std::unique_ptr<Node>> children;
};

PrefixCache::PrefixCache(int page_size, std::function<void(int)> release_page)
    : page_size_(page_size), release_page_(std::move(release_page)), root_(new Node) {
  SAGELLM_CHECK(page_size >= 1, "prefix cache: page size must be >= 1 (got {})", page_size);
}

PrefixCache::~PrefixCache() = default;

void PrefixCache::lock_path(Node* n, int delta) {
  for (; n != nullptr && n != root_.get(); n = n->parent) {
    n->locks += delta;
    SAGELLM_CHECK(n->locks >= 0, "prefix cache: a node was unlocked more often than locked");
  }
}

void PrefixCache::touch(Node* n) {
  ++clock_;
  for (; n != nullptr; n = n->parent) n->last_use = clock_;
}

PrefixCache::Handle PrefixCache::match(std::span<const int32_t> tokens, int max_pages,
                                       std::vector<int>& pages) {
  pages.clear();
  const int full = std::min<int>(max_pages, static_cast<int>(tokens.size()) / page_size_);
  Node* n = root_.get();
  std::vector<int32_t> key(static_cast<size_t>(page_size_));
  int depth = 0;
  for (; depth < full; ++depth) {
    const auto* begin = tokens.data() + static_cast<size_t>(depth) * page_size_;
    key.assign(begin, begin + page_size_);
    auto it = n->children.find(key);
    if (it == n->children.end()) break;
    n = it->second.get();
    pages.push_back(n->page);
  }
  if (depth == 0) return {};
  lock_path(n, 1);
  touch(n);
  return {n, depth};
}

PrefixCache::Handle PrefixCache::insert(std::span<const int32_t> tokens, std::vector<int>& pages,
                                        Handle h) {
  const int full =
      std::min<int>(static_cast<int>(pages.size()), static_cast<int>(tokens.size()) / page_size_);
  if (full <= h.depth) return h;
  Node* n = h.node != nullptr ? h.node : root_.get();
  for (int i = h.depth; i < full; ++i) {
    const auto* begin = tokens.data() + static_cast<size_t>(i) * page_size_;
    std::vector<int32_t> key(begin, begin + page_size_);
    auto it = n->children.find(key);
    if (it != n->children.end()) {
      // Another request computed the same tokens first: use its page and drop ours.
      const int mine = pages[static_cast<size_t>(i)];
      pages[static_cast<size_t>(i)] = it->second->page;
      release_page_(mine);
      n = it->second.get();
      continue;
    }
    auto child = std::make_unique<Node>();
    child->parent = n;
    child->key = std::move(key);
    child->page = pages[static_cast<size_t>(i)];
    Node* c = child.get();
    n->children.emplace(c->key, std::move(child));
    ++num_nodes_;
    n = c;
  }
  lock_path(n, 1);
  if (h.node != nullptr) lock_path(h.node, -1);
  touch(n);
  return {n, full};
}

void PrefixCache::unlock(Handle h) {
  if (h.node != nullptr) lock_path(h.node, -1);
}

int PrefixCache::evictable_pages() const {
  // A node is evictable once its subtree holds no lock: evicting leaves repeatedly reaches it.
  int count = 0;
  std::vector<const Node*> stack{root_.get()};
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    for (const auto& [key, child] : n->children) {
      if (child->locks == 0) ++count;
      stack.push_back(child.get());
    }
  }
  return count;
}

int PrefixCache::evict(int pages) {
  if (pages <= 0) return 0;
  // Min-heap of unlocked leaves by last use; a parent joins when its last child goes.
  using Entry = std::pair<uint64_t, Node*>;
  auto later = [](const Entry& a, const Entry& b) {
    return a.first != b.first ? a.first > b.first : a.second->page > b.second->page;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(later)> heap(later);
  std::vector<Node*> stack{root_.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& [key, child] : n->children) stack.push_back(child.get());
    if (n != root_.get() && n->children.empty() && n->locks == 0) heap.emplace(n->last_use, n);
  }
  int released = 0;
  while (released < pages && !heap.empty()) {
    Node* n = heap.top().second;
    heap.pop();
    Node* parent = n->parent;
    const int page = n->page;
    parent->children.erase(parent->children.find(n->key));  // destroys n
    --num_nodes_;
    release_page_(page);
    ++released;
    if (parent != root_.get() && parent->children.empty() && parent->locks == 0) {
      heap.emplace(parent->last_use, parent);
    }
  }
  return released;
}

}  // namespace sagellm
