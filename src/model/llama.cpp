#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/cpu/ops.h"
#include "model/forward_rows.h"
#include "model/weight_source.h"
#include "parallel/host_group.h"
#include "parallel/tp_weights.h"

namespace sagellm {

namespace {

void append(std::vector<float>& dst, const std::vector<float>& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}

}  // namespace

LlamaModel::LlamaModel(io::ModelConfig config, LlamaWeights weights, TpShard shard)
    : config_(std::move(config)),
      w_(std::move(weights)),
      rope_(config_.rope, config_.head_dim),
      shard_(shard) {}

LlamaModel LlamaModel::load(const std::filesystem::path& model_dir) {
  return from_weights(*checkpoint_weights(model_dir));
}

LlamaModel LlamaModel::dummy(const io::ModelConfig& config, uint64_t seed) {
  return from_weights(*dummy_weights(config, seed));
}

LlamaModel LlamaModel::from_weights(const WeightSource& source) {
  return from_weights(source, tp_shard(source.config(), 0, 1));
}

LlamaModel LlamaModel::from_weights(const WeightSource& source, const TpShard& shard) {
  const std::unique_ptr<WeightSource> rank_source = tp_shard_weights(source, shard);
  const WeightSource& src = *rank_source;
  const io::ModelConfig& c = src.config();
  const int64_t h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t inter = c.intermediate_size, vocab = shard.vocab_rows;
  auto load = [&](const std::string& name, std::initializer_list<int64_t> shape) {
    const std::vector<int64_t> s(shape);
    return src.load(name, s);
  };
  LlamaWeights w;
  w.embed = load("model.embed_tokens.weight", {vocab, h});
  w.layers.resize(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LlamaLayerWeights& l = w.layers[static_cast<size_t>(i)];
    l.input_norm = load(p + "input_layernorm.weight", {h});
    l.qkv = load(p + "self_attn.q_proj.weight", {nh * d, h});
    append(l.qkv, load(p + "self_attn.k_proj.weight", {nkv * d, h}));
    append(l.qkv, load(p + "self_attn.v_proj.weight", {nkv * d, h}));
    l.o = load(p + "self_attn.o_proj.weight", {h, nh * d});
    l.post_norm = load(p + "post_attention_layernorm.weight", {h});
    l.gate_up = load(p + "mlp.gate_proj.weight", {inter, h});
    append(l.gate_up, load(p + "mlp.up_proj.weight", {inter, h}));
    l.down = load(p + "mlp.down_proj.weight", {h, inter});
  }
  w.final_norm = load("model.norm.weight", {h});
  if (src.contains("lm_head.weight")) {
    w.lm_head = load("lm_head.weight", {vocab, h});
  } else if (!c.tie_word_embeddings) {
    fail("missing tensor lm_head.weight (config.json says tie_word_embeddings is false)");
  }
  return LlamaModel(c, std::move(w), shard);
}

AttentionShape llama_attention_shape(const io::ModelConfig& c) {
  AttentionShape s;
  s.num_heads = c.num_heads;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.sm_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  return s;
}

AttentionShape LlamaModel::attention_shape() const { return llama_attention_shape(config_); }

size_t LlamaModel::weight_bytes() const {
  size_t n = w_.embed.size() + w_.final_norm.size() + w_.lm_head.size();
  for (const auto& l : w_.layers) {
    n += l.input_norm.size() + l.qkv.size() + l.o.size() + l.post_norm.size() + l.gate_up.size() +
         l.down.size();
  }
  return n * sizeof(float);
}

std::vector<float> LlamaModel::forward(const ForwardBatch& batch, PagedKVCache& cache,
                                       const AttentionBackend& attention,
                                       const ActivationObserver& observer) const {
  const io::ModelConfig& c = config_;
  const int rows = static_cast<int>(batch.tokens.size());
  const int h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int inter = c.intermediate_size, vocab = c.vocab_size;
  const int qkv_dim = (nh + 2 * nkv) * d;
  const int page_size = cache.shape().page_size;
  SAGELLM_CHECK(cache.shape().num_layers == c.num_layers && cache.shape().num_kv_heads == nkv &&
                    cache.shape().head_dim == d,
                "KV cache shape does not match the model");

  const ForwardRows fr = plan_forward_rows(batch, c, page_size, cache.shape().num_pages);
  std::vector<float> rope_cs(static_cast<size_t>(rows) * d);
  for (int r = 0; r < rows; ++r)
    rope_.angles(fr.position[static_cast<size_t>(r)], &rope_cs[size_t(r) * d]);

  std::vector<float> x(static_cast<size_t>(rows) * h), xn(x.size());
  std::vector<float> qkv(static_cast<size_t>(rows) * qkv_dim);
  std::vector<float> q(static_cast<size_t>(rows) * nh * d), att(q.size());
  std::vector<float> gu(static_cast<size_t>(rows) * 2 * inter),
      act(static_cast<size_t>(rows) * inter);
  // A model in a group (also a group of one) takes the tensor-parallel path.
  const bool sharded = group_ != nullptr;
  SAGELLM_CHECK(sharded ? group_->size() == shard_.size : !shard_.sharded(),
                "tensor-parallel rank {} of {} needs a group of {} ranks", shard_.rank, shard_.size,
                shard_.size);
  SAGELLM_CHECK(!sharded || !observer,
                "activations can be observed with --tp-size 1 only (a rank holds only its heads)");
  if (!sharded) {
    cpu::embedding(w_.embed.data(), batch.tokens, x.data(), h);
  } else {
    // Vocab-parallel embedding: each token's row comes from the rank holding it, zeros elsewhere,
    // and the sum over the ranks is that row.
    for (int r = 0; r < rows; ++r) {
      const int local = batch.tokens[static_cast<size_t>(r)] - shard_.vocab_begin;
      float* dst = &x[static_cast<size_t>(r) * h];
      if (local >= 0 && local < shard_.vocab_rows) {
        std::memcpy(dst, &w_.embed[static_cast<size_t>(local) * h], sizeof(float) * h);
      } else {
        std::fill(dst, dst + h, 0.0f);
      }
    }
    group_->all_reduce_sum(shard_.rank, x);
  }
  // Row-parallel GEMMs: each rank's partial product is summed over the ranks before the residual
  // add (one rank adds straight into the residual stream).
  std::vector<float> partial(sharded ? x.size() : 0);
  auto add_row_parallel = [&](const float* a, const float* w, int k) {
    if (!sharded) {
      cpu::linear(a, w, x.data(), rows, h, k, /*accumulate=*/true);
      return;
    }
    cpu::linear(a, w, partial.data(), rows, h, k);
    group_->all_reduce_sum(shard_.rank, partial);
    for (size_t i = 0; i < x.size(); ++i) x[i] += partial[i];
  };

  const AttentionShape shape = attention_shape();
  const float eps = static_cast<float>(c.rms_norm_eps);
  for (int li = 0; li < c.num_layers; ++li) {
    const LlamaLayerWeights& l = w_.layers[static_cast<size_t>(li)];
    cpu::rmsnorm(x.data(), l.input_norm.data(), xn.data(), rows, h, eps);
    cpu::linear(xn.data(), l.qkv.data(), qkv.data(), rows, qkv_dim, h);
    for (int r = 0; r < rows; ++r) {
      float* row = &qkv[static_cast<size_t>(r) * qkv_dim];
      const float* cs = &rope_cs[static_cast<size_t>(r) * d];
      rope_.apply(row, nh + nkv, cs);  // q heads then k heads are contiguous
      std::memcpy(&q[static_cast<size_t>(r) * nh * d], row, sizeof(float) * nh * d);
      cache.write(li, fr.page[static_cast<size_t>(r)], fr.slot[static_cast<size_t>(r)],
                  row + nh * d, row + (nh + nkv) * d);
    }
    attention.forward(shape, batch.attention, cache, li, q.data(), att.data());
    add_row_parallel(att.data(), l.o.data(), nh * d);
    cpu::rmsnorm(x.data(), l.post_norm.data(), xn.data(), rows, h, eps);
    cpu::linear(xn.data(), l.gate_up.data(), gu.data(), rows, 2 * inter, h);
    cpu::silu_mul(gu.data(), act.data(), rows, inter);
    add_row_parallel(act.data(), l.down.data(), inter);
    if (observer) observer(LayerActivations{li, rows, x, att});
  }

  // Final norm and lm_head only on the rows whose logits are wanted.
  const std::vector<int32_t>& out_rows = fr.logits_rows;
  const int n_out = static_cast<int>(out_rows.size());
  std::vector<float> sel(static_cast<size_t>(n_out) * h);
  for (int i = 0; i < n_out; ++i) {
    std::memcpy(&sel[static_cast<size_t>(i) * h], &x[static_cast<size_t>(out_rows[size_t(i)]) * h],
                sizeof(float) * h);
  }
  std::vector<float> normed(sel.size());
  cpu::rmsnorm(sel.data(), w_.final_norm.data(), normed.data(), n_out, h, eps);
  const std::vector<float>& head = w_.lm_head.empty() ? w_.embed : w_.lm_head;
  if (!sharded) {
    std::vector<float> logits(static_cast<size_t>(n_out) * vocab);
    cpu::linear(normed.data(), head.data(), logits.data(), n_out, vocab, h);
    return logits;
  }
  // Vocab-parallel lm_head: each rank's slice of every row, gathered rank after rank.
  const int part = shard_.vocab_rows;
  std::vector<float> local(static_cast<size_t>(n_out) * part);
  cpu::linear(normed.data(), head.data(), local.data(), n_out, part, h);
  std::vector<float> gathered(local.size() * static_cast<size_t>(shard_.size));
  group_->all_gather(shard_.rank, local, gathered);
  if (shard_.rank != 0) return {};
  std::vector<float> logits(static_cast<size_t>(n_out) * vocab);
  for (int k = 0; k < shard_.size; ++k) {
    const int begin = k * part;
    const int valid = std::min(part, vocab - begin);
    for (int i = 0; i < n_out; ++i) {
      std::memcpy(&logits[static_cast<size_t>(i) * vocab + begin],
                  &gathered[(static_cast<size_t>(k) * n_out + i) * part], sizeof(float) * valid);
    }
  }
  return logits;
}

}  // namespace sagellm
