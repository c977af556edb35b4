// sagellm bench: end-to-end prefill and decode throughput of the engine over a grid of batch sizes
// x input lengths, with the memory it holds. Each cell runs `batch` requests of seeded random
// token ids (no EOS stops: the ids are fed back greedily, whatever they are) through the engine's
// step API, so prefill and decode are timed separately:
//   prefill: every prompt token, packed into forward steps of at most --prefill-chunk tokens (as a
//     chunked-prefill scheduler would), until each request has its first output token;
//   decode: output_len - 1 steps in which every request advances by one token.
// Cells that do not fit the context length or the KV cache are skipped with the reason.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>

#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "cli/results_output.h"
#include "core/build_info.h"
#include "core/error.h"
#include "core/logging.h"
#include "engine/sampling.h"
#include "eval/validate/process_memory.h"

namespace sagellm::cli {

namespace {

using nlohmann::json;

struct BenchArgs {
  EngineOptions engine;
  std::vector<int> batch_sizes = {1, 8};
  std::vector<int> input_lens = {128, 1024};
  int output_len = 32;
  int warmup = 1;
  int repeats = 1;
  uint64_t seed = 0;
  bool json = false;
  bool attention_share = false;
  std::string output;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> x) {
  if (x.empty()) return 0.0;
  std::sort(x.begin(), x.end());
  const size_t n = x.size();
  return n % 2 == 1 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

std::vector<int32_t> random_ids(std::mt19937_64& rng, int n, int vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  // Ids from 3 up skip the usual special tokens (unk, BOS, EOS).
  const int lo = vocab > 8 ? 3 : 0;
  for (int32_t& t : ids) t = lo + static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab - lo));
  return ids;
}

// Pages of one cell's requests, given back to the engine however the cell ends.
class CellPages {
 public:
  explicit CellPages(Engine& e) : engine_(e) {}
  ~CellPages() {
    for (const std::vector<int>& r : pages_) {
      for (int p : r) engine_.release_page(p);
    }
  }
  CellPages(const CellPages&) = delete;
  CellPages& operator=(const CellPages&) = delete;

  // Pages for `tokens` tokens of a new request; throws when the cache runs out.
  const std::vector<int>& add_request(int64_t tokens) {
    pages_.emplace_back();
    const int64_t need = (tokens + engine_.page_size() - 1) / engine_.page_size();
    while (static_cast<int64_t>(pages_.back().size()) < need) {
      std::optional<int> p = engine_.allocate_page();
      SAGELLM_CHECK(p.has_value(), "bench: the KV cache ran out of pages");
      pages_.back().push_back(*p);
    }
    return pages_.back();
  }

 private:
  Engine& engine_;
  std::vector<std::vector<int>> pages_;
};

struct CellTiming {
  double prefill_seconds = 0;
  double decode_seconds = 0;
  std::vector<double> decode_step_seconds;
  int64_t prefill_steps = 0;
  // While Engine::set_attention_timing is on: the attention time inside each phase.
  double prefill_attention_seconds = 0, decode_attention_seconds = 0;
};

CellTiming run_cell(Engine& e, const std::vector<std::vector<int32_t>>& prompts, int output_len,
                    int prefill_chunk) {
  const size_t n = prompts.size();
  // Greedy draws through the engine's sampling step, as serving does: on the GPU the argmax runs
  // on the device and only the token ids come back (a [batch][vocab] float32 logits copy and a
  // host argmax would cost more than the forward step itself at batch 32).
  SamplingParams greedy_params;
  greedy_params.temperature = 0.0f;
  const std::vector<sampling::DrawParams> greedy(n, draw_params(greedy_params, 0.0));
  const auto vocab = static_cast<size_t>(e.config().vocab_size);
  const auto checked = [vocab](int32_t id) {
    if (id < 0) fail_no_token(0.0f, vocab);  // every logit NaN or -inf
    return id;
  };
  CellPages pages(e);
  std::vector<AttentionSeq> seqs(n);
  for (size_t i = 0; i < n; ++i) {
    seqs[i].pages =
        pages.add_request(static_cast<int64_t>(prompts[i].size()) + std::max(output_len - 1, 0));
  }
  std::vector<int32_t> next(n, 0);
  CellTiming t;
  (void)e.take_attention_seconds();  // time left over from earlier calls

  const auto t_prefill = std::chrono::steady_clock::now();
  const auto chunk = static_cast<size_t>(std::max(1, prefill_chunk));
  size_t req = 0, offset = 0;
  while (req < n) {
    ForwardBatch b;
    b.logits_mode = LogitsMode::kLastPerSeq;
    std::vector<size_t> finishing;  // requests whose last prompt token is in this step
    std::vector<size_t> in_step;
    while (req < n && b.tokens.size() < chunk) {
      const std::vector<int32_t>& p = prompts[req];
      const size_t len = std::min(chunk - b.tokens.size(), p.size() - offset);
      seqs[req].q_start = static_cast<int>(b.tokens.size());
      seqs[req].q_len = static_cast<int>(len);
      seqs[req].kv_len += static_cast<int>(len);
      b.tokens.insert(b.tokens.end(), p.begin() + static_cast<std::ptrdiff_t>(offset),
                      p.begin() + static_cast<std::ptrdiff_t>(offset + len));
      b.attention.seqs.push_back(seqs[req]);
      in_step.push_back(req);
      offset += len;
      if (offset == p.size()) {
        finishing.push_back(b.attention.seqs.size() - 1);
        ++req;
        offset = 0;
      }
    }
    const std::vector<int32_t> ids = e.forward_sample(
        b, std::span<const sampling::DrawParams>(greedy).first(b.attention.seqs.size()));
    ++t.prefill_steps;
    for (size_t k : finishing) next[in_step[k]] = checked(ids[k]);
  }
  t.prefill_seconds = seconds_since(t_prefill);
  t.prefill_attention_seconds = e.take_attention_seconds();

  const auto t_decode = std::chrono::steady_clock::now();
  for (int step = 1; step < output_len; ++step) {
    const auto t_step = std::chrono::steady_clock::now();
    ForwardBatch b;
    b.logits_mode = LogitsMode::kLastPerSeq;
    for (size_t i = 0; i < n; ++i) {
      seqs[i].q_start = static_cast<int>(i);
      seqs[i].q_len = 1;
      seqs[i].kv_len += 1;
      b.attention.seqs.push_back(seqs[i]);
      b.tokens.push_back(next[i]);
    }
    const std::vector<int32_t> ids = e.forward_sample(b, greedy);
    for (size_t i = 0; i < n; ++i) next[i] = checked(ids[i]);
    t.decode_step_seconds.push_back(seconds_since(t_step));
  }
  t.decode_seconds = seconds_since(t_decode);
  t.decode_attention_seconds = e.take_attention_seconds();
  return t;
}

// Why a cell cannot run, or nothing when it can.
std::optional<std::string> skip_reason(const Engine& e, int batch, int input_len, int output_len) {
  const int64_t tokens = static_cast<int64_t>(input_len) + output_len;
  if (tokens > e.context_length()) {
    return fmt::format("input {} + output {} tokens exceed the context length {}", input_len,
                       output_len, e.context_length());
  }
  const int64_t pages_per_request =
      (input_len + output_len - 1 + e.page_size() - 1) / e.page_size();
  const int64_t pages = pages_per_request * batch;
  if (pages > e.num_free_pages()) {
    return fmt::format(
        "needs {} KV pages ({} tokens per request x {}), the cache has {} pages of {} tokens "
        "(raise --kv-cache-tokens)",
        pages, input_len + output_len - 1, batch, e.num_free_pages(), e.page_size());
  }
  return std::nullopt;
}

double rate(double tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; }

json memory_json(const EngineMemory& m) {
  json j = {{"device", m.device},
            {"tp_size", m.tp_size},
            {"weight_bytes", m.weight_bytes},
            {"kv_bytes_per_token", m.kv_bytes_per_token},
            {"kv_pool_bytes", m.kv_pool_bytes},
            {"kv_capacity_tokens", m.kv_capacity_tokens}};
  if (m.device_total_bytes > 0) {
    j["device_total_bytes"] = m.device_total_bytes;
    j["device_used_bytes"] = m.device_used_bytes;
  }
  return j;
}

json bench_cell(Engine& e, const BenchArgs& a, int batch, int input_len, uint64_t seed) {
  json c = {{"batch", batch}, {"input_len", input_len}, {"output_len", a.output_len}};
  if (std::optional<std::string> why = skip_reason(e, batch, input_len, a.output_len)) {
    c["skipped"] = *why;
    return c;
  }
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> prompts;
  prompts.reserve(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    prompts.push_back(random_ids(rng, input_len, e.config().vocab_size));
  }
  std::vector<CellTiming> runs;
  runs.reserve(static_cast<size_t>(a.repeats));
  for (int r = 0; r < a.repeats; ++r) {
    runs.push_back(run_cell(e, prompts, a.output_len, a.engine.prefill_chunk));
  }
  std::vector<double> prefill, decode, step;
  for (const CellTiming& t : runs) {
    prefill.push_back(t.prefill_seconds);
    decode.push_back(t.decode_seconds);
    step.push_back(median(t.decode_step_seconds));
  }
  const double prefill_s = median(prefill), decode_s = median(decode);
  const int64_t prefill_tokens = static_cast<int64_t>(batch) * input_len;
  const int64_t decode_tokens = static_cast<int64_t>(batch) * (a.output_len - 1);
  const EngineMemory m = e.memory();
  c["prefill_tokens"] = prefill_tokens;
  c["prefill_steps"] = runs.front().prefill_steps;
  c["prefill_seconds"] = prefill_s;
  c["prefill_seconds_all"] = prefill;
  c["prefill_tokens_per_s"] = rate(static_cast<double>(prefill_tokens), prefill_s);
  c["decode_steps"] = a.output_len - 1;
  c["decode_tokens"] = decode_tokens;
  if (decode_tokens > 0) {
    c["decode_seconds"] = decode_s;
    c["decode_seconds_all"] = decode;
    c["decode_tokens_per_s"] = rate(static_cast<double>(decode_tokens), decode_s);
    c["decode_step_seconds_median"] = median(step);
  } else {
    c["decode_seconds"] = nullptr;
    c["decode_tokens_per_s"] = nullptr;
    c["decode_step_seconds_median"] = nullptr;
  }
  c["kv_bytes"] = m.kv_bytes_per_token * static_cast<size_t>(batch) *
                  static_cast<size_t>(input_len + a.output_len - 1);
  if (a.attention_share) {
    // One more run with the attention work timed (GPU decode steps then run without graphs, so
    // its tokens/s are not the cell's): the share of each phase's wall time spent in attention.
    const ScopedAttentionTiming timing(e);
    if (timing.on()) {
      const CellTiming t = run_cell(e, prompts, a.output_len, a.engine.prefill_chunk);
      c["attention_share_prefill"] = t.prefill_attention_seconds / t.prefill_seconds;
      c["attention_share_decode"] = t.decode_seconds > 0
                                        ? json(t.decode_attention_seconds / t.decode_seconds)
                                        : json(nullptr);
      c["attention_timed_run"] = {{"prefill_seconds", t.prefill_seconds},
                                  {"prefill_attention_seconds", t.prefill_attention_seconds},
                                  {"decode_seconds", t.decode_seconds},
                                  {"decode_attention_seconds", t.decode_attention_seconds}};
    } else {
      c["attention_share_prefill"] = nullptr;
      c["attention_share_decode"] = nullptr;
    }
  }
  c["peak_rss_bytes"] = eval::validate::peak_rss_bytes();
  if (m.device_total_bytes > 0) c["device_used_bytes"] = m.device_used_bytes;
  return c;
}

std::string mib(double bytes) { return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0)); }

void print_table(const json& j) {
  const json& m = j["memory"];
  std::printf("bench: %s (%s weights), device %s, tp %d, attention %s, KV cache %s, page %d\n",
              j["model"].get<std::string>().c_str(),
              j["load_format"] == "dummy" ? "dummy" : "checkpoint",
              j["device"].get<std::string>().c_str(), j.value("tp_size", 1),
              j["attention_backend"].get<std::string>().c_str(),
              j["kv_cache_dtype"].get<std::string>().c_str(), j["page_size"].get<int>());
  std::printf("memory: weights %s, KV %zu B/token, KV pool %s (%lld tokens), peak RSS %s\n",
              mib(m["weight_bytes"].get<double>()).c_str(), m["kv_bytes_per_token"].get<size_t>(),
              mib(m["kv_pool_bytes"].get<double>()).c_str(),
              static_cast<long long>(m["kv_capacity_tokens"].get<int64_t>()),
              mib(j["peak_rss_bytes"].get<double>()).c_str());
  std::printf("%6s %7s %7s %11s %13s %11s %13s %10s %10s\n", "batch", "input", "output",
              "prefill s", "prefill tok/s", "decode s", "decode tok/s", "step ms", "KV MiB");
  for (const json& c : j["cells"]) {
    const int batch = c["batch"].get<int>(), input = c["input_len"].get<int>();
    const int output = c["output_len"].get<int>();
    if (c.contains("skipped")) {
      std::printf("%6d %7d %7d   skipped: %s\n", batch, input, output,
                  c["skipped"].get<std::string>().c_str());
      continue;
    }
    const bool has_decode = c["decode_tokens_per_s"].is_number();
    std::printf(
        "%6d %7d %7d %11.4f %13.1f %11s %13s %10s %10.2f\n", batch, input, output,
        c["prefill_seconds"].get<double>(), c["prefill_tokens_per_s"].get<double>(),
        has_decode ? fmt::format("{:.4f}", c["decode_seconds"].get<double>()).c_str() : "-",
        has_decode ? fmt::format("{:.1f}", c["decode_tokens_per_s"].get<double>()).c_str() : "-",
        has_decode
            ? fmt::format("{:.3f}", c["decode_step_seconds_median"].get<double>() * 1e3).c_str()
            : "-",
        c["kv_bytes"].get<double>() / (1024.0 * 1024.0));
    if (c.contains("attention_share_prefill")) {
      auto pct = [](const json& v) {
        return v.is_number() ? fmt::format("{:.1f}%", 100.0 * v.get<double>()) : std::string("-");
      };
      std::printf("%22s attention share: prefill %s, decode %s\n", "",
                  pct(c["attention_share_prefill"]).c_str(),
                  pct(c["attention_share_decode"]).c_str());
    }
  }
  std::fflush(stdout);
}

int run_bench(BenchArgs& a) {
  // A cell holds its whole batch at once.
  if (!a.batch_sizes.empty()) {
    a.engine.max_running_requests = *std::max_element(a.batch_sizes.begin(), a.batch_sizes.end());
  }
  Engine e(a.engine);
  const io::ModelConfig& cfg = e.config();
  const int64_t cells = static_cast<int64_t>(a.batch_sizes.size()) * a.input_lens.size();
  json j = {{"command", "bench"},
            {"command_line", process_command_line()},
            {"version", SAGELLM_VERSION},
            {"commit", std::string(git_commit())},
            {"model", a.engine.model_dir.string()},
            {"model_config",
             {{"architecture", cfg.architecture},
              {"num_layers", cfg.num_layers},
              {"hidden_size", cfg.hidden_size},
              {"intermediate_size", cfg.intermediate_size},
              {"num_heads", cfg.num_heads},
              {"num_kv_heads", cfg.num_kv_heads},
              {"head_dim", cfg.head_dim},
              {"vocab_size", cfg.vocab_size}}},
            {"load_format", a.engine.load_format},
            {"device", a.engine.device},
            {"tp_size", a.engine.tp_size},
            {"attention_backend", std::string(e.attention().name())},
            {"kv_cache_dtype", std::string(kv_cache_dtype_name(resolve_kv_cache_dtype(
                                   a.engine.kv_cache_dtype, e.attention())))},
            {"page_size", e.page_size()},
            {"prefill_chunk", a.engine.prefill_chunk},
            {"context_length", e.context_length()},
            {"output_len", a.output_len},
            {"warmup", a.warmup},
            {"repeats", a.repeats},
            {"seed", a.seed},
            {"method",
             "engine step API (Engine::forward_sample: greedy, on the device on the GPU), seeded "
             "random prompt ids, the drawn tokens fed back, EOS ignored. prefill: all prompt "
             "tokens in steps of at most prefill_chunk "
             "tokens, wall time until every request has its first output token; prefill "
             "tokens/s = batch * input_len / that time. decode: output_len - 1 steps of one token "
             "per request; decode tokens/s = batch * (output_len - 1) / their wall time. Times "
             "are medians over repeats"},
            {"cells", json::array()}};
  if (a.engine.attention_backend == "sage_attn") {
    j["sage_pv_dtype"] = a.engine.attention_options.sage_pv_dtype;
  }
  {
    // Warm-up: page the weights in and start the thread pool before anything is timed.
    const int warm_len = static_cast<int>(std::min<int64_t>(16, e.context_length() - 2));
    if (warm_len >= 1 && !skip_reason(e, 1, warm_len, 2)) {
      std::mt19937_64 rng(a.seed + 99);
      const std::vector<std::vector<int32_t>> w = {random_ids(rng, warm_len, cfg.vocab_size)};
      for (int i = 0; i < a.warmup; ++i) run_cell(e, w, 2, a.engine.prefill_chunk);
    }
  }
  Progress progress("bench", static_cast<size_t>(cells));
  uint64_t cell_seed = a.seed * 1000003 + 1;
  for (int batch : a.batch_sizes) {
    for (int input_len : a.input_lens) {
      j["cells"].push_back(bench_cell(e, a, batch, input_len, cell_seed++));
      progress.advance();
    }
  }
  progress.finish();
  j["memory"] = memory_json(e.memory());
  j["peak_rss_bytes"] = eval::validate::peak_rss_bytes();
  emit_results(j, a.output, a.json, print_table);
  return 0;
}

}  // namespace

Action add_bench(CLI::App& root) {
  auto args = std::make_shared<BenchArgs>();
  BenchArgs& a = *args;
  CLI::App* app = root.add_subcommand(
      "bench",
      "Prefill and decode tokens/s of the engine over batch sizes x input lengths, with memory");
  add_engine_flags(*app, a.engine);
  app->add_option("--batch-sizes", a.batch_sizes, "Requests per cell, comma separated")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app->add_option("--input-lens", a.input_lens, "Prompt tokens per request, comma separated")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app->add_option("--output-len", a.output_len,
                  "Tokens generated per request (the first comes from prefill)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--warmup", a.warmup, "Untimed short runs before the grid")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  app->add_option("--repeats", a.repeats, "Runs per cell (medians are reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app->add_option("--seed", a.seed, "Seed of the random prompts")->capture_default_str();
  app->add_flag("--json", a.json, "Print the results as one JSON object instead of a table");
  app->add_flag("--attention-share", a.attention_share,
                "Run each cell once more with the attention work timed (CPU: wall time inside the "
                "backend; GPU: CUDA events around each layer's KV write, 8-bit sealing and "
                "attention kernels) and report its share of prefill and decode time");
  app->add_option("--output", a.output, "Also write the JSON results to this file");
  return [args] { return run_bench(*args); };
}

}  // namespace sagellm::cli
