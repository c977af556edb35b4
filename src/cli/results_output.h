// How the benchmark subcommands hand back their results: the JSON object written to --output (if
// given) and printed either whole (--json) or as the command's human-readable table.
#pragma once

#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace sagellm::cli {

inline void emit_results(const nlohmann::json& results, const std::string& output_path, bool json,
                         const std::function<void(const nlohmann::json&)>& print_table) {
  if (!output_path.empty()) {
    std::ofstream f(output_path, std::ios::binary | std::ios::trunc);
    SAGELLM_CHECK(f.good(), "cannot write --output {}", output_path);
    f << results.dump(2) << "\n";
    f.flush();
    SAGELLM_CHECK(f.good(), "cannot write --output {}", output_path);
  }
  if (json) {
    std::printf("%s\n", results.dump(2).c_str());
  } else {
    print_table(results);
  }
}

}  // namespace sagellm::cli
