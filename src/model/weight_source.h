// Where a Llama model's weights come from, for both execution targets: a checkpoint's safetensors
// or seeded random values (--load-format dummy). Tensors are asked for by their Hugging Face name
// and shape, one at a time, so a loader can convert and upload each before asking for the next.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/model_config.h"

namespace sagellm {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual const io::ModelConfig& config() const = 0;
  // True when the source holds `name` (lm_head.weight is absent from tied checkpoints).
  virtual bool contains(std::string_view name) const = 0;
  // The tensor as float32; throws sagellm::Error when it is missing or its shape differs.
  virtual std::vector<float> load(std::string_view name, std::span<const int64_t> shape) const = 0;
};

// Reads config.json and the safetensors of MODEL_DIR.
std::unique_ptr<WeightSource> checkpoint_weights(const std::filesystem::path& model_dir);

// Seeded random weights at the config's shapes: norms are 1, linear layers and embeddings uniform
// with the standard deviation a trained model's layers roughly have (1/sqrt(fan_in); 1 for the
// embedding). Each value is a function of (seed, tensor name, index) only, rounded to bf16, so the
// CPU (float32) and GPU (bf16) paths hold identical weights and can be compared directly.
std::unique_ptr<WeightSource> dummy_weights(const io::ModelConfig& config, uint64_t seed);

// The value dummy_weights gives element `index` of tensor `name` for a unit standard deviation,
// before scaling and rounding (exposed for tests).
float dummy_unit_value(uint64_t seed, std::string_view name, uint64_t index);

}  // namespace sagellm
