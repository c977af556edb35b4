// What the checks share while `validate` runs: the options, the two engines, the tokenized
// corpora. Internal to src/eval/validate.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "eval/kl_divergence.h"
#include "eval/validate/validate_options.h"

namespace sagellm::eval::validate {

struct Corpus {
  std::filesystem::path path;
  std::vector<int32_t> ids;  // without BOS
};

struct Session {
  ValidateOptions opt;
  int64_t context = 0;
  std::unique_ptr<Engine> base, cand;
  // Filled by the runtime check (engine construction), read by the memory check.
  nlohmann::json engine_loads = nlohmann::json::object();
  // GPU runs: the most device memory in use seen after the engines were built and after each
  // check (cudaMemGetInfo).
  size_t device_used_max = 0;
  std::vector<Corpus> corpora;
  std::vector<Corpus> long_corpora;
  std::string haystack;
};

// Builds the engines and runs the runtime check (its section is returned; the engines are left in
// the session for the other checks, or null when one could not be built).
nlohmann::json check_runtime(Session& s);
// Checks 2 and 3 share the scoring of each window by both backends: returns {logits, perplexity}.
std::pair<nlohmann::json, nlohmann::json> check_logits_and_perplexity(Session& s);
nlohmann::json check_throughput(Session& s);
nlohmann::json check_memory(Session& s);
nlohmann::json check_drift(Session& s);
nlohmann::json check_context(Session& s);

// Scores `ids` in perplexity windows of `ctx` tokens (BOS first) with the baseline and the
// candidate and hands every scored token's comparison to `on_token` with its position in the
// window (the position of the row that predicts it). Returns the baseline's perplexity result.
struct WindowedComparison {
  size_t windows = 0;
  std::vector<TokenComparison> tokens;
  std::vector<int> positions;  // same length as tokens
};
WindowedComparison compare_windows(Session& s, std::span<const int32_t> ids, int ctx,
                                   int max_windows, const std::string& label);

nlohmann::json stats_json(const ValueStats& v);
nlohmann::json kld_summary_json(const KLDSummary& k);

// Seconds since `t0`.
double seconds_since(std::chrono::steady_clock::time_point t0);

}  // namespace sagellm::eval::validate
