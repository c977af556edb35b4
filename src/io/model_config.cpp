#include "io/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "io/json_brief.h"

namespace sagellm::io {
namespace {

using nlohmann::json;

constexpr const char* kSupportedArchitectures = "LlamaForCausalLM, MistralForCausalLM";

// Reads fields of one JSON object and names the object (`where`) in every error.
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  // nullptr when the key is absent or null: Hugging Face treats both as "use the default".
  const json* find(const char* key) const {
    auto it = j_.find(key);
    return (it == j_.end() || it->is_null()) ? nullptr : &*it;
  }

  std::optional<int64_t> integer(const char* key, int64_t min, int64_t max) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    // Large unsigned values are not representable as int64 and fail the range check below.
    if (!v->is_number_integer() ||
        (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(max)) ||
        v->get<int64_t>() < min || v->get<int64_t>() > max) {
      fail("{}: field '{}' must be an integer in [{}, {}], got {}", where_, key, min, max,
           json_brief(*v));
    }
    return v->get<int64_t>();
  }

  int64_t required_integer(const char* key, int64_t min, int64_t max) const {
    if (auto v = integer(key, min, max)) return *v;
    fail("{}: required field '{}' is missing", where_, key);
  }

  std::optional<double> number(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number())
      fail("{}: field '{}' must be a number, got {}", where_, key, json_brief(*v));
    return v->get<double>();
  }

  double positive_number(const char* key, std::optional<double> fallback) const {
    std::optional<double> v = number(key);
    if (!v) v = fallback;
    if (!v) fail("{}: required field '{}' is missing", where_, key);
    if (!(*v > 0.0) || !std::isfinite(*v)) {
      fail("{}: field '{}' must be a positive number, got {}", where_, key, *v);
    }
    return *v;
  }

  std::optional<bool> boolean(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean())
      fail("{}: field '{}' must be true or false, got {}", where_, key, json_brief(*v));
    return v->get<bool>();
  }

  std::optional<std::string> string(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string())
      fail("{}: field '{}' must be a string, got {}", where_, key, json_brief(*v));
    return v->get<std::string>();
  }

  const std::string& where() const { return where_; }

 private:
  const json& j_;
  std::string where_;
};

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

std::string parse_architecture(const Fields& f) {
  std::string arch;
  if (const json* a = f.find("architectures")) {
    if (!a->is_array() || a->empty() ||
        !std::all_of(a->begin(), a->end(), [](const json& x) { return x.is_string(); })) {
      fail("{}: field 'architectures' must be a non-empty list of strings, got {}", f.where(),
           json_brief(*a));
    }
    arch = (*a)[0].get<std::string>();
  } else if (auto model_type = f.string("model_type")) {
    // Old configs sometimes carry only model_type.
    if (*model_type == "llama") arch = "LlamaForCausalLM";
    if (*model_type == "mistral") arch = "MistralForCausalLM";
    if (arch.empty()) {
      fail("{}: unsupported model_type {} (supported: llama, mistral)", f.where(), *model_type);
    }
  } else {
    fail("{}: required field 'architectures' is missing", f.where());
  }
  if (arch != "LlamaForCausalLM" && arch != "MistralForCausalLM") {
    fail("{}: unsupported architecture {} (supported: {})", f.where(), arch,
         kSupportedArchitectures);
  }
  return arch;
}

// Two spellings exist: rope_theta + rope_scaling (transformers 4) and rope_parameters, which also
// holds rope_theta (transformers 5). Like transformers, a non-empty rope_scaling wins.
RopeConfig parse_rope(const Fields& f, int64_t max_position_embeddings) {
  RopeConfig rope;
  const json* params = f.find("rope_scaling");
  const char* params_key = "rope_scaling";
  if (params != nullptr && params->is_object() && params->empty()) params = nullptr;
  if (params == nullptr) {
    params = f.find("rope_parameters");
    params_key = "rope_parameters";
  }
  if (params != nullptr && !params->is_object()) {
    fail("{}: field '{}' must be an object or null, got {}", f.where(), params_key,
         json_brief(*params));
  }
  const std::optional<double> top_theta = f.number("rope_theta");
  if (auto prf = f.number("partial_rotary_factor"); prf && *prf != 1.0) {
    fail("{}: partial_rotary_factor {} is not supported (only 1.0)", f.where(), *prf);
  }
  if (params == nullptr) {
    rope.theta = f.positive_number("rope_theta", 10000.0);
    return rope;
  }

  const Fields p(*params, fmt::format("{} {}", f.where(), params_key));
  std::optional<std::string> type = p.string("rope_type");
  if (!type) type = p.string("type");
  rope.type = type.value_or("default");
  rope.theta = p.positive_number("rope_theta", top_theta.value_or(10000.0));
  if (auto prf = p.number("partial_rotary_factor"); prf && *prf != 1.0) {
    fail("{}: partial_rotary_factor {} is not supported (only 1.0)", p.where(), *prf);
  }
  if (rope.type == "default") return rope;
  if (rope.type == "linear") {
    rope.factor = p.positive_number("factor", std::nullopt);
    return rope;
  }
  if (rope.type == "llama3") {
    rope.factor = p.positive_number("factor", std::nullopt);
    rope.low_freq_factor = p.positive_number("low_freq_factor", std::nullopt);
    rope.high_freq_factor = p.positive_number("high_freq_factor", std::nullopt);
    if (!(rope.high_freq_factor > rope.low_freq_factor)) {
      fail("{}: high_freq_factor ({}) must be greater than low_freq_factor ({})", p.where(),
           rope.high_freq_factor, rope.low_freq_factor);
    }
    // transformers falls back to max_position_embeddings when the key is absent.
    rope.original_max_position_embeddings =
        p.integer("original_max_position_embeddings", 1, std::numeric_limits<int64_t>::max())
            .value_or(max_position_embeddings);
    return rope;
  }
  fail("{}: unsupported rope type {} (supported: default, linear, llama3)", p.where(), rope.type);
}

std::vector<int> parse_eos(const Fields& f) {
  const json* v = f.find("eos_token_id");
  if (v == nullptr) return {};
  auto to_id = [&](const json& x) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > kIntMax) {
      fail("{}: field 'eos_token_id' must be a token id or a list of token ids, got {}", f.where(),
           json_brief(*v));
    }
    return static_cast<int>(x.get<int64_t>());
  };
  std::vector<int> ids;
  if (v->is_array()) {
    for (const json& x : *v) ids.push_back(to_id(x));
  } else {
    ids.push_back(to_id(*v));
  }
  return ids;
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config must be a JSON object", source);
  const Fields f(j, source);
  ModelConfig c;
  c.architecture = parse_architecture(f);
  if (auto model_type = f.string("model_type");
      model_type && *model_type != "llama" && *model_type != "mistral") {
    fail("{}: unsupported model_type {} for architecture {} (supported: llama, mistral)", source,
         *model_type, c.architecture);
  }

  c.hidden_size = static_cast<int>(f.required_integer("hidden_size", 1, kIntMax));
  c.intermediate_size = static_cast<int>(f.required_integer("intermediate_size", 1, kIntMax));
  c.num_layers = static_cast<int>(f.required_integer("num_hidden_layers", 1, kIntMax));
  c.num_heads = static_cast<int>(f.required_integer("num_attention_heads", 1, kIntMax));
  c.vocab_size = static_cast<int>(f.required_integer("vocab_size", 1, kIntMax));
  c.max_position_embeddings =
      f.required_integer("max_position_embeddings", 1, std::numeric_limits<int64_t>::max());
  c.num_kv_heads =
      static_cast<int>(f.integer("num_key_value_heads", 1, kIntMax).value_or(c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source,
         c.num_heads, c.num_kv_heads);
  }
  if (auto head_dim = f.integer("head_dim", 1, kIntMax)) {
    c.head_dim = static_cast<int>(*head_dim);
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      fail(
          "{}: hidden_size ({}) is not a multiple of num_attention_heads ({}) and no head_dim is "
          "given",
          source, c.hidden_size, c.num_heads);
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) fail("{}: head_dim {} must be even for RoPE", source, c.head_dim);

  // transformers' LlamaConfig and MistralConfig both default to 1e-6.
  c.rms_norm_eps = f.positive_number("rms_norm_eps", 1e-6);
  c.rope = parse_rope(f, c.max_position_embeddings);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings").value_or(false);
  c.bos_token_id = static_cast<int>(f.integer("bos_token_id", 0, kIntMax).value_or(-1));
  c.eos_token_ids = parse_eos(f);
  // transformers 5 writes "dtype", older versions "torch_dtype".
  c.torch_dtype = f.string("torch_dtype").value_or(f.string("dtype").value_or(""));

  if (auto act = f.string("hidden_act"); act && *act != "silu") {
    fail("{}: unsupported hidden_act {} (only silu)", source, *act);
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (f.boolean(key).value_or(false)) {
      fail("{}: {} = true is not supported (Llama projections without bias only)", source, key);
    }
  }
  if (c.architecture == "MistralForCausalLM") {
    // MistralConfig defaults to a 4096-token window when the key is absent; null means none.
    const int64_t window = j.contains("sliding_window")
                               ? f.integer("sliding_window", 1, std::numeric_limits<int64_t>::max())
                                     .value_or(std::numeric_limits<int64_t>::max())
                               : 4096;
    if (window < c.max_position_embeddings) {
      fail(
          "{}: sliding_window {} is smaller than max_position_embeddings {}; sliding-window "
          "attention is not supported",
          source, window, c.max_position_embeddings);
    }
  }
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.json";
  std::error_code ec;
  if (!std::filesystem::exists(model_dir, ec)) {
    fail("model directory {} does not exist", model_dir.string());
  }
  if (!std::filesystem::is_regular_file(path, ec)) fail("{} does not exist", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    fail("{} is not valid JSON: {}", path.string(), e.what());
  }
  return parse_model_config(j, path.string());
}

}  // namespace sagellm::io
