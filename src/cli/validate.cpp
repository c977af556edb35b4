// sagellm validate: the seven checks of sage_attn against flash on one model, written as
// report.json, report.md and report.html (src/eval/validate).
#include "eval/validate/validate.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"

namespace sagellm::cli {

namespace {

namespace v = eval::validate;

struct ValidateArgs {
  v::ValidateOptions opt;
  std::string checks = "all";
  std::vector<std::string> corpora, long_corpora;
  std::string haystack_dir;
  std::string fail_on = "never";
  bool json = false;
};

// The command line as the process received it (recorded in the report).
std::string own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string raw = ss.str(), out;
  size_t start = 0;
  while (start < raw.size()) {
    size_t end = raw.find('\0', start);
    if (end == std::string::npos) end = raw.size();
    std::string arg = raw.substr(start, end - start);
    if (!out.empty()) out += ' ';
    const bool plain = !arg.empty() && arg.find_first_of(" \t'\"$\\") == std::string::npos;
    out += plain ? arg : "'" + arg + "'";
    start = end + 1;
  }
  return out;
}

int run_validate_cmd(ValidateArgs& a) {
  a.opt.checks = v::parse_checks(a.checks);
  for (const std::string& c : a.corpora) a.opt.corpora.emplace_back(c);
  for (const std::string& c : a.long_corpora) a.opt.long_corpora.emplace_back(c);
  a.opt.haystack_dir = a.haystack_dir;
  a.opt.command_line = own_command_line();
  v::prepare_output_dir(a.opt.out_dir);
  const nlohmann::json report = v::run_validate(a.opt);
  const v::ReportFiles files = v::write_reports(report, a.opt.out_dir);

  const std::string verdict = report.value("verdict", std::string("fail"));
  if (a.json) {
    nlohmann::json j = {{"verdict", verdict},
                        {"report_json", files.json.string()},
                        {"report_md", files.markdown.string()},
                        {"report_html", files.html.string()},
                        {"checks", nlohmann::json::object()}};
    for (const auto& [name, s] : report["checks"].items()) {
      j["checks"][name] = s.value("verdict", std::string());
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("sagellm validate: %s against %s\n", report["candidate"].get<std::string>().c_str(),
                report["baseline"].get<std::string>().c_str());
    for (std::string_view name : v::kCheckNames) {
      const std::string n(name);
      if (!report["checks"].contains(n)) continue;
      const nlohmann::json& s = report["checks"][n];
      std::printf("  %-11s %-8s %6.1f s\n", n.c_str(), s.value("verdict", std::string()).c_str(),
                  s.value("seconds", 0.0));
    }
    std::printf("verdict: %s\nreport: %s\n        %s\n        %s\n", verdict.c_str(),
                files.markdown.string().c_str(), files.html.string().c_str(),
                files.json.string().c_str());
  }
  if (a.fail_on == "fail" && verdict == "fail") return 2;
  if (a.fail_on == "warn" && (verdict == "fail" || verdict == "warn")) return 2;
  return 0;
}

}  // namespace

Action add_validate(CLI::App& root) {
  auto args = std::make_shared<ValidateArgs>();
  v::ValidateOptions& o = args->opt;
  v::Thresholds& t = o.thresholds;
  CLI::App* app = root.add_subcommand(
      "validate",
      "Measure sage_attn against flash on a model: runtime flag, logits (KL divergence), "
      "perplexity, throughput, memory, activation drift and determinism, context-length accuracy; "
      "writes report.json, report.md and report.html");

  // Engine settings shared by both backends (each backend gets its own default KV cache dtype).
  app->add_option("--model", o.engine.model_dir,
                  "Model directory (config.json, *.safetensors, tokenizer.json)")
      ->required();
  app->add_option("--device", o.engine.device, "Execution device")->capture_default_str();
  app->add_option("--sage-pv-dtype", o.engine.attention_options.sage_pv_dtype,
                  "sage_attn precision of the P.V product: fp8 | int8 | fp16")
      ->capture_default_str();
  app->add_option("--load-format", o.engine.load_format,
                  "auto (safetensors) | dummy (seeded random weights: speed and memory only)")
      ->capture_default_str();
  app->add_option("--mem-fraction-static", o.engine.mem_fraction_static,
                  "GPU: fraction of GPU memory both engines' weights and KV caches may take (each "
                  "cache is sized for the checks that run)")
      ->capture_default_str();
  app->add_option("--context-length", o.engine.context_length,
                  "Maximum tokens per sequence (default: the model's max_position_embeddings)");
  app->add_option("--page-size", o.engine.page_size, "Tokens per KV cache page")
      ->capture_default_str();
  app->add_option("--prefill-chunk", o.engine.prefill_chunk, "Tokens per prefill step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));

  app->add_option("--out", o.out_dir, "Output directory")->capture_default_str();
  app->add_flag("--quick", o.quick,
                "Small sizes for CI: ctx 512, 8 windows per corpus, batch 1,2 x context 128,512, "
                "16 output tokens, 2 greedy prompts, 1 long window, first and last passkey length");
  app->add_option("--checks", args->checks,
                  "Comma-separated subset of: runtime,logits,perplexity,throughput,memory,drift,"
                  "context (or all)")
      ->capture_default_str();
  app->add_option("--corpus", args->corpora,
                  "Text file for the logits, perplexity and drift checks (repeatable), e.g. "
                  "WikiText-2's wiki.test.raw and text of the model's domain");
  app->add_option("--long-corpus", args->long_corpora,
                  "Long text file(s) for the KLD-by-position buckets, concatenated (default: the "
                  "haystack text)");
  app->add_option("--haystack-dir", args->haystack_dir,
                  "Folder of .txt files (concatenated in sorted order) used as passkey filler");

  app->add_option("--ctx", o.ctx,
                  "Perplexity/KLD window in tokens, BOS included (default: min(context, 2048); "
                  "--quick: min(context, 512))");
  app->add_option("--max-windows", o.max_windows,
                  "Windows per corpus (default: all; --quick: 8; 0: all)");
  app->add_option("--greedy-prompts", o.greedy_prompts,
                  "Prompts per corpus for greedy agreement (default 4; --quick: 2)");
  app->add_option("--greedy-prompt-tokens", o.greedy_prompt_tokens, "Tokens per greedy prompt")
      ->capture_default_str();
  app->add_option("--greedy-tokens", o.greedy_tokens, "Greedy tokens generated per prompt")
      ->capture_default_str();

  app->add_option("--batch-sizes", o.batch_sizes,
                  "Throughput batch sizes (default on CPU: 1,4; --quick: 1,2; on GPU: 1,8,64)")
      ->delimiter(',');
  app->add_option("--context-lengths", o.context_lengths,
                  "Throughput prompt lengths (default on CPU: 128,512,2048,8192; --quick: "
                  "128,512; on GPU: 128,4096,32768; longer than the model's context: replaced by "
                  "the context)")
      ->delimiter(',');
  app->add_option("--output-len", o.output_len,
                  "Tokens generated per request in the throughput grid (default 32; --quick: 16)");

  app->add_option("--kv-budget-gib", o.kv_budget_gib,
                  "Memory budget for the KV capacity figures (GiB)")
      ->capture_default_str();

  app->add_option("--drift-tokens", o.drift_tokens,
                  "Input tokens of the drift and determinism checks (default: min(context, 512); "
                  "--quick: 256)");
  app->add_option("--determinism-runs", o.determinism_runs, "Identical reruns compared bitwise")
      ->capture_default_str();

  app->add_option("--long-max-windows", o.long_max_windows,
                  "Full-context windows of the long text (default 4; --quick: 1; 0: all)");
  app->add_option("--passkey-lengths", o.passkey_lengths,
                  "Passkey prompt lengths in tokens (default: 1024, 2048, ... up to the context; "
                  "half and full context below 1024; --quick: the first and the last)")
      ->delimiter(',');
  app->add_option("--passkey-depths", o.passkey_depths,
                  "Needle depths as fractions of the haystack")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--passkey-trials", o.passkey_trials, "Seeded keys per passkey cell")
      ->capture_default_str();
  app->add_option("--seed", o.seed, "Seed of every random choice (keys, token ids)")
      ->capture_default_str();

  auto threshold = [&](const std::string& flag, double& value) {
    for (const v::ThresholdInfo& i : t.describe()) {
      if (i.flag == flag) {
        app->add_option(flag, value, i.meaning)->capture_default_str()->group("Thresholds");
        return;
      }
    }
  };
  threshold("--max-mean-kld", t.max_mean_kld);
  threshold("--max-p99-kld", t.max_p99_kld);
  threshold("--min-same-top1", t.min_same_top1);
  threshold("--max-ppl-delta", t.max_ppl_delta);
  threshold("--min-drift-cosine", t.min_drift_cosine);
  threshold("--max-drift-rel-l2", t.max_drift_rel_l2);
  threshold("--max-bucket-kld", t.max_bucket_kld);
  threshold("--min-passkey", t.min_passkey);
  threshold("--max-passkey-drop", t.max_passkey_drop);
  threshold("--min-speedup", t.min_speedup);

  app->add_option("--fail-on", args->fail_on,
                  "Exit with code 2 when the overall verdict is: fail | warn (or worse) | never")
      ->check(CLI::IsMember({"never", "fail", "warn"}))
      ->capture_default_str();
  app->add_flag("--json", args->json, "Print the verdicts and report paths as JSON");
  // For testing the measurement itself: compare a backend with itself (KLD must be exactly 0).
  app->add_option("--candidate-backend", o.candidate_backend, "Backend judged")
      ->group("")
      ->capture_default_str();
  app->add_option("--baseline-backend", o.baseline_backend, "Backend judged against")
      ->group("")
      ->capture_default_str();
  return [args] { return run_validate_cmd(*args); };
}

}  // namespace sagellm::cli
