// sage_attn prefill kernel over 8-bit pages, mma.sync (runs on sm_80 with int8 and fp16 P.V and
// on sm_89+/sm_90 with fp8 P.V too; Hopper runs sage_prefill_sm90.cuh for fp8 and int8 P.V at
// head dim 128).
// Numerics: sage_numerics.h, step by step. Decode and short extends run the split-KV kernel
// (sage_decode_sm80.cuh).
//
// A CTA holds the 128 new tokens m0.. of one query head, 16 rows per warp (each row with its own
// Q scale); all 8 warps walk the same pages. The key tile is one page of 64 keys, loaded into
// shared memory with cp.async (K codes, V codes and the page's mean and scales), double-buffered.
// Per page and warp:
//   S = (Q8 K8^T) * (q_scale * k_scale) + q'.k_mean    (INT8 m16n8k32, int32 accumulation)
//   one running-max update per page, P = exp2(S - m) (the bottom-right causal mask applied),
//   P rounded to FP8 (x448) or FP16, partial = P V (FP8 m16n8k32 or FP16 m16n8k16, fp32) per
//   16-channel slice, acc = acc * alpha + partial * v_scale (two-level accumulation); in int8
//   mode P is UINT8 against the row's page max, partial = P V exactly in int32 (u8.s8 m16n8k32),
//   acc = acc * alpha + partial * (v_scale * beta).
// The accumulator layout of S equals the A-fragment layout of P because V is stored with its keys
// permuted (sage_params.h): no shuffles between the two products.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/sage/sage_mma.cuh"
#include "attention/sage/sage_page_load_sm80.cuh"
#include "attention/sage/sage_params.h"

namespace sagellm::sage_cuda::sm80 {

using bf16 = __nv_bfloat16;

template <int kDp_, int kWarps_, SagePv kPv_>
struct SageTraits {
  static constexpr int kDp = kDp_;
  static constexpr int kWarps = kWarps_;
  static constexpr SagePv kPv = kPv_;
  static constexpr bool kPvFp8 = kPv == SagePv::kFp8;
  static constexpr bool kPvInt8 = kPv == SagePv::kInt8;
  static constexpr bool kPvFp16 = kPv == SagePv::kFp16;
  static constexpr int kRows = 16 * kWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStages = 2;
  static constexpr int kKSteps = kDp / 32;  // k32 steps of Q K^T
  static constexpr int kNT = kSagePageSize / 8;
  static constexpr int kDT = kDp / 8;
  static constexpr int kKBytes = kSagePageSize * kDp;
  // fp16 mode keeps room for a page whose V is fp16 (a page quantized on the fly).
  static constexpr int kVBytes = (kPvFp16 ? 2 : 1) * kSagePageSize * kDp;
  static constexpr int kMetaBytes = 6 * kDp + 16;
  static constexpr int kStageBytes = kKBytes + kVBytes + kMetaBytes;
  static constexpr int kQ8Bytes = kRows * kDp;
  static constexpr int kQhBytes = kRows * kDp * 2;
  static constexpr int kSmemBytes = kQ8Bytes + kQhBytes + kStages * kStageBytes;
  static_assert(kDp == 64 || kDp == 128, "native head dims");
  static_assert(kStageBytes % 16 == 0, "16-byte chunks");
};

struct SageBlock {
  int seq, kv_head, head, group;
  int q_begin, q_len, kv_len, causal_offset;
  int row_base;  // first new token of the CTA
  int page_begin, page_end;
  int first_masked_page;  // pages before it need no mask
};

template <class T>
__device__ __forceinline__ bool sage_block(const SageParams& p, SageBlock& b) {
  b.seq = blockIdx.z;
  b.q_begin = p.cu_seqlens_q[b.seq];
  b.q_len = p.cu_seqlens_q[b.seq + 1] - b.q_begin;
  b.group = p.num_heads / p.num_kv_heads;
  if (b.q_len <= 0 || sage_uses_split_kernel(b.q_len, b.group)) return false;
  b.kv_len = p.kv_lens[b.seq];
  b.causal_offset = b.kv_len - b.q_len;
  b.head = blockIdx.y;
  b.kv_head = b.head / b.group;
  // Heavier (later) blocks of a causal request first: they have the most pages.
  b.row_base = (gridDim.x - 1 - blockIdx.x) * T::kRows;
  if (b.row_base >= b.q_len) return false;
  const int rows = min(T::kRows, b.q_len - b.row_base);
  const int key_end = p.causal ? min(b.kv_len, b.causal_offset + b.row_base + rows) : b.kv_len;
  const int all_see = p.causal ? min(b.kv_len, b.causal_offset + b.row_base + 1) : b.kv_len;
  b.page_begin = 0;
  b.page_end = sage_ceil_div(key_end, kSagePageSize);
  b.first_masked_page = all_see / kSagePageSize;
  return true;
}

// (new token, query head) of CTA row r, or false for a padding row.
template <class T>
__device__ __forceinline__ bool row_of(const SageBlock& b, int r, int& token, int& head) {
  token = b.row_base + r;
  head = b.head;
  return token < b.q_len;
}

// The Q codes and the bf16 queries (for q' . k_mean) of the CTA's rows; padding rows are zero.
template <class T>
__device__ __forceinline__ void load_q(const SageParams& p, const SageBlock& b, uint32_t sq8,
                                       uint32_t sqh, int tid) {
  const int row0 = p.cu_seqlens_q[0];
  constexpr int kC8 = T::kDp / 16, kCh = T::kDp / 8;
  for (int c = tid; c < T::kRows * kC8; c += T::kThreads) {
    const int r = c / kC8, ch = c % kC8;
    int token, head;
    const bool valid = row_of<T>(b, r, token, head);
    const int8_t* src =
        valid ? p.q8 +
                    (static_cast<int64_t>(b.q_begin + token - row0) * p.num_heads + head) * T::kDp +
                    ch * 16
              : p.q8;
    cp_async_16(sq8 + swz<T::kDp>(r, ch), src, valid);
  }
  const bf16* q = static_cast<const bf16*>(p.q);
  for (int c = tid; c < T::kRows * kCh; c += T::kThreads) {
    const int r = c / kCh, ch = c % kCh;
    int token, head;
    const bool valid = row_of<T>(b, r, token, head) && ch * 8 < p.head_dim;
    const bf16* src = valid ? q + static_cast<int64_t>(b.q_begin + token) * p.q_row_stride +
                                  static_cast<int64_t>(head) * p.q_head_stride + ch * 8
                            : q;
    cp_async_16(sqh + swz<2 * T::kDp>(r, ch), src, valid);
  }
}

// Per-warp state: running max (log2 units), per-thread partial row sums, accumulators.
template <class T>
struct WarpState {
  float m[2], l[2];
  float acc[T::kDT][4];
  __device__ __forceinline__ void init() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
#pragma unroll
    for (int j = 0; j < T::kDT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  }
};

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// The scores of one page (sage_numerics.h steps 3 and 4) for the thread's rows g and g + 8, from
// the exact int32 products si in C-fragment layout: s = si * (q_scale * k_scale) + q'.k_mean with
// the bottom-right mask (lim0 / lim1: the rows' last visible keys), then the page's running-max
// update: m_new is the new running max (m is the old one, which alpha needs) and ref the exp2
// reference (m_new, or 0 while no key was visible), and page_max the rows' maxima over this page
// (-inf for a row that sees none of its keys; int8 P.V rounds P against it). The Hopper prefill
// kernel computes the same values in another order (sage_numerics.h step 3).
template <int kDp, int kNT>
__device__ __forceinline__ void page_scores(const int (&si)[kNT][4], const float* mean,
                                            const unsigned char* qh_rows, float q_factor, float sc0,
                                            float sc1, int key0, int lim0, int lim1, bool masked,
                                            const float (&m)[2], float (&s)[kNT][4],
                                            float (&m_new)[2], float (&ref)[2],
                                            float (&page_max)[2], int lane) {
  const int g = lane >> 2, t = lane & 3;
  // q' . k_mean for rows g and g + 8: the thread's channels 8j + 2t, 8j + 2t + 1, summed over the
  // quad.
  float qm0 = 0.0f, qm1 = 0.0f;
#pragma unroll
  for (int j = 0; j < kDp / 8; ++j) {
    const float2 mn = *reinterpret_cast<const float2*>(mean + 8 * j + 2 * t);
    const uint32_t a = *reinterpret_cast<const uint32_t*>(qh_rows + swz<2 * kDp>(g, j) + 4 * t);
    const uint32_t c = *reinterpret_cast<const uint32_t*>(qh_rows + swz<2 * kDp>(g + 8, j) + 4 * t);
    qm0 = fmaf(flash_cuda::sm80::bf16_lo_to_float(a) * q_factor, mn.x, qm0);
    qm0 = fmaf(flash_cuda::sm80::bf16_hi_to_float(a) * q_factor, mn.y, qm0);
    qm1 = fmaf(flash_cuda::sm80::bf16_lo_to_float(c) * q_factor, mn.x, qm1);
    qm1 = fmaf(flash_cuda::sm80::bf16_hi_to_float(c) * q_factor, mn.y, qm1);
  }
  qm0 = quad_sum(qm0);
  qm1 = quad_sum(qm1);
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    s[j][0] = fmaf(static_cast<float>(si[j][0]), sc0, qm0);
    s[j][1] = fmaf(static_cast<float>(si[j][1]), sc0, qm0);
    s[j][2] = fmaf(static_cast<float>(si[j][2]), sc1, qm1);
    s[j][3] = fmaf(static_cast<float>(si[j][3]), sc1, qm1);
  }
  if (masked) {
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      const int key = key0 + j * 8 + 2 * t;
      if (key > lim0) s[j][0] = -INFINITY;
      if (key + 1 > lim0) s[j][1] = -INFINITY;
      if (key > lim1) s[j][2] = -INFINITY;
      if (key + 1 > lim1) s[j][3] = -INFINITY;
    }
  }
  // One running-max update per page.
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
    mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
  }
  mx0 = quad_max(mx0);
  mx1 = quad_max(mx1);
  page_max[0] = mx0;
  page_max[1] = mx1;
  m_new[0] = fmaxf(m[0], mx0);
  m_new[1] = fmaxf(m[1], mx1);
  ref[0] = m_new[0] == -INFINITY ? 0.0f : m_new[0];
  ref[1] = m_new[1] == -INFINITY ? 0.0f : m_new[1];
}

// One page for one warp. lim0 / lim1: last visible key of the thread's rows g and g + 8.
template <class T>
__device__ __forceinline__ void page_step(const SageParams& p, uint32_t stage,
                                          const unsigned char* stage_ptr, bool v16_page,
                                          const uint32_t (&qf)[T::kKSteps][4],
                                          const unsigned char* qh_rows, float qs0, float qs1,
                                          int key0, int lim0, int lim1, bool masked,
                                          WarpState<T>& w, int lane) {
  const int t = lane & 3, mi = lane >> 3;
  const StageMeta meta = stage_meta<T>(stage_ptr);
  const float* mean = meta.mean;
  const bf16* vscale = meta.vscale;
  const float kscale = meta.kscale;

  // S = Q8 K8^T in int32 (exact).
  int si[T::kNT][4];
#pragma unroll
  for (int j = 0; j < T::kNT; ++j) si[j][0] = si[j][1] = si[j][2] = si[j][3] = 0;
#pragma unroll
  for (int ks = 0; ks < T::kKSteps; ++ks) {
#pragma unroll
    for (int np = 0; np < T::kNT / 2; ++np) {
      uint32_t kb[4];
      ldmatrix_x4(kb, stage + swz<T::kDp>(np * 16 + (mi >> 1) * 8 + (lane & 7), 2 * ks + (mi & 1)));
      mma_s8_16832(si[2 * np], qf[ks], kb[0], kb[1]);
      mma_s8_16832(si[2 * np + 1], qf[ks], kb[2], kb[3]);
    }
  }
  float s[T::kNT][4], m_new[2], ref[2], pmax[2];
  page_scores<T::kDp, T::kNT>(si, mean, qh_rows, p.q_factor, qs0 * kscale, qs1 * kscale, key0, lim0,
                              lim1, masked, w.m, s, m_new, ref, pmax, lane);
  const float ref0 = ref[0], ref1 = ref[1];
  const float alpha0 = fast_exp2(w.m[0] - ref0), alpha1 = fast_exp2(w.m[1] - ref1);
  w.m[0] = m_new[0];
  w.m[1] = m_new[1];
  // int8 P.V: P against the row's own page max, the page scaled by beta = exp2(pm - m_new) (0 for
  // a row that sees no key of the page, whose P is all 0 anyway).
  float e0 = ref0, e1 = ref1, beta0 = 1.0f, beta1 = 1.0f;
  if constexpr (T::kPvInt8) {
    e0 = pmax[0] == -INFINITY ? 0.0f : pmax[0];
    e1 = pmax[1] == -INFINITY ? 0.0f : pmax[1];
    beta0 = fast_exp2(pmax[0] - ref0);
    beta1 = fast_exp2(pmax[1] - ref1);
  }
#pragma unroll
  for (int j = 0; j < T::kNT; ++j) {
    s[j][0] = fast_exp2(s[j][0] - e0);
    s[j][1] = fast_exp2(s[j][1] - e0);
    s[j][2] = fast_exp2(s[j][2] - e1);
    s[j][3] = fast_exp2(s[j][3] - e1);
  }

  // P in the P.V operand precision; the row sums add exactly the values that multiply V.
  float rs0 = 0.0f, rs1 = 0.0f;
  constexpr int kPChunks = T::kPvFp16 ? kSagePageSize / 16 : kSagePageSize / 32;
  uint32_t pa[kPChunks][4];
  if constexpr (T::kPvInt8) {
#pragma unroll
    for (int kc = 0; kc < kPChunks; ++kc) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j0 = 4 * kc + 2 * half, j1 = j0 + 1;
        float c[2][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          c[0][i] = u8_code_float(s[j0][i]);
          c[1][i] = u8_code_float(s[j1][i]);
        }
        pa[kc][2 * half] = pack_u8x4(c[0][0], c[0][1], c[1][0], c[1][1]);
        pa[kc][2 * half + 1] = pack_u8x4(c[0][2], c[0][3], c[1][2], c[1][3]);
        rs0 += ((c[0][0] - kU8Magic) + (c[0][1] - kU8Magic)) +
               ((c[1][0] - kU8Magic) + (c[1][1] - kU8Magic));
        rs1 += ((c[0][2] - kU8Magic) + (c[0][3] - kU8Magic)) +
               ((c[1][2] - kU8Magic) + (c[1][3] - kU8Magic));
      }
    }
  } else if constexpr (T::kPvFp8) {
#pragma unroll
    for (int kc = 0; kc < kPChunks; ++kc) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j0 = 4 * kc + 2 * half, j1 = j0 + 1;
        const uint32_t r0lo = f32x2_to_e4m3x2(s[j0][0] * 448.0f, s[j0][1] * 448.0f);
        const uint32_t r0hi = f32x2_to_e4m3x2(s[j1][0] * 448.0f, s[j1][1] * 448.0f);
        const uint32_t r1lo = f32x2_to_e4m3x2(s[j0][2] * 448.0f, s[j0][3] * 448.0f);
        const uint32_t r1hi = f32x2_to_e4m3x2(s[j1][2] * 448.0f, s[j1][3] * 448.0f);
        pa[kc][2 * half] = r0lo | (r0hi << 16);
        pa[kc][2 * half + 1] = r1lo | (r1hi << 16);
        const float2 a = f16x2_to_float2(e4m3x2_to_f16x2(r0lo));
        const float2 bq = f16x2_to_float2(e4m3x2_to_f16x2(r0hi));
        const float2 c = f16x2_to_float2(e4m3x2_to_f16x2(r1lo));
        const float2 d = f16x2_to_float2(e4m3x2_to_f16x2(r1hi));
        rs0 += (a.x + a.y) + (bq.x + bq.y);
        rs1 += (c.x + c.y) + (d.x + d.y);
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < kPChunks; ++kk) {
      const int j0 = 2 * kk, j1 = j0 + 1;
      pa[kk][0] = pack_f16x2(s[j0][0], s[j0][1]);
      pa[kk][1] = pack_f16x2(s[j0][2], s[j0][3]);
      pa[kk][2] = pack_f16x2(s[j1][0], s[j1][1]);
      pa[kk][3] = pack_f16x2(s[j1][2], s[j1][3]);
      const float2 a = f16x2_to_float2(pa[kk][0]), c = f16x2_to_float2(pa[kk][1]);
      const float2 bq = f16x2_to_float2(pa[kk][2]), d = f16x2_to_float2(pa[kk][3]);
      rs0 += (a.x + a.y) + (bq.x + bq.y);
      rs1 += (c.x + c.y) + (d.x + d.y);
    }
  }
  if constexpr (T::kPvInt8) {
    w.l[0] = w.l[0] * alpha0 + rs0 * beta0;
    w.l[1] = w.l[1] * alpha1 + rs1 * beta1;
  } else {
    w.l[0] = w.l[0] * alpha0 + rs0;
    w.l[1] = w.l[1] * alpha1 + rs1;
  }

  // P.V per 16-channel slice, folded into acc with the page's channel scales.
  const uint32_t sv = stage + T::kKBytes;
#pragma unroll
  for (int dpair = 0; dpair < T::kDp / 16; ++dpair) {
    float part[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n) part[n][0] = part[n][1] = part[n][2] = part[n][3] = 0.0f;
    const int vrow = dpair * 16 + (mi >> 1) * 8 + (lane & 7);
    if constexpr (T::kPvInt8) {
      int pi[2][4];
#pragma unroll
      for (int n = 0; n < 2; ++n) pi[n][0] = pi[n][1] = pi[n][2] = pi[n][3] = 0;
#pragma unroll
      for (int kc = 0; kc < kPChunks; ++kc) {
        uint32_t vb[4];
        ldmatrix_x4(vb, sv + swz<64>(vrow, 2 * kc + (mi & 1)));
        mma_u8s8_16832(pi[0], pa[kc], vb[0], vb[1]);
        mma_u8s8_16832(pi[1], pa[kc], vb[2], vb[3]);
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int i = 0; i < 4; ++i) part[n][i] = static_cast<float>(pi[n][i]);
      }
    } else if constexpr (T::kPvFp8) {
#pragma unroll
      for (int kc = 0; kc < kPChunks; ++kc) {
        uint32_t vb[4];
        ldmatrix_x4(vb, sv + swz<64>(vrow, 2 * kc + (mi & 1)));
        mma_e4m3_16832(part[0], pa[kc], vb[0], vb[1]);
        mma_e4m3_16832(part[1], pa[kc], vb[2], vb[3]);
      }
    } else if (!v16_page) {
#pragma unroll
      for (int kc = 0; kc < kSagePageSize / 32; ++kc) {
        uint32_t vb[4];
        ldmatrix_x4(vb, sv + swz<64>(vrow, 2 * kc + (mi & 1)));
        mma_f16_16816(part[0], pa[2 * kc], e4m3x2_to_f16x2(vb[0]), e4m3x2_to_f16x2(vb[0] >> 16));
        mma_f16_16816(part[0], pa[2 * kc + 1], e4m3x2_to_f16x2(vb[1]),
                      e4m3x2_to_f16x2(vb[1] >> 16));
        mma_f16_16816(part[1], pa[2 * kc], e4m3x2_to_f16x2(vb[2]), e4m3x2_to_f16x2(vb[2] >> 16));
        mma_f16_16816(part[1], pa[2 * kc + 1], e4m3x2_to_f16x2(vb[3]),
                      e4m3x2_to_f16x2(vb[3] >> 16));
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kPChunks; ++kk) {
        uint32_t vb[4];
        ldmatrix_x4(vb, sv + swz<128>(vrow, 2 * kk + (mi & 1)));
        mma_f16_16816(part[0], pa[kk], vb[0], vb[1]);
        mma_f16_16816(part[1], pa[kk], vb[2], vb[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const int dt = 2 * dpair + n;
      float2 f = make_float2(1.0f, 1.0f);
      if (!T::kPvFp16 || !v16_page) {
        f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vscale + dt * 8 + 2 * t));
      }
      if constexpr (T::kPvInt8) {
        w.acc[dt][0] = fmaf(part[n][0], f.x * beta0, w.acc[dt][0] * alpha0);
        w.acc[dt][1] = fmaf(part[n][1], f.y * beta0, w.acc[dt][1] * alpha0);
        w.acc[dt][2] = fmaf(part[n][2], f.x * beta1, w.acc[dt][2] * alpha1);
        w.acc[dt][3] = fmaf(part[n][3], f.y * beta1, w.acc[dt][3] * alpha1);
      } else {
        w.acc[dt][0] = fmaf(part[n][0], f.x, w.acc[dt][0] * alpha0);
        w.acc[dt][1] = fmaf(part[n][1], f.y, w.acc[dt][1] * alpha0);
        w.acc[dt][2] = fmaf(part[n][2], f.x, w.acc[dt][2] * alpha1);
        w.acc[dt][3] = fmaf(part[n][3], f.y, w.acc[dt][3] * alpha1);
      }
    }
  }
}

// Normalizes the thread's rows g and g + 8 (acc / l, with l already summed over the quad) and
// stores their channels 8j + 2t, +1 as bf16; padding rows and channels past head_dim are skipped.
template <int kDT>
__device__ __forceinline__ void store_rows(const SageParams& p, const SageBlock& b,
                                           const float (&acc)[kDT][4], float l0, float l1,
                                           bool valid0, int tok0, int head0, bool valid1, int tok1,
                                           int head1, int t) {
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
  const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  bf16* obase = static_cast<bf16*>(p.o);
#pragma unroll
  for (int j = 0; j < kDT; ++j) {
    const int d = j * 8 + 2 * t;
    if (d >= p.head_dim) continue;
    if (valid0) {
      bf16* dst = obase + static_cast<int64_t>(b.q_begin + tok0) * p.o_row_stride +
                  static_cast<int64_t>(head0) * p.o_head_stride + d;
      *reinterpret_cast<uint32_t*>(dst) =
          flash_cuda::sm80::pack_bf16x2(acc[j][0] * inv0, acc[j][1] * inv0);
    }
    if (valid1) {
      bf16* dst = obase + static_cast<int64_t>(b.q_begin + tok1) * p.o_row_stride +
                  static_cast<int64_t>(head1) * p.o_head_stride + d;
      *reinterpret_cast<uint32_t*>(dst) =
          flash_cuda::sm80::pack_bf16x2(acc[j][2] * inv1, acc[j][3] * inv1);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads) sage_attn_kernel(const SageParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  SageBlock b;
  if (!sage_block<T>(p, b)) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3, mi = lane >> 3;
  const uint32_t sq8 = smem_addr(smem);
  const uint32_t sqh = sq8 + T::kQ8Bytes;
  const uint32_t sstage0 = sqh + T::kQhBytes;
  const auto stage_addr = [&](int st) { return sstage0 + st * T::kStageBytes; };
  const auto stage_ptr = [&](int st) {
    return smem + T::kQ8Bytes + T::kQhBytes + st * T::kStageBytes;
  };
  const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;
  const int n_pages = b.page_end - b.page_begin;

  load_q<T>(p, b, sq8, sqh, tid);
  cp_async_commit();
  if (n_pages > 0) load_page<T>(p, block_row[b.page_begin], b.kv_head, stage_addr(0), tid);
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();

  const int wrow0 = warp * 16;
  uint32_t qf[T::kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < T::kKSteps; ++ks) {
    ldmatrix_x4(qf[ks], sq8 + swz<T::kDp>(wrow0 + (mi & 1) * 8 + (lane & 7), 2 * ks + (mi >> 1)));
  }
  const unsigned char* qh_rows = smem + T::kQ8Bytes + wrow0 * 2 * T::kDp;
  // The thread's rows: scales and key limits.
  int tok0, head0, tok1, head1;
  const bool valid0 = row_of<T>(b, wrow0 + g, tok0, head0);
  const bool valid1 = row_of<T>(b, wrow0 + g + 8, tok1, head1);
  const int row0 = p.cu_seqlens_q[0];
  const float qs0 =
      valid0 ? p.q_scale[static_cast<int64_t>(b.q_begin + tok0 - row0) * p.num_heads + head0]
             : 0.0f;
  const float qs1 =
      valid1 ? p.q_scale[static_cast<int64_t>(b.q_begin + tok1 - row0) * p.num_heads + head1]
             : 0.0f;
  const int lim0 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok0) : b.kv_len - 1;
  const int lim1 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok1) : b.kv_len - 1;

  WarpState<T> w;
  w.init();
  for (int i = 0; i < n_pages; ++i) {
    const int st = i & 1;
    if (i + 1 < n_pages) {
      // The other stage was last read in iteration i - 1, which ended with a barrier.
      load_page<T>(p, block_row[b.page_begin + i + 1], b.kv_head, stage_addr(st ^ 1), tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int page = b.page_begin + i;
    const bool v16_page = T::kPvFp16 && block_row[page] < 0;
    page_step<T>(p, stage_addr(st), stage_ptr(st), v16_page, qf, qh_rows, qs0, qs1,
                 page * kSagePageSize, lim0, lim1, page >= b.first_masked_page, w, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  const float l0 = quad_sum(w.l[0]), l1 = quad_sum(w.l[1]);
  store_rows<T::kDT>(p, b, w.acc, l0, l1, valid0, tok0, head0, valid1, tok1, head1, t);
}

}  // namespace sagellm::sage_cuda::sm80
