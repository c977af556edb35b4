// Which part of a Llama model each tensor-parallel rank holds, and the weight slices it loads.
#include "parallel/tp_shard.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/tp_weights.h"

namespace sagellm {
namespace {

io::ModelConfig llama8b() {
  io::ModelConfig c;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  return c;
}

TEST(TpShard, SplitsHeadsKvHeadsColumnsAndVocabularyWithoutGapsOrOverlap) {
  const io::ModelConfig c = llama8b();
  for (int size : {1, 2, 4, 8, 16, 32}) {
    SCOPED_TRACE(size);
    int heads = 0, inter = 0;
    std::vector<int> kv_holders(static_cast<size_t>(c.num_kv_heads), 0);
    for (int r = 0; r < size; ++r) {
      const TpShard s = tp_shard(c, r, size);
      EXPECT_EQ(s.head_begin, heads);
      heads += s.heads;
      EXPECT_EQ(s.inter_begin, inter);
      inter += s.inter;
      EXPECT_EQ(s.vocab_begin, r * s.vocab_rows);
      EXPECT_GE(s.vocab_valid(), 1);
      EXPECT_EQ(s.vocab, c.vocab_size);
      // Every query head of the rank reads one of the rank's KV heads (GQA groups of 4).
      for (int h = s.head_begin; h < s.head_begin + s.heads; ++h) {
        EXPECT_GE(h / 4, s.kv_head_begin);
        EXPECT_LT(h / 4, s.kv_head_begin + s.kv_heads);
      }
      for (int k = s.kv_head_begin; k < s.kv_head_begin + s.kv_heads; ++k) {
        ++kv_holders[static_cast<size_t>(k)];
      }
      const io::ModelConfig rc = tp_shard_config(c, s);
      EXPECT_EQ(rc.num_heads, s.heads);
      EXPECT_EQ(rc.num_kv_heads, s.kv_heads);
      EXPECT_EQ(rc.intermediate_size, s.inter);
      EXPECT_EQ(rc.hidden_size, c.hidden_size);
      EXPECT_EQ(rc.vocab_size, c.vocab_size);
    }
    EXPECT_EQ(heads, c.num_heads);
    EXPECT_EQ(inter, c.intermediate_size);
    EXPECT_GE(tp_shard(c, size - 1, size).vocab_begin + tp_shard(c, size - 1, size).vocab_rows,
              c.vocab_size);
    // More ranks than KV heads: each KV head is held by size / 8 ranks; otherwise by one.
    for (int n : kv_holders) EXPECT_EQ(n, std::max(1, size / c.num_kv_heads));
  }
}

TEST(TpShard, RejectsSplitsThatDoNotDivideTheHeads) {
  const io::ModelConfig c = llama8b();
  EXPECT_EQ(tp_unsupported_reason(c, 1), "");
  EXPECT_NE(tp_unsupported_reason(c, 3).find("32 attention heads"), std::string::npos);
  EXPECT_NE(tp_unsupported_reason(c, 0), "");
  io::ModelConfig odd = c;
  odd.num_kv_heads = 6;
  odd.num_heads = 24;
  EXPECT_NE(tp_unsupported_reason(odd, 4).find("6 KV heads"), std::string::npos);
  EXPECT_THROW(tp_shard(c, 0, 3), Error);
  EXPECT_THROW(tp_shard(c, 2, 2), Error);
  io::ModelConfig tiny = c;
  tiny.vocab_size = 5;
  EXPECT_NE(tp_unsupported_reason(tiny, 4).find("vocabulary"), std::string::npos);
}

// A source whose element i of tensor `name` is a function of both, at the whole model's shapes.
class IndexedWeights final : public WeightSource {
 public:
  explicit IndexedWeights(io::ModelConfig c) : c_(std::move(c)) {}
  const io::ModelConfig& config() const override { return c_; }
  bool contains(std::string_view) const override { return true; }
  std::vector<float> load(std::string_view name, std::span<const int64_t> shape) const override {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const float base = static_cast<float>(std::hash<std::string_view>{}(name) % 1000) * 1e5f;
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = base + static_cast<float>(i);
    shapes_[std::string(name)] = std::vector<int64_t>(shape.begin(), shape.end());
    return v;
  }
  mutable std::map<std::string, std::vector<int64_t>> shapes_;

 private:
  io::ModelConfig c_;
};

TEST(TpWeights, RanksLoadTheirRowsAndColumnsOfEachTensor) {
  io::ModelConfig c;
  c.hidden_size = 6;
  c.intermediate_size = 10;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 3;
  c.vocab_size = 7;  // over 2 ranks: 4 rows each, the last one padding
  const IndexedWeights full(c);
  const TpShard s = tp_shard(c, 1, 2);
  const auto rank = tp_shard_weights(full, s);
  EXPECT_EQ(rank->config().num_heads, 2);
  const std::vector<float> whole_q =
      full.load("model.layers.0.self_attn.q_proj.weight", std::vector<int64_t>{12, 6});
  const std::vector<float> q =
      rank->load("model.layers.0.self_attn.q_proj.weight", std::vector<int64_t>{6, 6});
  // Rank 1's query heads 2..3: rows 6..11.
  for (int i = 0; i < 36; ++i) EXPECT_EQ(q[size_t(i)], whole_q[size_t(36 + i)]);
  const std::vector<float> whole_o =
      full.load("model.layers.0.self_attn.o_proj.weight", std::vector<int64_t>{6, 12});
  const std::vector<float> o =
      rank->load("model.layers.0.self_attn.o_proj.weight", std::vector<int64_t>{6, 6});
  for (int r = 0; r < 6; ++r) {
    for (int k = 0; k < 6; ++k) EXPECT_EQ(o[size_t(r * 6 + k)], whole_o[size_t(r * 12 + 6 + k)]);
  }
  const std::vector<float> whole_down =
      full.load("model.layers.0.mlp.down_proj.weight", std::vector<int64_t>{6, 10});
  const std::vector<float> down =
      rank->load("model.layers.0.mlp.down_proj.weight", std::vector<int64_t>{6, 5});
  for (int r = 0; r < 6; ++r) {
    for (int k = 0; k < 5; ++k) {
      EXPECT_EQ(down[size_t(r * 5 + k)], whole_down[size_t(r * 10 + 5 + k)]);
    }
  }
  // One KV head (head 1) of k_proj; the embedding's rows 4..6 and one zero row of padding.
  const std::vector<float> whole_k =
      full.load("model.layers.0.self_attn.k_proj.weight", std::vector<int64_t>{6, 6});
  const std::vector<float> k =
      rank->load("model.layers.0.self_attn.k_proj.weight", std::vector<int64_t>{3, 6});
  for (int i = 0; i < 18; ++i) EXPECT_EQ(k[size_t(i)], whole_k[size_t(18 + i)]);
  const std::vector<float> whole_e =
      full.load("model.embed_tokens.weight", std::vector<int64_t>{7, 6});
  const std::vector<float> e = rank->load("model.embed_tokens.weight", std::vector<int64_t>{4, 6});
  for (int i = 0; i < 18; ++i) EXPECT_EQ(e[size_t(i)], whole_e[size_t(24 + i)]);
  for (int i = 18; i < 24; ++i) EXPECT_EQ(e[size_t(i)], 0.0f);
  // Norms are whole; a slice asked for at the wrong shape is an error.
  EXPECT_EQ(rank->load("model.norm.weight", std::vector<int64_t>{6}).size(), 6u);
  EXPECT_THROW(rank->load("model.layers.0.mlp.gate_proj.weight", std::vector<int64_t>{10, 6}),
               Error);
  // A shard of one passes every tensor through.
  const auto one = tp_shard_weights(full, tp_shard(c, 0, 1));
  EXPECT_EQ(one->load("model.layers.0.self_attn.q_proj.weight", std::vector<int64_t>{12, 6}),
            whole_q);
}

}  // namespace
}  // namespace sagellm
