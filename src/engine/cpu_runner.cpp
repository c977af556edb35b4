// The CPU execution target: LlamaModel (float32) over a PagedKVCache in host memory.
#include <algorithm>

#include "attention/timed_attention.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/model_runner.h"
#include "model/weight_source.h"

namespace sagellm {

namespace {

KVCacheShape cpu_cache_shape(const EngineOptions& o, const io::ModelConfig& c, KVCacheDType dtype,
                             int64_t context_length) {
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_size = o.page_size;
  // The CPU cache keeps float storage for every page (plus the 8-bit copy in int8 mode).
  const double bytes_per_token = static_cast<double>(c.num_layers) * c.num_kv_heads * c.head_dim *
                                 2.0 * (dtype == KVCacheDType::kInt8 ? 5.0 : 4.0);
  int64_t tokens = o.kv_cache_tokens;
  if (tokens <= 0) {
    const auto fit = static_cast<int64_t>(static_cast<double>(o.kv_cache_bytes) / bytes_per_token);
    // Room for several full-length requests, within the memory budget.
    tokens = std::min<int64_t>(std::max<int64_t>(context_length, 8192), fit);
  }
  SAGELLM_CHECK(tokens >= 1, "the KV cache budget holds no token (raise --kv-cache-tokens)");
  SAGELLM_CHECK(tokens / o.page_size < (int64_t{1} << 30), "--kv-cache-tokens {} is too large",
                tokens);
  s.num_pages = static_cast<int>((tokens + o.page_size - 1) / o.page_size);
  return s;
}

class CpuRunner final : public ModelRunner {
 public:
  CpuRunner(const EngineOptions& o, const AttentionBackend& backend, int64_t context_length)
      : model_(o.load_format == "dummy"
                   ? LlamaModel::from_weights(*dummy_weights(io::load_model_config(o.model_dir),
                                                             /*seed=*/0))
                   : LlamaModel::load(o.model_dir)),
        backend_(backend),
        cache_(cpu_cache_shape(o, model_.config(),
                               resolve_kv_cache_dtype(o.kv_cache_dtype, backend), context_length),
               resolve_kv_cache_dtype(o.kv_cache_dtype, backend)) {}

  const io::ModelConfig& config() const override { return model_.config(); }
  KVCacheDType kv_cache_dtype() const override { return cache_.dtype(); }
  int page_size() const override { return cache_.shape().page_size; }
  int num_pages() const override { return cache_.shape().num_pages; }
  int num_free_pages() const override { return cache_.num_free_pages(); }
  std::optional<int> allocate_page() override { return cache_.allocate(); }
  void release_page(int page) override { cache_.release(page); }
  std::vector<float> forward(const ForwardBatch& batch,
                             const ActivationObserver& observer) override {
    if (time_attention_) return model_.forward(batch, cache_, timed_, observer);
    return model_.forward(batch, cache_, backend_, observer);
  }
  bool set_attention_timing(bool on) override {
    time_attention_ = on;
    return true;
  }
  double take_attention_seconds() override {
    const double t = timed_.seconds();
    timed_.reset();
    return t;
  }
  EngineMemory memory() const override {
    EngineMemory m;
    m.device = "cpu";
    m.weight_bytes = model_.weight_bytes();
    m.kv_bytes_per_token = cache_.bytes_per_token();
    m.kv_capacity_tokens =
        static_cast<int64_t>(cache_.shape().num_pages) * cache_.shape().page_size;
    m.kv_pool_bytes = m.kv_bytes_per_token * static_cast<size_t>(m.kv_capacity_tokens);
    return m;
  }
  const LlamaModel* cpu_model() const override { return &model_; }
  const PagedKVCache* cpu_cache() const override { return &cache_; }

 private:
  LlamaModel model_;
  const AttentionBackend& backend_;
  TimedAttention timed_{backend_};  // wall time inside the backend, while timing is on
  bool time_attention_ = false;
  PagedKVCache cache_;
};

}  // namespace

KVCacheDType resolve_kv_cache_dtype(std::string_view name, const AttentionBackend& backend) {
  if (name == "auto") return backend.default_kv_cache_dtype();
  // On the CPU the exact cache is float32; "bf16" names the exact cache of the GPU path.
  if (name == "fp32" || name == "bf16") return KVCacheDType::kFloat;
  if (name == "int8") return KVCacheDType::kInt8;
  fail("unknown --kv-cache-dtype '{}' (choose one of: auto, bf16, fp32, int8)", name);
}

std::unique_ptr<ModelRunner> make_cpu_runner(const EngineOptions& options,
                                             const AttentionBackend& backend,
                                             int64_t context_length) {
  SAGELLM_CHECK(options.load_format == "auto" || options.load_format == "safetensors" ||
                    options.load_format == "dummy",
                "unknown --load-format '{}' (choose one of: auto, safetensors, dummy)",
                options.load_format);
  return std::make_unique<CpuRunner>(options, backend, context_length);
}

}  // namespace sagellm
