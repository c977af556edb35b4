// Step planning of the GPU 8-bit KV cache (kv_cache_step.h): each plan is executed on a model of
// the GPU pools (seal jobs first, then the tail write, as the forward pass enqueues them) that
// stores token ids instead of K/V, and every cached token of every request must then read back
// through the bookkeeping after the step, from the 8-bit pool for full pages and from the tail
// pool for the last, partly filled one.
#include "kv_cache/kv_cache_step.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"

namespace sagellm {
namespace {

int64_t token_id(int request, int pos) { return (int64_t{request} << 24) | pos; }

struct SimRequest {
  int uid = 0;
  int len = 0;     // tokens cached
  int target = 0;  // finishes at this many tokens
  int prompt = 0;  // prefilled in chunks up to here, decoded one token per step after
  std::vector<int> pages;
};

// The GPU pools of one layer, holding token ids; -1 marks a slot never written.
class PoolModel {
 public:
  PoolModel(int num_pages, int num_slots, int page_size)
      : page_size_(page_size),
        sealed_(static_cast<size_t>(num_pages) * page_size, -1),
        tail_(static_cast<size_t>(num_slots) * page_size, -1) {}

  // Runs a step the way the forward pass does: seal kernel, then the tail write.
  void run(const KVStepWrites& w, const std::vector<int64_t>& row_token,
           const std::vector<int>& row_pos) {
    for (const sage_cuda::SageQuantJob& j : w.seal_jobs) {
      ASSERT_EQ(j.n_old + j.n_new, page_size_);
      ASSERT_GT(j.n_new, 0);
      ASSERT_EQ(j.src_page >= 0, j.n_old > 0);
      for (int t = 0; t < j.n_old; ++t) sealed(j.dst, t) = tail(j.src_page, t);
      for (int t = 0; t < j.n_new; ++t) {
        const int row = j.first_new_row + t;
        ASSERT_LT(row, static_cast<int>(row_token.size()));
        sealed(j.dst, j.n_old + t) = row_token[static_cast<size_t>(row)];
      }
    }
    for (size_t r = 0; r < row_token.size(); ++r) {
      if (w.tail_slot[r] >= 0) tail(w.tail_slot[r], row_pos[r] % page_size_) = row_token[r];
    }
  }

  int64_t read(const KVTailSlots& tails, int page, int pos_in_page) {
    const int32_t slot = tails.slot_of(page);
    return slot >= 0 ? tail(slot, pos_in_page) : sealed(page, pos_in_page);
  }

 private:
  int64_t& sealed(int page, int t) {
    return sealed_[static_cast<size_t>(page) * page_size_ + static_cast<size_t>(t)];
  }
  int64_t& tail(int slot, int t) {
    return tail_[static_cast<size_t>(slot) * page_size_ + static_cast<size_t>(t)];
  }
  int page_size_;
  std::vector<int64_t> sealed_, tail_;
};

// Every token of every request reads back; full pages have no tail, the partial one has one;
// tail slots in use are distinct and, with the free ones, are every slot exactly once.
void check_state(const std::vector<SimRequest>& reqs, const KVTailSlots& tails, PoolModel& pool,
                 int page_size) {
  std::vector<int32_t> slots = tails.free_slots();
  for (const SimRequest& r : reqs) {
    for (int pos = 0; pos < r.len; ++pos) {
      const int page = r.pages[static_cast<size_t>(pos / page_size)];
      ASSERT_EQ(pool.read(tails, page, pos % page_size), token_id(r.uid, pos))
          << "request " << r.uid << " position " << pos;
    }
    for (int j = 0; j * page_size < r.len; ++j) {
      const int32_t slot = tails.slot_of(r.pages[static_cast<size_t>(j)]);
      const bool full = (j + 1) * page_size <= r.len;
      ASSERT_EQ(slot < 0, full) << "request " << r.uid << " page index " << j;
      if (slot >= 0) slots.push_back(slot);
    }
  }
  std::sort(slots.begin(), slots.end());
  ASSERT_EQ(static_cast<int>(slots.size()), tails.num_slots());
  for (int i = 0; i < tails.num_slots(); ++i) ASSERT_EQ(slots[static_cast<size_t>(i)], i);
}

// Pages that fill in this step, in row order, computed from lengths alone.
std::vector<int> expected_seals(const AttentionBatch& b, int page_size) {
  std::vector<int> pages;
  for (const AttentionSeq& s : b.seqs) {
    const int old_len = s.kv_len - s.q_len;
    for (int j = 0; (j + 1) * page_size <= s.kv_len; ++j) {
      if ((j + 1) * page_size > old_len) pages.push_back(s.pages[static_cast<size_t>(j)]);
    }
  }
  return pages;
}

// Random continuous batching: prefill in chunks that cross page boundaries, decode, requests
// joining and finishing (their pages released), pages handed out in random order. Tail slots: one
// per request that can be running, which must always suffice.
void run_random(uint32_t seed, int page_size, int max_requests, int num_pages, int steps) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  KVTailSlots tails(num_pages, max_requests);
  PoolModel pool(num_pages, max_requests, page_size);
  std::vector<int> free_pages(static_cast<size_t>(num_pages));
  for (int i = 0; i < num_pages; ++i) free_pages[static_cast<size_t>(i)] = i;
  std::shuffle(free_pages.begin(), free_pages.end(), rng);
  std::vector<SimRequest> reqs;
  int next_uid = 1;
  int seals = 0, reused_in_step = 0;

  for (int step = 0; step < steps; ++step) {
    while (static_cast<int>(reqs.size()) < max_requests && uniform(0, 2) > 0) {
      SimRequest r;
      r.uid = next_uid++;
      r.prompt = uniform(1, 5 * page_size);
      r.target = r.prompt + uniform(0, 3 * page_size);
      reqs.push_back(r);
    }
    AttentionBatch batch;
    std::vector<int64_t> row_token;
    std::vector<int> row_pos;
    std::vector<size_t> in_batch;
    for (size_t i = 0; i < reqs.size(); ++i) {
      SimRequest& r = reqs[i];
      if (uniform(0, 4) == 0) continue;  // not scheduled this step
      int q = r.len < r.prompt ? std::min(uniform(1, 3 * page_size), r.prompt - r.len) : 1;
      const int need = (r.len + q + page_size - 1) / page_size - static_cast<int>(r.pages.size());
      if (need > static_cast<int>(free_pages.size())) continue;
      for (int k = 0; k < need; ++k) {
        r.pages.push_back(free_pages.back());
        free_pages.pop_back();
      }
      AttentionSeq s;
      s.q_start = static_cast<int>(row_token.size());
      s.q_len = q;
      s.kv_len = r.len + q;
      s.pages = r.pages;
      for (int pos = r.len; pos < r.len + q; ++pos) {
        row_token.push_back(token_id(r.uid, pos));
        row_pos.push_back(pos);
      }
      batch.seqs.push_back(s);
      in_batch.push_back(i);
    }

    const KVStepWrites w = plan_kv_step(batch, page_size, tails);
    ASSERT_EQ(w.tail_slot.size(), row_token.size());
    std::vector<int> sealed_pages;
    for (const sage_cuda::SageQuantJob& j : w.seal_jobs) sealed_pages.push_back(j.dst);
    ASSERT_EQ(sealed_pages, expected_seals(batch, page_size));
    ASSERT_LE(w.seal_jobs.size(), row_token.size());  // the forward pass's grid bound
    for (const sage_cuda::SageQuantJob& j : w.seal_jobs) {
      if (j.src_page < 0) continue;
      for (int32_t t : w.tail_slot) reused_in_step += t == j.src_page ? 1 : 0;
    }
    seals += static_cast<int>(w.seal_jobs.size());
    pool.run(w, row_token, row_pos);
    tails.apply(w);
    for (size_t k = 0; k < in_batch.size(); ++k) reqs[in_batch[k]].len = batch.seqs[k].kv_len;
    check_state(reqs, tails, pool, page_size);

    for (auto it = reqs.begin(); it != reqs.end();) {
      if (it->len < it->target) {
        ++it;
        continue;
      }
      for (int p : it->pages) {
        tails.release_page(p);
        free_pages.insert(free_pages.begin() + uniform(0, static_cast<int>(free_pages.size())), p);
      }
      it = reqs.erase(it);
    }
  }
  EXPECT_GT(seals, 10);                             // the scenario exercised sealing
  if (page_size > 1) EXPECT_GT(reused_in_step, 0);  // and a slot reused within a step
}

TEST(KVCacheStep, RandomBatchesMatchTokenByTokenContents) {
  run_random(1, 64, 6, 64, 400);
  run_random(2, 16, 8, 96, 400);
  run_random(3, 5, 3, 40, 300);
  run_random(4, 1, 4, 64, 200);
}

AttentionSeq seq(int q_start, int q_len, int kv_len, std::vector<int> pages) {
  AttentionSeq s;
  s.q_start = q_start;
  s.q_len = q_len;
  s.kv_len = kv_len;
  s.pages = std::move(pages);
  return s;
}

TEST(KVCacheStep, ChunkedPrefillAcrossPagesThenDecodeFillingAPage) {
  KVTailSlots tails(10, 4);
  AttentionBatch b;
  b.seqs = {seq(0, 30, 30, {7, 3, 5})};
  KVStepWrites w = plan_kv_step(b, 64, tails);
  EXPECT_TRUE(w.seal_jobs.empty());
  EXPECT_EQ(w.tail_slot, std::vector<int32_t>(30, 0));
  tails.apply(w);
  EXPECT_EQ(tails.slot_of(7), 0);

  // 100 more tokens: page 7 seals from its tail and 34 rows, page 3 from 64 rows alone, page 5
  // keeps 2 tokens in the slot page 7 just gave up.
  b.seqs = {seq(0, 100, 130, {7, 3, 5})};
  w = plan_kv_step(b, 64, tails);
  ASSERT_EQ(w.seal_jobs.size(), 2u);
  EXPECT_EQ(w.seal_jobs[0].src_page, 0);
  EXPECT_EQ(w.seal_jobs[0].n_old, 30);
  EXPECT_EQ(w.seal_jobs[0].first_new_row, 0);
  EXPECT_EQ(w.seal_jobs[0].n_new, 34);
  EXPECT_EQ(w.seal_jobs[0].dst, 7);
  EXPECT_EQ(w.seal_jobs[1].src_page, -1);
  EXPECT_EQ(w.seal_jobs[1].n_old, 0);
  EXPECT_EQ(w.seal_jobs[1].first_new_row, 34);
  EXPECT_EQ(w.seal_jobs[1].n_new, 64);
  EXPECT_EQ(w.seal_jobs[1].dst, 3);
  std::vector<int32_t> want(100, -1);
  want[98] = want[99] = 0;
  EXPECT_EQ(w.tail_slot, want);
  tails.apply(w);
  EXPECT_EQ(tails.slot_of(7), -1);
  EXPECT_EQ(tails.slot_of(3), -1);
  EXPECT_EQ(tails.slot_of(5), 0);
  EXPECT_EQ(tails.num_free(), 3);

  // Decode up to 191 tokens, then the token that fills page 5 exactly.
  for (int len = 131; len <= 191; ++len) {
    b.seqs = {seq(0, 1, len, {7, 3, 5})};
    w = plan_kv_step(b, 64, tails);
    EXPECT_TRUE(w.seal_jobs.empty());
    EXPECT_EQ(w.tail_slot, std::vector<int32_t>{0});
    tails.apply(w);
  }
  b.seqs = {seq(0, 1, 192, {7, 3, 5})};
  w = plan_kv_step(b, 64, tails);
  ASSERT_EQ(w.seal_jobs.size(), 1u);
  EXPECT_EQ(w.seal_jobs[0].src_page, 0);
  EXPECT_EQ(w.seal_jobs[0].n_old, 63);
  EXPECT_EQ(w.seal_jobs[0].first_new_row, 0);
  EXPECT_EQ(w.seal_jobs[0].n_new, 1);
  EXPECT_EQ(w.seal_jobs[0].dst, 5);
  EXPECT_EQ(w.tail_slot, std::vector<int32_t>{-1});
  tails.apply(w);
  EXPECT_EQ(tails.slot_of(5), -1);
  EXPECT_EQ(tails.num_free(), 4);
}

TEST(KVCacheStep, SeveralRequestsWithASharedSealedPrefix) {
  // Request 0 owns pages 0 (full) and 1 (20 tokens); request 1 reuses page 0 as its cached prefix
  // and prefills 70 tokens after it into pages 2 and 4.
  KVTailSlots tails(6, 3);
  AttentionBatch b;
  b.seqs = {seq(0, 84, 84, {0, 1})};
  KVStepWrites w = plan_kv_step(b, 64, tails);
  tails.apply(w);
  ASSERT_EQ(tails.slot_of(1), 0);
  b.seqs = {seq(0, 1, 85, {0, 1}), seq(1, 70, 134, {0, 2, 4})};
  w = plan_kv_step(b, 64, tails);
  ASSERT_EQ(w.seal_jobs.size(), 1u);
  EXPECT_EQ(w.seal_jobs[0].dst, 2);
  EXPECT_EQ(w.seal_jobs[0].first_new_row, 1);
  EXPECT_EQ(w.seal_jobs[0].n_new, 64);
  std::vector<int32_t> want(71, -1);
  want[0] = 0;
  for (int r = 65; r < 71; ++r) want[static_cast<size_t>(r)] = 1;
  EXPECT_EQ(w.tail_slot, want);
}

TEST(KVCacheStep, RunningOutOfTailSlotsIsAnErrorThatChangesNothing) {
  KVTailSlots tails(8, 2);
  AttentionBatch b;
  b.seqs = {seq(0, 10, 10, {0}), seq(10, 10, 10, {1}), seq(20, 10, 10, {2})};
  try {
    (void)plan_kv_step(b, 64, tails);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tail slots"), std::string::npos) << e.what();
  }
  EXPECT_EQ(tails.num_free(), 2);
  for (int p = 0; p < 8; ++p) EXPECT_EQ(tails.slot_of(p), -1);

  // A slot given up by a seal is available to the same step.
  KVTailSlots one(8, 1);
  b.seqs = {seq(0, 63, 63, {0})};
  one.apply(plan_kv_step(b, 64, one));
  b.seqs = {seq(0, 1, 64, {0}), seq(1, 5, 5, {1})};
  const KVStepWrites w = plan_kv_step(b, 64, one);
  EXPECT_EQ(w.tail_slot, (std::vector<int32_t>{-1, 0, 0, 0, 0, 0}));
  one.apply(w);
  EXPECT_EQ(one.slot_of(0), -1);
  EXPECT_EQ(one.slot_of(1), 0);
  b.seqs = {seq(0, 1, 6, {1}), seq(1, 1, 1, {2})};
  EXPECT_THROW((void)plan_kv_step(b, 64, one), Error);
}

TEST(KVCacheStep, InconsistentBatchesAreErrors) {
  KVTailSlots tails(8, 4);
  AttentionBatch b;
  b.seqs = {seq(0, 1, 10, {0})};  // 9 tokens cached, but page 0 has no tail
  EXPECT_THROW((void)plan_kv_step(b, 64, tails), Error);
  b.seqs = {seq(0, 3, 3, {0}), seq(3, 2, 2, {0})};  // one page, two requests
  EXPECT_THROW((void)plan_kv_step(b, 64, tails), Error);
  b.seqs = {seq(0, 3, 3, {8})};  // page out of range
  EXPECT_THROW((void)plan_kv_step(b, 64, tails), Error);
  b.seqs = {seq(0, 3, 70, {1})};  // too few pages
  EXPECT_THROW((void)plan_kv_step(b, 64, tails), Error);
  b.seqs = {seq(1, 3, 3, {1})};  // rows not contiguous
  EXPECT_THROW((void)plan_kv_step(b, 64, tails), Error);
  b.seqs = {seq(0, 3, 3, {1})};
  tails.apply(plan_kv_step(b, 64, tails));
  b.seqs = {seq(0, 3, 3, {1})};  // page 1 written anew while it still has a tail
  EXPECT_THROW((void)plan_kv_step(b, 64, tails), Error);
  tails.release_page(1);
  EXPECT_EQ(tails.num_free(), 4);
  EXPECT_NO_THROW((void)plan_kv_step(b, 64, tails));
}

TEST(KVCacheStep, UndoRestoresTheState) {
  KVTailSlots tails(16, 5);
  AttentionBatch b;
  b.seqs = {seq(0, 60, 60, {3}), seq(60, 10, 10, {4})};
  tails.apply(plan_kv_step(b, 64, tails));
  const std::vector<int32_t> slots = tails.slot_of_page(), free = tails.free_slots();
  b.seqs = {seq(0, 10, 70, {3, 9}), seq(10, 100, 110, {4, 5}), seq(110, 7, 7, {6})};
  const KVStepWrites w = plan_kv_step(b, 64, tails);
  tails.apply(w);
  EXPECT_NE(tails.slot_of_page(), slots);
  tails.undo(w);
  EXPECT_EQ(tails.slot_of_page(), slots);
  EXPECT_EQ(tails.free_slots(), free);
}

}  // namespace
}  // namespace sagellm
