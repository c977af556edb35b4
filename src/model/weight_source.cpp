#include "model/weight_source.h"

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace sagellm {

namespace {

class CheckpointWeights final : public WeightSource {
 public:
  explicit CheckpointWeights(const std::filesystem::path& dir)
      : config_(io::load_model_config(dir)), store_(dir) {}
  const io::ModelConfig& config() const override { return config_; }
  bool contains(std::string_view name) const override { return store_.contains(name); }
  std::vector<float> load(std::string_view name, std::span<const int64_t> shape) const override {
    return store_.load_f32(name, shape);
  }

 private:
  io::ModelConfig config_;
  io::WeightStore store_;
};

// splitmix64's finalizer: a bijection on 64 bits with full avalanche.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

float unit_value(uint64_t key, uint64_t index) {
  // 24 random bits give a float in (0, 1) exactly; uniform on [-sqrt(3), sqrt(3)) has variance 1.
  const uint64_t bits = mix64(key + mix64(index)) >> 40;
  const float u = (static_cast<float>(bits) + 0.5f) * 0x1p-24f;
  return (2.0f * u - 1.0f) * 1.7320508f;
}

class DummyWeights final : public WeightSource {
 public:
  DummyWeights(io::ModelConfig config, uint64_t seed) : config_(std::move(config)), seed_(seed) {}
  const io::ModelConfig& config() const override { return config_; }
  bool contains(std::string_view name) const override {
    return name != "lm_head.weight" || !config_.tie_word_embeddings;
  }
  std::vector<float> load(std::string_view name, std::span<const int64_t> shape) const override {
    SAGELLM_CHECK(contains(name), "missing tensor {} in dummy weights", name);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    SAGELLM_CHECK(!shape.empty() && n > 0, "dummy tensor {} has an empty shape", name);
    std::vector<float> v(static_cast<size_t>(n));
    if (shape.size() == 1) {  // norm weights
      std::fill(v.begin(), v.end(), 1.0f);
      return v;
    }
    const bool embedding = name == "model.embed_tokens.weight";
    const float std = embedding ? 1.0f : 1.0f / std::sqrt(static_cast<float>(shape.back()));
    const uint64_t key = mix64(seed_ ^ fnv1a(name));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      v[static_cast<size_t>(i)] = round_to_bf16(unit_value(key, static_cast<uint64_t>(i)) * std);
    }
    return v;
  }

 private:
  io::ModelConfig config_;
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<WeightSource> checkpoint_weights(const std::filesystem::path& model_dir) {
  return std::make_unique<CheckpointWeights>(model_dir);
}

std::unique_ptr<WeightSource> dummy_weights(const io::ModelConfig& config, uint64_t seed) {
  return std::make_unique<DummyWeights>(config, seed);
}

float dummy_unit_value(uint64_t seed, std::string_view name, uint64_t index) {
  return unit_value(mix64(seed ^ fnv1a(name)), index);
}

}  // namespace sagellm
