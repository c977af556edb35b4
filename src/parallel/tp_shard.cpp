#include "parallel/tp_shard.h"

#include <algorithm>

#include "core/error.h"

namespace sagellm {

int TpShard::vocab_valid() const { return std::clamp(vocab - vocab_begin, 0, vocab_rows); }

std::string tp_unsupported_reason(const io::ModelConfig& c, int size) {
  if (size < 1) return fmt::format("the tensor-parallel size must be at least 1 (got {})", size);
  if (size == 1) return "";
  if (c.num_heads % size != 0) {
    return fmt::format("{} attention heads do not split evenly over {} ranks", c.num_heads, size);
  }
  if (c.num_kv_heads % size != 0 && size % c.num_kv_heads != 0) {
    return fmt::format(
        "{} KV heads neither split evenly over {} ranks nor divide the rank count evenly",
        c.num_kv_heads, size);
  }
  if (c.intermediate_size < size) {
    return fmt::format("intermediate size {} is smaller than {} ranks", c.intermediate_size, size);
  }
  const int rows = (c.vocab_size + size - 1) / size;
  if (static_cast<int64_t>(rows) * (size - 1) >= c.vocab_size) {
    return fmt::format("a vocabulary of {} tokens is too small for {} ranks", c.vocab_size, size);
  }
  return "";
}

TpShard tp_shard(const io::ModelConfig& c, int rank, int size) {
  const std::string why = tp_unsupported_reason(c, size);
  SAGELLM_CHECK(why.empty(), "--tp-size {}: {}", size, why);
  SAGELLM_CHECK(rank >= 0 && rank < size, "tensor-parallel rank {} is outside [0, {})", rank, size);
  TpShard s;
  s.rank = rank;
  s.size = size;
  s.heads = c.num_heads / size;
  s.head_begin = rank * s.heads;
  // A rank's query heads all read one contiguous run of KV heads: the groups of size
  // num_heads / num_kv_heads that its heads fall in.
  const int group = c.num_heads / c.num_kv_heads;
  s.kv_head_begin = s.head_begin / group;
  s.kv_heads = (s.head_begin + s.heads - 1) / group + 1 - s.kv_head_begin;
  const auto inter_at = [&](int r) {
    return static_cast<int>(static_cast<int64_t>(c.intermediate_size) * r / size);
  };
  s.inter_begin = inter_at(rank);
  s.inter = inter_at(rank + 1) - s.inter_begin;
  s.vocab = c.vocab_size;
  s.vocab_rows = (c.vocab_size + size - 1) / size;
  s.vocab_begin = rank * s.vocab_rows;
  return s;
}

io::ModelConfig tp_shard_config(const io::ModelConfig& config, const TpShard& shard) {
  io::ModelConfig c = config;
  c.num_heads = shard.heads;
  c.num_kv_heads = shard.kv_heads;
  c.intermediate_size = shard.inter;
  return c;
}

}  // namespace sagellm
