// sagellm generate: run a prompt through the model and stream the continuation to stdout.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "core/error.h"

namespace sagellm::cli {

namespace {

struct GenerateArgs {
  EngineOptions engine;
  std::string prompt;
  std::string prompt_file;
  bool chat = false;
  bool no_bos = false;
  bool json = false;
  SamplingParams sampling;
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;
  CLI::Option* seed_option = nullptr;
};

int run_generate(GenerateArgs& a) {
  if (!a.prompt_file.empty()) {
    std::ifstream f(a.prompt_file, std::ios::binary);
    SAGELLM_CHECK(f.good(), "cannot read --prompt-file {}", a.prompt_file);
    std::stringstream ss;
    ss << f.rdbuf();
    a.prompt = ss.str();
  }
  a.sampling.stop_token_ids = a.stop_ids;
  if (a.seed_option->count() > 0) a.sampling.seed = a.seed;
  a.sampling.validate();
  Engine engine(a.engine);
  const Tokenizer& tok = engine.tokenizer();
  std::string text = a.prompt;
  if (a.chat) {
    const ChatMessage msg{"user", a.prompt};
    text = apply_chat_template(chat_template_for(tok), std::span<const ChatMessage>(&msg, 1));
  }
  GenerationRequest req;
  // A chat template already starts with BOS as text.
  req.prompt = tok.encode(text, /*add_special_tokens=*/!a.no_bos && !a.chat);
  req.sampling = a.sampling;

  GenerationStats stats;
  TokenCallback stream;
  if (!a.json) {
    stream = [](size_t, const std::string& piece, int32_t) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
  }
  std::vector<GenerationResult> out = engine.generate({req}, stream, &stats);
  const GenerationResult& r = out.at(0);
  const double prefill_tps =
      stats.prefill_seconds > 0 ? stats.prefill_tokens / stats.prefill_seconds : 0;
  const double decode_tps =
      stats.decode_seconds > 0 ? stats.decode_tokens / stats.decode_seconds : 0;
  if (a.json) {
    nlohmann::json j = {{"text", r.text},
                        {"tokens", r.tokens},
                        {"finish_reason", r.finish_reason},
                        {"prompt_tokens", r.prompt_tokens},
                        {"completion_tokens", r.tokens.size()},
                        {"attention_backend", std::string(engine.attention().name())},
                        {"prefill_tokens_per_s", prefill_tps},
                        {"decode_tokens_per_s", decode_tps}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("\n");
    std::fprintf(
        stderr,
        "[%s] prompt %d tokens, generated %zu (%s); prefill %.1f tok/s, decode %.1f tok/s\n",
        std::string(engine.attention().name()).c_str(), r.prompt_tokens, r.tokens.size(),
        r.finish_reason.c_str(), prefill_tps, decode_tps);
  }
  return 0;
}

}  // namespace

Action add_generate(CLI::App& root) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* app = root.add_subcommand("generate", "Generate a continuation of a prompt");
  add_engine_flags(*app, args->engine);
  auto* prompt = app->add_option("--prompt", args->prompt, "Prompt text");
  app->add_option("--prompt-file", args->prompt_file, "Read the prompt from a file")
      ->excludes(prompt);
  app->add_flag("--chat", args->chat, "Wrap the prompt in the model family's chat template");
  app->add_flag("--no-bos", args->no_bos, "Do not add the BOS token");
  app->add_option("--max-tokens", args->sampling.max_tokens, "Tokens to generate at most")
      ->capture_default_str();
  app->add_option("--temperature", args->sampling.temperature, "0 = greedy")->capture_default_str();
  app->add_option("--top-k", args->sampling.top_k, "Keep the k most likely tokens (0: off)");
  app->add_option("--top-p", args->sampling.top_p, "Nucleus sampling mass (1: off)");
  app->add_option("--min-p", args->sampling.min_p, "Drop tokens below min_p * p_max (0: off)");
  args->seed_option = app->add_option("--seed", args->seed, "Random seed (same seed, same tokens)");
  app->add_option("--stop", args->sampling.stop, "Stop string (repeatable)");
  app->add_option("--stop-token-ids", args->stop_ids, "Stop token ids")->delimiter(',');
  app->add_flag("--ignore-eos", args->sampling.ignore_eos, "Keep going past EOS");
  app->add_flag("--json", args->json, "Print one JSON object instead of streaming text");
  return [args] { return run_generate(*args); };
}

}  // namespace sagellm::cli
