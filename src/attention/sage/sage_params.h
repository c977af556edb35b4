// Flat parameters of the `sage_attn` CUDA kernels, the GPU layout of an 8-bit KV page, and the
// per-request policy that both the host planner and the kernels evaluate. Numerics: the CPU twin's
// specification in sage_numerics.h and kv_cache/page_quant.h; the GPU follows it step by step.
// Plain C++: this header is also read by code compiled without nvcc.
//
// The 8-bit page block: one page of kSagePageSize tokens of one KV head, head dims padded to
// Dp = 64 or 128 (padding columns hold code 0, mean 0 and scale 0):
//   [0, 64 Dp)          K codes, int8 [slot][Dp]                         (ldmatrix rows = keys)
//   [64 Dp, 128 Dp)     V codes, FP8 e4m3 or INT8, transposed [Dp][position]  (rows = dims)
//   [128 Dp, 132 Dp)    k_mean, fp32 [Dp]
//   [132 Dp, 134 Dp)    v_scale, bf16 [Dp]
//   [134 Dp, 134 Dp+16) k_scale, fp32, then 12 bytes of padding
//   up to a multiple of 64 bytes (48 more at Dp = 64 and 128): a head's block then starts on a
//   64-byte boundary, and the split-KV kernel reads the blocks of odd KV heads 1.05x faster than
//   with 16-byte alignment (B=32 x 32K decode on an H200: 0.575 against 0.604 ms; 32-byte
//   alignment 0.581, 128-byte 0.575).
// The V scales are bf16 values (page_quant.h rounds them before quantizing), which costs nothing
// measurable and saves 2 bytes per channel and page: 269 instead of 273 bytes per token and
// KV head at Dp = 128, 1.90x fewer than bf16 K and V. A bf16 mean would save as much again but
// costs ~1% of mean KLD (its rounding error is a per-page offset that multiplies Q's INT8 error),
// so the mean stays fp32. An fp16 mean was tried too: its rounding residual (up to 2^-12 of the
// mean, the same in every token of the page) stays in K' and sets the page's scale wherever a
// channel varies less than that within the page, coarsening every channel's codes; on stories260K
// the tensor-parallel logits then moved by 5x sage_attn's own error against flash.
// V is stored transposed because the FP8 tensor-core product takes its B operand as 4 consecutive
// keys of one dim per register, and ldmatrix cannot transpose 8-bit elements. Within every 16
// positions the keys are permuted (sage_v_key_of_position) so that the accumulator fragment of
// the first product (keys 2t, 2t+1 of each 8-key tile per thread) is, rounded to FP8, the A
// fragment of the second without any shuffle (see sage_mma.cuh).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SAGELLM_SAGE_HD __host__ __device__
#else
#define SAGELLM_SAGE_HD
#endif

namespace sagellm::sage_cuda {

// Tokens per KV page; the kernels' key tile is one page, so that the running max, the K scale,
// the K mean and the V scales all change exactly at tile boundaries, as the specification says.
inline constexpr int kSagePageSize = 64;
// Query rows per CTA of the prefill kernel (8 warps x 16 rows).
inline constexpr int kSagePrefillBlockM = 128;
// Rows of one Q scale block: one (a scale per new token and head, sage_numerics.h).
inline constexpr int kSageQBlockRows = 1;
// Requests with q_len * group up to this many rows run on the split-KV (decode) kernel.
inline constexpr int kSageDecodeMaxRows = 64;
// Packed rows per CTA (one warp) of the split-KV kernel: the N of its transposed products.
inline constexpr int kSageDecodeBlockM = 8;
// Split-KV granularity: about this many pages per split, at most kSageMaxSplits splits; a short
// context is cut into up to kSageMinSplits splits of one page or more, so that one request's few
// KV heads still spread over the GPU (batch 1, 1K keys, 8 KV heads: 128 one-warp CTAs, not 8).
inline constexpr int kSageSplitPages = 4;
inline constexpr int kSageMaxSplits = 64;
inline constexpr int kSageMinSplits = 16;
inline constexpr int kSageMaxHeadDim = 128;

SAGELLM_SAGE_HD inline constexpr int sage_ceil_div(int a, int b) { return (a + b - 1) / b; }

// The operands of the P.V product (sage_numerics.h step 5): FP8 P and V; UINT8 P against each
// page's own row max and INT8 V; FP16 P and V (the FP8 V codes converted exactly).
enum class SagePv : int { kFp8 = 0, kInt8 = 1, kFp16 = 2 };

// Bytes of one 8-bit page block for padded head dim dp (a multiple of 16).
SAGELLM_SAGE_HD inline constexpr int64_t sage_page_block_bytes(int dp) {
  return (int64_t{2} * kSagePageSize * dp + int64_t{6} * dp + 16 + 63) / 64 * 64;
}
SAGELLM_SAGE_HD inline constexpr int64_t sage_k_codes_offset(int /*dp*/) { return 0; }
SAGELLM_SAGE_HD inline constexpr int64_t sage_v_codes_offset(int dp) {
  return int64_t{kSagePageSize} * dp;
}
SAGELLM_SAGE_HD inline constexpr int64_t sage_k_mean_offset(int dp) {
  return int64_t{2} * kSagePageSize * dp;
}
SAGELLM_SAGE_HD inline constexpr int64_t sage_v_scale_offset(int dp) {
  return sage_k_mean_offset(dp) + int64_t{4} * dp;
}
SAGELLM_SAGE_HD inline constexpr int64_t sage_k_scale_offset(int dp) {
  return sage_v_scale_offset(dp) + int64_t{2} * dp;
}

// Key stored at V position `pos` (and its inverse). Within each 16 positions, position 4t + i
// holds key 8 * (i / 2) + 2t + i % 2: the four keys thread t of a quad owns in two adjacent 8-key
// accumulator tiles.
SAGELLM_SAGE_HD inline constexpr int sage_v_key_of_position(int pos) {
  const int p = pos & 15, t = p >> 2, i = p & 3;
  return (pos & ~15) + (i >> 1) * 8 + 2 * t + (i & 1);
}
SAGELLM_SAGE_HD inline constexpr int sage_v_position_of_key(int key) {
  const int k = key & 15, hi = k >> 3, r = k & 7;
  return (key & ~15) + (r >> 1) * 4 + hi * 2 + (r & 1);
}

// The kernel a request runs on depends only on its own q_len and the GQA group, never on the
// rest of the batch, so a request's output does not depend on the batch.
SAGELLM_SAGE_HD inline constexpr bool sage_uses_split_kernel(int q_len, int group) {
  return q_len > 0 && q_len * group <= kSageDecodeMaxRows;
}

// Pages per split, a function of kv_len alone (so are the partial results and their combine).
SAGELLM_SAGE_HD inline constexpr int sage_pages_per_split(int kv_len) {
  const int pages = sage_ceil_div(kv_len, kSagePageSize);
  if (pages <= 0) return 1;
  int want = sage_ceil_div(pages, kSageSplitPages);
  const int short_want = pages < kSageMinSplits ? pages : kSageMinSplits;
  if (want < short_want) want = short_want;
  if (want > kSageMaxSplits) want = kSageMaxSplits;
  if (want < 1) want = 1;
  return sage_ceil_div(pages, want);
}

SAGELLM_SAGE_HD inline constexpr int sage_num_splits(int kv_len) {
  const int pages = sage_ceil_div(kv_len, kSagePageSize);
  if (pages <= 0) return 1;
  return sage_ceil_div(pages, sage_pages_per_split(kv_len));
}

// Entries of the attention kernels' block table: a page of the 8-bit pool (>= 0) or a slot of the
// per-call scratch of pages quantized on the fly (sage_scratch_ref(slot) < 0).
SAGELLM_SAGE_HD inline constexpr int32_t sage_scratch_ref(int32_t slot) { return -slot - 1; }

struct SageParams {
  const void* q = nullptr;  // bf16 rows [row][num_heads][head_dim] (strides in elements)
  int64_t q_row_stride = 0;
  int64_t q_head_stride = 0;
  void* o = nullptr;  // bf16
  int64_t o_row_stride = 0;
  int64_t o_head_stride = 0;

  // Quantized Q (written by the Q kernel, read by the attention kernels): row r - cu_seqlens_q[0]
  // of q8 is [num_heads][head_dim_padded] int8; q_scale [row][num_heads] fp32 (the row's scale).
  int8_t* q8 = nullptr;
  float* q_scale = nullptr;

  // Sealed pages: blocks of sage_page_block_bytes(head_dim_padded) at page * page8_stride +
  // kv_head * head8_stride bytes. Scratch pages (quantized on the fly for this call) use the same
  // block layout at slot * scratch_page_stride + kv_head * scratch_head_stride.
  const uint8_t* pages8 = nullptr;
  int64_t page8_stride = 0;
  int64_t head8_stride = 0;
  const uint8_t* scratch8 = nullptr;
  int64_t scratch_page_stride = 0;
  int64_t scratch_head_stride = 0;
  // fp16 P.V only: V of scratch pages in fp16, unquantized, [Dp][slot] (natural key order) per
  // (slot, kv head), at slot * scratch_v16_page_stride + kv_head * scratch_v16_head_stride
  // elements. Null in fp8 mode.
  const uint16_t* scratch_v16 = nullptr;
  int64_t scratch_v16_page_stride = 0;
  int64_t scratch_v16_head_stride = 0;

  const int32_t* block_table = nullptr;  // [num_seqs][stride]: page (>= 0) or sage_scratch_ref
  int block_table_stride = 0;
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]
  const int32_t* kv_lens = nullptr;       // [num_seqs]
  int num_seqs = 0;

  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int head_dim_padded = 0;  // 64 or 128
  float q_factor = 0.0f;    // sm_scale * log2(e), rounded to fp32 (sage::q_factor)
  bool causal = true;
  SagePv pv = SagePv::kFp8;

  // Split-KV workspace (as in flash_params.h): request s owns slots split_offsets[s] +
  // (t * num_heads + head) * num_splits + split, each head_dim fp32 accumulators (in the P scale
  // of the mode) and (running max, sum).
  float* split_acc = nullptr;
  float* split_ml = nullptr;
  const int32_t* split_offsets = nullptr;
};

// One page (all KV heads) to quantize into the 8-bit block layout: its first n_old tokens are
// slots 0..n_old-1 of page src_page of the bf16 source pool, the next n_new tokens are rows
// first_new_row.. of the new K/V rows. Used to quantize pages on the fly (n_new = 0) and to seal
// pages of the 8-bit cache when they fill (old tokens from the bf16 tail, new ones from the step's
// K/V rows). A job with n_old + n_new == 0 does nothing.
struct SageQuantJob {
  int32_t src_page = -1;
  int32_t n_old = 0;
  int32_t first_new_row = 0;
  int32_t n_new = 0;
  int32_t dst = 0;  // page (or scratch slot) of the destination
};

struct SageQuantParams {
  const SageQuantJob* jobs = nullptr;
  int num_jobs = 0;  // grid size; jobs past *live_jobs (when not null) return at once
  const int32_t* live_jobs = nullptr;

  const void* k_src = nullptr;  // bf16 pool [page][kv_head][slot][head_dim]
  const void* v_src = nullptr;
  int64_t src_page_stride = 0;  // elements
  int64_t src_head_stride = 0;
  const void* k_new = nullptr;  // bf16 rows, kv head h at h * head_dim
  const void* v_new = nullptr;
  int64_t k_new_row_stride = 0;  // elements
  int64_t v_new_row_stride = 0;

  uint8_t* dst8 = nullptr;  // 8-bit blocks at dst * dst_page_stride + kv_head * dst_head_stride
  int64_t dst_page_stride = 0;
  int64_t dst_head_stride = 0;
  // When not null, V is also written unquantized as fp16 [Dp][slot] (fp16 P.V on scratch pages),
  // and the FP8 V codes and scales are not written.
  // V codes as INT8 (KVValueCodes::kInt8, for int8 P.V) instead of FP8 e4m3.
  bool v_int8 = false;
  uint16_t* dst_v16 = nullptr;
  int64_t dst_v16_page_stride = 0;  // elements
  int64_t dst_v16_head_stride = 0;

  int num_kv_heads = 0;
  int head_dim = 0;
  int head_dim_padded = 0;
};

}  // namespace sagellm::sage_cuda
