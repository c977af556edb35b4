// The flags every model-running subcommand shares (SGLang/vLLM names where they exist).
#pragma once

#include <CLI/CLI.hpp>

#include "engine/engine.h"

namespace sagellm::cli {

inline void add_engine_flags(CLI::App& app, EngineOptions& o) {
  app.add_option("--model", o.model_dir,
                 "Model directory (config.json, *.safetensors, tokenizer.json)")
      ->required();
  app.add_option("--attention-backend", o.attention_backend, "Attention backend: flash | sage_attn")
      ->capture_default_str();
  app.add_option("--sage-pv-dtype", o.attention_options.sage_pv_dtype,
                 "sage_attn precision of the P.V product: fp8 | int8 | fp16")
      ->capture_default_str();
  app.add_option(
         "--kv-cache-dtype", o.kv_cache_dtype,
         "KV cache storage: auto (int8 for sage_attn, exact otherwise) | bf16 | fp32 | int8")
      ->capture_default_str();
  app.add_option("--device", o.device, "Execution device: cpu | cuda")->capture_default_str();
  app.add_flag("--disable-cuda-graph", o.disable_cuda_graph,
               "GPU: launch decode steps directly instead of replaying CUDA graphs");
  app.add_option("--mem-fraction-static", o.mem_fraction_static,
                 "GPU: fraction of GPU memory for weights and the KV cache (the cache takes what "
                 "the weights leave)")
      ->capture_default_str();
  app.add_option("--load-format", o.load_format,
                 "auto (safetensors) | dummy (seeded random weights at the config's shapes)")
      ->capture_default_str();
  app.add_option("--context-length", o.context_length,
                 "Maximum tokens per sequence (default: the model's max_position_embeddings)");
  app.add_option("--page-size", o.page_size, "Tokens per KV cache page")->capture_default_str();
  app.add_option("--kv-cache-tokens", o.kv_cache_tokens,
                 "Tokens the KV cache holds (default CPU: max(context length, 8192) within 1 GiB; "
                 "GPU: what --mem-fraction-static leaves, at most 4M)");
  app.add_option("--tp-size", o.tp_size,
                 "Tensor-parallel ranks: GPUs 0..N-1 with --device cuda (through NCCL), threads "
                 "holding one shard each on the cpu")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--prefill-chunk", o.prefill_chunk, "Tokens per prefill step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
}

}  // namespace sagellm::cli
