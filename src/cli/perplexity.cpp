// sagellm perplexity: windowed perplexity of a text file, and llama.cpp-style KL divergence
// against logits saved by an earlier run (--kl-divergence-base writes them, --kl-divergence reads).
#include "eval/perplexity.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "core/error.h"
#include "eval/kl_divergence.h"
#include "io/safetensors.h"

namespace sagellm::cli {

namespace {

struct PerplexityArgs {
  EngineOptions engine;
  std::string file;
  eval::PerplexityOptions ppl;
  std::string kld_base;
  std::string kld;
  bool json = false;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SAGELLM_CHECK(f.good(), "cannot read {}", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json stats_json(const eval::ValueStats& s) {
  return {{"mean", s.mean},     {"stderr", s.stderr_mean},
          {"median", s.median}, {"min", s.min},
          {"p01", s.p01},       {"p05", s.p05},
          {"p10", s.p10},       {"p90", s.p90},
          {"p95", s.p95},       {"p99", s.p99},
          {"p99.9", s.p999},    {"max", s.max}};
}

int run_perplexity_cmd(PerplexityArgs& a) {
  Engine engine(a.engine);
  const std::string text = read_file(a.file);
  const std::vector<int32_t> ids = engine.tokenizer().encode(text, /*add_special_tokens=*/false);
  const size_t vocab = static_cast<size_t>(engine.config().vocab_size);

  // Base logits to save, or saved base logits to compare against.
  std::vector<float> base_logits_out;
  std::vector<int32_t> base_targets_out;
  std::unique_ptr<io::SafetensorsFile> base;
  const float* base_logits = nullptr;
  const int32_t* base_targets = nullptr;
  size_t base_rows = 0;
  if (!a.kld.empty()) {
    base = std::make_unique<io::SafetensorsFile>(a.kld);
    const io::TensorEntry* l = base->find("logits");
    const io::TensorEntry* t = base->find("targets");
    SAGELLM_CHECK(l != nullptr && t != nullptr && l->dtype == DType::kF32 &&
                      t->dtype == DType::kI32 && l->shape.size() == 2 && t->shape.size() == 1 &&
                      l->shape[0] == t->shape[0] && l->shape[1] == static_cast<int64_t>(vocab),
                  "{} is not a KL-divergence base file for this model (expected F32 logits [N, {}] "
                  "and I32 targets [N]; write one with --kl-divergence-base)",
                  a.kld, vocab);
    base_logits = reinterpret_cast<const float*>(l->data);
    base_targets = reinterpret_cast<const int32_t*>(t->data);
    base_rows = static_cast<size_t>(t->shape[0]);
    const auto ctx = base->metadata().find("ctx");
    SAGELLM_CHECK(ctx != base->metadata().end() && ctx->second == std::to_string(a.ppl.ctx),
                  "{} was computed with --ctx {}, this run uses --ctx {}", a.kld,
                  ctx == base->metadata().end() ? std::string("?") : ctx->second, a.ppl.ctx);
  }

  std::vector<eval::TokenComparison> cmp;
  size_t row = 0;
  auto on_window = [&](const eval::ScoredWindow& w) {
    if (!a.kld_base.empty()) {
      base_logits_out.insert(base_logits_out.end(), w.logits.begin(), w.logits.end());
      base_targets_out.insert(base_targets_out.end(), w.targets.begin(), w.targets.end());
    }
    if (base) {
      for (size_t j = 0; j < w.targets.size(); ++j, ++row) {
        SAGELLM_CHECK(row < base_rows && base_targets[row] == w.targets[j],
                      "{} was computed on other tokens or another --ctx (token {} differs)", a.kld,
                      row);
        cmp.push_back(eval::compare_token(
            std::span<const float>(base_logits + row * vocab, vocab),
            std::span<const float>(w.logits.data() + j * vocab, vocab), w.targets[j]));
      }
    }
  };
  eval::PerplexityResult r = eval::run_perplexity(engine, ids, a.ppl, on_window);
  if (base) {
    SAGELLM_CHECK(row == base_rows, "{} holds {} tokens but this run scored {}", a.kld, base_rows,
                  row);
  }
  if (!a.kld_base.empty()) {
    const auto n = static_cast<int64_t>(base_targets_out.size());
    io::write_safetensors(
        a.kld_base,
        {io::TensorToWrite{"logits",
                           DType::kF32,
                           {n, static_cast<int64_t>(vocab)},
                           std::as_bytes(std::span(base_logits_out))},
         io::TensorToWrite{
             "targets", DType::kI32, {n}, std::as_bytes(std::span(base_targets_out))}},
        {{"attention_backend", std::string(engine.attention().name())},
         {"ctx", std::to_string(a.ppl.ctx)}});
  }

  nlohmann::json j = {{"file", a.file},
                      {"attention_backend", std::string(engine.attention().name())},
                      {"kv_cache_dtype", std::string(kv_cache_dtype_name(engine.kv_cache_dtype()))},
                      {"ctx", a.ppl.ctx},
                      {"windows", r.windows},
                      {"tokens", r.stats.n},
                      {"mean_nll", r.stats.mean_nll},
                      {"nll_stderr", r.stats.nll_stderr},
                      {"ppl", r.stats.ppl},
                      {"ppl_stderr", r.stats.ppl_stderr}};
  if (base) {
    const eval::KLDSummary s = eval::summarize_kld(cmp);
    j["kl_divergence"] = {{"base_file", a.kld},
                          {"tokens", s.n},
                          {"kld", stats_json(s.kld)},
                          {"same_top1", s.same_top1},
                          {"same_top1_stderr", s.same_top1_stderr},
                          {"rms_delta_p", s.rms_delta_p},
                          {"delta_p", stats_json(s.delta_p)},
                          {"ppl_base", s.ppl_base},
                          {"ppl_test", s.ppl_test},
                          {"ln_ppl_ratio", s.ln_ppl_ratio},
                          {"ln_ppl_ratio_stderr", s.ln_ppl_ratio_stderr}};
  }
  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("perplexity of %s (%s, ctx %d): %zu tokens in %zu windows\n", a.file.c_str(),
              std::string(engine.attention().name()).c_str(), a.ppl.ctx, r.stats.n, r.windows);
  std::printf("PPL = %.4f +/- %.4f (mean NLL %.5f)\n", r.stats.ppl, r.stats.ppl_stderr,
              r.stats.mean_nll);
  if (base) {
    const eval::KLDSummary s = eval::summarize_kld(cmp);
    std::printf("\nKL divergence against %s over %zu tokens\n", a.kld.c_str(), s.n);
    std::printf("Mean    PPL(base)         : %10.6f\n", s.ppl_base);
    std::printf("Mean    PPL(test)         : %10.6f\n", s.ppl_test);
    std::printf("Mean ln(PPL(test)/PPL(base)): %10.6f +/- %.6f\n", s.ln_ppl_ratio,
                s.ln_ppl_ratio_stderr);
    std::printf("Mean    KLD: %12.6e +/- %.6e\n", s.kld.mean, s.kld.stderr_mean);
    std::printf("Maximum KLD: %12.6e\n", s.kld.max);
    std::printf("99.9%%   KLD: %12.6e\n", s.kld.p999);
    std::printf("99.0%%   KLD: %12.6e\n", s.kld.p99);
    std::printf("Median  KLD: %12.6e\n", s.kld.median);
    std::printf("Minimum KLD: %12.6e\n", s.kld.min);
    std::printf("Same top p: %7.3f +/- %.3f %%\n", 100.0 * s.same_top1, 100.0 * s.same_top1_stderr);
    std::printf("RMS Dp    : %7.4f %%\n", 100.0 * s.rms_delta_p);
  }
  return 0;
}

}  // namespace

Action add_perplexity(CLI::App& root) {
  auto args = std::make_shared<PerplexityArgs>();
  CLI::App* app = root.add_subcommand("perplexity", "Perplexity of a text file, and KL divergence");
  add_engine_flags(*app, args->engine);
  app->add_option("--file", args->file, "Text file to score")->required();
  app->add_option("--ctx", args->ppl.ctx, "Window length in tokens (BOS included)")
      ->capture_default_str();
  app->add_option("--chunks", args->ppl.max_chunks, "Score only the first N windows (0: all)");
  auto* base = app->add_option("--kl-divergence-base", args->kld_base,
                               "Save this run's logits to FILE as the base of a later comparison");
  app->add_option("--kl-divergence", args->kld, "Compare against the logits saved in FILE")
      ->excludes(base);
  app->add_flag("--json", args->json, "Print JSON");
  return [args] { return run_perplexity_cmd(*args); };
}

}  // namespace sagellm::cli
