// config.json parsing: every real fixture (values as written in the files) and the errors for
// configs we cannot run.
#include "io/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/fixtures.h"
#include "io/io_test_util.h"

namespace sagellm::io {
namespace {

using nlohmann::json;
using ::sagellm::testing::error_of;
using ::sagellm::testing::model_dir;
using ::sagellm::testing::TempDir;
using ::sagellm::testing::write_bytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ModelConfig, Stories260K) {
  const ModelConfig c = load_model_config(model_dir("stories260K"));
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
  EXPECT_EQ(c.torch_dtype, "float32");
}

TEST(ModelConfig, Llama31TinyRandomUsesRopeParameters) {
  const ModelConfig c = load_model_config(model_dir("llama31-tiny-random"));
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.intermediate_size, 688);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "float32");  // written as "dtype" by transformers 5
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
}

TEST(ModelConfig, Passkey4k) {
  const ModelConfig c = load_model_config(model_dir("passkey-4k"));
  EXPECT_EQ(c.hidden_size, 384);
  EXPECT_EQ(c.num_heads, 3);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 128);  // not hidden_size / num_heads
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Llama31_8BShapeUsesRopeScaling) {
  const ModelConfig c = load_model_config(model_dir("llama-3.1-8b-shape"));
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfig, Llama32_1BShape) {
  const ModelConfig c = load_model_config(model_dir("llama-3.2-1b-shape"));
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  EXPECT_EQ(c.rope.type, "llama3");
}

// A minimal valid config that each test below breaks in one way.
json base_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
    "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
    "vocab_size": 256, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5})");
}

std::string parse_error(const json& j) {
  return error_of([&] { parse_model_config(j, "test/config.json"); });
}

TEST(ModelConfig, DefaultsFollowTransformers) {
  const ModelConfig c = parse_model_config(base_config(), "x");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.torch_dtype, "");

  json j = base_config();
  j.erase("rms_norm_eps");
  j["head_dim"] = nullptr;
  j["num_key_value_heads"] = nullptr;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = nullptr;
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = 250000;
  const ModelConfig d = parse_model_config(j, "x");
  EXPECT_DOUBLE_EQ(d.rms_norm_eps, 1e-6);
  EXPECT_EQ(d.head_dim, 32);
  EXPECT_EQ(d.num_kv_heads, 4);
  EXPECT_EQ(d.bos_token_id, -1);
  EXPECT_DOUBLE_EQ(d.rope.theta, 250000.0);
}

TEST(ModelConfig, ExplicitHeadDimAndGqa) {
  json j = base_config();
  j["head_dim"] = 64;
  j["num_key_value_heads"] = 2;
  const ModelConfig c = parse_model_config(j, "x");
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
}

TEST(ModelConfig, HeadCountsMustDivide) {
  json j = base_config();
  j["num_key_value_heads"] = 3;
  EXPECT_THAT(parse_error(j), HasSubstr("num_attention_heads (4) must be a multiple of "
                                        "num_key_value_heads (3)"));
  j = base_config();
  j["hidden_size"] = 130;
  EXPECT_THAT(parse_error(j), HasSubstr("hidden_size (130) is not a multiple of "
                                        "num_attention_heads (4)"));
}

TEST(ModelConfig, MissingRequiredField) {
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size", "max_position_embeddings"}) {
    json j = base_config();
    j.erase(key);
    const std::string e = parse_error(j);
    EXPECT_THAT(e, HasSubstr("test/config.json"));
    EXPECT_THAT(e, HasSubstr(std::string("required field '") + key + "' is missing"));
  }
}

TEST(ModelConfig, WrongFieldType) {
  json j = base_config();
  j["num_hidden_layers"] = "2";
  EXPECT_THAT(parse_error(j), HasSubstr("field 'num_hidden_layers' must be an integer in [1, "));
  j = base_config();
  j["hidden_size"] = 128.5;
  EXPECT_THAT(parse_error(j), HasSubstr("field 'hidden_size' must be an integer"));
  j = base_config();
  j["vocab_size"] = 0;
  EXPECT_THAT(parse_error(j), HasSubstr("field 'vocab_size' must be an integer in [1, "));
  j = base_config();
  j["num_attention_heads"] = 1ull << 40;
  EXPECT_THAT(parse_error(j), HasSubstr("field 'num_attention_heads' must be an integer"));
  j = base_config();
  j["rms_norm_eps"] = "1e-5";
  EXPECT_THAT(parse_error(j), HasSubstr("field 'rms_norm_eps' must be a number"));
  j = base_config();
  j["tie_word_embeddings"] = 1;
  EXPECT_THAT(parse_error(j), HasSubstr("field 'tie_word_embeddings' must be true or false"));
  j = base_config();
  j["architectures"] = "LlamaForCausalLM";
  EXPECT_THAT(parse_error(j), HasSubstr("'architectures' must be a non-empty list of strings"));
  j = base_config();
  j["eos_token_id"] = json::array({2, "x"});
  EXPECT_THAT(parse_error(j), HasSubstr("'eos_token_id' must be a token id or a list"));
  EXPECT_THAT(parse_error(json::array()), HasSubstr("config must be a JSON object"));
  j = base_config();
  j["hidden_size"] = std::string(10000, 'x');
  const std::string e = parse_error(j);
  EXPECT_THAT(e, HasSubstr("field 'hidden_size' must be an integer"));
  EXPECT_LT(e.size(), 300u);  // the value is cut, not echoed in full
}

TEST(ModelConfig, EosTokenIdForms) {
  json j = base_config();
  j["eos_token_id"] = 7;
  EXPECT_THAT(parse_model_config(j, "x").eos_token_ids, ElementsAre(7));
  j["eos_token_id"] = json::array({5, 9});
  EXPECT_THAT(parse_model_config(j, "x").eos_token_ids, ElementsAre(5, 9));
}

TEST(ModelConfig, UnknownArchitecture) {
  json j = base_config();
  j["architectures"] = json::array({"Qwen2ForCausalLM"});
  j["model_type"] = "qwen2";
  EXPECT_THAT(parse_error(j), HasSubstr("unsupported architecture Qwen2ForCausalLM (supported: "
                                        "LlamaForCausalLM, MistralForCausalLM)"));
  j = base_config();
  j.erase("architectures");
  j["model_type"] = "gpt2";
  EXPECT_THAT(parse_error(j), HasSubstr("unsupported model_type gpt2"));
  j = base_config();
  j.erase("architectures");
  j.erase("model_type");
  EXPECT_THAT(parse_error(j), HasSubstr("required field 'architectures' is missing"));
  j = base_config();
  j.erase("architectures");
  EXPECT_EQ(parse_model_config(j, "x").architecture, "LlamaForCausalLM");
}

TEST(ModelConfig, RopeScalingForms) {
  json j = base_config();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig c = parse_model_config(j, "x");
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);

  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8},
                       {"low_freq_factor", 1},
                       {"high_freq_factor", 4},
                       {"original_max_position_embeddings", 64}};
  c = parse_model_config(j, "x");
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);

  // Without original_max_position_embeddings transformers uses max_position_embeddings.
  j["rope_scaling"].erase("original_max_position_embeddings");
  EXPECT_EQ(parse_model_config(j, "x").rope.original_max_position_embeddings, 1024);

  j = base_config();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = parse_model_config(j, "x");
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
}

TEST(ModelConfig, UnsupportedRopeType) {
  for (const char* type : {"yarn", "dynamic", "longrope"}) {
    json j = base_config();
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 4.0}};
    EXPECT_THAT(parse_error(j), HasSubstr(std::string("unsupported rope type ") + type +
                                          " (supported: default, linear, llama3)"));
  }
  json j = base_config();
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0}};
  EXPECT_THAT(parse_error(j), HasSubstr("rope_parameters: unsupported rope type yarn"));
}

TEST(ModelConfig, BadRopeParameters) {
  json j = base_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"low_freq_factor", 1}, {"high_freq_factor", 4}};
  EXPECT_THAT(parse_error(j), HasSubstr("rope_scaling: required field 'factor' is missing"));
  j["rope_scaling"]["factor"] = 8;
  j["rope_scaling"]["high_freq_factor"] = 1;
  EXPECT_THAT(parse_error(j), HasSubstr("high_freq_factor (1) must be greater than"));
  j = base_config();
  j["rope_scaling"] = "llama3";
  EXPECT_THAT(parse_error(j), HasSubstr("field 'rope_scaling' must be an object or null"));
  j = base_config();
  j["rope_theta"] = -1;
  EXPECT_THAT(parse_error(j), HasSubstr("field 'rope_theta' must be a positive number"));
  j = base_config();
  j["partial_rotary_factor"] = 0.5;
  EXPECT_THAT(parse_error(j), HasSubstr("partial_rotary_factor 0.5 is not supported"));
}

TEST(ModelConfig, UnsupportedFeatures) {
  json j = base_config();
  j["attention_bias"] = true;
  EXPECT_THAT(parse_error(j), HasSubstr("attention_bias = true is not supported"));
  j = base_config();
  j["mlp_bias"] = true;
  EXPECT_THAT(parse_error(j), HasSubstr("mlp_bias = true is not supported"));
  j = base_config();
  j["hidden_act"] = "gelu";
  EXPECT_THAT(parse_error(j), HasSubstr("unsupported hidden_act gelu"));
}

TEST(ModelConfig, MistralSlidingWindow) {
  json j = base_config();
  j["architectures"] = json::array({"MistralForCausalLM"});
  j["model_type"] = "mistral";
  j["sliding_window"] = nullptr;
  EXPECT_EQ(parse_model_config(j, "x").architecture, "MistralForCausalLM");
  j["sliding_window"] = 1024;  // covers the whole context: no effect
  EXPECT_NO_THROW(parse_model_config(j, "x"));
  j["sliding_window"] = 512;
  EXPECT_THAT(parse_error(j), HasSubstr("sliding_window 512 is smaller than "
                                        "max_position_embeddings 1024"));
  // Absent means MistralConfig's default window of 4096.
  j.erase("sliding_window");
  EXPECT_NO_THROW(parse_model_config(j, "x"));
  j["max_position_embeddings"] = 32768;
  EXPECT_THAT(parse_error(j), HasSubstr("sliding_window 4096 is smaller"));
}

TEST(ModelConfig, LoadErrors) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { load_model_config(dir / "nope"); }),
              HasSubstr("model directory " + (dir / "nope").string() + " does not exist"));
  EXPECT_THAT(error_of([&] { load_model_config(dir.path()); }),
              HasSubstr((dir / "config.json").string() + " does not exist"));
  write_bytes(dir / "config.json", R"({"hidden_size": 128,)");
  const std::string e = error_of([&] { load_model_config(dir.path()); });
  EXPECT_THAT(e, HasSubstr((dir / "config.json").string() + " is not valid JSON"));
  write_bytes(dir / "config.json", base_config().dump());
  EXPECT_EQ(load_model_config(dir.path()).hidden_size, 128);
  json j = base_config();
  j.erase("vocab_size");
  write_bytes(dir / "config.json", j.dump());
  EXPECT_THAT(error_of([&] { load_model_config(dir.path()); }),
              HasSubstr((dir / "config.json").string() + ": required field 'vocab_size'"));
}

}  // namespace
}  // namespace sagellm::io
