// Each subcommand lives in its own file and registers itself on the root app. A subcommand's
// action throws sagellm::Error for anything the user must fix; main() turns that into one line on
// stderr and exit code 1.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace sagellm::cli {

using Action = std::function<int()>;  // returns the process exit code

// Each adds its subcommand to `root` and returns the action to run when it is selected.
Action add_generate(CLI::App& root);
Action add_tokenize(CLI::App& root);
Action add_logits(CLI::App& root);
Action add_perplexity(CLI::App& root);
Action add_validate(CLI::App& root);
Action add_bench(CLI::App& root);
Action add_bench_attention(CLI::App& root);
Action add_serve(CLI::App& root);
Action add_bench_serving(CLI::App& root);

}  // namespace sagellm::cli
