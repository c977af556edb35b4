// Check 5, memory: weight bytes, KV bytes per token of each backend's cache, what a memory budget
// holds, and what this process really took (resident set growth and peak RSS; on a GPU, device
// memory from cudaMemGetInfo).
#include <algorithm>

#include "eval/validate/process_memory.h"
#include "eval/validate/session.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Resident memory a PagedKVCache of `tokens` tokens in `dtype` adds to this process, per token:
// the CPU cache's real storage (float32 for every page, plus the 8-bit copy in int8 mode).
json measure_cpu_cache(const KVCacheShape& model_shape, KVCacheDType dtype) {
  KVCacheShape s = model_shape;
  const double float_bytes_per_token =
      static_cast<double>(s.num_layers) * s.num_kv_heads * s.head_dim * 2.0 * sizeof(float);
  // Every array of the cache (the 8-bit ones are 1/8 of the float ones) must be above glibc's
  // largest mmap threshold (32 MiB), so it is freshly mapped and fully counted, not carved out of
  // memory the heap already holds.
  const double target = 320.0 * 1024 * 1024;
  s.num_pages = std::max(1, static_cast<int>(target / float_bytes_per_token / s.page_size));
  const int64_t tokens = static_cast<int64_t>(s.num_pages) * s.page_size;
  const size_t rss0 = current_rss_bytes();
  double per_token = 0;
  {
    PagedKVCache cache(s, dtype);
    const size_t rss1 = current_rss_bytes();
    if (rss0 == 0 || rss1 < rss0) return nullptr;
    per_token = static_cast<double>(rss1 - rss0) / static_cast<double>(tokens);
  }
  return {{"tokens", tokens}, {"measured_bytes_per_token", per_token}};
}

}  // namespace

json check_memory(Session& s) {
  const ValidateOptions& o = s.opt;
  const bool cpu = o.engine.device == "cpu";
  json out;
  const EngineMemory base_mem = s.base->memory();
  const size_t weight_bytes = base_mem.weight_bytes;
  const size_t params = weight_bytes / (cpu ? sizeof(float) : 2);
  out["weights"] = {{"bytes_held", weight_bytes},
                    {"dtype_held", cpu ? "float32" : "bfloat16"},
                    {"parameters", params},
                    {"bf16_bytes", params * 2}};
  // Before the cache probes below, which allocate on purpose.
  out["peak_rss_bytes"] = peak_rss_bytes();
  if (!cpu) {
    out["device_total_bytes"] = base_mem.device_total_bytes;
    out["device_used_bytes"] = base_mem.device_used_bytes;
    out["device_used_max_sampled_bytes"] = s.device_used_max;
  }
  out["kv_budget_gib"] = o.kv_budget_gib;
  const double budget = o.kv_budget_gib * kGiB;
  out["backends"] = json::array();
  int index = 0;
  for (const Engine* e : {s.base.get(), s.cand.get()}) {
    const std::string role = index++ == 0 ? "baseline" : "candidate";
    const EngineMemory m = e->memory();
    const size_t bpt = m.kv_bytes_per_token;
    const int page = e->page_size();
    const int64_t pages = static_cast<int64_t>(budget / (static_cast<double>(bpt) * page));
    const int64_t pages_per_request = (s.context + page - 1) / page;
    json b = {{"role", role},
              {"backend", std::string(e->attention().name())},
              {"kv_cache_dtype", std::string(kv_cache_dtype_name(e->kv_cache_dtype()))},
              {"bytes_per_token", bpt},
              {"page_size", page},
              {"capacity_tokens", pages * page},
              {"capacity_requests_at_max_context", pages / pages_per_request},
              {"engine_kv_pool_bytes", m.kv_pool_bytes},
              {"engine_kv_capacity_tokens", m.kv_capacity_tokens},
              {"engine_load", s.engine_loads.value(role, json::object())}};
    if (cpu) b["cpu_cache"] = measure_cpu_cache(e->cache().shape(), e->cache().dtype());
    out["backends"].push_back(b);
  }
  const double base_bpt = out["backends"][0]["bytes_per_token"].get<double>();
  const double cand_bpt = out["backends"][1]["bytes_per_token"].get<double>();
  out["kv_bytes_ratio"] = cand_bpt / base_bpt;

  out["meaning"] = {
      {"weights.bytes_held", "bytes of weights this process holds (LlamaModel::weight_bytes)"},
      {"bytes_per_token",
       "KV cache bytes one token takes in the GPU cache layout (PagedKVCache::bytes_per_token): "
       "bf16 K and V for the exact cache; int8 K + 8-bit V plus per-page scales and means, spread "
       "over the page, for the 8-bit cache"},
      {"capacity_tokens", "tokens that fit in --kv-budget-gib at bytes_per_token, in whole pages"},
      {"capacity_requests_at_max_context",
       "requests of the model's full context length that fit in the budget"},
      {"engine_load.rss_growth_bytes",
       "measured: resident memory the process gained while building that engine (weights plus "
       "the cache storage it allocates up front)"},
      {"peak_rss_bytes",
       "measured: the process's peak resident set (getrusage) over the whole run (this check runs "
       "last; the cache probes above are not included)"},
      {"engine_kv_pool_bytes",
       "allocated: bytes of the KV cache that engine holds for this run (the GPU 8-bit cache "
       "includes its bf16 tail pages)"}};
  if (cpu) {
    out["meaning"]["cpu_cache.measured_bytes_per_token"] =
        "measured: resident memory per token of a CPU PagedKVCache in that mode; the CPU cache "
        "keeps float32 K/V for every page (plus the 8-bit copy in int8 mode), so it is larger than "
        "bytes_per_token";
  } else {
    out["meaning"]["engine_load.device_used_growth_bytes"] =
        "measured: device memory (cudaMemGetInfo) the engine took while it was built: bf16 "
        "weights, activation buffers, cuBLASLt workspace and its KV cache, all allocated up front";
    out["meaning"]["device_used_max_sampled_bytes"] =
        "measured: the largest device memory in use (cudaMemGetInfo, both engines loaded) "
        "sampled after each check; the engines allocate up front, so this is the run's peak "
        "apart from transient library allocations";
  }
  if (cpu) {
    out["note"] =
        "CPU run: there is no device memory; the engine and cache figures are the process's "
        "resident memory. bytes_per_token and the capacities are the GPU cache's layout.";
  }
  return out;
}

}  // namespace sagellm::eval::validate
