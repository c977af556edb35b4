// What the engine needs from an execution target: a model, its paged KV cache (pages handed out
// by index) and one forward step. The CPU runner (float32) is the reference; the CUDA runner
// (bf16) is built only with CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "io/model_config.h"
#include "kernels/cuda/sampling_select.h"
#include "kv_cache/kv_cache.h"
#include "model/llama.h"

namespace sagellm {

struct EngineOptions;

// Memory the engine holds, measured where the device allows (GPU: cudaMemGetInfo and the
// allocator's sizes; CPU: the sizes of the buffers allocated).
struct EngineMemory {
  std::string device;
  int tp_size = 1;                // ranks; the sizes below are summed over them
  size_t weight_bytes = 0;        // weights as held on the device
  size_t kv_bytes_per_token = 0;  // all layers, K and V, as the cache stores them
  size_t kv_pool_bytes = 0;       // the whole paged KV cache
  int64_t kv_capacity_tokens = 0;
  size_t device_total_bytes = 0;  // GPU only
  size_t device_used_bytes = 0;   // GPU only: total - free, now
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const io::ModelConfig& config() const = 0;
  virtual KVCacheDType kv_cache_dtype() const = 0;
  virtual int page_size() const = 0;
  virtual int num_pages() const = 0;
  virtual int num_free_pages() const = 0;
  virtual std::optional<int> allocate_page() = 0;
  virtual void release_page(int page) = 0;
  virtual std::vector<float> forward(const ForwardBatch& batch,
                                     const ActivationObserver& observer) = 0;
  // A forward step that returns, instead of the logits, the token each logits row draws:
  // draws[k] (the request's filters and the uniform its Sampler drew) applied to row k as
  // sample_with_uniform does, -1 for a row in which nothing can be drawn. draws has one entry per
  // logits row (forward's rows). The default runs forward() and samples on the host; the CUDA
  // runner samples on the device and copies back only the ids.
  virtual std::vector<int32_t> forward_sample(const ForwardBatch& batch,
                                              std::span<const sampling::DrawParams> draws);
  virtual EngineMemory memory() const = 0;
  // CUDA graphs captured so far for decode steps (0 on the CPU).
  virtual size_t cuda_graphs_captured() const { return 0; }
  // Times the attention work inside forward steps (CPU: wall time inside the attention backend;
  // GPU: GPU time of each layer's sealing, KV write and attention kernels, see LlamaCudaModel);
  // returns false where the runner cannot time it. take_attention_seconds() returns the total
  // since the last call.
  virtual bool set_attention_timing(bool /*on*/) { return false; }
  virtual double take_attention_seconds() { return 0; }
  // The CPU model and cache, for measurements that drive them directly (validate); null on the GPU.
  virtual const LlamaModel* cpu_model() const { return nullptr; }
  virtual const PagedKVCache* cpu_cache() const { return nullptr; }
};

// Resolves --kv-cache-dtype for a backend; throws on unknown names.
KVCacheDType resolve_kv_cache_dtype(std::string_view name, const AttentionBackend& backend);

// The CPU runner: `backend` must outlive it.
std::unique_ptr<ModelRunner> make_cpu_runner(const EngineOptions& options,
                                             const AttentionBackend& backend,
                                             int64_t context_length);

// The CUDA runner (bf16 on GPU 0; CUDA builds only): the KV cache takes what
// --mem-fraction-static leaves of the GPU's memory after the weights and activation buffers.
std::unique_ptr<ModelRunner> make_cuda_runner(const EngineOptions& options, int64_t context_length);

}  // namespace sagellm
