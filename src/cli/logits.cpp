// sagellm logits: the model's float32 logits for every position of a token sequence.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace sagellm::cli {

namespace {

struct LogitsArgs {
  EngineOptions engine;
  std::vector<int64_t> ids;
  std::string text;
  std::string out;
  bool json = false;
};

int run_logits(LogitsArgs& a) {
  Engine engine(a.engine);
  std::vector<int32_t> ids;
  if (!a.text.empty()) {
    ids = engine.tokenizer().encode(a.text, /*add_special_tokens=*/true);
  } else {
    SAGELLM_CHECK(!a.ids.empty(), "give the tokens with --ids 1,2,3 or --text");
    for (int64_t id : a.ids) {
      SAGELLM_CHECK(id >= 0 && id < engine.config().vocab_size,
                    "token id {} is outside the vocabulary (size {})", id,
                    engine.config().vocab_size);
      ids.push_back(static_cast<int32_t>(id));
    }
  }
  std::vector<float> logits = engine.score(ids);
  const auto t = static_cast<int64_t>(ids.size());
  const int64_t v = engine.config().vocab_size;
  std::vector<int64_t> ids64(ids.begin(), ids.end());
  io::write_safetensors(
      a.out,
      {io::TensorToWrite{"logits", DType::kF32, {t, v}, std::as_bytes(std::span(logits))},
       io::TensorToWrite{"input_ids", DType::kI64, {t}, std::as_bytes(std::span(ids64))}},
      {{"attention_backend", std::string(engine.attention().name())}});
  if (a.json) {
    nlohmann::json j = {{"out", a.out},
                        {"tokens", t},
                        {"vocab", v},
                        {"attention_backend", std::string(engine.attention().name())}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("wrote logits [%lld, %lld] to %s\n", static_cast<long long>(t),
                static_cast<long long>(v), a.out.c_str());
  }
  return 0;
}

}  // namespace

Action add_logits(CLI::App& root) {
  auto args = std::make_shared<LogitsArgs>();
  CLI::App* app =
      root.add_subcommand("logits", "Write float32 logits [T, vocab] to a safetensors file");
  add_engine_flags(*app, args->engine);
  auto* ids = app->add_option("--ids", args->ids, "Token ids, comma separated")->delimiter(',');
  app->add_option("--text", args->text, "Text to tokenize (with BOS) instead of --ids")
      ->excludes(ids);
  app->add_option("--out", args->out, "Output .safetensors (tensors: logits, input_ids)")
      ->required();
  app->add_flag("--json", args->json, "Print a JSON summary");
  return [args] { return run_logits(*args); };
}

}  // namespace sagellm::cli
