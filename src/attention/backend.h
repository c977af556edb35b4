// Attention backend interface and registry. A backend computes, for a varlen batch of requests,
// softmax(q k^T * sm_scale) v over each request's pages in the paged KV cache, where the new
// tokens' K/V have already been written. Causal masks are aligned bottom-right: query i of a
// request with q_len new tokens and kv_len cached tokens (new ones included) sees keys
// 0 .. kv_len - q_len + i.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kv_cache/kv_cache.h"

namespace sagellm {

struct AttentionShape {
  int num_heads = 0;
  int num_kv_heads = 0;  // GQA: query head h reads KV head h / (num_heads / num_kv_heads)
  int head_dim = 0;
  float sm_scale = 0.0f;  // usually 1/sqrt(head_dim)
};

struct AttentionSeq {
  int q_start = 0;         // first row of this request in q and out
  int q_len = 0;           // new tokens
  int kv_len = 0;          // tokens in the cache for this request, the new ones included
  std::vector<int> pages;  // block table: page of tokens [i*page_size, (i+1)*page_size)
};

struct AttentionBatch {
  std::vector<AttentionSeq> seqs;
  bool causal = true;
};

struct AttentionOptions {
  // sage_attn: "fp8", "int8" or "fp16" for P and V in the P.V product (sage_numerics.h).
  std::string sage_pv_dtype = "fp8";
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual std::string_view name() const = 0;
  // The cache dtype `--kv-cache-dtype auto` resolves to for this backend.
  virtual KVCacheDType default_kv_cache_dtype() const = 0;
  // How an 8-bit cache used with this backend encodes V (its P.V product reads the codes).
  virtual KVValueCodes kv_value_codes() const { return KVValueCodes::kFp8E4M3; }
  // q: [total_q][num_heads * head_dim] rows in batch order; out: same shape.
  virtual void forward(const AttentionShape& shape, const AttentionBatch& batch,
                       const PagedKVCache& cache, int layer, const float* q, float* out) const = 0;
};

// Names accepted by make_attention_backend, the default first.
std::vector<std::string> attention_backend_names();
// Throws sagellm::Error "unknown attention backend 'x' (choose one of: flash, sage_attn)".
std::unique_ptr<AttentionBackend> make_attention_backend(std::string_view name,
                                                         const AttentionOptions& options = {});

}  // namespace sagellm
