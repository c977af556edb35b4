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

// Tail slots of an 8-bit cache (bf16 storage for pages not yet full): a request has at most one
// partly filled page, and the scheduler runs at most 256 requests at once by default
// (--max-running-requests), so 256 slots (fewer for a pool of fewer pages) never run out there; a
// step that needs more than there are fails with a clear error (kv_cache_step.h). A slot holds a
// page of K and V in bf16 for every layer (8 MiB for Llama-3.1-8B).
constexpr int kMaxTailSlots = 256;

// --kv-cache-dtype on the GPU, where the exact cache is bf16.
KVCacheDType resolve_gpu_kv_cache_dtype(const std::string& name, const CudaAttention& attention) {
  if (name == "auto") return attention.default_kv_cache_dtype();
  if (name == "bf16") return KVCacheDType::kFloat;
  if (name == "int8") return KVCacheDType::kInt8;
  SAGELLM_CHECK(name != "fp32",
                "--kv-cache-dtype fp32 is not available on the GPU (its exact KV cache is bf16; "
                "use bf16, int8 or auto)");
  fail("unknown --kv-cache-dtype '{}' (choose one of: auto, bf16, fp32, int8)", name);
}

// The cache --mem-fraction-static leaves room for after the weights and activation buffers (the
// pages and, for an 8-bit cache, its tail pool), once the backend said it can read it.
GpuKVCache make_gpu_cache(const EngineOptions& o, const LlamaCudaModel& model,
                          const CudaAttention& attention, KVCacheDType dtype) {
  const std::string why = attention.unsupported_reason(model.attention_shape(), o.page_size, dtype);
  SAGELLM_CHECK(why.empty(),
                "attention backend {} cannot run this model on the GPU with a {} KV cache: {}",
                attention.name(), kv_cache_dtype_name(dtype), why);
  const io::ModelConfig& c = model.config();
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_size = o.page_size;
  s.num_pages = 1;
  const bool int8 = dtype == KVCacheDType::kInt8;
  const size_t per_token = GpuKVCache::bytes_per_token(s, dtype);
  const size_t per_page = per_token * static_cast<size_t>(o.page_size);
  const size_t per_slot = GpuKVCache::tail_pool_bytes(s, 1);
  auto tail_slots = [&](int64_t pages) {
    return int8 ? static_cast<int>(std::min<int64_t>(pages, kMaxTailSlots)) : 0;
  };
  // Pages and tail pool together.
  auto bytes_for = [&](int64_t tokens) {
    const int64_t pages = tokens / o.page_size;
    return static_cast<double>(tokens) * static_cast<double>(per_token) +
           static_cast<double>(tail_slots(pages)) * static_cast<double>(per_slot);
  };
  const GpuMemoryInfo mem = gpu_memory_info();
  const double used = static_cast<double>(mem.total - mem.free);
  const double budget =
      std::max(o.mem_fraction_static * static_cast<double>(mem.total) - used, 0.0);
  // The most tokens the budget holds: with up to kMaxTailSlots pages every page has its slot.
  int64_t fit = 0;
  if (!int8) {
    fit = static_cast<int64_t>(budget / static_cast<double>(per_token));
  } else {
    const double big = budget - static_cast<double>(kMaxTailSlots) * static_cast<double>(per_slot);
    const auto pages_big = static_cast<int64_t>(std::max(big, 0.0) / static_cast<double>(per_page));
    const int64_t pages =
        pages_big >= kMaxTailSlots
            ? pages_big
            : static_cast<int64_t>(budget / static_cast<double>(per_page + per_slot));
    fit = pages * o.page_size;
  }
  int64_t tokens = o.kv_cache_tokens;
  if (tokens > 0) {
    SAGELLM_CHECK(tokens <= fit,
                  "--kv-cache-tokens {} needs {:.2f} GiB of KV cache, but --mem-fraction-static "
                  "{} leaves {:.2f} GiB after the weights ({:.2f} of {:.2f} GiB in use)",
                  tokens, bytes_for(tokens) / (1 << 30), o.mem_fraction_static, budget / (1 << 30),
                  used / (1 << 30), static_cast<double>(mem.total) / (1 << 30));
  } else {
    tokens = std::min(fit, kMaxDefaultKVTokens);
  }
  SAGELLM_CHECK(tokens >= o.page_size,
                "no room for the KV cache: --mem-fraction-static {} of {:.2f} GiB leaves {:.2f} "
                "GiB after the weights and buffers ({:.2f} GiB in use); raise "
                "--mem-fraction-static or use a smaller model",
                o.mem_fraction_static, static_cast<double>(mem.total) / (1 << 30),
                budget / (1 << 30), used / (1 << 30));
  SAGELLM_CHECK(tokens / o.page_size < (int64_t{1} << 30), "--kv-cache-tokens {} is too large",
                tokens);
  s.num_pages = static_cast<int>(tokens / o.page_size);
  return GpuKVCache(s, dtype, tail_slots(s.num_pages));
}

class CudaRunner final : public ModelRunner {
 public:
  CudaRunner(const EngineOptions& o, std::unique_ptr<CudaAttention> attention, KVCacheDType dtype)
      : attention_(std::move(attention)),
        model_(*weight_source(o), o.prefill_chunk),
        cache_(make_gpu_cache(o, model_, *attention_, dtype)) {
    model_.set_cuda_graphs(!o.disable_cuda_graph);
    SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  const io::ModelConfig& config() const override { return model_.config(); }
  KVCacheDType kv_cache_dtype() const override { return cache_.dtype(); }
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
  bool set_attention_timing(bool on) override {
    model_.set_attention_timing(on);
    return true;
  }
  double take_attention_seconds() override { return model_.take_attention_seconds(); }
  EngineMemory memory() const override {
    EngineMemory m;
    m.device = "cuda";
    m.weight_bytes = model_.weight_bytes();
    m.kv_bytes_per_token = cache_.bytes_per_token();  // 8-bit: the sealed pages' bytes
    m.kv_capacity_tokens =
        static_cast<int64_t>(cache_.shape().num_pages) * cache_.shape().page_size;
    m.kv_pool_bytes = cache_.bytes();  // 8-bit: with the bf16 tail pool
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
  const GpuInfo gpu = require_supported_gpu(0);
  SAGELLM_CUDA_CHECK(cudaSetDevice(gpu.device));
  std::unique_ptr<CudaAttention> attention =
      make_cuda_attention(options.attention_backend, options.attention_options);
  const KVCacheDType dtype = resolve_gpu_kv_cache_dtype(options.kv_cache_dtype, *attention);
  return std::make_unique<CudaRunner>(options, std::move(attention), dtype);
}

}  // namespace sagellm
