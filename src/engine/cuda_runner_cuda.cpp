// The CUDA execution target: LlamaCudaModel (bf16) over a GpuKVCache sized from the memory
// --mem-fraction-static leaves, attention through the backend's CUDA kernels.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "attention/cuda_attention.h"
#include "core/cuda_check.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/model_runner.h"
#include "kv_cache/kv_cache_cuda.h"
#include "model/llama_cuda.h"
#include "model/weight_source.h"

namespace sagellm {

namespace {

// Without --kv-cache-tokens the pool takes the whole budget, up to this many tokens (a small
// model would otherwise reserve tens of GiB it can never use).
constexpr int64_t kMaxDefaultKVTokens = int64_t{1} << 22;

std::unique_ptr<WeightSource> weight_source(const EngineOptions& o) {
  if (o.load_format == "dummy") return dummy_weights(io::load_model_config(o.model_dir), 0);
  SAGELLM_CHECK(o.load_format == "auto" || o.load_format == "safetensors",
                "unknown --load-format '{}' (choose one of: auto, safetensors, dummy)",
                o.load_format);
  return checkpoint_weights(o.model_dir);
}

KVCacheShape gpu_cache_shape(const EngineOptions& o, const io::ModelConfig& c) {
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_size = o.page_size;
  s.num_pages = 1;
  const size_t per_token = GpuKVCache::bytes_per_token(s);
  const GpuMemoryInfo mem = gpu_memory_info();
  const double used = static_cast<double>(mem.total - mem.free);
  const double budget = o.mem_fraction_static * static_cast<double>(mem.total) - used;
  const auto fit = static_cast<int64_t>(std::max(budget, 0.0) / static_cast<double>(per_token));
  int64_t tokens = o.kv_cache_tokens;
  if (tokens > 0) {
    SAGELLM_CHECK(tokens <= fit,
                  "--kv-cache-tokens {} needs {:.2f} GiB of KV cache, but --mem-fraction-static "
                  "{} leaves {:.2f} GiB after the weights ({:.2f} of {:.2f} GiB in use)",
                  tokens, static_cast<double>(tokens) * per_token / (1 << 30),
                  o.mem_fraction_static, std::max(budget, 0.0) / (1 << 30), used / (1 << 30),
                  static_cast<double>(mem.total) / (1 << 30));
  } else {
    tokens = std::min(fit, kMaxDefaultKVTokens);
  }
  SAGELLM_CHECK(tokens >= o.page_size,
                "no room for the KV cache: --mem-fraction-static {} of {:.2f} GiB leaves {:.2f} "
                "GiB after the weights and buffers ({:.2f} GiB in use); raise "
                "--mem-fraction-static or use a smaller model",
                o.mem_fraction_static, static_cast<double>(mem.total) / (1 << 30),
                std::max(budget, 0.0) / (1 << 30), used / (1 << 30));
  SAGELLM_CHECK(tokens / o.page_size < (int64_t{1} << 30), "--kv-cache-tokens {} is too large",
                tokens);
  s.num_pages = static_cast<int>(tokens / o.page_size);
  return s;
}

class CudaRunner final : public ModelRunner {
 public:
  CudaRunner(const EngineOptions& o, std::unique_ptr<CudaAttention> attention)
      : attention_(std::move(attention)),
        model_(*weight_source(o), o.prefill_chunk),
        cache_(gpu_cache_shape(o, model_.config())) {
    const std::string why = attention_->unsupported_reason(model_.attention_shape(), o.page_size);
    SAGELLM_CHECK(why.empty(), "attention backend {} cannot run this model on the GPU: {}",
                  attention_->name(), why);
    model_.set_cuda_graphs(!o.disable_cuda_graph);
    SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  const io::ModelConfig& config() const override { return model_.config(); }
  KVCacheDType kv_cache_dtype() const override { return KVCacheDType::kFloat; }
  int page_size() const override { return cache_.shape().page_size; }
  int num_pages() const override { return cache_.shape().num_pages; }
  int num_free_pages() const override { return cache_.num_free_pages(); }
  std::optional<int> allocate_page() override { return cache_.allocate(); }
  void release_page(int page) override { cache_.release(page); }
  std::vector<float> forward(const ForwardBatch& batch,
                             const ActivationObserver& observer) override {
    return model_.forward(batch, cache_, *attention_, observer);
  }
  size_t cuda_graphs_captured() const override { return model_.cuda_graphs_captured(); }
  EngineMemory memory() const override {
    EngineMemory m;
    m.device = "cuda";
    m.weight_bytes = model_.weight_bytes();
    m.kv_bytes_per_token = cache_.bytes_per_token();
    m.kv_capacity_tokens =
        static_cast<int64_t>(cache_.shape().num_pages) * cache_.shape().page_size;
    m.kv_pool_bytes = cache_.bytes();
    const GpuMemoryInfo mem = gpu_memory_info();
    m.device_total_bytes = mem.total;
    m.device_used_bytes = mem.total - mem.free;
    return m;
  }

 private:
  std::unique_ptr<CudaAttention> attention_;
  LlamaCudaModel model_;
  GpuKVCache cache_;
};

}  // namespace

std::unique_ptr<ModelRunner> make_cuda_runner(const EngineOptions& options,
                                              int64_t context_length) {
  (void)context_length;  // the GPU pool is sized by memory, not by the context length
  SAGELLM_CHECK(options.mem_fraction_static > 0.0 && options.mem_fraction_static < 1.0,
                "--mem-fraction-static must be in (0, 1) (got {})", options.mem_fraction_static);
  SAGELLM_CHECK(options.kv_cache_dtype == "auto" || options.kv_cache_dtype == "bf16",
                "--kv-cache-dtype {} is not available on the GPU yet (the GPU cache is bf16)",
                options.kv_cache_dtype);
  const GpuInfo gpu = require_supported_gpu(0);
  SAGELLM_CUDA_CHECK(cudaSetDevice(gpu.device));
  std::unique_ptr<CudaAttention> attention =
      make_cuda_attention(options.attention_backend, options.attention_options);
  return std::make_unique<CudaRunner>(options, std::move(attention));
}

}  // namespace sagellm
