// The engine: a model, its tokenizer, an attention backend and a paged KV cache, with the two
// things every command needs: scoring token sequences (logits for every position) and batched
// generation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "engine/model_runner.h"
#include "engine/sampling.h"
#include "kv_cache/kv_cache.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace sagellm {

struct EngineOptions {
  std::filesystem::path model_dir;
  std::string device = "cpu";  // cpu | cuda
  std::string attention_backend = "flash";
  AttentionOptions attention_options;
  std::string kv_cache_dtype = "auto";  // auto | fp32 | bf16 | int8
  std::string load_format = "auto";     // auto | dummy (seeded random weights)
  int page_size = 64;
  int64_t kv_cache_tokens = 0;              // 0: max(context length, 8192) within the budget
  size_t kv_cache_bytes = size_t{1} << 30;  // CPU memory budget for the cache
  double mem_fraction_static = 0.85;        // GPU: fraction of memory for weights + KV cache
  bool disable_cuda_graph = false;          // GPU: launch decode steps directly, not from graphs
  int64_t context_length = 0;               // 0: the model's max_position_embeddings
  int prefill_chunk = 2048;                 // tokens per forward step when prefilling
  // The most requests one step holds (serve: --max-running-requests; bench: its largest batch).
  // A GPU 8-bit KV cache keeps a bf16 tail slot (8 MiB for Llama-3.1-8B) for each, out of the
  // memory the pages would otherwise take.
  int max_running_requests = 256;
  // Tensor-parallel ranks (parallel/tp_shard.h): GPUs 0..N-1 on cuda, threads on the cpu.
  int tp_size = 1;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (stop tokens excluded)
  std::string text;             // decoded, stop strings removed
  std::string finish_reason;    // "stop" or "length"
  int prompt_tokens = 0;
};

struct GenerationStats {
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prefill_tokens = 0, decode_tokens = 0;
  // Time of the attention work in those phases while Engine::set_attention_timing is on (see
  // ModelRunner::set_attention_timing for what each device counts).
  double prefill_attention_seconds = 0, decode_attention_seconds = 0;
};

// Called with (request index, newly emitted text, token id) as tokens are generated.
using TokenCallback = std::function<void(size_t, const std::string&, int32_t)>;

class Engine {
 public:
  explicit Engine(const EngineOptions& options);

  const io::ModelConfig& config() const { return runner_->config(); }
  const std::string& device() const { return options_.device; }
  // The CPU backend object (names and options are validated there on every device).
  const AttentionBackend& attention() const { return *attention_; }
  KVCacheDType kv_cache_dtype() const;
  // The CPU model and KV cache, for measurements that drive them directly; throw on the GPU.
  const LlamaModel& model() const;
  const PagedKVCache& cache() const;
  int64_t context_length() const { return context_length_; }
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  const Tokenizer& tokenizer() const;  // throws when the model directory has none

  // Logits for every position of `ids` ([T][vocab]), prefilled in chunks from an empty cache.
  std::vector<float> score(std::span<const int32_t> ids, const ActivationObserver& observer = {});

  std::vector<GenerationResult> generate(const std::vector<GenerationRequest>& requests,
                                         const TokenCallback& on_token = {},
                                         GenerationStats* stats = nullptr);

  // ---- Step API, for schedulers that drive the model one forward step at a time (serve) ----
  // KV pages: `page_size` tokens each, handed out by allocate_page() (nullopt when all are in
  // use) and named in AttentionSeq::pages. A page is owned by whoever allocated it until
  // release_page(); sharing one (prefix caching) is the caller's bookkeeping.
  int page_size() const;
  int num_pages() const;
  int num_free_pages() const;
  std::optional<int> allocate_page();
  void release_page(int page);
  // One forward step: writes the new tokens' K/V into their pages and returns logits
  // ([seqs][vocab] for LogitsMode::kLastPerSeq, [tokens][vocab] for kAll). Throws sagellm::Error
  // on a malformed batch without touching the cache.
  std::vector<float> forward(const ForwardBatch& batch, const ActivationObserver& observer = {});
  // The same step, returning for each logits row k the token draws[k] picks
  // (sample_with_uniform's definition; -1 where nothing can be drawn, which the caller turns into
  // fail_no_token's error) instead of the logits: on the GPU the draw runs on the device and only
  // the ids are copied back. For a Sampler's draw, pass draw_params(params, next_uniform()).
  std::vector<int32_t> forward_sample(const ForwardBatch& batch,
                                      std::span<const sampling::DrawParams> draws);
  // Token ids that end generation: the tokenizer's EOS ids and config.json's eos_token_id.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  EngineMemory memory() const;
  size_t cuda_graphs_captured() const { return runner_->cuda_graphs_captured(); }
  // Times the attention work of each step (ModelRunner::set_attention_timing; GPU decode steps run
  // without CUDA graphs while it is on). generate() reports the times in its stats;
  // take_attention_seconds() returns the total since the last call, for callers of forward().
  bool set_attention_timing(bool on) { return runner_->set_attention_timing(on); }
  double take_attention_seconds() { return runner_->take_attention_seconds(); }

 private:
  struct Slot {
    std::vector<int> pages;
    int kv_len = 0;
  };
  void reserve(Slot& slot, int64_t tokens);  // throws when the cache cannot hold them
  void release(Slot& slot);

  EngineOptions options_;
  std::unique_ptr<AttentionBackend> attention_;
  int64_t context_length_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int32_t> eos_ids_;
};

// Turns an engine's attention timing on for a scope and off again at its end, also when the scope
// is left by an exception; on() says whether the engine can time its attention.
class ScopedAttentionTiming {
 public:
  explicit ScopedAttentionTiming(Engine& e) : engine_(e), on_(e.set_attention_timing(true)) {}
  ~ScopedAttentionTiming() {
    if (on_) engine_.set_attention_timing(false);
  }
  ScopedAttentionTiming(const ScopedAttentionTiming&) = delete;
  ScopedAttentionTiming& operator=(const ScopedAttentionTiming&) = delete;
  bool on() const { return on_; }

 private:
  Engine& engine_;
  bool on_;
};

}  // namespace sagellm
