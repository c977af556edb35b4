// --tp-size on the CPU: ranks (threads) that each hold a shard of the model and meet in the
// HostGroup's collectives, against the one-rank engine on the same weights. The split, the
// weight slices and where the collectives sit are the GPU's (llama_cuda.cpp); only the arithmetic
// and the transport differ.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "core/error.h"
#include "engine/engine.h"
#include "model/llama.h"
#include "model/weight_source.h"
#include "parallel/host_group.h"
#include "parallel/rank_threads.h"

namespace sagellm {
namespace {

using testing::model_dir;

EngineOptions options(const std::string& model, int tp, const std::string& backend = "flash") {
  EngineOptions o;
  o.model_dir = model_dir(model);
  o.attention_backend = backend;
  o.tp_size = tp;
  o.kv_cache_tokens = 4096;
  return o;
}

std::vector<int32_t> prompt(int n, int vocab, int seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[size_t(i)] = 1 + (i * 37 + seed * 101) % (vocab - 1);
  return ids;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

double mean_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    s += std::abs(static_cast<double>(a[i]) - b[i]);
  }
  return a.empty() ? 0.0 : s / static_cast<double>(a.size());
}

GenerationRequest greedy(std::vector<int32_t> p, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(p);
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

// Logits of every position and greedy continuations of a batch equal the one-rank engine's up to
// float32 summation order (the row-parallel sums are split over ranks). sage_attn rounds Q and K
// to 8 bits, where a last-bit difference of an input can move a value to the next code: its
// ranks' logits are held to a small fraction of its own error against flash instead.
void expect_same_as_one_rank(const std::string& model, int tp, const std::string& backend) {
  SCOPED_TRACE(model + " tp " + std::to_string(tp) + " " + backend);
  Engine one(options(model, 1, backend));
  Engine many(options(model, tp, backend));
  EXPECT_EQ(many.memory().tp_size, tp);
  EXPECT_EQ(many.kv_cache_dtype(), one.kv_cache_dtype());
  const int vocab = one.config().vocab_size;
  const std::vector<int32_t> ids = prompt(200, vocab, 1);
  const std::vector<float> a = one.score(ids);
  const std::vector<float> b = many.score(ids);
  if (backend == "flash") {
    const double scale = std::abs(*std::max_element(
        a.begin(), a.end(), [](float x, float y) { return std::abs(x) < std::abs(y); }));
    EXPECT_LT(max_abs_diff(a, b), 2e-4 * std::max(1.0, scale));
  } else {
    Engine exact(options(model, 1, "flash"));
    const std::vector<float> f = exact.score(ids);
    EXPECT_LT(max_abs_diff(a, b), 0.1 * max_abs_diff(a, f));
    EXPECT_LT(mean_abs_diff(a, b), 0.05 * mean_abs_diff(a, f));
  }
  std::vector<GenerationRequest> batch;
  for (int s = 0; s < 5; ++s) batch.push_back(greedy(prompt(20 + 30 * s, vocab, s + 2), 24));
  const auto ra = one.generate(batch);
  const auto rb = many.generate(batch);
  for (size_t i = 0; i < batch.size(); ++i) EXPECT_EQ(ra[i].tokens, rb[i].tokens) << i;
}

TEST(TensorParallel, Stories260KOnTwoAndFourRanksMatchesOneRank) {
  for (const std::string backend : {"flash", "sage_attn"}) {
    expect_same_as_one_rank("stories260K", 2, backend);
    expect_same_as_one_rank("stories260K", 4, backend);
  }
}

TEST(TensorParallel, UntiedLmHeadAndLlama3RopeOnTwoRanks) {
  expect_same_as_one_rank("llama31-tiny-random", 2, "flash");
}

TEST(TensorParallel, EightRanksShareKvHeadsOfStories260K) {
  // 8 query heads, 4 KV heads: each KV head is held by two ranks.
  expect_same_as_one_rank("stories260K", 8, "flash");
}

TEST(TensorParallel, AGroupOfOneTakesTheShardedPathAndMatchesThePlainModel) {
  const auto weights = checkpoint_weights(model_dir("stories260K"));
  const LlamaModel plain = LlamaModel::from_weights(*weights);
  LlamaModel grouped = LlamaModel::from_weights(*weights, tp_shard(weights->config(), 0, 1));
  HostGroup group(1);
  grouped.set_group(&group);
  const auto backend = make_attention_backend("flash", {});
  KVCacheShape s;
  s.num_layers = plain.config().num_layers;
  s.num_kv_heads = plain.config().num_kv_heads;
  s.head_dim = plain.config().head_dim;
  s.page_size = 16;
  s.num_pages = 8;
  PagedKVCache ca(s, KVCacheDType::kFloat), cb(s, KVCacheDType::kFloat);
  ForwardBatch b;
  b.tokens = prompt(40, plain.config().vocab_size, 3);
  b.logits_mode = LogitsMode::kAll;
  b.attention.seqs.push_back(AttentionSeq{0, 40, 40, {0, 1, 2}});
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(ca.allocate(), i);
    ASSERT_EQ(cb.allocate(), i);
  }
  const std::vector<float> x = plain.forward(b, ca, *backend);
  const std::vector<float> y = grouped.forward(b, cb, *backend);
  EXPECT_LT(max_abs_diff(x, y), 1e-4);
  // Observing activations needs the whole model in one place.
  EXPECT_THROW(grouped.forward(b, cb, *backend, [](const LayerActivations&) {}), Error);
}

TEST(TensorParallel, UnsupportedSplitsAreOneClearError) {
  try {
    Engine e(options("stories260K", 3));
    ADD_FAILURE() << "--tp-size 3 accepted for 8 heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--tp-size 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Engine(options("stories260K", 16)), Error);  // more ranks than heads
  EXPECT_THROW(Engine(options("stories260K", 0)), Error);
}

TEST(TensorParallel, AMalformedStepFailsOnEveryRankAndTheEngineGoesOn) {
  Engine e(options("stories260K", 2));
  const std::optional<int> page = e.allocate_page();
  ASSERT_TRUE(page.has_value());
  ForwardBatch bad;
  bad.tokens = {1, 100000};  // outside the vocabulary
  bad.attention.seqs.push_back(AttentionSeq{0, 2, 2, {*page}});
  EXPECT_THROW(e.forward(bad), Error);
  e.release_page(*page);
  const auto out = e.generate({greedy(prompt(10, e.config().vocab_size, 4), 8)});
  EXPECT_EQ(out[0].tokens.size(), 8u);
}

TEST(TensorParallel, DummyWeightsOfTheSameShapeSplitAsACheckpoint) {
  EngineOptions o1 = options("llama31-tiny-random", 1);
  o1.load_format = "dummy";
  EngineOptions o2 = o1;
  o2.tp_size = 2;
  Engine one(o1), two(o2);
  const std::vector<int32_t> ids = prompt(64, one.config().vocab_size, 5);
  EXPECT_LT(max_abs_diff(one.score(ids), two.score(ids)), 1e-3);
  // Only the norms are held by every rank.
  EXPECT_GT(two.memory().weight_bytes, one.memory().weight_bytes);
  EXPECT_LT(two.memory().weight_bytes, one.memory().weight_bytes * 101 / 100);
}

}  // namespace
}  // namespace sagellm
