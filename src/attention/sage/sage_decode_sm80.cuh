// sage_attn split-KV kernel for decode and short extends (q_len * group <= 64 rows), mma.sync
// (int8 and fp16 P.V on sm_80, fp8 P.V from sm_89 on). Numerics: sage_numerics.h, step by step;
// the splits' partial results are reduced by the shared fixed-order combine
// (attention/split_kv_combine.cuh).
//
// The products are transposed: keys and head dims are the M index of the m16n8 tensor-core
// products and the CTA's 8 packed query rows are N:
//   S^T  = K8 Q8^T     A = K codes (rows = keys, ldmatrix), B = Q codes (registers), exact int32
//   O^T += V^T P^T     A = V codes (stored transposed, rows = dims), B = P (registers)
// A decode step has q_len * group rows per KV head (4 for Llama's GQA). As N of an m16n8 product
// they fill half of it; as M of a 16-row query tile they would fill a quarter, and that tile costs
// twice the products, the softmax work and the accumulator registers per key.
// S^T's accumulators hold each thread's (key, query) pairs while P.V's B fragment wants 4 keys of
// one query per register: P moves between lanes with two shuffles and one byte permute per 16 keys
// (four shuffles in fp16 mode). q'.k_mean is a 128-term dot product per row and page: each lane
// multiplies its head dims for all 8 rows, and one shuffle tree sums the lanes.
//
// One warp per CTA over one split of one request's pages (grid = split x (m-block, KV head) x
// request); row r of the CTA is new token r / group of query head kv_head * group + r % group.
// Pages stream through a kStages-deep cp.async ring. One stage measured best: a CTA then needs
// 18 KB of shared memory and 8 share an SM (registers bind), whose other warps hide each one's
// page load, where two stages (the next page in flight while this one is multiplied) fit 6
// (B=32, GQA 32/8, 32K keys on an H200: 0.598 against 0.640 ms). A request with one split writes
// bf16 output directly; otherwise each split writes (unnormalized acc, max, sum).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/sage/sage_mma.cuh"
#include "attention/sage/sage_page_load_sm80.cuh"
#include "attention/sage/sage_params.h"

namespace sagellm::sage_cuda::sm80 {

using bf16 = __nv_bfloat16;

template <int kDp_, SagePv kPv_, int kStages_ = 1>
struct SageDecodeTraits {
  static constexpr int kDp = kDp_;
  static constexpr SagePv kPv = kPv_;
  static constexpr bool kPvFp8 = kPv == SagePv::kFp8;
  static constexpr bool kPvInt8 = kPv == SagePv::kInt8;
  static constexpr bool kPvFp16 = kPv == SagePv::kFp16;
  static constexpr int kThreads = 32;
  static constexpr int kRows = kSageDecodeBlockM;  // the N of one m16n8 product
  static constexpr int kStages = kStages_;
  static constexpr int kKSteps = kDp / 32;              // k32 steps of K8 Q8^T
  static constexpr int kKeyTiles = kSagePageSize / 16;  // 16-key M tiles of S^T
  static constexpr int kDimTiles = kDp / 16;            // 16-dim M tiles of O^T
  static constexpr int kLaneDims = kDp / 32;            // head dims per lane in q'.k_mean
  static constexpr int kKBytes = kSagePageSize * kDp;
  // fp16 mode keeps room for a page whose V is fp16 (a page quantized on the fly).
  static constexpr int kVBytes = (kPvFp16 ? 2 : 1) * kSagePageSize * kDp;
  static constexpr int kMetaBytes = 6 * kDp + 16;
  static constexpr int kStageBytes = kKBytes + kVBytes + kMetaBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kDp == 64 || kDp == 128, "native head dims");
  static_assert(kRows == 8, "one n8 column per packed row");
  static_assert(kStageBytes % 16 == 0, "16-byte chunks");
};

struct SageDecodeBlock {
  int seq, kv_head, group;
  int q_begin, q_len, kv_len, causal_offset;
  int row_base, rows;  // first packed row of the CTA; q_len * group
  int page_begin, page_end;
  int num_splits, split;
};

template <class T>
__device__ __forceinline__ bool sage_decode_block(const SageParams& p, SageDecodeBlock& b) {
  b.seq = blockIdx.z;
  b.q_begin = p.cu_seqlens_q[b.seq];
  b.q_len = p.cu_seqlens_q[b.seq + 1] - b.q_begin;
  b.group = p.num_heads / p.num_kv_heads;
  if (!sage_uses_split_kernel(b.q_len, b.group)) return false;
  b.rows = b.q_len * b.group;
  b.kv_head = blockIdx.y % p.num_kv_heads;
  b.row_base = blockIdx.y / p.num_kv_heads * T::kRows;
  if (b.row_base >= b.rows) return false;
  b.kv_len = p.kv_lens[b.seq];
  b.causal_offset = b.kv_len - b.q_len;
  b.num_splits = sage_num_splits(b.kv_len);
  b.split = blockIdx.x;
  if (b.split >= b.num_splits) return false;
  const int pps = sage_pages_per_split(b.kv_len);
  b.page_begin = b.split * pps;
  b.page_end = min(b.page_begin + pps, sage_ceil_div(b.kv_len, kSagePageSize));
  if (p.causal) {
    // The CTA's last row is its latest token; nothing past its limit is loaded.
    const int last_row = min(b.row_base + T::kRows, b.rows) - 1;
    const int key_end = b.causal_offset + last_row / b.group + 1;
    b.page_end = min(b.page_end, sage_ceil_div(key_end, kSagePageSize));
  }
  return true;
}

// (new token, query head) of the CTA's row n, or false for a padding row.
__device__ __forceinline__ bool decode_row(const SageDecodeBlock& b, int n, int& token, int& head) {
  const int pr = b.row_base + n;
  token = pr / b.group;
  head = b.kv_head * b.group + pr % b.group;
  return pr < b.rows;
}

// Sums v[n] (row n's partial sum of this lane) over the warp: returns row g's total (g = lane / 4)
// after 9 shuffles, each halving the rows a lane still carries. Fixed order: deterministic, and
// the lanes holding one row agree bit for bit (each addition is of the same two values).
__device__ __forceinline__ float warp_sum_rows8(const float (&v)[8], int lane) {
  const bool hi16 = (lane & 16) != 0, hi8 = (lane & 8) != 0, hi4 = (lane & 4) != 0;
  float w4[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float keep = hi16 ? v[i + 4] : v[i], send = hi16 ? v[i] : v[i + 4];
    w4[i] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
  }
  float w2[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float keep = hi8 ? w4[i + 2] : w4[i], send = hi8 ? w4[i] : w4[i + 2];
    w2[i] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
  }
  float w = (hi4 ? w2[1] : w2[0]) + __shfl_xor_sync(0xffffffffu, hi4 ? w2[0] : w2[1], 4);
  w += __shfl_xor_sync(0xffffffffu, w, 2);
  return w + __shfl_xor_sync(0xffffffffu, w, 1);
}

// The sum (or max) of x over the 8 lanes that share t = lane % 4, i.e. over a thread's keys g and
// g + 8 of every key tile.
__device__ __forceinline__ float key_lanes_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 4);
  x += __shfl_xor_sync(0xffffffffu, x, 8);
  return x + __shfl_xor_sync(0xffffffffu, x, 16);
}
__device__ __forceinline__ float key_lanes_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 8));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 16));
}

// What a warp keeps across pages. Thread (g, t) owns the rows (query columns) 2t and 2t + 1:
// m and l per row (l partial over the thread's keys, summed over the key lanes at the end), and
// acc[dt] = O^T's (dim 16 dt + g, rows 2t, 2t + 1) and (dim 16 dt + g + 8, same rows).
template <class T>
struct DecodeState {
  float m[2], l[2];
  float acc[T::kDimTiles][4];
  __device__ __forceinline__ void init() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
#pragma unroll
    for (int j = 0; j < T::kDimTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  }
};

// Per-CTA inputs of a page step that do not change across pages.
template <class T>
struct DecodeRows {
  uint32_t qb[T::kKSteps][2];        // B fragments of Q8^T: row g, dims 32 ks + 4t.., + 16
  float qp[T::kRows][T::kLaneDims];  // q' = q * q_factor of every row at the lane's head dims
  float qs[2];                       // Q scales of rows 2t, 2t + 1 (0 for padding rows)
  int lim[2];                        // their last visible keys
};

// One page (sage_numerics.h steps 3-5) for the warp.
template <class T>
__device__ __forceinline__ void decode_page_step(uint32_t stage, const unsigned char* stage_ptr,
                                                 bool v16_page, const DecodeRows<T>& r, int key0,
                                                 DecodeState<T>& w, int lane) {
  const int g = lane >> 2, t = lane & 3, mi = lane >> 3;
  const StageMeta meta = stage_meta<T>(stage_ptr);
  const float* mean = meta.mean;
  const bf16* vscale = meta.vscale;
  const float kscale = meta.kscale;

  // S^T = K8 Q8^T, exact int32: si[kt] = (key 16 kt + g, rows 2t, 2t+1), (key + 8, same rows).
  int si[T::kKeyTiles][4];
#pragma unroll
  for (int kt = 0; kt < T::kKeyTiles; ++kt) si[kt][0] = si[kt][1] = si[kt][2] = si[kt][3] = 0;
#pragma unroll
  for (int ks = 0; ks < T::kKSteps; ++ks) {
#pragma unroll
    for (int kt = 0; kt < T::kKeyTiles; ++kt) {
      uint32_t ka[4];
      ldmatrix_x4(ka, stage + swz<T::kDp>(16 * kt + (mi & 1) * 8 + (lane & 7), 2 * ks + (mi >> 1)));
      mma_s8_16832(si[kt], ka, r.qb[ks][0], r.qb[ks][1]);
    }
  }

  // q'.k_mean of every row: the lane's head dims, then the shuffle tree; rows 2t, 2t + 1 are the
  // totals of lanes 8t and 8t + 4.
  float qmv[T::kRows];
  {
    float mv[T::kLaneDims];
    if constexpr (T::kLaneDims == 4) {
      const float4 m4 = *reinterpret_cast<const float4*>(mean + 4 * lane);
      mv[0] = m4.x, mv[1] = m4.y, mv[2] = m4.z, mv[3] = m4.w;
    } else {
      const float2 m2 = *reinterpret_cast<const float2*>(mean + 2 * lane);
      mv[0] = m2.x, mv[1] = m2.y;
    }
#pragma unroll
    for (int n = 0; n < T::kRows; ++n) {
      float a = r.qp[n][0] * mv[0];
#pragma unroll
      for (int j = 1; j < T::kLaneDims; ++j) a = fmaf(r.qp[n][j], mv[j], a);
      qmv[n] = a;
    }
  }
  const float qm_g = warp_sum_rows8(qmv, lane);
  const float qm0 = __shfl_sync(0xffffffffu, qm_g, 8 * t);
  const float qm1 = __shfl_sync(0xffffffffu, qm_g, 8 * t + 4);

  // Scores with the bottom-right mask, then the page's running-max update.
  const float sc0 = r.qs[0] * kscale, sc1 = r.qs[1] * kscale;
  float s[T::kKeyTiles][4];
#pragma unroll
  for (int kt = 0; kt < T::kKeyTiles; ++kt) {
    const int key = key0 + 16 * kt + g;
    s[kt][0] = key > r.lim[0] ? -INFINITY : fmaf(static_cast<float>(si[kt][0]), sc0, qm0);
    s[kt][1] = key > r.lim[1] ? -INFINITY : fmaf(static_cast<float>(si[kt][1]), sc1, qm1);
    s[kt][2] = key + 8 > r.lim[0] ? -INFINITY : fmaf(static_cast<float>(si[kt][2]), sc0, qm0);
    s[kt][3] = key + 8 > r.lim[1] ? -INFINITY : fmaf(static_cast<float>(si[kt][3]), sc1, qm1);
  }
  float pm0 = -INFINITY, pm1 = -INFINITY;
#pragma unroll
  for (int kt = 0; kt < T::kKeyTiles; ++kt) {
    pm0 = fmaxf(pm0, fmaxf(s[kt][0], s[kt][2]));
    pm1 = fmaxf(pm1, fmaxf(s[kt][1], s[kt][3]));
  }
  pm0 = key_lanes_max(pm0);
  pm1 = key_lanes_max(pm1);
  const float mn0 = fmaxf(w.m[0], pm0), mn1 = fmaxf(w.m[1], pm1);
  const float ref0 = mn0 == -INFINITY ? 0.0f : mn0, ref1 = mn1 == -INFINITY ? 0.0f : mn1;
  const float alpha0 = fast_exp2(w.m[0] - ref0), alpha1 = fast_exp2(w.m[1] - ref1);
  w.m[0] = mn0;
  w.m[1] = mn1;
  // int8 P.V: P against the row's own page max, the page scaled by beta = exp2(pm - m_new).
  float e0 = ref0, e1 = ref1, beta0 = 1.0f, beta1 = 1.0f;
  if constexpr (T::kPvInt8) {
    e0 = pm0 == -INFINITY ? 0.0f : pm0;
    e1 = pm1 == -INFINITY ? 0.0f : pm1;
    beta0 = fast_exp2(pm0 - ref0);
    beta1 = fast_exp2(pm1 - ref1);
  }
#pragma unroll
  for (int kt = 0; kt < T::kKeyTiles; ++kt) {
    s[kt][0] = fast_exp2(s[kt][0] - e0);
    s[kt][1] = fast_exp2(s[kt][1] - e1);
    s[kt][2] = fast_exp2(s[kt][2] - e0);
    s[kt][3] = fast_exp2(s[kt][3] - e1);
  }

  // P in the P.V operand precision, moved into B fragments: thread (g, t) needs row g's P at the
  // keys 2t, 2t+1, 2t+8, 2t+9 of each 16-key tile (V positions 4t..4t+3, sage_params.h), held by
  // lanes (g' = 2t, t' = g / 2) and (g' = 2t + 1, t' = g / 2) as element g % 2 of their pair of
  // rows. The row sums add exactly the values that multiply V.
  const int src_a = 8 * t + (g >> 1), src_b = src_a + 4, odd = g & 1;
  float rs0 = 0.0f, rs1 = 0.0f;
  constexpr int kPRegs = T::kPvFp16 ? 2 : 1;
  uint32_t pb[T::kKeyTiles][kPRegs];
  if constexpr (T::kPvFp16) {
#pragma unroll
    for (int kt = 0; kt < T::kKeyTiles; ++kt) {
      // Per row: (key g, key g + 8).
      const uint32_t w0 = pack_f16x2(s[kt][0], s[kt][2]), w1 = pack_f16x2(s[kt][1], s[kt][3]);
      const float2 a = f16x2_to_float2(w0), c = f16x2_to_float2(w1);
      rs0 += a.x + a.y;
      rs1 += c.x + c.y;
      const uint32_t a0 = __shfl_sync(0xffffffffu, w0, src_a);
      const uint32_t a1 = __shfl_sync(0xffffffffu, w1, src_a);
      const uint32_t b0 = __shfl_sync(0xffffffffu, w0, src_b);
      const uint32_t b1 = __shfl_sync(0xffffffffu, w1, src_b);
      const uint32_t wa = odd ? a1 : a0, wb = odd ? b1 : b0;
      pb[kt][0] = __byte_perm(wa, wb, 0x5410u);  // keys 2t, 2t + 1
      pb[kt][1] = __byte_perm(wa, wb, 0x7632u);  // keys 2t + 8, 2t + 9
    }
  } else {
    const uint32_t sel = 0x6240u + 0x1111u * static_cast<uint32_t>(odd);
#pragma unroll
    for (int kt = 0; kt < T::kKeyTiles; ++kt) {
      // Bytes: (key g, row 2t), (key g, row 2t + 1), (key g + 8, row 2t), (key g + 8, row 2t + 1).
      uint32_t word;
      if constexpr (T::kPvInt8) {
        const float c0 = u8_code_float(s[kt][0]), c1 = u8_code_float(s[kt][1]);
        const float c2 = u8_code_float(s[kt][2]), c3 = u8_code_float(s[kt][3]);
        word = pack_u8x4(c0, c1, c2, c3);
        rs0 += (c0 - kU8Magic) + (c2 - kU8Magic);
        rs1 += (c1 - kU8Magic) + (c3 - kU8Magic);
      } else {
        const uint32_t lo = f32x2_to_e4m3x2(s[kt][0] * 448.0f, s[kt][1] * 448.0f);
        const uint32_t hi = f32x2_to_e4m3x2(s[kt][2] * 448.0f, s[kt][3] * 448.0f);
        word = lo | (hi << 16);
        const float2 a = f16x2_to_float2(e4m3x2_to_f16x2(lo));
        const float2 c = f16x2_to_float2(e4m3x2_to_f16x2(hi));
        rs0 += a.x + c.x;
        rs1 += a.y + c.y;
      }
      const uint32_t wa = __shfl_sync(0xffffffffu, word, src_a);
      const uint32_t wb = __shfl_sync(0xffffffffu, word, src_b);
      pb[kt][0] = __byte_perm(wa, wb, sel);
    }
  }
  if constexpr (T::kPvInt8) {
    w.l[0] = w.l[0] * alpha0 + rs0 * beta0;
    w.l[1] = w.l[1] * alpha1 + rs1 * beta1;
  } else {
    w.l[0] = w.l[0] * alpha0 + rs0;
    w.l[1] = w.l[1] * alpha1 + rs1;
  }

  // O^T += V^T P^T per 16-dim tile, folded into acc with the page's channel scales.
  const uint32_t sv = stage + T::kKBytes;
#pragma unroll
  for (int dt = 0; dt < T::kDimTiles; ++dt) {
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int vrow = 16 * dt + (mi & 1) * 8 + (lane & 7);
    if constexpr (T::kPvInt8) {
      int pi[4] = {0, 0, 0, 0};
#pragma unroll
      for (int kc = 0; kc < kSagePageSize / 32; ++kc) {
        uint32_t va[4];
        ldmatrix_x4(va, sv + swz<64>(vrow, 2 * kc + (mi >> 1)));
        mma_s8u8_16832(pi, va, pb[2 * kc][0], pb[2 * kc + 1][0]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) part[i] = static_cast<float>(pi[i]);
    } else if constexpr (T::kPvFp8) {
#pragma unroll
      for (int kc = 0; kc < kSagePageSize / 32; ++kc) {
        uint32_t va[4];
        ldmatrix_x4(va, sv + swz<64>(vrow, 2 * kc + (mi >> 1)));
        mma_e4m3_16832(part, va, pb[2 * kc][0], pb[2 * kc + 1][0]);
      }
    } else if (!v16_page) {
      // FP8 V codes widened exactly to fp16: positions 4t, 4t+1 are the k indices 2t, 2t+1 of an
      // m16n8k16 product and positions 4t+2, 4t+3 the k indices 2t+8, 2t+9.
#pragma unroll
      for (int kc = 0; kc < kSagePageSize / 32; ++kc) {
        uint32_t v[4];
        ldmatrix_x4(v, sv + swz<64>(vrow, 2 * kc + (mi >> 1)));
        const uint32_t lo[4] = {e4m3x2_to_f16x2(v[0]), e4m3x2_to_f16x2(v[1]),
                                e4m3x2_to_f16x2(v[0] >> 16), e4m3x2_to_f16x2(v[1] >> 16)};
        mma_f16_16816(part, lo, pb[2 * kc][0], pb[2 * kc][1]);
        const uint32_t hi[4] = {e4m3x2_to_f16x2(v[2]), e4m3x2_to_f16x2(v[3]),
                                e4m3x2_to_f16x2(v[2] >> 16), e4m3x2_to_f16x2(v[3] >> 16)};
        mma_f16_16816(part, hi, pb[2 * kc + 1][0], pb[2 * kc + 1][1]);
      }
    } else {
      // fp16 V in natural key order: the k index is the key.
#pragma unroll
      for (int kk = 0; kk < T::kKeyTiles; ++kk) {
        uint32_t va[4];
        ldmatrix_x4(va, sv + swz<128>(vrow, 2 * kk + (mi >> 1)));
        mma_f16_16816(part, va, pb[kk][0], pb[kk][1]);
      }
    }
    const int d = 16 * dt + g;
    float f0 = 1.0f, f1 = 1.0f;
    if (!T::kPvFp16 || !v16_page) {
      f0 = __bfloat162float(vscale[d]);
      f1 = __bfloat162float(vscale[d + 8]);
    }
    if constexpr (T::kPvInt8) {
      w.acc[dt][0] = fmaf(part[0], f0 * beta0, w.acc[dt][0] * alpha0);
      w.acc[dt][1] = fmaf(part[1], f0 * beta1, w.acc[dt][1] * alpha1);
      w.acc[dt][2] = fmaf(part[2], f1 * beta0, w.acc[dt][2] * alpha0);
      w.acc[dt][3] = fmaf(part[3], f1 * beta1, w.acc[dt][3] * alpha1);
    } else {
      w.acc[dt][0] = fmaf(part[0], f0, w.acc[dt][0] * alpha0);
      w.acc[dt][1] = fmaf(part[1], f0, w.acc[dt][1] * alpha1);
      w.acc[dt][2] = fmaf(part[2], f1, w.acc[dt][2] * alpha0);
      w.acc[dt][3] = fmaf(part[3], f1, w.acc[dt][3] * alpha1);
    }
  }
}

template <class T>
__device__ __forceinline__ void load_decode_rows(const SageParams& p, const SageDecodeBlock& b,
                                                 DecodeRows<T>& r, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int row0 = p.cu_seqlens_q[0];
  int token, head;
  if (decode_row(b, g, token, head)) {
    const int8_t* q8 =
        p.q8 + (static_cast<int64_t>(b.q_begin + token - row0) * p.num_heads + head) * T::kDp;
#pragma unroll
    for (int ks = 0; ks < T::kKSteps; ++ks) {
      r.qb[ks][0] = *reinterpret_cast<const uint32_t*>(q8 + 32 * ks + 4 * t);
      r.qb[ks][1] = *reinterpret_cast<const uint32_t*>(q8 + 32 * ks + 16 + 4 * t);
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < T::kKSteps; ++ks) r.qb[ks][0] = r.qb[ks][1] = 0u;
  }
  const int d0 = lane * T::kLaneDims;
  const bf16* q = static_cast<const bf16*>(p.q);
#pragma unroll
  for (int n = 0; n < T::kRows; ++n) {
#pragma unroll
    for (int j = 0; j < T::kLaneDims; ++j) r.qp[n][j] = 0.0f;
    // head_dim is a multiple of 8, so a lane's dims are all valid or all padding.
    if (!decode_row(b, n, token, head) || d0 >= p.head_dim) continue;
    const bf16* src = q + static_cast<int64_t>(b.q_begin + token) * p.q_row_stride +
                      static_cast<int64_t>(head) * p.q_head_stride + d0;
    uint32_t h[2] = {0u, 0u};
    if constexpr (T::kLaneDims == 4) {
      const uint2 v = *reinterpret_cast<const uint2*>(src);
      h[0] = v.x;
      h[1] = v.y;
    } else {
      h[0] = *reinterpret_cast<const uint32_t*>(src);
    }
#pragma unroll
    for (int j = 0; j < T::kLaneDims; ++j) {
      const float x = (j & 1) ? flash_cuda::sm80::bf16_hi_to_float(h[j >> 1])
                              : flash_cuda::sm80::bf16_lo_to_float(h[j >> 1]);
      r.qp[n][j] = x * p.q_factor;
    }
  }
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const bool valid = decode_row(b, 2 * t + c, token, head);
    r.qs[c] = valid ? p.q_scale[static_cast<int64_t>(b.q_begin + token - row0) * p.num_heads + head]
                    : 0.0f;
    r.lim[c] = p.causal ? min(b.kv_len - 1, b.causal_offset + token) : b.kv_len - 1;
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads) sage_decode_kernel(const SageParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  SageDecodeBlock b;
  if (!sage_decode_block<T>(p, b)) return;
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const uint32_t sbase = smem_addr(smem);
  const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;
  const int n_pages = max(b.page_end - b.page_begin, 0);

  // The first kStages - 1 pages go in flight before the rows are read.
#pragma unroll
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (s < n_pages) {
      load_page<T>(p, block_row[b.page_begin + s], b.kv_head, sbase + s * T::kStageBytes, lane);
    }
    cp_async_commit();
  }
  DecodeRows<T> rows;
  load_decode_rows<T>(p, b, rows, lane);

  DecodeState<T> w;
  w.init();
  for (int i = 0; i < n_pages; ++i) {
    // The stage of page i + kStages - 1 was last read in iteration i - 1, which ended with a
    // warp barrier.
    const int ahead = i + T::kStages - 1;
    if (ahead < n_pages) {
      load_page<T>(p, block_row[b.page_begin + ahead], b.kv_head,
                   sbase + (ahead % T::kStages) * T::kStageBytes, lane);
    }
    cp_async_commit();
    cp_async_wait<T::kStages - 1>();
    __syncwarp();
    const int st = i % T::kStages;
    const int page = b.page_begin + i;
    decode_page_step<T>(sbase + st * T::kStageBytes, smem + st * T::kStageBytes,
                        T::kPvFp16 && block_row[page] < 0, rows, page * kSagePageSize, w, lane);
    __syncwarp();
  }
  cp_async_wait<0>();

  const float l[2] = {key_lanes_sum(w.l[0]), key_lanes_sum(w.l[1])};
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    int token, head;
    if (!decode_row(b, 2 * t + c, token, head)) continue;
    if (b.num_splits == 1) {
      const float inv = l[c] > 0.0f ? 1.0f / l[c] : 0.0f;
      bf16* dst = static_cast<bf16*>(p.o) +
                  static_cast<int64_t>(b.q_begin + token) * p.o_row_stride +
                  static_cast<int64_t>(head) * p.o_head_stride;
#pragma unroll
      for (int dt = 0; dt < T::kDimTiles; ++dt) {
        const int d = 16 * dt + g;
        if (d < p.head_dim) dst[d] = __float2bfloat16_rn(w.acc[dt][c] * inv);
        if (d + 8 < p.head_dim) dst[d + 8] = __float2bfloat16_rn(w.acc[dt][2 + c] * inv);
      }
      continue;
    }
    // More than one split: unnormalized accumulators, running max and sum to the workspace.
    const int64_t slot = static_cast<int64_t>(p.split_offsets[b.seq]) +
                         (static_cast<int64_t>(token) * p.num_heads + head) * b.num_splits +
                         b.split;
    float* acc_out = p.split_acc + slot * p.head_dim;
#pragma unroll
    for (int dt = 0; dt < T::kDimTiles; ++dt) {
      const int d = 16 * dt + g;
      if (d < p.head_dim) acc_out[d] = w.acc[dt][c];
      if (d + 8 < p.head_dim) acc_out[d + 8] = w.acc[dt][2 + c];
    }
    if (g == 0) {
      p.split_ml[slot * 2] = w.m[c];
      p.split_ml[slot * 2 + 1] = l[c];
    }
  }
}

}  // namespace sagellm::sage_cuda::sm80
