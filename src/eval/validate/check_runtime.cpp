// Check 1, runtime flag: both backends load and generate, the default backend is flash, and an
// unknown backend name is rejected with a clear message.
#include <chrono>

#include "core/error.h"
#include "eval/validate/process_memory.h"
#include "eval/validate/session.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

constexpr const char* kProbePrompt = "Once upon a time";
constexpr int kProbeTokens = 16;
constexpr const char* kUnknownBackend = "no_such_backend";

// Builds an engine, recording how long it took and how much resident memory it added (weights
// plus the CPU cache storage). Returns null and records the error when it cannot be built.
std::unique_ptr<Engine> build_engine(const EngineOptions& o, json& record) {
  const bool gpu = o.device != "cpu";
  const size_t device0 = gpu ? device_used_bytes() : 0;
  const size_t rss0 = current_rss_bytes();
  const auto t0 = std::chrono::steady_clock::now();
  record["backend_requested"] = o.attention_backend;
  try {
    auto e = std::make_unique<Engine>(o);
    record["loaded"] = true;
    record["load_seconds"] = seconds_since(t0);
    const size_t rss1 = current_rss_bytes();
    record["rss_growth_bytes"] = rss0 > 0 && rss1 >= rss0 ? json(rss1 - rss0) : json(nullptr);
    if (gpu) {
      const size_t device1 = device_used_bytes();
      record["device_used_growth_bytes"] = device1 >= device0 ? json(device1 - device0) : json(0);
    }
    record["backend"] = std::string(e->attention().name());
    record["kv_cache_dtype"] = std::string(kv_cache_dtype_name(e->kv_cache_dtype()));
    record["cache_tokens"] = static_cast<int64_t>(e->num_pages()) * e->page_size();
    return e;
  } catch (const std::exception& ex) {
    record["loaded"] = false;
    record["error"] = ex.what();
    return nullptr;
  }
}

json probe_generation(Engine& e) {
  json g;
  g["backend"] = std::string(e.attention().name());
  g["prompt"] = kProbePrompt;
  try {
    GenerationRequest r;
    r.prompt = e.tokenizer().encode(kProbePrompt, /*add_special_tokens=*/true);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = kProbeTokens;
    r.sampling.ignore_eos = true;  // a fixed number of steps, whatever the model says
    GenerationStats stats;
    const GenerationResult res = e.generate({r}, {}, &stats).at(0);
    bool ids_ok = true;
    for (int32_t t : res.tokens) ids_ok = ids_ok && t >= 0 && t < e.config().vocab_size;
    g["requested_tokens"] = kProbeTokens;
    g["generated_tokens"] = res.tokens.size();
    g["token_ids"] = res.tokens;
    g["text"] = res.text;
    g["ids_in_vocabulary"] = ids_ok;
    g["decode_tokens_per_s"] =
        stats.decode_seconds > 0 ? stats.decode_tokens / stats.decode_seconds : 0.0;
    g["ok"] = ids_ok && static_cast<int>(res.tokens.size()) == kProbeTokens;
  } catch (const std::exception& ex) {
    g["ok"] = false;
    g["error"] = ex.what();
  }
  return g;
}

}  // namespace

json check_runtime(Session& s) {
  json out;
  const std::string default_name = EngineOptions{}.attention_backend;

  // An engine whose backend field was left at its default: the backend it reports is the default.
  EngineOptions def = s.opt.engine;
  def.attention_backend = default_name;
  json def_record;
  std::unique_ptr<Engine> def_engine = build_engine(def, def_record);
  out["default_backend"] = {{"reported", def_record.value("backend", std::string())},
                            {"expected", "flash"},
                            {"ok", def_record.value("backend", std::string()) == "flash"}};

  if (s.opt.baseline_backend == default_name) {
    s.base = std::move(def_engine);
    out["engines"]["baseline"] = def_record;
  } else {
    def_engine.reset();
    EngineOptions b = s.opt.engine;
    b.attention_backend = s.opt.baseline_backend;
    s.base = build_engine(b, out["engines"]["baseline"]);
  }
  EngineOptions c = s.opt.engine;
  c.attention_backend = s.opt.candidate_backend;
  s.cand = build_engine(c, out["engines"]["candidate"]);
  s.engine_loads = out["engines"];

  // The registry every Engine builds its backend through.
  json unknown = {{"name", kUnknownBackend}, {"rejected", false}};
  try {
    make_attention_backend(kUnknownBackend, s.opt.engine.attention_options);
  } catch (const Error& e) {
    const std::string msg = e.what();
    unknown["rejected"] = true;
    unknown["message"] = msg;
    // A clear message names the bad value and the valid choices.
    bool lists_all = true;
    for (const std::string& n : attention_backend_names()) {
      lists_all = lists_all && msg.find(n) != std::string::npos;
    }
    unknown["message_is_clear"] = msg.find(kUnknownBackend) != std::string::npos && lists_all;
  }
  out["unknown_backend"] = unknown;
  out["backends_available"] = attention_backend_names();

  if (s.base) out["generation"]["baseline"] = probe_generation(*s.base);
  if (s.cand) out["generation"]["candidate"] = probe_generation(*s.cand);
  return out;
}

}  // namespace sagellm::eval::validate
