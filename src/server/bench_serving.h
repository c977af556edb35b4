// Load generator for an OpenAI-compatible server, in the manner of sglang.bench_serving: N
// streamed /v1/completions requests at a given arrival rate (Poisson) and concurrency, with random
// token-id prompts or prompts from a file; reports request/input/output throughput and TTFT,
// TPOT, ITL and end-to-end latency (mean, median, p99).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

namespace sagellm::server {

struct BenchServingOptions {
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string api_key;
  std::string model;  // sent as "model" (default: the server's first model)
  int num_prompts = 100;
  double request_rate = std::numeric_limits<double>::infinity();  // requests/s; inf: all at once
  int max_concurrency = 0;                                        // 0: unlimited
  int random_input_len = 128;
  int random_output_len = 64;
  double random_range_ratio = 1.0;  // lengths drawn uniformly from [len * ratio, len]
  std::string dataset_path;         // one prompt per non-empty line; empty: random token ids
  int vocab_size = 0;               // random ids come from [3, vocab); 0: the server's vocab_size
  uint64_t seed = 1;
  double timeout_seconds = 600;  // per request
};

// Runs the benchmark; throws sagellm::Error when the server cannot be reached or the options are
// invalid. Failed requests are counted (and the first errors listed) rather than thrown.
nlohmann::json run_bench_serving(const BenchServingOptions& options,
                                 const std::function<void(int, int)>& progress = {});

// Prints the result the way sglang.bench_serving does.
std::string format_bench_serving(const nlohmann::json& result);

}  // namespace sagellm::server
