#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/logging.h"

namespace sagellm {

namespace {

std::unique_ptr<ModelRunner> make_runner(const EngineOptions& o, const AttentionBackend& backend,
                                         int64_t context_length) {
  SAGELLM_CHECK(o.page_size >= 1 && o.page_size <= 4096,
                "--page-size must be in [1, 4096] (got {})", o.page_size);
  if (o.device == "cpu") return make_cpu_runner(o, backend, context_length);
  if (o.device == "cuda") {
#if defined(SAGELLM_HAVE_CUDA)
    return make_cuda_runner(o, context_length);
#else
    fail("--device cuda: this build of sagellm has no CUDA support (build it where nvcc is found)");
#endif
  }
  fail("unknown --device '{}' (choose one of: cpu, cuda)", o.device);
}

int64_t resolve_context_length(const EngineOptions& o, const io::ModelConfig& c) {
  SAGELLM_CHECK(o.context_length >= 0, "--context-length must be positive (got {})",
                o.context_length);
  return o.context_length > 0 ? std::min<int64_t>(o.context_length, c.max_position_embeddings)
                              : c.max_position_embeddings;
}

// The rows of logits a forward step returns.
size_t logits_rows(const ForwardBatch& batch) {
  return batch.logits_mode == LogitsMode::kAll ? batch.tokens.size() : batch.attention.seqs.size();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Engine::Engine(const EngineOptions& options)
    : options_(options),
      attention_(make_attention_backend(options.attention_backend, options.attention_options)),
      context_length_(resolve_context_length(options, io::load_model_config(options.model_dir))),
      runner_(make_runner(options, *attention_, context_length_)) {
  if (std::filesystem::exists(options.model_dir / "tokenizer.json")) {
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_model_dir(options.model_dir));
  }
  if (tokenizer_) eos_ids_ = tokenizer_->eos_ids();
  for (int id : runner_->config().eos_token_ids) {
    if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) eos_ids_.push_back(id);
  }
  spdlog::info("engine: {} layers on {}{}, attention {}, KV cache {} pages x {} tokens ({})",
               runner_->config().num_layers, options.device,
               options.tp_size > 1
                   ? fmt::format(" (tensor-parallel over {} ranks)", options.tp_size)
                   : std::string(),
               attention_->name(), runner_->num_pages(), runner_->page_size(),
               kv_cache_dtype_name(runner_->kv_cache_dtype()));
}

const LlamaModel& Engine::model() const {
  const LlamaModel* m = runner_->cpu_model();
  SAGELLM_CHECK(m != nullptr,
                "this measurement drives the CPU model directly; run it with "
                "--device cpu");
  return *m;
}

const PagedKVCache& Engine::cache() const {
  const PagedKVCache* c = runner_->cpu_cache();
  SAGELLM_CHECK(c != nullptr,
                "this measurement drives the CPU KV cache directly; run it with "
                "--device cpu");
  return *c;
}

const Tokenizer& Engine::tokenizer() const {
  SAGELLM_CHECK(tokenizer_ != nullptr, "{} has no tokenizer.json", options_.model_dir.string());
  return *tokenizer_;
}

int Engine::page_size() const { return runner_->page_size(); }
int Engine::num_pages() const { return runner_->num_pages(); }
int Engine::num_free_pages() const { return runner_->num_free_pages(); }
std::optional<int> Engine::allocate_page() { return runner_->allocate_page(); }
void Engine::release_page(int page) { runner_->release_page(page); }
EngineMemory Engine::memory() const { return runner_->memory(); }
KVCacheDType Engine::kv_cache_dtype() const { return runner_->kv_cache_dtype(); }

std::vector<float> Engine::forward(const ForwardBatch& batch, const ActivationObserver& observer) {
  return runner_->forward(batch, observer);
}

std::vector<int32_t> Engine::forward_sample(const ForwardBatch& batch,
                                            std::span<const sampling::DrawParams> draws) {
  return runner_->forward_sample(batch, draws);
}

std::vector<int32_t> ModelRunner::forward_sample(const ForwardBatch& batch,
                                                 std::span<const sampling::DrawParams> draws) {
  const size_t rows = logits_rows(batch);
  SAGELLM_CHECK(draws.size() == rows, "forward_sample: {} draws for {} logits rows", draws.size(),
                rows);
  const std::vector<float> logits = forward(batch, {});
  const auto vocab = static_cast<size_t>(config().vocab_size);
  SAGELLM_CHECK(logits.size() == rows * vocab, "forward_sample: {} logits for {} rows of {}",
                logits.size(), rows, vocab);
  std::vector<int32_t> ids(rows);
  SamplingScratch scratch;
  for (size_t k = 0; k < rows; ++k) {
    ids[k] = sample_with_uniform(std::span<const float>(logits.data() + k * vocab, vocab), draws[k],
                                 scratch);
  }
  return ids;
}

void Engine::reserve(Slot& slot, int64_t tokens) {
  const int page = runner_->page_size();
  const int64_t need = (tokens + page - 1) / page;
  while (static_cast<int64_t>(slot.pages.size()) < need) {
    std::optional<int> p = runner_->allocate_page();
    if (!p) {
      fail("the KV cache is full: it holds {} tokens in {} pages (raise --kv-cache-tokens)",
           static_cast<int64_t>(runner_->num_pages()) * page, runner_->num_pages());
    }
    slot.pages.push_back(*p);
  }
}

void Engine::release(Slot& slot) {
  for (int p : slot.pages) runner_->release_page(p);
  slot.pages.clear();
  slot.kv_len = 0;
}

std::vector<float> Engine::score(std::span<const int32_t> ids, const ActivationObserver& observer) {
  const int64_t n = static_cast<int64_t>(ids.size());
  SAGELLM_CHECK(n > 0, "nothing to score: the token sequence is empty");
  SAGELLM_CHECK(n <= context_length_, "the sequence has {} tokens, more than the context length {}",
                n, context_length_);
  const int vocab = runner_->config().vocab_size;
  Slot slot;
  std::vector<float> logits;
  try {
    reserve(slot, n);
    logits.reserve(static_cast<size_t>(n) * vocab);
    for (int64_t start = 0; start < n; start += options_.prefill_chunk) {
      const int len = static_cast<int>(std::min<int64_t>(options_.prefill_chunk, n - start));
      ForwardBatch b;
      b.tokens.assign(ids.begin() + start, ids.begin() + start + len);
      b.logits_mode = LogitsMode::kAll;
      slot.kv_len += len;
      b.attention.seqs.push_back(AttentionSeq{0, len, slot.kv_len, slot.pages});
      std::vector<float> part = forward(b, observer);
      logits.insert(logits.end(), part.begin(), part.end());
    }
  } catch (...) {
    release(slot);
    throw;
  }
  release(slot);
  return logits;
}

std::vector<GenerationResult> Engine::generate(const std::vector<GenerationRequest>& requests,
                                               const TokenCallback& on_token,
                                               GenerationStats* stats) {
  const size_t n = requests.size();
  const int vocab = runner_->config().vocab_size;
  for (const GenerationRequest& r : requests) {
    r.sampling.validate();
    SAGELLM_CHECK(!r.prompt.empty(), "the prompt is empty");
    SAGELLM_CHECK(static_cast<int64_t>(r.prompt.size()) <= context_length_,
                  "the prompt has {} tokens, more than the context length {}", r.prompt.size(),
                  context_length_);
  }
  const std::vector<int32_t>& eos = eos_ids_;

  std::vector<Slot> slots(n);
  std::vector<GenerationResult> results(n);
  std::vector<Sampler> samplers;
  std::vector<StopStringMatcher> matchers;
  std::vector<std::unique_ptr<IncrementalDecoder>> decoders(n);
  std::vector<bool> done(n, false);
  std::vector<int32_t> next(n, -1);
  for (size_t i = 0; i < n; ++i) {
    samplers.emplace_back(requests[i].sampling);
    matchers.emplace_back(requests[i].sampling.stop);
    if (tokenizer_) decoders[i] = std::make_unique<IncrementalDecoder>(*tokenizer_);
    results[i].prompt_tokens = static_cast<int>(requests[i].prompt.size());
  }

  auto finish = [&](size_t i, const char* reason) {
    done[i] = true;
    results[i].finish_reason = reason;
    std::string tail = decoders[i] ? decoders[i]->flush() : std::string();
    std::string text = matchers[i].stopped() ? std::string() : matchers[i].feed(tail);
    if (!matchers[i].stopped()) text += matchers[i].flush();
    results[i].text += text;
    if (on_token && !text.empty()) on_token(i, text, -1);
    release(slots[i]);
  };
  // Takes the sampled token of request i; returns false when the request has finished.
  auto accept = [&](size_t i, int32_t tok) {
    const SamplingParams& sp = requests[i].sampling;
    const bool is_eos = !sp.ignore_eos && std::find(eos.begin(), eos.end(), tok) != eos.end();
    const bool is_stop_id = std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), tok) !=
                            sp.stop_token_ids.end();
    if (is_eos || is_stop_id) {
      finish(i, "stop");
      return false;
    }
    results[i].tokens.push_back(tok);
    std::string piece = decoders[i] ? decoders[i]->push(tok) : std::string();
    std::string emit = matchers[i].feed(piece);
    results[i].text += emit;
    if (on_token) on_token(i, emit, tok);
    if (matchers[i].stopped()) {
      finish(i, "stop");
      return false;
    }
    if (static_cast<int>(results[i].tokens.size()) >= sp.max_tokens ||
        slots[i].kv_len + 1 >= context_length_) {
      finish(i, "length");
      return false;
    }
    next[i] = tok;
    return true;
  };

  try {
    // Prefill each request in chunks, then sample its first token.
    (void)runner_->take_attention_seconds();  // time left over from earlier calls
    const auto t_prefill = std::chrono::steady_clock::now();
    for (size_t i = 0; i < n; ++i) {
      const std::vector<int32_t>& p = requests[i].prompt;
      if (requests[i].sampling.max_tokens == 0 ||
          static_cast<int64_t>(p.size()) >= context_length_) {
        results[i].finish_reason = "length";
        done[i] = true;
        continue;
      }
      const int64_t total = std::min<int64_t>(
          context_length_, static_cast<int64_t>(p.size()) + requests[i].sampling.max_tokens);
      reserve(slots[i], total);
      int32_t first = -1;
      for (size_t start = 0; start < p.size();
           start += static_cast<size_t>(options_.prefill_chunk)) {
        const int len = static_cast<int>(
            std::min<size_t>(static_cast<size_t>(options_.prefill_chunk), p.size() - start));
        ForwardBatch b;
        b.tokens.assign(p.begin() + static_cast<std::ptrdiff_t>(start),
                        p.begin() + static_cast<std::ptrdiff_t>(start) + len);
        slots[i].kv_len += len;
        b.attention.seqs.push_back(AttentionSeq{0, len, slots[i].kv_len, slots[i].pages});
        // Only the last chunk's token is drawn (earlier chunks take the greedy default, unused).
        sampling::DrawParams d;
        if (start + static_cast<size_t>(len) == p.size()) {
          d = draw_params(samplers[i].params(), samplers[i].next_uniform());
        }
        first = forward_sample(b, std::span<const sampling::DrawParams>(&d, 1)).at(0);
      }
      if (stats) stats->prefill_tokens += static_cast<int64_t>(p.size());
      if (first < 0) fail_no_token(samplers[i].params().temperature, static_cast<size_t>(vocab));
      accept(i, first);
    }
    if (stats) {
      stats->prefill_seconds += seconds_since(t_prefill);
      stats->prefill_attention_seconds += runner_->take_attention_seconds();
    }

    // Decode: every running request advances by one token per step.
    const auto t_decode = std::chrono::steady_clock::now();
    while (true) {
      ForwardBatch b;
      std::vector<size_t> members;
      for (size_t i = 0; i < n; ++i) {
        if (done[i]) continue;
        slots[i].kv_len += 1;
        b.attention.seqs.push_back(
            AttentionSeq{static_cast<int>(members.size()), 1, slots[i].kv_len, slots[i].pages});
        b.tokens.push_back(next[i]);
        members.push_back(i);
      }
      if (members.empty()) break;
      std::vector<sampling::DrawParams> draws;
      draws.reserve(members.size());
      for (size_t i : members) {
        draws.push_back(draw_params(samplers[i].params(), samplers[i].next_uniform()));
      }
      const std::vector<int32_t> ids = forward_sample(b, draws);
      if (stats) stats->decode_tokens += static_cast<int64_t>(members.size());
      for (size_t k = 0; k < members.size(); ++k) {
        const Sampler& sampler = samplers[members[k]];
        if (ids[k] < 0) fail_no_token(sampler.params().temperature, static_cast<size_t>(vocab));
        accept(members[k], ids[k]);
      }
    }
    if (stats) {
      stats->decode_seconds += seconds_since(t_decode);
      stats->decode_attention_seconds += runner_->take_attention_seconds();
    }
  } catch (...) {
    for (Slot& s : slots) release(s);
    throw;
  }
  return results;
}

}  // namespace sagellm
