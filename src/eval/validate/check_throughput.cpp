// Check 4, throughput: prefill and decode tokens/s of both backends over batch sizes x context
// lengths, through Engine::generate (what a user gets), and the share of a forward step spent
// inside the attention backend, timed by wrapping the backend (TimedAttention) around the same
// step shapes.
#include <algorithm>
#include <chrono>
#include <random>

#include "attention/timed_attention.h"
#include "core/logging.h"
#include "eval/validate/session.h"
#include "eval/validate/step_runner.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

std::vector<int32_t> random_ids(std::mt19937_64& rng, int n, int vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  // Ids from 3 up skip the usual special tokens (unk, BOS, EOS) so no request stops early.
  const int lo = vocab > 8 ? 3 : 0;
  for (int32_t& t : ids) t = lo + static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab - lo));
  return ids;
}

struct StepShare {
  double prefill_seconds = 0, prefill_attention_seconds = 0;
  double decode_seconds = 0, decode_attention_seconds = 0;
  int64_t prefill_tokens = 0, decode_tokens = 0;
};

// One request's prefill of `prompt`, then `steps` decode steps of `batch` requests at that
// context (the other requests' K/V are seeded random values written straight into the cache).
StepShare measure_share(const Engine& e, const std::vector<int32_t>& prompt, int batch, int steps,
                        int page_size, int prefill_chunk, uint64_t seed) {
  TimedAttention timed(e.attention());
  const int64_t per_request = static_cast<int64_t>(prompt.size()) + steps + page_size;
  StepRunner runner(e.model(), timed, e.cache().dtype(), page_size, per_request * batch);
  StepShare r;
  const int first = runner.add_request();
  for (size_t start = 0; start < prompt.size(); start += static_cast<size_t>(prefill_chunk)) {
    const size_t len = std::min(prompt.size() - start, static_cast<size_t>(prefill_chunk));
    timed.reset();
    const auto t0 = std::chrono::steady_clock::now();
    runner.step({{first, std::span<const int32_t>(prompt.data() + start, len)}},
                LogitsMode::kLastPerSeq);
    r.prefill_seconds += seconds_since(t0);
    r.prefill_attention_seconds += timed.seconds();
    r.prefill_tokens += static_cast<int64_t>(len);
  }
  std::vector<int> reqs = {first};
  for (int b = 1; b < batch; ++b) {
    reqs.push_back(runner.add_request());
    runner.fill_random(reqs.back(), static_cast<int64_t>(prompt.size()), seed + b);
  }
  std::mt19937_64 rng(seed);
  const int vocab = e.config().vocab_size;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<int32_t>> next;
    for (size_t i = 0; i < reqs.size(); ++i) next.push_back(random_ids(rng, 1, vocab));
    std::vector<StepRunner::Part> parts;
    for (size_t i = 0; i < reqs.size(); ++i) parts.push_back({reqs[i], next[i]});
    timed.reset();
    const auto t0 = std::chrono::steady_clock::now();
    runner.step(parts, LogitsMode::kLastPerSeq);
    r.decode_seconds += seconds_since(t0);
    r.decode_attention_seconds += timed.seconds();
    r.decode_tokens += batch;
  }
  return r;
}

double rate(double tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; }

}  // namespace

json check_throughput(Session& s) {
  const ValidateOptions& o = s.opt;
  const bool step_timing = o.engine.device == "cpu";
  json out;
  out["output_len"] = o.output_len;
  out["batch_sizes"] = o.batch_sizes;
  out["context_lengths"] = o.context_lengths;
  out["method"] =
      "tokens/s from Engine::generate (prefill: all prompt tokens / prefill wall time; decode: "
      "generated tokens after the first / decode wall time)";
  out["attention_share_method"] =
      step_timing
          ? "CPU: wall time inside AttentionBackend::forward / wall time of LlamaModel::forward, "
            "for one request's prefill and for decode steps at the cell's batch size and context"
          : "GPU: a second Engine::generate of the cell's requests (up to 8 new tokens each) with "
            "each layer's attention work (8-bit page sealing, KV write, attention kernels) "
            "bracketed by CUDA events; GPU time of those spans / wall time of the prefill and "
            "of the decode phase (decode steps eager, without CUDA graphs)";
  out["cells"] = json::array();
  const size_t cells = o.batch_sizes.size() * o.context_lengths.size() * 2;
  Progress progress("throughput", cells);
  int backend_index = 0;
  for (Engine* e : {s.base.get(), s.cand.get()}) {
    const std::string role = backend_index++ == 0 ? "baseline" : "candidate";
    const int vocab = e->config().vocab_size;
    std::mt19937_64 rng(o.seed);
    {
      // Warm-up: page in the weights and let the thread pool start before anything is timed.
      GenerationRequest w;
      w.prompt = random_ids(rng, std::min<int>(16, static_cast<int>(s.context) - 4), vocab);
      w.sampling.temperature = 0;
      w.sampling.max_tokens = 2;
      w.sampling.ignore_eos = true;
      e->generate({w});
    }
    for (int batch : o.batch_sizes) {
      for (int ctx : o.context_lengths) {
        const int prompt_len = static_cast<int>(std::min<int64_t>(ctx, s.context - o.output_len));
        std::vector<GenerationRequest> reqs(static_cast<size_t>(batch));
        for (GenerationRequest& r : reqs) {
          r.prompt = random_ids(rng, prompt_len, vocab);
          r.sampling.temperature = 0;
          r.sampling.max_tokens = o.output_len;
          r.sampling.ignore_eos = true;
        }
        GenerationStats st;
        const std::vector<GenerationResult> res = e->generate(reqs, {}, &st);
        int64_t generated = 0;
        for (const GenerationResult& g : res) generated += static_cast<int64_t>(g.tokens.size());
        json cell = {{"role", role},
                     {"backend", std::string(e->attention().name())},
                     {"batch", batch},
                     {"context", ctx},
                     {"prompt_tokens", prompt_len},
                     {"generated_tokens", generated},
                     {"prefill_tokens", st.prefill_tokens},
                     {"prefill_seconds", st.prefill_seconds},
                     {"prefill_tokens_per_s", rate(st.prefill_tokens, st.prefill_seconds)},
                     {"decode_tokens", st.decode_tokens},
                     {"decode_seconds", st.decode_seconds},
                     {"decode_tokens_per_s", rate(st.decode_tokens, st.decode_seconds)}};
        if (step_timing) {
          const StepShare sh =
              measure_share(*e, reqs[0].prompt, batch, std::min(o.output_len, 8),
                            o.engine.page_size, o.engine.prefill_chunk, o.seed + 17);
          cell["attention_share_prefill"] = sh.prefill_attention_seconds / sh.prefill_seconds;
          cell["attention_share_decode"] = sh.decode_attention_seconds / sh.decode_seconds;
          cell["step"] = {{"prefill_tokens", sh.prefill_tokens},
                          {"prefill_seconds", sh.prefill_seconds},
                          {"prefill_attention_seconds", sh.prefill_attention_seconds},
                          {"decode_tokens", sh.decode_tokens},
                          {"decode_seconds", sh.decode_seconds},
                          {"decode_attention_seconds", sh.decode_attention_seconds}};
        } else if (const ScopedAttentionTiming timing(*e); timing.on()) {
          // A second run of the same requests with the attention work bracketed by CUDA events
          // (its decode steps run without graphs, so its tokens/s are not the cell's).
          for (GenerationRequest& r : reqs) r.sampling.max_tokens = std::min(o.output_len, 8);
          GenerationStats ts;
          e->generate(reqs, {}, &ts);
          cell["attention_share_prefill"] = ts.prefill_attention_seconds / ts.prefill_seconds;
          cell["attention_share_decode"] = ts.decode_attention_seconds / ts.decode_seconds;
          cell["step"] = {{"prefill_tokens", ts.prefill_tokens},
                          {"prefill_seconds", ts.prefill_seconds},
                          {"prefill_attention_seconds", ts.prefill_attention_seconds},
                          {"decode_tokens", ts.decode_tokens},
                          {"decode_seconds", ts.decode_seconds},
                          {"decode_attention_seconds", ts.decode_attention_seconds}};
        } else {
          cell["attention_share_prefill"] = nullptr;
          cell["attention_share_decode"] = nullptr;
        }
        out["cells"].push_back(cell);
        progress.advance();
      }
    }
  }
  progress.finish();
  if (o.engine.device == "cpu") {
    out["note"] =
        "CPU run: the sage_attn CPU twin emulates the 8-bit numerics in float32 (quantize, then "
        "dequantize), so its speed says nothing about the GPU kernels; compare backends on a GPU.";
  }
  return out;
}

}  // namespace sagellm::eval::validate
