#include "kv_cache/kv_cache_step.h"

#include <algorithm>

#include "core/error.h"

namespace sagellm {

KVTailSlots::KVTailSlots(int num_pages, int num_slots) : num_slots_(num_slots) {
  SAGELLM_CHECK(num_pages > 0 && num_slots > 0,
                "8-bit KV cache: {} pages and {} tail slots (both must be positive)", num_pages,
                num_slots);
  slot_of_page_.assign(static_cast<size_t>(num_pages), -1);
  // Descending, so that the lowest free slot is handed out first (reproducible layouts).
  free_.resize(static_cast<size_t>(num_slots));
  for (int i = 0; i < num_slots; ++i) free_[static_cast<size_t>(i)] = num_slots - 1 - i;
}

int32_t KVTailSlots::slot_of(int page) const {
  SAGELLM_CHECK(page >= 0 && page < num_pages(), "KV page {} is outside the cache (0..{})", page,
                num_pages() - 1);
  return slot_of_page_[static_cast<size_t>(page)];
}

void KVTailSlots::release_page(int page) {
  const int32_t slot = slot_of(page);
  if (slot < 0) return;
  free_.push_back(slot);
  slot_of_page_[static_cast<size_t>(page)] = -1;
}

void KVTailSlots::apply(const KVStepWrites& step) {
  for (const KVTailChange& c : step.changes) {
    int32_t& slot = slot_of_page_[static_cast<size_t>(c.page)];
    SAGELLM_CHECK(slot == c.before, "8-bit KV cache: step plan does not match the tail slots");
    if (c.after < 0) {
      free_.push_back(c.before);
    } else {
      SAGELLM_CHECK(!free_.empty() && free_.back() == c.after,
                    "8-bit KV cache: step plan does not match the free tail slots");
      free_.pop_back();
    }
    slot = c.after;
  }
}

void KVTailSlots::undo(const KVStepWrites& step) {
  for (auto it = step.changes.rbegin(); it != step.changes.rend(); ++it) {
    int32_t& slot = slot_of_page_[static_cast<size_t>(it->page)];
    SAGELLM_CHECK(slot == it->after, "8-bit KV cache: undoing a step that was not applied");
    if (it->after < 0) {
      SAGELLM_CHECK(!free_.empty() && free_.back() == it->before,
                    "8-bit KV cache: undoing a step that was not the last one applied");
      free_.pop_back();
    } else {
      free_.push_back(it->after);
    }
    slot = it->before;
  }
}

KVStepWrites plan_kv_step(const AttentionBatch& batch, int page_size, const KVTailSlots& tails) {
  SAGELLM_CHECK(page_size > 0, "KV page size {} must be positive", page_size);
  const int num_pages = tails.num_pages();
  int rows = 0;
  for (const AttentionSeq& s : batch.seqs) {
    SAGELLM_CHECK(s.q_start == rows && s.q_len >= 0 && s.kv_len >= s.q_len,
                  "malformed forward batch");
    SAGELLM_CHECK(s.kv_len <= static_cast<int64_t>(s.pages.size()) * page_size,
                  "request of {} tokens has only {} KV pages", s.kv_len, s.pages.size());
    rows += s.q_len;
  }

  KVStepWrites w;
  w.tail_slot.assign(static_cast<size_t>(rows), -1);
  std::vector<int32_t> touched;         // pages this step writes, to refuse one written twice
  std::vector<KVTailChange> new_tails;  // `after` filled in once the frees are known
  std::vector<std::pair<int, int>> tail_rows;  // [first row, end row) of each new tail
  for (const AttentionSeq& s : batch.seqs) {
    if (s.q_len == 0) continue;
    const int old_len = s.kv_len - s.q_len;
    for (int j = old_len / page_size; j * page_size < s.kv_len; ++j) {
      const int page = s.pages[static_cast<size_t>(j)];
      SAGELLM_CHECK(page >= 0 && page < num_pages, "KV page {} is outside the cache (0..{})", page,
                    num_pages - 1);
      touched.push_back(page);
      const int start = j * page_size;
      const int n_old = std::max(old_len - start, 0);
      const int n_new = std::min(s.kv_len - start, page_size) - n_old;
      const int first_row = s.q_start + (start + n_old - old_len);
      const int32_t cur = tails.slot_of_page()[static_cast<size_t>(page)];
      if (n_old > 0) {
        SAGELLM_CHECK(cur >= 0,
                      "8-bit KV cache: page {} holds {} tokens but has no bf16 tail (it was "
                      "sealed or never written)",
                      page, n_old);
      } else {
        SAGELLM_CHECK(cur < 0,
                      "8-bit KV cache: page {} still has tail slot {} but no cached tokens (it was "
                      "not released)",
                      page, cur);
      }
      if (n_old + n_new == page_size) {
        sage_cuda::SageQuantJob job;
        job.src_page = n_old > 0 ? cur : -1;
        job.n_old = n_old;
        job.first_new_row = first_row;
        job.n_new = n_new;
        job.dst = page;
        w.seal_jobs.push_back(job);
        if (cur >= 0) w.changes.push_back({page, cur, -1});
      } else if (n_old > 0) {
        std::fill_n(w.tail_slot.begin() + first_row, n_new, cur);
      } else {
        new_tails.push_back({page, -1, -1});
        tail_rows.emplace_back(first_row, first_row + n_new);
      }
    }
  }
  std::sort(touched.begin(), touched.end());
  const auto dup = std::adjacent_find(touched.begin(), touched.end());
  SAGELLM_CHECK(dup == touched.end(), "KV page {} is written twice in one step", *dup);

  // Slots freed by this step's seals are pushed onto the free stack before the new tails pop from
  // it (see the header for why a slot may be reused within the step).
  const std::vector<int32_t>& free_before = tails.free_slots();
  const size_t n_freed = w.changes.size();
  const size_t available = free_before.size() + n_freed;
  SAGELLM_CHECK(new_tails.size() <= available,
                "8-bit KV cache: this step needs {} more bf16 tail slots (pages left partly "
                "filled) but only {} of {} are free; a tail slot is needed per request whose last "
                "page is not full, so run fewer requests at once",
                new_tails.size(), available, tails.num_slots());
  for (size_t k = 0; k < new_tails.size(); ++k) {
    // The k-th pop from the stack free_before + freed (in order).
    const size_t top = available - 1 - k;
    const int32_t slot =
        top >= free_before.size() ? w.changes[top - free_before.size()].before : free_before[top];
    new_tails[k].after = slot;
    std::fill(w.tail_slot.begin() + tail_rows[k].first, w.tail_slot.begin() + tail_rows[k].second,
              slot);
  }
  w.changes.insert(w.changes.end(), new_tails.begin(), new_tails.end());
  return w;
}

}  // namespace sagellm
