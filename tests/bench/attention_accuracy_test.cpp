// The fp64 reference attention and accuracy metrics that bench-attention reports (eval/).
#include "eval/attention_accuracy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <tuple>

#include "core/error.h"

namespace sagellm::eval {
namespace {

using Rows = std::vector<AttentionRow>;

TEST(ReferenceAttention, SelectsAllRowsOrADistinctSortedSample) {
  std::vector<float> none;
  const std::vector<ReferenceRequest> reqs = {{0, 3, 5, none, none}, {3, 4, 4, none, none}};
  const std::vector<AttentionRow> all = select_attention_rows(reqs, 2, 0, 1);
  ASSERT_EQ(all.size(), 14u);  // (3 + 4) tokens x 2 heads
  EXPECT_EQ(std::make_tuple(all[0].request, all[0].token, all[0].head), std::make_tuple(0, 0, 0));
  EXPECT_EQ(std::make_tuple(all[13].request, all[13].token, all[13].head),
            std::make_tuple(1, 3, 1));
  EXPECT_EQ(select_attention_rows(reqs, 2, 14, 1).size(), 14u);

  const std::vector<AttentionRow> some = select_attention_rows(reqs, 2, 5, 42);
  ASSERT_EQ(some.size(), 5u);
  std::set<std::tuple<int, int, int>> seen;
  for (const AttentionRow& r : some) {
    ASSERT_TRUE(r.request == 0 || r.request == 1);
    EXPECT_LT(r.token, reqs[static_cast<size_t>(r.request)].q_len);
    EXPECT_LT(r.head, 2);
    const auto key = std::make_tuple(r.request, r.token, r.head);
    if (!seen.empty()) EXPECT_LT(*seen.rbegin(), key) << "rows not sorted or repeated";
    seen.insert(key);
  }
  // The same seed gives the same sample; samples of other seeds differ somewhere.
  const std::vector<AttentionRow> again = select_attention_rows(reqs, 2, 5, 42);
  bool any_other = false;
  for (uint64_t seed = 1; seed < 8 && !any_other; ++seed) {
    const std::vector<AttentionRow> other = select_attention_rows(reqs, 2, 5, seed);
    for (size_t i = 0; i < other.size(); ++i) {
      any_other |= std::tie(other[i].request, other[i].token, other[i].head) !=
                   std::tie(some[i].request, some[i].token, some[i].head);
    }
  }
  for (size_t i = 0; i < some.size(); ++i) {
    EXPECT_EQ(std::tie(again[i].request, again[i].token, again[i].head),
              std::tie(some[i].request, some[i].token, some[i].head));
  }
  EXPECT_TRUE(any_other);
}

// Two KV heads of dim 2, three keys; query heads 0,1 read KV head 0, heads 2,3 KV head 1.
TEST(ReferenceAttention, ReferenceFollowsTheMaskAndGqaByHand) {
  const AttentionShape shape{4, 2, 2, 1.0f};
  // Keys: KV head 0 has k = (1,0), (0,1), (1,1); KV head 1 all zero (uniform softmax).
  const std::vector<float> k = {1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0};
  const std::vector<float> v = {1, 2, 10, 20, 3, 4, 30, 40, 5, 6, 50, 60};
  // Two new tokens (the last two of three keys), q = (2, 0) for every head.
  std::vector<float> q(2 * 4 * 2, 0.0f);
  for (size_t i = 0; i < q.size(); i += 2) q[i] = 2.0f;
  const std::vector<ReferenceRequest> reqs = {{0, 2, 3, k, v}};
  const std::vector<AttentionRow> rows = {{0, 0, 1}, {0, 0, 3}, {0, 1, 0}};
  const std::vector<double> causal = reference_attention(shape, true, q, reqs, rows);
  ASSERT_EQ(causal.size(), 6u);
  // Token 0 (position 1) sees keys 0 and 1: scores 2 and 0.
  const double w0 = std::exp(2.0) / (std::exp(2.0) + 1.0), w1 = 1.0 - w0;
  EXPECT_NEAR(causal[0], w0 * 1 + w1 * 3, 1e-12);
  EXPECT_NEAR(causal[1], w0 * 2 + w1 * 4, 1e-12);
  // KV head 1 has zero keys: the mean of the visible values.
  EXPECT_NEAR(causal[2], (10.0 + 30.0) / 2, 1e-12);
  EXPECT_NEAR(causal[3], (20.0 + 40.0) / 2, 1e-12);
  // Token 1 sees all three keys: scores 2, 0, 2.
  const double e2 = std::exp(2.0), z = 2 * e2 + 1;
  EXPECT_NEAR(causal[4], (e2 * 1 + 3 + e2 * 5) / z, 1e-12);
  EXPECT_NEAR(causal[5], (e2 * 2 + 4 + e2 * 6) / z, 1e-12);

  const std::vector<double> full = reference_attention(shape, false, q, reqs, rows);
  EXPECT_NEAR(full[2], 30.0, 1e-12);  // token 0 now sees all three keys
  EXPECT_NEAR(full[0], (e2 * 1 + 3 + e2 * 5) / z, 1e-12);
}

TEST(ReferenceAttention, GatherPicksTheRowsOfAnOutput) {
  const AttentionShape shape{2, 1, 3, 0.5f};
  std::vector<float> out(4 * 2 * 3);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(i);
  std::vector<float> kv(4 * 3);
  const std::vector<ReferenceRequest> reqs = {{0, 1, 1, kv, kv}, {1, 3, 4, kv, kv}};
  const std::vector<float> g = gather_attention_rows(shape, out, reqs, Rows{{1, 2, 1}, {0, 0, 0}});
  // Request 1, token 2 is row 3 of the batch; head 1 starts at 3 * 6 + 3.
  EXPECT_EQ(g, (std::vector<float>{21, 22, 23, 0, 1, 2}));
}

TEST(ReferenceAttention, MetricsOfKnownDifferences) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<double> ref(1000);
  for (double& x : ref) x = normal(rng);
  std::vector<float> same(ref.begin(), ref.end());
  AccuracyMetrics m = compare_to_reference(same, ref);
  EXPECT_GT(m.cosine, 1.0 - 1e-12);
  EXPECT_LT(m.rel_l1, 1e-7);  // float rounding only
  EXPECT_EQ(m.values, 1000);

  std::vector<float> scaled(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) scaled[i] = static_cast<float>(ref[i] * 1.01);
  m = compare_to_reference(scaled, ref);
  EXPECT_NEAR(m.rel_l1, 0.01, 1e-6);
  EXPECT_NEAR(m.cosine, 1.0, 1e-9);  // a scale does not change the direction

  std::vector<float> shifted(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) shifted[i] = static_cast<float>(ref[i] + 0.5);
  m = compare_to_reference(shifted, ref);
  EXPECT_NEAR(m.rmse, 0.5, 1e-6);
  EXPECT_NEAR(m.max_abs_error, 0.5, 1e-6);
  EXPECT_LT(m.cosine, 0.99);

  shifted[7] = std::nanf("");
  m = compare_to_reference(shifted, ref);
  EXPECT_EQ(m.non_finite, 1);
  EXPECT_TRUE(std::isinf(m.max_abs_error));
}

TEST(ReferenceAttention, BadInputsAreErrors) {
  const std::vector<double> ref(3, 1.0);
  const std::vector<float> out(2, 1.0f);
  EXPECT_THROW(compare_to_reference(out, ref), Error);
  const AttentionShape shape{2, 1, 2, 1.0f};
  const std::vector<float> q(2 * 2 * 2, 1.0f), kv(2 * 2, 1.0f);
  const std::vector<ReferenceRequest> reqs = {{0, 2, 2, kv, kv}};
  EXPECT_THROW(reference_attention(shape, true, q, reqs, Rows{{0, 2, 0}}), Error);  // no token 2
  EXPECT_THROW(reference_attention(shape, true, q, reqs, Rows{{0, 0, 2}}), Error);  // no head 2
  EXPECT_THROW(reference_attention(shape, true, q, reqs, Rows{{1, 0, 0}}), Error);  // no request 1
  const std::vector<ReferenceRequest> short_kv = {{0, 2, 3, kv, kv}};  // 3 keys, 2 given
  EXPECT_THROW(reference_attention(shape, true, q, short_kv, Rows{{0, 0, 0}}), Error);
  const AttentionShape bad_gqa{3, 2, 2, 1.0f};
  EXPECT_THROW(reference_attention(bad_gqa, true, q, reqs, {}), Error);
}

}  // namespace
}  // namespace sagellm::eval
