// Megatron-style tensor parallelism for the Llama forward pass: which part of each weight one rank
// of `size` holds. Query heads, and with them the KV heads they read, are split across ranks
// (column-parallel QKV, row-parallel O), as are the MLP's intermediate columns (column-parallel
// gate/up, row-parallel down) and the vocabulary (embedding and lm_head rows). After each
// row-parallel GEMM and after the embedding the ranks' partial results are summed (all-reduce);
// each rank's lm_head slice of the logits is gathered at the end.
//
// A shard of size 1 holds everything, so a single-rank run goes through the same code.
#pragma once

#include <string>

#include "io/model_config.h"

namespace sagellm {

struct TpShard {
  int rank = 0;
  int size = 1;
  int head_begin = 0, heads = 0;        // query heads [head_begin, head_begin + heads)
  int kv_head_begin = 0, kv_heads = 0;  // the KV heads those query heads read
  int inter_begin = 0, inter = 0;       // MLP intermediate columns
  // Embedding and lm_head rows [vocab_begin, vocab_begin + vocab_rows): the same count on every
  // rank, so the logits gather has equal parts; rows past the vocabulary are zero padding.
  int vocab_begin = 0, vocab_rows = 0;
  int vocab = 0;  // the whole vocabulary (token ids are checked against it)

  bool sharded() const { return size > 1; }
  // Rows of this rank's lm_head slice that are real tokens (the rest is padding).
  int vocab_valid() const;
};

// Why `size` ranks cannot split this model ("" when they can): the query heads must divide
// evenly, and either the KV heads divide evenly too or each rank's query heads read a single KV
// head (more ranks than KV heads: that head is held by several ranks).
std::string tp_unsupported_reason(const io::ModelConfig& config, int size);

// The part rank `rank` of `size` holds; throws sagellm::Error when the split is unsupported.
TpShard tp_shard(const io::ModelConfig& config, int rank, int size);

// The model one rank runs: its heads, KV heads and intermediate columns; hidden size, head_dim,
// layers and vocab_size (the token id range) are the whole model's.
io::ModelConfig tp_shard_config(const io::ModelConfig& config, const TpShard& shard);

}  // namespace sagellm
