// CUDA kernels of the Llama forward pass other than attention and GEMM, in bf16 with fp32 math.
// Each function checks its arguments on the host (sagellm::Error), launches on `stream` and checks
// the launch; none synchronizes, so all of them can be captured in a CUDA graph. Pointers are
// device pointers unless a comment says otherwise. Rows are dense ([rows][dim]) unless a row
// stride (in elements) is given.
//
// Numerics: inputs are read as bf16 (exact in fp32), every formula below is evaluated in fp32 and
// rounded to bf16 once, at the store (round to nearest even). The CPU twins in
// kernels/cpu/ops.h compute the same formulas in fp32 on the same (bf16-valued) inputs, so a
// kernel and its twin differ by the final bf16 rounding plus fp32 reordering error.
//
// Determinism: no atomics; a reduction's order depends only on the row length (and on whether
// the 16-byte vector path is taken, which needs dim % 8 == 0 and 16-byte aligned pointers), never
// on the number of rows, so a row's result does not depend on the rest of the batch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>

#include "kernels/cuda/sampling_select.h"

namespace sagellm::gpu {

using bf16 = __nv_bfloat16;

// ---- Embedding ----------------------------------------------------------------------------

// Throws sagellm::Error naming the first id outside [0, vocab). Host memory.
void validate_token_ids(std::span<const int32_t> ids, int vocab);

// out[t] = table[ids[t]] for t < num_ids; table is [vocab][dim], out is [num_ids][dim]. Ids must
// have been validated (validate_token_ids); an id outside [0, vocab) that slips through is never
// read out of bounds: its row is filled with NaN, so the mistake shows instead of passing silently.
void embedding(const bf16* table, int vocab, int dim, const int32_t* ids, int num_ids, bf16* out,
               cudaStream_t stream);

// The vocab-parallel embedding of one tensor-parallel rank: `table` holds the rows of ids
// [first_id, first_id + rows); out[t] is the row of ids[t] when this rank holds it, zeros when
// another rank does (the ranks' outputs are then summed).
void embedding_shard(const bf16* table, int first_id, int rows, int dim, const int32_t* ids,
                     int num_ids, bf16* out, cudaStream_t stream);

// ---- RMSNorm ------------------------------------------------------------------------------
// `weight` is read before the wait for the previous kernel of programmatic dependent launch
// (core/cuda_pdl.cuh): no kernel still running on the stream may write it (model weights).

// out[t][i] = bf16(w[i] * (x[t][i] * inv)), inv = 1 / sqrtf(sum_i x[t][i]^2 / dim + eps), all in
// fp32 (cpu::rmsnorm's formula). `out` may alias `x`.
void rmsnorm(const bf16* x, const bf16* weight, bf16* out, int rows, int dim, float eps,
             cudaStream_t stream);

// The pre-norm residual step of a decoder layer, fused:
//   residual[t][i] = bf16(residual[t][i] + x[t][i])          (fp32 add, one rounding)
//   out[t][i]      = bf16(w[i] * (residual[t][i] * inv))     (rmsnorm of the rounded residual)
// i.e. exactly cpu::rmsnorm applied to the bf16 residual stream after the add. Hugging Face in
// bf16 rounds twice (x * inv to bf16, then times w); one rounding is closer to the fp32 model.
// `out` may alias `x`, not `residual`.
void add_rmsnorm(bf16* residual, const bf16* x, const bf16* weight, bf16* out, int rows, int dim,
                 float eps, cudaStream_t stream);

// ---- RoPE ---------------------------------------------------------------------------------

// Rotates q and k in place (Hugging Face's rotate-half layout), as sagellm::Rope does: for each
// row t, head h and i < head_dim/2, with angle = fp32(inv_freq[i] * float(positions[t])),
// c = cosf(angle), s = sinf(angle) (precise library functions, not the fast intrinsics):
//   x1 = v[i], x2 = v[i + head_dim/2]
//   v[i] = bf16(x1*c - x2*s),  v[i + head_dim/2] = bf16(x2*c + x1*s)     (fp32, unfused)
// q is [rows][q_heads][head_dim] with row stride q_row_stride (so q and k may be views into one
// fused QKV row); likewise k. Either may be absent (0 heads).
struct RopeParams {
  bf16* q = nullptr;
  int q_heads = 0;
  int64_t q_row_stride = 0;  // elements; 0 means q_heads * head_dim
  bf16* k = nullptr;
  int k_heads = 0;
  int64_t k_row_stride = 0;  // elements; 0 means k_heads * head_dim
  int rows = 0;
  int head_dim = 0;                    // even, at most 1024
  const float* inv_freq = nullptr;     // [head_dim / 2], from rope_inv_freq()
  const int32_t* positions = nullptr;  // [rows]
};
void rope(const RopeParams& p, cudaStream_t stream);

// ---- SwiGLU -------------------------------------------------------------------------------

// out[t][i] = bf16(g / (1 + expf(-g)) * u) with g = gate_up[t][i], u = gate_up[t][inter + i]
// (rows of gate_up are [gate | up]); cpu::silu_mul's formula, one rounding.
void silu_mul(const bf16* gate_up, bf16* out, int rows, int inter, cudaStream_t stream);

// ---- KV cache -----------------------------------------------------------------------------

// Copies the K and V rows of new tokens into their cache slots. The cache of one layer is
// [num_pages][kv_heads][page_size][head_dim] (the per-layer block of the paged cache's
// [layer][page][kv_head][slot][dim] layout). Row t goes to page pages[t], slot slots[t]; a row
// whose page is negative is padding and is skipped (so a CUDA graph can be replayed with fewer
// live rows). Other out-of-range pages or slots are skipped too, never written out of bounds;
// validate them on the host (validate_kv_slots).
struct KVCacheWriteParams {
  const bf16* k = nullptr;   // [rows][kv_heads][head_dim], row stride k_row_stride
  int64_t k_row_stride = 0;  // elements; 0 means kv_heads * head_dim
  const bf16* v = nullptr;
  int64_t v_row_stride = 0;
  bf16* k_cache = nullptr;  // this layer's pages
  bf16* v_cache = nullptr;
  const int32_t* pages = nullptr;  // [rows]
  const int32_t* slots = nullptr;  // [rows]
  int rows = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int page_size = 0;
  int num_pages = 0;
};
void kv_cache_write(const KVCacheWriteParams& p, cudaStream_t stream);

// rope(rp) then kv_cache_write(kw) in one launch, with the same results: kw's K rows must be rp's
// k rows (same pointer, heads, head dim and row stride), so the rotated K is what is cached.
// Used by decode steps, where the launch, not the bytes, is the cost.
void rope_kv_write(const RopeParams& rp, const KVCacheWriteParams& kw, cudaStream_t stream);

// rope_kv_write's argument checks (sagellm::Error), filling in zero strides; false when there is
// nothing to do. Also used where RoPE and the cache write run in a GEMV's epilogue
// (Gemm::linear_rope_kv_write).
bool rope_kv_write_prepare(RopeParams& rp, KVCacheWriteParams& kw);

// Host-side check of a slot mapping: pages[t] in [0, num_pages) or -1 (padding), slots[t] in
// [0, page_size). Throws sagellm::Error naming the first bad row.
void validate_kv_slots(std::span<const int32_t> pages, std::span<const int32_t> slots,
                       int num_pages, int page_size);

// ---- Conversions --------------------------------------------------------------------------

// out[i] = float(in[i]) (exact); e.g. bf16 logits to fp32 for the sampler.
void bf16_to_f32(const bf16* in, float* out, int64_t n, cudaStream_t stream);

// out[i] = bf16(in[i]), round to nearest even (as float_to_bf16 in core/dtype.h; NaN stays NaN).
void f32_to_bf16(const float* in, bf16* out, int64_t n, cudaStream_t stream);

// ---- Greedy sampling ----------------------------------------------------------------------

// ids[t] = the index of the largest logit of row t; the lowest index wins ties; NaN and -inf
// are never chosen (as sagellm::argmax). A row with no other value gets id -1 (and value -inf).
// logits is [rows][vocab] with row stride row_stride (0 means vocab). values (optional, may be
// null) receives the winning logits.
void argmax_rows(const float* logits, int rows, int vocab, int64_t row_stride, int32_t* ids,
                 float* values, cudaStream_t stream);

// ---- Sampling -----------------------------------------------------------------------------

// ids[t] = the token the CPU sampler (sagellm::sample_with_uniform) draws from row t under
// params[t] (temperature, top-k, top-p, min-p and the uniform; sampling_select.h), or -1 when no
// logit of the row can be drawn (all -inf or NaN). Temperature-0 rows take the argmax (lowest id on
// ties). The token equals the CPU's except when the uniform lands within ~1e-12 of the total of a
// boundary between two tokens (sampling_select.h says why), and depends only on the row and its
// parameters: the same inputs give the same ids on every run, in any batch.
//
// Row t, column j is at logits + t * row_stride + (j / segment) * segment_stride + j % segment:
// segment 0 (or >= vocab) is the usual dense [rows][row_stride] layout; a smaller segment reads
// logits gathered from tensor-parallel ranks as [rank][rows][segment] (row_stride = segment,
// segment_stride = rows * segment) without copying them into rows first.
struct SampleRowsParams {
  const float* logits = nullptr;
  int rows = 0;
  int vocab = 0;               // in [1, 2^24]
  int64_t row_stride = 0;      // elements; 0 means vocab (dense) or segment
  int segment = 0;             // columns per segment; 0 means vocab
  int64_t segment_stride = 0;  // elements between segments; at least rows * row_stride
  const sampling::DrawParams* params = nullptr;  // [rows]
  int32_t* ids = nullptr;                        // [rows]
};
void sample_rows(const SampleRowsParams& p, cudaStream_t stream);

}  // namespace sagellm::gpu
