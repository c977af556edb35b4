// Weight sources: seeded dummy weights (shared by the CPU and GPU paths) and checkpoints.
#include "model/weight_source.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/fixtures.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace sagellm {
namespace {

io::ModelConfig small_config() {
  io::ModelConfig c = io::load_model_config(testing::model_dir("stories260K"));
  return c;
}

TEST(DummyWeights, SeededBf16ValuesWithTheFanInScale) {
  const io::ModelConfig c = small_config();
  auto a = dummy_weights(c, 3);
  auto b = dummy_weights(c, 3);
  auto other = dummy_weights(c, 4);
  const std::vector<int64_t> shape{c.intermediate_size, c.hidden_size};
  const std::string name = "model.layers.1.mlp.gate_proj.weight";
  const std::vector<float> x = a->load(name, shape);
  EXPECT_EQ(x, b->load(name, shape));
  EXPECT_NE(x, other->load(name, shape));
  EXPECT_NE(x, a->load("model.layers.1.mlp.up_proj.weight", shape));
  double sum = 0, sq = 0;
  for (float v : x) {
    EXPECT_EQ(v, round_to_bf16(v));  // the GPU holds exactly these values
    sum += v;
    sq += static_cast<double>(v) * v;
  }
  const double n = static_cast<double>(x.size());
  const double want_std = 1.0 / std::sqrt(static_cast<double>(c.hidden_size));
  EXPECT_NEAR(sum / n, 0.0, 0.1 * want_std);
  EXPECT_NEAR(std::sqrt(sq / n), want_std, 0.05 * want_std);
  for (float v : a->load("model.norm.weight", std::vector<int64_t>{c.hidden_size})) {
    EXPECT_EQ(v, 1.0f);
  }
}

TEST(DummyWeights, UnitValuesAreUniformWithUnitVariance) {
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double v = dummy_unit_value(11, "t", static_cast<uint64_t>(i));
    ASSERT_LT(std::fabs(v), 1.7321);
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.01);
}

TEST(DummyWeights, TiedEmbeddingsHaveNoLmHead) {
  io::ModelConfig c = small_config();
  c.tie_word_embeddings = true;
  EXPECT_FALSE(dummy_weights(c, 0)->contains("lm_head.weight"));
  c.tie_word_embeddings = false;
  EXPECT_TRUE(dummy_weights(c, 0)->contains("lm_head.weight"));
}

TEST(CheckpointWeights, SameTensorsAsTheStoreAndShapeChecked) {
  const auto dir = testing::model_dir("stories260K");
  auto src = checkpoint_weights(dir);
  io::WeightStore store(dir);
  const std::vector<int64_t> shape{64};
  EXPECT_EQ(src->load("model.norm.weight", shape), store.load_f32("model.norm.weight", shape));
  EXPECT_THROW(src->load("model.norm.weight", std::vector<int64_t>{65}), Error);
  EXPECT_THROW(src->load("no.such.tensor", shape), Error);
}

}  // namespace
}  // namespace sagellm
