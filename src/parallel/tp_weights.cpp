#include "parallel/tp_weights.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"

namespace sagellm {

namespace {

bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

// How a tensor is cut: rows [begin, begin + count) of a [rows][cols] matrix (zero rows past its
// end), or those columns of every row.
struct Cut {
  enum Kind { kWhole, kRows, kCols } kind = kWhole;
  int64_t begin = 0, count = 0;
  int64_t full = 0;  // rows (kRows) or columns (kCols) of the whole tensor
};

class ShardWeights final : public WeightSource {
 public:
  ShardWeights(const WeightSource& full, const TpShard& shard)
      : full_(full), shard_(shard), config_(tp_shard_config(full.config(), shard)) {}

  const io::ModelConfig& config() const override { return config_; }
  bool contains(std::string_view name) const override { return full_.contains(name); }

  std::vector<float> load(std::string_view name, std::span<const int64_t> shape) const override {
    const Cut cut = cut_for(name);
    if (cut.kind == Cut::kWhole) return full_.load(name, shape);
    SAGELLM_CHECK(shape.size() == 2, "tensor {}: a rank's slice is a matrix, asked for rank {}",
                  name, shape.size());
    const int64_t rows = shape[0], cols = shape[1];
    if (cut.kind == Cut::kRows) {
      SAGELLM_CHECK(rows == cut.count, "tensor {}: rank {} holds {} rows, asked for {}", name,
                    shard_.rank, cut.count, rows);
      const std::vector<int64_t> whole{cut.full, cols};
      const std::vector<float> w = full_.load(name, whole);
      std::vector<float> out(static_cast<size_t>(rows * cols), 0.0f);
      const int64_t real = std::clamp<int64_t>(cut.full - cut.begin, 0, rows);
      std::memcpy(out.data(), w.data() + cut.begin * cols, sizeof(float) * real * cols);
      return out;
    }
    SAGELLM_CHECK(cols == cut.count, "tensor {}: rank {} holds {} columns, asked for {}", name,
                  shard_.rank, cut.count, cols);
    const std::vector<int64_t> whole{rows, cut.full};
    const std::vector<float> w = full_.load(name, whole);
    std::vector<float> out(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out.data() + r * cols, w.data() + r * cut.full + cut.begin, sizeof(float) * cols);
    }
    return out;
  }

 private:
  Cut cut_for(std::string_view name) const {
    const io::ModelConfig& c = full_.config();
    const TpShard& s = shard_;
    const int64_t d = c.head_dim;
    Cut cut;
    if (!s.sharded()) return cut;
    if (ends_with(name, "self_attn.q_proj.weight")) {
      cut = {Cut::kRows, s.head_begin * d, s.heads * d, int64_t{c.num_heads} * d};
    } else if (ends_with(name, "self_attn.k_proj.weight") ||
               ends_with(name, "self_attn.v_proj.weight")) {
      cut = {Cut::kRows, s.kv_head_begin * d, s.kv_heads * d, int64_t{c.num_kv_heads} * d};
    } else if (ends_with(name, "self_attn.o_proj.weight")) {
      cut = {Cut::kCols, s.head_begin * d, s.heads * d, int64_t{c.num_heads} * d};
    } else if (ends_with(name, "mlp.gate_proj.weight") || ends_with(name, "mlp.up_proj.weight")) {
      cut = {Cut::kRows, s.inter_begin, s.inter, c.intermediate_size};
    } else if (ends_with(name, "mlp.down_proj.weight")) {
      cut = {Cut::kCols, s.inter_begin, s.inter, c.intermediate_size};
    } else if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
      cut = {Cut::kRows, s.vocab_begin, s.vocab_rows, c.vocab_size};
    }
    return cut;
  }

  const WeightSource& full_;
  TpShard shard_;
  io::ModelConfig config_;
};

}  // namespace

std::unique_ptr<WeightSource> tp_shard_weights(const WeightSource& full, const TpShard& shard) {
  return std::make_unique<ShardWeights>(full, shard);
}

}  // namespace sagellm
