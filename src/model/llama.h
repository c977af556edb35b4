// The Llama forward pass on the CPU (float32), over a varlen batch of requests whose K/V live in
// the paged KV cache. Attention is delegated to the selected backend.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "io/model_config.h"
#include "kv_cache/kv_cache.h"
#include "model/rope.h"
#include "parallel/tp_shard.h"

namespace sagellm {

struct LlamaLayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> qkv;         // [(nh + 2 nkv) * head_dim][hidden]: q, k, v rows stacked
  std::vector<float> o;           // [hidden][nh * head_dim]
  std::vector<float> post_norm;   // [hidden]
  std::vector<float> gate_up;     // [2 * inter][hidden]: gate rows then up rows
  std::vector<float> down;        // [hidden][inter]
};

struct LlamaWeights {
  std::vector<float> embed;  // [vocab][hidden]
  std::vector<LlamaLayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab][hidden]; empty when tied to embed
};

enum class LogitsMode { kLastPerSeq, kAll };

// What one forward step computes: for each request, its new tokens (in batch order) and the
// attention metadata. Positions are kv_len - q_len + i for the i-th new token of a request.
struct ForwardBatch {
  std::vector<int32_t> tokens;
  AttentionBatch attention;
  LogitsMode logits_mode = LogitsMode::kLastPerSeq;
};

// Per-layer activations offered to an observer (validate's activation-drift check): `hidden` is
// the residual stream after the layer, `attn_out` the attention output before o_proj.
struct LayerActivations {
  int layer = 0;
  int rows = 0;
  std::span<const float> hidden;    // [rows][hidden]
  std::span<const float> attn_out;  // [rows][nh * head_dim]
};
using ActivationObserver = std::function<void(const LayerActivations&)>;

class WeightSource;
class HostGroup;

// The attention problem of a Llama config: heads, KV heads, head_dim, sm_scale 1/sqrt(head_dim).
AttentionShape llama_attention_shape(const io::ModelConfig& config);

class LlamaModel {
 public:
  // Loads config.json and the safetensors weights of MODEL_DIR (converted to float32).
  static LlamaModel load(const std::filesystem::path& model_dir);
  // Seeded random weights at the config's shapes (--load-format dummy).
  static LlamaModel dummy(const io::ModelConfig& config, uint64_t seed);
  static LlamaModel from_weights(const WeightSource& source);
  // One tensor-parallel rank's part of the model in `source` (tp_shard.h). Its forward steps meet
  // the other ranks' in `group`'s collectives (set_group; a group of one takes the same path) and
  // only rank 0 returns logits.
  static LlamaModel from_weights(const WeightSource& source, const TpShard& shard);
  void set_group(HostGroup* group) { group_ = group; }

  // The rank's config (tp_shard_config): the whole model's unless sharded.
  const io::ModelConfig& config() const { return config_; }
  const TpShard& shard() const { return shard_; }
  AttentionShape attention_shape() const;
  size_t weight_bytes() const;  // float32 bytes held

  // Writes the new tokens' K/V into `cache` and returns logits: [num_seqs][vocab] for
  // kLastPerSeq, [total tokens][vocab] for kAll (on a sharded model: rank 0 only, the other ranks
  // return none). The activation observer needs an unsharded model.
  std::vector<float> forward(const ForwardBatch& batch, PagedKVCache& cache,
                             const AttentionBackend& attention,
                             const ActivationObserver& observer = {}) const;

 private:
  LlamaModel(io::ModelConfig config, LlamaWeights weights, TpShard shard);
  io::ModelConfig config_;
  LlamaWeights w_;
  Rope rope_;
  TpShard shard_;
  HostGroup* group_ = nullptr;
};

}  // namespace sagellm
