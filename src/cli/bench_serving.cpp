// sagellm bench-serving: load an OpenAI-compatible server and report throughput and latencies.
#include "server/bench_serving.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>

#include "cli/commands.h"
#include "cli/results_output.h"
#include "core/error.h"

namespace sagellm::cli {

namespace {

struct BenchServingArgs {
  server::BenchServingOptions options;
  bool json = false;
  std::string output;
};

int run_bench_serving(const BenchServingArgs& a) {
  const bool tty = isatty(fileno(stderr)) != 0;
  auto progress = [tty](int done, int total) {
    if (tty) std::fprintf(stderr, "\rbench-serving: %d/%d requests", done, total);
  };
  const nlohmann::json result = server::run_bench_serving(a.options, progress);
  if (tty) std::fprintf(stderr, "\n");
  emit_results(result, a.output, a.json, [](const nlohmann::json& r) {
    std::printf("%s", server::format_bench_serving(r).c_str());
  });
  return result["completed"].get<int>() == a.options.num_prompts ? 0 : 1;
}

}  // namespace

Action add_bench_serving(CLI::App& root) {
  auto args = std::make_shared<BenchServingArgs>();
  server::BenchServingOptions& o = args->options;
  CLI::App* app = root.add_subcommand(
      "bench-serving", "Benchmark a running server: throughput, TTFT, TPOT, ITL (sglang style)");
  app->add_option("--host", o.host, "Server address")->capture_default_str();
  app->add_option("--port", o.port, "Server port")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app->add_option("--api-key", o.api_key, "Sent as 'Authorization: Bearer KEY'");
  app->add_option("--model", o.model, "Model id to request (default: the server's)");
  app->add_option("--num-prompts", o.num_prompts, "Requests to send")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--request-rate", o.request_rate,
                  "Requests per second, Poisson arrivals (default inf: all at once)");
  app->add_option("--max-concurrency", o.max_concurrency,
                  "Requests in flight at most (0: no limit)")
      ->capture_default_str();
  app->add_option("--random-input-len", o.random_input_len, "Prompt tokens (random prompts)")
      ->capture_default_str();
  app->add_option("--random-output-len", o.random_output_len, "Tokens to generate per request")
      ->capture_default_str();
  app->add_option("--random-range-ratio", o.random_range_ratio,
                  "Lengths drawn uniformly from [len * ratio, len]")
      ->capture_default_str();
  app->add_option("--dataset-path", o.dataset_path,
                  "Text file with one prompt per line (default: random token ids)");
  app->add_option("--vocab-size", o.vocab_size,
                  "Vocabulary for random token ids (default: the server's vocab_size)");
  app->add_option("--seed", o.seed, "Seed for prompts and arrival times")->capture_default_str();
  app->add_flag("--json", args->json, "Print the result as one JSON object");
  app->add_option("--output", args->output, "Also write the result JSON to this file");
  return [args] { return run_bench_serving(*args); };
}

}  // namespace sagellm::cli
