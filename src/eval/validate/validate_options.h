// Options of `sagellm validate`: which checks run, on what inputs, at what sizes, and the
// thresholds each check's verdict is judged against. Defaults that depend on the model (context
// lengths, passkey lengths) are resolved once the model's config is known (resolve_defaults).
#pragma once

#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"

namespace sagellm::eval::validate {

// The seven checks, in report order.
inline constexpr std::string_view kCheckNames[] = {"runtime", "logits", "perplexity", "throughput",
                                                   "memory",  "drift",  "context"};

// Parses "runtime,logits,..." (or "all"); throws sagellm::Error naming an unknown check.
std::set<std::string> parse_checks(std::string_view list);

// A threshold with its flag and meaning, for --help and the report.
struct ThresholdInfo {
  std::string flag;
  double value;
  std::string meaning;
};

struct Thresholds {
  // Logits: fail above / below.
  double max_mean_kld = 0.01;
  double max_p99_kld = 0.1;
  double min_same_top1 = 0.95;
  // Perplexity: fail when |PPL(sage) / PPL(flash) - 1| exceeds this.
  double max_ppl_delta = 0.01;
  // Activation drift: fail when any layer's hidden-state cosine is below / rel-L2 above.
  double min_drift_cosine = 0.99;
  double max_drift_rel_l2 = 0.1;
  // Context: per position bucket mean KLD (fail above); passkey exact-match rate of the candidate
  // (fail below, judged only when the baseline itself reaches it) and the largest drop of any
  // cell's rate below the baseline's.
  double max_bucket_kld = 0.01;
  double min_passkey = 0.9;
  double max_passkey_drop = 0.2;
  // Throughput: warn when the candidate's decode tokens/s is below this multiple of the
  // baseline's at the largest context (judged on GPU devices only; see the report).
  double min_speedup = 1.0;

  std::vector<ThresholdInfo> describe() const;
};

struct ValidateOptions {
  // Engine settings shared by both backends (model dir, device, page size, ...).
  EngineOptions engine;
  std::string baseline_backend = "flash";
  std::string candidate_backend = "sage_attn";

  std::filesystem::path out_dir = "validate-report";
  bool quick = false;
  std::set<std::string> checks;  // empty: all

  // Inputs.
  std::vector<std::filesystem::path> corpora;       // logits, perplexity, drift
  std::vector<std::filesystem::path> long_corpora;  // context buckets (default: the haystack)
  std::filesystem::path haystack_dir;               // passkey filler text (*.txt, sorted)

  // Logits / perplexity.
  int ctx = 0;             // 0: min(context, 2048), --quick: min(context, 512)
  int max_windows = -1;    // per corpus; -1: all (--quick: 8); 0: all
  int greedy_prompts = 0;  // 0: 4 (--quick: 2)
  int greedy_prompt_tokens = 32;
  int greedy_tokens = 64;

  // Throughput.
  std::vector<int> batch_sizes;  // default by device and --quick
  std::vector<int> context_lengths;
  int output_len = 0;  // 0: 32 (--quick: 16)

  // Memory.
  double kv_budget_gib = 16.0;

  // Drift and determinism.
  int drift_tokens = 0;  // 0: min(context, 512) (--quick: 256)
  int determinism_runs = 3;

  // Context-length accuracy.
  int long_max_windows = -1;         // -1: 4 (--quick: 1); 0: all
  std::vector<int> passkey_lengths;  // default: 1K, 2K, 4K ... up to the context
  std::vector<double> passkey_depths = {0.0, 0.25, 0.5, 0.75, 1.0};
  int passkey_trials = 5;
  uint64_t seed = 1234;

  Thresholds thresholds;

  // Recorded in the report.
  std::string command_line;

  bool runs(std::string_view check) const;
};

// Fills the defaults that depend on the model's context length and on --quick; validates the
// rest. Throws sagellm::Error naming the bad flag.
void resolve_defaults(ValidateOptions& o, int64_t context_length);

}  // namespace sagellm::eval::validate
