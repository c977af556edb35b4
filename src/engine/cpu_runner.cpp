// The CPU execution target: LlamaModel (float32) over a PagedKVCache in host memory; with
// --tp-size N, N ranks (threads of this process) each hold a shard of the model and of the KV heads
// and meet in a HostGroup's collectives, the CPU twin of the GPU's tensor parallelism.
#include <algorithm>

#include "attention/timed_attention.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/model_runner.h"
#include "model/forward_rows.h"
#include "model/weight_source.h"
#include "parallel/host_group.h"
#include "parallel/rank_pages.h"
#include "parallel/rank_threads.h"
#include "parallel/tp_shard.h"

namespace sagellm {

namespace {

// `c` is the whole model's config; every rank's cache holds the same tokens, `kv_heads` each.
KVCacheShape cpu_cache_shape(const EngineOptions& o, const io::ModelConfig& c, int kv_heads,
                             KVCacheDType dtype, int64_t context_length) {
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = kv_heads;
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

std::unique_ptr<WeightSource> cpu_weight_source(const EngineOptions& o) {
  if (o.load_format == "dummy") {
    return dummy_weights(io::load_model_config(o.model_dir), /*seed=*/0);
  }
  return checkpoint_weights(o.model_dir);
}

class CpuRunner final : public ModelRunner {
 public:
  CpuRunner(const EngineOptions& o, const AttentionBackend& backend, int64_t context_length)
      : backend_(backend) {
    const std::unique_ptr<WeightSource> weights = cpu_weight_source(o);
    config_ = weights->config();
    const int size = o.tp_size;
    SAGELLM_CHECK(size >= 1, "--tp-size must be at least 1 (got {})", size);
    const KVCacheDType dtype = resolve_kv_cache_dtype(o.kv_cache_dtype, backend);
    for (int r = 0; r < size; ++r) {
      const TpShard shard = tp_shard(config_, r, size);
      ranks_.push_back(std::make_unique<Rank>(
          Rank{LlamaModel::from_weights(*weights, shard),
               PagedKVCache(cpu_cache_shape(o, config_, shard.kv_heads, dtype, context_length),
                            dtype, backend.kv_value_codes())}));
    }
    if (size > 1) {
      group_ = std::make_unique<HostGroup>(size);
      for (auto& rank : ranks_) rank->model.set_group(group_.get());
      threads_ = std::make_unique<RankThreads>(size);
    }
  }

  const io::ModelConfig& config() const override { return config_; }
  KVCacheDType kv_cache_dtype() const override { return cache0().dtype(); }
  int page_size() const override { return cache0().shape().page_size; }
  int num_pages() const override { return cache0().shape().num_pages; }
  int num_free_pages() const override { return cache0().num_free_pages(); }
  std::optional<int> allocate_page() override {
    return allocate_page_on_every_rank(
        static_cast<int>(ranks_.size()),
        [&](int r) -> PagedKVCache& { return ranks_[static_cast<size_t>(r)]->cache; });
  }
  void release_page(int page) override {
    for (auto& rank : ranks_) rank->cache.release(page);
  }
  std::vector<float> forward(const ForwardBatch& batch,
                             const ActivationObserver& observer) override {
    // Rank 0's attention is the one timed: the ranks run their heads at the same time.
    auto step = [&](int r) {
      Rank& rank = *ranks_[static_cast<size_t>(r)];
      const AttentionBackend& attention =
          time_attention_ && r == 0 ? static_cast<const AttentionBackend&>(timed_) : backend_;
      return rank.model.forward(batch, rank.cache, attention, observer);
    };
    if (!threads_) return step(0);
    // A malformed batch fails here, once, before any rank starts.
    (void)plan_forward_rows(batch, config_, page_size(), num_pages());
    std::vector<float> logits;
    try {
      threads_->run(
          [&](int r) {
            std::vector<float> out = step(r);
            if (r == 0) logits = std::move(out);
          },
          [&](const std::string& why) { group_->abort(why); });
    } catch (...) {
      group_->reset();  // every rank has returned: none is inside a collective
      throw;
    }
    return logits;
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
    m.tp_size = static_cast<int>(ranks_.size());
    for (const auto& rank : ranks_) {
      m.weight_bytes += rank->model.weight_bytes();
      m.kv_bytes_per_token += rank->cache.bytes_per_token();
    }
    m.kv_capacity_tokens =
        static_cast<int64_t>(cache0().shape().num_pages) * cache0().shape().page_size;
    m.kv_pool_bytes = m.kv_bytes_per_token * static_cast<size_t>(m.kv_capacity_tokens);
    return m;
  }
  // Measurements that drive the model directly need the whole model: one rank.
  const LlamaModel* cpu_model() const override {
    return ranks_.size() == 1 ? &ranks_[0]->model : nullptr;
  }
  const PagedKVCache* cpu_cache() const override {
    return ranks_.size() == 1 ? &ranks_[0]->cache : nullptr;
  }

 private:
  struct Rank {
    LlamaModel model;
    PagedKVCache cache;
  };
  const PagedKVCache& cache0() const { return ranks_[0]->cache; }

  io::ModelConfig config_;  // the whole model's
  const AttentionBackend& backend_;
  TimedAttention timed_{backend_};  // wall time inside the backend, while timing is on
  bool time_attention_ = false;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<HostGroup> group_;      // --tp-size > 1
  std::unique_ptr<RankThreads> threads_;  // --tp-size > 1
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
