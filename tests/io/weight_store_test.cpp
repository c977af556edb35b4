// WeightStore: single-file, sharded (index.json) and glob layouts, float32 conversion and the
// errors a user sees for a wrong model directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/fixtures.h"
#include "common/run_command.h"
#include "io/io_test_util.h"
#include "io/safetensors.h"

namespace sagellm::io {
namespace {

using ::sagellm::testing::error_of;
using ::sagellm::testing::model_dir;
using ::sagellm::testing::TempDir;
using ::sagellm::testing::write_bytes;
using ::testing::HasSubstr;

using Shape = std::vector<int64_t>;

TEST(WeightStore, LoadsStories260K) {
  WeightStore w(model_dir("stories260K"));
  EXPECT_EQ(w.names().size(), 47u);
  EXPECT_TRUE(w.contains("model.norm.weight"));
  EXPECT_FALSE(w.contains("lm_head.weight"));
  const std::vector<float> norm = w.load_f32("model.norm.weight", Shape{64});
  ASSERT_EQ(norm.size(), 64u);
  EXPECT_FLOAT_EQ(norm[0], 2.4583089351654053f);
  EXPECT_FLOAT_EQ(norm[1], 1.3673226833343506f);
  EXPECT_FLOAT_EQ(norm[63], 1.7077769041061401f);
  double sum = 0;
  for (float v : norm) sum += v;
  EXPECT_NEAR(sum, 115.952762, 1e-5);
  EXPECT_EQ(w.get("model.layers.0.mlp.down_proj.weight").shape, (Shape{64, 172}));
}

TEST(WeightStore, ConvertsBf16ToFloat) {
  WeightStore w(model_dir("passkey-4k"));
  EXPECT_EQ(w.names().size(), 39u);
  const std::vector<float> emb = w.load_f32("model.embed_tokens.weight", Shape{512, 384});
  ASSERT_EQ(emb.size(), 512u * 384);
  // bf16 values are exact in float32, so these compare exactly with Python's.
  EXPECT_EQ(emb[0], 0.0145263671875f);
  EXPECT_EQ(emb[1], 0.010009765625f);
  EXPECT_EQ(emb[2], 0.0107421875f);
  EXPECT_EQ(emb.back(), 0.0150146484375f);
  double sum = 0, abs_sum = 0;
  for (float v : emb) sum += v, abs_sum += std::fabs(v);
  EXPECT_NEAR(sum, 47.6263617, 1e-5);
  EXPECT_NEAR(abs_sum, 4813.66558, 1e-4);
}

TEST(WeightStore, ConvertsF16ToFloat) {
  TempDir dir;
  const std::vector<float> values = {
      0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.9604645e-08f, 0.333251953125f};
  std::vector<uint16_t> half;
  for (float v : values) half.push_back(float_to_fp16(v));
  write_safetensors(dir / "model.safetensors",
                    {{"h", DType::kF16, {7}, std::as_bytes(std::span(half))}});
  WeightStore w(dir.path());
  EXPECT_EQ(w.load_f32("h", Shape{7}), values);
}

TEST(WeightStore, MissingModelDirectory) {
  TempDir dir;
  const auto missing = dir / "no_such_model";
  EXPECT_THAT(error_of([&] { WeightStore w(missing); }),
              HasSubstr("model directory " + missing.string() + " does not exist"));
  write_bytes(dir / "file", "x");
  EXPECT_THAT(error_of([&] { WeightStore w(dir / "file"); }), HasSubstr("is not a directory"));
}

TEST(WeightStore, DirectoryWithoutWeights) {
  TempDir dir;
  write_bytes(dir / "config.json", "{}");
  const std::string e = error_of([&] { WeightStore w(dir.path()); });
  EXPECT_THAT(e, HasSubstr("no weights in model directory " + dir.path().string()));
  EXPECT_THAT(e, HasSubstr("model.safetensors.index.json"));
}

TEST(WeightStore, MissingTensor) {
  WeightStore w(model_dir("stories260K"));
  const std::string e = error_of([&] { w.get("lm_head.weight"); });
  EXPECT_THAT(e,
              HasSubstr("missing tensor lm_head.weight in " + model_dir("stories260K").string()));
  EXPECT_THAT(error_of([&] { w.load_f32("model.layers.9.mlp.up_proj.weight", Shape{1}); }),
              HasSubstr("missing tensor model.layers.9.mlp.up_proj.weight"));
}

TEST(WeightStore, WrongShapeListsBothShapes) {
  WeightStore w(model_dir("stories260K"));
  const std::string e = error_of([&] { w.load_f32("model.embed_tokens.weight", Shape{64, 512}); });
  EXPECT_THAT(e, HasSubstr("tensor model.embed_tokens.weight in " +
                           (model_dir("stories260K") / "model.safetensors").string()));
  EXPECT_THAT(e, HasSubstr("has shape [512, 64], expected [64, 512]"));
  EXPECT_THAT(error_of([&] {
                w.load_f32("model.norm.weight", Shape{64, 1});
              }),
              HasSubstr("has shape [64], expected [64, 1]"));
}

TEST(WeightStore, NonFloatDtypeCannotLoadAsFloat) {
  TempDir dir;
  const std::vector<int8_t> q = {1, -2, 3, 4};
  write_safetensors(dir / "model.safetensors",
                    {{"q", DType::kI8, {4}, std::as_bytes(std::span(q))}});
  WeightStore w(dir.path());
  EXPECT_EQ(w.get("q").dtype, DType::kI8);
  EXPECT_THAT(error_of([&] { w.load_f32("q", Shape{4}); }),
              HasSubstr("has dtype I8; only F32, F16 and BF16 can be loaded as float32"));
}

// Splits llama31-tiny-random into two shards plus an index, as save_pretrained does for big models.
class ShardedModel : public ::testing::Test {
 protected:
  void SetUp() override {
    SafetensorsFile src(model_dir("llama31-tiny-random") / "model.safetensors");
    std::vector<TensorToWrite> shard[2];
    nlohmann::json weight_map = nlohmann::json::object();
    size_t i = 0;
    for (const TensorEntry& t : src.tensors()) {
      const int s = (i++ < src.tensors().size() / 2) ? 0 : 1;
      shard[s].push_back({t.name, t.dtype, t.shape, {t.data, t.nbytes}});
      weight_map[t.name] = shard_name(s);
      names_.push_back(t.name);
    }
    for (int s = 0; s < 2; ++s)
      write_safetensors(dir_ / shard_name(s), shard[s], {{"format", "pt"}});
    index_ = {{"metadata", {{"total_size", 6853632}}}, {"weight_map", weight_map}};
    write_index();
  }
  static std::string shard_name(int s) {
    return "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  void write_index() { write_bytes(dir_ / "model.safetensors.index.json", index_.dump(2)); }

  TempDir dir_;
  nlohmann::json index_;
  std::vector<std::string> names_;
};

TEST_F(ShardedModel, LoadsEveryTensorLikeTheSingleFile) {
  ASSERT_FALSE(std::filesystem::exists(dir_ / "model.safetensors"));
  WeightStore sharded(dir_.path());
  WeightStore single(model_dir("llama31-tiny-random"));
  EXPECT_EQ(sharded.names(), single.names());
  EXPECT_EQ(sharded.names().size(), 21u);
  for (const std::string& name : names_) {
    const TensorEntry& t = single.get(name);
    EXPECT_EQ(sharded.load_f32(name, t.shape), single.load_f32(name, t.shape)) << name;
  }
  const std::vector<float> head = sharded.load_f32("lm_head.weight", Shape{512, 256});
  EXPECT_FLOAT_EQ(head[0], -0.08480512350797653f);
}

TEST_F(ShardedModel, ShardListedButMissing) {
  std::filesystem::remove(dir_ / shard_name(1));
  const std::string e = error_of([&] { WeightStore w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr("shard " + (dir_ / shard_name(1)).string() + " listed in"));
  EXPECT_THAT(e, HasSubstr("model.safetensors.index.json does not exist"));
}

TEST_F(ShardedModel, TensorNotInItsShard) {
  index_["weight_map"]["lm_head.weight"] = shard_name(1);  // it really lives in shard 0
  write_index();
  EXPECT_THAT(error_of([&] { WeightStore w(dir_.path()); }),
              HasSubstr("tensor 'lm_head.weight' is mapped to shard"));
}

TEST_F(ShardedModel, MalformedIndex) {
  write_bytes(dir_ / "model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_THAT(error_of([&] { WeightStore w(dir_.path()); }), HasSubstr("is not valid JSON"));
  index_.erase("weight_map");
  write_index();
  EXPECT_THAT(error_of([&] { WeightStore w(dir_.path()); }), HasSubstr("has no 'weight_map'"));
  index_["weight_map"] = {{"lm_head.weight", 3}};
  write_index();
  EXPECT_THAT(error_of([&] { WeightStore w(dir_.path()); }),
              HasSubstr("weight_map entry for tensor 'lm_head.weight' is not a file name"));
  index_["weight_map"] = {{"lm_head.weight", "../" + shard_name(0)}};
  write_index();
  EXPECT_THAT(error_of([&] { WeightStore w(dir_.path()); }),
              HasSubstr("must be a relative path inside the model directory"));
}

TEST_F(ShardedModel, WithoutIndexEverySafetensorsFileIsLoaded) {
  std::filesystem::remove(dir_ / "model.safetensors.index.json");
  WeightStore w(dir_.path());
  EXPECT_EQ(w.names().size(), 21u);
  // The same tensor in two files is ambiguous.
  std::filesystem::copy_file(dir_ / shard_name(0), dir_ / "extra.safetensors");
  EXPECT_THAT(error_of([&] { WeightStore w2(dir_.path()); }),
              HasSubstr("appears in more than one file"));
}

TEST_F(ShardedModel, CorruptShardIsReportedWithItsPath) {
  const std::string full = ::sagellm::testing::read_text(dir_ / shard_name(0));
  write_bytes(dir_ / shard_name(0), std::string_view(full).substr(0, full.size() / 2));
  const std::string e = error_of([&] { WeightStore w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr((dir_ / shard_name(0)).string()));
  EXPECT_THAT(e, HasSubstr("run past the data area"));
}

}  // namespace
}  // namespace sagellm::io
