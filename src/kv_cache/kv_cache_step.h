// Host planning of one forward step's writes into the GPU's 8-bit paged KV cache (sage_attn's
// cache, kv_cache_cuda.h), with the semantics of the CPU cache (kv_cache.h): a page is sealed
// (quantized into an 8-bit block) in the step that writes its last slot; until then its tokens
// live in a bf16 tail slot. Plain C++, so that it is tested on the CPU.
//
// Per step and per layer the forward pass runs, in this order on one stream:
//   1. the seal kernel (sage_quantize_pages_cuda) over seal_jobs: a page that fills in this step
//      is quantized from its old tokens (its current tail slot) and its new K/V rows;
//   2. the tail write (kv_cache_write into the tail pool) of the rows whose page stays partial;
//   3. attention, which reads the bookkeeping after the step (tail slots of partial pages, 8-bit
//      blocks of the others).
// A tail slot freed by a seal may be handed to another page in the same step: per layer, its only
// read (1) is enqueued before its first write (2), and every layer has its own tail pool, so
// reusing it needs no extra slot (a request that seals one page and starts the next never needs
// two slots at once).
#pragma once

#include <cstdint>
#include <vector>

#include "attention/backend.h"
#include "attention/sage/sage_params.h"

namespace sagellm {

// A page whose tail slot changes in the step: gets one (before -1) or seals (after -1).
struct KVTailChange {
  int32_t page = 0;
  int32_t before = -1;
  int32_t after = -1;
};

struct KVStepWrites {
  // Per new-token row (the batch's rows in order): the tail slot its K/V go to, or -1 when its
  // page is full after the step (the row is then an input of a seal job and is not written to the
  // tail pool). The slot within the page is the row's position % page_size.
  std::vector<int32_t> tail_slot;
  // One job per page that becomes full in this step, in row order; src_page is the page's tail
  // slot before the step (-1 when n_old == 0), dst the page.
  std::vector<sage_cuda::SageQuantJob> seal_jobs;
  // Bookkeeping: seals (before >= 0, after -1) first, then new tails (before -1, after >= 0), in
  // the order KVTailSlots::apply performs them.
  std::vector<KVTailChange> changes;
};

// Which pages hold their tokens in a bf16 tail slot, and which tail slots are free.
class KVTailSlots {
 public:
  KVTailSlots() = default;
  // Throws sagellm::Error unless num_pages > 0 and num_slots > 0.
  KVTailSlots(int num_pages, int num_slots);

  int num_pages() const { return static_cast<int>(slot_of_page_.size()); }
  int num_slots() const { return num_slots_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  // Indexed by page: the tail slot holding the page's tokens, or -1 (no tail: empty or sealed).
  const std::vector<int32_t>& slot_of_page() const { return slot_of_page_; }
  // Free slots as a stack: back() is handed out next.
  const std::vector<int32_t>& free_slots() const { return free_; }
  // The tail slot of `page` (-1 when it has none); throws for a page out of range.
  int32_t slot_of(int page) const;
  // The page went back to the allocator: frees its tail slot, if it has one.
  void release_page(int page);

  // Commits a plan made by plan_kv_step against this state as it is now.
  void apply(const KVStepWrites& step);
  // Undoes the last apply(), e.g. when the step fails before any kernel ran.
  void undo(const KVStepWrites& step);

 private:
  std::vector<int32_t> slot_of_page_;
  std::vector<int32_t> free_;
  int num_slots_ = 0;
};

// Plans the step without changing `tails`. Throws sagellm::Error, changing nothing, when the
// batch is malformed (requests not contiguous and in order, kv_len < q_len, too few pages, a page
// out of range, a page written by two requests), when the bookkeeping disagrees with the batch (a
// page with cached tokens but no tail slot, a page with a tail slot but no cached tokens), or when
// there are not enough free tail slots.
KVStepWrites plan_kv_step(const AttentionBatch& batch, int page_size, const KVTailSlots& tails);

}  // namespace sagellm
