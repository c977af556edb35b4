#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/cpu/ops.h"

namespace sagellm {

namespace {

void append(std::vector<float>& dst, const std::vector<float>& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}

}  // namespace

LlamaModel::LlamaModel(io::ModelConfig config, LlamaWeights weights)
    : config_(std::move(config)), w_(std::move(weights)), rope_(config_.rope, config_.head_dim) {}

LlamaModel LlamaModel::load(const std::filesystem::path& model_dir) {
  io::ModelConfig c = io::load_model_config(model_dir);
  io::WeightStore store(model_dir);
  const int64_t h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t inter = c.intermediate_size, vocab = c.vocab_size;
  auto load = [&](const std::string& name, std::initializer_list<int64_t> shape) {
    const std::vector<int64_t> s(shape);
    return store.load_f32(name, s);
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
  if (store.contains("lm_head.weight")) {
    w.lm_head = load("lm_head.weight", {vocab, h});
  } else if (!c.tie_word_embeddings) {
    fail("missing tensor lm_head.weight in {} (config.json says tie_word_embeddings is false)",
         model_dir.string());
  }
  return LlamaModel(std::move(c), std::move(w));
}

LlamaModel LlamaModel::dummy(const io::ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](size_t n, float std) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng) * std;
    return v;
  };
  const size_t h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const size_t inter = c.intermediate_size, vocab = c.vocab_size;
  LlamaWeights w;
  w.embed = random(vocab * h, 1.0f);
  for (int i = 0; i < c.num_layers; ++i) {
    LlamaLayerWeights l;
    l.input_norm.assign(h, 1.0f);
    l.post_norm.assign(h, 1.0f);
    l.qkv = random((nh + 2 * nkv) * d * h, 1.0f / std::sqrt(static_cast<float>(h)));
    l.o = random(h * nh * d, 1.0f / std::sqrt(static_cast<float>(nh * d)));
    l.gate_up = random(2 * inter * h, 1.0f / std::sqrt(static_cast<float>(h)));
    l.down = random(h * inter, 1.0f / std::sqrt(static_cast<float>(inter)));
    w.layers.push_back(std::move(l));
  }
  w.final_norm.assign(h, 1.0f);
  if (!c.tie_word_embeddings)
    w.lm_head = random(vocab * h, 1.0f / std::sqrt(static_cast<float>(h)));
  return LlamaModel(c, std::move(w));
}

AttentionShape LlamaModel::attention_shape() const {
  AttentionShape s;
  s.num_heads = config_.num_heads;
  s.num_kv_heads = config_.num_kv_heads;
  s.head_dim = config_.head_dim;
  s.sm_scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  return s;
}

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

  // Validate the batch before touching the cache: every id in range, rows add up, pages cover
  // every position written.
  int expected_rows = 0;
  for (const AttentionSeq& s : batch.attention.seqs) {
    SAGELLM_CHECK(s.q_start == expected_rows && s.q_len >= 0 && s.kv_len >= s.q_len,
                  "malformed forward batch");
    SAGELLM_CHECK(s.kv_len <= static_cast<int64_t>(s.pages.size()) * page_size,
                  "request of {} tokens has only {} KV pages", s.kv_len, s.pages.size());
    expected_rows += s.q_len;
  }
  SAGELLM_CHECK(expected_rows == rows, "forward batch has {} tokens but its requests cover {}",
                rows, expected_rows);
  for (int32_t t : batch.tokens) {
    SAGELLM_CHECK(t >= 0 && t < vocab, "token id {} is outside the vocabulary (size {})", t, vocab);
  }

  // Row -> (page, slot, position) of each new token.
  std::vector<int> row_page(static_cast<size_t>(rows)), row_slot(static_cast<size_t>(rows));
  std::vector<int64_t> row_pos(static_cast<size_t>(rows));
  for (const AttentionSeq& s : batch.attention.seqs) {
    for (int i = 0; i < s.q_len; ++i) {
      const int pos = s.kv_len - s.q_len + i;
      const size_t r = static_cast<size_t>(s.q_start) + static_cast<size_t>(i);
      row_pos[r] = pos;
      row_page[r] = s.pages[static_cast<size_t>(pos / page_size)];
      row_slot[r] = pos % page_size;
    }
  }
  std::vector<float> rope_cs(static_cast<size_t>(rows) * d);
  for (int r = 0; r < rows; ++r)
    rope_.angles(row_pos[static_cast<size_t>(r)], &rope_cs[size_t(r) * d]);

  std::vector<float> x(static_cast<size_t>(rows) * h), xn(x.size());
  std::vector<float> qkv(static_cast<size_t>(rows) * qkv_dim);
  std::vector<float> q(static_cast<size_t>(rows) * nh * d), att(q.size());
  std::vector<float> gu(static_cast<size_t>(rows) * 2 * inter),
      act(static_cast<size_t>(rows) * inter);
  cpu::embedding(w_.embed.data(), batch.tokens, x.data(), h);

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
      cache.write(li, row_page[static_cast<size_t>(r)], row_slot[static_cast<size_t>(r)],
                  row + nh * d, row + (nh + nkv) * d);
    }
    attention.forward(shape, batch.attention, cache, li, q.data(), att.data());
    cpu::linear(att.data(), l.o.data(), x.data(), rows, h, nh * d, /*accumulate=*/true);
    cpu::rmsnorm(x.data(), l.post_norm.data(), xn.data(), rows, h, eps);
    cpu::linear(xn.data(), l.gate_up.data(), gu.data(), rows, 2 * inter, h);
    cpu::silu_mul(gu.data(), act.data(), rows, inter);
    cpu::linear(act.data(), l.down.data(), x.data(), rows, h, inter, /*accumulate=*/true);
    if (observer) observer(LayerActivations{li, rows, x, att});
  }

  // Final norm and lm_head only on the rows whose logits are wanted.
  std::vector<int> out_rows;
  if (batch.logits_mode == LogitsMode::kAll) {
    out_rows.resize(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) out_rows[static_cast<size_t>(r)] = r;
  } else {
    for (const AttentionSeq& s : batch.attention.seqs) {
      SAGELLM_CHECK(s.q_len > 0, "a request without new tokens has no last-token logits");
      out_rows.push_back(s.q_start + s.q_len - 1);
    }
  }
  const int n_out = static_cast<int>(out_rows.size());
  std::vector<float> sel(static_cast<size_t>(n_out) * h);
  for (int i = 0; i < n_out; ++i) {
    std::memcpy(&sel[static_cast<size_t>(i) * h], &x[static_cast<size_t>(out_rows[size_t(i)]) * h],
                sizeof(float) * h);
  }
  std::vector<float> normed(sel.size());
  cpu::rmsnorm(sel.data(), w_.final_norm.data(), normed.data(), n_out, h, eps);
  std::vector<float> logits(static_cast<size_t>(n_out) * vocab);
  const std::vector<float>& head = w_.lm_head.empty() ? w_.embed : w_.lm_head;
  cpu::linear(normed.data(), head.data(), logits.data(), n_out, vocab, h);
  return logits;
}

}  // namespace sagellm
