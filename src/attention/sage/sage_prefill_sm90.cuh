// sage_attn prefill kernel, Hopper (sm_90a), fp8 and int8 P.V, head dim 128: INT8 Q K^T and FP8
// P V (or UINT8 P times INT8 V, int8 mode) as wgmma products, warp-specialized. Numerics:
// sage_numerics.h, step by step, as the sm_80 kernel (sage_attn_sm80.cuh), up to the evaluation
// order that the specification leaves free (below).
//
// One CTA = 128 new tokens of one query head: two consumer warpgroups of 64 rows (each thread
// reads its two rows' Q scales, as in the sm_80 kernel) and one producer warpgroup, whose registers
// go to the consumers (setmaxnreg). The key tile is one page (64 keys), so that the running max,
// the K scale, the K mean and the V scales change exactly at tile boundaries. The producer copies
// each page (K codes, transposed V codes, then mean and scales; one block table lookup per page)
// with cp.async into a ring of stages laid out as wgmma reads them (K rows of 128 bytes, 128-byte
// swizzle; V rows of 64 bytes, 64-byte swizzle), writes the page's K mean as three exact bf16
// parts (split_mean) and hands the stage over through full/empty mbarriers.
// Per page and warpgroup:
//   S = Q8 K8^T (wgmma m64n64k32 s8, int32), and q . k_mean on the tensor cores too (bf16 queries,
//   held in registers, times the mean's parts, wgmma m64n16k16: exact products, fp32 sums), so
//   that the smoothing costs the softmax three additions and a multiply by q_factor per row
//   instead of a 128-term dot product out of shared memory;
//   one running-max update, taken over the integer products (s is increasing in them); P =
//   exp2(S - m) as one FMA and one exp2 per score, rounded to FP8 (x448, folded into the
//   exponent) in registers;
//   partial = P V (wgmma m64n136k32 e4m3, a fresh fp32 accumulator), then
//   acc = acc * alpha + partial * v_scale (the two-level accumulation of the specification).
// The product's 8 extra columns multiply P by a row of ones kept under each stage's V tile: they
// give the page's row sums of the FP8 P values, which the softmax would otherwise convert back
// from FP8 and add up itself (the sums of at most 64 such values are exact in fp32). In int8
// mode (16 extra columns) the page's P is rounded against each row's own page max and the
// partial, exact in int32, is folded with v_scale * beta (sage_numerics.h step 5).
// The consumers take turns at the tensor cores (two named barriers): one issues P_{n-1} V_{n-1}
// and then S_n, folds page n - 1 while S_n is computed, then dequantizes and exponentiates page
// n, while the other's products run.
#pragma once

#include <cuda_bf16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "attention/flash/flash_wgmma_sm90.cuh"
#include "attention/sage/sage_attn_sm80.cuh"
#include "attention/sage/sage_params.h"
#include "attention/sage/sage_wgmma_sm90.cuh"

namespace sagellm::sage_cuda::sm90 {

using flash_cuda::sm90::desc_plus;
using flash_cuda::sm90::fence_proxy_async_smem;
using flash_cuda::sm90::mbarrier_arrive;
using flash_cuda::sm90::mbarrier_init;
using flash_cuda::sm90::mbarrier_wait;
using flash_cuda::sm90::named_arrive;
using flash_cuda::sm90::named_sync;
using flash_cuda::sm90::setmaxnreg_dec;
using flash_cuda::sm90::setmaxnreg_inc;
using flash_cuda::sm90::sw128_desc;
using flash_cuda::sm90::sw128_offset;
using flash_cuda::sm90::sw64_desc;
using flash_cuda::sm90::wgmma_commit;
using flash_cuda::sm90::wgmma_fence;
using flash_cuda::sm90::wgmma_keep;
using flash_cuda::sm90::wgmma_wait;
using sm80::bf16;
using sm80::biased_to_float;
using sm80::cp_async_16;
using sm80::cp_async_commit;
using sm80::cp_async_wait;
using sm80::f32x2_to_e4m3x2;
using sm80::fast_exp2;
using sm80::kBiasedZero;
using sm80::quad_sum;
using sm80::smem_addr;
using sm80::swz;

template <SagePv kPv_>
struct PrefillTraits {
  static_assert(kPv_ == SagePv::kFp8 || kPv_ == SagePv::kInt8, "8-bit P.V modes only");
  static constexpr SagePv kPv = kPv_;
  static constexpr bool kPvInt8 = kPv == SagePv::kInt8;
  static constexpr int kDp = 128;
  static constexpr bool kSplit = false;  // for sage_block
  static constexpr int kRows = kSagePrefillBlockM;
  static constexpr int kConsumerThreads = 256;
  static constexpr int kProducerThreads = 128;
  static constexpr int kThreads = kConsumerThreads + kProducerThreads;
  static constexpr int kStages = 6;  // pages are small: a deep ring hides the copies' latency
  // Registers per thread after the hand-over (128 * 40 + 256 * 232 <= 64K).
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static constexpr int kNT = kSagePageSize / 8;  // 8-key column tiles of S
  static constexpr int kDT = kDp / 8;            // 8-column tiles of O
  static constexpr int kKBytes = kSagePageSize * kDp;
  // V's channels, then the ones row and 7 zero rows (15 for the integer product, whose N grows in
  // steps of 16 past 128).
  static constexpr int kVRows = kDp + (kPvInt8 ? 16 : 8);
  static constexpr int kPT = kVRows / 8;  // 8-column tiles of the P.V product
  static constexpr int kVBytes = kSagePageSize * kVRows;
  static constexpr int kMetaBytes = 6 * kDp + 16;
  // int8 mode: after the meta, the page's V scales widened to fp32 by the producer, in the order
  // the fold reads them (vscale_fp32): row t of the quad holds channels 8 dt + 2 t, +1 for every
  // dt, 128 bytes padded to 144 so that the quad's four rows fall in different banks. The fp8
  // fold reads the bf16 scales as stored: measured, the widened ones made the fp8 kernel 3-5%
  // slower and the int8 one about 2% faster (its fold converts the integer partials as well).
  static constexpr bool kVScaleFp32 = kPvInt8;
  static constexpr int kVScaleRowBytes = (kDp / 4) * 4 + 16;
  static constexpr int kVScaleBytes = kVScaleFp32 ? 4 * kVScaleRowBytes : 0;
  // The page's K mean as the B operand of q . k_mean (issue_qk): 16 rows of kDp bf16.
  static constexpr int kMeanRows = 16;
  // K at 0 and V at kKBytes (on 1024- and 512-byte boundaries, as the swizzles need), then meta,
  // then the mean rows (on a 1024-byte boundary).
  static constexpr int kMeanOffset =
      (kKBytes + kVBytes + kMetaBytes + kVScaleBytes + 1023) / 1024 * 1024;
  static constexpr int kStageBytes = kMeanOffset + kMeanRows * kDp * 2;
  static constexpr int kQ8Bytes = kRows * kDp;
  static constexpr int kQhBytes = kRows * kDp * 2;  // bf16 queries, 128-byte swizzle (wgmma)
  static constexpr int kSmemStages = kQ8Bytes + kQhBytes;
  static constexpr int kSmemBarriers = kSmemStages + kStages * kStageBytes;
  static constexpr int kSmemBytes = kSmemBarriers + 2 * kStages * 8 + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA");
  static_assert(kStageBytes % 1024 == 0 && (kKBytes + kVBytes + kMetaBytes) % 16 == 0,
                "stage alignment");
};

// One page of one KV head (pool or on-the-fly scratch block) into a stage, by the producer
// warpgroup.
template <class T>
__device__ __forceinline__ void load_page(const SageParams& p, int32_t entry, int kv_head,
                                          uint32_t stage, int ptid) {
  const uint8_t* blk = entry >= 0 ? p.pages8 + static_cast<int64_t>(entry) * p.page8_stride +
                                        static_cast<int64_t>(kv_head) * p.head8_stride
                                  : p.scratch8 +
                                        (-static_cast<int64_t>(entry) - 1) * p.scratch_page_stride +
                                        static_cast<int64_t>(kv_head) * p.scratch_head_stride;
  constexpr int kKC = T::kDp / 16;  // 16-byte chunks per K row
#pragma unroll
  for (int c = ptid; c < kSagePageSize * kKC; c += T::kProducerThreads) {
    const int r = c / kKC, ch = c % kKC;
    cp_async_16(stage + swz<T::kDp>(r, ch), blk + r * T::kDp + ch * 16, true);
  }
  const uint8_t* vsrc = blk + sage_v_codes_offset(T::kDp);
#pragma unroll
  for (int c = ptid; c < T::kDp * 4; c += T::kProducerThreads) {
    const int r = c / 4, ch = c % 4;
    cp_async_16(stage + T::kKBytes + swz<64>(r, ch), vsrc + r * 64 + ch * 16, true);
  }
  const uint8_t* msrc = blk + sage_k_mean_offset(T::kDp);
  for (int c = ptid; c < T::kMetaBytes / 16; c += T::kProducerThreads) {
    cp_async_16(stage + T::kKBytes + T::kVBytes + c * 16, msrc + c * 16, true);
  }
}

// The warpgroup's 64 rows of Q codes (for Q8 K8^T) and of bf16 queries (for q . k_mean), both
// as wgmma operands.
template <class T>
__device__ __forceinline__ void load_q(const SageParams& p, const sm80::SageBlock& b, uint32_t sq8,
                                       uint32_t sqh, int wg, int wtid) {
  const int row0 = p.cu_seqlens_q[0];
  constexpr int kC8 = T::kDp / 16, kCh = T::kDp / 8;
  for (int c = wtid; c < 64 * kC8; c += 128) {
    const int r = wg * 64 + c / kC8, ch = c % kC8;
    int token, head;
    const bool valid = sm80::row_of<T>(b, r, token, head);
    const int8_t* src =
        valid ? p.q8 +
                    (static_cast<int64_t>(b.q_begin + token - row0) * p.num_heads + head) * T::kDp +
                    ch * 16
              : p.q8;
    cp_async_16(sq8 + swz<T::kDp>(r, ch), src, valid);
  }
  const bf16* q = static_cast<const bf16*>(p.q);
  for (int c = wtid; c < 64 * kCh; c += 128) {
    const int r = wg * 64 + c / kCh, ch = c % kCh;
    int token, head;
    const bool valid = sm80::row_of<T>(b, r, token, head) && ch * 8 < p.head_dim;
    const bf16* src = valid ? q + static_cast<int64_t>(b.q_begin + token) * p.q_row_stride +
                                  static_cast<int64_t>(head) * p.q_head_stride + ch * 8
                            : q;
    cp_async_16(sqh + sw128_offset<T::kRows>(r, ch), src, valid);
  }
}

// The page's fp32 K mean (in the stage's meta) as 16 bf16 rows for q . k_mean: the mean is the
// exact sum of three bf16 parts (hi, mid, lo: 8 significant bits each, 24 in all), so the products
// with the bf16 queries are exact and the product's columns 2t, 2t + 1 and 8 + 2t give thread t of
// every quad the three partial dot products of its rows: rows 2t hold hi, 2t + 1 mid, 8 + 2t lo,
// 9 + 2t zeros (written once). Done by the producer thread c < kDp / 4 that copied the mean's
// channels 4c .. 4c + 3, once its copies have landed.
template <class T>
__device__ __forceinline__ void split_mean(unsigned char* stage_ptr, uint32_t smean, int c) {
  const float4 m4 = *reinterpret_cast<const float4*>(stage_ptr + T::kKBytes + T::kVBytes + 16 * c);
  using flash_cuda::sm80::bf16_hi_to_float;
  using flash_cuda::sm80::bf16_lo_to_float;
  using flash_cuda::sm80::pack_bf16x2;
  const float m[4] = {m4.x, m4.y, m4.z, m4.w};
  uint32_t part[3][2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const uint32_t hi = pack_bf16x2(m[2 * k], m[2 * k + 1]);
    const float r0 = m[2 * k] - bf16_lo_to_float(hi), r1 = m[2 * k + 1] - bf16_hi_to_float(hi);
    const uint32_t mid = pack_bf16x2(r0, r1);
    part[0][k] = hi;
    part[1][k] = mid;
    part[2][k] = pack_bf16x2(r0 - bf16_lo_to_float(mid), r1 - bf16_hi_to_float(mid));
  }
  // Channels 4c .. 4c + 3: 8 bytes into 16-byte chunk c / 2.
  const uint32_t byte = (c & 1) * 8;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const int row = k == 2 ? 8 + 2 * t : 2 * t + k;
      asm volatile("st.shared.v2.u32 [%0], {%1, %2};\n" ::"r"(
                       smean + sw128_offset<T::kMeanRows>(row, c / 2) + byte),
                   "r"(part[k][0]), "r"(part[k][1])
                   : "memory");
    }
  }
}

// The page's bf16 V scales as fp32 in the fold's order (PrefillTraits::kVScaleRowBytes): done by
// the producer thread that copied meta chunk 32 + k (channels 8k .. 8k + 7), once its copies have
// landed. The fold then takes each pair of scales with one 16-byte load per two column tiles and
// no conversions (the values are the same: bf16 widens exactly).
template <class T>
__device__ __forceinline__ void vscale_fp32(unsigned char* stage_ptr, int k) {
  unsigned char* meta = stage_ptr + T::kKBytes + T::kVBytes;
  const uint4 raw = *reinterpret_cast<const uint4*>(meta + 4 * T::kDp + 16 * k);
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    float2 f;
    f.x = __uint_as_float(w[t] << 16);
    f.y = __uint_as_float(w[t] & 0xFFFF0000u);
    *reinterpret_cast<float2*>(meta + T::kMetaBytes + t * T::kVScaleRowBytes + 8 * k) = f;
  }
}

__device__ __forceinline__ int quad_max_int(int v) {
  v = max(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return max(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// log2(448): FP8 P's factor 448 enters as an offset of exp2's argument.
inline constexpr float kLog2Fp8Max = 8.807354922057604f;

// Registers of one consumer thread (rows g and g + 8 of its warp's 16).
template <class T>
struct Consumer {
  using Part = std::conditional_t<T::kPvInt8, int, float>;
  int si[T::kNT][4];     // Q8 K8^T of the current page
  float qd[2][4];        // its q . k_mean parts (split_mean): hi, mid in tile 0, lo in tile 1
  Part part[T::kPT][4];  // P V of the previous page; column tile kDT: its row sums
  float acc[T::kDT][4];
  uint32_t pa[2][4];  // FP8 (int8 mode: UINT8) P of the last page: its two k32 steps
  float m[2], l[2], alpha[2];
  float beta[2];  // int8 mode: exp2(page max - running max) of the last page

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < T::kNT; ++j) si[j][0] = si[j][1] = si[j][2] = si[j][3] = 0;
#pragma unroll
    for (int j = 0; j < 2; ++j) qd[j][0] = qd[j][1] = qd[j][2] = qd[j][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < T::kDT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < T::kPT; ++j) part[j][0] = part[j][1] = part[j][2] = part[j][3] = 0;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
    alpha[0] = alpha[1] = 1.0f;
    beta[0] = beta[1] = 1.0f;
  }

  // S accumulates onto kBiasedZero (sage_mma.cuh: float(s) by one FADD); set before the fence
  // that precedes its first product.
  __device__ __forceinline__ void bias_scores() {
#pragma unroll
    for (int j = 0; j < T::kNT; ++j) si[j][0] = si[j][1] = si[j][2] = si[j][3] = kBiasedZero;
    wgmma_keep_int<T::kNT>(si);
  }

  // The scores' products, once waited for, stay where the product put them.
  __device__ __forceinline__ void keep_scores() {
    wgmma_keep_int<T::kNT>(si);
    wgmma_keep<2>(qd);
  }

  // Scores of the page in `meta` (its K scale; the q . k_mean parts in qd; sage_numerics.h steps
  // 3 and 4), the running max, then P in FP8 (int8 mode: UINT8) into pa; the row sums come with
  // the product (fold). s = si * sc + qm is increasing in the exact integer si (sc = q_scale *
  // k_scale >= 0), so a row's page max is the s of its largest si: the maxima are taken over the
  // integers, and each P is one FMA and one exp2, exp2(si * sc + (qm - reference)), with FP8's
  // factor 448 folded into the offset (log2(448)); the same values up to the rounding of the
  // offset's sum and of exp2.
  __device__ __forceinline__ void softmax(const unsigned char* meta, float q_factor, float qs0,
                                          float qs1, int key0, int lim0, int lim1, bool masked,
                                          int lane) {
    const int t = lane & 3;
    const float kscale = *reinterpret_cast<const float*>(meta + 6 * T::kDp);
    // q'.k_mean = q_factor * (q . k_mean): the three exact parts' sums, then the factor.
    const float qm0 = q_factor * ((qd[0][0] + qd[0][1]) + qd[1][0]);
    const float qm1 = q_factor * ((qd[0][2] + qd[0][3]) + qd[1][2]);
    if (masked) {
      scores_to_p<true>(qs0 * kscale, qs1 * kscale, qm0, qm1, key0 + 2 * t, lim0, lim1);
    } else {
      scores_to_p<false>(qs0 * kscale, qs1 * kscale, qm0, qm1, key0 + 2 * t, lim0, lim1);
    }
  }

  // key: the key of the thread's column 0 of column tile 0; lim0 / lim1: the rows' last visible
  // keys (kMasked: a page with keys that some row does not see).
  template <bool kMasked>
  __device__ __forceinline__ void scores_to_p(float sc0, float sc1, float qm0, float qm1, int key,
                                              int lim0, int lim1) {
    const auto visible = [&](int j, int e) {
      return !kMasked || key + 8 * j + (e & 1) <= (e < 2 ? lim0 : lim1);
    };
    int i0 = INT_MIN, i1 = INT_MIN;  // the biased products are positive: INT_MIN is none
#pragma unroll
    for (int j = 0; j < T::kNT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (visible(j, e)) i0 = max(i0, si[j][e]);
        if (visible(j, e + 2)) i1 = max(i1, si[j][e + 2]);
      }
    }
    i0 = quad_max_int(i0);
    i1 = quad_max_int(i1);
    const float pm0 = i0 == INT_MIN ? -INFINITY : fmaf(biased_to_float(i0), sc0, qm0);
    const float pm1 = i1 == INT_MIN ? -INFINITY : fmaf(biased_to_float(i1), sc1, qm1);
    const float m_new0 = fmaxf(m[0], pm0), m_new1 = fmaxf(m[1], pm1);
    const float ref0 = m_new0 == -INFINITY ? 0.0f : m_new0;
    const float ref1 = m_new1 == -INFINITY ? 0.0f : m_new1;
    alpha[0] = fast_exp2(m[0] - ref0);
    alpha[1] = fast_exp2(m[1] - ref1);
    m[0] = m_new0;
    m[1] = m_new1;
    float off0, off1;
    if constexpr (T::kPvInt8) {
      // P against the rows' own page max, as the sm_80 kernel (sage_attn_sm80.cuh).
      off0 = qm0 - (pm0 == -INFINITY ? 0.0f : pm0);
      off1 = qm1 - (pm1 == -INFINITY ? 0.0f : pm1);
      beta[0] = fast_exp2(pm0 - ref0);
      beta[1] = fast_exp2(pm1 - ref1);
    } else {
      off0 = (qm0 - ref0) + kLog2Fp8Max;
      off1 = (qm1 - ref1) + kLog2Fp8Max;
    }
    // P (times 448 in fp8 mode) of element e of column tile j; 0 for a hidden key. (Folding the
    // bias into the offset, fma(kU8Magic + s, sc, off - kU8Magic * sc), would save the FADD of
    // biased_to_float, but the offset's rounding, up to 0.75 sc, shifts all of a row's scores on
    // a page alike: measured, passkey-4k's fp8 KLD rose from 5.034e-3 to 5.083e-3.)
    const auto pv = [&](int j, int e) {
      const float x =
          fast_exp2(fmaf(biased_to_float(si[j][e]), e < 2 ? sc0 : sc1, e < 2 ? off0 : off1));
      return visible(j, e) ? x : 0.0f;
    };
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j0 = 4 * kc + 2 * half, j1 = j0 + 1;
        if constexpr (T::kPvInt8) {
          using sm80::pack_u8x4;
          using sm80::u8_code_float;
          pa[kc][2 * half] = pack_u8x4(u8_code_float(pv(j0, 0)), u8_code_float(pv(j0, 1)),
                                       u8_code_float(pv(j1, 0)), u8_code_float(pv(j1, 1)));
          pa[kc][2 * half + 1] = pack_u8x4(u8_code_float(pv(j0, 2)), u8_code_float(pv(j0, 3)),
                                           u8_code_float(pv(j1, 2)), u8_code_float(pv(j1, 3)));
        } else {
          pa[kc][2 * half] =
              f32x2_to_e4m3x2(pv(j0, 0), pv(j0, 1)) | (f32x2_to_e4m3x2(pv(j1, 0), pv(j1, 1)) << 16);
          pa[kc][2 * half + 1] =
              f32x2_to_e4m3x2(pv(j0, 2), pv(j0, 3)) | (f32x2_to_e4m3x2(pv(j1, 2), pv(j1, 3)) << 16);
        }
      }
    }
  }

  // acc = acc * alpha + partial * v_scale and l = l * alpha + (row sum), with the previous page's
  // alpha and V scales. The row sums sit in column 128 of the product, held by the quad's thread
  // t = 0 (the others hold the zero columns 129..135), so l stays a per-thread partial sum that
  // the quad adds up at the end. alpha is exactly 1 whenever the max did not move: the multiply
  // is then skipped, which changes no bit.
  __device__ __forceinline__ void fold(const unsigned char* meta, int lane) {
    const int t = lane & 3;
    // The V scales of channels 8 dt + 2 t, +1.
    const auto vs = [&](int dt) {
      if constexpr (T::kVScaleFp32) {
        const float4 f4 =
            reinterpret_cast<const float4*>(meta + T::kMetaBytes + t * T::kVScaleRowBytes)[dt / 2];
        return dt % 2 == 0 ? make_float2(f4.x, f4.y) : make_float2(f4.z, f4.w);
      } else {
        return __bfloat1622float2(
            reinterpret_cast<const __nv_bfloat162*>(meta + 4 * T::kDp)[dt * 4 + t]);
      }
    };
    if constexpr (T::kPvInt8) {
      // The exact int32 partial sums, scaled by v_scale * beta (sage_numerics.h step 5).
      l[0] = fmaf(l[0], alpha[0], static_cast<float>(part[T::kDT][0]) * beta[0]);
      l[1] = fmaf(l[1], alpha[1], static_cast<float>(part[T::kDT][2]) * beta[1]);
#pragma unroll
      for (int dt = 0; dt < T::kDT; ++dt) {
        const float2 f = vs(dt);
        acc[dt][0] = fmaf(static_cast<float>(part[dt][0]), f.x * beta[0], acc[dt][0] * alpha[0]);
        acc[dt][1] = fmaf(static_cast<float>(part[dt][1]), f.y * beta[0], acc[dt][1] * alpha[0]);
        acc[dt][2] = fmaf(static_cast<float>(part[dt][2]), f.x * beta[1], acc[dt][2] * alpha[1]);
        acc[dt][3] = fmaf(static_cast<float>(part[dt][3]), f.y * beta[1], acc[dt][3] * alpha[1]);
      }
      return;
    }
    l[0] = fmaf(l[0], alpha[0], part[T::kDT][0]);
    l[1] = fmaf(l[1], alpha[1], part[T::kDT][2]);
    if (__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
      for (int dt = 0; dt < T::kDT; ++dt) {
        const float2 f = vs(dt);
        acc[dt][0] = fmaf(part[dt][0], f.x, acc[dt][0]);
        acc[dt][1] = fmaf(part[dt][1], f.y, acc[dt][1]);
        acc[dt][2] = fmaf(part[dt][2], f.x, acc[dt][2]);
        acc[dt][3] = fmaf(part[dt][3], f.y, acc[dt][3]);
      }
      return;
    }
#pragma unroll
    for (int dt = 0; dt < T::kDT; ++dt) {
      const float2 f = vs(dt);
      acc[dt][0] = fmaf(part[dt][0], f.x, acc[dt][0] * alpha[0]);
      acc[dt][1] = fmaf(part[dt][1], f.y, acc[dt][1] * alpha[0]);
      acc[dt][2] = fmaf(part[dt][2], f.x, acc[dt][2] * alpha[1]);
      acc[dt][3] = fmaf(part[dt][3], f.y, acc[dt][3] * alpha[1]);
    }
  }
};

// Descriptors of the warpgroup's operands: its Q codes (fixed), and stage 0's K, V and mean tiles
// (stage st: + st * kStageBytes, desc_plus).
struct Descs {
  uint64_t q8, k, v, mean;
};

// S = Q8 K8^T (int32) and the parts of q . k_mean (fp32, bf16 products; the queries as register
// fragments qhf) of the page whose K tile and mean rows have descriptors k and mean, for the
// warpgroup's rows; issued, not waited for.
template <class T>
__device__ __forceinline__ void issue_qk(Consumer<T>& c, const Descs& d, uint64_t k, uint64_t mean,
                                         const uint32_t (&qhf)[T::kDp / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < T::kDp / 32; ++kk) {
    wgmma_s8_n64(c.si, desc_plus(d.q8, kk * 32), desc_plus(k, kk * 32), true);
  }
#pragma unroll
  for (int kk = 0; kk < T::kDp / 16; ++kk) {
    const uint32_t col = (kk & 3) * 32;  // 16 columns = 32 bytes into the 128-byte row
    wgmma_bf16_n16_rs(c.qd, qhf[kk], desc_plus(mean, (kk >> 2) * (T::kMeanRows * 128) + col),
                      kk > 0);
  }
}

template <class T, class Part>
__device__ __forceinline__ void issue_pv(Part (&part)[T::kPT][4], const uint32_t (&pa)[2][4],
                                         uint64_t v) {
#pragma unroll
  for (int kc = 0; kc < 2; ++kc) {
    if constexpr (T::kPvInt8) {
      wgmma_u8s8_n144(part, pa[kc], desc_plus(v, kc * 32), kc > 0);
    } else {
      wgmma_e4m3_n136(part, pa[kc], desc_plus(v, kc * 32), kc > 0);
    }
  }
}

template <class T, class Part>
__device__ __forceinline__ void keep_part(Part (&part)[T::kPT][4]) {
  if constexpr (T::kPvInt8) {
    wgmma_keep_int<T::kPT>(part);
  } else {
    wgmma_keep<T::kPT>(part);
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) sage_prefill_kernel(const SageParams p) {
#if SAGELLM_HAS_WGMMA
  constexpr int kS = T::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  sm80::SageBlock b;
  if (!sm80::sage_block<T>(p, b)) return;
  unsigned char* smem = flash_cuda::sm90::aligned_smem(smem_raw);
  const int tid = threadIdx.x;
  const uint32_t sq8 = smem_addr(smem);
  const uint32_t sqh = sq8 + T::kQ8Bytes;
  const auto stage = [&](int st) { return sq8 + T::kSmemStages + st * T::kStageBytes; };
  const auto meta = [&](int st) {
    return smem + T::kSmemStages + st * T::kStageBytes + T::kKBytes + T::kVBytes;
  };
  const auto full = [&](int st) { return sq8 + T::kSmemBarriers + st * 8; };
  const auto empty = [&](int st) { return sq8 + T::kSmemBarriers + (kS + st) * 8; };
  if (tid == 0) {
    for (int i = 0; i < kS; ++i) {
      mbarrier_init(full(i), T::kProducerThreads);
      mbarrier_init(empty(i), T::kConsumerThreads);
    }
  }
  // Rows kDp .. kVRows - 1 under every stage's V tile: ones (FP8 or INT8), then zeros (the
  // producer copies only rows below kDp). A row of 64 equal bytes reads the same through any
  // swizzle.
  constexpr int kExtra = T::kVRows - T::kDp;
  for (int c = tid; c < kS * kExtra * 4; c += T::kThreads) {
    const int st = c / (kExtra * 4), r = T::kDp + (c / 4) % kExtra, ch = c % 4;
    // 0x38: 1.0 in e4m3.
    const uint32_t v = r == T::kDp ? (T::kPvInt8 ? 0x01010101u : 0x38383838u) : 0u;
    asm volatile(
        "st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(stage(st) + T::kKBytes + swz<64>(r, ch)),
        "r"(v)
        : "memory");
  }
  // The zero rows 9, 11, 13, 15 of every stage's mean tile (split_mean writes the others).
  for (int c = tid; c < kS * 4 * 2 * T::kDp / 16; c += T::kThreads) {
    constexpr int kChunks = 2 * T::kDp / 16;  // 16-byte chunks of a bf16 row
    const int st = c / (4 * kChunks), r = 9 + 2 * ((c / kChunks) % 4), ch = c % kChunks;
    asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(
                     stage(st) + T::kMeanOffset + sw128_offset<T::kMeanRows>(r, ch)),
                 "r"(0u)
                 : "memory");
  }
  fence_proxy_async_smem();
  __syncthreads();
  const int n_pages = b.page_end - b.page_begin;
  const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;

  if (tid >= T::kConsumerThreads) {
    // Producer: page i into stage i % kS once the consumers have released page i - kS; page i - 1
    // is signalled after page i is issued, so two pages stay in flight.
    setmaxnreg_dec<T::kProducerRegs>();
    const int ptid = tid - T::kConsumerThreads;
    // Page j has landed (the thread's own copies of it): its mean rows, then the hand-over.
    const auto publish = [&](int j) {
      const int st = j % kS;
      unsigned char* stage_ptr = smem + T::kSmemStages + st * T::kStageBytes;
      if (ptid < T::kDp / 4) {
        split_mean<T>(stage_ptr, stage(st) + T::kMeanOffset, ptid);
      } else if (T::kVScaleFp32 && ptid < T::kDp / 4 + T::kDp / 8) {
        vscale_fp32<T>(stage_ptr, ptid - T::kDp / 4);
      }
      fence_proxy_async_smem();
      mbarrier_arrive(full(st));
    };
    for (int i = 0; i < n_pages; ++i) {
      const int st = i % kS;
      if (i >= kS) mbarrier_wait(empty(st), (i / kS - 1) & 1);
      load_page<T>(p, block_row[b.page_begin + i], b.kv_head, stage(st), ptid);
      cp_async_commit();
      if (i >= 1) {
        cp_async_wait<1>();
        publish(i - 1);
      }
    }
    if (n_pages >= 1) {
      cp_async_wait<0>();
      publish(n_pages - 1);
    }
    return;
  }

  setmaxnreg_inc<T::kConsumerRegs>();
  const int wg = tid / 128, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  load_q<T>(p, b, sq8, sqh, wg, tid % 128);
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async_smem();
  named_sync(3 + wg, 128);
  Descs d;
  d.q8 = sw128_desc(sq8 + wg * 64 * T::kDp, 0);
  d.k = sw128_desc(stage(0), 0);
  d.v = sw64_desc(stage(0) + T::kKBytes);
  d.mean = sw128_desc(stage(0) + T::kMeanOffset, 0);
  const auto at = [&](uint64_t desc0, int st) { return desc_plus(desc0, st * T::kStageBytes); };
  // The bf16 queries of q . k_mean as register A fragments (m16n8k16, the warp's 16 rows), loaded
  // once: each of its 8 products per page then reads only the 512-byte mean tile from shared
  // memory instead of 2 KB of queries too (measured: fp8 mode 2-3% faster than with both operands
  // in shared memory, int8 mode the same). The Q codes stay in shared memory: as registers too
  // they cost spills and were slower.
  uint32_t qhf[T::kDp / 16][4];
  {
    using flash_cuda::sm80::ldmatrix_x4;
    const int mi = lane >> 3, r = warp * 16 + (mi & 1) * 8 + (lane & 7);
#pragma unroll
    for (int kk = 0; kk < T::kDp / 16; ++kk) {
      ldmatrix_x4(qhf[kk], sqh + sw128_offset<T::kRows>(r, 2 * kk + (mi >> 1)));
    }
  }
  int tok0, head0, tok1, head1;
  const bool valid0 = sm80::row_of<T>(b, warp * 16 + g, tok0, head0);
  const bool valid1 = sm80::row_of<T>(b, warp * 16 + g + 8, tok1, head1);
  const int row0 = p.cu_seqlens_q[0];
  const float qs0 =
      valid0 ? p.q_scale[static_cast<int64_t>(b.q_begin + tok0 - row0) * p.num_heads + head0]
             : 0.0f;
  const float qs1 =
      valid1 ? p.q_scale[static_cast<int64_t>(b.q_begin + tok1 - row0) * p.num_heads + head1]
             : 0.0f;
  const int lim0 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok0) : b.kv_len - 1;
  const int lim1 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok1) : b.kv_len - 1;
  Consumer<T> c;
  c.init();
  // Turns at the tensor cores, as in the flash Hopper kernel: warpgroup 0 first, each turn hands
  // over to the other, warpgroup 1's last hand-over is left out (its first one balances it).
  const int my_turn = 1 + wg, other_turn = 2 - wg;
  const auto softmax = [&](int i) {
    const int page = b.page_begin + i;
    c.softmax(meta(i % kS), p.q_factor, qs0, qs1, page * kSagePageSize, lim0, lim1,
              page >= b.first_masked_page, lane);
  };
  if (n_pages > 0) {
    if (wg == 1) named_arrive(1, T::kConsumerThreads);
    mbarrier_wait(full(0), 0);
    named_sync(my_turn, T::kConsumerThreads);
    c.bias_scores();
    wgmma_fence();
    issue_qk<T>(c, d, d.k, d.mean, qhf);
    wgmma_commit();
    named_arrive(other_turn, T::kConsumerThreads);
    wgmma_wait<0>();
    c.keep_scores();
    softmax(0);
    for (int i = 1; i < n_pages; ++i) {
      const int st = i % kS, prev = (i - 1) % kS;
      mbarrier_wait(full(st), (i / kS) & 1);
      named_sync(my_turn, T::kConsumerThreads);
      c.bias_scores();
      wgmma_fence();
      // P_{i-1} V_{i-1} first, then S_i: page i - 1 is folded while S_i is being computed.
      issue_pv<T>(c.part, c.pa, at(d.v, prev));
      wgmma_commit();
      issue_qk<T>(c, d, at(d.k, st), at(d.mean, st), qhf);
      wgmma_commit();
      named_arrive(other_turn, T::kConsumerThreads);
      wgmma_wait<1>();
      keep_part<T>(c.part);
      c.fold(meta(prev), lane);
      mbarrier_arrive(empty(prev));  // page i - 1 is no longer read
      wgmma_wait<0>();
      c.keep_scores();
      softmax(i);
    }
    const int last = (n_pages - 1) % kS;
    named_sync(my_turn, T::kConsumerThreads);
    wgmma_fence();
    issue_pv<T>(c.part, c.pa, at(d.v, last));
    wgmma_commit();
    if (wg == 0) named_arrive(other_turn, T::kConsumerThreads);
    wgmma_wait<0>();
    keep_part<T>(c.part);
    c.fold(meta(last), lane);
  }

  sm80::store_rows<T::kDT>(p, b, c.acc, quad_sum(c.l[0]), quad_sum(c.l[1]), valid0, tok0, head0,
                           valid1, tok1, head1, t);
#else
  (void)p;
  __trap();  // sm_90a code only; the launcher never runs this elsewhere
#endif
}

}  // namespace sagellm::sage_cuda::sm90
