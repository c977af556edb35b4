#include "eval/validate/validate.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

#include "core/build_info.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "eval/validate/passkey.h"
#include "eval/validate/process_memory.h"
#include "eval/validate/session.h"
#include "io/model_config.h"

namespace sagellm::eval::validate {

namespace fs = std::filesystem;
using nlohmann::json;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

json stats_json(const ValueStats& v) {
  return {{"mean", v.mean},     {"stderr", v.stderr_mean},
          {"median", v.median}, {"min", v.min},
          {"p01", v.p01},       {"p05", v.p05},
          {"p10", v.p10},       {"p90", v.p90},
          {"p95", v.p95},       {"p99", v.p99},
          {"p99.9", v.p999},    {"max", v.max}};
}

json kld_summary_json(const KLDSummary& k) {
  return {{"tokens", k.n},
          {"kld", stats_json(k.kld)},
          {"same_top1", k.same_top1},
          {"same_top1_stderr", k.same_top1_stderr},
          {"rms_delta_p", k.rms_delta_p},
          {"delta_p", stats_json(k.delta_p)},
          {"ppl_baseline", k.ppl_base},
          {"ppl_candidate", k.ppl_test},
          {"ln_ppl_ratio", k.ln_ppl_ratio},
          {"ln_ppl_ratio_stderr", k.ln_ppl_ratio_stderr}};
}

namespace {

std::string read_text_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  SAGELLM_CHECK(f.good(), "cannot read {}", p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

json model_json(const ValidateOptions& o, const io::ModelConfig& c, int64_t context) {
  return {{"path", fs::absolute(o.engine.model_dir).lexically_normal().string()},
          {"architecture", c.architecture},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"layers", c.num_layers},
          {"heads", c.num_heads},
          {"kv_heads", c.num_kv_heads},
          {"head_dim", c.head_dim},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_position_embeddings},
          {"context_length", context},
          {"torch_dtype", c.torch_dtype},
          {"rope_type", c.rope.type},
          {"rope_theta", c.rope.theta},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"load_format", o.engine.load_format}};
}

json options_json(const ValidateOptions& o) {
  std::vector<std::string> checks;
  for (std::string_view c : kCheckNames) {
    if (o.runs(c)) checks.emplace_back(c);
  }
  auto paths = [](const std::vector<fs::path>& v) {
    std::vector<std::string> out;
    out.reserve(v.size());
    for (const fs::path& p : v) out.push_back(p.string());
    return out;
  };
  return {{"quick", o.quick},
          {"checks", checks},
          {"corpora", paths(o.corpora)},
          {"long_corpora", paths(o.long_corpora)},
          {"haystack_dir", o.haystack_dir.string()},
          {"ctx", o.ctx},
          {"max_windows", o.max_windows},
          {"greedy_prompts", o.greedy_prompts},
          {"greedy_prompt_tokens", o.greedy_prompt_tokens},
          {"greedy_tokens", o.greedy_tokens},
          {"batch_sizes", o.batch_sizes},
          {"context_lengths", o.context_lengths},
          {"output_len", o.output_len},
          {"kv_budget_gib", o.kv_budget_gib},
          {"drift_tokens", o.drift_tokens},
          {"determinism_runs", o.determinism_runs},
          {"long_max_windows", o.long_max_windows},
          {"passkey_lengths", o.passkey_lengths},
          {"passkey_depths", o.passkey_depths},
          {"passkey_trials", o.passkey_trials},
          {"seed", o.seed},
          {"page_size", o.engine.page_size},
          {"prefill_chunk", o.engine.prefill_chunk},
          {"kv_cache_dtype", o.engine.kv_cache_dtype},
          {"sage_pv_dtype", o.engine.attention_options.sage_pv_dtype}};
}

// Tokens the engines' caches must hold for the largest batch the checks that run submit at once
// (on a GPU both engines' caches share its memory, so checks left out do not size them).
int64_t cache_tokens_needed(const ValidateOptions& o, int64_t context) {
  const int64_t page = o.engine.page_size;
  auto batch = [&](int64_t requests, int64_t tokens) { return requests * (tokens + page); };
  // The runtime probe and the scoring checks: one request of up to the context length.
  int64_t need = 64 + page;
  if (o.runs("logits") || o.runs("perplexity") || o.runs("context")) need = context + page;
  if (o.runs("throughput")) {
    const int max_b = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
    const int max_c = *std::max_element(o.context_lengths.begin(), o.context_lengths.end());
    need = std::max(need, batch(max_b, std::min<int64_t>(context, max_c + o.output_len)));
  }
  if (o.runs("context")) {
    const int max_l = *std::max_element(o.passkey_lengths.begin(), o.passkey_lengths.end());
    need = std::max(need, batch(std::min(o.passkey_trials, 8), max_l));
  }
  if (o.runs("logits")) {
    need = std::max(need, batch(o.greedy_prompts, o.greedy_prompt_tokens + 1 + o.greedy_tokens));
  }
  if (o.runs("drift")) need = std::max(need, batch(4, o.drift_tokens + o.greedy_tokens));
  return need;
}

void check_inputs(const ValidateOptions& o) {
  const bool needs_corpus = o.runs("logits") || o.runs("perplexity");
  SAGELLM_CHECK(!needs_corpus || !o.corpora.empty(),
                "the logits and perplexity checks need a text corpus: pass --corpus FILE (for "
                "example WikiText-2's wiki.test.raw and text of the model's domain), or leave "
                "them out with --checks");
  SAGELLM_CHECK(!o.runs("context") || !o.haystack_dir.empty(),
                "the context check needs filler text for its passkey prompts: pass --haystack-dir "
                "DIR (a folder of .txt files), or leave it out with --checks");
  for (const fs::path& p : o.corpora) {
    SAGELLM_CHECK(fs::is_regular_file(p), "--corpus {} is not a readable file", p.string());
  }
  for (const fs::path& p : o.long_corpora) {
    SAGELLM_CHECK(fs::is_regular_file(p), "--long-corpus {} is not a readable file", p.string());
  }
}

std::vector<Corpus> tokenize_all(const Tokenizer& tok, const std::vector<fs::path>& files,
                                 const std::string& flag) {
  std::vector<Corpus> out;
  for (const fs::path& p : files) {
    Corpus c{p, tok.encode(read_text_file(p), false)};
    SAGELLM_CHECK(c.ids.size() >= 2, "{} {} has too few tokens to score ({})", flag, p.string(),
                  c.ids.size());
    out.push_back(std::move(c));
  }
  return out;
}

// Runs one check, recording its wall time and turning an error into a failed section.
template <typename F>
void run_check(Session& s, json& report, const std::string& name, F&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  json section;
  try {
    section = body();
  } catch (const std::exception& e) {
    section = json{{"error", e.what()}};
  }
  if (s.opt.engine.device != "cpu") {
    s.device_used_max = std::max(s.device_used_max, device_used_bytes());
  }
  section["seconds"] = seconds_since(t0);
  report["checks"][name] = std::move(section);
  report["timings"][name] = report["checks"][name]["seconds"];
}

}  // namespace

json run_validate(ValidateOptions options) {
  const auto t_start = std::chrono::steady_clock::now();
  Session s;
  const io::ModelConfig config = io::load_model_config(options.engine.model_dir);
  s.context = options.engine.context_length > 0
                  ? std::min<int64_t>(options.engine.context_length, config.max_position_embeddings)
                  : config.max_position_embeddings;
  resolve_defaults(options, s.context);
  check_inputs(options);
  options.engine.kv_cache_tokens =
      std::max(options.engine.kv_cache_tokens, cache_tokens_needed(options, s.context));
  s.opt = options;

  json report;
  report["tool"] = "sagellm validate";
  report["sagellm_version"] = std::string(version());
  report["git_commit"] = std::string(git_commit());
  report["command_line"] = options.command_line;
  report["started_at"] = utc_now();
  report["device"] = {
      {"kind", options.engine.device},
      {"name", options.engine.device == "cpu" ? cpu_model_name() : describe_gpu(gpu_info(0))},
      {"cpu", cpu_model_name()},
      {"threads", omp_get_max_threads()}};
  report["model"] = model_json(options, config, s.context);
  report["baseline"] = options.baseline_backend;
  report["candidate"] = options.candidate_backend;
  report["options"] = options_json(options);
  report["thresholds"] = json::array();
  for (const ThresholdInfo& t : options.thresholds.describe()) {
    report["thresholds"].push_back({{"flag", t.flag}, {"value", t.value}, {"meaning", t.meaning}});
  }
  report["checks"] = json::object();
  report["timings"] = json::object();

  // The runtime check builds the engines every other check uses, so it always runs; its section
  // is kept only when it was asked for.
  run_check(s, report, "runtime", [&] { return check_runtime(s); });
  const bool engines_ok = s.base != nullptr && s.cand != nullptr;
  if (!options.runs("runtime")) {
    const json rt = report["checks"]["runtime"];
    report["checks"].erase("runtime");
    report["timings"].erase("runtime");
    report["timings"]["engine_load"] = rt["seconds"];
    if (!engines_ok)
      fail("validate: {}", rt.value("error", std::string("the engines did not load")));
  }

  if (engines_ok) {
    const Tokenizer& tok = s.base->tokenizer();
    s.corpora = tokenize_all(tok, options.corpora, "--corpus");
    if (options.runs("context")) {
      s.haystack = read_haystack(options.haystack_dir);
      if (!options.long_corpora.empty()) {
        s.long_corpora = tokenize_all(tok, options.long_corpora, "--long-corpus");
      } else {
        s.long_corpora.push_back(Corpus{options.haystack_dir, tok.encode(s.haystack, false)});
      }
    }
  }

  // Memory runs last so that its peak-RSS figure covers every other check (the report still
  // lists the checks in their numbered order).
  for (const char* name : {"logits", "perplexity", "throughput", "drift", "context", "memory"}) {
    const std::string n(name);
    if (!options.runs(n)) continue;
    if (n == "perplexity" && options.runs("logits")) continue;  // ran together with logits
    if (!engines_ok) {
      report["checks"][n] = {{"skipped", "the engines did not load (see the runtime check)"}};
      continue;
    }
    if (n == "logits" || n == "perplexity") {
      json ppl;
      run_check(s, report, n, [&] {
        auto [logits, perplexity] = check_logits_and_perplexity(s);
        ppl = std::move(perplexity);
        return options.runs("logits") ? logits : ppl;
      });
      if (options.runs("logits") && options.runs("perplexity")) {
        if (report["checks"]["logits"].contains("error")) {
          report["checks"]["perplexity"] = {{"error", report["checks"]["logits"]["error"]}};
        } else {
          // One pass measured both; its time is shared between them.
          ppl["seconds"] = 0.0;
          ppl["timing_note"] = "measured in the same pass as the logits check";
          report["checks"]["perplexity"] = ppl;
        }
      }
    } else if (n == "throughput") {
      run_check(s, report, n, [&] { return check_throughput(s); });
    } else if (n == "memory") {
      run_check(s, report, n, [&] { return check_memory(s); });
    } else if (n == "drift") {
      run_check(s, report, n, [&] { return check_drift(s); });
    } else if (n == "context") {
      run_check(s, report, n, [&] { return check_context(s); });
    }
  }

  report["finished_at"] = utc_now();
  report["duration_seconds"] = seconds_since(t_start);
  judge(report, options.thresholds);
  return report;
}

void prepare_output_dir(const fs::path& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  SAGELLM_CHECK(!ec && fs::is_directory(out_dir), "cannot create the output directory {}: {}",
                out_dir.string(), ec.message());
  const fs::path probe = out_dir / ".sagellm-validate-write-test";
  {
    std::ofstream f(probe);
    SAGELLM_CHECK(f.good(), "cannot write in the output directory {}", out_dir.string());
  }
  fs::remove(probe, ec);
}

ReportFiles write_reports(const json& report, const fs::path& out_dir) {
  prepare_output_dir(out_dir);
  ReportFiles files{out_dir / "report.json", out_dir / "report.md", out_dir / "report.html"};
  auto write = [](const fs::path& p, const std::string& content) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    SAGELLM_CHECK(f.good(), "cannot write {}", p.string());
    f << content;
    f.close();
    SAGELLM_CHECK(!f.fail(), "cannot write {}", p.string());
  };
  write(files.json, report.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
  write(files.markdown, render_markdown(report));
  write(files.html, render_html(report));
  return files;
}

}  // namespace sagellm::eval::validate
