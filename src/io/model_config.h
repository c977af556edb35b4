// config.json of a Hugging Face Llama-family checkpoint, parsed and validated.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace sagellm::io {

struct RopeConfig {
  std::string type = "default";  // "default", "linear" or "llama3"
  double theta = 10000.0;
  double factor = 1.0;                              // linear and llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string architecture;  // LlamaForCausalLM or MistralForCausalLM
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // hidden_size / num_heads unless config.json says otherwise
  int vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;  // -1 when the config names none
  std::vector<int> eos_token_ids;
  std::string torch_dtype;  // as written ("float32", "bfloat16", ...), may be empty
};

// Reads MODEL_DIR/config.json. Accepts rope_theta + rope_scaling (older checkpoints) and the newer
// rope_parameters form; eos_token_id as an int or a list. Throws sagellm::Error on anything it
// cannot run: missing or malformed file, unknown architecture, inconsistent head counts.
ModelConfig load_model_config(const std::filesystem::path& model_dir);
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);

}  // namespace sagellm::io
