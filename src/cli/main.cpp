#include <cstdio>
#include <exception>
#include <new>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/logging.h"

namespace {

int run(int argc, char** argv) {
  sagellm::init_logging();
  CLI::App app{"sagellm: Llama inference with exact bf16 FlashAttention or 8-bit SageAttention"};
  app.set_version_flag("--version", std::string("sagellm ") + SAGELLM_VERSION);
  app.require_subcommand(1);

  using Adder = sagellm::cli::Action (*)(CLI::App&);
  const Adder adders[] = {
      &sagellm::cli::add_generate,        &sagellm::cli::add_tokenize,
      &sagellm::cli::add_logits,          &sagellm::cli::add_perplexity,
      &sagellm::cli::add_validate,        &sagellm::cli::add_bench,
      &sagellm::cli::add_bench_attention, &sagellm::cli::add_serve,
      &sagellm::cli::add_bench_serving,
  };
  std::vector<std::pair<CLI::App*, sagellm::cli::Action>> actions;
  for (Adder add : adders) {
    const size_t before = app.get_subcommands({}).size();
    sagellm::cli::Action action = add(app);
    actions.emplace_back(app.get_subcommands({}).at(before), std::move(action));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& [sub, action] : actions) {
    if (sub->parsed()) return action();
  }
  return 0;
}

}  // namespace

// Every failure a user can cause ends here as one "error: ..." line and exit code 1.
int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const sagellm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
