// The CUDA execution target: LlamaCudaModel (bf16) over a GpuKVCache sized from the memory
// --mem-fraction-static leaves, attention through the backend's CUDA kernels; with --tp-size N,
// one such rank per GPU holding its shard of the model (parallel/tp_shard.h).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "attention/cuda_attention.h"
#include "core/cuda_check.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/model_runner.h"
#include "kv_cache/kv_cache_cuda.h"
#include "kv_cache/kv_cache_step.h"
#include "model/forward_rows.h"
#include "model/llama_cuda.h"
#include "model/weight_source.h"
#include "parallel/nccl_group.h"
#include "parallel/rank_pages.h"
#include "parallel/rank_threads.h"
#include "parallel/tp_shard.h"

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
// partly filled page, and a step holds at most EngineOptions::max_running_requests requests (the
// scheduler's --max-running-requests), so that many slots (fewer for a pool of fewer pages) never
// run out there; a step that needs more than there are fails with a clear error
// (kv_cache_step.h). A slot holds a page of K and V in bf16 for every layer (8 MiB for
// Llama-3.1-8B), memory the 8-bit pages do not get.

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

// The KV cache one rank makes: its shape, dtype and tail slots.
struct GpuCachePlan {
  KVCacheShape shape;
  KVCacheDType dtype = KVCacheDType::kFloat;
  int tail_slots = 0;
};

// The cache --mem-fraction-static leaves room for on the current device after the weights and
// activation buffers (the pages and, for an 8-bit cache, its tail pool), once the backend said it
// can read it.
GpuCachePlan plan_gpu_cache(const EngineOptions& o, const LlamaCudaModel& model,
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
  SAGELLM_CHECK(o.max_running_requests >= 1, "--max-running-requests must be >= 1 (got {})",
                o.max_running_requests);
  const int max_tails = o.max_running_requests;
  auto tail_slots = [&](int64_t pages) {
    return int8 ? static_cast<int>(std::min<int64_t>(pages, max_tails)) : 0;
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
  // The most tokens the budget holds: with up to max_tails pages every page has its slot.
  int64_t fit = 0;
  if (!int8) {
    fit = static_cast<int64_t>(budget / static_cast<double>(per_token));
  } else {
    const double big = budget - static_cast<double>(max_tails) * static_cast<double>(per_slot);
    const auto pages_big = static_cast<int64_t>(std::max(big, 0.0) / static_cast<double>(per_page));
    const int64_t pages =
        pages_big >= max_tails
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
  return GpuCachePlan{s, dtype, tail_slots(s.num_pages)};
}

// One tensor-parallel rank: its GPU, attention kernels, shard of the model and KV cache.
struct CudaRank {
  int device = 0;
  std::unique_ptr<CudaAttention> attention;
  std::unique_ptr<LlamaCudaModel> model;
  std::unique_ptr<GpuKVCache> cache;
};

// With --tp-size N the ranks are GPUs 0..N-1, one thread each (rank_threads.h), meeting in an
// NcclGroup; with one rank it runs on the caller's thread and needs no NCCL.
class CudaRunner final : public ModelRunner {
 public:
  CudaRunner(const EngineOptions& o, KVCacheDType dtype) {
    const std::unique_ptr<WeightSource> weights = weight_source(o);
    config_ = weights->config();
    const int size = o.tp_size;
    std::vector<int> devices(static_cast<size_t>(size));
    for (int r = 0; r < size; ++r) devices[static_cast<size_t>(r)] = r;
    if (size > 1) {
      group_ = std::make_unique<NcclGroup>(devices);
      threads_ = std::make_unique<RankThreads>(size);
    }
    ranks_.resize(static_cast<size_t>(size));
    // Each rank loads its shard on its own device; the caches are sized once every rank's
    // weights are in, to the tokens the fullest device still holds.
    std::vector<GpuCachePlan> plans(ranks_.size());
    on_every_rank([&](int r) {
      CudaRank& rank = ranks_[static_cast<size_t>(r)];
      rank.device = devices[static_cast<size_t>(r)];
      SAGELLM_CUDA_CHECK(cudaSetDevice(rank.device));
      rank.attention = make_cuda_attention(o.attention_backend, o.attention_options);
      rank.model = std::make_unique<LlamaCudaModel>(*weights, o.prefill_chunk,
                                                    tp_shard(config_, r, size), group_.get());
      rank.model->set_cuda_graphs(!o.disable_cuda_graph);
      plans[static_cast<size_t>(r)] = plan_gpu_cache(o, *rank.model, *rank.attention, dtype);
    });
    int pages = plans[0].shape.num_pages;
    for (const GpuCachePlan& p : plans) pages = std::min(pages, p.shape.num_pages);
    on_every_rank([&](int r) {
      CudaRank& rank = ranks_[static_cast<size_t>(r)];
      GpuCachePlan p = plans[static_cast<size_t>(r)];
      p.shape.num_pages = pages;
      p.tail_slots = std::min(p.tail_slots, pages);
      rank.cache = std::make_unique<GpuKVCache>(p.shape, p.dtype, p.tail_slots);
      SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
    });
  }

  ~CudaRunner() override {
    // Each rank's CUDA objects go with its device current.
    try {
      on_every_rank([&](int r) {
        CudaRank& rank = ranks_[static_cast<size_t>(r)];
        (void)cudaSetDevice(rank.device);
        rank.cache.reset();
        rank.model.reset();
        rank.attention.reset();
      });
    } catch (...) {  // NOLINT(bugprone-empty-catch): nothing to report from a destructor
    }
  }

  const io::ModelConfig& config() const override { return config_; }
  KVCacheDType kv_cache_dtype() const override { return cache0().dtype(); }
  int page_size() const override { return cache0().shape().page_size; }
  int num_pages() const override { return cache0().shape().num_pages; }
  int num_free_pages() const override { return cache0().num_free_pages(); }
  std::optional<int> allocate_page() override {
    return allocate_page_on_every_rank(static_cast<int>(ranks_.size()), [&](int r) -> GpuKVCache& {
      return *ranks_[static_cast<size_t>(r)].cache;
    });
  }
  void release_page(int page) override {
    for (CudaRank& rank : ranks_) rank.cache->release(page);
  }
  std::vector<float> forward(const ForwardBatch& batch,
                             const ActivationObserver& observer) override {
    check_before_ranks(batch);
    std::vector<float> logits;
    on_every_rank([&](int r) {
      CudaRank& rank = ranks_[static_cast<size_t>(r)];
      std::vector<float> out = rank.model->forward(batch, *rank.cache, *rank.attention, observer);
      if (r == 0) logits = std::move(out);
    });
    return logits;
  }
  // The draws run on rank 0's GPU, on the logits it gathered; only the ids are copied back.
  std::vector<int32_t> forward_sample(const ForwardBatch& batch,
                                      std::span<const sampling::DrawParams> draws) override {
    const size_t rows =
        batch.logits_mode == LogitsMode::kAll ? batch.tokens.size() : batch.attention.seqs.size();
    SAGELLM_CHECK(draws.size() == rows, "forward_sample: {} draws for {} logits rows", draws.size(),
                  rows);
    check_before_ranks(batch);
    std::vector<int32_t> ids;
    on_every_rank([&](int r) {
      CudaRank& rank = ranks_[static_cast<size_t>(r)];
      std::vector<int32_t> out =
          rank.model->forward_sample(batch, *rank.cache, *rank.attention, draws);
      if (r == 0) ids = std::move(out);
    });
    return ids;
  }
  size_t cuda_graphs_captured() const override { return ranks_[0].model->cuda_graphs_captured(); }
  bool set_attention_timing(bool on) override {
    for (CudaRank& rank : ranks_) rank.model->set_attention_timing(on);
    return true;
  }
  // Rank 0's: the ranks run their heads at the same time.
  double take_attention_seconds() override {
    double t = 0;
    for (size_t r = 0; r < ranks_.size(); ++r) {
      const double rank_t = ranks_[r].model->take_attention_seconds();
      if (r == 0) t = rank_t;
    }
    return t;
  }
  EngineMemory memory() const override {
    EngineMemory m;
    m.device = "cuda";
    m.tp_size = static_cast<int>(ranks_.size());
    for (const CudaRank& rank : ranks_) {
      m.weight_bytes += rank.model->weight_bytes();
      m.kv_bytes_per_token += rank.cache->bytes_per_token();  // 8-bit: the sealed pages' bytes
      m.kv_pool_bytes += rank.cache->bytes();                 // 8-bit: with the bf16 tail pool
      int current = 0;
      SAGELLM_CUDA_CHECK(cudaGetDevice(&current));
      SAGELLM_CUDA_CHECK(cudaSetDevice(rank.device));
      const GpuMemoryInfo mem = gpu_memory_info();
      SAGELLM_CUDA_CHECK(cudaSetDevice(current));
      m.device_total_bytes += mem.total;
      m.device_used_bytes += mem.total - mem.free;
    }
    m.kv_capacity_tokens =
        static_cast<int64_t>(cache0().shape().num_pages) * cache0().shape().page_size;
    return m;
  }

 private:
  const GpuKVCache& cache0() const { return *ranks_[0].cache; }

  // With several ranks, a malformed batch or a step the 8-bit cache's tail slots cannot take
  // fails here, once, before any rank starts: a rank failing on its own would abort the NCCL group
  // for good.
  void check_before_ranks(const ForwardBatch& batch) {
    if (!threads_) return;
    (void)plan_forward_rows(batch, config_, page_size(), num_pages());
    if (kv_cache_dtype() == KVCacheDType::kInt8) {
      (void)plan_kv_step(batch.attention, page_size(), ranks_[0].cache->tails());
    }
  }

  // fn(rank) on every rank at once; a failing rank aborts the NCCL group so that the others do not
  // wait for it in a collective (the runner cannot step again after that).
  void on_every_rank(const std::function<void(int)>& fn) {
    if (!threads_) {
      fn(0);
      return;
    }
    threads_->run(fn, [this](const std::string&) { group_->abort(); });
  }

  io::ModelConfig config_;                // the whole model's
  std::unique_ptr<NcclGroup> group_;      // --tp-size > 1
  std::unique_ptr<RankThreads> threads_;  // --tp-size > 1
  std::vector<CudaRank> ranks_;
};

}  // namespace

std::unique_ptr<ModelRunner> make_cuda_runner(const EngineOptions& options,
                                              int64_t context_length) {
  (void)context_length;  // the GPU pool is sized by memory, not by the context length
  SAGELLM_CHECK(options.mem_fraction_static > 0.0 && options.mem_fraction_static < 1.0,
                "--mem-fraction-static must be in (0, 1) (got {})", options.mem_fraction_static);
  SAGELLM_CHECK(options.tp_size >= 1, "--tp-size must be at least 1 (got {})", options.tp_size);
  const int gpus = cuda_device_count();
  SAGELLM_CHECK(options.tp_size <= std::max(gpus, 1),
                "--tp-size {} needs {} GPUs, and {} {} visible", options.tp_size, options.tp_size,
                gpus, gpus == 1 ? "is" : "are");
  {
    // The split is checked before any weight is loaded.
    const std::string why =
        tp_unsupported_reason(io::load_model_config(options.model_dir), options.tp_size);
    SAGELLM_CHECK(why.empty(), "--tp-size {}: {}", options.tp_size, why);
  }
  for (int r = 0; r < options.tp_size; ++r) (void)require_supported_gpu(r);
  SAGELLM_CUDA_CHECK(cudaSetDevice(0));
  // The backend's name, options and cache dtype are checked once, on GPU 0.
  const std::unique_ptr<CudaAttention> attention =
      make_cuda_attention(options.attention_backend, options.attention_options);
  const KVCacheDType dtype = resolve_gpu_kv_cache_dtype(options.kv_cache_dtype, *attention);
  return std::make_unique<CudaRunner>(options, dtype);
}

}  // namespace sagellm
