// The Llama forward pass on the GPU: bf16 weights and activations, cuBLASLt GEMMs with fp32
// accumulation, the fused kernels of kernels/cuda/ops.h, attention through the backend's CUDA
// kernels, float32 logits out. It is the CPU forward pass (model/llama.cpp) step for step, with
// the same host-side bookkeeping (forward_rows.h); the two are kept as two short functions rather
// than one over an op interface because the GPU one must also work with fused ops (residual add
// folded into RMSNorm, RoPE in place on fused QKV rows, one stream) that the CPU one has no use
// for.
//
// Rounding: every activation tensor is bf16, rounded once where it is produced; the residual
// stream is added in fp32 and rounded once per add (add_rmsnorm), never through a bf16 GEMM
// epilogue (cuBLASLt rounds A·Wᵀ to bf16 before adding C).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/cuda_attention.h"
#include "core/device_buffer.h"
#include "io/model_config.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/sampling_select.h"
#include "kv_cache/kv_cache_cuda.h"
#include "model/llama.h"
#include "model/weight_source.h"
#include "parallel/tp_shard.h"

namespace sagellm {

class NcclGroup;

class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

class LlamaCudaModel {
 public:
  // Converts each tensor of `source` to bf16 and uploads it, one at a time. `max_rows`: the
  // activation buffers are allocated for this many tokens per step up front (they grow if a step
  // has more), so that the memory left for the KV cache is known after loading.
  LlamaCudaModel(const WeightSource& source, int max_rows);
  // One tensor-parallel rank's part of the model in `source` (tp_shard.h), on the current device.
  // Its steps meet the other ranks' in `group`'s collectives (one all-reduce after the embedding
  // and after each row-parallel GEMM, one all-gather of the logits); only rank 0 returns logits.
  // `group` may be null for an unsharded model; a group of one takes the same path as a sharded
  // rank (its collectives are copies).
  LlamaCudaModel(const WeightSource& source, int max_rows, const TpShard& shard, NcclGroup* group);
  ~LlamaCudaModel();
  LlamaCudaModel(const LlamaCudaModel&) = delete;
  LlamaCudaModel& operator=(const LlamaCudaModel&) = delete;

  // The rank's config (tp_shard_config): the whole model's unless sharded.
  const io::ModelConfig& config() const { return config_; }
  const TpShard& shard() const { return shard_; }
  AttentionShape attention_shape() const;
  size_t weight_bytes() const { return weight_bytes_; }
  cudaStream_t stream() const { return stream_.get(); }

  // As LlamaModel::forward: writes the new tokens' K/V into `cache` and returns float32 logits
  // ([seqs][vocab] for kLastPerSeq, [tokens][vocab] for kAll; none on ranks other than 0).
  // Synchronizes the stream.
  //
  // Decode steps (one new token per request, at most kMaxGraphBatch requests, no observer) are
  // replayed from a CUDA graph captured per (requests, block-table width, whether the step seals
  // a page of an 8-bit cache) the second time that key is seen (the first run warms cuBLASLt's
  // plan cache, which a capture must not fill). Graph replays and direct launches compute the
  // same bits.
  //
  // With an 8-bit cache (KVCacheDType::kInt8) each layer first seals the pages the step fills
  // (sage_quantize_pages_cuda, from the page's bf16 tail and the new K/V rows), then writes the
  // other new rows into the bf16 tail pool (kv_cache_step.h plans both).
  std::vector<float> forward(const ForwardBatch& batch, GpuKVCache& cache, CudaAttention& attention,
                             const ActivationObserver& observer = {});
  // The same step, but each logits row k is sampled on the device under draws[k]
  // (gpu::sample_rows: the CPU sampler's definition, -1 where nothing can be drawn) and only the
  // ids are copied back ([seqs] or [tokens] as forward's rows; none on ranks other than 0). Throws
  // before touching the cache when draws does not have one entry per logits row.
  std::vector<int32_t> forward_sample(const ForwardBatch& batch, GpuKVCache& cache,
                                      CudaAttention& attention,
                                      std::span<const sampling::DrawParams> draws);

  static constexpr int kMaxGraphBatch = 256;
  void set_cuda_graphs(bool on) { use_graphs_ = on; }
  size_t cuda_graphs_captured() const { return graphs_captured_; }

  // While on, each layer's attention work (8-bit page sealing, the KV write and the attention
  // kernels) is bracketed by CUDA events and its GPU time added up; steps run without graphs
  // (an event pair per layer cannot be read back from a replay). take_attention_seconds() returns
  // the total since the last call and clears it.
  void set_attention_timing(bool on) { time_attention_ = on; }
  double take_attention_seconds();

 private:
  struct Layer {
    DeviceBuffer<uint16_t> input_norm, qkv, o, post_norm, gate_up, down;  // bf16 bits
  };
  // forward and forward_sample: with `ids` null, logits rows go to `logits`; otherwise they are
  // sampled under `draws` into `ids`.
  void step(const ForwardBatch& batch, GpuKVCache& cache, CudaAttention& attention,
            const ActivationObserver& observer, std::vector<float>* logits,
            std::span<const sampling::DrawParams> draws, std::vector<int32_t>* ids);
  void ensure_rows(int rows);
  // Enqueues embedding .. lm_head for `rows` tokens whose metadata is in meta_; the first
  // min(n_out, kLogitsChunkRows) logits rows land in logits_. `seal_grid`: blocks of each layer's
  // seal kernel (0: no seal launch; jobs past the live count in meta_ return at once).
  void enqueue_step(GpuKVCache& cache, CudaAttention& attention, int rows, int n_out, int seal_grid,
                    const ActivationObserver& observer);
  // lm_head for `m` rows of normed hidden states into logits_ (and, sharded, every rank's slice
  // gathered into gathered_).
  void enqueue_lm_head(const void* normed, int m);
  // Copies `m` rows of logits, as enqueue_lm_head left them, to `out` ([m][vocab]).
  void download_logits(float* out, int m);
  // Samples `m` rows of logits, as enqueue_lm_head left them, under draw_params_[r0, r0 + m) into
  // draw_ids_[r0, r0 + m).
  void enqueue_sample(int r0, int m);
  // The sum over the ranks of a row-parallel product (nothing without a group).
  void all_reduce(DeviceBuffer<uint16_t>& buf, int rows);

  struct Graph {
    cudaGraphExec_t exec = nullptr;
    uint64_t model_epoch = 0, attention_epoch = 0;
  };
  void clear_graphs();

  io::ModelConfig config_;
  TpShard shard_;
  NcclGroup* group_ = nullptr;
  CudaStream stream_;
  gpu::Gemm gemm_;
  DeviceBuffer<uint16_t> embed_, final_norm_, lm_head_;  // lm_head_ empty when tied
  std::vector<Layer> layers_;
  DeviceBuffer<float> inv_freq_;
  size_t weight_bytes_ = 0;

  // Per-step buffers, sized for `rows_` tokens.
  int rows_ = 0;
  DeviceBuffer<uint16_t> resid_, delta_, xn_, qkv_, att_, gate_up_, act_, sel_;
  DeviceBuffer<float> logits_;                      // [chunk][shard vocab rows]
  DeviceBuffer<float> gathered_;                    // sharded: [ranks][chunk][shard vocab rows]
  DeviceBuffer<sampling::DrawParams> draw_params_;  // forward_sample: [logits rows]
  DeviceBuffer<int32_t> draw_ids_;                  // forward_sample: [logits rows]
  // ids, positions, pages, slots, logits rows, tail slots [rows each], the live seal-job count,
  // seal jobs [rows] (an 8-bit cache seals at most one page per new row).
  DeviceBuffer<int32_t> meta_;
  std::vector<int32_t> meta_host_;
  uint64_t epoch_ = 0;  // bumped when a buffer a graph points to is reallocated

  bool use_graphs_ = true;
  using GraphKey = std::tuple<int, int, bool>;  // (requests, block-table width, seals)
  std::map<GraphKey, Graph> graphs_;
  std::set<GraphKey> seen_;
  size_t graphs_captured_ = 0;

  bool time_attention_ = false;
  std::vector<cudaEvent_t> attention_events_;  // [layer][start, stop], created on first use
  double attention_seconds_ = 0;
};

}  // namespace sagellm
