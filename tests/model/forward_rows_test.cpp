// The host bookkeeping of a forward step, shared by the CPU and CUDA forward passes.
#include "model/forward_rows.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace sagellm {
namespace {

io::ModelConfig config() {
  io::ModelConfig c;
  c.vocab_size = 100;
  c.max_position_embeddings = 1000;
  return c;
}

TEST(ForwardRows, MapsTokensToPositionsPagesAndSlots) {
  ForwardBatch b;
  b.tokens = {1, 2, 3, 4, 5};
  // Request 0: 3 new tokens after 15 cached (positions 15..17); request 1: one decode token at 4.
  b.attention.seqs.push_back(AttentionSeq{0, 3, 18, {7, 2}});
  b.attention.seqs.push_back(AttentionSeq{3, 2, 6, {5}});
  const ForwardRows r = plan_forward_rows(b, config(), 16, 8);
  EXPECT_EQ(r.position, (std::vector<int32_t>{15, 16, 17, 4, 5}));
  EXPECT_EQ(r.page, (std::vector<int32_t>{7, 2, 2, 5, 5}));
  EXPECT_EQ(r.slot, (std::vector<int32_t>{15, 0, 1, 4, 5}));
  EXPECT_EQ(r.logits_rows, (std::vector<int32_t>{2, 4}));
  b.logits_mode = LogitsMode::kAll;
  EXPECT_EQ(plan_forward_rows(b, config(), 16, 8).logits_rows,
            (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(ForwardRows, RejectsMalformedBatches) {
  auto expect_error = [](ForwardBatch b, const char* what) {
    try {
      plan_forward_rows(b, config(), 16, 8);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error&) {
    }
  };
  ForwardBatch ok;
  ok.tokens = {1, 2};
  ok.attention.seqs.push_back(AttentionSeq{0, 2, 2, {0}});
  EXPECT_NO_THROW(plan_forward_rows(ok, config(), 16, 8));

  ForwardBatch b = ok;
  b.tokens[1] = 100;
  expect_error(b, "token outside the vocabulary");
  b = ok;
  b.attention.seqs[0].pages = {8};
  expect_error(b, "page outside the cache");
  b = ok;
  b.attention.seqs[0].kv_len = 17;
  expect_error(b, "too few pages");
  b = ok;
  b.attention.seqs[0].kv_len = 1;
  expect_error(b, "kv_len < q_len");
  b = ok;
  b.attention.seqs[0].q_start = 1;
  expect_error(b, "rows not contiguous");
  b = ok;
  b.tokens.push_back(3);
  expect_error(b, "more tokens than the requests cover");
  b = ok;
  b.attention.seqs.push_back(AttentionSeq{2, 0, 0, {}});
  expect_error(b, "last-token logits of a request without new tokens");
}

}  // namespace
}  // namespace sagellm
