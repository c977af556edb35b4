// sagellm bench-attention: speed and accuracy of one attention backend on seeded random inputs.
//   prefill: B requests of N new tokens over N keys (empty prefix); TFLOP/s counted as
//     4*B*H*N^2*D, halved for causal (FlashAttention's convention).
//   decode (--decode): B requests of one new token over N cached keys; bytes/s of K/V read, at the
//     cache's storage format (bf16 for flash, 8-bit pages for sage_attn).
// Accuracy is measured against exact fp64 attention on the same (bf16-valued) inputs, on a
// seeded sample of output rows when all of them would take too long.
#include "cli/bench_attention.h"

#include <fmt/ranges.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/results_output.h"
#include "core/build_info.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/logging.h"
#include "eval/attention_accuracy.h"

namespace sagellm::cli {

namespace {

using nlohmann::json;

struct BenchAttentionArgs {
  std::string backend = "flash";
  AttentionOptions attention_options;
  std::string device = "cpu";
  int batch = 4;
  int heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  std::vector<int> seq_lens = {1024};
  bool causal = false;
  bool decode = false;
  int page_size = 64;
  int repeats = 3;
  int warmup = 1;
  float k_offset = 0.0f;
  uint64_t seed = 0;
  int64_t reference_rows = 4096;
  bool json = false;
  std::string output;
};

void check_args(const BenchAttentionArgs& a) {
  const std::vector<std::string> names = attention_backend_names();
  SAGELLM_CHECK(std::find(names.begin(), names.end(), a.backend) != names.end(),
                "unknown attention backend '{}' (choose one of: {})", a.backend,
                fmt::join(names, ", "));
  SAGELLM_CHECK(a.device == "cpu" || a.device == "cuda",
                "unknown --device '{}' (choose one of: cpu, cuda)", a.device);
  SAGELLM_CHECK(a.heads % a.kv_heads == 0,
                "--heads ({}) must be a multiple of --kv-heads ({}) for grouped-query attention",
                a.heads, a.kv_heads);
  SAGELLM_CHECK(!a.seq_lens.empty(), "--seq-lens is empty");
  for (int n : a.seq_lens) SAGELLM_CHECK(n >= 1, "--seq-lens: {} is not a positive length", n);
  SAGELLM_CHECK(std::isfinite(a.k_offset) && a.k_offset >= 0.0f,
                "--k-offset must be a finite value >= 0 (got {})", a.k_offset);
  for (int n : a.seq_lens) {
    const int64_t q_len = a.decode ? 1 : n;
    const int64_t rows = static_cast<int64_t>(a.batch) * q_len;
    const int64_t pages = static_cast<int64_t>(a.batch) * ((n + a.page_size - 1) / a.page_size);
    SAGELLM_CHECK(rows <= std::numeric_limits<int>::max() &&
                      pages <= std::numeric_limits<int>::max() &&
                      static_cast<int64_t>(a.batch) * n <= std::numeric_limits<int>::max(),
                  "--batch {} x --seq-lens {} is too large to index", a.batch, n);
    // Host bytes per element: q and the output in fp32 plus their bf16 copies; K and V dense in
    // fp32, in the cache (fp32) and in 8-bit pages or bf16 device pools.
    const double q_elems = static_cast<double>(rows) * a.heads * a.head_dim;
    const double kv_elems = 2.0 * a.batch * static_cast<double>(n) * a.kv_heads * a.head_dim;
    const double need = 12.0 * q_elems + 10.0 * kv_elems;
    const double have = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    SAGELLM_CHECK(have <= 0 || need <= 0.9 * have,
                  "--batch {} x --seq-lens {} needs about {:.1f} GiB of host memory; this machine "
                  "has {:.1f} GiB",
                  a.batch, n, need / (1u << 30), have / (1u << 30));
  }
}

// Standard normal values rounded to bf16, generated in fixed chunks each with its own seeded
// generator, so the values do not depend on the thread count.
void fill_normal_bf16(std::vector<float>& x, uint64_t seed, std::span<const float> offset = {}) {
  constexpr size_t kChunk = size_t{1} << 16;
  const auto chunks = static_cast<int64_t>((x.size() + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(c));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const size_t begin = static_cast<size_t>(c) * kChunk;
    const size_t end = std::min(x.size(), begin + kChunk);
    for (size_t i = begin; i < end; ++i) {
      const float o = offset.empty() ? 0.0f : offset[i % offset.size()];
      x[i] = round_to_bf16(normal(rng) + o);
    }
  }
}

AttentionBenchProblem make_problem(const BenchAttentionArgs& a, int n, uint64_t seed) {
  AttentionBenchProblem p;
  p.shape = {a.heads, a.kv_heads, a.head_dim, 1.0f / std::sqrt(static_cast<float>(a.head_dim))};
  p.batch_size = a.batch;
  p.q_len = a.decode ? 1 : n;
  p.kv_len = n;
  p.page_size = a.page_size;
  const int pages_per_seq = (n + a.page_size - 1) / a.page_size;
  p.num_pages = pages_per_seq * a.batch;
  // Decode has one query per request: the mask changes nothing, so it is reported as full.
  p.batch.causal = a.causal && !a.decode;
  // Pages of different requests interleaved, as in a cache that has been in use.
  for (int b = 0; b < a.batch; ++b) {
    AttentionSeq s;
    s.q_start = b * p.q_len;
    s.q_len = p.q_len;
    s.kv_len = n;
    for (int i = 0; i < pages_per_seq; ++i) s.pages.push_back(i * a.batch + b);
    p.batch.seqs.push_back(std::move(s));
  }
  const size_t kv_width = static_cast<size_t>(a.kv_heads) * a.head_dim;
  p.q.resize(static_cast<size_t>(a.batch) * p.q_len * a.heads * a.head_dim);
  p.k.resize(static_cast<size_t>(a.batch) * n * kv_width);
  p.v.resize(p.k.size());
  // The K offset is one value per channel, the same for every token: the outliers of real keys
  // that SageAttention's K smoothing removes.
  std::vector<float> offset(kv_width, 0.0f);
  if (a.k_offset > 0.0f) {
    std::mt19937_64 rng(seed ^ 0x6B6F6666736574ull);
    std::normal_distribution<float> normal(0.0f, a.k_offset);
    for (float& o : offset) o = normal(rng);
  }
  fill_normal_bf16(p.q, seed * 3 + 1);
  fill_normal_bf16(p.k, seed * 3 + 2, offset);
  fill_normal_bf16(p.v, seed * 3 + 3);
  return p;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The backend's CPU forward over a one-layer paged cache in the backend's own cache format,
// timed by the wall clock. Writing K/V into the cache (where sage_attn quantizes full pages) is
// not timed: the engine does it once per token, outside attention.
AttentionTiming time_cpu(const AttentionBackend& backend, const AttentionBenchProblem& p,
                         int warmup, int repeats) {
  KVCacheShape cs;
  cs.num_layers = 1;
  cs.num_kv_heads = p.shape.num_kv_heads;
  cs.head_dim = p.shape.head_dim;
  cs.page_size = p.page_size;
  cs.num_pages = p.num_pages;
  PagedKVCache cache(cs, backend.default_kv_cache_dtype());
  const size_t width = static_cast<size_t>(cs.num_kv_heads) * cs.head_dim;
  for (size_t b = 0; b < p.batch.seqs.size(); ++b) {
    const AttentionSeq& seq = p.batch.seqs[b];
    for (int t = 0; t < seq.kv_len; ++t) {
      const size_t row = (b * static_cast<size_t>(p.kv_len) + t) * width;
      cache.write(0, seq.pages[static_cast<size_t>(t / p.page_size)], t % p.page_size, &p.k[row],
                  &p.v[row]);
    }
  }
  AttentionTiming t;
  t.out.assign(p.q.size(), 0.0f);
  for (int i = 0; i < warmup; ++i) {
    backend.forward(p.shape, p.batch, cache, 0, p.q.data(), t.out.data());
  }
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    backend.forward(p.shape, p.batch, cache, 0, p.q.data(), t.out.data());
    t.seconds.push_back(seconds_since(t0));
  }
  t.device = fmt::format("cpu ({} OpenMP threads)", omp_get_max_threads());
  t.method = fmt::format(
      "wall clock around AttentionBackend::forward, after {} warm-up calls; K/V written into a "
      "{} cache beforehand (not timed)",
      warmup, kv_cache_dtype_name(cache.dtype()));
  return t;
}

AttentionTiming time_cuda(const BenchAttentionArgs& a, const AttentionBenchProblem& p, int warmup,
                          int repeats) {
#if defined(SAGELLM_HAVE_CUDA)
  if (a.backend == "sage_attn") return time_sage_cuda(p, a.attention_options, warmup, repeats);
  return time_flash_cuda(p, warmup, repeats);
#else
  fail("--device cuda: this build of sagellm has no CUDA support (build it where nvcc is found)");
#endif
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  const size_t n = x.size();
  return n % 2 == 1 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

// KV bytes one token takes in the backend's cache format, for one layer: as the GPU cache holds
// it (bf16, or 8-bit pages with their scales).
size_t kv_bytes_per_token(const BenchAttentionArgs& a, const AttentionBackend& backend) {
  KVCacheShape cs;
  cs.num_layers = 1;
  cs.num_kv_heads = a.kv_heads;
  cs.head_dim = a.head_dim;
  cs.page_size = a.page_size;
  cs.num_pages = 1;
  return PagedKVCache(cs, backend.default_kv_cache_dtype()).bytes_per_token();
}

json run_case(const BenchAttentionArgs& a, const AttentionBackend& backend, int n, uint64_t seed,
              std::string* device, std::string* method) {
  const AttentionBenchProblem p = make_problem(a, n, seed);
  const AttentionTiming t = a.device == "cuda" ? time_cuda(a, p, a.warmup, a.repeats)
                                               : time_cpu(backend, p, a.warmup, a.repeats);
  *device = t.device;
  *method = t.method;

  std::vector<eval::ReferenceRequest> reqs;
  const size_t kv_elems = static_cast<size_t>(n) * a.kv_heads * a.head_dim;
  for (int b = 0; b < a.batch; ++b) {
    const size_t off = static_cast<size_t>(b) * kv_elems;
    reqs.push_back({b * p.q_len, p.q_len, n, std::span<const float>(p.k).subspan(off, kv_elems),
                    std::span<const float>(p.v).subspan(off, kv_elems)});
  }
  const std::vector<eval::AttentionRow> rows =
      eval::select_attention_rows(reqs, a.heads, a.reference_rows, seed + 7);
  const std::vector<double> ref =
      eval::reference_attention(p.shape, p.batch.causal, p.q, reqs, rows);
  const eval::AccuracyMetrics m =
      eval::compare_to_reference(eval::gather_attention_rows(p.shape, t.out, reqs, rows), ref);

  const double med = median(t.seconds);
  double flops = 4.0 * a.batch * a.heads * static_cast<double>(p.q_len) * n * a.head_dim;
  if (p.batch.causal) flops *= 0.5;
  const double kv_bytes =
      static_cast<double>(a.batch) * n * static_cast<double>(kv_bytes_per_token(a, backend));
  json c = {{"seq_len", n},
            {"q_len", p.q_len},
            {"kv_len", n},
            {"causal", p.batch.causal},
            {"seconds", t.seconds},
            {"median_seconds", med},
            {"min_seconds", *std::min_element(t.seconds.begin(), t.seconds.end())},
            {"flops", flops},
            {"tflops_per_s", flops / med * 1e-12},
            {"kv_bytes", kv_bytes},
            {"kv_bytes_per_s", kv_bytes / med},
            {"accuracy",
             {{"cosine", m.cosine},
              {"rel_l1", m.rel_l1},
              {"rmse", m.rmse},
              {"max_abs_error", m.max_abs_error},
              {"non_finite", m.non_finite},
              {"rows_checked", rows.size()},
              {"rows_total", static_cast<int64_t>(a.batch) * p.q_len * a.heads}}}};
  return c;
}

void print_table(const json& j) {
  const json& s = j["shape"];
  std::printf("bench-attention: %s on %s, %s\n", j["backend"].get<std::string>().c_str(),
              j["device_name"].get<std::string>().c_str(),
              s["decode"].get<bool>() ? "decode (1 query token per request)" : "prefill");
  std::printf("B=%d H=%d KVH=%d D=%d page %d%s\n", s["batch"].get<int>(), s["heads"].get<int>(),
              s["kv_heads"].get<int>(), s["head_dim"].get<int>(), s["page_size"].get<int>(),
              s["k_offset"].get<double>() > 0
                  ? fmt::format(", K offset sigma {}", s["k_offset"].get<double>()).c_str()
                  : "");
  std::printf("%7s %7s %-6s %11s %9s %9s %11s %10s %10s %9s\n", "N", "q_len", "mask", "median ms",
              "TFLOP/s", "GB/s(KV)", "cosine", "rel-L1", "RMSE", "rows");
  for (const json& c : j["cases"]) {
    const json& acc = c["accuracy"];
    std::printf("%7d %7d %-6s %11.4f %9.4f %9.2f %11.8f %10.3e %10.3e %9lld\n",
                c["seq_len"].get<int>(), c["q_len"].get<int>(),
                c["causal"].get<bool>() ? "causal" : "full",
                c["median_seconds"].get<double>() * 1e3, c["tflops_per_s"].get<double>(),
                c["kv_bytes_per_s"].get<double>() * 1e-9,
                acc["cosine"].is_number() ? acc["cosine"].get<double>() : NAN,
                acc["rel_l1"].is_number() ? acc["rel_l1"].get<double>() : NAN,
                acc["rmse"].is_number() ? acc["rmse"].get<double>() : NAN,
                static_cast<long long>(acc["rows_checked"].get<int64_t>()));
  }
  std::printf("%s\n", j["flops_formula"].get<std::string>().c_str());
  std::fflush(stdout);
}

int run_bench_attention(const BenchAttentionArgs& a) {
  check_args(a);
  const std::unique_ptr<AttentionBackend> backend =
      make_attention_backend(a.backend, a.attention_options);
  json j = {{"command", "bench-attention"},
            {"command_line", process_command_line()},
            {"version", SAGELLM_VERSION},
            {"commit", std::string(git_commit())},
            {"backend", a.backend},
            {"device", a.device},
            {"shape",
             {{"batch", a.batch},
              {"heads", a.heads},
              {"kv_heads", a.kv_heads},
              {"head_dim", a.head_dim},
              {"page_size", a.page_size},
              {"causal", a.causal && !a.decode},
              {"decode", a.decode},
              {"k_offset", a.k_offset},
              {"seed", a.seed},
              {"inputs",
               "standard normal Q, K, V (K plus a per-channel offset ~ N(0, k_offset)), "
               "rounded to bf16; sm_scale 1/sqrt(head_dim)"}}},
            {"repeats", a.repeats},
            {"warmup", a.warmup},
            {"flops_formula",
             "TFLOP/s = 4*B*H*q_len*kv_len*D / median time (prefill: q_len = kv_len = N, halved "
             "for causal); GB/s(KV) = B*N*(KV bytes per token of one layer in the backend's cache "
             "format) / median time"},
            {"accuracy_reference",
             fmt::format("exact attention in fp64 on the same bf16-valued inputs, over {} "
                         "(request, token, head) rows chosen at random (seeded), or all rows when "
                         "there are fewer",
                         a.reference_rows > 0 ? std::to_string(a.reference_rows) : "all")},
            {"cases", json::array()}};
  if (a.backend == "sage_attn") j["sage_pv_dtype"] = a.attention_options.sage_pv_dtype;
  std::string device, method;
  Progress progress("bench-attention", a.seq_lens.size());
  for (size_t i = 0; i < a.seq_lens.size(); ++i) {
    j["cases"].push_back(
        run_case(a, *backend, a.seq_lens[i], a.seed * 1000 + i + 1, &device, &method));
    progress.advance();
  }
  progress.finish();
  j["device_name"] = device;
  j["timing_method"] = method;
  emit_results(j, a.output, a.json, print_table);
  return 0;
}

}  // namespace

Action add_bench_attention(CLI::App& root) {
  auto args = std::make_shared<BenchAttentionArgs>();
  BenchAttentionArgs& a = *args;
  CLI::App* app = root.add_subcommand(
      "bench-attention",
      "Time one attention backend on seeded random inputs (TFLOP/s for prefill, KV bytes/s for "
      "decode) and measure its accuracy against exact fp64 attention");
  app->add_option("--backend", a.backend, "Attention backend: flash | sage_attn")
      ->capture_default_str();
  app->add_option("--sage-pv-dtype", a.attention_options.sage_pv_dtype,
                  "sage_attn precision of the P.V product: fp8 | int8 | fp16")
      ->capture_default_str();
  app->add_option("--device", a.device, "cpu | cuda")->capture_default_str();
  app->add_option("--batch", a.batch, "Requests")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--heads", a.heads, "Query heads")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app->add_option("--kv-heads", a.kv_heads, "KV heads")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app->add_option("--head-dim", a.head_dim, "Head dimension")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app->add_option("--seq-lens", a.seq_lens,
                  "Sequence lengths N, comma separated (prefill: N new tokens over N keys; "
                  "decode: 1 new token over N keys)")
      ->delimiter(',')
      ->capture_default_str();
  app->add_flag("--causal", a.causal, "Causal mask (prefill)");
  app->add_flag("--decode", a.decode, "One query token per request over N cached keys");
  app->add_option("--page-size", a.page_size, "Tokens per KV cache page")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app->add_option("--repeats", a.repeats, "Timed calls per case (the median is reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app->add_option("--warmup", a.warmup, "Untimed calls before timing")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  app->add_option("--k-offset", a.k_offset,
                  "Standard deviation of a per-channel offset added to K (0: none)")
      ->capture_default_str();
  app->add_option("--seed", a.seed, "Seed of the random inputs")->capture_default_str();
  app->add_option("--reference-rows", a.reference_rows,
                  "Output rows (request, token, head) checked against fp64 (0: all)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app->add_flag("--json", a.json, "Print the results as one JSON object instead of a table");
  app->add_option("--output", a.output, "Also write the JSON results to this file");
  return [args] { return run_bench_attention(*args); };
}

}  // namespace sagellm::cli
