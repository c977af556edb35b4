#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/logging.h"

namespace sagellm {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

LlamaModel load_model(const EngineOptions& o) {
  SAGELLM_CHECK(o.device == "cpu", "--device {} is not available in this build (choose: cpu)",
                o.device);
  if (o.load_format == "dummy") {
    return LlamaModel::dummy(io::load_model_config(o.model_dir), /*seed=*/0);
  }
  SAGELLM_CHECK(o.load_format == "auto" || o.load_format == "safetensors",
                "unknown --load-format '{}' (choose one of: auto, safetensors, dummy)",
                o.load_format);
  return LlamaModel::load(o.model_dir);
}

KVCacheShape cache_shape(const EngineOptions& o, const io::ModelConfig& c, KVCacheDType dtype,
                         int64_t context_length) {
  SAGELLM_CHECK(o.page_size >= 1 && o.page_size <= 4096,
                "--page-size must be in [1, 4096] (got {})", o.page_size);
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_size = o.page_size;
  // The CPU cache keeps float storage for every page (plus the 8-bit copy in int8 mode).
  const double bytes_per_token = static_cast<double>(c.num_layers) * c.num_kv_heads * c.head_dim *
                                 2.0 * (dtype == KVCacheDType::kInt8 ? 5.0 : 4.0);
  int64_t tokens = o.kv_cache_tokens;
  if (tokens <= 0) {
    const auto fit = static_cast<int64_t>(static_cast<double>(o.kv_cache_bytes) / bytes_per_token);
    // Room for several full-length requests, within the memory budget.
    tokens = std::min<int64_t>(std::max<int64_t>(context_length, 8192), fit);
  }
  SAGELLM_CHECK(tokens >= 1, "the KV cache budget holds no token (raise --kv-cache-tokens)");
  s.num_pages = static_cast<int>((tokens + o.page_size - 1) / o.page_size);
  return s;
}

}  // namespace

KVCacheDType resolve_kv_cache_dtype(std::string_view name, const AttentionBackend& backend) {
  if (name == "auto") return backend.default_kv_cache_dtype();
  // On the CPU the exact cache is float32; "bf16" names the exact cache of the GPU path.
  if (name == "fp32" || name == "bf16") return KVCacheDType::kFloat;
  if (name == "int8") return KVCacheDType::kInt8;
  fail("unknown --kv-cache-dtype '{}' (choose one of: auto, bf16, fp32, int8)", name);
}

Engine::Engine(const EngineOptions& options)
    : options_(options),
      model_(load_model(options)),
      attention_(make_attention_backend(options.attention_backend, options.attention_options)),
      context_length_(
          options.context_length > 0
              ? std::min<int64_t>(options.context_length, model_.config().max_position_embeddings)
              : model_.config().max_position_embeddings),
      cache_(
          cache_shape(options, model_.config(),
                      resolve_kv_cache_dtype(options.kv_cache_dtype, *attention_), context_length_),
          resolve_kv_cache_dtype(options.kv_cache_dtype, *attention_)) {
  if (std::filesystem::exists(options.model_dir / "tokenizer.json")) {
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_model_dir(options.model_dir));
  }
  if (tokenizer_) eos_ids_ = tokenizer_->eos_ids();
  for (int id : model_.config().eos_token_ids) {
    if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) eos_ids_.push_back(id);
  }
  spdlog::info("engine: {} layers, attention {}, KV cache {} pages x {} tokens ({})",
               model_.config().num_layers, attention_->name(), cache_.shape().num_pages,
               cache_.shape().page_size, kv_cache_dtype_name(cache_.dtype()));
}

const Tokenizer& Engine::tokenizer() const {
  SAGELLM_CHECK(tokenizer_ != nullptr, "{} has no tokenizer.json", options_.model_dir.string());
  return *tokenizer_;
}

int Engine::page_size() const { return cache_.shape().page_size; }
int Engine::num_pages() const { return cache_.shape().num_pages; }
int Engine::num_free_pages() const { return cache_.num_free_pages(); }
std::optional<int> Engine::allocate_page() { return cache_.allocate(); }
void Engine::release_page(int page) { cache_.release(page); }

std::vector<float> Engine::forward(const ForwardBatch& batch, const ActivationObserver& observer) {
  return model_.forward(batch, cache_, *attention_, observer);
}

EngineMemory Engine::memory() const {
  EngineMemory m;
  m.device = options_.device;
  m.weight_bytes = model_.weight_bytes();
  m.kv_bytes_per_token = cache_.bytes_per_token();
  m.kv_capacity_tokens = static_cast<int64_t>(cache_.shape().num_pages) * cache_.shape().page_size;
  m.kv_pool_bytes = m.kv_bytes_per_token * static_cast<size_t>(m.kv_capacity_tokens);
  return m;
}

void Engine::reserve(Slot& slot, int64_t tokens) {
  const int page_size = cache_.shape().page_size;
  const int64_t need = (tokens + page_size - 1) / page_size;
  while (static_cast<int64_t>(slot.pages.size()) < need) {
    std::optional<int> p = cache_.allocate();
    if (!p) {
      fail("the KV cache is full: it holds {} tokens in {} pages (raise --kv-cache-tokens)",
           static_cast<int64_t>(cache_.shape().num_pages) * page_size, cache_.shape().num_pages);
    }
    slot.pages.push_back(*p);
  }
}

void Engine::release(Slot& slot) {
  for (int p : slot.pages) cache_.release(p);
  slot.pages.clear();
  slot.kv_len = 0;
}

std::vector<float> Engine::score(std::span<const int32_t> ids, const ActivationObserver& observer) {
  const int64_t n = static_cast<int64_t>(ids.size());
  SAGELLM_CHECK(n > 0, "nothing to score: the token sequence is empty");
  SAGELLM_CHECK(n <= context_length_, "the sequence has {} tokens, more than the context length {}",
                n, context_length_);
  const int vocab = model_.config().vocab_size;
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
  const int vocab = model_.config().vocab_size;
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
      std::vector<float> last;
      for (size_t start = 0; start < p.size();
           start += static_cast<size_t>(options_.prefill_chunk)) {
        const int len = static_cast<int>(
            std::min<size_t>(static_cast<size_t>(options_.prefill_chunk), p.size() - start));
        ForwardBatch b;
        b.tokens.assign(p.begin() + static_cast<std::ptrdiff_t>(start),
                        p.begin() + static_cast<std::ptrdiff_t>(start) + len);
        slots[i].kv_len += len;
        b.attention.seqs.push_back(AttentionSeq{0, len, slots[i].kv_len, slots[i].pages});
        last = forward(b);
      }
      if (stats) stats->prefill_tokens += static_cast<int64_t>(p.size());
      accept(i,
             samplers[i].sample(std::span<const float>(last.data(), static_cast<size_t>(vocab))));
    }
    if (stats) stats->prefill_seconds += seconds_since(t_prefill);

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
      std::vector<float> logits = forward(b);
      if (stats) stats->decode_tokens += static_cast<int64_t>(members.size());
      for (size_t k = 0; k < members.size(); ++k) {
        accept(members[k],
               samplers[members[k]].sample(std::span<const float>(
                   logits.data() + k * static_cast<size_t>(vocab), static_cast<size_t>(vocab))));
      }
    }
    if (stats) stats->decode_seconds += seconds_since(t_decode);
  } catch (...) {
    for (Slot& s : slots) release(s);
    throw;
  }
  return results;
}

}  // namespace sagellm
